"""Progress of a running job, watched from the launching process.

Beam's local runner (the FnApiRunner, in every running mode) blocks in
`p.run()` and reports metrics only once the pipeline has ended, so the
figures a user watches travel on a channel of their own:

- Worker side (transforms/progress.py `add`, `add_chunk`, `flush`): the
  steps that count (Decode, Format) add to a per-process tally: instances
  read, predictions, error records, stored input bytes read (recorded by
  the readers on each chunk, counted when it is decoded), input bytes that
  could not be read, file faults. In the launching process (modes
  `in_memory` and `multi_threading`, Beam's LOOPBACK workers) the tally is
  read in memory. A worker process (`multi_processing`) finds the progress
  folder in the environment it inherits (ENV) and writes its tally there,
  as `PID.json`, at most once a second and at the end of each bundle. A
  process with neither (a remote worker) counts nothing: on remote runners
  the same figures are Beam metrics of the namespace `batch_predict`
  (`instances_read`, `predictions`, `errors_parse`, ..., see docs/outputs.md).
- Launcher side (`Reporter`): a thread sums the tallies every second and
  shows them: on a terminal one line rewritten in place, cleared at the end;
  otherwise an INFO line of the `pipeline.progress` logger every
  --progress_interval seconds, and after such lines one when the pipeline
  ends (a run shorter than the interval prints none). It also keeps a
  compact time series of the figures (about one sample a second, at most
  SERIES_MAX samples: a long run's is thinned to every 2nd, 4th... second),
  also with the progress output off, for the run's report.html
  (pipeline/report.py); remote runners have none.

The progress folder is `batch-predict-progress-PID-XXXXXXXX` in the
temporary directory, with a marker (OWNER: the launcher's pid, host and
process start time); workers write only into a folder that has it, and the
launcher drops an inherited ENV, so a variable in the environment never
sends a run's tallies elsewhere. The launcher removes its folder at the end
of the run, also when it is interrupted (Ctrl-C) or sent SIGTERM; a folder
left by a launcher that was killed (SIGKILL) is removed by the next
Reporter that starts on the same host, once its owner is gone.

The ETA is based on input bytes: the files' stored (compressed) sizes are
known before the run, and the readers record how far into each file the
chunks they emit reach; the rate is the average since the first chunk was
decoded. The percent is of the input bytes read; bytes that could not be
read (the rest of a file after a fault) count towards the ETA, not the
percent, and the line then says how many files could not be read
completely. Counting costs a few dictionary operations per chunk of up to
thousands of instances. Nothing here may fail or stall a run: every fault of
the progress channel turns it off quietly.
"""
import glob
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from tf_batch_predict.transforms.progress import (BYTES, ENV, ERRORS, FAULTS, FIELDS as _FIELDS,  # noqa: F401
                                 OWNER, PREDICTED, READ, SKIPPED, add, add_chunk,
                                 begin_watching, end_watching, flush, memory_tally)

FOLDER_PREFIX = 'batch-predict-progress-'
OWNERLESS_GRACE_S = 60.0  # a folder without its marker yet may be being made
LEGACY_AGE_S = 600.0  # folders named without a pid (earlier versions)

TICK_S = 1.0  # how often the launcher samples (and a terminal line is redrawn)
ETA_AFTER_S = 2.0  # seconds of reading before an ETA is shown
SERIES_MAX = 240  # most samples kept of the throughput series (Reporter.series)
# A short run's series would hold only a point or two: its first seconds are
# sampled more often.
SERIES_EARLY_S, SERIES_EARLY_TICK_S = 5.0, 0.2
SERIES_COLUMNS = ('elapsed_s', 'instances_read', 'predictions', 'errors')

_LOG = logging.getLogger(__name__)

# --- launcher side ---------------------------------------------------------


def size_text(n: float) -> str:
  """Bytes as the job's outputs write sizes (progress, preflight, the
  summary table): binary units."""
  for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB'):
    if n < 1024 or unit == 'TiB':
      return f'{n:.0f} {unit}' if unit == 'bytes' else f'{n:.1f} {unit}'
    n /= 1024
  return ''


