"""batch-predict evaluate (pipeline/evaluate.py): metrics checked against a
direct computation written here with numpy (confusion matrix by counting,
log loss and R² by their formulas, ROC AUC by the Mann-Whitney pair count),
on a real job's predictions and on synthetic data; the command's errors;
the report rendered in headless Chromium."""
import base64
import glob
import importlib.util
import json
import math
import os
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tf_batch_predict.pipeline import evaluate
from tests import browser
from tests.helpers import run_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = np.finfo(np.float64).eps


# -- the direct computation -------------------------------------------------------

def direct_auc(positive, score):
  """P(score of a positive > score of a negative), ties counting one half."""
  positive = np.asarray(positive, bool)
  pos, neg = score[positive], score[~positive]
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return (greater + 0.5 * ties) / (len(pos) * len(neg))


def direct_quantile(values, q):
  """Linear interpolation between order statistics."""
  s = np.sort(values)
  h = (len(s) - 1) * q
  low = int(math.floor(h))
  high = min(low + 1, len(s) - 1)
  return s[low] + (h - low) * (s[high] - s[low])


def check_classification(metrics, y_true, y_pred, k, scores=None):
  """metrics['classification'] against counts and formulas. y_true, y_pred:
  class indices; scores: None, the positive class's probability (1-D), or
  probability vectors (2-D)."""
  c = metrics['classification']
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  n = len(y_true)
  assert metrics['counts']['evaluated'] == n
  matrix = np.zeros((k, k), int)
  for t, p in zip(y_true, y_pred):
    matrix[t, p] += 1
  assert c['confusion_matrix']['counts'] == matrix.tolist()
  assert c['accuracy'] == pytest.approx(np.trace(matrix) / n, rel=1e-12)
  precisions, recalls = [], []
  for i, row in enumerate(c['per_class']):
    tp, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i, :].sum()
    assert row['support'] == support and row['predicted'] == predicted
    precision = tp / predicted if predicted else None
    recall = tp / support if support else None
    denominator = 2 * tp + (predicted - tp) + (support - tp)
    f1 = 2 * tp / denominator if denominator else None
    for name, value in (('precision', precision), ('recall', recall), ('f1', f1)):
      if value is None:
        assert row[name] is None
        assert f'per_class[{i}].{name}' in metrics['null_reasons']
      else:
        assert row[name] == pytest.approx(value, rel=1e-12)
    if precision is not None:
      precisions.append(precision)
    if recall is not None:
      recalls.append(recall)
  assert c['macro_avg']['precision'] == pytest.approx(np.mean(precisions), rel=1e-12)
  assert c['macro_avg']['recall'] == pytest.approx(np.mean(recalls), rel=1e-12)
  if scores is None:
    assert c['log_loss'] is None and c['roc_auc'] is None
    assert 'log_loss' in metrics['null_reasons'] and 'roc_auc' in metrics['null_reasons']
    return
  scores = np.asarray(scores, np.float64)
  p = np.clip(scores, EPS, 1 - EPS)
  if scores.ndim == 1:
    log_loss = -np.mean(np.where(y_true == 1, np.log(p), np.log(1 - p)))
  else:
    log_loss = -np.mean(np.log(p[np.arange(n), y_true]))
  if scores.ndim == 1 or k == 2:
    positive = scores if scores.ndim == 1 else scores[:, 1]
    both = 0 < (y_true == 1).sum() < n
    auc = direct_auc(y_true == 1, positive) if both else None
  else:
    per_class = [direct_auc(y_true == i, scores[:, i]) for i in range(k)
                 if 0 < (y_true == i).sum() < n]
    auc = np.mean(per_class) if per_class else None
  assert c['log_loss'] == pytest.approx(log_loss, rel=1e-9)
  if auc is None:  # one class in the labels
    assert c['roc_auc'] is None and metrics['null_reasons']['roc_auc']
  else:
    assert c['roc_auc'] == pytest.approx(auc, rel=1e-9)


def check_calibration(calibration, confidence, outcome):
  """Bins of width 0.1 (1.0 in the last): counts, means, the weighted gap."""
  confidence, outcome = np.asarray(confidence, np.float64), np.asarray(outcome, bool)
  gap = 0.0
  for i, row in enumerate(calibration['bins']):
    inside = (confidence >= i / 10) & ((confidence < (i + 1) / 10) | (i == 9))
    assert row['count'] == inside.sum()
    if inside.any():
      assert row['mean_predicted'] == pytest.approx(confidence[inside].mean(), rel=1e-9)
      assert row['observed'] == pytest.approx(outcome[inside].mean(), rel=1e-9)
      gap += inside.sum() * abs(confidence[inside].mean() - outcome[inside].mean())
    else:
      assert row['mean_predicted'] is None and row['observed'] is None
  assert sum(r['count'] for r in calibration['bins']) == len(confidence)
  assert calibration['expected_calibration_error'] == pytest.approx(gap / len(confidence),
                                                                    rel=1e-9, abs=1e-12)


def direct_average_precision(positive, score):
  """sum over the distinct scores, highest first, of (recall gained) x
  precision at `score >= t`."""
  positive = np.asarray(positive, bool)
  total, recall_before = 0.0, 0.0
  for t in np.unique(score)[::-1]:
    chosen = score >= t
    tp = (chosen & positive).sum()
    recall = tp / positive.sum()
    total += (recall - recall_before) * tp / chosen.sum()
    recall_before = recall
  return total


