"""Writing and committing work units (transforms/read/units.py) as a whole.

    STAGING/units/UNIT.ATTEMPT.predictions.EXT, UNIT.ATTEMPT.errors.jsonl
    STAGING/units/UNIT.json       the unit's commit: its files and counts

Each unit's records go to files of their own, named by the unit and a
random attempt id. Once all its records are written (as many as its reader
said it makes), the files are closed and the unit's commit record is
written last, in one step (an object store's single write, a local rename):
a unit with a commit record has all its records in the files it names, and
a unit without one counts as not written. A task that runs again writes a
new attempt and replaces the commit record; the files no commit record
names are left over and removed when the result is collected. So a run
that stops keeps every unit it committed (pipeline/resume.py), on any file
system and under any runner's retries.

Beam's file sinks commit only when the whole pipeline has finished (they
rename their temporary files then), which is why the job does not use them
for its results.

`collect` turns the committed units into the result's shards
(`predictions-SSSSS-of-NNNNN.EXT`, `errors-...jsonl`) and their counts.
"""
import atexit
import dataclasses
import json
import logging
import os
import pickle
import sys
import time
import uuid
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tf_batch_predict.transforms.file_patterns import is_local, name_text
from tf_batch_predict.transforms.records import (CATEGORIES, FILE, METRICS_NAMESPACE,
                                                 InstanceBatch, ScoredBatch)
from tf_batch_predict.transforms.write.format import ERRORS_TAG
from tf_batch_predict.transforms.write.shards import WRITE_TIME, tfrecord_frame

_LOG = logging.getLogger(__name__)

UNITS_FOLDER = 'units'
COMMIT_SUFFIX = '.json'
# A result's work units, the shards holding each one's records and its
# counts; promoted with the shards (pipeline/outputs.py).
MANIFEST_NAME = '.units.json'
# Parquet files as Beam's WriteToParquetBatched writes them by default:
# uncompressed, lists as list<item: ...> (readers of earlier results rely on it).
PARQUET_OPTIONS = {'compression': 'none', 'use_compliant_nested_type': False}


@dataclasses.dataclass
class UnitRecords:
  """One unit's share of a formatted chunk."""
  unit: str
  predictions: object  # the output format's element (FormatRecords), or None
  errors: Optional[bytes]  # error lines, or None
  records: int  # output records in this share (instances and file errors)
  incomplete_files: tuple = ()  # files whose faults this share's error records report
  end: Optional[dict] = None  # the unit's totals, where this is its last share


class FormatUnits(beam.DoFn):
  """ScoredBatch -> UnitRecords per unit in it: FormatRecords (format.py)
  on each unit's rows."""
  def __init__(self, format_records):
    self._format = format_records

  def setup(self):
    self._format.setup()

  def process(self, scored: ScoredBatch):
    chunk = scored.batch.chunk
    spans = chunk.unit_spans()
    if not spans:
      raise ValueError('a chunk without its work unit')
    last_span = {unit: i for i, (unit, *_) in enumerate(spans)}
    for i, (unit, first, end, first_error, end_error) in enumerate(spans):
      part = scored if len(spans) == 1 else _part(scored, first, end, first_error, end_error)
      predictions, errors = None, None
      for output in self._format.process(part):
        if getattr(output, 'tag', None) == ERRORS_TAG:
          errors = output.value
        else:
          predictions = output
      file_errors = chunk.file_errors[first_error:end_error]
      yield UnitRecords(unit, predictions, errors, (end - first) + len(file_errors),
                        tuple(sorted({name_text(path) for path, _ in file_errors})),
                        chunk.unit_ends.get(unit) if last_span[unit] == i else None)

  def finish_bundle(self):
    return self._format.finish_bundle()


def _part(scored: ScoredBatch, first: int, end: int, first_error: int,
          end_error: int) -> ScoredBatch:
  """The rows first..end-1 of a scored chunk, with its file errors
  first_error..end_error-1 (the chunk's rows keep their numbers)."""
  batch = scored.batch
  chunk = dataclasses.replace(batch.chunk, file_errors=batch.chunk.file_errors[
      first_error:end_error])
  results = []
  for rows, outputs in scored.results:
    rows_array = np.asarray(rows, np.int64)
    keep = np.flatnonzero((rows_array >= first) & (rows_array < end))
    if not len(keep):
      continue
    if len(keep) == len(rows_array):
      results.append((rows, outputs))
      continue
    results.append(([rows[i] for i in keep], {
        name: value[keep] if isinstance(value, np.ndarray) else [value[i] for i in keep]
        for name, value in outputs.items()}))
  errors = [e for e in scored.errors if first <= e.row < end]
  part = InstanceBatch(chunk, batch.carried, batch.groups,
                       [e for e in batch.errors if first <= e.row < end], batch.fast_rows)
  return ScoredBatch(part, results, errors)


