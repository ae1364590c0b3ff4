"""Running the CLI in-process and reading its outputs."""
import glob
import json
import os

import numpy as np

from tf_batch_predict.pipeline import cli


def write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(line + '\n' for line in lines))
  return path


def read_jsonl(pattern):
  records = []
  for path in sorted(glob.glob(pattern)):
    with open(path) as f:
      records.extend(json.loads(line) for line in f if line.strip())
  return records


def run_job(output, *args, status=0):
  """Runs batch-predict; returns (predictions, errors, summary). Tests of
  outputs accept any error fraction (exit status: tests/test_runs.py)."""
  if not any(a.startswith('--max_error_fraction') for a in args):
    args = (*args, '--max_error_fraction=1')
  rc = cli.main([f'--output={output}', *args])
  assert rc == status
  with open(os.path.join(output, 'summary.json')) as f:
    summary = json.load(f)
  return (read_jsonl(os.path.join(output, 'predictions-*-of-*.jsonl')),
          read_jsonl(os.path.join(output, 'errors-*-of-*.jsonl')), summary)


def assert_conserved(summary, predictions, errors):
  """Every instance read is in exactly one of predictions or errors; each
  file fault is one more error record."""
  file_errors = [e for e in errors if e['error']['category'] == 'file']
  assert summary['predictions'] == len(predictions)
  assert summary['errors'] == len(errors)
  assert summary['errors_by_category'].get('file', 0) == len(file_errors)
  assert summary['instances_read'] == len(predictions) + len(errors) - len(file_errors)


def check_keras_predictions(predictions, instances, model_path, signature_of):
  """Predictions of the Keras test model, keyed by `id`, are the model's own
  outputs for the same instances (called on all of them at once: other
  batches than the job's, so within the cross-batch bound)."""
  expected = signature_of(
      model_path, 'serve',
      features=np.array([x['features'] for x in instances], np.float32),
      bucket=np.array([x['bucket'] for x in instances], np.int64))
  by_id = {p['id']: p for p in predictions}
  assert sorted(by_id) == sorted(x['id'] for x in instances)
  for name in ('score', 'probs'):
    assert_close_across_batches([by_id[x['id']][name] for x in instances], expected[name],
                                err_msg=name)
  return by_id


# How far one row's float32 output may move between batch compositions, in
# ULPs of the largest magnitude of that output: see the docstring below.
CROSS_BATCH_ULPS = 16


def assert_close_across_batches(actual, expected, err_msg=''):
  """Model outputs of the same rows computed in different batches (another
  batch size or composition, fixed-batch padding, another run, runner or
  number of workers, or the model called directly on all rows at once) agree
  within CROSS_BATCH_ULPS float32 ULPs of the largest magnitude of that output
  over the rows compared. Bit-exact equality is for the same model call on
  the same rows only (`==`).

  Why a bound: oneDNN (and Eigen) choose kernels by CPU instruction set and
  by batch shape, so a dot product or reduction is blocked, summed in another
  order or fused (FMA) differently; TF Serving has the same property. Two
  orders of a length-K float32 dot product differ by at most about
  2K * 2**-24 * sum(|w_i x_i|). The test models' dot products are short
  (K <= 8) and their sum(|w_i x_i|) is within a small factor of the output's
  largest magnitude, hence a few ULPs of it at most. Seen here (AVX-512,
  ONEDNN_MAX_CPU_ISA=AVX2 or SSE41, TF_ENABLE_ONEDNN_OPTS=0): up to 1 ULP of
  the magnitude, e.g. 1 - sigmoid(x) = 0.2497 moving by 1 ULP of 1.0 (2 of
  its own), or y = 1.6845 (in an output reaching 13.4) by 2 ULPs of its own on
  a CPU without AVX-512; 16 leaves room for other CPUs and kernels. The bound
  is relative to the output's largest magnitude, not each value's: a value
  near zero after cancellation keeps the absolute error of its terms.

  Why it is tight enough: 16 ULPs is at most 1.9e-6 of the output's largest
  magnitude. Rounding to float16 moves a value by up to 2**-11 (4.9e-4) of
  itself, 250 times that: an output rounded to float16 fails unless every
  value of it happens to lie that close to a float16 number. A wrong row,
  model or version moves values by far more (tests/test_serving_models.py
  checks that the bound rejects float16 rounding and two swapped rows of a
  real model's outputs).

  actual, expected: arrays or (nested) lists of numbers, compared as arrays
  of the same shape; dicts by key; lists of records (dicts) field by field,
  each field's column with its own magnitude. Integers, strings, bytes and
  ragged values must be equal.
  """
  if isinstance(expected, dict):
    assert isinstance(actual, dict) and sorted(actual) == sorted(expected), (err_msg, actual)
    for name in expected:
      assert_close_across_batches(actual[name], expected[name], f'{err_msg} {name}'.strip())
    return
  if isinstance(expected, (list, tuple)) and expected and all(
      isinstance(e, dict) for e in expected):
    assert len(actual) == len(expected), err_msg
    for a, e in zip(actual, expected):
      assert isinstance(a, dict) and sorted(a) == sorted(e), (err_msg, a, e)
    for name in expected[0]:
      assert_close_across_batches([a[name] for a in actual], [e[name] for e in expected],
                                  f'{err_msg} {name}'.strip())
    return
  # Floats are written as the shortest text of their float32 (or float64)
  # value: read back as that type, as expected's type or float32.
  dtype = getattr(expected, 'dtype', None)
  dtype = dtype if dtype is not None and dtype.kind == 'f' else np.dtype(np.float32)
  want = _floats(expected, dtype)
  got = None if want is None else _floats(actual, dtype)
  if want is None or got is None or got.shape != want.shape:
    if isinstance(expected, np.ndarray) or isinstance(actual, np.ndarray):
      np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
    else:
      assert actual == expected, (err_msg, actual, expected)
    return
  finite = np.abs(want[np.isfinite(want)])
  scale = np.float32(finite.max() if finite.size else 0.0)
  atol = CROSS_BATCH_ULPS * float(np.spacing(scale))
  np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=err_msg)


def _floats(value, dtype):
  """value rounded to dtype, as float64, if it holds floats (and perhaps
  integers) of one shape; None for integers only, strings, bytes, None or
  ragged."""
  try:
    array = np.asarray(value)
  except ValueError:  # ragged
    return None
  if array.dtype.kind != 'f':
    return None
  return array.astype(dtype).astype(np.float64)
