"""The columnar path of FormatRecords (transforms/write/format.py): a whole
ScoredBatch's prediction records built from the output arrays and the
carried columns at once, with no Python object per record.

It is an optimization of the per-record definition,
`FormatRecords._records_exact` + `FormatRecords._encode`, and gives the same
output (tests/test_format_columnar.py proves it on generated batches):
JSON Lines byte for byte, Parquet the same table, TFRecord the same parsed
Examples (protobuf writes a map's entries in hash order, we write them in
the record's field order). Whatever it does not handle exactly it declines
(`Declined`), and the batch goes to the definition: object, string and
unknown-rank outputs, a missing carried text, a value the definition would
turn into an error record, anything unexpected.

How the JSON Lines block is built, and why: per-record orjson (the
definition) costs about 4-6 us a record for the tabular model; Arrow has no
JSON writer, and a per-row join of texts still pays a Python object per
row. Instead orjson writes a whole numeric column in C, with the very texts
it writes for one value (shortest float32/float64 text, NaN and infinities
as null); numbers hold no commas nor brackets, so the commas between rows
(after ndim - 1 closing brackets) split that text into each row's exact
text, found with numpy. Each column becomes an Arrow binary array without a
Python object per row, and `pyarrow.compute.binary_join_element_wise` lays
out the rows (`{"id":` key `,"score":` value `}\n`) in one pass; its data
buffer is the block (about 0.2 us a record for the tabular model).
"""
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_COMMA, _OPEN, _CLOSE, _QUOTE, _BACKSLASH = 44, 91, 93, 34, 92
_EMPTY = pa.scalar(b'', pa.binary())


class Declined(Exception):
  """The batch is not one the columnar path writes exactly: use the
  definition."""


def check(condition):
  if not condition:
    raise Declined()


