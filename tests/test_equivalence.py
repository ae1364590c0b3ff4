"""Property-based tests: on generated hostile input, every fast path gives
exactly what the written definition gives, a line's result never depends
on its neighbours, and the reader splits any bytes into lines exactly as
the definition of a line says.

Each test states how many lines it generates; together they exceed 10,000
lines per run (LINES_PER_RUN, checked below)."""
import base64
import json

import numpy as np
from apache_beam.io.range_trackers import OffsetRangeTracker
from apache_beam.io.restriction_trackers import OffsetRange
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from tests.test_convert_decode import assert_same_batches, decoder_for, rows_and_feeds
from tf_batch_predict.transforms.read.lines import LineChunkSource
from tf_batch_predict.transforms.records import RawChunk
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec, TensorSpec

# Hypothesis slows down sharply past about 60 generated lines per example
# (its buffer overflows): many examples of 50 lines instead.
JSONL_EXAMPLES, JSONL_LINES = 160, 50
CSV_EXAMPLES, CSV_LINES = 60, 40
READER_EXAMPLES = 60
LINES_PER_RUN = JSONL_EXAMPLES * JSONL_LINES + CSV_EXAMPLES * CSV_LINES + READER_EXAMPLES * 20
assert LINES_PER_RUN >= 10_000

# No shrinking: hostile lines are long, and shrinking them takes minutes; a
# failure prints the whole generated input.
SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                phases=(Phase.explicit, Phase.reuse, Phase.generate))

# A signature with a float vector, a scalar string, an int and a float.
MIXED = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                      (TensorSpec('a', 'float32', (2,)), TensorSpec('b', 'string', ()),
                       TensorSpec('c', 'int64', ()), TensorSpec('d', 'float32', ())),
                      (TensorSpec('y', 'float32', ()),))

# -- generated JSON texts (as bytes, formatted as hostile writers do) --------

NUMBERS = st.one_of(
    st.integers(-2 ** 70, 2 ** 70).map(str),
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f'{f:.7g}'),
    st.sampled_from(['1e2', '1E-3', '-0', '-0.0', '0.30000000000000001', '1e400', '-1e400',
                     'NaN', 'Infinity', '-Infinity', '9007199254740993', '1.50', '1e-400',
                     '18446744073709551615', '9223372036854775808', '01', '1.', '.5', '+1',
                     '0x10', 'nan', '2.5e-324', '1' * 400]))
STRINGS = st.one_of(
    st.text(max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(['"\\ud800"', '"a\\udc00b"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\n\\t"',
                     '"caf\\u00e9"', '"x\x01y"', '"tab\there"', '"\\q"', '"unterminated',
                     '"\\/"']))
SCALARS = st.one_of(NUMBERS, STRINGS, st.sampled_from(['true', 'false', 'null']))


def _array(items):
  return '[' + ', '.join(items) + ']'


def _object(pairs):
  return '{' + ','.join(f'{json.dumps(k)}: {v}' for k, v in pairs) + '}'


VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(_array),
    st.lists(st.tuples(st.sampled_from(['a', 'k', 'b64', 'id']), inner), max_size=3).map(_object)),
    max_leaves=6)
A_VALUES = st.one_of(st.lists(NUMBERS, min_size=2, max_size=2).map(_array),
                     st.lists(NUMBERS, min_size=2, max_size=2).map(_array), VALUES,
                     st.lists(st.lists(NUMBERS, min_size=1, max_size=1).map(_array),
                              min_size=2, max_size=2).map(_array))
B_VALUES = st.one_of(STRINGS, STRINGS, VALUES,
                     st.binary(max_size=6).map(lambda b: '{"b64": "%s"}'
                                               % base64.b64encode(b).decode()),
                     st.just('{"b64": "not base64!"}'), st.just('["one"]'))
C_VALUES = st.one_of(st.integers(-2 ** 64, 2 ** 64).map(str), NUMBERS, VALUES, st.just('[7]'))
D_VALUES = st.one_of(NUMBERS, NUMBERS, VALUES, st.just('[0.5]'))
FIELD_VALUES = {'id': st.one_of(NUMBERS, STRINGS, VALUES), 'a': A_VALUES, 'b': B_VALUES,
                'c': C_VALUES, 'd': D_VALUES, 'p': VALUES, 'ignored': VALUES}
