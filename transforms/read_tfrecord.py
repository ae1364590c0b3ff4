"""Read TFRecord files (plain or gzip) as chunks of serialized records.

Beam's TFRecord reader raises on the first corrupt record and so fails the
whole file; this one turns a record whose data checksum fails into an error
record and reads on. When the framing itself is broken (length checksum or
truncation), nothing after it can be located: one error record says so.
"""
import struct

import apache_beam as beam
import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records import RawChunk, TFRECORD

MAX_RECORDS_PER_CHUNK = 4096


def masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def read_tfrecords(f):
  """Yields (record bytes, None) or (raw bytes, reason) for a corrupt one."""
  offset = 0
  while True:
    header = f.read(12)
    if not header:
      return
    length_bytes = header[:8]
    if len(header) < 12 or struct.unpack('<I', header[8:])[0] != masked_crc32c(length_bytes):
      rest = header + f.read()
      yield rest, (f'corrupt TFRecord framing at byte {offset}: the remaining '
                   f'{len(rest)} bytes cannot be read')
      return
    length = struct.unpack('<Q', length_bytes)[0]
    data = f.read(length)
    footer = f.read(4)
    if len(data) < length or len(footer) < 4:
      yield data, f'truncated TFRecord record at byte {offset}'
      return
    if struct.unpack('<I', footer)[0] != masked_crc32c(data):
      yield data, f'corrupt TFRecord record at byte {offset} (data checksum mismatch)'
    else:
      yield data, None
    offset += 16 + length


class ReadTFRecords(beam.DoFn):
  """FileMetadata -> RawChunks of serialized records, indexed per file."""
  def process(self, metadata):
    path = metadata.path
    chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
      for index, (record, error) in enumerate(read_tfrecords(f)):
        if error:
          chunk.read_errors[len(chunk)] = error
        chunk.positions.append(index)
        chunk.records.append(record)
        if len(chunk) >= MAX_RECORDS_PER_CHUNK:
          yield chunk
          chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
    if len(chunk):
      yield chunk