class _UnitRecordsCoder(beam.coders.Coder):
  """Pickles; estimates sizes without pickling (as record_coder.RecordCoder)."""
  def encode(self, value):
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded):
    return pickle.loads(encoded)

  def estimate_size(self, value):
    size = len(value.errors or b'')
    predictions = value.predictions
    if isinstance(predictions, bytes):
      size += len(predictions)
    elif isinstance(predictions, list):
      size += sum(len(p) for p in predictions)
    elif predictions is not None:
      size += predictions.nbytes
    return size + 64

  def is_deterministic(self):
    return False


beam.coders.registry.register_coder(UnitRecords, _UnitRecordsCoder)


# -- writing ---------------------------------------------------------------------------

class _Files:
  """A unit's open output files in one attempt."""
  def __init__(self, folder: str, unit: str, output_format: str, schema):
    attempt = uuid.uuid4().hex[:12]
    self.prefix = f'{folder}/{unit}.{attempt}'
    self.output_format = output_format
    self.schema = schema
    self.names = {}  # 'predictions' / 'errors' -> file name
    self._handles = {}
    self._parquet = None
    self.records = 0
    self.errors = {c: 0 for c in CATEGORIES}
    self.examples = {}  # category -> the first message
    self.incomplete = set()
    self.end = None  # the unit's totals, once its last share is in

  def _open(self, kind: str):
    if kind not in self._handles:
      extension = self.output_format if kind == 'predictions' else 'jsonl'
      path = f'{self.prefix}.{kind}.{extension}'
      self._handles[kind] = FileSystems.create(
          path, compression_type=CompressionTypes.UNCOMPRESSED)
      self.names[kind] = path.rsplit('/', 1)[-1]
    return self._handles[kind]

  def write_predictions(self, element) -> None:
    handle = self._open('predictions')
    if self.output_format == 'parquet':
      if self._parquet is None:
        import pyarrow.parquet as pq
        self._parquet = pq.ParquetWriter(handle, self.schema, **PARQUET_OPTIONS)
      self._parquet.write_table(element)
    elif self.output_format == 'tfrecord':
      handle.write(b''.join(tfrecord_frame(record) for record in element))
    else:
      handle.write(element + b'\n')

  def write_errors(self, block: bytes) -> None:
    self._open('errors').write(block + b'\n')
    for line in block.split(b'\n'):
      category = _category(line)
      self.errors[category] = self.errors.get(category, 0) + 1
      if category not in self.examples:
        self.examples[category] = json.loads(line)['error']['message']

  def close(self) -> None:
    if self._parquet is not None:
      self._parquet.close()
    for handle in self._handles.values():
      handle.close()
    self._handles = {}

  def remove(self) -> None:
    self.close()
    paths = [f'{self.prefix.rsplit("/", 1)[0]}/{name}' for name in self.names.values()]
    try:
      FileSystems.delete(paths)
    except Exception:  # pylint: disable=broad-except  (collect removes them)
      pass


def _category(line: bytes) -> str:
  """An error record's category (format.py writes `"category":"..."`)."""
  at = line.rfind(b'"category":"') + len(b'"category":"')
  return line[at:line.index(b'"', at)].decode()


