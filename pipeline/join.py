"""batch-predict join: a run's predictions and errors put back next to the
instances they are for, as a Beam pipeline (transforms/rejoin/join.py says how
they are paired).

  batch-predict join --input=PATTERN --predictions=DIR --output=DIR2

What the run did (its key and passthrough fields, output format, output
names, input format, model) is read from DIR/summary.json; options given
here override it. DIR2 receives `joined-*.jsonl` (or `.parquet`): one row
per instance, `unmatched-*.jsonl`: what could not be paired, with the
reason, and `summary.json`, replacing a previous result only once complete
(as a run does).

Exit status: 0 every instance and output paired; 2 a configuration mistake;
1 the pipeline failed; 3 completed, but some instances or outputs could not
be paired (see unmatched-*.jsonl); 4 completed, but some input or output
files could not be read to their end.
"""
import argparse
import dataclasses
import logging
import sys
import time
from typing import Optional

_LOG = logging.getLogger(__name__)
EXIT_OK, EXIT_UNMATCHED, EXIT_INCOMPLETE = 0, 3, 4
SHARD_PATTERNS = ('joined-*-of-*.jsonl', 'joined-*-of-*.parquet', 'unmatched-*-of-*.jsonl')
PROG = 'batch-predict join'


@dataclasses.dataclass(frozen=True)
class JoinPlan:
  inputs: tuple  # absolute patterns
  predictions: str
  output: str
  files_by_format: dict
  formats: dict
  layout: object  # rejoin.JoinLayout
  prediction_files: tuple
  error_files: tuple
  output_format: str  # of the joined rows
  beam_args: tuple
  runner: str
  unreadable_files: tuple = ()


def _parser() -> argparse.ArgumentParser:
  from tf_batch_predict.pipeline.options import _Parser, _csv, _patterns
  parser = _Parser(prog=PROG, description=(
      'Rejoin a run\'s predictions and errors to its instances: one row per instance '
      'with its fields and the outputs (or the error). Other options are Beam\'s '
      '(--runner, ...).'))
  parser.add_argument('--input', dest='inputs', required=True, type=_patterns, metavar='PATTERN',
                      help="the run's --input, as given to it (comma-separated patterns)")
  parser.add_argument('--predictions', required=True, metavar='DIR',
                      help="the run's --output directory")
  parser.add_argument('--output', required=True, metavar='DIR',
                      help='where joined-*, unmatched-* and summary.json are written')
  parser.add_argument('--key_field', default=None,
                      help="the run's --key_field (default: from DIR/summary.json); "
                           "'' joins by file and position")
  parser.add_argument('--passthrough_fields', type=_csv, default=None,
                      help="the run's --passthrough_fields (default: from summary.json)")
  parser.add_argument('--format', dest='input_format', default=None,
                      help="the run's --format (default: from summary.json, else auto)")
  parser.add_argument('--output_format', choices=('jsonl', 'parquet'), default='jsonl',
                      help='format of the joined rows (default jsonl)')
  parser.add_argument('--model', default=None,
                      help='the SavedModel, needed for TF Serving request files (.json) '
                           'only (default: from summary.json)')
  parser.add_argument('--max_instance_bytes', type=int, default=None,
                      help="the run's --max_instance_bytes (default: from summary.json)")
  return parser


def _setting(summary: Optional[dict], name: str, default=None):
  settings = (summary or {}).get('settings') or {}
  value = settings.get(name)
  return default if value is None else value