def _binary(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
  """A binary array from int64 offsets (n + 1) and uint8 data."""
  check(len(data) < 2**31 - 1)
  return pa.Array.from_buffers(pa.binary(), len(offsets) - 1,
                               [None, pa.py_buffer(offsets.astype(np.int32)),
                                pa.py_buffer(np.ascontiguousarray(data))])


def _data(array: pa.Array):
  """(offsets as int64 numpy, data as uint8 numpy) of a binary array without
  nulls, offsets rebased to the data."""
  array = array.cast(pa.binary()) if array.type != pa.binary() else array
  _, offsets, data = array.buffers()
  offsets = np.frombuffer(offsets, np.int32)[array.offset:array.offset + len(array) + 1]
  offsets = offsets.astype(np.int64)
  data = (np.frombuffer(data, np.uint8) if data is not None and len(array)
          else np.zeros(0, np.uint8))
  start = int(offsets[0]) if len(offsets) else 0
  return offsets - start, data[start:int(offsets[-1]) if len(offsets) else 0]


def join(pieces) -> pa.Array:
  """Per row, the concatenation of the pieces (binary arrays of the same
  length, or bytes constants)."""
  args = [p if isinstance(p, pa.Array) else pa.scalar(p, pa.binary()) for p in pieces]
  return pc.binary_join_element_wise(*args, _EMPTY)


def block(rows: pa.Array) -> bytes:
  """The concatenation of all rows."""
  _, data = _data(rows)
  return data.tobytes()


# -- JSON texts --------------------------------------------------------------

def numeric(array) -> bool:
  return (isinstance(array, np.ndarray) and array.dtype.kind in 'biuf'
          and array.ndim >= 1 and array.flags.c_contiguous)


def json_rows(array: np.ndarray) -> pa.Array:
  """Each row's JSON text as orjson writes `array[i]`: orjson writes the
  whole array, split at the commas between rows (depth 0)."""
  n = array.shape[0]
  text = np.frombuffer(orjson.dumps(array, option=_DUMPS_OPTIONS), np.uint8)[1:-1]
  if array.ndim == 1:
    at = np.flatnonzero(text == _COMMA)
  elif array.size:
    # Every list holds values: a comma between rows follows ndim - 1
    # closing brackets, one within a row fewer (found from the brackets:
    # fewer than the commas, and no running depth to sum).
    closes = np.flatnonzero(text == _CLOSE)
    closes = closes[closes < len(text) - 1]
    at = closes + 1
    between = text[at] == _COMMA
    if array.ndim > 2:
      between &= text[closes - (array.ndim - 2)] == _CLOSE
    at = at[between]
  else:  # empty lists: short texts, split at depth 0
    depth = np.cumsum((text == _OPEN).astype(np.int8) - (text == _CLOSE), dtype=np.int32)
    at = np.flatnonzero((text == _COMMA) & (depth == 0))
  check(len(at) == n - 1)
  keep = np.ones(len(text), bool)
  keep[at] = False
  offsets = np.empty(n + 1, np.int64)
  offsets[0] = 0
  offsets[1:-1] = at - np.arange(n - 1)
  offsets[-1] = len(text) - (n - 1)
  return _binary(offsets, text[keep])


def text_column(column, rows, allow_null: bool) -> pa.Array:
  """The carried texts of these rows as a binary array (nulls: None)."""
  arrow = getattr(column, 'arrow', None)
  if arrow is None:
    check(isinstance(column, list))
    check(set(map(type, column)) <= {bytes, type(None)})
    arrow = pa.array(column, pa.binary())
  else:
    check(pa.types.is_binary(arrow.type) or pa.types.is_large_binary(arrow.type))
    if isinstance(arrow, pa.ChunkedArray):
      arrow = arrow.combine_chunks()
  check(len(rows) == 0 or int(rows.max()) < len(arrow))
  if not (len(rows) == len(arrow) and np.array_equal(rows, np.arange(len(rows)))):
    arrow = arrow.take(pa.array(rows))
  if arrow.type != pa.binary():
    arrow = arrow.cast(pa.binary())
  check(allow_null or arrow.null_count == 0)
  return arrow


# -- carried values as text (Parquet, tf.Example) -----------------------------

def carried_strings(texts: pa.Array, carried_as_text) -> pa.Array:
  """`carried_as_text` of each text, as a string array: a JSON string as its
  own text, null (or None) as null, anything else as its JSON text."""
  n = len(texts)
  valid = np.ones(n, bool) if texts.null_count == 0 else np.asarray(
      texts.is_valid().to_numpy(zero_copy_only=False))
  filled = texts.fill_null(b'') if texts.null_count else texts
  offsets, data = _data(filled)
  starts, ends = offsets[:-1], offsets[1:]
  sizes = ends - starts
  nonempty = sizes > 0
  first = np.zeros(n, np.uint8)
  first[nonempty] = data[starts[nonempty]]
  null_text = (sizes == 4) & nonempty
  if null_text.any():
    at = np.flatnonzero(null_text)
    words = data[starts[at, None] + np.arange(4)]
    null_text[at] = (words == np.frombuffer(b'null', np.uint8)).all(1)
  valid &= ~null_text
  string = valid & (first == _QUOTE)
  if string.any():
    # A JSON string without escapes is its inner bytes; orjson.loads
    # refuses control characters and quotes inside, which the definition
    # turns into an error record: such strings (and escapes) decline here,
    # or take the definition's own function where they can be decoded.
    special = (data == _BACKSLASH) | (data < 0x20) | (data == _QUOTE)
    counts = np.zeros(len(data) + 1, np.int64)
    np.cumsum(special, out=counts[1:])
    inner = counts[ends] - counts[starts]  # special bytes of the row
    last = np.zeros(n, np.uint8)
    last[nonempty] = data[ends[nonempty] - 1]
    simple = string & (sizes >= 2) & (last == _QUOTE) & (inner == 2)
    if not simple[string].all():
      values = [carried_as_text(t) if v else None
                for t, v in zip(texts.to_pylist(), valid.tolist())]
      return pa.array(values, pa.string())
    keep = np.ones(len(data), bool)
    keep[starts[string]] = False
    keep[ends[string] - 1] = False
    removed = np.zeros(n + 1, np.int64)
    np.cumsum(string * 2, out=removed[1:])
    offsets = offsets - removed
    data = data[keep]
  sizes = np.diff(offsets)
  offsets = np.concatenate([[0], np.cumsum(np.where(valid, sizes, 0))])
  keep = np.repeat(valid, sizes)
  data = data[keep] if len(keep) else data
  validity = None if valid.all() else pa.array(valid).buffers()[1]
  array = pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(offsets.astype(np.int32)),
                                                 pa.py_buffer(np.ascontiguousarray(data))])
  try:
    array.validate(full=True)  # UTF-8: the definition's decode would fail
  except pa.ArrowInvalid:
    raise Declined() from None
  return array


