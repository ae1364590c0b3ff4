"""batch-predict join: predictions and errors rejoined to their instances,
by key or by file and position, for every input and output format."""
import csv
import glob
import gzip
import io
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tf_batch_predict.pipeline import cli
from tests.helpers import read_jsonl, run_job
from tests.test_runs import keras_args, keras_lines


def join(*args, status=0):
  rc = cli.main(['join', *args])
  assert rc == status
  return rc


def joined_rows(out, fmt='jsonl'):
  if fmt == 'parquet':
    tables = [pq.read_table(p) for p in sorted(glob.glob(f'{out}/joined-*.parquet'))]
    return [row for t in tables for row in t.to_pylist()]
  return read_jsonl(f'{out}/joined-*-of-*.jsonl')


def unmatched(out):
  return read_jsonl(f'{out}/unmatched-*-of-*.jsonl')


def join_summary(out):
  with open(f'{out}/summary.json') as f:
    return json.load(f)


def shuffle_outputs(out, seed=0):
  """Rewrites the run's JSON Lines outputs shuffled, over three files each:
  the join must not depend on their order or sharding."""
  rng = random.Random(seed)
  for name in ('predictions', 'errors'):
    lines = []
    for path in glob.glob(f'{out}/{name}-*.jsonl'):
      with open(path) as f:
        lines += [line for line in f if line.strip()]
      os.remove(path)
    rng.shuffle(lines)
    for i in range(3):
      with open(f'{out}/{name}-{i:05d}-of-00003.jsonl', 'w') as f:
        f.writelines(lines[i::3])


def test_shuffled_outputs_with_failures_rejoin_by_key(tmp_path, model_dir):
  lines = keras_lines('k', 300, bad_every=7)
  lines[10] = '{"id": "broken", "features": [1, 2'  # a parse error: no key known
  lines[11] = json.dumps({'features': [0.1, 0.2, 0.3], 'bucket': 1})  # no key: schema error
  # Fields the join must write exactly as read: a big integer, a decimal's
  # own digits, text outside ASCII, a nested object.
  lines[12] = ('{"id": "exact", "features": [0.5, 1.0, -0.5], "bucket": 2, '
               '"big": 123456789012345678901234567890, "price": 1.10, "name": "Zoë \\u00e9", '
               '"nested": {"a": [1, 2.50]}}')
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  predictions, errors, _ = run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))
  assert errors and predictions
  shuffle_outputs(run_out)

  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}')

  rows = joined_rows(out)
  assert len(rows) == 300  # one row per instance
  by_id = {r['id']: r for r in rows if 'id' in r}
  for p in predictions:
    row = by_id[p['id']]
    assert row['score'] == p['score'] and row['probs'] == p['probs']
    assert 'error' not in row
  for e in errors:
    if 'id' in e:
      assert by_id[e['id']]['error'] == e['error']
      assert 'score' not in by_id[e['id']]
  assert {r['error']['category'] for r in rows if 'id' not in r} == {'parse', 'schema'}
  assert [r for r in rows if 'raw' in r][0]['raw'] == lines[10]
  text = open(glob.glob(f'{out}/joined-*.jsonl')[0]).read()
  exact = [line for line in text.splitlines() if '"exact"' in line][0]
  assert '"big":123456789012345678901234567890' in exact
  assert '"price":1.10' in exact and '"nested":{"a":[1,2.50]}' in exact
  assert json.loads(exact)['name'] == 'Zoë é'
  summary = join_summary(out)
  assert summary['joined'] == len(predictions)
  assert summary['failed'] == len(errors)
  assert summary['instances'] == 300 and summary['exit_status'] == 0
  assert summary['joined_by'] == "key field 'id'"  # from the run's summary.json
  assert unmatched(out) == []


