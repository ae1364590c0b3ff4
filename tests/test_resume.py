"""--resume: a run stopped part-way (its process group killed with SIGKILL,
twice) is continued; the committed result holds every instance once, the
same records as one uninterrupted run. A resume whose settings would change
the result is refused in one line; one that changes only how the work is
done is accepted. Real processes, real pipelines on the local runner."""
import glob
import json
import os
import shutil

import numpy as np
import pytest

from tf_batch_predict.pipeline import cli, parallelism, resume
from tests.helpers import read_jsonl, write_lines
from tests.test_runs import (check_result, keras_args, keras_lines, kill, leftovers, start_cli,
                             wait_for)

FILES = 6
PER_FILE = 6000


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """FILES files (a work unit each), 1 instance in 97 a schema error."""
  folder = tmp_path_factory.mktemp('resume-in')
  for f in range(FILES):
    write_lines(str(folder / f'{f}.jsonl'), keras_lines(f'f{f}-', PER_FILE, bad_every=97))
  return folder


def committed_units(out) -> int:
  return len(glob.glob(os.path.join(out, '.staging-*', 'units', '*.json')))


def stop_after(args, out, log, units: int):
  """Starts the command and kills its process group once `units` work
  units are committed; returns how many were."""
  run = start_cli(args, log)
  assert wait_for(lambda: committed_units(out) >= units, run, 120), log.read_text()
  kill(run)
  return committed_units(out)


def by_key(pattern: str) -> dict:
  return {r['id']: r for r in read_jsonl(pattern)}


def assert_same_records(got: dict, want: dict):
  """The same records; model outputs within the bound of another batch
  composition (float32 outputs, relative 1e-5), everything else exact."""
  assert got.keys() == want.keys()
  for key, record in want.items():
    other = got[key]
    assert other.keys() == record.keys(), key
    for field, value in record.items():
      if _numbers(value):
        np.testing.assert_allclose(other[field], value, rtol=1e-5, atol=1e-6)
      else:
        assert other[field] == value, (key, field)


def _numbers(value) -> bool:
  """A float, or a (nested) list holding a float and numbers only."""
  flat = np.asarray(value, dtype=object).ravel().tolist() if isinstance(value, list) else [value]
  return (any(isinstance(v, float) for v in flat)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat))


def test_killed_twice_then_resumed_is_one_uninterrupted_run(model_dir, inputs, tmp_path):
  pattern = inputs / '*.jsonl'
  reference = tmp_path / 'reference'
  assert cli.main(keras_args(model_dir, pattern, f'--output={reference}')) == 0
  out = tmp_path / 'out'
  args = keras_args(model_dir, pattern, f'--output={out}', '--max_batch_size=64')

  first = stop_after(args, out, tmp_path / 'run1.log', 2)
  assert 2 <= first < FILES and not (out / 'summary.json').exists()
  second = stop_after([*args, '--resume'], out, tmp_path / 'run2.log', first + 1)
  assert first < second < FILES, (first, second)
  assert len(glob.glob(str(out / '.staging-*'))) == 1  # the one stopped run, resumed

  # Resumed with other work settings: accepted.
  assert cli.main([*args, '--resume', '--max_batch_size=512']) == 0
  keys = check_result(out)  # every key once; summary counts = records
  summary = json.loads((out / 'summary.json').read_text())
  want = json.loads((reference / 'summary.json').read_text())
  assert summary['instances_read'] == want['instances_read'] == FILES * PER_FILE
  assert summary['errors_by_category'] == want['errors_by_category']
  assert summary['resumed']['units'] >= second and summary['resumed']['of_units'] == FILES
  assert 0 < summary['resumed']['instances'] < FILES * PER_FILE
  assert_same_records(by_key(str(out / 'predictions-*')),
                      by_key(str(reference / 'predictions-*')))
  assert by_key(str(out / 'errors-*')) == by_key(str(reference / 'errors-*'))
  assert keys == set(by_key(str(reference / 'predictions-*'))) | set(
      by_key(str(reference / 'errors-*')))
  assert leftovers(out) == []


