"""batch-predict preflight, and --preflight on a run: a sample of the input,
read with the job's own readers, decoded and scored here, reported before a
long job starts. Real models (tests/conftest.py), real files, the real run
to compare with."""
import gzip
import json
import os
import random
import re
import shlex
import subprocess
import sys

import pytest

from tf_batch_predict.pipeline import cli, preflight
from tests.helpers import read_jsonl, write_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def keras_line(i, key='id'):
  """A Keras test model instance; every line of the same length."""
  return json.dumps({key: f'a-{i:06d}', 'features': [0.5, 1.5, 2.5], 'bucket': i % 10,
                     'note': 'x'})


def run_preflight(capsys, *args, json_report=True):
  rc = cli.main(['preflight', *args, *(['--json'] if json_report else [])])
  out, err = capsys.readouterr()
  return rc, (json.loads(out) if json_report and out.strip() else out), err


def error_lines(err):
  return [line for line in err.splitlines() if line.startswith('batch-predict: error:')]


# -- a mistyped key field ------------------------------------------------------------

def test_a_mistyped_key_field_is_caught_before_the_run(capsys, tmp_path, model_dir):
  data = write_lines(str(tmp_path / 'in' / 'part.jsonl'), [keras_line(i) for i in range(300)])
  model = f'--model={model_dir / "keras"}'
  rc, out, err = run_preflight(capsys, model, f'--input={data}', '--key_field=idd',
                               '--passthrough_fields=not', json_report=False)
  # The run makes every instance without its key a schema error: nothing
  # would be predicted, so preflight fails as the run would (status 3).
  assert rc == cli.EXIT_TOO_MANY_ERRORS
  assert ("--key_field 'idd': MISSING from every sampled instance: each is a schema error "
          "in the run; did you mean 'id'?") in out
  assert 'seen: bucket, features, id, note' in out
  assert "schema    100  e.g. part.jsonl offset 0: missing key field 'idd'" in out
  assert "passthrough 'not': in no sampled instance (written as null); did you mean 'note'?" \
      in out
  assert err.strip().splitlines() == [
      "batch-predict: error: preflight: no sampled instance could be scored: all 100 failed "
      "(schema 100); --key_field 'idd' is in none of them (did you mean 'id'?)"]

  rc, report, err = run_preflight(capsys, model, f'--input={data}', '--key_field=idd')
  assert rc == 3 and report['fields']['key_missing_everywhere']
  assert report['fields']['carried'][0] == {'field': 'idd', 'role': 'key', 'present': 0,
                                           'close_match': 'id'}
  assert report['exit_status'] == 3 and report['sample']['scored'] == 0

  rc, report, err = run_preflight(capsys, model, f'--input={data}', '--key_field=id')
  assert rc == 0 and err == ''
  assert report['sample'] == {**report['sample'], 'instances': 100, 'scored': 100, 'failed': 0}
  assert report['fields']['ignored'] == {'note': 100}
  assert [(i['input'], i['present']) for i in report['fields']['inputs']] == [
      ('bucket', 100), ('features', 100)]


def test_a_signature_of_tf_examples_shows_its_parsing_spec(capsys, tmp_path, model_dir):
  data = write_lines(str(tmp_path / 'in.jsonl'),
                     [json.dumps({'id': i, 'agee': 60, 'thal': 'fixed'}) for i in range(5)])
  rc, report, err = run_preflight(capsys, f'--model={model_dir / "estimator"}',
                                  f'--input={data}', '--key_field=id')
  assert rc == 3
  features = {f['feature']: f for f in report['fields']['features']}
  assert features['age'] == {'feature': 'age', 'kind': 'float', 'required': True,
                             'present': 0, 'close_match': 'agee'}
  assert features['thal']['present'] == 5 and not features['count']['required']
  assert report['fields']['missing_required_features'] == ['age']
  assert report['fields']['ignored'] == {'agee': 5}
  assert error_lines(err) == [
      "batch-predict: error: preflight: no sampled instance could be scored: all 5 failed "
      "(schema 5); most often: missing required feature 'age' (float, 1 value (shape [1]))"]


# -- the sample: spread over files of mixed formats, counts and estimate --------------

def write_mixed_inputs(directory):
  """12 files of five formats, each record of one size within its file (so
  that bytes per instance is exact); returns {format: [(path, count)]}."""
  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq
  import tensorflow as tf
  os.makedirs(directory)
  written, n = {}, 0

  def add(kind, path, count):
    written.setdefault(kind, []).append((path, count))

  plan = ['jsonl', 'csv', 'parquet', 'jsonl', 'tfrecord', 'jsonl.gz', 'json', 'jsonl', 'csv',
          'parquet', 'tfrecord', 'jsonl']
  for part, ext in enumerate(plan):
    path = os.path.join(directory, f'part-{part:02d}.{ext}')
    count = 150 + 37 * part
    ids = range(n, n + count)
    n += count
    if ext == 'jsonl':
      write_lines(path, [keras_line(i) for i in ids])
    elif ext == 'jsonl.gz':
      with gzip.open(path, 'wt') as f:
        f.write(''.join(keras_line(i) + '\n' for i in ids))
    elif ext == 'csv':
      write_lines(path, ['id,features,bucket'] + [f'a-{i:06d},"[0.5, 1.5, 2.5]",{i % 10}'
                                                   for i in ids])
    elif ext == 'json':
      with open(path, 'w') as f:
        json.dump({'instances': [json.loads(keras_line(i)) for i in ids]}, f)
    elif ext == 'parquet':
      pq.write_table(pa.table({
          'id': [f'a-{i:06d}' for i in ids], 'bucket': [i % 10 for i in ids],
          'features': [[0.5, 1.5, 2.5]] * count, 'other': np.zeros(count)}), path)
    else:
      with tf.io.TFRecordWriter(path) as writer:
        for i in ids:
          writer.write(tf.train.Example(features=tf.train.Features(feature={
              'id': tf.train.Feature(bytes_list=tf.train.BytesList(value=[f'a-{i:06d}'.encode()])),
              'features': tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, 1.5, 2.5])),
              'bucket': tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10]))})
          ).SerializeToString())
    add(ext.replace('jsonl.gz', 'jsonl'), path, count)
  return written


