"""The output directory: one run at a time, and a complete result replaced
only by another complete result.

    OUTPUT/.lock                  held by the run in progress
    OUTPUT/.staging-RUN_ID/       that run's plan, committed work units, then shards
    OUTPUT/predictions-*, errors-*, summary.json   the last complete result

A run writes into its staging folder, which an `OUTPUT/*` glob does not see
(hidden locally; on gs:// `*` does not cross `/`). Only when the pipeline has
finished does `Staging.promote` replace the previous result: the old
summary.json is deleted first, then the old shards, the new shards are renamed
in, and summary.json comes last. summary.json therefore marks a complete
result: whenever it exists, the shards beside it are all of that run's and
nothing else. A run that stops before it commits leaves its staging folder
where it committed work units (for --resume, pipeline/resume.py); the next
run that does not resume it removes it (and beam-temp-* folders of older
versions), once it holds the lock.

Files go through Beam's FileSystems, so local paths and gs:// (any Beam file
system) work alike. The lock is created atomically, content and all: a hard link locally,
`if_generation_match=0` on Cloud Storage; elsewhere it is checked, then created.
"""
import calendar
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from tf_batch_predict.pipeline.options import ConfigError
from tf_batch_predict.transforms.file_patterns import is_local

_LOG = logging.getLogger(__name__)

LOCK_NAME = '.lock'
STAGING_PREFIX = '.staging-'
BEAM_TEMP_PREFIX = 'beam-temp-'
SUMMARY_NAME = 'summary.json'
# Where a run that ends with too many errors leaves its outputs when the
# directory holds a good previous result (Staging.set_aside).
FAILED_RUN_NAME = 'failed-run'
# The shards of a result; every format, so that a run replaces whatever the
# previous one wrote.
SHARD_PATTERNS = ('predictions-*-of-*.jsonl', 'predictions-*-of-*.parquet',
                  'predictions-*-of-*.tfrecord', 'errors-*-of-*.jsonl',
                  'report.html',  # pipeline/report.py: promoted with the shards
                  '.units.json')  # transforms/write/units.py: the result's work units
HEARTBEAT_S = 30.0  # the running job rewrites its lock this often
STALE_AFTER_S = 600.0  # a lock without a heartbeat for this long is a killed run's


def check_outside_inputs(patterns, output: str, shard_patterns=SHARD_PATTERNS,
                         flag: str = '--input', run_files: bool = True) -> None:
  """ConfigError where an input pattern (of `flag`) matches a file that a
  run writes into `output` (its shards of any format; with `run_files`, the
  summary, lock and staging folder): a re-run would read the previous
  result as instances. Names are checked, not files, so that the first run
  is refused too; inputs that share the folder but not those names
  (`d/*.csv` with `--output=d`) are fine."""
  from tf_batch_predict.transforms import file_patterns
  names = [p.replace('*', '00000', 1).replace('*', '00001') for p in shard_patterns]
  if run_files:
    names += [SUMMARY_NAME, LOCK_NAME]
    names += [f'{STAGING_PREFIX}{new_run_id()}/{n}' for n in names[:1] + [SUMMARY_NAME]]
    names.append(f'{STAGING_PREFIX}{new_run_id()}/{BEAM_TEMP_PREFIX}0/00000')
  # A literal output folder: its wildcard characters are part of its name.
  written = [f'{output.rstrip("/")}/{name}' for name in names]
  for pattern in patterns:
    try:
      regex = file_patterns.compile_pattern(pattern)
    except file_patterns.PatternError as e:  # a reversed range such as [z-a]
      raise ConfigError(f'{flag}: {e}') from None
    hit = next((path for path in written if regex.match(path)), None)
    if hit:
      raise ConfigError(
          f'{flag}: {pattern} matches {hit}, where this command writes its output (--output '
          f'{output}); a re-run would read that output as input: give an --output that '
          'the input patterns do not match')
  if is_local(output):  # the same folders through a link (--output=link-to-input-folder)
    real = [_real_pattern(p) for p in patterns if is_local(p)]
    real_output = os.path.realpath(output)
    if real_output != output.rstrip('/') or real != [p for p in patterns if is_local(p)]:
      check_outside_inputs(real, real_output, shard_patterns, flag, run_files)


