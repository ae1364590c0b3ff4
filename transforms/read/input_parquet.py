"""Parquet files: reading, and what a row means.

Reading: record batches of up to ROWS_PER_CHUNK rows, only the columns the
job uses, never a whole file in memory. A file that cannot be read (or stops
being readable part-way) is a file error saying how many rows were read.

Definition (`ParquetFormat.instance`): a row's columns are its fields.
Inputs of fully defined shape take a column by `column_array`: nested lists
of exactly the input's shape, where, as for JSON values, a one-element list
fits a scalar input and a scalar fits an input of shape [1]; float inputs
take numbers read as 64-bit floats, then rounded to the input's type; other
inputs the values cast with Arrow's safe cast (no silent truncation: 3.5
does not become an integer, 300 does not fit int8). Inputs of other shapes
take the row's Python values by the shared rules of transforms/convert.py.
Null is a missing value. Carried values: the value's JSON text, 32-bit
floats by the shortest text of their 32-bit value, types JSON has no value
for (dates, decimals) as their text.

Fast path (`ParquetFormat.fast`): `column_array` on whole columns; rows with
a null input are left to the definition, and so is the whole batch when a
cast or a shape check fails for any row.

A sample (`sample_parquet`, for batch-predict preflight): the first rows of
a file, the columns the job reads, opened as ReadParquetBatches opens it
(`open_parquet`); the row count from the file's metadata.
"""
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from tf_batch_predict.transforms import convert
from tf_batch_predict.transforms.read.decode import FastRows, Instance, InputFormat
from tf_batch_predict.transforms.read.lines import count_read, count_skipped, fault_reason
from tf_batch_predict.transforms.read.sampling import FileSample
from tf_batch_predict.transforms.records import PARQUET, RawChunk

ROWS_PER_CHUNK = 4096
_ARROW_TYPES = {
    'float16': pa.float16(), 'float32': pa.float32(), 'float64': pa.float64(),
    'int8': pa.int8(), 'int16': pa.int16(), 'int32': pa.int32(),
    'int64': pa.int64(), 'uint8': pa.uint8(), 'uint16': pa.uint16(),
    'uint32': pa.uint32(), 'uint64': pa.uint64(), 'bool': pa.bool_(),
    'string': pa.binary(),
}


class _Mismatch(Exception):
  pass


def _same_kind(arrow, spec) -> bool:
  """Values of a column feed an input only as JSON values would: numbers
  for numeric inputs (not strings, booleans or dates), booleans for bool,
  text or bytes for string inputs."""
  while pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or \
      pa.types.is_fixed_size_list(arrow) or pa.types.is_dictionary(arrow):
    arrow = arrow.value_type
  if spec.dtype == 'string':
    return (pa.types.is_string(arrow) or pa.types.is_large_string(arrow)
            or pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow))
  if np.dtype(spec.dtype).kind == 'b':
    return pa.types.is_boolean(arrow)
  return pa.types.is_integer(arrow) or pa.types.is_floating(arrow)


def _is_list(arrow) -> bool:
  return (pa.types.is_list(arrow) or pa.types.is_large_list(arrow)
          or pa.types.is_fixed_size_list(arrow))


def column_array(column, spec) -> np.ndarray:
  """A column (or a slice of one) of a fully defined input as an array of
  shape (rows,) + spec.shape; _Mismatch when any row does not fit.

  The shared rules of transforms/convert.py (`convert_value`), on whole
  columns: a one-element list fits a scalar input and a scalar fits an input
  of shape [1] (a plain column feeds a `[1]` input as a column of
  one-element lists would); float inputs take integer or floating values
  read as 64-bit floats (integers rounded to the nearest, as Python's
  float() does), then rounded to the input's type (beyond its range:
  +-inf); other inputs take the column cast with Arrow's safe cast (no
  silent truncation: 3.5 does not become an integer, 300 does not fit int8)."""
  arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  if arr.null_count or not _same_kind(arr.type, spec):
    raise _Mismatch
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  rows = len(arr)
  shape = tuple(spec.shape)
  if shape == (1,) and not _is_list(arr.type):
    arr = pa.FixedSizeListArray.from_arrays(arr, 1)
  elif shape == () and _is_list(arr.type):
    shape = (1,)  # one-element lists, read as such, then taken as scalars
  for dim in shape:
    if not _is_list(arr.type):
      raise _Mismatch
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if rows and (lengths.min() != dim or lengths.max() != dim):
      raise _Mismatch
    arr = arr.flatten()
    if arr.null_count:
      raise _Mismatch
  if pa.types.is_dictionary(arr.type):
    arr = arr.dictionary_decode()
  try:
    values = _leaf_values(arr, spec)
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
    raise _Mismatch from None
  return values.reshape((rows,) + tuple(spec.shape))


