"""Unit tests: building tf.Examples from fields (request bodies:
tests/test_request_bodies.py)."""
import pytest

from tf_batch_predict.transforms import convert as examples
from tf_batch_predict.transforms.convert import SchemaError


def test_example_kinds_inferred_from_values_without_a_parsing_spec():
  data = examples.serialize_example(
      {'age': 60, 'ratio': [0.5, 1], 'thal': ['fixed'], 'blob': {'b64': 'AAE='},
       'missing': None}, None)
  fields = examples.example_fields(data)
  assert fields == {'age': [60], 'ratio': [0.5, 1.0], 'thal': [b'fixed'], 'blob': [b'\x00\x01']}


def test_example_kinds_from_the_parsing_spec_and_csv_text():
  spec = {'age': 'float', 'count': 'int64', 'thal': 'bytes'}
  data = examples.serialize_example({'age': '61.5', 'count': '3', 'thal': 'normal',
                                     'extra': 'x'}, spec, text_cells=True)
  assert examples.example_fields(data) == {'age': [61.5], 'count': [3], 'thal': [b'normal']}
  with pytest.raises(SchemaError, match="feature 'count' expects integers"):
    examples.serialize_example({'count': 'three'}, spec, text_cells=True)
  with pytest.raises(SchemaError, match="expects integers"):
    examples.serialize_example({'count': 2.5}, spec)
  with pytest.raises(ValueError, match='not a serialized tf.Example'):
    examples.example_fields(b'\xff\xff')


def test_carried_values_from_example_features():
  from tf_batch_predict.transforms.read.input_tfrecord import carry_feature
  assert carry_feature([b'abc']) == b'"abc"'
  assert carry_feature([7]) == b'7'
  assert carry_feature([2**63 - 1, -1]) == b'[9223372036854775807,-1]'
  assert carry_feature([0.3164]) == b'0.3164'  # the shortest text of the float32
  assert carry_feature([b'\xff', b'x']) == b'[{"b64":"/w=="},"x"]'
  assert carry_feature(None) == b'null'
