"""Conversion of JSON values to the arrays a signature takes.

Two paths with the same results: `arrow_columns` converts a whole chunk in C++
(pyarrow's JSON reader, straight into typed buffers) and gives up on anything
unusual; `convert_value` converts one instance in Python and says exactly what
is wrong with it. The decoder tries the first and falls back to the second.
"""
import base64
import binascii
import json
from typing import Optional

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from transforms.savedmodel import TensorSpec

_ARROW_TYPES = {
    'float16': pa.float16(), 'float32': pa.float32(), 'float64': pa.float64(),
    'int8': pa.int8(), 'int16': pa.int16(), 'int32': pa.int32(),
    'int64': pa.int64(), 'uint8': pa.uint8(), 'uint16': pa.uint16(),
    'uint32': pa.uint32(), 'uint64': pa.uint64(), 'bool': pa.bool_(),
    'string': pa.string(),
}


class SchemaError(ValueError):
  """An instance does not fit the signature; the message is one line."""


def parse_json_line(line: bytes):
  """Parses one JSON value; NaN and Infinity are accepted, as TF Serving does."""
  try:
    return orjson.loads(line)
  except orjson.JSONDecodeError as strict_error:
    try:
      # orjson is strict JSON; the standard library also reads NaN/Infinity.
      return json.loads(line)
    except (ValueError, UnicodeDecodeError):
      raise ValueError(f'invalid JSON: {strict_error}') from None


def _shape_text(shape) -> str:
  return '[' + ','.join('?' if d is None else str(d) for d in shape) + ']'


def _check_shape(arr: np.ndarray, spec: TensorSpec):
  if spec.shape is None:
    return
  if arr.ndim != len(spec.shape) or any(
      want is not None and want != got for want, got in zip(spec.shape, arr.shape)):
    raise SchemaError(
        f'input {spec.name!r} expects shape {_shape_text(spec.shape)} per '
        f'instance, got {_shape_text(arr.shape)}')


def _to_bytes(value, name):
  if isinstance(value, str):
    return value.encode('utf-8')
  if isinstance(value, bytes):
    return value
  if isinstance(value, dict) and set(value) == {'b64'} and isinstance(value['b64'], str):
    try:
      return base64.b64decode(value['b64'], validate=True)
    except (binascii.Error, ValueError):
      raise SchemaError(f'input {name!r}: invalid base64 in {{"b64": ...}}') from None
  raise SchemaError(f'input {name!r} expects strings, got {type(value).__name__} '
                    f'{_short(value)}')


def _string_array(value, name) -> np.ndarray:
  """Nested lists of str / {"b64": ...} -> object array of bytes."""
  def nest(v):
    if isinstance(v, list):
      items = [nest(x) for x in v]
      shapes = {s for _, s in items}
      if len(shapes) > 1:
        raise SchemaError(f'input {name!r}: nested lists of different lengths')
      inner = shapes.pop() if shapes else ()
      return [x for x, _ in items], (len(v),) + inner
    return _to_bytes(v, name), ()
  nested, shape = nest(value)
  arr = np.empty(shape, dtype=object)
  if shape:
    flat = nested
    for _ in range(len(shape) - 1):
      flat = [x for sub in flat for x in sub]
    arr.reshape(-1)[:] = flat
  else:
    arr[()] = nested
  return arr


def _short(value, limit=40) -> str:
  text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
  return text if len(text) <= limit else text[:limit] + '...'


def convert_value(value, spec: TensorSpec) -> np.ndarray:
  """One instance's value for one input, as an array of the input's dtype and
  shape (without the batch dimension). Raises SchemaError."""
  if value is None:
    raise SchemaError(f'input {spec.name!r} is null')
  # "Each feature a one-element list" ({"age": [60]}) fits a scalar input,
  # and a scalar fits an input of shape [1].
  if spec.shape == () and isinstance(value, list) and len(value) == 1:
    value = value[0]
  elif spec.shape == (1,) and not isinstance(value, list):
    value = [value]
  if spec.dtype == 'string':
    arr = _string_array(value, spec.name)
    _check_shape(arr, spec)
    return arr
  try:
    arr = np.asarray(value)
  except ValueError:
    raise SchemaError(f'input {spec.name!r}: nested lists of different lengths') from None
  kind = arr.dtype.kind
  if kind not in 'biuf':
    raise SchemaError(f'input {spec.name!r} expects {spec.dtype} numbers, got '
                      f'{_short(value)}')
  target = np.dtype(spec.dtype)
  if kind == 'b' and target.kind != 'b':
    raise SchemaError(f'input {spec.name!r} expects {spec.dtype} numbers, got booleans')
  if target.kind == 'b' and kind != 'b':
    raise SchemaError(f'input {spec.name!r} expects booleans, got {_short(value)}')
  if target.kind in 'iu':
    if kind == 'f':
      if not np.all(np.isfinite(arr)) or np.any(arr != np.trunc(arr)):
        raise SchemaError(f'input {spec.name!r} expects integers, got {_short(value)}')
    info = np.iinfo(target)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
      raise SchemaError(f'input {spec.name!r}: value out of range for {spec.dtype}')
  _check_shape(arr, spec)
  return arr.astype(target, copy=False)


