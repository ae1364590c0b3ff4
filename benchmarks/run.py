"""Throughput and peak memory: this job against the practical limit and
against Beam's stock RunInference, on the same data and machine.

  python benchmarks/run.py [--scale 1.0] [--workdir out/bench] [--only PARTS]

Two workloads: a 784-float MLP (100k JSONL instances, parse-bound) and a
13-feature tabular MLP (2M instances, bound by per-element overhead).
Each configuration runs in its own process (so peak RSS is its own):
  (d) this job      batch-predict with the job's defaults (only --model,
                    --input, --output, --key_field): run first; the batch
                    size it chose (its summary.json: `batches`, the size
                    histogram's bucket that carried the most instances,
                    see job_batch_size) is the batch size of the others
  (a) model alone   signature calls on pre-built arrays, at (d)'s batch
                    size; a second (a) row at 256 where (d) chose another
  (b) hand loop     orjson parse into a preallocated array, batched
                    signature call, orjson write
  (c) RunInference  ReadFromText -> parse -> RunInference(KeyedModelHandler(
                    TFModelHandlerNumpy)) -> format -> WriteToText, with
                    tf.saved_model.load and a signature-calling inference_fn
                    (its Keras loader cannot load these SavedModels)
  (e) columnar limit  one process: pyarrow.json.read_json (multi-threaded,
                    explicit schema) parses the whole file into columns, the
                    model is called on slices of the batch size, and each
                    65,536 rows are written as JSON Lines (the job's lines:
                    key and outputs) by a second thread: Arrow casts each
                    output column to text and binary_join_element_wise joins
                    the lines (the fastest of orjson per row, orjson over
                    lists, and orjson columns split on ',' on the smoke
                    data). The bar the job is measured against.
Times exclude interpreter start and imports (TensorFlow, pyarrow, orjson);
they include model load, and for (c) and (d) pipeline start-up; (a) is the
model calls only. --batch N sets the batch size of (a), (b), (c), (e)
instead. Under the table, the ratios the targets need: (d)/(e) for tabular
(target >= 0.9x) and (d)/(a) for the MLP (target >= 0.3x), both at (d)'s
batch size.

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

Another ('request_file') times (d) on REQUEST_INSTANCES tabular instances
in one TF Serving request file (`{"instances": [...]}`, about 200 MB)
against the same instances as JSON Lines, with peak memory.

Another ('mlp_formats') times (d) on the MLP's images as 28x28 nested
lists (a model of the same layers behind a Flatten), as Parquet
(`list<float>` of 784) and as TFRecord (`float_list` of 784), against the
flat JSON Lines run.

Another ('resume') runs whole commands on the tabular data cut into
RESUME_FILES files: one uninterrupted run, then a run whose process group is
killed (SIGKILL) once half of the files' work units are committed, then the
same command with --resume; it reports each one's pipeline time and
start-up (the summary's total wall time less the pipeline's).

A third ('fixed_batch') times (d) through two exports of one Keras model
(same layers, same weights): inputs of shape [None] (any batch) and of shape
[1] (a fixed batch of one, as TF2 exports of a single-example function
declare), scored one instance per call; for the tabular model (tiny: the
per-call cost dominates) and the MLP (a model with some compute per
instance).

A fourth ('cores') asks how to use every core of one machine. Each
configuration runs as a user runs it: the whole `python -m tf_batch_predict.pipeline`
command(s) with the job's defaults, interpreter start, imports, model check
and exit included, timed from the start until every command has exited:
  default           one command, Beam's in-process runner (one core for
                    the pipeline's Python work)
  multi_threading   --direct_running_mode=multi_threading
                    --direct_num_workers=N
  multi_processing  --direct_running_mode=multi_processing
                    --direct_num_workers=1, and =N (1 or N worker
                    processes, each importing TensorFlow and loading the
                    model)
  N commands        N commands at once, each on 1/N of the instances (in
                    N files), each with its own --output
on the workload's data repeated or cut to CORES_INSTANCES (2M tabular,
400k MLP instances; --instances tabular=N,mlp=N sets them), one file for
the one-command configurations, N files of the same instances for the N
commands, and on 4,096 instances: the command's start-up and end, nearly
all fixed cost. Steady state is the rate at which the predictions the
commands report (their own progress lines, every second) grow from 10% to
90% of the total, a least-squares slope; "faster from" is the job size from
which a configuration beats the default, by start-up and steady rate. N is
--workers (default: the machine's cores). Every run is repeated --rounds
times, interleaved, and then (up to --max_rounds) until it has had a quiet
run: one during which the machine's other processes used fewer than
--quiet cores (0.25) on average, from /proc/stat less this benchmark's own
processes. The fastest quiet run counts ("others' cores" shows what the
others used; a '*' marks a row with no quiet run, shown by its fastest
run). Under the table: multi_processing N workers / 1 worker, steady.

A fifth ('workers', the target "2 worker processes >= 1.6x 1 worker
process of the same mode, steady state"): only multi_processing with 1 and
with N worker processes (N: --workers, default 2), the same commands and
quiet-run logic as 'cores', on WORKERS_INSTANCES (2M tabular instances,
800k MLP: about 20 s of steady state for one worker at today's rates; check
the "steady s" column, and raise --instances where it is short). Start-up
is reported apart from the steady rate: the command on 4,096 instances
(start to exit), the time to the first reported prediction (progress lines
come about once a second), where the steady-state line starts from 0, and
the model load per worker (summary.json); below the table the ratio against
the 1.6x target.

A sixth ('wide', only by name; meant for a GPU, runs on CPU at small
--scale): a compute-bound model, 512 float inputs and 3 Dense layers of
4,096 units (~71 MFLOP per instance), on 200k JSONL instances (key `id`,
`x` 512 floats): (d) the job and (a) the model alone at (d)'s batch size,
and (d)/(a).

  --only mlp,tabular,failures,formats,mlp_formats,request_file,fixed_batch,cores,workers,
         wide
                    runs only those parts (default: the first five;
                    'failures': the clean (d) tabular run and the two rows
                    above). E.g. --only workers; --only wide --scale 0.01
                    for a look on CPU
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
BATCH = 256  # the extra (a) row's batch size (the job's old default)
TABULAR_FEATURES = [f'f{i}' for i in range(13)]
# Workload -> instances (times --scale).
WORKLOADS = {'mlp': 100_000, 'tabular': 2_000_000, 'wide': 200_000}
# The workloads whose one input is a list of floats: (input name, width).
LIST_INPUTS = {'mlp': ('pixels', 784), 'wide': ('x', 512)}
WIDE_UNITS = 4096  # the wide model: 3 Dense layers of this many units
PARTS = ('mlp', 'tabular', 'failures', 'formats', 'mlp_formats', 'request_file',
         'resume', 'fixed_batch', 'cores', 'workers', 'wide')
# 'cores' takes 20-30 minutes and 'workers' about 5 (whole commands, repeated
# until quiet), 'wide' is for a GPU: run them by name (--only cores).
DEFAULT_PARTS = ('mlp', 'tabular', 'failures', 'formats', 'mlp_formats', 'request_file',
                 'resume', 'fixed_batch')
# The parts that need each workload's model and data.
NEEDED_BY = {'mlp': {'mlp', 'mlp_formats', 'fixed_batch', 'cores', 'workers'},
             'tabular': {'tabular', 'failures', 'formats', 'request_file', 'resume',
                         'fixed_batch', 'cores', 'workers'},
             'wide': {'wide'}}
# The main table's configurations per workload part, in the order they run
# ((d) first: (a), (b), (c) and (e) run at the batch size the job chose).
MAIN_CONFIGS = {'mlp': ('d', 'a', 'a256', 'b', 'c', 'e'),
                'tabular': ('d', 'a', 'a256', 'b', 'c', 'e'),
                'wide': ('d', 'a')}
# Instances of the 'cores' and 'workers' parts' runs (times --scale; see
# --instances): the workload's data repeated or cut to this many.
CORES_INSTANCES = {'tabular': 2_000_000, 'mlp': 400_000}
WORKERS_INSTANCES = {'tabular': 2_000_000, 'mlp': 800_000}
# The 'request_file' part: this many tabular instances (times --scale) in one
# TF Serving request file (about 200 MB) and, the same, as JSON Lines.
REQUEST_INSTANCES = 1_190_000
# The 'resume' part: the tabular data in this many files (a work unit each),
# a run killed once half of them are committed, then resumed.
RESUME_FILES = 8
CORES_TINY = 4096  # instances of the 'cores' and 'workers' parts' start-up run
BAD_EVERY = 1000  # one bad line in this many, in the "0.1% bad lines" row
WRITE_ROWS = 65_536  # (e): lines formatted and written at a time


# -- data and models ---------------------------------------------------------

def build_mlp(path):
  import keras
  pixels = keras.Input(shape=(784,), name='pixels')
  hidden = keras.layers.Dense(128, activation='relu')(pixels)
  probs = keras.layers.Dense(10, activation='softmax', name='probs')(hidden)
  keras.Model({'pixels': pixels}, {'probs': probs}).export(
      path, format='tf_saved_model', verbose=False)


def build_mlp_nested(path):
  """The MLP's layers on images given as 28x28 nested lists."""
  import keras
  pixels = keras.Input(shape=(28, 28), name='pixels')
  hidden = keras.layers.Dense(128, activation='relu')(keras.layers.Flatten()(pixels))
  probs = keras.layers.Dense(10, activation='softmax', name='probs')(hidden)
  keras.Model({'pixels': pixels}, {'probs': probs}).export(
      path, format='tf_saved_model', verbose=False)


