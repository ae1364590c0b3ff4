"""Every input and output format, end to end, against the model called
directly; a bad record per format; conservation of instances."""
import base64
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import (assert_close_across_batches, assert_conserved, check_keras_predictions,
                           run_job, write_lines)
from tests.models import estimator_reference

KERAS = ('--signature=serve', '--key_field=id')


def keras_instances(n, prefix='k'):
  rng = np.random.default_rng(len(prefix) + n)
  return [{'id': f'{prefix}{i}', 'features': rng.uniform(-1, 1, 3).round(4).tolist(),
           'bucket': int(rng.integers(0, 9))} for i in range(n)]


def check_keras(predictions, instances, model_dir, signature_of):
  check_keras_predictions(predictions, instances, model_dir / 'keras', signature_of)


def example_bytes(features: dict) -> bytes:
  import tensorflow as tf
  feature = {}
  for name, values in features.items():
    values = values if isinstance(values, list) else [values]
    if isinstance(values[0], float):
      feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    elif isinstance(values[0], int):
      feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    else:
      feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[v.encode() for v in values]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(path, records, corrupt_index=None, compress=False):
  """Real TFRecord framing; the record at corrupt_index gets a bad checksum."""
  from tf_batch_predict.transforms.write.shards import tfrecord_frame
  framed = []
  for i, record in enumerate(records):
    frame = bytearray(tfrecord_frame(record))
    if i == corrupt_index:
      frame[-1] ^= 0xFF
    framed.append(bytes(frame))
  opener = gzip.open if compress else open
  with opener(path, 'wb') as f:
    f.write(b''.join(framed))


def test_json_request_files(model_dir, tmp_path, signature_of):
  xs = keras_instances(7, 'j')
  d = tmp_path / 'req'
  d.mkdir()
  (d / 'rows.json').write_text(json.dumps(
      {'signature_name': 'serve', 'instances': xs[:3]}))
  (d / 'columns.json').write_text(json.dumps({'inputs': {
      k: [x[k] for x in xs[3:6]] for k in ('id', 'features', 'bucket')}}))
  (d / 'single.json').write_text(json.dumps(xs[6]))
  (d / 'broken.json').write_text('{"instances": [')
  (d / 'other_signature.json').write_text(json.dumps(
      {'signature_name': 'serving_default', 'instances': xs[:1]}))
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "keras"}', *KERAS,
      f'--input={d / "*.json"}')
  assert_conserved(summary, predictions, errors)
  check_keras(predictions, xs, model_dir, signature_of)
  assert {(e['filename'], e['error']['category']) for e in errors} == {
      ('broken.json', 'parse'), ('other_signature.json', 'parse')}
  assert 'asks for signature' in next(
      e for e in errors if e['filename'] == 'other_signature.json')['error']['message']
  # Location without a key: index only when the file holds several instances.
  predictions, _, _ = run_job(str(tmp_path / 'out2'), f'--model={model_dir / "keras"}',
                              '--signature=serve', f'--input={d}/[rcs]*.json')
  located = sorted((p['filename'], p.get('index')) for p in predictions)
  assert located == sorted([('rows.json', i) for i in range(3)] +
                           [('columns.json', i) for i in range(3)] + [('single.json', None)])


@pytest.mark.parametrize('compress', [False, True])
def test_tfrecord_examples_decoded_into_named_inputs(model_dir, tmp_path, signature_of,
                                                     compress):
  xs = keras_instances(20, 't')
  records = [example_bytes({'id': x['id'], 'features': x['features'],
                            'bucket': x['bucket']}) for x in xs]
  records.insert(5, b'\x01\x02 not an example')
  name = 'data.tfrecord.gz' if compress else 'data.tfrecords'
  write_tfrecords(str(tmp_path / name), records, corrupt_index=9, compress=compress)
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "keras"}', *KERAS,
      f'--input={tmp_path / name}')
  assert_conserved(summary, predictions, errors)
  assert summary['instances_read'] == 21
  corrupt_id = xs[8]['id']  # record 9 after the insertion at 5
  check_keras(predictions, [x for x in xs if x['id'] != corrupt_id], model_dir, signature_of)
  assert sorted((e['index'], e['error']['category']) for e in errors) == [
      (5, 'parse'), (9, 'parse')]
  assert 'checksum' in next(e for e in errors if e['index'] == 9)['error']['message']
  assert base64.b64decode(next(e for e in errors if e['index'] == 5)['raw_b64']) == records[5]


