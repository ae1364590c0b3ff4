"""The input formats, and reading instances of every format present.

The format of each file is known before the pipeline starts (by extension,
or `--format`). Each format's reading and meaning live in its own module
(input_*.py), and so does its sample (`sample_file`: the beginning of a
file, for preflight); units.py reads every format's work units.
"""
from tf_batch_predict.transforms.read.input_csv import CsvFormat
from tf_batch_predict.transforms.read.input_json import JsonRequestFormat
from tf_batch_predict.transforms.read.input_jsonl import JsonLinesFormat
from tf_batch_predict.transforms.read.input_parquet import ParquetFormat
from tf_batch_predict.transforms.read.input_tfrecord import TFRecordFormat
from tf_batch_predict.transforms.read.sampling import FileSample
from tf_batch_predict.transforms.records import CSV, JSON, JSONL, PARQUET, TFRECORD

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
                  parse_threads=None) -> dict:
  """Kind -> InputFormat, for a job's signature and options.

  `parse_threads`: threads a worker's JSON
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
  return formats


def sample_file(kind, metadata, quota: int, formats: dict, limits) -> FileSample:
  """The first `quota` instances of one file of format `kind` (`formats`:
  from `input_formats`), read by that format's own reader within `limits`
  (sampling.SampleLimits)."""
  return formats[kind].sample(metadata, quota, limits)
