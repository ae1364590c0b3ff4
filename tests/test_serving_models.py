"""Every model TF Serving serves loads here and scores the numbers the model
gives when called directly (up to the last bits that depend on the batch,
tests/helpers.py: assert_close_across_batches): zero-padded version
folders, older TF1 exports whose SignatureDef disagrees with the graph,
fixed batch dimensions, reference-typed and stateful outputs, warm-up
assets; and models that cannot run stop the job before it starts, in one
line, leaving nothing behind. Models: tests/models.py (`serving_models`)."""
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tf_batch_predict.pipeline import cli
from tests import cloud, models
from tests.helpers import assert_close_across_batches, assert_conserved, run_job, write_lines
from tests.test_runs import ROOT, TF_CHATTER, leftovers

F32 = np.float32


def config_error(capsys, *args) -> str:
  """Runs the command expecting a configuration error: the one line."""
  rc = cli.main(list(args))
  err = capsys.readouterr().err.strip()
  assert rc == cli.EXIT_CONFIG_ERROR, err
  assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
  return err


def tf1_session_run(path, fetches, feeds):
  """The model run as TF Serving runs it: the TF1 loader and the
  signature's tensors by name."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default(), v1.Session(graph=graph) as sess:
    v1.saved_model.load(sess, ['serve'], str(path))
    return sess.run(fetches, feeds)


def jsonl(tmp_path, name, instances):
  return write_lines(str(tmp_path / name), [json.dumps(x) for x in instances])


# -- version folders ---------------------------------------------------------

def test_zero_padded_versions_highest_is_used_and_reported(serving_models, tmp_path, capsys):
  base = serving_models / 'padded'
  x = [[1.0, 2.0], [-0.5, 4.25]]
  data = jsonl(tmp_path, 'in.jsonl', [{'id': i, 'x': v} for i, v in enumerate(x)])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={base}', f'--input={data}', '--key_field=id')
  assert errors == []
  assert summary['model']['version'] == 124
  assert summary['model']['version_folder'] == '00000124'
  assert summary['model']['path'] == str(base / '00000124')
  assert summary['model']['base'] == str(base)
  assert 'version 124, folder 00000124' in capsys.readouterr().out
  expected = tf1_session_run(base / '00000124', 'y:0', {'x:0': x})
  assert_close_across_batches([p['y'] for p in sorted(predictions, key=lambda p: p['id'])],
                              expected)


@pytest.mark.parametrize('given', ['7', '07', '00000007'])
def test_model_version_picks_a_version_by_number(serving_models, tmp_path, given):
  base = serving_models / 'padded'
  data = jsonl(tmp_path, 'in.jsonl', [{'x': [1.0, 3.0]}])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={base}', f'--input={data}', f'--model_version={given}')
  assert errors == [] and summary['model']['version'] == 7
  assert summary['model']['version_folder'] == '00000007'
  assert predictions[0]['y'] == (tf1_session_run(base / '00000007', 'y:0',
                                                 {'x:0': [[1.0, 3.0]]})[0]).tolist()


def test_model_version_mistakes_are_one_line(serving_models, tmp_path, capsys):
  base = serving_models / 'padded'
  data = jsonl(tmp_path, 'in.jsonl', [{'x': [1.0, 3.0]}])
  common = (f'--input={data}', f'--output={tmp_path / "out"}')
  err = config_error(capsys, f'--model={base}', '--model_version=5', *common)
  assert err.endswith(f'--model_version: {base} has no version 5; available: 7, 123, 124')
  err = config_error(capsys, f'--model={base}', '--model_version=v7', *common)
  assert "--model_version: 'v7' is not a version number" in err
  err = config_error(capsys, f'--model={base / "00000123"}', '--model_version=123', *common)
  assert f'{base / "00000123"} is a SavedModel, not a TF Serving base directory' in err
  twice = tmp_path / 'twice'
  for folder in ('7', '007', '3'):
    shutil.copytree(base / '00000007', twice / folder)
  err = config_error(capsys, f'--model={twice}', '--model_version=7', *common)
  assert err.endswith(f'{twice} holds version 7 twice, in folders 007 and 7; '
                      'remove or rename one of them')
  err = config_error(capsys, f'--model={twice}', *common)  # the highest is ambiguous too
  assert 'holds version 7 twice, in folders 007 and 7' in err
  assert leftovers(tmp_path / 'out') == []


# -- older TF1 exports: the signature disagrees with the graph --------------

def test_stale_tf1_signature_scores_as_a_tf1_session(serving_models, tmp_path, caplog):
  path = serving_models / 'stale'
  instances = [{'id': 'a', 'x': [1.5]}, {'id': 'b', 'x': [-2.0]}, {'id': 'c', 'x': [0.0]},
               {'id': 'scalar', 'x': 3},  # a scalar fits shape [1] (README)
               {'id': 'two', 'x': [1.0, 2.0]}, {'id': 'deep', 'x': [[1.0]]}]
  data = jsonl(tmp_path, 'in.jsonl', instances)
  with caplog.at_level(logging.INFO):
    predictions, errors, summary = run_job(
        str(tmp_path / 'out'), f'--model={path}', f'--input={data}', '--key_field=id')
  assert_conserved(summary, predictions, errors)
  notes = [r.getMessage() for r in caplog.records if 'disagrees with the graph' in r.getMessage()]
  assert len(notes) == 2, notes  # once each for x and y, by the launcher
  assert "input 'x' (x:0) is declared [] but is [?,1] in the graph" in notes[0]
  assert "output 'y' (y:0) is declared [] but is [?,2] in the graph" in notes[1]
  assert any('Model check: loaded' in r.getMessage() for r in caplog.records)
  expected = tf1_session_run(path, 'y:0', {'x:0': [[1.5], [-2.0], [0.0], [3.0]]})
  by_id = {p['id']: p['y'] for p in predictions}
  assert sorted(by_id) == ['a', 'b', 'c', 'scalar']
  assert_close_across_batches([by_id[k] for k in ['a', 'b', 'c', 'scalar']], expected)
  assert {e['id']: e['error']['category'] for e in errors} == {'two': 'schema',
                                                               'deep': 'schema'}
  for e in errors:
    assert "input 'x' expects shape [1] per instance" in e['error']['message'], e


# -- fixed batch dimensions ---------------------------------------------------

@pytest.mark.cross_batch
def test_fixed_batch_signatures_score_as_the_dynamic_one(serving_models, tmp_path,
                                                         signature_of):
  path = serving_models / 'functions'
  rng = np.random.default_rng(4)
  x = rng.uniform(0, 5, size=(11, 3)).round(3).astype(F32)  # 11: not a multiple of 4
  x[6, 1] = -1.0  # fails in the model, alone
  data = jsonl(tmp_path, 'in.jsonl', [{'id': i, 'x': row.tolist()} for i, row in enumerate(x)])
  good = [i for i in range(11) if i != 6]
  expected = signature_of(path, x=x[good])
  results = {}
  for signature, fixed in (('serving_default', None), ('one', 1), ('four', 4)):
    predictions, errors, summary = run_job(
        str(tmp_path / signature), f'--model={path}', f'--signature={signature}',
        f'--input={data}', '--key_field=id', '--max_batch_size=8')
    assert summary['model']['fixed_batch'] == fixed
    assert [e['id'] for e in errors] == [6]
    assert errors[0]['error']['category'] == 'model'
    assert 'negative value' in errors[0]['error']['message']
    by_id = {p['id']: p for p in predictions}
    assert sorted(by_id) == good
    # Batches of 1, of 4 (padded) and of up to 8 against one call of all 10
    # rows: the same values up to their last bits, as in TF Serving.
    for name in ('y', 'total'):
      assert_close_across_batches([by_id[i][name] for i in good], expected[name], name)
    results[signature] = sorted(predictions, key=lambda p: p['id'])
  assert_close_across_batches(results['one'], results['serving_default'])
  assert_close_across_batches(results['four'], results['serving_default'])
  # The bound catches what a cross-batch difference is not: float16
  # rounding, a row's outputs given to its neighbour.
  y = expected['y']
  with pytest.raises(AssertionError):
    assert_close_across_batches(y.astype(np.float16).astype(F32), y)
  with pytest.raises(AssertionError):
    assert_close_across_batches(y[[1, 0, *range(2, len(y))]], y)
  # ... and lets the last bits move: 2 ULPs of each value is what a CPU
  # without AVX-512 gave between these batches (1.6844993829727173 for
  # 1.6844996213912964).
  assert_close_across_batches(y + 2 * np.spacing(y), y)


@pytest.mark.cross_batch
def test_fixed_batch_scoring_pads_and_isolates(serving_models):
  """The handler directly, on batches of every size around the fixed one."""
  from tf_batch_predict.transforms.model.savedmodel import inspect_model
  from tf_batch_predict.transforms.model.score import LoadedSignature
  path = str(serving_models / 'functions')
  dynamic = LoadedSignature(inspect_model(path, ('serve',), 'serving_default'))
  for signature in ('one', 'four'):
    fixed = LoadedSignature(inspect_model(path, ('serve',), signature))
    for size in (1, 3, 4, 5, 9):
      for bad in ([], [0], [size - 1], list(range(size))):
        x = np.arange(size * 3, dtype=F32).reshape(size, 3)
        x[bad, 0] = -1.0
        parts, failures = fixed.score({'x': x})
        assert sorted(i for i, _ in failures) == bad
        rows = [i for positions, _ in parts for i in positions]
        assert sorted(rows) == [i for i in range(size) if i not in bad]
        for positions, outputs in parts:
          want = dynamic.predict({'x': x[list(positions)]})  # unpadded: another batch
          assert_close_across_batches(outputs['y'], want['y'])


def test_inputs_fixing_different_batch_sizes_is_one_line(serving_models, tmp_path, capsys):
  data = jsonl(tmp_path, 'in.jsonl', [{'a': [1, 2, 3], 'b': [1, 2, 3]}])
  err = config_error(capsys, f'--model={serving_models / "functions"}', '--signature=conflict',
                     f'--input={data}', f'--output={tmp_path / "out"}')
  assert err.endswith("--signature: signature 'conflict' fixes different batch sizes for "
                      "its inputs ('a' 1, 'b' 4); no batch can satisfy them all")


# -- stateful and unusual models ----------------------------------------------

def test_reference_typed_output_is_fetched_as_its_value(serving_models, tmp_path):
  path = serving_models / 'ref'
  x = [[1.0, -2.0], [0.5, 8.0], [3.0, 0.0]]
  data = jsonl(tmp_path, 'in.jsonl', [{'id': i, 'x': v} for i, v in enumerate(x)])
  predictions, errors, _ = run_job(str(tmp_path / 'out'), f'--model={path}',
                                   f'--input={data}', '--key_field=id')
  assert errors == []
  doubled, y = tf1_session_run(path, ['Assign:0', 'y:0'], {'x:0': x})
  by_id = {p['id']: p for p in predictions}
  assert_close_across_batches([by_id[i]['doubled'] for i in range(3)], doubled)
  assert_close_across_batches([by_id[i]['y'] for i in range(3)], y)


def test_stateful_counter_loads_and_scores(serving_models, tmp_path, signature_of):
  path = serving_models / 'functions'
  x = np.arange(30, dtype=F32).reshape(10, 3) / 4
  data = jsonl(tmp_path, 'in.jsonl', [{'id': i, 'x': row.tolist()} for i, row in enumerate(x)])
  predictions, errors, _ = run_job(str(tmp_path / 'out'), f'--model={path}',
                                   '--signature=counter', f'--input={data}', '--key_field=id',
                                   '--max_batch_size=4')
  assert errors == [] and len(predictions) == 10
  expected = signature_of(path, 'counter', x=x)['y']
  assert_close_across_batches([p['y'] for p in predictions],
                              expected[[p['id'] for p in predictions]])
  calls = [p['calls'] for p in predictions]
  # The variable counts the job's calls, from 1 in each loaded copy: at most
  # 4 instances per call.
  assert sorted(set(calls)) == list(range(1, max(calls) + 1))
  assert 4 * len(set(calls)) >= 10 and max(calls.count(c) for c in calls) <= 4


def test_an_output_without_batch_dimension_is_one_line_or_left_out(serving_models, tmp_path,
                                                                  capsys, signature_of):
  path = serving_models / 'functions'
  data = jsonl(tmp_path, 'in.jsonl', [{'x': [1.0, 2.0, 3.0]}])
  err = config_error(capsys, f'--model={path}', '--signature=weights', f'--input={data}',
                     f'--output={tmp_path / "out"}')
  assert ("output 'w' has shape [3, 2], not one row per instance of the batch (2); "
          'leave it out with --output_fields') in err
  predictions, errors, _ = run_job(str(tmp_path / 'out'), f'--model={path}',
                                   '--signature=weights', '--output_fields=y',
                                   f'--input={data}')
  expected = signature_of(path, 'weights', x=np.array([[1.0, 2.0, 3.0]], F32))['y'][0]
  assert errors == [] and sorted(predictions[0]) == ['filename', 'offset', 'y']
  np.testing.assert_array_equal(np.array(predictions[0]['y'], F32), expected)


def test_warmup_requests_in_assets_extra_are_ignored(model_dir, tmp_path, signature_of):
  """TF Serving's warm-up file sits beside the SavedModel: loading ignores
  it, locally and when the model is staged from a bucket (copied as is)."""
  base = tmp_path / 'base'
  shutil.copytree(model_dir / 'assets', base / '00000003')
  warmup = base / '00000003' / 'assets.extra' / 'tf_serving_warmup_requests'
  warmup.parent.mkdir()
  warmup.write_bytes(b'\x1e\x00\x00\x00\x00\x00\x00\x00not a PredictionLog\xff' * 4)
  instances = [{'id': 'a', 'age': 30.0, 'thal': 'normal'}, {'id': 'b', 'age': 2.5,
                                                            'thal': 'unknown'}]
  data = jsonl(tmp_path, 'in.jsonl', instances)
  expected = signature_of(model_dir / 'assets', age=np.array([30.0, 2.5], F32),
                          thal=np.array([b'normal', b'unknown']))

  def check(predictions, errors, summary):
    assert errors == [] and summary['model']['version_folder'] == '00000003'
    by_id = {p['id']: p for p in predictions}
    assert_close_across_batches([by_id[k]['output_0'] for k in 'ab'], expected['output_0'])
    assert [by_id[k]['output_1'] for k in 'ab'] == ['NORMAL', 'UNKNOWN']

  check(*run_job(str(tmp_path / 'out'), f'--model={base}', f'--input={data}', '--key_field=id'))
  staging = tmp_path / 'staged'
  os.environ['BATCH_PREDICT_STAGING_DIR'] = str(staging)
  try:
    with cloud.emulated_bucket('serving-models') as bucket:
      cloud.upload_tree(bucket, str(base), 'models/assets')
      check(*run_job(str(tmp_path / 'out-gs'), '--model=gs://serving-models/models/assets',
                     f'--input={data}', '--key_field=id'))
  finally:
    del os.environ['BATCH_PREDICT_STAGING_DIR']
  [copy] = os.listdir(staging)  # one complete copy, no partial one
  assert '.partial-' not in copy
  staged = staging / copy / 'assets.extra' / 'tf_serving_warmup_requests'
  assert staged.read_bytes() == warmup.read_bytes()


def test_signature_mistakes_name_the_available_ones(serving_models, model_dir, tmp_path,
                                                    capsys):
  data = jsonl(tmp_path, 'in.jsonl', [{'x': 1.0}])
  common = (f'--input={data}', f'--output={tmp_path / "out"}')
  err = config_error(capsys, f'--model={model_dir / "tf1"}', *common)
  assert err.endswith("--signature: no signature 'serving_default'; available: "
                      'predict_scores; pass --signature=NAME')
  err = config_error(capsys, f'--model={serving_models / "nosig"}', *common)
  assert err.endswith(f'--model: {serving_models / "nosig"} has no signatures (tag set '
                      '"serve"), so there is nothing to call; TF Serving cannot serve it '
                      'either: save it with signatures=...')


def test_sample_call_rejected_with_invalid_argument_only_warns(serving_models, tmp_path,
                                                              caplog, signature_of):
  """`positive` asserts x > 0: the launch check's zeros fail, real
  instances pass."""
  path = serving_models / 'functions'
  x = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 1.0]], F32)
  data = jsonl(tmp_path, 'in.jsonl', [{'id': i, 'x': row.tolist()} for i, row in enumerate(x)])
  with caplog.at_level(logging.WARNING, logger='tf_batch_predict.pipeline'):
    predictions, errors, summary = run_job(
        str(tmp_path / 'out'), f'--model={path}', '--signature=positive', f'--input={data}',
        '--key_field=id')
  warnings = [r.getMessage() for r in caplog.records if 'Model check' in r.getMessage()]
  assert len(warnings) == 1 and 'rejects a sample batch of zeros' in warnings[0]
  assert 'InvalidArgumentError' in warnings[0] and 'not positive' in warnings[0]
  assert [e['id'] for e in errors] == [1] and 'not positive' in errors[0]['error']['message']
  expected = signature_of(path, 'positive', x=x[:1])['y'][0]
  np.testing.assert_array_equal(np.array(predictions[0]['y'], F32), expected)
  assert summary['exit_status'] == 0 or summary['errors'] == 1


def test_unknown_op_stops_the_job_at_launch_in_one_line(serving_models, tmp_path, capsys):
  """The real command: one line naming the op, exit 2, no lock or staging
  folder, also with --skip_model_check (the op is found in the graph
  without loading the model)."""
  # The stale export: a run that goes ahead would also warn about its
  # shapes; one that stops says only why.
  broken = tmp_path / 'broken'
  shutil.copytree(serving_models / 'stale', broken)
  models.replace_op(str(broken), 'MatMul', 'NoSuchOp')
  data = jsonl(tmp_path, 'in.jsonl', [{'x': [1.0]}])
  out = tmp_path / 'out'
  args = [f'--model={broken}', f'--input={data}', f'--output={out}']
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('BATCH_PREDICT_DEBUG', None)
  proc = subprocess.run([sys.executable, '-m', 'tf_batch_predict.pipeline', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True)
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not TF_CHATTER.match(l)]
  assert proc.returncode == cli.EXIT_CONFIG_ERROR, proc.stderr
  assert len(lines) == 1, lines
  assert lines[0] == (f'batch-predict: error: --model: {broken}: the model uses ops this '
                      'TensorFlow does not have (NoSuchOp): they come from a custom op library; '
                      'serve it with a build that links that library (known here: TensorFlow '
                      'Text, TensorFlow Decision Forests)')
  assert leftovers(out) == [] and not (out / 'summary.json').exists()
  rc = cli.main([*args, '--skip_model_check'])
  err = capsys.readouterr().err
  assert rc == cli.EXIT_CONFIG_ERROR and err == lines[0] + '\n'
  assert leftovers(out) == [] and not (out / 'summary.json').exists()


def test_launch_check_feeds_examples_built_from_the_parsing_spec(model_dir):
  """Signatures that take serialized tf.Examples are checked with an Example
  that satisfies the graph's parsing spec (an empty one would fail the
  model's required features)."""
  from tf_batch_predict.transforms.model.savedmodel import inspect_model
  from tf_batch_predict.transforms.model.score import check_model, sample_feeds
  for signature in ('serving_default', 'classification', 'regression'):
    ref = inspect_model(str(model_dir / 'estimator'), ('serve',), signature)
    [examples] = sample_feeds(ref.signature)
    assert examples.shape == (2,) and examples[0] != b''
    seconds, warning, checked = check_model(ref)
    assert warning is None and seconds > 0 and checked.loader == 'session'