def test_tfrecord_truncated_framing_is_one_error(model_dir, tmp_path):
  records = [example_bytes({'x': [1.0, 2.0]}) for _ in range(3)]
  write_tfrecords(str(tmp_path / 'a.tfrecord'), records)
  with open(tmp_path / 'a.tfrecord', 'ab') as f:
    f.write(b'\x05\x00')  # a partial length header
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "ragged"}',
      f'--input={tmp_path / "a.tfrecord"}', status=4)
  assert [p['total'] for p in predictions] == [3.0, 3.0, 3.0]
  assert len(errors) == 1 and 'framing' in errors[0]['error']['message']
  assert errors[0]['error']['category'] == 'file'
  assert 'after 3 records' in errors[0]['error']['message']
  assert_conserved(summary, predictions, errors)


def test_tfrecord_gzip_cut_short_keeps_every_complete_record(model_dir, tmp_path):
  """A .tfrecord.gz cut short (a writer killed part-way) is read up to its
  damage: every record decompressed whole before it is scored, and the file
  is one `file` error; a file smaller than a read block too."""
  records = [example_bytes({'x': [float(i), 1.0]}) for i in range(3000)]
  write_tfrecords(str(tmp_path / 'whole.tfrecord.gz'), records, compress=True)
  packed = (tmp_path / 'whole.tfrecord.gz').read_bytes()
  (tmp_path / 'cut.tfrecord.gz').write_bytes(packed[:len(packed) * 2 // 3])
  (tmp_path / 'whole.tfrecord.gz').unlink()
  with gzip.open(tmp_path / 'cut.tfrecord.gz', 'rb') as f:  # what survives the cut
    survived = bytearray()
    try:
      while True:
        piece = f.read1(1 << 12)
        if not piece:
          break
        survived += piece
    except EOFError:
      pass
  frame = len(records[0]) + 16  # all records have the same size here
  complete = len(survived) // frame
  assert 1000 < complete < 3000
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "ragged"}',
      f'--input={tmp_path / "cut.tfrecord.gz"}', status=4)
  assert sorted(p['total'] for p in predictions) == sorted(float(i) + 1.0
                                                          for i in range(complete))
  assert len(errors) == 1 and errors[0]['error']['category'] == 'file'
  assert f'after {complete} records' in errors[0]['error']['message']
  assert_conserved(summary, predictions, errors)


@pytest.mark.cross_batch
def test_csv_with_header(model_dir, tmp_path, signature_of):
  instances = [{'key': 10 + i, 'x': [i, 2 * i], 'name': f'n{i}'} for i in range(6)]
  rows = ['name,key,x,ignored'] + [f'{x["name"]},{x["key"]},"{x["x"]}",zz' for x in instances]
  rows.insert(3, 'bad,11')  # a missing column
  rows.insert(5, 'short,12,"[1]",zz')  # wrong shape
  write_lines(str(tmp_path / 'a.csv'), rows)
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "tf1"}', '--signature=predict_scores',
      f'--input={tmp_path / "a.csv"}', '--key_field=key', '--passthrough_fields=ignored')
  assert_conserved(summary, predictions, errors)
  expected = signature_of(model_dir / 'tf1', 'predict_scores',
                          x=np.array([x['x'] for x in instances], np.float32),
                          name=np.array([x['name'].encode() for x in instances], object),
                          key=np.array([x['key'] for x in instances], np.int64))
  by_key = {p['key']: p for p in predictions}
  for i, x in enumerate(instances):
    got = by_key[str(x['key'])]  # CSV values are carried as the text they are
    assert got['key_output'] == x['key'] and got['ignored'] == 'zz'
  assert_close_across_batches([by_key[str(x['key'])]['y'] for x in instances], expected['y'])
  assert sorted((e['error']['category'], e['raw']) for e in errors) == [
      ('parse', 'bad,11'), ('schema', 'short,12,"[1]",zz')]


