"""Progress of a running job, watched from the launching process.

Beam's local runner (the FnApiRunner, in every running mode) blocks in
`p.run()` and reports metrics only once the pipeline has ended, so the
figures a user watches travel on a channel of their own:

- Worker side (transforms/progress.py `add`, `flush`): the steps that count (the readers, Decode,
  Format) add to a per-process tally: instances read, predictions, error
  records, input bytes consumed. In the launching process (modes
  `in_memory` and `multi_threading`, Beam's LOOPBACK workers) the tally is
  read in memory. A worker process (`multi_processing`) finds the progress
  folder in the environment it inherits (ENV) and writes its tally there,
  as `PID.json`, at most once a second and at the end of each bundle. A
  process with neither (a remote worker) counts nothing: on remote runners
  the same figures are Beam metrics of the namespace `batch_predict`
  (`instances_read`, `predictions`, `errors_parse`, ..., see the README).
- Launcher side (`Reporter`): a thread sums the tallies every second and
  shows them: on a terminal one line rewritten in place, cleared at the end;
  otherwise an INFO line of the `pipeline.progress` logger every
  --progress_interval seconds, and after such lines one when the pipeline
  ends (a run shorter than the interval prints none).

The ETA is based on input bytes: the files' stored (compressed) sizes are
known before the run, and the readers count how far into each file they
are; the rate is the average since the first bytes were read. Counting
costs a few dictionary operations per chunk of up to thousands of
instances. Nothing here may fail or stall a run: every fault of the
progress channel turns it off quietly.
"""
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

from transforms.progress import (BYTES, ENV, ERRORS, FIELDS as _FIELDS, PREDICTED,  # noqa: F401
                                 READ, add, begin_watching, end_watching, flush,
                                 memory_tally)

TICK_S = 1.0  # how often the launcher samples (and a terminal line is redrawn)
ETA_AFTER_S = 2.0  # seconds of reading before an ETA is shown

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
             compact: bool = False) -> str:
  """One progress line. `reading_s`: seconds since the first bytes were
  read (None: not yet), the base of the rate and the ETA. `compact`: the
  terminal's shorter words."""
  read, predicted, errors, consumed = tally
  noun = '' if compact else ' instances'
  parts = [f'{read:,}{noun} read, {predicted:,} predicted, {errors:,} errors']
  if reading_s and reading_s > 0 and read:
    parts.append(f'{read / reading_s:,.0f}{noun}/s')
  if total_bytes > 0:
    done = min(consumed, total_bytes) / total_bytes
    parts.append(f'{done:.0%} of {size_text(total_bytes)}{"" if compact else " input read"}')
  parts.append(f'{duration(elapsed_s)} elapsed')
  if total_bytes > 0 and (reading_s or 0) >= ETA_AFTER_S and 0 < consumed < total_bytes:
    rate = consumed / reading_s
    parts.append(f'ETA {duration((total_bytes - consumed) / rate)}')
  elif not read and not consumed:
    parts.append('starting')
  return ', '.join(parts)


def watched_here(options) -> bool:
  """Whether a run with these JobOptions has its workers here, where a
  Reporter sees their tallies: Beam's local runner in every running mode,
  and the portable runner's LOOPBACK workers. Elsewhere the same figures are
  Beam metrics."""
  from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
  from pipeline.summary import LOCAL_RUNNERS
  if options.runner in LOCAL_RUNNERS:
    return True
  try:
    environment = PipelineOptions(list(options.beam_args)).view_as(PortableOptions)
  except Exception:  # pylint: disable=broad-except
    return False
  return (options.runner == 'PortableRunner'
          and (environment.environment_type or '').upper() == 'LOOPBACK')


class Reporter:
  """Watches the run of a local runner while the block runs (see the
  module's docstring). `interval_s` 0: nothing. `started`: time.time() the
  elapsed time counts from. `stream`: a terminal gets the live line
  (default: a copy of stderr as it is now, so that a filter put on fd 2
  later does not hold back a line without its end)."""

  def __init__(self, interval_s: float, total_bytes: int, started: float = None,
               stream=None):
    self._interval = interval_s
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

  @property
  def terminal(self) -> bool:
    return self._terminal

  def __enter__(self):
    if self._interval <= 0:
      return self
    try:
      self._start()
    except Exception:  # pylint: disable=broad-except
      _LOG.debug('Progress output is off: it could not be set up', exc_info=True)
      self._cleanup()
    return self

  def __exit__(self, kind, value, traceback):
    if self._thread is None:
      return False
    try:
      self._stop.set()
      self._thread.join(timeout=5)
      self._sample()
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
    if not _LOG.isEnabledFor(logging.INFO):
      return
    if self._stream is None:
      if not sys.stderr.isatty():
        self._stream = sys.stderr
      else:
        sys.stderr.flush()
        self._stream = os.fdopen(os.dup(sys.stderr.fileno()), 'w')
        self._own_stream = True
    self._terminal = bool(getattr(self._stream, 'isatty', lambda: False)())
    self._folder = tempfile.mkdtemp(prefix='batch-predict-progress-')
    os.environ[ENV] = self._folder
    begin_watching()
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
    if self._log_filter is not None:
      for handler in logging.getLogger().handlers:
        handler.removeFilter(self._log_filter)
      self._log_filter = None
    if self._folder is not None:
      if os.environ.get(ENV) == self._folder:
        del os.environ[ENV]
      shutil.rmtree(self._folder, ignore_errors=True)
      self._folder = None
    if self._own_stream:
      try:
        self._stream.close()
      except OSError:
        pass
      self._own_stream = False
    self._thread = None

  def tally(self) -> list:
    """The figures so far: this process's, plus every worker process's."""
    total = memory_tally()
    for path in glob.glob(os.path.join(self._folder or '', '*.json')):
      try:
        with open(path) as f:
          counts = json.load(f)
      except (OSError, ValueError):
        continue  # a worker's file being replaced: its next sample counts
      for i in range(min(_FIELDS, len(counts))):
        total[i] += counts[i]
    return total

  def _sample(self):
    counts = self.tally()
    now = time.monotonic()
    # A figure never goes back (a worker's file is read between replacements).
    self._last = [max(a, b) for a, b in zip(self._last, counts)]
    if self._first_read is None and (self._last[READ] or self._last[BYTES]):
      # Reading began after the previous sample, which saw nothing yet.
      self._first_read = self._previous_sample
    self._previous_sample = now
    return self._last

  def _line(self, final=False) -> str:
    reading = time.monotonic() - self._first_read if self._first_read is not None else None
    line = describe(self._last, time.time() - self._started, self._total, reading,
                    compact=self._terminal)
    return f'pipeline ended: {line}' if final else line

  def _loop(self):
    tick = min(TICK_S, self._interval)
    next_log = time.monotonic() + self._interval
    try:
      while not self._stop.wait(tick):
        self._sample()
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
