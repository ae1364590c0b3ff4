"""Read instances of every supported format as RawChunks.

The format of each file is known before the pipeline starts (by extension, or
`--format`), so the graph holds one reader per format present, flattened.
"""
import apache_beam as beam

from transforms.read_json import ReadJsonRequests
from transforms.read_lines import ReadLineChunks
from transforms.read_parquet import ReadParquetBatches
from transforms.read_tfrecord import ReadTFRecords
from transforms.records import CSV, JSON, JSONL, PARQUET, RawChunk, TFRECORD

FORMATS = (JSONL, JSON, CSV, TFRECORD, PARQUET)
_EXTENSIONS = {'.jsonl': JSONL, '.ndjson': JSONL, '.json': JSON, '.csv': CSV,
               '.tfrecord': TFRECORD, '.tfrecords': TFRECORD, '.parquet': PARQUET}
_COMPRESSION_SUFFIXES = ('.gz', '.gzip')


def detect_format(path: str):
  """The format a file's extension names (compression suffix aside), or None."""
  name = path.lower()
  for suffix in _COMPRESSION_SUFFIXES:
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  dot = name.rfind('.')
  return _EXTENSIONS.get(name[dot:]) if dot >= 0 else None


class ReadInstances(beam.PTransform):
  """{format: [FileMetadata]} -> RawChunks of every file."""
  def __init__(self, files_by_format: dict, signature_name: str, parquet_columns=None):
    super().__init__()
    self._files_by_format = files_by_format
    self._signature_name = signature_name
    self._parquet_columns = parquet_columns

  def _reader(self, kind):
    if kind in (JSONL, CSV):
      return ReadLineChunks(kind)
    if kind == JSON:
      return beam.Reshuffle() | beam.ParDo(ReadJsonRequests(self._signature_name))
    if kind == TFRECORD:
      return beam.Reshuffle() | beam.ParDo(ReadTFRecords())
    return beam.Reshuffle() | beam.ParDo(ReadParquetBatches(self._parquet_columns))

  def expand(self, pbegin):
    chunks = [
        pbegin
        | f'{kind.capitalize()}Files' >> beam.Create(files)
        | f'Read{kind.capitalize()}' >> self._reader(kind).with_output_types(RawChunk)
        for kind, files in sorted(self._files_by_format.items())]
    return chunks | 'AllChunks' >> beam.Flatten().with_output_types(RawChunk)
