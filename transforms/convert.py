"""The rules every input format shares: what a value means for an input of a
given dtype and shape, and how a carried value (key, passthrough) is written.

Each rule is written once, as a function of one value. Per-instance (exact)
decoding calls these functions; the fast paths in the format modules apply
the same functions, or numpy/pyarrow operations that accept a subset of what
they accept and give the same result on it, to many instances at once. The
docs/instances.md is the prose of this module.

The rules, in short:
- float inputs take numbers (integers or decimals, NaN and +-Infinity), read
  as 64-bit floats and rounded to the input's type; not booleans, strings or
  null;
- integer inputs take integers in the type's range, never decimals (3.0) or
  booleans;
- bool inputs take true or false; string inputs take strings (UTF-8) or
  {"b64": "..."};
- a value's nesting must be the input's shape exactly; a one-element list
  fits a scalar input and a scalar fits an input of shape [1];
- a carried value is written exactly as read: a string as the same string,
  a number with the same digits, anything else as its JSON text.
"""
import base64
import binascii
import decimal
import math
import re
from typing import Optional

import numpy as np
import orjson

from tf_batch_predict.transforms.json_values import JsonFloat, JsonNegativeZero, parse_json
from tf_batch_predict.transforms.model.savedmodel import TensorSpec


class SchemaError(ValueError):
  """An instance does not fit the signature; the message is one line."""


def shape_text(shape) -> str:
  return '[' + ','.join('?' if d is None else str(d) for d in shape) + ']'


def short(value, limit=40) -> str:
  if isinstance(value, bytes):
    text = repr(value)
  else:
    try:
      text = carried_text(value).decode('utf-8')
    except (ValueError, TypeError, RecursionError):
      text = repr(value)
  return text if len(text) <= limit else text[:limit] + '...'


# -- values to arrays ---------------------------------------------------------

def _nest(value, leaf, name):
  """Nested lists -> (flat list of leaves, shape); raises SchemaError for
  ragged nesting. `leaf` converts (and checks) one leaf."""
  if not isinstance(value, list):
    return [leaf(value)], ()
  if not value:
    return [], (0,)
  parts = [_nest(v, leaf, name) for v in value]
  shapes = {shape for _, shape in parts}
  if len(shapes) > 1:
    raise SchemaError(f'input {name!r}: nested lists of different lengths')
  return [x for flat, _ in parts for x in flat], (len(value),) + shapes.pop()


