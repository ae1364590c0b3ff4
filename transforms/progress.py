"""The worker side of the progress output (pipeline/progress.py watches it).

The steps that count (Decode, Format) add to a per-process tally: instances
read, predictions, error records, stored input bytes read, stored input
bytes that could not be read, file faults. The input bytes are counted where
the instances are, in Decode, from what the readers record on each RawChunk
(`stored_bytes`, `skipped_bytes`): so the percent and the ETA follow the work
done, also when the runner reads ahead of decoding. In the launching process
(modes `in_memory` and `multi_threading`, Beam's LOOPBACK workers) the
launcher reads the tally in memory. A worker process (`multi_processing`)
finds the progress folder in the environment it inherits (ENV) and writes
its tally there, as `PID.json`, at most once a second and at the end of each
bundle; only into a folder that holds the marker file (OWNER) a Reporter
made it with. A process with neither (a remote worker) counts nothing: there
the figures are Beam metrics.
"""
import json
import os
import threading
import time

ENV = 'BATCH_PREDICT_PROGRESS_DIR'
OWNER = 'OWNER'  # the marker a Reporter writes into its folder (no .json: not a tally)

# What is counted (indexes into a tally).
READ, PREDICTED, ERRORS, BYTES, SKIPPED, FAULTS = range(6)
FIELDS = 6
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
      elif directory and os.path.isfile(os.path.join(directory, OWNER)):
        _mode, _path = _FILE, os.path.join(directory, f'{os.getpid()}.json')
      else:
        _mode = _OFF  # no folder, or one no Reporter made (an inherited variable)
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


def add_chunk(instances: int, stored_bytes: int, skipped_bytes: int = 0,
              faults: int = 0) -> None:
  """Counts a chunk of input as decoded: its instances, the stored bytes
  it accounts for, those that could not be read and the file faults."""
  mode = _mode or _decide()
  if mode == _OFF:
    return
  with _lock:
    _counts[READ] += instances
    _counts[BYTES] += stored_bytes
    _counts[SKIPPED] += skipped_bytes
    _counts[FAULTS] += faults
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
      with open(temporary, 'w') as f:  # never creates the folder: gone, it fails
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
