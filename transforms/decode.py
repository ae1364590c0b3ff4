"""Decode chunks of instances into the arrays a signature takes.

Every format has a whole-chunk path for plain instances: JSON Lines through
simdjson (wide numeric inputs: arrays go straight into numpy buffers) or
pyarrow's JSON reader (many narrow fields), CSV through pyarrow's CSV reader,
Parquet batches by casting, TFRecord through tf.io.parse_example; any anomaly (bad JSON, a
missing field, a wrong type or shape) sends the chunk through the
per-instance path, which turns each bad instance into an error record with a
precise reason and still decodes the good ones. JSON request files always go
through the per-instance path (they are small).

Signatures that take serialized tf.Examples are fed TFRecord records as they
are, and Examples built from the fields of any other input.
"""
import csv
import io
import logging
import math
import threading
from typing import Optional

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import simdjson
from apache_beam.metrics import Metrics

from transforms import convert, examples
from transforms.records import (CSV, FeedGroup, InstanceBatch, InstanceError, JSONL, METRICS_NAMESPACE, PARQUET, PARSE, RawChunk,
                                SCHEMA, TFRECORD)
from transforms.savedmodel import SignatureSpec, TensorSpec

_LOG = logging.getLogger(__name__)
_PARSE_BLOCKS = 8
# Numbers per instance from which simdjson beats pyarrow's JSON reader: it
# parses arrays into buffers without Python floats, but pays per field.
_SIMDJSON_MIN_VALUES = 32
_SIMDJSON_KINDS = {'f': 'd', 'i': 'i'}  # numpy kind -> simdjson buffer type
_CONVERTERS = {CSV: convert.convert_text_value, TFRECORD: convert.convert_feature_values}


