"""What every batch-predict command shares: exit statuses, the one-line
error, logging set-up."""
import contextlib
import gc
import logging
import os
import re
import sys
import traceback

EXIT_OK = 0
EXIT_PIPELINE_FAILED = 1
EXIT_CONFIG_ERROR = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_INPUT_INCOMPLETE = 4
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it
EXIT_TERMINATED = 143  # SIGTERM, as shells report it


class PipelineFailed(Exception):
  """The pipeline, or the promotion of its outputs, raised."""


# Beam's own warnings that say nothing to a user of this job, as logged in
# this process or forwarded from a worker process ("Worker: ... message: ...").
_BEAM_NOISE = (
    # Beam's inference module imports `resource` and `torch` in one try block,
    # so without torch it warns at every model load that `resource` is missing.
    'Resource module is not available',
    # Each worker process of the local multi_processing mode: there is no
    # staged main session to load, and this job needs none.
    'No semi_persistent_directory found',
    # The runner's side of a worker's data connection that broke (the worker
    # died, or the run is failing): the run's own line says why.
    'Failed to read inputs in the data plane',
    # Beam's Flink and Spark runners start and stop their Java job server:
    # the whole command line, twice, at warning level, in every run.
    'Really starting service at', 'Really destroying service at',
)
_FORWARDED = re.compile(r'^Worker: .*? message: "(?P<message>(?:[^"\\]|\\.)*)"')

_BEAM_TRACEBACK = re.compile(r'Traceback \(most recent call last\):.* log_location: "[^"]*'
                             r'/apache_beam/')

LOG_LEVELS = {'debug': logging.DEBUG, 'info': logging.INFO, 'warning': logging.WARNING,
              'error': logging.ERROR}
_level = logging.INFO  # --log_level, set by main


def _drop_beam_noise(record) -> bool:
  if debug() or record.name.startswith('tf_batch_predict.'):
    return True  # (Beam logs some of these on the root logger)
  message = record.getMessage()
  forwarded = _FORWARDED.match(message)
  if forwarded:
    if _BEAM_TRACEBACK.search(message):
      return False  # Beam's log of an exception, in a worker: see _quiet_beam_tracebacks
    message = forwarded.group('message')
  return not message.startswith(_BEAM_NOISE)


def _at_level(record) -> bool:
  """--log_level=error also hides warnings of Beam and other libraries."""
  return record.levelno >= _level or _level == logging.DEBUG


def debug() -> bool:
  """Full tracebacks, TensorFlow's native logs: BATCH_PREDICT_DEBUG=1,
  --log_level=debug, or logging at debug level."""
  return (os.environ.get('BATCH_PREDICT_DEBUG', '') not in ('', '0')
          or _level == logging.DEBUG
          or logging.getLogger().isEnabledFor(logging.DEBUG))


def _quiet_beam_tracebacks(record) -> bool:
  """A failing step's exception is reported once, in one line (main);
  Beam's own log of it, and other Beam tracebacks, only with debugging on."""
  if debug() or not record.name.startswith('apache_beam'):
    return True
  if record.name == 'apache_beam.runners.common' and record.exc_info:
    return False  # the exception that fails the pipeline, re-raised to us
  record.exc_info, record.exc_text = None, None
  return True


def take_option(argv: list, flag: str, takes_value: bool = True) -> tuple:
  """(value, argv without the option): `FLAG=V` or `FLAG V` anywhere before
  `--`, the last one counting; None where it is not given. A flag without a
  value (`takes_value=False`) gives True."""
  rest, value = [], None
  arguments = iter(argv)
  for argument in arguments:
    if argument == '--':
      rest.append(argument)
      rest.extend(arguments)
      break
    if argument == flag:
      value = next(arguments, '') if takes_value else True
    elif takes_value and argument.startswith(flag + '='):
      value = argument.split('=', 1)[1]
    else:
      rest.append(argument)
  return value, rest