def test_missing_extra_and_shared_keys_are_reported(tmp_path, model_dir):
  lines = keras_lines('m', 40)
  lines.append(lines[5])  # a second instance with key m5
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))
  path = glob.glob(f'{run_out}/predictions-*.jsonl')[0]
  records = [json.loads(line) for line in open(path)]
  kept = [r for r in records if r['id'] not in ('m1', 'm2')]  # two outputs lost
  kept.append({'id': 'stranger', 'score': [0.5], 'probs': [0.5, 0.5]})
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)

  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}',
       status=3)

  rows = joined_rows(out)
  assert len(rows) == 41  # every instance has its row, with outputs or without
  summary = join_summary(out)
  assert summary['instances_without_output'] == 2
  assert summary['outputs_without_instance'] == 1
  assert summary['ambiguous'] == 2  # both instances keyed m5
  assert summary['joined'] == 41 - 2 - 2
  reasons = sorted((u['reason'], u.get('key')) for u in unmatched(out))
  assert reasons == [('ambiguous', '"m5"'), ('ambiguous', '"m5"'),
                     ('instance_without_output', '"m1"'), ('instance_without_output', '"m2"'),
                     ('output_without_instance', '"stranger"')]
  for row in rows:
    if row['id'] in ('m1', 'm2', 'm5'):
      assert 'score' not in row and 'error' not in row


def test_gzip_jsonl_rejoins_by_location(tmp_path, model_dir):
  lines = [json.dumps({'features': [i / 10, 1.0, -0.5], 'bucket': i % 5, 'note': f'n{i}'})
           for i in range(200)]
  lines[3] = '{"features": [1, 2, 3], "bucket": "x"}'  # schema error
  lines[4] = 'not json'
  lines.insert(50, '')  # blank lines are skipped alike by the run and the join
  folder = tmp_path / 'data' / 'sub'
  folder.mkdir(parents=True)
  with gzip.open(folder / 'in.jsonl.gz', 'wt') as f:
    f.write('\n'.join(lines) + '\n')
  with gzip.open(tmp_path / 'data' / 'other.jsonl.gz', 'wt') as f:
    f.write('\n'.join(lines[:20]) + '\n')
  pattern = f'{tmp_path}/data/**.jsonl.gz'
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  predictions, errors, _ = run_job(run_out, f'--model={model_dir / "keras"}',
                                   '--signature=serve', f'--input={pattern}')
  assert {p['filename'] for p in predictions} == {'sub/in.jsonl.gz', 'other.jsonl.gz'}
  shuffle_outputs(run_out, seed=1)

  join(f'--input={pattern}', f'--predictions={run_out}', f'--output={out}')

  rows = joined_rows(out)
  assert len(rows) == 200 + 20
  expected = {}
  for p in predictions:
    expected.setdefault(p['score'][0], []).append(p)
  for row in rows:
    if 'error' in row:
      continue
    assert row['note'].startswith('n')
    assert 'filename' not in row  # the instance's own fields and the outputs only
  by_note = {}
  for row in rows:
    by_note.setdefault(row.get('note'), []).append(row)
  # Each prediction went to the instance at its file and offset.
  raw_by_location = {}
  for name, content in (('sub/in.jsonl.gz', lines), ('other.jsonl.gz', lines[:20])):
    offset = 0
    for line in content:
      raw_by_location[(name, offset)] = line
      offset += len(line.encode()) + 1
  for p in predictions:
    instance = json.loads(raw_by_location[(p['filename'], p['offset'])])
    assert any(r['score'] == p['score'] and r['features'] == instance['features']
               for r in by_note[instance['note']])
  summary = join_summary(out)
  assert summary['joined_by'] == 'file and position'
  assert summary['joined'] == len(predictions) and summary['failed'] == len(errors)
  assert summary['exit_status'] == 0


def test_csv_rejoins_by_location_and_output_names_clash_by_the_jobs_rule(tmp_path, model_dir):
  model = model_dir / 'keras'
  rows = [{'features': f'[{i / 10}, 1.0, -0.5]', 'bucket': str(i % 5), 'score': f's{i}'}
          for i in range(60)]
  rows[7]['bucket'] = 'seven'
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, ['features', 'bucket', 'score'])
  writer.writeheader()
  writer.writerows(rows)
  (tmp_path / 'in.csv').write_text(buffer.getvalue())
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  predictions, errors, _ = run_job(run_out, f'--model={model}', '--signature=serve',
                                   f'--input={tmp_path / "in.csv"}')
  assert len(errors) == 1
  shuffle_outputs(run_out, seed=2)

  join(f'--input={tmp_path / "in.csv"}', f'--predictions={run_out}', f'--output={out}')

  joined = joined_rows(out)
  assert len(joined) == 60
  by_offset = {p['offset']: p for p in predictions}
  text = (tmp_path / 'in.csv').read_bytes()
  offsets = [i + 1 for i, b in enumerate(text) if b == ord('\n')][:-1]  # rows after the header
  for row in joined:
    # The instance's `score` cell keeps its name; the model's output is score_output.
    assert row['score'].startswith('s')
    i = int(row['score'][1:])
    if i == 7:
      assert row['error']['category'] == 'schema' and 'score_output' not in row
    else:
      assert row['score_output'] == by_offset[offsets[i]]['score']
      assert row['bucket'] == str(i % 5)  # CSV cells as read: text


