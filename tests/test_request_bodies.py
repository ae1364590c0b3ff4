"""TF Serving request bodies (row, columnar, classify/regress) and tf.Example
inputs (fed by input name, checked against the graph's parsing spec): unit
tests of split_request and the spec, a property test of the check against
TensorFlow's own parser, and whole jobs on the estimator-style model
against the model called directly."""
import base64
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from tests.helpers import assert_close_across_batches, assert_conserved, run_job, write_lines
from tests.test_convert_decode import decoder_for
from tf_batch_predict.transforms import convert
from tf_batch_predict.transforms.model import example_spec
from tf_batch_predict.transforms.model.example_spec import FeatureSpec
from tf_batch_predict.transforms.read.input_json import NotAnExample, RequestError, split_request
from tf_batch_predict.transforms.json_values import parse_json
from tf_batch_predict.transforms.records import RawChunk, SCHEMA
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec, TensorSpec


def signature(*inputs, takes_examples=False, features=None, name='serving_default'):
  return SignatureSpec(name, 'tensorflow/serving/predict',
                       tuple(TensorSpec(*i) for i in inputs), (), takes_examples, features)


VECTOR = signature(('x', 'float32', (3,)))
SCALAR_STRING = signature(('s', 'string', ()))
UNKNOWN_RANK = signature(('u', 'float32', None))
TWO = signature(('a', 'float32', (2,)), ('b', 'string', ()))
SHAPE_ONE = signature(('x', 'float32', (1,)))  # Keras Input(shape=(1,)): [batch, 1]
TWO_SHAPE_ONE = signature(('a', 'float32', (1,)), ('b', 'string', (1,)))
SHAPE_ONE_AND_SCALAR = signature(('x', 'float32', (1,)), ('s', 'string', ()))
ESTIMATOR_FEATURES = {'age': FeatureSpec('float', True, (1,)),
                      'thal': FeatureSpec('bytes', True, (1,)),
                      'count': FeatureSpec('int64', False, ())}
EXAMPLES = signature(('inputs', 'string', ()), takes_examples=True,
                     features=ESTIMATOR_FEATURES, name='classification')
B64 = {'b64': 'AAE='}


