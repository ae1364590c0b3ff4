"""Putting a run's predictions and errors back next to the instances they are
for (`batch-predict join`), as Beam transforms.

The instances are read again by the job's own readers (transforms/read/formats.py),
so each gets exactly the location (file name relative to the inputs' common
directory, and `offset` or `index`) and key text the run gave it. Error
records always carry the location, so they are matched by it; predictions
are matched by key when the run had `--key_field`, else by location.

A joined row is the instance's fields as read (their values exactly: numbers
keep their digits, strings are written by JSON's rules as the run writes
its carried fields)
plus the model's outputs, or plus `error` ({category, message}) for an
instance that failed; outputs named like an instance field are renamed by
the job's own rule (format.output_names). What cannot be paired goes to the
`unmatched` output, with the reason: an instance with no output, an output
with no instance, or a key that several instances or outputs share (which
output is whose cannot be told).
"""
import dataclasses
from typing import Optional

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

from tf_batch_predict.transforms.convert import carried_as_text, carried_text, typed_carried
from tf_batch_predict.transforms.file_patterns import printable
from tf_batch_predict.transforms.write.format import (_b64_json, _carried_feature_value, output_names, raw_fields,
                               relative_name)
from tf_batch_predict.transforms.rejoin.read_outputs import OutputReadError, iter_records
from tf_batch_predict.transforms.records import RawChunk
import tf_batch_predict.transforms.record_coder  # noqa: F401  (registers the records' coder)
import tf_batch_predict.transforms.state_sampler  # noqa: F401  (bundles end sooner)

JOIN_NAMESPACE = 'batch_predict_join'
UNMATCHED_TAG = 'unmatched'
# Reasons in `unmatched` records (and the join summary's counts).
NO_OUTPUT = 'instance_without_output'
NO_INSTANCE = 'output_without_instance'
SHARED_KEY = 'ambiguous'
CHANGED = 'instance_unreadable'  # predicted by the run, unreadable now
FILE_FAULT = 'input_file_fault'  # an input file the join could not read to its end
RUN_FILE_FAULT = 'run_file_fault'  # the run's error record of such a file
OUTPUT_UNREADABLE = 'output_file_unreadable'
COUNTERS = ('instances', 'joined', 'failed', NO_OUTPUT, NO_INSTANCE, SHARED_KEY, CHANGED,
            'file_faults', 'output_files_unreadable')
# The field holding an instance that is not an object of fields (a bare
# value, as Vertex AI batch prediction writes it), and one that could not
# be read at all.
INSTANCE_FIELD = 'instance'
RAW_FIELD = 'raw'
ERROR_FIELD = 'error'


@dataclasses.dataclass(frozen=True)
class JoinLayout:
  """What the run wrote, as the join needs to know it."""
  key_field: Optional[str]
  passthrough_fields: tuple
  output_format: str  # of the predictions: jsonl, parquet, tfrecord
  input_base: str  # the inputs' common directory (format.common_base)
  # Record field -> the signature's output name, where the run renamed an
  # output (format.output_names); other non-carried fields are outputs of
  # their own name.
  renamed_outputs: tuple = ()
  # The run's --parquet_column_types: (field, type) of typed carried columns.
  carried_types: tuple = ()

  @property
  def carried(self) -> tuple:
    located = () if self.key_field else ('filename', 'offset', 'index')
    return ((self.key_field,) if self.key_field else ()) + located + tuple(
        self.passthrough_fields)

  def stored_key(self, text: Optional[bytes]):
    """A key's JSON text as the predictions file holds it (JSON Lines: the
    text; Parquet: a string column, or a typed one; TFRecord: an int64 or a
    text feature)."""
    if text is None or text == b'null':
      return None
    if self.output_format == 'parquet':
      column_type = dict(self.carried_types).get(self.key_field)
      if column_type:  # as read_outputs folds the typed column and its texts
        value, shown = typed_carried(text, column_type)
        return shown if value is None else value
      return carried_as_text(text)
    if self.output_format == 'tfrecord':
      return _carried_feature_value(text)
    return text


@dataclasses.dataclass
class InstanceRow:
  """One instance as read: its fields' JSON texts, a bare value's text, or
  None where it could not be read (then `raw` holds what was read)."""
  location: tuple  # (file name, offset or index)
  fields: Optional[dict]  # field -> JSON text (bytes)
  key: object = None  # as the predictions file stores it
  raw: Optional[bytes] = None
  binary: bool = False  # raw is a binary record (TFRecord): written as base64
  size: Optional[int] = None  # the record's real size where only its start was read
  # Read as a record of the format (fields None: it repeats a field), as
  # opposed to unparseable.
  readable: bool = False

  def __post_init__(self):
    if self.fields is not None:
      self.readable = True