def check_binary_extras(metrics, y, score, exact_ap=True):
  """The threshold sweep, average precision and calibration of a binary
  classifier's positive-class probability `score`."""
  c = metrics['classification']
  y, score = np.asarray(y, bool), np.asarray(score, np.float64)
  thresholds = [r['threshold'] for r in c['threshold_sweep']['rows']]
  assert set(evaluate.SWEEP_THRESHOLDS) <= set(thresholds)
  for row in c['threshold_sweep']['rows']:
    chosen = score >= row['threshold']
    tp, predicted, support = (chosen & y).sum(), chosen.sum(), y.sum()
    assert row['predicted_positive'] == predicted and row['true_positive'] == tp
    assert row['precision'] == (pytest.approx(tp / predicted, rel=1e-12) if predicted
                                else None)
    assert row['recall'] == pytest.approx(tp / support, rel=1e-12)
    assert row['f1'] == pytest.approx(2 * tp / (predicted + support), rel=1e-12)
  best = c['threshold_sweep']['best_f1']
  fine = [2 * ((score >= t) & y).sum() / ((score >= t).sum() + y.sum())
          for t in evaluate.FINE_THRESHOLDS]
  assert best['f1'] == pytest.approx(max(fine), rel=1e-12)
  if exact_ap:
    expected = direct_average_precision(y, score)
  else:
    from sklearn.metrics import average_precision_score
    expected = average_precision_score(y, score)
  assert c['average_precision'] == pytest.approx(expected, rel=1e-9)
  check_calibration(c['calibration'], score, y)


def check_regression(metrics, y, y_hat):
  r = metrics['regression']
  y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
  residual = y_hat - y
  assert metrics['counts']['evaluated'] == len(y)
  assert r['mae'] == pytest.approx(np.abs(residual).sum() / len(y), rel=1e-9, abs=1e-12)
  assert r['rmse'] == pytest.approx(math.sqrt((residual ** 2).sum() / len(y)), rel=1e-9,
                                    abs=1e-12)
  total = ((y - y.mean()) ** 2).sum()
  with np.errstate(divide='ignore', over='ignore'):
    r2 = 1 - (residual ** 2).sum() / total if total > 0 else None
  if r2 is not None and math.isfinite(r2):
    assert r['r2'] == pytest.approx(r2, rel=1e-9, abs=1e-9)
  else:  # all labels equal, or too close for a finite R²
    assert r['r2'] is None and metrics['null_reasons']['r2']
  for q in evaluate.QUANTILES:
    assert r['residual_quantiles'][f'{q:g}'] == pytest.approx(
        direct_quantile(residual, q), rel=1e-9, abs=1e-12)
  assert r['mean_residual'] == pytest.approx(residual.mean(), rel=1e-9, abs=1e-12)


def strict_json(path):
  def refuse(constant):
    raise AssertionError(f'{path}: {constant} is not JSON')
  with open(path) as f:
    return json.loads(f.read(), parse_constant=refuse)


def png_size(data: bytes):
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  return struct.unpack('>II', data[16:24])


BINARY_CHARTS = ['roc', 'pr', 'thresholds', 'scores', 'scores', 'calibration']
MAX_PAGE_BYTES = 200_000


def check_report(path, images, charts=()):
  """Self-contained: no script, nothing fetched, `images` small inline PNGs,
  the SVG charts `charts` (their data-chart kinds, in order), the run
  report's style."""
  with open(path) as f:
    page = f.read()
  assert len(page.encode()) < MAX_PAGE_BYTES
  text = page.replace('xmlns="http://www.w3.org/2000/svg"', '')  # (the SVG's namespace)
  assert '<script' not in text and 'http://' not in text and 'https://' not in text
  from tf_batch_predict.pipeline import report
  assert report._CSS in page  # one style with the run's report.html
  assert [part.split('"', 1)[0] for part in page.split('<figure data-chart="')[1:]] == list(
      charts)
  pngs = [base64.b64decode(part.split('"', 1)[0])
          for part in page.split('src="data:image/png;base64,')[1:]]
  assert len(pngs) == images
  for png in pngs:
    width, height = png_size(png)
    assert width <= 600 and height <= 800
    assert len(png) < 150_000
  return page


# -- a real job: the demo's model (a Keras sigmoid, predictions like [0.57]) ----------