@pytest.mark.parametrize('sig, body, expected', [
    # row format
    (VECTOR, {'instances': [[1, 2, 3], [4, 5, 6]]}, [[1, 2, 3], [4, 5, 6]]),
    # columnar, a single input: depth = rank is one instance, rank + 1 a batch
    (VECTOR, {'inputs': [1, 2, 3]}, [[1, 2, 3]]),
    (VECTOR, {'inputs': [[1, 2, 3], [4, 5, 6]]}, [[1, 2, 3], [4, 5, 6]]),
    (VECTOR, {'inputs': [[1, 2]]}, [[1, 2]]),  # a batch; its instance's shape is wrong
    (SCALAR_STRING, {'inputs': 'text'}, ['text']),
    (SCALAR_STRING, {'inputs': B64}, [B64]),
    (SCALAR_STRING, {'inputs': [B64, B64]}, [B64, B64]),
    (SCALAR_STRING, {'inputs': ['a']}, ['a']),
    (UNKNOWN_RANK, {'inputs': 5}, [5]),
    (UNKNOWN_RANK, {'inputs': [[1], [2, 3]]}, [[1], [2, 3]]),
    # columnar, named inputs
    (TWO, {'inputs': {'a': [1, 2], 'b': 'x'}}, [{'a': [1, 2], 'b': 'x'}]),
    (TWO, {'inputs': {'a': [[1, 2], [3, 4]], 'b': ['x', 'y'], 'id': [7, 8]}},
     [{'a': [1, 2], 'b': 'x', 'id': 7}, {'a': [3, 4], 'b': 'y', 'id': 8}]),
    (TWO, {'inputs': {'a': [1, 2], 'b': 'x', 'id': [7, 8]}},  # one instance: id as it is
     [{'a': [1, 2], 'b': 'x', 'id': [7, 8]}]),
    (TWO, {'inputs': {'id': [1, 2], 'p': ['x', 'y']}}, [{'id': 1, 'p': 'x'}, {'id': 2, 'p': 'y'}]),
    (TWO, {'inputs': {'id': 1}}, [{'id': 1}]),
    # an input of shape [1]: a list of scalars is a batch (each scalar fits [1])
    (SHAPE_ONE, {'inputs': [2.0, 3.0, 4.0]}, [2.0, 3.0, 4.0]),
    (SHAPE_ONE, {'inputs': {'x': [2.0, 3.0, 4.0]}}, [{'x': 2.0}, {'x': 3.0}, {'x': 4.0}]),
    (SHAPE_ONE, {'instances': [2.0, 3.0, 4.0]}, [2.0, 3.0, 4.0]),
    (SHAPE_ONE, {'inputs': [[2.0], [3.0]]}, [[2.0], [3.0]]),
    (SHAPE_ONE, {'inputs': 5.0}, [5.0]),
    (SHAPE_ONE, {'inputs': [5.0]}, [[5.0]]),  # either reading: the same instance
    (SHAPE_ONE, {'inputs': []}, [[]]),  # one instance's value (a schema error), not no instance
    (SHAPE_ONE, {'inputs': ['a', 3.0]}, ['a', 3.0]),  # a batch: 'a' fails alone
    (SHAPE_ONE, {'inputs': {'x': [2.0, 3.0], 'id': [7, 8]}}, [{'x': 2.0, 'id': 7},
                                                              {'x': 3.0, 'id': 8}]),
    (SHAPE_ONE, {'inputs': {'x': [5.0], 'id': [7]}}, [{'x': [5.0], 'id': [7]}]),  # ambiguous
    (TWO_SHAPE_ONE, {'inputs': {'a': [1.0, 2.0], 'b': ['p', 'q']}},
     [{'a': 1.0, 'b': 'p'}, {'a': 2.0, 'b': 'q'}]),
    (TWO_SHAPE_ONE, {'inputs': {'a': [1.0], 'b': ['p']}}, [{'a': [1.0], 'b': ['p']}]),
    (TWO_SHAPE_ONE, {'inputs': {'a': [1.0], 'b': [['p']]}}, [{'a': 1.0, 'b': ['p']}]),
    (SHAPE_ONE_AND_SCALAR, {'inputs': {'x': [1.0], 's': 'a'}}, [{'x': [1.0], 's': 'a'}]),
    (SHAPE_ONE_AND_SCALAR, {'inputs': {'x': [1.0, 2.0], 's': ['a', 'b']}},
     [{'x': 1.0, 's': 'a'}, {'x': 2.0, 's': 'b'}]),
    (signature(('v', 'float32', (None,))), {'inputs': [1.0, 2.0]}, [[1.0, 2.0]]),
    (signature(('m', 'float32', (1, 1))), {'inputs': [[1.0, 2.0]]}, [[[1.0, 2.0]]]),
    # serialized Examples by input name; features by name
    (EXAMPLES, {'inputs': {'inputs': [B64]}}, [{'inputs': B64}]),
    (EXAMPLES, {'inputs': B64}, [B64]),
    (EXAMPLES, {'inputs': {'age': [30, 40], 'thal': ['a', 'b']}},
     [{'age': 30, 'thal': 'a'}, {'age': 40, 'thal': 'b'}]),
    # classify / regress bodies
    (EXAMPLES, {'signature_name': 'classification', 'context': {'thal': 'x', 'count': 3},
                'examples': [{'age': 1}, {'age': 2, 'thal': 'y'}]},
     [{'thal': 'x', 'count': 3, 'age': 1}, {'thal': 'y', 'count': 3, 'age': 2}]),
    (EXAMPLES, {'examples': [{'age': 1}, 5, [1]]},
     [{'age': 1}, NotAnExample(5), NotAnExample([1])]),
    (EXAMPLES, {'examples': []}, []),
    (TWO, {'examples': [{'a': [1, 2]}], 'context': {'b': 'z'}}, [{'b': 'z', 'a': [1, 2]}]),
    # single instances
    (EXAMPLES, {'examples': B64}, [{'examples': B64}]),  # a field named "examples"
    (TWO, {'a': [1, 2], 'b': 'x'}, [{'a': [1, 2], 'b': 'x'}]),
    (VECTOR, [1, 2, 3], [[1, 2, 3]]),
])
def test_request_body_forms(sig, body, expected):
  assert split_request(body, sig) == expected