def build_wide(path):
  """A compute-bound MLP: 512 float inputs, 3 Dense layers of WIDE_UNITS
  units (about 71 MFLOP per instance), 16 outputs."""
  import keras
  x = keras.Input(shape=(LIST_INPUTS['wide'][1],), name='x')
  hidden = x
  for _ in range(3):
    hidden = keras.layers.Dense(WIDE_UNITS, activation='relu')(hidden)
  y = keras.layers.Dense(16, name='y')(hidden)
  keras.Model({'x': x}, {'y': y}).export(path, format='tf_saved_model', verbose=False)


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


BUILDERS = {'mlp': build_mlp, 'tabular': build_tabular, 'wide': build_wide}


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
      if workload in LIST_INPUTS:
        name, size = LIST_INPUTS[workload]
        x = np.round(rng.random((n, size)), 3).tolist()
        f.writelines(orjson.dumps({'id': start + i, name: x[i]}) + b'\n'
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
  from tf_batch_predict.transforms.write.shards import tfrecord_frame
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


def write_mlp_formats(jsonl_path, stem):
  """The MLP's images as 28x28 nested lists (JSON Lines), Parquet
  (`list<float>` of 784) and TFRecord (`float_list` of 784)."""
  import orjson
  import pyarrow as pa
  import pyarrow.parquet as pq
  from tf_batch_predict.transforms.write.shards import tfrecord_frame
  from tensorflow.core.example import example_pb2
  with open(jsonl_path, 'rb') as f:
    rows = [orjson.loads(line) for line in f]
  with open(stem + '-28x28.jsonl', 'wb') as f:
    f.writelines(orjson.dumps({'id': r['id'], 'pixels': [r['pixels'][i:i + 28]
                                                         for i in range(0, 784, 28)]}) + b'\n'
                 for r in rows)
  pq.write_table(pa.table({'id': pa.array([r['id'] for r in rows], pa.int64()),
                           'pixels': pa.array([r['pixels'] for r in rows],
                                              pa.list_(pa.float32()))}),
                 stem + '.parquet', row_group_size=65536)
  with open(stem + '.tfrecord', 'wb') as f:
    for r in rows:
      example = example_pb2.Example()
      example.features.feature['id'].int64_list.value.append(r['id'])
      example.features.feature['pixels'].float_list.value.extend(r['pixels'])
      f.write(tfrecord_frame(example.SerializeToString()))


def write_request_file(jsonl_path, count, request_path, lines_path):
  """The first `count` lines of `jsonl_path` as one request body,
  `{"instances": [...]}` (an instance per line), and as JSON Lines."""
  with open(jsonl_path, 'rb') as f, open(request_path + '.tmp', 'wb') as body, \
      open(lines_path + '.tmp', 'wb') as lines:
    body.write(b'{"instances": [\n')
    for i, line in zip(range(count), f):
      body.write((b',\n' if i else b'') + line.rstrip(b'\n'))
      lines.write(line)
    body.write(b'\n]}\n')
  os.rename(request_path + '.tmp', request_path)
  os.rename(lines_path + '.tmp', lines_path)


def prepare(workdir, scale, parts):
  os.makedirs(workdir, exist_ok=True)
  for workload, count in WORKLOADS.items():
    if not set(parts) & NEEDED_BY[workload]:
      continue
    count = int(count * scale)
    data = os.path.join(workdir, f'{workload}-{count}.jsonl')
    model = os.path.join(workdir, f'{workload}-model')
    if not os.path.exists(model):
      BUILDERS[workload](model)
    if not os.path.exists(data):
      write_data(workload, data + '.tmp', count)
      os.rename(data + '.tmp', data)
    stem = data[:-len('.jsonl')]
    if workload == 'tabular' and 'formats' in parts and not os.path.exists(stem + '.tfrecord'):
      write_other_formats(data, stem)
    if workload == 'tabular' and 'request_file' in parts:
      request = os.path.join(workdir, f'tabular-request-{int(REQUEST_INSTANCES * scale)}')
      if not os.path.exists(request + '.json'):
        write_request_file(data, int(REQUEST_INSTANCES * scale), request + '.json',
                           request + '.jsonl')
    if workload == 'mlp' and 'mlp_formats' in parts:
      if not os.path.exists(stem + '.tfrecord'):
        write_mlp_formats(data, stem)
      nested = os.path.join(workdir, 'mlp-28x28-model')
      if not os.path.exists(nested):
        build_mlp_nested(nested)
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


# -- the configurations (each in its own process) ----------------------------

def feeds_of(workload, rows):
  """Signature kwargs from an (n, features) float32 array."""
  if workload in LIST_INPUTS:
    return {LIST_INPUTS[workload][0]: rows}
  return {name: rows[:, i] for i, name in enumerate(TABULAR_FEATURES)}


def width(workload):
  return LIST_INPUTS[workload][1] if workload in LIST_INPUTS else len(TABULAR_FEATURES)


def run_model_alone(workload, model, data, out, batch):
  import tensorflow as tf
  fn = tf.saved_model.load(model).signatures['serving_default']
  count = sum(1 for _ in open(data, 'rb'))
  rows = np.random.default_rng(0).random((batch, width(workload)), dtype=np.float32)
  feeds = feeds_of(workload, rows)
  {k: v.numpy() for k, v in fn(**feeds).items()}  # the first call traces
  started = time.perf_counter()
  for start in range(0, count, batch):
    # The last call has the last batch's size, as the job's has.
    sized = feeds if count - start >= batch else feeds_of(workload, rows[:count - start])
    {k: v.numpy() for k, v in fn(**sized).items()}
  return count, time.perf_counter() - started


def run_hand_loop(workload, model, data, out, batch):
  import orjson
  import tensorflow as tf
  started = time.perf_counter()
  fn = tf.saved_model.load(model).signatures['serving_default']
  buffer = np.empty((batch, width(workload)), np.float32)
  name = LIST_INPUTS.get(workload, (None,))[0]
  count = 0
  with open(data, 'rb') as f, open(os.path.join(out, 'hand.jsonl'), 'wb') as sink:
    while True:
      keys = []
      for i, line in zip(range(batch), f):
        instance = orjson.loads(line)
        keys.append(instance['id'])
        buffer[i] = (instance[name] if name else [instance[n] for n in TABULAR_FEATURES])
      if not keys:
        break
      outputs = {k: v.numpy() for k, v in fn(**feeds_of(workload, buffer[:len(keys)])).items()}
      sink.writelines(
          orjson.dumps({'id': key, **{k: v[i] for k, v in outputs.items()}},
                       option=orjson.OPT_SERIALIZE_NUMPY) + b'\n'
          for i, key in enumerate(keys))
      count += len(keys)
  return count, time.perf_counter() - started


def run_runinference(workload, model, data, out, batch):
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

  name = LIST_INPUTS.get(workload, (None,))[0]

  def parse(line):
    instance = orjson.loads(line)
    values = instance[name] if name else [instance[n] for n in TABULAR_FEATURES]
    return instance['id'], np.asarray(values, np.float32)

  def format_result(keyed):
    key, result = keyed
    return orjson.dumps({'id': key, **result.inference}, option=orjson.OPT_SERIALIZE_NUMPY)

  handler = KeyedModelHandler(SavedModelNumpyHandler(
      model, inference_fn=inference_fn, min_batch_size=batch, max_batch_size=batch))
  started = time.perf_counter()
  with beam.Pipeline(options=PipelineOptions(runner='FnApiRunner')) as p:
    _ = (p | beam.io.ReadFromText(data) | 'Parse' >> beam.Map(parse)
         | RunInference(handler) | 'Format' >> beam.Map(format_result)
         | beam.io.WriteToText(os.path.join(out, 'runinference')))
  return sum(1 for _ in open(data, 'rb')), time.perf_counter() - started


def json_schema(workload):
  import pyarrow as pa
  if workload in LIST_INPUTS:
    return pa.schema([('id', pa.int64()), (LIST_INPUTS[workload][0], pa.list_(pa.float32()))])
  return pa.schema([('id', pa.int64())] + [(n, pa.float32()) for n in TABULAR_FEATURES])


def jsonl_lines(ids, outputs):
  """JSON Lines of `ids` (an Arrow int64 array) and the model's outputs
  (name -> numpy array, one row per id): `{"id":7,"score":[0.5]}\\n`...,
  as the job writes them. Each output column is cast to text by Arrow (the
  shortest text that reads back as the same float32), and each line joined
  with binary_join_element_wise; the result is the joined array's data
  buffer, no copy. orjson per row for what Arrow cannot write as JSON (NaN,
  infinities, outputs of rank > 2, other types)."""
  import pyarrow as pa
  import pyarrow.compute as pc
  pieces, text = [], '{"id":'

  def literal(more):
    nonlocal text
    text += more

  def column(values):
    nonlocal text
    pieces.extend([pa.scalar(text), pc.cast(pa.array(values), pa.string())])
    text = ''

  column(ids)
  for name, values in outputs.items():
    if (values.ndim > 2 or values.dtype not in (np.float32, np.float64, np.int32, np.int64)
        or (values.dtype.kind == 'f' and not np.isfinite(values).all())):
      return jsonl_rows(ids, outputs)
    literal(f',"{name}":')
    if values.ndim == 1:
      column(values)
      continue
    for j in range(values.shape[1]):
      literal('[' if j == 0 else ',')
      column(values[:, j])
    literal(']')
  literal('}\n')
  lines = pc.binary_join_element_wise(*pieces, pa.scalar(text), pa.scalar(''))
  offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset * 4)
  return memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]]