def _real_pattern(pattern: str) -> str:
  """A local pattern with the links of its literal folder resolved."""
  from tf_batch_predict.transforms import file_patterns
  _, folder, end = file_patterns._literal(pattern)  # pylint: disable=protected-access
  if not folder:
    return pattern
  return file_patterns.escape(os.path.realpath(folder).rstrip('/') + '/') + pattern[end:]


def new_run_id() -> str:
  return f'{time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}-{uuid.uuid4().hex[:8]}'


def _reason(error: Exception) -> str:
  """One line from an OSError or BeamIOError."""
  if isinstance(error, BeamIOError) and error.exception_details:
    error = list(error.exception_details.values())[0]
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  lines = str(error).strip().splitlines()
  return lines[-1].split(': ', 1)[-1][:200] if lines else type(error).__name__


def check_output_name(output: str) -> None:
  """ConfigError for an output folder whose name holds `*`, `?` or `[`:
  Beam's file sinks and its delete match such a path as a pattern (they
  fail, or touch `out1/` for `out[1]/`), and Beam has no way to quote one."""
  from tf_batch_predict.transforms import file_patterns
  if file_patterns.has_wildcards(output):
    raise ConfigError(f'--output: {output} holds `*`, `?` or `[`, which Beam\'s file '
                      'writers read as a pattern; give a folder whose name has none of them')
  if not file_patterns.encodable(output):  # Beam's pipeline protos hold UTF-8 text only
    raise ConfigError(f'--output: {file_patterns.printable(output)} is not valid UTF-8, '
                      'which Beam cannot write to; give a folder whose name is')


def missing_folder(output: str) -> Optional[str]:
  """The topmost folder of a local `output` that does not exist yet (the
  one prepare() creates, with those under it), else None."""
  if not is_local(output):
    return None
  missing, folder = None, os.path.abspath(output)
  while not os.path.lexists(folder):
    missing, parent = folder, os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  return missing


def remove_if_empty(output: str, created: Optional[str]) -> None:
  """Removes the folders a run created for `output` (down from `created`,
  missing_folder's) where the run left nothing in them: a configuration
  mistake leaves no empty output folder behind."""
  if created is None:
    return
  folder = os.path.abspath(output)
  while True:
    try:
      os.rmdir(folder)  # only an empty one
    except OSError:
      return
    if folder == created:
      return
    folder = os.path.dirname(folder)


def prepare(output: str) -> str:
  """The output directory as an absolute path, created if local."""
  check_output_name(output)
  if not is_local(output):
    return output.rstrip('/')
  output = os.path.abspath(output)
  if os.path.exists(output) and not os.path.isdir(output):
    raise ConfigError(f'--output: {output} exists and is not a directory')
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'--output: cannot create {output}: {_reason(e)}') from None
  if not os.access(output, os.W_OK | os.X_OK):
    raise ConfigError(f'--output: cannot write to {output}: permission denied')
  return output


# The lock ---------------------------------------------------------------------

def _now() -> str:
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def _age_s(timestamp: str) -> float:
  return time.time() - calendar.timegm(time.strptime(timestamp, '%Y-%m-%dT%H:%M:%SZ'))


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, ValueError):
    return True
  return True


