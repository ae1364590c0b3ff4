"""Small real SavedModels for the tests, one builder per model kind."""
import os


def build_keras_dict_model(path: str) -> None:
  """TF2 Keras 3 `model.export`: inputs `features` float32[3] and `bucket`
  int64 scalar; dict output `score` [1] and `probs` [2]."""
  import keras
  features = keras.Input(shape=(3,), name='features')
  bucket = keras.Input(shape=(), dtype='int64', name='bucket')
  bucket_f = keras.layers.Reshape((1,))(keras.ops.cast(bucket, 'float32'))
  hidden = keras.layers.Concatenate()([features, bucket_f])
  hidden = keras.layers.Dense(8, activation='relu', kernel_initializer=keras.initializers.GlorotUniform(seed=1))(hidden)
  score = keras.layers.Dense(1, name='score', kernel_initializer=keras.initializers.GlorotUniform(seed=2))(hidden)
  probs = keras.layers.Dense(2, activation='softmax', name='probs', kernel_initializer=keras.initializers.GlorotUniform(seed=3))(hidden)
  model = keras.Model({'features': features, 'bucket': bucket},
                      {'score': score, 'probs': probs})
  model.export(path, format='tf_saved_model', verbose=False)


def build_tf1_model(path: str) -> None:
  """TF1 `SavedModelBuilder` with a named, non-default signature
  `predict_scores`: inputs x float32[2], name string, key int64; outputs
  y float32 (scalar), name_length int32, key int64 (echoes the key). The same
  signature is also under tag set {serve, batch} as `batch_scores`."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 2], name='x')
    name = v1.placeholder(tf.string, [None], name='name')
    key = v1.placeholder(tf.int64, [None], name='key')
    w = v1.get_variable('w', initializer=tf.constant([[2.0], [-1.0]]))
    y = tf.reshape(tf.matmul(x, w), [-1]) + 0.5
    name_length = tf.strings.length(name)
    key_out = tf.identity(key)
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      builder = v1.saved_model.Builder(path)
      info = v1.saved_model.utils.build_tensor_info
      signature = v1.saved_model.signature_def_utils.build_signature_def(
          inputs={'x': info(x), 'name': info(name), 'key': info(key)},
          outputs={'y': info(y), 'name_length': info(name_length),
                   'key': info(key_out)},
          method_name='tensorflow/serving/predict')
      builder.add_meta_graph_and_variables(
          sess, ['serve'], signature_def_map={'predict_scores': signature})
      # A second MetaGraph, chosen with --tag=serve,batch.
      builder.add_meta_graph(['serve', 'batch'],
                             signature_def_map={'batch_scores': signature})
      builder.save()


def build_ragged_model(path: str, scale: float = 1.0) -> None:
  """tf.Module with x float32[?] of any length: outputs `total` (scale * row
  sum) and `label` (bytes: b'big' or invalid UTF-8). Fails (an assertion in
  the graph) for instances that contain a negative value."""
  import tensorflow as tf

  class RowSums(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name='x')])
    def serve(self, x):
      check = tf.debugging.assert_greater_equal(x, 0.0, message='negative value')
      with tf.control_dependencies([check]):
        total = tf.reduce_sum(x, axis=1) * scale
      label = tf.where(total > 10.0, tf.constant(b'big'), tf.constant(b'\xff\xfe'))
      return {'total': total, 'label': label}

  module = RowSums()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def build_versioned_base(base: str) -> None:
  """TF Serving layout: base/1 (scale 1), base/2 (scale 2), base/10 (scale
  10) and base/not_a_version; the highest version, 10, must be used."""
  for version, scale in ((1, 1.0), (2, 2.0), (10, 10.0)):
    build_ragged_model(os.path.join(base, str(version)), scale)
  os.makedirs(os.path.join(base, 'not_a_version'))


def build_estimator_style_model(path: str) -> None:
  """TF1 graph in the shape of an Estimator export: one DT_STRING input of
  serialized tf.Examples parsed in the graph (features age float[1], thal
  bytes[1], count int64 scalar default 0), with predict
  (`serving_default`: output `score`), classify (`classification`: classes,
  scores) and regress (`regression`: outputs) signatures.
  score = 0.1 * age + count + (thal == "fixed")."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    serialized = v1.placeholder(tf.string, [None], name='input_example_tensor')
    features = v1.io.parse_example(serialized, {
        'age': v1.io.FixedLenFeature([1], tf.float32),
        'thal': v1.io.FixedLenFeature([1], tf.string),
        'count': v1.io.FixedLenFeature([], tf.int64, default_value=0)})
    score = (0.1 * tf.reshape(features['age'], [-1])
             + tf.cast(features['count'], tf.float32)
             + tf.cast(tf.equal(tf.reshape(features['thal'], [-1]), 'fixed'), tf.float32))
    scores = tf.stack([1.0 - tf.sigmoid(score), tf.sigmoid(score)], axis=1)
    classes = tf.tile(tf.constant([['no', 'yes']]), [tf.shape(score)[0], 1])
    with v1.Session(graph=graph) as sess:
      builder = v1.saved_model.Builder(path)
      info = v1.saved_model.utils.build_tensor_info
      sig = v1.saved_model.signature_def_utils.build_signature_def
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': sig({'examples': info(serialized)}, {'score': info(score)},
                                 'tensorflow/serving/predict'),
          'classification': sig({'inputs': info(serialized)},
                                {'classes': info(classes), 'scores': info(scores)},
                                'tensorflow/serving/classify'),
          'regression': sig({'inputs': info(serialized)}, {'outputs': info(score)},
                            'tensorflow/serving/regress')})
      builder.save()