def _leaf_values(arr, spec) -> np.ndarray:
  """The values of a flat column of the input's kind, by the input's dtype."""
  if _is_list(arr.type):
    raise _Mismatch  # nested deeper than the input's shape
  if spec.dtype == 'string':
    return pc.cast(arr, pa.binary()).to_numpy(zero_copy_only=False)
  if np.dtype(spec.dtype).kind == 'f':
    if arr.type == pa.from_numpy_dtype(np.dtype(spec.dtype)):
      # The input's own type: the values that going through 64 bits and back
      # gives, without the two copies. That round trip quiets a float32
      # signalling NaN (the definition's float() does too): so does `+ 0`.
      values = arr.to_numpy(zero_copy_only=False, writable=True)
      if values.dtype == np.float32:
        nan = np.isnan(values)
        if nan.any():
          with np.errstate(invalid='ignore'):
            values[nan] = values[nan] + np.float32(0)
      return values
    floats = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    with np.errstate(over='ignore'):  # as convert.convert_value
      return floats.astype(spec.dtype)
  return pc.cast(arr, _ARROW_TYPES[spec.dtype]).to_numpy(zero_copy_only=False)  # safe


def carried_texts(column) -> list:
  """The JSON texts of a column's values (see the module's docstring)."""
  arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  if pa.types.is_float32(arr.type) or pa.types.is_float16(arr.type):
    values = [None if v is None else np.float32(v) for v in arr.to_pylist()]
  else:
    values = arr.to_pylist()
  texts = []
  for value in values:
    try:
      texts.append(convert.carried_text(value))
    except TypeError:  # dates, decimals, ...: their text
      texts.append(orjson.dumps(str(value)))
  return texts


PARQUET_READ_BUFFER = 4 << 20


def open_parquet(f, columns) -> tuple:
  """(the ParquetFile of an open file, the columns it has of `columns`:
  those the job reads of it; None: all)."""
  # Column chunks streamed in buffered reads rather than loaded whole: a
  # row group of 65,536 images of 784 floats is 200 MB; reading it by
  # batches this way peaks ~100 MB lower (measured on that file).
  parquet = pq.ParquetFile(f, buffer_size=PARQUET_READ_BUFFER, pre_buffer=False)
  names = set(parquet.schema_arrow.names)
  return parquet, None if columns is None else [c for c in columns if c in names]