def test_a_sample_spread_over_files_of_mixed_formats(capsys, tmp_path, model_dir):
  written = write_mixed_inputs(str(tmp_path / 'in'))
  rc, report, err = run_preflight(capsys, f'--model={model_dir / "keras"}',
                                  f'--input={tmp_path / "in" / "*"}', '--key_field=id',
                                  '--preflight_instances=100')
  assert rc == 0, err
  files = sorted(path for entries in written.values() for path, _ in entries)
  assert report['files']['total'] == len(files) == 12
  assert report['files']['bytes'] == sum(os.path.getsize(p) for p in files)
  for kind, entries in written.items():
    entry = report['formats'][kind]
    assert entry['files'] == len(entries)
    assert entry['bytes'] == sum(os.path.getsize(p) for p, _ in entries)
    assert entry['gzip_files'] == sum(p.endswith('.gz') for p, _ in entries)
    assert entry['sampled_files'] >= 1  # every format is sampled
  # The sample: the asked-for size, spread over ten files (the first and the
  # last among them), roughly equal shares, no file read beyond its share.
  sampled = report['files']['sampled_files']
  assert report['sample']['instances'] == sum(s['instances'] for s in sampled) == 100
  assert len(sampled) == 10
  assert {files[0], files[-1]} <= {s['path'] for s in sampled}
  assert {s['instances'] for s in sampled} == {10}
  assert report['sample']['scored'] == 100 and report['errors'] == {}
  # Counts: exact where a file's count is known without reading it all
  # (Parquet's metadata, request files read whole), else bytes per instance.
  counts = {kind: sum(c for _, c in entries) for kind, entries in written.items()}
  for kind, entry in report['formats'].items():
    if kind in ('parquet', 'json'):
      assert entry['exact'] and entry['instances'] == counts[kind]
    else:
      assert not entry['exact']
      # Within the CSV header's bytes, which unsampled files count as rows.
      assert abs(entry['instances'] - counts[kind]) <= entry['files'], (kind, entry)
  total = sum(counts.values())
  assert abs(report['estimate']['instances'] - total) <= 12
  assert not report['estimate']['exact'] and report['estimate']['gzip_ratio_used']
  speed = report['speed']['instances_per_second']
  assert speed > 0 and report['speed']['sample_repeated'] == 4096 // 100
  assert report['speed']['instances'] == 100 * (4096 // 100)
  assert report['estimate']['local_seconds'] == pytest.approx(
      report['estimate']['instances'] / speed, rel=0.01, abs=0.1)
  assert report['model']['loaded'] and report['model']['load_seconds'] > 0

  # Every file read to its end: the count is exact.
  rc, report, _ = run_preflight(capsys, f'--model={model_dir / "keras"}',
                                f'--input={tmp_path / "in" / "*"}', '--key_field=id',
                                f'--preflight_instances={total}')
  assert rc == 0 and report['estimate'] == {**report['estimate'], 'exact': True,
                                            'instances': total}
  assert report['sample']['instances'] == total and len(report['files']['sampled_files']) == 12

  rc, text, _ = run_preflight(capsys, f'--model={model_dir / "keras"}',
                              f'--input={tmp_path / "in" / "*"}', '--key_field=id',
                              json_report=False)
  assert rc == 0
  assert 'Preflight: 100 instances sampled from 10 of 12 files (asked for 100)' in text
  assert re.search(r'\n  parquet +2 files +[0-9.]+ KiB; sampled [0-9]+ instances from '
                   r'[12] files?\n', text)
  assert re.search(r'\n  jsonl +5 files .*, 1 gzip; sampled ', text)
  assert 'Results: 100 of 100 scored, 0 failed' in text
  assert ('instances/s (decode + score + format, one process, model load excluded: 4,000 '
          'instances (the sample 40 times over, ') in text
  assert 'Estimate: about ' in text and text.rstrip().endswith(
      'OK: 100 of 100 sampled instances scored')


def test_short_files_leave_their_share_to_the_others(capsys, tmp_path, model_dir):
  sizes = {'a.jsonl': 3, 'b.jsonl': 20, 'c.jsonl': 500}
  for name, size in sizes.items():
    write_lines(str(tmp_path / 'in' / name), [keras_line(i) for i in range(size)])
  rc, report, _ = run_preflight(capsys, f'--model={model_dir / "keras"}',
                                f'--input={tmp_path / "in" / "*.jsonl"}')
  assert rc == 0
  assert [(os.path.basename(s['path']), s['instances'], s['count'])
          for s in report['files']['sampled_files']] == [
              ('a.jsonl', 3, 3), ('b.jsonl', 20, 20), ('c.jsonl', 100 - 3 - 20, None)]
  assert report['estimate']['instances'] == sum(sizes.values())


def test_inputs_on_cloud_storage(capsys, tmp_path, model_dir):
  """gs:// inputs are read through Beam's file systems, as the job reads
  them (a real storage emulator)."""
  from tests import cloud
  lines = [keras_line(i) for i in range(300)]
  with cloud.emulated_bucket('preflight-inputs') as bucket:
    bucket.blob('in/a.jsonl').upload_from_string(''.join(line + '\n' for line in lines))
    bucket.blob('in/b.jsonl.gz').upload_from_string(
        gzip.compress(''.join(line + '\n' for line in lines[:40]).encode()))
    rc, report, err = run_preflight(capsys, f'--model={model_dir / "keras"}',
                                    '--input=gs://preflight-inputs/in/*', '--key_field=id')
  assert rc == 0, err
  assert report['formats']['jsonl']['files'] == 2 and report['formats']['jsonl']['gzip_files'] == 1
  assert report['sample'] == {**report['sample'], 'instances': 100, 'scored': 100}
  # Equal shares first; the short file's rest goes to the other.
  assert [(s['path'], s['instances'], s['count']) for s in report['files']['sampled_files']] == [
      ('gs://preflight-inputs/in/a.jsonl', 100 - 40, None),
      ('gs://preflight-inputs/in/b.jsonl.gz', 40, 40)]
  assert report['estimate']['instances'] == len(lines) + 40


# -- error categories: the run's own error records --------------------------------------

HUGE_LINE = '[' + '1, ' * 1500 + '1]'


def write_hostile_inputs(directory):
  rng = random.Random(7)
  os.makedirs(directory)
  write_lines(f'{directory}/a-mixed.jsonl',
              ['[1, 2]', 'nope', '"text"', '[-1, 2]', '{"x": [1], "x": [2]}']
              + [f'[{i % 10}, 1.5]' for i in range(300)])
  data = gzip.compress(''.join(f'[{i}]\n' for i in range(6)).encode())
  with open(f'{directory}/b-cut.jsonl.gz', 'wb') as f:
    f.write(data[:len(data) - 12])  # cut short: the end of the stream is missing
  with open(f'{directory}/c-junk.jsonl', 'wb') as f:
    f.write(rng.randbytes(300))
  open(f'{directory}/d-empty.jsonl', 'w').close()
  write_lines(f'{directory}/e-huge.jsonl', [HUGE_LINE, '[5]'])
  with open(f'{directory}/f-junk.tfrecord', 'wb') as f:
    f.write(rng.randbytes(200))
  write_lines(f'{directory}/g-one.jsonl', ['[3]'])
  write_lines(f'{directory}/h-big.jsonl', [f'[{i % 7}, 2, 3]' for i in range(2000)])
  with open(f'{directory}/i-junk.parquet', 'wb') as f:
    f.write(b'PAR1' + rng.randbytes(100))
  with open(f'{directory}/j-junk.csv.gz', 'wb') as f:
    f.write(rng.randbytes(100))


def test_error_categories_are_the_runs_error_records(capsys, tmp_path, model_dir):
  """Hostile files (binary junk, empty, a 1-line file among big ones, a line
  beyond --max_instance_bytes, gzip cut short, broken TFRecord and Parquet)
  never stop preflight; each ends up among the error categories, and each
  example is the record the run writes for the same line or file."""
  write_hostile_inputs(str(tmp_path / 'in'))
  args = [f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in" / "*"}',
          '--max_instance_bytes=1000']
  rc, report, err = run_preflight(capsys, *args)
  assert rc == 0, err
  errors = report['errors']
  assert set(errors) == {'parse', 'schema', 'model', 'file'}
  assert errors['file']['count'] == 4  # b-cut, f-junk, i-junk, j-junk
  sample = report['sample']
  assert sample['failed'] == sum(e['count'] for c, e in errors.items() if c != 'file')
  assert sample['scored'] + sample['failed'] == sample['instances']

  rc = cli.main([*args, f'--output={tmp_path / "out"}', '--max_error_fraction=1'])
  capsys.readouterr()
  assert rc == cli.EXIT_INPUT_INCOMPLETE
  run_errors = read_jsonl(str(tmp_path / 'out' / 'errors-*'))

  def where(record):
    return (record['filename'], record.get('offset'), record.get('index'),
            record['error']['category'] == 'file')
  by_location = {where(e): e for e in run_errors}
  for category, entry in errors.items():
    example = entry['example']
    record = by_location[where(example)]
    assert {k: v for k, v in record.items() if not k.startswith('raw')} == \
        {k: v for k, v in example.items() if not k.startswith('raw')}, category
    for raw in ('raw', 'raw_b64'):
      assert example.get(raw) == (record[raw][:200] if raw in record else None)
  assert errors['parse']['example']['error']['message'] == (
      'invalid JSON: Expecting value at character 0')
  assert errors['model']['example']['error']['message'].startswith('InvalidArgumentError: ')
  too_large = (f'the instance is {len(HUGE_LINE)} bytes, more than --max_instance_bytes '
               '(1000); it was not read')
  assert too_large in {e['error']['message'] for e in run_errors}
  assert too_large in {m['message'] for m in errors['parse']['messages']}
  with open(tmp_path / 'out' / 'summary.json') as f:
    summary = json.load(f)
  # The estimate: files read to their end counted, the others by the bytes
  # per line of their start (here with bad lines of other lengths).
  assert report['estimate']['instances'] == pytest.approx(summary['instances_read'], rel=0.05)


def test_a_line_cut_by_the_sample_budget(capsys, tmp_path, model_dir, monkeypatch):
  """Preflight reads at most SAMPLE_BYTES_PER_FILE of a file: a line it cuts
  is not an instance of the sample, unless it is too large anyway."""
  monkeypatch.setattr(preflight, 'SAMPLE_BYTES_PER_FILE', 2048)
  write_lines(str(tmp_path / 'in' / 'a.jsonl'), ['[1]', '[' + '2, ' * 300 + '2]', '[3]'])
  write_lines(str(tmp_path / 'in' / 'b.jsonl'), ['[1]', '[' + '2, ' * 3000 + '2]', '[3]'])
  args = [f'--model={model_dir / "ragged"}', '--max_instance_bytes=1500']
  rc, report, _ = run_preflight(capsys, *args, f'--input={tmp_path / "in" / "a.jsonl"}')
  assert rc == 0 and report['sample']['scored'] == 3 and report['estimate']['exact']
  # A line beyond --max_instance_bytes cut by the budget: its error is the
  # run's, its size found by reading on to its end (not keeping it).
  rc, report, _ = run_preflight(capsys, *args, f'--input={tmp_path / "in" / "b.jsonl"}')
  assert rc == 0 and report['sample'] == {**report['sample'], 'instances': 2, 'failed': 1}
  assert report['errors']['parse']['example']['error']['message'] == (
      f'the instance is {len("[" + "2, " * 3000 + "2]")} bytes, more than '
      '--max_instance_bytes (1500); it was not read')
  assert not report['estimate']['exact']
  # Beyond the bounds of that reading on: what is known, said to be preflight's.
  monkeypatch.setattr(preflight, 'LINE_SCAN_BYTES', 1000)
  rc, report, _ = run_preflight(capsys, *args, f'--input={tmp_path / "in" / "b.jsonl"}')
  assert rc == 0 and report['errors']['parse']['example']['error']['message'] == (
      f'the instance is at least {2048 - len(b"[1]") - 1} bytes (preflight read no further), '
      'more than --max_instance_bytes (1500); it was not read')
  monkeypatch.undo()
  monkeypatch.setattr(preflight, 'SAMPLE_BYTES_PER_FILE', 2048)
  # A TFRecord record cut by the budget is no broken framing.
  import tensorflow as tf
  with tf.io.TFRecordWriter(str(tmp_path / 'in' / 'c.tfrecord')) as writer:
    for size in (2, 1000, 2):
      writer.write(tf.train.Example(features=tf.train.Features(feature={'x': tf.train.Feature(
          float_list=tf.train.FloatList(value=[1.0] * size))})).SerializeToString())
  rc, report, _ = run_preflight(capsys, *args, f'--input={tmp_path / "in" / "c.tfrecord"}')
  assert rc == 0 and report['sample'] == {**report['sample'], 'instances': 1, 'scored': 1}
  assert report['errors'] == {} and not report['estimate']['exact']
  # A line within it, cut: not in the sample.
  monkeypatch.setattr(preflight, 'SAMPLE_BYTES_PER_FILE', 600)
  rc, report, _ = run_preflight(capsys, *args, f'--input={tmp_path / "in" / "a.jsonl"}')
  assert rc == 0 and report['sample'] == {**report['sample'], 'instances': 1, 'scored': 1}
  assert not report['estimate']['exact'] and report['errors'] == {}


def test_a_line_larger_than_the_sample_reads_has_the_runs_error(capsys, tmp_path, model_dir,
                                                                monkeypatch):
  """Lines larger than what preflight reads of a file (its byte budget made
  small here): the error of each is the run's, size and all: line feed,
  carriage return before it (also one at the budget's very end), a byte
  order mark, a last line without a line feed, a gzip file."""
  monkeypatch.setattr(preflight, 'SAMPLE_BYTES_PER_FILE', 2048)
  huge = ('[' + '2, ' * 1000 + '2]').encode()
  files = {
      'a-lf.jsonl': b'[1]\n' + huge + b'\n[3]\n',
      'b-crlf.jsonl': b'[1]\r\n' + huge + b'\r\n[3]\r\n',
      # The carriage return is the last byte the budget reads, its line feed the next.
      'c-cr-at-cut.jsonl': b'[1]\r\n' + huge[:2047 - 5 - 1] + b']\r\n[3]\r\n',
      'd-bom.jsonl': b'\xef\xbb\xbf' + huge + b'\n[3]\n',
      'e-no-lf.jsonl': b'[1]\n' + huge,
      'f-gzip.jsonl.gz': gzip.compress(b'[1]\n' + huge + b' ' * 5000 + b'\n[3]\n'),
  }
  assert files['c-cr-at-cut.jsonl'][2047:2049] == b'\r\n'
  os.makedirs(tmp_path / 'in')
  for name, data in files.items():
    (tmp_path / 'in' / name).write_bytes(data)
  args = [f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in" / "*"}',
          '--max_instance_bytes=1500']
  rc, report, _ = run_preflight(capsys, *args)
  assert rc == 0
  messages = {m['message'] for m in report['errors']['parse']['messages']}
  assert report['errors']['parse']['count'] == len(files)
  assert not any('at least' in m for m in messages)

  run = tmp_path / 'out'
  assert cli.main([*args, f'--output={run}', '--max_error_fraction=1']) == 0
  capsys.readouterr()
  run_messages = {e['error']['message'] for e in read_jsonl(str(run / 'errors-*'))}
  assert messages == run_messages
  assert len(run_messages) == 3  # 3003 bytes (four files), 2042, 8003


# -- exit status -------------------------------------------------------------------------

def test_exit_non_zero_when_no_sampled_instance_can_be_scored(capsys, tmp_path, model_dir):
  model = f'--model={model_dir / "ragged"}'
  data = write_lines(str(tmp_path / 'neg.jsonl'), [f'[-{i}, -1]' for i in range(1, 50)])
  rc, out, err = run_preflight(capsys, model, f'--input={data}', json_report=False)
  assert rc == cli.EXIT_TOO_MANY_ERRORS
  assert 'Results: 0 of 49 scored, 49 failed' in out and 'FAILED: ' in out
  assert re.search(r'\n  model +49 \(49 different messages\)  e.g. neg.jsonl offset 0: '
                   r'InvalidArgumentError: ', out)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      'batch-predict: error: preflight: no sampled instance could be scored: all 49 failed '
      '(model 49); most often: InvalidArgumentError: ')
  # Decoding alone (the model is not loaded) gets through.
  rc, report, _ = run_preflight(capsys, model, f'--input={data}', '--skip_model_check')
  assert rc == 0 and not report['model']['loaded']
  assert report['sample'] == {**report['sample'], 'decoded': 49, 'scored': None}

  empty = tmp_path / 'empty.jsonl'
  empty.write_text('\n  \n')
  rc, report, err = run_preflight(capsys, model, f'--input={empty}')
  assert rc == 3 and report['sample']['instances'] == 0 and report['verdict'] == 'failed'
  assert error_lines(err) == [
      'batch-predict: error: preflight: the input holds no instance (the input file read to '
      'the end)']