@pytest.mark.parametrize('sig, body, message', [
    (TWO, {'instances': [1], 'inputs': [1]}, 'not both (it has instances and inputs)'),
    (EXAMPLES, {'examples': [], 'inputs': [1]}, 'not both'),
    (TWO, {'inputs': {'a': [[1, 2], [3, 4]], 'b': ['x']}}, 'different batch lengths'),
    (TWO, {'inputs': {'id': [1, 2], 'p': [1]}}, 'different batch lengths'),
    (TWO, {'inputs': {'a': [[1, 2], [3, 4]], 'b': 'x'}},
     "cannot be split into instances: 'b' holds one instance's value, 'a' a batch"),
    (TWO, {'inputs': {'a': [[1, 2]], 'b': ['x'], 'id': 'k'}}, "'id' holds one instance's value"),
    (TWO, {'inputs': {}}, 'names no input'),
    (SHAPE_ONE, {'inputs': {'x': [2.0, 3.0], 'id': 'k'}},
     "'id' holds one instance's value, 'x' a batch"),
    (SHAPE_ONE_AND_SCALAR, {'inputs': {'x': [1.0, 2.0], 's': 'a'}},
     "'s' holds one instance's value, 'x' a batch"),
    (TWO_SHAPE_ONE, {'inputs': {'a': [1.0], 'b': ['p', 'q']}}, 'different batch lengths'),
    (TWO, {'inputs': 5}, 'must hold a batch'),
    (TWO, {'instances': 3}, 'must be a list'),
    (EXAMPLES, {'examples': B64, 'context': {}}, '"examples" must be a list'),
    (EXAMPLES, {'examples': [{}], 'context': [1]}, '"context" must be an object of features'),
    (EXAMPLES, {'signature_name': 'x', 'examples': [{}]},
     "asks for signature 'x'; this job runs 'classification'"),
    (TWO, {'signature_name': 'x', 'instances': [1]}, "asks for signature 'x'"),
])
def test_malformed_request_bodies(sig, body, message):
  with pytest.raises(RequestError) as e:
    split_request(body, sig)
  assert message in str(e.value)


def test_repeated_body_fields_and_merged_duplicates():
  with pytest.raises(RequestError, match='gives "examples" twice'):
    split_request(parse_json(b'{"examples": [], "examples": []}'), EXAMPLES)
  with pytest.raises(RequestError, match='gives "context" twice'):
    split_request(parse_json(b'{"examples": [], "context": {}, "context": {}}'), EXAMPLES)
  body = parse_json(b'{"examples": [{"a": 1, "a": 2}, {"b": 5}, {"c": 1}],'
                    b' "context": {"b": 1, "b": 2, "c": 0}}')
  first, second, third = split_request(body, EXAMPLES)
  assert first == {'b': 2, 'c': 0, 'a': 2} and first.duplicates == {'a', 'b'}
  assert second == {'b': 5, 'c': 0} and not second.duplicates  # the example overrides b
  assert third == {'b': 2, 'c': 1} and third.duplicates == {'b'}


def json_chunk(records):
  return RawChunk([('r.json', 0)], list(range(len(records))), records, kind='json')


def test_examples_and_b64_examples_decode_per_instance():
  """An element of "examples" that is not an object fails alone; in an
  element every field is a feature, as TF Serving reads it, even one named
  like the input (a serialized Example by input name is for predict
  bodies and lines: fed as it is, key carried, checked against the spec);
  a field of that name that is a spec feature is a feature."""
  from tests.test_convert_decode import tf_example
  good = tf_example(age=30.0, thal='fixed')
  body = {'examples': [{'age': 40, 'thal': 'normal', 'id': 'e0'}, 7, {'age': 41, 'id': 'e2'},
                       {'inputs': {'b64': base64.b64encode(good).decode()}, 'id': 'e3'}],
          'context': {'count': 2}}
  decoder = decoder_for(EXAMPLES, key_field='id')
  batch = decoder.decode(json_chunk(split_request(body, EXAMPLES)))
  assert [(e.row, e.category, e.message) for e in batch.errors] == [
      (1, SCHEMA, 'an element of "examples" must be an object of features, got 7'),
      (2, SCHEMA, "missing required feature 'thal' (bytes, 1 value (shape [1]))"),
      (3, SCHEMA, "missing required feature 'age' (float, 1 value (shape [1]))")]
  feeds = batch.groups[0].feeds['inputs']
  assert batch.groups[0].rows == [0]
  assert convert.example_fields(feeds[0]) == {'age': [40.0], 'thal': [b'normal'], 'count': [2]}
  assert batch.carried['id'] == [b'"e0"', None, b'"e2"', b'"e3"']
  # In a context too: features of every example, not an Example to feed.
  body = {'examples': [{'age': 10, 'thal': 'normal'}],
          'context': {'inputs': {'b64': base64.b64encode(good).decode()}}}
  batch = decoder_for(EXAMPLES).decode(json_chunk(split_request(body, EXAMPLES)))
  assert convert.example_fields(batch.groups[0].feeds['inputs'][0]) == {
      'age': [10.0], 'thal': [b'normal']}
  # A predict body's instance: the Example by input name, fed as it is.
  body = {'instances': [{'inputs': {'b64': base64.b64encode(good).decode()}, 'id': 'i0'}]}
  batch = decoder.decode(json_chunk(split_request(body, EXAMPLES)))
  assert batch.groups[0].feeds['inputs'][0] == good and batch.carried['id'] == [b'"i0"']
  assert decoder.format('json').raw(json_chunk([NotAnExample(7)]), 0) == b'7'
  # A feature named like the input is a feature, not a serialized Example.
  shadowed = signature(('inputs', 'string', ()), takes_examples=True,
                       features={'inputs': FeatureSpec('bytes', True, (1,))})
  batch = decoder_for(shadowed).decode(json_chunk([{'inputs': 'word'}]))
  assert convert.example_fields(batch.groups[0].feeds['inputs'][0]) == {'inputs': [b'word']}


