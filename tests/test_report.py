"""report.html (issue 10): every run writes a small, self-contained page
next to summary.json. Rendered in headless Chromium (tests/browser.py): no
errors, no request; its figures are the summary's (counts, the throughput
series, batch histograms whose totals are the batch count), its error
examples are real error records, its output histograms count the sampled
predictions' values; the demo run's page renders; a report that cannot be
built never fails the run."""
import json
import logging
import os
import re
import sys
import time

import pytest

from tf_batch_predict.pipeline import cli, progress, report
from tests import browser
from tests.helpers import assert_conserved, run_job, write_lines
from tests.test_runs import ROOT, keras_args, keras_lines

MAX_PAGE_BYTES = 200_000

# What the checks read from the rendered page (after the load).
FIGURES = """Array.from(document.querySelectorAll('figure')).map(f => ({
  chart: f.dataset.chart, field: f.dataset.field || null,
  width: f.querySelector('svg').getBoundingClientRect().width,
  bars: Array.from(f.querySelectorAll('rect.bar')).map(r => Number(r.dataset.count)),
  lines: f.querySelectorAll('polyline').length}))"""
COUNTS = """Array.from(document.querySelector('table').rows).map(
  r => [r.cells[0].textContent, r.cells[1].textContent])"""
EXAMPLES = """Array.from(document.querySelectorAll('section[data-category]')).map(s => [
  s.dataset.category, Array.from(s.querySelectorAll('pre.example')).map(p => p.textContent)])"""
HEADINGS = "Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
OVERLAPS = browser.TEXT_OVERLAPS
# The lines of the cumulative chart: how each is drawn (each must differ).
LINE_LOOKS = """Array.from(document.querySelectorAll('figure[data-chart=cumulative] polyline')).map(
  l => { const s = getComputedStyle(l);
         return [l.dataset.line, s.strokeWidth + ' ' + s.strokeDasharray + ' ' + s.stroke]; })"""
TABLE = """(name) => Array.from(document.querySelectorAll('table[data-table=' + name + '] tr')).slice(1)
  .map(r => Array.from(r.cells).map(c => c.textContent))"""
STAGES = f"({TABLE})('stages')"
PERCENTILES = f"({TABLE})('percentiles')"
MESSAGES = f"({TABLE})('messages')"
INPUT_TABLE = f"({TABLE})('inputs')"
SHADE = """Array.from(document.querySelectorAll('figure[data-chart=cumulative] rect.shade')).map(
  r => r.getAttribute('width'))"""
SECTIONS = ['Counts', 'Inputs', 'Settings', 'Throughput over time', 'Time by step',
            'Model batches', 'Errors', 'Input features', 'Outputs']
EXTRA = {'overlaps': OVERLAPS, 'line_looks': LINE_LOOKS, 'stages': STAGES,
         'percentiles': PERCENTILES, 'messages': MESSAGES, 'inputs': INPUT_TABLE,
         'shade': SHADE}


def _render(path, extra: dict = None):
  """(page, figures, counts, examples), and where `extra` is given a dict
  of what it asked (the EXTRA expressions it names)."""
  asked = list(extra or ())
  page = browser.render(path, evaluate=[FIGURES, COUNTS, EXAMPLES, HEADINGS]
                        + [EXTRA[name] for name in asked])
  assert page.errors == [], page.errors
  assert page.requests == [], page.requests  # self-contained: nothing fetched
  figures, counts, examples, headings = page.values[:4]
  assert headings == SECTIONS
  assert all(f['width'] > 0 for f in figures)  # the charts are laid out
  # No text of a chart runs into another (axis titles, tick labels, keys).
  found = dict(zip(asked, page.values[4:]))
  if extra is not None:
    extra.update(found)
  return page, figures, dict(counts), dict(examples)


def _no_overlaps(overlaps):
  assert [(chart, bad) for chart, bad in overlaps if bad] == []


