"""The values that flow between the job's steps.

Every step handles a chunk of instances at a time, never one instance per Beam
element: Beam costs about 15 us per element per step, more than decoding or
scoring a small instance does.
"""
import dataclasses
from typing import Optional

import numpy as np

# Namespace of the job's Beam metrics (counters read into the summary).
METRICS_NAMESPACE = 'batch_predict'

# Error categories written in error records.
PARSE = 'parse'    # the record cannot be read (not JSON, not CSV, too large, ...)
SCHEMA = 'schema'  # readable, but not an instance of the signature
MODEL = 'model'    # the model failed on this instance
FILE = 'file'      # a file could not be read (completely): one record per fault
CATEGORIES = (PARSE, SCHEMA, MODEL, FILE)


# Input kinds, and the field that locates an instance within its file.
JSONL, JSON, CSV, TFRECORD, PARQUET = 'jsonl', 'json', 'csv', 'tfrecord', 'parquet'
POSITION_FIELDS = {JSONL: 'offset', CSV: 'offset', JSON: 'index', TFRECORD: 'index',
                   PARQUET: 'index'}


class Lines:
  """The lines of a chunk of JSON Lines or CSV: one buffer, and each line's
  [start, end) in it (without its line break or the carriage return before
  one), so that no step needs a Python object per line. Indexing gives a
  line's bytes, as a list of lines would.

  What lies between two consecutive lines in the buffer (ends[i] to
  starts[i + 1]) is a line break, with blank lines (spaces, tabs, carriage
  returns) and carriage returns around it: JSON whitespace with at least one
  line feed. (A line too large to read is held by its start only: the
  chunk's `read_errors` names it, and what follows it is not so bounded.)
  The buffer may hold more before the first line and after the last (the
  line reader hands on the block it read, other chunks' lines and all):
  only buffer[starts[0]:ends[-1]] is this chunk's.
  """
  __slots__ = ('buffer', 'starts', 'ends')

  def __init__(self, buffer=b'', starts=None, ends=None):
    self.buffer = buffer  # bytes
    self.starts = np.zeros(0, np.int64) if starts is None else starts  # int64
    self.ends = np.zeros(0, np.int64) if ends is None else ends  # int64

  @classmethod
  def of(cls, lines) -> 'Lines':
    """Lines from a list of lines (bytes without line feeds)."""
    sizes = np.fromiter(map(len, lines), np.int64, len(lines))
    starts = np.zeros(len(lines), np.int64)
    np.cumsum(sizes[:-1] + 1, out=starts[1:])
    return cls(b'\n'.join(lines), starts, starts + sizes)

  def __len__(self):
    return len(self.starts)

  def __getitem__(self, row):
    if isinstance(row, slice):
      return Lines(self.buffer, self.starts[row], self.ends[row])
    return self.buffer[self.starts[row]:self.ends[row]]

  def __iter__(self):
    buffer = self.buffer
    return (buffer[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist()))

  def __add__(self, other) -> 'Lines':
    if not isinstance(other, Lines):
      other = Lines.of(list(other))
    if not len(other):
      return self
    if not len(self):
      return other
    # Without what either buffer holds beyond its lines (the rest of a
    # block the reader read), so that only a line feed lies between them.
    buffer, starts, ends = self._trimmed()
    more, more_starts, more_ends = other._trimmed()
    base = len(buffer) + 1
    return Lines(buffer + b'\n' + more, np.concatenate([starts, more_starts + base]),
                 np.concatenate([ends, more_ends + base]))

  def __eq__(self, other):
    return list(self) == list(other)

  def __repr__(self):
    return f'Lines({list(self)!r})'

  @property
  def nbytes(self) -> int:
    return int((self.ends - self.starts).sum()) + 16 * len(self)

  def _trimmed(self, view: bool = False):
    """(buffer, starts, ends) without what the buffer holds before the
    first line and after the last (the rest of a block the reader read);
    `view`: the buffer as a memoryview of these bytes, not a copy."""
    buffer = memoryview(self.buffer) if view else self.buffer
    if len(self) and (self.starts[0] > 0 or self.ends[-1] < len(self.buffer)):
      first, last = int(self.starts[0]), int(self.ends[-1])
      return (buffer[first:last], self.starts - first, self.ends - first)
    return (buffer, self.starts, self.ends)

  def __getstate__(self):
    # Only the bytes of the lines travel.
    return self._trimmed()

  def __setstate__(self, state):
    self.buffer, self.starts, self.ends = state


class TextColumn:
  """Per row, a carried value's JSON text (bytes) or None: a pyarrow binary
  array, indexable as a list of texts would be. A columnar decoder gives
  these so that a columnar formatter can use the array as it is."""
  __slots__ = ('arrow',)

  def __init__(self, arrow):
    self.arrow = arrow  # pyarrow BinaryArray (or LargeBinaryArray)

  def __len__(self):
    return len(self.arrow)

  def __getitem__(self, row):
    return self.arrow[row].as_py()

  def __iter__(self):
    return iter(self.arrow.to_pylist())

  def __eq__(self, other):
    return list(self) == list(other)

  def __repr__(self):
    return f'TextColumn({list(self)!r})'


