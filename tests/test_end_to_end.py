"""The whole job on real SavedModels, real files and Beam's local runner;
each prediction is checked against the model called directly."""
import json
import logging
import os
import random

import numpy as np
import pytest

from tests.helpers import (assert_close_across_batches, assert_conserved, check_keras_predictions,
                           run_job, write_lines)


@pytest.mark.cross_batch
def test_keras_dict_model_with_key_and_passthrough(model_dir, tmp_path, signature_of):
  rng = random.Random(1)
  instances = [{'id': f'k{i}', 'features': [rng.uniform(-1, 1) for _ in range(3)],
                'bucket': rng.randint(0, 9), 'group': rng.choice(['a', 'b']),
                'ignored': [1, 2]} for i in range(700)]
  lines = [json.dumps(x) for x in instances]
  write_lines(str(tmp_path / 'in' / 'a.jsonl'), lines[:400])
  write_lines(str(tmp_path / 'in' / 'b.jsonl'), lines[400:])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "keras"}', '--signature=serve',
      f'--input={tmp_path / "in" / "*.jsonl"}', '--key_field=id',
      '--passthrough_fields=group', '--max_batch_size=64')
  assert errors == []
  assert_conserved(summary, predictions, errors)
  by_id = check_keras_predictions(predictions, instances, model_dir / 'keras', signature_of)
  for x in instances:
    assert list(by_id[x['id']]) == ['id', 'group', 'probs', 'score']
    assert by_id[x['id']]['group'] == x['group']
  assert summary['model_loads'] == 1


@pytest.mark.cross_batch
def test_tf1_named_signature_strings_and_echoed_key(model_dir, tmp_path, signature_of):
  instances = [{'key': 1000 + i, 'x': [i, -i / 2], 'name': 'n' * (i % 7)}
               for i in range(50)]
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps(x) for x in instances])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "tf1"}',
      '--signature=predict_scores', f'--input={tmp_path / "in.jsonl"}',
      '--key_field=key')
  assert errors == []
  assert_conserved(summary, predictions, errors)
  expected = signature_of(
      model_dir / 'tf1', 'predict_scores',
      x=np.array([x['x'] for x in instances], np.float32),
      name=np.array([x['name'].encode() for x in instances], object),
      key=np.array([x['key'] for x in instances], np.int64))
  by_key = {p['key']: p for p in predictions}
  for i, x in enumerate(instances):
    got = by_key[x['key']]
    # The model's own `key` output never replaces the input's key.
    assert got['key_output'] == x['key'] == int(expected['key'][i])
    assert got['name_length'] == int(expected['name_length'][i]) == len(x['name'])
  assert_close_across_batches([by_key[x['key']]['y'] for x in instances], expected['y'])
  assert summary['model']['signature'] == 'predict_scores'


def test_tag_set_chosen_by_option(model_dir, tmp_path):
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps({'key': 7, 'x': [1, 1], 'name': 'abc'})])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "tf1"}', '--tag=batch,serve',
      '--signature=batch_scores', f'--input={tmp_path / "in.jsonl"}', '--key_field=key')
  assert errors == [] and summary['model']['tags'] == ['batch', 'serve']
  assert predictions == [{'key': 7, 'key_output': 7, 'name_length': 3, 'y': 1.5}]


def test_versioned_base_uses_highest_version(model_dir, tmp_path):
  write_lines(str(tmp_path / 'in.jsonl'), ['[1, 2]', '[3]'])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "versioned"}',
      f'--input={tmp_path / "in.jsonl"}')
  assert summary['model']['version'] == 10
  assert summary['model']['path'].endswith('/10')
  assert sorted(p['total'] for p in predictions) == [30.0, 30.0]


def test_location_fields_shapes_model_failures_and_bytes(model_dir, tmp_path):
  """Without a key: filename + byte offset; instances of different shapes in
  one chunk; an instance the model fails on is isolated from its batch."""
  rows = [[1.0] * (i % 4 + 1) for i in range(40)]
  rows[7] = [1.0, -5.0]  # the model asserts every value is >= 0
  rows[30] = [-1.0]
  lines = [json.dumps({'x': r}) if i % 2 else json.dumps(r) for i, r in enumerate(rows)]
  path = write_lines(str(tmp_path / 'data' / 'sub' / 'in.jsonl'), lines)
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "ragged"}',
      f'--input={tmp_path / "data" / "*" / "*.jsonl"}', '--max_batch_size=16')
  assert_conserved(summary, predictions, errors)
  assert summary['errors_by_category'] == {'parse': 0, 'schema': 0, 'model': 2, 'file': 0}
  with open(path, 'rb') as f:
    content = f.read()
  for record in predictions + errors:
    assert record['filename'] == 'sub/in.jsonl'
    line = content[record['offset']:].split(b'\n', 1)[0]
    record['line'] = lines.index(line.decode())
  for p in predictions:
    assert p['total'] == sum(rows[p['line']])
    assert p['label'] == ('big' if p['total'] > 10 else {'b64': '//4='})
  assert sorted(e['line'] for e in errors) == [7, 30]
  for e in errors:
    assert e['error']['category'] == 'model'
    assert 'negative value' in e['error']['message']
    assert '\n' not in e['error']['message']


