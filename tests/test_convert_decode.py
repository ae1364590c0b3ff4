"""Unit tests of value conversion and chunk decoding (no pipeline)."""
import base64
import json

import numpy as np
import pytest

from transforms import convert
from transforms.decode import InstanceDecoder
from transforms.records import PARSE, RawChunk, SCHEMA
from transforms.savedmodel import SignatureSpec, TensorSpec


def spec(dtype, shape, name='x'):
  return TensorSpec(name, dtype, shape)


@pytest.mark.parametrize('value, s, expected', [
    ([1, 2.5], spec('float32', (2,)), np.array([1, 2.5], np.float32)),
    ([[1], [2]], spec('int64', (None, 1)), np.array([[1], [2]], np.int64)),
    (3.0, spec('int32', ()), np.array(3, np.int32)),
    (True, spec('bool', ()), np.array(True)),
    ([1, 2, 3], spec('float64', None), np.array([1, 2, 3], np.float64)),
])
def test_convert_value_accepts(value, s, expected):
  got = convert.convert_value(value, s)
  assert got.dtype == expected.dtype
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('value, s, message', [
    ([1, 2], spec('float32', (3,)), 'expects shape [3] per instance, got [2]'),
    ([[1, 2], [3]], spec('float32', (2, None)), 'nested lists of different lengths'),
    (['a'], spec('float32', (1,)), 'expects float32 numbers'),
    ([1.5], spec('int64', (1,)), 'expects integers'),
    ([300], spec('int8', (1,)), 'out of range for int8'),
    ([True], spec('float32', (1,)), 'got booleans'),
    ([1], spec('bool', (1,)), 'expects booleans'),
    (None, spec('float32', ()), 'is null'),
    ([1, None], spec('float32', (2,)), 'expects float32 numbers'),
    (5, spec('string', ()), 'expects strings'),
    ({'b64': 'not base64!'}, spec('string', ()), 'invalid base64'),
])
def test_convert_value_rejects_with_reason(value, s, message):
  with pytest.raises(convert.SchemaError) as e:
    convert.convert_value(value, s)
  assert message in str(e.value)
  assert '\n' not in str(e.value)


def test_strings_and_b64():
  got = convert.convert_value(['héllo', {'b64': base64.b64encode(b'\xff\x00').decode()}],
                              spec('string', (2,)))
  assert got.dtype == object and list(got) == ['héllo'.encode(), b'\xff\x00']
  nested = convert.convert_value([['a', 'b'], ['c', 'd']], spec('string', (None, 2)))
  assert nested.shape == (2, 2) and nested[1, 0] == b'c'


def test_parse_accepts_nan_and_infinity_like_tf_serving():
  value = convert.parse_json_line(b'[NaN, Infinity, -Infinity, 1]')
  assert np.isnan(value[0]) and value[1] == float('inf') and value[2] == float('-inf')
  with pytest.raises(ValueError, match='invalid JSON'):
    convert.parse_json_line(b'[1, 2')


SIG = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                    (TensorSpec('a', 'float32', (2,)), TensorSpec('b', 'string', ())),
                    (TensorSpec('y', 'float32', ()),))


def chunk(lines):
  return RawChunk([('f.jsonl', 0)], [i * 100 for i in range(len(lines))],
                  [l.encode() if isinstance(l, str) else l for l in lines])


def rows_and_feeds(batch):
  """Row index -> {input: value}, whichever path decoded the chunk."""
  out = {}
  for group in batch.groups:
    for i, row in enumerate(group.rows):
      out[row] = {k: v[i] for k, v in group.feeds.items()}
  return out


def test_columnar_and_per_instance_paths_agree():
  lines = [json.dumps({'id': i, 'a': [i, i / 3], 'b': f's{i}', 'p': i * 1.5}) for i in range(50)]
  decoder = InstanceDecoder(SIG, key_field='id', passthrough_fields=('p',))
  fast = decoder.decode(chunk(lines))
  slow = decoder._decode_per_instance(chunk(lines))
  assert len(fast.groups) == 1 and fast.errors == [] and slow.errors == []
  assert fast.keys == slow.keys == list(range(50))
  assert fast.passthrough == slow.passthrough == {'p': [i * 1.5 for i in range(50)]}
  f, s = rows_and_feeds(fast), rows_and_feeds(slow)
  for row in range(50):
    np.testing.assert_array_equal(f[row]['a'], s[row]['a'])
    assert f[row]['b'] == s[row]['b'] == f's{row}'.encode()
    assert f[row]['a'].dtype == np.float32


