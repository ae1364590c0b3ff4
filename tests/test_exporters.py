"""Models as other exporters and libraries build them (tests/models_exporters.py)
score as the model called directly, or are refused before the run starts
with one line that names the reason and the fix."""
import base64
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import cloud
from tests import models_exporters as exporters
from tests.helpers import assert_close_across_batches, assert_conserved, run_job, write_lines
from tf_batch_predict.pipeline import cli, inspect, preflight
from tf_batch_predict.transforms.model import op_libraries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'batch-predict-exporters'

TEXTS = ['The Cat sat', 'on the MAT dog', '', 'ÜBER Straße ran', 'words nobody knows',
         '  spaces\teverywhere \n', 'cat cat cat cat cat cat cat', 'ΣΊΣΥΦΟΣ 🐈 mat',
         'the', 'DOG RAN ON THE MAT', 'x' * 300]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp('exported')
  exporters.build_text_classifier(str(root / 'text'))
  exporters.build_keras3_subclass(str(root / 'keras3'))
  exporters.build_ragged_outputs(str(root / 'ragged'))
  exporters.build_sparse_output(str(root / 'sparse'))
  exporters.build_counter(str(root / 'counter'))
  return root


def direct(path, signature='serving_default', **inputs) -> dict:
  """The signature called directly (tf.saved_model.load), on all rows at
  once; ragged outputs as lists."""
  import tensorflow as tf
  import tensorflow_text  # noqa: F401  (registers the ops the text model uses)
  outputs = tf.saved_model.load(str(path)).signatures[signature](
      **{k: tf.constant(v) for k, v in inputs.items()})
  return {k: v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy()
          for k, v in outputs.items()}


def one_line_error(capsys, args) -> str:
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def text_input(tmp_path):
  instances = [{'id': f't{i}', 'text': text} for i, text in enumerate(TEXTS * 6)]
  for part in range(3):
    write_lines(str(tmp_path / 'in' / f'{part}.jsonl'),
                [json.dumps(x, ensure_ascii=False) for x in instances[part::3]])
  return instances


