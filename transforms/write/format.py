"""Turn ScoredBatches into output records: predictions in the chosen format
(JSON Lines, Parquet or TFRecord of tf.Examples), errors always as JSON
Lines on a tagged output. Each output element holds a whole chunk's records,
so the writers pay Beam's per-element cost once per chunk."""
import base64
import dataclasses
import json
import logging
import re
import time

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from tf_batch_predict.transforms.write import format_columnar as columnar
from tf_batch_predict.transforms import progress
from tf_batch_predict.transforms.convert import bytes_json, carried_as_text, typed_carried
from tf_batch_predict.transforms.file_patterns import literal_folder, name_text, printable
from tf_batch_predict.transforms.records import CATEGORIES, FILE, MODEL, METRICS_NAMESPACE, ScoredBatch

ERRORS_TAG = 'errors'
# The text that marks an early stop in whatever error the runner reports.
EARLY_STOP_MARK = 'batch-predict stopped early:'
_LOG = logging.getLogger(__name__)
OUTPUT_FORMATS = ('jsonl', 'parquet', 'tfrecord')
MAX_RAW_BYTES = 8192
LOCATION_FIELDS = ('filename', 'offset', 'index')
# Parquet schema metadata: {typed carried field: the column of its texts}.
TEXT_COLUMNS_KEY = b'tf_batch_predict.text_columns'
_ARROW_CARRIED = {'int64': pa.int64(), 'float64': pa.float64(), 'bool': pa.bool_()}
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


def common_base(patterns) -> str:
  """The deepest directory common to all input patterns (up to their first
  wildcard), ending in '/': file names relative to it are unique across
  the patterns of a job, where names relative to each pattern's own
  directory would not be (`d1/*.jsonl,d2/*.jsonl` with `part.jsonl` in
  both). '' when they share nothing (different buckets or schemes)."""
  parts = [pattern_base(p).split('/')[:-1] for p in patterns]
  common = []
  for level in zip(*parts):
    if len(set(level)) != 1:
      break
    common.append(level[0])
  return '/'.join(common) + '/' if common else ''  # '/', 'gs://' alone: still unique


def pattern_base(pattern: str) -> str:
  """The directory part of a pattern before its first wildcard."""
  return literal_folder(pattern)


def relative_name(path: str, base: str) -> str:
  """The file's path relative to the job's input base (`common_base`), or
  the whole path where it is not under it; as text by `name_text` (a name
  that is not UTF-8, `%XX` for its other bytes)."""
  return name_text(path[len(base):] if base and path.startswith(base) else path)


def _bytes_text(value):
  """For string columns: UTF-8 text, or the JSON text of {"b64": ...}."""
  if isinstance(value, list):
    return [_bytes_text(v) for v in value]
  decoded = bytes_json(value)
  return decoded if isinstance(decoded, str) else json.dumps(decoded)


def _bytes_json(value):
  if isinstance(value, list):
    return [_bytes_json(v) for v in value]
  return bytes_json(value)


def _b64_json(value):
  """TF Serving's form for an output named `*_bytes`: always base64."""
  if isinstance(value, list):
    return [_b64_json(v) for v in value]
  return {'b64': base64.b64encode(value).decode('ascii')}


def is_bytes_output(spec) -> bool:
  """TF Serving's REST convention: a string output whose name ends in
  `_bytes` is always written as {"b64": ...}, whatever its content (so a
  client never has to guess whether a value is text)."""
  return spec.dtype == 'string' and spec.name.endswith('_bytes')


_INT64_TEXT = re.compile(rb'-?(?:0|[1-9][0-9]{0,18})')


def _carried_feature_value(text: bytes):
  """A carried value in a tf.Example: an integer that fits int64 as itself,
  anything else as text (a string as is, other values as JSON text)."""
  if _INT64_TEXT.fullmatch(text) and -2**63 <= int(text) < 2**63:
    return int(text)
  return carried_as_text(text)