@pytest.fixture(scope='module')
def demo_job(tmp_path_factory):
  """A run of the demo's model over 300 instances with a boolean `label`
  and a numeric `target` passed through, and two bad lines."""
  root = tmp_path_factory.mktemp('evaluate_job')
  spec = importlib.util.spec_from_file_location(
      'make_demo', os.path.join(ROOT, 'launch', 'make_demo.py'))
  make_demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(make_demo)
  make_demo.build_model(str(root / 'model' / '1'))
  rng = random.Random(7)
  lines = []
  for i in range(300):
    instance = {'id': f'c-{i}', 'label': rng.random() < 0.3, 'target': rng.uniform(0, 1),
                'age': rng.randint(18, 90), 'income': round(rng.gauss(50000, 20000), 2),
                'tenure_months': rng.randint(0, 120),
                'visits_per_week': round(rng.uniform(0, 10), 1)}
    lines.append(json.dumps(instance))
  lines.append('{"id": "bad-json", ')
  lines.append('{"id": "missing-input", "label": true, "age": 3}')
  os.makedirs(root / 'instances')
  with open(root / 'instances' / 'part-0.jsonl', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  output = str(root / 'output')
  predictions, errors, summary = run_job(
      output, f'--model={root / "model"}', f'--input={root / "instances" / "*.jsonl"}',
      '--key_field=id', '--passthrough_fields=label,target')
  assert len(predictions) == 300 and len(errors) == 2
  return output, predictions, errors


def test_binary_classifier_of_a_real_job(demo_job, tmp_path):
  output, predictions, errors = demo_job
  assert all(isinstance(p['churn_probability'], list) and len(p['churn_probability']) == 1
             for p in predictions)
  rc = evaluate.main([f'--joined={output}/predictions-*.jsonl,{output}/errors-*.jsonl',
                      '--label_field=label', '--prediction_field=churn_probability',
                      f'--output={tmp_path}'])
  assert rc == 0
  metrics = strict_json(tmp_path / 'metrics.json')
  assert metrics['task'] == 'classification'
  assert 'booleans' in metrics['task_reason']
  assert metrics['counts']['failed_predictions'] == len(errors) == 2
  assert sum(metrics['counts']['failed_predictions_by_category'].values()) == 2
  assert metrics['counts']['excluded'] == 0
  c = metrics['classification']
  assert c['classes'] == [False, True] and c['positive_class'] is True
  y = np.array([p['label'] for p in predictions], int)
  score = np.array([p['churn_probability'][0] for p in predictions])
  check_classification(metrics, y, (score >= 0.5).astype(int), 2, score)
  # Another threshold moves the confusion matrix, not the scores' metrics.
  rc = evaluate.main([f'--joined={output}/predictions-*.jsonl', '--label_field=label',
                      '--prediction_field=churn_probability', '--threshold=0.55',
                      f'--output={tmp_path / "t"}'])
  assert rc == 0
  check_classification(strict_json(tmp_path / 't' / 'metrics.json'), y,
                       (score >= 0.55).astype(int), 2, score)
  check_binary_extras(metrics, y, score)
  check_report(tmp_path / 'report.html', images=0, charts=BINARY_CHARTS)


def test_regressor_of_a_real_job(demo_job, tmp_path):
  output, predictions, _ = demo_job
  rc = evaluate.main([f'--joined={output}/predictions-*.jsonl', '--label_field=target',
                      '--prediction_field=churn_probability', f'--output={tmp_path}'])
  assert rc == 0
  metrics = strict_json(tmp_path / 'metrics.json')
  assert metrics['task'] == 'regression' and 'fractional' in metrics['task_reason']
  check_regression(metrics, [p['target'] for p in predictions],
                   [p['churn_probability'][0] for p in predictions])
  check_report(tmp_path / 'report.html', images=3)


# What the browser checks read from a rendered report.
FIGURES = """Array.from(document.querySelectorAll('figure[data-chart]')).map(f => ({
  chart: f.dataset.chart, width: f.querySelector('svg').getBoundingClientRect().width,
  lines: f.querySelectorAll('polyline').length,
  bars: Array.from(f.querySelectorAll('rect.bar')).map(r => Number(r.dataset.count))}))"""
OVERLAPS = browser.TEXT_OVERLAPS
IMAGES = '[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])'
TABLES = 'document.querySelectorAll("table").length'
HEADER = """[document.querySelector('h1').textContent,
  Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))]"""
SLICES = """Array.from(document.querySelectorAll('table.slices tr')).slice(1).map(
  r => [r.cells[0].textContent, r.cells[1].textContent])"""


def render_report(path):
  """The report in headless Chromium: loaded with no error, nothing
  fetched, its charts laid out with no text running into another, its
  images decoded. Returns (figures, images, tables, header, slices)."""

  page = browser.render(path, evaluate=[FIGURES, OVERLAPS, IMAGES, TABLES, HEADER, SLICES])
  assert page.errors == [] and page.requests == []
  figures, overlaps, images, tables, header, slices = page.values
  assert overlaps == []
  assert all(f['width'] > 0 for f in figures)
  assert all(complete and 0 < width <= 600 and 0 < height <= 800
             for complete, width, height in images)
  return figures, images, tables, header, slices


def test_report_renders_in_a_browser(demo_job, tmp_path):
  output, predictions, _ = demo_job
  assert evaluate.main([f'--joined={output}/predictions-*.jsonl', '--label_field=label',
                        '--prediction_field=churn_probability', '--slice_by=label',
                        f'--output={tmp_path}']) == 0
  figures, images, tables, (title, links), slices = render_report(tmp_path / 'report.html')
  assert [f['chart'] for f in figures] == BINARY_CHARTS and images == [] and tables >= 8
  assert [f['lines'] for f in figures if f['chart'] != 'scores'] == [2, 2, 3, 2]
  # The score histograms hold every pair, once.
  assert sum(sum(f['bars']) for f in figures if f['chart'] == 'scores') == len(predictions)
  # The model and the run: a link to the run's report, relative to ours.
  assert title == f'Evaluation of model {os.path.dirname(output)}/model, version 1'
  assert links == [os.path.relpath(os.path.join(output, 'report.html'), tmp_path)]
  assert os.path.exists(os.path.join(tmp_path, links[0]))
  labels = [p['label'] for p in predictions]
  assert sorted(slices) == sorted([['false', f'{labels.count(False):,}'],
                                   ['true', f'{labels.count(True):,}']])
  # A regression's plots are images.
  assert evaluate.main([f'--joined={output}/predictions-*.jsonl', '--label_field=target',
                        '--prediction_field=churn_probability',
                        f'--output={tmp_path / "r"}']) == 0
  figures, images, tables, _, _ = render_report(tmp_path / 'r' / 'report.html')
  assert figures == [] and len(images) == 3 and tables >= 4


def test_slices_by_a_field_of_the_labels(demo_job, tmp_path):
  """--slice_by with --predictions/--labels (the join): a field of the
  labels' files; the 20 most frequent values, then one "other"."""
  output, predictions, _ = demo_job
  root = os.path.dirname(output)
  assert evaluate.main([f'--predictions={output}', f'--labels={root}/instances/*.jsonl',
                        '--label_field=label', '--prediction_field=churn_probability',
                        '--slice_by=age', f'--output={tmp_path}']) == 0
  metrics = strict_json(tmp_path / 'metrics.json')
  run = metrics['inputs']['run']
  assert run['model']['version'] == 1 and run['model']['signature'] == 'serving_default'
  assert os.path.normpath(os.path.join(tmp_path, run['report'])) == os.path.join(
      output, 'report.html')
  instances = {}
  with open(os.path.join(root, 'instances', 'part-0.jsonl')) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      instances[row['id']] = row
  by_key = {p['id']: p for p in predictions}
  age = {key: instances[key]['age'] for key in by_key}
  counts = {}
  for value in age.values():
    counts[str(value)] = counts.get(str(value), 0) + 1
  ranked = sorted(counts, key=lambda v: (-counts[v], v))
  sliced = metrics['slices']
  assert sliced['field'] == 'age' and sliced['distinct_values'] == len(counts)
  assert [r['value'] for r in sliced['slices'][:20]] == ranked[:20]
  assert [r['count'] for r in sliced['slices'][:20]] == [counts[v] for v in ranked[:20]]
  other = sliced['slices'][20]
  assert other['value'] is None and other['values'] == len(counts) - 20
  assert other['count'] == sum(counts[v] for v in ranked[20:])
  for row in sliced['slices']:
    keys = [k for k in by_key if (str(age[k]) == row['value'] if row['value'] is not None
                                  else str(age[k]) in ranked[20:])]
    y = np.array([by_key[k]['label'] for k in keys])
    score = np.array([by_key[k]['churn_probability'][0] for k in keys])
    assert row['accuracy'] == pytest.approx(((score >= 0.5) == y).mean(), rel=1e-12)
    if 0 < y.sum() < len(y):
      assert row['roc_auc'] == pytest.approx(direct_auc(y, score), rel=1e-9)
    else:
      assert row['roc_auc'] is None
  # A field that no row holds is a configuration mistake.
  assert evaluate.main([f'--joined={output}/predictions-*.jsonl', '--label_field=label',
                        '--prediction_field=churn_probability', '--slice_by=agee',
                        f'--output={tmp_path / "x"}']) == 2


def write_joined(path, n, seed=0, segments=50):
  """n joined rows of a binary classifier's JSON output, built here: a
  boolean label, a [score] prediction and a `segment` field; returns
  (labels, scores, segments)."""
  rng = np.random.default_rng(seed)
  y = rng.random(n) < 0.3
  score = np.clip(y * 0.25 + rng.random(n) * 0.75, 0, 1).round(4)
  segment = rng.integers(0, segments, n)
  with open(path, 'w') as f:
    f.writelines(f'{{"id": "k{i}", "label": {"true" if a else "false"}, '
                 f'"churn_probability": [{b!r}], "segment": "s{c}"}}\n'
                 for i, (a, b, c) in enumerate(zip(y.tolist(), score.tolist(),
                                                   segment.tolist())))
  return y, score, segment


@pytest.mark.parametrize('n', [10, 1_000_000])
def test_report_at_10_and_a_million_pairs(tmp_path, n):
  """The command on n pairs (a file built here): the metrics against a
  direct computation, a small page that renders."""
  path = tmp_path / 'joined.jsonl'
  y, score, segment = write_joined(path, n, seed=n % 97)
  out = tmp_path / 'evaluation'
  assert evaluate.main([f'--joined={path}', '--label_field=label',
                        '--prediction_field=churn_probability', '--slice_by=segment',
                        f'--output={out}']) == 0
  metrics = strict_json(out / 'metrics.json')
  if n <= 10_000:  # (the direct AUC compares every pair of pairs)
    check_classification(metrics, y.astype(int), (score >= 0.5).astype(int), 2, score)
  assert metrics['counts']['evaluated'] == n
  check_binary_extras(metrics, y, score, exact_ap=n <= 10_000)
  sliced = metrics['slices']
  assert sum(r['count'] for r in sliced['slices']) == n
  assert len(sliced['slices']) == min(21, len(set(segment.tolist())))
  for row in sliced['slices'][:20]:
    inside = segment == int(row['value'][1:])
    assert row['count'] == inside.sum()
    assert row['accuracy'] == pytest.approx(((score[inside] >= 0.5) == y[inside]).mean(),
                                            rel=1e-12)
  if n > 10_000:
    from sklearn.metrics import roc_auc_score
    assert metrics['classification']['roc_auc'] == pytest.approx(roc_auc_score(y, score),
                                                                  rel=1e-9)
  page = check_report(out / 'report.html', images=0,
                      charts=BINARY_CHARTS if 0 < y.sum() < n else ['calibration'])
  figures, images, tables, _, slices = render_report(out / 'report.html')
  assert sum(int(count.replace(',', '')) for _, count in slices) == n
  if 0 < y.sum() < n:
    assert sum(sum(f['bars']) for f in figures if f['chart'] == 'scores') == n
  assert len(page) < MAX_PAGE_BYTES


# -- synthetic data ---------------------------------------------------------------

def softmax(logits):
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def test_multiclass_score_vectors(tmp_path):
  rng = np.random.default_rng(3)
  n, k = 400, 4
  y = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), y] += 1.0  # better than chance
  probs = softmax(logits).astype(np.float32).astype(np.float64)  # as a float32 output
  metrics = evaluate.evaluate(y.tolist(), probs.tolist(), str(tmp_path))
  assert metrics['task'] == 'classification' and 'vectors of 4 scores' in metrics['task_reason']
  assert metrics['classification']['classes'] == [0, 1, 2, 3]
  check_classification(metrics, y, probs.argmax(axis=1), k, probs)
  for i, row in enumerate(metrics['classification']['per_class']):
    assert row['roc_auc'] == pytest.approx(direct_auc(y == i, probs[:, i]), rel=1e-9)
  assert strict_json(tmp_path / 'metrics.json') == json.loads(json.dumps(metrics))
  # Score histograms and ROC curves per class (PNG), top-class calibration (SVG).
  check_report(tmp_path / 'report.html', images=2, charts=['calibration'])
  calibration = metrics['classification']['calibration']
  assert 'top' in calibration['of']
  check_calibration(calibration, probs.max(axis=1), probs.argmax(axis=1) == y)
  # Logits are scores but not probabilities: AUC yes, log loss null with a reason.
  metrics = evaluate.compute(y.tolist(), logits.tolist())
  assert metrics['classification']['log_loss'] is None
  assert 'not probabilities' in metrics['null_reasons']['log_loss']
  per_class = [direct_auc(y == i, logits[:, i]) for i in range(k)]
  assert metrics['classification']['roc_auc'] == pytest.approx(np.mean(per_class), rel=1e-9)


