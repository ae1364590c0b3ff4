"""Command-line options: the job's own, then any Beam pipeline option.

Mistakes raise ConfigError with one line that says what to fix; the CLI
prints it without a stack trace.
"""
import argparse
import contextlib
import io
import logging
import dataclasses
import re
from typing import Optional

# Beam is imported where its options are read (parse_args), not here: a
# command that reads none (inspect) starts a second sooner.

_LOG = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 4096
DEFAULT_MIN_BATCH_SIZE = 32
DEFAULT_MAX_INSTANCE_BYTES = 4 << 20  # as transforms.lines.DEFAULT_MAX_INSTANCE_BYTES
MAX_INSTANCE_BYTES_LIMIT = 1 << 30
# The most errors per instance read with which a run still exits 0.
DEFAULT_MAX_ERROR_FRACTION = 0.1
# A run stops when a worker's first this many instances all fail alike:
# more than a burst of bad lines, little next to the inputs worth a batch job.
DEFAULT_EARLY_STOP_AFTER = 10_000
# Beam's DirectRunner first tries to download the Prism runner binary; the
# FnApiRunner is what it falls back to, so the local default goes straight
# there and never touches the network.
LOCAL_RUNNER = 'FnApiRunner'
# The runners that run the job in this process and its local workers.
LOCAL_RUNNERS = (LOCAL_RUNNER, 'DirectRunner', 'BundleBasedDirectRunner',
                 'SwitchingDirectRunner')


class ConfigError(ValueError):
  """A user mistake in the command line or what it points at."""


@dataclasses.dataclass(frozen=True)
class JobOptions:
  model: str
  inputs: tuple
  output: str
  signature: str
  tags: tuple
  key_field: object  # str or None
  passthrough_fields: tuple
  min_batch_size: int
  max_batch_size: int
  max_instance_bytes: int  # larger instances are error records, not read
  input_format: str  # 'auto' or one of transforms.read.FORMATS
  output_format: str
  output_fields: tuple  # signature outputs to keep; () keeps all
  share_model: bool  # one model copy per machine (Beam's MultiProcessShared)
  max_error_fraction: float  # more errors per instance read: exit status 3
  beam_args: tuple  # Beam pipeline options, as given
  runner: str  # overrides --runner in beam_args
  # The version of a TF Serving base directory to use (TF Serving's
  # `/versions/N`); None: the highest.
  model_version: Optional[int] = None
  # No load-and-call of the model before the pipeline starts.
  skip_model_check: bool = False
  # Before the run: decode and score a sample locally (pipeline/preflight.py),
  # stop if nothing of it can be scored.
  preflight: bool = False
  preflight_instances: int = 100  # the sample's size (preflight)
  # Seconds between progress log lines when stderr is not a terminal; 0: no
  # progress output (pipeline/progress.py).
  progress_interval: float = 30.0
  # A worker whose first N instances all fail with the same message stops
  # the run (exit status 3); 0: never (transforms/write/format.py `_watch`).
  early_stop_after: int = 0
  # Outputs of shape [1] per instance written as their one value.
  scalar_outputs: bool = False
  # (field, type) of carried fields written to typed Parquet columns, each
  # but string with a FIELD_text column for the values not of the type.
  parquet_column_types: tuple = ()
  # Continue the run that stopped in --output before it committed: keep the
  # work units it committed, score the rest (pipeline/resume.py).
  resume: bool = False
  # Score only the input files that are new or changed since the result in
  # --output was made; keep the records of the others (pipeline/resume.py).
  incremental: bool = False


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise ConfigError(message)


def _csv(text):
  return tuple(part.strip() for part in text.split(',') if part.strip())


def _column_types(items) -> tuple:
  """(field, type) of each FIELD:TYPE of --parquet_column_types."""
  from tf_batch_predict.transforms.convert import CARRIED_TYPES
  pairs = []
  for item in items:
    field, colon, column_type = item.rpartition(':')
    if not colon or not field:
      raise ConfigError(f'--parquet_column_types: {item!r} is not FIELD:TYPE')
    if column_type not in CARRIED_TYPES:
      raise ConfigError(f'--parquet_column_types: {column_type!r} ({field}) is not one of '
                        f'{", ".join(CARRIED_TYPES)}')
    if any(f == field for f, _ in pairs):
      raise ConfigError(f'--parquet_column_types: {field!r} is given twice')
    pairs.append((field, column_type))
  return tuple(pairs)