@pytest.fixture
def stopped(model_dir, inputs, tmp_path):
  """(its input folder, output folder, args): a run killed after one work
  unit, on a copy of the inputs."""
  folder = tmp_path / 'in'
  shutil.copytree(inputs, folder)
  out = tmp_path / 'stopped'
  args = keras_args(model_dir, folder / '*.jsonl', '--max_batch_size=64')
  stop_after([*args, f'--output={out}'], out, tmp_path / 'stopped.log', 1)
  return folder, out, args


def resume_copy(stopped_out, tmp_path, name, args, capsys) -> tuple:
  out = tmp_path / name
  shutil.copytree(stopped_out, out)
  capsys.readouterr()
  rc = cli.main([*args, f'--output={out}', '--resume'])
  return rc, capsys.readouterr().err, out


@pytest.mark.parametrize('change, named', [
    (['--key_field=bucket'], '--key_field'),
    (['--output_format=parquet'], '--output_format'),
    (['--passthrough_fields=bucket'], '--passthrough_fields'),
    (['--max_instance_bytes=100000'], '--max_instance_bytes'),
])
def test_a_resume_that_would_change_the_result_is_refused(stopped, tmp_path, capsys, change,
                                                          named):
  _, out, args = stopped
  rc, err, copy = resume_copy(out, tmp_path, 'copy', [*args, *change], capsys)
  assert rc == 2
  assert err.startswith(f'batch-predict: error: --resume: the stopped run in {copy}/.staging-')
  assert f'had {named}=' in err and err.strip().endswith(
      'run without --resume to start from the first instance')
  assert len(err.strip().splitlines()) == 1
  assert committed_units(copy) >= 1 and not (copy / 'summary.json').exists()  # left as it was


def test_changed_or_new_input_files_are_refused(stopped, tmp_path, capsys):
  folder, out, args = stopped
  stat = os.stat(folder / '3.jsonl')
  os.utime(folder / '3.jsonl', (stat.st_atime, stat.st_mtime + 10))
  rc, err, _ = resume_copy(out, tmp_path, 'touched', args, capsys)
  assert rc == 2 and f'read {folder / "3.jsonl"} as ' in err, err
  os.utime(folder / '3.jsonl', (stat.st_atime, stat.st_mtime))
  write_lines(str(folder / '9.jsonl'), keras_lines('new', 10))
  rc, err, _ = resume_copy(out, tmp_path, 'added', args, capsys)
  assert rc == 2 and f'did not read {folder / "9.jsonl"}, which this command does' in err, err
  os.remove(folder / '9.jsonl')
  rc, _, copy = resume_copy(out, tmp_path, 'same', args, capsys)
  assert rc == 0 and len(check_result(copy)) == FILES * PER_FILE


def test_a_resume_on_more_workers_is_accepted(stopped, tmp_path, capsys):
  _, out, args = stopped
  rc, _, copy = resume_copy(out, tmp_path, 'workers', [
      *args, '--direct_running_mode=multi_processing', '--direct_num_workers=2',
      '--max_batch_size=32'], capsys)
  assert rc == 0 and len(check_result(copy)) == FILES * PER_FILE
  resumed = json.loads((copy / 'summary.json').read_text())['resumed']
  assert resumed['units'] >= 1 and resumed['of_units'] == FILES


def test_resume_with_nothing_stopped_starts_from_the_first_instance(model_dir, tmp_path, caplog):
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 50))
  out = tmp_path / 'out'
  args = keras_args(model_dir, tmp_path / 'in.jsonl', f'--output={out}')
  assert cli.main([*args, '--max_batch_size=0']) == 2  # a bad option value: nothing ran
  assert cli.main([*args, '--resume']) == 0
  assert len(check_result(out)) == 50
  assert json.loads((out / 'summary.json').read_text())['resumed'] is None
  assert 'no stopped run' in caplog.text


# -- --incremental ------------------------------------------------------------------------