def test_class_name_labels(tmp_path):
  rng = np.random.default_rng(5)
  names = ['cat', 'dog', 'emu']
  n = 300
  y = rng.integers(0, 3, n)
  probs = softmax(rng.normal(size=(n, 3)) + np.eye(3)[y])
  labels = [names[i] for i in y]
  # Score vectors: the names map the vector positions.
  metrics = evaluate.compute(labels, probs.tolist(), class_names=names)
  assert metrics['classification']['classes'] == names
  check_classification(metrics, y, probs.argmax(axis=1), 3, probs)
  with pytest.raises(evaluate.EvaluateError, match='--class_names'):
    evaluate.compute(labels, probs.tolist())
  # Class-name predictions: sorted names, no scores (and the reason why not).
  predicted = [names[i] for i in probs.argmax(axis=1)]
  metrics = evaluate.evaluate(labels, predicted, str(tmp_path))
  assert metrics['classification']['classes'] == names
  check_classification(metrics, y, probs.argmax(axis=1), 3)
  check_report(tmp_path / 'report.html', images=0)  # the confusion matrix: a table
  # Binary scores with two class names: the second one is the positive class.
  binary = rng.random(n) < 0.4
  score = np.clip(binary * 0.3 + rng.random(n) * 0.7, 0, 1)
  metrics = evaluate.compute(['yes' if b else 'no' for b in binary], score.tolist(),
                             class_names=['no', 'yes'], threshold=0.6)
  assert metrics['classification']['positive_class'] == 'yes'
  check_classification(metrics, binary.astype(int), (score >= 0.6).astype(int), 2, score)