NAMES = {'a': st.sampled_from(['"a"', '"\\u0061"']), 'p': st.sampled_from(['"p"', '"\\u0070"'])}


@st.composite
def objects(draw):
  fields = draw(st.lists(st.sampled_from(list(FIELD_VALUES)), min_size=0, max_size=9))
  names = list(dict.fromkeys(['id', 'a', 'b', 'c', 'd'] + fields))
  if draw(st.integers(0, 9)) == 0:  # sometimes drop a field
    names.remove(draw(st.sampled_from(names)))
  if draw(st.integers(0, 9)) == 0:  # sometimes repeat one
    names.append(draw(st.sampled_from(names)))
  order = draw(st.permutations(names))
  separator = draw(st.sampled_from([',', ', ', ' ,\t']))
  colon = draw(st.sampled_from([':', ': ', ' :']))
  pairs = []
  for name in order:
    key = draw(NAMES[name]) if name in NAMES else json.dumps(name)
    pairs.append(f'{key}{colon}{draw(FIELD_VALUES[name])}')
  return '{' + separator.join(pairs) + '}'


def _mutate(draw, line: bytes) -> bytes:
  kind = draw(st.integers(0, 30))
  if kind == 0:
    return line + b' ' + line  # two values on a line
  if kind == 1:
    return line[:draw(st.integers(0, max(len(line) - 1, 0)))]  # a partial value
  if kind == 2:
    return b'[' * 1100 + b']' * 1100
  if kind == 3:
    at = draw(st.integers(0, len(line)))
    return line[:at] + draw(st.sampled_from([b'\xff', b'\xc3', b'\xed\xa0\x80', b'\x00',
                                             b'\xef\xbb\xbf'])) + line[at:]
  if kind == 4:
    return b'{"a": ' + b'[' * 1030 + b'1' + b']' * 1030 + b'}'
  if kind == 5:
    return b'\xef\xbb\xbf' + line
  if kind == 6:
    return line + b'\r' + line
  if kind == 7:
    return b' \t' + line + b'  \t'
  return line


@st.composite
def jsonl_lines(draw):
  shape = draw(st.integers(0, 9))
  if shape == 0:
    line = draw(VALUES).encode('utf-8', 'surrogatepass')  # a bare value
  else:
    line = draw(objects()).encode('utf-8', 'surrogatepass')
  line = _mutate(draw, line).replace(b'\n', b' ')
  return line if line.strip(b' \t\r') else b'0'


def jsonl_chunk(lines):
  return RawChunk([('g.jsonl', 0)], [i * 7 for i in range(len(lines))], list(lines))


def _assert_rows_isolated(decoder, make_chunk, lines, together):
  """Each line decoded alone gives what it gives among its neighbours."""
  feeds = rows_and_feeds(together)
  for row, line in enumerate(lines):
    alone = decoder.decode(make_chunk([line]))
    assert [(e.category, e.message) for e in alone.errors] == [
        (e.category, e.message) for e in together.errors if e.row == row], line
    assert {f: v[0] for f, v in alone.carried.items()} == {
        f: v[row] for f, v in together.carried.items()}, line
    if row in feeds:
      single = rows_and_feeds(alone)[0]
      for name, value in feeds[row].items():
        got = single[name]
        assert type(got) is type(value)
        assert getattr(got, 'dtype', None) == getattr(value, 'dtype', None)
        np.testing.assert_array_equal(got, value)


@settings(max_examples=JSONL_EXAMPLES, **SETTINGS)
@given(st.lists(jsonl_lines(), min_size=JSONL_LINES, max_size=JSONL_LINES), st.booleans())
def test_jsonl_fast_path_is_the_definition(lines, with_key):
  decoder = decoder_for(MIXED, key_field='id' if with_key else None,
                        passthrough_fields=('p', 'ignored'))
  # Plain lines among the hostile ones: the fast path must take them.
  plain = [b'{"id": %d, "a": [1.5, -2], "b": "s%d", "c": %d, "d": 0.25, "p": "x"}' % (i, i, i)
           for i in range(5)]
  lines = plain[:2] + lines + plain[2:]
  fast = decoder.decode(jsonl_chunk(lines))
  assert_same_batches(fast, decoder.decode(jsonl_chunk(lines), use_fast=False))
  assert len(fast) + len(fast.errors) == len(lines)
  assert fast.fast_rows >= len(plain)
  if with_key:
    _assert_rows_isolated(decoder, jsonl_chunk, lines[:12], decoder.decode(jsonl_chunk(
        lines[:12])))