def test_examples_body_for_a_signature_of_named_inputs():
  """Merged fields name the inputs, as an instance's fields do (TF
  Serving's classify API would refuse such a signature)."""
  body = {'examples': [{'a': [1, 2]}, {'a': [3, 4], 'b': 'own'}, {'b': 'no a'}],
          'context': {'b': 'shared'}}
  batch = decoder_for(TWO).decode(json_chunk(split_request(body, TWO)))
  assert [(e.row, e.category, e.message) for e in batch.errors] == [
      (2, SCHEMA, "missing input field 'a'")]
  feeds = batch.groups[0].feeds
  np.testing.assert_array_equal(feeds['a'], np.array([[1, 2], [3, 4]], np.float32))
  assert list(feeds['b']) == [b'shared', b'own']


# -- the parsing spec ---------------------------------------------------------

def _graph_features(build):
  import tensorflow as tf
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf.compat.v1.placeholder(tf.string, [None])
    build(tf, serialized)
  graph_def = graph.as_graph_def()
  every_node = [n.name for n in graph_def.node]
  return example_spec.example_features(
      graph_def, example_spec.parse_example_nodes(graph_def, every_node))


def test_example_spec_from_parse_example_v2():
  features = _graph_features(lambda tf, s: tf.io.parse_example(s, {
      'age': tf.io.FixedLenFeature([1], tf.float32),
      'count': tf.io.FixedLenFeature([], tf.int64, default_value=0),
      'grid': tf.io.FixedLenFeature([2, 3], tf.string),
      'grid_default': tf.io.FixedLenFeature([2], tf.float32, default_value=[1.0, 2.0]),
      'tags': tf.io.VarLenFeature(tf.string),
      'seq': tf.io.FixedLenSequenceFeature([2], tf.float32, allow_missing=True),
      'ragged': tf.io.RaggedFeature(tf.int64)}))
  assert features == {
      'age': FeatureSpec('float', True, (1,)), 'count': FeatureSpec('int64', False, ()),
      'grid': FeatureSpec('bytes', True, (2, 3)),
      'grid_default': FeatureSpec('float', False, (2,)),
      'tags': FeatureSpec('bytes'), 'seq': FeatureSpec('float', False, (None, 2)),
      'ragged': FeatureSpec('int64')}


def test_example_spec_from_the_v1_op_and_a_saved_function(tmp_path):
  features = _graph_features(lambda tf, s: tf.raw_ops.ParseExample(
      serialized=s, names=tf.constant([], tf.string), sparse_keys=[tf.constant('sp')],
      dense_keys=[tf.constant('d1'), tf.constant('d2')],
      dense_defaults=[tf.constant([], tf.float32), tf.constant([5], tf.int64)],
      sparse_types=[tf.float32], dense_shapes=[[2], [1]]))
  assert features == {'sp': FeatureSpec('float'), 'd1': FeatureSpec('float', True, (2,)),
                      'd2': FeatureSpec('int64', False, (1,))}
  # A TF2 SavedModel: the parsing node lives in the function library.
  from tf_batch_predict.transforms.model.savedmodel import read_signature
  from tests.models_examples import build_tf2_example_model
  build_tf2_example_model(str(tmp_path / 'm'))
  spec = read_signature(str(tmp_path / 'm'), ('serve',), 'serving_default')
  assert spec.takes_examples
  assert spec.example_features == {'x': FeatureSpec('float', True, (2,)),
                                   'w': FeatureSpec('float', False, ()),
                                   'tags': FeatureSpec('bytes')}