def test_parquet_list_columns_and_a_wrong_type(model_dir, tmp_path, signature_of):
  xs = keras_instances(30, 'p')
  table = pa.table({'id': [x['id'] for x in xs],
                    'features': pa.array([x['features'] for x in xs], pa.list_(pa.float64())),
                    'bucket': pa.array([x['bucket'] for x in xs], pa.int32())})
  pq.write_table(table, tmp_path / 'good.parquet', row_group_size=7)
  bad = pa.table({'id': ['b0', 'b1'], 'features': [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]],
                  'bucket': ['one', 'two']})  # a string column for an int64 input
  pq.write_table(bad, tmp_path / 'bad.parquet')
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "keras"}', *KERAS,
      f'--input={tmp_path / "*.parquet"}')
  assert_conserved(summary, predictions, errors)
  check_keras(predictions, xs, model_dir, signature_of)
  assert sorted(e['id'] for e in errors) == ['b0', 'b1']
  assert all(e['error']['category'] == 'schema' and 'expects int64' in e['error']['message']
             for e in errors)
  assert {e['index'] for e in errors} == {0, 1}


def test_b64_and_plain_strings(model_dir, tmp_path):
  lines = [json.dumps({'key': 1, 'x': [0, 0], 'name': {'b64': base64.b64encode(b'\xff\xfe\xfd').decode()}}),
           json.dumps({'key': 2, 'x': [0, 0], 'name': 'plain'}),
           json.dumps({'key': 3, 'x': [0, 0], 'name': {'b64': 'not*base64'}})]
  write_lines(str(tmp_path / 'a.jsonl'), lines)
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "tf1"}', '--signature=predict_scores',
      f'--input={tmp_path / "a.jsonl"}', '--key_field=key')
  assert {p['key']: p['name_length'] for p in predictions} == {1: 3, 2: 5}
  assert [(e['key'], e['error']['category']) for e in errors] == [(3, 'schema')]
  assert 'invalid base64' in errors[0]['error']['message']


@pytest.mark.parametrize('signature, output', [
    ('serving_default', 'score'), ('regression', 'outputs'), ('classification', 'scores')])
def test_estimator_style_signature_from_tfrecord_jsonl_and_csv(model_dir, tmp_path,
                                                               signature, output):
  rows = [{'id': i, 'age': 20.0 + i, 'thal': ['fixed', 'normal'][i % 2], 'count': i % 3}
          for i in range(9)]
  write_tfrecords(str(tmp_path / 'a.tfrecord'), [example_bytes(r) for r in rows[:3]])
  write_lines(str(tmp_path / 'b.jsonl'), [json.dumps(r) for r in rows[3:6]] +
              [json.dumps({'id': 99, 'age': 'old', 'thal': 'fixed'})])
  write_lines(str(tmp_path / 'c.csv'), ['id,age,thal,count'] +
              [f'{r["id"]},{r["age"]},{r["thal"]},{r["count"]}' for r in rows[6:]])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "estimator"}', f'--signature={signature}',
      f'--input={tmp_path}/*.*', '--key_field=id')
  assert_conserved(summary, predictions, errors)
  assert [(e['id'], e['error']['category']) for e in errors] == [(99, 'schema')]
  by_id = {int(p['id']): p for p in predictions}
  assert sorted(by_id) == list(range(9))
  for r in rows:
    score = estimator_reference(r['age'], r['thal'], r['count'])
    got = by_id[r['id']]
    if output == 'scores':
      assert got['classes'] == ['no', 'yes']
      assert got['scores'][1] == pytest.approx(1 / (1 + np.exp(-score)), rel=1e-5)
    else:
      assert got[output] == pytest.approx(score, rel=1e-5)