@dataclasses.dataclass(frozen=True)
class OutputLayout:
  key_field: object  # str or None
  passthrough_fields: tuple
  output_names: dict  # signature output kept -> record field
  input_base: str  # the patterns' common directory: file names relative to it
  output_format: str = 'jsonl'
  output_specs: tuple = ()  # TensorSpecs of the outputs kept (Parquet schema)
  position_fields: tuple = ('offset',)  # of the input kinds in the job
  squeezed: tuple = ()  # outputs of shape [1] written as their one value
  # (field, type) of carried fields in typed Parquet columns, other than
  # string (--parquet_column_types); each has a text column.
  carried_types: tuple = ()

  def text_column(self, field: str) -> str:
    """The column of a typed field's values that are not of its type."""
    return f'{field}_text'

  def parquet_schema(self) -> pa.Schema:
    types = dict(self.carried_types)
    fields = [] if self.key_field else (
        [('filename', pa.string())] + [(f, pa.int64()) for f in self.position_fields])
    for field in ((self.key_field,) if self.key_field else ()) + self.passthrough_fields:
      if field in types:
        fields += [(field, _ARROW_CARRIED[types[field]]),
                   (self.text_column(field), pa.string())]
      else:
        fields.append((field, pa.string()))
    for spec in self.output_specs:
      if spec.shape is None:
        arrow = pa.string()  # unknown rank: the value's JSON text
      else:
        # Parquet holds bytes natively: `*_bytes` outputs are binary columns.
        arrow = pa.binary() if is_bytes_output(spec) else _NUMPY_TO_ARROW[spec.dtype]
        for _ in spec.shape:
          arrow = pa.list_(arrow)
      fields.append((self.output_names[spec.name], arrow))
    metadata = None
    if types:
      metadata = {TEXT_COLUMNS_KEY: json.dumps(
          {f: self.text_column(f) for f in types}).encode()}
    return pa.schema(fields, metadata=metadata)


