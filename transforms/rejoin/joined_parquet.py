"""Joined rows as Parquet (`batch-predict join --output_format=parquet`).

Instances of JSON formats need not share their fields or types, so the
schema is not known before the pipeline runs (Beam's Parquet sinks take it
up front). It is found in the pipeline instead: each block of rows gets the
types pyarrow infers for it, the blocks' schemas are merged into one (a side
input) with pyarrow's permissive promotion (int64 with double is double), a
field whose types cannot be merged (a number in one row, a string in
another) is a string column of each value's JSON text, and every block is
cast to that schema before it is written.
"""
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes

from tf_batch_predict.transforms.rejoin.join import ERROR_FIELD, RAW_FIELD, row_texts
from tf_batch_predict.transforms.write.shards import SHARDS

BLOCK_ROWS = 4096
# Metadata key of a column holding JSON texts (types that could not be merged).
_JSON_TEXT = b'batch_predict.json_text'
# Metadata of a block's integer column with values beyond 2**53 (internal).
_BIG_INT = b'batch_predict.big_int'


def _value(text: bytes):
  """A JSON text as a Python value (integers of any size: the standard parser)."""
  return json.loads(text)


class RowBlocks(beam.DoFn):
  """JoinedRecords -> pa.Tables of up to BLOCK_ROWS rows, types inferred."""
  def __init__(self, layout):
    self._layout = layout
    self._rows = []

  def start_bundle(self):
    self._rows = []

  def process(self, joined):
    self._rows.append({k: _value(v) for k, v in row_texts(joined, self._layout).items()})
    if len(self._rows) >= BLOCK_ROWS:
      yield _table(self._rows)
      self._rows = []

  def finish_bundle(self):
    if self._rows:
      from apache_beam.transforms.window import GlobalWindow
      from apache_beam.utils.windowed_value import WindowedValue
      yield WindowedValue(_table(self._rows), 0, [GlobalWindow()])
      self._rows = []


def _json_texts(values) -> pa.Array:
  # The standard library's encoder: integers of any size (orjson stops at 64 bits).
  return pa.array([None if v is None else json.dumps(v, ensure_ascii=False,
                                                     separators=(',', ':'), default=str)
                   for v in values], pa.string())


def _table(rows: list) -> pa.Table:
  names = list(dict.fromkeys(name for row in rows for name in row))
  fields, columns = [], []
  for name in names:
    values = [row.get(name) for row in rows]
    try:
      column, metadata = pa.array(values), None
      if _beyond_doubles(column):
        metadata = {_BIG_INT: b'1'}  # merged with doubles, JSON text (never rounded)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
      column, metadata = _json_texts(values), {_JSON_TEXT: b'1'}
    columns.append(column)
    fields.append(pa.field(name, column.type, metadata=metadata))
  return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _is_json_text(field: pa.Field) -> bool:
  return bool(field.metadata and field.metadata.get(_JSON_TEXT))


def _is_big_int(field: pa.Field) -> bool:
  return bool(field.metadata and field.metadata.get(_BIG_INT))


def _beyond_doubles(column: pa.Array) -> bool:
  """Whether an integer column (or list of them, at any depth) holds a
  value a double cannot hold exactly."""
  import pyarrow.compute as pc
  while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
    column = column.flatten()
  if not pa.types.is_integer(column.type) or len(column) == column.null_count:
    return False
  extremes = pc.min_max(column)
  return max(abs(extremes['min'].as_py()), abs(extremes['max'].as_py())) > 2 ** 53


def _floating_items(arrow_type: pa.DataType) -> bool:
  while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
    arrow_type = arrow_type.value_type
  return pa.types.is_floating(arrow_type)


def _merge_type(a: pa.DataType, b: pa.DataType):
  """The type both fit, or None."""
  if a == b:
    return a
  try:
    merged = pa.unify_schemas([pa.schema([('f', a)]), pa.schema([('f', b)])],
                              promote_options='permissive')
    return merged.field('f').type
  except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
    return None