def _patterns(text):
  """--input: comma-separated patterns; a comma inside `[...]` belongs to
  its pattern (`[,]` matches a comma in a name)."""
  parts, start, i = [], 0, 0
  while i < len(text):
    if text[i] == '[':  # a set ends at the first `]` after a leading `!` and `]`
      j = i + 2 if text[i + 1:i + 2] == '!' else i + 1
      j = text.find(']', j + 1 if text[j:j + 1] == ']' else j)
      i = j if j >= 0 else i
    elif text[i] == ',':
      parts.append(text[start:i])
      start = i + 1
    i += 1
  parts.append(text[start:])
  return tuple(part.strip() for part in parts if part.strip())


_DESCRIPTION = """\
Score instances with a TensorFlow SavedModel on Apache Beam, locally or on any
Beam runner. Reads JSON Lines, TF Serving request files (.json), CSV, TFRecord
(tf.Example) and Parquet, the text formats and TFRecord also gzipped; writes
one prediction record per scored instance (JSONL, Parquet or TFRecord), one
error record per failed instance, and summary.json.

Other commands:
  batch-predict inspect --model=PATH     a model's signatures, inputs, outputs
                                         and an example instance line
  batch-predict preflight [run options]  score a sample of the input here and
                                         report what the run would do
  batch-predict join --input=PATTERN --predictions=DIR --output=DIR2
                                         each instance next to its prediction
                                         or error
  batch-predict evaluate --predictions=DIR --labels=PATTERN --label_field=NAME
      --prediction_field=NAME --output=DIR2
                                         metrics against labels, and a report"""