def write_folder(folder, instances: dict) -> None:
  """Each name -> instances (keras_instances) in the format its name says."""
  import gzip

  import pyarrow as pa
  import pyarrow.parquet as pq
  from tests.test_formats import example_bytes, write_tfrecords
  os.makedirs(folder, exist_ok=True)
  for name, xs in instances.items():
    path = os.path.join(folder, name)
    if name.endswith('.jsonl'):
      write_lines(path, [json.dumps(x) for x in xs])
    elif name.endswith('.jsonl.gz'):
      with gzip.open(path, 'wt') as f:
        f.write(''.join(json.dumps(x) + '\n' for x in xs))
    elif name.endswith('.csv'):
      write_lines(path, ['id,features,bucket'] + [
          f'{x["id"]},"{json.dumps(x["features"])}",{x["bucket"]}' for x in xs])
    elif name.endswith('.json'):
      with open(path, 'w') as f:
        json.dump({'instances': xs}, f)
    elif name.endswith('.parquet'):
      pq.write_table(pa.table({
          'id': [x['id'] for x in xs],
          'features': pa.array([x['features'] for x in xs], pa.list_(pa.float64())),
          'bucket': pa.array([x['bucket'] for x in xs], pa.int64())}), path)
    elif name.endswith('.tfrecord'):
      write_tfrecords(path, [example_bytes(x) for x in xs])


def result_records(out) -> tuple:
  """(predictions by key, errors by key) of a result in any output format."""
  from tf_batch_predict.transforms.rejoin.read_outputs import iter_records, output_files
  files = output_files(str(out))
  def key(record):  # TFRecord output: the key as a feature's list of one value
    return str(record['id'][0] if isinstance(record['id'], list) else record['id'])
  return tuple({key(r): r for path in files[kind] for r in iter_records(path)}
               for kind in ('predictions', 'errors'))


def assert_result_is_a_fresh_run(model_dir, folder, out, output_format, tmp_path, name):
  fresh = tmp_path / name
  assert cli.main(keras_args(model_dir, f'{folder}/*', f'--output={fresh}',
                             f'--output_format={output_format}')) == 0
  got, want = result_records(out), result_records(fresh)
  assert_same_records(got[0], want[0])
  assert got[1] == want[1]
  summary = json.loads((out / 'summary.json').read_text())
  fresh_summary = json.loads((fresh / 'summary.json').read_text())
  for count in ('instances_read', 'predictions', 'errors', 'errors_by_category'):
    assert summary[count] == fresh_summary[count], count
  return summary


@pytest.mark.parametrize('output_format', ['jsonl', 'parquet', 'tfrecord'])
def test_incremental_over_a_folder_that_gains_loses_and_changes_files(
    model_dir, tmp_path, output_format):
  from tests.test_formats import keras_instances
  folder = tmp_path / 'in'
  instances = {'a.jsonl': keras_instances(300, 'a'), 'b.csv': keras_instances(200, 'b'),
               'c.parquet': keras_instances(150, 'c'), 'd.tfrecord': keras_instances(120, 'd'),
               'e.json': keras_instances(40, 'e'), 'f.jsonl.gz': keras_instances(90, 'f')}
  instances['a.jsonl'][7]['features'] = [1.0]  # a schema error, kept as it is
  write_folder(folder, instances)
  out = tmp_path / 'out'
  args = keras_args(model_dir, f'{folder}/*', f'--output={out}',
                    f'--output_format={output_format}')
  assert cli.main(args) == 0
  assert cli.main([*args, '--incremental']) == 0  # nothing changed: everything kept
  summary = assert_result_is_a_fresh_run(model_dir, folder, out, output_format, tmp_path, 'f0')
  assert summary['incremental']['files_kept'] == 6
  assert summary['incremental']['units'] == summary['incremental']['of_units']  # all kept
  assert summary['incremental']['instances'] == summary['instances_read']

  # A file added, one removed, one rewritten in place (other instances).
  write_folder(folder, {'g.jsonl': keras_instances(60, 'g'),
                        'c.parquet': keras_instances(80, 'new')})
  os.remove(folder / 'b.csv')
  assert cli.main([*args, '--incremental']) == 0
  summary = assert_result_is_a_fresh_run(model_dir, folder, out, output_format, tmp_path, 'f1')
  incremental = summary['incremental']
  assert (incremental['files_kept'], incremental['files_added'], incremental['files_replaced'],
          incremental['files_removed']) == (4, 1, 1, 1)
  assert incremental['added'] == [str(folder / 'g.jsonl')]
  assert incremental['replaced'] == [str(folder / 'c.parquet')]
  assert incremental['removed'] == [str(folder / 'b.csv')]
  assert incremental['instances'] == 300 + 120 + 40 + 90
  predictions, errors = result_records(out)
  assert not any(k.startswith(('b', 'c')) for k in predictions)
  assert sum(k.startswith('new') for k in predictions) == 80
  assert list(errors) == ['a7']

  # The result joins back to the instances.
  joined = tmp_path / 'joined'
  assert cli.main(['join', f'--input={folder}/*', f'--predictions={out}',
                   f'--output={joined}', '--key_field=id']) == 0
  rows = read_jsonl(str(joined / 'joined-*'))
  assert len(rows) == summary['instances_read']


