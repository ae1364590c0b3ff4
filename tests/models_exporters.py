"""SavedModels built the way other exporters and libraries build them: a
TensorFlow Text tokenizer, a Keras 3 subclass saved with
`tf.saved_model.save`, ragged and sparse outputs, a stateful signature
without a batch dimension."""
import os

VOCABULARY = ['[UNK]', 'the', 'cat', 'sat', 'on', 'mat', 'dog', 'ran', 'über', 'straße']


WORDPIECES = ['[UNK]', 'the', 'cat', 'sat', 'on', 'mat', 'dog', 'ran', 'run', '##s', '##ning',
              '##ed', 'walk', 'uber', 'strasse', 'σ', '##ι', '##σ', '##υ', '##φ', '##ο', '.', ',']


def build_text_classifier(path: str) -> None:
  """A text classifier with its preprocessing inside, as TF Text's guides
  export them. Signature `serving_default`: case folding and whitespace
  tokenizing (TF Text ops), a vocabulary lookup (unknown tokens to [UNK]),
  an embedding averaged over the tokens and a dense layer; input `text`
  string[batch], outputs `score` float32[batch,2] and `tokens`
  int64[batch] (the token count). Signature `bert`: BERT's preprocessing
  (TF Text's BertTokenizer: lower case, accents stripped, punctuation
  split, wordpieces of a vocabulary file kept as an asset); input `text`,
  outputs `token_ids` (ragged int64: each text's wordpiece ids) and
  `score` (the same head over the wordpieces)."""
  import tempfile

  import tensorflow as tf
  import tensorflow_text as text

  vocabulary_file = os.path.join(tempfile.mkdtemp(), 'vocab.txt')
  with open(vocabulary_file, 'w', encoding='utf-8') as f:
    f.write(''.join(piece + '\n' for piece in WORDPIECES))

  class TextClassifier(tf.Module):
    def __init__(self):
      super().__init__()
      self.bert_tokenizer = text.BertTokenizer(vocabulary_file, token_out_type=tf.int64,
                                               lower_case=True)
      self.tokenizer = text.WhitespaceTokenizer()
      self.table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              VOCABULARY, tf.range(len(VOCABULARY), dtype=tf.int64)), default_value=0)
      self.embedding = tf.Variable(
          tf.reshape(tf.range(len(VOCABULARY) * 3, dtype=tf.float32) / 7.0 - 2.0, [-1, 3]))
      self.dense = tf.Variable([[0.5, -1.0], [0.25, 0.75], [-0.5, 1.5]])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='text')])
    def serve(self, sentences):
      tokens = self.tokenizer.tokenize(text.case_fold_utf8(sentences))
      ids = self.table.lookup(tokens)
      vectors = tf.gather(self.embedding, ids)
      # An empty text has no token: its mean is zeros.
      mean = tf.math.divide_no_nan(tf.reduce_sum(vectors, axis=1),
                                   tf.cast(tokens.row_lengths(), tf.float32)[:, None])
      return {'score': tf.nn.softmax(tf.matmul(mean, self.dense)),
              'tokens': tokens.row_lengths()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='text')])
    def bert(self, sentences):
      ids = self.bert_tokenizer.tokenize(sentences).merge_dims(-2, -1)
      vectors = tf.gather(self.embedding, ids % len(VOCABULARY))
      mean = tf.math.divide_no_nan(tf.reduce_sum(vectors, axis=1),
                                   tf.cast(ids.row_lengths(), tf.float32)[:, None])
      return {'token_ids': ids, 'score': tf.nn.softmax(tf.matmul(mean, self.dense))}

  module = TextClassifier()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve,
                                                'bert': module.bert})


def build_keras3_subclass(path: str) -> None:
  """A keras.Model subclass saved with tf.saved_model.save (the export of
  many older tutorials): the SavedModel's variables are restored only
  through its object graph, which a graph-mode Session does not read. Input
  `inputs` float32[batch,3], output `output_0` float32[batch,2]; signature
  `guarded` the same, failing for a first feature that is not positive."""
  import keras
  import tensorflow as tf

  class Regressor(keras.Model):
    def __init__(self):
      super().__init__()
      self.hidden = keras.layers.Dense(8, activation='relu', name='output1')
      self.out = keras.layers.Dense(2, name='output2')

    def call(self, inputs):
      return self.out(self.hidden(inputs))

  model = Regressor()
  model(tf.zeros([1, 3]))
  _fixed_weights(model)
  spec = [tf.TensorSpec([None, 3], tf.float32, name='inputs')]
  serve = tf.function(lambda inputs: model(inputs), input_signature=spec)

  def checked(inputs):
    check = tf.debugging.assert_positive(inputs[:, 0], message='first feature must be positive')
    with tf.control_dependencies([check]):
      return tf.identity(inputs)

  # Refuses a first feature that is not positive (the launch check's zeros
  # too); a lambda, as many exports write it: an eager error then names
  # the function first.
  guarded = lambda inputs: {'output_0': model(checked(inputs))}  # noqa: E731

  tf.saved_model.save(model, path, signatures={
      'serving_default': serve, 'guarded': tf.function(guarded, input_signature=spec)})