def _float_leaf(name, dtype):
  def leaf(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      what = 'booleans' if isinstance(v, bool) else short(v)
      raise SchemaError(f'input {name!r} expects {dtype} numbers, got {what}')
    try:
      return float(v)
    except OverflowError:
      raise SchemaError(f'input {name!r}: {short(v)} is out of the 64-bit float range') from None
  return leaf


def _int_leaf(name, dtype):
  info = np.iinfo(dtype)

  def leaf(v):
    if isinstance(v, bool) or not isinstance(v, int):
      what = 'booleans' if isinstance(v, bool) else short(v)
      raise SchemaError(f'input {name!r} expects integers ({dtype}), got {what}')
    if not info.min <= v <= info.max:
      raise SchemaError(f'input {name!r}: {short(v)} is out of range for {dtype}')
    return v
  return leaf


def _bool_leaf(name, _):
  def leaf(v):
    if not isinstance(v, bool):
      raise SchemaError(f'input {name!r} expects booleans, got {short(v)}')
    return v
  return leaf


def _string_leaf(name, _):
  def leaf(v):
    return to_bytes(v, name)
  return leaf


def to_bytes(value, name) -> bytes:
  if isinstance(value, str):
    try:
      return value.encode('utf-8')
    except UnicodeEncodeError:  # a lone surrogate; JSON decoding refuses them
      raise SchemaError(f'input {name!r}: the string is not valid Unicode') from None
  if isinstance(value, bytes):
    return value
  if isinstance(value, dict) and set(value) == {'b64'} and isinstance(value['b64'], str) \
      and not getattr(value, 'duplicates', None):
    try:
      return base64.b64decode(value['b64'], validate=True)
    except (binascii.Error, ValueError):
      raise SchemaError(f'input {name!r}: invalid base64 in {{"b64": ...}}') from None
  raise SchemaError(f'input {name!r} expects strings, got {short(value)}')


def _leaf_for(spec: TensorSpec):
  if spec.dtype == 'string':
    return _string_leaf(spec.name, spec.dtype), object
  kind = np.dtype(spec.dtype).kind
  if kind == 'f':
    return _float_leaf(spec.name, spec.dtype), np.float64
  if kind in 'iu':
    return _int_leaf(spec.name, spec.dtype), object
  return _bool_leaf(spec.name, spec.dtype), np.bool_


def check_shape(shape: tuple, spec: TensorSpec):
  if spec.shape is None:
    return
  if len(shape) != len(spec.shape) or any(
      want is not None and want != got for want, got in zip(spec.shape, shape)):
    raise SchemaError(f'input {spec.name!r} expects shape {shape_text(spec.shape)} per '
                      f'instance, got {shape_text(shape)}')


def convert_value(value, spec: TensorSpec) -> np.ndarray:
  """One instance's value for one input (a JSON value, or a typed value
  from Parquet or a tf.Example), as an array of the input's dtype and shape
  without the batch dimension. Raises SchemaError."""
  if value is None:
    raise SchemaError(f'input {spec.name!r} is null')
  if spec.shape == () and isinstance(value, list) and len(value) == 1:
    value = value[0]
  elif spec.shape == (1,) and not isinstance(value, list):
    value = [value]
  leaf, staging = _leaf_for(spec)
  flat, shape = _nest(value, leaf, spec.name)
  check_shape(shape, spec)
  if spec.dtype == 'string':
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(shape)
  # Floats are read as 64-bit floats, then rounded to the input's type.
  arr = np.array(flat, dtype=staging).reshape(shape)
  with np.errstate(over='ignore'):  # beyond float32's range: +-inf, as TF Serving
    return arr.astype(spec.dtype)


# -- CSV cells ----------------------------------------------------------------

# A number cell is written as a JSON number; float inputs also take the
# names of the special values that CSV writers use.
INTEGER_TEXT = re.compile(r'-?(?:0|[1-9][0-9]*)')
NUMBER_TEXT = re.compile(r'-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?')
SPECIAL_FLOATS = {'NaN': math.nan, 'nan': math.nan, 'Infinity': math.inf,
                  'inf': math.inf, '-Infinity': -math.inf, '-inf': -math.inf}
BOOL_TEXT = {'true': True, 'false': False, 'True': True, 'False': False,
             '1': True, '0': False}


def text_scalar(text: str, spec: TensorSpec):
  """A CSV cell for a scalar input: the typed value, by the rules above."""
  if text == '':
    raise SchemaError(f'input {spec.name!r} is empty')
  if spec.dtype == 'string':
    return text
  kind = np.dtype(spec.dtype).kind
  if kind == 'b':
    if text not in BOOL_TEXT:
      raise SchemaError(f'input {spec.name!r} expects true or false, got {short(text)}')
    return BOOL_TEXT[text]
  if kind in 'iu':
    if not INTEGER_TEXT.fullmatch(text):
      raise SchemaError(f'input {spec.name!r} expects integers ({spec.dtype}), '
                        f'got {short(text)}')
    return int(text)
  if text in SPECIAL_FLOATS:
    return SPECIAL_FLOATS[text]
  if not NUMBER_TEXT.fullmatch(text):
    raise SchemaError(f'input {spec.name!r} expects {spec.dtype} numbers, got {short(text)}')
  value = float(text)
  if math.isinf(value):
    raise SchemaError(f'input {spec.name!r}: {short(text)} is out of the 64-bit float range')
  return value


def convert_text_value(text: str, spec: TensorSpec) -> np.ndarray:
  """A CSV cell: a scalar by `text_scalar` for inputs of shape [] or [1];
  for other inputs a JSON array."""
  if spec.shape in ((), (1,)) or (spec.dtype == 'string' and text[:1] != '['):
    return convert_value(text_scalar(text, spec), spec)
  try:
    value = parse_json(text.encode('utf-8'))
  except ValueError:
    raise SchemaError(f'input {spec.name!r} expects a JSON array, got {short(text)}') from None
  return convert_value(value, spec)


# -- tf.Example features -------------------------------------------------------

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
  known = math.prod(d for d in shape if d is not None)
  if len(unknown) > 1 or (known and len(values) % known) or (
      not unknown and len(values) != known):
    raise SchemaError(f'input {spec.name!r} expects shape {shape_text(shape)}, the '
                      f'feature has {len(values)} values')
  dims = [d if d is not None else len(values) // max(known, 1) for d in shape]
  nested = np.empty(len(values), dtype=object)
  nested[:] = list(values)
  return convert_value(nested.reshape(dims).tolist(), spec)


# -- tf.Examples ----------------------------------------------------------------
# Signatures that take serialized tf.Examples (Estimator exports, classify and
# regress signatures) are fed Examples built from an instance's fields, typed
# by the parsing spec stored in the model's graph where there is one, else by
# the values; CSV cells by the number rules above. Every Example fed (built,
# or given serialized) is checked against the parsing spec first
# (`check_example`): a required feature missing, a feature of another kind
# or with a value count its shape does not take is a SchemaError naming the
# feature, as TensorFlow's parser would refuse it.

FLOAT, INT64, BYTES = 'float', 'int64', 'bytes'


def _example_pb2():
  # Imported on first use: the TensorFlow package costs seconds to import.
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  return example_pb2


def _feature_values(value, name) -> list:
  if isinstance(value, list):
    return [x for v in value for x in _feature_values(v, name)]
  if isinstance(value, dict):
    if set(value) == {'b64'} and isinstance(value['b64'], str):
      return [to_bytes(value, name)]
    raise SchemaError(f'feature {name!r}: objects cannot be Example features')
  return [value]


def _feature_kind(values, name) -> str:
  if all(isinstance(v, int) for v in values):
    return INT64
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    return FLOAT
  if all(isinstance(v, (str, bytes)) for v in values):
    return BYTES
  raise SchemaError(f'feature {name!r} mixes numbers and strings')


def _text_feature_values(values, kind, name) -> list:
  """CSV text cells as the values of a feature of `kind` (None: inferred)."""
  if kind is None:
    kind = (INT64 if all(INTEGER_TEXT.fullmatch(v) for v in values) else
            FLOAT if all(NUMBER_TEXT.fullmatch(v) or v in SPECIAL_FLOATS for v in values)
            else BYTES)
  if kind == BYTES:
    return values
  dtype = 'int64' if kind == INT64 else 'float32'
  return [text_scalar(v, TensorSpec(name, dtype, ())) for v in values]


def _kind_of(spec) -> str:
  """A parsing spec's value: an example_spec.FeatureSpec, or a kind name."""
  return getattr(spec, 'kind', spec)


def serialize_example(fields: dict, feature_kinds, text_cells=False) -> bytes:
  """Fields -> serialized Example. With `feature_kinds` (the parsing spec:
  name -> example_spec.FeatureSpec, or a kind name float/int64/bytes) only
  those features are written, converted to their kind, and the Example is
  checked against the spec; without, every field is written with a kind
  inferred from its values. `text_cells`: values are CSV text; an empty cell
  is a missing feature."""
  example = _example_pb2().Example()
  features = example.features.feature
  for name, value in fields.items():
    if value is None or (feature_kinds is not None and name not in feature_kinds):
      continue
    if text_cells and value == '':
      continue
    kind = _kind_of(feature_kinds[name]) if feature_kinds is not None else None
    values = _feature_values(value, name)
    try:
      if text_cells:
        values = _text_feature_values(values, kind, name)
      kind = kind or _feature_kind(values, name)
      if kind == FLOAT:
        features[name].float_list.value.extend(
            _float_leaf(name, 'float')(v) for v in values)
      elif kind == INT64:
        # Examples have no booleans: without a parsing spec true is 1; an
        # int64 feature of the spec, like an integer input, takes no booleans.
        inferred = feature_kinds is None
        features[name].int64_list.value.extend(
            _int_leaf(name, 'int64')(int(v) if inferred and isinstance(v, bool) else v)
            for v in values)
      else:
        features[name].bytes_list.value.extend(to_bytes(v, name) for v in values)
    except (TypeError, ValueError, AttributeError) as e:
      if isinstance(e, SchemaError):
        raise SchemaError(str(e).replace('input', 'feature', 1)) from None
      raise SchemaError(f'feature {name!r} expects {kind} values, got '
                        f'{short(values)}') from None
  if feature_kinds is not None:
    _check_features(example, feature_kinds)
  return example.SerializeToString()


def check_example(serialized: bytes, feature_specs) -> None:
  """Checks a serialized Example against the parsing spec (name ->
  example_spec.FeatureSpec): SchemaError naming the first feature that
  TensorFlow's parser would refuse; ValueError when it is not an Example."""
  from google.protobuf.message import DecodeError  # pylint: disable=import-outside-toplevel
  example = _example_pb2().Example()
  try:
    example.ParseFromString(serialized)
  except DecodeError:
    raise ValueError('the record is not a serialized tf.Example') from None
  _check_features(example, feature_specs)


_LISTS = {'float_list': 'a float list', 'int64_list': 'an int64 list',
          'bytes_list': 'a bytes list'}


def _check_features(example, feature_specs) -> None:
  features = example.features.feature
  for name, spec in feature_specs.items():
    if not hasattr(spec, 'required'):
      continue  # a kind alone says nothing to check
    kind = features[name].WhichOneof('kind') if name in features else None
    if kind is None:  # absent, or a feature of no kind (TensorFlow: absent)
      if spec.required:
        raise SchemaError(f'missing required feature {name!r} ({spec.kind}, '
                          f'{spec.describe_count()})')
      continue
    if kind != f'{spec.kind}_list':
      raise SchemaError(f'feature {name!r} must be {_LISTS[spec.kind + "_list"]}, the '
                        f'Example has {_LISTS[kind]}')
    count = len(getattr(features[name], kind).value)
    if not spec.count_fits(count):
      raise SchemaError(f'feature {name!r} must hold {spec.describe_count()}, the '
                        f'Example has {count}')


def example_fields(serialized: bytes, names=None) -> dict:
  """Serialized Example -> {feature name: list of values (bytes for
  bytes_list)}, every feature or only those of `names` that it has. Raises
  ValueError when the record is not an Example."""
  global _Example, _DecodeError  # pylint: disable=global-statement
  if _Example is None:  # imported on first use (TensorFlow's package), then kept: per record
    from google.protobuf.message import DecodeError  # pylint: disable=import-outside-toplevel
    _Example, _DecodeError = _example_pb2().Example, DecodeError
  example = _Example()
  try:
    example.ParseFromString(serialized)
  except _DecodeError:
    raise ValueError('the record is not a serialized tf.Example') from None
  features = example.features.feature
  fields = {}
  for name in (features if names is None else names):
    if names is not None and name not in features:
      continue
    feature = features[name]
    kind = feature.WhichOneof('kind')
    fields[name] = list(getattr(feature, kind).value) if kind else []
  return fields


_Example = _DecodeError = None  # example_fields' classes, once imported


# -- carried values ------------------------------------------------------------

def carried_text(value, repeated_ok: bool = False) -> bytes:
  """The JSON text a carried value is written as: strings as the same string,
  JSON numbers with their own digits, integers of any size exactly; lists
  and objects compact, their members by the same rule. Raises SchemaError
  for an object that repeats a field (which value was meant is unknown),
  unless `repeated_ok` (an error record's `raw`: the last value, as parsed)."""
  if isinstance(value, str):
    return orjson.dumps(value)
  if value is None or isinstance(value, bool):
    return b'null' if value is None else (b'true' if value else b'false')
  if isinstance(value, (JsonFloat, JsonNegativeZero)):
    return value.text.encode('ascii')
  if isinstance(value, int):
    return str(value).encode('ascii')  # any size, where orjson stops at 64 bits
  if isinstance(value, float):
    return orjson.dumps(value) if math.isfinite(value) else (
        b'NaN' if math.isnan(value) else b'Infinity' if value > 0 else b'-Infinity')
  if isinstance(value, np.generic):
    return carried_text(value.item(), repeated_ok) if not isinstance(value, np.floating) else (
        orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        if np.isfinite(value) else carried_text(float(value)))
  if isinstance(value, bytes):
    return orjson.dumps(bytes_json(value))
  if isinstance(value, list):
    return b'[' + b','.join(carried_text(v, repeated_ok) for v in value) + b']'
  if isinstance(value, dict):
    duplicates = getattr(value, 'duplicates', None)
    if duplicates and not repeated_ok:
      raise SchemaError(f'a carried object gives field {sorted(duplicates)[0]!r} twice')
    return b'{' + b','.join(orjson.dumps(str(k)) + b':' + carried_text(v, repeated_ok)
                            for k, v in value.items()) + b'}'
  raise TypeError(f'cannot carry a {type(value).__name__}')


def bytes_json(value: bytes):
  """TF Serving's convention for bytes: UTF-8 text where valid, else
  {"b64": ...}."""
  try:
    return value.decode('utf-8')
  except UnicodeDecodeError:
    return {'b64': base64.b64encode(value).decode('ascii')}


def carried_as_text(text: Optional[bytes]) -> Optional[str]:
  """A carried value for a string column (Parquet, tf.Example bytes): a JSON
  string as its own text, null as a missing value, anything else as its JSON
  text."""
  if text is None or text == b'null':
    return None
  return orjson.loads(text) if text[:1] == b'"' else text.decode('utf-8')


# The types a carried field's Parquet column may be given (--parquet_column_types).
CARRIED_TYPES = ('string', 'int64', 'float64', 'bool')
_INTEGER_TEXT = re.compile(r'-?(?:0|[1-9][0-9]{0,18})')
_NUMBER_TEXT = re.compile(r'-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?')
_BOOL_TEXTS = {'true': True, 'false': False, 'True': True, 'False': False}


def typed_carried(text: Optional[bytes], column_type: str) -> tuple:
  """(value, text) of a carried value in a typed column: (the value, None)
  where its text (`carried_as_text`: a string's own text, CSV's cells) is
  exactly a value of the type; else (None, that text), so that nothing is
  rounded or reinterpreted. Null is (None, None).

  - int64: an integer written without a sign on zero, leading zeros, a
    fraction or an exponent, within int64's range: `42`, `-7`.
  - float64: a number whose decimal value the nearest float64 holds in its
    shortest form: `0.1`, `1e2`, `3`, but not `0.10000000000000000001`
    (more digits than float64 keeps), `1e400` or NaN.
  - bool: true or false (and Python's True or False, as pandas writes CSV).
  - string: the text itself (the default column)."""
  shown = carried_as_text(text)
  if shown is None or column_type == 'string':
    return shown, None
  if column_type == 'bool':
    if shown in _BOOL_TEXTS:
      return _BOOL_TEXTS[shown], None
  elif column_type == 'int64':
    if _INTEGER_TEXT.fullmatch(shown) and shown != '-0' and -2**63 <= int(shown) < 2**63:
      return int(shown), None
  elif column_type == 'float64':
    if _NUMBER_TEXT.fullmatch(shown):
      value = float(shown)
      if math.isfinite(value) and decimal.Decimal(repr(value)) == decimal.Decimal(shown):
        return value, None
  else:
    raise ValueError(f'unknown column type {column_type!r}')
  return None, shown
