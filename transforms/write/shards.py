"""Write output elements as sharded files `PREFIX-SSSSS-of-NNNNN.EXT`.

Beam's file sinks write temporary files and rename them when the job
commits. Every element here holds a whole chunk's records: a block of JSON
lines, a pyarrow Table, or a list of serialized tf.Examples.
"""
import struct
import time

import apache_beam as beam
from apache_beam.io import filebasedsink, parquetio, textio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from tf_batch_predict.transforms.records import METRICS_NAMESPACE

from tf_batch_predict.transforms.read.input_tfrecord import masked_crc32c

SHARDS = '-SSSSS-of-NNNNN'
# Time spent writing (each element: a chunk's block, table or list, and
# each file's close), summed over workers: summary.json `stages`.
WRITE_TIME = 'time_write_us'


class _TimedWrites:
  """A file sink whose writes are timed: a counter per element written and
  per file closed (a Parquet sink writes its buffered rows on close)."""
  def write_record(self, file_handle, value):
    started = time.perf_counter()
    try:
      return super().write_record(file_handle, value)
    finally:
      Metrics.counter(METRICS_NAMESPACE, WRITE_TIME).inc(
          int((time.perf_counter() - started) * 1e6))

  def close(self, file_handle):
    started = time.perf_counter()
    try:
      return super().close(file_handle)
    finally:
      Metrics.counter(METRICS_NAMESPACE, WRITE_TIME).inc(
          int((time.perf_counter() - started) * 1e6))


class _TimedTextSink(_TimedWrites, textio._TextSink):  # pylint: disable=protected-access
  pass


class _TimedParquetSink(_TimedWrites, parquetio._ParquetSink):  # pylint: disable=protected-access
  pass


def _timed(transform, timed_class):
  """Beam's own write transform, its sink's writes timed (the sink is the
  same object, only its class gains the timing), where it is the sink
  expected; else the transform as it is."""
  sink = getattr(transform, '_sink', None)
  if sink is not None and type(sink) is timed_class.__mro__[2]:
    sink.__class__ = timed_class
  return transform


class WriteJsonlShards(beam.PTransform):
  """Blocks of JSON lines; the sink adds the block's final line break."""
  def __init__(self, file_prefix: str):
    super().__init__()
    self._file_prefix = file_prefix

  def expand(self, blocks):
    return blocks | _timed(beam.io.WriteToText(
        self._file_prefix, file_name_suffix='.jsonl', shard_name_template=SHARDS),
        _TimedTextSink)


class WriteParquetShards(beam.PTransform):
  """pyarrow Tables, one row group per table, with a schema fixed up front
  from the signature."""
  def __init__(self, file_prefix: str, schema):
    super().__init__()
    self._file_prefix = file_prefix
    self._schema = schema

  def expand(self, tables):
    return tables | _timed(beam.io.WriteToParquetBatched(
        self._file_prefix, schema=self._schema, file_name_suffix='.parquet',
        shard_name_template=SHARDS), _TimedParquetSink)


def tfrecord_frame(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc32c(length)) + data
          + struct.pack('<I', masked_crc32c(data)))


class _TFRecordListSink(_TimedWrites, filebasedsink.FileBasedSink):
  """Beam's TFRecord sink takes one record per element; this one a list."""
  def __init__(self, file_prefix):
    super().__init__(file_prefix, coder=None, file_name_suffix='.tfrecord',
                     shard_name_template=SHARDS,
                     mime_type='application/octet-stream',
                     compression_type=CompressionTypes.UNCOMPRESSED)

  def write_record(self, file_handle, value):
    file_handle.write(b''.join(tfrecord_frame(record) for record in value))


class WriteTFRecordShards(beam.PTransform):
  def __init__(self, file_prefix: str):
    super().__init__()
    self._file_prefix = file_prefix

  def expand(self, record_lists):
    return record_lists | beam.io.Write(_TFRecordListSink(self._file_prefix))


def write_predictions(file_prefix: str, layout) -> beam.PTransform:
  if layout.output_format == 'parquet':
    return WriteParquetShards(file_prefix, layout.parquet_schema())
  if layout.output_format == 'tfrecord':
    return WriteTFRecordShards(file_prefix)
  return WriteJsonlShards(file_prefix)
