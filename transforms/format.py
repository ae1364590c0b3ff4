"""Turn ScoredBatches into output records: predictions in the chosen format
(JSON Lines, Parquet or TFRecord of tf.Examples), errors always as JSON
Lines on a tagged output. Each output element holds a whole chunk's records,
so the writers pay Beam's per-element cost once per chunk."""
import base64
import dataclasses
import json
import posixpath

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.records import (CSV, JSON, JSONL, METRICS_NAMESPACE, PARQUET,
                                ScoredBatch, TFRECORD)

ERRORS_TAG = 'errors'
OUTPUT_FORMATS = ('jsonl', 'parquet', 'tfrecord')
MAX_RAW_BYTES = 8192
LOCATION_FIELDS = ('filename', 'offset', 'index')
# numpy arrays and scalars are written by orjson in C, floats in shortest form.
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NUMPY_TO_ARROW = {'float16': pa.float16(), 'float32': pa.float32(), 'float64': pa.float64(),
                   'int8': pa.int8(), 'int16': pa.int16(), 'int32': pa.int32(),
                   'int64': pa.int64(), 'uint8': pa.uint8(), 'uint16': pa.uint16(),
                   'uint32': pa.uint32(), 'uint64': pa.uint64(), 'bool': pa.bool_(),
                   'string': pa.string()}


def output_names(outputs, carried) -> dict:
  """Output name -> name in the record. A carried field (key, location,
  passthrough) keeps its name; an output that would replace it is written
  as `<name>_output` (or `<name>_output_2`, ... if the model also has an
  output of that name, which keeps its own)."""
  outputs = list(outputs)
  taken = set(carried) | {name for name in outputs if name not in carried}
  names = {}
  for name in outputs:
    json_name, n = name, 1
    while name in carried and json_name in taken:
      json_name = f'{name}_output' if n == 1 else f'{name}_output_{n}'
      n += 1
    taken.add(json_name)
    names[name] = json_name
  return names


def relative_name(path: str, bases) -> str:
  """The file's path relative to the directory of the pattern that matched
  it (the longest matching base), else its base name."""
  best = None
  for base in bases:
    if path.startswith(base) and (best is None or len(base) > len(best)):
      best = base
  return path[len(best):] if best is not None else posixpath.basename(path)


def _bytes_json(value):
  """TF Serving's convention: UTF-8 text where valid, else {"b64": ...}."""
  if isinstance(value, list):
    return [_bytes_json(v) for v in value]
  try:
    return value.decode('utf-8')
  except UnicodeDecodeError:
    return {'b64': base64.b64encode(value).decode('ascii')}


def _bytes_text(value):
  """For string columns: UTF-8 text, or the JSON text of {"b64": ...}."""
  if isinstance(value, list):
    return [_bytes_text(v) for v in value]
  decoded = _bytes_json(value)
  return decoded if isinstance(decoded, str) else json.dumps(decoded)


def _as_text(value):
  """A carried value in a string column: text as is, anything else as JSON."""
  return value if isinstance(value, str) or value is None else orjson.dumps(value).decode()


@dataclasses.dataclass(frozen=True)
class OutputLayout:
  key_field: object  # str or None
  passthrough_fields: tuple
  output_names: dict  # signature output kept -> record field
  input_bases: tuple  # pattern directories, for relative file names
  output_format: str = 'jsonl'
  output_specs: tuple = ()  # TensorSpecs of the outputs kept (Parquet schema)
  position_fields: tuple = ('offset',)  # of the input kinds in the job

  def parquet_schema(self) -> pa.Schema:
    if self.key_field:
      fields = [(self.key_field, pa.string())]
    else:
      fields = [('filename', pa.string())] + [(f, pa.int64()) for f in self.position_fields]
    fields += [(f, pa.string()) for f in self.passthrough_fields]
    for spec in self.output_specs:
      if spec.shape is None:
        arrow = pa.string()  # unknown rank: the value's JSON text
      else:
        arrow = _NUMPY_TO_ARROW[spec.dtype]
        for _ in spec.shape:
          arrow = pa.list_(arrow)
      fields.append((self.output_names[spec.name], arrow))
    return pa.schema(fields)