WIDE = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                     (TensorSpec('x', 'float32', (5,)),), (TensorSpec('y', 'float32', ()),))


@settings(max_examples=30, **SETTINGS)
@given(st.lists(st.one_of(
    st.lists(NUMBERS, min_size=5, max_size=5).map(_array),
    st.lists(NUMBERS, min_size=4, max_size=6).map(_array), VALUES,
    st.lists(NUMBERS, min_size=5, max_size=5).map(lambda n: '{"x": %s}' % _array(n))),
    min_size=40, max_size=40))
def test_bare_values_fast_path_is_the_definition(values):
  lines = [v.encode('utf-8', 'surrogatepass') for v in values]
  decoder = decoder_for(WIDE)
  fast = decoder.decode(jsonl_chunk(lines))
  assert_same_batches(fast, decoder.decode(jsonl_chunk(lines), use_fast=False))


# Nested lists: a [2, 3] float input and a [2, 2, 2] int input (28x28
# images and the like), by the per-line path's exact shape check.
NESTED = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                       (TensorSpec('img', 'float32', (2, 3)), TensorSpec('m', 'int32', (2, 2, 2))),
                       (TensorSpec('y', 'float32', ()),))
CLEAN_NUMBERS = st.one_of(st.integers(-1000, 1000).map(str),
                          st.floats(allow_nan=False, allow_infinity=False).map(repr))
HOSTILE_LEAVES = st.one_of(NUMBERS, st.sampled_from(
    ['true', 'null', '"1"', '[]', '[1]', '[[]]', '{}', '2147483648', '-2147483649']))


def _nested(draw, shape, leaves):
  """A list of `shape`, mostly; sometimes a row too short or long, a leaf
  where a list belongs (or the reverse), an empty list more; leaves mostly
  plain numbers, sometimes hostile values."""
  if not shape:
    return draw(HOSTILE_LEAVES) if draw(st.integers(0, 40)) == 0 else draw(leaves)
  size = shape[0]
  odd = draw(st.integers(0, 40))
  if odd == 0:
    size += draw(st.sampled_from([-1, 1]))
  if odd == 1 and len(shape) > 1:
    return draw(leaves)  # a leaf where a list belongs
  items = [_nested(draw, shape[1:], leaves) for _ in range(max(size, 0))]
  if odd == 2:
    items.insert(draw(st.integers(0, len(items))), '[]')
  if odd == 3 and items:  # a list moved into a neighbour: the same count of numbers
    i = draw(st.integers(0, len(items) - 1))
    items[i] = _array([items[i]])
  return _array(items)


@st.composite
def nested_lines(draw):
  img = _nested(draw, (2, 3), CLEAN_NUMBERS)
  m = _nested(draw, (2, 2, 2), st.integers(-5, 5).map(str))
  key = draw(st.one_of(st.integers(0, 10 ** 6).map(str), STRINGS,
                       st.sampled_from(['"[["', '"a[b]"', '"]["'])))
  fields = [('id', key), ('img', img), ('m', m)]
  if draw(st.integers(0, 7)) == 0:
    fields.append(('note', draw(st.sampled_from(['"[]"', '[1, 2]', '[[0]]']))))
  order = draw(st.permutations(fields))
  separator = draw(st.sampled_from([',', ', ', ' ,\t']))
  return ('{' + separator.join(f'"{k}": {v}' for k, v in order) + '}').encode(
      'utf-8', 'surrogatepass')


@settings(max_examples=60, **SETTINGS)
@given(st.lists(nested_lines(), min_size=40, max_size=40))
def test_nested_lists_fast_path_is_the_definition(lines):
  decoder = decoder_for(NESTED, key_field='id')
  plain = [b'{"id": %d, "img": [[1, 2.5, -3], [0, 1e2, 7]], "m": [[[1, 2], [3, 4]], '
           b'[[5, 6], [7, -8]]]}' % i for i in range(4)]
  lines = plain[:2] + lines + plain[2:]
  fast = decoder.decode(jsonl_chunk(lines))
  assert_same_batches(fast, decoder.decode(jsonl_chunk(lines), use_fast=False))
  assert len(fast) + len(fast.errors) == len(lines)
  assert fast.fast_rows >= len(plain)


