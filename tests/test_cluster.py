"""From one machine to a cluster: buckets (a real storage emulator), Beam's
multi-process, portable (loopback and external worker pool) and Dataflow
runners. Every run is compared with the default local run."""
import io
import json
import os
import subprocess
import sys
import tarfile
import threading

import pytest

from tests import cloud
from tests.helpers import (assert_close_across_batches, assert_conserved, check_keras_predictions,
                           run_job, write_lines)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'batch-predict-test'


@pytest.fixture(scope='module')
def bucket():
  with cloud.emulated_bucket(BUCKET) as created:
    yield created


@pytest.fixture(scope='module')
def sharded_input(tmp_path_factory):
  """12 files of the Keras model's instances, so that runs have many bundles."""
  d = tmp_path_factory.mktemp('sharded')
  instances = [{'id': f'i{i}', 'features': [i / 100, -i / 50, 1.0], 'bucket': i % 7}
               for i in range(360)]
  for f in range(12):
    write_lines(str(d / f'{f:02d}.jsonl'), [json.dumps(x) for x in instances[f * 30:(f + 1) * 30]])
  return d, instances


def keras_job(model_dir, input_dir, output, *extra):
  return run_job(str(output), f'--model={model_dir / "keras"}', '--signature=serve',
                 f'--input={input_dir / "*.jsonl"}', '--key_field=id', '--min_batch_size=1',
                 *extra)


def blob_jsonl(bucket, prefix):
  records = []
  for blob in bucket.client.list_blobs(bucket, prefix=prefix):
    records += [json.loads(l) for l in blob.download_as_text().splitlines() if l.strip()]
  return records


def test_model_inputs_and_outputs_in_a_bucket(bucket, model_dir, tmp_path, signature_of,
                                              monkeypatch):
  monkeypatch.setenv('BATCH_PREDICT_STAGING_DIR', str(tmp_path / 'staged'))
  cloud.upload_tree(bucket, str(model_dir / 'keras'), 'models/keras/3')
  instances = [{'id': f'g{i}', 'features': [i, 1, 2], 'bucket': i} for i in range(40)]
  lines = [json.dumps(x) for x in instances]
  bucket.blob('in/a.jsonl').upload_from_string('\n'.join(lines[:25] + ['{oops']) + '\n')
  bucket.blob('in/b.jsonl').upload_from_string('\n'.join(lines[25:]) + '\n')
  from tf_batch_predict.pipeline import cli
  assert cli.main([f'--model=gs://{BUCKET}/models/keras', '--signature=serve',
                   f'--input=gs://{BUCKET}/in/*.jsonl', f'--output=gs://{BUCKET}/out',
                   '--key_field=id']) == 0
  predictions = blob_jsonl(bucket, 'out/predictions-')
  errors = blob_jsonl(bucket, 'out/errors-')
  summary = json.loads(bucket.blob('out/summary.json').download_as_text())
  assert_conserved(summary, predictions, errors)
  check_keras_predictions(predictions, instances, model_dir / 'keras', signature_of)
  assert [(e['filename'], e['error']['category']) for e in errors] == [('a.jsonl', 'parse')]
  assert summary['model']['version'] == 3
  assert summary['model']['path'] == f'gs://{BUCKET}/models/keras/3'
  staged = os.listdir(tmp_path / 'staged')
  assert len(staged) == 1 and os.path.exists(tmp_path / 'staged' / staged[0] / 'saved_model.pb')
  # The join reads the instances, the outputs and summary.json from the bucket
  # and writes its result there, promoted as a run's.
  assert cli.main(['join', f'--input=gs://{BUCKET}/in/*.jsonl',
                   f'--predictions=gs://{BUCKET}/out', f'--output=gs://{BUCKET}/joined']) == 0
  joined = blob_jsonl(bucket, 'joined/joined-')
  assert len(joined) == 41
  scores = {p['id']: p['score'] for p in predictions}
  assert {r['id']: r['score'] for r in joined if 'id' in r} == scores
  assert [r['error']['category'] for r in joined if 'error' in r] == ['parse']
  join_summary = json.loads(bucket.blob('joined/summary.json').download_as_text())
  assert join_summary['joined'] == 40 and join_summary['failed'] == 1


