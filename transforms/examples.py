"""tf.Example <-> instance fields.

Signatures that take serialized tf.Examples (Estimator exports, classify and
regress signatures) can be fed from JSON, CSV or Parquet instances: each
instance's fields become an Example's features, typed by the parsing spec
stored in the model's graph where there is one, else by the values.
"""
import base64
import binascii

import numpy as np

from transforms.convert import SchemaError

FLOAT, INT64, BYTES = 'float', 'int64', 'bytes'


def _example_pb2():
  # Imported on first use: the TensorFlow package costs seconds to import.
  from tensorflow.core.example import example_pb2
  return example_pb2


def _flat(value, name) -> list:
  if isinstance(value, list):
    return [x for v in value for x in _flat(v, name)]
  if isinstance(value, dict):
    if set(value) == {'b64'} and isinstance(value['b64'], str):
      try:
        return [base64.b64decode(value['b64'], validate=True)]
      except (binascii.Error, ValueError):
        raise SchemaError(f'feature {name!r}: invalid base64 in {{"b64": ...}}') from None
    raise SchemaError(f'feature {name!r}: objects cannot be Example features')
  return [value]


def _kind_of(values, name) -> str:
  if all(isinstance(v, (bool, int, np.integer)) for v in values):
    return INT64
  if all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in values):
    return FLOAT
  if all(isinstance(v, (str, bytes)) for v in values):
    return BYTES
  raise SchemaError(f'feature {name!r} mixes numbers and strings')


def _text_number(text: str, kind: str, name: str):
  try:
    return int(text) if kind == INT64 else float(text)
  except ValueError:
    raise SchemaError(f'feature {name!r} expects {kind} values, got {text!r}') from None


def serialize_example(fields: dict, feature_kinds, text_cells=False) -> bytes:
  """Fields -> serialized Example. With `feature_kinds` (the parsing spec:
  name -> float/int64/bytes) only those features are written, converted to
  their kind; without, every field is written with a kind inferred from its
  values. `text_cells`: values are CSV text."""
  example = _example_pb2().Example()
  features = example.features.feature
  for name, value in fields.items():
    if value is None or (feature_kinds is not None and name not in feature_kinds):
      continue
    values = _flat(value, name)
    kind = feature_kinds[name] if feature_kinds is not None else None
    if text_cells and value == '':
      continue  # an empty CSV cell is a missing feature
    if text_cells and kind in (FLOAT, INT64):
      values = [_text_number(v, kind, name) for v in values]
    if text_cells and kind is None:
      kind = _infer_text_kind(values)
      if kind != BYTES:
        values = [_text_number(v, kind, name) for v in values]
    kind = kind or _kind_of(values, name)
    if kind == INT64 and any(isinstance(v, float) and not v.is_integer() for v in values):
      raise SchemaError(f'feature {name!r} expects integers, got {values}')
    try:
      if kind == FLOAT:
        features[name].float_list.value.extend(float(v) for v in values)
      elif kind == INT64:
        features[name].int64_list.value.extend(int(v) for v in values)
      else:
        features[name].bytes_list.value.extend(
            v.encode('utf-8') if isinstance(v, str) else v for v in values)
    except (TypeError, ValueError, AttributeError):
      raise SchemaError(f'feature {name!r} expects {kind} values, got '
                        f'{str(values)[:40]}') from None
  return example.SerializeToString()


def _infer_text_kind(values) -> str:
  for kind in (INT64, FLOAT):
    try:
      for v in values:
        int(v) if kind == INT64 else float(v)
      return kind
    except ValueError:
      continue
  return BYTES


def example_fields(serialized: bytes) -> dict:
  """Serialized Example -> {feature name: list of values (bytes for
  bytes_list)}. Raises ValueError when the record is not an Example."""
  from google.protobuf.message import DecodeError
  example = _example_pb2().Example()
  try:
    example.ParseFromString(serialized)
  except DecodeError:
    raise ValueError('the record is not a serialized tf.Example') from None
  fields = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof('kind')
    fields[name] = list(getattr(feature, kind).value) if kind else []
  return fields


def carried_value(values: list):
  """An Example feature as a carried (key/passthrough) value: one value as a
  scalar, bytes as text where valid UTF-8."""
  def plain(v):
    if isinstance(v, bytes):
      try:
        return v.decode('utf-8')
      except UnicodeDecodeError:
        return {'b64': base64.b64encode(v).decode('ascii')}
    return v
  values = [plain(v) for v in values]
  return values[0] if len(values) == 1 else values
