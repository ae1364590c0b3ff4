"""Running the CLI in-process and reading its outputs."""
import glob
import json
import os

from pipeline import cli


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


def run_job(output, *args):
  """Runs batch-predict; returns (predictions, errors, summary)."""
  rc = cli.main([f'--output={output}', *args])
  assert rc == 0
  with open(os.path.join(output, 'summary.json')) as f:
    summary = json.load(f)
  return (read_jsonl(os.path.join(output, 'predictions-*-of-*.jsonl')),
          read_jsonl(os.path.join(output, 'errors-*-of-*.jsonl')), summary)


def assert_conserved(summary, predictions, errors):
  """Every instance read is in exactly one of predictions or errors."""
  assert summary['predictions'] == len(predictions)
  assert summary['errors'] == len(errors)
  assert summary['instances_read'] == len(predictions) + len(errors)
