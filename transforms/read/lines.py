"""Read files of lines (JSON Lines, CSV) as chunks of raw lines; what a line
is, for both formats:

- the bytes up to a line feed; a last line without one counts; one carriage
  return before the line feed is dropped (CRLF files);
- a UTF-8 byte order mark at the very start of a file is skipped;
- a line of spaces, tabs and carriage returns only is blank: counted and
  skipped, not an instance;
- a line longer than --max_instance_bytes is an error record of its own,
  and is skipped without being held in memory (the record keeps its start).

Beam's `ReadFromText` emits one element per line, and Beam costs about 15 us
per element per step: more than decoding a small instance. This reader emits
chunks of up to `chunk_lines` lines or `chunk_bytes` bytes, each line with
its byte offset, so every later step pays Beam's cost once per chunk.
Files are split into byte ranges before the run (transforms/read/units.py,
with Beam's OffsetRange); each range is read here by the file's exact name
(Beam's `ReadAllFiles` would match the name again as a pattern). (CSV
fields with embedded line breaks are therefore not supported.)

Reading is columnar: each read of READ_SIZE bytes is searched for line
feeds with numpy (bytes.find where lines are long), never a Python step per
line, and a chunk's lines come as one `records.Lines` (a buffer and each
line's [start, end)). Where a chunk lies within one read, its buffer is the
bytes that read gave, as they are (blank lines and line breaks left in
place, other chunks' lines before and after its own: only
buffer[starts[0]:ends[-1]] is the chunk's); otherwise its pieces are joined
with a line feed, a piece also ending at a line too large to read (held by
its first KEPT_PREFIX_BYTES only) and where a gap between lines is longer
than _MAX_GAP. Either way, between two lines there is only JSON whitespace
with at least one line feed. `split_lines` is the definition of what the
lines are, one line at a time; `LineChunkSource(..., by_line=True)` reads
with it, and tests/test_lines_columnar.py proves the two readers equal.

Claims on the range tracker are per block: the last line start of a block
before the range's stop is claimed, which claims every earlier one (claims
are monotonic, and the tracker refuses a split at or below a claimed
position); the first line start at or past the stop is then claimed, and
refused, as claiming line by line would. A split that lands between the
look at the stop and the claim (from another thread) is handled in
`_claim`. Dynamic splitting stays exact.

A fault while reading (a truncated or corrupt gzip stream, a file that
cannot be opened) ends the range with the lines read so far and one file
error that says how far reading got.

`sample_lines` reads the beginning of a file for a sample (batch-predict
preflight) with this reader, within a byte budget.
"""
import dataclasses
import gzip
import time
from typing import Optional

import numpy as np
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.range_trackers import OffsetRangeTracker

from tf_batch_predict.transforms.read.sampling import ByteBudget, FileSample
from tf_batch_predict.transforms.file_patterns import size_of
from tf_batch_predict.transforms.records import Lines, RawChunk

BLOCK_SIZE = 1 << 20
READ_SIZE = 8 << 20  # bytes per read of the columnar reader (most chunks within one)
DESIRED_RANGE_SIZE = 64 << 20  # bytes per work unit of a JSON Lines or CSV file (units.py)
CHUNK_LINES = 16384
CHUNK_BYTES = 4 << 20
DEFAULT_MAX_INSTANCE_BYTES = 4 << 20
KEPT_PREFIX_BYTES = 8192  # of a line too large to read, for its error record
_BOM = b'\xef\xbb\xbf'
_BLANK = b' \t\r'
# Columnar reading: at most this many lines of a block that may be blank
# (empty, or starting with a blank byte) are tested one by one; more, and
# the block's non-blank bytes are counted with a cumulative sum.
_BLANK_LOOP_MAX = 64
# A longer run of bytes between two lines of a chunk is held as one line feed.
_MAX_GAP = 1024
# Where the last block's lines were this long on average, line feeds are
# found with bytes.find (memchr), one line at a time: faster than numpy's
# pass over every byte once lines are long.
_FIND_LINE_BYTES = 1024
_MAYBE_BLANK = np.zeros(256, bool)  # the bytes a blank line may start with
_MAYBE_BLANK[list(_BLANK)] = True


