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
signature that takes serialized Examples is fed the record as it is, once it
passes the graph's parsing spec (`convert.check_example`: a required feature
missing, another kind, or a value count the feature's shape does not take,
is a schema error naming the feature).
Carried features are written as one value (or a list of several): int64 as
the integer, float as the shortest text of its 32-bit value, bytes as UTF-8
text where valid, else {"b64": ...}.

Fast path (`TFRecordFormat.fast`): tf.io.parse_example on the whole chunk
for inputs of fully defined shape and a dtype tf.Example holds (float32,
int64, string), which gives the definition's arrays when it succeeds; the
carried features of each record by the definition. When parse_example
refuses the chunk, every record of it goes to the definition.

A sample (`sample_tfrecords`, for batch-predict preflight): the first
records of a file, read by `read_tfrecords` within a byte budget.
"""
import struct

import google_crc32c
import numpy as np

from tf_batch_predict.transforms import convert
from tf_batch_predict.transforms.read.decode import FastRows, Instance, InputFormat
from tf_batch_predict.transforms.read.lines import (KEPT_PREFIX_BYTES, count_read, count_skipped, fault_reason,
                              open_input, stored_position)
from tf_batch_predict.transforms.read.sampling import ByteBudget, FileSample
from tf_batch_predict.transforms.records import RawChunk, TFRECORD

MAX_RECORDS_PER_CHUNK = 4096
_SKIP_BLOCK = 1 << 20
READ_BLOCK = 1 << 20  # bytes per read of a TFRecord file


def masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


class _BlockReader:
  """`read(n)` as a file's, served from blocks of `block` bytes: three
  small reads per record through a file object (Beam's, gzip's) cost more
  than parsing the record does."""
  def __init__(self, f, block: int):
    # read1: a gzip file's read of a whole block that meets a damaged or cut
    # stream raises and gives nothing of what it decompressed before; read1
    # gives it in pieces, so every complete record before the damage is read.
    self._read, self._block = getattr(f, 'read1', f.read), block
    self._data, self._at = b'', 0
    self.position = 0  # bytes given out: where reading is, not reading ahead

  def read(self, size: int) -> bytes:
    end = self._at + size
    if end <= len(self._data):
      piece = self._data[self._at:end]
      self._at = end
      self.position += size
      return piece
    parts, need = [self._data[self._at:]], size - (len(self._data) - self._at)
    self._data, self._at = b'', 0
    while need > 0:
      data = self._read(max(need, self._block))
      if not data:
        break
      if len(data) > need:
        self._data, self._at = data, need
        data = data[:need]
      parts.append(data)
      need -= len(data)
    piece = b''.join(parts)
    self.position += len(piece)
    return piece


def read_tfrecords(f, max_bytes: int):
  """Yields (record bytes, None) or (raw bytes, reason) for a record that
  cannot be used; ends with ('', reason) where the framing is broken. `f`
  is read a block at a time (ahead of the records yielded) unless it is a
  _BlockReader already."""
  if not isinstance(f, _BlockReader):
    f = _BlockReader(f, READ_BLOCK)
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


class ReadTFRecords:
  """FileMetadata -> RawChunks of serialized records, indexed per file."""
  def __init__(self, max_bytes: int):
    self._max_bytes = max_bytes

  def process(self, metadata):
    path, size = metadata.path, metadata.size_in_bytes or 0
    chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
    index, counted = 0, 0  # stored bytes recorded on chunks (RawChunk.stored_bytes)
    try:
      with open_input(path) as f:
        reader = _BlockReader(f, READ_BLOCK)
        for record, error in read_tfrecords(reader, self._max_bytes):
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
            counted = count_read(chunk, counted, stored_position(f, reader.position), size)
            yield chunk
            chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
        counted = count_read(chunk, counted, stored_position(f, reader.position), size)
    except Exception as e:  # pylint: disable=broad-except
      chunk.file_errors.append((path, f'reading failed after {index} records: '
                                      f'{fault_reason(e)}'))
    if chunk.file_errors:  # the rest of the file could not be read
      count_skipped(chunk, counted, size)
    else:
      count_read(chunk, counted, size)
    if len(chunk) or chunk.file_errors or chunk.stored_bytes:
      yield chunk


def sample_tfrecords(metadata, quota: int, max_bytes: int, limits) -> FileSample:
  """The first `quota` records of a file within `limits.bytes_per_file`,
  read by `read_tfrecords` as ReadTFRecords reads them."""
  path = metadata.path
  chunk = RawChunk([(path, 0)], [], [], kind=TFRECORD)
  sample = FileSample(path, TFRECORD, metadata.size_in_bytes, [chunk])
  index, spanned, goes_on, reader = 0, 0, False, None
  try:
    with open_input(path) as raw:
      reader = ByteBudget(raw, limits.bytes_per_file)
      for record, fault in read_tfrecords(reader, max_bytes):
        if record is None:
          if reader.hit:  # cut by the byte budget, not broken
            goes_on = True
          else:
            chunk.file_errors.append((path, f'reading failed after {index} records: {fault}'))
          break
        if index == quota:
          goes_on = True
          break
        size = len(record)
        if isinstance(fault, tuple):  # too large: (its size, the reason)
          size, fault = fault
          chunk.unread_sizes[len(chunk)] = size
        if fault:
          chunk.read_errors[len(chunk)] = fault
        chunk.positions.append(index)
        chunk.records.append(record)
        index += 1
        spanned += 16 + size
      else:
        goes_on = reader.hit
  except Exception as e:  # pylint: disable=broad-except
    chunk.file_errors.append((path, f'reading failed after {index} records: '
                                    f'{fault_reason(e)}'))
  sample.instances = len(chunk)
  if not goes_on:
    sample.count = len(chunk)
  if not chunk.file_errors:
    sample.span = (len(chunk), 0, spanned)
  if not len(chunk) and not chunk.file_errors:
    sample.chunks = []
  return sample


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

  def read_unit(self, metadata, offsets):  # pylint: disable=unused-argument  (whole files)
    return ReadTFRecords(self._max_instance_bytes).process(metadata)

  def sample(self, metadata, quota, limits):
    return sample_tfrecords(metadata, quota, self._max_instance_bytes, limits)

  def instance(self, chunk, row) -> Instance:
    record = chunk.records[row]
    return Instance(convert.example_fields(record), convert=convert.convert_feature_values,
                    carry=carry_feature, example=record)

  def raw(self, chunk, row) -> bytes:
    return chunk.records[row]

  def fast(self, chunk, rows, decoder):
    """tf.io.parse_example on the chunk where every record has each input
    as a feature of exactly its dtype's kind and size (then its arrays are
    the definition's); else `_fast_per_record`."""
    plan = _plan(decoder)
    if plan is None:
      return None
    import tensorflow as tf  # workers load it for scoring anyway
    tf_types = {'float32': tf.float32, 'int64': tf.int64, 'string': tf.string}
    if all(spec.dtype in tf_types for spec, _, _ in plan):
      records = [chunk.records[row] for row in rows]
      try:
        parsed = tf.io.parse_example(records, {
            spec.name: tf.io.FixedLenFeature(spec.shape, tf_types[spec.dtype])
            for spec, _, _ in plan})
      except (tf.errors.InvalidArgumentError, ValueError):
        parsed = None
      if parsed is not None:
        # parse_example's own parser takes some bytes the definition's does
        # not (a feature name that is not UTF-8, ...): every record is also
        # parsed by the definition's parser, which reads the carried ones.
        keep, carried = np.ones(len(rows), dtype=bool), {f: [] for f in decoder.carried}
        for i, record in enumerate(records):
          try:
            fields = convert.example_fields(record, decoder.carried)
          except ValueError:
            keep[i] = False
            continue
          if decoder.key_field and fields.get(decoder.key_field) is None:
            keep[i] = False  # the definition reports it
            continue
          for field, texts in carried.items():
            texts.append(carry_feature(fields.get(field)))
        feeds = {spec.name: parsed[spec.name].numpy()[keep] for spec, _, _ in plan}
        accepted = [row for row, k in zip(rows, keep) if k]
        return FastRows(accepted, feeds, carried) if accepted else None
    return self._fast_per_record(chunk, rows, decoder, plan)

  def _fast_per_record(self, chunk, rows, decoder, plan):
    """The definition in bulk: each record parsed as the definition parses
    it, values taken where their kind and count are exactly the input's,
    stacked per input at once (rather than converted per record)."""
    accepted, columns = [], [[] for _ in plan]
    carried = {f: [] for f in decoder.carried}
    key = decoder.key_field
    for row in rows:
      try:
        fields = convert.example_fields(chunk.records[row])
      except ValueError:
        continue
      values = [fields.get(spec.name) for spec, _, _ in plan]
      if not all(v is not None and len(v) == size and (not size or type(v[0]) in kinds)
                 for v, (_, size, kinds) in zip(values, plan)):
        continue
      if key and fields.get(key) is None:
        continue
      accepted.append(row)
      for column, value in zip(columns, values):
        column.append(value)
      for field, texts in carried.items():
        texts.append(carry_feature(fields.get(field)))
    if not accepted:
      return None
    feeds, keep = {}, np.ones(len(accepted), dtype=bool)
    for (spec, size, _), column in zip(plan, columns):
      feeds[spec.name], valid = _stack(column, spec, size)
      keep &= valid
    if not keep.all():
      accepted = [row for row, k in zip(accepted, keep) if k]
      feeds = {name: array[keep] for name, array in feeds.items()}
      carried = {f: [t for t, k in zip(texts, keep) if k] for f, texts in carried.items()}
    return FastRows(accepted, feeds, carried) if accepted else None