def test_a_worker_in_the_launchers_process_takes_the_checked_model(model_dir, serving_models):
  """check_model(keep=True) hands its loaded signature to the first worker
  load of the same model in this process (after a pickling round trip, as
  Beam carries the handler); any other load loads its own, and both score
  the same."""
  import pickle
  from tf_batch_predict.transforms.model.savedmodel import inspect_model
  from tf_batch_predict.transforms.model.score import (SavedModelHandler, check_model,
                                                       release_checked, sample_feeds)
  ref = inspect_model(str(model_dir / 'estimator'), ('serve',), 'regression')
  _, _, checked = check_model(ref, keep=True)
  first = SavedModelHandler(pickle.loads(pickle.dumps(checked)), 16).load_model()
  second = SavedModelHandler(checked, 16).load_model()
  assert first.from_check and not second.from_check
  feeds = dict(zip([i.name for i in ref.signature.inputs], sample_feeds(ref.signature)))
  a, b = first.predict(feeds), second.predict(feeds)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  # Kept for one model only: another signature's load loads its own, and
  # what no worker took is released.
  _, _, checked = check_model(ref, keep=True)
  other = inspect_model(str(model_dir / 'estimator'), ('serve',), 'classification')
  assert not SavedModelHandler(other, 16).load_model().from_check
  release_checked()
  assert not SavedModelHandler(checked, 16).load_model().from_check
  check_model(ref)  # without keep: nothing is kept
  assert not SavedModelHandler(checked, 16).load_model().from_check
  # A signature whose calls change the model's state (a counter variable)
  # is not kept: the sample call has changed it.
  counter = inspect_model(str(serving_models / 'functions'), ('serve',), 'counter')
  _, _, checked = check_model(counter, keep=True)
  loaded = SavedModelHandler(checked, 16).load_model()
  assert not loaded.from_check and loaded._fn.changes_state() == ['AssignAddVariableOp']