def open_input(path: str):
  """A file for reading, decompressed by its extension. gzip goes through
  Python's gzip module rather than Beam's decompressing reader, which stops
  silently at a truncated stream and checks no CRC: here a truncated or
  corrupt stream raises, and becomes a file error."""
  if CompressionTypes.detect_compression_type(path) == CompressionTypes.GZIP:
    return gzip.GzipFile(fileobj=FileSystems.open(path, compression_type=(
        CompressionTypes.UNCOMPRESSED)), mode='rb')
  return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def fault_reason(error: Exception) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  return f'{type(error).__name__}: {text[:300]}'


def split_lines(f, start: int, max_bytes: int, block_size: int = BLOCK_SIZE):
  """Yields (offset, line, size) for every line that starts at or after
  `start` (the line straddling `start` belongs to the range before it): the
  line without its line feed, one carriage return before it, or a byte order
  mark at the start of the file, and its size. A line longer than
  `max_bytes` comes as its first KEPT_PREFIX_BYTES only, with its real size."""
  read = getattr(f, 'read1', f.read)
  # read1: a decompressor that fails part-way loses only what one read of
  # the underlying file gave, not a whole block's worth of lines.
  keep = max_bytes + 1  # room for a carriage return, which is not counted
  if start > 0:
    f.seek(start - 1)
    position, skipping, block = start - 1, True, b''
  else:
    head = f.read(len(_BOM))
    position, skipping = (len(_BOM), False) if head == _BOM else (0, False)
    block = b'' if head == _BOM else head
  line_start, pending, pending_size, last = (0 if start == 0 else position), b'', 0, b''
  while True:
    block += read(block_size)
    if not block:
      break
    base = 0
    while True:
      end = block.find(b'\n', base)
      piece = block[base:] if end < 0 else block[base:end]
      if not skipping:
        if pending_size + len(piece) <= keep:
          pending += piece
        elif len(pending) < KEPT_PREFIX_BYTES:
          pending = (pending + piece)[:KEPT_PREFIX_BYTES]
        pending_size += len(piece)
        last = piece[-1:] or last
      position += len(piece)
      if end < 0:
        break
      if skipping:
        skipping = False
      else:
        yield _line(line_start, pending, pending_size, last, max_bytes)
      position += 1
      line_start, pending, pending_size, last = position, b'', 0, b''
      base = end + 1
    block = b''
  if pending_size and not skipping:
    yield _line(line_start, pending, pending_size, last, max_bytes)


def _line(offset, data, size, last, max_bytes):
  if last == b'\r':
    size -= 1
  if size <= max_bytes:
    return offset, data[:size], size
  return offset, data[:min(size, KEPT_PREFIX_BYTES)], size


# -- columnar reading -------------------------------------------------------------

class _Block:
  """The complete lines one read of a file gave, as arrays: each line's
  [start, end) in `buffer` (end: of what is kept, without the line break or
  one carriage return before it), its offset in the file, its real size,
  whether it is blank, and which lines are too large to read."""
  __slots__ = ('buffer', 'starts', 'ends', 'offsets', 'sizes', 'blank', 'large')

  def __init__(self, buffer, starts, ends, offsets, sizes, blank, large):
    self.buffer = buffer  # bytes
    self.starts = starts  # int64 arrays, one value per line
    self.ends = ends
    self.offsets = offsets
    self.sizes = sizes
    self.blank = blank  # bool array
    self.large = large  # bool array, or None: no line too large


def _large_block(offset, prefix, size, last):
  """A line too large to read, of which only `prefix` was kept."""
  if last == b'\r':
    size -= 1
  kept = prefix[:min(size, KEPT_PREFIX_BYTES)]
  one = np.ones(1, np.int64)
  return _Block(kept, np.zeros(1, np.int64), one * len(kept), one * offset, one * size,
                np.zeros(1, bool), np.ones(1, bool))