def test_regressor_synthetic(tmp_path):
  rng = np.random.default_rng(11)
  y = rng.normal(10, 3, 500)
  y_hat = y + rng.normal(0.5, 1, 500)
  metrics = evaluate.evaluate(y.tolist(), [[v] for v in y_hat.tolist()], str(tmp_path))
  assert metrics['task'] == 'regression'
  check_regression(metrics, y, y_hat)
  check_report(tmp_path / 'report.html', images=3)
  # numpy arrays take the vectorized path, with the same result
  assert evaluate.compute(y, y_hat[:, None]) == metrics


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=60))
def test_regression_property(pairs):
  y, y_hat = (np.array(v) for v in zip(*pairs))
  metrics = evaluate.compute(y.tolist(), y_hat.tolist(), task='regression')
  if len(y) < 2:
    assert metrics['regression']['r2'] is None
    return
  check_regression(metrics, y, y_hat)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 5), st.integers(1, 80), st.integers(0, 2 ** 32 - 1))
def test_classification_property(k, n, seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, k, n)
  probs = rng.dirichlet(np.ones(k), n)
  metrics = evaluate.compute(y.tolist(), probs.tolist(), task='classification')
  check_classification(metrics, y, probs.argmax(axis=1), k, probs)


# -- decisions, exclusions, nulls --------------------------------------------------

@pytest.mark.parametrize('labels, predictions, task, why', [
    ([0.5, 1.25, 2.0], [0.4, 1.0, 2.5], 'regression', 'fractional'),
    ([True, False, True], [[0.9], [0.2], [0.4]], 'classification', 'booleans'),
    ([1, 0, 1], [0.9, 0.2, 0.4], 'classification', 'binary classifier'),
    ([1.0, 0.0, 1.0], [[0.9], [0.2], [0.4]], 'classification', 'binary classifier'),
    ([2, 0, 1], [2, 1, 1], 'classification', 'class ids'),
    ([3, 7, 12], [3.5, 6.0, 11.2], 'regression', 'neither binary scores'),
    (['a', 'b', 'a'], ['a', 'a', 'b'], 'classification', 'class names'),
    ([0, 1, 2], [[0.1, 0.9, 0], [1, 0, 0], [0, 0, 1]], 'classification', 'vectors of 3'),
])
def test_auto_task_says_why(labels, predictions, task, why):
  metrics = evaluate.compute(labels, predictions)
  assert metrics['task'] == task and why in metrics['task_reason']
  assert metrics['settings']['task'] == 'auto'


def test_unusable_pairs_are_counted_by_reason():
  pairs = evaluate.Pairs()
  rows = [{'y': 1, 'p': 0.8}, {'y': 0, 'p': [0.3]}, {'y': None, 'p': 0.2}, {'p': 0.1},
          {'y': 1}, {'y': 1, 'p': None}, {'y': 1, 'p': float('nan')}, {'y': 1, 'p': {'a': 1}},
          {'y': 0, 'p': [0.1, 0.9]}, {'y': 5, 'p': 0.7}, {'y': 1, 'p': 0.9},
          {'y': 0, 'error': {'category': 'schema', 'message': 'x'}}, [1, 2]]
  for row in rows:
    pairs.add_row(row, 'y', 'p')
  metrics = evaluate.compute(pairs, None, task='classification')
  counts = metrics['counts']
  assert counts['rows'] == len(rows)
  assert counts['evaluated'] == 3
  assert counts['failed_predictions_by_category'] == {'schema': 1}
  assert counts['excluded_by_reason'] == {
      'label is null': 1, 'label field missing from the row': 1,
      'prediction field missing from the row': 1, 'prediction is null': 1,
      'prediction holds a value that is not a finite number': 1,
      'prediction is neither a number, a string nor a vector of numbers': 1,
      'prediction is a vector of 2 scores, most are a number': 1,
      'label is not a binary class (0, 1, false or true)': 1,
      'row is not a JSON object': 1}
  assert counts['excluded'] == sum(counts['excluded_by_reason'].values())
  check_classification(metrics, [1, 0, 1], [1, 0, 1], 2, np.array([0.8, 0.3, 0.9]))


