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
  """Predictions of the Keras test model, keyed by `id`, equal the model's
  own outputs for the same instances."""
  expected = signature_of(
      model_path, 'serve',
      features=np.array([x['features'] for x in instances], np.float32),
      bucket=np.array([x['bucket'] for x in instances], np.int64))
  by_id = {p['id']: p for p in predictions}
  assert sorted(by_id) == sorted(x['id'] for x in instances)
  for i, x in enumerate(instances):
    np.testing.assert_allclose(by_id[x['id']]['score'], expected['score'][i], rtol=1e-5)
    np.testing.assert_allclose(by_id[x['id']]['probs'], expected['probs'][i], rtol=1e-5)
  return by_id