def resolve(argv) -> JoinPlan:
  """The join's plan, or ConfigError with one line."""
  from tf_batch_predict.pipeline import config as job_config
  from tf_batch_predict.pipeline.outputs import check_outside_inputs
  from tf_batch_predict.pipeline.options import (DEFAULT_MAX_INSTANCE_BYTES, LOCAL_RUNNER, ConfigError,
                                beam_options, unknown_beam_args)
  from tf_batch_predict.transforms.rejoin import read_outputs
  from tf_batch_predict.transforms.write.format import common_base, output_names
  from tf_batch_predict.transforms.read.formats import FORMATS
  from tf_batch_predict.transforms.rejoin.join import JoinLayout

  known, rest = _parser().parse_known_args(list(argv))
  unknown = unknown_beam_args(rest)
  if unknown:
    raise ConfigError(f'unknown option {unknown[0]} (see {PROG} --help)')
  if not known.inputs:
    raise ConfigError('--input: give at least one file pattern')
  predictions = known.predictions.rstrip('/')
  output = known.output.rstrip('/')
  found = read_outputs.output_files(predictions)
  if not found['predictions'] and not found['errors']:
    raise ConfigError(f'--predictions: {predictions} holds no predictions-* or errors-* '
                      'files (give the run\'s --output directory)')
  kinds = {read_outputs.output_kind(p) for p in found['predictions']}
  if len(kinds) > 1:
    raise ConfigError(f'--predictions: {predictions} holds predictions in several formats '
                      f'({", ".join(sorted(kinds))}); one run writes one')
  summary = read_outputs.read_summary(predictions)
  if summary is None:
    raise ConfigError(f'--predictions: {predictions} has no summary.json, so it holds no '
                      'complete result (a run writes it last); run the job again')
  if _same_directory(output, predictions) or read_outputs.output_files(output)['predictions']:
    raise ConfigError(f'--output: {output} holds a run\'s result; give a directory of its '
                      'own')
  key_field = known.key_field if known.key_field is not None else _setting(summary, 'key_field')
  key_field = key_field or None
  passthrough = (known.passthrough_fields if known.passthrough_fields is not None
                 else tuple(_setting(summary, 'passthrough_fields', ())))
  prediction_format = kinds.pop() if kinds else _setting(summary, 'output_format', 'jsonl')
  input_format = known.input_format or _setting(summary, 'input_format', 'auto')
  if input_format != 'auto' and input_format not in FORMATS:
    raise ConfigError(f'--format: {input_format!r} is not one of auto, {", ".join(FORMATS)}')
  if known.max_instance_bytes is not None and known.max_instance_bytes < 1:
    raise ConfigError('--max_instance_bytes must be at least 1')
  max_bytes = known.max_instance_bytes or _setting(summary, 'max_instance_bytes',
                                                   DEFAULT_MAX_INSTANCE_BYTES)
  beam = beam_options(rest)
  runner = beam['runner'] or LOCAL_RUNNER
  if runner.lower() in ('directrunner', 'direct'):
    runner = LOCAL_RUNNER

  patterns = tuple(job_config._absolute(p) for p in known.inputs)
  check_outside_inputs(patterns, job_config._absolute(output), SHARD_PATTERNS)
  files = job_config.match_inputs(patterns)
  files_by_format = job_config.group_by_format(files, input_format)
  files_by_format, unreadable = job_config.set_aside_special_files(files_by_format)
  formats = _formats(files_by_format, known.model, summary, max_bytes)

  first = None
  if found['predictions']:
    try:
      first = next(read_outputs.iter_records(found['predictions'][0], limit=1), None)
    except (read_outputs.OutputReadError, OSError):
      pass  # the pipeline reports the file as unreadable
  if first is not None and not key_field and 'filename' not in first:
    raise ConfigError(f'--key_field: the predictions in {predictions} carry no file name '
                      "and position to join by; give the run's --key_field")
  if first is not None and key_field and key_field not in first:
    raise ConfigError(f'--key_field: the predictions in {predictions} have no field '
                      f'{key_field!r}; fields: {", ".join(list(first)[:10])}')
  if not key_field:
    _check_same_inputs(summary, files, unreadable)
  carried = [key_field] if key_field else ['filename', 'offset', 'index']
  carried += list(passthrough)
  renamed = ()
  outputs = _setting(summary, 'output_fields')
  if outputs:  # the run renamed outputs that a carried field is named like
    renamed = tuple((record, name) for name, record in output_names(outputs, carried).items()
                    if record != name)
  layout = JoinLayout(key_field=key_field, passthrough_fields=tuple(passthrough),
                      output_format=prediction_format, input_base=common_base(patterns),
                      renamed_outputs=renamed, carried_types=tuple(
                          _setting(summary, 'parquet_column_types', {}).items()))
  return JoinPlan(inputs=patterns, predictions=predictions,
                  output=job_config._absolute(output), files_by_format=files_by_format,
                  formats=formats, layout=layout,
                  prediction_files=tuple(found['predictions']),
                  error_files=tuple(found['errors']), output_format=known.output_format,
                  beam_args=tuple(rest), runner=runner, unreadable_files=tuple(unreadable))


