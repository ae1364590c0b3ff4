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

Two more rows for the tabular workload time (d) when things go wrong, each
against the clean (d) run ("time / clean (d)": how many times longer):
  (d) every instance fails  the same data through a variant of the tabular
                    model (same layers and size) whose graph asserts
                    `f0 > 1e6`, which no instance satisfies: every instance
                    becomes a `model` error
  (d) 0.1% bad lines  the same data with every 1000th line replaced by
                    malformed JSON or a line with a string for a float input
A second table times (d) on the tabular instances stored as CSV, Parquet
and TFRecord (tf.Example) files.

A third ('fixed_batch') times (d) through two exports of one Keras model
(same layers, same weights): inputs of shape [None] (any batch) and of shape
[1] (a fixed batch of one, as TF2 exports of a single-example function
declare), scored one instance per call; for the tabular model (tiny: the
per-call cost dominates) and the MLP (a model with some compute per
instance).

A fourth ('cores') asks how to use every core of one machine. Each
configuration runs as a user runs it: the whole `python -m pipeline`
command(s), interpreter start, imports, model check and exit included,
timed from the start until every command has exited:
  default           one command, Beam's in-process runner (one core for
                    the pipeline's Python work)
  multi_threading   --direct_running_mode=multi_threading
                    --direct_num_workers=N
  multi_processing  --direct_running_mode=multi_processing
                    --direct_num_workers=N (N worker processes, each
                    importing TensorFlow and loading the model)
  N commands        N commands at once, each on 1/N of the input files,
                    each with its own --output
on the workload's data taken --copies times (one file of all the copies for
the one-command configurations, the copies as separate files for the N
commands; the same instances either way), and on 4,096 instances: the
command's start-up and end, nearly all fixed cost. Steady state is the rate
at which the predictions the commands report (their own progress lines,
every second) grow from 10% to 90% of the total, a least-squares slope;
"faster from" is the job size from which a configuration beats the
default, by start-up and steady rate. N is --workers
(default: the machine's cores). Every run is repeated --rounds times,
interleaved, and then (up to --max_rounds) until it has had a quiet run: one
during which the machine's other processes used fewer than --quiet cores
(0.25) on average, from /proc/stat less this benchmark's own processes. The
fastest quiet run counts ("others' cores" shows what the others used; a
'*' marks a row with no quiet run, shown by its fastest run).

  --only mlp,tabular,failures,formats,fixed_batch,cores   runs only those
                    parts ('failures': the clean (d) tabular run and the
                    two rows above)
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
BATCH = 256
TABULAR_FEATURES = [f'f{i}' for i in range(13)]
WORKLOADS = {'mlp': 100_000, 'tabular': 500_000}
PARTS = ('mlp', 'tabular', 'failures', 'formats', 'fixed_batch', 'cores')
# 'cores' takes 15-25 minutes (whole commands, repeated until quiet): run it
# by name (--only cores).
DEFAULT_PARTS = ('mlp', 'tabular', 'failures', 'formats', 'fixed_batch')
CORES_TINY = 4096  # instances of the 'cores' part's start-up run
BAD_EVERY = 1000  # one bad line in this many, in the "0.1% bad lines" row


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
  tabular_layers(keras).export(path, format='tf_saved_model', verbose=False)


def tabular_layers(keras):
  inputs = {n: keras.Input(shape=(), name=n) for n in TABULAR_FEATURES}
  x = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs[n])
                                  for n in TABULAR_FEATURES])
  x = keras.layers.Dense(64, activation='relu')(x)
  x = keras.layers.Dense(32, activation='relu')(x)
  score = keras.layers.Dense(1, activation='sigmoid', name='score')(x)
  return keras.Model(inputs, {'score': score})


def build_tabular_failing(path):
  """The tabular model behind an assertion that no benchmark instance passes
  (`f0 > 1e6`; the data is about N(0, 10)): the model fails on every one."""
  import keras
  import tensorflow as tf
  model = tabular_layers(keras)
  archive = keras.export.ExportArchive()
  archive.track(model)

  @tf.function(input_signature=[{n: tf.TensorSpec([None], tf.float32, name=n)
                                 for n in TABULAR_FEATURES}])
  def serve(features):
    check = tf.debugging.assert_greater(features['f0'], 1e6, message='f0 out of range')
    with tf.control_dependencies([check]):
      return model(features)

  archive.add_endpoint('serving_default', serve)
  archive.write_out(path, verbose=False)