class FormatRecords(beam.DoFn):
  """ScoredBatch -> one element of prediction records (main output) and one
  block of error lines (tagged output).

  Carried values are written as the JSON texts the decoder kept. Nothing
  about one record can raise out of this step: a prediction that cannot be
  written becomes an error record of its own.
  """
  def __init__(self, layout: OutputLayout, formats: dict, early_stop_after: int = 0):
    self._layout = layout
    self._formats = formats  # input kind -> InputFormat, for raw records
    # A worker whose first `early_stop_after` instances all fail with the
    # same message stops the run (0: never): see `_watch`.
    self._early_stop_after = early_stop_after
    self._alike = None  # (category, message, count) while every instance failed alike
    self._predicted = Metrics.counter(METRICS_NAMESPACE, 'predictions')
    self._failed = {c: Metrics.counter(METRICS_NAMESPACE, f'errors_{c}') for c in CATEGORIES}
    self._files_incomplete = Metrics.counter(METRICS_NAMESPACE, 'files_incomplete')
    self._time = Metrics.counter(METRICS_NAMESPACE, 'time_format_us')
    self._incomplete_paths = Metrics.string_set(METRICS_NAMESPACE, 'incomplete_files')
    # One error message of each category, the first this instance writes
    # (the summary shows one example per category).
    self._examples = {c: Metrics.string_set(METRICS_NAMESPACE, f'error_example_{c}')
                      for c in CATEGORIES}
    self._exampled = set()
    self._schema = None
    self._text_outputs = set()  # outputs of unknown rank (Parquet: JSON text)
    self._bytes_outputs = set()  # `*_bytes` string outputs: always base64 in JSON
    self._names = {}  # file path -> relative name, per worker
    self._specs = {}  # output name -> TensorSpec
    self._types = dict(layout.carried_types)  # typed Parquet columns
    self._columnar_ok = False  # the columnar path may write this layout

  def setup(self):
    if self._layout.output_format == 'parquet':
      self._schema = self._layout.parquet_schema()
    self._text_outputs = {s.name for s in self._layout.output_specs if s.shape is None}
    self._bytes_outputs = {s.name for s in self._layout.output_specs if is_bytes_output(s)}
    self._specs = {s.name: s for s in self._layout.output_specs}
    layout = self._layout
    carried = ([layout.key_field] if layout.key_field else list(LOCATION_FIELDS))
    written = carried + list(layout.passthrough_fields) + list(layout.output_names.values())
    # Repeated record fields (a dict keeps one): the definition's business.
    self._columnar_ok = (len(set(written)) == len(written) and (
        layout.output_format != 'parquet' or set(self._specs) >= set(layout.output_names)))

  def process(self, scored: ScoredBatch):
    started = time.perf_counter()
    if self._layout.squeezed:
      scored = _squeezed(scored, self._layout.squeezed)
    errors = list(scored.errors)
    if self._early_stop_after and self._alike != ():
      self._watch(scored, errors)
    encoded = self._columnar(scored)
    if encoded is columnar.Declined:
      encoded = self._encode_exact(scored, errors)
    lines = [self._error_line(scored.batch, e) for e in errors]
    lines += [self._file_error_line(path, message)
              for path, message in scored.batch.chunk.file_errors]
    # Time spent formatting, per element (summary.json `stages`).
    self._time.inc(int((time.perf_counter() - started) * 1e6))
    if encoded is not None:
      yield encoded
    if lines:
      progress.add(progress.ERRORS, len(lines))
      yield beam.pvalue.TaggedOutput(ERRORS_TAG, b'\n'.join(lines))

  def _watch(self, scored, errors) -> None:
    """Stops the run (raises EarlyStop) once the first `early_stop_after`
    instances this worker formats have all failed with one and the same
    message: a misspelt --key_field, inputs the model does not have, the
    wrong model for the data. Such a run would fail every instance and end
    with exit status 3 after hours. One prediction, or a second message,
    ends the watch (`_alike = ()`): a burst of bad lines in a healthy run
    never stops it, however long."""
    if any(len(rows) for rows, _ in scored.results):
      self._alike = ()
      return
    for e in errors:
      if self._alike is None:
        self._alike = (e.category, e.message, 0)
      category, message, count = self._alike
      if (e.category, e.message) != (category, message):
        self._alike = ()
        return
      self._alike = (category, message, count + 1)
    if self._alike and self._alike[2] >= self._early_stop_after:
      category, message, count = self._alike
      # The closing period ends the message where a runner quotes it
      # (pipeline/cli.py `early_stop`): the reason may end in a quote.
      raise EarlyStop(f'{EARLY_STOP_MARK} the first {count:,} instances a worker read all '
                      f'failed with the same {category} error: {message}.')

  def finish_bundle(self):
    progress.flush()  # a local worker process's figures, for the launcher

  def _encode_exact(self, scored, errors):
    """The definition of the prediction records' element: one record
    (a dict) at a time, then encoded."""
    records = self._records_exact(scored, errors)
    return self._encode(records, scored.batch, errors) if records else None

  def _columnar(self, scored):
    """The element `_encode_exact` gives, built column by column
    (transforms/write/format_columnar.py), or `columnar.Declined` where that path
    does not write this batch exactly (then the definition does)."""
    try:
      encoded, count = self._columnar_element(scored)
    except Exception:  # pylint: disable=broad-except  (the definition will say)
      return columnar.Declined
    if count:
      self._predicted.inc(count)
      progress.add(progress.PREDICTED, count)
    return encoded

  def _columnar_element(self, scored):
    """(element or None, number of records); raises where declined."""
    layout, batch, output_format = self._layout, scored.batch, self._layout.output_format
    check = columnar.check
    check(self._columnar_ok)
    chunk = batch.chunk
    groups, columns = [], {name: [] for name in layout.output_names}
    for rows, outputs in scored.results:
      if not len(rows):
        continue
      rows = np.asarray(rows)
      check(rows.ndim == 1 and rows.dtype.kind in 'iu')
      check(int(rows.min()) >= 0 and int(rows.max()) < len(chunk))
      groups.append(rows)
      for name in layout.output_names:
        array = outputs[name]
        check(columnar.numeric(array) and array.shape[0] == len(rows))
        if output_format == 'parquet':
          spec = self._specs[name]
          check(spec.shape is not None and spec.dtype == array.dtype.name
                and array.ndim == 1 + len(spec.shape))
          columns[name].append(_arrow_column(array, _NUMPY_TO_ARROW[spec.dtype]))
        elif output_format == 'jsonl':
          columns[name].append(columnar.json_rows(array))
        elif array.dtype.kind == 'f':
          columns[name].append(columnar.float_features(array))
        else:
          columns[name].append(columnar.int_features(array))
    if not groups:
      return None, 0
    rows = np.concatenate(groups).astype(np.int64)
    fields = self._columnar_carried(batch, rows)
    for name, json_name in layout.output_names.items():
      parts = columns[name]
      fields.append((json_name, parts[0] if len(parts) == 1 else pa.concat_arrays(parts)))
    if output_format == 'jsonl':
      pieces = []
      for i, (name, column) in enumerate(fields):
        pieces += [(b',' if i else b'{') + orjson.dumps(name) + b':', column]
      block = columnar.block(columnar.join(pieces + [b'}\n']))
      return block[:-1], len(rows)
    if output_format == 'parquet':
      return pa.Table.from_arrays([c for _, c in fields], schema=self._schema), len(rows)
    return columnar.examples([columnar.feature_entry(n, c) for n, c in fields]), len(rows)

  def _columnar_carried(self, batch, rows) -> list:
    """(record field, column) of the key or location and the passthrough
    fields, in the output format's convention."""
    layout, output_format, chunk = self._layout, self._layout.output_format, batch.chunk
    fields = []
    if not layout.key_field:
      firsts = np.array([first for _, first in chunk.segments], np.int64)
      columnar.check(np.all(np.diff(firsts) >= 0))
      segment = np.maximum(np.searchsorted(firsts, rows, 'right') - 1, 0)
      names = [self._relative(path) for path, _ in chunk.segments]
      positions = np.asarray(chunk.positions)
      columnar.check(positions.dtype.kind == 'i' and len(positions) == len(chunk))
      positions = positions[rows]
      if output_format == 'jsonl':
        fields.append(('filename', pa.array([orjson.dumps(n) for n in names], pa.binary())
                       .take(pa.array(segment))))
        fields.append((chunk.position_field, columnar.json_rows(positions)))
      elif output_format == 'parquet':
        fields.append(('filename', pa.array(names, pa.string()).take(pa.array(segment))))
        fields += [(f, pa.array(positions, pa.int64()) if f == chunk.position_field
                    else pa.nulls(len(rows), pa.int64())) for f in layout.position_fields]
      else:
        names = pa.array([n.encode('utf-8') for n in names], pa.binary())
        fields.append(('filename', columnar.bytes_features(names.take(pa.array(segment)))))
        fields.append((chunk.position_field, columnar.int_features(positions)))
    for field in ((layout.key_field,) if layout.key_field else ()) + layout.passthrough_fields:
      texts = columnar.text_column(batch.carried[field], rows,
                                   allow_null=output_format == 'parquet')
      if output_format == 'jsonl':
        fields.append((field, texts))
      elif field in self._types:
        fields += self._typed_columns(field, texts.to_pylist())
      elif output_format == 'parquet':
        fields.append((field, columnar.carried_strings(texts, carried_as_text)))
      else:
        fields.append((field, _carried_features(texts)))
    return fields

  def _typed_columns(self, field, texts) -> list:
    """(column name, column) of a typed carried field: the values of its
    type, and the texts of the others (`typed_carried`, the definition,
    per value: carried fields are few and short)."""
    column_type = self._types[field]
    pairs = [typed_carried(t, column_type) for t in texts]
    return [(field, pa.array([v for v, _ in pairs], _ARROW_CARRIED[column_type])),
            (self._layout.text_column(field), pa.array([t for _, t in pairs], pa.string()))]

  def _encode(self, records, batch, errors):
    """The prediction records in the output format; a record that cannot be
    encoded is moved to `errors`."""
    output_format = self._layout.output_format
    encode_one = {'jsonl': lambda r: orjson.dumps(r, option=_DUMPS_OPTIONS),
                  'parquet': lambda r: pa.Table.from_pylist([r], schema=self._schema),
                  'tfrecord': _example_bytes}[output_format]
    try:
      encoded = [encode_one(r) for _, r in records] if output_format != 'parquet' else None
      if output_format == 'parquet':
        table = pa.Table.from_pylist([r for _, r in records], schema=self._schema)
    except Exception:  # pylint: disable=broad-except
      kept, encoded = [], []
      for row, record in records:
        try:
          encoded.append(encode_one(record))
          kept.append((row, record))
        except Exception as e:  # pylint: disable=broad-except
          errors.append(_output_error(row, e))
      records = kept
      if output_format == 'parquet':
        table = pa.concat_tables(encoded) if encoded else None
    if not records:
      return None
    self._predicted.inc(len(records))
    progress.add(progress.PREDICTED, len(records))
    if output_format == 'jsonl':
      return b'\n'.join(encoded)
    return table if output_format == 'parquet' else encoded

  def _records_exact(self, scored, errors) -> list:
    """(row, record) of every prediction: the definition of the records
    (`_columnar` is its optimization)."""
    layout, batch = self._layout, scored.batch
    records = []
    for rows, outputs in scored.results:
      try:
        values = [(json_name, self._column(outputs[name], name))
                  for name, json_name in layout.output_names.items()]
      except Exception as e:  # pylint: disable=broad-except
        errors.extend(_output_error(row, e) for row in rows)
        continue
      for i, row in enumerate(rows):
        try:
          record = self._carried(batch, row)
          for json_name, column in values:
            record[json_name] = column[i]
          records.append((row, record))
        except Exception as e:  # pylint: disable=broad-except
          errors.append(_output_error(row, e))
    return records

  def _column(self, array: np.ndarray, name: str):
    """Something indexable by row, in the output format's convention."""
    output_format = self._layout.output_format
    spec = self._specs.get(name)
    ragged = spec is not None and spec.ragged_rank > 0
    if output_format == 'tfrecord':
      # Examples hold bytes as they are, and every value as a flat list.
      return [_flat(row, spec.dtype) for row in array] if ragged else array
    if array.dtype == object and not (ragged and spec.dtype != 'string'):
      # tf.string outputs come back as bytes objects (a ragged one as
      # arrays of them).
      rows = [_nested_list(row) for row in array] if ragged else array.tolist()
      if name in self._bytes_outputs:
        if output_format == 'parquet' and name not in self._text_outputs:
          return rows  # a binary column
        convert = _b64_json
      else:
        convert = _bytes_json if output_format == 'jsonl' else _bytes_text
      values = [convert(v) for v in rows]
    elif ragged:
      # Each row's numbers: numpy arrays where orjson writes them (floats in
      # their shortest form, as for dense outputs).
      values = array if output_format == 'jsonl' else [_nested_list(row) for row in array]
    else:
      values = array if output_format == 'jsonl' else array.tolist()
    if output_format == 'parquet' and name in self._text_outputs:
      # Unknown rank: the schema has a string column, the value's JSON text.
      return [orjson.dumps(v, option=_DUMPS_OPTIONS).decode() for v in values]
    return values

  def _carried_value(self, text):
    output_format = self._layout.output_format
    if output_format == 'jsonl':
      return orjson.Fragment(text)
    if output_format == 'parquet':
      return carried_as_text(text)
    return _carried_feature_value(text)

  def _carried(self, batch, row) -> dict:
    layout = self._layout
    record = {} if layout.key_field else self._location(batch.chunk, row)
    for field in ((layout.key_field,) if layout.key_field else ()) + layout.passthrough_fields:
      text = batch.carried[field][row]
      if field in self._types:
        record[field], record[layout.text_column(field)] = typed_carried(
            text, self._types[field])
      else:
        record[field] = self._carried_value(text)
    return record

  def _relative(self, path) -> str:
    name = self._names.get(path)
    if name is None:
      name = self._names[path] = relative_name(path, self._layout.input_base)
    return name

  def _location(self, chunk, row) -> dict:
    location = {'filename': self._relative(chunk.path_of(row))}
    if chunk.positions[row] is not None:
      location[chunk.position_field] = chunk.positions[row]
    return location

  def _example(self, category, message):
    if category not in self._exampled:
      self._exampled.add(category)
      self._examples[category].add(message)

  def _error_line(self, batch, error) -> bytes:
    self._failed[error.category].inc()
    self._example(error.category, error.message)
    record = {}
    key_field = self._layout.key_field
    key = batch.carried[key_field][error.row] if key_field in batch.carried else None
    if key is not None:
      record[key_field] = orjson.Fragment(key)
    record.update(self._location(batch.chunk, error.row))
    record['error'] = {'category': error.category, 'message': error.message}
    fmt = self._formats[batch.chunk.kind]
    try:
      raw = fmt.raw(batch.chunk, error.row)
    except Exception as e:  # pylint: disable=broad-except
      raw = f'(the record cannot be shown: {type(e).__name__})'.encode()
    record.update(raw_fields(raw, fmt.binary_records,
                             batch.chunk.unread_sizes.get(error.row)))
    return orjson.dumps(record, option=_DUMPS_OPTIONS)

  def _file_error_line(self, path, message) -> bytes:
    message = printable(message)  # an OSError's text may quote a name that is not UTF-8
    self._failed[FILE].inc()
    self._files_incomplete.inc()
    self._incomplete_paths.add(name_text(path))
    self._example(FILE, message)
    return orjson.dumps({'filename': self._relative(path),
                         'error': {'category': FILE, 'message': message}})


