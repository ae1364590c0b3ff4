"""Failure isolation in Score, on real SavedModels through the real handler
and pipeline: every instance is either predicted, with the outputs the model
gives it when called directly, or a `model` error with the reason the model
gives when called on it alone, and only if the model fails on it alone."""
import dataclasses
import json
import logging
import random

import numpy as np
import pytest

from tests.helpers import assert_close_across_batches, assert_conserved, run_job, write_lines
from tf_batch_predict.transforms.model import savedmodel
from tf_batch_predict.transforms.records import MODEL, FeedGroup, InstanceBatch
from tf_batch_predict.transforms.model.savedmodel import inspect_model
from tf_batch_predict.transforms.model.score import LoadedSignature, SavedModelHandler, one_line


# -- models and references -----------------------------------------------------

def build_batch_dependent_model(path):
  """x float32[2]: fails when two or more instances of the *batch* have a
  value above 5, so no instance fails alone; output `total` = row sum."""
  import tensorflow as tf

  class Crowded(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name='x')])
    def serve(self, x):
      big = tf.reduce_sum(tf.cast(tf.reduce_any(x > 5.0, axis=1), tf.int32))
      check = tf.debugging.assert_less(big, 2, message='crowded batch')
      with tf.control_dependencies([check]):
        return {'total': tf.reduce_sum(x, axis=1)}

  module = Crowded()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def build_padded_model(path):
  """n float32 scalar: fails for negative n; output `mask` is
  sequence_mask(n) padded to the batch's largest n, so its shape beyond the
  batch depends on the batch."""
  import tensorflow as tf

  class Padded(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='n')])
    def serve(self, n):
      check = tf.debugging.assert_non_negative(n, message='negative length')
      with tf.control_dependencies([check]):
        return {'mask': tf.sequence_mask(tf.cast(n, tf.int32))}

  module = Padded()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


@pytest.fixture(scope='module')
def extra_models(tmp_path_factory):
  root = tmp_path_factory.mktemp('score_models')
  build_batch_dependent_model(str(root / 'crowded'))
  build_padded_model(str(root / 'padded'))
  return root