# -- a sample with nothing to check ------------------------------------------------------

def write_sparse_parts(directory, n=150, full=3, lines=40):
  """Spark-like output: n part files, each a line feed, but `full` of them
  with `lines` instances, among the files the spread-out sample reads last
  (beyond the first MAX_FILES_OPENED)."""
  order, _ = preflight.spread_order([(f'{i:03d}', 'jsonl', None) for i in range(n)])
  chosen = order[-full:]
  assert not set(chosen) & set(order[:preflight.MAX_FILES_OPENED])
  for i in range(n):
    write_lines(os.path.join(directory, f'part-{i:03d}.jsonl'),
                [keras_line(i * 1000 + j) for j in range(lines)] if i in chosen else [''])
  return full * lines


def test_files_without_instances_do_not_hide_those_with_some(capsys, tmp_path, model_dir):
  """The files of the spread-out sample hold no instance (only a line feed
  each), others do: preflight reads on, largest files first, and checks
  them, instead of failing a run that would succeed."""
  total = write_sparse_parts(str(tmp_path / 'in'))
  args = [f'--model={model_dir / "keras"}', f'--input={tmp_path / "in" / "*.jsonl"}',
          '--key_field=id']
  rc, report, err = run_preflight(capsys, *args)
  assert rc == 0 and err == ''
  assert report['verdict'] == 'ok' and report['files']['searched'] == 3  # 40, 40, then 20
  assert report['sample'] == {**report['sample'], 'instances': 100, 'scored': 100}
  assert report['files']['sampled'] == preflight.MAX_FILES_OPENED + 3
  assert report['estimate']['instances'] == pytest.approx(total, abs=2)
  rc, out, _ = run_preflight(capsys, *args, json_report=False)
  assert '  3 more files read, largest first, as the files of the spread-out sample held no ' \
         'instance' in out