def estimator_reference(age, thal, count=0):
  return 0.1 * age + count + (1.0 if thal == 'fixed' else 0.0)


def build_assets_tuple_model(path: str) -> None:
  """tf.Module with a vocabulary *asset file* and mixed-dtype scalar inputs
  `age` float32 and `thal` string, returning a tuple, so that the signature's
  outputs are named `output_0` (age * 2 + vocabulary id of thal, -1 if
  unknown) and `output_1` (thal upper-cased)."""
  import tensorflow as tf
  vocab_path = os.path.join(os.path.dirname(path), 'thal_vocab.txt')
  with open(vocab_path, 'w') as f:
    f.write('fixed\nnormal\nreversible\n')

  class Lookup(tf.Module):
    def __init__(self):
      super().__init__()
      self.vocab = tf.saved_model.Asset(vocab_path)
      self.table = tf.lookup.StaticHashTable(
          tf.lookup.TextFileInitializer(
              self.vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
              tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='age'),
                                  tf.TensorSpec([None], tf.string, name='thal')])
    def serve(self, age, thal):
      return (age * 2.0 + tf.cast(self.table.lookup(thal), tf.float32),
              tf.strings.upper(thal))

  module = Lookup()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  os.remove(vocab_path)  # the SavedModel must carry its own copy


def build_no_variables_model(path: str) -> None:
  """TF1 graph without variables, saved without a variables directory:
  y = 3 * x for x float32[2]."""
  import shutil
  build_scaled_tf1_model(path, 3.0)
  shutil.rmtree(os.path.join(path, 'variables'), ignore_errors=True)


