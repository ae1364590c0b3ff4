"""The job's summary: counts from Beam metrics, written as summary.json and
printed as a short table. summary.json is written last, when a run's outputs
are in place (pipeline/outputs.py): it marks a complete result.

Besides the counts, what an audit of the run needs: when it started and
ended (UTC) and how long the whole command and the pipeline took; the input
patterns with their files and bytes; the options that shaped the result;
model load time, the model's batches (sizes, latencies) and RunInference's
own figures; one example message per error category; the files that could
not be read completely; the exit status and why."""
import datetime
import json
import os
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from tf_batch_predict.pipeline.options import LOCAL_RUNNERS
from tf_batch_predict.pipeline.progress import size_text
from tf_batch_predict.transforms.file_patterns import compile_pattern, printable
from tf_batch_predict.transforms.records import METRICS_NAMESPACE
from tf_batch_predict.transforms.file_patterns import is_local

# `file`: a file that could not be read to its end (one record per file).
ERROR_CATEGORIES = ('parse', 'schema', 'model', 'file')


def counters(result) -> dict:
  """Metric name -> value, summed over steps; committed values where the
  runner reports them, else attempted: counters as numbers, string sets as
  sets, distributions as {sum, count, min, max}."""
  totals = {}
  query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  for metric in query['counters']:
    value = metric.committed if metric.committed is not None else metric.attempted
    totals[metric.key.metric.name] = totals.get(metric.key.metric.name, 0) + (value or 0)
  for metric in query.get('string_sets', []):  # sets of names, e.g. incomplete_files
    value = metric.committed if metric.committed is not None else metric.attempted
    totals.setdefault(metric.key.metric.name, set()).update(value or ())
  for metric in query.get('distributions', []):  # RunInference's, and model batches
    value = metric.committed if metric.committed is not None else metric.attempted
    if value is None or not value.count:
      continue
    total = totals.setdefault(metric.key.metric.name,
                              {'sum': 0, 'count': 0, 'min': value.min, 'max': value.max})
    total['sum'] += value.sum
    total['count'] += value.count
    total['min'] = min(total['min'], value.min)
    total['max'] = max(total['max'], value.max)
  return totals


def utc(seconds: float) -> str:
  """ISO 8601 in UTC, to the millisecond: 2026-11-21T16:08:00.123Z."""
  return (datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
          .isoformat(timespec='milliseconds').replace('+00:00', 'Z'))


def _stats(distribution, scale: float = 1.0, digits: int = 1):
  """{mean, min, max} of a distribution, scaled (e.g. microseconds to ms)."""
  if not distribution or not distribution['count']:
    return None
  return {'mean': round(distribution['sum'] / distribution['count'] * scale, digits),
          'min': round(distribution['min'] * scale, digits),
          'max': round(distribution['max'] * scale, digits)}


def histogram(counts: dict, prefix: str, suffix: str = '', scale: float = 1.0) -> list:
  """[{le, count}, ...]: the bucket counters `PREFIX<N>SUFFIX`
  (transforms/model/score.py) as a histogram, every bucket from the smallest to
  the largest one counted (0 where none), `le` the bucket's upper bound
  times `scale`."""
  from tf_batch_predict.transforms.model.score import bucket
  found = {}
  for name, value in counts.items():
    if name.startswith(prefix) and name.endswith(suffix) and isinstance(value, int):
      bound = name[len(prefix):len(name) - len(suffix)]
      if bound.isdigit() and value:
        found[int(bound)] = found.get(int(bound), 0) + value
  if not found:
    return []
  bounds, bound = set(found), min(found)
  while bound < max(found) and len(bounds) < 1000:
    bound = bucket(bound + 1)
    bounds.add(bound)
  return [{'le': b if scale == 1 else round(b * scale, 3), 'count': found.get(b, 0)}
          for b in sorted(bounds) if b <= max(found)]