def test_one_bad_line_does_not_spoil_its_chunk():
  lines = [json.dumps({'a': [i, i], 'b': 'x'}) for i in range(10)]
  lines[3] = '{"a": [1, 2], "b": '
  lines[6] = json.dumps({'a': [1, 2, 3], 'b': 'x'})
  lines[8] = json.dumps({'a': [1, 2]})
  batch = InstanceDecoder(SIG).decode(chunk(lines))
  assert sorted(rows_and_feeds(batch)) == [0, 1, 2, 4, 5, 7, 9]
  assert [(e.row, e.category) for e in batch.errors] == [(3, PARSE), (6, SCHEMA), (8, SCHEMA)]
  assert len(batch) == 7


def test_bare_values_and_mixed_shapes_for_a_single_input():
  single = SignatureSpec('s', 'm', (TensorSpec('x', 'float32', (None,)),), ())
  lines = ['[1, 2]', '{"x": [3]}', '[4, 5]', '[6, 7, 8]']
  batch = InstanceDecoder(single).decode(chunk(lines))
  assert batch.errors == []
  shapes = sorted((g.rows, g.feeds['x'].shape) for g in batch.groups)
  assert shapes == [([0, 2], (2, 2)), ([1], (1, 1)), ([3], (1, 3))]
  # A bare b64 value for a single string input.
  strings = SignatureSpec('s', 'm', (TensorSpec('img', 'string', ()),), ())
  batch = InstanceDecoder(strings).decode(chunk(['{"b64": "AAE="}', '"plain"']))
  assert batch.errors == []
  feeds = rows_and_feeds(batch)
  assert [feeds[0]['img'], feeds[1]['img']] == [b'\x00\x01', b'plain']


def test_bare_value_for_multi_input_signature_is_a_schema_error():
  batch = InstanceDecoder(SIG).decode(chunk(['[1, 2]']))
  assert batch.errors[0].category == SCHEMA
  assert 'write an object with fields a, b' in batch.errors[0].message


TAB = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                    (TensorSpec('a', 'float32', ()), TensorSpec('b', 'int64', (1,)),
                     TensorSpec('c', 'string', ())),
                    (TensorSpec('y', 'float32', ()),))


def assert_same_batches(fast, slow):
  assert fast.keys == slow.keys and fast.passthrough == slow.passthrough
  assert [(e.row, e.category) for e in fast.errors] == [(e.row, e.category) for e in slow.errors]
  f, s = rows_and_feeds(fast), rows_and_feeds(slow)
  assert sorted(f) == sorted(s)
  for row in f:
    for name in f[row]:
      got, want = f[row][name], s[row][name]
      assert type(got) is type(want) and getattr(got, 'dtype', None) == getattr(want, 'dtype', None)
      np.testing.assert_array_equal(got, want)


def csv_chunk(lines):
  return RawChunk([('t.csv', 0)], list(range(len(lines))), [l.encode() for l in lines],
                  kind='csv', header=('id', 'a', 'b', 'c', 'note'))


def test_csv_columnar_path_matches_the_per_row_path():
  decoder = InstanceDecoder(TAB, key_field='id', passthrough_fields=('note',))
  lines = [f'{i},{i / 7},{i * 3},"name, {i}",n{i}' for i in range(40)]
  chunk = csv_chunk(lines)
  fast = decoder._decode_csv_columnar(chunk)  # raises if it cannot take the chunk
  assert_same_batches(fast, decoder._decode_per_instance(chunk))
  assert fast.keys[3] == '3' and fast.passthrough['note'][3] == 'n3'
  lines[5] = '5,,15,x,n5'  # an empty cell: the chunk falls back, one error
  batch = decoder.decode(csv_chunk(lines))
  assert [(e.row, e.category) for e in batch.errors] == [(5, SCHEMA)]
  assert len(batch) == 39


