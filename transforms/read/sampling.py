"""Reading the beginning of an input file, for a sample (batch-predict
preflight): what every format's sampler shares.

Each format samples its own files next to its reading (`sample` of the
input_*.py formats, dispatched by formats.py `sample_file`), through the
reader the run uses; this module holds the byte budget they read within
(`ByteBudget`), the bounds a caller sets (`SampleLimits`) and what one
file's sample is (`FileSample`).
"""
import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class SampleLimits:
  """How much of a file a sampler reads (the caller's choice)."""
  # Decompressed bytes read from one file at most (a huge line or record
  # is cut there: the file is then taken as going on).
  bytes_per_file: int
  # A line longer than --max_instance_bytes that `bytes_per_file` cuts:
  # its end is looked for (not kept), this far and this long at most.
  line_scan_bytes: int
  line_scan_seconds: float
  # A request file is parsed whole up to this many bytes (decompressed),
  # else sampled from its start; a gzip one is decompressed on (not kept)
  # to learn its size, this long at most.
  request_whole_bytes: int
  request_scan_seconds: float


class ByteBudget:
  """A file object giving at most `limit` bytes of `raw`; `hit` when more
  was there, `last` the last byte given."""
  def __init__(self, raw, limit: int):
    self._raw = raw
    self._limit = limit
    self.position = 0
    self.hit = False
    self.eof = False
    self.last = b''

  def _take(self, reader, size):
    left = self._limit - self.position
    if left <= 0:
      return b''
    if size is None or size < 0 or size > left:
      size = left
    data = reader(size)
    if not data and size:
      self.eof = True
    self.position += len(data)
    if data:
      self.last = data[-1:]
    if self.position >= self._limit:  # the budget is spent: was there more?
      try:
        self.hit = bool(self._raw.read(1))
      except Exception:  # pylint: disable=broad-except  (beyond the sample)
        self.hit = True
      self.eof = not self.hit
    return data

  def read(self, size=-1):
    return self._take(self._raw.read, size)

  def read1(self, size=-1):
    return self._take(getattr(self._raw, 'read1', self._raw.read), size)

  def seek(self, offset, whence=0):
    result = self._raw.seek(offset, whence)
    self.position = self._raw.tell()
    self.hit = self.eof = False
    return result

  def tell(self):
    return self.position

  def close(self):
    self._raw.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@dataclasses.dataclass
class FileSample:
  """What was read of one file."""
  path: str
  kind: str
  size: int  # bytes on disk
  chunks: list  # RawChunks: the sampled records, file errors
  instances: int = 0  # sampled instances
  count: Optional[int] = None  # the file's instances, where known exactly
  # (instances, the decompressed byte offsets where the first starts and
  # where what follows them starts), for bytes per instance; the end None:
  # the whole file (request files); None where not measured.
  span: Optional[tuple] = None
  columns: tuple = ()  # Parquet: every column of the file
  decompressed: Optional[int] = None  # gzip: its decompressed size, where read
  # A request file larger than SampleLimits.request_whole_bytes: 'start'
  # (sampled from its start), 'not sampled' (a body whose instances its
  # start cannot tell).
  partial: Optional[str] = None


def is_gzip(path: str) -> bool:
  return path.lower().endswith('.gz')


def first_records(chunks: list, quota: int) -> list:
  """The first `quota` records of a file's chunks (and its file errors)."""
  kept, taken = [], 0
  for chunk in chunks:
    if taken >= quota:
      if chunk.file_errors:
        kept.append(dataclasses.replace(chunk, positions=[], records=chunk.records[:0],
                                        read_errors={}, unread_sizes={}))
      continue
    if taken + len(chunk) > quota:
      n = quota - taken
      chunk = dataclasses.replace(
          chunk, positions=chunk.positions[:n], records=chunk.records[:n],
          read_errors={r: e for r, e in chunk.read_errors.items() if r < n},
          unread_sizes={r: s for r, s in chunk.unread_sizes.items() if r < n})
    taken += len(chunk)
    kept.append(chunk)
  return kept