def jsonl_rows(ids, outputs):
  import orjson
  option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
  return b''.join(orjson.dumps({'id': key, **{k: v[i] for k, v in outputs.items()}},
                               option=option)
                  for i, key in enumerate(ids.to_pylist()))


def run_columnar(workload, model, data, out, batch):
  """(e): the whole file parsed by Arrow's multi-threaded JSON reader into
  columns, the model called on slices of `batch` rows, each WRITE_ROWS
  rows formatted (jsonl_lines) and written by a second thread while the
  model goes on."""
  from concurrent.futures import ThreadPoolExecutor
  import pyarrow.json as pj
  import tensorflow as tf
  started = time.perf_counter()
  fn = tf.saved_model.load(model).signatures['serving_default']
  table = pj.read_json(data, read_options=pj.ReadOptions(block_size=4 << 20),
                       parse_options=pj.ParseOptions(explicit_schema=json_schema(workload),
                                                     unexpected_field_behavior='ignore'))
  count = table.num_rows
  ids = table['id'].combine_chunks()
  if workload in LIST_INPUTS:
    name, size = LIST_INPUTS[workload]
    values = table[name].combine_chunks().flatten().to_numpy()
    assert values.size == count * size, (values.size, count)
    columns = {name: values.reshape(count, size)}
  else:
    columns = {n: table[n].combine_chunks().to_numpy() for n in TABULAR_FEATURES}
  del table

  def write(sink, start, outputs):
    sink.write(jsonl_lines(ids.slice(start, len(next(iter(outputs.values())))), outputs))

  with open(os.path.join(out, 'columnar.jsonl'), 'wb') as sink, \
      ThreadPoolExecutor(1) as writer:
    written, pending, waiting = 0, {}, []
    for start in range(0, count, batch):
      for k, v in fn(**{k: v[start:start + batch] for k, v in columns.items()}).items():
        pending.setdefault(k, []).append(v.numpy())
      done = min(start + batch, count)
      if done - written >= WRITE_ROWS or done == count:
        outputs = {k: np.concatenate(v) for k, v in pending.items()}
        waiting.append(writer.submit(write, sink, written, outputs))
        written, pending = done, {}
    for future in waiting:
      future.result()
  return count, time.perf_counter() - started