def _holds_rows(row) -> bool:
  """Whether a ragged output's row is made of rows (a list, or an object
  array of arrays: the rows of a whole ragged output that is one
  instance's) rather than of values."""
  return isinstance(row, list) or (row.dtype == object and row.size > 0
                                   and isinstance(row.flat[0], (np.ndarray, list)))


def _squeezed(scored: ScoredBatch, names) -> ScoredBatch:
  """The batch with the outputs `names` ([rows, 1]) as [rows] (views)."""
  results = [(rows, {k: v.reshape(v.shape[0]) if k in names and v.ndim == 2 and v.shape[1] == 1
                     else v for k, v in outputs.items()})
             for rows, outputs in scored.results]
  return dataclasses.replace(scored, results=results)


class EarlyStop(RuntimeError):
  """A worker's first instances all failed alike: the run stops."""


def _nested_list(row):
  """A ragged output's row (a numpy array, or a list of rows) as lists."""
  return [_nested_list(r) for r in row] if _holds_rows(row) else row.tolist()


def _flat(row, dtype: str) -> np.ndarray:
  """A ragged output's row as one flat array of its values, in order."""
  if not _holds_rows(row):
    return row.reshape(-1)
  parts = [_flat(r, dtype) for r in row]
  return np.concatenate(parts) if parts else np.empty(
      0, object if dtype == 'string' else dtype)


