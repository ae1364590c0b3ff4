"""report.html: a run's summary as a small, self-contained web page.

Written next to summary.json in the staging folder (pipeline/cli.py
`run_and_promote`) and promoted with it. It holds the summary's counts and
settings, throughput over time (the local runner's series, pipeline/
progress.py; remote runners have none and the page says so), histograms of
the model batches' sizes and latencies (the bucket counters of
transforms/model/score.py, via the summary), the error categories with a few
example records each (from the first records of the staged error files),
and a histogram of each numeric output (from the first SAMPLE_PREDICTIONS
predictions of the staged prediction files). Reads are bounded: a huge
result costs what a small one does.

Viewable offline: inline CSS and inline SVG, no script, no link, nothing
fetched. The charts are hand-written SVG rather than matplotlib because
every run pays for this page: measured here (2 cores), importing
matplotlib.pyplot takes ~0.8 s and each histogram as a PNG 30-80 ms and
~7 KB of base64 (as SVG ~14 KB); the whole page of the demo run, reading
included, takes ~20 ms and ~20 KB this way.

Nothing here may fail a run: `write_quietly` logs one warning line instead.
"""
import html
import json
import logging
import math
import numbers

from apache_beam.io.filesystems import FileSystems

from tf_batch_predict.pipeline.summary import how_model_ran

_LOG = logging.getLogger(__name__)

REPORT_NAME = 'report.html'
SAMPLE_PREDICTIONS = 2000  # predictions read for the output histograms
ERROR_RECORDS_READ = 500  # error records read, at most, for the examples
EXAMPLES_PER_CATEGORY = 3
MAX_VALUES_PER_FIELD = 100_000  # numbers taken per output field (long vectors)
MAX_OUTPUT_CHARTS = 40  # histograms drawn, at most (the first numeric outputs)
BINS = 20
TEXT_CUT = 300  # characters of a value shown in an example record
LOCATION_FIELDS = ('filename', 'offset', 'index')


def write_quietly(summary: dict, directory: str):
  """Writes DIRECTORY/report.html; returns its path, or None (and logs one
  warning line) where it could not be built or written: the report never
  fails a run."""
  try:
    return write(summary, directory)
  except Exception as e:  # pylint: disable=broad-except
    text = ' '.join(str(e).split())[:200]
    _LOG.warning('report.html was not written (%s%s); the outputs are complete',
                 type(e).__name__, f': {text}' if text else '')
    _LOG.debug('report.html failed', exc_info=True)
    return None


def write(summary: dict, directory: str) -> str:
  page = build(summary, directory)
  path = f'{directory}/{REPORT_NAME}'
  with FileSystems.create(path, mime_type='text/html') as f:
    f.write(page.encode('utf-8'))
  return path


def build(summary: dict, directory: str) -> str:
  """The page for a run whose summary this is and whose shards are in
  `directory` (the staging folder, or a promoted output directory)."""
  from tf_batch_predict.transforms.rejoin.read_outputs import output_files
  shards = output_files(directory)
  examples = error_examples(shards['errors'])
  fields, sampled = output_values(shards['predictions'], _output_fields(summary))
  return render(summary, examples, fields, sampled)


# --- reading the staged shards (bounded) -----------------------------------

def _first_records(paths, limit: int):
  """Up to `limit` records from the files in order (transforms/rejoin/read_outputs.py
  reads JSON Lines, Parquet and TFRecord), reading no further. A file that
  cannot be read ends its part of the sample: the page shows what was read."""
  from tf_batch_predict.transforms.rejoin.read_outputs import iter_records
  taken = 0
  for path in paths:
    if taken >= limit:
      return
    records = iter_records(path, limit - taken)
    try:
      for record in records:
        yield record
        taken += 1
    except Exception:  # pylint: disable=broad-except
      _LOG.debug('report.html: reading %s stopped', path, exc_info=True)
    finally:
      records.close()