def run_job(model, data, out, expect_errors=False):
  """(d): returns (the job's summary, seconds). The job's defaults: no
  batch size given. With `expect_errors`, exit status 3 (too many errors)
  is expected: the summary is checked instead."""
  # Imports are excluded from every configuration's time, as in (c).
  import tensorflow  # noqa: F401
  from tf_batch_predict.pipeline import cli, graph  # noqa: F401
  started = time.perf_counter()
  rc = cli.main([f'--model={model}', f'--input={data}', f'--output={out}/job',
                 '--key_field=id'])
  seconds = time.perf_counter() - started
  assert rc in ((0, 3) if expect_errors else (0,)), rc
  with open(f'{out}/job/summary.json') as f:
    return json.load(f), seconds


def job_batch_size(summary):
  """The batch size the job chose, from its summary.json: a size it names
  (`batches.chosen_size` or `settings.batch_size`, where a version of the
  job writes one), else the size of the batches that carried the most
  instances: the size histogram's heaviest bucket (count times bound), its
  bound or the largest batch if smaller. None without batches."""
  batches = summary.get('batches') or {}
  for named in (batches.get('chosen_size'), summary.get('settings', {}).get('batch_size')):
    if isinstance(named, int) and named > 0:
      return named
  histogram = batches.get('size_histogram') or []
  if not histogram:
    mean = (batches.get('size') or {}).get('mean')
    return max(1, round(mean)) if mean else None
  heaviest = max(histogram, key=lambda b: (b['count'] * b['le'], b['le']))
  return int(min(heaviest['le'], batches['size']['max']))


def run_this_job(workload, model, data, out, batch=None):
  summary, seconds = run_job(model, data, out)
  assert summary['predictions'] == summary['instances_read'], summary
  return summary['instances_read'], seconds, {'batch': job_batch_size(summary),
                                              'batches': summary.get('batches')}


def run_all_failing(workload, model, data, out, batch=None):
  summary, seconds = run_job(model, data, out, expect_errors=True)
  assert summary['errors_by_category']['model'] == summary['instances_read'], summary
  return summary['instances_read'], seconds