def take_log_level(argv: list) -> tuple:
  """(level, argv without --log_level). Raises ConfigError."""
  from tf_batch_predict.pipeline.options import ConfigError
  name, rest = take_option(argv, '--log_level')
  if name is None:
    return logging.INFO, rest
  if name.lower() not in LOG_LEVELS:
    raise ConfigError(f'--log_level: {name!r} is not one of {", ".join(LOG_LEVELS)}')
  return LOG_LEVELS[name.lower()], rest


def configure_logging(level: int = logging.INFO):
  """Our loggers at `level`, other libraries' at warning; without debugging,
  TensorFlow's native start-up lines filtered in this process and in the
  worker processes it starts (pipeline/quiet.py)."""
  global _level
  _level = level
  from tf_batch_predict.pipeline import quiet
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  for handler in logging.getLogger().handlers:
    handler.addFilter(_drop_beam_noise)
    handler.addFilter(_quiet_beam_tracebacks)
    handler.addFilter(_at_level)
  logging.getLogger('tf_batch_predict').setLevel(level)
  if debug():
    os.environ[quiet.ENV] = '0'
    quiet.uninstall()
  else:
    # TensorFlow's C++ INFO logs (after its start) are not for batch-job users.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    os.environ[quiet.ENV] = '1'
    quiet.install()


# Java exceptions as Flink's and Spark's job servers report them, wrapped
# ("...grpc.StatusRuntimeException: ...grpc.StatusRuntimeException: CANCELLED"):
# each class once, without its package.
_JAVA_FRAME = re.compile(r'.*\((?:[\w$]+\.(?:java|scala|kt):\d+|Native Method|Unknown Source)\)\s*$')
_JAVA_EXCEPTION = re.compile(r'(?:[a-z_][\w$]*\.)+(?P<name>[A-Z][\w$]*(?:Exception|Error)): ')


def last_line(error: BaseException) -> str:
  lines = ''.join(traceback.format_exception_only(type(error), error)).strip().splitlines()
  line = lines[-1].strip() if lines else type(error).__name__
  if any(_JAVA_FRAME.match(l) for l in lines):  # a Java stack trace: its first line says why
    line = lines[0].strip()
  line = _JAVA_EXCEPTION.sub(lambda m: m['name'] + ': ', line)
  return re.sub(r'(\b\w+(?:Exception|Error): )\1+', r'\1', line)


@contextlib.contextmanager
def fails_as(what: str, hint: str = ''):
  """Turns an exception of a step around the pipeline into PipelineFailed."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    raise PipelineFailed(f'{what} ({last_line(e)}){hint}') from e


def error(message, prog: str = 'batch-predict') -> None:
  """The one line a failing command prints."""
  print(f'{prog}: error: {message}', file=sys.stderr)


# Whether hold_collector turned Python's garbage collector off.
_collector_held = False


def hold_collector() -> None:
  """Turns the garbage collector off for a command's imports: it scans
  every object it tracks each time older ones pile up, and TensorFlow's
  and Beam's imports make hundreds of thousands (about 1.2 s of the 5 s
  they take here). Then freeze_imports, and collect_young_objects once the
  model is loaded. Only for a whole process: a caller of the job's
  functions keeps its collector, and nothing of its memory is frozen."""
  global _collector_held
  _collector_held = True
  gc.disable()


def freeze_imports() -> None:
  """Freezes what the imports made (gc.freeze: never scanned again), where
  hold_collector holds the collector; the model check comes after, so that
  what it drops can still be collected."""
  if _collector_held:
    gc.freeze()


def collect_young_objects() -> None:
  """Once the model is loaded: collects the garbage made since
  freeze_imports (the model check's graph where the check keeps no model:
  a cycle, with a frozen graph's weights in it), freezes the rest and turns
  the collector on again. The pipeline's collections then scan only the
  objects made later: a full scan of TensorFlow's takes about 0.25 s, a
  tenth of a short run. Where hold_collector did not hold it, nothing."""
  global _collector_held
  if _collector_held:
    gc.collect()  # only what is younger than the imports: about 0.02 s
    gc.freeze()
    gc.enable()
    _collector_held = False