class MergeSchemas(beam.CombineFn):
  """Field name -> (type, JSON text?) over all blocks, in first-seen order."""
  def create_accumulator(self):
    return {}

  def add_input(self, accumulator, schema):
    for field in schema:
      self._add(accumulator, field.name, field.type, _is_json_text(field), _is_big_int(field))
    return accumulator

  @staticmethod
  def _add(accumulator, name, arrow_type, as_text, big=False):
    if name not in accumulator:
      accumulator[name] = (arrow_type, as_text, big)
      return
    known, known_text, known_big = accumulator[name]
    big = big or known_big
    if known_text or as_text:
      accumulator[name] = (pa.string(), True, big)
      return
    merged = _merge_type(known, arrow_type)
    if merged is not None and big and _floating_items(merged):
      merged = None  # an integer a double would round
    accumulator[name] = (pa.string(), True, big) if merged is None else (merged, False, big)

  def merge_accumulators(self, accumulators):
    merged = {}
    for accumulator in accumulators:
      for name, (arrow_type, as_text, big) in accumulator.items():
        self._add(merged, name, arrow_type, as_text, big)
    return merged

  def extract_output(self, accumulator):
    fields = []
    # The instance's fields and outputs first, what replaces them last.
    last = [n for n in (RAW_FIELD, ERROR_FIELD) if n in accumulator]
    order = [n for n in accumulator if n not in last] + last
    for name in order:
      arrow_type, as_text, _ = accumulator[name]
      if pa.types.is_null(arrow_type):
        arrow_type = pa.string()  # only nulls seen
      fields.append(pa.field(name, arrow_type,
                             metadata={_JSON_TEXT: b'1'} if as_text else None))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
  """The block with the merged schema's columns, in its order and types."""
  columns = []
  for field in schema:
    if field.name not in table.column_names:
      columns.append(pa.nulls(len(table), field.type))
      continue
    column = table.column(field.name)
    if _is_json_text(field):
      if not _is_json_text(table.schema.field(field.name)):
        column = _json_texts(column.to_pylist())
    elif column.type != field.type:
      try:
        column = column.cast(field.type)  # safe: fails rather than round or wrap
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise ValueError(f'field {field.name!r}: {column.type} values do not fit the '
                         f'merged type {field.type}') from None
    columns.append(column)
  return pa.Table.from_arrays(columns, schema=schema)


class _ParquetTablesSink(filebasedsink.FileBasedSink):
  """pyarrow Tables of one schema, known only when the first arrives."""
  def __init__(self, file_prefix):
    super().__init__(file_prefix, coder=None, file_name_suffix='.parquet',
                     shard_name_template=SHARDS, mime_type='application/x-parquet',
                     compression_type=CompressionTypes.UNCOMPRESSED)

  def open(self, temp_path):
    return [super().open(temp_path), None]  # file handle, writer once a table comes

  def write_record(self, state, table):
    if state[1] is None:
      state[1] = pq.ParquetWriter(state[0], table.schema)
    state[1].write_table(table)

  def close(self, state):
    handle, writer = state
    if writer is None:
      pq.write_table(pa.table({}), handle)  # no row: still a Parquet file
    else:
      writer.close()
    super().close(handle)


class WriteJoinedParquet(beam.PTransform):
  def __init__(self, file_prefix: str, layout):
    super().__init__()
    self._file_prefix = file_prefix
    self._layout = layout

  def expand(self, joined):
    tables = joined | 'RowBlocks' >> beam.ParDo(RowBlocks(self._layout))
    schema = (tables
              | 'BlockSchemas' >> beam.Map(lambda t: t.schema)
              | 'MergeSchemas' >> beam.CombineGlobally(MergeSchemas()))
    return (tables
            | 'Conform' >> beam.Map(conform, beam.pvalue.AsSingleton(schema))
            | 'Write' >> beam.io.Write(_ParquetTablesSink(self._file_prefix)))
