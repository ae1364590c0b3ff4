"""Decode a chunk of JSON lines into the arrays a signature takes.

A whole chunk goes through pyarrow's JSON reader when every line is a plain
instance; any anomaly (bad JSON, a missing field, a wrong type or shape) sends
the chunk through the per-instance path, which turns each bad instance into
an error record with a precise reason and still decodes the good ones.
"""
import io
from typing import Optional

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson
from apache_beam.metrics import Metrics

from transforms import convert
from transforms.records import (FeedGroup, InstanceBatch, InstanceError,
                                METRICS_NAMESPACE, PARSE, RawChunk, SCHEMA)
from transforms.savedmodel import SignatureSpec

_PARSE_BLOCKS = 8


class InstanceDecoder:
  """Turns RawChunks into InstanceBatches for one signature.

  An instance is a JSON object whose fields name the inputs; for a
  single-input signature it may also be the bare value. `key_field` and
  `passthrough_fields` are carried to the output; other fields are ignored.
  """
  def __init__(self, signature: SignatureSpec, key_field: Optional[str] = None,
               passthrough_fields=()):
    self._inputs = signature.inputs
    self._single = self._inputs[0] if len(self._inputs) == 1 else None
    self._key_field = key_field
    self._passthrough = tuple(passthrough_fields)
    self._carried = tuple(dict.fromkeys(
        ([key_field] if key_field else []) + list(self._passthrough)))
    input_types = {s.name: convert.arrow_type(s) for s in self._inputs}
    self._input_types = (input_types if all(input_types.values()) else None)
    if self._single is not None:
      self._bare_prefix = b'{' + orjson.dumps(self._single.name) + b':'

  def decode(self, chunk: RawChunk) -> InstanceBatch:
    if self._input_types is not None and chunk.lines:
      try:
        return self._decode_columnar(chunk)
      except convert.NotFastPath:
        pass
    return self._decode_per_instance(chunk)

  # -- whole chunk at once -------------------------------------------------

  def _decode_columnar(self, chunk: RawChunk) -> InstanceBatch:
    lines = chunk.lines
    if all(line[:1] == b'{' for line in lines):
      blob = b'\n'.join(lines)
      carried_types = self._carried_types(lines[0])
    elif (self._single is not None and not self._carried
          and not any(line[:1] == b'{' for line in lines)):
      prefix = self._bare_prefix
      blob = b'\n'.join([prefix + line + b'}' for line in lines])
      carried_types = {}
    else:
      raise convert.NotFastPath
    fields = dict(carried_types)
    fields.update(self._input_types)
    # pyarrow parses blocks in parallel; a block must hold the longest line.
    block_size = max(len(blob) // _PARSE_BLOCKS, max(map(len, lines)) + 2, 1 << 16)
    try:
      table = pajson.read_json(
          io.BytesIO(blob),
          read_options=pajson.ReadOptions(block_size=block_size),
          parse_options=pajson.ParseOptions(
              explicit_schema=pa.schema(list(fields.items())),
              unexpected_field_behavior='ignore'))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      raise convert.NotFastPath from None
    if table.num_rows != len(lines):
      raise convert.NotFastPath
    feeds = {s.name: convert.arrow_to_numpy(table.column(s.name), s)
             for s in self._inputs}
    keys = None
    if self._key_field:
      keys = table.column(self._key_field).to_pylist()
      if any(k is None for k in keys):
        raise convert.NotFastPath
    passthrough = {f: table.column(f).to_pylist() for f in self._passthrough}
    return InstanceBatch(chunk, keys, passthrough,
                         [FeedGroup(list(range(len(lines))), feeds)], [])

  def _carried_types(self, first_line: bytes) -> dict:
    """Arrow types of the carried fields, judged from the chunk's first line;
    a field the signature also takes keeps the input's type."""
    if not self._carried:
      return {}
    try:
      first = orjson.loads(first_line)
    except orjson.JSONDecodeError:
      raise convert.NotFastPath from None
    types = {}
    for field in self._carried:
      if field in self._input_types:
        continue
      arrow = convert.python_to_arrow_type(first.get(field))
      if arrow is None:
        raise convert.NotFastPath
      types[field] = arrow
    return types

  # -- one instance at a time ----------------------------------------------

  def _decode_per_instance(self, chunk: RawChunk) -> InstanceBatch:
    errors = []
    keys = [None] * len(chunk.lines) if self._key_field else None
    passthrough = {f: [None] * len(chunk.lines) for f in self._passthrough}
    groups = {}  # per-input shapes -> (rows, per-input lists of arrays)
    for row, line in enumerate(chunk.lines):
      try:
        value = convert.parse_json_line(line)
      except ValueError as e:
        errors.append(InstanceError(row, PARSE, str(e)))
        continue
      fields = value if self._is_fields_object(value) else None
      if fields is not None:
        if keys is not None:
          keys[row] = fields.get(self._key_field)
        for f in self._passthrough:
          passthrough[f][row] = fields.get(f)
      try:
        arrays = self._instance_arrays(value, fields)
        if keys is not None and keys[row] is None:
          raise convert.SchemaError(f'missing key field {self._key_field!r}')
      except convert.SchemaError as e:
        errors.append(InstanceError(row, SCHEMA, str(e)))
        continue
      shapes = tuple(a.shape for a in arrays)
      rows, columns = groups.setdefault(shapes, ([], [[] for _ in arrays]))
      rows.append(row)
      for column, arr in zip(columns, arrays):
        column.append(arr)
    feed_groups = [
        FeedGroup(rows, {s.name: np.stack(col) for s, col in zip(self._inputs, columns)})
        for rows, columns in groups.values()]
    return InstanceBatch(chunk, keys, passthrough, feed_groups, errors)

  def _is_fields_object(self, value) -> bool:
    if not isinstance(value, dict):
      return False
    # {"b64": ...} alone is a bare binary value for a single string input.
    return not (self._single is not None and set(value) == {'b64'}
                and self._single.name != 'b64')

  def _instance_arrays(self, value, fields) -> list:
    if fields is None:
      if self._single is None:
        names = ', '.join(s.name for s in self._inputs)
        raise convert.SchemaError(
            f'a bare value needs a single-input signature; write an object '
            f'with fields {names}')
      return [convert.convert_value(value, self._single)]
    arrays = []
    for spec in self._inputs:
      if spec.name not in fields:
        raise convert.SchemaError(f'missing input field {spec.name!r}')
      arrays.append(convert.convert_value(fields[spec.name], spec))
    return arrays


class DecodeInstances(beam.DoFn):
  """RawChunk -> InstanceBatch; bad instances ride along as errors."""
  def __init__(self, decoder: InstanceDecoder):
    self._decoder = decoder
    self._read = Metrics.counter(METRICS_NAMESPACE, 'instances_read')
    self._blank = Metrics.counter(METRICS_NAMESPACE, 'blank_lines')

  def process(self, chunk: RawChunk):
    self._read.inc(len(chunk.lines))
    self._blank.inc(chunk.blank_lines)
    if chunk.lines:
      yield self._decoder.decode(chunk)