def _same_directory(a: str, b: str) -> bool:
  from tf_batch_predict.transforms.file_patterns import is_local
  if is_local(a) and is_local(b):
    import os
    return os.path.realpath(a) == os.path.realpath(b)
  return a.rstrip('/') == b.rstrip('/')


def _check_same_inputs(summary: dict, files, unreadable) -> None:
  """A join by file and position pairs whatever sits at a position now:
  the files must be the run's. Their count and total size are compared
  with the run's summary (the names are relative to the patterns' common
  directory, so other files of the same names would pair silently)."""
  from tf_batch_predict.pipeline.options import ConfigError
  run_files, run_bytes = summary.get('input_files'), summary.get('input_bytes')
  if run_files is None or run_bytes is None:
    return  # a summary of an older version: nothing to compare
  count = len(files)
  size = sum(m.size_in_bytes or 0 for m in files
             if m.path not in {path for path, _, _ in unreadable})
  if (count, size) != (run_files, run_bytes):
    raise ConfigError(
        f'--input: it matches {count} file(s), {size} bytes; the run read {run_files} '
        f'file(s), {run_bytes} bytes. Joined by file and position, other or changed files '
        'would pair with the wrong predictions: give --input as the run had it')


def _formats(files_by_format: dict, model: Optional[str], summary: Optional[dict],
             max_bytes: int) -> dict:
  """The job's input formats, reading every field (Parquet: every column).
  TF Serving request files need the model's signature to be split into
  instances as the run split them."""
  from tf_batch_predict.pipeline.options import ConfigError
  from tf_batch_predict.transforms.read.input_csv import CsvFormat
  from tf_batch_predict.transforms.read.input_json import JsonRequestFormat
  from tf_batch_predict.transforms.read.input_jsonl import JsonLinesFormat
  from tf_batch_predict.transforms.read.input_parquet import ParquetFormat
  from tf_batch_predict.transforms.read.input_tfrecord import TFRecordFormat
  from tf_batch_predict.transforms.records import CSV, JSON, JSONL, PARQUET, TFRECORD
  formats = {JSONL: JsonLinesFormat(max_bytes), CSV: CsvFormat(max_bytes),
             TFRECORD: TFRecordFormat(max_bytes), PARQUET: ParquetFormat(None)}
  if JSON in files_by_format:
    from tf_batch_predict.transforms.model.savedmodel import ModelError, inspect_model
    path = model or ((summary or {}).get('model') or {}).get('path')
    if not path:
      raise ConfigError('--model: TF Serving request files (.json) are split into instances '
                        "by the model's signature; give the run's --model")
    try:
      ref = inspect_model(path, tuple(_setting(summary, 'tags', ('serve',))),
                          _setting(summary, 'signature', 'serving_default'), None)
    except ModelError as e:
      raise ConfigError(f'--model: {e}') from None
    formats[JSON] = JsonRequestFormat(ref.signature, max_bytes)
  return formats


# -- the pipeline ---------------------------------------------------------------------

