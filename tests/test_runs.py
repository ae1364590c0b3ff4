"""Runs and re-runs into one output directory: staging and promotion, the
lock, runs killed at any moment, exit statuses. Real pipelines on the local
runner, real files, real SavedModels, real processes killed with SIGKILL."""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tf_batch_predict.pipeline import cli, outputs
from tests import cloud
from tests.helpers import assert_conserved, read_jsonl, write_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_NAME = re.compile(r'((predictions|errors)-(\d{5})-of-(\d{5})\.jsonl|summary\.json'
                         r'|report\.html)')  # report.html: pipeline/report.py
# TensorFlow's C++ start-up lines, written to stderr before any of ours.
TF_CHATTER = re.compile(r'^(WARNING: All log messages before absl|[IWEF]\d{4} )')


def keras_lines(prefix, count, bad_every=0):
  """Instances of the Keras test model keyed `id`; every `bad_every`-th one
  has a wrong shape (a `schema` error that still carries its key)."""
  return [json.dumps({'id': f'{prefix}{i}', 'features': [i % 7 / 7, 1.0] if (
      bad_every and i % bad_every == 0) else [i % 7 / 7, 1.0, -0.5], 'bucket': i % 5})
          for i in range(count)]


def keras_args(model_dir, pattern, *extra):
  return [f'--model={model_dir / "keras"}', '--signature=serve', f'--input={pattern}',
          '--key_field=id', *extra]


def snapshot(out) -> dict:
  """What a reader of OUT/* sees: name -> content."""
  files = {}
  for path in glob.glob(os.path.join(out, '*')):
    with open(path, 'rb') as f:
      files[os.path.basename(path)] = f.read()
  return files


def check_result(out):
  """The invariants of the output directory at any moment: a reader of OUT/*
  sees only result files; with summary.json, the shards beside it are exactly
  one run's complete set, every key once. Returns the keys, or None when
  there is no complete result (no summary.json)."""
  names = [os.path.basename(p) for p in glob.glob(os.path.join(out, '*'))]
  assert all(RESULT_NAME.fullmatch(n) for n in names), names
  if 'summary.json' not in names:
    return None
  for kind in ('predictions', 'errors'):
    shards = [RESULT_NAME.fullmatch(n).groups()[2:] for n in names if n.startswith(kind)]
    assert shards, names
    counts = {int(total) for _, total in shards}
    assert len(counts) == 1 and sorted(int(s) for s, _ in shards) == list(range(counts.pop()))
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  predictions = read_jsonl(os.path.join(out, 'predictions-*-of-*.jsonl'))
  errors = read_jsonl(os.path.join(out, 'errors-*-of-*.jsonl'))
  assert_conserved(summary, predictions, errors)
  keys = [r['id'] for r in predictions + errors]
  assert len(keys) == len(set(keys))
  assert summary['exit_status'] == 0 and summary['output'] == str(out)
  return set(keys)


def leftovers(out) -> list:
  found = []
  for root, dirs, files in os.walk(out):
    found += [os.path.join(root, n) for n in dirs + files
              if n.startswith(('.staging-', 'beam-temp-', '.lock'))]
  return found