def test_model_conventions_assets_tuple_outputs_one_element_lists(model_dir, tmp_path):
  lines = [json.dumps({'age': [60], 'thal': ['normal']}),  # each feature a one-element list
           json.dumps({'age': 1.5, 'thal': 'reversible'}),
           json.dumps({'age': 2, 'thal': 'unknown'})]
  write_lines(str(tmp_path / 'a.jsonl'), lines)
  predictions, errors, _ = run_job(str(tmp_path / 'out'), f'--model={model_dir / "assets"}',
                                   f'--input={tmp_path / "a.jsonl"}')
  assert errors == []
  got = sorted((p['offset'], p['output_0'], p['output_1']) for p in predictions)
  assert [g[1:] for g in got] == [(121.0, 'NORMAL'), (5.0, 'REVERSIBLE'), (3.0, 'UNKNOWN')]
  write_lines(str(tmp_path / 'b.jsonl'), ['[1, 2]'])
  predictions, errors, _ = run_job(str(tmp_path / 'out2'), f'--model={model_dir / "novars"}',
                                   f'--input={tmp_path / "b.jsonl"}')
  assert not os.path.exists(model_dir / 'novars' / 'variables')
  assert [p['y'] for p in predictions] == [[3.0, 6.0]]


@pytest.mark.cross_batch
def test_parquet_and_tfrecord_outputs_and_output_fields(model_dir, tmp_path):
  import tensorflow as tf
  xs = keras_instances(25, 'o')
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps(x) for x in xs] + ['{"id": "bad"}'])
  base = [f'--model={model_dir / "keras"}', *KERAS, f'--input={tmp_path / "in.jsonl"}']
  reference, _, _ = run_job(str(tmp_path / 'json'), *base)
  reference = {p['id']: p for p in reference}

  _, errors, summary = run_job(str(tmp_path / 'pq'), *base, '--output_format=parquet')
  table = pq.read_table(str(tmp_path / 'pq' / 'predictions-00000-of-00001.parquet'))
  assert table.schema.field('probs').type == pa.list_(pa.float32())
  assert table.schema.field('score').type == pa.list_(pa.float32())
  rows = {r['id']: r for r in table.to_pylist()}
  assert sorted(rows) == sorted(reference) and len(errors) == 1
  # Another run (its own batches) than the reference one.
  keys = sorted(reference)
  assert_close_across_batches([rows[k]['probs'] for k in keys],
                              [reference[k]['probs'] for k in keys])

  run_job(str(tmp_path / 'tfr'), *base, '--output_format=tfrecord', '--output_fields=score')
  parsed = {}
  for record in tf.data.TFRecordDataset(str(tmp_path / 'tfr' / 'predictions-00000-of-00001.tfrecord')):
    example = tf.train.Example.FromString(record.numpy())
    features = example.features.feature
    assert set(features) == {'id', 'score'}
    parsed[features['id'].bytes_list.value[0].decode()] = list(features['score'].float_list.value)
  assert sorted(parsed) == sorted(reference)
  assert_close_across_batches([parsed[k] for k in keys], [reference[k]['score'] for k in keys])

  bytes_out = tmp_path / 'bytes'
  write_lines(str(tmp_path / 'r.jsonl'), ['[20]', '[1]'])
  run_job(str(bytes_out), f'--model={model_dir / "ragged"}', f'--input={tmp_path / "r.jsonl"}',
          '--output_format=parquet', '--output_fields=label')
  labels = pq.read_table(str(bytes_out / 'predictions-00000-of-00001.parquet')).column('label')
  assert sorted(labels.to_pylist()) == ['big', '{"b64": "//4="}']


def test_unknown_extension_and_output_field_are_config_errors(model_dir, tmp_path, capsys):
  from tf_batch_predict.pipeline import cli
  write_lines(str(tmp_path / 'a.txt'), ['[1]'])
  assert cli.main([f'--model={model_dir / "ragged"}', f'--input={tmp_path / "a.txt"}',
                   f'--output={tmp_path / "o"}']) == 2
  assert 'cannot tell the format' in capsys.readouterr().err
  predictions, _, _ = run_job(str(tmp_path / 'o'), f'--model={model_dir / "ragged"}',
                              f'--input={tmp_path / "a.txt"}', '--format=jsonl')
  assert [p['total'] for p in predictions] == [1.0]
  assert cli.main([f'--model={model_dir / "ragged"}', f'--input={tmp_path / "a.txt"}',
                   '--format=jsonl', '--output_fields=nope', f'--output={tmp_path / "o"}']) == 2
  assert "no output 'nope'; outputs: label, total" in capsys.readouterr().err