def test_model_staging_is_atomic_and_reused(bucket, model_dir, tmp_path, monkeypatch):
  """Threads and processes staging at once all get one complete copy."""
  from tf_batch_predict.transforms.storage import stage_model
  monkeypatch.setenv('BATCH_PREDICT_STAGING_DIR', str(tmp_path / 'staged'))
  cloud.upload_tree(bucket, str(model_dir / 'tf1'), 'models/tf1')
  path = f'gs://{BUCKET}/models/tf1'
  code = ('import sys; from tf_batch_predict.transforms.storage import stage_model; '
          f'print(stage_model({path!r}))')
  processes = [subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=os.environ.copy(),
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
  results = []
  threads = [threading.Thread(target=lambda: results.append(stage_model(path)))
             for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  results += [p.communicate(timeout=120)[0].strip() for p in processes]
  assert len(set(results)) == 1 and len(results) == 6
  staged = results[0]
  want = sorted(os.path.relpath(os.path.join(r, f), model_dir / 'tf1')
                for r, _, fs in os.walk(model_dir / 'tf1') for f in fs)
  got = sorted(os.path.relpath(os.path.join(r, f), staged) for r, _, fs in os.walk(staged)
               for f in fs)
  assert got == want
  assert os.listdir(tmp_path / 'staged') == [os.path.basename(staged)]  # no partial copies
  import tensorflow as tf
  assert 'predict_scores' in tf.saved_model.load(staged, tags=['serve']).signatures


@pytest.mark.cross_batch
def test_multi_processing_loads_the_model_once_per_worker_process(model_dir, sharded_input,
                                                                  tmp_path, signature_of):
  input_dir, instances = sharded_input
  predictions, errors, summary = keras_job(
      model_dir, input_dir, tmp_path / 'out', '--direct_running_mode=multi_processing',
      '--direct_num_workers=2')
  assert errors == []
  check_keras_predictions(predictions, instances, model_dir / 'keras', signature_of)
  # 12 files are 12 chunks scored in several bundles: loads are per process.
  assert 1 <= summary['model_loads'] <= 2
  shared, _, summary = keras_job(
      model_dir, input_dir, tmp_path / 'shared', '--direct_running_mode=multi_processing',
      '--direct_num_workers=2', '--share_model_across_processes')
  check_keras_predictions(shared, instances, model_dir / 'keras', signature_of)
  assert summary['model_loads'] == 1  # one copy for the machine


@pytest.mark.cross_batch
def test_portable_runner_loopback_and_external_pool(model_dir, sharded_input, tmp_path):
  input_dir, _ = sharded_input
  direct, _, _ = keras_job(model_dir, input_dir, tmp_path / 'direct')
  loopback, errors, summary = keras_job(
      model_dir, input_dir, tmp_path / 'loopback', '--runner=PortableRunner',
      '--job_endpoint=embed', '--environment_type=LOOPBACK')
  assert summary['runner'] == 'PortableRunner' and errors == []
  # Other bundles, so other batches: the same values up to their last bits.
  assert_close_across_batches(sorted(loopback, key=lambda p: p['id']),
                              sorted(direct, key=lambda p: p['id']))

  port = cloud.free_port()
  env = dict(os.environ, PATH=cloud.venv_bin() + os.pathsep + os.environ['PATH'])
  pool = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
       f'--service_port={port}'], cwd=ROOT, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    cloud.wait_for_port(port, pool)
    external, errors, summary = keras_job(
        model_dir, input_dir, tmp_path / 'external', '--runner=PortableRunner',
        '--job_endpoint=embed', '--environment_type=EXTERNAL',
        f'--environment_config=localhost:{port}')
  finally:
    pool.terminate()
    pool.wait(10)
  assert errors == [] and summary['model_loads'] >= 1
  assert_close_across_batches(sorted(external, key=lambda p: p['id']),
                              sorted(direct, key=lambda p: p['id']))


def test_dataflow_template_holds_the_scoring_step_and_the_package(bucket, model_dir,
                                                                 sharded_input, tmp_path,
                                                                 capsys):
  from apache_beam.portability.api import beam_runner_api_pb2
  from tf_batch_predict.pipeline import cli
  input_dir, _ = sharded_input
  rc = cli.main([f'--model={model_dir / "keras"}', '--signature=serve',
                 f'--input={input_dir / "*.jsonl"}', f'--output=gs://{BUCKET}/df-out',
                 '--runner=DataflowRunner', '--project=test-project', '--region=us-central1',
                 f'--temp_location=gs://{BUCKET}/df-tmp',
                 f'--template_location=gs://{BUCKET}/templates/job.json',
                 f'--setup_file={ROOT}/setup.py'])
  assert rc == 0
  assert 'template written to' in capsys.readouterr().out
  template = json.loads(bucket.blob('templates/job.json').download_as_text())
  packages = {p['name'] for p in template['environment']['workerPools'][0]['packages']}
  assert 'workflow.tar.gz' in packages  # the sdist built from --setup_file
  staged = {b.name.rsplit('/', 1)[-1]: b for b in bucket.client.list_blobs(
      bucket, prefix='df-tmp/')}
  pipeline = beam_runner_api_pb2.Pipeline.FromString(staged['pipeline.pb'].download_as_bytes())
  names = [t.unique_name for t in pipeline.components.transforms.values()]
  assert any(n.endswith('Score/BeamML_RunInference') for n in names), names
  with tarfile.open(fileobj=io.BytesIO(staged['workflow.tar.gz'].download_as_bytes())) as sdist:
    files = sdist.getnames()
  assert any(f.endswith('/pipeline/cli.py') for f in files)
  assert any(f.endswith('/transforms/model/score.py') for f in files)
  assert not blob_jsonl(bucket, 'df-out/')  # nothing ran
  assert cli.main([f'--model={model_dir / "keras"}', '--signature=serve',
                   f'--input={input_dir / "*.jsonl"}', f'--output=gs://{BUCKET}/df-out',
                   '--runner=DataflowRunner', '--project=test-project',
                   '--region=us-central1', f'--temp_location=gs://{BUCKET}/df-tmp',
                   '--dry_run=True']) == 0
  assert 'Dry run' in capsys.readouterr().out


def test_output_in_a_missing_bucket_is_one_line(bucket, model_dir, tmp_path, capsys):
  from tf_batch_predict.pipeline import cli
  write_lines(str(tmp_path / 'in.jsonl'), ['[1.0]'])
  rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in.jsonl"}',
                 '--output=gs://no-such-bucket-here/out'])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1
  assert err.startswith('batch-predict: error: --output: cannot use gs://no-such-bucket-here/out')
