"""A summary that can be audited (issue 9): times, inputs, settings, model
load, model batches, one example message per error category, failed files;
checked against the files written and the error records of a real run."""
import datetime
import gzip
import json
import math
import os
import re

from tf_batch_predict.pipeline import cli
from tests.helpers import assert_conserved, read_jsonl, write_lines


def _parse_utc(text: str) -> datetime.datetime:
  assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z', text), text
  return datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))


def test_summary_can_be_checked_against_the_run(model_dir, tmp_path, capsys):
  # The ragged model: `x` a list of floats of any length; it fails on a
  # negative value (a `model` error).
  rows = [[float(i % 5)] * (i % 3 + 1) for i in range(300)]
  lines = [json.dumps({'x': r}) for r in rows]
  lines[11] = '{"x": [1.0,'  # parse
  lines[12] = json.dumps({'x': 'abc'})  # schema
  lines[13] = json.dumps({'x': [-1.0]})  # model
  lines[14] = json.dumps({'x': [2.0, -3.0]})  # model
  a1 = write_lines(str(tmp_path / 'a' / '1.jsonl'), lines[:200])
  a2 = write_lines(str(tmp_path / 'a' / '2.jsonl'), lines[200:])
  # A gzip file cut short: the lines before the cut are read, the file is
  # one `file` error and an incomplete file.
  os.makedirs(tmp_path / 'b')
  packed = gzip.compress(''.join(f'{json.dumps({"x": [1.0]})}\n' for _ in range(5000))
                         .encode())
  b = tmp_path / 'b' / '3.jsonl.gz'
  b.write_bytes(packed[:len(packed) // 2])
  out = tmp_path / 'out'
  patterns = [str(tmp_path / 'a' / '*.jsonl'), str(tmp_path / 'b' / '*.gz'), a1]
  rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={",".join(patterns)}',
                 f'--output={out}', '--max_batch_size=16', '--min_batch_size=4',
                 '--passthrough_fields=x', '--max_error_fraction=0.5'])
  printed = capsys.readouterr().out
  assert rc == cli.EXIT_INPUT_INCOMPLETE
  summary = json.loads((out / 'summary.json').read_text())
  predictions = read_jsonl(str(out / 'predictions-*'))
  errors = read_jsonl(str(out / 'errors-*'))
  assert_conserved(summary, predictions, errors)

  # Times: UTC ISO 8601, in order; the whole command's time includes the
  # pipeline's.
  started, ended = _parse_utc(summary['started_at']), _parse_utc(summary['ended_at'])
  assert started < ended
  assert abs(summary['total_wall_time_s'] - (ended - started).total_seconds()) < 0.002
  assert summary['total_wall_time_s'] >= summary['pipeline_wall_time_s'] > 0
  assert summary['wall_time_s'] == summary['pipeline_wall_time_s']

  # Inputs: per pattern, the files it matched first and their sizes.
  sizes = {path: os.path.getsize(path) for path in (a1, a2, str(b))}
  assert summary['inputs'] == [
      {'pattern': patterns[0], 'files': 2, 'bytes': sizes[a1] + sizes[a2]},
      {'pattern': patterns[1], 'files': 1, 'bytes': sizes[str(b)]},
      {'pattern': patterns[2], 'files': 0, 'bytes': 0}]  # a1 was matched by the first
  assert summary['input_files'] == 3 and summary['input_bytes'] == sum(sizes.values())

  # The options that shaped the result.
  settings = summary['settings']
  assert (settings['max_batch_size'], settings['min_batch_size']) == (16, 4)
  assert settings['passthrough_fields'] == ['x'] and settings['key_field'] is None
  assert settings['formats'] == ['jsonl'] and settings['output_format'] == 'jsonl'
  assert settings['max_error_fraction'] == 0.5 and settings['runner'] == 'FnApiRunner'
  assert settings['direct_running_mode'] == 'in_memory'

  # Model batches: at most --max_batch_size each, and together every
  # instance the model was called on (predicted, or a model error).
  batches = summary['batches']
  scored = summary['predictions'] + summary['errors_by_category']['model']
  assert batches['instances'] == scored
  assert 1 <= batches['size']['min'] <= batches['size']['mean'] <= batches['size']['max'] <= 16
  assert batches['count'] >= math.ceil(scored / 16)
  assert batches['size']['mean'] == round(scored / batches['count'], 1)
  assert 0 < batches['latency_ms']['min'] <= batches['latency_ms']['max']
  # Latency percentiles per model call: bucket upper bounds of the histogram.
  percentiles = batches['latency_ms_percentiles']
  bounds = [b['le'] for b in batches['latency_ms_histogram']]
  assert percentiles['p50'] <= percentiles['p95'] <= percentiles['p99'] <= bounds[-1]
  assert all(v in bounds for v in percentiles.values())
  # Time by step, summed over workers: the model calls are within the scoring.
  stages = summary['stages']
  assert set(stages['seconds']) == {'decode', 'score', 'format', 'write'}
  assert all(v > 0 for v in stages['seconds'].values()), stages
  assert 0 < stages['model_calls_s'] <= stages['seconds']['score']
  # The signature's inputs, for the report's description of the input.
  assert [i['name'] for i in summary['model']['inputs']] == ['x']
  assert summary['model']['takes_examples'] is False
  # RunInference's own figures are per element (a chunk, scored in such batches).
  assert summary['run_inference']['elements'] <= batches['count']
  # One load, which took the model the launcher's check loaded: its time
  # is Beam's (whole milliseconds, possibly 0).
  assert summary['model_loads'] == 1 and summary['model_load_s'] >= 0

  # One example message per category, each that of a real error record.
  by_category = {}
  for record in errors:
    by_category.setdefault(record['error']['category'], []).append(record['error']['message'])
  assert set(by_category) == {'parse', 'schema', 'model', 'file'}
  assert set(summary['errors_first_example']) == set(by_category)
  for category, message in summary['errors_first_example'].items():
    assert message in by_category[category]
  assert summary['incomplete_files'] == [str(b)] and summary['files_incomplete'] == 1
  assert summary['exit_status'] == cli.EXIT_INPUT_INCOMPLETE and summary['exit_reason']

  # The printed table: the same figures, still short.
  table = printed.strip().splitlines()
  assert len(table) <= 24
  for category, message in summary['errors_first_example'].items():
    assert re.search(rf'^  e\.g\. {category} +{re.escape(message[:40])}', printed, re.M)
  assert re.search(r'^input +3 files, .* \(3 patterns\)$', printed, re.M)
  assert re.search(rf'^files incomplete +1 \({re.escape(str(b))}\)$', printed, re.M)
  assert re.search(rf'^model batches +{batches["count"]:,} of ', printed, re.M)
  assert re.search(rf'^started, ended +{summary["started_at"]}, {summary["ended_at"]}$',
                   printed, re.M)