def test_parsing_spec_is_the_chosen_signatures_own(tmp_path):
  """Signatures of one SavedModel parse different Examples, or none: each
  gets only the parsing nodes its outputs depend on."""
  import tensorflow as tf

  class Two(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='s')])
    def lengths(self, s):
      return {'n': tf.strings.length(s)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def parse_a(self, examples):
      parsed = tf.io.parse_example(examples, {'a': tf.io.FixedLenFeature([], tf.float32)})
      return {'y': parsed['a'] * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def parse_c(self, examples):  # parse_a's very nodes, reading other constants
      parsed = tf.io.parse_example(examples, {'c': tf.io.FixedLenFeature([], tf.float32)})
      return {'y': parsed['c'] * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def parse_b(self, examples):
      parsed = tf.io.parse_example(examples, {
          'b': tf.io.FixedLenFeature([], tf.float32),
          'a': tf.io.FixedLenFeature([], tf.int64, default_value=0)})
      return {'y': parsed['b'] + tf.cast(parsed['a'], tf.float32)}

  module = Two()
  path = str(tmp_path / 'two')
  tf.saved_model.save(module, path, signatures={
      'serving_default': module.lengths, 'parse_a': module.parse_a, 'parse_b': module.parse_b,
      'parse_c': module.parse_c})
  from tf_batch_predict.transforms.model.savedmodel import read_signature
  plain = read_signature(path, ('serve',), 'serving_default')
  assert not plain.takes_examples and plain.example_features is None
  assert read_signature(path, ('serve',), 'parse_a').example_features == {
      'a': FeatureSpec('float', True, ())}
  assert read_signature(path, ('serve',), 'parse_c').example_features == {
      'c': FeatureSpec('float', True, ())}
  assert read_signature(path, ('serve',), 'parse_b').example_features == {
      'b': FeatureSpec('float', True, ()), 'a': FeatureSpec('int64', False, ())}


def test_sample_example_satisfies_the_spec():
  features = dict(ESTIMATOR_FEATURES, grid=FeatureSpec('bytes', True, (2, 3)),
                  seq=FeatureSpec('float', False, (None, 2)), tags=FeatureSpec('bytes'))
  data = example_spec.sample_example(features)
  convert.check_example(data, features)
  assert convert.example_fields(data) == {'age': [0.0], 'thal': [b''], 'count': [0],
                                          'grid': [b''] * 6}
  assert example_spec.sample_example(None) == b''


@pytest.mark.parametrize('example, message', [
    (dict(thal=['x']), "missing required feature 'age' (float, 1 value (shape [1]))"),
    (dict(age=[1.0], thal=[]), "feature 'thal' must hold 1 value (shape [1]), the Example has 0"),
    (dict(age=[1, 2], thal=['x']), "feature 'age' must be a float list, the Example has an "
                                   "int64 list"),
    (dict(age=[1.0, 2.0], thal=['x']), "feature 'age' must hold 1 value (shape [1]), the "
                                       "Example has 2"),
    (dict(age=[1.0], thal=['x'], count=[1.0]),
     "feature 'count' must be an int64 list, the Example has a float list"),
    (dict(age=[1.0], thal=['x'], count=[1, 2]),
     "feature 'count' must hold 1 value (shape []), the Example has 2"),
    (dict(age=[1.0], thal=['x'], seq=[1.0, 2.0, 3.0]),
     "feature 'seq' must hold a multiple of 2 values (shape [?,2]), the Example has 3"),
    (dict(age=[1.0], thal=['x'], tags=[1.0]),
     "feature 'tags' must be a bytes list, the Example has a float list"),
])
def test_check_example_names_the_feature(example, message):
  features = dict(ESTIMATOR_FEATURES, seq=FeatureSpec('float', False, (None, 2)),
                  tags=FeatureSpec('bytes'))
  with pytest.raises(convert.SchemaError) as e:
    convert.check_example(_example(example), features)
  assert str(e.value) == message


def test_check_example_accepts_what_tensorflow_accepts():
  features = dict(ESTIMATOR_FEATURES, seq=FeatureSpec('float', False, (None, 2)))
  convert.check_example(_example(dict(age=[1.0], thal=['x'], seq=('float', []), extra=[1])),
                        features)
  convert.check_example(_example(dict(age=[1.0], thal=['x'], count=None, tags=None)), features)
  with pytest.raises(convert.SchemaError, match="missing required feature 'age'"):
    convert.check_example(_example(dict(age=None, thal=['x'])), features)  # a kindless feature
  with pytest.raises(ValueError, match='not a serialized tf.Example'):
    convert.check_example(b'\xff\xff', features)


def _example(features: dict) -> bytes:
  """A tf.Example whose features are float, int64 or bytes lists by their
  values' type (an empty list is a bytes list), or (kind, values); None a
  feature of no kind."""
  from tensorflow.core.example import example_pb2
  example = example_pb2.Example()
  for name, values in features.items():
    feature = example.features.feature[name]
    if values is None:
      feature.SetInParent()
    elif isinstance(values, tuple):
      getattr(feature, f'{values[0]}_list').SetInParent()
      getattr(feature, f'{values[0]}_list').value.extend(values[1])
    elif values and isinstance(values[0], float):
      feature.float_list.value.extend(values)
    elif values and isinstance(values[0], int):
      feature.int64_list.value.extend(values)
    else:
      feature.bytes_list.SetInParent()
      feature.bytes_list.value.extend(v.encode() for v in values)
  return example.SerializeToString()


# The check is an optimization of TensorFlow's parser, never a second
# definition: on generated Examples it refuses exactly what parse_example
# refuses.
_KIND_VALUES = st.sampled_from(['float', 'int64', 'bytes', 'none']).flatmap(
    lambda kind: st.just((kind, [])) if kind == 'none' else st.tuples(
        st.just(kind), st.lists({'float': st.just(0.5), 'int64': st.just(3),
                                 'bytes': st.just(b'v')}[kind], max_size=4)))


@st.composite
def _generated_example(draw):
  from tensorflow.core.example import example_pb2
  example = example_pb2.Example()
  for name in draw(st.lists(st.sampled_from(['age', 'thal', 'count', 'seq', 'tags', 'other']),
                            max_size=6, unique=True)):
    kind, values = draw(_KIND_VALUES)
    feature = example.features.feature[name]
    if kind == 'none':
      feature.SetInParent()
    else:
      getattr(feature, f'{kind}_list').SetInParent()
      getattr(feature, f'{kind}_list').value.extend(values)
  data = example.SerializeToString()
  if draw(st.integers(0, 6)) == 0:  # a second Example appended: features repeated
    data += draw(_generated_example())
  return data


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(st.lists(_generated_example(), min_size=20, max_size=20))
def test_check_example_refuses_exactly_what_tensorflow_refuses(records):
  import tensorflow as tf
  features = dict(ESTIMATOR_FEATURES, seq=FeatureSpec('float', False, (None, 2)),
                  tags=FeatureSpec('bytes'))
  tf_spec = {'age': tf.io.FixedLenFeature([1], tf.float32),
             'thal': tf.io.FixedLenFeature([1], tf.string),
             'count': tf.io.FixedLenFeature([], tf.int64, default_value=0),
             'seq': tf.io.FixedLenSequenceFeature([2], tf.float32, allow_missing=True),
             'tags': tf.io.VarLenFeature(tf.string)}
  records = [_example(dict(age=[1.0], thal=['x']))] + records
  for record in records:
    try:
      convert.check_example(record, features)
      ours = None
    except convert.SchemaError as e:
      ours = str(e)
    try:
      tf.io.parse_example([record], tf_spec)
      theirs = None
    except tf.errors.InvalidArgumentError as e:
      theirs = e.message.split('\n')[0]
    assert (ours is None) == (theirs is None), (record, ours, theirs)


# -- whole jobs on the estimator-style model ----------------------------------

def reference_example(age=None, thal=None, count=None, tag=None, age_kind=float) -> bytes:
  """The Example TF Serving would build, written with tf.train.Example."""
  import tensorflow as tf
  feature = {}
  if age is not None:
    ages = age if isinstance(age, list) else [age]
    feature['age'] = (tf.train.Feature(float_list=tf.train.FloatList(value=ages))
                      if age_kind is float else
                      tf.train.Feature(int64_list=tf.train.Int64List(value=ages)))
  if thal is not None:
    feature['thal'] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[thal.encode()]))
  if count is not None:
    feature['count'] = tf.train.Feature(int64_list=tf.train.Int64List(value=[count]))
  if tag is not None:
    feature['tag'] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[tag.encode()]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def b64(data: bytes) -> dict:
  return {'b64': base64.b64encode(data).decode('ascii')}


@pytest.mark.cross_batch
@pytest.mark.parametrize('sig, input_name', [
    ('classification', 'inputs'), ('regression', 'inputs'), ('serving_default', 'examples')])
def test_request_bodies_and_example_inputs_end_to_end(model_dir, tmp_path, signature_of, sig,
                                                      input_name):
  from tests.test_formats import write_tfrecords
  d = tmp_path / 'in'
  d.mkdir()
  expected = {}  # tag (or file name) -> the serialized Example the model must score

  def fed(name, data):
    expected[name] = data
    return b64(data)

  (d / 'classify.json').write_text(json.dumps({
      'signature_name': sig, 'context': {'count': 1, 'thal': 'normal'}, 'examples': [
          {'age': 30.0, 'thal': b64(b'fixed'), 'tag': 'c0'}, {'age': 41, 'tag': 'c1'},
          {'age': 50, 'count': 0, 'tag': 'c2'}, 'not an object', {'age': [1, 2], 'tag': 'c4'}]}))
  expected.update(c0=reference_example(30.0, 'fixed', 1), c1=reference_example(41.0, 'normal', 1),
                  c2=reference_example(50.0, 'normal', 0))
  (d / 'no_thal.json').write_text(json.dumps({'examples': [
      {'age': 3, 'tag': 'm0'}, {'age': 4, 'thal': 'fixed', 'tag': 'm1'}]}))
  expected['m1'] = reference_example(4.0, 'fixed')
  (d / 'other.json').write_text(json.dumps({'signature_name': 'nope', 'examples': [{}]}))
  (d / 'rows.json').write_text(json.dumps({'instances': [
      {input_name: fed('r0', reference_example(7.5, 'fixed', 2)), 'tag': 'r0'},
      {input_name: b64(reference_example(thal='fixed')), 'tag': 'r1'}]}))
  (d / 'columns.json').write_text(json.dumps({'inputs': {
      input_name: [fed('k0', reference_example(1.0, 'x')),
                   fed('k1', reference_example(2.0, 'fixed'))],
      'tag': ['k0', 'k1']}}))
  (d / 'single.json').write_text(json.dumps({'inputs': fed('single.json',
                                                             reference_example(9.0, 'fixed', 3))}))
  lines = [json.dumps({input_name: fed('l0', reference_example(11.0, 'normal')), 'tag': 'l0'}),
           json.dumps(fed('lines.jsonl', reference_example(12.0, 'fixed'))),
           json.dumps({input_name: b64(reference_example(13.0)), 'tag': 'l2'})]
  write_lines(str(d / 'lines.jsonl'), lines)
  records = [reference_example(20.0, 'fixed', 4, tag='t0'), reference_example(21.0, tag='t1'),
             reference_example(22, 'fixed', tag='t2', age_kind=int),
             reference_example([23.0, 24.0], 'fixed', tag='t3')]
  expected['t0'] = records[0]
  write_tfrecords(str(d / 'records.tfrecord'), records)

  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "estimator"}', f'--signature={sig}',
      f'--input={d}/*', '--passthrough_fields=tag')
  assert_conserved(summary, predictions, errors)
  got = sorted((e['filename'], e.get('index', e.get('offset')), e['error']['category'],
                e['error']['message']) for e in errors)
  assert got == sorted([
      ('classify.json', 3, 'schema',
       'an element of "examples" must be an object of features, got "not an object"'),
      ('classify.json', 4, 'schema',
       "feature 'age' must hold 1 value (shape [1]), the Example has 2"),
      ('lines.jsonl', len(lines[0]) + len(lines[1]) + 2, 'schema',
       "missing required feature 'thal' (bytes, 1 value (shape [1]))"),
      ('no_thal.json', 0, 'schema', "missing required feature 'thal' (bytes, 1 value (shape [1]))"),
      ('other.json', None, 'parse',
       f"the request asks for signature 'nope'; this job runs '{sig}'"),
      ('records.tfrecord', 1, 'schema',
       "missing required feature 'thal' (bytes, 1 value (shape [1]))"),
      ('records.tfrecord', 2, 'schema',
       "feature 'age' must be a float list, the Example has an int64 list"),
      ('records.tfrecord', 3, 'schema',
       "feature 'age' must hold 1 value (shape [1]), the Example has 2"),
      ('rows.json', 1, 'schema', "missing required feature 'age' (float, 1 value (shape [1]))")])
  assert json.loads(next(e for e in errors if e['filename'] == 'lines.jsonl')['raw'])['tag'] == 'l2'
  by_name = {p['tag'] if p.get('tag') is not None else p['filename']: p for p in predictions}
  assert sorted(by_name) == sorted(expected)
  assert 'index' not in by_name['single.json']
  assert by_name['c1']['index'] == 1 and by_name['k1']['index'] == 1
  names = sorted(expected)
  reference = signature_of(model_dir / 'estimator', sig, **{input_name: np.array(
      [expected[n] for n in names], dtype=object)})
  for output, values in reference.items():
    if values.dtype == object:
      for i, name in enumerate(names):
        assert by_name[name][output] == [v.decode() for v in values[i]], name
    else:  # the model called on all of them at once: other batches than the job's
      assert_close_across_batches([by_name[name][output] for name in names], values, output)