_EPILOG = """\
examples:
  batch-predict --model=models/churn --input='data/*.jsonl' --output=out --key_field=id
  batch-predict --model=models/churn --input='data/*.csv,more/*.parquet' --output=out \\
      --output_format=parquet --passthrough_fields=customer,day
  launch/dataflow.sh --project=P --temp_location=gs://B/tmp --model=gs://B/models/churn \\
      --input='gs://B/in/*.jsonl' --output=gs://B/out --key_field=id

Beam pipeline options (any option not listed above): --runner (default: the
local FnApiRunner, no network), --direct_running_mode, --direct_num_workers,
--project, --region, --temp_location, --max_num_workers, ... Beam documents them
at https://beam.apache.org/releases/pydoc/current/apache_beam.options.pipeline_options.html
(and in apache_beam/options/pipeline_options.py); the README's "Running it"
section and launch/*.sh --help show the ones each runner needs.

exit status: 0 done; 1 the pipeline failed (the previous result is kept);
2 a configuration mistake (nothing ran); 3 too many errors, or no instance;
4 some input files could not be read to their end."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """The description and examples as written; each option's default shown
  where it has one worth showing."""
  def _get_help_string(self, action):
    text = action.help or ''
    if ('%(default)' not in text and action.default not in (None, False, (), '')
        and action.default is not argparse.SUPPRESS and action.option_strings):
      default = action.default
      if isinstance(default, tuple):
        default = ','.join(default)
      text += f' (default: {default})'
    return text


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='batch-predict', allow_abbrev=False, description=_DESCRIPTION,
                   epilog=_EPILOG, formatter_class=_HelpFormatter)
  model = parser.add_argument_group('model')
  model.add_argument('--model', required=True, metavar='PATH',
                     help='SavedModel directory, or a TF Serving base directory of '
                          'numeric versions (the highest is used); local or gs://')
  model.add_argument('--model_version', default=None, metavar='N',
                     help='with a TF Serving base directory: the version to use, by '
                          'number (7 picks the folder 7, 07 or 00000007), as TF '
                          "Serving's /versions/N (default: the highest)")
  model.add_argument('--signature', default='serving_default', metavar='NAME',
                     help='signature to call; batch-predict inspect lists them')
  model.add_argument('--tag', dest='tags', default=('serve',), type=_csv, metavar='TAG[,TAG]',
                     help='tag set of the MetaGraph to load, comma-separated')
  model.add_argument('--share_model_across_processes', dest='share_model',
                     action='store_true',
                     help='load one model copy per machine, shared by its worker '
                          'processes (for models too big for one copy per process)')
  model.add_argument('--skip_model_check', action='store_true',
                     help='do not load the model and call it once on a sample batch '
                          'before the pipeline starts (for models too big to load on '
                          'the launching machine); a model that cannot run then fails '
                          'in the workers')

  inputs = parser.add_argument_group('input')
  inputs.add_argument('--input', dest='inputs', required=True, type=_patterns,
                      metavar='PATTERN[,PATTERN]',
                      help='file pattern(s) of instances, comma-separated; local or '
                           "gs://, e.g. 'data/*.jsonl,more/*.csv.gz'")
  inputs.add_argument('--format', dest='input_format', default='auto',
                      choices=('auto', 'jsonl', 'json', 'tfrecord', 'csv', 'parquet'),
                      help='input format; auto decides per file by extension '
                           '(.jsonl/.ndjson, .json, .tfrecord(s), .csv, .parquet; the '
                           'text formats and TFRecord also .gz)')
  inputs.add_argument('--key_field', default=None, metavar='FIELD',
                      help='instance field carried to the output to rejoin it (without '
                           'it, outputs carry the file name and position)')
  inputs.add_argument('--passthrough_fields', default=(), type=_csv, metavar='FIELD[,FIELD]',
                      help='more instance fields copied to the output exactly as read, '
                           'comma-separated')
  inputs.add_argument('--max_instance_bytes', type=int, default=DEFAULT_MAX_INSTANCE_BYTES,
                      metavar='BYTES',
                      help='larger instances (a line, a record; a request file over 64 '
                           'times this) become error records without being read')

  outputs = parser.add_argument_group('output')
  outputs.add_argument('--output', required=True, metavar='DIR',
                       help='directory for predictions, errors and summary.json; a '
                            "previous result there is replaced only once the new one "
                            'is complete')
  outputs.add_argument('--output_format', default='jsonl',
                       choices=('jsonl', 'parquet', 'tfrecord'),
                       help='format of the prediction files (errors are always JSONL)')
  outputs.add_argument('--output_fields', default=(), type=_csv, metavar='NAME[,NAME]',
                       help='signature outputs to write, comma-separated (default: all)')

  batching = parser.add_argument_group('batching')
  batching.add_argument('--max_batch_size', type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        metavar='N',
                        help='most instances per model call; the job chooses the size at '
                             'run time, doubling from 256 while the time per instance falls, '
                             'within 64 MiB of inputs per call')
  batching.add_argument('--min_batch_size', type=int, default=None, metavar='N',
                        help='smaller chunks (small files, range ends) are merged up to '
                             'this many instances before scoring (default '
                             f'{DEFAULT_MIN_BATCH_SIZE}, or --max_batch_size if smaller)')

  checks = parser.add_argument_group('checks, errors and output on the terminal')
  checks.add_argument('--max_error_fraction', type=float, metavar='F',
                      default=DEFAULT_MAX_ERROR_FRACTION,
                      help='most failed instances per instance read for exit status 0; '
                           'above it the outputs are still written, and the exit status '
                           'is 3')
  outputs.add_argument('--resume', action='store_true',
                       help='continue the run that stopped in --output before it committed '
                            '(killed, failed, interrupted): keep what it wrote, score the '
                            'rest; refused where an option or input file that decides the '
                            'result differs')
  outputs.add_argument('--incremental', action='store_true',
                       help='score only the input files that are new or changed (size, '
                            'modification time) since the result in --output was made; keep '
                            'the records of the others, drop those of files no longer there')
  outputs.add_argument('--scalar_outputs', action='store_true',
                      help='write an output of shape [1] per instance (a Keras Dense(1), '
                           '[batch, 1]) as its one value, 0.57, instead of a one-element '
                           'list, [0.57] (the form TF Serving returns)')
  outputs.add_argument('--parquet_column_types', default=(), type=_csv,
                       metavar='FIELD:TYPE[,FIELD:TYPE]',
                       help='Parquet column types of key and passthrough fields: int64, '
                            'float64, bool or string (the default). A value that is not '
                            'exactly of its type is null there, and its text is in the '
                            'column FIELD_text')
  checks.add_argument('--early_stop_after', type=int, default=DEFAULT_EARLY_STOP_AFTER,
                      metavar='N',
                      help='stop the run (exit status 3, nothing written) when the first N '
                           'instances a worker reads all fail with the same message: a '
                           'misspelt --key_field or input name, the wrong model. One '
                           'prediction or another message, and the worker never stops. 0: '
                           'never; so with --max_error_fraction=1')
  checks.add_argument('--preflight', action='store_true',
                      help='before the run, read a sample of the input, decode and '
                           'score it here, print what was found, and stop if none of it '
                           'can be scored')
  checks.add_argument('--preflight_instances', type=int, default=100, metavar='N',
                      help='instances sampled by the preflight check, spread over the '
                           'input files')
  checks.add_argument('--progress_interval', type=float, default=30.0, metavar='SECONDS',
                      help='seconds between progress lines on stderr when it is not a '
                           'terminal (a terminal gets one live line); 0: no progress '
                           'output')
  # Read (and removed) by pipeline/cli.py before these options are parsed:
  # listed here for --help.
  checks.add_argument('--log_level', choices=('debug', 'info', 'warning', 'error'),
                      default='info',
                      help="what the command prints on stderr: 'info' its notes, "
                           "warnings and errors; 'debug' also TensorFlow's start-up "
                           'lines and full tracebacks (as BATCH_PREDICT_DEBUG=1)')
  return parser


@contextlib.contextmanager
def _beam_parser_errors():
  """Beam's option parser prints its whole usage and exits on a bad value;
  here that is one line (ConfigError). Its warning about options it does not
  know is held back too: parse_args names the first one, in one line."""
  captured = io.StringIO()
  beam_logger = logging.getLogger('apache_beam.options.pipeline_options')
  level = beam_logger.level
  beam_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stderr(captured):
      yield
  except SystemExit:
    lines = [line for line in captured.getvalue().splitlines() if line.strip()]
    reason = lines[-1].split('error: ', 1)[-1] if lines else 'invalid Beam option'
    raise ConfigError(reason) from None
  finally:
    beam_logger.setLevel(level)


def unknown_beam_args(args) -> list:
  """Arguments that no Beam PipelineOptions class defines."""
  from apache_beam.options.pipeline_options import PipelineOptions
  parsers = []
  with _beam_parser_errors():
    PipelineOptions(list(args)).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(list(args))
  return [a for a in unknown if a.startswith('-')] or list(unknown)


def beam_options(args) -> dict:
  """Beam's own reading of its options."""
  from apache_beam.options.pipeline_options import PipelineOptions
  with _beam_parser_errors():
    return PipelineOptions(list(args)).get_all_options()