def _lines_block(buffer, base, lf, max_bytes, first_offset=None, begin=0, arr=None):
  """The lines of `buffer` (the file's bytes from offset `base`) from
  `begin` (a line start) that end at the line feeds `lf`; with no line
  feed, buffer[begin:] is one last line without one."""
  if arr is None:
    arr = np.frombuffer(buffer, np.uint8)
  if len(lf):
    starts = np.empty(len(lf), np.int64)
    starts[0] = begin
    np.add(lf[:-1], 1, out=starts[1:])
    ends = lf  # (made the block's own: changed in place)
  else:
    starts = np.full(1, begin, np.int64)
    ends = np.full(1, len(buffer), np.int64)
  nonempty = ends > starts
  ends -= nonempty & (arr[ends - 1] == 13)  # one carriage return before the line feed
  sizes = ends - starts
  offsets = starts + base
  if first_offset is not None:  # the first line of a file with a byte order mark
    offsets[0] = first_offset
  large = sizes > max_bytes
  if large.any():
    ends = ends.copy()
    ends[large] = starts[large] + np.minimum(sizes[large], KEPT_PREFIX_BYTES)
  else:
    large = None
  # Blank: spaces, tabs and carriage returns only. Only a line that is
  # empty or starts with one of those can be.
  maybe = np.flatnonzero(_MAYBE_BLANK[arr[starts]] | ~nonempty)
  blank = np.zeros(len(starts), bool)
  if len(maybe) > _BLANK_LOOP_MAX:
    solid = np.empty(len(arr) + 1, np.int64)
    solid[0] = 0
    np.cumsum((arr != 32) & (arr != 9) & (arr != 13), out=solid[1:])
    blank[maybe] = solid[ends[maybe]] == solid[starts[maybe]]
  else:
    for row, start, end in zip(maybe.tolist(), starts[maybe].tolist(), ends[maybe].tolist()):
      blank[row] = not buffer[start:end].strip(_BLANK)
  if large is not None:
    blank &= ~large
  return _Block(buffer, starts, ends, offsets, sizes, blank, large)


