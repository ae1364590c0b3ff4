"""Read JSON Lines and CSV files as chunks of raw lines.

Beam's `ReadFromText` emits one element per line, and Beam costs about 15 us
per element per step: more than decoding a small instance. This reader emits
chunks of up to `chunk_lines` lines or `chunk_bytes` bytes, each line with its
byte offset, so every later step pays Beam's cost once per chunk, and the
decoder gets enough text per call to parse it on several threads. Matching, splitting files into
byte ranges, gzip and the reshuffle that spreads ranges over workers are
Beam's own (`ReadAllFiles`); only the line splitting is ours.
"""
import csv
import functools

import apache_beam as beam
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressionTypes

from transforms.records import CSV, RawChunk

_BLOCK_SIZE = 1 << 20
DESIRED_RANGE_SIZE = 64 << 20
CHUNK_LINES = 4096
CHUNK_BYTES = 4 << 20


def read_csv_header(line: bytes) -> tuple:
  return tuple(next(csv.reader([line.decode('utf-8-sig').rstrip('\r\n')])))


class LineChunkSource(filebasedsource.FileBasedSource):
  """A file of lines (JSON Lines, or CSV with a header row), read as RawChunks.

  Positions are byte offsets of line starts in the uncompressed content; a
  line belongs to the range in which it starts. Every line is claimed from
  the range tracker, so dynamic splitting stays exact. (CSV fields with
  embedded line breaks are therefore not supported.)
  """
  def __init__(self, path: str, kind: str, chunk_lines: int, chunk_bytes: int):
    super().__init__(path, compression_type=CompressionTypes.AUTO, validate=False)
    self._kind = kind
    self._chunk_lines = chunk_lines
    self._chunk_bytes = chunk_bytes

  def _new_chunk(self, file_name, header):
    return RawChunk([(file_name, 0)], [], [], kind=self._kind, header=header)

  def read_records(self, file_name, range_tracker):
    start = range_tracker.start_position()
    with self.open_file(file_name) as f:
      header = read_csv_header(f.readline()) if self._kind == CSV else None
      chunk = self._new_chunk(file_name, header)
      chunk_bytes = 0
      if header is not None and start == 0:
        f.seek(0)  # the header line is claimed and skipped below
      if start > 0:
        # The line that straddles `start` belongs to the previous range.
        f.seek(start - 1)
        position = start - 1 + len(f.readline())
      else:
        position = 0
      pending = b''
      at_end = False
      while not at_end:
        block = f.read(_BLOCK_SIZE)
        if block:
          lines = (pending + block if pending else block).split(b'\n')
          pending = lines.pop()
        else:
          lines = [pending] if pending else []
          at_end = True
        for line in lines:
          if not range_tracker.try_claim(position):
            at_end = True
            break
          line_start = position
          position += len(line) + 1
          if line.endswith(b'\r'):
            line = line[:-1]
          if header is not None and line_start == 0:
            continue  # the CSV header row
          if not line or line.isspace():
            chunk.blank_lines += 1
            continue
          chunk.positions.append(line_start)
          chunk.records.append(line)
          chunk_bytes += len(line)
          if len(chunk) >= self._chunk_lines or chunk_bytes >= self._chunk_bytes:
            yield chunk
            chunk = self._new_chunk(file_name, header)
            chunk_bytes = 0
    if len(chunk) or chunk.blank_lines:
      yield chunk


def _chunk_source(kind, chunk_lines, chunk_bytes, path):
  return LineChunkSource(path, kind, chunk_lines, chunk_bytes)


class ReadLineChunks(beam.PTransform):
  """FileMetadata of JSONL or CSV files (`kind`) -> RawChunks of lines."""
  def __init__(self, kind: str, chunk_lines: int = CHUNK_LINES,
               chunk_bytes: int = CHUNK_BYTES,
               desired_range_size: int = DESIRED_RANGE_SIZE):
    super().__init__()
    self._kind = kind
    self._chunk_lines = chunk_lines
    self._chunk_bytes = chunk_bytes
    self._desired_range_size = desired_range_size

  def expand(self, files):
    return files | filebasedsource.ReadAllFiles(
        splittable=True,
        compression_type=CompressionTypes.AUTO,
        desired_bundle_size=self._desired_range_size,
        min_bundle_size=0,
        source_from_file=functools.partial(
            _chunk_source, self._kind, self._chunk_lines, self._chunk_bytes))