def batches(counts: dict):
  """The model's batches: how many, their sizes (at most --max_batch_size)
  and latencies; from the job's `model_batch_*` distributions, and their
  histograms (power-of-two buckets: `le` the upper bound, instances or ms)
  from its bucket counters."""
  from tf_batch_predict.transforms.model.score import BATCH_LATENCY_BUCKET, BATCH_SIZE_BUCKET
  size = counts.get('model_batch_size')
  if not isinstance(size, dict):
    return None
  latencies = histogram(counts, BATCH_LATENCY_BUCKET, 'us', 1e-3)
  return {'count': size['count'], 'instances': size['sum'], 'size': _stats(size),
          'latency_ms': _stats(counts.get('model_batch_latency_micro_secs'), 1e-3, 3),
          'size_histogram': histogram(counts, BATCH_SIZE_BUCKET),
          'latency_ms_histogram': latencies,
          # Per model call, from the histogram: each the upper bound of the
          # bucket that holds the percentile (the latency is at most that).
          'latency_ms_percentiles': percentiles(latencies)}


PERCENTILES = (50, 95, 99)


def percentiles(buckets: list) -> dict:
  """{'p50': le, 'p95': le, 'p99': le} of a histogram ([{le, count}]): the
  upper bound of the bucket that holds the value of that rank (the
  ceil(p% of n)-th smallest); None where the histogram is empty."""
  total = sum(b['count'] for b in buckets)
  if not total:
    return None
  result = {}
  for p in PERCENTILES:
    rank = max(1, -(-total * p // 100))
    seen = 0
    for b in buckets:
      seen += b['count']
      if seen >= rank:
        result[f'p{p}'] = b['le']
        break
  return result


# Time counters of the job's steps, in microseconds summed over workers
# (each counted per chunk or per batch): decoding (transforms/read/decode.py),
# scoring (transforms/model/score.py: each element's whole call; the model
# calls alone are `model_batch_latency_micro_secs`), formatting the records
# (transforms/write/format.py) and writing them to files
# (transforms/write/shards.py). Reading the files' bytes happens in the
# readers, interleaved with decoding by the runner, and is not timed apart.
STAGE_COUNTERS = (('decode', 'time_decode_us'), ('score', 'time_score_us'),
                  ('format', 'time_format_us'), ('write', 'time_write_us'))


def stages(counts: dict):
  """{'seconds': {stage: s}, 'share': {stage: fraction of their sum},
  'model_calls_s': s}: time in the job's steps, summed over workers (so
  more than the wall time where workers run side by side); None where the
  runner reported none of them."""
  found = {name: counts.get(counter) for name, counter in STAGE_COUNTERS}
  if not any(isinstance(v, int) and v for v in found.values()):
    return None
  seconds = {name: round((v if isinstance(v, int) else 0) / 1e6, 6)
             for name, v in found.items()}
  total = sum(seconds.values())
  calls = counts.get('model_batch_latency_micro_secs')
  return {'seconds': seconds,
          'share': {name: round(v / total, 4) if total else 0.0
                    for name, v in seconds.items()},
          'model_calls_s': round(calls['sum'] / 1e6, 3) if isinstance(calls, dict) else None}


def run_inference(counts: dict):
  """Beam RunInference's own figures, per element it scores (a chunk of up
  to thousands of instances, itself scored in batches of --max_batch_size)."""
  size = counts.get('inference_request_batch_size')
  if not isinstance(size, dict):
    return None
  return {'elements': size['count'], 'instances': _stats(size),
          'latency_ms': _stats(counts.get('inference_batch_latency_micro_secs'), 1e-3, 3),
          'failed_elements': counts.get('failed_batches_counter', 0)}


def model_load_s(counts: dict):
  """Mean time of the workers' model loads (RunInference's
  load_model_latency_milli_secs), None where the runner reported none."""
  loads = counts.get('load_model_latency_milli_secs')
  if not isinstance(loads, dict) or not loads['count']:
    return None
  return round(loads['sum'] / loads['count'] / 1000, 3)


def inputs(config) -> list:
  """Per --input pattern, as given: the files it matched and their bytes
  (stored, compressed sizes). A file two patterns match is counted under the
  first, as it is read once; a file that could not be opened counts with 0
  bytes."""
  patterns = list(config.options.inputs)
  regexes = [compile_pattern(_absolute(p)) for p in patterns]
  # A pattern's bytes that are not UTF-8 as %XX, as in messages: summary.json is valid UTF-8.
  entries = [{'pattern': printable(p), 'files': 0, 'bytes': 0} for p in patterns]
  files = [(m.path, m.size_in_bytes) for group in config.files_by_format.values()
           for m in group] + [(path, 0) for path, _, _ in config.unreadable_files]
  for path, size in files:
    entry = next((e for e, r in zip(entries, regexes) if r.match(path)), entries[0])
    entry['files'] += 1
    entry['bytes'] += size or 0
  return entries


def _absolute(path: str) -> str:
  return os.path.abspath(path) if is_local(path) else path


# Beam options that shape how a remote run goes, reported where given.
_WORKER_OPTIONS = ('project', 'region', 'num_workers', 'max_num_workers', 'machine_type',
                   'autoscaling_algorithm', 'number_of_worker_harness_threads',
                   'disk_size_gb', 'sdk_container_image', 'environment_type',
                   'environment_config', 'job_endpoint', 'flink_master', 'parallelism',
                   'max_parallelism', 'sdk_worker_parallelism', 'experiments')


def settings(config) -> dict:
  """The options that shape the result, as the run used them."""
  o, signature = config.options, config.model.signature
  kinds = set(config.files_by_format) | {kind for _, kind, _ in config.unreadable_files}
  result = {
      'signature': signature.name, 'tags': list(config.model.tags),
      'key_field': o.key_field, 'passthrough_fields': list(o.passthrough_fields),
      'input_format': o.input_format, 'formats': sorted(kinds),
      'output_format': o.output_format,
      'output_fields': [s.name for s in signature.outputs],
      'parquet_column_types': dict(o.parquet_column_types),
      'min_batch_size': o.min_batch_size, 'max_batch_size': o.max_batch_size,
      'max_instance_bytes': o.max_instance_bytes,
      'max_error_fraction': o.max_error_fraction,
      'share_model_across_processes': o.share_model,
      'runner': o.runner,
  }
  try:
    given = PipelineOptions(list(o.beam_args)).get_all_options()
    defaults = PipelineOptions([]).get_all_options()
  except Exception:  # pylint: disable=broad-except  (checked before the run)
    return result
  if o.runner in LOCAL_RUNNERS:
    result['direct_running_mode'] = given.get('direct_running_mode')
    result['direct_num_workers'] = given.get('direct_num_workers')
  for name in _WORKER_OPTIONS:
    if given.get(name) not in (None, defaults.get(name)):
      result[name] = given[name]
  return result


def first_examples(counts: dict) -> dict:
  """Category -> one error message of it (each worker keeps the first it
  writes; of several workers', the smallest, so that it is deterministic)."""
  examples = {}
  for category in ERROR_CATEGORIES:
    messages = counts.get(f'error_example_{category}')
    if messages:
      examples[category] = sorted(messages)[0]
  return examples


def throughput(series) -> dict:
  """The local runner's throughput series (pipeline/progress.py
  Reporter.series) as the summary keeps it; None where there is none (a
  remote runner)."""
  from tf_batch_predict.pipeline.progress import SERIES_COLUMNS
  if not series:
    return None
  return {'columns': list(SERIES_COLUMNS), 'samples': series}


def build(config, counts: dict, runner: str, wall_time_s: float,
          started: float = None, ended: float = None, series=None) -> dict:
  """`wall_time_s`: the pipeline's own time; `started`: when the command
  started, `ended`: when the pipeline ended (time.time()); `series`: the
  throughput series of a local run (pipeline/progress.py)."""
  errors = {c: counts.get(f'errors_{c}', 0) for c in ERROR_CATEGORIES}
  read = counts.get('instances_read', 0)
  ended = time.time() if ended is None else ended
  started = ended - wall_time_s if started is None else started
  incomplete = sorted(counts.get('incomplete_files', ()))
  input_entries = inputs(config)
  return {
      'instances_read': read,
      'predictions': counts.get('predictions', 0),
      'errors': sum(errors.values()),
      'errors_by_category': errors,
      'errors_first_example': first_examples(counts),
      'blank_lines_skipped': counts.get('blank_lines', 0),
      # Distinct files (a large file is read in several ranges, each may fail).
      'files_incomplete': len(incomplete) if incomplete
                          else counts.get('files_incomplete', 0),
      'incomplete_files': incomplete[:100],
      # `path`: the SavedModel loaded; for a TF Serving base directory
      # (`base`), the folder of the version used (`00000123`: version 123).
      'model': {'path': config.model.path, 'version': config.model.version,
                'version_folder': config.model.version_folder,
                'base': (config.model.path[:-len(config.model.version_folder) - 1]
                         if config.model.version_folder else None),
                'signature': config.model.signature.name,
                'tags': list(config.model.tags),
                'fixed_batch': config.model.signature.fixed_batch,
                'per_instance': config.model.signature.per_instance,
                # 'session': a graph-mode Session, as TF Serving runs models;
                # 'eager': tf.saved_model.load, for a signature only it runs.
                'loader': config.model.loader,
                'op_libraries': list(config.model.signature.op_libraries),
                # The signature's inputs (shape without the batch dimension,
                # None where unknown), and for a signature of serialized
                # tf.Examples the features its parsing spec names (kind).
                'inputs': [{'name': t.name, 'dtype': t.dtype,
                            'shape': None if t.shape is None else list(t.shape)}
                           for t in config.model.signature.inputs],
                'takes_examples': config.model.signature.takes_examples,
                'example_features': (
                    {name: getattr(f, 'kind', None)
                     for name, f in sorted(config.model.signature.example_features.items())}
                    if config.model.signature.example_features else None)},
      'model_loads': counts.get('model_loads', 0),
      'model_load_s': model_load_s(counts),
      'batches': batches(counts),
      'run_inference': run_inference(counts),
      'stages': stages(counts),
      'input_files': (sum(len(f) for f in config.files_by_format.values())
                      + len(config.unreadable_files)),
      'input_bytes': sum(e['bytes'] for e in input_entries),
      'inputs': input_entries,
      'output': config.output,
      'runner': runner,
      'settings': settings(config),
      'started_at': utc(started),
      'ended_at': utc(ended),
      # From the command's start (model check, matching the inputs...) to
      # the pipeline's end; the pipeline's own time is wall_time_s.
      'total_wall_time_s': round(ended - started, 3),
      'pipeline_wall_time_s': round(wall_time_s, 3),
      'wall_time_s': round(wall_time_s, 3),
      'instances_per_s': round(read / wall_time_s, 1) if wall_time_s > 0 else None,
      # Seconds since the pipeline started, instances read, predictions,
      # errors: about once a second (local runners only; else None).
      'throughput': throughput(series),
      'exit_status': None,  # set by the command: pipeline/cli.py
      'exit_reason': None,
  }


def write(summary: dict, output_dir: str) -> str:
  path = f'{output_dir}/summary.json'
  with FileSystems.create(path, mime_type='application/json') as f:
    f.write(json.dumps(summary, indent=2).encode('utf-8') + b'\n')
  return path


def _short(text: str, width: int = 100) -> str:
  text = ' '.join(str(text).split())
  return text if len(text) <= width else text[:width - 3] + '...'


def how_model_ran(model: dict) -> list:
  """What was unusual about how the model was loaded and called, from
  summary.json's `model` (the table and report.html say it)."""
  how = []
  if model.get('loader') == 'eager':
    how.append('loaded with tf.saved_model.load (a graph session cannot run it)')
  if model.get('op_libraries'):
    how.append('ops from ' + ', '.join(model['op_libraries']))
  if model.get('per_instance'):
    how.append('called once per instance')
  return how


def table(summary: dict) -> str:
  model = summary['model']
  version = (f' (version {model["version"]}, folder {model.get("version_folder")})'
             if model['version'] is not None else '')
  rows = [
      ('instances read', summary['instances_read']),
      ('predictions', summary['predictions']),
      ('errors', '{} (parse {parse}, schema {schema}, model {model}, file {file})'.format(
          summary['errors'], **summary['errors_by_category'])),
  ]
  # One example message per category that has errors.
  for category, message in summary.get('errors_first_example', {}).items():
    rows.append((f'  e.g. {category}', _short(message)))
  rows.append(('blank lines skipped', summary['blank_lines_skipped']))
  incomplete = summary['files_incomplete']
  if incomplete and summary.get('incomplete_files'):
    more = f' and {incomplete - 1} more' if incomplete > 1 else ''
    incomplete = f'{incomplete} ({summary["incomplete_files"][0]}{more})'
  rows.append(('files incomplete', incomplete))
  if 'inputs' in summary:
    patterns = len(summary['inputs'])
    files = summary['input_files']
    rows.append(('input', f'{files} file{"s" if files != 1 else ""}, '
                          f'{size_text(summary["input_bytes"])} ({patterns} pattern'
                          f'{"s" if patterns != 1 else ""})'))
  rows.append(('model', f'{model["path"]}{version}, signature {model["signature"]}'
               + ''.join(f'; {h}' for h in how_model_ran(model))))
  loads = summary['model_loads']
  if summary.get('model_load_s') is not None:
    seconds = summary['model_load_s']
    loads = f'{loads} ({seconds:.{1 if seconds >= 1 else 2}f} s each on average)'
  rows.append(('model loads', loads))
  batches = summary.get('batches')
  if batches:
    latency = batches['latency_ms'] or {}
    rows.append(('model batches', f'{batches["count"]:,} of {batches["size"]["mean"]:g} '
                 f'instances on average (max {batches["size"]["max"]:g}), '
                 f'{latency.get("mean", 0):.1f} ms each on average '
                 f'(max {latency.get("max", 0):.1f} ms)'))
  runner = summary['runner']
  settings = summary.get('settings', {})
  if settings.get('direct_running_mode'):
    runner += (f' ({settings["direct_running_mode"]}, direct_num_workers='
               f'{settings.get("direct_num_workers")})')
  rows.append(('runner', runner))
  if 'total_wall_time_s' in summary:
    rows.append(('wall time', f'{summary["total_wall_time_s"]:.1f} s in all, the pipeline '
                 f'{summary["wall_time_s"]:.1f} s'))
    rows.append(('started, ended', f'{summary["started_at"]}, {summary["ended_at"]}'))
  else:
    rows.append(('wall time', f'{summary["wall_time_s"]:.1f} s'))
  resumed = summary.get('resumed')
  if resumed:
    rows.append(('resumed', f'{resumed["instances"]:,} instances in {resumed["units"]} of '
                 f'{resumed["of_units"]} work units kept from run {resumed["run_id"]}'))
  incremental = summary.get('incremental')
  if incremental:
    rows.append(('incremental', f'{incremental["files_kept"]} files unchanged '
                 f'({incremental["instances"]:,} instances kept), {incremental["files_added"]} '
                 f'added, {incremental["files_replaced"]} changed, '
                 f'{incremental["files_removed"]} removed'))
  rows += [
      ('throughput', f'{summary["instances_per_s"]} instances/s'
                     + (' (this run\'s instances)' if resumed or incremental else '')),
      ('output', summary['output']),
      ('exit status', f'{summary["exit_status"]} ({summary["exit_reason"]})'),
  ]
  width = max(len(name) for name, _ in rows)
  return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)
