"""A helper process that decodes chunks beside the worker's own thread.

The JSON Lines and CSV fast paths hold Python's GIL (simdjson, the per-line
extraction), so one worker process decodes on one core. Where Beam's local
runner runs one worker (the default) the machine's other cores then idle,
while starting worker processes costs seconds each (TensorFlow's import,
the model's load). The helper imports no TensorFlow: it decodes chunks
that the worker hands it, while the worker's thread decodes others and
scores; the same `InstanceDecoder` code runs in both, so a chunk's
InstanceBatch is the same whichever decodes it.

Chunks and results travel through shared memory (one memfd, mapped by
both), and only a few bytes per chunk through the helper's pipes.
multiprocessing's pools are not used: they pickle a whole chunk through a
pipe (measured: 1.3 s to only carry the 460 MB of the MLP benchmark's lines,
against 1.9 s to decode them) and `spawn` imports the caller's main module
again. The helper is `python -m` this module; it exits when its stdin
closes, so a worker that dies (killed or not) takes it along.

Whatever goes wrong with the helper (it dies, a result does not fit its
slot, its decode raises) costs speed only: the worker decodes that chunk
itself, and no chunk's result is given out twice.
"""
import atexit
import logging
import mmap
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Optional

from tf_batch_predict.transforms.records import CSV, JSON, JSONL, Lines, RawChunk

_LOG = logging.getLogger(__name__)

# Per slot: the chunk's line bytes and the rest of it pickled; the result.
# A memfd's pages are only allocated where written.
IN_BYTES = 12 << 20
OUT_BYTES = 28 << 20
# Chunks the helper may hold at once: one decoding, the others queued, so
# that it has work while the worker scores and writes (with 2, it decoded
# under half of the MLP benchmark's chunks).
SLOTS = 4
# Smaller chunks (a range's tail, a small file) are decoded where they are.
MIN_LINES = 64
# The kinds of the chunks of lines it is handed (submit).
LINE_KINDS = (JSONL, CSV, JSON)
_FRAME = struct.Struct('<iiqqd')  # slot, status, size a, size b, seconds
_OK, _FAILED, _TOO_BIG = 0, 1, 2


def available() -> bool:
  return hasattr(os, 'memfd_create') and (os.cpu_count() or 1) >= 2


