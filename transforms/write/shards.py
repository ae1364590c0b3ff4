"""Write output elements as sharded files `PREFIX-SSSSS-of-NNNNN.EXT`.

Beam's file sinks write temporary files and rename them when the job
commits. Every element here holds a whole chunk's records: a block of JSON
lines, a pyarrow Table, or a list of serialized tf.Examples.
"""
import struct

import apache_beam as beam
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes

from tf_batch_predict.transforms.read.input_tfrecord import masked_crc32c

SHARDS = '-SSSSS-of-NNNNN'


class WriteJsonlShards(beam.PTransform):
  """Blocks of JSON lines; the sink adds the block's final line break."""
  def __init__(self, file_prefix: str):
    super().__init__()
    self._file_prefix = file_prefix

  def expand(self, blocks):
    return blocks | beam.io.WriteToText(
        self._file_prefix, file_name_suffix='.jsonl', shard_name_template=SHARDS)


class WriteParquetShards(beam.PTransform):
  """pyarrow Tables, one row group per table, with a schema fixed up front
  from the signature."""
  def __init__(self, file_prefix: str, schema):
    super().__init__()
    self._file_prefix = file_prefix
    self._schema = schema

  def expand(self, tables):
    return tables | beam.io.WriteToParquetBatched(
        self._file_prefix, schema=self._schema, file_name_suffix='.parquet',
        shard_name_template=SHARDS)


def tfrecord_frame(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc32c(length)) + data
          + struct.pack('<I', masked_crc32c(data)))


class _TFRecordListSink(filebasedsink.FileBasedSink):
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
