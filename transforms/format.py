"""Turn ScoredBatches into JSON lines: predictions, and errors on a tagged
output. Each output element is a block of lines, so the writer pays Beam's
per-element cost once per chunk."""
import base64
import dataclasses
import posixpath

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.metrics import Metrics

from transforms.records import METRICS_NAMESPACE, ScoredBatch

ERRORS_TAG = 'errors'
MAX_RAW_BYTES = 8192
LOCATION_FIELDS = ('filename', 'offset')
# numpy arrays and scalars are written by orjson in C, floats in shortest form.
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


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
  if isinstance(value, list):
    return [_bytes_json(v) for v in value]
  try:
    return value.decode('utf-8')
  except UnicodeDecodeError:
    return {'b64': base64.b64encode(value).decode('ascii')}


def _row_values(array: np.ndarray):
  """Something indexable by row that orjson can write."""
  if array.dtype == object:  # tf.string outputs come back as bytes objects
    return [_bytes_json(v) for v in array.tolist()]
  return array


@dataclasses.dataclass(frozen=True)
class OutputLayout:
  key_field: object  # str or None
  passthrough_fields: tuple
  output_names: dict  # signature output -> record field
  input_bases: tuple  # pattern directories, for relative file names


class FormatRecords(beam.DoFn):
  """ScoredBatch -> block of prediction lines (main) and of error lines."""
  def __init__(self, layout: OutputLayout):
    self._layout = layout
    self._predicted = Metrics.counter(METRICS_NAMESPACE, 'predictions')
    self._failed = {c: Metrics.counter(METRICS_NAMESPACE, f'errors_{c}')
                    for c in ('parse', 'schema', 'model')}

  def process(self, scored: ScoredBatch):
    layout, batch = self._layout, scored.batch
    chunk = batch.chunk
    lines = []
    for rows, outputs in scored.results:
      values = [(json_name, _row_values(outputs[name]))
                for name, json_name in layout.output_names.items()]
      for i, row in enumerate(rows):
        record = self._carried(batch, row)
        for json_name, column in values:
          record[json_name] = column[i]
        lines.append(orjson.dumps(record, option=_DUMPS_OPTIONS))
    if lines:
      self._predicted.inc(len(lines))
      yield b'\n'.join(lines)
    if scored.errors:
      yield beam.pvalue.TaggedOutput(
          ERRORS_TAG, b'\n'.join(self._error_line(batch, e) for e in scored.errors))

  def _carried(self, batch, row) -> dict:
    layout = self._layout
    if layout.key_field:
      record = {layout.key_field: batch.keys[row]}
    else:
      record = self._location(batch.chunk, row)
    for field in layout.passthrough_fields:
      record[field] = batch.passthrough[field][row]
    return record

  def _location(self, chunk, row) -> dict:
    return {'filename': relative_name(chunk.path_of(row), self._layout.input_bases),
            'offset': chunk.offsets[row]}

  def _error_line(self, batch, error) -> bytes:
    self._failed[error.category].inc()
    record = {}
    if self._layout.key_field and batch.keys and batch.keys[error.row] is not None:
      record[self._layout.key_field] = batch.keys[error.row]
    record.update(self._location(batch.chunk, error.row))
    record['error'] = {'category': error.category, 'message': error.message}
    raw = batch.chunk.lines[error.row]
    record['raw'] = raw[:MAX_RAW_BYTES].decode('utf-8', 'replace')
    if len(raw) > MAX_RAW_BYTES:
      record['raw_truncated_from_bytes'] = len(raw)
    return orjson.dumps(record, option=_DUMPS_OPTIONS)