class ReadParquetBatches:
  """FileMetadata -> RawChunks holding one RecordBatch each; positions are
  row indexes within the file."""
  def __init__(self, columns=None):
    self._columns = columns  # None: all columns

  def process(self, metadata):
    path = metadata.path
    size = metadata.size_in_bytes or 0
    row, counted = 0, 0  # stored bytes recorded on chunks (RawChunk.stored_bytes)
    try:
      with FileSystems.open(path) as f:
        parquet, columns = open_parquet(f, self._columns)
        rows = parquet.metadata.num_rows or 1
        for batch in parquet.iter_batches(batch_size=ROWS_PER_CHUNK, columns=columns):
          chunk = RawChunk([(path, 0)], list(range(row, row + batch.num_rows)), batch,
                           kind=PARQUET)
          # Bytes in proportion to the rows read: enough for an ETA.
          counted = count_read(chunk, counted, size * (row + batch.num_rows) // rows, size)
          yield chunk
          row += batch.num_rows
    except Exception as e:  # pylint: disable=broad-except
      chunk = RawChunk([(path, 0)], [], pa.record_batch([]), kind=PARQUET, file_errors=[
          (path, f'reading failed after {row} rows: {fault_reason(e)}')])
      count_skipped(chunk, counted, size)  # the rest of the file could not be read
      yield chunk
      return
    if counted < size:  # a file of no rows: done with
      chunk = RawChunk([(path, 0)], [], pa.record_batch([]), kind=PARQUET)
      count_read(chunk, counted, size)
      yield chunk


def sample_parquet(metadata, quota: int, columns) -> FileSample:
  """As ReadParquetBatches, the first `quota` rows of the columns the job
  reads (`columns`; None: all); the row count from the file's metadata."""
  path = metadata.path
  sample = FileSample(path, PARQUET, metadata.size_in_bytes, [])
  try:
    with FileSystems.open(path) as f:
      parquet, read = open_parquet(f, columns)
      sample.count = parquet.metadata.num_rows
      sample.columns = tuple(parquet.schema_arrow.names)
      batch = next(parquet.iter_batches(batch_size=quota, columns=read), None)
  except Exception as e:  # pylint: disable=broad-except
    sample.count = 0
    sample.chunks = [RawChunk([(path, 0)], [], pa.record_batch([]), kind=PARQUET, file_errors=[
        (path, f'reading failed after 0 rows: {fault_reason(e)}')])]
    return sample
  sample.span = (sample.count, 0, sample.size)  # bytes per row, for files not counted
  if batch is not None and batch.num_rows:
    sample.chunks = [RawChunk([(path, 0)], list(range(batch.num_rows)), batch, kind=PARQUET)]
    sample.instances = batch.num_rows
  return sample


class ParquetFormat(InputFormat):
  kind = PARQUET

  def __init__(self, columns=None):
    self._columns = columns

  def read_unit(self, metadata, offsets):  # pylint: disable=unused-argument  (whole files)
    return ReadParquetBatches(self._columns).process(metadata)

  def sample(self, metadata, quota, limits):  # pylint: disable=unused-argument
    # Rows, not bytes: the file's metadata locates them, so no byte budget.
    return sample_parquet(metadata, quota, self._columns)

  def instance(self, chunk, row) -> Instance:
    batch = chunk.records
    fields = {}
    for i, name in enumerate(batch.schema.names):
      cell = batch.column(i).slice(row, 1)
      fields[name] = None if cell.null_count else cell
    return Instance(fields, convert=_convert_cell, carry=_carry_cell,
                    plain=lambda cell: cell.to_pylist()[0])

  def raw(self, chunk, row) -> bytes:
    record = chunk.records.slice(row, 1).to_pylist()[0]
    return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)

  def fast(self, chunk, rows, decoder):
    if decoder.signature.takes_examples or not all(s.fully_defined for s in decoder.inputs):
      return None
    batch = chunk.records
    names = set(batch.schema.names)
    if not all(s.name in names for s in decoder.inputs) or (
        decoder.key_field and decoder.key_field not in names):
      return None  # every row is a missing input or key: the definition says so
    keep = np.zeros(len(chunk), dtype=bool)
    keep[rows] = True
    for name in [s.name for s in decoder.inputs] + (
        [decoder.key_field] if decoder.key_field else []):
      keep &= ~batch.column(name).is_null().to_numpy(zero_copy_only=False)
    if not keep.any():
      return None
    selected = batch if keep.all() else batch.filter(pa.array(keep))
    try:
      feeds = {s.name: column_array(selected.column(s.name), s) for s in decoder.inputs}
    except _Mismatch:
      return None
    # A passthrough column the file lacks is null, as in the definition.
    carried = {f: carried_texts(selected.column(f)) if f in names else [b'null'] * len(selected)
               for f in decoder.carried}
    return FastRows([int(r) for r in np.flatnonzero(keep)], feeds, carried)


def _convert_cell(cell, spec) -> np.ndarray:
  """One row's column (a 1-row slice) for one input."""
  if cell.null_count:
    raise convert.SchemaError(f'input {spec.name!r} is null')
  if spec.fully_defined:
    try:
      return column_array(cell, spec)[0, ...]  # an array, also for a scalar string
    except _Mismatch:
      value = cell.to_pylist()[0]
      raise convert.SchemaError(
          f'input {spec.name!r} expects {spec.dtype} values of shape '
          f'{convert.shape_text(spec.shape)}, got {convert.short(value)} '
          f'({cell.type})') from None
  return convert.convert_value(cell.to_pylist()[0], spec)


def _carry_cell(cell) -> bytes:
  return b'null' if cell is None else carried_texts(cell)[0]
