"""batch-predict preflight: a run's sample, decoded and scored here.

  batch-predict preflight [the run's options; --output may be left out] [--json]
  batch-predict --preflight ...   (the report first, then the run)

Reads a sample of the instances (`--preflight_instances`, default 100),
spread over up to SPREAD_FILES files evenly spaced over the sorted list of
input files (the first file of every format among them), a roughly equal
share from each, more files where those are short. Only the beginning of a
file is read: at most `quota + 1` records and SAMPLE_BYTES_PER_FILE bytes
(decompressed) of it; a JSON request file is read whole, as the job reads it,
where it holds at most JSON_SAMPLE_MAX_BYTES decompressed (a bounded
decompressing reader tells), else the elements of its "instances" within
its first JSON_SAMPLE_MAX_BYTES are sampled. Where the files read hold no
instance and others were not read, more are read, largest first (SEARCH_*
bounds). A line longer than --max_instance_bytes that the byte budget cuts
is measured to its end (not kept), so its error is the run's.

The sample goes through the job's own code, called in this process (no Beam
pipeline, which would cost seconds to start): the configuration
(pipeline/config.py `resolve`), each format's reader, which also reads its
sample (`sample`, dispatched by transforms/read/formats.py `sample_file`),
and its definition (transforms/read/input_*.py), the merging of small chunks
(transforms/read/coalesce.py), the decoder (transforms/read/decode.py), the scoring
handler with its failure isolation (transforms/model/score.py) and the error
records (transforms/write/format.py `FormatRecords`). So an error in the report is
the very error record the run writes for that record.

The report (stdout; `--json`: one JSON object):
- formats detected: files and bytes per format (gzip noted);
- fields: which instance fields feed which inputs, which are ignored, which
  inputs are missing, and whether --key_field and each --passthrough_fields
  field is present; a key field missing from every sampled instance is
  called out with the fields seen and a close match;
- results: instances scored, and per error category (parse, schema, model,
  file) the count and one example (its location and message);
- speed: decode + score + format here, in instances/second (model load
  timed apart);
- an estimate of the total instances (bytes per sampled instance times the
  input's bytes; exact for files read to their end and for Parquet, whose
  row counts are in its metadata) and of the time to score them here.

Exit status: 0 when at least one sampled instance scored; 3 (as a run that
predicts nothing) when none did, with one `batch-predict: error:` line that
says why (a key field missing from every sampled instance makes each of them
a `schema` error, as in the run, so that fails preflight), or when every
input file was read to its end and holds no instance; 0 with one
`batch-predict: warning:` line when the sample found nothing to check but
files were not read (or read only in part): the run may well find instances
there; 2 for a configuration mistake (one line, as a run). With
--skip_model_check the model is not loaded: the sample is decoded only, and
at least one instance must decode. `--json` is strict JSON (a float that is
not finite, in an error record's raw value, is its text: "NaN").
"""
import collections
import dataclasses
import difflib
import json
import logging
import math
import statistics
import sys
import time
from typing import Optional

from tf_batch_predict.pipeline.command import (EXIT_CONFIG_ERROR, EXIT_OK, EXIT_PIPELINE_FAILED,
                                              EXIT_TOO_MANY_ERRORS, collect_young_objects, debug,
                                              error, freeze_imports, last_line, take_option)
from tf_batch_predict.pipeline.options import ConfigError, check_runner
from tf_batch_predict.pipeline.progress import size_text
from tf_batch_predict.transforms.file_patterns import name_text
from tf_batch_predict.transforms.read.sampling import FileSample, SampleLimits, is_gzip

_LOG = logging.getLogger(__name__)

# Files the sample is spread over at first (evenly spaced over the sorted
# list); more are read only where those hold fewer instances than asked for.
SPREAD_FILES = 10
MAX_FILES_OPENED = 100
# Decompressed bytes read from one file at most (a huge line or record is
# cut there: the file is then taken as going on).
SAMPLE_BYTES_PER_FILE = 16 << 20
# A request file is parsed whole up to this many bytes (decompressed); a
# larger one is sampled from its start (a body of "instances": the elements
# within its first JSON_SAMPLE_MAX_BYTES), and a gzip one is decompressed on
# (not kept) to learn its size, for JSON_SCAN_SECONDS at most.
JSON_SAMPLE_MAX_BYTES = 16 << 20
JSON_SCAN_SECONDS = 5.0
# A line longer than --max_instance_bytes that the sample's byte budget cuts:
# its end is looked for (not kept), as the run measures it, this far at most.
LINE_SCAN_BYTES = 4 << 30
LINE_SCAN_SECONDS = 5.0
# When the files of the sample hold no instance and others were not read,
# more are read, largest first, within these bounds.
SEARCH_FILES = 200
SEARCH_SECONDS = 10.0
SEARCH_BYTES = 256 << 20
# Parquet files whose row count is read from their metadata (the others:
# estimated from bytes per row).
PARQUET_METADATA_FILES = 30
# gzip: compressed bytes read to measure a file's compression ratio, and how
# many unsampled files are measured (the others take the mean).
GZIP_RATIO_BYTES = 1 << 20
GZIP_RATIO_MAX_OUT = 256 << 20  # decompressed bytes of them, counted a MiB at a time
GZIP_RATIO_FILES = 5
MESSAGE_LIMIT = 300  # characters of an example message in the text report
MESSAGES_LISTED = 10  # most common messages per error category (--json)
# The text report lists at most this many field names on a line, and
# inputs one by one up to this many (--json: all).
NAMES_LISTED = 30
INPUTS_LISTED = 12
# The speed is timed on the sample repeated up to this many instances (a
# run's chunks hold up to 4,096) and about this many bytes.
TIMED_INSTANCES = 4096
TIMED_BYTES = 16 << 20