@pytest.fixture(scope='module')
def bytes_output_model(tmp_path_factory):
  """Outputs `image_bytes` (string, named as TF Serving's `_bytes`
  convention wants), `label` (string) and `pair_bytes` (string [2]); all
  are the input text, or invalid UTF-8 when the input is "bad"."""
  import tensorflow as tf

  class Echo(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='text')])
    def serve(self, text):
      value = tf.where(tf.equal(text, 'bad'), tf.constant(b'\xff\xfe'), text)
      return {'image_bytes': value, 'label': value,
              'pair_bytes': tf.stack([value, tf.strings.upper(value)], axis=1)}

  path = str(tmp_path_factory.mktemp('bytes_model') / 'model')
  module = Echo()
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  return path


@pytest.mark.parametrize('output_format', ['jsonl', 'parquet', 'tfrecord'])
def test_outputs_named_bytes_are_always_base64(bytes_output_model, tmp_path, output_format):
  """TF Serving's REST convention: a string output whose name ends in
  `_bytes` is {"b64": ...} whatever its content; other string outputs are
  text where valid UTF-8. Parquet and TFRecord hold the bytes natively."""
  texts = ['plain', 'bad', 'ünï']
  write_lines(str(tmp_path / 'in' / 'a.jsonl'),
              [json.dumps({'id': i, 'text': t}) for i, t in enumerate(texts)])
  out = tmp_path / 'out'
  run_job(str(out), f'--model={bytes_output_model}', f'--input={tmp_path}/in/*.jsonl',
          '--key_field=id', f'--output_format={output_format}')
  expected = [t.encode() if t != 'bad' else b'\xff\xfe' for t in texts]
  if output_format == 'jsonl':
    from tests.helpers import read_jsonl
    by_id = {p['id']: p for p in read_jsonl(str(out / 'predictions-*.jsonl'))}
    for i, value in enumerate(expected):
      assert by_id[i]['image_bytes'] == {'b64': base64.b64encode(value).decode()}
      assert by_id[i]['pair_bytes'] == [{'b64': base64.b64encode(v).decode()}
                                        for v in (value, value.upper())]
      label = by_id[i]['label']
      assert label == (value.decode() if value != b'\xff\xfe'
                       else {'b64': base64.b64encode(value).decode()})
  elif output_format == 'parquet':
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob('predictions-*'))])
    assert table.schema.field('image_bytes').type == pa.binary()
    assert table.schema.field('pair_bytes').type == pa.list_(pa.binary())
    rows = {r['id']: r for r in table.to_pylist()}
    for i, value in enumerate(expected):
      assert rows[str(i)]['image_bytes'] == value
      assert rows[str(i)]['pair_bytes'] == [value, value.upper()]
  else:
    import tensorflow as tf
    from tf_batch_predict.transforms.convert import example_fields
    rows = {}
    for path in sorted(out.glob('predictions-*')):
      for record in tf.data.TFRecordDataset(str(path)):
        fields = example_fields(record.numpy())
        rows[fields['id'][0]] = fields
    for i, value in enumerate(expected):
      assert rows[i]['image_bytes'] == [value]
      assert rows[i]['label'] == [value]
      assert rows[i]['pair_bytes'] == [value, value.upper()]


def test_file_names_are_unique_across_patterns(model_dir, tmp_path, signature_of):
  """`part.jsonl` in two directories of two patterns: each output names its
  own file, relative to the patterns' common directory."""
  xs = keras_instances(6, 'u')
  for d, part in (('d1', xs[:3]), ('d2', xs[3:])):
    write_lines(str(tmp_path / 'in' / d / 'part.jsonl'), [json.dumps(x) for x in part])
  predictions, errors, _ = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "keras"}', '--signature=serve',
      f'--input={tmp_path}/in/d1/*.jsonl,{tmp_path}/in/d2/*.jsonl', '--passthrough_fields=id')
  assert errors == []
  assert sorted((p['filename'], p['id']) for p in predictions) == sorted(
      [('d1/part.jsonl', x['id']) for x in xs[:3]] + [('d2/part.jsonl', x['id']) for x in xs[3:]])