def test_nulls_have_reasons(tmp_path):
  metrics = evaluate.evaluate([1, 1, 1], [0.9, 0.4, 0.7], str(tmp_path), task='classification')
  assert metrics['classification']['roc_auc'] is None
  assert 'one class' in metrics['null_reasons']['roc_auc']
  assert metrics['classification']['per_class'][0]['recall'] is None
  metrics = evaluate.compute([2.5, 2.5, 2.5], [2.0, 2.5, 3.0])
  assert metrics['regression']['r2'] is None and 'equal' in metrics['null_reasons']['r2']
  metrics = evaluate.evaluate([None, None], [0.1, 0.2], str(tmp_path / 'empty'))
  assert metrics['counts']['evaluated'] == 0 and metrics['task'] is None
  assert 'label is null: 2' in metrics['null_reasons']['metrics']
  strict_json(tmp_path / 'empty' / 'metrics.json')
  check_report(tmp_path / 'empty' / 'report.html', images=0)


def test_pairs_merge_like_one_accumulator():
  rng = np.random.default_rng(2)
  names = ['x', 'y', 'z']
  labels = [names[i] for i in rng.integers(0, 3, 200)]
  predicted = [names[i] for i in rng.integers(0, 3, 200)]
  whole = evaluate.compute(labels, predicted)
  first = evaluate.Pairs().extend(labels[:100][::-1], predicted[:100][::-1])
  second = evaluate.Pairs().extend(labels[100:], predicted[100:])  # its own string codes
  import pickle
  merged = pickle.loads(pickle.dumps(second)).merge(first)
  assert evaluate.compute(merged, None) == whole


def test_write_outputs_replaces_the_previous_result(tmp_path):
  metrics = evaluate.compute([0, 1, 1, 0], [0.2, 0.8, 0.4, 0.1])
  evaluate.write_outputs(metrics, [0, 1, 1, 0], [0.2, 0.8, 0.4, 0.1], str(tmp_path))
  assert strict_json(tmp_path / 'metrics.json') == json.loads(json.dumps(metrics))
  check_report(tmp_path / 'report.html', images=0, charts=BINARY_CHARTS)
  assert sorted(os.listdir(tmp_path)) == ['metrics.json', 'report.html']


# -- the command -------------------------------------------------------------------

def test_parquet_rows(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  rng = np.random.default_rng(9)
  y = rng.integers(0, 2, 50)
  probs = softmax(rng.normal(size=(50, 2)))
  pq.write_table(pa.table({'id': list(range(50)), 'truth': y.tolist(),
                           'probs': probs.tolist()}), str(tmp_path / 'joined.parquet'))
  assert evaluate.main([f'--joined={tmp_path}/*.parquet', '--label_field=truth',
                        '--prediction_field=probs', f'--output={tmp_path / "out"}']) == 0
  check_classification(strict_json(tmp_path / 'out' / 'metrics.json'), y,
                       probs.argmax(axis=1), 2, probs)


def _joined(tmp_path, rows, name='rows.jsonl'):
  path = tmp_path / name
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(row) + '\n' for row in rows))
  return str(path)


@pytest.mark.parametrize('args, message', [
    (['--joined={d}/nothing-*.jsonl'], 'no file matches'),
    (['--label_field=nope'], "--label_field: no row has a field 'nope'"),
    (['--prediction_field=nope'], "--prediction_field: no row has a field 'nope'"),
    (['--task=clustering'], '--task'),
    (['--threshold=abc'], '--threshold'),
    (['--threshold=1.5'], '--threshold'),
    (['--label_field=name'], '--class_names'),
    (['--task=regression', '--label_field=name'], 'not numbers'),
    (['--class_names=a,b,c', '--label_field=name'], '--class_names names 3 classes'),
    (['--format=csv'], '--format'),
    (['--bogus=1'], 'unknown option --bogus'),
])
def test_configuration_mistakes_exit_2(tmp_path, capsys, args, message):
  joined = _joined(tmp_path, [{'y': i % 2, 'name': 'ab'[i % 2], 'p': [0.3, 0.7][::(-1) ** i]}
                              for i in range(6)])
  output = tmp_path / 'out'
  evaluate.main([f'--joined={joined}', '--label_field=y', '--prediction_field=p',
                 f'--output={output}'])
  before = (output / 'metrics.json').read_text()
  capsys.readouterr()
  argv = [f'--joined={joined}', '--label_field=y', '--prediction_field=p',
          f'--output={output}']
  for arg in args:
    argv = [a for a in argv if a.split('=')[0] != arg.split('=')[0]] + [
        arg.format(d=tmp_path)]
  assert evaluate.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('batch-predict evaluate: error: ')
  assert message in err and 'Traceback' not in err
  assert (output / 'metrics.json').read_text() == before  # the previous result is kept
  assert sorted(os.listdir(output)) == ['metrics.json', 'report.html']