def test_nothing_to_check_is_a_warning_not_a_failure(capsys, tmp_path, model_dir, monkeypatch):
  """When nothing could be sampled but files were not read (or read only in
  part), preflight says so and exits 0: the run may well find instances
  there. --preflight on a run lets it go on."""
  monkeypatch.setattr(preflight, 'SEARCH_FILES', 0)  # no reading on
  total = write_sparse_parts(str(tmp_path / 'in'))
  args = [f'--model={model_dir / "keras"}', f'--input={tmp_path / "in" / "*.jsonl"}',
          '--key_field=id']
  rc, out, err = run_preflight(capsys, *args, json_report=False)
  reason = ('preflight: nothing to check: no instance in what was read (100 of 150 files); the '
            'run reads every file whole and may find instances in what was not read')
  assert rc == 0 and out.rstrip().endswith('WARNING: ' + reason)
  assert err.splitlines() == ['batch-predict: warning: ' + reason]
  assert 'hold no instance' not in out + err
  rc, report, _ = run_preflight(capsys, *args)
  assert rc == 0 and report['verdict'] == 'unchecked' and report['exit_status'] == 0

  rc = cli.main([*args, f'--output={tmp_path / "out"}', '--preflight'])
  out, err = capsys.readouterr()
  assert rc == 0, err
  assert err.splitlines()[0] == f'batch-predict: warning: {reason}; the run goes on'
  with open(tmp_path / 'out' / 'summary.json') as f:
    assert json.load(f)['predictions'] == total

  # The files not read are empty (0 bytes): the input holds no instance.
  order, _ = preflight.spread_order([(f'{i:03d}', 'jsonl', None) for i in range(150)])
  for i in order[preflight.MAX_FILES_OPENED:]:
    open(tmp_path / 'in' / f'part-{i:03d}.jsonl', 'w').close()
  rc, report, err = run_preflight(capsys, *args)
  assert rc == 3 and report['verdict'] == 'failed'
  assert error_lines(err) == ['batch-predict: error: preflight: the input holds no instance '
                              '(all 150 input files read to the end)']