def test_a_tf1_reference_variable_assigned_by_the_outputs_changes_state():
  """TF1 reference variables' Assign ops are not marked stateful: taking a
  reference counts, reading it (IsVariableInitialized, an identity) does not."""
  import tensorflow as tf
  from tf_batch_predict.transforms.model.savedmodel import state_changing_ops
  graph = tf.Graph()
  with graph.as_default():
    counter = tf.compat.v1.Variable(0, use_resource=False, name='counter')
    x = tf.compat.v1.placeholder(tf.int32, [None], name='x')
    counted = tf.compat.v1.assign_add(counter, 1)
    read = tf.identity(counter) + x
    initialized = tf.compat.v1.is_variable_initialized(counter)
  nodes = {node.name: node for node in graph.as_graph_def().node}

  def reached(*names):
    found, pending = [], list(names)
    while pending:
      node = nodes[pending.pop().lstrip('^').split(':')[0]]
      found.append(node)
      pending.extend(node.input)
    return found
  assert state_changing_ops(reached(counted.op.name)) == ['AssignAdd']
  assert state_changing_ops(reached(read.op.name, initialized.op.name)) == []


def test_single_example_export_with_unbatched_outputs(tmp_path, signature_of):
  """A TF2 export of a single-example function: input [1, 2], outputs a
  scalar, a [2] vector, a [None] vector of one or two values (no batch
  dimension declared: the whole output is the one instance's) and a [1, 2]
  one (batched). Each instance gets what the model
  returns for it alone; a bad instance is isolated."""
  import tensorflow as tf

  class One(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 2], tf.float32, name='x')])
    def serve(self, x):
      check = tf.debugging.assert_non_negative(x, message='negative')
      with tf.control_dependencies([check]):
        return {'total': tf.reduce_sum(x), 'probs': tf.nn.softmax(x[0]), 'doubled': x * 2.0,
                'distinct': tf.unique(x[0]).y}  # declared [None]: any number of rows

  path = str(tmp_path / 'one')
  module = One()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  xs = [[float(i), float(i % 3)] for i in range(9)] + [[-1.0, 0.0]]
  data = jsonl(tmp_path, 'in.jsonl', [{'id': i, 'x': x} for i, x in enumerate(xs)])
  predictions, errors, summary = run_job(str(tmp_path / 'out'), f'--model={path}',
                                         f'--input={data}', '--key_field=id')
  assert summary['model']['fixed_batch'] == 1
  assert [(e['id'], e['error']['category']) for e in errors] == [(9, 'model')]
  by_id = {p['id']: p for p in predictions}
  assert sorted(by_id) == list(range(9))
  for i, x in enumerate(xs[:9]):
    expected = signature_of(path, x=np.array([x], F32))
    assert np.float32(by_id[i]['total']) == expected['total']
    np.testing.assert_array_equal(np.array(by_id[i]['probs'], F32), expected['probs'])
    np.testing.assert_array_equal(np.array(by_id[i]['doubled'], F32), expected['doubled'][0])
    np.testing.assert_array_equal(np.array(by_id[i]['distinct'], F32), expected['distinct'])


def test_version_names_are_ascii_int64_numbers(serving_models, tmp_path):
  """As TF Serving parses them: other digits ('٣', a fullwidth '９') and
  numbers beyond int64 are not versions."""
  from tf_batch_predict.transforms.model.savedmodel import resolve_model_dir
  base = tmp_path / 'base'
  for name in ('00000007', '٣', '９', '9' * 25):
    shutil.copytree(serving_models / 'padded' / '00000007', base / name)
  assert resolve_model_dir(str(base)) == (str(base / '00000007'), 7, '00000007')