def scan_lines(f, start: int, max_bytes: int, block_size: int = BLOCK_SIZE):
  """What `split_lines` yields, a block at a time: `_Block`s of the lines
  each read of the file completes, in the bytes that read gave (the line
  begun in earlier reads in a block of its own), and a block for each line
  too large to read, which is never held whole: its first
  KEPT_PREFIX_BYTES are kept. Every read is made as `split_lines` makes it,
  and its lines given before the next read, so that a fault part-way loses
  what it loses."""
  read = getattr(f, 'read1', f.read)
  keep = max_bytes + 1  # room for a carriage return, which is not counted
  first_offset = None  # the offset of the file's first line, where not its start
  if start > 0:
    f.seek(start - 1)
    position, skipping, carry = start - 1, True, b''
  else:
    head = f.read(len(_BOM))
    skipping, carry = False, b''
    if head == _BOM:
      position, first_offset, head = len(_BOM), 0, b''
    else:
      position = 0  # the head is read again, with the first block
  carry_at = position  # the file offset of the line being read (in carry)
  large = None  # [prefix, size, last byte] of a line too large to read, being read
  mask = np.empty(0, bool)  # where the line feeds are, reused from block to block
  line_bytes = 0  # bytes per line in the last block
  while True:
    data = read(block_size)
    if start == 0 and head:
      data, head = head + data, b''
    if not data:
      break
    at = position  # the file offset of data[0]
    position += len(data)
    begin = 0  # where in data the lines begin
    if skipping or large is not None:
      end = data.find(b'\n')
      if large is not None:
        piece = data if end < 0 else data[:end]
        if len(large[0]) < KEPT_PREFIX_BYTES:
          large[0] += piece[:KEPT_PREFIX_BYTES - len(large[0])]
        large[1] += len(piece)
        large[2] = piece[-1:] or large[2]
      if end < 0:
        continue
      if large is not None:
        yield _large_block(carry_at if first_offset is None else first_offset, *large)
        large = first_offset = None
      skipping = False
      begin = end + 1
      carry, carry_at = b'', at + begin
    arr = np.frombuffer(data, np.uint8)
    if line_bytes >= _FIND_LINE_BYTES:  # long lines: memchr from line feed to line feed
      found, end = [], data.find(b'\n', begin)
      while end >= 0:
        found.append(end)
        end = data.find(b'\n', end + 1)
      lf = np.array(found, np.int64)
    else:  # a numpy comparison over the whole block
      if len(mask) < len(data) - begin:
        mask = np.empty(len(data) - begin, bool)
      lf = np.flatnonzero(np.equal(arr[begin:], 10, out=mask[:len(data) - begin]))
      lf += begin
    line_bytes = (len(data) - begin) / (len(lf) + 1)
    if len(lf):
      tail = int(lf[-1]) + 1
      if carry:  # the line begun in earlier reads, in a buffer of its own
        end = int(lf[0])
        line = carry + data[:end + 1]
        yield _lines_block(line, carry_at, np.full(1, len(line) - 1, np.int64), max_bytes,
                           first_offset)
        first_offset = None
        lf = lf[1:]
        begin = end + 1
      if len(lf):
        yield _lines_block(data, at, lf, max_bytes, first_offset, begin, arr)
        first_offset = None
      carry, carry_at = data[tail:], at + tail
    elif begin < len(data) or carry:
      carry = carry + data[begin:] if carry or begin else data
    if len(carry) > keep:  # too large: its start only from here on
      large = [carry[:KEPT_PREFIX_BYTES], len(carry), carry[-1:]]
      carry = b''
  if large is not None:
    yield _large_block(carry_at if first_offset is None else first_offset, *large)
  elif carry and not skipping:
    yield _lines_block(carry, carry_at, np.zeros(0, np.int64), max_bytes, first_offset)


def _claim(range_tracker, offsets) -> tuple:
  """Claims the lines starting at `offsets` (ascending) from the range
  tracker as claiming each in turn until one is refused would: returns how
  many are the range's, and whether one was refused (the range ends)."""
  claimed, n = 0, len(offsets)
  while claimed < n:
    before = int(np.searchsorted(offsets, range_tracker.stop_position()))
    if before > claimed:
      # Claiming the last line before the stop claims every line before it.
      if range_tracker.try_claim(int(offsets[before - 1])):
        claimed = before
        continue
      # A split between reading the stop and the claim: the lines before the
      # new stop are this range's. Marking the last of them as read refuses
      # any later split below it; a split before that shows in the stop.
      before = int(np.searchsorted(offsets[:before - 1], range_tracker.stop_position()))
      if before > claimed:
        range_tracker.set_current_position(int(offsets[before - 1]))
        before = min(before, int(np.searchsorted(offsets, range_tracker.stop_position())))
      return max(before, claimed), True
    if not range_tracker.try_claim(int(offsets[claimed])):
      return claimed, True
    claimed += 1  # (a tracker whose stop moved on)
  return claimed, False


@dataclasses.dataclass
class _Progress:
  chunk: RawChunk
  instances: int = 0  # lines read into chunks (not blank)
  position: int = 0
  counted: int = 0  # stored bytes of the range recorded on chunks (RawChunk.stored_bytes)
  file: object = None  # the stored file (gzip: the compressed one), once open
  parts: object = None  # columnar reading: the lines of `chunk` (_Parts), until set on it


def stored_position(f, position=None):
  """How far into the stored file reading is: the compressed position of a
  gzip file, else `position` (uncompressed; None: f.tell()). None where it
  cannot be told."""
  try:
    raw = getattr(f, 'fileobj', None)  # gzip.GzipFile: the compressed file
    if raw is not None:
      return raw.tell()
    return f.tell() if position is None else position
  except Exception:  # pylint: disable=broad-except  (progress never fails a read)
    return None