def test_parquet_scalar_columns_feed_shape_one_inputs_as_other_formats(shape_one_model,
                                                                       tmp_path):
  """Inputs declared [batch, 1] (Keras `Input(shape=(1,))`) take a plain
  scalar column, the layout pandas and Spark write, by the rule JSON Lines
  and CSV apply to a scalar: the same values, the same errors. Length-1
  list columns still feed them."""
  d = tmp_path / 'in'
  d.mkdir()
  plain = [  # (id, age, count, name): float64, int64 and string columns
      ('s0', 79.296875, 3, 'a'), ('s1', 0.1, -7, 'héllo'), ('s2', 1e300, 2 ** 31 - 1, 'e'),
      ('s3', None, 1, 'x'), ('s4', 2.5, 2 ** 31, 'y')]
  pq.write_table(pa.table({'id': [r[0] for r in plain],
                           'age': pa.array([r[1] for r in plain], pa.float64()),
                           'count': pa.array([r[2] for r in plain], pa.int64()),
                           'name': pa.array([r[3] for r in plain], pa.string())}),
                 d / 'plain.parquet')
  ints = [('i0', 16777217, 5, 'b'), ('i1', -5, 0, 'cd')]  # int64 values for a float32 input
  pq.write_table(pa.table({'id': [r[0] for r in ints],
                           'age': pa.array([r[1] for r in ints], pa.int64()),
                           'count': pa.array([r[2] for r in ints], pa.int32()),
                           'name': pa.array([r[3].encode() for r in ints], pa.binary())}),
                 d / 'ints.parquet')
  pq.write_table(pa.table({'id': ['b0'], 'age': [True], 'count': [1], 'name': ['z']}),
                 d / 'bools.parquet')
  pq.write_table(pa.table({'id': ['h0'], 'age': [1.0], 'count': [3.5], 'name': ['z']}),
                 d / 'halves.parquet')
  pq.write_table(pa.table({'id': ['l0', 'l1'],
                           'age': pa.array([[2.5], [1.0, 2.0]], pa.list_(pa.float64())),
                           'count': pa.array([[4], [4]], pa.list_(pa.int64())),
                           'name': pa.array([['zz'], ['zz']], pa.list_(pa.string()))}),
                 d / 'lists.parquet')
  # The same scalars in JSON Lines and CSV (ids prefixed j and c).
  rows = plain + ints + [('b0', True, 1, 'z'), ('h0', 1.0, 3.5, 'z')]
  write_lines(str(d / 'same.jsonl'), [json.dumps({'id': 'j' + i, 'age': a, 'count': c, 'name': n})
                                      for i, a, c, n in rows])
  cell = {None: '', True: 'true'}
  write_lines(str(d / 'same.csv'), ['id,age,count,name'] + [
      f'c{i},{cell.get(a, a) if not isinstance(a, float) else repr(a)},{c},{n}'
      for i, a, c, n in rows])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={shape_one_model}', '--signature=columns',
      f'--input={d}/*', '--key_field=id')
  assert_conserved(summary, predictions, errors)
  by_id = {p['id']: p for p in predictions}
  error_of = {e['id']: e for e in errors}
  assert sorted([*by_id, *error_of]) == sorted(
      [p + i for p in ('', 'j', 'c') for i, *_ in rows] + ['l0', 'l1'])
  # Parquet: values read as 64-bit floats, rounded to float32 (or +-inf).
  assert by_id['s0']['age_seen'] == [79.296875] and by_id['s0']['count_seen'] == [3]
  assert np.float32(by_id['s1']['age_seen'][0]) == np.float32(0.1)
  assert by_id['s1']['name_length'] == [len('héllo'.encode())]
  assert by_id['s2']['age_seen'] == [None]  # +inf: JSON output writes null
  assert by_id['s2']['count_seen'] == [2 ** 31 - 1]
  assert by_id['i0']['age_seen'] == [16777216.0] and by_id['i1']['age_seen'] == [-5.0]
  assert by_id['l0']['age_seen'] == [2.5] and by_id['l0']['count_seen'] == [4]
  assert sorted(error_of) == sorted(['b0', 'cb0', 'cs3', 'cs4', 'ch0', 'h0', 'jb0', 'jh0', 'js3',
                                     'js4', 'l1', 's3', 's4'])
  assert all(e['error']['category'] == 'schema' for e in errors)
  assert error_of['s3']['error']['message'] == "missing input field 'age'"
  assert (error_of['s3']['filename'], error_of['s3']['index']) == ('plain.parquet', 3)
  assert (error_of['s4']['filename'], error_of['s4']['index']) == ('plain.parquet', 4)
  assert "input 'count'" in error_of['s4']['error']['message']
  assert "input 'age'" in error_of['b0']['error']['message']
  assert "input 'count'" in error_of['h0']['error']['message']
  assert "shape [1]" in error_of['l1']['error']['message']
  # The same outcome in every format.
  for i, *_ in rows:
    if i in by_id:
      assert by_id['j' + i] == dict(by_id[i], id='j' + i), i
      assert by_id['c' + i] == dict(by_id[i], id='c' + i), i
    else:
      assert 'j' + i in error_of and 'c' + i in error_of, i