def test_repeated_features_are_schema_errors():
  """A feature of the parsing spec given twice (in a JSON Lines line, an
  example or its context) is a schema error: which value was meant is
  unknown. A repeated field the spec does not read is ignored."""
  from tf_batch_predict.transforms.records import JSONL
  lines = [b'{"age": 60, "thal": "fixed", "age": 61}', b'{"age": 60, "thal": "fixed"}',
           b'{"age": 60, "thal": "fixed", "note": 1, "note": 2}']
  decoder = decoder_for(EXAMPLES)
  batch = decoder.decode(RawChunk([('a.jsonl', 0)], [0, 40, 80], lines, kind=JSONL))
  assert [(e.row, e.category, e.message) for e in batch.errors] == [
      (0, SCHEMA, "field 'age' is given more than once")]
  assert batch.groups[0].rows == [1, 2]
  body = parse_json(b'{"examples": [{"age": 60}, {"age": 61, "thal": "own"}],'
                    b' "context": {"thal": "fixed", "thal": "normal"}}')
  batch = decoder_for(EXAMPLES).decode(json_chunk(split_request(body, EXAMPLES)))
  assert [(e.row, e.message) for e in batch.errors] == [
      (0, "field 'thal' is given more than once")]
  assert convert.example_fields(batch.groups[0].feeds['inputs'][0])['thal'] == [b'own']


