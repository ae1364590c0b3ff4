"""Worker processes of Beam's local multi_processing mode (FnApiRunner) that
die while the pipeline runs: killed with SIGKILL, by the kernel when memory
runs out, or crashed.

Beam starts each worker as `sh -c 'python -m ...sdk_worker_main'` from a
thread named run_worker, which raises `Worker subprocess exited with return
code N` when the shell ends with a nonzero status (128 + S where the worker
died of signal S). What the runner does then depends on the moment: where the
worker had opened its data connection, its bundle fails with `Channel closed
prematurely.`; before, the runner waits for the worker's outputs forever.
`deaths_reported()` watches those threads instead: at the first death it
kills the other workers (their work is lost with the run anyway), silences
the workers' stderr filter (what they print now is a consequence), and if
the runner has not failed by itself a few seconds later, interrupts the main
thread (SIGUSR1). Either way the block raises WorkerDied, which says how the
worker died, in place of whatever the runner raised.

On Flink and Spark the workers are the engine's: `engine_failure` only puts
into words the one failure of a dead worker that Beam's job servers report
without saying so.
"""
import contextlib
import os
import re
import signal
import threading

_EXITED = re.compile(r'^Worker subprocess exited with return code (-?\d+)$')
# What the runner raises when a worker's connection breaks: the death is the
# cause. Any other error failed the run first (a worker that then ends, even
# by a signal, e.g. aborting at exit, is a consequence): it is reported as is.
_BROKEN_CHANNEL = ('Channel closed prematurely', 'StatusCode.UNAVAILABLE',
                   'StatusCode.CANCELLED', 'Socket closed')
# The runner's threads that read a worker's control and data connections:
# they raise when one breaks, which the death (or the run's own error)
# already reports.
_CONNECTION_THREADS = ('beam_control_read', 'read_grpc_client_inputs', 'read_state')
_WORKER_MODULE = b'apache_beam.runners.worker.sdk_worker_main'


class WorkerDied(Exception):
  """A local worker process ended while the pipeline ran."""


def exit_signal(returncode: int):
  """The signal a worker died of, from its shell's exit status (128 + S) or,
  where the worker ran without a shell, its own (-S); None if it exited."""
  number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
  try:
    return signal.Signals(number) if number else None
  except ValueError:
    return None


def describe(returncode: int) -> str:
  died = exit_signal(returncode)
  if died is None:
    return f'a worker process died (exit status {returncode})'
  if died == signal.SIGKILL:
    return ('a worker process died (killed by SIGKILL, which is also how the kernel ends a '
            'process when memory runs out: fewer --direct_num_workers or a smaller '
            '--max_batch_size need less)')
  return f'a worker process died (killed by {died.name})'


# Beam's Java job servers (Flink, Spark) wait for a new Python worker's data
# connection with a fixed bound (GrpcDataService:
# `connectedClient.get(3, TimeUnit.MINUTES)`): where the worker died or never
# started before connecting, the job fails after 3 minutes with only this.
_NO_DATA_CONNECTION = re.compile(
    r'TimeoutException: Waited 3 minutes\b.* for SettableFuture\b|No client connected within timeout')


def engine_failure(line: str) -> str:
  """A failed job's line from a Java job server, with what it means where
  Beam's own words do not say it."""
  found = _NO_DATA_CONNECTION.search(line)
  if found:
    return ('a Python worker never opened its data connection: it died or could not start '
            "(its own log, or the worker pool's, says which), and Beam's job server waited "
            f'3 minutes for it ({found.group(0)})')
  return line


def descendants(root: int = 0) -> list:
  """The descendants of process `root` (default: this one), from /proc
  (Linux); elsewhere none are known."""
  parents = {}
  try:
    entries = os.listdir('/proc')
  except OSError:
    return []
  for entry in entries:
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', 'rb') as f:
        parents[int(entry)] = int(f.read().rsplit(b')', 1)[1].split()[1])  # state, then ppid
    except (OSError, IndexError, ValueError):
      continue
  found, frontier = [], [root or os.getpid()]
  while frontier:
    children = [pid for pid, parent in parents.items() if parent in frontier]
    found += children
    frontier = children
  return found


def is_worker(pid: int) -> bool:
  """Whether process `pid` is a Python SDK worker (not the shell around it)."""
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      args = f.read().split(b'\0')
  except OSError:
    return False
  return any(a == b'-m' and b == _WORKER_MODULE for a, b in zip(args, args[1:]))


def _caused_by_death(error: BaseException) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if any(text in str(error) for text in _BROKEN_CHANNEL):
      return True
    error = error.__cause__ or error.__context__
  return False


def _kill_workers() -> None:
  for pid in descendants():
    if is_worker(pid):
      try:
        os.kill(pid, signal.SIGKILL)
      except OSError:
        pass


def _worker_exit(args):
  """The exit status in Beam's exception for a worker that ended, or None
  for any other exception of a thread."""
  if (args.thread is None or not args.thread.name.startswith('run_worker')
      or not isinstance(args.exc_value, RuntimeError)):
    return None
  exited = _EXITED.match(str(args.exc_value))
  return int(exited.group(1)) if exited else None


@contextlib.contextmanager
def deaths_reported(stderr_filter=None, show_tracebacks: bool = False,
                    seconds_to_fail: float = 5.0):
  """For the block (a run of the pipeline): the first death of a worker
  process stops the others and fails the block with WorkerDied (see above).
  `stderr_filter`: the workers' stderr filter process (pipeline/quiet.py),
  told to pass nothing on after a death; `show_tracebacks`: Beam's thread
  traceback of the death is printed too (debugging)."""
  lock = threading.Lock()
  in_main = threading.current_thread() is threading.main_thread()
  state = {'death': None, 'armed': in_main}
  previous_hook = threading.excepthook

  def interrupt():
    with lock:  # never after the block has restored the previous handler
      if state['armed']:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

  def on_signal(signum, frame):  # pylint: disable=unused-argument
    if state['armed'] and state['death']:
      state['armed'] = False
      raise WorkerDied(state['death'])

  def hook(args):
    if (not show_tracebacks and args.thread is not None
        and args.thread.name.startswith(_CONNECTION_THREADS)):
      return
    returncode = _worker_exit(args)
    # A worker ended by SIGINT: Ctrl-C, or SIGTERM forwarded by the CLI,
    # which reports it.
    if returncode is None or exit_signal(returncode) == signal.SIGINT:
      previous_hook(args)
      return
    if show_tracebacks:
      previous_hook(args)
    with lock:
      if state['death'] is not None:
        return  # one of the workers stopped below
      state['death'] = describe(returncode)
    if stderr_filter is not None:
      try:
        stderr_filter.send_signal(signal.SIGINT)  # passes nothing on from now
      except OSError:
        pass
    _kill_workers()
    timer = threading.Timer(seconds_to_fail, interrupt)
    timer.daemon = True
    timer.start()

  previous_handler = signal.signal(signal.SIGUSR1, on_signal) if in_main else None
  threading.excepthook = hook
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if state['death'] is None or isinstance(e, WorkerDied) or not _caused_by_death(e):
      raise
    raise WorkerDied(state['death']) from e
  finally:
    state['armed'] = False
    with lock:
      if in_main:
        signal.signal(signal.SIGUSR1,
                      signal.SIG_DFL if previous_handler is None else previous_handler)
    # Workers stopped after a death may still end (and raise) later.
    if threading.excepthook is hook and not any(
        t.name.startswith('run_worker') and t.is_alive() for t in threading.enumerate()):
      threading.excepthook = previous_hook