def test_nothing_to_evaluate_exits_3(tmp_path, capsys):
  joined = _joined(tmp_path, [{'y': 1, 'error': {'category': 'schema'}},
                              {'y': None, 'p': 0.5}])
  assert evaluate.main([f'--joined={joined}', '--label_field=y', '--prediction_field=p',
                        f'--output={tmp_path / "out"}']) == 3
  assert 'batch-predict evaluate: error: no pair' in capsys.readouterr().err
  metrics = strict_json(tmp_path / 'out' / 'metrics.json')
  assert metrics['counts']['failed_predictions'] == 1
  assert metrics['counts']['excluded_by_reason'] == {'label is null': 1}


def test_gzip_rows_and_unreadable_lines(tmp_path):
  import gzip
  with gzip.open(tmp_path / 'rows.jsonl.gz', 'wt') as f:
    f.write('{"y": 1.5, "p": 1.0}\n{"y": 2.5, "p": [2.0]}\nnot json\n\n{"y": 3.25, "p": 3.5}\n')
  assert evaluate.main([f'--joined={tmp_path}/rows.jsonl.gz', '--label_field=y',
                        '--prediction_field=p', f'--output={tmp_path / "out"}']) == 0
  metrics = strict_json(tmp_path / 'out' / 'metrics.json')
  assert metrics['counts']['excluded_by_reason'] == {'row is not valid JSON': 1}
  check_regression(metrics, [1.5, 2.5, 3.25], [1.0, 2.0, 3.5])
  assert glob.glob(str(tmp_path / 'out' / '*.tmp-*')) == []


def test_labels_written_as_text():
  """CSV cells are carried as their text: numbers and booleans in text are
  read as such, unless the predictions are class names."""
  metrics = evaluate.compute(['0.5', '1.25', '2', '3.75'], [0.4, 1.0, 2.5, 3.0])
  assert metrics['task'] == 'regression' and metrics['counts']['labels_read_from_text'] == 4
  check_regression(metrics, [0.5, 1.25, 2, 3.75], [0.4, 1.0, 2.5, 3.0])
  metrics = evaluate.compute(['1', '0', '1', 'true'], [[0.9], [0.2], [0.4], [0.7]])
  assert metrics['task'] == 'classification'
  check_classification(metrics, [1, 0, 1, 1], [1, 0, 0, 1], 2, np.array([0.9, 0.2, 0.4, 0.7]))
  metrics = evaluate.compute(['1', '2', '1'], ['1', '1', '2'])  # names stay names
  assert metrics['classification']['classes'] == ['1', '2']
  assert 'labels_read_from_text' not in metrics['counts']


# -- --predictions with --labels: joined first by batch-predict join -------------------