def parse_args(argv, require_output: bool = True) -> JobOptions:
  """`require_output=False` (preflight): --output may be left out ('')."""
  argv = list(argv)
  if not require_output and not any(a == '--output' or a.startswith('--output=')
                                    for a in argv):
    argv.append('--output=')
  known, rest = _parser().parse_known_args(argv)
  unknown = unknown_beam_args(rest)
  if unknown:
    raise ConfigError(f'unknown option {unknown[0]} (see batch-predict --help)')
  if known.min_batch_size is None:
    known.min_batch_size = min(DEFAULT_MIN_BATCH_SIZE, known.max_batch_size)
  if known.max_batch_size < 1 or known.min_batch_size < 1:
    raise ConfigError('--min_batch_size and --max_batch_size must be at least 1')
  if known.min_batch_size > known.max_batch_size:
    raise ConfigError(f'--min_batch_size ({known.min_batch_size}) is larger than '
                      f'--max_batch_size ({known.max_batch_size})')
  if not 0 <= known.max_error_fraction <= 1:
    raise ConfigError(f'--max_error_fraction: {known.max_error_fraction} is not '
                      'between 0 and 1')
  if known.max_instance_bytes < 1:
    raise ConfigError('--max_instance_bytes must be at least 1')
  if known.early_stop_after < 0:
    raise ConfigError('--early_stop_after must be 0 (never) or more')
  if known.preflight_instances < 1:
    raise ConfigError('--preflight_instances must be at least 1')
  if not known.progress_interval >= 0:
    raise ConfigError('--progress_interval must be 0 (no progress output) or more seconds')
  if not known.inputs:
    raise ConfigError('--input: give at least one file pattern')
  if not known.tags:
    raise ConfigError('--tag: give at least one tag')
  beam = beam_options(rest)
  if (beam.get('direct_num_workers') or 0) < 0:
    raise ConfigError('--direct_num_workers must be 0 (one per core) or more')
  dry_run = beam.get('dry_run')
  if dry_run not in (None, False) and str(dry_run).lower() != 'true':
    # Beam keeps the text: --dry_run=False would be a dry run, as any value.
    raise ConfigError(f'--dry_run: Beam treats any value as true, {dry_run!r} too; '
                      'give --dry_run=True for a dry run, or leave it out')
  for name, fields in (('--passthrough_fields', known.passthrough_fields),
                       ('--output_fields', known.output_fields), ('--input', known.inputs)):
    repeated = sorted({f for f in fields if fields.count(f) > 1})
    if repeated:
      raise ConfigError(f'{name}: {repeated[0]!r} is given twice')
  if known.max_instance_bytes > MAX_INSTANCE_BYTES_LIMIT:
    raise ConfigError(f'--max_instance_bytes: at most {MAX_INSTANCE_BYTES_LIMIT} '
                      f'({MAX_INSTANCE_BYTES_LIMIT >> 30} GiB)')
  column_types = _column_types(known.parquet_column_types)
  model_version = known.model_version
  if model_version is not None:
    if not re.fullmatch(r'[0-9]+', model_version.strip()):
      raise ConfigError(f'--model_version: {model_version!r} is not a version number')
    model_version = int(model_version)
  runner = beam['runner'] or LOCAL_RUNNER
  if runner.lower() in ('directrunner', 'direct'):
    runner = LOCAL_RUNNER
  return JobOptions(
      model=known.model, inputs=known.inputs, output=known.output.rstrip('/'),
      signature=known.signature, tags=known.tags, key_field=known.key_field,
      passthrough_fields=known.passthrough_fields,
      min_batch_size=known.min_batch_size, max_batch_size=known.max_batch_size,
      max_instance_bytes=known.max_instance_bytes,
      input_format=known.input_format, output_format=known.output_format,
      output_fields=known.output_fields, share_model=known.share_model,
      max_error_fraction=known.max_error_fraction,
      beam_args=tuple(rest), runner=runner, model_version=model_version,
      skip_model_check=known.skip_model_check, preflight=known.preflight,
      preflight_instances=known.preflight_instances,
      progress_interval=known.progress_interval,
      early_stop_after=0 if known.max_error_fraction >= 1 else known.early_stop_after,
      scalar_outputs=known.scalar_outputs,
      parquet_column_types=column_types, resume=known.resume,
      incremental=known.incremental)


