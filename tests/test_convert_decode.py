"""Unit tests of the value rules and chunk decoding (no pipeline)."""
import base64
import json
import pickle

import numpy as np
import pytest

from tf_batch_predict.transforms import convert
from tf_batch_predict.transforms.read.decode import InstanceDecoder
from tf_batch_predict.transforms.read.formats import input_formats
from tf_batch_predict.transforms.json_values import parse_json
from tf_batch_predict.transforms.records import PARSE, RawChunk, SCHEMA
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec, TensorSpec


def spec(dtype, shape, name='x'):
  return TensorSpec(name, dtype, shape)


def decoder_for(signature, key_field=None, passthrough_fields=()):
  formats = input_formats(signature, key_field, passthrough_fields, 1 << 20)
  return InstanceDecoder(signature, formats, key_field, passthrough_fields)


@pytest.mark.parametrize('value, s, expected', [
    ([1, 2.5], spec('float32', (2,)), np.array([1, 2.5], np.float32)),
    ([[1], [2]], spec('int64', (None, 1)), np.array([[1], [2]], np.int64)),
    (3, spec('int32', ()), np.array(3, np.int32)),
    (True, spec('bool', ()), np.array(True)),
    ([1, 2, 3], spec('float64', None), np.array([1, 2, 3], np.float64)),
    (2 ** 64 - 1, spec('uint64', ()), np.array(2 ** 64 - 1, np.uint64)),
    (10 ** 30, spec('float32', ()), np.array(1e30, np.float32)),
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
    (3.0, spec('int64', ()), 'expects integers'),
    ([300], spec('int8', (1,)), 'out of range for int8'),
    ([True], spec('float32', (1,)), 'got booleans'),
    ([1], spec('bool', (1,)), 'expects booleans'),
    (None, spec('float32', ()), 'is null'),
    ([1, None], spec('float32', (2,)), 'expects float32 numbers'),
    (5, spec('string', ()), 'expects strings'),
    ({'b64': 'not base64!'}, spec('string', ()), 'invalid base64'),
    (10 ** 400, spec('float32', ()), 'out of the 64-bit float range'),
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


@pytest.mark.parametrize('text, reason', [
    (b'[1, 2', 'invalid JSON'),
    (b'{"a": 1} {"a": 2}', 'invalid JSON: Extra data'),
    (b'{"a": "\xff"}', 'invalid UTF-8 at byte 7'),
    (b'{"a": "\\ud800"}', 'unpaired UTF-16 surrogate'),
    (b'{"a": 1e400}', 'out of the 64-bit float range'),
    (b'[' * 1025 + b']' * 1025, 'nested deeper than 1024 levels'),
    (b'[' * 100000, 'nested deeper than 1024 levels'),
    (b'\xef\xbb\xbf{"a": 1}', 'invalid JSON'),
    (b'nan', 'invalid JSON'),
])
def test_json_definition_rejects(text, reason):
  with pytest.raises(ValueError) as e:
    parse_json(text)
  assert reason in str(e.value)


def test_json_definition_keeps_what_carried_values_need():
  value = parse_json(b'{"i": 123456789012345678901234567890, "f": 0.30000000000000001, '
                     b'"e": 1E2, "n": NaN, "s": "\\ud83d\\ude00", "d": 1, "d": 2}')
  assert value['i'] == 123456789012345678901234567890
  assert [convert.carried_text(value[k]) for k in 'ifens'] == [
      b'123456789012345678901234567890', b'0.30000000000000001', b'1E2', b'NaN',
      '"\U0001F600"'.encode()]
  assert value.duplicates == {'d'} and value['d'] == 2
  assert parse_json(b'[' * 1024 + b']' * 1024) is not None


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


def assert_same_batches(fast, slow):
  assert fast.carried == slow.carried
  assert [(e.row, e.category, e.message) for e in fast.errors] == [
      (e.row, e.category, e.message) for e in slow.errors]
  f, s = rows_and_feeds(fast), rows_and_feeds(slow)
  assert sorted(f) == sorted(s)
  for row in f:
    for name in f[row]:
      got, want = f[row][name], s[row][name]
      assert type(got) is type(want) and getattr(got, 'dtype', None) == getattr(want, 'dtype', None)
      np.testing.assert_array_equal(got, want)
      if getattr(got, 'dtype', None) is not None and got.dtype.kind == 'f':
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))  # -0.0 is not 0.0


