"""Regression tests for bugs found by a hostile review: each one states a
promise of the README and an input that breaks it (today)."""
import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.range_trackers import OffsetRangeTracker

from tf_batch_predict.pipeline import cli
from tests.helpers import assert_conserved, run_job
from tf_batch_predict.transforms.read.decode import InstanceDecoder
from tf_batch_predict.transforms.read.formats import input_formats
from tf_batch_predict.transforms.read.lines import LineChunkSource
from tf_batch_predict.transforms.records import RawChunk
from tf_batch_predict.transforms.model.savedmodel import inspect_model
from tf_batch_predict.transforms.write.shards import tfrecord_frame


def _decoder(model_path, key_field=None, passthrough_fields=()):
  signature = inspect_model(str(model_path), ('serve',), 'serving_default').signature
  formats = input_formats(signature, key_field, passthrough_fields, 1 << 20)
  return InstanceDecoder(signature, formats, key_field, passthrough_fields)


def _outcomes(batch):
  """Row -> 'ok' or the error message."""
  out = {e.row: e.message for e in batch.errors}
  for group in batch.groups:
    out.update({row: 'ok' for row in group.rows})
  return out


def _mixed_table(**columns):
  base = {'id': [1, 2, 3], 'a': [[1.0, 2.0]] * 3, 'b': ['x', 'y', 'z'], 'c': [1, 2, 3],
          'd': [0.5, 0.5, 0.5]}
  base.update(columns)
  return pa.table(base)


# -- Promise 1: no instance's or file's content can fail the job ---------------

def test_parquet_row_on_the_exact_path_with_a_string_input_is_not_fatal(model_dir, tmp_path):
  """One row whose list is too short sends the batch to the per-row
  definition; there a scalar string cell comes back as `bytes`, not an
  array, and Decode raises AttributeError: the whole job exits 1."""
  (tmp_path / 'in').mkdir()
  pq.write_table(_mixed_table(a=[[1.0, 2.0], [1.0], [3.0, 4.0]]),
                 str(tmp_path / 'in' / 'x.parquet'))
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "mixed"}',
      f'--input={tmp_path / "in" / "x.parquet"}', '--key_field=id')
  assert_conserved(summary, predictions, errors)
  assert sorted(p['id'] for p in predictions) == [1, 3]
  assert [e['id'] for e in errors] == [2]


def test_parquet_passthrough_column_absent_from_the_file(model_dir, tmp_path):
  """README: a missing passthrough field is written as null. A valid Parquet
  file without the passthrough column fails the job (same AttributeError)."""
  (tmp_path / 'in').mkdir()
  pq.write_table(_mixed_table(), str(tmp_path / 'in' / 'x.parquet'))
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "mixed"}',
      f'--input={tmp_path / "in" / "x.parquet"}', '--key_field=id',
      '--passthrough_fields=note')
  assert_conserved(summary, predictions, errors)
  assert len(predictions) == 3 and errors == []


def test_json_request_file_with_a_decimal_next_to_another_format(model_dir, tmp_path):
  """Parsed request instances hold JsonFloat values, which cannot be
  unpickled (JsonFloat.__new__ needs `text`); with two input formats the
  chunks cross a stage boundary and the job exits 1."""
  (tmp_path / 'in').mkdir()
  instance = {'id': 1, 'a': [1, 2], 'b': 'x', 'c': 1, 'd': 0.5}
  (tmp_path / 'in' / 'r.json').write_text(json.dumps({'instances': [instance]}))
  (tmp_path / 'in' / 'l.jsonl').write_text(json.dumps(dict(instance, id=2)) + '\n')
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "mixed"}',
      f'--input={tmp_path / "in" / "*"}', '--key_field=id')
  assert_conserved(summary, predictions, errors)
  assert sorted(p['id'] for p in predictions) == [1, 2]


def test_json_float_survives_pickling():
  import pickle
  from tf_batch_predict.transforms.json_values import parse_json
  value = parse_json(b'{"d": 0.5, "p": 1.50}')
  again = pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
  assert again == value and again['p'].text == '1.50'


# -- Promise 3: a record's result does not depend on its neighbours ------------

def _varint(n):
  out = b''
  while True:
    low, n = n & 0x7f, n >> 7
    if not n:
      return out + bytes([low])
    out += bytes([low | 0x80])


def _field(number, payload):
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(i, with_c=True):
  from tensorflow.core.example import example_pb2
  example = example_pb2.Example()
  features = example.features.feature
  features['id'].int64_list.value.append(i)
  features['a'].float_list.value.extend([1, 2])
  features['b'].bytes_list.value.append(b'x')
  if with_c:
    features['c'].int64_list.value.append(3)
  features['d'].float_list.value.append(0.5)
  return example.SerializeToString()