def start_cli(args, log_path):
  """The real command in its own process group."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  with open(log_path, 'wb') as log:
    return subprocess.Popen([sys.executable, '-m', 'tf_batch_predict.pipeline', *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, process, seconds=60.0):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if condition():
      return True
    if process.poll() is not None:
      return False
    time.sleep(0.005)
  raise AssertionError(f'condition not met in {seconds} s')


def kill(process):
  os.killpg(process.pid, signal.SIGKILL)
  process.wait(30)  # reaped: its pid is no longer alive


def staged_files(out, pattern):
  return glob.glob(os.path.join(out, '.staging-*', pattern))


def python_lines(stderr: str) -> list:
  return [l for l in stderr.splitlines() if l.strip() and not TF_CHATTER.match(l)]


@pytest.fixture(scope='module')
def big_input(tmp_path_factory):
  """48,000 instances in 4 files (1% schema errors): seconds of work."""
  d = tmp_path_factory.mktemp('big')
  for f in range(4):
    write_lines(str(d / f'{f}.jsonl'), keras_lines(f'f{f}-', 12_000, bad_every=100))
  return d


def test_killed_runs_never_destroy_the_previous_result(model_dir, big_input, tmp_path, capsys):
  """SIGKILL while holding the lock, while shards are being written, while
  promoting; a run started meanwhile is refused; the re-run leaves exactly
  one complete result."""
  out = tmp_path / 'out'
  args = keras_args(model_dir, big_input / '*.jsonl', f'--output={out}', '--max_batch_size=64')
  assert cli.main([*keras_args(model_dir, big_input / '0.jsonl'), f'--output={out}']) == 0
  capsys.readouterr()
  baseline = snapshot(out)
  assert len(check_result(out)) == 12_000 and not leftovers(out)

  # 1. Killed as soon as it holds the lock: nothing else was touched.
  run = start_cli(args, tmp_path / 'run1.log')
  assert wait_for(lambda: (out / '.lock').exists(), run)
  kill(run)
  assert snapshot(out) == baseline

  # 2. Killed while writing shards; meanwhile a second run is refused.
  run = start_cli(args, tmp_path / 'run2.log')
  assert wait_for(lambda: lock_holder(out).get('pid') == run.pid, run)
  assert cli.main([*keras_args(model_dir, big_input / '0.jsonl'), f'--output={out}']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'batch-predict: error: --output: {out} is in use by another run '
                        f'(pid {run.pid} on host {socket.gethostname()}, started 20')
  assert len(err.splitlines()) == 1
  assert wait_for(lambda: staged_files(out, 'units/*'), run)
  kill(run)
  assert snapshot(out) == baseline
  assert leftovers(out)  # a stale lock and a staging folder with partial shards

  # 3. Killed while (or right after) the staged result is promoted: either
  #    result may be there, complete, or none (no summary.json); never a mix.
  run = start_cli(args, tmp_path / 'run3.log')
  summary = (out / 'summary.json').read_bytes()
  wait_for(lambda: staged_files(out, 'predictions-*') or read_or_none(out / 'summary.json')
           != summary, run)
  kill(run)
  everything = {json.loads(line)['id'] for f in range(4)
                for line in (big_input / f'{f}.jsonl').read_text().splitlines()}
  assert check_result(out) in (None, everything, keys_of(baseline))

  # The re-run takes the dead run's lock over and clears its leftovers.
  assert cli.main(args) == 0
  assert check_result(out) == everything
  assert json.loads((out / 'summary.json').read_text())['errors'] == 480
  assert leftovers(out) == []


def read_or_none(path):
  try:
    return path.read_bytes()
  except FileNotFoundError:
    return None


def lock_holder(out) -> dict:
  try:
    return json.loads((out / '.lock').read_text())
  except (FileNotFoundError, ValueError):
    return {}


def keys_of(files: dict) -> set:
  return {json.loads(line)['id'] for name, content in files.items()
          if name not in ('summary.json', 'report.html')
          for line in content.decode().splitlines() if line.strip()}


def test_rerun_after_a_kill_during_promotion(model_dir, tmp_path):
  """The state a kill leaves half-way through promotion (old summary and
  some old shards deleted, some new shards moved, the staging folder and a
  dead run's lock left): no summary.json, so no complete result is claimed,
  and the next run replaces every shard."""
  # Over 256 KiB each: a work unit, and so a shard, each (not one group).
  write_lines(str(tmp_path / 'in' / 'a.jsonl'), keras_lines('a', 4000))
  write_lines(str(tmp_path / 'in' / 'b.jsonl'), keras_lines('b', 3500))
  out, other = tmp_path / 'out', tmp_path / 'other'
  many_shards = ['--direct_running_mode=multi_threading', '--direct_num_workers=2',
                 '--min_batch_size=1', '--max_batch_size=8']
  assert cli.main([*keras_args(model_dir, tmp_path / 'in' / '*.jsonl'), f'--output={out}',
                   *many_shards]) == 0
  assert cli.main([*keras_args(model_dir, tmp_path / 'in' / 'b.jsonl'),
                   f'--output={other}']) == 0
  old = sorted(glob.glob(str(out / 'predictions-*')))
  assert len(old) >= 2
  staging = out / '.staging-20260101T000000Z-dead0001'
  shutil.move(str(other), str(staging))
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  (out / '.lock').write_text(json.dumps({
      'run_id': 'dead0001', 'pid': int(dead), 'host': socket.gethostname(),
      'started': '2026-01-01T00:00:00Z', 'heartbeat': '2026-01-01T00:00:00Z'}))
  os.remove(out / 'summary.json')
  os.remove(old[0])
  os.rename(staging / 'predictions-00000-of-00001.jsonl',
            out / 'predictions-00000-of-00001.jsonl')
  assert check_result(out) is None
  assert cli.main([*keras_args(model_dir, tmp_path / 'in' / '*.jsonl'),
                   f'--output={out}']) == 0
  assert len(check_result(out)) == 7500 and leftovers(out) == []


def test_leftovers_of_killed_runs_are_removed(model_dir, tmp_path):
  """Staging folders and beam-temp-* folders (Beam's local match lists files
  only, so a `beam-temp-*` pattern never matched these folders) are removed
  by the next run; until then OUT/* shows no partial file."""
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 50))
  out = tmp_path / 'out'
  partial = ['.staging-20260101T000000Z-0000dead/beam-temp-predictions-x/1.predictions.jsonl',
             '.staging-20260101T000000Z-0000dead/errors-00000-of-00001.jsonl',
             'beam-temp-predictions-0123/2.predictions.jsonl']
  for name in partial:
    write_lines(str(out / name), ['{"id": "partial"}'])
  (out / '.staging-20260101T000000Z-0000empty').mkdir()
  (out / '.lock.0123abcd').write_text('{"run_id": "killed while renewing its lock"}')
  assert [os.path.basename(p) for p in glob.glob(str(out / '*'))] == [
      'beam-temp-predictions-0123']  # a folder of an older version: no result file
  assert cli.main([*keras_args(model_dir, tmp_path / 'in.jsonl'), f'--output={out}']) == 0
  assert len(check_result(out)) == 50 and leftovers(out) == []


def test_two_runs_at_once_second_stops_naming_the_first(model_dir, big_input, tmp_path):
  """The real command, twice: the second exits 2 at once, in one line,
  without importing TensorFlow (well under the first's start-up)."""
  out = tmp_path / 'out'
  # The lock is taken once the model is checked, just before the pipeline
  # starts: a first run of one call per instance still holds it when the
  # second starts.
  first = start_cli(keras_args(model_dir, big_input / '*.jsonl', f'--output={out}',
                               '--max_batch_size=1'), tmp_path / 'first.log')
  try:
    assert wait_for(lambda: (out / '.lock').exists(), first)
    started = time.time()
    second = subprocess.run(
        [sys.executable, '-m', 'tf_batch_predict.pipeline', *keras_args(model_dir, big_input / '1.jsonl'),
         f'--output={out}'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True, text=True)
    assert second.returncode == 2 and time.time() - started < 20
    lines = python_lines(second.stderr)
    assert len(lines) == 1 and 'Traceback' not in second.stderr
    assert f'is in use by another run (pid {first.pid} on host ' in lines[0]
  finally:
    kill(first)


# The lock ---------------------------------------------------------------------

def dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def lock_content(**fields):
  content = {'run_id': 'other', 'pid': 1, 'host': socket.gethostname(),
             'started': '2026-01-01T00:00:00Z', 'heartbeat': outputs._now()}
  content.update(fields)
  return json.dumps(content)


def test_lock_is_exclusive_renewed_and_released(tmp_path):
  first = outputs.OutputLock(str(tmp_path), 'run-1', heartbeat_s=0.05)
  first.acquire()
  try:
    held = json.loads((tmp_path / '.lock').read_text())
    assert (held['run_id'], held['pid'], held['host']) == ('run-1', os.getpid(),
                                                            socket.gethostname())
    with pytest.raises(outputs.OutputInUse, match=rf'pid {os.getpid()} on host '):
      outputs.OutputLock(str(tmp_path), 'run-2').acquire()
    inode = os.stat(tmp_path / '.lock').st_ino
    deadline = time.time() + 10
    while os.stat(tmp_path / '.lock').st_ino == inode:  # rewritten by the heartbeat
      assert time.time() < deadline
      time.sleep(0.02)
    assert json.loads((tmp_path / '.lock').read_text())['run_id'] == 'run-1'
  finally:
    first.release()
  assert not (tmp_path / '.lock').exists()
  with outputs.OutputLock(str(tmp_path), 'run-2'):
    assert json.loads((tmp_path / '.lock').read_text())['run_id'] == 'run-2'
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('fields, age_s, stale', [
    ({'pid': 'dead'}, 0, True),  # its process on this host is gone
    ({}, 0, False),  # pid 1 on this host is alive
    ({'host': 'elsewhere'}, 0, False),
    ({'host': 'elsewhere', 'heartbeat': '2026-01-01T00:00:00Z'}, 0, True),
    (None, 0, False),  # empty: being written
    (None, 3600, True),  # empty for an hour
])
def test_stale_locks_are_taken_over(tmp_path, fields, age_s, stale):
  if fields and fields.get('pid') == 'dead':
    fields['pid'] = dead_pid()
  content = '' if fields is None else lock_content(**fields)
  (tmp_path / '.lock').write_text(content)
  past = time.time() - age_s
  os.utime(tmp_path / '.lock', (past, past))
  lock = outputs.OutputLock(str(tmp_path), 'mine')
  if stale:
    with lock:
      assert json.loads((tmp_path / '.lock').read_text())['run_id'] == 'mine'
  else:
    with pytest.raises(outputs.OutputInUse, match='is in use by another run'):
      lock.acquire()
    assert (tmp_path / '.lock').read_text() == content


def test_a_lock_taken_over_is_left_to_its_new_holder(tmp_path):
  lock = outputs.OutputLock(str(tmp_path), 'slow', heartbeat_s=0.05)
  lock.acquire()
  (tmp_path / '.lock').write_text(lock_content(run_id='new-holder'))
  time.sleep(0.3)
  lock.release()
  assert json.loads((tmp_path / '.lock').read_text())['run_id'] == 'new-holder'


# Exit status --------------------------------------------------------------------

def run_cli(capsys, *args):
  rc = cli.main(list(args))
  captured = capsys.readouterr()
  return rc, captured.out, captured.err.strip()


def test_error_fraction_decides_exit_status(model_dir, tmp_path, capsys):
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 40, bad_every=5))  # 8 of 40 bad
  out = tmp_path / 'out'
  base = keras_args(model_dir, tmp_path / 'in.jsonl', f'--output={out}')
  rc, printed, err = run_cli(capsys, *base)
  assert rc == cli.EXIT_TOO_MANY_ERRORS == 3
  assert err == ('batch-predict: error: 8 of 40 instances failed (20.0%), more than '
                 f'--max_error_fraction=0.1; the outputs are in {out}')
  summary = json.loads((out / 'summary.json').read_text())  # written and promoted all the same
  assert (summary['exit_status'], summary['predictions'], summary['errors']) == (3, 32, 8)
  assert summary['exit_reason'] in err and re.search(r'exit status +3 \(8 of 40', printed)
  assert len(read_jsonl(str(out / 'errors-*'))) == 8 and leftovers(out) == []

  rc, _, err = run_cli(capsys, *base, '--max_error_fraction=0.2')
  assert (rc, err) == (0, '')
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['exit_status'] == 0 and summary['files_incomplete'] == 0
  assert summary['errors_by_category'] == {'parse': 0, 'schema': 8, 'model': 0, 'file': 0}


def test_no_prediction_at_all_is_never_success(model_dir, tmp_path, capsys):
  write_lines(str(tmp_path / 'bad.jsonl'), keras_lines('k', 5, bad_every=1))
  write_lines(str(tmp_path / 'empty.jsonl'), [''])
  rc, _, err = run_cli(capsys, *keras_args(model_dir, tmp_path / 'bad.jsonl'),
                       f'--output={tmp_path / "a"}', '--max_error_fraction=1')
  assert rc == 3 and 'no instance could be predicted: all 5 failed' in err
  rc, _, err = run_cli(capsys, *keras_args(model_dir, tmp_path / 'empty.jsonl'),
                       f'--output={tmp_path / "b"}')
  assert rc == 3 and 'no instance was read' in err
  assert json.loads((tmp_path / 'b' / 'summary.json').read_text())['exit_status'] == 3


def test_incomplete_input_files_exit_4(model_dir, tmp_path, capsys):
  """A TFRecord file cut inside a record's framing: the records before it
  are scored, the file is one `file` error, exit status 4, and the result is
  promoted all the same. A file fault is not an instance: it does not count
  against --max_error_fraction."""
  import tensorflow as tf
  from tf_batch_predict.transforms.write.shards import tfrecord_frame
  example = tf.train.Example(features=tf.train.Features(feature={
      'x': tf.train.Feature(float_list=tf.train.FloatList(value=[1.0, 2.0]))}))
  (tmp_path / 'in.tfrecord').write_bytes(
      tfrecord_frame(example.SerializeToString()) * 30 + b'\x05\x00')
  out = tmp_path / 'out'
  rc, printed, err = run_cli(capsys, f'--model={model_dir / "ragged"}',
                             f'--input={tmp_path / "in.tfrecord"}', f'--output={out}',
                             '--max_error_fraction=0')
  assert rc == cli.EXIT_INPUT_INCOMPLETE == 4
  assert err == ('batch-predict: error: 1 input file(s) could not be read completely; see '
                 f'the file errors; the outputs are in {out}')
  summary = json.loads((out / 'summary.json').read_text())
  assert (summary['exit_status'], summary['files_incomplete'], summary['predictions']) == (
      4, 1, 30)
  assert summary['errors_by_category']['file'] == 1
  assert re.search(r'files incomplete +1', printed)
  assert cli.exit_status({**summary, 'files_incomplete': 0}, 0.0) == (
      0, 'completed; 0 of 30 instances failed')


def test_a_failing_pipeline_exits_1_and_keeps_the_previous_result(model_dir, tmp_path, capsys,
                                                                  monkeypatch):
  """A model whose variables are gone fails in the workers: one line, no
  traceback (unless BATCH_PREDICT_DEBUG=1), the previous result intact."""
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 20))
  out = tmp_path / 'out'
  assert cli.main([*keras_args(model_dir, tmp_path / 'in.jsonl'), f'--output={out}']) == 0
  before = snapshot(out)
  broken = tmp_path / 'broken'
  shutil.copytree(model_dir / 'keras', broken)
  for path in glob.glob(str(broken / 'variables' / 'variables.data-*')):
    os.remove(path)
  # Past the launcher's model check (which would stop it with exit 2), so
  # that the workers fail.
  args = [sys.executable, '-m', 'tf_batch_predict.pipeline', f'--model={broken}', '--signature=serve',
          f'--input={tmp_path / "in.jsonl"}', '--key_field=id', f'--output={out}',
          '--skip_model_check']
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('BATCH_PREDICT_DEBUG', None)
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
  lines = python_lines(proc.stderr)  # the job's own warnings may come first
  assert proc.returncode == cli.EXIT_PIPELINE_FAILED == 1
  assert 'Traceback' not in proc.stderr and 'ERROR' not in proc.stderr, proc.stderr
  assert [l for l in lines if l.startswith('batch-predict:')] == lines[-1:]
  assert lines[-1].startswith('batch-predict: error: the pipeline failed: ')
  assert 'variables.data-00000-of-00001; No such file or directory' in lines[-1]
  assert snapshot(out) == before and leftovers(out) == []
  monkeypatch.setenv('BATCH_PREDICT_DEBUG', '1')
  assert cli.main(args[3:]) == 1
  assert 'Traceback (most recent call last)' in capsys.readouterr().err
  assert snapshot(out) == before and leftovers(out) == []


# Configuration ---------------------------------------------------------------------

def test_unknown_runner_is_one_line_before_anything_starts(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-c', 'import sys; from tf_batch_predict.pipeline.cli import main; '
       f'rc = main(["--model=m", "--input=i", "--output={tmp_path / "out"}", '
       '"--runner=NoSuchRunner"]); print("tensorflow" in sys.modules); sys.exit(rc)'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stdout.strip() == 'False'
  assert proc.stderr.strip().startswith(
      "batch-predict: error: --runner: unknown runner 'NoSuchRunner'; known runners: ")
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'out').exists()


def test_unwritable_output_is_one_line(model_dir, tmp_path, capsys):
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 3))
  (tmp_path / 'a-file').write_text('x')
  base = keras_args(model_dir, tmp_path / 'in.jsonl')
  rc, _, err = run_cli(capsys, *base, f'--output={tmp_path / "a-file" / "out"}')
  assert rc == 2 and err == (f'batch-predict: error: --output: cannot create '
                             f'{tmp_path / "a-file" / "out"}: Not a directory')
  locked = tmp_path / 'read-only'
  locked.mkdir()
  locked.chmod(0o555)
  try:
    if not os.access(locked, os.W_OK):  # as root, permissions do not stop writes
      rc, _, err = run_cli(capsys, *base, f'--output={locked}')
      assert (rc, err) == (2, f'batch-predict: error: --output: cannot write to {locked}: '
                              'permission denied')
  finally:
    locked.chmod(0o755)


def test_max_error_fraction_out_of_range(model_dir, tmp_path, capsys):
  rc, _, err = run_cli(capsys, f'--model={model_dir / "ragged"}', f'--input={tmp_path}/x',
                       f'--output={tmp_path / "out"}', '--max_error_fraction=1.5')
  assert rc == 2 and err == ('batch-predict: error: --max_error_fraction: 1.5 is not '
                             'between 0 and 1')


# Buckets -------------------------------------------------------------------------

BUCKET = 'batch-predict-runs'


@pytest.fixture(scope='module')
def bucket():
  with cloud.emulated_bucket(BUCKET) as created:
    yield created


def test_bucket_output_is_staged_promoted_and_locked(bucket, model_dir, tmp_path, capsys):
  """gs:// the same way: leftovers of killed runs and shards of an earlier
  run with another shard count go, no staging object is left, and a lock
  held by a live run on another host stops the next run."""
  for name in ('out/.staging-20260101T000000Z-0000dead/beam-temp-predictions-1/part',
               'out/.staging-20260101T000000Z-0000dead/predictions-00000-of-00001.jsonl',
               'out/beam-temp-errors-2/part', 'out/predictions-00002-of-00003.jsonl',
               'out/summary.json'):
    bucket.blob(name).upload_from_string('{"id": "stale"}\n')
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('g', 30))
  args = [*keras_args(model_dir, tmp_path / 'in.jsonl'), f'--output=gs://{BUCKET}/out']
  assert cli.main(args) == 0
  names = sorted(b.name for b in bucket.client.list_blobs(bucket, prefix='out/'))
  assert names == ['out/.units.json', 'out/errors-00000-of-00001.jsonl',
                   'out/predictions-00000-of-00001.jsonl', 'out/report.html', 'out/summary.json']
  summary = json.loads(bucket.blob('out/summary.json').download_as_text())
  assert summary['predictions'] == 30 and summary['output'] == f'gs://{BUCKET}/out'
  capsys.readouterr()

  bucket.blob('out/.lock').upload_from_string(lock_content(host='elsewhere', pid=77))
  assert cli.main(args) == 2
  assert (f'--output: gs://{BUCKET}/out is in use by another run (pid 77 on host elsewhere'
          in capsys.readouterr().err)
  bucket.blob('out/.lock').upload_from_string(
      lock_content(host='elsewhere', heartbeat='2026-01-01T00:00:00Z'))
  assert cli.main(args) == 0  # a lock without heartbeat for long: taken over
  assert not bucket.blob('out/.lock').exists()


def test_bucket_lock_is_exclusive(bucket):
  """On real Cloud Storage creation is conditional (if_generation_match=0);
  the emulator ignores that condition, so this checks the existence test
  and read-back around it."""
  first = outputs.OutputLock(f'gs://{BUCKET}/locked', 'one', heartbeat_s=0.05)
  with first:
    with pytest.raises(outputs.OutputInUse, match=f'pid {os.getpid()} on host'):
      outputs.OutputLock(f'gs://{BUCKET}/locked', 'two').acquire()
    generation = bucket.get_blob('locked/.lock').generation
    deadline = time.time() + 10
    while bucket.get_blob('locked/.lock').generation == generation:  # the heartbeat
      assert time.time() < deadline
      time.sleep(0.02)
    assert json.loads(bucket.blob('locked/.lock').download_as_text())['run_id'] == 'one'
  assert not bucket.blob('locked/.lock').exists()