def count_read(chunk: RawChunk, counted: int, position, stop=None) -> int:
  """Records on `chunk` the stored bytes read from `counted` up to
  `position` (at most `stop`), which Decode counts for the progress output
  (transforms/progress.py); returns the new count."""
  if position is None:
    return counted
  if stop is not None:
    position = min(position, stop)
  if position > counted:
    chunk.stored_bytes += position - counted
    return position
  return counted


def count_skipped(chunk: RawChunk, counted: int, end) -> None:
  """Records on `chunk` (the one with the file fault) the stored bytes from
  `counted` to `end` as bytes that could not be read."""
  if end is not None and end > counted:
    chunk.skipped_bytes += end - counted


def file_size(path: str):
  """The stored size of a file; None where it cannot be told."""
  return size_of(path)  # by its name: a matched path is no pattern


class _Parts:
  """The lines of a chunk being read, as pieces of blocks' buffers:
  (buffer, low, high, starts, ends), the lines [starts, ends) within
  buffer[low:high]."""
  __slots__ = ('pieces',)

  def __init__(self):
    self.pieces = []

  def add(self, block: _Block, rows) -> None:
    """Lines `rows` (ascending indexes, or a slice) of `block`: one piece of the block's
    buffer, cut where a line is too large to read or a gap is too long."""
    starts, ends = block.starts[rows], block.ends[rows]
    cut = starts[1:] - ends[:-1] > _MAX_GAP
    if block.large is not None:
      cut |= block.large[rows][:-1]
    first = 0
    for last in np.flatnonzero(cut).tolist() + [len(starts) - 1]:
      self.pieces.append((block.buffer, int(starts[first]), int(ends[last]),
                          starts[first:last + 1], ends[first:last + 1]))
      first = last + 1

  def detach(self) -> None:
    """Before the next block: copies out a piece that holds little of its
    block's buffer (so that a chunk never holds much more than its lines)."""
    self.pieces = [
        (buffer, low, high, starts, ends) if 2 * (high - low) >= len(buffer) else
        (buffer[low:high], 0, high - low, starts - low, ends - low)
        for buffer, low, high, starts, ends in self.pieces]

  def lines(self) -> Lines:
    if not self.pieces:
      return Lines()
    if len(self.pieces) == 1:  # the buffer as read, lines and all
      buffer, _, _, starts, ends = self.pieces[0]
      return Lines(buffer, starts, ends)
    views, shifted_starts, shifted_ends, base = [], [], [], 0
    for buffer, low, high, starts, ends in self.pieces:
      views.append(memoryview(buffer)[low:high])
      shifted_starts.append(starts + (base - low))
      shifted_ends.append(ends + (base - low))
      base += high - low + 1
    return Lines(b'\n'.join(views), np.concatenate(shifted_starts), np.concatenate(shifted_ends))