def build_batch_pair(workload, dynamic_path, fixed_path):
  """One model's layers (one set of weights) exported twice: inputs of
  batch dimension None and 1 (a fixed batch dimension of one)."""
  import keras
  import tensorflow as tf
  if workload == 'tabular':
    model = tabular_layers(keras)
    specs = lambda batch: {n: tf.TensorSpec([batch], tf.float32, name=n)  # noqa: E731
                           for n in TABULAR_FEATURES}
  else:
    pixels = keras.Input(shape=(784,), name='pixels')
    hidden = keras.layers.Dense(128, activation='relu')(pixels)
    probs = keras.layers.Dense(10, activation='softmax', name='probs')(hidden)
    model = keras.Model({'pixels': pixels}, {'probs': probs})
    specs = lambda batch: {'pixels': tf.TensorSpec([batch, 784], tf.float32,  # noqa: E731
                                                   name='pixels')}
  for path, batch in ((dynamic_path, None), (fixed_path, 1)):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint('serving_default', tf.function(
        lambda features: model(features), input_signature=[specs(batch)]))
    archive.write_out(path, verbose=False)


def write_bad_lines(clean_path, path):
  """The clean data with every BAD_EVERY-th line replaced by a bad one:
  alternately malformed JSON and a string where a float belongs."""
  with open(clean_path, 'rb') as f, open(path, 'wb') as out:
    for i, line in enumerate(f):
      if i % BAD_EVERY == BAD_EVERY // 2:
        if (i // BAD_EVERY) % 2:
          line = line[:len(line) // 2] + b'\n'
        else:
          line = line.replace(b'"f3":', b'"f3":"oops","was":', 1)
      out.write(line)


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


def prepare(workdir, scale, parts):
  os.makedirs(workdir, exist_ok=True)
  for workload, count in WORKLOADS.items():
    if workload == 'mlp' and not set(parts) & {'mlp', 'fixed_batch', 'cores'}:
      continue
    if workload == 'tabular' and not set(parts) & {'tabular', 'failures', 'formats',
                                                   'fixed_batch', 'cores'}:
      continue
    count = int(count * scale)
    data = os.path.join(workdir, f'{workload}-{count}.jsonl')
    model = os.path.join(workdir, f'{workload}-model')
    if not os.path.exists(model):
      (build_mlp if workload == 'mlp' else build_tabular)(model)
    if not os.path.exists(data):
      write_data(workload, data + '.tmp', count)
      os.rename(data + '.tmp', data)
    stem = data[:-len('.jsonl')]
    if workload == 'tabular' and 'formats' in parts and not os.path.exists(stem + '.tfrecord'):
      write_other_formats(data, stem)
    if 'fixed_batch' in parts:
      dynamic = os.path.join(workdir, f'{workload}-dynamic-batch-model')
      if not os.path.exists(dynamic):
        build_batch_pair(workload, dynamic,
                         os.path.join(workdir, f'{workload}-fixed-batch-model'))
    if workload == 'tabular' and 'failures' in parts:
      failing = os.path.join(workdir, 'tabular-failing-model')
      if not os.path.exists(failing):
        build_tabular_failing(failing)
      if not os.path.exists(stem + '-bad.jsonl'):
        write_bad_lines(data, stem + '-bad.jsonl.tmp')
        os.rename(stem + '-bad.jsonl.tmp', stem + '-bad.jsonl')


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


def run_job(model, data, out, expect_errors=False):
  """(d): returns (the job's summary, seconds). With `expect_errors`, exit
  status 3 (too many errors) is expected: the summary is checked instead."""
  # Imports are excluded from every configuration's time, as in (c).
  import tensorflow  # noqa: F401
  from pipeline import cli, graph  # noqa: F401
  started = time.perf_counter()
  rc = cli.main([f'--model={model}', f'--input={data}', f'--output={out}/job',
                 '--key_field=id', f'--max_batch_size={BATCH}'])
  seconds = time.perf_counter() - started
  assert rc in ((0, 3) if expect_errors else (0,)), rc
  with open(f'{out}/job/summary.json') as f:
    return json.load(f), seconds


def run_this_job(workload, model, data, out):
  summary, seconds = run_job(model, data, out)
  assert summary['predictions'] == summary['instances_read'], summary
  return summary['instances_read'], seconds


def run_all_failing(workload, model, data, out):
  summary, seconds = run_job(model, data, out, expect_errors=True)
  assert summary['errors_by_category']['model'] == summary['instances_read'], summary
  return summary['instances_read'], seconds


def run_bad_lines(workload, model, data, out):
  summary, seconds = run_job(model, data, out, expect_errors=True)
  count = summary['instances_read']
  bad = len(range(BAD_EVERY // 2, count, BAD_EVERY))
  by_category = summary['errors_by_category']
  assert by_category['parse'] + by_category['schema'] == bad, summary
  assert by_category['model'] == 0 and summary['predictions'] == count - bad, summary
  return count, seconds


CONFIGS = {'a': ('model alone', run_model_alone), 'b': ('hand loop', run_hand_loop),
           'c': ('RunInference', run_runinference), 'd': ('this job', run_this_job),
           'd-fail': ('this job, every instance fails in the model', run_all_failing),
           'd-bad': ('this job, 0.1% bad lines', run_bad_lines)}


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
  parser.add_argument('--only', default=','.join(DEFAULT_PARTS),
                      help=f'comma-separated parts to run, of {",".join(PARTS)} '
                           f'(default: {",".join(DEFAULT_PARTS)})')
  parser.add_argument('--workers', type=int, default=os.cpu_count(),
                      help="'cores': worker processes, threads or commands (default: "
                           'the cores of this machine)')
  parser.add_argument('--copies', type=int, default=4,
                      help="'cores': the input is the workload's data this many times")
  parser.add_argument('--rounds', type=int, default=3,
                      help="'cores': runs of each configuration at least")
  parser.add_argument('--max_rounds', type=int, default=8,
                      help="'cores': runs of each configuration at most, while none is quiet")
  parser.add_argument('--quiet', type=float, default=0.25,
                      help="'cores': a run is quiet when other processes used fewer cores "
                           'than this meanwhile')
  parser.add_argument('--child', nargs=5, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(*args.child)
  parts = [p for p in args.only.split(',') if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f'--only: unknown part(s) {", ".join(sorted(unknown))}; '
                 f'choose from {", ".join(PARTS)}')
  if 'cores' in parts and args.copies < args.workers:
    parser.error(f'--copies must be at least --workers ({args.workers}): the N commands '
                 'need a file each')
  prepare(args.workdir, args.scale, parts)
  rows = []
  clean_d = {}
  for workload, count in WORKLOADS.items():
    if workload in parts:
      configs = list('abcd')
    elif workload == 'tabular' and set(parts) & {'failures', 'formats'}:
      configs = ['d']  # the reference for the failure rows and the format table
    else:
      continue
    count = int(count * args.scale)
    data = os.path.join(args.workdir, f'{workload}-{count}.jsonl')
    model = os.path.join(args.workdir, f'{workload}-model')
    results = {}
    for config in configs:
      out = os.path.join(args.workdir, 'out', f'{workload}-{config}')
      results[config] = run_child(config, workload, model, data, out)
    clean_d[workload] = results['d']
    if workload == 'tabular' and 'failures' in parts:
      stem = data[:-len('.jsonl')]
      failing = os.path.join(args.workdir, 'tabular-failing-model')
      results['d-fail'] = run_child('d-fail', workload, failing, data,
                                    os.path.join(args.workdir, 'out', 'tabular-d-fail'))
      results['d-bad'] = run_child('d-bad', workload, model, stem + '-bad.jsonl',
                                   os.path.join(args.workdir, 'out', 'tabular-d-bad'))
    for config, r in results.items():
      vs = [f'{r["rate"] / results[c]["rate"]:.2f}x' if c in results else '-'
            for c in ('b', 'c')]
      rows.append((workload, f'({config[0]}) {CONFIGS[config][0]}', r['count'], r['seconds'],
                   r['rate'], r['peak_mb'], *vs,
                   f'{r["seconds"] / results["d"]["seconds"]:.2f}x'
                   if config.startswith('d') else '-'))
  header = ('workload', 'configuration', 'instances', 'seconds', 'inst/s',
            'peak MiB', 'vs (b)', 'vs (c)', 'time / clean (d)')
  if rows:
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
  for w, c, n, s, rate, mem, vb, vc, vd in rows:
    print(f'| {w} | {c} | {n:,} | {s:.1f} | {rate:,.0f} | {mem:,.0f} | {vb} | {vc} | {vd} |')

  if 'fixed_batch' in parts:
    fixed_batch_table(args.workdir, args.scale)
  if 'cores' in parts:
    cores_table(args.workdir, args.scale, args.workers, args.copies, args.rounds,
                args.max_rounds, args.quiet)
  if 'formats' not in parts:
    return
  count = int(WORKLOADS['tabular'] * args.scale)
  stem = os.path.join(args.workdir, f'tabular-{count}')
  model = os.path.join(args.workdir, 'tabular-model')
  jsonl_rate = clean_d['tabular']['rate']
  print()
  print('| (d) this job, tabular input as | instances | seconds | inst/s | peak MiB | vs JSONL |')
  print('|---|---|---|---|---|---|')
  for extension in ('csv', 'parquet', 'tfrecord'):
    r = run_child('d', 'tabular', model, f'{stem}.{extension}',
                  os.path.join(args.workdir, 'out', f'tabular-d-{extension}'))
    print(f'| {extension} | {r["count"]:,} | {r["seconds"]:.1f} | {r["rate"]:,.0f} | '
          f'{r["peak_mb"]:,.0f} | {r["rate"] / jsonl_rate:.2f}x |')


def fixed_batch_table(workdir, scale):
  """(d) on the same data through the [None] and the [1] export."""
  print()
  print('| (d) this job, model with inputs | instances | seconds | inst/s | peak MiB '
        '| vs [None] |')
  print('|---|---|---|---|---|---|')
  for workload in ('tabular', 'mlp'):
    data = os.path.join(workdir, f'{workload}-{int(WORKLOADS[workload] * scale)}.jsonl')
    results = {}
    for batch in ('dynamic', 'fixed'):
      model = os.path.join(workdir, f'{workload}-{batch}-batch-model')
      results[batch] = run_child('d', workload, model, data,
                                 os.path.join(workdir, 'out', f'{workload}-d-{batch}-batch'))
    for batch, label in (('dynamic', '[None] (any batch; 256 per call)'),
                         ('fixed', '[1] (fixed batch; 1 per call)')):
      r = results[batch]
      print(f'| {workload} {label} | {r["count"]:,} | {r["seconds"]:.1f} | {r["rate"]:,.0f} | '
            f'{r["peak_mb"]:,.0f} | {r["rate"] / results["dynamic"]["rate"]:.2f}x |')


# -- cores: the whole command, one process or several -------------------------

def cores_inputs(workdir, workload, count, copies):
  """(one file holding `copies` copies of the workload's data, the copies
  as separate files, a file of its first CORES_TINY instances)."""
  data = os.path.join(workdir, f'{workload}-{count}.jsonl')
  folder = os.path.join(workdir, 'cores')
  os.makedirs(folder, exist_ok=True)
  whole = os.path.join(folder, f'{workload}-{count}x{copies}.jsonl')
  if not os.path.exists(whole):
    with open(whole + '.tmp', 'wb') as out:
      for _ in range(copies):
        with open(data, 'rb') as f:
          shutil.copyfileobj(f, out, 16 << 20)
    os.rename(whole + '.tmp', whole)
  parts = []
  for i in range(copies):
    part = os.path.join(folder, f'{workload}-{count}-copy{i}.jsonl')
    if not os.path.lexists(part):
      try:
        os.symlink(os.path.abspath(data), part)
      except OSError:
        shutil.copyfile(data, part)
    parts.append(part)
  tiny_count = min(CORES_TINY, count)
  tiny = os.path.join(folder, f'{workload}-{tiny_count}.jsonl')
  if not os.path.exists(tiny):
    with open(data, 'rb') as f, open(tiny + '.tmp', 'wb') as out:
      out.writelines(line for _, line in zip(range(tiny_count), f))
    os.rename(tiny + '.tmp', tiny)
  return whole, parts, tiny


def cores_configs(workers):
  """(name, description, Beam options, several commands?)"""
  return [
      ('default', 'default: one command, in-process runner', [], False),
      ('multi_threading', f'--direct_running_mode=multi_threading --direct_num_workers={workers}',
       ['--direct_running_mode=multi_threading', f'--direct_num_workers={workers}'], False),
      ('multi_processing', f'--direct_running_mode=multi_processing --direct_num_workers={workers}',
       ['--direct_running_mode=multi_processing', f'--direct_num_workers={workers}'], False),
      ('commands', f'{workers} commands at once, each on 1/{workers} of the files, '
       'each its own --output', [], True),
  ]


def _busy_seconds():
  """CPU seconds all processes of the machine have used (None where there
  is no /proc/stat)."""
  try:
    with open('/proc/stat') as f:
      ticks = [int(v) for v in f.readline().split()[1:9]]
  except (OSError, ValueError):
    return None
  idle = ticks[3] + ticks[4]  # idle, iowait
  return (sum(ticks) - idle) / os.sysconf('SC_CLK_TCK')


def _children_seconds():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


_PREDICTED = re.compile(r'([0-9][0-9,]*) predicted')


def _watch(stream, lines, samples):
  """Keeps a command's stderr, and (time, predictions) from its progress lines."""
  for line in stream:
    lines.append(line)
    found = _PREDICTED.search(line)
    if found:
      samples.append((time.perf_counter(), int(found.group(1).replace(',', ''))))


def steady_rate(samples, low=0.1, high=0.9):
  """Instances/s in steady state: the least-squares slope of the predictions
  all commands have made together against time, from `low` to `high` of the
  final count. The counts are the job's own progress figures (every second,
  --progress_interval=1), so start-up and end are left out by construction."""
  latest, points = [0] * len(samples), []
  for t, i, n in sorted((t, i, n) for i, own in enumerate(samples) for t, n in own):
    latest[i] = n
    points.append((t, sum(latest)))
  final = points[-1][1] if points else 0
  window = [(t, n) for t, n in points if low * final <= n <= high * final]
  if len(window) < 3 or window[-1][0] - window[0][0] < 1:
    return None
  mean_t = sum(t for t, _ in window) / len(window)
  mean_n = sum(n for _, n in window) / len(window)
  return (sum((t - mean_t) * (n - mean_n) for t, n in window)
          / sum((t - mean_t) ** 2 for t, _ in window))


def run_commands(model, inputs, out, beam_args) -> dict:
  """Runs one command per entry of `inputs` (each a list of files), all at
  once; returns seconds until the last exited, predictions, the steady rate
  (`steady_rate`) and the cores other processes used meanwhile."""
  busy, ours, started = _busy_seconds(), _children_seconds(), time.perf_counter()
  procs = []
  for i, files in enumerate(inputs):
    output = f'{out}-{i}'
    shutil.rmtree(output, ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'pipeline', f'--model={model}', f'--input={",".join(files)}',
         f'--output={output}', '--key_field=id', f'--max_batch_size={BATCH}',
         '--log_level=info', '--progress_interval=1', *beam_args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, samples = [], []
    watcher = threading.Thread(target=_watch, args=(proc.stderr, lines, samples), daemon=True)
    watcher.start()
    procs.append((output, proc, watcher, lines, samples))
  predictions = 0
  for output, proc, watcher, lines, _ in procs:
    proc.wait()
    watcher.join()
    if proc.returncode:
      sys.exit(f'cores: {" ".join(proc.args)} failed ({proc.returncode}):\n'
               f'{"".join(lines)[-3000:]}')
    with open(os.path.join(output, 'summary.json')) as f:
      predictions += json.load(f)['predictions']
  seconds = time.perf_counter() - started
  others = None
  if busy is not None:
    others = max(0.0, (_busy_seconds() - busy) - (_children_seconds() - ours)) / seconds
  return {'seconds': seconds, 'count': predictions, 'others': others,
          'steady': steady_rate([samples for *_, samples in procs])}


def pays_off(start, rate, other_start, other_rate) -> str:
  """From how many instances a configuration (start-up seconds, steady
  instances/s) is faster than the default's."""
  if not rate or not other_rate:
    return '-'
  if other_rate <= rate:
    if other_start >= start:
      return 'never'
    return f'below {(start - other_start) / (1 / other_rate - 1 / rate):,.0f}'
  if other_start <= start:
    return 'always'
  return f'{(other_start - start) / (1 / rate - 1 / other_rate):,.0f}'


def cores_table(workdir, scale, workers, copies, rounds, max_rounds, quiet):
  """Default vs every way of using `workers` cores, whole commands timed.

  A run is quiet when the machine's other processes used less than `quiet`
  cores on average meanwhile. Every run is repeated `rounds` times, and
  after that, up to `max_rounds`, until it has had a quiet run; the fastest
  quiet run counts (the fastest of all where none was quiet: marked)."""
  configs = cores_configs(workers)
  load_before = os.getloadavg()[0]
  print()
  print(f'Whole commands on {os.cpu_count()} cores, N = {workers}. Start-up: the same command '
        f'on {CORES_TINY:,} instances. Fastest of at least {rounds} runs with other processes '
        f'using under {quiet} cores (* none was: the fastest run).')
  print()
  header = ('workload', 'configuration', 'instances', 'seconds', 'inst/s', 'vs default',
            'start-up s', 'steady inst/s', 'steady vs default', 'faster from',
            "others' cores")
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for workload in ('tabular', 'mlp'):
    count = int(WORKLOADS[workload] * scale)
    whole, parts, tiny = cores_inputs(workdir, workload, count, copies)
    model = os.path.join(workdir, f'{workload}-model')
    best = {}  # (configuration, 'tiny' or 'full') -> the run that counts
    for round_ in range(max_rounds):
      for name, _, beam_args, several in configs:
        # One list of files per command.
        runs = ((('tiny', [[tiny]] * workers),
                 ('full', [parts[i::workers] for i in range(workers)]))
                if several else (('tiny', [[tiny]]), ('full', [[whole]])))
        for size, inputs in runs:
          key = (name, size)
          if round_ >= rounds and best[key]['quiet']:
            continue
          r = run_commands(model, inputs, os.path.join(workdir, 'out', f'cores-{workload}-{name}'),
                           beam_args)
          r['quiet'] = r['others'] is None or r['others'] < quiet
          if key not in best or (r['quiet'], -r['seconds']) > (best[key]['quiet'],
                                                               -best[key]['seconds']):
            best[key] = r
      if round_ + 1 >= rounds and all(r['quiet'] for r in best.values()):
        break
    reference = None
    for name, description, _, _ in configs:
      full, small = best[(name, 'full')], best[(name, 'tiny')]
      rate = full['count'] / full['seconds']
      steady = full['steady']
      if reference is None:
        reference = small['seconds'], rate, steady
        faster = '-'
      else:
        faster = pays_off(reference[0], reference[2], small['seconds'], steady)
      steady_text = '- | -' if steady is None else (
          f'{steady:,.0f} | ' + (f'{steady / reference[2]:.2f}x' if reference[2] else '-'))
      others = ('-' if full['others'] is None else f'{full["others"]:.2f}') + (
          '' if full['quiet'] and small['quiet'] else ' *')
      print(f'| {workload} | {description} | {full["count"]:,} | {full["seconds"]:.1f} | '
            f'{rate:,.0f} | {rate / reference[1]:.2f}x | {small["seconds"]:.1f} | '
            f'{steady_text} | {faster} | {others} |')
  print()
  print(f'Load average (1 min) before this table: {load_before:.1f}, after: '
        f'{os.getloadavg()[0]:.1f}.')

if __name__ == '__main__':
  main()