def error_examples(paths) -> dict:
  """Category -> up to EXAMPLES_PER_CATEGORY error records, from the first
  ERROR_RECORDS_READ records of the error files."""
  examples = {}
  for record in _first_records(paths, ERROR_RECORDS_READ):
    error = record.get('error') if isinstance(record, dict) else None
    category = error.get('category') if isinstance(error, dict) else None
    if category is None:
      continue
    chosen = examples.setdefault(str(category), [])
    if len(chosen) < EXAMPLES_PER_CATEGORY:
      chosen.append(record)
  return examples


def _output_fields(summary: dict) -> list:
  """The names the outputs have in a prediction record (an output named as
  a carried field is written as `<name>_output`: transforms/write/format.py)."""
  settings = summary.get('settings') or {}
  outputs = list(settings.get('output_fields') or [])
  carried = [f for f in [settings.get('key_field'), *(settings.get('passthrough_fields') or [])]
             if f]
  if not settings.get('key_field'):
    carried += list(LOCATION_FIELDS)
  try:
    from tf_batch_predict.transforms.write.format import output_names
    return list(output_names(outputs, carried).values())
  except Exception:  # pylint: disable=broad-except
    return [o for o in outputs if o not in carried]


def _numbers(value, into: list, limit: int) -> None:
  """Appends the numbers of a value (a number, or nested lists of them);
  strings, bytes and booleans are no numbers."""
  if len(into) >= limit or value is None or isinstance(value, (bool, str, bytes)):
    return
  if isinstance(value, numbers.Real):
    try:
      into.append(float(value))
    except OverflowError:  # an integer beyond any float
      into.append(math.inf if value > 0 else -math.inf)
  elif isinstance(value, (list, tuple)) or hasattr(value, 'tolist'):
    items = value.tolist() if hasattr(value, 'tolist') else value
    if isinstance(items, (list, tuple)):
      for item in items:
        _numbers(item, into, limit)
    else:
      _numbers(items, into, limit)


def output_values(paths, fields) -> tuple:
  """({field: [numbers]}, predictions read) over the first
  SAMPLE_PREDICTIONS predictions; a field without numbers is left out."""
  values = {f: [] for f in fields}
  count = 0
  for record in _first_records(paths, SAMPLE_PREDICTIONS):
    count += 1
    for field in fields:
      if field in record:
        _numbers(record[field], values[field], MAX_VALUES_PER_FIELD)
  return {f: v for f, v in values.items() if v}, count