def test_a_csv_header_larger_than_the_sample_reads(capsys, tmp_path, model_dir, monkeypatch):
  """A file read only in part is not counted exactly, nor said to hold no
  instance."""
  monkeypatch.setattr(preflight, 'SAMPLE_BYTES_PER_FILE', 2048)
  extra = [f'extra_{i:04d}' for i in range(300)]
  data = write_lines(str(tmp_path / 'wide.csv'), [','.join(['id', 'features', 'bucket'] + extra)]
                     + [f'a-{i},"[0.5, 1.5, 2.5]",{i % 10},' + ','.join('0' * len(extra))
                        for i in range(20)])
  rc, report, err = run_preflight(capsys, f'--model={model_dir / "keras"}', f'--input={data}')
  assert rc == 0 and report['verdict'] == 'unchecked'
  assert report['files']['sampled_files'] == [
      {'path': data, 'format': 'csv', 'instances': 0, 'count': None}]
  assert not report['estimate']['exact'] and report['estimate']['files_unknown'] == 1
  assert error_lines(err) == [] and 'only in part' in err


# -- request files larger than the sample reads ---------------------------------------------

def request_body(ids, **fields):
  return json.dumps({**fields, 'instances': [json.loads(keras_line(i)) for i in ids]})


def test_a_large_request_file_is_sampled_from_its_start(capsys, tmp_path, model_dir,
                                                        monkeypatch):
  """A request file larger than JSON_SAMPLE_MAX_BYTES (made small here),
  stored or once decompressed, is sampled from the start of its
  "instances", never read whole: its gzip form through a bounded
  decompressing reader."""
  monkeypatch.setattr(preflight, 'JSON_SAMPLE_MAX_BYTES', 64 << 10)
  body = request_body(range(4000)).encode()
  assert len(body) > 64 * 4096  # the run's limit with --max_instance_bytes=4096 (below)
  os.makedirs(tmp_path / 'in')
  (tmp_path / 'in' / 'big.json').write_bytes(body)
  (tmp_path / 'in' / 'small-gzip.json.gz').write_bytes(gzip.compress(body))
  assert os.path.getsize(tmp_path / 'in' / 'small-gzip.json.gz') < 64 << 10
  model = f'--model={model_dir / "keras"}'
  for name in ('big.json', 'small-gzip.json.gz'):
    path = str(tmp_path / 'in' / name)
    rc, report, err = run_preflight(capsys, model, f'--input={path}', '--key_field=id')
    assert rc == 0, err
    assert report['sample'] == {**report['sample'], 'instances': 100, 'scored': 100}
    assert report['files']['request_files_sampled_from_their_start'] == [path]
    assert report['files']['sampled_files'] == [
        {'path': path, 'format': 'json', 'instances': 100, 'count': None}]
    assert not report['estimate']['exact']
    assert report['estimate']['instances'] == pytest.approx(4000, rel=0.02)
  rc, out, _ = run_preflight(capsys, model, f'--input={tmp_path / "in" / "*"}', json_report=False)
  assert rc == 0
  assert ('  2 request files larger than 64.0 KiB sampled from the start of "instances" (the '
          'run parses each whole)') in out

  # Larger once decompressed than the run reads (64 x --max_instance_bytes):
  # the run's record, read no further than the run reads.
  gz = str(tmp_path / 'in' / 'small-gzip.json.gz')
  args = [model, f'--input={gz}', '--max_instance_bytes=4096']
  rc, report, _ = run_preflight(capsys, *args)
  assert rc == 3 and report['sample']['instances'] == 1
  message = report['errors']['parse']['example']['error']['message']
  assert message == ('the request file holds more than 262144 bytes (64 x --max_instance_bytes); '
                     'it was not read')
  assert cli.main([*args, f'--output={tmp_path / "out"}']) == cli.EXIT_TOO_MANY_ERRORS
  capsys.readouterr()
  assert [e['error']['message'] for e in read_jsonl(str(tmp_path / 'out' / 'errors-*'))] == [
      message]


