"""TensorFlow's native start-up lines, kept off a normal run's stderr.

Importing TensorFlow prints lines from C++ static initializers, before
TensorFlow reads TF_CPP_MIN_LOG_LEVEL (so that variable cannot stop them) and
once per shared library that holds its own copy of the logging code:

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 00:00:... port.cc:153] oneDNN custom operations are on. ...
  I0000 00:00:... cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

and its first look at the devices adds, on a machine without a GPU,

  E0000 00:00:... cuda_platform.cc:52] failed call to cuInit: ...

Python logging cannot reach them, so `install()` hooks the first
`import tensorflow` of the process: for the import, and a first look at the
devices (`tf.config.list_physical_devices()`, which is where cuInit happens;
it sets up no device, so GPU options set later still apply), file descriptor 2
goes to a temporary file. Then fd 2 is restored and every captured line that
is not known start-up noise (`is_noise`) is written back: a Python warning, a
C++ warning or error of any other kind, get through unchanged.

Worker processes (Beam's local multi_processing mode) inherit file
descriptors and environment variables, not Python state, and Beam gives them
no pipeline options (so not our --beam_plugins either): for such a run the CLI
wraps the pipeline in `stderr_filtered_by_process()`, which points fd 2 of the
launcher, and so of every worker it starts, at a pipe read by a small filter
process (this file run as a script). Being a process of its own, the filter
outlives a launcher that crashes: what was written before is still passed on.
Where ENV is '1' (set by the CLI, inherited by workers), importing this module
also installs the import hook (a worker that imports it, Beam's LOOPBACK
workers, which run in the launcher). Remote workers (Dataflow) do not have
ENV and are left as they are. With debugging on (BATCH_PREDICT_DEBUG=1,
--log_level=debug) the CLI sets ENV to '0' and filters nothing.

The same hook keeps scikit-learn out of that import (`_scikit_learn_hidden`).
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile

ENV = 'BATCH_PREDICT_QUIET_NATIVE'

# A line of absl / TensorFlow's C++ logging: severity, date, time, thread, file:line.
_NATIVE = re.compile(r'^(?P<severity>[IWEF])\d{4} [\d:.]+ +\d+ (?P<file>[^ :\]]+):\d+\] '
                     r'(?P<message>.*)$')
# Lines that are noise whatever their context.
_ALWAYS = re.compile(
    r'^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to '
    r'STDERR'
    # cpu_feature_guard.cc's message is two lines long (an INFO line).
    r'|To enable the following instructions: .* rebuild TensorFlow with the appropriate '
    r'compiler flags\.)$')
# (file, message) of warnings and errors that a CPU machine, or a CUDA build
# loading its plugins, prints at every start.
_KNOWN_STARTUP_WARNINGS = (
    ('cuda_dnn.cc', 'Unable to register cuDNN factory'),
    ('cuda_fft.cc', 'Unable to register cuFFT factory'),
    ('cuda_blas.cc', 'Unable to register cuBLAS factory'),
    ('computation_placer.cc', 'computation placer already registered'),
    ('py_utils.cc', 'TF-TRT Warning: Could not find TensorRT'),
)
_NO_DRIVER = 'Could not find cuda drivers on your machine'


def _no_gpu_wanted() -> bool:
  """CUDA_VISIBLE_DEVICES hides every GPU: a failing cuInit is expected."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  return visible is not None and visible.strip() in ('', '-1')


def is_noise(line: str, no_driver: bool = False) -> bool:
  """Whether a line of stderr captured around TensorFlow's start is start-up
  noise. `no_driver`: TensorFlow said in the same start that this machine has
  no CUDA driver, so that the failing cuInit that follows is expected (on a
  machine with a driver, it is a real error and gets through)."""
  line = line.rstrip('\r\n')
  if _ALWAYS.match(line):
    return True
  native = _NATIVE.match(line)
  if not native:
    return False
  severity, source, message = native.group('severity', 'file', 'message')
  if severity == 'I':
    return True  # information, never a warning or an error
  if source == 'cuda_platform.cc' and message.startswith('failed call to cuInit'):
    return no_driver or _no_gpu_wanted()
  return severity in 'WE' and any(source == known_file and message.startswith(known)
                                  for known_file, known in _KNOWN_STARTUP_WARNINGS)