@dataclasses.dataclass
class RawChunk:
  """Instances read from one or more files of one kind, not yet decoded.

  `records` holds, per kind: JSONL and CSV lines (`Lines`, or a list of
  bytes without line breaks),
  parsed JSON instances (from request files), serialized TFRecord records,
  or one pyarrow RecordBatch (Parquet).
  """
  segments: list  # of (file path, index of the segment's first record)
  positions: list  # per record: byte offset of its line, or its index; None: not needed
  records: object
  blank_lines: int = 0  # blank lines skipped while reading these records
  kind: str = JSONL
  header: Optional[tuple] = None  # CSV column names
  read_errors: dict = dataclasses.field(default_factory=dict)  # record -> reason
  # Faults that stopped reading a file (or a range of it) after these
  # records: (path, reason); each becomes one error record of category FILE.
  file_errors: list = dataclasses.field(default_factory=list)
  # Records too large to read: row -> real size (the record is its start).
  unread_sizes: dict = dataclasses.field(default_factory=dict)
  # The stored (compressed) input bytes these records account for: read,
  # and, after a file fault, the rest of the file or range that could not
  # be read. Decode counts them for the progress output (transforms/
  # progress.py), so that its percent follows the work done. A chunk may
  # carry bytes only (the end of a range after its last full chunk).
  stored_bytes: int = 0
  skipped_bytes: int = 0
  # The work units (transforms/read/units.py) these records come from:
  # (first row, first of `file_errors`, unit id), in row order; and for each
  # unit whose last chunk this is, its totals: `records`, the output records
  # it makes (its instances and file errors), and `blank_lines`.
  units: list = dataclasses.field(default_factory=list)
  unit_ends: dict = dataclasses.field(default_factory=dict)

  def __len__(self):
    return len(self.positions)

  @property
  def position_field(self) -> str:
    return POSITION_FIELDS[self.kind]

  def path_of(self, row: int) -> str:
    path = self.segments[0][0]
    for segment_path, first_row in self.segments:
      if first_row > row:
        break
      path = segment_path
    return path

  def can_merge(self, other: 'RawChunk') -> bool:
    return (self.kind == other.kind and self.header == other.header
            and self.kind != PARQUET)

  def merge(self, other: 'RawChunk') -> 'RawChunk':
    base = len(self)
    return RawChunk(
        self.segments + [(p, base + first) for p, first in other.segments],
        self.positions + other.positions, _concatenated(self.records, other.records),
        self.blank_lines + other.blank_lines, self.kind, self.header,
        {**self.read_errors, **{base + r: e for r, e in other.read_errors.items()}},
        self.file_errors + other.file_errors,
        {**self.unread_sizes, **{base + r: n for r, n in other.unread_sizes.items()}},
        self.stored_bytes + other.stored_bytes, self.skipped_bytes + other.skipped_bytes,
        self.units + [(base + row, len(self.file_errors) + error, unit)
                      for row, error, unit in other.units],
        {**self.unit_ends, **other.unit_ends})

  def unit_spans(self) -> list:
    """(unit id, first row, end row, first file error, end file error) of
    each unit these records come from, in row order."""
    bounds = self.units + [(len(self), len(self.file_errors), None)]
    return [(unit, row, bounds[i + 1][0], error, bounds[i + 1][1])
            for i, (row, error, unit) in enumerate(self.units)]


def _concatenated(records, more):
  """Two chunks' records as one: Lines where either is Lines (their
  `__add__`), else a list."""
  if isinstance(more, Lines) and not isinstance(records, Lines):
    records = Lines.of(list(records))
  return records + more


@dataclasses.dataclass
class InstanceError:
  row: int  # index into the chunk's lines
  category: str
  message: str


@dataclasses.dataclass
class FeedGroup:
  """Rows of a chunk whose inputs have the same shapes, stacked per input."""
  rows: list
  feeds: dict  # input name -> numpy array, first dimension len(rows)


@dataclasses.dataclass
class InstanceBatch:
  """A decoded chunk: what the model is fed, and what rides along to the
  output (key and passthrough fields, the raw record for errors)."""
  chunk: RawChunk
  # Carried field (key first, then passthrough) -> per row, the JSON text
  # the value is written as (convert.carried_text), None where unknown.
  carried: dict
  groups: list  # of FeedGroup
  errors: list  # of InstanceError
  fast_rows: int = 0  # rows a fast path decoded (the rest: the definition)

  def __len__(self):
    # RunInference counts this as the number of inferences.
    return sum(len(g.rows) for g in self.groups)


@dataclasses.dataclass
class ScoredBatch:
  batch: InstanceBatch
  results: list  # of (rows, {output name: numpy array, first dim len(rows)})
  errors: list  # of InstanceError: decode and model errors together


def approximate_size(value) -> int:
  """A record's size in bytes, about, without pickling it (Beam samples
  element sizes for its metrics)."""
  batch = getattr(value, 'batch', value)
  chunk = getattr(batch, 'chunk', batch)
  if chunk.kind == PARQUET:
    return chunk.records.nbytes
  if chunk.kind == JSON:
    return 64 * len(chunk)
  if isinstance(chunk.records, Lines):
    return chunk.records.nbytes
  return sum(len(record) for record in chunk.records) + 16 * len(chunk)
