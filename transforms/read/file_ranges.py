"""Reading matched files in byte ranges, each by its exact name.

What Beam's `ReadAllFiles` does (split each file into ranges, reshuffle them
over the workers, read each with a FileBasedSource's `read_records`), except
that Beam builds a FileBasedSource from the file's path and matches that
path again as a pattern: `br[1].jsonl` was read as `br1.jsonl`, a file whose
name holds `\\` not at all. Here `read_records` gets the path itself.
"""
import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.range_trackers import OffsetRangeTracker
from apache_beam.io.restriction_trackers import OffsetRange

from tf_batch_predict.transforms.file_patterns import encodable


def report_lineage(path: str) -> None:
  """Beam's data lineage (Dataflow shows it); Beam's metrics hold UTF-8
  only, so a local name that is not UTF-8 is left out of it."""
  if encodable(path):
    FileSystems.report_source_lineage(path)


class _ExpandIntoRanges(beam.DoFn):
  def __init__(self, desired_range_size: int, min_range_size: int):
    self._desired = desired_range_size
    self._min = min_range_size

  def process(self, metadata):
    report_lineage(metadata.path)
    if CompressionTypes.detect_compression_type(metadata.path) == CompressionTypes.UNCOMPRESSED:
      for offsets in OffsetRange(0, metadata.size_in_bytes).split(self._desired, self._min):
        yield metadata, offsets
    else:  # a compressed stream is read from its start, whole
      yield metadata, OffsetRange(0, OffsetRangeTracker.OFFSET_INFINITY)


class _ReadRange(beam.DoFn):
  def __init__(self, source_from_file):
    self._source_from_file = source_from_file

  def process(self, element):
    metadata, offsets = element
    source = self._source_from_file(metadata.path)
    yield from source.read_records(metadata.path, offsets.new_tracker())


class ReadFileRanges(beam.PTransform):
  """FileMetadata -> the records of `source_from_file(path).read_records`
  over byte ranges of about `desired_range_size` (compressed files whole)."""
  def __init__(self, source_from_file, desired_range_size: int, min_range_size: int = 0):
    super().__init__()
    self._source_from_file = source_from_file
    self._desired = desired_range_size
    self._min = min_range_size

  def expand(self, files):
    return (files
            | 'ExpandIntoRanges' >> beam.ParDo(_ExpandIntoRanges(self._desired, self._min))
            | 'Reshard' >> beam.Reshuffle()
            | 'ReadRange' >> beam.ParDo(_ReadRange(self._source_from_file)))