def test_fast_and_exact_paths_agree_and_carry_texts():
  lines = [json.dumps({'id': i, 'a': [i, i / 3], 'b': f's{i}', 'p': f'{i}x'}) for i in range(50)]
  decoder = decoder_for(SIG, key_field='id', passthrough_fields=('p',))
  fast = decoder.decode(chunk(lines))
  assert len(fast.groups) == 1 and fast.errors == []
  assert_same_batches(fast, decoder.decode(chunk(lines), use_fast=False))
  assert fast.carried['id'][7] == b'7' and fast.carried['p'][7] == b'"7x"'


def test_one_bad_line_costs_only_itself():
  lines = [json.dumps({'a': [i, i], 'b': 'x'}) for i in range(10)]
  lines[3] = '{"a": [1, 2], "b": '
  lines[6] = json.dumps({'a': [1, 2, 3], 'b': 'x'})
  lines[8] = json.dumps({'a': [1, 2]})
  batch = decoder_for(SIG).decode(chunk(lines))
  assert sorted(rows_and_feeds(batch)) == [0, 1, 2, 4, 5, 7, 9]
  assert [(e.row, e.category) for e in batch.errors] == [(3, PARSE), (6, SCHEMA), (8, SCHEMA)]
  # The good lines stay on the fast path: one group, not one per line.
  assert len(batch.groups) == 1 and len(batch) == 7


def test_neighbours_do_not_change_a_line():
  """The seen divergences: a key typed from the first line, passthrough
  values re-encoded, booleans, two values on a line, repeated fields."""
  decoder = decoder_for(SIG, key_field='id', passthrough_fields=('p',))
  lines = ['{"id": 1.5, "a": [1, 2], "b": "x", "p": 0.3164}',
           '{"id": 9007199254740993, "a": [1, 2], "b": "x", "p": 0.3164}',
           '{"id": 3, "a": [true, 2], "b": "x"}',
           '{"id": 4, "a": [1, 2], "b": "x"}{"id": 5, "a": [1, 2], "b": "x"}',
           '{"id": 6, "a": [1, 2], "b": "x", "b": "y"}',
           '{"id": 7, "a": [1, 2], "b": "x", "ignored": "\xff"}'.encode('latin-1')]
  alone = [decoder.decode(chunk([line])) for line in lines]
  together = decoder.decode(chunk(lines))
  assert together.carried['id'][:2] == [b'1.5', b'9007199254740993']
  assert together.carried['p'][:2] == [b'0.3164', b'0.3164']
  for row, single in enumerate(alone):
    assert [(e.category, e.message) for e in single.errors] == [
        (e.category, e.message) for e in together.errors if e.row == row]
    assert single.carried['id'][0] == together.carried['id'][row]
  assert [(e.row, e.category) for e in together.errors] == [
      (2, SCHEMA), (3, PARSE), (4, SCHEMA), (5, PARSE)]


def test_bare_values_and_mixed_shapes_for_a_single_input():
  single = SignatureSpec('s', 'm', (TensorSpec('x', 'float32', (None,)),), ())
  lines = ['[1, 2]', '{"x": [3]}', '[4, 5]', '[6, 7, 8]']
  batch = decoder_for(single).decode(chunk(lines))
  assert batch.errors == []
  shapes = sorted((g.rows, g.feeds['x'].shape) for g in batch.groups)
  assert shapes == [([0, 2], (2, 2)), ([1], (1, 1)), ([3], (1, 3))]
  # A bare b64 value for a single string input.
  strings = SignatureSpec('s', 'm', (TensorSpec('img', 'string', ()),), ())
  batch = decoder_for(strings).decode(chunk(['{"b64": "AAE="}', '"plain"']))
  assert batch.errors == []
  feeds = rows_and_feeds(batch)
  assert [feeds[0]['img'], feeds[1]['img']] == [b'\x00\x01', b'plain']


def test_bare_value_for_multi_input_signature_is_a_schema_error():
  batch = decoder_for(SIG).decode(chunk(['[1, 2]']))
  assert batch.errors[0].category == SCHEMA
  assert 'write an object with fields a, b' in batch.errors[0].message


TAB = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                    (TensorSpec('a', 'float32', ()), TensorSpec('b', 'int64', (1,)),
                     TensorSpec('c', 'string', ())),
                    (TensorSpec('y', 'float32', ()),))


def csv_chunk(lines):
  return RawChunk([('t.csv', 0)], list(range(len(lines))), [l.encode() for l in lines],
                  kind='csv', header=('id', 'a', 'b', 'c', 'note'))


