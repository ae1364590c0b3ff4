"""Work units: what the job reads, scores and commits as one.

A unit is one byte range of an uncompressed JSON Lines or CSV file (about
`range_size` bytes), or one whole file of another format or compression.
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


@dataclasses.dataclass(frozen=True)
class Unit:
  kind: str  # input format
  path: str
  size: int  # the file's size when planned
  start: int
  stop: int  # WHOLE: the file from `start` to its end
  error: str = ''  # a file that cannot be read as one (a pipe): its reason

  @property
  def id(self) -> str:
    """A name for the unit's output files: the same for the same file and
    range in every run."""
    digest = hashlib.sha1(self.path.encode('utf-8', 'surrogateescape')).hexdigest()[:16]
    return f'u{digest}-{self.start:013d}'


def plan(files_by_format: dict, range_size: dict, unreadable=()) -> list:
  """The units of a job's files: `range_size` gives, per splittable format,
  the bytes per range; other formats, and compressed files, are whole units.
  `unreadable`: (path, kind, reason) of files that are not regular files."""
  units = []
  for kind, files in sorted(files_by_format.items()):
    size_of_range = range_size.get(kind)
    for metadata in files:
      size = metadata.size_in_bytes or 0
      whole = (not size_of_range or CompressionTypes.detect_compression_type(metadata.path)
               != CompressionTypes.UNCOMPRESSED)
      if whole:
        units.append(Unit(kind, metadata.path, size, 0, WHOLE))
        continue
      for offsets in OffsetRange(0, size).split(size_of_range):
        units.append(Unit(kind, metadata.path, size, offsets.start, offsets.stop))
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
    _report_lineage(unit.path)
    end, last = {'records': 0, 'blank_lines': 0}, None
    chunks = self._formats[unit.kind].read_unit(
        FileMetadata(unit.path, unit.size), OffsetRange(unit.start, unit.stop))
    for chunk in chunks:
      if last is not None:
        yield last
      end['records'] += len(chunk) + len(chunk.file_errors)
      end['blank_lines'] += chunk.blank_lines
      last = self._tagged(chunk, unit)
    if last is None:  # a range that holds no line start: nothing to write, but done
      last = self._tagged(RawChunk([(unit.path, 0)], [], Lines(), kind=JSONL), unit)
    yield self._tagged(last, unit, end)

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