_logged_output_error = False


def _output_error(row, error):
  from tf_batch_predict.transforms.records import InstanceError  # pylint: disable=import-outside-toplevel
  global _logged_output_error  # pylint: disable=global-statement
  if not _logged_output_error:  # once per worker: each record says why
    _logged_output_error = True
    _LOG.warning('A prediction could not be written (each such instance is an error '
                 'record; this is the first)', exc_info=True)
  return InstanceError(row, MODEL, f'the prediction cannot be written: '
                                   f'{type(error).__name__}: {str(error)[:300]}')


def raw_fields(raw: bytes, binary: bool = False, size=None) -> dict:
  """The failed record as read: UTF-8 text as `raw`, other bytes (and
  binary records) as `raw_b64`; cut at MAX_RAW_BYTES (never in the middle
  of a character). `size`: the real size of a record only partly read."""
  size = size or len(raw)
  cut = raw[:MAX_RAW_BYTES]
  try:
    if binary:
      raise UnicodeDecodeError('utf-8', cut, 0, 0, 'binary record')
    fields = {'raw': cut.decode('utf-8')}
  except UnicodeDecodeError as e:
    if not binary and size > len(cut) and e.start >= len(cut) - 3:
      fields = {'raw': cut[:e.start].decode('utf-8')}  # a character cut in two
    else:
      fields = {'raw_b64': base64.b64encode(cut).decode('ascii')}
  if size > len(cut):
    fields['raw_truncated_from_bytes'] = size
  return fields