def test_the_start_of_a_large_request_file_has_the_runs_errors(capsys, tmp_path, model_dir,
                                                              monkeypatch):
  """Where the start of a large request file is already not valid, the
  sample holds the run's record for the file, message and all; a body
  whose instances its start cannot tell (columnar "inputs") is listed as
  not sampled."""
  monkeypatch.setattr(preflight, 'JSON_SAMPLE_MAX_BYTES', 16 << 10)
  good = [keras_line(i) for i in range(600)]
  bodies = {
      'a-syntax.json': '{"instances": [' + ', '.join(good[:5]) + ', {"id": 1,, "x": 2}, '
                       + ', '.join(good) + ']}',
      'b-delimiter.json': '{"instances": [' + ', '.join(good[:5]) + '; ' + ', '.join(good)
                          + ']}',
      'c-signature.json': request_body(range(600), signature_name='nope'),
      'd-deep.json': '{"instances": [' + '[' * 1100 + ']' * 1100 + ', ' + ', '.join(good)
                     + ']}',
      'e-surrogate.json': '{"instances": [{"id": "\\ud800"}, ' + ', '.join(good) + ']}',
      'f-number.json': '{"instances": [' + ', '.join(good[:3]) + ', {"id": 1e400}, '
                       + ', '.join(good) + ']}',
      'g-twice.json': '{"instances": [], "x": 1, ' + request_body(range(600))[1:],
      'h-columnar.json': json.dumps({'inputs': {'features': [[0.5, 1.5, 2.5]] * 1500,
                                                'bucket': [1] * 1500}}),
  }
  os.makedirs(tmp_path / 'in')
  for name, body in bodies.items():
    assert len(body) > 16 << 10
    (tmp_path / 'in' / name).write_text(body)
  args = [f'--model={model_dir / "keras"}', f'--input={tmp_path / "in" / "*"}',
          '--preflight_instances=200']
  rc, report, _ = run_preflight(capsys, *args)
  assert rc == 3  # no sampled instance (each file one error) could be scored
  assert report['files']['not_sampled_large_request_files'] == [
      str(tmp_path / 'in' / 'h-columnar.json')]
  assert report['errors']['parse']['count'] == 7 and set(report['errors']) == {'parse'}
  messages = {m['message'] for m in report['errors']['parse']['messages']}

  assert cli.main([*args, f'--output={tmp_path / "out"}', '--max_error_fraction=1']) == 0
  capsys.readouterr()
  run = {os.path.basename(e['filename']): e['error']['message']
         for e in read_jsonl(str(tmp_path / 'out' / 'errors-*'))}
  assert sorted(run) == sorted(bodies)[:-1]
  assert messages == set(run.values())
  assert run['d-deep.json'] == 'invalid JSON: nested deeper than 1024 levels'