def test_labels_joined_by_key_from_a_csv_of_keys_and_labels(demo_job, tmp_path):
  output, predictions, errors = demo_job
  by_id = {p['id']: p for p in predictions}
  # 50 predictions without a label, one label without an instance, and the
  # label of an instance that failed (its error record carries its key).
  ids = sorted(by_id)[:250] + ['nobody', 'missing-input']
  rows = ['id,label'] + [f'{i},{int(by_id[i]["label"]) if i in by_id else 1}' for i in ids]
  (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
  rc = evaluate.main([f'--predictions={output}', f'--labels={tmp_path / "labels.csv"}',
                      '--label_field=label', '--prediction_field=churn_probability',
                      f'--output={tmp_path / "out"}'])
  assert rc == 0
  assert sorted(os.listdir(tmp_path / 'out')) == ['metrics.json', 'report.html']
  metrics = strict_json(tmp_path / 'out' / 'metrics.json')
  join = metrics['inputs']['join']
  assert join['joined_by'] == "key field 'id'"  # from the run's summary.json
  assert join['joined'] == 250 and join['failed'] == 1
  # The 50 predictions and the error record without a key ('bad-json').
  assert join['outputs_without_instance'] == 51
  assert join['instances_without_output'] == 1  # 'nobody'
  assert metrics['counts']['failed_predictions'] == 1
  kept = [by_id[i] for i in ids if i in by_id]
  y = np.array([p['label'] for p in kept], int)
  score = np.array([p['churn_probability'][0] for p in kept])
  assert metrics['task'] == 'classification'
  check_classification(metrics, y, (score >= 0.5).astype(int), 2, score)


def test_labels_read_from_the_runs_instances_by_location(tmp_path, model_dir):
  from tests.test_runs import keras_lines
  lines = keras_lines('e', 120, bad_every=10)
  lines = [json.dumps({**json.loads(line), 'target': i / 120}) for i, line in enumerate(lines)]
  lines = [json.dumps({k: v for k, v in json.loads(line).items() if k != 'id'})
           for line in lines]
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  predictions, errors, _ = run_job(tmp_path / 'run', f'--model={model_dir / "keras"}',
                                   '--signature=serve', f'--input={tmp_path / "in.jsonl"}')
  rc = evaluate.main([f'--predictions={tmp_path / "run"}', f'--labels={tmp_path / "in.jsonl"}',
                      '--label_field=target', '--prediction_field=score',
                      f'--output={tmp_path / "out"}'])
  assert rc == 0
  metrics = strict_json(tmp_path / 'out' / 'metrics.json')
  assert metrics['inputs']['join']['joined_by'] == 'file and position'
  assert metrics['counts']['failed_predictions'] == len(errors) == 12
  offsets, offset = {}, 0
  for line in lines:
    offsets[offset] = json.loads(line)['target']
    offset += len(line) + 1
  check_regression(metrics, [offsets[p['offset']] for p in predictions],
                   [p['score'][0] for p in predictions])


def test_predictions_without_labels_is_one_line(demo_job, tmp_path, capsys):
  output, _, _ = demo_job
  for args, message in (
      ([f'--predictions={output}'], '--labels'),
      ([f'--predictions={output}', f'--labels={tmp_path}/none*.csv'], 'matches no file'),
      ([f'--predictions={output}', f'--labels={output}/x', f'--joined={output}/x'],
       'not both'),
      ([f'--joined={output}/predictions-*.jsonl', '--runner=Direct'], 'unknown option')):
    rc = evaluate.main([*args, '--label_field=label', '--prediction_field=churn_probability',
                        f'--output={tmp_path / "o"}'])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_hostile_rows_and_files_never_crash(tmp_path, capsys):
  rows = [{'l': i % 2, 'p': [0.2 + 0.6 * (i % 2)]} for i in range(40)]
  rows += [{'l': 10 ** 400, 'p': [0.5]}, {'l': 1, 'p': [10 ** 400]}, {'l': 0, 'p': 10 ** 400}]
  rows += [{'l': '\ud800', 'p': [0.5]}]  # a lone surrogate: a class name nobody can draw
  text = '\n'.join(json.dumps(r) for r in rows) + '\n'
  (tmp_path / 'rows.jsonl').write_text(text)
  rc = evaluate.main([f'--joined={tmp_path / "rows.jsonl"}', '--label_field=l',
                      '--prediction_field=p', f'--output={tmp_path / "a"}'])
  err = capsys.readouterr().err
  assert rc == 2 and err.count('\n') == 1 and 'class names' in err  # a string among ints
  rows.pop()
  (tmp_path / 'rows.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  assert evaluate.main([f'--joined={tmp_path / "rows.jsonl"}', '--label_field=l',
                        '--prediction_field=p', f'--output={tmp_path / "a"}']) == 0
  metrics = strict_json(tmp_path / 'a' / 'metrics.json')
  assert sum(metrics['counts']['excluded_by_reason'].values()) == 3, metrics['counts']
  assert metrics['counts']['evaluated'] == 40
  # The surrogate as a class name of its own: drawn as text the fonts can take.
  (tmp_path / 'names.jsonl').write_text('\n'.join(json.dumps(
      {'l': ['a', '\ud800'][i % 2], 'p': ['a', '\ud800'][i // 2 % 2]}) for i in range(20)))
  assert evaluate.main([f'--joined={tmp_path / "names.jsonl"}', '--label_field=l',
                        '--prediction_field=p', f'--output={tmp_path / "n"}']) == 0
  assert (tmp_path / 'n' / 'report.html').stat().st_size > 1000
  capsys.readouterr()
  # A gzip file cut short: the rows before the cut are evaluated, the run says so (4).
  import gzip
  data = gzip.compress(('\n'.join(json.dumps(r) for r in rows[:40]) + '\n').encode())
  (tmp_path / 'cut.jsonl.gz').write_bytes(data[:len(data) // 2])
  rc = evaluate.main([f'--joined={tmp_path / "cut.jsonl.gz"}', '--label_field=l',
                      '--prediction_field=p', f'--output={tmp_path / "b"}'])
  err = capsys.readouterr().err
  if rc == 4:
    metrics = strict_json(tmp_path / 'b' / 'metrics.json')
    assert metrics['counts']['files_incomplete'] == 1
  else:  # nothing at all before the cut
    assert rc == 2 and 'cannot be read' in err
  assert err.count('\n') == 1 and 'Traceback' not in err
  # Not Parquet at all; too many classes: one line each.
  (tmp_path / 'bad.parquet').write_bytes(b'PAR1 not really')
  (tmp_path / 'many.jsonl').write_text(
      '\n'.join(json.dumps({'l': f'c{i}', 'p': f'c{i + 1}'}) for i in range(2500)) + '\n')
  for name, message in (('bad.parquet', 'cannot be read'), ('many.jsonl', 'classes')):
    rc = evaluate.main([f'--joined={tmp_path / name}', '--label_field=l',
                        '--prediction_field=p', f'--output={tmp_path / "c"}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_output_holding_a_runs_result_is_refused(demo_job, tmp_path, capsys):
  output, _, _ = demo_job
  with open(os.path.join(output, 'report.html'), 'rb') as f:
    before = f.read()
  rc = evaluate.main([f'--joined={output}/predictions-*.jsonl', '--label_field=label',
                      '--prediction_field=churn_probability', f'--output={output}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "holds a run's result" in err[0]
  with open(os.path.join(output, 'report.html'), 'rb') as f:
    assert f.read() == before
  assert not os.path.exists(os.path.join(output, 'metrics.json'))


def test_output_whose_files_the_labels_or_joined_patterns_match_is_refused(demo_job, tmp_path,
                                                                             capsys):
  """A re-run would read this run's metrics.json or report.html as rows:
  refused before anything is read or written; patterns that share the
  folder but not those names are fine."""
  output, _, _ = demo_job
  folder = tmp_path / 'data'
  folder.mkdir()
  for flag, extra in [('--joined', []), ('--labels', [f'--predictions={output}'])]:
    rc = evaluate.main([f'{flag}={folder}/*.json*', *extra, '--label_field=label',
                        '--prediction_field=churn_probability', f'--output={folder}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f'{flag}: {folder}/*.json* matches {folder}/metrics.json' in err[0], err
    assert os.listdir(folder) == []
  # Through a relative path and a link to the folder.
  os.symlink(folder, tmp_path / 'link')
  rc = evaluate.main([f'--joined={tmp_path / "link"}/*', '--label_field=label',
                      '--prediction_field=churn_probability', f'--output={folder}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and 'where this command writes its output' in err[0], err
  # The same folder with other names: the usual missing-file mistake, not this one.
  rc = evaluate.main([f'--joined={folder}/*.csv', '--label_field=label',
                      '--prediction_field=churn_probability', f'--output={folder}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and 'no file matches' in err[0] and 'where this command writes' not in err[0]
