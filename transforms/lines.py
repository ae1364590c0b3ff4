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
Matching, splitting files into byte ranges, gzip and the reshuffle that
spreads ranges over workers are Beam's own (`ReadAllFiles`); only the line
splitting is ours. Every line is claimed from the range tracker, so dynamic
splitting stays exact. (CSV fields with embedded line breaks are therefore
not supported.)

A fault while reading (a truncated or corrupt gzip stream, a file that
cannot be opened) ends the range with the lines read so far and one file
error that says how far reading got.
"""
import dataclasses
import functools
import gzip

import apache_beam as beam
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.range_trackers import OffsetRangeTracker

from transforms.records import RawChunk

BLOCK_SIZE = 1 << 20
DESIRED_RANGE_SIZE = 64 << 20
CHUNK_LINES = 4096
CHUNK_BYTES = 4 << 20
DEFAULT_MAX_INSTANCE_BYTES = 4 << 20
KEPT_PREFIX_BYTES = 8192  # of a line too large to read, for its error record
_BOM = b'\xef\xbb\xbf'
_BLANK = b' \t\r'


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


def split_lines(f, start: int, max_bytes: int):
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
    block += read(BLOCK_SIZE)
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
  return offset, data[:KEPT_PREFIX_BYTES], size


@dataclasses.dataclass
class _Progress:
  chunk: RawChunk
  instances: int = 0  # lines read into chunks (not blank)
  position: int = 0
  counted: int = 0  # stored bytes of the range recorded on chunks (RawChunk.stored_bytes)
  file: object = None  # the stored file (gzip: the compressed one), once open


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
  try:
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
  except Exception:  # pylint: disable=broad-except  (progress never fails a read)
    return None


class LineChunkSource(filebasedsource.FileBasedSource):
  """A file of lines (JSON Lines, or CSV with a header row), read as
  RawChunks. Positions are byte offsets of line starts in the uncompressed
  content; a line belongs to the range in which it starts."""
  def __init__(self, path: str, kind: str, chunk_lines: int, chunk_bytes: int,
               max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES, header_reader=None):
    super().__init__(path, compression_type=CompressionTypes.AUTO, validate=False)
    self._kind = kind
    self._chunk_lines = chunk_lines
    self._chunk_bytes = chunk_bytes
    self._max_bytes = max_instance_bytes
    self._header_reader = header_reader  # CSV: first line -> column names

  def _new_chunk(self, file_name, header):
    return RawChunk([(file_name, 0)], [], [], kind=self._kind, header=header)

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
        first = next(split_lines(f, 0, self._max_bytes), None)
        header = self._header_reader(first[1] if first else b'')
        f.seek(0)
      chunk = progress.chunk = self._new_chunk(file_name, header)
      chunk_bytes = 0
      for offset, line, size in split_lines(f, start, self._max_bytes):
        if not range_tracker.try_claim(offset):
          break
        progress.position = offset
        if offset == 0 and header is not None:
          continue  # the CSV header row
        if not line.strip(_BLANK) and size <= self._max_bytes:
          chunk.blank_lines += 1
          continue
        if size > self._max_bytes:
          chunk.unread_sizes[len(chunk)] = size
          chunk.read_errors[len(chunk)] = (
              f'the instance is {size} bytes, more than --max_instance_bytes '
              f'({self._max_bytes}); it was not read')
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
      progress.counted = count_read(chunk, progress.counted, stop if stop < (
          OffsetRangeTracker.OFFSET_INFINITY) else stored_position(f))
    if len(chunk) or chunk.blank_lines or chunk.stored_bytes:
      yield chunk


def _chunk_source(kind, chunk_lines, chunk_bytes, max_instance_bytes, header_reader, path):
  return LineChunkSource(path, kind, chunk_lines, chunk_bytes, max_instance_bytes,
                         header_reader)


class ReadLineChunks(beam.PTransform):
  """FileMetadata of JSONL or CSV files (`kind`) -> RawChunks of lines."""
  def __init__(self, kind: str, max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
               header_reader=None, chunk_lines: int = CHUNK_LINES,
               chunk_bytes: int = CHUNK_BYTES,
               desired_range_size: int = DESIRED_RANGE_SIZE):
    super().__init__()
    self._source = functools.partial(_chunk_source, kind, chunk_lines, chunk_bytes,
                                     max_instance_bytes, header_reader)
    self._desired_range_size = desired_range_size

  def expand(self, files):
    return files | filebasedsource.ReadAllFiles(
        splittable=True,
        compression_type=CompressionTypes.AUTO,
        desired_bundle_size=self._desired_range_size,
        min_bundle_size=0,
        source_from_file=self._source)