# -- field names -----------------------------------------------------------------------------

@pytest.mark.parametrize('name, seen, expected', [
    ('CustomerID', ['customer_id', 'ID', 'age'], 'customer_id'),  # case, `_`
    ('customer-id', ['CustomerId', 'age'], 'CustomerId'),
    ('Labl', ['label', 'age'], 'label'),
    ('lable', ['label', 'labels'], 'label'),
    ('idd', ['id', 'bucket'], 'id'),
    ('not', ['note', 'id'], 'note'),
    ('income', ['income_usd', 'id'], 'income_usd'),
    ('ts', ['age', 'id', 'income', 'label', 'tenure_months', 'visits_per_week'], None),
    ('CustomerID', ['ID', 'age'], None),  # a small part of the name
    ('customer_id', ['id', 'age', 'income'], None),
    ('x', ['y', 'xy'], None),
    ('score', [], None),
])
def test_a_close_match_among_the_fields(name, seen, expected):
  assert preflight._close(name, seen) == expected


def test_a_key_field_in_another_case_is_suggested(capsys, tmp_path, model_dir):
  data = write_lines(str(tmp_path / 'in.jsonl'), [keras_line(i, key='customer_id')
                                                  for i in range(20)])
  rc, out, err = run_preflight(capsys, f'--model={model_dir / "keras"}', f'--input={data}',
                               '--key_field=CustomerID', '--passthrough_fields=Bucket,ts',
                               json_report=False)
  assert rc == 3
  assert ("--key_field 'CustomerID': MISSING from every sampled instance: each is a schema error "
          "in the run; did you mean 'customer_id'?") in out
  assert "passthrough 'Bucket': in no sampled instance (written as null); did you mean " \
         "'bucket'?" in out
  assert "passthrough 'ts': in no sampled instance (written as null)\n" in out


# -- --json: strict JSON -----------------------------------------------------------------------

def test_the_json_report_is_strict_json(capsys, tmp_path, model_dir):
  """Raw values that are not finite numbers (NaN, Infinity: TF Serving
  accepts them) in an error record's key are strings in the report."""
  data = write_lines(str(tmp_path / 'in.jsonl'), [
      '{"id": NaN, "features": "x", "bucket": 1}',
      '{"id": -Infinity, "features": [1, 2, 3], "bucket": 1.5}',
      keras_line(1)])
  rc = cli.main(['preflight', f'--model={model_dir / "keras"}', f'--input={data}',
                 '--key_field=id', '--json'])
  out, _ = capsys.readouterr()
  assert rc == 0

  def refuse(constant):
    raise ValueError(f'not JSON: {constant}')
  report = json.loads(out, parse_constant=refuse)
  assert report['errors']['schema']['example']['id'] == 'NaN'
  assert report['errors']['schema']['count'] == 2
  json.dumps(report, allow_nan=False)