def test_raw_of_a_request_instance_with_a_repeated_field_is_json():
  body = parse_json(b'{"instances": [{"a": 1, "a": 2, "b": [1, 2]}, {"a": [1, 2], "b": "x"}]}')
  records = split_request(body, TWO)
  decoder = decoder_for(TWO)
  batch = decoder.decode(json_chunk(records))
  assert [(e.row, e.message) for e in batch.errors] == [(0, "field 'a' is given more than once")]
  assert decoder.format('json').raw(json_chunk(records), 0) == b'{"a":2,"b":[1,2]}'


def test_booleans_for_an_int64_feature_of_the_spec_are_schema_errors():
  """As an integer input takes no booleans; without a parsing spec (kinds
  from the values) a boolean is an int64 1 or 0."""
  with pytest.raises(convert.SchemaError, match="feature 'count' expects integers"):
    convert.serialize_example({'age': 60, 'thal': 'fixed', 'count': True}, ESTIMATOR_FEATURES)
  assert convert.example_fields(convert.serialize_example({'flag': True}, None)) == {
      'flag': [1]}


def test_repeated_field_errors_keep_the_key_and_b64_examples_are_features():
  """The error record of an instance that repeats a field keeps its key
  (unless the key is what is repeated); an element of "examples" whose one
  field is `b64` is a feature named b64, like any other field."""
  body = parse_json(b'{"instances": [{"id": "e0", "a": [1, 2], "a": [3, 4], "b": "x"},'
                    b' {"id": "e1", "id": "e2", "a": [1, 2], "b": "y"}]}')
  batch = decoder_for(TWO, key_field='id').decode(json_chunk(split_request(body, TWO)))
  assert [(e.row, e.message) for e in batch.errors] == [
      (0, "field 'a' is given more than once"), (1, "field 'id' is given more than once")]
  assert batch.carried['id'] == [b'"e0"', None]
  from tests.test_convert_decode import tf_example
  good = base64.b64encode(tf_example(age=30.0, thal='fixed')).decode()
  batch = decoder_for(EXAMPLES).decode(json_chunk(split_request(
      {'examples': [{'b64': good}]}, EXAMPLES)))
  assert [(e.row, e.message) for e in batch.errors] == [
      (0, "missing required feature 'age' (float, 1 value (shape [1]))")]


