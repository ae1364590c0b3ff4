"""The worker side of the progress output (pipeline/progress.py watches it).

The steps that count (the readers, Decode, Format) add to a per-process
tally: instances read, predictions, error records, input bytes consumed. In
the launching process (modes `in_memory` and `multi_threading`, Beam's
LOOPBACK workers) the launcher reads the tally in memory. A worker process
(`multi_processing`) finds the progress folder in the environment it
inherits (ENV) and writes its tally there, as `PID.json`, at most once a
second and at the end of each bundle. A process with neither (a remote
worker) counts nothing: there the figures are Beam metrics.
"""
import json
import os
import threading
import time

ENV = 'BATCH_PREDICT_PROGRESS_DIR'

# What is counted (indexes into a tally).
READ, PREDICTED, ERRORS, BYTES = range(4)
FIELDS = 4
FLUSH_EVERY_S = 1.0  # most often a worker process writes its tally
_OFF, _MEMORY, _FILE = 'off', 'memory', 'file'
_lock = threading.Lock()
_counts = [0] * FIELDS
_mode = None  # None: not decided yet in this process (see _decide)
_path = None  # _FILE: where this process writes its tally
_last_write = 0.0
_reporting_here = False  # a Reporter of this process is watching (in memory)


def _decide() -> str:
  global _mode, _path
  with _lock:
    if _mode is None:
      directory = os.environ.get(ENV)
      if _reporting_here:
        _mode = _MEMORY
      elif directory and os.path.isdir(directory):
        _mode, _path = _FILE, os.path.join(directory, f'{os.getpid()}.json')
      else:
        _mode = _OFF
    return _mode


def add(field: int, n: int) -> None:
  """Adds n to one figure of this process's tally (no-op where nobody
  watches)."""
  mode = _mode or _decide()
  if mode == _OFF or not n:
    return
  with _lock:
    _counts[field] += n
  if mode == _FILE and time.monotonic() - _last_write >= FLUSH_EVERY_S:
    flush()


def flush() -> None:
  """Writes this process's tally where the launcher reads it (a worker
  process; elsewhere nothing to do)."""
  global _mode, _last_write
  if _mode != _FILE:
    return
  try:
    with _lock:
      _last_write = time.monotonic()
      text = json.dumps(_counts)
      temporary = f'{_path}.{threading.get_ident()}.tmp'
      with open(temporary, 'w') as f:
        f.write(text)
      os.replace(temporary, _path)  # a reader sees the old tally or the new one
  except Exception:  # pylint: disable=broad-except
    _mode = _OFF  # the folder is gone (the run ended): stop counting


def begin_watching() -> None:
  """In the launching process: count in memory from now (a new run)."""
  global _mode, _reporting_here
  with _lock:
    _counts[:] = [0] * FIELDS
    _reporting_here, _mode = True, _MEMORY


def end_watching() -> None:
  global _mode, _reporting_here
  with _lock:
    _counts[:] = [0] * FIELDS
    _reporting_here, _mode = False, None


def memory_tally() -> list:
  with _lock:
    return list(_counts)