# --- the page -------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#222;
padding:0 1em}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;
border-bottom:1px solid #ccc}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0}td,th{padding:2px 10px 2px 0;text-align:left;
vertical-align:top}th{font-weight:600;color:#555}td.n{text-align:right;
font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.bad{color:#b42318}.note{color:#666;font-size:.9em}
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
figcaption{font-size:.9em;color:#444}
pre{background:#f6f6f6;padding:.4em;overflow-x:auto;font-size:12px;margin:.2em 0;
white-space:pre-wrap;word-break:break-all}
svg{background:#fff}svg text{font:11px system-ui,sans-serif;fill:#444}
.axis{stroke:#999;stroke-width:1}.grid{stroke:#eee;stroke-width:1}
.bar{fill:#4c78a8}.l0{stroke:#4c78a8}.l1{stroke:#54a24b}.l2{stroke:#e45756}
.line{fill:none;stroke-width:2}.key0{fill:#4c78a8}.key1{fill:#54a24b}.key2{fill:#e45756}
"""

_W, _H = 460, 190  # chart size (px)
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 24, 34


def _e(value) -> str:
  return html.escape(str(value), quote=True)


def _n(value) -> str:
  """A number as the page shows it."""
  if value is None:
    return '–'
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, int):
    return f'{value:,}'
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)
    if value == int(value) and abs(value) < 1e15 or abs(value) >= 1000:
      return f'{value:,.0f}'
    return f'{value:.4g}'
  return str(value)


def _ticks(top: float, count: int = 4) -> list:
  """Round tick values from 0 to at least `top`."""
  if top <= 0:
    return [0, 1]
  raw = top / count
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
  return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _frame(y_top: float, y_label: str, x_label: str) -> tuple:
  """(svg parts of the axes and grid, y scale) for values 0..y_top."""
  ticks = _ticks(y_top)
  top = ticks[-1] or 1
  plot_h = _H - _TOP - _BOTTOM

  def y(v):
    return _TOP + plot_h * (1 - v / top)
  parts = []
  for t in ticks:
    parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(t):.1f}" '
                 f'y2="{y(t):.1f}"/><text x="{_LEFT - 4}" y="{y(t) + 4:.1f}" '
                 f'text-anchor="end">{_e(_n(t))}</text>')
  parts.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" '
               f'y2="{_H - _BOTTOM}"/>')
  parts.append(f'<text x="{(_LEFT + _W - _RIGHT) / 2:.0f}" y="{_H - 4}" '
               f'text-anchor="middle">{_e(x_label)}</text>')
  parts.append(f'<text transform="translate(12 {(_TOP + _H - _BOTTOM) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{_e(y_label)}</text>')
  return parts, y


def _svg(parts: list, label: str) -> str:
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
          f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(label)}">'
          + ''.join(parts) + '</svg>')


# Each chart's figure says what it is (data-chart, and data-field for an
# output) and each bar its value (data-count): tests/test_report.py checks
# the figures against the summary through them.


def bar_chart(bars: list, x_label: str, y_label: str, label: str,
              edges: tuple = None) -> str:
  """Bars of (label under the bar or '', value, tooltip). `edges`: (left,
  right) texts under the ends of the axis (a histogram of numbers)."""
  parts, y = _frame(max((b[1] for b in bars), default=0), y_label, x_label)
  width = (_W - _LEFT - _RIGHT) / max(1, len(bars))
  # Labels under every `every`-th bar, as many as fit side by side (about
  # 6.5 px a character at the page's font size).
  longest = max((len(b[0]) for b in bars if b[0]), default=0)
  every = max(1, math.ceil(len(bars) * (longest * 6.5 + 8) / (_W - _LEFT - _RIGHT)))
  for i, (text, value, tip) in enumerate(bars):
    x = _LEFT + i * width
    top = y(value)
    parts.append(f'<rect class="bar" data-count="{value}" x="{x + 1:.1f}" y="{top:.1f}" '
                 f'width="{max(1.0, width - 2):.1f}" height="{_H - _BOTTOM - top:.1f}">'
                 f'<title>{_e(tip)}</title></rect>')
    if text and i % every == 0:
      parts.append(f'<text x="{x + width / 2:.1f}" y="{_H - _BOTTOM + 13}" '
                   f'text-anchor="middle">{_e(text)}</text>')
  if edges:
    parts.append(f'<text x="{_LEFT}" y="{_H - _BOTTOM + 13}">{_e(edges[0])}</text>')
    parts.append(f'<text x="{_W - _RIGHT}" y="{_H - _BOTTOM + 13}" '
                 f'text-anchor="end">{_e(edges[1])}</text>')
  return _svg(parts, label)


def line_chart(lines: list, x_label: str, y_label: str, label: str) -> str:
  """Lines of (name, [(x, y), ...]), x from 0; a key at the top left."""
  x_top = max((x for _, points in lines for x, _ in points), default=0) or 1
  y_top = max((v for _, points in lines for _, v in points), default=0)
  parts, y = _frame(y_top, y_label, x_label)
  plot_w = _W - _LEFT - _RIGHT

  def x(v):
    return _LEFT + plot_w * v / x_top
  for t in _ticks(x_top, 5):
    if t <= x_top * 1.0001:
      parts.append(f'<text x="{x(t):.1f}" y="{_H - _BOTTOM + 13}" '
                   f'text-anchor="middle">{_e(_n(t))}</text>')
  for i, (name, points) in enumerate(lines):
    if points:
      path = ' '.join(f'{x(a):.1f},{y(b):.1f}' for a, b in points)
      parts.append(f'<polyline class="line l{i % 3}" points="{path}"><title>{_e(name)}'
                   '</title></polyline>')
    parts.append(f'<rect class="key{i % 3}" x="{_LEFT + 130 * i}" y="5" '
                 f'width="10" height="10"/><text x="{_LEFT + 14 + 130 * i}" '
                 f'y="14">{_e(name)}</text>')
  return _svg(parts, label)


def _figure(chart: str, caption: str, kind: str, field: str = None) -> str:
  field = '' if field is None else f' data-field="{_e(field)}"'
  return (f'<figure data-chart="{kind}"{field}>{chart}<figcaption>{caption}</figcaption>'
          '</figure>')


def _table(rows, header=None, numeric=()) -> str:
  out = ['<table>']
  if header:
    out.append('<tr>' + ''.join(f'<th>{_e(h)}</th>' for h in header) + '</tr>')
  for row in rows:
    out.append('<tr>' + ''.join(
        f'<td class="n">{_e(_n(c))}</td>' if i in numeric else
        (f'<th>{_e(c)}</th>' if i == 0 and not header else f'<td>{_e(_n(c))}</td>')
        for i, c in enumerate(row)) + '</tr>')
  out.append('</table>')
  return ''.join(out)


def _rates(samples: list) -> list:
  """[(elapsed_s, instances read per second)] as steps: the rate of each
  interval between samples at least half a second apart (the last, taken
  when the pipeline ended, may follow the one before it closely), at both
  its ends."""
  points, previous = [], samples[0] if samples else None
  for sample in samples[1:]:
    dt = sample[0] - previous[0]
    if dt >= 0.5 or sample is samples[-1] and dt > 0:
      rate = max(0.0, (sample[1] - previous[1]) / dt)
      points += [(previous[0], rate), (sample[0], rate)]
      previous = sample
  return points


def _throughput(summary: dict) -> str:
  series = summary.get('throughput')
  totals = (f'{_n(summary.get("instances_read"))} instances read in '
            f'{_n(summary.get("pipeline_wall_time_s", summary.get("wall_time_s")))} s: '
            f'{_n(summary.get("instances_per_s"))} instances/s on average.')
  if not series or not series.get('samples'):
    return (f'<p>{_e(totals)}</p><p class="note">No time series: the runner '
            f'({_e(summary.get("runner"))}) runs its workers elsewhere, and only the local '
            'runner is watched while it runs.</p>')
  samples = series['samples']
  rate = line_chart([('instances read/s (mean of each step)', _rates(samples))],
                    'seconds since the pipeline started', 'instances/s',
                    'instances read per second')
  cumulative = line_chart(
      [(name, [(s[0], s[i]) for s in samples])
       for i, name in ((1, 'read'), (2, 'predicted'), (3, 'errors'))],
      'seconds since the pipeline started', 'instances', 'instances so far')
  return (f'<p>{_e(totals)}</p><div class="charts">'
          + _figure(rate, 'Instances read per second', 'rate')
          + _figure(cumulative, 'Instances read, predicted and failed so far', 'cumulative')
          + f'</div><p class="note">{len(samples)} samples of the local runner\'s progress '
            'counts, about one a second (five a second in the first seconds; a long run\'s '
            'are thinned).</p>')


def _batches(summary: dict) -> str:
  batches = summary.get('batches')
  if not batches:
    return '<p class="note">No model batch figures were reported.</p>'
  size, latency = batches.get('size') or {}, batches.get('latency_ms') or {}
  text = (f'<p>{_n(batches["count"])} batches, {_n(batches["instances"])} instances; '
          f'size mean {_n(size.get("mean"))} (min {_n(size.get("min"))}, max '
          f'{_n(size.get("max"))}); latency mean {_n(latency.get("mean"))} ms (min '
          f'{_n(latency.get("min"))}, max {_n(latency.get("max"))} ms).</p>')
  charts = []
  sizes = batches.get('size_histogram') or []
  if sizes:
    bars = [(f'≤{_n(b["le"])}', b['count'],
             f'{_n(b["count"])} batches of at most {_n(b["le"])} instances') for b in sizes]
    charts.append(_figure(bar_chart(bars, 'instances per batch (buckets: 4 per doubling)',
                                    'batches', 'batch sizes'), 'Batch sizes', 'batch-sizes'))
  latencies = batches.get('latency_ms_histogram') or []
  if latencies:
    bars = [(f'≤{_n(b["le"])}', b['count'], f'{_n(b["count"])} batches of at most '
             f'{_n(b["le"])} ms') for b in latencies]
    charts.append(_figure(bar_chart(bars, 'milliseconds per batch (buckets: 4 per doubling)',
                                    'batches', 'batch latencies'), 'Batch latencies',
                          'batch-latencies'))
  if not charts:
    return text + '<p class="note">No batch histograms were reported.</p>'
  return text + '<div class="charts">' + ''.join(charts) + '</div>'


def _cut(value):
  """A record for display: long strings cut."""
  if isinstance(value, dict):
    return {k: _cut(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_cut(v) for v in value[:20]] + (['...'] if len(value) > 20 else [])
  if isinstance(value, str) and len(value) > TEXT_CUT:
    return value[:TEXT_CUT] + f'... ({len(value):,} characters)'
  return value


def _errors(summary: dict, examples: dict) -> str:
  by_category = summary.get('errors_by_category') or {}
  rows = [(c, n) for c, n in by_category.items()]
  out = [_table(rows, ('category', 'error records'), numeric=(1,))]
  first = summary.get('errors_first_example') or {}
  for category, count in by_category.items():
    if not count:
      continue
    records = examples.get(category)
    out.append(f'<section data-category="{_e(category)}"><h3>{_e(category)}: {_n(count)}'
               '</h3>')
    if records:
      out.append(f'<p class="note">The first {len(records)} of this category in the error '
                 'files:</p>')
      out += [f'<pre class="example">'
              f'{_e(json.dumps(_cut(r), ensure_ascii=False, default=str))}</pre>'
              for r in records]
    elif category in first:
      out.append('<p class="note">None in the first records of the error files; one '
                 f'message of the run:</p><pre>{_e(first[category])}</pre>')
    out.append('</section>')
  if summary.get('incomplete_files'):
    out.append('<h3>Input files that could not be read completely</h3><ul>'
               + ''.join(f'<li>{_e(p)}</li>' for p in summary['incomplete_files']) + '</ul>')
  return ''.join(out)


def histogram(values: list, bins: int = BINS) -> dict:
  """{edges, counts, n, min, max, mean, non_finite} of the finite values."""
  finite = [v for v in values if math.isfinite(v)]
  result = {'n': len(values), 'non_finite': len(values) - len(finite), 'edges': [],
            'counts': []}
  if not finite:
    return result
  low, high = min(finite), max(finite)
  result.update(min=low, max=high, mean=sum(finite) / len(finite))  # (fsum raises on overflow)
  if high == low:
    result.update(edges=[low, high], counts=[len(finite)])
    return result
  width = (high - low) / bins
  if not math.isfinite(width) or width <= 0:  # a span beyond the floats: one bin
    result.update(edges=[low, high], counts=[len(finite)])
    return result
  counts = [0] * bins
  for v in finite:
    counts[min(bins - 1, int((v - low) / width))] += 1
  result.update(edges=[low + i * width for i in range(bins)] + [high], counts=counts)
  return result


def _outputs(fields: dict, sampled: int) -> str:
  if not sampled:
    return '<p class="note">No prediction to show.</p>'
  if not fields:
    return (f'<p class="note">No numeric output in the first {_n(sampled)} '
            'predictions.</p>')
  more = len(fields) - MAX_OUTPUT_CHARTS
  out = [f'<p class="note">From the first {_n(sampled)} predictions (of the prediction '
         'files in order); a vector output counts each of its numbers.'
         + (f' The first {MAX_OUTPUT_CHARTS} numeric outputs; {_n(more)} more are not shown.'
            if more > 0 else '') + '</p><div class="charts">']
  for field, values in list(fields.items())[:MAX_OUTPUT_CHARTS]:
    h = histogram(values)
    if not h['counts']:
      out.append(f'<p>{_e(field)}: no finite value ({_n(h["non_finite"])} not finite)</p>')
      continue
    bars = [('', c, f'{_n(c)} values in [{_n(a)}, {_n(b)}]')
            for a, b, c in zip(h['edges'], h['edges'][1:], h['counts'])]
    chart = bar_chart(bars, field, 'count', f'{field} histogram',
                      edges=(_n(h['min']), _n(h['max'])))
    caption = (f'<b>{_e(field)}</b>: {_n(h["n"])} values, mean {_n(h["mean"])}, min '
               f'{_n(h["min"])}, max {_n(h["max"])}'
               + (f', {_n(h["non_finite"])} not finite' if h['non_finite'] else ''))
    out.append(_figure(chart, caption, 'output', field))
  out.append('</div>')
  return ''.join(out)


def _counts(summary: dict) -> list:
  model = summary.get('model') or {}
  version = f' (version {model["version"]})' if model.get('version') is not None else ''
  rows = [('instances read', summary.get('instances_read')),
          ('predictions', summary.get('predictions')),
          ('errors', summary.get('errors')),
          ('blank lines skipped', summary.get('blank_lines_skipped')),
          ('files incomplete', summary.get('files_incomplete')),
          ('input', f'{_n(summary.get("input_files"))} files, '
                    f'{_n(summary.get("input_bytes"))} bytes'),
          ('model', f'{model.get("path")}{version}, signature {model.get("signature")}'
                    + ''.join(f'; {h}' for h in how_model_ran(model))),
          ('model loads', summary.get('model_loads')),
          ('model load (s, mean)', summary.get('model_load_s')),
          ('runner', summary.get('runner')),
          ('started', summary.get('started_at')), ('ended', summary.get('ended_at')),
          ('wall time (s)', f'{_n(summary.get("total_wall_time_s"))} in all, the pipeline '
                            f'{_n(summary.get("pipeline_wall_time_s"))}'),
          ('throughput', f'{_n(summary.get("instances_per_s"))} instances/s'),
          ('output', summary.get('output'))]
  return rows


def _setting(value) -> str:
  if isinstance(value, (list, tuple)):
    return ', '.join(str(v) for v in value) or '–'
  return _n(value)


def render(summary: dict, examples: dict, fields: dict, sampled: int) -> str:
  status = summary.get('exit_status')
  inputs = summary.get('inputs') or []
  body = [
      f'<h1>batch-predict run: {_n(summary.get("instances_read"))} instances, '
      f'{_n(summary.get("predictions"))} predictions, {_n(summary.get("errors"))} errors</h1>',
      f'<p class="{"ok" if status == 0 else "bad"}">exit status {_e(status)}: '
      f'{_e(summary.get("exit_reason"))}</p>',
      '<h2>Counts</h2>', _table(_counts(summary)),
      '<h2>Inputs</h2>',
      _table([(i.get('pattern'), i.get('files'), i.get('bytes')) for i in inputs],
             ('pattern', 'files', 'bytes'), numeric=(1, 2)),
      '<h2>Settings</h2>',
      _table([(k, _setting(v)) for k, v in (summary.get('settings') or {}).items()]),
      '<h2>Throughput over time</h2>', _throughput(summary),
      '<h2>Model batches</h2>', _batches(summary),
      '<h2>Errors</h2>', _errors(summary, examples),
      '<h2>Outputs</h2>', _outputs(fields, sampled),
      '<p class="note">Written by batch-predict with summary.json; self-contained, '
      'nothing is fetched.</p>',
  ]
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          '<meta name="viewport" content="width=device-width,initial-scale=1">'
          f'<title>batch-predict report: {_e(summary.get("output"))}</title>'
          f'<style>{_CSS}</style></head><body>' + ''.join(body) + '</body></html>\n')
