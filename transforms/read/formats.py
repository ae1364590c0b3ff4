"""The input formats, and reading instances of every format present.

The format of each file is known before the pipeline starts (by extension,
or `--format`), so the graph holds one reader per format present, flattened.
Each format's reading and meaning live in its own module (input_*.py), and
so does its sample (`sample_file`: the beginning of a file, for preflight).
"""
import apache_beam as beam

from tf_batch_predict.transforms.read.input_csv import CsvFormat
from tf_batch_predict.transforms.read.input_json import JsonRequestFormat
from tf_batch_predict.transforms.read.input_jsonl import JsonLinesFormat
from tf_batch_predict.transforms.read.input_parquet import ParquetFormat
from tf_batch_predict.transforms.read.input_tfrecord import TFRecordFormat
from tf_batch_predict.transforms.read.sampling import FileSample
from tf_batch_predict.transforms.records import CSV, JSON, JSONL, PARQUET, RawChunk, TFRECORD

FORMATS = (JSONL, JSON, CSV, TFRECORD, PARQUET)
# Formats whose files are split into byte ranges read in parallel.
SPLITTABLE_FORMATS = (JSONL, CSV)
_EXTENSIONS = {'.jsonl': JSONL, '.ndjson': JSONL, '.json': JSON, '.csv': CSV,
               '.tfrecord': TFRECORD, '.tfrecords': TFRECORD, '.parquet': PARQUET}
_COMPRESSION_SUFFIXES = ('.gz',)


def detect_format(path: str):
  """The format a file's extension names (compression suffix aside), or None."""
  name = path.lower()
  for suffix in _COMPRESSION_SUFFIXES:
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  dot = name.rfind('.')
  return _EXTENSIONS.get(name[dot:]) if dot >= 0 else None


def input_formats(signature, key_field, passthrough_fields, max_instance_bytes,
                  range_size=None, parse_threads=None) -> dict:
  """Kind -> InputFormat, for a job's signature and options.

  `range_size`: bytes per byte range that the text formats (JSON Lines, CSV)
  split files into, which decides how evenly Beam's local runner shares them
  among its workers (pipeline/graph.py); None: the readers' default. The
  other formats read whole files. `parse_threads`: threads a worker's JSON
  Lines parser may use (1 where local worker processes share the cores;
  None: all).
  """
  parquet_columns = None if signature.takes_examples else (
      [s.name for s in signature.inputs] + ([key_field] if key_field else [])
      + list(passthrough_fields))
  formats = {JSONL: JsonLinesFormat(max_instance_bytes),
             JSON: JsonRequestFormat(signature, max_instance_bytes),
             CSV: CsvFormat(max_instance_bytes),
             TFRECORD: TFRecordFormat(max_instance_bytes),
             PARQUET: ParquetFormat(parquet_columns)}
  formats[JSONL].set_parse_threads(parse_threads)
  if range_size:
    for kind in SPLITTABLE_FORMATS:
      formats[kind].range_size = range_size
  return formats


def sample_file(kind, metadata, quota: int, formats: dict, limits) -> FileSample:
  """The first `quota` instances of one file of format `kind` (`formats`:
  from `input_formats`), read by that format's own reader within `limits`
  (sampling.SampleLimits)."""
  return formats[kind].sample(metadata, quota, limits)


class ReadInstances(beam.PTransform):
  """{format: [FileMetadata]} -> RawChunks of every file."""
  def __init__(self, files_by_format: dict, formats: dict, unreadable_files=()):
    super().__init__()
    self._files_by_format = files_by_format
    self._formats = formats
    self._unreadable = unreadable_files  # (path, kind, reason), found before the run

  def expand(self, pbegin):
    chunks = [
        pbegin
        | f'{kind.capitalize()}Files' >> beam.Create(files)
        | f'Read{kind.capitalize()}' >> self._formats[kind].read_transform()
        for kind, files in sorted(self._files_by_format.items())]
    if self._unreadable:
      chunks.append(pbegin | 'UnreadableFiles' >> beam.Create([
          RawChunk([(path, 0)], [], [], kind=kind, file_errors=[(path, reason)])
          for path, kind, reason in self._unreadable]).with_output_types(RawChunk))
    return chunks | 'AllChunks' >> beam.Flatten().with_output_types(RawChunk)