# Python types of a feature's values by which the fast path takes them for an
# input's dtype: float_list (float), int64_list (int), bytes_list (bytes). As
# in the definition, a float input also takes int64 values.
_KINDS = {'f': (float, int), 'i': (int,), 'u': (int,), 'b': (), 'O': (bytes,)}


def _plan(decoder):
  """(spec, values per instance, Python types taken) per input, or None."""
  if decoder.signature.takes_examples:
    return None
  plan = []
  for spec in decoder.inputs:
    if not spec.fully_defined:
      return None
    kind = 'O' if spec.dtype == 'string' else np.dtype(spec.dtype).kind
    if not _KINDS[kind]:
      return None  # booleans: the definition's business
    plan.append((spec, int(np.prod(spec.shape)), _KINDS[kind]))
  return plan


def _stack(column, spec, size):
  """(array of shape (rows,) + spec.shape, valid rows) from feature lists
  already checked for kind and count."""
  rows = len(column)
  shape = (rows,) + tuple(spec.shape)
  if spec.dtype == 'string':
    arr = np.empty((rows, size), dtype=object)
    for i, values in enumerate(column):
      arr[i, :] = values
    return arr.reshape(shape), np.ones(rows, dtype=bool)
  if np.dtype(spec.dtype).kind == 'f':
    with np.errstate(over='ignore'):  # as convert.convert_value
      return np.array(column, dtype=np.float64).reshape(shape).astype(spec.dtype), \
          np.ones(rows, dtype=bool)
  ints = np.array(column, dtype=np.int64).reshape((rows, size))
  info = np.iinfo(spec.dtype)
  valid = ((ints >= info.min) & (ints <= info.max)).all(axis=1) if size else np.ones(rows, bool)
  return ints.reshape(shape).astype(spec.dtype), valid