def test_summary_of_a_clean_run_has_no_examples_and_reports_worker_settings(model_dir,
                                                                         tmp_path):
  write_lines(str(tmp_path / 'in.jsonl'), [json.dumps([1.0, 2.0])] * 10)
  out = tmp_path / 'out'
  assert cli.main([f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in.jsonl"}',
                   f'--output={out}', '--direct_num_workers=1',
                   '--direct_running_mode=multi_threading']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['errors_first_example'] == {} and summary['incomplete_files'] == []
  assert summary['settings']['direct_running_mode'] == 'multi_threading'
  assert summary['batches']['instances'] == summary['predictions'] == 10


def written_counts(output_dir: str) -> dict:
  """The counts of the records in a run's output files: predictions,
  errors by category, and the instances they stand for (a `file` error
  stands for no instance)."""
  from tf_batch_predict.transforms.rejoin.read_outputs import (
      ERRORS, PREDICTIONS, count_records, iter_records, output_files)
  files = output_files(output_dir)
  counts = {'predictions': sum(count_records(path) for path in files[PREDICTIONS])}
  for category in ('parse', 'schema', 'model', 'file'):
    counts[f'errors_{category}'] = 0
  for path in files[ERRORS]:
    for record in iter_records(path):
      counts[f'errors_{record["error"]["category"]}'] += 1
  counts['instances_read'] = (counts['predictions'] + sum(
      v for k, v in counts.items() if k.startswith('errors_')) - counts['errors_file'])
  return counts


def test_summary_counts_are_the_records_written_in_every_output_format(model_dir, tmp_path):
  """The summary's counts (the work units' commit records, each unit once
  whatever tasks an engine ran again) are the records in the files."""
  lines = [json.dumps({'id': f'w{i}', 'features': [i, 1.5, -2], 'bucket': i % 4})
           for i in range(700)]
  lines[5] = '{"id": "broken"'  # parse
  lines[9] = json.dumps({'id': 'w9', 'features': 'abc', 'bucket': 1})  # schema
  write_lines(str(tmp_path / 'in' / 'a.jsonl'), lines[:400])
  write_lines(str(tmp_path / 'in' / 'b.jsonl'), lines[400:])
  for output_format in ('jsonl', 'parquet', 'tfrecord'):
    out = tmp_path / output_format
    assert cli.main([f'--model={model_dir / "keras"}', '--signature=serve',
                     f'--input={tmp_path / "in" / "*.jsonl"}', f'--output={out}',
                     '--key_field=id', f'--output_format={output_format}',
                     '--max_error_fraction=1', '--max_batch_size=64']) == 0
    with open(out / 'summary.json') as f:
      summary = json.load(f)
    written = written_counts(str(out))
    assert written['predictions'] == summary['predictions'] == 698, output_format
    assert {c: written[f'errors_{c}'] for c in summary['errors_by_category']} == \
        summary['errors_by_category'] == {'parse': 1, 'schema': 1, 'model': 0, 'file': 0}
    assert written['instances_read'] == summary['instances_read'] == 700