# -- CSV ---------------------------------------------------------------------

CSV_HEADER = ('id', 'a', 'b', 'c', 'd', 'note')
CSV_SCALAR = TensorSpec
CSV_SIG = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                        (TensorSpec('a', 'float32', (1,)), TensorSpec('b', 'string', ()),
                         TensorSpec('c', 'int32', ()), TensorSpec('d', 'bool', ())),
                        (TensorSpec('y', 'float32', ()),))
CELLS = st.one_of(NUMBERS, st.text(max_size=6), st.sampled_from(
    ['', ' 1', '1 ', 'true', 'True', 'false', '0', '1', 'yes', 'nan', 'inf', '-inf',
     '"quoted, comma"', '"a""b"', 'x"y', '"open', '1_000', '2147483648', '-2147483648',
     '\x00', 'é', '\r']))


@st.composite
def csv_lines(draw):
  cells = draw(st.lists(CELLS, min_size=len(CSV_HEADER) - 1, max_size=len(CSV_HEADER) + 1))
  quote = draw(st.booleans())
  text = ','.join((json.dumps(c) if quote and '"' not in c and draw(st.booleans()) else c)
                  for c in cells).replace('\n', ' ')
  line = text.encode('utf-8', 'surrogatepass')
  if draw(st.integers(0, 20)) == 0:
    line += b'\xff'
  return line if line.strip(b' \t\r') else b'0'


def csv_chunk(lines):
  return RawChunk([('g.csv', 0)], list(range(len(lines))), list(lines), kind='csv',
                  header=CSV_HEADER)


@settings(max_examples=CSV_EXAMPLES, **SETTINGS)
@given(st.lists(csv_lines(), min_size=CSV_LINES, max_size=CSV_LINES))
def test_csv_fast_path_is_the_definition(lines):
  decoder = decoder_for(CSV_SIG, key_field='id', passthrough_fields=('note',))
  lines = [b'7,1.5,abc,-3,true,n'] + lines + [b'8,2,x,4,0,']
  fast = decoder.decode(csv_chunk(lines))
  assert fast.fast_rows >= 2
  assert_same_batches(fast, decoder.decode(csv_chunk(lines), use_fast=False))
  _assert_rows_isolated(decoder, csv_chunk, lines[:8], decoder.decode(csv_chunk(lines[:8])))


# -- the reader --------------------------------------------------------------

def reference_lines(content: bytes, max_bytes: int):
  """The definition of a line, written plainly: (offset, line or size)."""
  lines, offset = [], 0
  parts = content.split(b'\n')
  if parts and parts[-1] == b'':
    parts.pop()
  for part in parts:
    line = part
    if offset == 0 and line.startswith(b'\xef\xbb\xbf'):
      line = line[3:]
    if line.endswith(b'\r'):
      line = line[:-1]
    if len(line) > max_bytes:
      lines.append((offset, ('too large', len(line))))
    elif line.strip(b' \t\r'):
      lines.append((offset, line))
    offset += len(part) + 1
  return lines


@settings(max_examples=READER_EXAMPLES, **SETTINGS)
@given(st.lists(st.one_of(jsonl_lines(), st.sampled_from([b'', b' ', b'\t\r', b'\r', b'x' * 50])),
                min_size=0, max_size=20),
       st.lists(st.sampled_from([b'\n', b'\r\n']), min_size=20, max_size=20),
       st.booleans(), st.booleans(), st.integers(1, 200), st.integers(8, 400))
