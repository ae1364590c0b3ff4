"""Reading a job's outputs back, one record at a time, as Python dicts:
prediction files (JSON Lines, Parquet, TFRecord of tf.Examples) and error
files (JSON Lines), local or in a bucket.

- JSON Lines: each line by the job's own JSON definition
  (json_values.parse_json), so numbers keep their texts (JsonFloat) and
  integers their exact value: `convert.carried_text` gives back the text
  the job wrote.
- Parquet: `pyarrow` rows (`to_pylist`), one row group at a time. A
  carried field in a typed column (--parquet_column_types) is read as one
  field again: its value, or where that is null, the text its FIELD_text
  column holds (`fold_text_columns`).
- TFRecord: each Example's features as lists of values, bytes decoded as
  UTF-8 where they are text (the job writes text as UTF-8 bytes).
"""
import json
from typing import Iterator, Optional

from apache_beam.io.filesystems import FileSystems

PREDICTIONS, ERRORS = 'predictions', 'errors'
_KINDS = {'.jsonl': 'jsonl', '.parquet': 'parquet', '.tfrecord': 'tfrecord'}
# The longest TFRecord record read back (the job writes one prediction per
# record: far smaller).
_MAX_RECORD_BYTES = 1 << 30


class OutputReadError(ValueError):
  """A file or record of the outputs that cannot be read; says which."""


def output_kind(path: str) -> Optional[str]:
  """'jsonl', 'parquet' or 'tfrecord' from a file's extension; None else."""
  for suffix, kind in _KINDS.items():
    if path.endswith(suffix):
      return kind
  return None


def output_files(output_dir: str) -> dict:
  """{'predictions': [paths], 'errors': [paths]} of a job's output
  directory, sorted; the format of each prediction file is its extension."""
  from tf_batch_predict.transforms import file_patterns
  found = {}
  for name in (PREDICTIONS, ERRORS):
    # The run's shards only; the folder's own name is no pattern.
    pattern = f'{file_patterns.escape(output_dir.rstrip("/"))}/{name}-*-of-*'
    try:
      matched = file_patterns.match(pattern)
    except Exception:  # pylint: disable=broad-except  (a missing folder matches nothing)
      matched = []
    found[name] = sorted(m.path for m in matched if output_kind(m.path))
  return found


def iter_records(path: str, limit: Optional[int] = None) -> Iterator[dict]:
  """The records of one output file, in file order (at most `limit`).
  Raises OutputReadError naming the file and the record that cannot be read."""
  kind = output_kind(path)
  if kind is None:
    raise OutputReadError(f'{path}: not an output file (.jsonl, .parquet, .tfrecord)')
  reader = {'jsonl': _jsonl, 'parquet': _parquet, 'tfrecord': _tfrecord}[kind]
  count = 0
  if limit is not None and limit <= 0:
    return
  for record in reader(path):
    yield record
    count += 1
    if limit is not None and count >= limit:
      return


def count_records(path: str) -> int:
  """How many records an output file holds, without decoding them: JSON
  Lines by line breaks (the job writes no blank line), Parquet from its
  footer, TFRecord by walking its frames' lengths."""
  import struct
  kind = output_kind(path)
  with FileSystems.open(path) as f:
    if kind == 'parquet':
      import pyarrow.parquet as pq
      return pq.ParquetFile(f).metadata.num_rows
    count = 0
    if kind == 'jsonl':
      while True:
        block = f.read(1 << 22)
        if not block:
          return count
        count += block.count(b'\n')
    while True:  # tfrecord: length (8), its CRC (4), data, the data's CRC (4)
      header = f.read(12)
      if len(header) < 12:
        return count
      (length,) = struct.unpack('<Q', header[:8])
      f.seek(length + 4, 1)
      count += 1


def _jsonl(path: str) -> Iterator[dict]:
  from tf_batch_predict.transforms.json_values import parse_json
  with FileSystems.open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip(b'\r\n')
      if not line.strip():
        continue
      try:
        record = parse_json(line)
      except ValueError as e:
        raise OutputReadError(f'{path}: line {number}: {e}') from None
      if not isinstance(record, dict):
        raise OutputReadError(f'{path}: line {number}: not a JSON object')
      yield record


def _parquet(path: str) -> Iterator[dict]:
  import pyarrow.parquet as pq
  with FileSystems.open(path) as f:
    try:
      parquet = pq.ParquetFile(f)
      texts = text_columns(parquet.schema_arrow)
      for batch in parquet.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
          yield fold_text_columns(record, texts)
    except Exception as e:  # pylint: disable=broad-except  (pyarrow's many errors)
      raise OutputReadError(f'{path}: {e}') from None


def text_columns(schema) -> dict:
  """{typed carried field: its text column} of a predictions file's Parquet
  schema (transforms/write/format.py TEXT_COLUMNS_KEY); {} for others."""
  from tf_batch_predict.transforms.write.format import TEXT_COLUMNS_KEY
  metadata = schema.metadata or {}
  if TEXT_COLUMNS_KEY not in metadata:
    return {}
  texts = json.loads(metadata[TEXT_COLUMNS_KEY])
  return {field: column for field, column in texts.items()
          if field in schema.names and column in schema.names}


def fold_text_columns(record: dict, texts: dict) -> dict:
  """The record with each typed field's text column folded into it: the
  text where the typed value is null (a value not of the type)."""
  for field, column in texts.items():
    text = record.pop(column, None)
    if text is not None and record.get(field) is None:
      record[field] = text
  return record


def _text(value):
  if isinstance(value, bytes):
    try:
      return value.decode('utf-8')
    except UnicodeDecodeError:
      return value
  return value


def _tfrecord(path: str) -> Iterator[dict]:
  from tf_batch_predict.transforms.convert import example_fields
  from tf_batch_predict.transforms.read.input_tfrecord import read_tfrecords
  with FileSystems.open(path) as f:
    for number, (data, problem) in enumerate(read_tfrecords(f, _MAX_RECORD_BYTES), 1):
      if problem:
        raise OutputReadError(f'{path}: record {number}: {problem}')
      try:
        fields = example_fields(data)
      except ValueError as e:
        raise OutputReadError(f'{path}: record {number}: {e}') from None
      yield {name: [_text(v) for v in values] for name, values in fields.items()}


def read_summary(output_dir: str) -> Optional[dict]:
  """The job's summary.json, or None where there is none (or it is not one)."""
  path = f'{output_dir.rstrip("/")}/summary.json'
  try:
    with FileSystems.open(path) as f:
      summary = json.loads(f.read())
  except Exception:  # pylint: disable=broad-except  (missing or unreadable: no summary)
    return None
  return summary if isinstance(summary, dict) else None
