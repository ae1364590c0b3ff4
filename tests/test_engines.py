"""The job on real distributed engines: Flink (a cluster inside Beam's job
server, and a standalone JobManager and TaskManager) and Spark (local[2], and
a standalone master and worker), started through launch/flink.sh and
launch/spark.sh with Python workers from a worker pool. Every input format
at once, byte ranges split over two workers; then workers and task managers
killed part-way: a complete exact result (Flink restarts the job) or a
failed run that leaves the previous result in place (Spark), never
duplicates, never a hang."""
import glob
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import cloud, engines
from tests.helpers import assert_close_across_batches, assert_conserved, read_jsonl, write_lines
from tests.test_formats import example_bytes, write_tfrecords

ROOT = engines.ROOT
RUN_SECONDS = 420  # any run past this is a hang
BIG_LINES = 150_000  # about 9 MB: 3 byte ranges of 4 MiB at parallelism 2


def instance(i, prefix):
  rng = np.random.default_rng(i)
  return {'id': f'{prefix}{i}', 'features': rng.uniform(-1, 1, 3).round(4).tolist(),
          'bucket': int(i % 9)}


@pytest.fixture(scope='module')
def mixed_input(tmp_path_factory):
  """JSON Lines big enough for several byte ranges, 30 small files, gzip,
  TFRecord and Parquet, with bad records in three formats. Returns
  (--input patterns, good instances by id, ids of the bad records)."""
  d = tmp_path_factory.mktemp('mixed')
  good, bad = [], []
  lines = []
  for i in range(BIG_LINES):
    if i in (777, 75_001):
      lines.append('{"id": "broken%d", "features": [1, 2' % i)  # invalid JSON: no key
      bad.append(None)
      continue
    x = instance(i, 'big')
    good.append(x)
    lines.append(json.dumps(x))
  lines.append(json.dumps({'id': 'wrongtype', 'features': 'abc', 'bucket': 1}))
  bad.append('wrongtype')
  write_lines(str(d / 'big.jsonl'), lines)
  for f in range(30):
    xs = [instance(f * 10 + i, 'small') for i in range(10)]
    good += xs
    write_lines(str(d / 'small' / f'{f:02d}.jsonl'), [json.dumps(x) for x in xs])
  xs = [instance(i, 'gz') for i in range(500)]
  good += xs
  with gzip.open(d / 'packed.jsonl.gz', 'wt') as f:
    f.write(''.join(json.dumps(x) + '\n' for x in xs))
  xs = [instance(i, 'tfr') for i in range(300)]
  good += xs
  records = [example_bytes({'id': x['id'], 'features': x['features'], 'bucket': x['bucket']})
             for x in xs]
  records.append(b'not an Example')
  bad.append(None)
  write_tfrecords(str(d / 'examples.tfrecord'), records)
  xs = [instance(i, 'pq') for i in range(300)]
  good += xs
  pq.write_table(pa.table({'id': [x['id'] for x in xs],
                           'features': pa.array([x['features'] for x in xs],
                                                pa.list_(pa.float32())),
                           'bucket': pa.array([x['bucket'] for x in xs], pa.int64())}),
                 d / 'table.parquet', row_group_size=50)
  patterns = ','.join(str(d / p) for p in ('big.jsonl', 'small/*.jsonl', 'packed.jsonl.gz',
                                          'examples.tfrecord', 'table.parquet'))
  return patterns, {x['id']: x for x in good}, len(bad)


@pytest.fixture(scope='module')
def expected(model_dir, mixed_input, signature_of):
  """The model called directly on every good instance, by id."""
  _, good, _ = mixed_input
  ids = sorted(good)
  out = signature_of(model_dir / 'keras', 'serve',
                     features=np.array([good[i]['features'] for i in ids], np.float32),
                     bucket=np.array([good[i]['bucket'] for i in ids], np.int64))
  return ids, out


def launch(script, output, model_dir, patterns, pool, *extra, wait=True):
  cmd = [os.path.join(ROOT, 'launch', script), f'--model={model_dir / "keras"}',
         '--signature=serve', f'--input={patterns}', f'--output={output}', '--key_field=id',
         '--max_error_fraction=0.01', '--environment_type=EXTERNAL',
         f'--environment_config={pool.config}', '--skip_preflight', *extra]
  env = dict(os.environ, PYTHON=sys.executable)
  process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=engines.die_with_parent)
  if not wait:
    return process
  return finish(process)


def finish(process):
  """(exit status, stderr); a run past RUN_SECONDS is a hang: killed, failed."""
  try:
    _, err = process.communicate(timeout=RUN_SECONDS)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    pytest.fail(f'the run did not end within {RUN_SECONDS} s')
  return process.returncode, err