# -- reading the beginning of a file ----------------------------------------------
# Each format samples its own files, through the run's reader
# (transforms/read/input_*.py `sample`); preflight chooses which and how much.

def _limits() -> SampleLimits:
  """The bounds of one file's sample: the constants above, read when a file
  is sampled (tests set them)."""
  return SampleLimits(bytes_per_file=SAMPLE_BYTES_PER_FILE, line_scan_bytes=LINE_SCAN_BYTES,
                      line_scan_seconds=LINE_SCAN_SECONDS,
                      request_whole_bytes=JSON_SAMPLE_MAX_BYTES,
                      request_scan_seconds=JSON_SCAN_SECONDS)


def _formats(config) -> dict:
  from tf_batch_predict.transforms.read.formats import input_formats
  opts = config.options
  return input_formats(config.model.signature, opts.key_field, opts.passthrough_fields,
                       opts.max_instance_bytes)


def _sample_file(kind, metadata, quota, formats) -> FileSample:
  from tf_batch_predict.transforms.read.formats import sample_file
  return sample_file(kind, metadata, quota, formats, _limits())


def _radical_inverse(i: int) -> float:
  result, f = 0.0, 0.5
  while i:
    result += f * (i & 1)
    i >>= 1
    f /= 2
  return result


def spread_order(files: list) -> tuple:
  """(order of the indexes of `files` ((path, kind, metadata), sorted by
  path) to sample, how many of them make the first, spread-out pass):
  SPREAD_FILES evenly spaced ones, plus the first file of every format not
  among them; then the others, spread over the list too."""
  n = len(files)
  k = min(SPREAD_FILES, n)
  first = list(dict.fromkeys(round(i * (n - 1) / (k - 1)) if k > 1 else 0 for i in range(k)))
  kinds = {files[i][1] for i in first}
  for i, (_, kind, _) in enumerate(files):
    if kind not in kinds:
      kinds.add(kind)
      first.append(i)
  chosen = set(first)
  rest = [i for i in range(n) if i not in chosen]
  rest = [i for _, i in sorted((_radical_inverse(j), i) for j, i in enumerate(rest))]
  return first + rest, len(first)


@dataclasses.dataclass
class Sample:
  files: list  # (path, kind, metadata) of every input file, sorted by path
  samples: list  # FileSample of each file read
  searched: int = 0  # files read beyond the spread-out sample, looking for an instance

  @property
  def skipped_json(self) -> list:
    """Request files too large to sample, whose body's start tells no instance."""
    return [s.path for s in self.samples if s.partial == 'not sampled']

  @property
  def request_starts(self) -> list:
    """Request files too large to read whole here, sampled from their start."""
    return [s.path for s in self.samples if s.partial == 'start']

  @property
  def complete(self) -> bool:
    """Whether every input file was read to its end (or as far as the run
    reads it), or is an empty file of lines or records: then the sample
    holds every instance of the input."""
    from tf_batch_predict.transforms.records import CSV, JSONL, TFRECORD
    counted = {s.path for s in self.samples if s.count is not None}
    return all(path in counted or (not metadata.size_in_bytes and kind in (JSONL, CSV, TFRECORD))
               for path, kind, metadata in self.files)