def test_incremental_that_would_change_the_result_is_refused(model_dir, tmp_path, capsys):
  write_lines(str(tmp_path / 'in' / 'a.jsonl'), keras_lines('a', 30))
  out = tmp_path / 'out'
  args = keras_args(model_dir, tmp_path / 'in' / '*.jsonl', f'--output={out}')
  assert cli.main(args) == 0
  capsys.readouterr()
  assert cli.main([*args, '--incremental', '--output_format=parquet']) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'batch-predict: error: --incremental: the result in {out} had '
                        '--output_format="jsonl", this command "parquet"'), err
  assert len(err.strip().splitlines()) == 1
  # Other patterns over another common folder would name the files otherwise.
  write_lines(str(tmp_path / 'more' / 'b.jsonl'), keras_lines('b', 5))
  assert cli.main([*keras_args(model_dir, f'{tmp_path / "in" / "*.jsonl"},'
                               f'{tmp_path / "more" / "*.jsonl"}', f'--output={out}'),
                   '--incremental']) == 2
  err = capsys.readouterr().err
  assert f'had file names relative to="{tmp_path / "in"}/", this command "{tmp_path}/"' in err, err
  # Without a result to add to, --incremental scores everything.
  fresh = tmp_path / 'fresh'
  assert cli.main([*keras_args(model_dir, tmp_path / 'in' / '*.jsonl', f'--output={fresh}'),
                   '--incremental']) == 0
  assert json.loads((fresh / 'summary.json').read_text())['incremental'] is None


# -- on a bucket (the storage emulator) ------------------------------------------------------

BUCKET = 'batch-predict-resume'


@pytest.fixture(scope='module')
def bucket():
  from tests import cloud
  with cloud.emulated_bucket(BUCKET) as created:
    yield created


def test_bucket_output_resumed_then_incremental(bucket, model_dir, inputs, tmp_path):
  """On gs://: a run killed after 2 units, resumed; then a file added and
  scored with --incremental. Commit records are single object writes."""
  folder = tmp_path / 'in'
  shutil.copytree(inputs, folder)
  out = f'gs://{BUCKET}/out'
  args = keras_args(model_dir, folder / '*.jsonl', f'--output={out}', '--max_batch_size=64')

  def committed():
    return sum(1 for b in bucket.client.list_blobs(bucket, prefix='out/.staging-')
               if '/units/' in b.name and b.name.endswith('.json'))

  run = start_cli(args, tmp_path / 'run.log')
  assert wait_for(lambda: committed() >= 2, run, 120), (tmp_path / 'run.log').read_text()
  kill(run)
  kept = committed()
  assert cli.main([*args, '--resume']) == 0
  summary = json.loads(bucket.blob('out/summary.json').download_as_text())
  assert kept <= summary['resumed']['units'] < FILES
  names = [b.name for b in bucket.client.list_blobs(bucket, prefix='out/')]
  assert not [n for n in names if '.staging-' in n or n.endswith('.lock')], names
  predictions, errors = result_records(out)
  assert len(predictions) + len(errors) == FILES * PER_FILE == summary['instances_read']

  write_lines(str(folder / 'z.jsonl'), keras_lines('z', 25))
  assert cli.main([*args, '--incremental']) == 0
  summary = json.loads(bucket.blob('out/summary.json').download_as_text())
  assert summary['incremental']['files_added'] == 1
  assert summary['incremental']['files_kept'] == FILES
  predictions, errors = result_records(out)
  assert len(predictions) + len(errors) == FILES * PER_FILE + 25 == summary['instances_read']