def drop_noise(text: str) -> str:
  """`text` less its start-up noise lines (see `is_noise`)."""
  lines = text.splitlines(keepends=True)
  no_driver = any(_NO_DRIVER in line for line in lines)
  return ''.join(line for line in lines if not is_noise(line, no_driver))


def _flush_stderr() -> None:
  try:
    if sys.stderr is not None:
      sys.stderr.flush()
  except (OSError, ValueError):
    pass


def _write_all(fd: int, data: bytes) -> None:
  while data:
    data = data[os.write(fd, data):]


@contextlib.contextmanager
def native_stderr_filtered():
  """Captures file descriptor 2 (C++ and Python writes alike) for the block,
  then writes back what is not start-up noise. If fd 2 cannot be duplicated,
  the block runs unfiltered."""
  _flush_stderr()
  try:
    saved = os.dup(2)
  except OSError:
    yield
    return
  try:
    with tempfile.TemporaryFile() as capture:
      os.dup2(capture.fileno(), 2)
      try:
        yield
      finally:
        _flush_stderr()
        os.dup2(saved, 2)
        capture.seek(0)
        kept = drop_noise(capture.read().decode('utf-8', 'replace'))
        if kept:
          _write_all(2, kept.encode('utf-8'))
  finally:
    os.close(saved)


@contextlib.contextmanager
def _scikit_learn_hidden():
  """`import tensorflow` imports Keras (tensorflow/__init__.py: "an eager
  load for Keras' code"), and Keras 3 imports scikit-learn, and with it
  SciPy, where they are installed (keras/src/wrappers/fixes.py, for its
  scikit-learn wrappers); this package installs them for `evaluate`.
  Hidden during that import, TensorFlow imports about 0.6 s faster (3.2-3.5 s
  against 3.9-4.9 s, alternating runs on the 2-core development machine) and
  holds 57 MiB less. `import sklearn` works
  as before afterwards; Keras' scikit-learn wrappers stay unavailable in the
  process, and no job uses them. While TensorFlow imports (seconds), another
  thread's `import sklearn` would fail: nothing in this package imports both
  at once (`evaluate` imports scikit-learn after the job)."""
  if 'sklearn' in sys.modules:
    yield
    return
  sys.modules['sklearn'] = None  # the import system's mark of a module that is not there
  try:
    yield
  finally:
    if 'sklearn' in sys.modules and sys.modules['sklearn'] is None:
      del sys.modules['sklearn']


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of `tensorflow` with fd 2 filtered."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    uninstall()
    module.__loader__ = module.__spec__.loader = self._loader  # as if never wrapped
    with native_stderr_filtered(), _scikit_learn_hidden():
      self._loader.exec_module(module)
      try:
        module.config.list_physical_devices()  # cuInit, and its error on a CPU machine
      except Exception:  # pylint: disable=broad-except
        pass  # the real run meets it again, unfiltered


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Wraps the loader of the process's first `import tensorflow` (of any of
  its submodules too: a package is imported before its submodules)."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname != 'tensorflow':
      return None
    for finder in sys.meta_path:  # the spec the others would give (a probe is no import)
      find = getattr(finder, 'find_spec', None)
      spec = None if finder is self or find is None else find(fullname, path, target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


def installed() -> bool:
  return any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path)


def install() -> None:
  """Filters TensorFlow's start-up lines from this process's stderr, if it has
  not imported TensorFlow yet (it is then too late: they are printed)."""
  if 'tensorflow' not in sys.modules and not installed():
    sys.meta_path.insert(0, _QuietTensorFlowImport())


def uninstall() -> None:
  sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


_TRACEBACK_START = 'Traceback (most recent call last):'
# What the shell around a worker (`sh -c`) prints when the worker dies of a
# signal ('Killed'); the launcher reports the death itself.
_SHELL_SIGNAL_REPORT = re.compile(r'^(%s)( \(core dumped\))?$' % '|'.join(
    re.escape(signal.strsignal(s)) for s in signal.valid_signals() if signal.strsignal(s)))
# The C++ runtime's last words in a worker that aborts as it ends (its gRPC
# threads at exit, after the run has failed); the launcher reports the run.
_ABORT_REPORT = re.compile(r'^(terminate called after throwing an instance of |'
                           r'FATAL: exception not rethrown$|  what\(\):  )')
_TRACEBACK_FRAME = re.compile(r'^(\s|$)')  # indented, or blank
# What may follow an exception line within one traceback (chained exceptions).
_TRACEBACK_CHAIN = re.compile(
    r'^($|During handling of the above exception, another exception occurred:$'
    r'|The above exception was the direct cause of the following exception:$)')


