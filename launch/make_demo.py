"""Builds the demo's example model and instances (generated, not downloaded).

  python launch/make_demo.py DIR

DIR/model/1: a small Keras tabular classifier in TF Serving layout (export of
an untrained but fixed-seed model: the demo is about the job, not the model).
DIR/instances/part-0000{0,1}.jsonl: 5,000 instances with an `id` key and a
`label` passthrough field, plus a few deliberately bad lines and blank lines.
"""
import json
import os
import random
import shutil
import sys

FEATURES = ('age', 'income', 'tenure_months', 'visits_per_week')


def build_model(path):
  import keras
  inputs = {name: keras.Input(shape=(), name=name) for name in FEATURES}
  stacked = keras.layers.Concatenate()(
      [keras.layers.Reshape((1,))(inputs[name]) for name in FEATURES])
  scaled = keras.layers.Normalization(mean=[40, 50000, 24, 3],
                                      variance=[150, 4e8, 200, 4])(stacked)
  hidden = keras.layers.Dense(16, activation='relu',
                              kernel_initializer=keras.initializers.GlorotUniform(seed=7))(scaled)
  churn = keras.layers.Dense(1, activation='sigmoid', name='churn_probability',
                             kernel_initializer=keras.initializers.GlorotUniform(seed=8))(hidden)
  keras.Model(inputs, {'churn_probability': churn}).export(
      path, format='tf_saved_model', verbose=False)


def write_instances(directory, count=5000, files=2):
  os.makedirs(directory, exist_ok=True)
  rng = random.Random(42)
  per_file = count // files
  for part in range(files):
    with open(os.path.join(directory, f'part-{part:05d}.jsonl'), 'w') as f:
      for i in range(part * per_file, (part + 1) * per_file):
        instance = {'id': f'customer-{i}', 'label': rng.random() < 0.2,
                    'age': rng.randint(18, 90), 'income': round(rng.gauss(50000, 20000), 2),
                    'tenure_months': rng.randint(0, 120),
                    'visits_per_week': round(rng.uniform(0, 10), 1)}
        f.write(json.dumps(instance) + '\n')
        if i % 1000 == 0:
          f.write('\n')  # blank lines are skipped and counted
      # Bad instances become error records; the job goes on.
      f.write('{"id": "bad-json-%d", "age": 40,\n' % part)
      f.write('{"id": "bad-type-%d", "age": "forty", "income": 1, '
              '"tenure_months": 1, "visits_per_week": 1}\n' % part)
      f.write('{"id": "missing-input-%d", "age": 40}\n' % part)


def main(directory):
  shutil.rmtree(directory, ignore_errors=True)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # TensorFlow's start-up lines (imported by keras), kept off stderr as the
  # job keeps them (unless debugging, BATCH_PREDICT_DEBUG=1).
  from tf_batch_predict.pipeline import quiet
  from tf_batch_predict.pipeline.command import debug
  if not debug():
    quiet.install()
  build_model(os.path.join(directory, 'model', '1'))
  write_instances(os.path.join(directory, 'instances'))
  print(f'Built {directory}/model/1 and {directory}/instances/')


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else 'out/demo')
