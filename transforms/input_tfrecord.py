"""TFRecord files of tf.Examples (plain or gzip): reading, and what a record
means.

Reading: Beam's TFRecord reader raises on the first corrupt record and so
fails the whole file; this one turns a record whose data checksum fails into
an error record and reads on. When the framing itself is broken (length
checksum or truncation), nothing after it can be located: one file error
says how far reading got. A record longer than --max_instance_bytes is an
error record and is skipped unread.

Definition (`TFRecordFormat.instance`): a record is a serialized tf.Example;
its features are the instance's fields, each a flat list of values,
reshaped to the input's shape (`convert.convert_feature_values`). A
signature that takes serialized Examples is fed the record as it is.
Carried features are written as one value (or a list of several): int64 as
the integer, float as the shortest text of its 32-bit value, bytes as UTF-8
text where valid, else {"b64": ...}.

Fast path (`TFRecordFormat.fast`): tf.io.parse_example on the whole chunk
for inputs of fully defined shape and a dtype tf.Example holds (float32,
int64, string), which gives the definition's arrays when it succeeds; the
carried features of each record by the definition. When parse_example
refuses the chunk, every record of it goes to the definition.
"""
import struct

import apache_beam as beam
import google_crc32c
import numpy as np

from transforms import convert
from transforms.decode import FastRows, Instance, InputFormat
from transforms.lines import KEPT_PREFIX_BYTES, fault_reason, open_input
from transforms.records import RawChunk, TFRECORD

MAX_RECORDS_PER_CHUNK = 4096
_SKIP_BLOCK = 1 << 20


def masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def read_tfrecords(f, max_bytes: int):
  """Yields (record bytes, None) or (raw bytes, reason) for a record that
  cannot be used; ends with ('', reason) where the framing is broken."""
  offset = 0
  while True:
    header = f.read(12)
    if not header:
      return
    length_bytes = header[:8]
    if len(header) < 12 or struct.unpack('<I', header[8:])[0] != masked_crc32c(length_bytes):
      yield None, (f'corrupt TFRecord framing at byte {offset}: nothing after it '
                   'can be located')
      return
    length = struct.unpack('<Q', length_bytes)[0]
    if length > max_bytes:
      data = f.read(KEPT_PREFIX_BYTES)
      left = length - len(data)
      while left > 0:
        skipped = len(f.read(min(left, _SKIP_BLOCK)))
        if not skipped:
          break
        left -= skipped
      footer = f.read(4)
      if left > 0 or len(footer) < 4:
        yield None, f'truncated TFRecord record at byte {offset}'
        return
      yield data, (length, f'the record is {length} bytes, more than --max_instance_bytes '
                   f'({max_bytes}); it was not read')
    else:
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        yield None, f'truncated TFRecord record at byte {offset}'
        return
      if struct.unpack('<I', footer)[0] != masked_crc32c(data):
        yield data, f'corrupt TFRecord record at byte {offset} (data checksum mismatch)'
      else:
        yield data, None
    offset += 16 + length


class ReadTFRecords(beam.DoFn):
  """FileMetadata -> RawChunks of serialized records, indexed per file."""
  def __init__(self, max_bytes: int):
    self._max_bytes = max_bytes

  def process(self, metadata):
    path = metadata.path
    chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
    index = 0
    try:
      with open_input(path) as f:
        for record, error in read_tfrecords(f, self._max_bytes):
          if record is None:
            chunk.file_errors.append((path, f'reading failed after {index} records: {error}'))
            break
          if isinstance(error, tuple):  # too large: (its size, the reason)
            chunk.unread_sizes[len(chunk)], error = error
          if error:
            chunk.read_errors[len(chunk)] = error
          chunk.positions.append(index)
          chunk.records.append(record)
          index += 1
          if len(chunk) >= MAX_RECORDS_PER_CHUNK:
            yield chunk
            chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
    except Exception as e:  # pylint: disable=broad-except
      chunk.file_errors.append((path, f'reading failed after {index} records: '
                                      f'{fault_reason(e)}'))
    if len(chunk) or chunk.file_errors:
      yield chunk


def carry_feature(values):
  """A carried feature's JSON text (see the module's docstring)."""
  if values is None:
    return b'null'
  def plain(v):
    if isinstance(v, bytes):
      return convert.bytes_json(v)
    if isinstance(v, float):
      return np.float32(v)
    return v
  values = [plain(v) for v in values]
  return convert.carried_text(values[0] if len(values) == 1 else values)


class TFRecordFormat(InputFormat):
  kind = TFRECORD
  binary_records = True

  def __init__(self, max_instance_bytes: int):
    self._max_instance_bytes = max_instance_bytes

  def read(self, files):
    return files | beam.Reshuffle() | beam.ParDo(ReadTFRecords(self._max_instance_bytes))

  def instance(self, chunk, row) -> Instance:
    record = chunk.records[row]
    return Instance(convert.example_fields(record), convert=convert.convert_feature_values,
                    carry=carry_feature, example=record)

  def raw(self, chunk, row) -> bytes:
    return chunk.records[row]

  def fast(self, chunk, rows, decoder):
    import tensorflow as tf  # workers load it for scoring anyway
    tf_types = {'float32': tf.float32, 'int64': tf.int64, 'string': tf.string}
    if decoder.signature.takes_examples:
      return None
    features = {}
    for spec in decoder.inputs:
      if spec.dtype not in tf_types or not spec.fully_defined:
        return None
      features[spec.name] = tf.io.FixedLenFeature(spec.shape, tf_types[spec.dtype])
    records = [chunk.records[row] for row in rows]
    try:
      parsed = tf.io.parse_example(records, features)
    except (tf.errors.InvalidArgumentError, ValueError):
      return None
    feeds = {s.name: parsed[s.name].numpy() for s in decoder.inputs}
    if not decoder.carried:
      return FastRows(list(rows), feeds, {})
    carried = {f: [] for f in decoder.carried}
    keep = np.ones(len(rows), dtype=bool)
    for i, record in enumerate(records):
      fields = convert.example_fields(record)
      if decoder.key_field and fields.get(decoder.key_field) is None:
        keep[i] = False  # the definition reports it
        continue
      for field, texts in carried.items():
        texts.append(carry_feature(fields.get(field)))
    return FastRows([row for row, k in zip(rows, keep) if k],
                    {name: array[keep] for name, array in feeds.items()}, carried)