def _text(instance, value) -> bytes:
  try:
    return instance.carry(value)
  except Exception:  # pylint: disable=broad-except  (a repeated field inside, ...)
    return carried_text(instance.plain(value), repeated_ok=True)


class InstanceRows(beam.DoFn):
  """RawChunk -> (location, InstanceRow) per instance; file faults met while
  reading are counted (`file_faults`) and yielded on the tagged output
  'file_faults' as (file name, reason)."""
  def __init__(self, formats: dict, layout: JoinLayout):
    self._formats = formats
    self._layout = layout
    self._instances = Metrics.counter(JOIN_NAMESPACE, 'instances')
    self._faults = Metrics.counter(JOIN_NAMESPACE, 'file_faults')

  def process(self, chunk: RawChunk):
    layout, fmt = self._layout, self._formats[chunk.kind]
    self._instances.inc(len(chunk))
    for path, reason in chunk.file_errors:
      self._faults.inc()
      yield beam.pvalue.TaggedOutput('file_faults', (relative_name(path, layout.input_base),
                                                     printable(reason)))
    for row in range(len(chunk)):
      location = (relative_name(chunk.path_of(row), layout.input_base), chunk.positions[row])
      yield location, self._row(fmt, chunk, row, location)

  def _row(self, fmt, chunk, row, location) -> InstanceRow:
    if row in chunk.read_errors or row in chunk.unread_sizes:
      return InstanceRow(location, None, raw=_raw(fmt, chunk, row), binary=fmt.binary_records,
                         size=chunk.unread_sizes.get(row))
    try:
      instance = fmt.instance(chunk, row)
      if instance.duplicates:  # which value was meant is unknown: the record as read
        key = None
        if self._layout.key_field and self._layout.key_field not in instance.duplicates:
          key = self._layout.stored_key(_text(instance, instance.fields.get(
              self._layout.key_field)))
        return InstanceRow(location, None, key, raw=_raw(fmt, chunk, row),
                           binary=fmt.binary_records, readable=True)
      if instance.fields is None:
        return InstanceRow(location, {INSTANCE_FIELD: _text(instance, instance.value)})
      fields = {name: _text(instance, value) for name, value in instance.fields.items()}
    except Exception:  # pylint: disable=broad-except  (any content: the run's error says why)
      return InstanceRow(location, None, raw=_raw(fmt, chunk, row), binary=fmt.binary_records)
    key = None
    if self._layout.key_field:
      key = self._layout.stored_key(fields.get(self._layout.key_field))
    return InstanceRow(location, fields, key)


def _raw(fmt, chunk, row) -> Optional[bytes]:
  try:
    raw = fmt.raw(chunk, row)
  except Exception:  # pylint: disable=broad-except
    return None
  return raw if isinstance(raw, bytes) else None


# -- the run's outputs -----------------------------------------------------------

class ReadOutputRecords(beam.DoFn):
  """An output file's path -> its records (dicts). A file that cannot be
  read is counted and yielded on the tagged output 'unreadable' as (path,
  reason); the records before the fault are kept."""
  def __init__(self):
    self._unreadable = Metrics.counter(JOIN_NAMESPACE, 'output_files_unreadable')

  def process(self, path: str):
    try:
      yield from iter_records(path)
    except (OutputReadError, OSError) as e:
      self._unreadable.inc()
      yield beam.pvalue.TaggedOutput('unreadable', (path, str(e)))


def _single(value):
  """A carried value as read back: TFRecord features are lists."""
  if isinstance(value, list) and len(value) == 1:
    return value[0]
  return value


def _position(record: dict):
  for field in ('offset', 'index'):
    if field in record:
      return _single(record[field])
  return None


def error_location(record: dict) -> Optional[tuple]:
  """An error record's (file name, position); None for a file fault (no
  position: the rest of a file that could not be read)."""
  position = _position(record)
  if position is None:
    return None
  return (record.get('filename'), position)


def error_join_key(layout: JoinLayout):
  """The function giving an error record's key as the predictions store it
  (error records are JSON Lines: the key's text)."""
  field = layout.key_field
  def by_key(record):
    value = record.get(field)
    return None if value is None else layout.stored_key(
        carried_text(value, repeated_ok=True))
  return by_key


def prediction_join_key(layout: JoinLayout):
  """The function giving a prediction record's join key: its key as stored,
  or its location."""
  if layout.key_field:
    field = layout.key_field
    if layout.output_format == 'jsonl':
      def by_key(record):
        value = record.get(field)
        return None if value is None else carried_text(value, repeated_ok=True)
      return by_key
    return lambda record: _single(record.get(field))
  return lambda record: (_single(record.get('filename')), _position(record))