def test_parquet_shape_one_columns_take_the_fast_path(shape_one_model, tmp_path):
  """The columnar path takes the scalar columns (a null row is left to the
  definition, alone) and gives the definition's arrays."""
  from tf_batch_predict.transforms.model.savedmodel import inspect_model
  from tf_batch_predict.transforms.read.decode import InstanceDecoder
  from tf_batch_predict.transforms.read.formats import input_formats
  from tf_batch_predict.transforms.records import RawChunk
  pq.write_table(pa.table({'age': pa.array([0.1, None, 2.0, 1e300], pa.float64()),
                           'count': pa.array([1, 2, 3, 4], pa.int64()),
                           'name': pa.array(['a', 'bb', 'c', 'd'], pa.string())}),
                 tmp_path / 'a.parquet')
  batch = next(pq.ParquetFile(tmp_path / 'a.parquet').iter_batches())
  signature = inspect_model(str(shape_one_model), ('serve',), 'columns').signature
  assert [s.shape for s in signature.inputs] == [(1,)] * 3
  decoder = InstanceDecoder(signature, input_formats(signature, None, (), 1 << 20))

  def chunk():
    return RawChunk([('a.parquet', 0)], list(range(batch.num_rows)), batch, kind='parquet')

  fast, exact = decoder.decode(chunk()), decoder.decode(chunk(), use_fast=False)
  assert fast.fast_rows == 3 and exact.fast_rows == 0
  for got in (fast, exact):
    assert [(e.row, e.message) for e in got.errors] == [(1, "missing input field 'age'")]
    rows = [r for g in got.groups for r in g.rows]
    feeds = {name: np.concatenate([g.feeds[name] for g in got.groups])
             for name in ('age', 'count', 'name')}
    order = np.argsort(rows)
    assert sorted(rows) == [0, 2, 3]
    np.testing.assert_array_equal(feeds['age'][order],
                                  np.array([[0.1], [2.0], [np.inf]], np.float32))
    assert feeds['age'].dtype == np.float32 and feeds['count'].dtype == np.int32
    np.testing.assert_array_equal(feeds['count'][order], [[1], [3], [4]])
    assert feeds['name'][order].tolist() == [[b'a'], [b'c'], [b'd']]


def test_parquet_one_element_list_columns_feed_scalar_inputs(model_dir, tmp_path):
  """The other half of the same rule: a one-element list fits a scalar input,
  in Parquet as in JSON Lines (test_model_conventions_assets_tuple_outputs_...)."""
  pq.write_table(pa.table({'age': pa.array([[60.0], [1.5], [1.0, 2.0]], pa.list_(pa.float64())),
                           'thal': pa.array([['normal'], ['reversible'], ['fixed']],
                                            pa.list_(pa.string()))}),
                 tmp_path / 'a.parquet')
  predictions, errors, _ = run_job(str(tmp_path / 'out'), f'--model={model_dir / "assets"}',
                                   f'--input={tmp_path / "a.parquet"}')
  assert sorted((p['index'], p['output_0'], p['output_1']) for p in predictions) == [
      (0, 121.0, 'NORMAL'), (1, 5.0, 'REVERSIBLE')]
  assert [(e['index'], e['error']['category']) for e in errors] == [(2, 'schema')]
  assert "input 'age' expects float32 values of shape []" in errors[0]['error']['message']