def build(p, plan: JoinPlan, output_dir: str) -> None:
  """The join's graph (the module's docstring says what it writes)."""
  import apache_beam as beam

  from tf_batch_predict.transforms.rejoin import join as rejoin
  from tf_batch_predict.transforms.read import units
  from tf_batch_predict.transforms.read.formats import SPLITTABLE_FORMATS
  from tf_batch_predict.transforms.read.lines import DESIRED_RANGE_SIZE
  from tf_batch_predict.transforms.write.shards import WriteJsonlShards

  layout = plan.layout
  instances = (
      p
      | 'ReadInstances' >> units.ReadInstances(units.plan(
          plan.files_by_format, {kind: DESIRED_RANGE_SIZE for kind in SPLITTABLE_FORMATS},
          plan.unreadable_files), plan.formats)
      | 'InstanceRows' >> beam.ParDo(rejoin.InstanceRows(plan.formats, layout)).with_outputs(
          'file_faults', main='rows'))
  predictions = _read_outputs(p, 'Predictions', plan.prediction_files)
  errors = _read_outputs(p, 'Errors', plan.error_files)
  located_errors = (errors.records
                    | 'ErrorLocation' >> beam.Map(lambda r: (rejoin.error_location(r), r)))
  run_file_faults = (located_errors | 'RunFileFaults' >> beam.Filter(lambda e: e[0] is None)
                     | 'FileFaultEntry' >> beam.Map(_run_file_fault))
  located_errors = located_errors | 'InstanceErrors' >> beam.Filter(lambda e: e[0] is not None)
  prediction_key = rejoin.prediction_join_key(layout)
  keyed_predictions = predictions.records | 'PredictionKey' >> beam.Map(
      lambda r: (prediction_key(r), r))
  unmatched = [run_file_faults,
               instances.file_faults | 'FaultEntry' >> beam.MapTuple(_file_fault),
               predictions.unreadable | 'UnreadablePredictions' >> beam.MapTuple(_unreadable),
               errors.unreadable | 'UnreadableErrors' >> beam.MapTuple(_unreadable)]
  if layout.key_field:
    by_location = (
        {'instances': instances.rows, 'errors': located_errors}
        | 'GroupByLocation' >> beam.CoGroupByKey()
        | 'PairErrors' >> beam.ParDo(rejoin.PairByLocation(False, layout.key_field))
        .with_outputs(rejoin.UNMATCHED_TAG, 'unpaired', 'keyed_errors', main='joined'))
    error_key = rejoin.error_join_key(layout)
    by_key = (
        {'instances': by_location.unpaired | 'InstanceKey' >> beam.Map(lambda i: (i.key, i)),
         'predictions': keyed_predictions,
         'errors': by_location.keyed_errors | 'ErrorKey' >> beam.Map(
             lambda r: (error_key(r), r))}
        | 'GroupByKey' >> beam.CoGroupByKey()
        | 'PairPredictions' >> beam.ParDo(rejoin.PairByKey()).with_outputs(
            rejoin.UNMATCHED_TAG, main='joined'))
    joined = (by_location.joined, by_key.joined) | 'Joined' >> beam.Flatten()
    unmatched += [by_location[rejoin.UNMATCHED_TAG], by_key[rejoin.UNMATCHED_TAG]]
  else:
    paired = (
        {'instances': instances.rows, 'errors': located_errors,
         'predictions': keyed_predictions}
        | 'GroupByLocation' >> beam.CoGroupByKey()
        | 'Pair' >> beam.ParDo(rejoin.PairByLocation(with_predictions=True)).with_outputs(
            rejoin.UNMATCHED_TAG, main='joined'))
    joined = paired.joined
    unmatched.append(paired[rejoin.UNMATCHED_TAG])
  if plan.output_format == 'parquet':
    from tf_batch_predict.transforms.rejoin.joined_parquet import WriteJoinedParquet
    _ = joined | 'WriteJoined' >> WriteJoinedParquet(f'{output_dir}/joined', layout)
  else:
    _ = (joined
         | 'FormatJoined' >> beam.ParDo(rejoin.FormatJoinedJsonl(layout))
         | 'WriteJoined' >> WriteJsonlShards(f'{output_dir}/joined'))
  _ = (tuple(unmatched)
       | 'Unmatched' >> beam.Flatten()
       | 'FormatUnmatched' >> beam.Map(rejoin.unmatched_line)
       | 'WriteUnmatched' >> WriteJsonlShards(f'{output_dir}/unmatched'))


