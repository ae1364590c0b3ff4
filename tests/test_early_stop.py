"""A run that is clearly failing stops early, on every runner, and a run
with too many errors never replaces a good result."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import write_lines
from tf_batch_predict.pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def keras_lines(start, count, key='id'):
  return [json.dumps({key: f'i{i}', 'features': [i / 100, -i / 50, 1.0], 'bucket': i % 7})
          for i in range(start, start + count)]


def fingerprint(folder) -> dict:
  """Every file's name and content hash, subfolders included."""
  found = {}
  for base, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(base, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return found


def run(capsys, *args) -> tuple:
  rc = cli.main(list(args))
  captured = capsys.readouterr()
  return rc, [l for l in captured.err.splitlines() if l.startswith('batch-predict: error:')]


@pytest.fixture(scope='module')
def big_input(tmp_path_factory):
  """60,000 instances in two files: more than one chunk per worker."""
  folder = tmp_path_factory.mktemp('early')
  write_lines(str(folder / 'a.jsonl'), keras_lines(0, 30_000))
  write_lines(str(folder / 'b.jsonl'), keras_lines(30_000, 30_000))
  return folder


@pytest.mark.parametrize('mode', ['in_memory', 'multi_processing'])
def test_misspelt_key_stops_early_and_leaves_the_result(model_dir, big_input, tmp_path, capsys,
                                                        mode):
  out = tmp_path / 'out'
  common = [f'--model={model_dir / "keras"}', '--signature=serve', f'--output={out}',
            f'--input={big_input}/*.jsonl', f'--direct_running_mode={mode}',
            '--direct_num_workers=2']
  rc, lines = run(capsys, *common, '--key_field=id')
  assert rc == 0 and lines == []
  before = fingerprint(out)
  rc, lines = run(capsys, *common, '--key_field=ID')
  assert rc == cli.EXIT_TOO_MANY_ERRORS
  assert len(lines) == 1, lines
  assert lines[0].startswith('batch-predict: error: stopped early: the first ')
  assert lines[0].endswith(
      " instances a worker read all failed with the same schema error: missing key field "
      f"'ID' (did you mean 'id'?); nothing was written: the previous result in {out} is "
      "left as it was"), lines[0]
  count = int(lines[0].split('the first ')[1].split(' ')[0].replace(',', ''))
  assert 10_000 <= count < 60_000
  assert fingerprint(out) == before  # no staging folder left, nothing replaced


def test_a_burst_of_bad_lines_or_mixed_errors_never_stop_a_run(model_dir, tmp_path, capsys):
  """5,000 alike failures before the first prediction (fewer than
  --early_stop_after); 15,000 alike failures after it; 20,000 failures of
  two kinds from the start: the runs go on to the end."""
  folder = tmp_path / 'in'
  bad = [json.dumps({'features': [1.0, 2.0, 3.0], 'bucket': 1}) for _ in range(5_000)]
  write_lines(str(folder / 'a.jsonl'), bad + keras_lines(0, 3_000) + bad * 3)
  rc, lines = run(capsys, f'--model={model_dir / "keras"}', '--signature=serve',
                  f'--input={folder}/a.jsonl', f'--output={tmp_path / "out1"}',
                  '--key_field=id', '--max_error_fraction=1', '--early_stop_after=6000')
  assert rc == 0 and lines == []
  with open(tmp_path / 'out1' / 'summary.json') as f:
    summary = json.load(f)
  assert summary['predictions'] == 3_000 and summary['errors'] == 20_000
  # Two messages from the start (a missing key, a string for a number):
  mixed = [json.dumps({'features': [1.0, 2.0, 3.0], 'bucket': 1}) if i % 2 else
           json.dumps({'id': i, 'features': 'x', 'bucket': 1}) for i in range(20_000)]
  write_lines(str(folder / 'b.jsonl'), mixed)
  rc, lines = run(capsys, f'--model={model_dir / "keras"}', '--signature=serve',
                  f'--input={folder}/b.jsonl', f'--output={tmp_path / "out2"}',
                  '--key_field=id', '--early_stop_after=1000')
  assert rc == cli.EXIT_TOO_MANY_ERRORS and 'stopped early' not in lines[0]
  with open(tmp_path / 'out2' / 'summary.json') as f:
    assert json.load(f)['errors'] == 20_000


def test_too_many_errors_never_replace_a_good_result(model_dir, big_input, tmp_path, capsys):
  out = tmp_path / 'out'
  common = [f'--model={model_dir / "keras"}', '--signature=serve', f'--output={out}',
            f'--input={big_input}/a.jsonl']
  rc, _ = run(capsys, *common, '--key_field=id')
  assert rc == 0
  good = fingerprint(out)
  # Without the early stop, the misspelt key fails every instance: exit 3,
  # and the good result stays; the run's outputs are in OUT/failed-run.
  rc, lines = run(capsys, *common, '--key_field=ID', '--early_stop_after=0')
  assert rc == cli.EXIT_TOO_MANY_ERRORS
  assert lines == [f'batch-predict: error: no instance could be predicted: all 30000 failed; '
                   f'the previous result in {out} (complete, exit status 0) is kept; this '
                   f"run's outputs are in {out}/failed-run"]
  after = fingerprint(out)
  assert {k: v for k, v in after.items() if not k.startswith('failed-run/')} == good
  with open(out / 'failed-run' / 'summary.json') as f:
    failed = json.load(f)
  assert failed['exit_status'] == 3 and failed['errors'] == 30_000
  assert {k.split('/')[1].split('-')[0] for k in after if k.startswith('failed-run/')} == {
      'errors', 'predictions', 'summary.json', 'report.html'}
  # A failed result is replaced by the next failure as usual (nothing good
  # to keep), and a good run removes the outdated failed-run folder.
  os.remove(out / 'summary.json')
  rc, lines = run(capsys, *common, '--key_field=ID', '--early_stop_after=0')
  assert rc == cli.EXIT_TOO_MANY_ERRORS and lines[0].endswith(f'the outputs are in {out}')
  rc, _ = run(capsys, *common, '--key_field=ID', '--early_stop_after=0')
  assert rc == cli.EXIT_TOO_MANY_ERRORS  # the previous result had exit status 3: replaced
  rc, _ = run(capsys, *common, '--key_field=id')
  assert rc == 0 and not (out / 'failed-run').exists()


def test_early_stop_option_values(model_dir, big_input, tmp_path, capsys):
  rc, lines = run(capsys, f'--model={model_dir / "keras"}', f'--input={big_input}/a.jsonl',
                  f'--output={tmp_path / "out"}', '--early_stop_after=-1')
  assert rc == cli.EXIT_CONFIG_ERROR
  assert lines == ['batch-predict: error: --early_stop_after must be 0 (never) or more']


@pytest.mark.parametrize('script, engine', [
    ('flink.sh', ['--flink_master=[local]', '--parallelism=2']),
    ('spark.sh', ['--spark_master_url=local[2]'])])
def test_misspelt_key_stops_early_on_flink_and_spark(model_dir, big_input, tmp_path, script,
                                                     engine):
  from tests import engines
  with engines.worker_pool(tmp_path) as pool:
    process = subprocess.run(
        [os.path.join(ROOT, 'launch', script), f'--model={model_dir / "keras"}',
         '--signature=serve', f'--input={big_input}/*.jsonl', f'--output={tmp_path / "out"}',
         '--key_field=ID', *engine,
         '--environment_type=EXTERNAL', f'--environment_config={pool.config}',
         '--skip_preflight'],
        cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
        text=True, timeout=420, preexec_fn=engines.die_with_parent)
  lines = [l for l in process.stderr.splitlines() if l.startswith('batch-predict: error:')]
  assert process.returncode == cli.EXIT_TOO_MANY_ERRORS, process.stderr[-3000:]
  assert len(lines) == 1 and 'stopped early: the first ' in lines[0], lines
  assert "missing key field 'ID' (did you mean 'id'?); nothing was written" in lines[0]
  assert not (tmp_path / 'out' / 'summary.json').exists()


def test_the_early_stop_line_keeps_a_reason_that_ends_in_a_quote():
  """The line is found in what each runner reports: the message as raised,
  with Beam's suffix, quoted inside a Java exception's text; a reason that
  ends in a quote keeps it."""
  from tf_batch_predict.transforms.write.format import EARLY_STOP_MARK
  reason = "missing input field 'pixels'"
  raised = (f'{EARLY_STOP_MARK} the first 16,384 instances a worker read all failed with the '
            f'same schema error: {reason}.')
  expected = ('stopped early: the first 16,384 instances a worker read all failed with the '
              f'same schema error: {reason}')
  for text in [raised, f"{raised} [while running 'Format/FormatRecords']",
               f"java.lang.RuntimeException: Error received from SDK harness: 'EarlyStop: {raised}'",
               f'RuntimeError: "{raised}"]\\n']:
    assert cli.early_stop(RuntimeError(text)) == expected, text
    # Also where the runner's exception wraps it.
    try:
      try:
        raise ValueError(text)
      except ValueError as inner:
        raise RuntimeError('the pipeline failed') from inner
    except RuntimeError as outer:
      assert cli.early_stop(outer) == expected
  assert cli.early_stop(RuntimeError('another failure')) == ''