def run_bad_lines(workload, model, data, out, batch=None):
  summary, seconds = run_job(model, data, out, expect_errors=True)
  count = summary['instances_read']
  bad = len(range(BAD_EVERY // 2, count, BAD_EVERY))
  by_category = summary['errors_by_category']
  assert by_category['parse'] + by_category['schema'] == bad, summary
  assert by_category['model'] == 0 and summary['predictions'] == count - bad, summary
  return count, seconds


CONFIGS = {'a': ('model alone', run_model_alone),
           'a256': ('model alone', run_model_alone),  # at BATCH, for comparison
           'b': ('hand loop', run_hand_loop),
           'c': ('RunInference', run_runinference), 'd': ('this job', run_this_job),
           'e': ('columnar limit', run_columnar),
           'd-fail': ('this job, every instance fails in the model', run_all_failing),
           'd-bad': ('this job, 0.1% bad lines', run_bad_lines)}


def run_child(config, workload, model, data, out, batch=None) -> dict:
  """Runs a configuration in a process of its own; `batch`: the batch size
  of (a), (b), (c), (e) (the job takes its defaults)."""
  proc = subprocess.run(
      [sys.executable, __file__, '--child', config, workload, model, data, out,
       str(batch or BATCH)],
      capture_output=True, text=True, cwd=ROOT)
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not line:
    sys.exit(f'{workload}/{config} on {data} failed:\n{proc.stderr[-3000:]}')
  result = json.loads(line[0][len('RESULT '):])
  result['rate'] = result['count'] / result['seconds']
  return result


def child(config, workload, model, data, out, batch):
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out, exist_ok=True)
  # Imports are excluded from every configuration's time. The job's rows
  # import TensorFlow as its command does (pipeline/quiet.py: without
  # scikit-learn, about 57 MiB less resident), so their peak is the command's.
  if config.startswith('d'):
    from tf_batch_predict.pipeline import command, quiet
    quiet.install()
    command.hold_collector()  # as the command: until its model is loaded
  import tensorflow  # noqa: F401
  import orjson  # noqa: F401
  import pyarrow.compute  # noqa: F401
  import pyarrow.json  # noqa: F401
  count, seconds, *more = CONFIGS[config][1](workload, model, data, out, int(batch))
  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent.
  with open('/proc/self/status') as f:
    peak_mb = next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024
  print('RESULT ' + json.dumps({'count': count, 'seconds': seconds, 'peak_mb': peak_mb,
                                'batch': int(batch), **(more[0] if more else {})}))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--scale', type=float, default=1.0,
                      help='fraction of the instance counts (for a quick look)')
  parser.add_argument('--workdir', default=os.path.join(ROOT, 'out', 'bench'))
  parser.add_argument('--only', default=','.join(DEFAULT_PARTS),
                      help=f'comma-separated parts to run, of {",".join(PARTS)} '
                           f'(default: {",".join(DEFAULT_PARTS)})')
  parser.add_argument('--batch', type=int, default=None,
                      help='batch size of (a), (b), (c) and (e) (default: the one the job '
                           'chose in the (d) run, from its summary.json)')
  parser.add_argument('--workers', type=int, default=None,
                      help="'cores': worker processes, threads or commands (default: the "
                           "cores of this machine); 'workers': the worker processes compared "
                           'with one (default: 2)')
  parser.add_argument('--instances', default='',
                      help="'cores' and 'workers': instances per workload, e.g. "
                           "tabular=4000000,mlp=1600000 (default: 'cores' "
                           f'{_counts_text(CORES_INSTANCES)}, \'workers\' '
                           f'{_counts_text(WORKERS_INSTANCES)}, times --scale)')
  parser.add_argument('--rounds', type=int, default=3,
                      help="'cores', 'workers': runs of each configuration at least")
  parser.add_argument('--max_rounds', type=int, default=8,
                      help="'cores', 'workers': runs of each configuration at most, while "
                           'none is quiet')
  parser.add_argument('--quiet', type=float, default=0.25,
                      help="'cores', 'workers': a run is quiet when other processes used "
                           'fewer cores than this meanwhile')
  parser.add_argument('--child', nargs=6, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(*args.child)
  parts = [p for p in args.only.split(',') if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    parser.error(f'--only: unknown part(s) {", ".join(sorted(unknown))}; '
                 f'choose from {", ".join(PARTS)}')
  try:
    instances = {w: int(n) for w, n in (kv.split('=') for kv in args.instances.split(',') if kv)}
  except ValueError:
    parser.error('--instances: WORKLOAD=N,... e.g. tabular=2000000,mlp=800000')
  if set(instances) - set(CORES_INSTANCES):
    parser.error(f'--instances: workloads are {", ".join(CORES_INSTANCES)}')
  prepare(args.workdir, args.scale, parts)
  rows = []
  clean_d = {}
  targets = []
  for workload, count in WORKLOADS.items():
    if workload in parts:
      configs = MAIN_CONFIGS[workload]
    elif workload == 'tabular' and set(parts) & {'failures', 'formats'}:
      configs = ['d']  # the reference for the failure rows and the format table
    elif workload == 'mlp' and 'mlp_formats' in parts:
      configs = ['d']  # the reference for the MLP's format table
    else:
      continue
    count = int(count * args.scale)
    data = os.path.join(args.workdir, f'{workload}-{count}.jsonl')
    model = os.path.join(args.workdir, f'{workload}-model')
    results = {}
    for config in configs:
      out = os.path.join(args.workdir, 'out', f'{workload}-{config}')
      batch = (None if config == 'd' else BATCH if config == 'a256'
               else args.batch or results['d']['batch'])
      if config == 'a256' and batch == results['a']['batch']:
        continue  # the same row twice
      results[config] = run_child(config, workload, model, data, out, batch)
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
            for c in ('a', 'b', 'c', 'e')]
      batch = (f'{r["batch"]:,}' if not config.startswith('d') else
               f'{r["batch"]:,} (mean {r["batches"]["size"]["mean"]:,.0f}, max '
               f'{r["batches"]["size"]["max"]:,.0f})' if r.get('batches') else '-')
      rows.append((workload, f'({config[0]}) {CONFIGS[config][0]}', batch, r['count'],
                   r['seconds'], r['rate'], r['peak_mb'], *vs,
                   f'{r["seconds"] / results["d"]["seconds"]:.2f}x'
                   if config.startswith('d') else '-'))
    d = results['d']['rate']
    for config, goal in (('e', 0.9 if workload == 'tabular' else None),
                         ('a', 0.3 if workload == 'mlp' else None)):
      if config in results:
        ratio = d / results[config]['rate']
        verdict = ('' if goal is None else
                   f' (target >= {goal}x: {"met" if ratio >= goal else "NOT met"})')
        targets.append(f'{workload}: (d)/({config}) = {ratio:.2f}x at batch '
                       f'{results[config]["batch"]:,}{verdict}')
  header = ('workload', 'configuration', 'batch', 'instances', 'seconds', 'inst/s',
            'peak MiB', 'vs (a)', 'vs (b)', 'vs (c)', 'vs (e)', 'time / clean (d)')
  if rows:
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
  for w, c, b, n, s, rate, mem, va, vb, vc, ve, vd in rows:
    print(f'| {w} | {c} | {b} | {n:,} | {s:.1f} | {rate:,.0f} | {mem:,.0f} | {va} | {vb} | '
          f'{vc} | {ve} | {vd} |')
  if targets:
    print()
    print('Ratios of (d), inst/s over inst/s, (a) and (e) at the batch size (d) chose: '
          + '; '.join(targets) + '.')

  if 'fixed_batch' in parts:
    fixed_batch_table(args.workdir, args.scale)
  if 'cores' in parts:
    counts = {w: instances.get(w, int(n * args.scale)) for w, n in CORES_INSTANCES.items()}
    cores_table(args.workdir, args.scale, args.workers or os.cpu_count(), counts,
                args.rounds, args.max_rounds, args.quiet)
  if 'workers' in parts:
    counts = {w: instances.get(w, int(n * args.scale)) for w, n in WORKERS_INSTANCES.items()}
    workers_table(args.workdir, args.scale, args.workers or 2, counts, args.rounds,
                  args.max_rounds, args.quiet)
  if 'mlp_formats' in parts:
    mlp_formats_table(args.workdir, args.scale, clean_d['mlp'])
  if 'request_file' in parts:
    request_file_table(args.workdir, args.scale)
  if 'resume' in parts:
    resume_table(args.workdir, args.scale)
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


def mlp_formats_table(workdir, scale, flat):
  """(d) on the MLP's images as 28x28 nested lists, Parquet and TFRecord,
  against the flat JSON Lines run (`flat`)."""
  stem = os.path.join(workdir, f'mlp-{int(WORKLOADS["mlp"] * scale)}')
  runs = [('JSON Lines, 784 numbers (flat)', flat)]
  for label, model, data, name in (
      ('JSON Lines, 28x28 nested lists', 'mlp-28x28-model', stem + '-28x28.jsonl', 'nested'),
      ('Parquet, list<float> of 784', 'mlp-model', stem + '.parquet', 'parquet'),
      ('TFRecord, float_list of 784', 'mlp-model', stem + '.tfrecord', 'tfrecord')):
    runs.append((label, run_child('d', 'mlp', os.path.join(workdir, model), data,
                                  os.path.join(workdir, 'out', f'mlp-d-{name}'))))
  print()
  print('| (d) this job, MLP images as | instances | seconds | inst/s | peak MiB | vs flat |')
  print('|---|---|---|---|---|---|')
  for label, r in runs:
    print(f'| {label} | {r["count"]:,} | {r["seconds"]:.1f} | {r["rate"]:,.0f} | '
          f'{r["peak_mb"]:,.0f} | {r["rate"] / flat["rate"]:.2f}x |')
  nested = runs[1][1]['rate']
  print()
  print(f'Nested lists: flat / nested = {flat["rate"] / nested:.2f}x (target <= 1.2x: '
        f'{"met" if flat["rate"] / nested <= 1.2 else "NOT met"}); Parquet and TFRecord '
        'at least the JSON Lines rate: '
        + ('met' if min(r['rate'] for _, r in runs[2:]) >= flat['rate'] else 'NOT met') + '.')


def request_file_table(workdir, scale):
  """(d) on one request file of REQUEST_INSTANCES tabular instances against
  the same instances as JSON Lines."""
  stem = os.path.join(workdir, f'tabular-request-{int(REQUEST_INSTANCES * scale)}')
  model = os.path.join(workdir, 'tabular-model')
  runs = [(label, run_child('d', 'tabular', model, stem + extension,
                            os.path.join(workdir, 'out', f'tabular-d-request{extension}')))
          for label, extension in (('JSON Lines', '.jsonl'),
                                   ('one request file {"instances": [...]}', '.json'))]
  size = os.path.getsize(stem + '.json')
  print()
  print(f'| (d) this job, tabular instances in | instances | seconds | inst/s | peak MiB '
        f'| vs JSON Lines |')
  print('|---|---|---|---|---|---|')
  for label, r in runs:
    print(f'| {label} | {r["count"]:,} | {r["seconds"]:.1f} | {r["rate"]:,.0f} | '
          f'{r["peak_mb"]:,.0f} | {r["rate"] / runs[0][1]["rate"]:.2f}x |')
  ratio = runs[1][1]['rate'] / runs[0][1]['rate']
  print()
  print(f'Request file ({size / 2**20:,.0f} MiB): {ratio:.2f}x the JSON Lines rate (target '
        f'>= 0.5x: {"met" if ratio >= 0.5 else "NOT met"}); peak '
        f'{runs[1][1]["peak_mb"]:,.0f} MiB.')


def resume_table(workdir, scale):
  """An uninterrupted run, a run killed half-way and its --resume: whole
  commands on the tabular data in RESUME_FILES files."""
  import glob
  import signal
  count = int(WORKLOADS['tabular'] * scale)
  folder = os.path.join(workdir, f'tabular-{count}-in-{RESUME_FILES}-files')
  if not os.path.isdir(folder):
    with open(os.path.join(workdir, f'tabular-{count}.jsonl'), 'rb') as f:
      lines = f.readlines()
    os.makedirs(folder + '.tmp', exist_ok=True)
    share = -(-len(lines) // RESUME_FILES)
    for i in range(RESUME_FILES):
      with open(os.path.join(folder + '.tmp', f'part-{i}.jsonl'), 'wb') as f:
        f.writelines(lines[i * share:(i + 1) * share])
    os.rename(folder + '.tmp', folder)
  outputs = {name: os.path.join(workdir, 'out', f'resume-{name}') for name in ('full', 'cut')}
  for path in outputs.values():
    shutil.rmtree(path, ignore_errors=True)

  def command(output, *extra):
    return [sys.executable, '-m', 'tf_batch_predict.pipeline',
            f'--model={os.path.join(workdir, "tabular-model")}',
            f'--input={os.path.join(folder, "*.jsonl")}', f'--output={output}', '--key_field=id',
            '--progress_interval=0', *extra]

  def summary_of(output):
    with open(os.path.join(output, 'summary.json')) as f:
      return json.load(f)

  quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
  subprocess.run(command(outputs['full']), check=True, **quiet)
  full = summary_of(outputs['full'])
  killed = subprocess.Popen(command(outputs['cut']), start_new_session=True, **quiet)
  half = RESUME_FILES // 2
  committed = lambda: len(glob.glob(os.path.join(outputs['cut'], '.staging-*', 'units', '*.json')))
  while committed() < half and killed.poll() is None:
    time.sleep(0.01)
  os.killpg(killed.pid, signal.SIGKILL)
  killed.wait()
  kept = committed()
  subprocess.run(command(outputs['cut'], '--resume'), check=True, **quiet)
  resumed = summary_of(outputs['cut'])
  print()
  print(f'| run ({count:,} tabular instances in {RESUME_FILES} files) | instances scored | '
        'pipeline s | start-up s | pipeline vs the uninterrupted run |')
  print('|---|---|---|---|---|')
  for label, s, scored in (
      ('uninterrupted', full, full['instances_read']),
      (f'resumed after a SIGKILL with {kept} of {RESUME_FILES} units committed', resumed,
       resumed['instances_read'] - resumed['resumed']['instances'])):
    print(f'| {label} | {scored:,} | {s["pipeline_wall_time_s"]:.1f} | '
          f'{s["total_wall_time_s"] - s["pipeline_wall_time_s"]:.1f} | '
          f'{s["pipeline_wall_time_s"] / full["pipeline_wall_time_s"]:.2f}x |')
  ratio = resumed['pipeline_wall_time_s'] / full['pipeline_wall_time_s']
  print()
  print(f'Resumed pipeline: {ratio:.2f}x the uninterrupted one (target <= 0.6x: '
        f'{"met" if ratio <= 0.6 else "NOT met"}).')


def _counts_text(counts):
  return ','.join(f'{w}={n}' for w, n in counts.items())


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
    for batch, label in (('dynamic', '[None] (any batch; the job\'s batches)'),
                         ('fixed', '[1] (fixed batch; 1 per call)')):
      r = results[batch]
      print(f'| {workload} {label} | {r["count"]:,} | {r["seconds"]:.1f} | {r["rate"]:,.0f} | '
            f'{r["peak_mb"]:,.0f} | {r["rate"] / results["dynamic"]["rate"]:.2f}x |')


# -- cores and workers: the whole command, one process or several -------------

def cores_inputs(workdir, workload, count, total, files):
  """(one file of `total` instances: the workload's data repeated or cut,
  the same instances in `files` files (contiguous shares; none where
  `files` is 0), a file of its first CORES_TINY instances)."""
  data = os.path.join(workdir, f'{workload}-{count}.jsonl')
  folder = os.path.join(workdir, 'cores')
  os.makedirs(folder, exist_ok=True)

  def lines():
    while True:
      with open(data, 'rb') as f:
        yield from f

  whole = os.path.join(folder, f'{workload}-{total}.jsonl')
  if total == count:
    whole = data
  elif not os.path.exists(whole):
    with open(whole + '.tmp', 'wb') as out:
      out.writelines(line for _, line in zip(range(total), lines()))
    os.rename(whole + '.tmp', whole)
  parts = [os.path.join(folder, f'{workload}-{total}-part{i}of{files}.jsonl')
           for i in range(files)]
  if not all(os.path.exists(p) for p in parts):
    with open(whole, 'rb') as f:
      for i, part in enumerate(parts):
        share = total * (i + 1) // files - total * i // files
        with open(part + '.tmp', 'wb') as out:
          out.writelines(line for _, line in zip(range(share), f))
        os.rename(part + '.tmp', part)
  tiny_count = min(CORES_TINY, count)
  tiny = os.path.join(folder, f'{workload}-{tiny_count}.jsonl')
  if not os.path.exists(tiny):
    with open(data, 'rb') as f, open(tiny + '.tmp', 'wb') as out:
      out.writelines(line for _, line in zip(range(tiny_count), f))
    os.rename(tiny + '.tmp', tiny)
  return whole, parts, tiny


def multi_processing(workers):
  return ['--direct_running_mode=multi_processing', f'--direct_num_workers={workers}']


def cores_configs(workers):
  """(name, description, Beam options, several commands?)"""
  return [
      ('default', 'default: one command, in-process runner', [], False),
      ('multi_threading', f'--direct_running_mode=multi_threading --direct_num_workers={workers}',
       ['--direct_running_mode=multi_threading', f'--direct_num_workers={workers}'], False),
      ('multi_processing_1', '--direct_running_mode=multi_processing --direct_num_workers=1',
       multi_processing(1), False),
      ('multi_processing', f'--direct_running_mode=multi_processing --direct_num_workers={workers}',
       multi_processing(workers), False),
      ('commands', f'{workers} commands at once, each on 1/{workers} of the instances, '
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


def steady_state(samples, low=0.1, high=0.9):
  """(instances/s in steady state, the seconds it was measured over, the
  time at which that steady line starts from 0 predictions), or None:
  the least-squares slope of the predictions all commands have made
  together against time, from `low` to `high` of the final count. The
  counts are the job's own progress figures (every second,
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
  rate = (sum((t - mean_t) * (n - mean_n) for t, n in window)
          / sum((t - mean_t) ** 2 for t, _ in window))
  if rate <= 0:
    return None
  return rate, window[-1][0] - window[0][0], mean_t - mean_n / rate


def steady_rate(samples, low=0.1, high=0.9):
  """The rate of `steady_state` (None where there is none)."""
  found = steady_state(samples, low, high)
  return found[0] if found else None


def run_commands(model, inputs, out, beam_args) -> dict:
  """Runs one command per entry of `inputs` (each a list of files), all at
  once, with the job's defaults; returns seconds until the last exited,
  predictions, the steady state (`steady_state`: `steady` the rate,
  `steady_s` its window, `steady_from` where its line starts, seconds from
  the start), `first`: seconds until the first predictions were reported
  (progress lines, every second), `model_load_s` (the summaries' mean
  model load) and the cores other processes used meanwhile."""
  busy, ours, started = _busy_seconds(), _children_seconds(), time.perf_counter()
  procs = []
  for i, files in enumerate(inputs):
    output = f'{out}-{i}'
    shutil.rmtree(output, ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'tf_batch_predict.pipeline', f'--model={model}', f'--input={",".join(files)}',
         f'--output={output}', '--key_field=id',
         '--log_level=info', '--progress_interval=1', *beam_args],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, samples = [], []
    watcher = threading.Thread(target=_watch, args=(proc.stderr, lines, samples), daemon=True)
    watcher.start()
    procs.append((output, proc, watcher, lines, samples))
  predictions, loads = 0, []
  for output, proc, watcher, lines, _ in procs:
    proc.wait()
    watcher.join()
    if proc.returncode:
      sys.exit(f'cores: {" ".join(proc.args)} failed ({proc.returncode}):\n'
               f'{"".join(lines)[-3000:]}')
    with open(os.path.join(output, 'summary.json')) as f:
      summary = json.load(f)
    predictions += summary['predictions']
    if summary.get('model_load_s') is not None:
      loads.append(summary['model_load_s'])
  seconds = time.perf_counter() - started
  others = None
  if busy is not None:
    others = max(0.0, (_busy_seconds() - busy) - (_children_seconds() - ours)) / seconds
  all_samples = [samples for *_, samples in procs]
  firsts = [t for own in all_samples for t, n in own if n > 0]
  steady = steady_state(all_samples)
  return {'seconds': seconds, 'count': predictions, 'others': others,
          'steady': steady[0] if steady else None,
          'steady_s': steady[1] if steady else None,
          'steady_from': steady[2] - started if steady else None,
          'first': min(firsts) - started if firsts else None,
          'model_load_s': sum(loads) / len(loads) if loads else None}


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


def quiet_runs(workdir, workload, configs, inputs, rounds, max_rounds, quiet):
  """The run that counts per (configuration, 'tiny' or 'full'): every run
  is repeated `rounds` times, interleaved, and after that, up to
  `max_rounds`, until it has had a quiet run (the machine's other
  processes used less than `quiet` cores on average meanwhile); the
  fastest quiet run counts (the fastest of all where none was quiet).
  `inputs`: (several commands?) -> ((size, [files per command]), ...)."""
  model = os.path.join(workdir, f'{workload}-model')
  best = {}
  for round_ in range(max_rounds):
    for name, _, beam_args, several in configs:
      for size, files in inputs(several):
        key = (name, size)
        if round_ >= rounds and best[key]['quiet']:
          continue
        r = run_commands(model, files, os.path.join(workdir, 'out', f'cores-{workload}-{name}'),
                         beam_args)
        r['quiet'] = r['others'] is None or r['others'] < quiet
        if key not in best or (r['quiet'], -r['seconds']) > (best[key]['quiet'],
                                                             -best[key]['seconds']):
          best[key] = r
    if round_ + 1 >= rounds and all(r['quiet'] for r in best.values()):
      break
  return best


def cores_table(workdir, scale, workers, counts, rounds, max_rounds, quiet):
  """Default vs every way of using `workers` cores, whole commands timed,
  on `counts` instances per workload (quiet_runs)."""
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
  ratios = []
  for workload in ('tabular', 'mlp'):
    count = int(WORKLOADS[workload] * scale)
    whole, parts, tiny = cores_inputs(workdir, workload, count, counts[workload], workers)

    def inputs(several):
      if several:
        return (('tiny', [[tiny]] * workers), ('full', [[p] for p in parts]))
      return (('tiny', [[tiny]]), ('full', [[whole]]))

    best = quiet_runs(workdir, workload, configs, inputs, rounds, max_rounds, quiet)
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
    one, several = best[('multi_processing_1', 'full')], best[('multi_processing', 'full')]
    if one['steady'] and several['steady']:
      ratios.append(f'{workload} {several["steady"] / one["steady"]:.2f}x')
  print()
  if ratios:
    print(f'multi_processing, {workers} workers / 1 worker, steady inst/s: '
          f'{", ".join(ratios)}.')
  print(f'Load average (1 min) before this table: {load_before:.1f}, after: '
        f'{os.getloadavg()[0]:.1f}.')


def workers_table(workdir, scale, workers, counts, rounds, max_rounds, quiet):
  """multi_processing with 1 worker process against `workers` worker
  processes, the same command otherwise: steady state (the target: 2
  workers >= 1.6x 1 worker) and start-up apart (quiet_runs)."""
  configs = [('multi_processing_1', 'multi_processing, 1 worker', multi_processing(1), False),
             ('multi_processing', f'multi_processing, {workers} workers',
              multi_processing(workers), False)]
  load_before = os.getloadavg()[0]
  print()
  print(f'Whole commands (--direct_running_mode=multi_processing) on {os.cpu_count()} cores. '
        f'Start-up s: the command on {CORES_TINY:,} instances, start to exit; first '
        'prediction s: from the start until the progress lines (every second) first report '
        'predictions; steady line from s: where the steady-state line starts from 0 '
        'predictions; model load s: the summary\'s mean load per worker. Steady state: '
        'predictions from 10% to 90% of the total, over "steady s" seconds. Fastest of at '
        f'least {rounds} runs with other processes using under {quiet} cores (* none was: '
        'the fastest run).')
  print()
  header = ('workload', 'configuration', 'instances', 'seconds', 'start-up s',
            'first prediction s', 'steady line from s', 'model load s', 'steady s',
            'steady inst/s', 'steady vs 1 worker', "others' cores")
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  verdicts = []
  for workload in ('tabular', 'mlp'):
    count = int(WORKLOADS[workload] * scale)
    whole, _, tiny = cores_inputs(workdir, workload, count, counts[workload], 0)
    best = quiet_runs(workdir, workload, configs,
                      lambda several: (('tiny', [[tiny]]), ('full', [[whole]])),
                      rounds, max_rounds, quiet)
    one = best[('multi_processing_1', 'full')]['steady']
    for name, description, _, _ in configs:
      full, small = best[(name, 'full')], best[(name, 'tiny')]
      number = lambda v, f='.1f': '-' if v is None else format(v, f)  # noqa: E731
      ratio = f'{full["steady"] / one:.2f}x' if full['steady'] and one else '-'
      others = ('-' if full['others'] is None else f'{full["others"]:.2f}') + (
          '' if full['quiet'] and small['quiet'] else ' *')
      print(f'| {workload} | {description} | {full["count"]:,} | {full["seconds"]:.1f} | '
            f'{small["seconds"]:.1f} | {number(full["first"])} | '
            f'{number(full["steady_from"])} | {number(full["model_load_s"], ".2f")} | '
            f'{number(full["steady_s"])} | {number(full["steady"], ",.0f")} | {ratio} | '
            f'{others} |')
      if name == 'multi_processing' and full['steady'] and one:
        ratio = full['steady'] / one
        shortest = min(full['steady_s'], best[('multi_processing_1', 'full')]['steady_s'])
        verdicts.append(f'{workload} {ratio:.2f}x ({"met" if ratio >= 1.6 else "NOT met"}'
                        f'{"" if shortest >= 20 else f"; a steady state of {shortest:.0f} s"})')
  print()
  print(f'{workers} workers / 1 worker, steady inst/s (target >= 1.6x): '
        f'{", ".join(verdicts) or "-"}.')
  print(f'Load average (1 min) before this table: {load_before:.1f}, after: '
        f'{os.getloadavg()[0]:.1f}.')


if __name__ == '__main__':
  main()