def test_reader_splits_any_bytes_by_the_definition(lines, ends, bom, final_newline,
                                                    range_size, max_bytes):
  content = (b'\xef\xbb\xbf' if bom else b'') + b''.join(
      line + end for line, end in zip(lines, ends))
  if not final_newline and content.endswith(b'\n'):
    content = content[:-1]
  import tempfile
  with tempfile.NamedTemporaryFile(suffix='.jsonl') as f:
    f.write(content)
    f.flush()
    source = LineChunkSource(f.name, 'jsonl', 3, 1 << 20, max_bytes)
    got = []
    for r in OffsetRange(0, max(len(content), 1)).split(range_size, 0):
      for chunk in source.read_records(f.name, OffsetRangeTracker(r.start, r.stop)):
        assert not chunk.file_errors
        for row, (offset, line) in enumerate(zip(chunk.positions, chunk.records)):
          if row in chunk.read_errors:
            size = int(chunk.read_errors[row].split(' is ')[1].split()[0])
            got.append((offset, ('too large', size)))
          else:
            got.append((offset, line))
  assert got == reference_lines(content, max_bytes)


# -- Parquet and TFRecord ----------------------------------------------------

def _column(draw, kind, n):
  import pyarrow as pa
  small_ints = st.integers(-2 ** 40, 2 ** 40)
  floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
  maybe = lambda s: st.one_of(st.none(), s, s, s)  # noqa: E731
  if kind == 'vector':
    arrow = draw(st.sampled_from([pa.list_(pa.float64()), pa.list_(pa.int64()),
                                  pa.list_(pa.float32()), pa.list_(pa.string())]))
    item = (st.text(max_size=3) if arrow.value_type == pa.string() else
            small_ints if arrow.value_type == pa.int64() else
            st.floats(width=32) if arrow.value_type == pa.float32() else floats)
    values = [draw(maybe(st.lists(maybe(item), min_size=1, max_size=3))) for _ in range(n)]
  else:
    arrow = draw(st.sampled_from([pa.float64(), pa.float32(), pa.int64(), pa.int32(),
                                  pa.string(), pa.binary(), pa.bool_(), pa.float16()]))
    item = {pa.float64(): floats, pa.float32(): st.floats(width=32),
            pa.float16(): st.floats(width=16), pa.int64(): small_ints,
            pa.int32(): st.integers(-2 ** 31, 2 ** 31 - 1), pa.string(): st.text(max_size=4),
            pa.binary(): st.binary(max_size=4), pa.bool_(): st.booleans()}[arrow]
    values = [draw(maybe(item)) for _ in range(n)]
  return pa.array(values, type=arrow)


@st.composite
def parquet_batches(draw):
  import pyarrow as pa
  n = draw(st.integers(1, 30))
  columns = {'id': _column(draw, 'scalar', n), 'a': _column(draw, 'vector', n),
             'b': _column(draw, 'scalar', n), 'c': _column(draw, 'scalar', n),
             'd': _column(draw, 'scalar', n), 'p': _column(draw, draw(st.sampled_from(
                 ['scalar', 'vector'])), n)}
  dropped = draw(st.sampled_from([None, None, None, 'a', 'p']))
  return pa.record_batch({k: v for k, v in columns.items() if k != dropped})


@settings(max_examples=80, **SETTINGS)
@given(parquet_batches())
def test_parquet_fast_path_is_the_definition(batch):
  decoder = decoder_for(MIXED, key_field='id', passthrough_fields=('p',))
  chunk = RawChunk([('g.parquet', 0)], list(range(batch.num_rows)), batch, kind='parquet')
  fast = decoder.decode(chunk)
  assert_same_batches(fast, decoder.decode(chunk, use_fast=False))
  assert len(fast) + len(fast.errors) == batch.num_rows


def test_parquet_float_columns_of_the_inputs_type_keep_the_definitions_bits():
  """A float32 column for a float32 input is read as it is, and a
  signalling NaN quieted as the definition's float() quiets it: every bit
  pattern gives the definition's bits."""
  import pyarrow as pa
  from tf_batch_predict.transforms import convert
  from tf_batch_predict.transforms.model.savedmodel import TensorSpec
  from tf_batch_predict.transforms.read.input_parquet import column_array
  rng = np.random.default_rng(7)
  bits = np.concatenate([rng.integers(0, 2 ** 32, 5000, dtype=np.uint64).astype(np.uint32),
                         np.array([0x7f800001, 0xff800001, 0x7fbfffff, 0x7fc00000, 0x7f800000,
                                   0x80000000, 1, 0x7f7fffff], np.uint32)])
  for dtype, column in (('float32', pa.array(bits.view(np.float32))),
                        ('float64', pa.array(bits.view(np.float32).astype(np.float64))),
                        ('float16', pa.array(bits[:2000].astype(np.uint16).view(np.float16)))):
    spec = TensorSpec('x', dtype, ())
    got = column_array(column, spec)
    with np.errstate(over='ignore', invalid='ignore'):
      expected = np.array([convert.convert_value(v, spec) for v in column.to_pylist()], dtype)
    assert got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes(), dtype