def test_files_scored_in_one_batch_are_committed_file_by_file(model_dir, tmp_path):
  """12 files of 3 instances each (padded past SMALL_FILE_BYTES: a unit
  each), merged into batches of many files: each file's records go to its
  own unit's shard, so that --incremental drops exactly the records of the
  file removed and keeps every other."""
  from tests.test_formats import keras_instances
  from tf_batch_predict.transforms.read.units import SMALL_FILE_BYTES
  folder = tmp_path / 'in'
  padding = 'x' * (SMALL_FILE_BYTES // 3 + 100)  # an ignored field
  write_folder(folder, {f'{i:02d}.jsonl': [dict(x, pad=padding)
                                           for x in keras_instances(3, f't{i:02d}-')]
                        for i in range(12)})
  out = tmp_path / 'out'
  args = keras_args(model_dir, f'{folder}/*.jsonl', f'--output={out}', '--min_batch_size=64')
  assert cli.main(args) == 0
  manifest = json.loads((out / '.units.json').read_text())['units']
  assert len(manifest) == 12 and all(u['record']['records'] == 3 for u in manifest)
  for unit in manifest:  # each file's records in the unit's own shard
    prefix = 't' + os.path.basename(unit['path'])[:2] + '-'
    shard = read_jsonl(str(out / unit['shards']['predictions']))
    assert sorted(r['id'] for r in shard) == [f'{prefix}{i}' for i in range(3)]
  os.remove(folder / '07.jsonl')
  assert cli.main([*args, '--incremental']) == 0
  predictions, _ = result_records(out)
  assert len(predictions) == 11 * 3 and not any(k.startswith('t07-') for k in predictions)
  assert json.loads((out / 'summary.json').read_text())['incremental']['units'] == 11


def test_tiny_files_are_grouped_and_a_stopped_runs_shards_are_not_work(model_dir, tmp_path):
  """40 tiny files make one work unit (one output file, not 40); a file
  removed from them has the group read again. A stopped run's staging
  folder holding a shard (stopped while it moved its units into shards:
  their files gone from its units) is not taken for committed work."""
  from tests.test_formats import keras_instances
  folder = tmp_path / 'in'
  write_folder(folder, {f'{i:02d}.jsonl': keras_instances(3, f't{i:02d}-') for i in range(40)})
  out = tmp_path / 'out'
  args = keras_args(model_dir, f'{folder}/*.jsonl', f'--output={out}')
  assert cli.main(args) == 0
  manifest = json.loads((out / '.units.json').read_text())['units']
  assert len(manifest) == 1 and len(manifest[0]['more']) == 39
  assert manifest[0]['record']['records'] == 120
  assert sorted(os.listdir(out))[1:] == ['errors-00000-of-00001.jsonl',
                                        'predictions-00000-of-00001.jsonl', 'report.html',
                                        'summary.json']
  os.remove(folder / '17.jsonl')
  assert cli.main([*args, '--incremental']) == 0
  assert len(check_result(out)) == 39 * 3
  assert json.loads((out / 'summary.json').read_text())['incremental']['units'] == 0

  staging = out / '.staging-20260101T000000Z-0000dead'
  os.makedirs(staging)
  shutil.copy(out / 'predictions-00000-of-00001.jsonl', staging / 'predictions-00005-of-00007.jsonl')
  config = _resolved(args)
  resume.write_plan(str(staging), config, parallelism.work_units(config))
  assert cli.main([*args, '--resume']) == 0
  assert len(check_result(out)) == 39 * 3  # every key once: the stale shard went
  assert json.loads((out / 'summary.json').read_text())['resumed']['units'] == 0
  assert not [p for p in os.listdir(out) if p.startswith('.staging-')]


def _resolved(args):
  from tf_batch_predict.pipeline import config
  from tf_batch_predict.pipeline.options import parse_args
  return config.resolve(parse_args(args))