def duration(seconds: float) -> str:
  """12s, 4m05s, 2h03m."""
  seconds = int(round(max(0.0, seconds)))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def describe(tally: list, elapsed_s: float, total_bytes: int, reading_s=None,
             compact: bool = False, final: bool = False) -> str:
  """One progress line. `reading_s`: seconds since the first chunk was
  decoded (None: not yet), the base of the rate and the ETA. `compact`: the
  terminal's shorter words. `final`: the line of an ended pipeline (no ETA).
  The percent is of the input bytes read; the ETA also counts the bytes
  that could not be read as done with."""
  read, predicted, errors, consumed, skipped, faults = (list(tally) + [0] * _FIELDS)[:_FIELDS]
  noun = '' if compact else ' instances'
  parts = [f'{read:,}{noun} read, {predicted:,} predicted, {errors:,} errors']
  if reading_s and reading_s > 0 and read:
    parts.append(f'{read / reading_s:,.0f}{noun}/s')
  if total_bytes > 0:
    done = min(consumed, total_bytes) / total_bytes
    percent = '99%' if 0.995 <= done < 1 else f'{done:.0%}'  # never 100% while some is left
    text = f'{percent} of {size_text(total_bytes)}{"" if compact else " input read"}'
    if faults:
      files = 'file' if faults == 1 else 'files'
      text += (f' ({faults:,} {files} incomplete)' if compact else
               f' ({faults:,} {files} could not be read completely)')
    parts.append(text)
  parts.append(f'{duration(elapsed_s)} elapsed')
  done_with = consumed + skipped
  if (not final and total_bytes > 0 and (reading_s or 0) >= ETA_AFTER_S
      and 0 < done_with < total_bytes):
    rate = done_with / reading_s
    parts.append(f'ETA {duration((total_bytes - done_with) / rate)}')
  elif not final and not read and not done_with:
    parts.append('starting')
  return ', '.join(parts)


def watched_here(options) -> bool:
  """Whether a run with these JobOptions has its workers here, where a
  Reporter sees their tallies: Beam's local runner in every running mode,
  and the portable runner's LOOPBACK workers. Elsewhere the same figures are
  Beam metrics."""
  from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
  from tf_batch_predict.pipeline.options import LOCAL_RUNNERS
  if options.runner in LOCAL_RUNNERS:
    return True
  try:
    environment = PipelineOptions(list(options.beam_args)).view_as(PortableOptions)
  except Exception:  # pylint: disable=broad-except
    return False
  return (options.runner == 'PortableRunner'
          and (environment.environment_type or '').upper() == 'LOOPBACK')


def _process_state(pid: int):
  """(state letter, start time in clock ticks since boot) of a process, from
  /proc (Linux); None where it cannot be told."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return fields[0], fields[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start=None) -> bool:
  """Whether the process `pid` (started at `start`, where known) still runs."""
  if pid == os.getpid():
    return True
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # another user's: it exists
    return True
  state = _process_state(pid)
  if state is None:
    return True
  if state[0] in ('Z', 'X'):
    return False  # killed, not yet reaped
  return start is None or state[1] == start  # else the pid is another process's now


def _stale(path: str, host: str) -> bool:
  """Whether a progress folder's launcher is gone (see remove_stale_folders)."""
  age = time.time() - os.stat(path).st_mtime
  pid = os.path.basename(path)[len(FOLDER_PREFIX):].split('-')
  if len(pid) != 2 or not pid[0].isdigit():
    return age > LEGACY_AGE_S  # an earlier version's name: no owner to ask
  try:
    with open(os.path.join(path, OWNER)) as f:
      owner = json.load(f)
  except (OSError, ValueError):
    owner = None
  if owner is None:
    # Being made (the marker comes right after the folder), or its launcher
    # was killed in between.
    return age > OWNERLESS_GRACE_S and not _alive(int(pid[0]))
  if owner.get('host') != host:
    return False  # a temporary directory shared with another machine: not ours to judge
  return not _alive(int(owner.get('pid', pid[0])), owner.get('start'))


def remove_stale_folders(directory: str = None) -> list:
  """Removes the progress folders of launchers that are gone (killed with
  SIGKILL, which leaves no chance to clean up) from the temporary directory;
  returns their paths. A folder's owner is in its name and its marker."""
  removed = []
  host = socket.gethostname()
  base = directory or tempfile.gettempdir()
  for path in glob.glob(os.path.join(glob.escape(base), FOLDER_PREFIX + '*')):
    try:
      if os.path.isdir(path) and not os.path.islink(path) and _stale(path, host):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    except Exception:  # pylint: disable=broad-except  (another's, or gone meanwhile)
      continue
  return removed


