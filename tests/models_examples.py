"""Test models for tf.Example inputs (tests/test_request_bodies.py)."""


def build_tf2_example_model(path: str) -> None:
  """tf.Module taking serialized Examples (input `examples`), parsed inside a
  tf.function, so the parsing node lives in the SavedModel's function
  library: x float[2] required, w float scalar default 1, tags bytes
  sparse. y = w * (x0 + x1)."""
  import tensorflow as tf

  class Parse(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def serve(self, examples):
      parsed = tf.io.parse_example(examples, {
          'x': tf.io.FixedLenFeature([2], tf.float32),
          'w': tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
          'tags': tf.io.VarLenFeature(tf.string)})
      return {'y': parsed['w'] * tf.reduce_sum(parsed['x'], axis=1)}

  module = Parse()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