# -- tf.Example wire format ----------------------------------------------------

def _varint_data(values: np.ndarray):
  """(uint8 data, bytes per value): the varints of uint64 values."""
  values = values.astype(np.uint64, copy=False).reshape(-1)
  top = int(values.max()) if len(values) else 0
  if top < 0x80:  # lengths and small integers: one byte each
    return values.astype(np.uint8), np.ones(len(values), np.int64)
  width = (top.bit_length() + 6) // 7
  sizes = np.ones(len(values), np.int64)
  for k in range(1, width):
    sizes += values >= np.uint64(1 << (7 * k))
  shifts = np.arange(0, 7 * width, 7, dtype=np.uint64)
  groups = ((values[:, None] >> shifts) & np.uint64(0x7f)).astype(np.uint8)
  groups |= np.where(np.arange(width) < (sizes - 1)[:, None], 0x80, 0).astype(np.uint8)
  return groups[np.arange(width) < sizes[:, None]], sizes


def varints(values: np.ndarray) -> pa.Array:
  data, sizes = _varint_data(values)
  return _binary(np.concatenate([[0], np.cumsum(sizes)]), data)


def varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7f
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _lengths(rows: pa.Array) -> np.ndarray:
  offsets, _ = _data(rows)
  return np.diff(offsets)


def message(tag: int, rows: pa.Array) -> pa.Array:
  """Per row, a length-delimited field `tag` holding the row's bytes."""
  return join([bytes([tag]), varints(_lengths(rows)), rows])


def float_features(array: np.ndarray) -> pa.Array:
  """Per row, Feature{float_list} of the row's values, as float32 (what
  protobuf stores of a double: inf beyond float32's range)."""
  n = array.shape[0]
  m = int(np.prod(array.shape[1:], dtype=np.int64))
  with np.errstate(over='ignore'):
    values = np.ascontiguousarray(array.reshape(n, m), dtype='<f4')
  head = b'\x12' + varint(len(varint(4 * m)) + 1 + 4 * m if m else 0)
  if m:
    head += b'\x0a' + varint(4 * m)
  width = len(head) + 4 * m
  out = np.empty((n, width), np.uint8)
  out[:, :len(head)] = np.frombuffer(head, np.uint8)
  out[:, len(head):] = values.view(np.uint8).reshape(n, 4 * m)
  return _binary(np.arange(n + 1, dtype=np.int64) * width, out.reshape(-1))


def int_features(array: np.ndarray) -> pa.Array:
  """Per row, Feature{int64_list} of the row's values (packed varints)."""
  n = array.shape[0]
  m = int(np.prod(array.shape[1:], dtype=np.int64))
  if array.dtype.kind == 'u':
    check(m == 0 or int(array.max()) < 2**63)
  flat = array.reshape(n * m).astype(np.int64).view(np.uint64)
  data, sizes = _varint_data(flat)
  row_sizes = sizes.reshape(n, m).sum(1) if m else np.zeros(n, np.int64)
  packed = _binary(np.concatenate([[0], np.cumsum(row_sizes)]), data)
  if m:
    packed = message(0x0a, packed)
  return message(0x1a, packed)


def bytes_features(values: pa.Array) -> pa.Array:
  """Per row, Feature{bytes_list} of one value."""
  return message(0x0a, message(0x0a, values))


def feature_entry(name: str, features: pa.Array) -> pa.Array:
  """Per row, the Features map entry of `name` (a null feature: none)."""
  key = name.encode('utf-8')
  entry = join([b'\x0a' + varint(len(key)) + key, message(0x12, features.fill_null(b''))])
  entry = message(0x0a, entry)
  if features.null_count:
    entry = pc.if_else(features.is_valid(), entry, _EMPTY)
  return entry


def examples(entries) -> list:
  """Serialized Examples from per-field entries (rows of map entries, each
  a field 1 of Features): Example{features (1): Features}."""
  return message(0x0a, join(entries)).to_pylist()