def tf_example(**features):
  import tensorflow as tf
  def feature(v):
    v = v if isinstance(v, list) else [v]
    if isinstance(v[0], float):
      return tf.train.Feature(float_list=tf.train.FloatList(value=v))
    if isinstance(v[0], int):
      return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.encode() for x in v]))
  return tf.train.Example(features=tf.train.Features(
      feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def tfrecord_chunk(records):
  return RawChunk([('t.tfrecord', 0)], list(range(len(records))), records, kind='tfrecord')


def test_tfrecord_columnar_path_matches_the_per_record_path():
  decoder = InstanceDecoder(TAB, key_field='id', passthrough_fields=('w',))
  records = [tf_example(id=f'r{i}', a=i / 7, b=i * 3, c=f'name {i}', w=i) for i in range(40)]
  chunk = tfrecord_chunk(records)
  fast = decoder._decode_tfrecord_columnar(chunk)
  assert_same_batches(fast, decoder._decode_per_instance(chunk))
  assert fast.keys[3] == 'r3' and fast.passthrough['w'][3] == 3
  records[7] = tf_example(id='r7', a=1.0, c='no b')  # a missing feature: fallback, one error
  records[9] = b'\x00 not an example'
  batch = decoder.decode(tfrecord_chunk(records))
  assert [(e.row, e.category) for e in batch.errors] == [(7, SCHEMA), (9, PARSE)]
  assert len(batch) == 38


def test_tfrecord_records_fed_as_they_are_to_an_example_signature():
  examples_sig = SignatureSpec('s', 'tensorflow/serving/classify',
                               (TensorSpec('inputs', 'string', ()),), (), True, {'a': 'float'})
  records = [tf_example(id=i, a=float(i)) for i in range(5)]
  decoder = InstanceDecoder(examples_sig, key_field='id')
  fast = decoder._decode_tfrecord_columnar(tfrecord_chunk(records))
  assert fast.keys == [0, 1, 2, 3, 4]
  assert list(fast.groups[0].feeds['inputs']) == records
  records[2] = b'\x00 not an example'
  batch = decoder.decode(tfrecord_chunk(records))
  assert [(e.row, e.category) for e in batch.errors] == [(2, PARSE)]


WIDE = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                     (TensorSpec('count', 'int32', ()), TensorSpec('pixels', 'float32', (40,))),
                     (TensorSpec('y', 'float32', ()),))


def test_wide_numeric_jsonl_takes_simdjson_and_matches_the_per_instance_path():
  decoder = InstanceDecoder(WIDE, key_field='id', passthrough_fields=('meta',))
  lines = [json.dumps({'id': f'w{i}', 'count': i, 'pixels': [i / 3] * 39 + [i],
                       'meta': {'tags': ['a', i]}}) for i in range(30)]
  fast = decoder._decode_jsonl_simdjson(chunk(lines))  # raises if it cannot take the chunk
  assert_same_batches(fast, decoder._decode_per_instance(chunk(lines)))
  assert fast.passthrough['meta'][4] == {'tags': ['a', 4]}
  # The parser survives being pickled to workers and used again.
  import pickle
  again = pickle.loads(pickle.dumps(decoder))
  assert_same_batches(again.decode(chunk(lines)), fast)


@pytest.mark.parametrize('bad, reason', [
    ({'count': 1, 'pixels': [[0.5] * 20, [0.5] * 20]}, 'expects shape [40]'),
    ({'count': 1, 'pixels': [0.5] * 39 + ['x']}, 'expects float32 numbers'),
    ({'count': True, 'pixels': [0.5] * 40}, 'expects int32 numbers, got booleans'),
    ({'count': 2 ** 40, 'pixels': [0.5] * 40}, 'out of range for int32'),
    ({'count': 1.5, 'pixels': [0.5] * 40}, 'expects integers'),
    ({'pixels': [0.5] * 40}, "missing input field 'count'"),
])
def test_wide_numeric_jsonl_anomalies_fall_back_to_exact_errors(bad, reason):
  lines = [json.dumps({'count': i, 'pixels': [0.25] * 40}) for i in range(8)]
  lines[3] = json.dumps(bad)
  batch = InstanceDecoder(WIDE).decode(chunk(lines))
  assert [(e.row, e.category) for e in batch.errors] == [(3, SCHEMA)]
  assert reason in batch.errors[0].message
  assert sorted(rows_and_feeds(batch)) == [0, 1, 2, 4, 5, 6, 7]