class FormatRecords(beam.DoFn):
  """ScoredBatch -> one element of prediction records (main output) and one
  block of error lines (tagged output)."""
  def __init__(self, layout: OutputLayout):
    self._layout = layout
    self._predicted = Metrics.counter(METRICS_NAMESPACE, 'predictions')
    self._failed = {c: Metrics.counter(METRICS_NAMESPACE, f'errors_{c}')
                    for c in ('parse', 'schema', 'model')}
    self._schema = None
    self._names = {}  # file path -> relative name, per worker

  def setup(self):
    if self._layout.output_format == 'parquet':
      self._schema = self._layout.parquet_schema()

  def process(self, scored: ScoredBatch):
    records = self._prediction_records(scored)
    if records:
      self._predicted.inc(len(records))
      output_format = self._layout.output_format
      if output_format == 'jsonl':
        yield b'\n'.join(orjson.dumps(r, option=_DUMPS_OPTIONS) for r in records)
      elif output_format == 'parquet':
        yield pa.Table.from_pylist(records, schema=self._schema)
      else:
        yield [_example_bytes(r) for r in records]
    if scored.errors:
      yield beam.pvalue.TaggedOutput(
          ERRORS_TAG, b'\n'.join(self._error_line(scored.batch, e) for e in scored.errors))

  def _prediction_records(self, scored) -> list:
    layout, batch = self._layout, scored.batch
    records = []
    for rows, outputs in scored.results:
      values = [(json_name, self._column(outputs[name]))
                for name, json_name in layout.output_names.items()]
      for i, row in enumerate(rows):
        record = self._carried(batch, row)
        for json_name, column in values:
          record[json_name] = column[i]
        records.append(record)
    return records

  def _column(self, array: np.ndarray):
    """Something indexable by row, in the output format's convention."""
    output_format = self._layout.output_format
    if output_format == 'tfrecord':
      return array  # Examples hold bytes as they are
    if array.dtype == object:  # tf.string outputs come back as bytes objects
      convert = _bytes_json if output_format == 'jsonl' else _bytes_text
      return [convert(v) for v in array.tolist()]
    return array if output_format == 'jsonl' else array.tolist()

  def _carried(self, batch, row) -> dict:
    layout = self._layout
    text = _as_text if layout.output_format == 'parquet' else (lambda v: v)
    if layout.key_field:
      record = {layout.key_field: text(batch.keys[row])}
    else:
      record = self._location(batch.chunk, row)
    for field in layout.passthrough_fields:
      record[field] = text(batch.passthrough[field][row])
    return record

  def _location(self, chunk, row) -> dict:
    path = chunk.path_of(row)
    name = self._names.get(path)
    if name is None:
      name = self._names[path] = relative_name(path, self._layout.input_bases)
    location = {'filename': name}
    if chunk.positions[row] is not None:
      location[chunk.position_field] = chunk.positions[row]
    return location

  def _error_line(self, batch, error) -> bytes:
    self._failed[error.category].inc()
    record = {}
    if self._layout.key_field and batch.keys and batch.keys[error.row] is not None:
      record[self._layout.key_field] = batch.keys[error.row]
    record.update(self._location(batch.chunk, error.row))
    record['error'] = {'category': error.category, 'message': error.message}
    record.update(_raw_fields(batch.chunk, error.row))
    return orjson.dumps(record, option=_DUMPS_OPTIONS)


def _raw_fields(chunk, row) -> dict:
  """The failed instance as read: text for text formats, base64 for TFRecord."""
  record = chunk.records[row] if chunk.kind != PARQUET else None
  if chunk.kind in (JSONL, CSV):
    raw, field = record, 'raw'
  elif chunk.kind == TFRECORD:
    raw, field = record, 'raw_b64'
  elif chunk.kind == JSON:
    raw = record.encode('utf-8') if isinstance(record, str) else orjson.dumps(
        record, option=orjson.OPT_SERIALIZE_NUMPY)
    field = 'raw'
  else:
    raw = orjson.dumps(chunk.records.slice(row, 1).to_pylist()[0], default=str)
    field = 'raw'
  fields = {}
  cut = raw[:MAX_RAW_BYTES]
  fields[field] = (base64.b64encode(cut).decode('ascii') if field == 'raw_b64'
                   else cut.decode('utf-8', 'replace'))
  if len(raw) > MAX_RAW_BYTES:
    fields['raw_truncated_from_bytes'] = len(raw)
  return fields


def _feature(feature, value) -> None:
  """Sets one Example feature from a record value: numbers as float or int64
  lists, text and bytes as bytes, anything structured as its JSON text."""
  if isinstance(value, (str, bytes)):
    value = [value]
  try:
    flat = np.asarray(value).reshape(-1)
  except ValueError:  # ragged structure
    flat = np.asarray([orjson.dumps(value)], dtype=object)
  if flat.dtype.kind == 'f':
    feature.float_list.value.extend(flat.tolist())
  elif flat.dtype.kind in 'biu':
    feature.int64_list.value.extend(flat.tolist())
  else:
    feature.bytes_list.value.extend(
        v if isinstance(v, bytes) else v.encode('utf-8') if isinstance(v, str)
        else orjson.dumps(v) for v in flat.tolist())


def _example_bytes(record: dict) -> bytes:
  """One prediction record as a serialized tf.Example."""
  from tensorflow.core.example import example_pb2  # only for TFRecord output
  example = example_pb2.Example()
  for name, value in record.items():
    if value is not None:
      _feature(example.features.feature[name], value)
  return example.SerializeToString()