@pytest.mark.parametrize('prediction_format', ['parquet', 'tfrecord'])
def test_parquet_and_tfrecord_predictions_rejoin(tmp_path, model_dir, prediction_format):
  lines = keras_lines('p', 120, bad_every=9)
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  rc = cli.main([f'--output={run_out}', *keras_args(model_dir, tmp_path / 'in.jsonl'),
                 f'--output_format={prediction_format}', '--max_error_fraction=1'])
  assert rc == 0
  errors = read_jsonl(f'{run_out}/errors-*.jsonl')

  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}')

  rows = joined_rows(out)
  assert len(rows) == 120
  failed = [r for r in rows if 'error' in r]
  assert sorted(r['id'] for r in failed) == sorted(e['id'] for e in errors)
  ok = [r for r in rows if 'error' not in r]
  assert all(len(r['probs']) == 2 for r in ok)
  assert join_summary(out)['joined'] == 120 - len(errors)


def test_parquet_inputs_rejoin_by_index_into_parquet_rows(tmp_path, model_dir):
  table = pa.table({'features': [[i / 10, 1.0, -0.5] for i in range(80)],
                    'bucket': pa.array([i % 5 for i in range(80)], pa.int64()),
                    'weight': [float(i) for i in range(80)]})
  pq.write_table(table, tmp_path / 'in.parquet', row_group_size=25)
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  predictions, _, _ = run_job(run_out, f'--model={model_dir / "keras"}', '--signature=serve',
                              f'--input={tmp_path / "in.parquet"}')

  join(f'--input={tmp_path / "in.parquet"}', f'--predictions={run_out}', f'--output={out}',
       '--output_format=parquet')

  rows = joined_rows(out, 'parquet')
  assert len(rows) == 80
  by_index = {p['index']: p for p in predictions}
  for row in rows:
    i = int(row['weight'])
    assert row['bucket'] == i % 5
    assert row['score'] == by_index[i]['score']  # the run's own value, carried exactly
  schema = pq.read_schema(glob.glob(f'{out}/joined-*.parquet')[0])
  assert schema.field('bucket').type == pa.int64()
  assert schema.field('weight').type == pa.float64()


def test_parquet_rows_of_mixed_json_types(tmp_path, model_dir):
  lines = keras_lines('t', 30)
  lines = [json.dumps({**json.loads(line), 'tag': i if i % 2 else f'text{i}'})
           for i, line in enumerate(lines)]
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))

  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}',
       '--output_format=parquet')

  rows = joined_rows(out, 'parquet')
  assert len(rows) == 30
  # A field that is a number in some rows and a string in others: JSON text.
  assert sorted(r['tag'] for r in rows) == sorted(
      json.dumps(i if i % 2 else f'text{i}') for i in range(30))