# -- pairing -----------------------------------------------------------------------

class JoinedRecord:
  """A joined row, not yet encoded: the instance's fields (JSON texts) and
  the outputs or the error (values as read back)."""
  __slots__ = ('instance', 'outputs', 'error')

  def __init__(self, instance: InstanceRow, outputs: Optional[dict] = None,
               error: Optional[dict] = None):
    self.instance = instance
    self.outputs = outputs
    self.error = error


def _unmatched(reason: str, message: str, location=None, key=None, record=None) -> dict:
  entry = {'reason': reason, 'message': message}
  if location is not None:
    entry['filename'], entry['position'] = location
  if key is not None:
    entry['key'] = key.decode('utf-8', 'replace') if isinstance(key, bytes) else key
  if record is not None:
    entry['record'] = record
  return entry


class PairByLocation(beam.DoFn):
  """(location, {'instances', 'errors', 'predictions'}) -> a JoinedRecord,
  or unmatched entries. For the key join (`with_predictions` False): an
  instance without an error is passed on (tag 'unpaired'), and so is an
  error record that carries a key but whose location no instance has (tag
  'keyed_errors')."""
  def __init__(self, with_predictions: bool, key_field: Optional[str] = None):
    self._with_predictions = with_predictions
    self._key_field = key_field
    self._counters = {name: Metrics.counter(JOIN_NAMESPACE, name) for name in COUNTERS}

  def _error_key(self, record) -> bool:
    return self._key_field is not None and record.get(self._key_field) is not None

  def process(self, element):
    location, grouped = element
    instances = list(grouped['instances'])
    errors = list(grouped['errors'])
    predictions = list(grouped.get('predictions', ())) if self._with_predictions else []
    outputs = [('error', e) for e in errors] + [('prediction', p) for p in predictions]
    if not instances:
      for kind, record in outputs:
        if kind == 'error' and not self._with_predictions and self._error_key(record):
          # Labels in files of their own (key and label): the error is
          # paired by its key, with the predictions.
          yield beam.pvalue.TaggedOutput('keyed_errors', record)
          continue
        self._counters[NO_INSTANCE].inc()
        yield beam.pvalue.TaggedOutput(UNMATCHED_TAG, _unmatched(
            NO_INSTANCE, f'{"an error" if kind == "error" else "a prediction"} record '
            'whose location no instance has', location, record=record))
      return
    instance = instances[0]  # one instance per location: the readers' positions are unique
    if len(outputs) > 1:
      self._counters[SHARED_KEY].inc()
      yield beam.pvalue.TaggedOutput(UNMATCHED_TAG, _unmatched(
          SHARED_KEY, f'{len(outputs)} output records for one instance', location))
      yield JoinedRecord(instance)
      return
    if outputs and outputs[0][0] == 'prediction' and not instance.readable:
      yield from _unreadable_but_predicted(self._counters, instance, location)
      return
    if outputs:
      kind, record = outputs[0]
      if kind == 'error':
        self._counters['failed'].inc()
        yield JoinedRecord(instance, error=record)
      else:
        self._counters['joined'].inc()
        yield JoinedRecord(instance, outputs=record)
      return
    if self._with_predictions:
      self._counters[NO_OUTPUT].inc()
      yield beam.pvalue.TaggedOutput(UNMATCHED_TAG, _unmatched(
          NO_OUTPUT, 'no prediction or error record for this instance', location))
      yield JoinedRecord(instance)
    else:
      yield beam.pvalue.TaggedOutput('unpaired', instance)


def _unreadable_but_predicted(counters, instance, location=None, key=None):
  """The run predicted an instance that the join cannot read: the file, or
  --max_instance_bytes, is not the run's. Its row has no outputs."""
  counters[CHANGED].inc()
  yield beam.pvalue.TaggedOutput(UNMATCHED_TAG, _unmatched(
      CHANGED, 'the run predicted this instance, but the join cannot read it: the file '
      "changed since the run, or --max_instance_bytes is not the run's",
      location or instance.location, key=key))
  yield JoinedRecord(instance)