class _LocalLockFile:
  """Token: the content last read or written."""
  def __init__(self, path: str):
    self.path = path

  def create(self, data: bytes) -> Optional[bytes]:
    # Written aside, then linked into place (fails if the lock exists): a
    # run killed at any moment never leaves an empty lock, which others
    # would have to wait out as possibly being written.
    temporary = f'{self.path}.{uuid.uuid4().hex}'
    # Another run that created the folder and stopped on a mistake removes
    # it while empty (remove_if_empty): it is made again.
    for attempt in range(3):
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      try:
        with open(temporary, 'wb') as f:
          f.write(data)
        break
      except FileNotFoundError:
        if attempt == 2:
          raise
    try:
      os.link(temporary, self.path)
    except FileExistsError:
      return None
    except OSError:  # a file system without hard links
      return self._create_in_place(data)
    finally:
      os.remove(temporary)
    return data

  def _create_in_place(self, data: bytes) -> Optional[bytes]:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return None
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    return data

  def read(self):
    """(content, token, modified time) or None when there is no lock."""
    try:
      with open(self.path, 'rb') as f:
        data = f.read()
      return data, data, os.path.getmtime(self.path)
    except FileNotFoundError:
      return None

  def replace(self, data: bytes, token: bytes) -> Optional[bytes]:
    current = self.read()
    if current is None or current[1] != token:
      return None
    temporary = f'{self.path}.{uuid.uuid4().hex}'
    with open(temporary, 'wb') as f:
      f.write(data)
    os.replace(temporary, self.path)
    return data

  def delete(self, token: bytes) -> None:
    """Deletes the lock if it still holds `token`: moved aside first, so that
    a lock someone else created meanwhile is put back, not deleted."""
    aside = f'{self.path}.{uuid.uuid4().hex}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    with open(aside, 'rb') as f:
      moved = f.read()
    if moved != token:
      try:
        os.link(aside, self.path)
      except OSError:
        pass
    os.remove(aside)