class _StreamFilter:
  """Line by line, what `drop_noise` keeps (the state: whether a CUDA
  driver was reported missing, by any process writing into the stream).
  With `drop_tracebacks`, also Python tracebacks, up to their exception line:
  a worker process of Beam prints the exception that fails a bundle (and so
  the run, which the launcher reports in one line); and a shell's report of
  a worker's death by a signal (the launcher reports it: pipeline/workers.py)."""

  def __init__(self, drop_tracebacks: bool = False):
    self._partial = b''
    self._no_driver = False
    self._drop_tracebacks = drop_tracebacks
    self._in_traceback = ''  # '', 'frames' or 'after' (its exception line)

  def _keep(self, line: bytes) -> bool:
    text = line.decode('utf-8', 'replace').rstrip('\r')
    if self._drop_tracebacks:
      if _SHELL_SIGNAL_REPORT.match(text) or _ABORT_REPORT.match(text):
        return False
      if text == _TRACEBACK_START:
        self._in_traceback = 'frames'
        return False
      if self._in_traceback == 'frames':
        if not _TRACEBACK_FRAME.match(text):
          self._in_traceback = 'after'  # the exception line
        return False
      if self._in_traceback == 'after':
        if _TRACEBACK_CHAIN.match(text):
          return False
        self._in_traceback = ''
    self._no_driver = self._no_driver or _NO_DRIVER in text
    return not is_noise(text, self._no_driver)

  def feed(self, data: bytes) -> bytes:
    lines = (self._partial + data).split(b'\n')
    self._partial = lines.pop()
    return b''.join(line + b'\n' for line in lines if self._keep(line))

  def end(self) -> bytes:
    rest, self._partial = self._partial, b''
    return rest if rest and self._keep(rest) else b''


def filter_stream(source: int, target: int, drop_tracebacks: bool = False) -> None:
  """Copies fd `source` to fd `target` until end of file, less start-up
  noise lines (and tracebacks: see _StreamFilter)."""
  stream = _StreamFilter(drop_tracebacks)
  while True:
    try:
      data = os.read(source, 65536)
    except InterruptedError:
      continue
    if not data:
      break
    if not _interrupted:
      _write_all(target, stream.feed(data))
  if not _interrupted:
    _write_all(target, stream.end())


# Set in the filter process by Ctrl-C (SIGINT to the terminal's process
# group): from then on the workers print only how each was interrupted, and
# the launcher says it in one line on its own stderr.
_interrupted = False


def _on_interrupt(*_):
  global _interrupted
  _interrupted = True


@contextlib.contextmanager
def stderr_filtered_by_process(drop_tracebacks: bool = False, seconds_to_drain: float = 10.0):
  """For the block, fd 2 of this process, and of the processes it starts,
  is a pipe to a filter process that passes on what is not start-up noise
  to the real stderr. At the end, fd 2 is restored and the filter is given
  `seconds_to_drain` to pass on the rest (it goes on alone after that, until
  the last worker holding the pipe has ended). Yields the filter process
  (SIGINT: it passes nothing on from then), or None where it cannot be
  started: the block runs unfiltered."""
  _flush_stderr()
  try:
    read_end, write_end = os.pipe()
  except OSError:
    yield None
    return
  saved = None
  try:
    saved = os.dup(2)
    process = subprocess.Popen([sys.executable, '-I', '-S', os.path.abspath(__file__),
                                *(['--drop_tracebacks'] if drop_tracebacks else [])],
                               stdin=read_end, stdout=saved, stderr=saved)
  except OSError:
    for fd in (read_end, write_end, saved):
      if fd is not None:
        os.close(fd)
    yield None
    return
  os.close(read_end)
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield process
  finally:
    _flush_stderr()
    os.dup2(saved, 2)  # the launcher's end of the pipe is closed
    os.close(saved)
    try:
      process.wait(timeout=seconds_to_drain)
    except subprocess.TimeoutExpired:
      pass


if __name__ == '__main__':  # the filter process of `stderr_filtered_by_process`
  signal.signal(signal.SIGINT, _on_interrupt)  # the filter goes on to the end of the pipe
  filter_stream(0, 1, drop_tracebacks='--drop_tracebacks' in sys.argv[1:])
elif os.environ.get(ENV) == '1':  # a process started by a run of the CLI
  install()