class Direct:
  """The model called directly (eagerly, as a user would), one instance at a
  time: outputs, or the one-line reason it fails."""
  def __init__(self, path):
    import tensorflow as tf
    self._loaded = tf.saved_model.load(str(path))
    self._fn = self._loaded.signatures['serving_default']
    self._cache = {}

  def alone(self, **inputs):
    key = tuple((k, v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(inputs.items()))
    if key not in self._cache:
      self._cache[key] = self._call(**inputs)
    return self._cache[key]

  def _call(self, **inputs):
    try:
      outputs = self._fn(**{k: v[None] for k, v in inputs.items()})
    except Exception as e:  # pylint: disable=broad-except
      return None, one_line(e)
    return {k: v.numpy()[0] for k, v in outputs.items()}, None


@pytest.fixture(scope='module')
def ragged(model_dir):
  path = str(model_dir / 'ragged')
  return path, Direct(path)


def handler_for(path, max_batch_size):
  return SavedModelHandler(inspect_model(path, ('serve',), 'serving_default'), max_batch_size)


def score(handler, model, feeds):
  """Runs the handler on one group of len(rows) instances; returns
  ({row: outputs}, {row: reason}) and checks each row appears once."""
  rows = list(range(100, 100 + len(next(iter(feeds.values())))))
  # Only the groups and errors matter to Score; the other fields ride along.
  required = {f.name: None for f in dataclasses.fields(InstanceBatch)
              if f.default is dataclasses.MISSING
              and f.default_factory is dataclasses.MISSING}
  batch = InstanceBatch(**{**required, 'groups': [FeedGroup(rows, feeds)], 'errors': []})
  [scored] = handler.run_inference(batch, model)
  predicted, failed = {}, {}
  for part_rows, outputs in scored.results:
    for i, row in enumerate(part_rows):
      assert row not in predicted
      predicted[row] = {k: v[i] for k, v in outputs.items()}
  for error in scored.errors:
    assert error.category == MODEL and error.row not in failed
    failed[error.row] = error.message
  assert not set(predicted) & set(failed)
  assert sorted(predicted.keys() | failed.keys()) == rows
  return ({r - 100: v for r, v in predicted.items()},
          {r - 100: v for r, v in failed.items()})


_POOLS = {}


def ragged_rows(pattern, width=3, seed=0):
  """One row per flag, drawn from fixed pools of good rows and of rows with a
  negative value (where the flag is set): the same rows recur among many
  different neighbours, and their direct results are computed once."""
  if width not in _POOLS:
    rng = np.random.default_rng(width)
    good = rng.uniform(0, 8, size=(300, width)).astype(np.float32)
    bad = rng.uniform(0, 8, size=(300, width)).astype(np.float32)
    bad[np.arange(300), rng.integers(width, size=300)] = -rng.uniform(1, 5, size=300)
    _POOLS[width] = good, bad
  good, bad = _POOLS[width]
  rng = np.random.default_rng(seed)
  return np.stack([(bad if flag else good)[rng.integers(300)] for flag in pattern])


def check_ragged(handler, model, direct, x):
  predicted, failed = score(handler, model, {'x': x})
  good, alone = [], []
  for i, row in enumerate(x):
    outputs, reason = direct.alone(x=row)
    if reason is not None:
      assert failed.get(i) == reason, (i, row)
      assert 'negative value' in reason and '\n' not in reason
    else:
      assert i in predicted, (i, row)
      assert predicted[i]['label'] == outputs['label']
      good.append(i)
      alone.append(outputs['total'])
  # Scored among neighbours against alone: other batches.
  assert_close_across_batches([predicted[i]['total'] for i in good], np.array(alone))
  return predicted, failed


def patterns(n, seed):
  rng = random.Random(seed)
  yield [False] * n
  yield [True] * n
  yield [i == 0 for i in range(n)]
  yield [i == n - 1 for i in range(n)]
  yield [i % 2 == 0 for i in range(n)]
  yield [i % 7 == 3 for i in range(n)]
  yield [n // 3 <= i < 2 * n // 3 for i in range(n)]  # a block
  for rate in (0.01, 0.1, 0.3, 0.5, 0.9):
    yield [rng.random() < rate for _ in range(n)]


# -- the handler on many arrangements ------------------------------------------

@pytest.mark.parametrize('max_batch_size', [1, 2, 7, 64, 256])
def test_exactly_the_failing_instances_are_model_errors(ragged, max_batch_size):
  path, direct = ragged
  handler = handler_for(path, max_batch_size)
  model = handler.load_model()
  for n in (1, 2, 3, 5, 17, 64, 100, 256):
    for k, pattern in enumerate(patterns(n, seed=n)):
      x = ragged_rows(pattern, seed=n * 100 + k)
      _, failed = check_ragged(handler, model, direct, x)
      assert sorted(failed) == [i for i, bad in enumerate(pattern) if bad]


@pytest.mark.cross_batch
def test_failure_rate_changes_do_not_change_results(ragged):
  """The split strategy adapts to the recent failure rate (halving while
  failures are rare, single instances when most fail): alternate the two
  regimes on one loaded model and results stay exact."""
  path, direct = ragged
  handler = handler_for(path, 256)
  model = handler.load_model()
  rng = random.Random(5)
  group_sizes = set()
  for step, rate in enumerate([1.0, 0.004, 0.6, 0.02, 0.95, 0.0, 0.3, 1.0, 0.01, 0.01]):
    pattern = [rng.random() < rate for _ in range(256)]
    x = ragged_rows(pattern, width=2, seed=step)
    _, failed = check_ragged(handler, model, direct, x)
    assert sorted(failed) == [i for i, bad in enumerate(pattern) if bad]
    group_sizes.add(model._group_size())  # pylint: disable=protected-access
  assert 1 in group_sizes and max(group_sizes) > 1  # both regimes were used


@pytest.mark.cross_batch
def test_same_instance_same_result_whatever_its_neighbours(ragged):
  path, direct = ragged
  handler = handler_for(path, 16)
  model = handler.load_model()
  bad = np.array([2.0, -3.0, 1.0], np.float32)
  good = np.array([4.0, 4.0, 4.0], np.float32)
  bad_reason = direct.alone(x=bad)[1]
  expected_total = float(direct.alone(x=good)[0]['total'])
  rng = np.random.default_rng(3)
  for rate in (0.0, 0.2, 0.9):
    for position in (0, 5, 15, 16, 39):
      x = ragged_rows([rng.random() < rate for _ in range(40)], seed=position)
      x[position] = bad
      x[(position + 1) % 40] = good
      predicted, failed = score(handler, model, {'x': x})
      assert failed[position] == bad_reason
      assert '[[2 -3 1]]' in bad_reason  # the reason names this instance's values
      assert_close_across_batches(predicted[(position + 1) % 40]['total'], expected_total)


def test_instance_good_alone_is_never_an_error_even_if_batches_fail(extra_models):
  """A model whose failures depend on the batch (two 'big' instances
  together): no instance fails alone, so none may become an error."""
  handler = handler_for(str(extra_models / 'crowded'), 64)
  model = handler.load_model()
  rng = np.random.default_rng(0)
  for big_fraction in (0.05, 0.3, 0.7, 1.0):
    for n in (2, 3, 10, 64, 100):
      x = rng.uniform(0, 4, size=(n, 2)).astype(np.float32)
      big = rng.random(n) < big_fraction
      x[big, 0] += 10.0
      predicted, failed = score(handler, model, {'x': x})
      assert failed == {}
      for i in range(n):
        assert predicted[i]['total'] == pytest.approx(float(x[i].sum()))


def test_outputs_whose_shape_depends_on_the_batch_keep_their_rows(extra_models):
  handler = handler_for(str(extra_models / 'padded'), 32)
  model = handler.load_model()
  direct = Direct(extra_models / 'padded')
  rng = np.random.default_rng(1)
  for rate in (0.1, 0.5, 1.0, 0.2):
    n = rng.uniform(0, 9, size=48).round().astype(np.float32)
    bad = rng.random(48) < rate
    n[bad] = -1.0 - n[bad]
    predicted, failed = score(handler, model, {'n': n})
    assert sorted(failed) == list(np.flatnonzero(bad))
    for i in failed:
      assert failed[i] == direct.alone(n=n[i])[1]
    for i, outputs in predicted.items():
      mask = list(outputs['mask'])
      assert mask[:int(n[i])] == [True] * int(n[i]) and not any(mask[int(n[i]):])


def test_eager_fallback_scores_the_same(ragged, monkeypatch, caplog):
  """A SavedModel a graph Session cannot load is loaded eagerly instead."""
  path, direct = ragged
  ref = inspect_model(path, ('serve',), 'serving_default')
  session = LoadedSignature(ref)

  def refuse(*args, **kwargs):
    raise ValueError('cannot load this one')

  monkeypatch.setattr(savedmodel, 'SessionSignature', refuse)
  with caplog.at_level(logging.WARNING, logger='tf_batch_predict.transforms.model.savedmodel'):
    eager = LoadedSignature(ref)
  assert session.how() == 'graph session' and eager.how() == 'eager'
  assert 'cannot load this one' in caplog.text
  pattern = [i % 3 == 0 for i in range(50)]
  x = ragged_rows(pattern)
  for model in (session, eager):
    parts, failures = model.score({'x': x})
    assert sorted(i for i, _ in failures) == [i for i, bad in enumerate(pattern) if bad]
    for i, reason in failures:
      assert reason == direct.alone(x=x[i])[1]
    for positions, outputs in parts:
      for j, i in enumerate(positions):
        assert outputs['total'][j] == pytest.approx(x[i].sum(), rel=1e-6)


def test_one_line_reasons():
  class FakeError(Exception):
    def __init__(self, message):
      super().__init__(message)
      self.message = message

  session_style = ('Graph execution error:\n\nassertion failed: [negative value] [x] [[1 -5]]\n'
                   '\t [[{{function_node f_1}}{{node assert/Assert}}]]')
  eager_style = ('Graph execution error:\n\nDetected at node assert defined at:\n'
                 '<stack traces unavailable>\nassertion failed: [x] [1]\n'
                 '\t [[{{node assert/Assert}}]] [Op:__inference_signature_wrapper_475]')
  assert one_line(FakeError(session_style)) == (
      'FakeError: assertion failed: [negative value] [x] [[1 -5]]')
  assert one_line(FakeError(eager_style)) == 'FakeError: assertion failed: [x] [1]'
  assert one_line(FakeError('')) == 'FakeError'
  assert one_line(ValueError('one\ntwo  ')) == 'ValueError: two'


# -- the whole job -------------------------------------------------------------

@pytest.mark.cross_batch
def test_job_reports_exactly_the_failing_instances(ragged, tmp_path):
  """Through the pipeline: a stretch where every instance fails, then mixed
  rates, then clean; three row widths (separate shape groups)."""
  path, direct = ragged
  rng = random.Random(11)
  instances, failing = [], set()
  for i in range(900):
    rate = 1.0 if i < 300 else (0.3 if i < 500 else (0.01 if i < 800 else 0.0))
    width = 1 + i % 3
    row = [round(rng.uniform(0, 6), 2) for _ in range(width)]
    if rng.random() < rate:
      row[rng.randrange(width)] = -1.5
      failing.add(f'i{i}')
    instances.append({'id': f'i{i}', 'x': row})
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps(x) for x in instances])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={path}', f'--input={tmp_path / "in.jsonl"}',
      '--key_field=id', '--max_batch_size=32')
  assert_conserved(summary, predictions, errors)
  assert summary['errors_by_category']['model'] == len(failing)
  assert {e['id'] for e in errors} == failing
  by_id = {x['id']: np.array(x['x'], np.float32) for x in instances}
  for e in errors:
    assert e['error'] == {'category': 'model', 'message': direct.alone(x=by_id[e['id']])[1]}
  assert len(predictions) == 900 - len(failing)
  assert_close_across_batches(
      [p['total'] for p in predictions],
      np.array([direct.alone(x=by_id[p['id']])[0]['total'] for p in predictions]))