def _charts(figures, kind):
  return [f for f in figures if f['chart'] == kind]


def test_report_of_a_run_matches_its_summary(model_dir, tmp_path):
  lines = keras_lines('a', 600, bad_every=40)  # 15 schema errors, keyed
  lines[7] = '{"id": "a7", "features": [0.1,'  # a parse error
  write_lines(str(tmp_path / 'in' / '1.jsonl'), lines[:300])
  write_lines(str(tmp_path / 'in' / '2.jsonl'), lines[300:])
  out = tmp_path / 'out'
  predictions, errors, summary = run_job(
      str(out), *keras_args(model_dir, tmp_path / 'in' / '*.jsonl'), '--max_batch_size=16',
      '--min_batch_size=4', '--progress_interval=0')
  assert_conserved(summary, predictions, errors)
  path = out / 'report.html'
  assert 0 < path.stat().st_size < MAX_PAGE_BYTES

  # The throughput series: from nothing to the summary's figures, never back.
  series = summary['throughput']
  assert series['columns'] == ['elapsed_s', 'instances_read', 'predictions', 'errors']
  samples = series['samples']
  assert samples[0] == [0.0, 0, 0, 0] and 2 <= len(samples) <= progress.SERIES_MAX + 1
  assert samples[-1][1:] == [summary['instances_read'], summary['predictions'],
                             summary['errors']]
  for before, after in zip(samples, samples[1:]):
    assert all(a <= b for a, b in zip(before, after)), (before, after)
  assert samples[-1][0] <= summary['pipeline_wall_time_s'] + 0.5

  # The batch histograms: every batch in one bucket; the buckets hold the
  # smallest and the largest batch.
  batches = summary['batches']
  sizes, latencies = batches['size_histogram'], batches['latency_ms_histogram']
  assert sum(b['count'] for b in sizes) == batches['count']
  assert sum(b['count'] for b in latencies) == batches['count']
  assert sizes[0]['count'] and sizes[-1]['count'] and sizes[-1]['le'] <= 16
  assert sizes[0]['le'] >= batches['size']['min'] and sizes[-1]['le'] >= batches['size']['max']
  assert len(sizes) == 1 or sizes[-2]['le'] < batches['size']['max']
  assert latencies[-1]['le'] >= batches['latency_ms']['max']
  assert [b['le'] for b in sizes] == sorted(b['le'] for b in sizes)

  # Percentiles per model call, in the summary: the upper bound of the
  # bucket holding the value of that rank.
  percentiles = batches['latency_ms_percentiles']
  ranked = [b['le'] for b in latencies for _ in range(b['count'])]
  assert percentiles == {f'p{p}': ranked[-(-len(ranked) * p // 100) - 1] for p in (50, 95, 99)}
  # Time by step: each step timed, the model calls within the scoring.
  stages = summary['stages']
  assert set(stages['seconds']) == {'decode', 'score', 'format', 'write'}
  assert all(v > 0 for v in stages['seconds'].values()), stages
  assert abs(sum(stages['share'].values()) - 1) < 0.01
  assert 0 < stages['model_calls_s'] <= stages['seconds']['score']

  extra = dict.fromkeys(EXTRA)
  page, figures, counts, examples = _render(path, extra)
  _no_overlaps(extra['overlaps'])
  # The read line is drawn unlike the predicted one (it is not hidden under it).
  looks = dict(extra['line_looks'])
  assert len(set(looks.values())) == 3, looks
  # The time axis starts when the command did: the start-up is shaded.
  assert len(extra['shade']) == 1 and float(extra['shade'][0]) > 0
  assert [r[0] for r in extra['stages']] == ['read and decode', 'score (the model)',
                                             'format the records', 'write the files']
  assert [r[0] for r in extra['percentiles']] == ['p50', 'p95', 'p99']
  assert [float(r[1]) for r in extra['percentiles']] == [percentiles[f'p{p}']
                                                         for p in (50, 95, 99)]
  # The most frequent messages: numbers and quoted texts as placeholders,
  # every error record counted once.
  messages = {(r[1], r[2].split('example')[0]): int(r[0].replace(',', ''))
              for r in extra['messages']}
  assert sum(messages.values()) == len(errors)
  assert messages[('schema', "input '…' expects shape [N] per instance, got [N]")] == 15
  # The input's fields: every instance of the sample (all 600 lines; one is
  # no JSON), each numbers' count and quantiles.
  inputs = {r[0]: r[1:] for r in extra['inputs']}
  assert sorted(inputs) == ['bucket', 'features']
  given, missing, values, count = (int(v.replace(',', '')) for v in inputs['features'][:4])
  assert (given, missing) == (599, 0) and values == count == 599 * 3 - 15
  assert inputs['bucket'][:2] == ['599', '0']
  [features_chart] = [f for f in _charts(figures, 'input') if f['field'] == 'features']
  assert sum(features_chart['bars']) == values
  assert 'A sample of 599 instances (at most 10,000)' in page.dom
  # The counts table says what the summary says.
  assert counts['instances read'] == f'{summary["instances_read"]:,}'
  assert counts['predictions'] == f'{summary["predictions"]:,}'
  assert counts['errors'] == f'{summary["errors"]:,}'
  assert counts['output'] == str(out)
  assert f'exit status 0: {summary["exit_reason"]}' in page.dom
  # Charts: the series, the batch histograms (totals: the batch count).
  assert [f['lines'] for f in _charts(figures, 'rate')] == [1]
  assert [f['lines'] for f in _charts(figures, 'cumulative')] == [3]
  [size_chart] = _charts(figures, 'batch-sizes')
  [latency_chart] = _charts(figures, 'batch-latencies')
  assert size_chart['bars'] == [b['count'] for b in sizes]
  assert latency_chart['bars'] == [b['count'] for b in latencies]
  # Error examples: real error records, the first of each category.
  assert set(examples) == {'parse', 'schema'}
  by_category = {}
  for record in errors:
    by_category.setdefault(record['error']['category'], []).append(record)
  for category, shown in examples.items():
    assert len(shown) == min(report.EXAMPLES_PER_CATEGORY, len(by_category[category]))
    for text in shown:
      assert json.loads(text) in by_category[category]
  # One histogram per numeric output, of every value of the predictions.
  outputs = {f['field']: f['bars'] for f in _charts(figures, 'output')}
  assert sorted(outputs) == ['probs', 'score']
  assert sum(outputs['score']) == len(predictions) and len(outputs['score']) == report.BINS
  assert sum(outputs['probs']) == 2 * len(predictions)  # two numbers each
  assert f'From the first {len(predictions):,} predictions' in page.dom


@pytest.mark.parametrize('output_format', ['parquet', 'tfrecord'])
def test_output_histograms_of_every_output_format(model_dir, tmp_path, output_format):
  """The predictions are read back by transforms/rejoin/read_outputs.py; only the
  first SAMPLE_PREDICTIONS of them."""
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('p', 120))
  out = tmp_path / 'out'
  assert cli.main([*keras_args(model_dir, tmp_path / 'in.jsonl'), f'--output={out}',
                   f'--output_format={output_format}', '--progress_interval=0']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  from tf_batch_predict.transforms.rejoin.read_outputs import output_files
  directory = str(out)
  fields, sampled = report.output_values(
      output_files(directory)['predictions'],
      report._output_fields(summary))  # pylint: disable=protected-access
  assert sampled == 120 and sorted(fields) == ['probs', 'score']
  assert len(fields['score']) == 120 and len(fields['probs']) == 240
  assert all(0 <= p <= 1 for p in fields['probs'])
  page = (out / 'report.html').read_text()
  assert page.count('data-chart="output"') == 2


def test_report_of_the_demo_run_renders(tmp_path):
  """`make demo`'s model and data, the Makefile's command line."""
  sys.path.insert(0, os.path.join(ROOT, 'launch'))
  try:
    import make_demo
  finally:
    sys.path.remove(os.path.join(ROOT, 'launch'))
  demo = tmp_path / 'demo'
  make_demo.main(str(demo))
  out = demo / 'output'
  assert cli.main(['--model', str(demo / 'model'), '--input', str(demo / 'instances' / '*.jsonl'),
                   '--output', str(out), '--key_field', 'id',
                   '--passthrough_fields', 'label']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  path = out / 'report.html'
  assert path.stat().st_size < MAX_PAGE_BYTES
  page, figures, counts, examples = _render(path)
  assert counts['instances read'] == f'{summary["instances_read"]:,}'
  assert {f['chart'] for f in figures} == {'rate', 'cumulative', 'batch-sizes',
                                           'batch-latencies', 'output', 'input'}
  [churn] = _charts(figures, 'output')
  assert churn['field'] == 'churn_probability'
  assert sum(churn['bars']) == min(summary['predictions'], report.SAMPLE_PREDICTIONS)
  assert set(examples) == {c for c, n in summary['errors_by_category'].items() if n}


def test_a_report_that_fails_does_not_fail_the_run(model_dir, tmp_path, monkeypatch, caplog):
  """One warning line, the run's outputs complete, and no report.html: not
  even the previous run's, which would describe another result."""
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('f', 50))
  out = tmp_path / 'out'
  args = (*keras_args(model_dir, tmp_path / 'in.jsonl'), '--progress_interval=0')
  run_job(str(out), *args)
  assert (out / 'report.html').exists()

  def broken(*_):
    raise RuntimeError('no page today\nsecond line')
  monkeypatch.setattr(report, 'build', broken)
  with caplog.at_level(logging.INFO):
    predictions, errors, summary = run_job(str(out), *args)
  assert len(predictions) == 50 and summary['exit_status'] == 0
  assert not (out / 'report.html').exists()
  warnings = [r.getMessage() for r in caplog.records if r.name == 'tf_batch_predict.pipeline.report']
  assert warnings == ['report.html was not written (RuntimeError: no page today second '
                      'line); the outputs are complete']
  assert [r.levelno for r in caplog.records if r.name == 'tf_batch_predict.pipeline.report'] == [logging.WARNING]


def test_a_run_without_a_series_says_so():
  """Remote runners have no series: the page says so and gives the totals."""
  summary = {'instances_read': 1000, 'predictions': 990, 'errors': 10,
             'pipeline_wall_time_s': 12.5, 'instances_per_s': 80.0,
             'runner': 'DataflowRunner', 'throughput': None, 'exit_status': 0,
             'errors_by_category': {'parse': 10}, 'batches': None}
  page = report.render(summary, {}, {}, 0)
  assert 'No time series: the runner (DataflowRunner) runs its workers elsewhere' in page
  assert '1,000 instances read in 12.5 s: 80 instances/s on average.' in page
  assert '<script' not in page and 'href=' not in page and 'src=' not in page


def test_the_series_is_kept_with_the_progress_output_off_and_stays_small(monkeypatch):
  monkeypatch.setattr(progress, 'SERIES_MAX', 8)
  with progress.Reporter(0, total_bytes=100, series=True) as reporter:
    for i in range(1, 101):
      progress.add(progress.READ, 1)
      reporter._sample()  # pylint: disable=protected-access  (as the thread does)
    time.sleep(0.5)  # the thread's own samples (five a second at first)
  series = reporter.series()
  assert series[0] == [0.0, 0, 0, 0] and series[-1][1] == 100
  assert len(series) <= 9
  assert [s[1] for s in series] == sorted(s[1] for s in series)
  assert [s[0] for s in series] == sorted(s[0] for s in series)
  # Neither output nor series: nothing watched.
  with progress.Reporter(0, total_bytes=100) as reporter:
    progress.add(progress.READ, 1)
  assert reporter.series() is None


def test_the_browser_check_sees_errors_and_requests(tmp_path):
  """What the checks above rely on: tests/browser.py reports a page's
  script errors, console errors, failed loads and every request."""
  page = tmp_path / 'bad.html'
  page.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" '
                  'href="https://example.com/x.css"></head><body><img src="missing.png">'
                  '<script>console.error("boom"); undefinedThing();</script><p>hi</p>'
                  '</body></html>')
  rendered = browser.render(page, evaluate=['document.querySelectorAll("p").length'])
  assert rendered.values == [1] and '<p>hi</p>' in rendered.dom
  assert rendered.requests == ['https://example.com/x.css', (tmp_path / 'missing.png').as_uri()]
  text = '\n'.join(rendered.errors)
  for expected in ('console.error: boom', 'ReferenceError: undefinedThing',
                   'https://example.com/x.css', 'missing.png'):
    assert expected in text, rendered.errors


def _check_page_at_scale(path, summary):
  """What a page must be at any scale: small, self-contained, every chart
  laid out with no text running into another, the read line seen beside
  the predicted one, the start-up shaded, each section there."""
  assert 0 < path.stat().st_size < MAX_PAGE_BYTES
  extra = dict.fromkeys(EXTRA)
  page, figures, counts, _ = _render(path, extra)
  _no_overlaps(extra['overlaps'])
  assert counts['instances read'] == f'{summary["instances_read"]:,}'
  if summary.get('throughput'):
    assert len(set(dict(extra['line_looks']).values())) == 3
  return page, figures, extra


def test_report_of_ten_instances(model_dir, tmp_path):
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('t', 10))
  out = tmp_path / 'out'
  predictions, errors, summary = run_job(
      str(out), *keras_args(model_dir, tmp_path / 'in.jsonl'), '--progress_interval=0')
  assert len(predictions) == 10 and errors == []
  page, figures, extra = _check_page_at_scale(out / 'report.html', summary)
  assert extra['messages'] == []
  assert [r[:4] for r in extra['inputs']] == [['bucket', '10', '0', '10'],
                                              ['features', '10', '0', '30']]
  assert 'A sample of 10 instances' in page.dom


def _synthetic_million(tmp_path):
  """A summary of a 1,000,000-instance run made by summary.py's own
  functions from counters such a run reports, with small shard and input
  files beside it: the report's whole code path (report.write) at the
  figures of that scale, without scoring a million instances."""
  from tf_batch_predict.pipeline import summary as summaries
  from tf_batch_predict.transforms.model.score import (BATCH_LATENCY_BUCKET,
                                                       BATCH_SIZE_BUCKET, bucket)
  read, failed = 1_000_000, 12_346
  out = tmp_path / 'out'
  out.mkdir()
  # Error records: more than the report reads, with messages that differ
  # only in their numbers and quoted texts.
  with open(out / 'errors-00000-of-00001.jsonl', 'w') as f:
    for i in range(report.ERROR_RECORDS_READ + 2000):
      if i % 3:
        error = {'category': 'schema',
                 'message': f"input 'age' expects float32 numbers, got \"x{i}\""}
      else:
        error = {'category': 'parse', 'message': f'invalid JSON: Expecting value at '
                                                 f'character {i % 97}'}
      f.write(json.dumps({'id': f'e{i}', 'error': error, 'raw': 'x' * (i % 500)}) + '\n')
  with open(out / 'predictions-00000-of-00001.jsonl', 'w') as f:
    for i in range(3000):
      f.write(json.dumps({'id': f'p{i}', 'churn_probability': [(i * 7919 % 1000) / 1000]})
              + '\n')
  inputs = tmp_path / 'in'
  inputs.mkdir()
  cities = ['Lyon', 'Paris', 'Nantes', 'Lille']
  for part in range(3):
    with open(inputs / f'part-{part}.jsonl', 'w') as f:
      for i in range(6000):
        record = {'id': f'{part}-{i}', 'age': 18 + (i * 31) % 70, 'city': cities[i % 4]}
        if i % 50 == 0:
          del record['age']
        f.write(json.dumps(record) + '\n')
  batches = 1_000_000 // 512
  counts = {'model_batch_size': {'sum': read - failed, 'count': batches, 'min': 100,
                                 'max': 4096},
            'model_batch_latency_micro_secs': {'sum': 4_000 * batches, 'count': batches,
                                               'min': 900, 'max': 250_000},
            f'{BATCH_SIZE_BUCKET}{bucket(512)}': batches - 10,
            f'{BATCH_SIZE_BUCKET}{bucket(100)}': 5, f'{BATCH_SIZE_BUCKET}{bucket(4096)}': 5,
            f'{BATCH_LATENCY_BUCKET}{bucket(3500, 64)}us': batches - 60,
            f'{BATCH_LATENCY_BUCKET}{bucket(40_000, 64)}us': 50,
            f'{BATCH_LATENCY_BUCKET}{bucket(250_000, 64)}us': 10,
            'time_decode_us': 41_000_000, 'time_score_us': 160_000_000,
            'time_format_us': 22_000_000, 'time_write_us': 9_000_000}
  samples = [[0.0, 0, 0, 0]]
  for second in range(1, 301):
    done = min(read, second * 3400)
    samples.append([float(second), done, done - done * failed // read, done * failed // read])
  samples[-1] = [300.0, read, read - failed, failed]
  summary = {
      'instances_read': read, 'predictions': read - failed, 'errors': failed,
      'errors_by_category': {'parse': failed // 3, 'schema': failed - failed // 3, 'model': 0,
                             'file': 0},
      'errors_first_example': {}, 'blank_lines_skipped': 0, 'files_incomplete': 0,
      'incomplete_files': [],
      'model': {'path': '/models/churn/1', 'version': 1, 'signature': 'serving_default',
                'inputs': [{'name': 'age', 'dtype': 'float32', 'shape': []},
                           {'name': 'city', 'dtype': 'string', 'shape': []}],
                'takes_examples': False, 'example_features': None},
      'model_loads': 2, 'model_load_s': 0.4,
      'batches': summaries.batches(counts), 'stages': summaries.stages(counts),
      'input_files': 3, 'input_bytes': 123_456_789,
      'inputs': [{'pattern': str(inputs / '*.jsonl'), 'files': 3, 'bytes': 123_456_789}],
      'output': str(out), 'runner': 'FnApiRunner',
      'settings': {'key_field': 'id', 'passthrough_fields': [], 'input_format': 'auto',
                   'output_format': 'jsonl', 'output_fields': ['churn_probability'],
                   'max_instance_bytes': 4 << 20},
      'started_at': '2026-12-07T04:00:00.000Z', 'ended_at': '2026-12-07T04:05:12.500Z',
      'total_wall_time_s': 312.5, 'pipeline_wall_time_s': 300.0, 'wall_time_s': 300.0,
      'instances_per_s': 3333.3,
      'throughput': {'columns': ['elapsed_s', 'instances_read', 'predictions', 'errors'],
                     'samples': samples},
      'exit_status': 0, 'exit_reason': 'completed'}
  return summary, out


def test_report_of_a_million_instances(tmp_path):
  summary, out = _synthetic_million(tmp_path)
  started = time.monotonic()
  path = report.write(summary, str(out))
  assert time.monotonic() - started < 10  # bounded reads: a huge run costs a small one's
  page, figures, extra = _check_page_at_scale(out / 'report.html', summary)
  assert summary['batches']['latency_ms_percentiles'] == {'p50': 3.584, 'p95': 3.584,
                                                          'p99': 40.96}
  assert [r[2] for r in extra['stages']] == ['17.7%', '69.0%', '9.5%', '3.9%']
  # The messages: over the first ERROR_RECORDS_READ records only, said so.
  messages = [(r[1], r[2].split('example')[0], int(r[0].replace(',', '')))
              for r in extra['messages']]
  assert messages[0] == ('schema', "input '…' expects float32 numbers, got '…'", 6666)
  assert messages[1] == ('parse', 'invalid JSON: Expecting value at character N', 3334)
  assert sum(m[2] for m in messages) == report.ERROR_RECORDS_READ
  assert 'at most 10,000 are read' in page.dom
  # The input: a sample of INPUT_SAMPLE_INSTANCES, spread over the files.
  inputs = {r[0]: r for r in extra['inputs']}
  assert sorted(inputs) == ['age', 'city']
  given, missing = (int(v.replace(',', '')) for v in inputs['age'][1:3])
  assert given + missing == report.INPUT_SAMPLE_INSTANCES and 190 <= missing <= 210
  top = dict(re.findall(r'(\w+) \(([\d,]+)\)', inputs['city'][-1]))
  assert sorted(top) == sorted(['Lyon', 'Paris', 'Nantes', 'Lille'])
  assert sum(int(c.replace(',', '')) for c in top.values()) == report.INPUT_SAMPLE_INSTANCES
  assert 'A sample of 10,000 instances (at most 10,000)' in page.dom
  assert {f['field'] for f in _charts(figures, 'input')} == {'age'}
  [churn] = _charts(figures, 'output')
  assert sum(churn['bars']) == report.SAMPLE_PREDICTIONS
  # Six- and seven-digit tick labels, clear of the axis titles (checked above).
  assert '1,000,000' in page.dom and path.endswith('report.html')


def test_input_fields_of_tfrecord_examples_and_csv(model_dir, tmp_path):
  """The sample is read by each format's own reader: TFRecords of
  tf.Examples (the features of the graph's parsing spec) and CSV (cells
  that are numbers counted as numbers, an empty cell as missing)."""
  from tests.test_formats import example_bytes, write_tfrecords
  records = [example_bytes({'age': float(20 + i), 'thal': 'fixed' if i % 2 else 'normal',
                            **({'count': i} if i % 3 else {})}) for i in range(30)]
  write_tfrecords(str(tmp_path / 'in.tfrecord'), records)
  out = tmp_path / 'out'
  predictions, errors, summary = run_job(
      str(out), f'--model={model_dir / "estimator"}', f'--input={tmp_path / "in.tfrecord"}',
      '--progress_interval=0')
  assert len(predictions) == 30 and errors == []
  assert summary['model']['takes_examples'] and sorted(summary['model']['example_features']) \
      == ['age', 'count', 'thal']
  _, _, extra = _check_page_at_scale(out / 'report.html', summary)
  inputs = {r[0]: r[1:] for r in extra['inputs']}
  assert inputs['age'][:4] == ['30', '0', '30', '30'] and inputs['age'][4] == '20'
  assert inputs['count'][:2] == ['20', '10']
  assert inputs['thal'][-1] == 'fixed (15), normal (15)'

  lines = ['id,features,bucket'] + [f'c{i},"[{i}, 1.5, -2]",{i % 4 if i % 5 else ""}'
                                    for i in range(20)]
  write_lines(str(tmp_path / 'in.csv'), lines)
  out = tmp_path / 'csv'
  predictions, errors, summary = run_job(
      str(out), *keras_args(model_dir, tmp_path / 'in.csv'), '--progress_interval=0',
      '--max_error_fraction=1')
  _, _, extra = _check_page_at_scale(out / 'report.html', summary)
  inputs = {r[0]: r[1:] for r in extra['inputs']}
  assert inputs['bucket'][:4] == ['16', '4', '16', '16']