def build_keras3_export(path: str) -> None:
  """The same layers and weights as build_keras3_subclass, exported with
  Keras 3's model.export (which a graph-mode Session runs)."""
  import keras
  model = keras.Sequential([keras.Input((3,), name='inputs'),
                            keras.layers.Dense(8, activation='relu'), keras.layers.Dense(2)])
  _fixed_weights(model)
  model.export(path, verbose=False)


def _fixed_weights(model) -> None:
  """Weights that do not depend on the seed (kernels and biases in order)."""
  import tensorflow as tf
  for i, weight in enumerate(model.weights):
    weight.assign(tf.reshape(tf.cast(tf.range(tf.size(weight)), tf.float32) * (0.05 + i / 50)
                             - 0.3, weight.shape))


LABELS = [b'alpha', b'b', b'', b'delta\xc3\xa9']


def build_ragged_outputs(path: str) -> None:
  """Outputs the job writes as each instance's own list: `labels` (string,
  ragged rank 1: the LABELS whose score is above 0.5), `indices` (int32,
  their positions), `chars` (string, ragged rank 2: each label's
  characters), `pairs` (float32 [batch, None, 2]: [position, score] of
  each), `high` (bool: whether each is above 0.8), `labels_bytes` (the
  labels, named as TF Serving's convention writes as base64) and `total`
  (dense float32). Input `scores` float32[batch,4]."""
  import tensorflow as tf

  class Labeller(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name='scores')])
    def serve(self, scores):
      above = scores > 0.5
      labels = tf.ragged.boolean_mask(
          tf.broadcast_to(tf.constant(LABELS), tf.shape(scores)), above)
      indices = tf.ragged.boolean_mask(
          tf.broadcast_to(tf.range(4), tf.shape(scores)), above)
      positions = tf.broadcast_to(tf.range(4, dtype=tf.float32), tf.shape(scores))
      return {'labels': labels, 'indices': indices,
              'chars': tf.strings.unicode_split(labels, 'UTF-8'),
              'pairs': tf.ragged.boolean_mask(tf.stack([positions, scores], axis=-1), above),
              'high': tf.ragged.boolean_mask(scores > 0.8, above),
              'labels_bytes': labels,
              'total': tf.reduce_sum(scores, axis=1)}

  module = Labeller()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def build_sparse_output(path: str) -> None:
  """Outputs the job cannot write (a tf.SparseTensor, `positive`; a ragged
  bfloat16 tensor, `halves`) beside one it can (`doubled`). Input `x`
  float32[batch,3]."""
  import tensorflow as tf

  class Sparse(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name='x')])
    def serve(self, x):
      return {'positive': tf.sparse.from_dense(tf.nn.relu(x)), 'doubled': x * 2.0,
              'halves': tf.ragged.boolean_mask(tf.cast(x / 2, tf.bfloat16), x > 0)}

  module = Sparse()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def build_counter(path: str) -> None:
  """A stateful counter as TF Serving's test models have one: signature
  `incr_counter_by` takes `delta` float32[] (no batch dimension) and returns
  the counter after adding it; `scaled_sum` takes scalar `a` and vector `b`
  (one without a batch dimension, one with one); `spell` takes one
  `sentence` string[] and returns its `words` (string[None]), their
  `letters` (ragged: a list per word) and their `count` (int32[])."""
  import tensorflow as tf

  class Counter(tf.Module):
    def __init__(self):
      super().__init__()
      self.count = tf.Variable(0.0)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name='delta')])
    def incr_counter_by(self, delta):
      return {'output': self.count.assign_add(delta)}

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name='a'),
                                  tf.TensorSpec([None], tf.float32, name='b')])
    def scaled_sum(self, a, b):
      return {'output': a * b}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name='sentence')])
    def spell(self, sentence):
      words = tf.strings.split(sentence)
      return {'words': words, 'letters': tf.strings.unicode_split(words, 'UTF-8'),
              'count': tf.size(words)}

  module = Counter()
  tf.saved_model.save(module, path, signatures={
      'incr_counter_by': module.incr_counter_by, 'scaled_sum': module.scaled_sum,
      'spell': module.spell})


def rename_ops(model_dir: str, op: str, new_op: str) -> None:
  """Edits saved_model.pb: every node of type `op`, in the graph and in its
  functions, becomes `new_op` (an op of a library that is not installed)."""
  from tensorflow.core.protobuf import saved_model_pb2
  pb_path = os.path.join(model_dir, 'saved_model.pb')
  saved_model = saved_model_pb2.SavedModel()
  with open(pb_path, 'rb') as f:
    saved_model.ParseFromString(f.read())
  renamed = 0
  for meta_graph in saved_model.meta_graphs:
    nodes = list(meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      nodes.extend(function.node_def)
    for node in nodes:
      if node.op == op:
        node.op = new_op
        renamed += 1
  assert renamed, f'no {op} node in {model_dir}'
  with open(pb_path, 'wb') as f:
    f.write(saved_model.SerializeToString())
