"""Throughput and peak memory: this job against the practical limit and
against Beam's stock RunInference, on the same data and machine.

  python benchmarks/run.py [--scale 1.0] [--workdir out/bench]

Two workloads: a 784-float MLP (100k JSONL instances, parse-bound) and a
13-feature tabular MLP (500k instances, bound by per-element overhead).
Each configuration runs in its own process (so peak RSS is its own):
  (a) model alone   signature calls on pre-built arrays
  (b) hand loop     orjson parse into a preallocated array, batched
                    signature call, orjson write: the practical limit
  (c) RunInference  ReadFromText -> parse -> RunInference(KeyedModelHandler(
                    TFModelHandlerNumpy)) -> format -> WriteToText, with
                    tf.saved_model.load and a signature-calling inference_fn
                    (its Keras loader cannot load these SavedModels)
  (d) this job      batch-predict, default local mode
Times exclude interpreter start and TensorFlow import; (c) and (d) include
pipeline start-up and model load. Batch size 256 everywhere.

A second table times (d) on the tabular instances stored as CSV, Parquet
and TFRecord (tf.Example) files.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
BATCH = 256
TABULAR_FEATURES = [f'f{i}' for i in range(13)]
WORKLOADS = {'mlp': 100_000, 'tabular': 500_000}


# -- data and models ---------------------------------------------------------

def build_mlp(path):
  import keras
  pixels = keras.Input(shape=(784,), name='pixels')
  hidden = keras.layers.Dense(128, activation='relu')(pixels)
  probs = keras.layers.Dense(10, activation='softmax', name='probs')(hidden)
  keras.Model({'pixels': pixels}, {'probs': probs}).export(
      path, format='tf_saved_model', verbose=False)


def build_tabular(path):
  import keras
  inputs = {n: keras.Input(shape=(), name=n) for n in TABULAR_FEATURES}
  x = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs[n])
                                  for n in TABULAR_FEATURES])
  x = keras.layers.Dense(64, activation='relu')(x)
  x = keras.layers.Dense(32, activation='relu')(x)
  score = keras.layers.Dense(1, activation='sigmoid', name='score')(x)
  keras.Model(inputs, {'score': score}).export(path, format='tf_saved_model', verbose=False)


def write_data(workload, path, count):
  import orjson
  rng = np.random.default_rng(0)
  with open(path, 'wb') as f:
    for start in range(0, count, 10_000):
      n = min(10_000, count - start)
      if workload == 'mlp':
        x = np.round(rng.random((n, 784)), 3).tolist()
        f.writelines(orjson.dumps({'id': start + i, 'pixels': x[i]}) + b'\n'
                     for i in range(n))
      else:
        x = np.round(rng.normal(size=(n, 13)) * 10, 3).tolist()
        f.writelines(orjson.dumps({'id': start + i, **dict(zip(TABULAR_FEATURES, x[i]))})
                     + b'\n' for i in range(n))


def write_other_formats(jsonl_path, stem):
  """The tabular instances as CSV, Parquet and TFRecord of tf.Examples."""
  import orjson
  import pyarrow as pa
  import pyarrow.parquet as pq
  from transforms.write import tfrecord_frame
  from tensorflow.core.example import example_pb2
  with open(jsonl_path, 'rb') as f:
    rows = [orjson.loads(line) for line in f]
  with open(stem + '.csv', 'w') as f:
    f.write(','.join(['id'] + TABULAR_FEATURES) + '\n')
    f.writelines(','.join([str(r['id'])] + [repr(r[n]) for n in TABULAR_FEATURES]) + '\n'
                 for r in rows)
  pq.write_table(pa.Table.from_pylist(rows), stem + '.parquet', row_group_size=65536)
  with open(stem + '.tfrecord', 'wb') as f:
    for r in rows:
      example = example_pb2.Example()
      example.features.feature['id'].int64_list.value.append(r['id'])
      for name in TABULAR_FEATURES:
        example.features.feature[name].float_list.value.append(r[name])
      f.write(tfrecord_frame(example.SerializeToString()))


def prepare(workdir, scale):
  os.makedirs(workdir, exist_ok=True)
  for workload, count in WORKLOADS.items():
    count = int(count * scale)
    data = os.path.join(workdir, f'{workload}-{count}.jsonl')
    model = os.path.join(workdir, f'{workload}-model')
    if not os.path.exists(model):
      (build_mlp if workload == 'mlp' else build_tabular)(model)
    if not os.path.exists(data):
      write_data(workload, data + '.tmp', count)
      os.rename(data + '.tmp', data)
    stem = data[:-len('.jsonl')]
    if workload == 'tabular' and not os.path.exists(stem + '.tfrecord'):
      write_other_formats(data, stem)


# -- the four configurations (each in its own process) -----------------------

def feeds_of(workload, rows):
  """Signature kwargs from an (n, features) float32 array."""
  if workload == 'mlp':
    return {'pixels': rows}
  return {name: rows[:, i] for i, name in enumerate(TABULAR_FEATURES)}


def width(workload):
  return 784 if workload == 'mlp' else 13


def run_model_alone(workload, model, data, out):
  import tensorflow as tf
  fn = tf.saved_model.load(model).signatures['serving_default']
  count = sum(1 for _ in open(data, 'rb'))
  rows = np.random.default_rng(0).random((BATCH, width(workload)), dtype=np.float32)
  feeds = feeds_of(workload, rows)
  started = time.perf_counter()
  for _ in range(0, count, BATCH):
    {k: v.numpy() for k, v in fn(**feeds).items()}
  return count, time.perf_counter() - started


def run_hand_loop(workload, model, data, out):
  import orjson
  import tensorflow as tf
  started = time.perf_counter()
  fn = tf.saved_model.load(model).signatures['serving_default']
  buffer = np.empty((BATCH, width(workload)), np.float32)
  count = 0
  with open(data, 'rb') as f, open(os.path.join(out, 'hand.jsonl'), 'wb') as sink:
    while True:
      keys = []
      for i, line in zip(range(BATCH), f):
        instance = orjson.loads(line)
        keys.append(instance['id'])
        buffer[i] = (instance['pixels'] if workload == 'mlp'
                     else [instance[n] for n in TABULAR_FEATURES])
      if not keys:
        break
      outputs = {k: v.numpy() for k, v in fn(**feeds_of(workload, buffer[:len(keys)])).items()}
      sink.writelines(
          orjson.dumps({'id': key, **{k: v[i] for k, v in outputs.items()}},
                       option=orjson.OPT_SERIALIZE_NUMPY) + b'\n'
          for i, key in enumerate(keys))
      count += len(keys)
  return count, time.perf_counter() - started


def run_runinference(workload, model, data, out):
  import apache_beam as beam
  import orjson
  import tensorflow as tf
  from apache_beam.ml.inference import utils
  from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
  from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy
  from apache_beam.options.pipeline_options import PipelineOptions

  class SavedModelNumpyHandler(TFModelHandlerNumpy):
    def load_model(self):
      return tf.saved_model.load(self._model_uri).signatures['serving_default']

  def inference_fn(model, batch, inference_args, model_id=None):
    outputs = model(**feeds_of(workload, np.stack(batch)))
    outputs = {k: v.numpy() for k, v in outputs.items()}
    return utils._convert_to_result(batch, outputs, model_id)

  def parse(line):
    instance = orjson.loads(line)
    values = (instance['pixels'] if workload == 'mlp'
              else [instance[n] for n in TABULAR_FEATURES])
    return instance['id'], np.asarray(values, np.float32)

  def format_result(keyed):
    key, result = keyed
    return orjson.dumps({'id': key, **result.inference}, option=orjson.OPT_SERIALIZE_NUMPY)

  handler = KeyedModelHandler(SavedModelNumpyHandler(
      model, inference_fn=inference_fn, min_batch_size=BATCH, max_batch_size=BATCH))
  started = time.perf_counter()
  with beam.Pipeline(options=PipelineOptions(runner='FnApiRunner')) as p:
    _ = (p | beam.io.ReadFromText(data) | 'Parse' >> beam.Map(parse)
         | RunInference(handler) | 'Format' >> beam.Map(format_result)
         | beam.io.WriteToText(os.path.join(out, 'runinference')))
  return sum(1 for _ in open(data, 'rb')), time.perf_counter() - started


def run_this_job(workload, model, data, out):
  # Imports are excluded from every configuration's time, as in (c).
  import tensorflow  # noqa: F401
  from pipeline import cli, graph  # noqa: F401
  started = time.perf_counter()
  rc = cli.main([f'--model={model}', f'--input={data}', f'--output={out}/job',
                 '--key_field=id', f'--max_batch_size={BATCH}'])
  assert rc == 0
  with open(f'{out}/job/summary.json') as f:
    summary = json.load(f)
  assert summary['predictions'] == summary['instances_read'], summary
  return summary['instances_read'], time.perf_counter() - started


CONFIGS = {'a': ('model alone', run_model_alone), 'b': ('hand loop', run_hand_loop),
           'c': ('RunInference', run_runinference), 'd': ('this job', run_this_job)}


def run_child(config, workload, model, data, out) -> dict:
  proc = subprocess.run(
      [sys.executable, __file__, '--child', config, workload, model, data, out],
      capture_output=True, text=True, cwd=ROOT)
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not line:
    sys.exit(f'{workload}/{config} on {data} failed:\n{proc.stderr[-3000:]}')
  result = json.loads(line[0][len('RESULT '):])
  result['rate'] = result['count'] / result['seconds']
  return result


def child(config, workload, model, data, out):
  os.makedirs(out, exist_ok=True)
  count, seconds = CONFIGS[config][1](workload, model, data, out)
  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent.
  with open('/proc/self/status') as f:
    peak_mb = next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024
  print('RESULT ' + json.dumps({'count': count, 'seconds': seconds, 'peak_mb': peak_mb}))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--scale', type=float, default=1.0,
                      help='fraction of the instance counts (for a quick look)')
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'out', 'bench'))
  parser.add_argument('--child', nargs=5, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(*args.child)
  prepare(args.workdir, args.scale)
  rows = []
  for workload, count in WORKLOADS.items():
    count = int(count * args.scale)
    data = os.path.join(args.workdir, f'{workload}-{count}.jsonl')
    model = os.path.join(args.workdir, f'{workload}-model')
    results = {}
    for config in CONFIGS:
      out = os.path.join(args.workdir, 'out', f'{workload}-{config}')
      results[config] = run_child(config, workload, model, data, out)
    for config, r in results.items():
      rows.append((workload, f'({config}) {CONFIGS[config][0]}', r['count'], r['seconds'],
                   r['rate'], r['peak_mb'], r['rate'] / results['b']['rate'],
                   r['rate'] / results['c']['rate']))
  header = ('workload', 'configuration', 'instances', 'seconds', 'inst/s',
            'peak MiB', 'vs (b)', 'vs (c)')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for w, c, n, s, rate, mem, vb, vc in rows:
    print(f'| {w} | {c} | {n:,} | {s:.1f} | {rate:,.0f} | {mem:,.0f} | {vb:.2f}x | {vc:.2f}x |')

  count = int(WORKLOADS['tabular'] * args.scale)
  stem = os.path.join(args.workdir, f'tabular-{count}')
  model = os.path.join(args.workdir, 'tabular-model')
  jsonl_rate = next(r[4] for r in rows if r[0] == 'tabular' and r[1].startswith('(d)'))
  print()
  print('| (d) this job, tabular input as | instances | seconds | inst/s | peak MiB | vs JSONL |')
  print('|---|---|---|---|---|---|')
  for extension in ('csv', 'parquet', 'tfrecord'):
    r = run_child('d', 'tabular', model, f'{stem}.{extension}',
                  os.path.join(args.workdir, 'out', f'tabular-d-{extension}'))
    print(f'| {extension} | {r["count"]:,} | {r["seconds"]:.1f} | {r["rate"]:,.0f} | '
          f'{r["peak_mb"]:,.0f} | {r["rate"] / jsonl_rate:.2f}x |')


if __name__ == '__main__':
  main()
