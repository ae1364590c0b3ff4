"""The columnar line reader (transforms/read/lines.py: scan_lines, _read_blocks)
against its definition (split_lines, read one line at a time:
LineChunkSource(..., by_line=True)), on hostile files, random byte ranges
and dynamic splits."""
import gzip
import os
import tempfile

import numpy as np
from apache_beam.io.range_trackers import OffsetRangeTracker
from hypothesis import Phase, given, settings, strategies as st

from tf_batch_predict.transforms.read import lines as lines_module
from tf_batch_predict.transforms.read.lines import LineChunkSource
from tf_batch_predict.transforms.records import Lines, RawChunk

SETTINGS = settings(database=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
                    deadline=None, max_examples=300)
BOM = b'\xef\xbb\xbf'
TOKENS = [b' ', b'\t', b'\r', b'a', b'{}', b'"x"', b',', b'1', b'\xef', BOM]
SEPARATORS = [b'\n', b'\r\n', b'\r\r\n', b'\n\n', b' \n', b'\r \t\n']


@st.composite
def hostile_files(draw):
  """(content, max_bytes, block_size): CRLF, lone CRs, blank lines of
  spaces, tabs and CRs, a BOM, no final line feed, lines over max_bytes,
  lines of exactly the block size."""
  max_bytes = draw(st.integers(1, 24))
  block_size = draw(st.integers(1, 40))
  line = st.one_of(
      st.lists(st.sampled_from(TOKENS), max_size=8).map(b''.join),  # blank ones among them
      st.integers(0, 3 * max_bytes + 3).map(lambda n: b'x' * n),
      st.sampled_from([b'y' * block_size, b'y' * (block_size - 1), b'y' * block_size + b'\r',
                       b'y' * max_bytes, b'y' * max_bytes + b'\r', b'y' * (max_bytes + 1),
                       b' ' * (max_bytes + 1), b'\r' * (max_bytes + 2)]))
  lines = draw(st.lists(st.tuples(line, st.sampled_from(SEPARATORS)), max_size=60))
  content = b''.join(text + separator for text, separator in lines)
  if lines and draw(st.booleans()):
    content = content[:-len(lines[-1][1])]  # no final line feed
  if draw(st.booleans()):
    content = BOM + content
  return content, max_bytes, block_size


@st.composite
def cuts(draw, content):
  """Where consecutive ranges covering the file meet: some at line
  starts, some anywhere (mid-line, inside a CRLF)."""
  starts = [0] + [i + 1 for i, byte in enumerate(content) if byte == 10]
  points = draw(st.lists(st.one_of(st.sampled_from(starts), st.integers(0, len(content))),
                         max_size=6))
  return sorted(set(points) - {0, len(content)})