def _read_outputs(p, name: str, paths):
  import apache_beam as beam

  from tf_batch_predict.transforms.rejoin.join import ReadOutputRecords
  return (p
          | f'{name}Files' >> beam.Create(list(paths)).with_output_types(str)
          | f'Spread{name}' >> beam.Reshuffle()
          | f'Read{name}' >> beam.ParDo(ReadOutputRecords()).with_outputs(
              'unreadable', main='records'))


def _run_file_fault(element) -> dict:
  from tf_batch_predict.transforms.rejoin.join import RUN_FILE_FAULT
  _, record = element
  error = record.get('error') or {}
  return {'reason': RUN_FILE_FAULT, 'filename': record.get('filename'),
          'message': error.get('message', '') if isinstance(error, dict) else str(error)}


def _file_fault(filename, reason) -> dict:
  from tf_batch_predict.transforms.rejoin.join import FILE_FAULT
  return {'reason': FILE_FAULT, 'filename': filename, 'message': reason}


def _unreadable(path, reason) -> dict:
  from tf_batch_predict.transforms.rejoin.join import OUTPUT_UNREADABLE
  return {'reason': OUTPUT_UNREADABLE, 'path': path, 'message': reason}


# -- the command ----------------------------------------------------------------------

def _counts(result) -> dict:
  from apache_beam.metrics.metric import MetricsFilter

  from tf_batch_predict.transforms.rejoin.join import JOIN_NAMESPACE
  counts = {}
  for counter in result.metrics().query(
      MetricsFilter().with_namespace(JOIN_NAMESPACE))['counters']:
    name = counter.key.metric.name
    counts[name] = counts.get(name, 0) + (counter.committed or counter.attempted or 0)
  return counts


def summarize(plan: JoinPlan, counts: dict, wall_time_s: float) -> dict:
  from tf_batch_predict.transforms.rejoin import join as rejoin
  get = lambda name: int(counts.get(name, 0))  # noqa: E731
  summary = {
      'instances': get('instances'),
      'joined': get('joined'),
      'failed': get('failed'),
      'instances_without_output': get(rejoin.NO_OUTPUT),
      'outputs_without_instance': get(rejoin.NO_INSTANCE),
      'ambiguous': get(rejoin.SHARED_KEY),
      'instances_unreadable': get(rejoin.CHANGED),
      'input_file_faults': get('file_faults'),
      'output_files_unreadable': get('output_files_unreadable'),
      'joined_by': f'key field {plan.layout.key_field!r}' if plan.layout.key_field
                   else 'file and position',
      'inputs': list(plan.inputs),
      'predictions': plan.predictions,
      'prediction_files': len(plan.prediction_files),
      'error_files': len(plan.error_files),
      'output': plan.output,
      'output_format': plan.output_format,
      'runner': plan.runner,
      'wall_time_s': round(wall_time_s, 1),
  }
  if summary['input_file_faults'] or summary['output_files_unreadable']:
    status, reason = 4, ('some files could not be read to their end; see '
                         'unmatched-*.jsonl')
  elif (summary['instances_without_output'] or summary['outputs_without_instance']
        or summary['ambiguous'] or summary['instances_unreadable']):
    status, reason = 3, (
        f'{summary["instances_without_output"]} instance(s) without output, '
        f'{summary["outputs_without_instance"]} output(s) without instance, '
        f'{summary["ambiguous"]} ambiguous, {summary["instances_unreadable"]} predicted but '
        'unreadable now; see unmatched-*.jsonl')
  else:
    status, reason = 0, (f'every instance paired: {summary["joined"]} with predictions, '
                         f'{summary["failed"]} with errors')
  summary.update(exit_status=status, exit_reason=reason)
  return summary