class Reporter:
  """Watches the run of a local runner while the block runs (see the
  module's docstring). `interval_s` 0: no progress output. `series`: keep
  the throughput series (`series()`), also when there is no output; with
  neither, nothing is watched. `started`: time.time() the elapsed time of the
  lines counts from. `stream`: a terminal gets the live line (default: a copy
  of stderr as it is now, so that a filter put on fd 2 later does not hold
  back a line without its end)."""

  def __init__(self, interval_s: float, total_bytes: int, started: float = None,
               stream=None, series: bool = False):
    self._interval = interval_s
    self._keep_series = series
    self._printing = False  # progress output (interval and log level allow it)
    self._series = None  # [[elapsed_s, read, predicted, errors], ...] once watching
    self._series_stride = 1  # samples taken per sample kept (doubles when thinned)
    self._samples_taken = 0
    self._entered = time.monotonic()
    self._total = total_bytes
    self._started = time.time() if started is None else started
    self._stream = stream
    self._own_stream = False
    self._folder = None
    self._thread = None
    self._stop = threading.Event()
    self._first_read = None  # monotonic time reading began (the last sample before it)
    self._previous_sample = time.monotonic()
    self._last = [0] * _FIELDS
    self._terminal = False
    self._drawn = False
    self._write_lock = threading.Lock()
    self._log_filter = None
    self._logged = 0  # progress lines logged (not a terminal)
    self._previous_sigterm = None  # the SIGTERM handler before ours (installed: not None)

  @property
  def terminal(self) -> bool:
    return self._terminal

  def __enter__(self):
    # A progress folder named in the environment this process inherited is
    # not this run's: its workers must not write there.
    os.environ.pop(ENV, None)
    self._entered = time.monotonic()
    if self._interval <= 0 and not self._keep_series:
      return self
    try:
      self._start()
    except Exception:  # pylint: disable=broad-except
      _LOG.debug('Progress output is off: it could not be set up', exc_info=True)
      self._series = None
      self._cleanup()
    return self

  def __exit__(self, kind, value, traceback):
    if self._thread is None:
      return False
    try:
      self._stop.set()
      self._thread.join(timeout=5)
      self._sample(final=True)
      if self._terminal:
        self._clear()
      elif kind is None and self._logged:
        # The closing figures, in a log that has shown progress (a run
        # shorter than the interval prints no progress line at all).
        _LOG.info('%s', self._line(final=True))
    except Exception:  # pylint: disable=broad-except
      _LOG.debug('Progress output failed at the end', exc_info=True)
    finally:
      self._cleanup()
    return False

  def _start(self):
    # --log_level=warning or error: no progress lines either.
    self._printing = self._interval > 0 and _LOG.isEnabledFor(logging.INFO)
    if not self._printing and not self._keep_series:
      return
    if self._printing and self._stream is None:
      if not sys.stderr.isatty():
        self._stream = sys.stderr
      else:
        sys.stderr.flush()
        self._stream = os.fdopen(os.dup(sys.stderr.fileno()), 'w')
        self._own_stream = True
    self._terminal = self._printing and bool(getattr(self._stream, 'isatty',
                                                     lambda: False)())
    remove_stale_folders()
    self._folder = tempfile.mkdtemp(prefix=f'{FOLDER_PREFIX}{os.getpid()}-')
    state = _process_state(os.getpid())
    with open(os.path.join(self._folder, OWNER), 'w') as f:
      json.dump({'pid': os.getpid(), 'host': socket.gethostname(),
                 'start': state[1] if state else None}, f)
    os.environ[ENV] = self._folder
    self._handle_sigterm()
    begin_watching()
    if self._keep_series:
      self._series = [[0.0, 0, 0, 0]]
    if self._terminal:
      # A log line printed meanwhile starts on a clean line (in this process).
      self._log_filter = _ClearLine(self)
      for handler in logging.getLogger().handlers:
        handler.addFilter(self._log_filter)
    self._thread = threading.Thread(target=self._loop, name='batch-predict-progress',
                                    daemon=True)
    self._thread.start()

  def _cleanup(self):
    end_watching()
    self._restore_sigterm()
    if self._log_filter is not None:
      for handler in logging.getLogger().handlers:
        handler.removeFilter(self._log_filter)
      self._log_filter = None
    self._remove_folder()
    if self._own_stream:
      try:
        self._stream.close()
      except OSError:
        pass
      self._own_stream = False
    self._thread = None

  def _remove_folder(self):
    folder, self._folder = self._folder, None
    if folder is None:
      return
    if os.environ.get(ENV) == folder:
      del os.environ[ENV]
    for _ in range(3):  # a worker may be replacing its file meanwhile
      shutil.rmtree(folder, ignore_errors=True)
      if not os.path.exists(folder):
        break
      time.sleep(0.05)

  def _handle_sigterm(self):
    """SIGTERM (a supervisor, `timeout`, `kill`) ends the process without
    running its cleanup: the folder is removed first, then the signal does
    what it did before (by default: the process ends by it)."""
    if threading.current_thread() is not threading.main_thread():
      return  # only the main thread may set handlers
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
      return  # ignored (or set outside Python): nothing ends the run
    signal.signal(signal.SIGTERM, self._on_sigterm)
    self._previous_sigterm = previous

  def _restore_sigterm(self):
    previous, self._previous_sigterm = self._previous_sigterm, None
    if previous is None:
      return
    try:
      if signal.getsignal(signal.SIGTERM) == self._on_sigterm:  # not replaced since
        signal.signal(signal.SIGTERM, previous)
    except (ValueError, OSError):
      pass

  def _on_sigterm(self, signum, frame):
    previous = self._previous_sigterm
    try:
      self._stop.set()
      if self._terminal and self._write_lock.acquire(timeout=0.5):
        try:
          if self._drawn:
            self._stream.write('\r\x1b[K')
            self._stream.flush()
            self._drawn = False
        finally:
          self._write_lock.release()
      self._remove_folder()
    except Exception:  # pylint: disable=broad-except
      pass
    if callable(previous):
      previous(signum, frame)
      return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)

  def tally(self) -> list:
    """The figures so far: this process's, plus every worker process's."""
    total = memory_tally()
    folder = self._folder
    for path in glob.glob(os.path.join(glob.escape(folder), '*.json')) if folder else ():
      try:
        with open(path) as f:
          counts = json.load(f)
      except (OSError, ValueError):
        continue  # a worker's file being replaced: its next sample counts
      for i in range(min(_FIELDS, len(counts))):
        total[i] += counts[i]
    return total

  def series(self):
    """The throughput series, samples of SERIES_COLUMNS (seconds since the
    block was entered, instances read, predictions, error records) about
    once a second (five a second in the first SERIES_EARLY_S seconds), the
    last at the end; at most SERIES_MAX + 1 samples.
    None where nothing was watched (series off, or it could not be set up)."""
    return None if self._series is None else [list(s) for s in self._series]

  def _record(self, now: float, final: bool):
    series = self._series
    if series is None:
      return
    self._samples_taken += 1
    if not final and self._samples_taken % self._series_stride:
      return
    if len(series) >= SERIES_MAX:  # a long run: keep every other sample from now on
      del series[1::2]
      self._series_stride *= 2
    series.append([round(now - self._entered, 2), self._last[READ], self._last[PREDICTED],
                   self._last[ERRORS]])

  def _sample(self, final: bool = False):
    counts = self.tally()
    now = time.monotonic()
    # A figure never goes back (a worker's file is read between replacements).
    self._last = [max(a, b) for a, b in zip(self._last, counts)]
    if self._first_read is None and (self._last[READ] or self._last[BYTES]
                                     or self._last[SKIPPED]):
      # Reading began after the previous sample, which saw nothing yet.
      self._first_read = self._previous_sample
    self._previous_sample = now
    self._record(now, final)
    return self._last

  def _line(self, final=False) -> str:
    reading = time.monotonic() - self._first_read if self._first_read is not None else None
    line = describe(self._last, time.time() - self._started, self._total, reading,
                    compact=self._terminal, final=final)
    return f'pipeline ended: {line}' if final else line

  def _loop(self):
    tick = min(TICK_S, self._interval) if self._printing else TICK_S
    next_log = time.monotonic() + self._interval
    try:
      while not self._stop.wait(
          min(tick, SERIES_EARLY_TICK_S) if self._series is not None
          and time.monotonic() - self._entered < SERIES_EARLY_S else tick):
        self._sample()
        if not self._printing:
          continue
        if self._terminal:
          self._draw(self._line())
        elif time.monotonic() >= next_log:
          next_log += self._interval * max(1, int((time.monotonic() - next_log)
                                                  // self._interval) + 1)
          _LOG.info('%s', self._line())
          self._logged += 1
    except Exception:  # pylint: disable=broad-except
      _LOG.debug('Progress output stopped', exc_info=True)

  def _draw(self, line: str):
    with self._write_lock:
      width = shutil.get_terminal_size((100, 20)).columns - 1
      self._stream.write('\r' + line[:width] + '\x1b[K')
      self._stream.flush()
      self._drawn = True

  def _clear(self):
    with self._write_lock:
      if self._drawn:
        self._stream.write('\r\x1b[K')
        self._stream.flush()
        self._drawn = False


class _ClearLine(logging.Filter):
  """Clears the live line before a log record is printed (redrawn at the
  next tick)."""
  def __init__(self, reporter: Reporter):
    super().__init__()
    self._reporter = reporter

  def filter(self, record) -> bool:
    try:
      self._reporter._clear()  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except
      pass
    return True