def check_complete(output, mixed_input, expected, bad_count):
  """Every instance exactly once, values as the model's, counts as written."""
  _, good, _ = mixed_input
  predictions = read_jsonl(os.path.join(output, 'predictions-*-of-*.jsonl'))
  errors = read_jsonl(os.path.join(output, 'errors-*-of-*.jsonl'))
  with open(os.path.join(output, 'summary.json')) as f:
    summary = json.load(f)
  assert_conserved(summary, predictions, errors)
  ids = [p['id'] for p in predictions]
  assert len(ids) == len(set(ids)), 'duplicate predictions'
  assert sorted(ids) == expected[0]
  assert len(errors) == bad_count
  by_id = {p['id']: p for p in predictions}
  for name in ('score', 'probs'):
    assert_close_across_batches([by_id[i][name] for i in expected[0]], expected[1][name],
                                err_msg=name)
  return summary


def snapshot(output):
  """Every file of a result folder and a digest of its bytes (not the
  staging folder a stopped run keeps for --resume)."""
  found = {}
  for name in sorted(os.listdir(output)):
    if os.path.isdir(os.path.join(output, name)):
      continue
    with open(os.path.join(output, name), 'rb') as f:
      found[name] = hashlib.sha256(f.read()).hexdigest()
  return found


def check_outcome(rc, err, output, before, mixed_input, expected, bad_count):
  """After a fault: a complete exact result, or a failure in one line that
  left the previous result as it was."""
  if rc == 0:
    return check_complete(output, mixed_input, expected, bad_count)
  last = err.strip().splitlines()[-1]
  assert 'Traceback' not in err.split('\n')[-3:], err[-3000:]
  assert last.startswith('batch-predict: ') and len(last) < 600, err[-3000:]
  assert snapshot(output) == before
  return None


def kill_a_scoring_worker(pool, stop, killed):
  """Kills (SIGKILL) the first SDK worker that has imported TensorFlow (a
  worker that scores), 2 s after it appears."""
  deadline = time.time() + RUN_SECONDS
  while not stop.is_set() and time.time() < deadline:
    for pid in pool.worker_pids():
      if rss_mb(pid) > 300:
        time.sleep(2)
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          continue
        killed.append(pid)
        return
    time.sleep(0.2)


def rss_mb(pid):
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0


ENGINES = {
    'flink': ('flink.sh', ['--flink_master=[local]', '--parallelism=2']),
    'spark': ('spark.sh', ['--spark_master_url=local[2]']),
}


# Not marked cross_batch (run again under AVX2 by `make test`): these runs
# take minutes, and the bound they share is proven under AVX2 by the others.
@pytest.mark.parametrize('engine', sorted(ENGINES))
def test_every_format_on_two_workers_then_a_worker_killed(
    engine, model_dir, mixed_input, expected, tmp_path):
  script, options = ENGINES[engine]
  patterns, _, bad_count = mixed_input
  output = tmp_path / 'out'
  with engines.worker_pool(tmp_path) as pool:
    rc, err = launch(script, output, model_dir, patterns, pool, *options)
    assert rc == 0, err[-3000:]
    summary = check_complete(output, mixed_input, expected, bad_count)
    assert summary['runner'] == ('FlinkRunner' if engine == 'flink' else 'SparkRunner')
    # The model is loaded once per Python worker process that scores, not
    # per bundle: at most once per worker the pool started (Flink: 2 for its
    # 2 slots; Spark starts workers per stage), far fewer than the batches.
    assert 1 <= summary['model_loads'] <= pool.workers_started()
    if engine == 'flink':
      assert summary['model_loads'] <= 2
    assert summary['batches']['count'] >= 10 * summary['model_loads']
    before = snapshot(output)

    # The same job again into the same folder; one scoring worker killed.
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_scoring_worker, args=(pool, stop, killed))
    killer.start()
    try:
      rc, err = launch(script, output, model_dir, patterns, pool, *options)
    finally:
      stop.set()
      killer.join(10)
  assert killed, 'no scoring worker was seen to kill'
  if engine == 'flink':
    # launch/flink.sh's Flink configuration for [local] restarts the job:
    # the result is complete, every instance once, counted once.
    assert rc == 0, err[-3000:]
  check_outcome(rc, err, output, before, mixed_input, expected, bad_count)
  last = err.strip().splitlines()[-1]
  if 'Waited 3 minutes' in last:  # Beam's wait for the dead worker: said in words
    assert last.startswith('batch-predict: error: the pipeline failed: a Python worker never '
                           'opened its data connection'), last
  print(f'{engine}, a worker killed: exit {rc}: {last}')


def committed_units(output) -> int:
  return sum(1 for name in glob.glob(os.path.join(output, '.staging-*', 'units', '*.json')))


@pytest.mark.parametrize('engine', sorted(ENGINES))
def test_a_run_killed_part_way_is_resumed(engine, model_dir, mixed_input, expected, tmp_path):
  """The launcher's process group (the job server, and Flink or Spark in it)
  killed once a work unit is committed (small batches: the run takes a
  while); the same command with --resume keeps what was committed and
  completes the result, every instance once."""
  script, options = ENGINES[engine]
  patterns, _, bad_count = mixed_input
  output = tmp_path / 'out'
  with engines.worker_pool(tmp_path) as pool:
    process = launch(script, output, model_dir, patterns, pool, *options,
                     '--max_batch_size=16', wait=False)
    deadline = time.time() + RUN_SECONDS
    while committed_units(output) < 1:
      assert process.poll() is None, process.communicate()[1][-3000:]
      assert time.time() < deadline, 'no work unit committed'
      time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    kept = committed_units(output)
    time.sleep(2)  # the pool's workers notice their job server is gone
    rc, err = launch(script, output, model_dir, patterns, pool, *options, '--resume')
  assert rc == 0, err[-3000:]
  summary = check_complete(output, mixed_input, expected, bad_count)
  assert summary['runner'] == ('FlinkRunner' if engine == 'flink' else 'SparkRunner')
  assert 1 <= kept <= summary['resumed']['units'] <= summary['resumed']['of_units']
  assert not glob.glob(os.path.join(output, '.staging-*'))