class LineChunkSource(filebasedsource.FileBasedSource):
  """A file of lines (JSON Lines, or CSV with a header row), read as
  RawChunks. Positions are byte offsets of line starts in the uncompressed
  content; a line belongs to the range in which it starts. Records are
  `Lines` (`by_line`: a list of lines, read line by line by the definition,
  `split_lines`)."""
  def __init__(self, path: str, kind: str, chunk_lines: int, chunk_bytes: int,
               max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES, header_reader=None,
               block_size: int = READ_SIZE, by_line: bool = False):
    super().__init__(path, compression_type=CompressionTypes.AUTO, validate=False)
    self._kind = kind
    self._chunk_lines = chunk_lines
    self._chunk_bytes = chunk_bytes
    self._max_bytes = max_instance_bytes
    self._header_reader = header_reader  # CSV: first line -> column names
    self._block_size = block_size
    self._by_line = by_line

  def _new_chunk(self, file_name, header):
    return RawChunk([(file_name, 0)], [], [] if self._by_line else Lines(), kind=self._kind,
                    header=header)

  def read_records(self, file_name, range_tracker):
    start = range_tracker.start_position()
    progress = _Progress(self._new_chunk(file_name, None), position=start, counted=start)
    try:
      yield from self._read(file_name, range_tracker, progress)
    except Exception as e:  # pylint: disable=broad-except
      # Anything the file system or decompressor raises ends this range; what
      # was read stays, and one error record accounts for the rest.
      compressed = self._compressed(file_name)
      chunk = progress.chunk
      if progress.parts is not None:
        chunk.records = progress.parts.lines()
      stop = range_tracker.stop_position()
      bounded = stop < OffsetRangeTracker.OFFSET_INFINITY
      if progress.file is not None:  # how far reading got; the rest could not be read
        progress.counted = count_read(chunk, progress.counted, stored_position(
            progress.file, None if compressed else progress.position), stop if bounded else None)
      count_skipped(chunk, progress.counted, stop if bounded else file_size(file_name))
      content = 'uncompressed content' if compressed else 'file'
      chunk.file_errors.append((file_name, (
          f'reading failed after {progress.instances} instances (from byte '
          f'{range_tracker.start_position()} of the {content}, the last one at byte '
          f'{progress.position}): {fault_reason(e)}')))
      yield chunk

  def open_file(self, file_name):
    return open_input(file_name)

  def _compressed(self, file_name) -> bool:
    return CompressionTypes.detect_compression_type(file_name) != CompressionTypes.UNCOMPRESSED

  def _read(self, file_name, range_tracker, progress):
    start = range_tracker.start_position()
    stop = range_tracker.stop_position()
    with self.open_file(file_name) as f:
      progress.file = getattr(f, 'fileobj', None) or f  # gzip: the compressed file
      header = None
      if self._header_reader is not None:
        first = next(split_lines(f, 0, self._max_bytes, self._block_size), None)
        header = self._header_reader(first[1] if first else b'')
        f.seek(0)
      progress.chunk = self._new_chunk(file_name, header)
      read = self._read_by_line if self._by_line else self._read_blocks
      yield from read(f, file_name, header, range_tracker, progress, start, stop)
      chunk = progress.chunk
      progress.counted = count_read(chunk, progress.counted, stop if stop < (
          OffsetRangeTracker.OFFSET_INFINITY) else stored_position(f))
    if len(chunk) or chunk.blank_lines or chunk.stored_bytes:
      yield chunk

  def _too_large(self, chunk, row, size):
    chunk.unread_sizes[row] = size
    chunk.read_errors[row] = (
        f'the instance is {size} bytes, more than --max_instance_bytes '
        f'({self._max_bytes}); it was not read')

  def _read_by_line(self, f, file_name, header, range_tracker, progress, start, stop):
    """The definition: every line claimed and read one at a time."""
    chunk = progress.chunk
    chunk_bytes = 0
    for offset, line, size in split_lines(f, start, self._max_bytes, self._block_size):
      if not range_tracker.try_claim(offset):
        break
      progress.position = offset
      if offset == 0 and header is not None:
        continue  # the CSV header row
      if not line.strip(_BLANK) and size <= self._max_bytes:
        chunk.blank_lines += 1
        continue
      if size > self._max_bytes:
        self._too_large(chunk, len(chunk), size)
      chunk.positions.append(offset)
      chunk.records.append(line)
      progress.instances += 1
      chunk_bytes += len(line)
      if len(chunk) >= self._chunk_lines or chunk_bytes >= self._chunk_bytes:
        progress.counted = count_read(chunk, progress.counted,
                                      stored_position(f, offset + size), stop)
        yield chunk
        chunk = progress.chunk = self._new_chunk(file_name, header)
        chunk_bytes = 0

  def _read_blocks(self, f, file_name, header, range_tracker, progress, start, stop):
    """What `_read_by_line` reads, a block at a time (see the module's doc)."""
    chunk = progress.chunk
    parts = progress.parts = _Parts()  # the chunk's lines so far
    chunk_bytes = 0
    for block in scan_lines(f, start, self._max_bytes, self._block_size):
      claimed, ended = _claim(range_tracker, block.offsets)
      if claimed:
        progress.position = int(block.offsets[claimed - 1])
        blank = block.blank[:claimed]
        rows = None  # the lines read into chunks; None: all the claimed ones
        if header is not None and block.offsets[0] == 0:  # the CSV header row
          blank = blank.copy()
          blank[0] = False
          wanted = ~blank
          wanted[0] = False
          rows = np.flatnonzero(wanted)
        elif blank.any():
          rows = np.flatnonzero(~blank)
        blanks = np.flatnonzero(blank) if blank.any() else None
        counted_blanks = 0
        if rows is None:
          count = claimed
          cumulative = np.cumsum(block.ends[:claimed] - block.starts[:claimed])
        else:
          count = len(rows)
          cumulative = np.cumsum(block.ends[rows] - block.starts[rows])
        first = 0
        while first < count:
          before = int(cumulative[first - 1]) if first else 0
          # The row at which the chunk is full, by lines or by bytes.
          last = min(first + self._chunk_lines - len(chunk) - 1, int(np.searchsorted(
              cumulative, before + self._chunk_bytes - chunk_bytes)))
          last = max(last, first)
          taken = slice(first, min(last + 1, count)) if rows is None else rows[first:last + 1]
          row = len(chunk)
          chunk.positions.extend(block.offsets[taken].tolist())
          if block.large is not None:
            sizes = block.sizes[taken]
            for k in np.flatnonzero(block.large[taken]).tolist():
              self._too_large(chunk, row + k, int(sizes[k]))
          parts.add(block, taken)
          if last >= count:
            progress.instances += count - first
            chunk_bytes += int(cumulative[-1]) - before
            break
          progress.instances += last + 1 - first
          line = last if rows is None else int(rows[last])
          if blanks is not None:  # the blank lines before the chunk's last line
            up_to = int(np.searchsorted(blanks, line))
            chunk.blank_lines += up_to - counted_blanks
            counted_blanks = up_to
          chunk.records = parts.lines()
          progress.counted = count_read(chunk, progress.counted, stored_position(
              f, int(block.offsets[line] + block.sizes[line])), stop)
          yield chunk
          chunk = progress.chunk = self._new_chunk(file_name, header)
          parts = progress.parts = _Parts()
          chunk_bytes = 0
          first = last + 1
        if blanks is not None:
          chunk.blank_lines += len(blanks) - counted_blanks
        parts.detach()
      if ended:
        break
    chunk.records = parts.lines()
    progress.parts = None