class WriteUnits(beam.DoFn):
  """UnitRecords -> each unit's files and, once complete, its commit record
  in `folder`; outputs the id of each unit committed."""
  def __init__(self, folder: str, layout):
    self._folder = folder
    self._layout = layout
    self._open = {}
    self._schema = None

  def setup(self):
    if self._layout.output_format == 'parquet':
      self._schema = self._layout.parquet_schema()
    atexit.register(_exiting)  # runs before the handlers registered earlier

  def start_bundle(self):
    self._open = {}

  def process(self, element: UnitRecords):
    _alive()
    started = time.perf_counter()
    files = self._open.get(element.unit)
    if files is None:
      files = self._open[element.unit] = _Files(self._folder, element.unit,
                                                self._layout.output_format, self._schema)
    if element.predictions is not None:
      files.write_predictions(element.predictions)
    if element.errors:
      files.write_errors(element.errors)
    files.records += element.records
    files.incomplete.update(element.incomplete_files)
    if element.end is not None:
      files.end = element.end
    end = files.end
    if end is not None and files.records >= end['records']:
      if files.records > end['records']:
        raise RuntimeError(f'work unit {element.unit}: {files.records} records written, '
                           f'{end["records"]} read')
      self._commit(element.unit, files)
      yield element.unit
    Metrics.counter(METRICS_NAMESPACE, WRITE_TIME).inc(
        int((time.perf_counter() - started) * 1e6))

  def _commit(self, unit: str, files: _Files) -> None:
    files.close()
    _alive()  # the files were written and closed by a live interpreter
    del self._open[unit]
    errors = sum(files.errors.values())
    record = {'unit': unit, 'records': files.records,
              'predictions': files.records - errors, 'errors': files.errors,
              'instances': files.records - files.errors.get(FILE, 0),
              'blank_lines': files.end.get('blank_lines', 0),
              'incomplete_files': sorted(files.incomplete),
              'error_examples': files.examples, 'files': files.names}
    write_atomically(f'{self._folder}/{unit}{COMMIT_SUFFIX}',
                     json.dumps(record).encode())

  def finish_bundle(self):
    # A unit not complete at the end of a bundle is not committed; its files
    # go (a later attempt or a resumed run writes it whole).
    for unit, files in self._open.items():
      _LOG.warning('Work unit %s: %d records written when its bundle ended; not committed',
                   unit, files.records)
      files.remove()
    self._open = {}


_EXITING = False  # set by an exit handler: see _alive


def _exiting() -> None:
  global _EXITING
  _EXITING = True


def _alive() -> None:
  """Raises where this worker's interpreter is shutting down. A worker
  whose runner went away (its job server killed) may still run a bundle in
  a thread while Python tears its modules down: calls then fail
  ("'NoneType' object is not callable"), the model's too, and such failures
  must not be committed as the instances' error records. Beam retries or
  fails the bundle; a resumed run scores the unit. (Exit handlers, which
  may close TensorFlow's sessions, run before Python says it is finalizing:
  WriteUnits.setup registers `_exiting` among them, after TensorFlow's.)"""
  if _EXITING or sys.is_finalizing():
    raise RuntimeError('the worker is shutting down: nothing more is committed')