def test_csv_fast_path_matches_the_definition():
  decoder = decoder_for(TAB, key_field='id', passthrough_fields=('note',))
  lines = [f'{i},{i / 7},{i * 3},"name, {i}",n{i}' for i in range(40)]
  lines[5] = '5,,15,x,n5'  # an empty cell: one error
  lines[9] = '9,1e400,1,x,n9'  # beyond the 64-bit range
  lines[11] = '11,0x10,1,x,n11'
  fast = decoder.decode(csv_chunk(lines))
  assert_same_batches(fast, decoder.decode(csv_chunk(lines), use_fast=False))
  assert fast.carried['id'][3] == b'"3"' and fast.carried['note'][3] == b'"n3"'
  assert [(e.row, e.category) for e in fast.errors] == [(5, SCHEMA), (9, SCHEMA), (11, SCHEMA)]
  assert len(fast) == 37


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


def test_tfrecord_fast_path_matches_the_definition():
  decoder = decoder_for(TAB, key_field='id', passthrough_fields=('w',))
  records = [tf_example(id=f'r{i}', a=i / 7, b=i * 3, c=f'name {i}', w=i) for i in range(40)]
  fast = decoder.decode(tfrecord_chunk(records))
  assert_same_batches(fast, decoder.decode(tfrecord_chunk(records), use_fast=False))
  assert fast.carried['id'][3] == b'"r3"' and fast.carried['w'][3] == b'3'
  records[7] = tf_example(id='r7', a=1.0, c='no b')  # a missing feature
  records[9] = b'\x00 not an example'
  batch = decoder.decode(tfrecord_chunk(records))
  assert [(e.row, e.category) for e in batch.errors] == [(7, SCHEMA), (9, PARSE)]
  assert len(batch) == 38


def test_tfrecord_records_fed_as_they_are_to_an_example_signature():
  examples_sig = SignatureSpec('s', 'tensorflow/serving/classify',
                               (TensorSpec('inputs', 'string', ()),), (), True, {'a': 'float'})
  records = [tf_example(id=i, a=float(i)) for i in range(5)]
  decoder = decoder_for(examples_sig, key_field='id')
  batch = decoder.decode(tfrecord_chunk(records))
  assert batch.carried['id'] == [b'0', b'1', b'2', b'3', b'4']
  assert list(batch.groups[0].feeds['inputs']) == records
  records[2] = b'\x00 not an example'
  batch = decoder.decode(tfrecord_chunk(records))
  assert [(e.row, e.category) for e in batch.errors] == [(2, PARSE)]


WIDE = SignatureSpec('serving_default', 'tensorflow/serving/predict',
                     (TensorSpec('count', 'int32', ()), TensorSpec('pixels', 'float32', (40,))),
                     (TensorSpec('y', 'float32', ()),))


def test_wide_numeric_jsonl_fast_path_survives_pickling():
  decoder = decoder_for(WIDE, key_field='id', passthrough_fields=('meta',))
  lines = [json.dumps({'id': f'w{i}', 'count': i, 'pixels': [i / 3] * 39 + [i],
                       'meta': {'tags': ['a', i]}}) for i in range(30)]
  fast = decoder.decode(chunk(lines))
  assert_same_batches(fast, decoder.decode(chunk(lines), use_fast=False))
  assert fast.carried['meta'][4] == b'{"tags":["a",4]}'
  again = pickle.loads(pickle.dumps(decoder))
  assert_same_batches(again.decode(chunk(lines)), fast)


@pytest.mark.parametrize('bad, reason', [
    ({'count': 1, 'pixels': [[0.5] * 20, [0.5] * 20]}, 'expects shape [40]'),
    ({'count': 1, 'pixels': [0.5] * 39 + ['x']}, 'expects float32 numbers'),
    ({'count': True, 'pixels': [0.5] * 40}, 'expects integers (int32), got booleans'),
    ({'count': 2 ** 40, 'pixels': [0.5] * 40}, 'out of range for int32'),
    ({'count': 1.5, 'pixels': [0.5] * 40}, 'expects integers'),
    ({'pixels': [0.5] * 40}, "missing input field 'count'"),
])
def test_wide_numeric_jsonl_anomalies_get_exact_errors(bad, reason):
  lines = [json.dumps({'count': i, 'pixels': [0.25] * 40}) for i in range(8)]
  lines[3] = json.dumps(bad)
  batch = decoder_for(WIDE).decode(chunk(lines))
  assert [(e.row, e.category) for e in batch.errors] == [(3, SCHEMA)]
  assert reason in batch.errors[0].message
  assert sorted(rows_and_feeds(batch)) == [0, 1, 2, 4, 5, 6, 7]