def _chunk_source(kind, chunk_lines, chunk_bytes, max_instance_bytes, header_reader, path):
  return LineChunkSource(path, kind, chunk_lines, chunk_bytes, max_instance_bytes,
                         header_reader)


def read_line_range(kind: str, max_instance_bytes: int, header_reader, metadata, offsets):
  """The RawChunks of the lines that start in byte range `offsets` of a
  JSON Lines or CSV file (`header_reader`: CSV's)."""
  source = _chunk_source(kind, CHUNK_LINES, CHUNK_BYTES, max_instance_bytes, header_reader,
                         metadata.path)
  return source.read_records(metadata.path, offsets.new_tracker())


# -- a sample: the beginning of a file ----------------------------------------------

class _SampleLineSource(LineChunkSource):
  """The job's line reader, over at most `budget` bytes of a file."""
  def __init__(self, path, kind, chunk_lines, max_instance_bytes, header_reader, budget):
    super().__init__(path, kind, chunk_lines, 1 << 62, max_instance_bytes, header_reader)
    self._budget = budget
    self.reader = None  # the ByteBudget, once open

  def open_file(self, file_name):
    self.reader = ByteBudget(open_input(file_name), self._budget)
    return self.reader


def _drop_last(chunk) -> None:
  row = len(chunk) - 1
  chunk.records = chunk.records[:row]  # Lines, or a list
  chunk.positions = chunk.positions[:row]
  chunk.read_errors.pop(row, None)
  chunk.unread_sizes.pop(row, None)