def scoring_worker_running(pool):
  return any(rss_mb(pid) > 300 for pid in pool.worker_pids())


def test_standalone_flink_cluster_then_a_taskmanager_killed(model_dir, mixed_input, expected,
                                                            tmp_path):
  """A JobManager and a TaskManager of Flink's own distribution, as separate
  processes, set up to restart failed jobs; the job server submits to the
  JobManager's REST address."""
  patterns, _, bad_count = mixed_input
  output = tmp_path / 'out'
  options = ['--parallelism=2', '--sdk_worker_parallelism=2']
  with engines.flink_cluster(tmp_path / 'flink') as cluster, \
       engines.worker_pool(tmp_path) as pool:
    options.append(f'--flink_master={cluster.master}')
    rc, err = launch('flink.sh', output, model_dir, patterns, pool, *options)
    assert rc == 0, err[-3000:]
    check_complete(output, mixed_input, expected, bad_count)
    assert [job['state'] for job in cluster.jobs()] == ['FINISHED']  # it ran there
    before = snapshot(output)

    # Again into the same folder; the TaskManager killed (SIGKILL, as a lost
    # machine) while it scores, and a new one started.
    process = launch('flink.sh', output, model_dir, patterns, pool, *options, wait=False)
    try:
      engines.wait_until(lambda: process.poll() is not None or (
          any(job['state'] == 'RUNNING' for job in cluster.jobs())
          and scoring_worker_running(pool)), RUN_SECONDS, 'the second run scoring')
      assert process.poll() is None, 'the run ended before the TaskManager could be killed'
      time.sleep(1)
      cluster.kill_taskmanager()
      cluster.start_taskmanager()
    finally:
      rc, err = finish(process)
    finished = [job for job in cluster.jobs() if job['state'] == 'FINISHED']
    restarts = max((cluster.restarts(job['jid']) for job in finished), default=0)
  # The cluster restarts failed jobs (as production clusters are set up): the
  # restarted job's result is complete and counted once.
  assert rc == 0, err[-3000:]
  check_complete(output, mixed_input, expected, bad_count)
  assert len(finished) == 2 and restarts >= 1


def test_standalone_spark_cluster(model_dir, mixed_input, expected, tmp_path):
  """A master and a worker of Spark's own distribution, as separate processes."""
  patterns, _, bad_count = mixed_input
  with engines.spark_cluster(tmp_path / 'spark') as cluster, \
       engines.worker_pool(tmp_path) as pool:
    rc, err = launch('spark.sh', tmp_path / 'out', model_dir, patterns, pool,
                     f'--spark_master_url={cluster.master}')
    assert rc == 0, err[-3000:]
    check_complete(tmp_path / 'out', mixed_input, expected, bad_count)
    apps = (cluster.state() or {}).get('completedapps', [])
    assert len(apps) == 1 and apps[0]['state'] == 'FINISHED'  # it ran there


def test_flink_reads_and_writes_a_bucket(model_dir, tmp_path, signature_of):
  """Input, model and output in a bucket (the storage emulator); the Python
  workers reach it as the launcher does."""
  bucket_name = 'engines-test'
  instances = [instance(i, 'gs') for i in range(2000)]
  with cloud.emulated_bucket(bucket_name) as bucket:
    cloud.upload_tree(bucket, str(model_dir / 'keras'), 'models/keras/1')
    for f in range(4):
      bucket.blob(f'in/{f}.jsonl').upload_from_string(
          ''.join(json.dumps(x) + '\n' for x in instances[f * 500:(f + 1) * 500]))
    with engines.worker_pool(tmp_path) as pool:
      rc, err = launch('flink.sh', f'gs://{bucket_name}/out', model_dir, '', pool,
                       '--flink_master=[local]', '--parallelism=2',
                       f'--model=gs://{bucket_name}/models/keras',
                       f'--input=gs://{bucket_name}/in/*.jsonl')
    assert rc == 0, err[-3000:]
    predictions = []
    for blob in bucket.client.list_blobs(bucket, prefix='out/predictions-'):
      predictions += [json.loads(l) for l in blob.download_as_text().splitlines()]
    summary = json.loads(bucket.blob('out/summary.json').download_as_text())
  assert summary['predictions'] == len(predictions) == 2000 and summary['errors'] == 0
  from tests.helpers import check_keras_predictions
  check_keras_predictions(predictions, instances, model_dir / 'keras', signature_of)