# An Example plus an (ignored) feature whose name is not valid UTF-8:
# tf.io.parse_example accepts it, the protobuf parser of the definition does not.
_ODD_RECORD = _example(100) + _field(1, _field(1, _field(1, b'\xff') + _field(
    2, _field(3, _field(1, _varint(7))))))


def test_tfrecord_record_decodes_the_same_whatever_its_neighbours(model_dir):
  decoder = _decoder(model_dir / 'mixed')

  def outcome(records, use_fast=True):
    chunk = RawChunk([('f.tfrecord', 0)], list(range(len(records))), records,
                     kind='tfrecord')
    return _outcomes(decoder.decode(chunk, use_fast=use_fast))[1]

  alone = outcome([_example(1), _ODD_RECORD])
  with_bad_neighbour = outcome([_example(1), _ODD_RECORD, _example(2, with_c=False)])
  exact = outcome([_example(1), _ODD_RECORD], use_fast=False)
  assert alone == with_bad_neighbour == exact


def test_tfrecord_file_record_fate_independent_of_neighbours_in_the_job(model_dir, tmp_path):
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 'a.tfrecord').write_bytes(
      tfrecord_frame(_example(1)) + tfrecord_frame(_ODD_RECORD))
  (tmp_path / 'in' / 'b.tfrecord').write_bytes(
      tfrecord_frame(_example(2)) + tfrecord_frame(_ODD_RECORD)
      + tfrecord_frame(_example(3, with_c=False)))
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "mixed"}',
      f'--input={tmp_path / "in" / "*.tfrecord"}', '--min_batch_size=1')
  assert_conserved(summary, predictions, errors)
  fate = {}
  for record in predictions:
    fate[(record['filename'], record['index'])] = 'ok'
  for record in errors:
    fate[(record['filename'], record['index'])] = record['error']['category']
  assert fate[('a.tfrecord', 1)] == fate[('b.tfrecord', 1)]


# -- Promise 4: carried values and strings written exactly ----------------------

def test_negative_zero_key_keeps_its_digits(model_dir):
  decoder = _decoder(model_dir / 'mixed', key_field='id', passthrough_fields=('p',))
  line = b'{"id": -0, "p": -0, "a": [1, 2], "b": "x", "c": 1, "d": 1}'
  for use_fast in (True, False):
    batch = decoder.decode(RawChunk([('f.jsonl', 0)], [0], [line], kind='jsonl'),
                           use_fast=use_fast)
    assert batch.carried['id'][0] == b'-0' and batch.carried['p'][0] == b'-0'


def test_tfrecord_output_keeps_trailing_nul_bytes(model_dir, tmp_path):
  """numpy fixed-width strings drop trailing NULs: a key "k\\u0000" and an
  output b"X\\x00\\x00" come out as b"k" and b"X"."""
  import tensorflow as tf
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 'x.jsonl').write_text(
      '{"id": "k\\u0000", "a": [1, 2], "b": "x\\u0000\\u0000", "c": 1, "d": 1}\n')
  out = tmp_path / 'out'
  rc = cli.main([f'--model={model_dir / "mixed"}', f'--input={tmp_path / "in" / "x.jsonl"}',
                 f'--output={out}', '--key_field=id', '--output_format=tfrecord'])
  assert rc == 0
  [path] = glob.glob(str(out / 'predictions-*.tfrecord'))
  [record] = list(tf.data.TFRecordDataset(path))
  features = tf.train.Example.FromString(record.numpy()).features.feature
  assert list(features['id'].bytes_list.value) == [b'k\x00']
  assert list(features['b_upper'].bytes_list.value) == [b'X\x00\x00']


# -- Outputs ----------------------------------------------------------------------

def _build_unknown_rank_model(path):
  import tensorflow as tf

  class UnknownRank(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name='x')])
    def serve(self, x):
      shape = tf.shape(x)
      return {'y': tf.reshape(x, tf.boolean_mask(shape, shape > 0)),
              's': tf.reduce_sum(x, 1)}

  module = UnknownRank()
  tf.saved_model.save(module, str(path), signatures={'serving_default': module.serve})


def test_parquet_output_of_an_unknown_rank_output(tmp_path):
  """The Parquet schema makes an unknown-rank output a string column ("the
  value's JSON text"), but the value is written as a list: every prediction
  becomes a `model` error (and a logged traceback)."""
  _build_unknown_rank_model(tmp_path / 'model')
  (tmp_path / 'in.jsonl').write_text('{"x": [1, 2]}\n{"x": [3, 4]}\n')
  out = tmp_path / 'out'
  rc = cli.main([f'--model={tmp_path / "model"}', f'--input={tmp_path / "in.jsonl"}',
                 f'--output={out}', '--output_format=parquet'])
  with open(out / 'summary.json') as f:
    summary = json.load(f)
  assert rc == 0, summary
  assert summary['predictions'] == 2 and summary['errors'] == 0


