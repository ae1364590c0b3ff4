"""Work units: what the job reads, scores and commits as one.

A unit is one byte range of an uncompressed JSON Lines or CSV file (about
`range_size` bytes), or one whole file of another format or compression, or
a group of small files of one format (under SMALL_FILE_BYTES each, together
up to `range_size` and GROUP_FILES files): a unit's records are written to
files of its own, and thousands of tiny input files should not make as many
output files.
The units are planned before the pipeline starts, from the matched files'
sizes, so that a run and its resumption (pipeline/resume.py) cut the input
the same way. Each unit is read by one call of `ReadUnits.process`; its
chunks carry the unit's id, and its last chunk the number of output records
the unit makes, so that the writer (transforms/write/units.py) knows when a
unit's records are all written and can commit them as a whole.

Units are byte ranges rather than whole files so that one large file is
also resumed part-way, and shared among workers as Beam's own
`ReadAllFiles` shares it. Unlike `ReadAllFiles`, each file is read by its
exact name: Beam matches the name again as a pattern (`br[1].jsonl` would be
read as `br1.jsonl`, a name holding `\\` not at all).
"""
import dataclasses
import hashlib

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.range_trackers import OffsetRangeTracker
from apache_beam.io.restriction_trackers import OffsetRange

from tf_batch_predict.transforms.file_patterns import encodable
from tf_batch_predict.transforms.records import JSONL, Lines, RawChunk

WHOLE = OffsetRangeTracker.OFFSET_INFINITY
SMALL_FILE_BYTES = 256 << 10  # files under this size are grouped into units...
GROUP_FILES = 1000  # ...of at most this many files


@dataclasses.dataclass(frozen=True)
class Unit:
  kind: str  # input format
  path: str
  size: int  # the file's size when planned
  start: int
  stop: int  # WHOLE: the file from `start` to its end
  error: str = ''  # a file that cannot be read as one (a pipe): its reason
  more: tuple = ()  # (path, size) of more whole files of a group, read after this one

  @property
  def files(self) -> tuple:
    """(path, size) of the unit's files."""
    return ((self.path, self.size),) + tuple(self.more)

  @property
  def id(self) -> str:
    """A name for the unit's output files: the same for the same files and
    range in every run."""
    names = '\0'.join(path for path, _ in self.files)
    digest = hashlib.sha1(names.encode('utf-8', 'surrogateescape')).hexdigest()[:16]
    return f'u{digest}-{self.start:013d}'

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, fields: dict) -> 'Unit':
    fields = {f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields}
    fields['more'] = tuple(tuple(f) for f in fields.get('more', ()))
    return cls(**fields)


def plan(files_by_format: dict, range_size: dict, unreadable=(),
         group_bytes: int = 64 << 20) -> list:
  """The units of a job's files: `range_size` gives, per splittable format,
  the bytes per range; other formats, and compressed files, are whole units;
  files under SMALL_FILE_BYTES are grouped (in path order, up to
  `group_bytes`, or the format's range size, and GROUP_FILES files).
  `unreadable`: (path, kind, reason) of files that are not regular files."""
  units = []
  for kind, files in sorted(files_by_format.items()):
    size_of_range = range_size.get(kind)
    group, group_size = [], 0
    limit = size_of_range or group_bytes

    def close_group():
      if group:
        (first, first_size), more = group[0], tuple(group[1:])
        units.append(Unit(kind, first, first_size, 0, WHOLE, more=more))
      group.clear()

    for metadata in sorted(files, key=lambda m: m.path):
      size = metadata.size_in_bytes or 0
      if size < SMALL_FILE_BYTES:
        if group and (group_size + size > limit or len(group) >= GROUP_FILES):
          close_group()
          group_size = 0
        group.append((metadata.path, size))
        group_size += size
        continue
      whole = (not size_of_range or CompressionTypes.detect_compression_type(metadata.path)
               != CompressionTypes.UNCOMPRESSED)
      if whole:
        units.append(Unit(kind, metadata.path, size, 0, WHOLE))
        continue
      for offsets in OffsetRange(0, size).split(size_of_range):
        units.append(Unit(kind, metadata.path, size, offsets.start, offsets.stop))
    close_group()
  units += [Unit(kind, path, 0, 0, WHOLE, reason) for path, kind, reason in unreadable]
  return units


def _report_lineage(path: str) -> None:
  """Beam's data lineage (Dataflow shows it); Beam's metrics hold UTF-8
  only, so a local name that is not UTF-8 is left out of it."""
  if encodable(path):
    FileSystems.report_source_lineage(path)


class ReadUnits(beam.DoFn):
  """Unit -> the RawChunks of its records, read by its format's reader
  (`formats`: kind -> InputFormat); every chunk names the unit, and the
  last one how many output records the unit makes."""
  def __init__(self, formats: dict):
    self._formats = formats

  def process(self, unit: Unit):
    if unit.error:
      chunk = RawChunk([(unit.path, 0)], [], [], kind=unit.kind,
                       file_errors=[(unit.path, unit.error)])
      yield self._tagged(chunk, unit, {'records': 1, 'blank_lines': 0})
      return
    end, last = {'records': 0, 'blank_lines': 0}, None
    for chunk in self._chunks(unit):
      if last is not None:
        yield last
      end['records'] += len(chunk) + len(chunk.file_errors)
      end['blank_lines'] += chunk.blank_lines
      last = self._tagged(chunk, unit)
    if last is None:  # a range that holds no line start: nothing to write, but done
      last = self._tagged(RawChunk([(unit.path, 0)], [], Lines(), kind=JSONL), unit)
    yield self._tagged(last, unit, end)

  def _chunks(self, unit: Unit):
    read = self._formats[unit.kind].read_unit
    for i, (path, size) in enumerate(unit.files):
      _report_lineage(path)
      offsets = OffsetRange(unit.start, unit.stop) if i == 0 else OffsetRange(0, WHOLE)
      yield from read(FileMetadata(path, size), offsets)

  @staticmethod
  def _tagged(chunk: RawChunk, unit: Unit, end: dict = None) -> RawChunk:
    chunk.units = [(0, 0, unit.id)]
    if end is not None:
      chunk.unit_ends = {unit.id: end}
    return chunk


class ReadInstances(beam.PTransform):
  """[Unit] -> RawChunks of every unit, the units spread over the workers."""
  def __init__(self, units: list, formats: dict):
    super().__init__()
    self._units = units
    self._formats = formats

  def expand(self, pbegin):
    return (pbegin
            | 'Units' >> beam.Create(self._units, reshuffle=False)
            | 'SpreadUnits' >> beam.Reshuffle()
            | 'ReadUnits' >> beam.ParDo(ReadUnits(self._formats)).with_output_types(RawChunk))