def arrow_type(spec: TensorSpec) -> Optional[pa.DataType]:
  """The Arrow type a fully defined input reads as, else None."""
  if not spec.fully_defined:
    return None
  arrow = _ARROW_TYPES[spec.dtype]
  for _ in spec.shape:
    arrow = pa.list_(arrow)
  return arrow


class NotFastPath(Exception):
  """The chunk needs the per-instance path (to report errors exactly)."""


def arrow_to_numpy(column, spec: TensorSpec) -> np.ndarray:
  """A column (Array or ChunkedArray) of `arrow_type(spec)` as an array of
  shape (rows,) + spec.shape; raises NotFastPath on nulls or wrong list
  lengths."""
  arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  rows = len(arr)
  if arr.null_count:
    raise NotFastPath
  for dim in spec.shape:
    lengths = pc.list_value_length(arr)
    bounds = pc.min_max(lengths).as_py()
    if len(arr) and (bounds['min'] != dim or bounds['max'] != dim):
      raise NotFastPath
    arr = arr.flatten()
    if arr.null_count:
      raise NotFastPath
  if spec.dtype == 'string':
    values = arr.cast(pa.binary()).to_numpy(zero_copy_only=False)
  else:
    values = arr.to_numpy(zero_copy_only=False)
  return values.reshape((rows,) + tuple(spec.shape))


def python_to_arrow_type(value) -> Optional[pa.DataType]:
  """Arrow type for a carried (key or passthrough) field, judged from one
  row; None for values the fast path does not carry (lists, objects, null)."""
  if isinstance(value, bool):
    return pa.bool_()
  if isinstance(value, int):
    return pa.int64()
  if isinstance(value, float):
    return pa.float64()
  if isinstance(value, str):
    return pa.string()
  return None


def convert_text_value(text: str, spec: TensorSpec) -> np.ndarray:
  """A CSV cell: a number or string for scalar inputs, a JSON list for
  inputs with dimensions."""
  if text == '':
    raise SchemaError(f'input {spec.name!r} is empty')
  if spec.dtype != 'string' and text.lstrip()[:1] == '[':
    try:
      return convert_value(json.loads(text), spec)
    except ValueError as e:
      if isinstance(e, SchemaError):
        raise
      raise SchemaError(f'input {spec.name!r}: invalid JSON list {_short(text)}') from None
  if spec.dtype == 'string':
    return convert_value(text, spec)
  if spec.dtype == 'bool':
    lowered = text.strip().lower()
    if lowered not in ('true', 'false', '1', '0'):
      raise SchemaError(f'input {spec.name!r} expects true or false, got {_short(text)}')
    return convert_value(lowered in ('true', '1'), spec)
  try:
    number = int(text) if np.dtype(spec.dtype).kind in 'iu' else float(text)
  except ValueError:
    try:
      number = float(text)  # "3.0" for an integer input: convert_value judges it
    except ValueError:
      raise SchemaError(f'input {spec.name!r} expects {spec.dtype} numbers, '
                        f'got {_short(text)}') from None
  return convert_value(number, spec)


def convert_feature_values(values: list, spec: TensorSpec) -> np.ndarray:
  """A tf.Example feature's flat value list, reshaped to the input's shape."""
  shape = spec.shape
  if shape == ():
    if len(values) != 1:
      raise SchemaError(f'input {spec.name!r} expects one value, the feature has '
                        f'{len(values)}')
    return convert_value(values[0], spec)
  if shape is None or len(shape) == 1:
    return convert_value(list(values), spec)
  unknown = [i for i, d in enumerate(shape) if d is None]
  known = int(np.prod([d for d in shape if d is not None]))
  if len(unknown) > 1 or (known and len(values) % known) or (
      not unknown and len(values) != known):
    raise SchemaError(f'input {spec.name!r} expects shape {_shape_text(shape)}, the '
                      f'feature has {len(values)} values')
  dims = [d if d is not None else len(values) // max(known, 1) for d in shape]
  nested = np.empty(len(values), dtype=object)
  nested[:] = list(values)
  return convert_value(nested.reshape(dims).tolist(), spec)