def build_mixed_model(path: str) -> None:
  """tf.Module with inputs a float32[2], b string, c int64, d float32 (the
  signature of the property-based tests): y = a0 - 2 a1 + d + c / 1000 +
  len(b), as float64 so that nothing is lost to rounding."""
  import tensorflow as tf

  class Mixed(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name='a'),
                                  tf.TensorSpec([None], tf.string, name='b'),
                                  tf.TensorSpec([None], tf.int64, name='c'),
                                  tf.TensorSpec([None], tf.float32, name='d')])
    def serve(self, a, b, c, d):
      a = tf.cast(a, tf.float64)
      y = (a[:, 0] - 2.0 * a[:, 1] + tf.cast(d, tf.float64) + tf.cast(c, tf.float64) / 1000.0
           + tf.cast(tf.strings.length(b), tf.float64))
      return {'y': y, 'b_upper': tf.strings.upper(b)}

  module = Mixed()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def build_shape_one_model(path: str) -> None:
  """tf.Module whose inputs are declared [batch, 1], as Keras'
  `Input(shape=(1,))` declares them. `serving_default`: the only input x
  float32 -> y = 2 x + 1. `columns`: age float32, count int32, name string
  -> `age_seen` and `count_seen` (the values fed, as they are) and
  `name_length` (bytes of name), all [batch, 1]."""
  import tensorflow as tf

  class ShapeOne(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name='x')])
    def serve(self, x):
      return {'y': 2.0 * x + 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name='age'),
                                  tf.TensorSpec([None, 1], tf.int32, name='count'),
                                  tf.TensorSpec([None, 1], tf.string, name='name')])
    def columns(self, age, count, name):
      return {'age_seen': tf.identity(age), 'count_seen': tf.identity(count),
              'name_length': tf.strings.length(name)}

  module = ShapeOne()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve,
                                                'columns': module.columns})


# -- models TF Serving serves that are unusual (tests/test_serving_models.py) --

def build_scaled_tf1_model(path: str, scale: float) -> None:
  """TF1 graph, quick to build: y = scale * x for x float32[2]."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 2], name='x')
    y = tf.multiply(x, scale, name='y')
    with v1.Session(graph=graph) as sess:
      builder = v1.saved_model.Builder(path)
      info = v1.saved_model.utils.build_tensor_info
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': v1.saved_model.signature_def_utils.build_signature_def(
              {'x': info(x)}, {'y': info(y)}, 'tensorflow/serving/predict')})
      builder.save()


def build_zero_padded_base(base: str) -> None:
  """TF Serving's own example layout: base/00000007, base/00000123 and
  base/00000124 (scale = the version number), plus base/not_a_version."""
  for version in (7, 123, 124):
    build_scaled_tf1_model(os.path.join(base, f'{version:08d}'), float(version))
  os.makedirs(os.path.join(base, 'not_a_version'))


def build_stale_signature_model(path: str) -> None:
  """An older TF1 export whose SignatureDef disagrees with its graph: the
  placeholder x is float32[?,1] and the output y = x W + b float32[?,2], but
  the signature declares both as scalars `[]`. TF Serving serves it (it runs
  the tensors by name); `tf.saved_model.load` cannot."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 1], name='x')
    w = v1.get_variable('w', initializer=tf.constant([[2.0, -3.0]]))
    b = v1.get_variable('b', initializer=tf.constant([0.25, 1.0]))
    y = tf.add(tf.matmul(x, w), b, name='y')
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      info = v1.saved_model.utils.build_tensor_info
      x_info, y_info = info(x), info(y)
      x_info.tensor_shape.Clear()
      y_info.tensor_shape.Clear()
      builder = v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': v1.saved_model.signature_def_utils.build_signature_def(
              {'x': x_info}, {'y': y_info}, 'tensorflow/serving/predict')})
      builder.save()