FEATURE_VALUES = st.one_of(
    st.lists(st.floats(width=32), max_size=3).map(lambda v: ('float', v)),
    st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=3).map(lambda v: ('int64', v)),
    st.lists(st.binary(max_size=4), max_size=3).map(lambda v: ('bytes', v)))


@st.composite
def tfrecords(draw):
  from tensorflow.core.example import example_pb2
  if draw(st.integers(0, 15)) == 0:
    return draw(st.binary(max_size=20))
  if draw(st.integers(0, 10)) == 0:  # two Examples in one record: features repeated
    return draw(tfrecords()) + draw(tfrecords())
  example = example_pb2.Example()
  for name in draw(st.lists(st.sampled_from(['id', 'a', 'b', 'c', 'd', 'p', 'zz']),
                            max_size=8, unique=True)):
    kind, values = draw(FEATURE_VALUES)
    feature = example.features.feature[name]
    if kind == 'float':
      feature.float_list.value.extend(values)
    elif kind == 'int64':
      feature.int64_list.value.extend(values)
    else:
      feature.bytes_list.value.extend(values)
  return example.SerializeToString()


def _tfrecord_chunk(records):
  return RawChunk([('g.tfrecord', 0)], list(range(len(records))), list(records),
                  kind='tfrecord')


@settings(max_examples=60, **SETTINGS)
@given(st.lists(tfrecords(), min_size=1, max_size=30))
def test_tfrecord_fast_path_is_the_definition(records):
  from tests.test_convert_decode import tf_example
  decoder = decoder_for(MIXED, key_field='id', passthrough_fields=('p',))
  plain = [tf_example(id=i, a=[0.5, 1.5], b='x', c=i, d=2.0) for i in range(3)]
  records = plain[:1] + records + plain[1:]
  fast = decoder.decode(_tfrecord_chunk(records))
  assert_same_batches(fast, decoder.decode(_tfrecord_chunk(records), use_fast=False))
  assert fast.fast_rows >= len(plain)


@st.composite
def plain_tfrecords(draw):
  """Examples whose inputs have the right kinds and sizes (the bulk path's
  case), with carried features of any kind, and sometimes a second Example
  appended: protobuf merges it, repeating features on the wire."""
  from tensorflow.core.example import example_pb2
  example = example_pb2.Example()
  features = example.features.feature
  features['a'].float_list.value.extend(draw(st.lists(st.floats(width=32), min_size=2,
                                                      max_size=2)))
  features['b'].bytes_list.value.append(draw(st.binary(max_size=4)))
  features['c'].int64_list.value.append(draw(st.integers(-2 ** 63, 2 ** 63 - 1)))
  features['d'].float_list.value.append(draw(st.floats(width=32)))
  for name in ('id', 'p'):
    if draw(st.integers(0, 8)):
      kind, values = draw(FEATURE_VALUES)
      getattr(features[name], f'{kind}_list').value.extend(values)
  record = example.SerializeToString()
  if draw(st.integers(0, 6)) == 0:
    record += draw(plain_tfrecords())
  if draw(st.integers(0, 4)) == 0:  # a byte changed: some parsers take it, some not
    at = draw(st.integers(0, len(record) - 1))
    record = record[:at] + bytes([draw(st.integers(0, 255))]) + record[at + 1:]
  return record


@settings(max_examples=40, **SETTINGS)
@given(st.lists(plain_tfrecords(), min_size=1, max_size=20))
def test_tfrecord_bulk_parse_is_the_definition(records):
  decoder = decoder_for(MIXED, key_field='id', passthrough_fields=('p',))
  fast = decoder.decode(_tfrecord_chunk(records))
  assert_same_batches(fast, decoder.decode(_tfrecord_chunk(records), use_fast=False))