def _arrow_column(array: np.ndarray, leaf: pa.DataType) -> pa.Array:
  """A numpy output (batch first) as an Arrow column of nested lists, as
  `pa.Table.from_pylist` makes of its `tolist()`."""
  column = pa.array(array.reshape(-1), leaf)
  shape = array.shape
  for depth in range(len(shape) - 1, 0, -1):
    count = int(np.prod(shape[:depth], dtype=np.int64))
    column = pa.ListArray.from_arrays(
        pa.array(np.arange(count + 1, dtype=np.int32) * shape[depth]), column)
  return column


_INT64_REGEX = '^' + _INT64_TEXT.pattern.decode() + '$'


def _carried_features(texts: pa.Array) -> pa.Array:
  """Per row, the Feature of a carried text (`_carried_feature_value`): an
  integer that fits int64 as itself, anything else as text. (A 19-digit
  integer beyond int64 fails the cast: the batch goes to the definition.)"""
  strings = columnar.carried_strings(texts, carried_as_text).cast(pa.binary())
  integer = pc.match_substring_regex(texts, _INT64_REGEX)
  if not pc.any(integer).as_py():
    return columnar.bytes_features(strings)
  mask = integer.to_numpy(zero_copy_only=False)
  values = np.zeros(len(texts), np.int64)
  values[mask] = pc.cast(texts.filter(integer).cast(pa.string()), pa.int64()).to_numpy()
  return pc.if_else(integer, columnar.int_features(values), columnar.bytes_features(strings))


def _feature(feature, value) -> None:
  """Sets one Example feature from a record value: numbers as float or int64
  lists, text and bytes as bytes, anything structured as its JSON text."""
  if isinstance(value, (str, bytes)):
    flat = np.empty(1, dtype=object)
    flat[0] = value
  elif isinstance(value, np.ndarray) and value.dtype == object:
    flat = value.reshape(-1)
  else:
    # Object dtype for text: numpy's fixed-width strings drop trailing NULs.
    probe = np.asarray(value, dtype=object)
    try:
      flat = np.asarray(value).reshape(-1) if probe.size == 0 or not isinstance(
          probe.reshape(-1)[0], (str, bytes)) else probe.reshape(-1)
    except ValueError:  # ragged structure
      flat = np.asarray([orjson.dumps(value)], dtype=object)
  if flat.dtype.kind == 'f':
    feature.float_list.value.extend(flat.tolist())
  elif flat.dtype.kind in 'biu':
    # Booleans as 0 and 1 (protobuf's own conversion, which it will stop making).
    feature.int64_list.value.extend(flat.astype(np.int64).tolist() if flat.dtype.kind == 'b'
                                    else flat.tolist())
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