def check_runner(runner: str) -> None:
  from apache_beam.options.pipeline_options import StandardOptions
  from apache_beam.runners.runner import create_runner
  try:
    create_runner(runner)
  except (ValueError, ImportError, AttributeError):
    raise ConfigError(f'--runner: unknown runner {runner!r}; known runners: '
                      f'{", ".join(StandardOptions.KNOWN_RUNNER_NAMES)}') from None


# The runners that start Beam's job server from a jar, and its option.
_JOB_SERVER_JARS = {'FlinkRunner': 'flink_job_server_jar', 'SparkRunner': 'spark_job_server_jar'}


def fetch_job_server_jar(options: JobOptions) -> None:
  """FlinkRunner and SparkRunner start Beam's job server from a jar: the
  one given, or Beam's own of this Beam version, which Beam downloads (into
  its cache) as the pipeline starts. Fetched here instead, by Beam's own
  code and before the model is loaded, so that a jar that cannot be had is
  one line and exit status 2 rather than a failed pipeline. Nothing to do
  with --job_endpoint (a job server already running)."""
  flag = _JOB_SERVER_JARS.get(options.runner)
  if flag is None:
    return
  from apache_beam.options.pipeline_options import (FlinkRunnerOptions, PipelineOptions,
                                                    PortableOptions, SparkRunnerOptions)
  from apache_beam.runners.portability.job_server import JavaJarJobServer
  beam = PipelineOptions(list(options.beam_args))
  if beam.view_as(PortableOptions).job_endpoint:
    return
  # Beam warns, in six lines per URL tried, that it downloads at run time:
  # one line of ours says it instead, or the error does.
  beam_log = logging.getLogger('apache_beam.utils.subprocess_server')
  level = beam_log.level
  beam_log.setLevel(logging.ERROR)
  try:
    if options.runner == 'FlinkRunner':
      from apache_beam.runners.portability.flink_runner import FlinkJarJobServer
      jar = FlinkJarJobServer(beam).path_to_jar()
    else:
      from apache_beam.runners.portability.spark_runner import SparkJarJobServer
      jar = SparkJarJobServer(beam).path_to_jar()
    local = JavaJarJobServer.local_jar(jar)
    if local != jar:
      _LOG.info('Job server jar %s, from %s', local, jar)
  except (RuntimeError, ValueError, OSError) as e:
    given = (beam.view_as(FlinkRunnerOptions).flink_job_server_jar
             if options.runner == 'FlinkRunner'
             else beam.view_as(SparkRunnerOptions).spark_job_server_jar)
    reason = ' '.join(str(e).split()).split('. ')[0].rstrip('.')
    where = (f'--{flag}={given}' if given else
             f"Beam's {options.runner[:-len('Runner')]} job server jar for Beam's version")
    raise ConfigError(
        f'--runner={options.runner}: cannot get {where} ({reason}); give --{flag}= a local '
        'jar (`make engines` and the launch/ scripts fetch one with Maven) or --job_endpoint= '
        'a running job server') from None
  finally:
    beam_log.setLevel(level)