class _GcsLockFile:
  """Token: the object's generation. Every change is conditional on it, so on
  Cloud Storage two runs never both create or replace the lock. (The storage
  emulator of the tests ignores these preconditions; the checks by content
  around them narrow the race there to a few milliseconds.)"""
  def __init__(self, path: str, beam_args):
    self._bucket_name, self._name = path[len('gs://'):].split('/', 1)
    self._beam_args = beam_args
    self._client_bucket = None

  @property
  def _bucket(self):
    if self._client_bucket is None:  # Beam's client: its credentials, or the emulator's
      from apache_beam.io.gcp import gcsio
      from apache_beam.options.pipeline_options import PipelineOptions
      client = gcsio.create_storage_client(PipelineOptions(list(self._beam_args)))
      self._client_bucket = client.bucket(self._bucket_name)
    return self._client_bucket

  def create(self, data: bytes):
    from google.api_core import exceptions
    blob = self._bucket.blob(self._name)
    if blob.exists():
      return None
    try:
      blob.upload_from_string(data, content_type='application/json', if_generation_match=0)
    except exceptions.PreconditionFailed:
      return None
    return blob.generation

  def read(self):
    from google.api_core import exceptions
    blob = self._bucket.get_blob(self._name)
    if blob is None:
      return None
    generation, updated = blob.generation, blob.updated
    try:
      data = blob.download_as_bytes(if_generation_match=generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      return self.read()  # replaced or deleted meanwhile
    return data, generation, updated.timestamp() if updated else time.time()

  def replace(self, data: bytes, token):
    from google.api_core import exceptions
    current = self.read()
    if current is None or current[1] != token:
      return None
    blob = self._bucket.blob(self._name)
    try:
      blob.upload_from_string(data, content_type='application/json',
                              if_generation_match=token)
    except exceptions.PreconditionFailed:
      return None
    return blob.generation

  def delete(self, token) -> None:
    from google.api_core import exceptions
    current = self.read()
    if current is None or current[1] != token:
      return
    try:
      self._bucket.blob(self._name).delete(if_generation_match=token)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      pass


class _OtherLockFile:
  """Any other Beam file system: checked, then created (not atomic)."""
  def __init__(self, path: str):
    self.path = path

  def _write(self, data: bytes) -> bytes:
    with FileSystems.create(self.path, mime_type='application/json') as f:
      f.write(data)
    return data

  def create(self, data: bytes):
    return None if FileSystems.exists(self.path) else self._write(data)

  def read(self):
    if not FileSystems.exists(self.path):
      return None
    with FileSystems.open(self.path) as f:
      data = f.read()
    return data, data, FileSystems.last_updated(self.path)

  def replace(self, data: bytes, token):
    current = self.read()
    return self._write(data) if current is not None and current[1] == token else None

  def delete(self, token) -> None:
    current = self.read()
    if current is not None and current[1] == token:
      FileSystems.delete([self.path])


class OutputInUse(ConfigError):
  """Another run holds the output directory."""


# A lock whose content cannot be read is a dead run's after this long.
UNREADABLE_LOCK_GRACE_S = 60


@dataclasses.dataclass
class OutputLock:
  """`OUTPUT/.lock`: JSON naming the run (run id, pid, host, start), with a
  heartbeat rewritten every `heartbeat_s` by a daemon thread while it runs.

  A lock is stale, and taken over, when its process is gone (same host), or
  when its heartbeat is older than `stale_after_s` (another host, or a reused
  pid). Use as a context manager, or acquire() ... release() in try/finally.
  """
  output: str
  run_id: str
  beam_args: tuple = ()
  heartbeat_s: float = HEARTBEAT_S
  stale_after_s: float = STALE_AFTER_S

  def __post_init__(self):
    self.path = f'{self.output}/{LOCK_NAME}'
    self.host = socket.gethostname()
    self.pid = os.getpid()
    self.started = _now()
    self._token = None
    self._stop = threading.Event()
    self._thread = None
    if is_local(self.path):
      self._file = _LocalLockFile(self.path)
    elif self.path.startswith('gs://'):
      self._file = _GcsLockFile(self.path, self.beam_args)
    else:
      self._file = _OtherLockFile(self.path)

  def _content(self) -> bytes:
    return json.dumps({'run_id': self.run_id, 'pid': self.pid, 'host': self.host,
                       'started': self.started, 'heartbeat': _now()}).encode() + b'\n'

  @property
  def held(self) -> bool:
    return self._token is not None

  def acquire(self) -> None:
    """Raises OutputInUse naming the running job, ConfigError when the
    lock cannot be written at all."""
    for _ in range(5):
      try:
        token = self._file.create(self._content())
        current = self._file.read() if token is None else None
      except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(f'--output: cannot use {self.output}: {_reason(e)}') from None
      if token is not None:
        self._token = token
        self._thread = threading.Thread(target=self._beat, name='output-lock-heartbeat',
                                        daemon=True)
        self._thread.start()
        return
      if current is None:
        continue  # released meanwhile
      data, token, modified = current
      holder = _parse(data)
      why = self._stale(holder, modified)
      if why is None:
        raise self._in_use(holder)
      _LOG.warning('Taking over the lock of an earlier run (%s): %s', _describe(holder), why)
      self._file.delete(token)
      time.sleep(0.05)
    raise OutputInUse(f'--output: {self.output} is in use: its lock {self.path} keeps '
                      'changing hands')

  def check_free(self) -> None:
    """Raises OutputInUse when a live run holds the lock; creates nothing.
    A cheap look before the launcher's slower checks (loading the model), so
    that a second run stops at once; acquire() still decides."""
    try:
      current = self._file.read()
    except Exception:  # pylint: disable=broad-except  (acquire() says what is wrong)
      return
    if current is not None:
      data, _, modified = current
      holder = _parse(data)
      if self._stale(holder, modified) is None:
        raise self._in_use(holder)

  def _in_use(self, holder: Optional[dict]) -> 'OutputInUse':
    return OutputInUse(f'--output: {self.output} is in use by another run '
                       f'({_describe(holder)}); wait for it to end, or delete '
                       f'{self.path} if that run is gone')

  def _stale(self, holder: Optional[dict], modified: float) -> Optional[str]:
    """Why the lock is a dead run's, or None if its run may be alive."""
    try:
      pid = int(holder['pid']) if holder is not None else None
    except (KeyError, TypeError, ValueError, OverflowError):
      holder = pid = None
    if holder is None:
      # Being written (a run writes its lock as soon as it creates it), or
      # damaged: judged by its age, with a short grace.
      age = time.time() - modified
      return (f'unreadable and {age:.0f} s old'
              if age > min(self.stale_after_s, UNREADABLE_LOCK_GRACE_S) else None)
    if holder.get('host') == self.host and not _pid_alive(pid):
      return f'process {pid} is gone'
    try:
      age = _age_s(holder['heartbeat'])
    except (KeyError, TypeError, ValueError):
      age = time.time() - modified
    if age > self.stale_after_s:
      return f'no heartbeat for {age:.0f} s'
    return None

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        token = self._file.replace(self._content(), self._token)
      except Exception as e:  # pylint: disable=broad-except
        _LOG.warning('Could not renew the lock %s: %s', self.path, _reason(e))
        continue
      if token is None:
        _LOG.warning('The lock %s was taken by another run; stopped renewing it', self.path)
        return
      self._token = token

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._token is not None:
      try:
        self._file.delete(self._token)
      except Exception as e:  # pylint: disable=broad-except
        _LOG.warning('Could not remove the lock %s: %s', self.path, _reason(e))
    self._token = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def _parse(data: bytes) -> Optional[dict]:
  try:
    holder = json.loads(data)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _describe(holder: Optional[dict]) -> str:
  if holder is None:
    return 'a run that is starting'
  return (f'pid {holder.get("pid")} on host {holder.get("host")}, '
          f'started {holder.get("started")}')


# Staging and promotion --------------------------------------------------------

def _match(folder: str, patterns) -> list:
  """The files in `folder` (a name, not a pattern: `out[1]` is no `out1`)
  that the patterns, relative to it, match."""
  from tf_batch_predict.transforms import file_patterns
  base = file_patterns.escape(folder)
  try:
    return sorted({m.path for p in patterns for m in file_patterns.match(f'{base}/{p}')})
  except file_patterns.PatternError as e:
    raise OSError(str(e)) from None


def _folders(output: str, prefixes) -> list:
  """Folders directly in `output` whose names start with one of `prefixes`.

  Locally Beam's match lists files only (it walks the tree) and `*` does not
  cross `/`, so a pattern like `OUTPUT/beam-temp-*` never matches a folder
  there: local folders are listed directly."""
  if is_local(output):
    with os.scandir(output) as entries:
      return sorted(e.path for e in entries
                    if e.is_dir(follow_symlinks=False) and e.name.startswith(tuple(prefixes)))
  files = _match(output, [f'{prefix}*/**' for prefix in prefixes])
  return sorted({f'{output}/{f[len(output) + 1:].split("/", 1)[0]}' for f in files})


def _remove_folder(path: str) -> None:
  if is_local(path):
    if os.path.isdir(path):
      FileSystems.delete([path])
    return
  files = _match(path, ['**'])
  if files:
    FileSystems.delete(files)


def staging_folders(output: str) -> list:
  """The staging folders in `output`, oldest run first (run ids start with
  their start time)."""
  return _folders(output, (STAGING_PREFIX,))


def good_result(output: str, any_status: bool = False) -> Optional[dict]:
  """The summary of the result in `output` where it is complete and
  within its error share (exit status 0; with `any_status`, any complete
  result), else None."""
  import json
  path = f'{output}/{SUMMARY_NAME}'
  try:
    if not FileSystems.exists(path):
      return None
    with FileSystems.open(path) as f:
      summary = json.loads(f.read())
  except (OSError, BeamIOError, ValueError):
    return None
  if not isinstance(summary, dict):
    return None
  return summary if any_status or summary.get('exit_status') == 0 else None


class Staging:
  """`OUTPUT/.staging-RUN_ID`: where a run's pipeline writes."""
  def __init__(self, output: str, run_id: str, shard_patterns=SHARD_PATTERNS):
    self.output = output
    self.path = f'{output}/{STAGING_PREFIX}{run_id}'
    self.shard_patterns = tuple(shard_patterns)  # what a result is made of, besides its summary

  def clear_leftovers(self) -> list:
    """Removes the staging and beam-temp-* folders of earlier, killed runs
    (call it while holding the lock); returns them."""
    leftovers = [f for f in _folders(self.output, (STAGING_PREFIX, BEAM_TEMP_PREFIX))
                 if f != self.path]
    for folder in leftovers:
      _remove_folder(folder)
    if is_local(self.output):  # a heartbeat's temporary file, if killed while renewing
      for name in os.listdir(self.output):
        if name.startswith(LOCK_NAME + '.'):
          leftovers.append(os.path.join(self.output, name))
          os.remove(leftovers[-1])
    if leftovers:
      _LOG.info('Removed %d folder(s) left by earlier runs: %s', len(leftovers),
                ', '.join(leftovers))
    return leftovers

  def promote(self) -> list:
    """Replaces the previous result with the staged one, whose summary.json
    must already be in the staging folder; returns the new shard paths."""
    staged_summary = f'{self.path}/{SUMMARY_NAME}'
    if not FileSystems.exists(staged_summary):
      raise FileNotFoundError(f'{staged_summary} was not written')
    shards = _match(self.path, self.shard_patterns)
    summary = f'{self.output}/{SUMMARY_NAME}'
    # From here until the last rename the directory holds no summary.json:
    # a reader sees that no complete result is there.
    if FileSystems.exists(summary):
      FileSystems.delete([summary])
    old = _match(self.output, self.shard_patterns)
    if old:
      FileSystems.delete(old)
    promoted = [f'{self.output}/{s.rsplit("/", 1)[-1]}' for s in shards]
    if shards:
      FileSystems.rename(shards, promoted)
    FileSystems.rename([staged_summary], [summary])
    self.discard()
    _remove_folder(f'{self.output}/{FAILED_RUN_NAME}')  # an older failure, now outdated
    return promoted

  def remove_shards(self) -> None:
    """Removes result files from the staging folder: those of a run stopped
    while it moved its units into shards (the units whose files moved count
    as not committed, and are scored again)."""
    files = _match(self.path, (*self.shard_patterns, SUMMARY_NAME))
    if files:
      FileSystems.delete(files)

  def holds_committed_units(self) -> bool:
    """Whether a run may be resumed from this folder: it holds a work unit's
    commit record."""
    from tf_batch_predict.transforms.write import units
    try:
      return bool(units.committed(f'{self.path}/{units.UNITS_FOLDER}'))
    except Exception:  # pylint: disable=broad-except
      return False

  def set_aside(self) -> str:
    """Moves the staged outputs (shards, summary.json, report.html) to
    OUTPUT/failed-run, replacing what an earlier failed run left there,
    and leaves the previous result as it is; returns the folder."""
    target = f'{self.output}/{FAILED_RUN_NAME}'
    _remove_folder(target)
    # The result's files, not the run's own (plan.json, the unit manifest).
    files = [f for f in _match(self.path, (*self.shard_patterns, SUMMARY_NAME))
             if not f.rsplit('/', 1)[-1].startswith('.')]
    if is_local(target):
      os.makedirs(target, exist_ok=True)
    if files:
      FileSystems.rename(files, [f'{target}/{f.rsplit("/", 1)[-1]}' for f in files])
    self.discard()
    return target

  def discard(self) -> None:
    try:
      _remove_folder(self.path)
    except (OSError, BeamIOError) as e:
      _LOG.warning('Could not remove %s (the next run will): %s', self.path, _reason(e))