def write_atomically(path: str, data: bytes) -> None:
  """Writes a small file that readers see whole or not at all: locally
  through a temporary name and a rename; elsewhere in one write (an object
  store's object appears when its upload completes)."""
  if is_local(path):
    temporary = f'{path}.{uuid.uuid4().hex[:8]}.tmp'
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(temporary, 'wb') as f:
      f.write(data)
    os.replace(temporary, path)
    return
  with FileSystems.create(path, mime_type='application/json',
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(data)


# -- the result ------------------------------------------------------------------------

def committed(folder: str) -> dict:
  """Unit id -> its commit record, for the units committed in `folder`
  (whose files are all there)."""
  from tf_batch_predict.transforms import file_patterns
  base = file_patterns.escape(folder)
  try:
    matched = file_patterns.match(f'{base}/*')
  except Exception:  # pylint: disable=broad-except  (no folder: nothing committed)
    return {}
  names = {m.path.rsplit('/', 1)[-1] for m in matched}
  units = {}
  for name in sorted(names):
    if not name.endswith(COMMIT_SUFFIX):
      continue
    try:
      with FileSystems.open(f'{folder}/{name}',
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        record = json.loads(f.read())
    except (OSError, ValueError):
      continue
    if all(file_name in names for file_name in record['files'].values()):
      units[record['unit']] = record
  return units


def counts_of(records) -> dict:
  """The summary's counts (pipeline/summary.py) of committed units."""
  counts = {'instances_read': 0, 'predictions': 0, 'blank_lines': 0,
            'incomplete_files': set(), **{f'errors_{c}': 0 for c in CATEGORIES}}
  examples = {}
  for record in records:
    counts['instances_read'] += record['instances']
    counts['predictions'] += record['predictions']
    counts['blank_lines'] += record['blank_lines']
    counts['incomplete_files'].update(record['incomplete_files'])
    for category, count in record['errors'].items():
      counts[f'errors_{category}'] = counts.get(f'errors_{category}', 0) + count
    for category, message in record['error_examples'].items():
      examples.setdefault(category, message)
  for category, message in examples.items():
    counts[f'error_example_{category}'] = {message}
  counts['files_incomplete'] = len(counts['incomplete_files'])
  return counts


def collect(staging: str, units: list, layout, settings: Optional[dict] = None) -> dict:
  """Moves the committed units' files of `staging`/units to the result's
  shards in `staging` (one empty shard of a kind without records, as Beam's
  sinks write), writes the result's unit manifest (MANIFEST_NAME: each
  unit, its shards and counts, and the `settings` the result was made with,
  for --incremental), removes the folder, and
  returns the counts. Raises RuntimeError where a unit of `units` was not
  committed."""
  output_format = layout.output_format
  folder = f'{staging}/{UNITS_FOLDER}'
  records = committed(folder)
  missing = [u.id for u in units if u.id not in records]
  if missing:
    raise RuntimeError(f'{len(missing)} of {len(units)} work units were not written '
                       f'completely (the first: {missing[0]})')
  ordered = sorted(units, key=lambda u: u.id)
  shards = {u.id: {} for u in ordered}
  for kind, extension in (('predictions', output_format), ('errors', 'jsonl')):
    holding = [u.id for u in ordered if kind in records[u.id]['files']]
    sources = [f'{folder}/{records[u]["files"][kind]}' for u in holding]
    targets = [f'{kind}-{i:05d}-of-{len(sources):05d}.{extension}'
               for i in range(len(sources))]
    if sources:
      FileSystems.rename(sources, [f'{staging}/{t}' for t in targets])
    else:
      _write_empty(f'{staging}/{kind}-00000-of-00001.{extension}',
                   layout.parquet_schema() if extension == 'parquet' else None)
    for unit, target in zip(holding, targets):
      shards[unit][kind] = target
  manifest = [{**u.to_json(), 'shards': shards[u.id],
               'record': {k: v for k, v in records[u.id].items() if k != 'files'}}
              for u in ordered]
  write_atomically(f'{staging}/{MANIFEST_NAME}',
                   json.dumps({'settings': settings, 'units': manifest}).encode())
  remove_folder(folder)
  return counts_of(records[u.id] for u in ordered)


def seed(folder: str, unit: str, result: str, shards: dict, record: dict) -> dict:
  """Commits `unit` in `folder` with a copy of its records in the shards of
  the complete result in `result` (hard links where the file system has
  them); returns its commit record."""
  attempt = uuid.uuid4().hex[:12]
  files = {}
  for kind, shard in sorted(shards.items()):
    name = f'{unit}.{attempt}.{kind}.{shard.rsplit(".", 1)[-1]}'
    source, target = f'{result}/{shard}', f'{folder}/{name}'
    if is_local(target):
      os.makedirs(folder, exist_ok=True)
      try:
        os.link(source, target)
      except OSError:
        FileSystems.copy([source], [target])
    else:
      FileSystems.copy([source], [target])
    files[kind] = name
  record = {**record, 'files': files}
  write_atomically(f'{folder}/{unit}{COMMIT_SUFFIX}', json.dumps(record).encode())
  return record


class CollectUnits(beam.PTransform):
  """The committed unit ids of a run -> its shards, once every unit is
  written (`collect` as the pipeline's last step: for a Dataflow template,
  which runs without the command that would collect)."""
  def __init__(self, output: str, units: list, layout):
    super().__init__()
    self._output = output
    self._units = units
    self._layout = layout

  def expand(self, committed_ids):
    output, units, layout = self._output, self._units, self._layout
    return (committed_ids
            | 'AllCommitted' >> beam.combiners.Count.Globally()
            | 'Shards' >> beam.Map(lambda _: collect(output, units, layout) and None))


def _write_empty(path: str, schema) -> None:
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    if schema is not None:
      import pyarrow.parquet as pq
      pq.write_table(schema.empty_table(), f, **PARQUET_OPTIONS)


def remove_folder(folder: str) -> None:
  if is_local(folder):
    if os.path.isdir(folder):
      FileSystems.delete([folder])
    return
  from tf_batch_predict.transforms import file_patterns
  files = [m.path for m in file_patterns.match(f'{file_patterns.escape(folder)}/**')]
  if files:
    FileSystems.delete(files)
