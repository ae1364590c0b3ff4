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

Worker processes (Beam's multi_processing mode) inherit environment variables,
not Python state: the CLI sets ENV, and this module, a Beam plugin
(--beam_plugins, imported by each SDK worker at start), installs the hook at
import where ENV is '1'. Remote workers (Dataflow) do not have ENV and are
left as they are. With debugging on (BATCH_PREDICT_DEBUG=1,
--log_level=debug) the CLI sets ENV to '0': nothing is filtered.
"""
import contextlib
import importlib.abc
import importlib.util
import os
import re
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


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of `tensorflow` with fd 2 filtered."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    uninstall()
    module.__loader__ = module.__spec__.loader = self._loader  # as if never wrapped
    with native_stderr_filtered():
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


if os.environ.get(ENV) == '1':  # a worker process of a run of the CLI
  install()