def build_ref_output_model(path: str) -> None:
  """TF1 graph returning a reference-typed tensor (dtype DT_FLOAT_REF): a
  non-resource variable `last` assigned 2 * x on each call, the assignment
  returned as output `doubled`; also `y` = x + 1 (plain)."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    x = v1.placeholder(tf.float32, [None, 2], name='x')
    last = v1.Variable(tf.zeros([0, 2]), use_resource=False, validate_shape=False,
                       name='last')
    doubled = v1.assign(last, x * 2.0, validate_shape=False)
    y = tf.add(x, 1.0, name='y')
    with v1.Session(graph=graph) as sess:
      sess.run(v1.global_variables_initializer())
      info = v1.saved_model.utils.build_tensor_info
      builder = v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': v1.saved_model.signature_def_utils.build_signature_def(
              {'x': info(x)}, {'doubled': info(doubled), 'y': info(y)},
              'tensorflow/serving/predict')})
      builder.save()


def build_functions_model(path: str) -> None:
  """One TF2 SavedModel (resource variables w, b), one function under
  several signatures: x float32[3] -> y = x W + b [2] and total = row sum;
  fails (an assertion) for an instance with a negative value.
    serving_default  x [None, 3]   any batch
    one              x [1, 3]      a fixed batch of 1 (single-example export)
    four             x [4, 3]      a fixed batch of 4
    positive         x [None, 3]   also asserts x > 0 (zeros fail)
    counter          x [None, 3]   y = 2 x, calls = how many times it was called
    conflict         a [1, 3], b [4, 3]   inputs fixing different batch sizes
    weights          x [None, 3]   y, and w itself (no batch dimension)
  """
  import tensorflow as tf

  class Functions(tf.Module):
    def __init__(self):
      super().__init__()
      self.w = tf.Variable([[0.5, -1.0], [2.0, 0.25], [-1.5, 3.0]])
      self.b = tf.Variable([0.1, -0.2])
      self.calls = tf.Variable(0, dtype=tf.int64)

    def core(self, x):
      check = tf.debugging.assert_greater_equal(x, 0.0, message='negative value')
      with tf.control_dependencies([check]):
        return {'y': tf.matmul(x, self.w) + self.b, 'total': tf.reduce_sum(x, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name='x')])
    def dynamic(self, x):
      return self.core(x)

    @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name='x')])
    def one(self, x):
      return self.core(x)

    @tf.function(input_signature=[tf.TensorSpec([4, 3], tf.float32, name='x')])
    def four(self, x):
      return self.core(x)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name='x')])
    def positive(self, x):
      check = tf.debugging.assert_positive(x, message='not positive')
      with tf.control_dependencies([check]):
        return self.core(x)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name='x')])
    def counter(self, x):
      calls = self.calls.assign_add(1)
      return {'y': x * 2.0, 'calls': tf.fill(tf.shape(x)[:1], calls)}

    @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name='a'),
                                  tf.TensorSpec([4, 3], tf.float32, name='b')])
    def conflict(self, a, b):
      return {'y': a + b}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name='x')])
    def weights(self, x):
      return {'y': self.core(x)['y'], 'w': tf.identity(self.w)}

  module = Functions()
  tf.saved_model.save(module, path, signatures={
      'serving_default': module.dynamic, 'one': module.one, 'four': module.four,
      'positive': module.positive, 'counter': module.counter,
      'conflict': module.conflict, 'weights': module.weights})


def build_no_signatures_model(path: str) -> None:
  """A tf.Module saved without `signatures=` and without a function that
  has an input signature: the SavedModel has no SignatureDef at all."""
  import tensorflow as tf

  class Plain(tf.Module):
    def __init__(self):
      super().__init__()
      self.w = tf.Variable(2.0)

    @tf.function
    def scale(self, x):
      return x * self.w

  module = Plain()
  module.scale(tf.constant(1.0))
  tf.saved_model.save(module, path)


def replace_op(model_dir: str, op: str, new_op: str) -> None:
  """Edits saved_model.pb: every node of type `op` becomes `new_op` (e.g.
  an op TensorFlow does not know)."""
  from tensorflow.core.protobuf import saved_model_pb2
  pb_path = os.path.join(model_dir, 'saved_model.pb')
  saved_model = saved_model_pb2.SavedModel()
  with open(pb_path, 'rb') as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    for node in meta_graph.graph_def.node:
      if node.op == op:
        node.op = new_op
  with open(pb_path, 'wb') as f:
    f.write(saved_model.SerializeToString())