def _write(directory, content, compression):
  """The file as read: plain, gzip, or gzip cut short (a truncated stream)."""
  if compression == 'plain':
    path = os.path.join(directory, 'f.jsonl')
    data = content
  else:
    path = os.path.join(directory, 'f.jsonl.gz')
    data = gzip.compress(content)
    if compression == 'truncated':
      data = data[:len(data) * 2 // 3]
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _header(line):
  return (bytes(line),)


def _read(path, start, stop, by_line, max_bytes, block_size, chunk_lines, chunk_bytes,
          header, tracker=None):
  source = LineChunkSource(path, 'csv' if header else 'jsonl', chunk_lines, chunk_bytes,
                           max_bytes, _header if header else None, block_size=block_size,
                           by_line=by_line)
  tracker = tracker or OffsetRangeTracker(start, stop)
  return list(source.read_records(path, tracker))


def _described(chunks):
  return [(c.segments, c.positions, list(c.records), c.blank_lines, c.header, c.read_errors,
           c.unread_sizes, c.file_errors, c.stored_bytes, c.skipped_bytes) for c in chunks]


def _check_lines(lines, positions):
  """The Lines invariant: between two lines there is JSON whitespace with
  at least one line feed; positions are ints, one per line."""
  assert isinstance(lines, Lines)
  assert len(lines) == len(positions)
  assert lines.starts.dtype == np.int64 and lines.ends.dtype == np.int64
  assert all(isinstance(p, int) for p in positions)
  for end, start in zip(lines.ends[:-1].tolist(), lines.starts[1:].tolist()):
    between = lines.buffer[end:start]
    assert b'\n' in between and not between.strip(b' \t\r\n'), between


@SETTINGS
@given(st.data(), hostile_files(), st.sampled_from(['plain', 'plain', 'gzip', 'truncated']),
       st.integers(1, 5), st.integers(1, 60), st.booleans(), st.sampled_from([0, 64]),
       st.sampled_from([0, 2, 1024]), st.sampled_from([0, 4, 1 << 30]))
def test_columnar_reader_is_the_definition(data, file, compression, chunk_lines, chunk_bytes,
                                           header, blank_loop_max, max_gap, find_line_bytes):
  content, max_bytes, block_size = file
  points = data.draw(cuts(content))
  saved = lines_module._BLANK_LOOP_MAX, lines_module._MAX_GAP, lines_module._FIND_LINE_BYTES
  # Both ways of finding blank lines and line feeds; buffers cut at gaps or not.
  (lines_module._BLANK_LOOP_MAX, lines_module._MAX_GAP,
   lines_module._FIND_LINE_BYTES) = blank_loop_max, max_gap, find_line_bytes
  try:
    with tempfile.TemporaryDirectory() as directory:
      path = _write(directory, content, compression)
      stops = points + [len(content)]
      ranges = list(zip([0] + points, stops))
      read = {}
      for by_line in (True, False):
        read[by_line] = [_read(path, start, stop, by_line, max_bytes, block_size, chunk_lines,
                               chunk_bytes, header) for start, stop in ranges]
      whole = _read(path, 0, len(content), True, max_bytes, block_size, 1 << 30, 1 << 30,
                    header)
  finally:
    (lines_module._BLANK_LOOP_MAX, lines_module._MAX_GAP,
     lines_module._FIND_LINE_BYTES) = saved
  for definition, columnar in zip(read[True], read[False]):
    assert _described(columnar) == _described(definition)
    for chunk in columnar:
      assert len(chunk) <= chunk_lines
      _check_lines(chunk.records, chunk.positions)
  if compression != 'truncated':
    # Every line read by exactly one range: the ranges read the whole file.
    ranged = [(p, r) for chunks in read[False] for c in chunks
              for p, r in zip(c.positions, c.records)]
    assert ranged == [(p, r) for c in whole for p, r in zip(c.positions, c.records)]
    assert (sum(c.blank_lines for chunks in read[False] for c in chunks)
            == sum(c.blank_lines for c in whole))
    assert not any(c.file_errors for chunks in read[False] for c in chunks)


def _expected_lines(content, max_bytes):
  """The file's lines, (offset, kept bytes), written out independently of
  the readers for the simple files of the split test (no BOM, no CR)."""
  out, offset = [], 0
  for text in content.split(b'\n'):
    if text.strip(b' \t'):
      out.append((offset, text if len(text) <= max_bytes else text[:8192]))
    offset += len(text) + 1
  return out


class _Tracker(OffsetRangeTracker):
  """Beam's OffsetRangeTracker, on which one split may land between the
  reader's look at the stop and its claim, as one from another thread
  could: from the `race`-th claim on, the first claim that can be raced
  first splits the range between the last claimed position and the
  claimed one (`where`: how far between)."""
  def __init__(self, start, stop, race=None, where=0.0):
    super().__init__(start, stop)
    self.claims, self.race, self.where, self.splits = 0, race, where, []
    self.raced = False

  def split(self, position):
    if self.try_split(position):
      self.splits.append(position)
      return True
    return False

  def try_claim(self, record_start):
    self.claims += 1
    last = self.last_record_start
    if (self.race is not None and not self.raced and self.claims >= self.race and last >= 0
        and record_start > last + 1):
      self.raced = self.split(last + 1 + int(self.where * (record_start - last - 1)))
    return super().try_claim(record_start)


@SETTINGS
@given(st.lists(st.sampled_from([b'{"a":1}', b'', b'  ', b'x' * 30, b'{"bb":[1,2]}', b'1']),
                min_size=1, max_size=60),
       st.integers(1, 64), st.integers(1, 5), st.floats(0, 1),
       st.lists(st.tuples(st.integers(0, 6), st.floats(0, 1)), max_size=3),
       st.one_of(st.none(), st.integers(1, 4)), st.integers(1, 99).map(lambda n: n / 100),
       st.integers(0, 99).map(lambda n: n / 100))
def test_dynamic_split_reads_every_line_once(texts, block_size, chunk_lines, start_fraction,
                                             splits, race, where, late):
  """While a range is read, split it (Beam's OffsetRangeTracker.try_split)
  at positions inside it, between chunks, (`race`) between the reader's
  look at the stop and a claim, and once it is done: the primary's lines and those of readers
  over the residual ranges are the range's lines, once each."""
  content = b'\n'.join(texts)
  max_bytes = 20
  start = int(start_fraction * len(content))
  every = _expected_lines(content, max_bytes)
  # The lines of [start, len): those starting at or after start; the one
  # straddling start belongs to the range before.
  expected = [(o, t) for o, t in every if o >= start and (o == 0 or content[o - 1] == 10)]
  with tempfile.TemporaryDirectory() as directory:
    path = _write(directory, content, 'plain')

    def reader():
      return LineChunkSource(path, 'jsonl', chunk_lines, 1 << 20, max_bytes,
                             block_size=block_size)
    tracker = _Tracker(start, len(content), race, where)
    primary = []
    for i, chunk in enumerate(reader().read_records(path, tracker)):
      primary.append(chunk)
      for after, fraction in splits:
        if after == i:
          tracker.split(start + int(fraction * (len(content) - start)))
    # Splits once the primary is done (as one from another thread may come
    # while it emits what it read): at a line it read (to be refused), and
    # above the last line it read.
    read = [p for c in primary for p in c.positions]
    if read:
      tracker.split(read[int(late * len(read))])
    last = max(tracker.last_record_start, start)
    tracker.split(last + 1 + int(late * max(tracker.stop_position() - last - 1, 0)))
    bounds = sorted(tracker.splits) + [len(content)]
    assert tracker.stop_position() == bounds[0]
    residual = [list(reader().read_records(path, OffsetRangeTracker(low, high)))
                for low, high in zip(bounds, bounds[1:])]
  got = [(p, r) for c in primary for p, r in zip(c.positions, c.records)]
  assert all(p < bounds[0] for p, _ in got)
  for (low, high), chunks in zip(zip(bounds, bounds[1:]), residual):
    lines = [(p, r) for c in chunks for p, r in zip(c.positions, c.records)]
    assert all(low <= p < high for p, _ in lines)
    got += lines
  assert got == expected


def test_merge_keeps_lines_and_lists():
  a = RawChunk([('a', 0)], [0, 5], Lines.of([b'x', b'yy']), blank_lines=1,
               read_errors={1: 'e'})
  b = RawChunk([('b', 0)], [3], Lines.of([b'zzz']), unread_sizes={0: 9})
  merged = a.merge(b)
  assert isinstance(merged.records, Lines)
  assert list(merged.records) == [b'x', b'yy', b'zzz']
  assert merged.positions == [0, 5, 3] and merged.segments == [('a', 0), ('b', 2)]
  assert merged.read_errors == {1: 'e'} and merged.unread_sizes == {2: 9}
  assert merged.blank_lines == 1
  # Buffers holding more than their lines (a block the reader read):
  # merged, only a line feed lies between the two chunks' lines.
  block = Lines(b'zz{"a":1}\r\n\n{"b":2}\nrest', np.array([2, 12]), np.array([9, 19]))
  c = RawChunk([('c', 0)], [2, 13], block).merge(
      RawChunk([('d', 0)], [0], Lines(b'x\n{}\ny', np.array([2]), np.array([4]))))
  assert list(c.records) == [b'{"a":1}', b'{"b":2}', b'{}']
  _check_lines(c.records, c.positions)
  assert c.records.buffer == b'{"a":1}\r\n\n{"b":2}\n{}'
  listed = RawChunk([('c', 0)], [0], [b'q'])
  assert list(listed.merge(b).records) == [b'q', b'zzz']
  assert list(b.merge(listed).records) == [b'zzz', b'q']
  assert listed.merge(listed).records == [b'q', b'q']