def test_configuration_mistakes_are_one_line(tmp_path, model_dir, capsys):
  (tmp_path / 'in.jsonl').write_text('\n'.join(keras_lines('c', 5)) + '\n')
  run_out = tmp_path / 'run'
  run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))
  os.symlink(run_out, tmp_path / 'link')
  os.makedirs(tmp_path / 'incomplete')  # a killed run's: shards without summary.json
  for name in ('predictions', 'errors'):
    with open(tmp_path / 'incomplete' / f'{name}-00000-of-00001.jsonl', 'w') as f:
      f.write('{"id": "c0"}\n' if name == 'predictions' else '')
  capsys.readouterr()
  cases = [
      ([f'--input={tmp_path}/none*.jsonl', f'--predictions={run_out}',
        f'--output={tmp_path}/o1'], 'matches no file'),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={tmp_path}/nothing',
        f'--output={tmp_path}/o2'], 'holds no predictions'),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={run_out}', f'--output={tmp_path}/o3',
        '--key_field='], 'carry no file name'),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={run_out}', f'--output={run_out}'],
       "holds a run's result"),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={run_out}',
        f'--output={tmp_path}/link/'], "holds a run's result"),  # the same folder by a link
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={run_out}', f'--output={tmp_path}/o5',
        '--key_field=nosuch'], "have no field 'nosuch'"),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={run_out}', f'--output={tmp_path}/o6',
        '--max_instance_bytes=0'], 'at least 1'),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={tmp_path}/incomplete',
        f'--output={tmp_path}/o7'], 'no summary.json'),
      ([f'--input={tmp_path}/in.jsonl', f'--predictions={run_out}', f'--output={tmp_path}/o4',
        '--output_format=csv'], 'invalid choice'),
  ]
  for args, expected in cases:
    assert cli.main(['join', *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_tfrecord_and_request_file_inputs_rejoin_by_index(tmp_path, model_dir):
  from tests.test_formats import example_bytes, write_tfrecords
  records = [example_bytes({'features': [i / 10, 1.0, -0.5], 'bucket': i % 5,
                            'tag': f't{i}'}) for i in range(30)]
  records.insert(4, b'\x01\x02 not an example')
  data = tmp_path / 'data'
  data.mkdir()
  write_tfrecords(str(data / 'a.tfrecord'), records)
  (data / 'rows.json').write_text(json.dumps({'instances': [
      {'features': [i / 10, 1.0, -0.5], 'bucket': i % 5, 'tag': f'r{i}'} for i in range(12)]}))
  (data / 'columns.json').write_text(json.dumps({'inputs': {
      'features': [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], 'bucket': [1, 2]}}))
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  predictions, errors, _ = run_job(run_out, f'--model={model_dir / "keras"}',
                                   '--signature=serve', f'--input={data}/*')
  shuffle_outputs(run_out, seed=3)

  join(f'--input={data}/*', f'--predictions={run_out}', f'--output={out}')

  rows = joined_rows(out)
  assert len(rows) == 31 + 12 + 2
  assert [r['error']['category'] for r in rows if 'error' in r] == ['parse']
  tags = sorted(r['tag'] for r in rows if 'tag' in r)
  assert tags == sorted([f't{i}' for i in range(30)] + [f'r{i}' for i in range(12)])
  by_location = {(p['filename'], p['index']): p for p in predictions}
  # TFRecord features are lists; a one-value feature is written as its value.
  for row in rows:
    if row.get('tag', '').startswith('t'):
      i = int(row['tag'][1:])
      assert row['score'] == by_location[('a.tfrecord', i + (i >= 4))]['score']
      assert row['bucket'] == i % 5
  summary = join_summary(out)
  assert summary['joined'] == len(predictions) and summary['failed'] == len(errors) == 1


def test_a_join_by_location_refuses_other_files_and_unreadable_instances_get_no_outputs(
    tmp_path, model_dir, capsys):
  lines = [json.dumps({'features': [i / 10, 1.0, -0.5], 'bucket': i % 5, 'pad': 'x' * (i * 3)})
           for i in range(40)]
  for folder in ('a', 'b'):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / 'in.jsonl').write_text('\n'.join(lines[:30 if folder == 'b' else 40])
                                                + '\n')
  run_out = tmp_path / 'run'
  run_job(run_out, f'--model={model_dir / "keras"}', '--signature=serve',
          f'--input={tmp_path}/a/*.jsonl')
  capsys.readouterr()
  # Another folder's file of the same name would pair with a's predictions.
  assert cli.main(['join', f'--input={tmp_path}/b/*.jsonl', f'--predictions={run_out}',
                   f'--output={tmp_path}/j1']) == 2
  assert 'give --input as the run had it' in capsys.readouterr().err
  # A smaller --max_instance_bytes than the run's: the long lines cannot be
  # read, and they must not be paired with the outputs the run wrote for them.
  join(f'--input={tmp_path}/a/*.jsonl', f'--predictions={run_out}', f'--output={tmp_path}/j2',
       '--max_instance_bytes=100', status=3)
  rows = joined_rows(tmp_path / 'j2')
  assert len(rows) == 40
  unreadable = [r for r in rows if 'raw' in r]
  assert unreadable and all('score' not in r for r in unreadable)
  assert all('score' in r for r in rows if 'raw' not in r)
  summary = join_summary(tmp_path / 'j2')
  assert summary['instances_unreadable'] == len(unreadable)
  assert {u['reason'] for u in unmatched(tmp_path / 'j2')} == {'instance_unreadable'}


def test_records_that_cannot_be_fields_are_written_as_the_run_writes_them(tmp_path, model_dir):
  good = keras_lines('r', 5)
  lines = [line.encode() for line in good]
  lines.append(b'{"id": "latin", "features": [1, 2, 3], "bucket": "\xe9"}')  # not UTF-8
  lines.append(b'{"id": "dup", "features": [1, 2, 3], "bucket": 1, "a": 1, "a": 2}')
  (tmp_path / 'in.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  _, errors, _ = run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))
  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}')
  rows = joined_rows(out)
  latin = [r for r in rows if 'raw_b64' in r]
  assert len(latin) == 1 and latin[0]['error']['category'] == 'parse'
  assert latin[0]['raw_b64'] == next(e['raw_b64'] for e in errors if 'raw_b64' in e)
  # A field given twice: which value was meant is unknown, so the record as read.
  dup = [r for r in rows if 'raw' in r]
  assert len(dup) == 1 and dup[0]['raw'] == lines[-1].decode()
  assert 'score' in dup[0]  # the run scored it (the repeated field is not an input)


def test_an_instance_field_named_error_keeps_its_name_and_evaluate_still_knows_failures(
    tmp_path, model_dir):
  from tf_batch_predict.pipeline import evaluate
  lines = [json.dumps({**json.loads(line), 'error': 0.25, 'target': i / 10})
           for i, line in enumerate(keras_lines('x', 30, bad_every=6))]
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  predictions, errors, _ = run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))
  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}')
  rows = joined_rows(out)
  assert all(r['error'] == 0.25 for r in rows)
  failed = [r for r in rows if 'error_output' in r]
  assert len(failed) == len(errors) == 5
  rc = evaluate.main([f'--joined={out}/joined-*.jsonl', '--label_field=target',
                      '--prediction_field=score', f'--output={tmp_path / "ev"}'])
  assert rc == 0
  metrics = json.load(open(tmp_path / 'ev' / 'metrics.json'))
  assert metrics['counts']['evaluated'] == len(predictions) == 25
  assert metrics['counts']['failed_predictions'] == 5