@pytest.mark.parametrize('args, expected', [
    (['--model={tmp}/missing'], 'does not exist'),
    (['--max_batch_sise=3'], 'unknown option --max_batch_sise'),
    (['--preflight_instances=0'], '--preflight_instances must be at least 1'),
    (['--runner=NoSuchRunner'], "--runner: unknown runner 'NoSuchRunner'"),
    (['--input={tmp}/none/*.jsonl'], 'none/*.jsonl matches no file'),
])
def test_a_configuration_mistake_is_one_line(capsys, tmp_path, model_dir, args, expected):
  data = write_lines(str(tmp_path / 'in.jsonl'), ['[1]'])
  args = [a.format(tmp=tmp_path) for a in args]
  defaults = [f'--model={model_dir / "ragged"}', f'--input={data}']
  given = {a.split('=')[0] for a in args}
  rc = cli.main(['preflight', *[a for a in defaults if a.split('=')[0] not in given], *args])
  out, err = capsys.readouterr()
  assert rc == cli.EXIT_CONFIG_ERROR and out == ''
  assert len(err.strip().splitlines()) == 1 and err.startswith('batch-predict: error: ')
  assert expected in err


# -- --preflight on a run ------------------------------------------------------------------

def test_preflight_on_a_run_stops_it_or_lets_it_go_on(capsys, tmp_path, model_dir):
  data = write_lines(str(tmp_path / 'in' / 'part.jsonl'), [keras_line(i) for i in range(500)])
  output = tmp_path / 'out'
  args = [f'--model={model_dir / "keras"}', f'--input={data}', f'--output={output}']
  assert cli.main([*args, '--key_field=id']) == 0
  capsys.readouterr()
  before = {name: (output / name).read_bytes() for name in os.listdir(output)}

  rc = cli.main([*args, '--key_field=idd', '--preflight'])
  out, err = capsys.readouterr()
  assert rc == cli.EXIT_TOO_MANY_ERRORS
  assert "--key_field 'idd': MISSING from every sampled instance" in out
  assert 'predictions' not in out  # no summary table: nothing ran
  assert error_lines(err) == [
      "batch-predict: error: preflight: no sampled instance could be scored: all 100 failed "
      "(schema 100); --key_field 'idd' is in none of them (did you mean 'id'?); the run was "
      "not started (nothing was written)"]
  # The previous result is as it was; no lock, no staging left.
  assert {name: (output / name).read_bytes() for name in os.listdir(output)} == before

  rc = cli.main([*args, '--key_field=id', '--passthrough_fields=note', '--preflight'])
  out, err = capsys.readouterr()
  assert rc == 0, err
  assert out.index('OK: 100 of 100 sampled instances scored') < out.index('predictions ')
  predictions = read_jsonl(str(output / 'predictions-*'))
  assert sorted(p['id'] for p in predictions) == [f'a-{i:06d}' for i in range(500)]
  assert all(p['note'] == 'x' for p in predictions)
  with open(output / 'summary.json') as f:
    assert json.load(f)['predictions'] == 500


# -- the launch scripts ----------------------------------------------------------------

def printed_job_args(script, *args, **env):
  clean = {k: v for k, v in os.environ.items() if k not in (
      'MODEL', 'INPUT', 'OUTPUT', 'PROJECT', 'TEMP_LOCATION', 'SKIP_PREFLIGHT')}
  proc = subprocess.run(['bash', os.path.join(ROOT, 'launch', script), '--print_only', *args],
                        env={**clean, 'PYTHON': sys.executable, **env},
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  words = shlex.split(proc.stdout)
  assert words[:3] == [sys.executable, '-m', 'tf_batch_predict.pipeline']
  return words[3:]


def test_launch_scripts_check_a_sample_before_submitting_to_a_cluster():
  from tf_batch_predict.pipeline.options import parse_args
  dataflow = ['--model=gs://b/m', '--input=gs://b/i/*', '--output=gs://b/o', '--project=p',
              '--temp_location=gs://b/t']
  args = printed_job_args('dataflow.sh', *dataflow)
  assert args.count('--preflight') == 1 and parse_args(args).preflight
  for skip in (['--skip_preflight'], ['--skip_preflight=1']):
    args = printed_job_args('dataflow.sh', *dataflow, *skip)
    assert '--preflight' not in args and not parse_args(args).preflight
  assert '--preflight' not in printed_job_args('dataflow.sh', *dataflow, SKIP_PREFLIGHT='1')
  assert '--preflight' in printed_job_args('dataflow.sh', *dataflow, SKIP_PREFLIGHT='0')
  # Given by the user: once.
  assert printed_job_args('dataflow.sh', *dataflow, '--preflight').count('--preflight') == 1
  local = ['--model=m', '--input=i', '--output=o']
  assert '--preflight' in printed_job_args('portable.sh', *local)
  assert '--preflight' not in printed_job_args('local.sh', *local)
  # The runner the job gets decides, the user's over the script's.
  assert '--preflight' in printed_job_args('local.sh', *local, '--runner', 'DataflowRunner')
  assert '--preflight' not in printed_job_args('portable.sh', *local, '--runner=DirectRunner')
  proc = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'dataflow.sh'), '--help'],
                        capture_output=True, text=True)
  assert '--skip_preflight' in proc.stdout and 'SKIP_PREFLIGHT=1' in proc.stdout