class PairByKey(beam.DoFn):
  """(key, {'instances', 'predictions', 'errors'}) of instances without an
  error at their location -> JoinedRecords, or unmatched entries."""
  def __init__(self):
    self._counters = {name: Metrics.counter(JOIN_NAMESPACE, name) for name in COUNTERS}

  def process(self, element):
    key, grouped = element
    instances = list(grouped['instances'])
    predictions = list(grouped['predictions'])
    errors = list(grouped.get('errors', ()))
    if len(instances) == 1 and len(predictions) + len(errors) == 1:
      if predictions and not instances[0].readable:
        yield from _unreadable_but_predicted(self._counters, instances[0], key=key)
        return
      if errors:
        self._counters['failed'].inc()
        yield JoinedRecord(instances[0], error=errors[0])
      else:
        self._counters['joined'].inc()
        yield JoinedRecord(instances[0], outputs=predictions[0])
      return
    predictions += errors
    if not instances:
      for record in predictions:
        self._counters[NO_INSTANCE].inc()
        yield beam.pvalue.TaggedOutput(UNMATCHED_TAG, _unmatched(
            NO_INSTANCE, 'an output record whose key no instance has', key=key,
            record=record))
      return
    if not predictions:
      reason, message = NO_OUTPUT, 'no prediction or error record for this instance'
      if key is None:
        message = 'the instance has no key, and no error record'
    else:
      reason = SHARED_KEY
      message = (f'the key is shared by {len(instances)} instances and {len(predictions)} '
                 'output records: which is whose cannot be told')
    for instance in instances:
      self._counters[reason].inc()
      yield beam.pvalue.TaggedOutput(UNMATCHED_TAG, _unmatched(
          reason, message, instance.location, key=key))
      yield JoinedRecord(instance)


# -- joined rows --------------------------------------------------------------------

def _value_text(value) -> bytes:
  """An output value's JSON text: as the run wrote it (JSON Lines, through
  the job's JSON definition) or as read back (Parquet, TFRecord)."""
  try:
    return carried_text(value, repeated_ok=True)
  except Exception:  # pylint: disable=broad-except  (bytes, ...)
    return orjson.dumps(value, default=lambda v: v.decode('utf-8', 'replace')
                        if isinstance(v, bytes) else str(v))


def row_texts(joined: JoinedRecord, layout: JoinLayout) -> dict:
  """A joined row: field -> JSON text. The instance's fields come first, as
  read; then the outputs (the run's carried fields left out: the instance
  has them), renamed where an instance field has the name; or the error."""
  instance = joined.instance
  row = dict(instance.fields) if instance.fields is not None else {}
  if instance.fields is None and instance.raw is not None:
    # As the run's error records write it: text, or base64 where it is not
    # UTF-8 (raw_b64), cut at format.MAX_RAW_BYTES.
    for name, value in raw_fields(instance.raw, instance.binary, instance.size).items():
      row[name] = orjson.dumps(value)
  added = {}
  if joined.outputs is not None:
    carried, renamed = set(layout.carried), dict(layout.renamed_outputs)
    for field, value in joined.outputs.items():
      if field not in carried:
        name = renamed.get(field, field)
        if name.endswith('_bytes') and isinstance(value, (bytes, list)):
          # TF Serving's convention, as the run's JSON Lines write it:
          # `*_bytes` outputs always base64 (Parquet holds them as binary).
          value = _b64_json(value) if _all_bytes(value) else value
        added[name] = _value_text(value)
  elif joined.error is not None:
    error = joined.error.get('error')
    added[ERROR_FIELD] = _value_text(error if error is not None else joined.error)
  for name, new_name in output_names(list(added), list(row)).items():
    row[new_name] = added[name]
  return row


def _all_bytes(value) -> bool:
  if isinstance(value, list):
    return all(_all_bytes(v) for v in value)
  return isinstance(value, bytes)


def unmatched_line(entry: dict) -> bytes:
  """An unmatched entry as a JSON line; an output record in it as read back."""
  entry = dict(entry)
  record = entry.get('record')
  if isinstance(record, dict):
    entry['record'] = orjson.Fragment(orjson.dumps(
        {k: orjson.Fragment(_value_text(v)) for k, v in record.items()}))
  return orjson.dumps(entry, default=lambda v: v.decode('utf-8', 'replace')
                      if isinstance(v, bytes) else str(v))


class FormatJoinedJsonl(beam.DoFn):
  """JoinedRecords -> JSON lines (one element per bundle's worth of 1,000
  rows, so that the writer pays Beam's per-element cost once per block)."""
  BLOCK = 1000

  def __init__(self, layout: JoinLayout):
    self._layout = layout
    self._lines = []

  def start_bundle(self):
    self._lines = []

  def process(self, joined: JoinedRecord):
    row = row_texts(joined, self._layout)
    self._lines.append(orjson.dumps({k: orjson.Fragment(v) for k, v in row.items()}))
    if len(self._lines) >= self.BLOCK:
      yield b'\n'.join(self._lines)
      self._lines = []

  def finish_bundle(self):
    if self._lines:
      from apache_beam.transforms.window import GlobalWindow
      from apache_beam.utils.windowed_value import WindowedValue
      yield WindowedValue(b'\n'.join(self._lines), 0, [GlobalWindow()])
      self._lines = []