def test_parquet_rows_never_round_big_integers(tmp_path, model_dir):
  lines = [json.dumps({**json.loads(line), 'n': (2 ** 53 + 1 if i == 3 else 1.5),
                       'huge': 2 ** 70 if i == 4 else i})
           for i, line in enumerate(keras_lines('b', 12))]
  (tmp_path / 'in.jsonl').write_text('\n'.join(lines) + '\n')
  run_out, out = tmp_path / 'run', tmp_path / 'joined'
  run_job(run_out, *keras_args(model_dir, tmp_path / 'in.jsonl'))
  join(f'--input={tmp_path / "in.jsonl"}', f'--predictions={run_out}', f'--output={out}',
       '--output_format=parquet')
  rows = {r['id']: r for r in joined_rows(out, 'parquet')}
  assert rows['b3']['n'] == str(2 ** 53 + 1) and rows['b0']['n'] == '1.5'  # JSON text
  assert rows['b4']['huge'] == str(2 ** 70) and rows['b5']['huge'] == '5'


def test_bytes_outputs_from_parquet_predictions_are_base64_as_the_run_writes_them():
  from tf_batch_predict.transforms.rejoin.join import InstanceRow, JoinedRecord, JoinLayout, row_texts
  layout = JoinLayout('id', (), 'parquet', '/')
  row = row_texts(JoinedRecord(InstanceRow(('f', 0), {'id': b'"x"'}), outputs={
      'id': 'x', 'image_bytes': b'ab', 'tokens_bytes': [b'a', b'\xff'], 'text': b'ok'}), layout)
  assert row == {'id': b'"x"', 'image_bytes': b'{"b64":"YWI="}',
                 'tokens_bytes': b'[{"b64":"YQ=="},{"b64":"/w=="}]', 'text': b'"ok"'}