def table(summary: dict) -> str:
  rows = [('instances', summary['instances']), ('joined with predictions', summary['joined']),
          ('joined with errors', summary['failed']),
          ('instances without output', summary['instances_without_output']),
          ('outputs without instance', summary['outputs_without_instance']),
          ('ambiguous', summary['ambiguous']),
          ('predicted, unreadable now', summary['instances_unreadable']),
          ('file faults (inputs)', summary['input_file_faults']),
          ('unreadable output files', summary['output_files_unreadable']),
          ('joined by', summary['joined_by']), ('output', summary['output']),
          ('wall time', f'{summary["wall_time_s"]} s')]
  width = max(len(name) for name, _ in rows)
  return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)


def run(plan: JoinPlan, run_id: str) -> dict:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.runners.runner import PipelineState

  from tf_batch_predict.pipeline import outputs
  from tf_batch_predict.pipeline.command import PipelineFailed, fails_as, last_line
  staging = outputs.Staging(plan.output, run_id, SHARD_PATTERNS)
  try:
    with fails_as(f'removing what killed runs left in {plan.output} failed'):
      staging.clear_leftovers()
    started = time.time()
    try:
      p = beam.Pipeline(options=PipelineOptions(
          list(plan.beam_args), runner=plan.runner,
          beam_plugins=['tf_batch_predict.pipeline.quiet', 'tf_batch_predict.transforms.storage',
                        'tf_batch_predict.transforms.state_sampler']))
      build(p, plan, staging.path)
      result = p.run()
      state = result.wait_until_finish()
    except Exception as e:  # pylint: disable=broad-except
      raise PipelineFailed(last_line(e)) from e
    if state not in (None, PipelineState.DONE):
      raise PipelineFailed(f'it ended in state {state}')
    summary = summarize(plan, _counts(result), time.time() - started)
    with fails_as('moving the outputs into place failed'):
      import json

      from apache_beam.io.filesystems import FileSystems
      with FileSystems.create(f'{staging.path}/{outputs.SUMMARY_NAME}') as f:
        f.write(json.dumps(summary, indent=2).encode() + b'\n')
      staging.promote()
  finally:
    staging.discard()
  return summary


def main(argv) -> int:
  if any(a in ('-h', '--help') for a in argv):
    _parser().print_help()
    return 0
  from tf_batch_predict.pipeline import outputs
  from tf_batch_predict.pipeline.command import (EXIT_CONFIG_ERROR, EXIT_PIPELINE_FAILED,
                                                PipelineFailed, error)
  from tf_batch_predict.pipeline.options import check_runner
  from tf_batch_predict.pipeline.options import ConfigError
  from tf_batch_predict.transforms import storage
  storage.use_anonymous_credentials_for_emulator()
  try:
    plan = resolve(argv)
    check_runner(plan.runner)
    outputs.prepare(plan.output)
    lock = outputs.OutputLock(plan.output, outputs.new_run_id(), plan.beam_args)
    lock.acquire()
  except (ConfigError, OSError) as e:
    error(e, PROG)
    return EXIT_CONFIG_ERROR
  try:
    summary = run(plan, lock.run_id)
  except PipelineFailed as e:
    error(f'the pipeline failed: {e}', PROG)
    return EXIT_PIPELINE_FAILED
  finally:
    lock.release()
  print(table(summary))
  if summary['exit_status']:
    print(f'{PROG}: {summary["exit_reason"]}', file=sys.stderr)
  return summary['exit_status']