class _Helper:
  """The helper process and the memory it shares with this one; `warm`:
  objects it unpickles at once (start_early)."""
  def __init__(self, warm: tuple = ()):
    size = SLOTS * (IN_BYTES + OUT_BYTES)
    fd = os.memfd_create('tf-batch-predict-decode', 0)
    try:
      os.ftruncate(fd, size)
      self.memory = mmap.mmap(fd, size)
      env = dict(os.environ, TF_BATCH_PREDICT_DECODER_FD=str(fd))
      self.process = subprocess.Popen(
          [sys.executable, '-m', __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
          pass_fds=(fd,), env=env, bufsize=0, process_group=0)
    except BaseException:
      self.close()
      raise
    finally:
      os.close(fd)
    self.send(warm)

  def send(self, value) -> None:
    data = pickle.dumps(value, protocol=5)
    self.write(struct.pack('<q', len(data)) + data)

  def write(self, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a pipe may take part of it
      view = view[self.process.stdin.write(view):]

  def close(self) -> None:
    if getattr(self, 'process', None) is not None:
      # Whatever it still holds was given back or is not wanted: no need
      # to let it finish.
      self.process.kill()
      self.process.wait()
      self.process.stdin.close()
      self.process.stdout.close()
      self.process = None
    if getattr(self, 'memory', None) is not None:
      self.memory.close()
      self.memory = None


_early = None  # a helper started before its decoder is known: start_early()


def start_early(*warm) -> None:
  """Starts a helper now, for the next DecoderProcess of this process: its
  imports (about 1.5 s) then overlap the launcher's model check instead of
  the first chunks' decoding. `warm`: objects pickled by reference (classes)
  whose modules the decoder will need."""
  global _early
  if _early is None and available():
    try:
      _early = _Helper(warm)
    except OSError as e:
      _LOG.warning('No decoding helper process (%s)', e)
      return
    atexit.register(_close_early)


def stop_early() -> None:
  """Stops a helper start_early started that no run took."""
  _close_early()


def _close_early() -> None:
  global _early
  if _early is not None:
    _early.close()
    _early = None


class DecoderProcess:
  """Hands chunks of lines to a helper process and takes its results.

  start(decoder) -> a DecoderProcess, or None where no helper can run;
  submit(chunk) -> bool (False: decode it yourself); ready() -> the
  (chunk, InstanceBatch or None to decode it yourself, seconds) of finished
  ones, without waiting; drain() -> those of all submitted, as they finish;
  close()."""
  def __init__(self, helper: _Helper):
    self._helper = helper
    self._process, self._memory = helper.process, helper.memory
    self._slots = {}  # slot -> the chunk it holds
    self._broken = False
    self._poll = select.poll()
    self._poll.register(self._process.stdout, select.POLLIN)

  @classmethod
  def start(cls, decoder) -> Optional['DecoderProcess']:
    global _early
    if not available():
      return None
    helper, _early = _early, None
    try:
      if helper is None or helper.process.poll() is not None:
        helper = _Helper()
      # The formats of lines only: those of Parquet and TFRecord would import
      # Beam into the helper (about 1 s of its start).
      helper.send(decoder.only(LINE_KINDS))
      return cls(helper)
    except OSError as e:
      _LOG.warning('No decoding helper process (%s); decoding in this process only', e)
      if helper is not None:
        helper.close()
      return None

  @property
  def usable(self) -> bool:
    return self._process is not None and not self._broken

  def submit(self, chunk: RawChunk) -> bool:
    """Hands the chunk over if the helper has room for it."""
    if (not self.usable or len(self._slots) >= SLOTS or len(chunk) < MIN_LINES
        or not isinstance(chunk.records, Lines) or chunk.kind not in LINE_KINDS):
      return False
    slot = next(s for s in range(SLOTS) if s not in self._slots)
    # A view: the lines are copied once, into the slot.
    buffer, starts, ends = chunk.records._trimmed(view=True)  # pylint: disable=protected-access
    with buffer:
      size = len(buffer)
      rest = pickle.dumps(
          (RawChunk(**{**vars(chunk), 'records': None}), starts, ends), protocol=5)
      if size + len(rest) > IN_BYTES:
        return False
      base = slot * (IN_BYTES + OUT_BYTES)
      self._memory[base:base + size] = buffer
      self._memory[base + size:base + size + len(rest)] = rest
    try:
      self._helper.write(_FRAME.pack(slot, _OK, size, len(rest), 0.0))
    except OSError:
      self._break('its pipe closed')
      return False
    self._slots[slot] = chunk
    return True

  def ready(self) -> list:
    done = []
    while self._slots and not self._broken and self._poll.poll(0):
      done.append(self._receive())
    return [d for d in done if d is not None] + self._orphans()

  def drain(self):
    """Each submitted chunk's result as it finishes (a generator: the
    caller scores one while the helper decodes the next)."""
    while self._slots and not self._broken:
      done = self._receive()
      if done is not None:
        yield done
    yield from self._orphans()

  def close(self) -> None:
    self._helper.close()
    self._process = self._memory = None
    self._broken = True

  def _receive(self):
    """One finished chunk: (chunk, batch or None to decode it here, seconds)."""
    frame = _read_exactly(self._process.stdout, _FRAME.size)
    if frame is None:
      self._break('it exited')
      return None
    slot, status, head_size, buffers_size, seconds = _FRAME.unpack(frame)
    chunk = self._slots.pop(slot)
    if status != _OK or head_size > OUT_BYTES:
      return chunk, None, 0.0
    base = slot * (IN_BYTES + OUT_BYTES) + IN_BYTES
    data, extents = pickle.loads(self._memory[base:base + head_size])
    with memoryview(self._memory) as view:  # one copy each, out of the slot
      buffers = [bytearray(view[base + start:base + stop]) for start, stop in extents]
    batch = pickle.loads(data, buffers=buffers)
    batch.chunk = chunk
    return chunk, batch, seconds

  def _orphans(self) -> list:
    """After the helper broke: the chunks it held, to decode here."""
    if not self._broken:
      return []
    orphans = [(chunk, None, 0.0) for chunk in self._slots.values()]
    self._slots.clear()
    return orphans

  def _break(self, why: str) -> None:
    if not self._broken:
      _LOG.warning('The decoding helper process stopped (%s); decoding in this process only',
                   why)
    self._broken = True



class _FdReader:
  def __init__(self, fd: int):
    self._fd = fd

  def read(self, size: int) -> bytes:
    return os.read(self._fd, size)


def _receive_object(stream):
  size = _read_exactly(stream, 8)
  data = size and _read_exactly(stream, struct.unpack('<q', size)[0])
  return pickle.loads(data) if data else None


def _read_exactly(stream, size: int) -> Optional[bytes]:
  data = b''
  while len(data) < size:
    more = stream.read(size - len(data))
    if not more:
      return None
    data += more
  return data


# -- the helper's side --------------------------------------------------------

def _serve() -> None:
  # Ctrl-C reaches the whole process group: the worker decides what stops.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # The results' pipe is a private copy of stdout; whatever a library prints
  # goes to stderr, not into the frames.
  replies = os.dup(1)
  os.dup2(2, 1)
  stdin = _FdReader(0)
  fd = int(os.environ['TF_BATCH_PREDICT_DECODER_FD'])
  memory = mmap.mmap(fd, SLOTS * (IN_BYTES + OUT_BYTES))
  _receive_object(stdin)  # start_early's: its modules are imported now
  decoder = _receive_object(stdin)
  if decoder is None:
    return
  # One core is this process's share: the worker's parser has the others.
  decoder.set_parse_threads(1)
  while True:
    frame = _read_exactly(stdin, _FRAME.size)
    if frame is None:
      return  # the worker is gone
    slot, _, buffer_size, rest_size, _ = _FRAME.unpack(frame)
    base = slot * (IN_BYTES + OUT_BYTES)
    started = time.perf_counter()
    status, head_size = _OK, 0
    try:
      chunk, starts, ends = pickle.loads(memory[base + buffer_size:base + buffer_size + rest_size])
      chunk.records = Lines(memory[base:base + buffer_size], starts, ends)
      batch = decoder.decode(chunk)
      batch.chunk = None
      buffers = []
      data = pickle.dumps(batch, protocol=5, buffer_callback=buffers.append)
      head_size = _write_result(memory, base + IN_BYTES, data, buffers)
      if head_size is None:
        status = _TOO_BIG
    except Exception:  # pylint: disable=broad-except  (the worker decodes it instead)
      logging.getLogger(__name__).warning('Decoding failed in the helper process',
                                          exc_info=True)
      status = _FAILED
    try:
      os.write(replies, _FRAME.pack(slot, status, head_size or 0, 0,
                                    time.perf_counter() - started))
    except OSError:
      return  # the worker is gone


def _write_result(memory, base, data, buffers) -> Optional[int]:
  """Writes the pickled result's out-of-band buffers, then its head (the
  pickle and the buffers' extents); the head's size, or None if it does not
  fit its slot."""
  extents, position = [], 0
  raws = [b.raw() for b in buffers]
  head_room = len(data) + 64 + 32 * len(raws)
  if head_room > OUT_BYTES:
    return None
  position = head_room
  for raw in raws:
    if position + raw.nbytes > OUT_BYTES:
      return None
    memory[base + position:base + position + raw.nbytes] = raw
    extents.append((position, position + raw.nbytes))
    position += raw.nbytes
  head = pickle.dumps((data, extents), protocol=5)
  if len(head) > head_room:
    return None
  memory[base:base + len(head)] = head
  return len(head)


if __name__ == '__main__':
  _serve()