def test_repeated_passthrough_field_gives_a_readable_parquet_or_a_config_error(
    model_dir, tmp_path, capsys):
  (tmp_path / 'in.jsonl').write_text(
      '{"p": 1, "a": [1, 2], "b": "x", "c": 1, "d": 1}\n')
  out = tmp_path / 'out'
  rc = cli.main([f'--model={model_dir / "mixed"}', f'--input={tmp_path / "in.jsonl"}',
                 f'--output={out}', '--passthrough_fields=p,p', '--output_format=parquet'])
  if rc == cli.EXIT_CONFIG_ERROR:
    return
  assert rc == 0
  [path] = glob.glob(str(out / 'predictions-*.parquet'))
  assert pq.read_table(path).num_rows == 1  # today: "Multiple matches for FieldRef.Name(p)"


# -- Lines: what --max_instance_bytes means ------------------------------------

def _read_lines(path, max_bytes):
  source = LineChunkSource(str(path), 'jsonl', 4096, 1 << 20, max_bytes)
  size = os.path.getsize(path)
  records, errors = [], []
  for chunk in source.read_records(str(path), OffsetRangeTracker(0, size)):
    records += chunk.records
    errors += [chunk.read_errors[r] for r in sorted(chunk.read_errors)]
  return records, errors


def test_line_after_a_bom_at_the_limit_is_read_whole(tmp_path):
  """A first line of exactly --max_instance_bytes after the BOM is neither
  refused nor read whole: it is cut at 8189 bytes and fed as if complete."""
  limit = 10000
  body = b'[' + b'1,' * ((limit - 2) // 2)
  body = body[:limit - 1] + b']'
  assert len(body) == limit
  path = tmp_path / 'bom.jsonl'
  path.write_bytes(b'\xef\xbb\xbf' + body + b'\n')
  records, errors = _read_lines(path, limit)
  assert errors == [] and records == [body]


def test_crlf_line_at_the_limit_is_the_same_as_lf(tmp_path):
  """The line definition drops the CR of a CRLF; the size limit counts it."""
  body = b'[' + b'1,' * 49 + b'1]'
  lf, crlf = tmp_path / 'lf.jsonl', tmp_path / 'crlf.jsonl'
  lf.write_bytes(body + b'\n')
  crlf.write_bytes(body + b'\r\n')
  assert _read_lines(lf, len(body)) == _read_lines(crlf, len(body)) == ([body], [])


# -- Promise 6: configuration mistakes are one line, exit 2 ----------------------

@pytest.mark.parametrize('option', ['--direct_num_workers=abc', '--direct_running_mode=bogus',
                                    '--experiments'])
def test_bad_beam_option_value_is_one_line(capsys, tmp_path, model_dir, option):
  (tmp_path / 'in.jsonl').write_text('[1.0]\n')
  try:
    rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in.jsonl"}',
                   f'--output={tmp_path / "out"}', option])
  except SystemExit as e:  # today Beam's argparse exits with its whole usage
    rc = e.code
  err = capsys.readouterr().err.strip()
  assert rc == cli.EXIT_CONFIG_ERROR
  assert len(err.splitlines()) == 1, err[:300]


@pytest.mark.parametrize('content', ['{"host": "%s", "pid": "abc"}',
                                     '{"host": "%s", "pid": null}'])
def test_damaged_lock_file_is_not_a_traceback(capsys, tmp_path, model_dir, content):
  import socket
  (tmp_path / 'in.jsonl').write_text('[1.0]\n')
  out = tmp_path / 'out'
  out.mkdir()
  (out / '.lock').write_text(content % socket.gethostname())
  try:
    rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in.jsonl"}',
                   f'--output={out}'])
  except Exception as e:  # pylint: disable=broad-except
    pytest.fail(f'the command raised {type(e).__name__}: {e}')
  err = capsys.readouterr().err.strip()
  assert 'Traceback' not in err
  assert rc in (0, cli.EXIT_CONFIG_ERROR)


@pytest.mark.parametrize('name', ['in.jsonl.gzip', 'in.jsonl.bz2', 'in.csv.zst'])
def test_compression_other_than_gz_is_a_config_error(capsys, tmp_path, model_dir, name):
  (tmp_path / name).write_bytes(b'x')
  rc = cli.main([f'--model={model_dir / "mixed"}', f'--input={tmp_path / name}',
                 f'--output={tmp_path / "out"}', '--format=jsonl'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and 'only gzip (.gz) is supported' in err[0]
