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
SECTIONS = ['Counts', 'Inputs', 'Settings', 'Throughput over time', 'Model batches', 'Errors',
            'Outputs']


def _render(path):
  page = browser.render(path, evaluate=[FIGURES, COUNTS, EXAMPLES, HEADINGS])
  assert page.errors == [], page.errors
  assert page.requests == [], page.requests  # self-contained: nothing fetched
  figures, counts, examples, headings = page.values
  assert headings == SECTIONS
  assert all(f['width'] > 0 for f in figures)  # the charts are laid out
  return page, figures, dict(counts), dict(examples)


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

  page, figures, counts, examples = _render(path)
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
                                           'batch-latencies', 'output'}
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