def take_sample(config, formats=None) -> Sample:
  """The sample of the input (`formats`: from `input_formats`, None: the
  job's)."""
  formats = _formats(config) if formats is None else formats
  wanted = config.options.preflight_instances
  files = sorted(((m.path, kind, m) for kind, metadata_list in config.files_by_format.items()
                  for m in metadata_list), key=lambda f: f[0])
  order, spread = spread_order(files) if files else ([], 0)
  samples, collected = [], 0
  for position in order:
    if collected >= wanted or len(samples) >= MAX_FILES_OPENED:
      break
    path, kind, metadata = files[position]
    slots = max(1, spread - len(samples))
    quota = -(-(wanted - collected) // slots)
    sample = _sample_file(kind, metadata, quota, formats)
    samples.append(sample)
    collected += sample.instances
  searched = 0
  if not collected:  # nothing to check yet: look on, largest files first
    searched = _search(formats, files, samples, wanted)
    collected = sum(s.instances for s in samples)
  # Every file visited, and the sample still short: the files that go on
  # give more (read again from their start, with a larger share).
  by_path = {path: (kind, metadata) for path, kind, metadata in files}
  while collected < wanted:
    going_on = [i for i, s in enumerate(samples) if s.count is None or s.count > s.instances]
    grew = False
    for n, i in enumerate(going_on):
      if collected >= wanted:
        break
      before = samples[i]
      share = -(-(wanted - collected) // (len(going_on) - n))
      kind, metadata = by_path[before.path]
      samples[i] = _sample_file(kind, metadata, before.instances + share, formats)
      collected += samples[i].instances - before.instances
      grew = grew or samples[i].instances > before.instances
    if not grew:
      break
  return Sample(files, samples, searched)


def _search(formats, files: list, samples: list, wanted: int) -> int:
  """The files sampled so far hold no instance (blank or empty files, say
  the many empty parts a Spark job writes): reads the files not read yet,
  largest first, until the sample is full, within SEARCH_FILES,
  SEARCH_SECONDS and SEARCH_BYTES. Returns how many were read."""
  from tf_batch_predict.transforms.records import CSV, JSONL, TFRECORD
  read = {s.path for s in samples}
  rest = sorted((f for f in files if f[0] not in read
                 and (f[2].size_in_bytes or f[1] not in (JSONL, CSV, TFRECORD))),
                key=lambda f: (-f[2].size_in_bytes, f[0]))  # not the empty ones
  deadline = time.monotonic() + SEARCH_SECONDS
  spent, searched, collected = 0, 0, 0
  for path, kind, metadata in rest:
    if (collected >= wanted or searched >= SEARCH_FILES or spent >= SEARCH_BYTES
        or time.monotonic() > deadline):
      break
    sample = _sample_file(kind, metadata, wanted - collected, formats)
    samples.append(sample)
    searched += 1
    spent += min(metadata.size_in_bytes, SAMPLE_BYTES_PER_FILE)
    collected += sample.instances
  return searched


# -- fields ---------------------------------------------------------------------

def _field_counts(samples, formats) -> tuple:
  """(objects, bare values, unreadable, Counter of fields present (not
  null), Counter of fields given as empty CSV cells) over the sampled
  instances, by each format's own definition of an instance."""
  from tf_batch_predict.transforms.records import PARQUET
  objects, bare, unreadable, seen = 0, 0, 0, collections.Counter()
  empty = collections.Counter()
  for sample in samples:
    for chunk in sample.chunks:
      fmt = formats[chunk.kind]
      for row in range(len(chunk)):
        if row in chunk.read_errors:
          unreadable += 1
          continue
        try:
          instance = fmt.instance(chunk, row)
        except Exception:  # pylint: disable=broad-except  (its error says why)
          unreadable += 1
          continue
        fields = instance.fields
        if fields is None:
          bare += 1
          continue
        objects += 1
        seen.update(name for name, value in fields.items() if value is not None)
        if instance.text_cells:  # a CSV cell left empty is a missing input value
          empty.update(name for name, value in fields.items() if value == '')
        if chunk.kind == PARQUET:  # columns the job does not read: present as columns
          seen.update(name for name in sample.columns if name not in fields)
  return objects, bare, unreadable, seen, empty


def _folded(name: str) -> str:
  """A field name compared without case, `_` and `-` (`CustomerID`,
  `customer_id` and `customer-id` are one)."""
  return name.lower().replace('_', '').replace('-', '')


# difflib's ratio over folded names at least this (`lable`/`label`: 0.8,
# `idd`/`id`: 0.8, `ts`/`id`: 0); one name within the other, folded, only
# where it makes at least this much of the longer (`income`/`income_usd`,
# not `id`/`customer_id` nor `ts`/`visits_per_week`).
CLOSE_RATIO = 0.75
CLOSE_CONTAINED = 0.6


def _close(name: str, seen) -> Optional[str]:
  """The field among `seen` that `name` most likely means, or None."""
  seen = sorted(seen)
  folded = _folded(name)
  same = [s for s in seen if s != name and _folded(s) == folded]
  if same:  # one that differs only by case, `_` or `-`; the same case first
    return min(same, key=lambda s: (s.lower() != name.lower(), s))
  if not folded:
    return None
  scored = []
  for candidate in seen:
    other = _folded(candidate)
    if not other or candidate == name:
      continue
    ratio = difflib.SequenceMatcher(None, folded, other).ratio()
    short, long_ = sorted((folded, other), key=len)
    if ratio >= CLOSE_RATIO or (len(short) >= 3 and short in long_
                                and len(short) >= CLOSE_CONTAINED * len(long_)):
      scored.append((-ratio, candidate))
  return min(scored)[1] if scored else None


def describe_fields(config, objects, bare, unreadable, seen, empty) -> dict:
  """Carried fields count where present (an empty CSV cell is a value the
  run carries); inputs and features where they hold a value."""
  opts, signature = config.options, config.model.signature
  carried_seen, seen = seen, seen - empty
  inputs = []
  if signature.takes_examples:
    spec = signature.inputs[0]
    inputs.append({'input': spec.name, 'type': _tensor_text(spec, signature.per_instance),
                   'fed': 'a serialized tf.Example: a TFRecord record or a bare value as '
                          f'it is, a field {spec.name!r} as it is, else built from the fields',
                   'field': spec.name, 'present': seen.get(spec.name, 0)})
    features = signature.example_features or {}
    used = set(features) | {spec.name}
    feature_rows = [{'feature': name, 'kind': feature.kind, 'required': feature.required,
                     'present': seen.get(name, 0),
                     'close_match': None if seen.get(name) else _close(name, seen)}
                    for name, feature in sorted(features.items())]
  else:
    used = {s.name for s in signature.inputs}
    feature_rows = []
    for spec in signature.inputs:
      inputs.append({'input': spec.name, 'type': _tensor_text(spec, signature.per_instance), 'field': spec.name,
                     'present': seen.get(spec.name, 0),
                     'close_match': None if seen.get(spec.name) else _close(spec.name, seen)})
  carried = []
  for role, name in ([('key', opts.key_field)] if opts.key_field else []) + [
      ('passthrough', f) for f in opts.passthrough_fields]:
    carried.append({'field': name, 'role': role, 'present': carried_seen.get(name, 0),
                    'close_match': (None if carried_seen.get(name)
                                    else _close(name, carried_seen))})
  used |= {c['field'] for c in carried}
  missing_inputs = [i['input'] for i in inputs if objects and not i['present']
                    and not signature.takes_examples]
  return {
      'instances_with_fields': objects, 'bare_values': bare, 'unreadable': unreadable,
      'single_input': len(signature.inputs) == 1,
      'seen': dict(sorted(carried_seen.items())),
      'inputs': inputs, 'features': feature_rows, 'carried': carried,
      'ignored': {name: n for name, n in sorted(carried_seen.items()) if name not in used},
      'missing_inputs': missing_inputs,
      'missing_required_features': [f['feature'] for f in feature_rows
                                    if objects and f['required'] and not f['present']],
      'key_missing_everywhere': (bool(opts.key_field) and bool(objects or bare)
                                 and not carried_seen.get(opts.key_field)),
  }


def _tensor_text(spec, per_instance: bool = False) -> str:
  """`float32[batch,3]`; without `batch` for an input fed one instance
  per call (no batch dimension)."""
  if spec.shape is None:
    return f'{spec.dtype}[batch,...]'
  batch = [] if per_instance else ['batch']
  return f'{spec.dtype}[{",".join(batch + ["?" if d is None else str(d) for d in spec.shape])}]'


# -- decoding and scoring ------------------------------------------------------------

def _load(config):
  """(LoadedSignature, seconds) after one warm-up call on the model check's
  sample batch; raises ConfigError where it cannot load."""
  from tf_batch_predict.transforms.model.score import LoadedSignature, one_line, sample_feeds
  started = time.time()
  try:
    loaded = LoadedSignature(config.model)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'--model: cannot load {config.model.path}: {one_line(e)}') from None
  try:  # the first call's one-time costs are the load's, not the instances'
    loaded.predict(dict(zip((s.name for s in config.model.signature.inputs),
                            sample_feeds(config.model.signature))))
  except Exception:  # pylint: disable=broad-except  (the instances will say)
    pass
  return loaded, time.time() - started


def _close_model(loaded) -> None:
  fn = getattr(loaded, '_fn', None)
  if hasattr(fn, 'close'):
    fn.close()


def process(config, sample: Sample, formats, loaded) -> dict:
  """Runs the sampled chunks through the job's steps; returns counts,
  error records and timings."""
  from tf_batch_predict.transforms.read.coalesce import CoalesceChunks
  from tf_batch_predict.transforms.read.decode import InstanceDecoder
  from tf_batch_predict.transforms.write.format import FormatRecords
  from tf_batch_predict.transforms.records import FILE, RawChunk
  from tf_batch_predict.transforms.model.score import SavedModelHandler
  opts = config.options
  chunks = [c for s in sample.samples for c in s.chunks]
  chunks += [RawChunk([(path, 0)], [], [], kind=kind, file_errors=[(path, reason)])
             for path, kind, reason in config.unreadable_files]
  merge = CoalesceChunks(opts.min_batch_size)
  merge.start_bundle()
  merged = [c for chunk in chunks for c in merge.process(chunk)]
  merged += [getattr(c, 'value', c) for c in merge.finish_bundle() or ()]
  decoder = InstanceDecoder(config.model.signature, formats, opts.key_field,
                            opts.passthrough_fields)
  handler = SavedModelHandler(config.model, opts.max_batch_size)
  writer = FormatRecords(config.layout, formats)
  writer.setup()
  steps = _Steps(decoder, handler, writer, loaded)
  instances, decoded, error_lines = 0, 0, []
  for chunk in merged:
    if not len(chunk) and not chunk.file_errors:
      continue
    instances += len(chunk)
    batch, lines = steps.run(chunk)
    decoded += len(batch)
    error_lines.extend(lines)
  # In file order (a failing batch's instances are found in any order).
  errors = sorted((json.loads(line) for line in error_lines), key=lambda e: (
      e.get('filename', ''), e.get('offset', e.get('index', -1))))
  failed = sum(1 for e in errors if e['error']['category'] != FILE)
  timed, timing, repeat = _timed(steps, merged, sample)
  return {'instances': instances, 'decoded': decoded, 'errors': errors,
          'scored': None if loaded is None else instances - failed,
          'failed': failed, 'timing': timing, 'timed_instances': timed, 'repeat': repeat}


class _Steps:
  """The job's steps after reading, for one chunk: decode, score, format."""
  def __init__(self, decoder, handler, writer, loaded):
    self._decoder, self._handler, self._writer, self._loaded = decoder, handler, writer, loaded
    self.timing = {'decode': 0.0, 'score': 0.0, 'format': 0.0}

  def run(self, chunk) -> tuple:
    """(InstanceBatch, error lines)."""
    from tf_batch_predict.transforms.write.format import ERRORS_TAG
    from tf_batch_predict.transforms.records import ScoredBatch
    started = time.perf_counter()
    batch = self._decoder.decode(chunk)
    scoring = time.perf_counter()
    if self._loaded is None:
      scored = ScoredBatch(batch, [], list(batch.errors))
    else:
      scored = self._handler.run_inference(batch, self._loaded)[0]
    formatting = time.perf_counter()
    lines = []
    for output in self._writer.process(scored):
      if getattr(output, 'tag', None) == ERRORS_TAG:
        lines.extend(output.value.split(b'\n'))
    ended = time.perf_counter()
    for step, seconds in (('decode', scoring - started), ('score', formatting - scoring),
                          ('format', ended - formatting)):
      self.timing[step] += seconds
    return batch, lines


def _repeated(chunk, times: int):
  """The chunk's records `times` over (no file errors): a chunk of the size
  the run's readers give, whose per-chunk costs are the run's share."""
  import pyarrow as pa
  from tf_batch_predict.transforms.records import Lines, PARQUET
  n = len(chunk)
  if chunk.kind == PARQUET:
    batches = pa.Table.from_batches([chunk.records] * times).combine_chunks().to_batches()
    if len(batches) != 1:
      return dataclasses.replace(chunk, file_errors=[])
    records = batches[0]
  elif isinstance(chunk.records, Lines):  # as the run's line reader gives them
    records = Lines.of(list(chunk.records) * times)
  else:
    records = list(chunk.records) * times
  return dataclasses.replace(
      chunk, segments=[(path, first + i * n) for i in range(times)
                       for path, first in chunk.segments],
      positions=list(chunk.positions) * times, records=records, file_errors=[],
      read_errors={r + i * n: e for i in range(times) for r, e in chunk.read_errors.items()},
      unread_sizes={r + i * n: e for i in range(times) for r, e in chunk.unread_sizes.items()})


def _sample_bytes(sample: Sample) -> float:
  total = 0.0
  for s in sample.samples:
    count, start, end = s.span if s.span and s.span[0] else (0, 0, None)
    per_instance = (end - start) / count if count and end is not None else 1024
    total += s.instances * per_instance
  return total


def _timed(steps: _Steps, merged: list, sample: Sample) -> tuple:
  """(instances, seconds per step, repeat): the speed of decode, score and
  format, measured on the sample's chunks repeated up to TIMED_INSTANCES
  (TIMED_BYTES) after one untimed pass: a run's chunks hold up to 4,096
  instances, and the first calls of each step pay one-time costs."""
  chunks = [c for c in merged if len(c)]
  rows = sum(len(c) for c in chunks)
  if not rows:
    return 0, dict(steps.timing), 1
  repeat = max(1, min(TIMED_INSTANCES // rows,
                      int(TIMED_BYTES // max(1.0, _sample_bytes(sample)))))
  chunks = [_repeated(c, repeat) if repeat > 1 else c for c in chunks]
  for chunk in chunks:  # one-time costs
    steps.run(chunk)
  steps.timing = {step: 0.0 for step in steps.timing}
  for chunk in chunks:
    steps.run(chunk)
  return sum(len(c) for c in chunks), dict(steps.timing), repeat


def error_categories(errors: list) -> dict:
  from tf_batch_predict.transforms.records import CATEGORIES
  counts = collections.Counter(e['error']['category'] for e in errors)
  result = {}
  for category in CATEGORIES:
    if not counts[category]:
      continue
    first = next(e for e in errors if e['error']['category'] == category)
    example = {k: v for k, v in first.items() if k not in ('raw', 'raw_b64')}
    for raw in ('raw', 'raw_b64'):
      if raw in first:
        example[raw] = first[raw][:200]
    messages = collections.Counter(e['error']['message'] for e in errors
                                   if e['error']['category'] == category)
    result[category] = {'count': counts[category], 'example': example,
                        'distinct_messages': len(messages),
                        'messages': [{'message': m, 'count': n}
                                     for m, n in messages.most_common(MESSAGES_LISTED)]}
  return result


# -- estimate -------------------------------------------------------------------------

def gzip_ratio(path: str) -> Optional[float]:
  """Decompressed bytes per compressed byte of a gzip file's first
  GZIP_RATIO_BYTES, or None."""
  import zlib
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      data = f.read(GZIP_RATIO_BYTES)
    inflater = zlib.decompressobj(wbits=31)
    out, tail = 0, data
    while out < GZIP_RATIO_MAX_OUT:  # a MiB at a time: never all of it held
      piece = inflater.decompress(tail, 1 << 20)
      out += len(piece)
      tail = inflater.unconsumed_tail
      if inflater.eof or (not tail and len(piece) < 1 << 20):
        break
    used = len(data) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
  except Exception:  # pylint: disable=broad-except
    return None
  return out / used if used and out else None


def parquet_rows(path: str) -> Optional[int]:
  import pyarrow.parquet as pq
  from apache_beam.io.filesystems import FileSystems
  try:
    with FileSystems.open(path) as f:
      return pq.ParquetFile(f).metadata.num_rows
  except Exception:  # pylint: disable=broad-except
    return None


def estimate(sample: Sample) -> dict:
  """Per format and in total: instances (exact where every file's count is
  known), and how the rest was estimated."""
  from tf_batch_predict.transforms.records import JSON, PARQUET
  sampled = {s.path: s for s in sample.samples}
  ratios = {}
  for s in sample.samples:
    if is_gzip(s.path) and (s.count is None or s.kind == JSON) and s.decompressed is None:
      ratios[s.path] = gzip_ratio(s.path)
  measured = [r for r in ratios.values() if r]
  unsampled_gz = [p for p, _, _ in sample.files if is_gzip(p) and p not in sampled]
  if unsampled_gz and not measured:
    for path in unsampled_gz[:GZIP_RATIO_FILES]:
      ratios[path] = gzip_ratio(path)
    measured = [r for r in ratios.values() if r]
  mean_ratio = sum(measured) / len(measured) if measured else None

  def decompressed(path, size):
    if not is_gzip(path):
      return size
    if path in sampled and sampled[path].decompressed is not None:
      return sampled[path].decompressed
    ratio = ratios.get(path) or mean_ratio
    return None if ratio is None else size * ratio

  densities = {}  # kind -> instances per decompressed byte, of each sampled file
  for s in sample.samples:
    if s.span is None:
      continue
    count, start, end = s.span
    if end is None:
      end = decompressed(s.path, s.size)
      s.span = (count, start, end)
    if count and end and end > start:
      densities.setdefault(s.kind, []).append(count / (end - start))
  parquet_read = 0
  per_format = {}
  for path, kind, metadata in sample.files:
    entry = per_format.setdefault(kind, {'files': 0, 'bytes': 0, 'gzip_files': 0,
                                         'sampled_files': 0, 'sampled_instances': 0,
                                         'exact_instances': 0, 'estimated_instances': 0.0,
                                         'files_estimated': 0, 'files_unknown': 0})
    entry['files'] += 1
    entry['bytes'] += metadata.size_in_bytes
    entry['gzip_files'] += is_gzip(path)
    s = sampled.get(path)
    if s is not None:
      entry['sampled_files'] += 1
      entry['sampled_instances'] += s.instances
    count = s.count if s is not None else None
    if count is None and kind == PARQUET and parquet_read < PARQUET_METADATA_FILES:
      parquet_read += 1
      count = parquet_rows(path)
    if count is not None:
      entry['exact_instances'] += count
      continue
    size = decompressed(path, metadata.size_in_bytes)
    if s is not None and s.span is not None and s.span[0] and s.span[2] > s.span[1]:
      done, start, end = s.span  # the file's own bytes per instance
      entry['estimated_instances'] += done + max(0, (size or end) - end) * done / (end - start)
    elif densities.get(kind) and size is not None:
      entry['estimated_instances'] += size * statistics.median(densities[kind])
    else:
      entry['files_unknown'] += 1
      continue
    entry['files_estimated'] += 1
  total, exact, unknown = 0, True, 0
  for entry in per_format.values():
    entry['instances'] = entry['exact_instances'] + round(entry.pop('estimated_instances'))
    entry['exact'] = not entry['files_estimated'] and not entry['files_unknown']
    total += entry['instances']
    exact = exact and entry['exact']
    unknown += entry['files_unknown']
  gzip_estimated = any(is_gzip(p) and (sampled.get(p) is None or sampled[p].count is None)
                       and k != PARQUET for p, k, _ in sample.files)
  return {'formats': dict(sorted(per_format.items())), 'instances': total, 'exact': exact,
          'files_unknown': unknown, 'gzip_ratio_used': bool(gzip_estimated and mean_ratio)}


# -- the report -----------------------------------------------------------------

def build_report(config, loaded, load_seconds, read_seconds, sample, result) -> dict:
  opts = config.options
  formats = _formats(config)
  fields = describe_fields(config, *_field_counts(sample.samples, formats))
  counted = estimate(sample)
  timing = result['timing']
  busy = sum(timing.values())
  # Instances that got through: a rate of failures says little of a run's.
  measured = result['scored'] if loaded is not None else 0
  rate = result['timed_instances'] / busy if busy > 0 and result['timed_instances'] else None
  status, reason, verdict = _status(config, sample, result, fields, loaded is not None)
  return {
      'model': {'path': config.model.path, 'signature': config.model.signature.name,
                'loaded': loaded is not None,
                'load_seconds': round(load_seconds, 3) if loaded is not None else None},
      'files': {'total': len(sample.files), 'bytes': sum(m.size_in_bytes
                                                         for _, _, m in sample.files),
                'sampled': len(sample.samples),
                'sampled_files': [{'path': name_text(s.path), 'format': s.kind,
                                   'instances': s.instances, 'count': s.count}
                                  for s in sample.samples],
                'not_regular': [name_text(p) for p, _, _ in config.unreadable_files],
                'searched': sample.searched,
                'not_sampled_large_request_files': [name_text(p) for p in sample.skipped_json],
                'request_files_sampled_from_their_start': [name_text(p)
                                                           for p in sample.request_starts]},
      'formats': counted['formats'],
      'sample': {'asked': opts.preflight_instances, 'instances': result['instances'],
                 'decoded': result['decoded'], 'scored': result['scored'],
                 'failed': result['failed'], 'read_seconds': round(read_seconds, 3)},
      'fields': fields,
      'errors': error_categories(result['errors']),
      'speed': {'instances_per_second': round(rate, 1) if rate else None,
                'measured': 'decode + score + format' if loaded is not None
                            else 'decode + format (model not loaded)',
                'seconds': round(busy, 4), 'timing': {k: round(v, 4) for k, v in timing.items()},
                'instances': result['timed_instances'], 'sample_repeated': result['repeat']},
      'estimate': {'instances': counted['instances'], 'exact': counted['exact'],
                   'files_unknown': counted['files_unknown'],
                   'gzip_ratio_used': counted['gzip_ratio_used'],
                   'local_seconds': (round(counted['instances'] / rate, 1)
                                     if rate and measured else None)},
      'verdict': verdict, 'exit_status': status, 'exit_reason': reason,
  }


def _status(config, sample: Sample, result, fields, scored: bool) -> tuple:
  """(exit status, reason, verdict: 'ok', 'failed' or 'unchecked' (nothing
  to check: no instance in what was read, the rest not read; exit 0, as the
  run may well find instances there))."""
  opts = config.options
  usable = result['scored'] if scored else result['decoded']
  if usable:
    return EXIT_OK, (f'{usable} of {result["instances"]} sampled instances '
                     f'{"scored" if scored else "decoded"}'), 'ok'
  if not result['instances']:
    files = sum(1 for e in result['errors'] if e['error']['category'] == 'file')
    why = f'; {files} file(s) could not be read' if files else ''
    total = len(sample.files)
    if sample.complete:
      every = 'the input file' if total == 1 else f'all {total} input files'
      return (EXIT_TOO_MANY_ERRORS, f'preflight: the input holds no instance ({every} read to '
              f'the end){why}', 'failed')
    read = len(sample.samples)
    ends = sum(1 for s in sample.samples if s.count is not None)
    part = ('' if read == ends else ', only in part' if read == 1
            else f', {read - ends} of them only in part')
    return EXIT_OK, (f'preflight: nothing to check: no instance in what was read ({read} of '
                     f'{_count(total, "file")}{part}){why}; the run reads every file whole and '
                     'may find instances in what was not read'), 'unchecked'
  reason = (f'preflight: no sampled instance could be '
            f'{"scored" if scored else "decoded"}: all {result["instances"]} failed')
  counts = collections.Counter(e['error']['category'] for e in result['errors']
                               if e['error']['category'] != 'file')
  messages = collections.Counter(e['error']['message'] for e in result['errors']
                                 if e['error']['category'] != 'file')
  if counts:
    reason += ' (' + ', '.join(f'{c} {n}' for c, n in counts.most_common()) + ')'
  if opts.key_field and fields['key_missing_everywhere']:
    reason += f'; --key_field {opts.key_field!r} is in none of them'
    close = next(c['close_match'] for c in fields['carried'] if c['role'] == 'key')
    if close:
      reason += f' (did you mean {close!r}?)'
  elif messages:
    message, n = messages.most_common(1)[0]
    reason += f'; most often: {message[:200]}'
  return EXIT_TOO_MANY_ERRORS, reason, 'failed'


def _duration_text(seconds) -> str:
  if seconds < 0.1:
    return 'less than 0.1 s'
  if seconds < 60:
    return f'about {seconds:.1f} s'
  if seconds < 3600:
    return f'about {int(seconds // 60)} min {int(seconds % 60)} s'
  return f'about {seconds / 3600:.1f} h'


def _count(n, noun) -> str:
  return f'{n} {noun}' if n == 1 else f'{n} {noun}s'


def _of(n, total) -> str:
  return f'{n} of {total}'


def text(report) -> str:
  lines = []
  sample, files = report['sample'], report['files']
  model = report['model']
  lines.append(f'Preflight: {sample["instances"]} instances sampled from {files["sampled"]} '
               f'of {files["total"]} files (asked for {sample["asked"]}), read in '
               f'{report["sample"]["read_seconds"]:.2f} s')
  if model['loaded']:
    lines.append(f'Model: {model["path"]} (signature {model["signature"]}), loaded in '
                 f'{model["load_seconds"]:.1f} s')
  else:
    lines.append(f'Model: {model["path"]} not loaded (--skip_model_check): the sample is '
                 'decoded, not scored')
  lines.append('')
  lines.append(f'Formats ({_count(files["total"], "file")}, {size_text(files["bytes"])}):')
  for kind, entry in report['formats'].items():
    gz = f', {entry["gzip_files"]} gzip' if entry['gzip_files'] else ''
    lines.append(f'  {kind:<8} {_count(entry["files"], "file"):>11}  '
                 f'{size_text(entry["bytes"]):>10}{gz}; sampled '
                 f'{_count(entry["sampled_instances"], "instance")} from '
                 f'{_count(entry["sampled_files"], "file")}')
  for path in files['not_regular']:
    lines.append(f'  not a regular file (a file error): {path}')
  if files['searched']:
    lines.append(f'  {_count(files["searched"], "more file")} read, largest first, as the '
                 'files of the spread-out sample held no instance')
  if files['request_files_sampled_from_their_start']:
    lines.append(f'  {_count(len(files["request_files_sampled_from_their_start"]), "request file")}'
                 f' larger than {size_text(JSON_SAMPLE_MAX_BYTES)} sampled from '
                 f'the start of "instances" (the run parses each whole)')
  if files['not_sampled_large_request_files']:
    lines.append(f'  {len(files["not_sampled_large_request_files"])} request files larger than '
                 f'{size_text(JSON_SAMPLE_MAX_BYTES)} not sampled: their body is not a list of '
                 '"instances" to read from its start (the run parses each whole)')
  lines.append('')
  lines.extend(_fields_text(report['fields']))
  lines.append('')
  scored = sample['scored']
  if scored is None:
    lines.append(f'Results: {sample["decoded"]} of {sample["instances"]} decoded, '
                 f'{sample["failed"]} failed (not scored: --skip_model_check)')
  else:
    lines.append(f'Results: {scored} of {sample["instances"]} scored, {sample["failed"]} failed')
  for category, entry in report['errors'].items():
    example = entry['example']
    where = example.get('filename', '')
    for position in ('offset', 'index'):
      if position in example:
        where += f' {position} {example[position]}'
    message = example['error']['message']
    if len(message) > MESSAGE_LIMIT:
      message = message[:MESSAGE_LIMIT] + '...'
    more = (f' ({entry["distinct_messages"]} different messages)'
            if entry['distinct_messages'] > 1 else '')
    lines.append(f'  {category:<7} {entry["count"]:>5}{more}  e.g. {where}: {message}')
  lines.append('')
  speed, guess = report['speed'], report['estimate']
  if not speed['instances_per_second'] or (scored is not None and not scored):
    lines.append('Speed here: not measured (no sampled instance got through)')
  else:
    repeated = (f' (the sample {speed["sample_repeated"]} times over, as a run\'s chunks '
                'are large)' if speed['sample_repeated'] > 1 else '')
    lines.append(f'Speed here: {speed["instances_per_second"]:,.0f} instances/s '
                 f'({speed["measured"]}, one process, model load excluded: '
                 f'{speed["instances"]:,} instances{repeated} in {speed["seconds"]:.3f} s)')
  approx = '' if guess['exact'] else 'about '
  how = ('exact: every file counted' if guess['exact'] else
         'from bytes per sampled instance; Parquet and files read to their end counted')
  if guess['gzip_ratio_used']:
    how += '; gzip sizes from the compression ratio of the files\' start'
  unknown = (f'; {guess["files_unknown"]} files could not be estimated'
             if guess['files_unknown'] else '')
  lines.append(f'Estimate: {approx}{guess["instances"]:,} instances in total ({how}{unknown})')
  if guess['local_seconds'] is not None:
    lines.append(f'  {_duration_text(guess["local_seconds"])} to score them here at that '
                 'rate (a cluster divides it among its workers)')
  lines.append('')
  lines.append({'ok': 'OK: ', 'unchecked': 'WARNING: '}.get(report['verdict'], 'FAILED: ')
               + report['exit_reason'])
  return '\n'.join(lines)


def _names(names: list) -> str:
  if len(names) > NAMES_LISTED:
    return ', '.join(names[:NAMES_LISTED]) + f', ... ({len(names) - NAMES_LISTED} more)'
  return ', '.join(names)


def _presence(n, total) -> str:
  return f'in {_of(n, total)}' if n else 'MISSING'


def _fields_text(fields) -> list:
  total = fields['instances_with_fields']
  lines = [f'Fields ({total} sampled instances with fields'
           + (f', {fields["bare_values"]} bare values' if fields['bare_values'] else '')
           + (f', {fields["unreadable"]} unreadable' if fields['unreadable'] else '') + '):']
  if not total and not fields['bare_values']:
    lines.append('  (no sampled instance could be read)')
    return lines
  if total:
    lines.append(f'  seen: {_names(list(fields["seen"])) or "(none)"}')
  inputs = fields['inputs']
  if len(inputs) > INPUTS_LISTED:
    everywhere = [i for i in inputs if total and i['present'] == total and not i.get('fed')]
    inputs = [i for i in inputs if i not in everywhere]
    if everywhere:
      lines.append(f'  {len(everywhere)} inputs from the fields of their names, each in every '
                   f'sampled instance: {_names([i["input"] for i in everywhere])}')
  for entry in inputs:
    fed = entry.get('fed')
    if fed:
      lines.append(f'  input {entry["input"]} {entry["type"]}: {fed}')
      continue
    line = f'  input {entry["input"]:<16} {entry["type"]:<22} '
    if total:
      line += f'from field {entry["field"]!r} {_presence(entry["present"], total)}'
    if fields['bare_values'] and fields['single_input']:
      line += ('; ' if total else '') + f'from {fields["bare_values"]} bare values'
    if entry.get('close_match') and total:
      line += f' (a field {entry["close_match"]!r} is there)'
    lines.append(line)
  for feature in fields['features']:
    required = 'required' if feature['required'] else 'optional'
    presence = (_presence(feature['present'], total) if feature['present'] or feature['required']
                else 'in no sampled instance (optional)')
    line = f'  feature {feature["feature"]} ({feature["kind"]}, {required}): {presence}'
    if feature['close_match'] and not feature['present']:
      line += f' (a field {feature["close_match"]!r} is there)'
    lines.append(line)
  for entry in fields['carried']:
    role = '--key_field' if entry['role'] == 'key' else 'passthrough'
    if entry['present']:
      lines.append(f'  {role} {entry["field"]!r}: in {_of(entry["present"], total)}')
      continue
    if entry['role'] == 'key':
      line = (f'  --key_field {entry["field"]!r}: MISSING from every sampled instance: each '
              'is a schema error in the run')
    else:
      line = (f'  passthrough {entry["field"]!r}: in no sampled instance (written as null)')
    if entry['close_match']:
      line += f'; did you mean {entry["close_match"]!r}?'
    lines.append(line)
  if fields['ignored']:
    lines.append('  ignored: ' + _names([f'{name} ({n})' for name, n in
                                         fields['ignored'].items()]))
  for name in fields['missing_inputs']:
    lines.append(f'  input {name!r} is in no sampled instance')
  for name in fields['missing_required_features']:
    lines.append(f'  required feature {name!r} is in no sampled instance')
  return lines


# -- the commands ---------------------------------------------------------------

def check(config) -> dict:
  """The report for a resolved configuration; raises ConfigError where the
  model cannot be loaded."""
  opts = config.options
  loaded, load_seconds = (None, 0.0) if opts.skip_model_check else _load(config)
  try:
    formats = _formats(config)
    started = time.time()
    sample = take_sample(config, formats)
    read_seconds = time.time() - started
    result = process(config, sample, formats, loaded)
    return build_report(config, loaded, load_seconds, read_seconds, sample, result)
  finally:
    if loaded is not None:
      _close_model(loaded)


def _json_safe(value):
  """`value` with every float that is not finite (an error record's raw
  value, NaN) as its JSON Lines text ('NaN', 'Infinity', '-Infinity'): the
  report is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def json_text(report) -> str:
  return json.dumps(_json_safe(report), indent=2, ensure_ascii=False, allow_nan=False)


def _print(report, as_json: bool) -> None:
  print(json_text(report) if as_json else text(report))
  sys.stdout.flush()


def _warning(message) -> None:
  print(f'batch-predict: warning: {message}', file=sys.stderr)


def _failed(e: Exception) -> int:
  if debug():
    import traceback
    traceback.print_exception(e)
  error(f'preflight failed: {last_line(e)}')
  return EXIT_PIPELINE_FAILED


def main(argv: list) -> int:
  """`batch-predict preflight [run options] [--json]`: the exit status."""
  as_json, argv = take_option(argv, '--json', takes_value=False)
  as_json = bool(as_json)
  if '-h' in argv or '--help' in argv:
    from tf_batch_predict.pipeline.options import _parser
    print(__doc__.split('\n\n')[1].strip() + '\n')
    _parser().print_help()
    return EXIT_OK
  from tf_batch_predict.transforms import storage
  storage.use_anonymous_credentials_for_emulator()
  from tf_batch_predict.pipeline import config as job_config
  from tf_batch_predict.pipeline.options import parse_args
  try:
    options = parse_args(argv, require_output=False)
    check_runner(options.runner)
    config = job_config.resolve(options)
    freeze_imports()
    config = _checked(config)
    collect_young_objects()
    report = check(config)
  except (ConfigError, OSError) as e:
    error(e)
    return EXIT_CONFIG_ERROR
  except Exception as e:  # pylint: disable=broad-except
    return _failed(e)
  _print(report, as_json)
  if report['exit_status'] != EXIT_OK:
    error(report['exit_reason'])
  elif report['verdict'] == 'unchecked':
    _warning(report['exit_reason'])
  return report['exit_status']


def _checked(config):
  """The config with the loader a run's model check chooses (a signature
  that only `tf.saved_model.load` runs), as the run would score; unchanged
  with --skip_model_check."""
  if config.options.skip_model_check:
    return config
  import dataclasses
  from tf_batch_predict.transforms.model.savedmodel import ModelError
  from tf_batch_predict.transforms.model.score import check_model
  try:
    _, _, model = check_model(config.model)
  except ModelError as e:
    raise ConfigError(str(e)) from None
  return dataclasses.replace(config, model=model)


def before_run(config) -> int:
  """`--preflight` on a run: 0 to go on, else the exit status to stop with."""
  try:
    report = check(config)
  except ConfigError as e:
    error(e)
    return EXIT_CONFIG_ERROR
  except Exception as e:  # pylint: disable=broad-except
    return _failed(e)
  _print(report, False)
  print()
  if report['exit_status'] != EXIT_OK:
    error(f'{report["exit_reason"]}; the run was not started (nothing was written)')
  elif report['verdict'] == 'unchecked':
    _warning(f'{report["exit_reason"]}; the run goes on')
  return report['exit_status']