def test_columnar_scalars_for_a_shape_one_input_end_to_end(shape_one_model, tmp_path):
  """A model whose only input is declared [batch, 1]: a list of scalars in
  "inputs" is a batch, as TF Serving reads it (each scalar fits [1]), in
  the single and the named form, as the same list in "instances" is; each
  instance located by its position, as other request-file instances are."""
  d = tmp_path / 'in'
  d.mkdir()
  (d / 'columnar.json').write_text(json.dumps({'inputs': [2.0, 3.0, 4.0]}))
  (d / 'named.json').write_text(json.dumps({'inputs': {'x': [2.0, 3.0, 4.0]}}))
  (d / 'rows.json').write_text(json.dumps({'instances': [2.0, 3.0, 4.0]}))
  (d / 'one.json').write_text(json.dumps({'inputs': [5.0]}))
  (d / 'mixed.json').write_text(json.dumps({'inputs': [6.0, 'a', 7]}))
  (d / 'keyed.json').write_text(json.dumps({'inputs': {'x': [2.0, 3.0], 'id': 'k'}}))
  predictions, errors, summary = run_job(str(tmp_path / 'out'), f'--model={shape_one_model}',
                                         f'--input={d}/*.json')
  assert_conserved(summary, predictions, errors)
  got = sorted((p['filename'], p.get('index', -1), p['y']) for p in predictions)
  assert got == sorted([(name, i, [2 * x + 1]) for name in ('columnar.json', 'named.json',
                                                            'rows.json')
                        for i, x in enumerate([2.0, 3.0, 4.0])] +
                       [('one.json', -1, [11.0]), ('mixed.json', 0, [13.0]),
                        ('mixed.json', 2, [15.0])])
  assert all('index' not in p for p in predictions if p['filename'] == 'one.json')
  assert sorted((e['filename'], e.get('index'), e['error']['category']) for e in errors) == [
      ('keyed.json', None, 'parse'), ('mixed.json', 1, 'schema')]
  message = {e['filename']: e['error']['message'] for e in errors}
  assert "'id' holds one instance's value, 'x' a batch" in message['keyed.json']
  assert message['mixed.json'] == "input 'x' expects float32 numbers, got \"a\""