@pytest.mark.cross_batch
@pytest.mark.parametrize('mode', ['in_memory', 'multi_processing'])
def test_tf_text_classifier_scores_as_the_model_does(exported, tmp_path, mode):
  """TF Text's ops are loaded in the launcher and in each worker process
  (multi_processing: processes that never imported tensorflow_text)."""
  instances = text_input(tmp_path)
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={exported / "text"}', f'--input={tmp_path}/in/*.jsonl',
      '--key_field=id', f'--direct_running_mode={mode}', '--direct_num_workers=2',
      '--min_batch_size=1', '--max_batch_size=8')
  assert errors == [] and len(predictions) == len(instances)
  assert_conserved(summary, predictions, errors)
  assert summary['model']['op_libraries'] == ['tensorflow_text']
  assert summary['model']['loader'] == 'session'
  expected = direct(exported / 'text', text=np.array([x['text'] for x in instances], object))
  by_id = {p['id']: p for p in predictions}
  assert sorted(by_id) == sorted(x['id'] for x in instances)
  assert [by_id[x['id']]['tokens'] for x in instances] == expected['tokens'].tolist()
  assert expected['tokens'][:3].tolist() == [3, 4, 0]  # the tokenizer really ran
  assert_close_across_batches([by_id[x['id']]['score'] for x in instances], expected['score'])


@pytest.mark.cross_batch
def test_bert_preprocessing_with_ragged_wordpiece_ids(exported, tmp_path):
  """BERT's tokenizer from TF Text (its vocabulary an asset of the
  SavedModel): each text's wordpiece ids, a list of its own length."""
  instances = text_input(tmp_path)
  predictions, errors, _ = run_job(
      str(tmp_path / 'out'), f'--model={exported / "text"}', '--signature=bert',
      f'--input={tmp_path}/in/*.jsonl', '--key_field=id', '--max_batch_size=16')
  assert errors == []
  expected = direct(exported / 'text', 'bert',
                    text=np.array([x['text'] for x in instances], object))
  by_id = {p['id']: p for p in predictions}
  assert [by_id[x['id']]['token_ids'] for x in instances] == expected['token_ids']
  # 'ÜBER Straße ran': case folded (ß as ss), accents stripped.
  assert expected['token_ids'][3] == [exporters.WORDPIECES.index(w)
                                      for w in ('uber', 'strasse', 'ran')]
  assert_close_across_batches([by_id[x['id']]['score'] for x in instances], expected['score'])


def test_inspect_and_preflight_name_the_op_library(exported, tmp_path, capsys):
  assert inspect.main([f'--model={exported / "text"}', '--json']) == 0
  report = json.loads(capsys.readouterr().out)
  signatures = {s['name']: s for s in report['meta_graphs'][0]['signatures']}
  assert sorted(signatures) == ['bert', 'serving_default']
  signature = signatures['serving_default']
  assert signature['usable'] and signatures['bert']['usable']
  assert ('uses TensorFlow Text ops: tensorflow_text is installed and is loaded with the '
          'model') in signature['notes']
  text_input(tmp_path)
  assert preflight.main([f'--model={exported / "text"}', f'--input={tmp_path}/in/*.jsonl',
                         '--key_field=id', '--json']) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['verdict'] == 'ok', report
  assert report['sample']['scored'] == report['sample']['instances'] > 0


def test_preflight_scores_as_the_run_does(exported, tmp_path, capsys):
  """The Keras 3 subclass through the loader a run would choose, and the
  per-instance counter with its input shown without a batch dimension."""
  write_lines(str(tmp_path / 'k.jsonl'), [json.dumps({'id': i, 'inputs': [i, 1.0, -2.0]})
                                          for i in range(5)])
  write_lines(str(tmp_path / 'c.jsonl'), [json.dumps({'id': i, 'delta': i}) for i in range(5)])
  for model, data, extra in (('keras3', 'k.jsonl', []),
                             ('counter', 'c.jsonl', ['--signature=incr_counter_by'])):
    assert preflight.main([f'--model={exported / model}', f'--input={tmp_path / data}',
                           '--key_field=id', '--json', *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['verdict'] == 'ok', report
    assert report['sample']['scored'] == 5
  [delta] = report['fields']['inputs']
  assert delta['type'] == 'float32[]'


def test_ops_of_a_library_not_installed_or_unknown_fail_at_launch(exported, tmp_path, capsys):
  """A model whose ops come from a library that is not installed (TF
  Decision Forests' names here) or from none known: one line naming the ops
  and what to install, before anything runs; `inspect` says the same."""
  text_input(tmp_path)
  for op, expected in (
      ('SimpleMLInferenceOpWithHandle',
       'the model uses TensorFlow Decision Forests ops (SimpleMLInferenceOpWithHandle), and '
       'tensorflow_decision_forests is not installed: pip install '
       'tensorflow-decision-forests'),
      ('NoSuchOpInAnyLibrary',
       'the model uses ops this TensorFlow does not have (NoSuchOpInAnyLibrary): they come '
       'from a custom op library')):
    model = tmp_path / op
    shutil.copytree(exported / 'text', model)
    exporters.rename_ops(str(model), 'CaseFoldUTF8', op)
    err = one_line_error(capsys, [f'--model={model}', f'--input={tmp_path}/in/*.jsonl',
                                  f'--output={tmp_path / "out"}', '--key_field=id'])
    assert err.startswith(f'batch-predict: error: --model: {model}: {expected}'), err
    assert not (tmp_path / 'out' / 'summary.json').exists()
    assert inspect.main([f'--model={model}', '--json']) == 0
    signatures = json.loads(capsys.readouterr().out)['meta_graphs'][0]['signatures']
    assert all(not s['usable'] and expected in s['error'] for s in signatures)


def test_text_ops_listed_are_those_the_installed_library_registers():
  """op_libraries.TEXT must recognize every op tensorflow_text registers,
  and list no op it does not register."""
  script = ('from tensorflow.python.client import pywrap_tf_session as c\n'
            'from tensorflow.core.framework import op_def_pb2\n'
            'def ops():\n'
            '  b = c.TF_GetAllOpList()\n'
            '  return {o.name for o in op_def_pb2.OpList.FromString(c.TF_GetBuffer(b)).op}\n'
            'before = ops()\n'
            'import tensorflow_text\n'
            'print(" ".join(sorted(ops() - before)))\n')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       check=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}).stdout
  registered = set(out.split())
  assert len(registered) > 20
  assert all(op_libraries.TEXT.owns(op) for op in registered), sorted(
      op for op in registered if not op_libraries.TEXT.owns(op))
  assert op_libraries.TEXT.ops <= registered, sorted(op_libraries.TEXT.ops - registered)


def test_dataflow_workers_get_the_op_library_from_a_requirements_file(exported, tmp_path,
                                                                      capsys):
  """Dataflow workers install this package from --setup_file, extras left
  out: the job stages a requirements file with TF Text's installed version."""
  from importlib import metadata
  text_input(tmp_path)
  with cloud.emulated_bucket(BUCKET) as bucket:
    assert cli.main([f'--model={exported / "text"}', f'--input={tmp_path}/in/*.jsonl',
                     f'--output=gs://{BUCKET}/out', '--key_field=id',
                     '--runner=DataflowRunner', '--project=test-project',
                     '--region=us-central1', f'--temp_location=gs://{BUCKET}/tmp',
                     f'--template_location=gs://{BUCKET}/templates/job.json',
                     f'--setup_file={ROOT}/setup.py']) == 0
    staged = {b.name.rsplit('/', 1)[-1]: b for b in bucket.client.list_blobs(
        bucket, prefix='tmp/')}
    assert 'requirements.txt' in staged, sorted(staged)
    assert staged['requirements.txt'].download_as_text().split() == [
        f'tensorflow-text=={metadata.version("tensorflow-text")}']
  capsys.readouterr()


@pytest.mark.cross_batch
def test_keras3_subclass_saved_with_tf_saved_model_save(exported, tmp_path):
  """A graph-mode Session cannot restore its variables; the launcher's
  check finds that tf.saved_model.load runs it, and the workers load it so."""
  rows = [[i / 10, -i / 7, (i % 5) - 2.0] for i in range(60)]
  write_lines(str(tmp_path / 'in.jsonl'),
              [json.dumps({'id': i, 'inputs': row}) for i, row in enumerate(rows)])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={exported / "keras3"}',
      f'--input={tmp_path / "in.jsonl"}', '--key_field=id')
  assert errors == [] and summary['model']['loader'] == 'eager'
  with open(tmp_path / 'out' / 'report.html', encoding='utf-8') as f:
    assert 'loaded with tf.saved_model.load (a graph session cannot run it)' in f.read()
  expected = direct(exported / 'keras3', inputs=np.array(rows, np.float32))['output_0']
  assert np.abs(expected).max() > 0.5  # weights that do something
  by_id = {p['id']: p['output_0'] for p in predictions}
  assert_close_across_batches([by_id[i] for i in range(len(rows))], expected)
  # A signature that fails on the launch check's zeros before it reads a
  # variable; and workers that choose a loader without the check.
  for extra in (['--signature=guarded'], ['--skip_model_check']):
    predictions, errors, summary = run_job(
        str(tmp_path / 'out3'), f'--model={exported / "keras3"}',
        f'--input={tmp_path / "in.jsonl"}', '--key_field=id', *extra)
    failing = [i for i, row in enumerate(rows) if row[0] <= 0] if extra[0].endswith(
        'guarded') else []
    assert sorted(e['id'] for e in errors) == failing
    assert all('first feature must be positive' in e['error']['message'] for e in errors)
    assert all(e['error']['message'].startswith('InvalidArgumentError: assertion failed')
               for e in errors), errors[:1]
    by_id = {p['id']: p['output_0'] for p in predictions}
    kept = [i for i in range(len(rows)) if i not in failing]
    assert_close_across_batches([by_id[i] for i in kept], expected[kept])
  # The same layers and weights exported with model.export run in a
  # Session, with the same results.
  exporters.build_keras3_export(str(tmp_path / 'export'))
  predictions, errors, summary = run_job(
      str(tmp_path / 'out2'), f'--model={tmp_path / "export"}',
      f'--input={tmp_path / "in.jsonl"}', '--key_field=id')
  assert errors == [] and summary['model']['loader'] == 'session'
  by_id = {p['id']: p['output_0'] for p in predictions}
  assert_close_across_batches([by_id[i] for i in range(len(rows))], expected)


def ragged_rows():
  rng = np.random.default_rng(20)
  scores = rng.uniform(0, 1, (50, 4)).astype(np.float32)
  scores[3] = 0.1  # nothing above the threshold: empty lists
  scores[4] = 0.9  # every label, the empty string included
  return scores


@pytest.mark.parametrize('output_format', ['jsonl', 'parquet', 'tfrecord'])
def test_ragged_outputs_are_each_instances_own_list(exported, tmp_path, output_format):
  scores = ragged_rows()
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps({'id': i, 'scores': row.tolist()})
                                           for i, row in enumerate(scores)])
  out = tmp_path / 'out'
  assert cli.main([f'--model={exported / "ragged"}', f'--input={tmp_path / "in.jsonl"}',
                   f'--output={out}', '--key_field=id', f'--output_format={output_format}',
                   '--min_batch_size=1', '--max_batch_size=16']) == 0
  expected = direct(exported / 'ragged', scores=scores)
  assert expected['labels'][3] == [] and len(expected['labels'][4]) == 4
  assert expected['chars'][4][2] == []  # the empty label has no character
  [path] = glob.glob(str(out / f'predictions-*.{output_format}'))
  if output_format == 'jsonl':
    with open(path, encoding='utf-8') as f:
      by_id = {r['id']: r for r in map(json.loads, f)}
    text = lambda b: b.decode('utf-8')  # noqa: E731
    labels = [[text(x) for x in row] for row in expected['labels']]
    chars = [[[text(c) for c in word] for word in row] for row in expected['chars']]
    # `*_bytes` outputs are base64, as TF Serving writes them.
    labels_bytes = [[{'b64': base64.b64encode(x).decode()} for x in row]
                    for row in expected['labels']]
  elif output_format == 'parquet':
    table = pq.read_table(path)
    assert str(table.schema.field('chars').type) == 'list<item: list<item: string>>'
    by_id = {int(r['id']): r for r in table.to_pylist()}
    labels = [[x.decode() for x in row] for row in expected['labels']]
    chars = [[[c.decode() for c in word] for word in row] for row in expected['chars']]
    labels_bytes = expected['labels']  # a binary column
    assert str(table.schema.field('pairs').type) == 'list<item: list<item: float>>'
    assert str(table.schema.field('high').type) == 'list<item: bool>'
  else:
    import tensorflow as tf
    by_id = {}
    for record in tf.data.TFRecordDataset(path):
      feature = tf.train.Example.FromString(record.numpy()).features.feature
      by_id[feature['id'].int64_list.value[0]] = {
          'labels': list(feature['labels'].bytes_list.value),
          'indices': list(feature['indices'].int64_list.value),
          'chars': list(feature['chars'].bytes_list.value),
          'pairs': list(feature['pairs'].float_list.value),
          'high': [bool(v) for v in feature['high'].int64_list.value],
          'labels_bytes': list(feature['labels_bytes'].bytes_list.value),
          'total': list(feature['total'].float_list.value)[0]}
    labels = labels_bytes = expected['labels']  # Examples hold values flat, bytes as they are
    chars = [[c for word in row for c in word] for row in expected['chars']]
  assert sorted(by_id) == list(range(len(scores)))
  for i in range(len(scores)):
    assert by_id[i]['labels'] == labels[i], i
    assert by_id[i]['indices'] == expected['indices'][i], i
    assert by_id[i]['chars'] == chars[i], i
    assert by_id[i]['labels_bytes'] == labels_bytes[i], i
    assert by_id[i]['high'] == expected['high'][i], i
    # Copies of the input's float32 values: equal once read as float32.
    np.testing.assert_array_equal(np.array(by_id[i]['pairs'], np.float32).reshape(-1, 2),
                                  np.array(expected['pairs'][i], np.float32).reshape(-1, 2))
  assert_close_across_batches([by_id[i]['total'] for i in range(len(scores))],
                              expected['total'])


def test_ragged_rows_are_the_same_from_a_session_and_from_the_eager_function(exported):
  from tf_batch_predict.transforms.model.savedmodel import (EagerSignature, SessionSignature,
                                                            inspect_model)
  ref = inspect_model(str(exported / 'ragged'), ('serve',), 'serving_default')
  assert {s.name: s.ragged_rank for s in ref.signature.outputs} == {
      'chars': 2, 'high': 1, 'indices': 1, 'labels': 1, 'labels_bytes': 1, 'pairs': 1,
      'total': 0}
  assert {s.name: s.shape for s in ref.signature.outputs}['pairs'] == (None, 2)
  scores = ragged_rows()
  session = SessionSignature(ref.path, ref.tags, ref.signature)
  try:
    from_session = session.call([scores])
  finally:
    session.close()
  from_eager = EagerSignature(ref).call([scores])
  lists = lambda rows: [r.tolist() if isinstance(r, np.ndarray) else lists(r)  # noqa: E731
                        for r in rows]
  for name, a, b in zip(session.output_names, from_session, from_eager):
    assert a.shape == b.shape == (len(scores),), name
    # The same call on the same rows: equal (ragged rows as lists).
    assert (lists(a) == lists(b)) if a.dtype == object else (a.tolist() == b.tolist()), name


def test_sparse_output_is_refused_unless_left_out(exported, tmp_path, capsys):
  rows = [[1.0, -2.0, 3.5], [-1.0, 0.0, 0.25]]
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps({'id': i, 'x': r})
                                           for i, r in enumerate(rows)])
  args = [f'--model={exported / "sparse"}', f'--input={tmp_path / "in.jsonl"}',
          f'--output={tmp_path / "out"}', '--key_field=id']
  assert one_line_error(capsys, args) == (
      "batch-predict: error: --model: signature 'serving_default' output 'halves' (a "
      "RaggedTensor) has dtype DT_BFLOAT16, which this job cannot write; leave it out with "
      "--output_fields=doubled")
  assert one_line_error(capsys, [*args, '--output_fields=doubled,positive']) == (
      "batch-predict: error: --model: signature 'serving_default' output 'positive' is a "
      "SparseTensor, which this job cannot write; leave it out with "
      "--output_fields=doubled")
  predictions, errors, _ = run_job(str(tmp_path / 'out'), *args[:2], '--key_field=id',
                                   '--output_fields=doubled')
  assert errors == []
  assert sorted((p['id'], p['doubled']) for p in predictions) == [
      (0, [2.0, -4.0, 7.0]), (1, [-2.0, 0.0, 0.5])]


def test_signature_without_a_batch_dimension_is_called_once_per_instance(exported, tmp_path,
                                                                        capsys):
  """TF Serving's stateful counter: each instance's output is the counter
  after adding its own delta, so the outputs, in order, step by the deltas."""
  deltas = [float(d) for d in np.random.default_rng(5).permutation(np.arange(1, 61))]
  for part in range(2):
    write_lines(str(tmp_path / 'in' / f'{part}.jsonl'),
                [json.dumps({'id': i, 'delta': d}) for i, d in enumerate(deltas)
                 if i % 2 == part])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={exported / "counter"}', '--signature=incr_counter_by',
      f'--input={tmp_path}/in/*.jsonl', '--key_field=id')
  assert errors == [] and len(predictions) == len(deltas)
  assert summary['model']['per_instance'] and summary['model']['fixed_batch'] == 1
  steps = sorted((p['output'], deltas[p['id']]) for p in predictions)
  totals = [0.0] + [total for total, _ in steps]
  assert [b - a for a, b in zip(totals, totals[1:])] == [delta for _, delta in steps]
  assert totals[-1] == sum(deltas)
  # One input without a batch dimension beside one with: neither batched
  # nor fed one by one.
  err = one_line_error(capsys, [f'--model={exported / "counter"}', '--signature=scaled_sum',
                                f'--input={tmp_path}/in/*.jsonl', '--key_field=id',
                                f'--output={tmp_path / "out2"}'])
  assert err == ("batch-predict: error: --signature: signature 'scaled_sum' input 'a' has no "
                 "batch dimension (shape []) but input 'b' has one, so instances cannot be "
                 "batched nor fed one by one: export a signature whose inputs all have a "
                 "batch dimension")


@pytest.mark.parametrize('output_format', ['jsonl', 'parquet'])
def test_per_instance_signature_with_ragged_and_vector_outputs(exported, tmp_path,
                                                               output_format):
  """Each instance's whole outputs: a vector of any length, a ragged
  tensor (a list of lists) and a scalar."""
  from tf_batch_predict.transforms.rejoin import read_outputs
  sentences = ['the cat sat', '', 'über   straße', 'one', '🐈 x yz']
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps({'id': i, 'sentence': s},
                                                      ensure_ascii=False)
                                           for i, s in enumerate(sentences)])
  out = tmp_path / 'out'
  assert cli.main([f'--model={exported / "counter"}', '--signature=spell', '--key_field=id',
                   f'--input={tmp_path / "in.jsonl"}', f'--output={out}',
                   f'--output_format={output_format}']) == 0
  [path] = glob.glob(str(out / f'predictions-*.{output_format}'))
  by_id = {int(r['id']): r for r in read_outputs.iter_records(path)}
  for i, sentence in enumerate(sentences):
    expected = direct(exported / 'counter', 'spell', sentence=sentence)
    words = [w.decode() for w in expected['words'].tolist()]
    assert by_id[i]['words'] == words == sentence.split()
    assert by_id[i]['letters'] == [[c.decode() for c in w] for w in expected['letters']]
    assert by_id[i]['letters'] == [list(w) for w in sentence.split()]
    assert by_id[i]['count'] == len(words)


@pytest.mark.cross_batch
def test_tf_text_model_on_flink(exported, tmp_path):
  """Flink's Python workers (a worker pool: processes of their own) load
  TF Text's ops before the model; ragged outputs come back as lists."""
  from tests import engines
  instances = text_input(tmp_path)
  output = tmp_path / 'out'
  with engines.worker_pool(tmp_path) as pool:
    process = subprocess.run(
        [os.path.join(ROOT, 'launch', 'flink.sh'), f'--model={exported / "text"}',
         '--signature=bert', f'--input={tmp_path}/in/*.jsonl', f'--output={output}',
         '--key_field=id', '--flink_master=[local]', '--parallelism=2',
         '--environment_type=EXTERNAL', f'--environment_config={pool.config}',
         '--skip_preflight'],
        cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
        text=True, timeout=420, preexec_fn=engines.die_with_parent)
  assert process.returncode == 0, process.stderr[-3000:]
  predictions = [json.loads(line) for path in glob.glob(str(output / 'predictions-*.jsonl'))
                 for line in open(path, encoding='utf-8')]
  expected = direct(exported / 'text', 'bert',
                    text=np.array([x['text'] for x in instances], object))
  by_id = {p['id']: p for p in predictions}
  assert sorted(by_id) == sorted(x['id'] for x in instances)
  assert [by_id[x['id']]['token_ids'] for x in instances] == expected['token_ids']
  assert_close_across_batches([by_id[x['id']]['score'] for x in instances], expected['score'])