def test_bad_instances_become_error_records(model_dir, tmp_path):
  good = [json.dumps({'id': f'g{i}', 'features': [i, i, i], 'bucket': i}) for i in range(30)]
  bad = {
      'malformed': '{"id": "m", "features": [1, 2, 3], "bucket": ',
      'shape': json.dumps({'id': 'shape', 'features': [1, 2], 'bucket': 1}),
      'dtype': json.dumps({'id': 'dtype', 'features': ['a', 'b', 'c'], 'bucket': 1}),
      'int': json.dumps({'id': 'int', 'features': [1, 2, 3], 'bucket': 2.5}),
      'missing': json.dumps({'id': 'missing', 'features': [1, 2, 3]}),
      'nokey': json.dumps({'features': [1, 2, 3], 'bucket': 1}),
  }
  lines = good[:10] + ['', '   '] + list(bad.values()) + ['\t'] + good[10:]
  write_lines(str(tmp_path / 'in.jsonl'), lines)
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "keras"}', '--signature=serve',
      f'--input={tmp_path / "in.jsonl"}', '--key_field=id')
  assert_conserved(summary, predictions, errors)
  assert sorted(p['id'] for p in predictions) == sorted(f'g{i}' for i in range(30))
  assert summary['blank_lines_skipped'] == 3
  assert summary['instances_read'] == 36
  by_raw = {e['raw']: e for e in errors}
  assert set(by_raw) == set(bad.values())
  malformed = by_raw[bad['malformed']]
  assert malformed['error']['category'] == 'parse'
  assert malformed['filename'] == 'in.jsonl' and 'id' not in malformed
  with open(tmp_path / 'in.jsonl', 'rb') as f:
    f.seek(malformed['offset'])
    assert f.readline().decode().rstrip('\n') == bad['malformed']
  expect = {'shape': 'expects shape [3]', 'dtype': 'expects float32 numbers',
            'int': 'expects integers', 'missing': "missing input field 'bucket'",
            'nokey': "missing key field 'id'"}
  for name, text in expect.items():
    record = by_raw[bad[name]]
    assert record['error']['category'] == 'schema'
    assert text in record['error']['message']
    assert record.get('id') == (None if name == 'nokey' else name)


def test_rerun_replaces_previous_outputs(model_dir, tmp_path):
  out = str(tmp_path / 'out')
  lines = [json.dumps([float(i)]) for i in range(200)]
  for i in range(4):
    write_lines(str(tmp_path / 'in' / f'{i}.jsonl'), lines[i * 50:(i + 1) * 50])
  first, _, _ = run_job(out, f'--model={model_dir / "ragged"}',
                        f'--input={tmp_path / "in" / "*.jsonl"}',
                        '--direct_running_mode=multi_threading', '--direct_num_workers=2')
  # A stale shard from an earlier run with another shard count.
  write_lines(os.path.join(out, 'predictions-00007-of-00009.jsonl'), ['{"stale": 1}'])
  second, errors, summary = run_job(out, f'--model={model_dir / "ragged"}',
                                    f'--input={tmp_path / "in" / "0.jsonl"}')
  assert len(first) == 200
  assert len(second) == 50 and not any('stale' in p for p in second)
  assert_conserved(summary, second, errors)


def test_model_loads_once_per_process_over_many_bundles(model_dir, tmp_path, caplog):
  # A blank line past 256 KiB in each: a work unit each (smaller files
  # would be grouped into one).
  for i in range(12):
    write_lines(str(tmp_path / 'in' / f'{i:02d}.jsonl'),
                [json.dumps([float(i), float(j)]) for j in range(40)] + [' ' * (256 << 10)])
  with caplog.at_level(logging.INFO, logger='tf_batch_predict.transforms.model.score'):
    predictions, errors, summary = run_job(
        str(tmp_path / 'out'), f'--model={model_dir / "ragged"}',
        f'--input={tmp_path / "in" / "*.jsonl"}', '--min_batch_size=1',
        '--max_batch_size=8', '--direct_running_mode=multi_threading',
        '--direct_num_workers=2')
  assert len(predictions) == 480 and errors == []
  # One output shard per work unit, in several bundles.
  shards = {p for p in os.listdir(tmp_path / 'out') if p.startswith('predictions-')}
  assert len(shards) >= 2
  assert summary['model_loads'] == 1
  loads = [r for r in caplog.records if r.getMessage().startswith('Loaded SavedModel')]
  assert len(loads) == 1


def test_bundle_processors_sample_their_state_every_20_ms(model_dir, tmp_path):
  """The pipeline's modules, and the plugin each SDK worker imports, make
  Beam's state sampler sleep at most 20 ms between samples: a bundle's end
  waits for its thread that long at most (transforms/state_sampler.py)."""
  from apache_beam.runners.worker import statesampler
  from apache_beam.utils.counters import CounterFactory
  import tf_batch_predict.pipeline.graph  # noqa: F401  pylint: disable=unused-import
  from tf_batch_predict.pipeline.cli import _pipeline_options
  from tf_batch_predict.transforms.state_sampler import SAMPLING_PERIOD_MS
  assert SAMPLING_PERIOD_MS == 20
  assert statesampler.StateSampler('stage', CounterFactory()).sampling_period_ms == 20
  sampler = statesampler.StateSampler('stage', CounterFactory())
  sampler.start()
  sampler.stop()
  assert sampler.finished
  from apache_beam.options.pipeline_options import SetupOptions
  from tf_batch_predict.pipeline.config import resolve
  from tf_batch_predict.pipeline.options import parse_args
  data = write_lines(str(tmp_path / 'in.jsonl'), ['[1.0]'])
  config = resolve(parse_args([f'--model={model_dir / "ragged"}', f'--input={data}',
                               f'--output={tmp_path / "out"}']))
  plugins = _pipeline_options(config).view_as(SetupOptions).beam_plugins
  assert 'tf_batch_predict.transforms.state_sampler' in plugins