class InstanceDecoder:
  """Turns RawChunks into InstanceBatches for one signature.

  An instance is an object whose fields name the inputs; for a single-input
  signature it may also be the bare value. `key_field` and
  `passthrough_fields` are carried to the output; other fields are ignored.
  """
  def __init__(self, signature: SignatureSpec, key_field: Optional[str] = None,
               passthrough_fields=()):
    self._inputs = signature.inputs
    self._single = self._inputs[0] if len(self._inputs) == 1 else None
    self._key_field = key_field
    self._passthrough = tuple(passthrough_fields)
    self._carried = tuple(dict.fromkeys(
        ([key_field] if key_field else []) + list(self._passthrough)))
    self._takes_examples = signature.takes_examples
    self._example_features = signature.example_features
    input_types = {s.name: convert.arrow_type(s) for s in self._inputs}
    self._input_types = (input_types if all(input_types.values())
                         and not self._takes_examples else None)
    # CSV cells hold scalars: inputs of shape [] or [1] read as columns.
    self._csv_types = ({s.name: convert.arrow_type(TensorSpec(s.name, s.dtype, ()))
                        for s in self._inputs}
                       if self._input_types and all(s.shape in ((), (1,)) for s in self._inputs)
                       else None)
    if self._single is not None:
      self._bare_prefix = b'{' + orjson.dumps(self._single.name) + b':'
    self._simdjson_plan = self._plan_simdjson()
    self._local = threading.local()  # simdjson parsers are not thread-safe

  def __getstate__(self):
    state = dict(self.__dict__)
    del state['_local']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def _plan_simdjson(self):
    """(input, numpy dtype, values per instance) when every input is a
    number or a vector of numbers and they are wide enough; else None."""
    if self._input_types is None:
      return None
    plan = []
    for spec in self._inputs:
      dtype = np.dtype(spec.dtype) if spec.dtype != 'string' else None
      if dtype is None or dtype.kind not in 'fi' or len(spec.shape) > 1:
        return None
      plan.append((spec, dtype, math.prod(spec.shape)))
    if sum(size for _, _, size in plan) < _SIMDJSON_MIN_VALUES:
      return None
    return plan

  def decode(self, chunk: RawChunk) -> InstanceBatch:
    if len(chunk) and not chunk.read_errors:
      columnar = {JSONL: (self._decode_jsonl_simdjson if self._simdjson_plan
                          else self._decode_jsonl_columnar),
                  PARQUET: self._decode_parquet_columnar,
                  CSV: self._decode_csv_columnar,
                  TFRECORD: self._decode_tfrecord_columnar}.get(chunk.kind)
      if columnar is not None:
        try:
          return columnar(chunk)
        except convert.NotFastPath:
          pass
        except Exception:  # pylint: disable=broad-except
          # Never lose a chunk to a surprise here: the per-instance path
          # decodes what it can and reports the rest.
          _LOG.warning('Columnar decoding failed; decoding one instance at a time',
                       exc_info=True)
    return self._decode_per_instance(chunk)

  # -- whole chunk at once -------------------------------------------------

  def _decode_jsonl_columnar(self, chunk: RawChunk) -> InstanceBatch:
    if self._input_types is None:
      raise convert.NotFastPath
    lines = chunk.records
    if all(line[:1] == b'{' for line in lines):
      blob = b'\n'.join(lines)
      carried_types = self._carried_types(lines[0])
    elif (self._single is not None and not self._carried
          and not any(line[:1] == b'{' for line in lines)):
      prefix = self._bare_prefix
      blob = b'\n'.join([prefix + line + b'}' for line in lines])
      carried_types = {}
    else:
      raise convert.NotFastPath
    fields = dict(carried_types)
    fields.update(self._input_types)
    # pyarrow parses blocks in parallel; a block must hold the longest line.
    block_size = max(len(blob) // _PARSE_BLOCKS, max(map(len, lines)) + 2, 1 << 16)
    try:
      table = pajson.read_json(
          io.BytesIO(blob),
          read_options=pajson.ReadOptions(block_size=block_size),
          parse_options=pajson.ParseOptions(
              explicit_schema=pa.schema(list(fields.items())),
              unexpected_field_behavior='ignore'))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      raise convert.NotFastPath from None
    if table.num_rows != len(lines):
      raise convert.NotFastPath
    return self._columnar_batch(chunk, table, table.column)

  def _decode_jsonl_simdjson(self, chunk: RawChunk) -> InstanceBatch:
    parser = getattr(self._local, 'parser', None)
    if parser is None:
      parser = self._local.parser = simdjson.Parser()
    lines = chunk.records
    feeds = {spec.name: np.empty((len(lines),) + spec.shape, dtype)
             for spec, dtype, _ in self._simdjson_plan}
    keys = [] if self._key_field else None
    passthrough = {f: [] for f in self._passthrough}
    try:
      for row, line in enumerate(lines):
        doc = parser.parse(line)
        if not isinstance(doc, simdjson.Object):
          raise convert.NotFastPath
        for spec, dtype, size in self._simdjson_plan:
          value = doc[spec.name]
          if spec.shape:
            values = value.as_buffer(of_type=_SIMDJSON_KINDS[dtype.kind])
            flat = np.frombuffer(values, np.float64 if dtype.kind == 'f' else np.int64)
            if len(flat) != size or len(value) != size:  # nested lists flatten
              raise convert.NotFastPath
            if dtype.kind == 'i' and dtype != np.int64 and flat.size and (
                flat.min() < np.iinfo(dtype).min or flat.max() > np.iinfo(dtype).max):
              raise convert.NotFastPath
            feeds[spec.name][row] = flat
          elif (isinstance(value, bool) or not isinstance(value, (int, float))
                or (dtype.kind == 'i' and not isinstance(value, int))):
            raise convert.NotFastPath
          else:
            feeds[spec.name][row] = value
        if keys is not None:
          key = doc.get(self._key_field)
          if not isinstance(key, (str, int, float)) or isinstance(key, bool):
            raise convert.NotFastPath
          keys.append(key)
        for field in self._passthrough:
          passthrough[field].append(_plain(doc.get(field)))
        doc = value = None  # the parser reuses its buffer: drop every proxy
    except (ValueError, TypeError, KeyError, OverflowError):
      raise convert.NotFastPath from None
    return InstanceBatch(chunk, keys, passthrough,
                         [FeedGroup(list(range(len(lines))), feeds)], [])

  def _decode_parquet_columnar(self, chunk: RawChunk) -> InstanceBatch:
    if self._input_types is None:
      raise convert.NotFastPath
    batch = chunk.records
    names = set(batch.schema.names)
    if not all(s.name in names for s in self._inputs) or not all(
        f in names for f in self._carried):
      raise convert.NotFastPath

    def column(name):
      arrow = self._input_types.get(name)
      values = batch.column(name)
      if arrow is None or values.type == arrow:
        return values
      try:
        return pc.cast(values, arrow)  # safe: no silent truncation
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise convert.NotFastPath from None
    return self._columnar_batch(chunk, batch, column)

  def _decode_csv_columnar(self, chunk: RawChunk) -> InstanceBatch:
    if self._csv_types is None:
      raise convert.NotFastPath
    # Carried cells stay the text they are, as on the per-row path.
    types = {f: pa.string() for f in self._carried}
    types.update(self._csv_types)
    try:
      table = pacsv.read_csv(
          io.BytesIO(b'\n'.join(chunk.records)),
          read_options=pacsv.ReadOptions(column_names=list(chunk.header)),
          convert_options=pacsv.ConvertOptions(
              column_types=types, include_columns=list(types),
              strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError):
      raise convert.NotFastPath from None
    if table.num_rows != len(chunk):
      raise convert.NotFastPath

    def column(name):
      values = table.column(name)
      spec = next((s for s in self._inputs if s.name == name), None)
      if spec is not None and spec.shape == (1,):
        values = values.combine_chunks()
        if values.null_count:
          raise convert.NotFastPath
        return pa.FixedSizeListArray.from_arrays(values, 1).cast(self._input_types[name])
      return values
    return self._columnar_batch(chunk, table, column)

  def _decode_tfrecord_columnar(self, chunk: RawChunk) -> InstanceBatch:
    """tf.io.parse_example on the whole chunk, fixed-length features typed
    by the signature; carried features typed from the first record."""
    import tensorflow as tf  # workers load it for scoring anyway
    tf_types = {'float32': tf.float32, 'int64': tf.int64, 'string': tf.string}
    features = {}
    if not self._takes_examples:
      for spec in self._inputs:
        if spec.dtype not in tf_types or not spec.fully_defined:
          raise convert.NotFastPath
        features[spec.name] = tf.io.FixedLenFeature(spec.shape, tf_types[spec.dtype])
    first = examples.example_fields(chunk.records[0]) if self._carried else {}
    for field in self._carried:
      values = first.get(field)
      if field in features or not values or len(values) != 1:
        if field in features and features[field].shape == ():
          continue
        raise convert.NotFastPath
      kind = (tf.string if isinstance(values[0], bytes)
              else tf.int64 if isinstance(values[0], int) else tf.float32)
      features[field] = tf.io.FixedLenFeature((), kind)
    try:
      parsed = tf.io.parse_example(chunk.records, features)
    except (tf.errors.InvalidArgumentError, ValueError):
      raise convert.NotFastPath from None
    if self._takes_examples:
      records = np.empty(len(chunk), dtype=object)
      records[:] = chunk.records
      feeds = {self._inputs[0].name: records}
    else:
      feeds = {s.name: parsed[s.name].numpy() for s in self._inputs}

    def carried(field):
      values = parsed[field].numpy().tolist()
      if values and isinstance(values[0], bytes):
        return [examples.carried_value([v]) for v in values]
      return values
    keys = carried(self._key_field) if self._key_field else None
    passthrough = {f: carried(f) for f in self._passthrough}
    return InstanceBatch(chunk, keys, passthrough,
                         [FeedGroup(list(range(len(chunk))), feeds)], [])

  def _columnar_batch(self, chunk, table, column) -> InstanceBatch:
    feeds = {s.name: convert.arrow_to_numpy(column(s.name), s) for s in self._inputs}
    keys = None
    if self._key_field:
      keys = table.column(self._key_field).to_pylist()
      if any(k is None for k in keys):
        raise convert.NotFastPath
    passthrough = {f: table.column(f).to_pylist() for f in self._passthrough}
    return InstanceBatch(chunk, keys, passthrough,
                         [FeedGroup(list(range(len(chunk))), feeds)], [])

  def _carried_types(self, first_line: bytes) -> dict:
    """Arrow types of the carried fields, judged from the chunk's first line;
    a field the signature also takes keeps the input's type."""
    if not self._carried:
      return {}
    try:
      first = orjson.loads(first_line)
    except orjson.JSONDecodeError:
      raise convert.NotFastPath from None
    types = {}
    for field in self._carried:
      if field in self._input_types:
        continue
      arrow = convert.python_to_arrow_type(first.get(field))
      if arrow is None:
        raise convert.NotFastPath
      types[field] = arrow
    return types

  # -- one instance at a time ----------------------------------------------

  def _instances(self, chunk: RawChunk):
    """Yields (row, value, error): the instance's value (an object of fields,
    or a bare value), or the reason it could not be read."""
    kind = chunk.kind
    if kind == PARQUET:
      rows = chunk.records.to_pylist()
    for row in range(len(chunk)):
      if row in chunk.read_errors:
        yield row, None, chunk.read_errors[row]
        continue
      try:
        if kind == JSONL:
          value = convert.parse_json_line(chunk.records[row])
        elif kind == CSV:
          value = _csv_fields(chunk.records[row], chunk.header)
        elif kind == TFRECORD:
          value = examples.example_fields(chunk.records[row])
        elif kind == PARQUET:
          value = rows[row]
        else:
          value = chunk.records[row]
      except ValueError as e:
        yield row, None, str(e)
        continue
      yield row, value, None

  def _decode_per_instance(self, chunk: RawChunk) -> InstanceBatch:
    errors = []
    keys = [None] * len(chunk) if self._key_field else None
    passthrough = {f: [None] * len(chunk) for f in self._passthrough}
    groups = {}  # per-input shapes -> (rows, per-input lists of arrays)
    carry = examples.carried_value if chunk.kind == TFRECORD else (lambda v: v)
    for row, value, read_error in self._instances(chunk):
      if read_error is not None:
        errors.append(InstanceError(row, PARSE, read_error))
        continue
      fields = value if self._is_fields_object(value) else None
      if fields is not None:
        if keys is not None and fields.get(self._key_field) is not None:
          keys[row] = carry(fields[self._key_field])
        for f in self._passthrough:
          if fields.get(f) is not None:
            passthrough[f][row] = carry(fields[f])
      try:
        if keys is not None and keys[row] is None:
          raise convert.SchemaError(f'missing key field {self._key_field!r}')
        arrays = self._instance_arrays(chunk, row, value, fields)
      except convert.SchemaError as e:
        errors.append(InstanceError(row, SCHEMA, str(e)))
        continue
      except Exception as e:  # pylint: disable=broad-except
        errors.append(InstanceError(row, SCHEMA, f'cannot convert: {type(e).__name__}: {e}'))
        continue
      shapes = tuple(a.shape for a in arrays)
      rows, columns = groups.setdefault(shapes, ([], [[] for _ in arrays]))
      rows.append(row)
      for column, arr in zip(columns, arrays):
        column.append(arr)
    feed_groups = [
        FeedGroup(rows, {s.name: np.stack(col) for s, col in zip(self._inputs, columns)})
        for rows, columns in groups.values()]
    return InstanceBatch(chunk, keys, passthrough, feed_groups, errors)

  def _is_fields_object(self, value) -> bool:
    if not isinstance(value, dict):
      return False
    # {"b64": ...} alone is a bare binary value for a single string input.
    return not (self._single is not None and set(value) == {'b64'}
                and self._single.name != 'b64')

  def _instance_arrays(self, chunk, row, value, fields) -> list:
    if self._takes_examples:
      return [self._example_array(chunk, row, value, fields)]
    if fields is None:
      if self._single is None:
        names = ', '.join(s.name for s in self._inputs)
        raise convert.SchemaError(
            f'a bare value needs a single-input signature; write an object '
            f'with fields {names}')
      return [convert.convert_value(value, self._single)]
    to_array = _CONVERTERS.get(chunk.kind, convert.convert_value)
    arrays = []
    for spec in self._inputs:
      if spec.name not in fields or fields[spec.name] is None:
        raise convert.SchemaError(f'missing input field {spec.name!r}')
      arrays.append(to_array(fields[spec.name], spec))
    return arrays

  def _example_array(self, chunk, row, value, fields) -> np.ndarray:
    """The serialized Example to feed: the record itself for TFRecord input,
    else one built from the instance's fields."""
    if chunk.kind == TFRECORD:
      return _bytes_scalar(chunk.records[row])
    if fields is None:
      return convert.convert_value(value, self._single)  # a bare serialized Example
    features = self._example_features
    skip = set(self._carried) - set(features or ())
    kept = {k: v for k, v in fields.items() if k not in skip}
    return _bytes_scalar(examples.serialize_example(kept, features,
                                                    text_cells=chunk.kind == CSV))


def _plain(value):
  """A simdjson value as plain Python (objects and arrays are proxies)."""
  if isinstance(value, simdjson.Object):
    return value.as_dict()
  if isinstance(value, simdjson.Array):
    return value.as_list()
  return value


def _bytes_scalar(data: bytes) -> np.ndarray:
  arr = np.empty((), dtype=object)
  arr[()] = data
  return arr


def _csv_fields(line: bytes, header) -> dict:
  try:
    cells = next(csv.reader([line.decode('utf-8')]))
  except (csv.Error, UnicodeDecodeError) as e:
    raise ValueError(f'invalid CSV row: {e}') from None
  if len(cells) != len(header):
    raise ValueError(f'the CSV row has {len(cells)} columns, the header {len(header)}')
  return dict(zip(header, cells))


class DecodeInstances(beam.DoFn):
  """RawChunk -> InstanceBatch; bad instances ride along as errors."""
  def __init__(self, decoder: InstanceDecoder):
    self._decoder = decoder
    self._read = Metrics.counter(METRICS_NAMESPACE, 'instances_read')
    self._blank = Metrics.counter(METRICS_NAMESPACE, 'blank_lines')

  def process(self, chunk: RawChunk):
    self._read.inc(len(chunk))
    self._blank.inc(chunk.blank_lines)
    if len(chunk):
      yield self._decoder.decode(chunk)