def sample_lines(metadata, kind: str, quota: int, max_bytes: int, limits,
                 header_reader=None) -> FileSample:
  """JSON Lines or CSV (`header_reader`: CSV's): the first `quota` lines of
  a file within `limits.bytes_per_file`, read by LineChunkSource, one line
  more than the quota (which tells that the file goes on, and where the
  next instance starts)."""
  path = metadata.path
  source = _SampleLineSource(path, kind, quota + 1, max_bytes, header_reader,
                             limits.bytes_per_file)
  records = source.read_records(path, OffsetRangeTracker(0, OffsetRangeTracker.OFFSET_INFINITY))
  try:
    chunk = next(records, None)
  finally:
    records.close()
  sample = FileSample(path, kind, metadata.size_in_bytes, [])
  reader = source.reader
  if chunk is None:  # no line at all, or none within the budget (a huge CSV header)
    sample.count = 0 if reader is None or not reader.hit else None
    return sample
  if len(chunk) > quota:  # the file goes on
    sample.span = (quota, chunk.positions[0], chunk.positions[quota])
    _drop_last(chunk)
  elif chunk.file_errors or reader is None or not reader.hit:
    sample.count = len(chunk)  # read to its end, or as far as the run reads it
    if len(chunk) and reader is not None and not chunk.file_errors:
      sample.span = (len(chunk), chunk.positions[0], reader.position)
  else:  # cut by the byte budget
    end = reader.position
    if len(chunk) and reader.last != b'\n':  # the last line was cut
      row = len(chunk) - 1
      if row in chunk.unread_sizes:  # too large anyway: its size as the run measures it
        size = _cut_line_size(path, reader, chunk.unread_sizes[row], limits)
        if size is None:  # beyond the scan's bounds: what is known, said to be preflight's
          chunk.read_errors[row] = (
              f'the instance is at least {chunk.unread_sizes[row]} bytes (preflight read no '
              f'further), more than --max_instance_bytes ({max_bytes}); it was not read')
        else:
          chunk.unread_sizes[row] = size
          chunk.read_errors[row] = (
              f'the instance is {size} bytes, more than --max_instance_bytes '
              f'({max_bytes}); it was not read')
      else:
        end = chunk.positions[row]
        _drop_last(chunk)
    if len(chunk):
      sample.span = (len(chunk), chunk.positions[0], end)
  sample.instances = len(chunk)
  sample.chunks = [chunk] if len(chunk) or chunk.file_errors or chunk.blank_lines else []
  return sample


def _cut_line_size(path: str, reader, known: int, limits) -> Optional[int]:
  """The size of a line the byte budget cut (`known` bytes of it read, up
  to `reader.position`), counted as this reader counts it (without its line
  feed and one carriage return before it): its end looked for without
  keeping its bytes. None beyond `limits.line_scan_bytes` or
  `limits.line_scan_seconds`, or where the file cannot be read on."""
  deadline = time.monotonic() + limits.line_scan_seconds
  most = limits.line_scan_bytes
  size = known + (reader.last == b'\r')  # the carriage return it left out, if last
  last = reader.last
  try:
    with open_input(path) as f:
      f.seek(reader.position)
      scanned = 0
      while True:
        if scanned >= most or time.monotonic() > deadline:
          return None
        block = f.read(min(BLOCK_SIZE, most - scanned))
        if not block:  # the last line, without a line feed
          break
        end = block.find(b'\n')
        if end >= 0:
          size += end
          last = block[end - 1:end] if end else last
          break
        size += len(block)
        scanned += len(block)
        last = block[-1:]
  except Exception:  # pylint: disable=broad-except  (the run says what it finds)
    return None
  return size - (last == b'\r')
