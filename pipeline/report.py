"""report.html: a run's summary as a small, self-contained web page.

Written next to summary.json in the staging folder (pipeline/cli.py
`run_and_promote`) and promoted with it. It holds the summary's counts and
settings; throughput over time from the command's start (the local
runner's series, pipeline/progress.py, shifted by the start-up, which is
shaded; remote runners have none and the page says so); the time in each
step (decode, score, format, write: summary.json `stages`, the job's
per-chunk time counters summed over workers); the model calls' latency
percentiles (bucket upper bounds) and histograms of the model batches'
sizes and latencies (the bucket counters of transforms/model/score.py, via
the summary); the error categories with a few example records each and the
most frequent messages (numbers and quoted texts normalized) with counts
and one example each, from the first ERROR_RECORDS_READ records of the
staged error files; each input field of a bounded sample of the input
(INPUT_SAMPLE_INSTANCES instances read by the job's own readers, as
preflight reads them: counts, missing values, quantiles and a histogram of
numbers, the most frequent texts); and a histogram of each numeric output
(from the first SAMPLE_PREDICTIONS predictions of the staged prediction
files). Reads are bounded: a huge result costs what a small one does
(about 0.3 s with every bound reached, measured here).

Viewable offline: inline CSS and inline SVG, no script, no link, nothing
fetched. The charts are hand-written SVG rather than matplotlib because
every run pays for this page: measured here (2 cores), importing
matplotlib.pyplot takes ~0.8 s and each histogram as a PNG 30-80 ms and
~7 KB of base64 (as SVG ~14 KB); the whole page of the demo run, reading
and the input's sample included, takes ~70 ms and ~40 KB this way.

Nothing here may fail a run: `write_quietly` logs one warning line instead.
"""
import collections
import dataclasses
import html
import json
import logging
import math
import numbers
import re
import time

from apache_beam.io.filesystems import FileSystems

from tf_batch_predict.pipeline.summary import how_model_ran

_LOG = logging.getLogger(__name__)

REPORT_NAME = 'report.html'
SAMPLE_PREDICTIONS = 2000  # predictions read for the output histograms
ERROR_RECORDS_READ = 10_000  # error records read, at most, for the examples and messages
MESSAGES_SHOWN = 10  # most frequent error messages shown
MAX_MESSAGE_GROUPS = 1000  # distinct messages told apart in the records read
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
  examples, groups, read = read_errors(shards['errors'])
  fields, sampled = output_values(shards['predictions'], _output_fields(summary))
  try:
    inputs = input_sample(summary)
  except Exception:  # pylint: disable=broad-except  (the page goes on without it)
    _LOG.debug('report.html: the input sample failed', exc_info=True)
    inputs = None
  return render(summary, examples, fields, sampled, (groups, read), inputs)


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
  return read_errors(paths)[0]


_QUOTED = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\"""")
_NUMBER = re.compile(r'(?<![A-Za-z_\d])[-+]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?')


def message_pattern(message: str) -> str:
  """An error message with what varies from instance to instance replaced:
  quoted texts by '…', numbers by N (`missing input field 'x'` and `... 'y'`
  are one; `line 12` and `line 13` too)."""
  text = _QUOTED.sub("'…'", ' '.join(str(message).split()))
  return _NUMBER.sub('N', text)[:TEXT_CUT]


def read_errors(paths) -> tuple:
  """({category: up to EXAMPLES_PER_CATEGORY records}, [{category, pattern,
  count, example}] most frequent first, records read), from the first
  ERROR_RECORDS_READ records of the error files."""
  examples, groups, read = {}, {}, 0
  for record in _first_records(paths, ERROR_RECORDS_READ):
    read += 1
    error = record.get('error') if isinstance(record, dict) else None
    category = error.get('category') if isinstance(error, dict) else None
    if category is None:
      continue
    chosen = examples.setdefault(str(category), [])
    if len(chosen) < EXAMPLES_PER_CATEGORY:
      chosen.append(record)
    key = (str(category), message_pattern(error.get('message', '')))
    group = groups.get(key)
    if group is None:
      if len(groups) >= MAX_MESSAGE_GROUPS:  # the rest counted apart
        key = (str(category), '(other messages)')
        group = groups.get(key)
      if group is None:
        group = groups[key] = {'category': key[0], 'pattern': key[1], 'count': 0,
                               'example': record}
    group['count'] += 1
  ranked = sorted(groups.values(), key=lambda g: (-g['count'], g['category'], g['pattern']))
  return examples, ranked, read


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


# --- a sample of the input (bounded) -----------------------------------------

INPUT_SAMPLE_INSTANCES = 10_000  # instances of the input described, at most
INPUT_SAMPLE_FILES = 20  # files read for them, at most (spread over the input)
INPUT_SAMPLE_BYTES = 32 << 20  # bytes read for them, about, at most (4 MiB a file)
INPUT_SAMPLE_SECONDS = 5.0  # no file is opened after this
MAX_INPUT_FIELDS = 40  # input fields described, at most
INPUT_VALUES_PER_FIELD = 20_000  # numbers kept per field (long vectors)
# Values described in all, at most: each is parsed by the format's exact
# definition (a Python object per number), so a sample of wide instances
# (784-float images: ~1 s for 900 of them) stops at about this many
# (64 such images; the histograms keep 20,000 numbers a field anyway).
INPUT_SAMPLE_VALUES = 50_000
DISTINCT_TEXTS = 1000  # distinct texts counted per field; the rest as others
TOP_TEXTS = 5
TEXT_VALUE_CUT = 40


@dataclasses.dataclass
class FieldSample:
  """What the sample shows of one input field."""
  name: str
  present: int = 0  # instances that give it
  missing: int = 0  # instances without it (absent, null, an empty CSV cell)
  numbers: list = dataclasses.field(default_factory=list)
  texts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  other_texts: int = 0  # texts beyond DISTINCT_TEXTS distinct ones
  values: int = 0  # values given (a list counts each of its elements)


@dataclasses.dataclass
class InputSample:
  fields: list  # FieldSample, in the order described
  instances: int = 0  # instances described
  unreadable: int = 0  # records of the sample that are no instance
  files: int = 0  # files read
  files_matched: int = 0
  values: int = 0  # values described, in all fields
  cut: str = ''  # why the sample stopped short, where it did
  # The fields are those the sample shows (the first MAX_INPUT_FIELDS
  # seen), not the model's inputs by name.
  seen_fields: bool = False
  failed: list = dataclasses.field(default_factory=list)  # (path, reason) not sampled


def _described_fields(summary: dict) -> list:
  """The fields an instance gives the model: its inputs by name, or for a
  signature of serialized tf.Examples the features of its parsing spec;
  [] where the summary does not say (a signature of Examples whose
  features the graph does not tell: then the fields the sample shows)."""
  model = summary.get('model') or {}
  features = model.get('example_features')
  if features:
    return list(features)
  if model.get('takes_examples'):
    return []
  return [i['name'] for i in model.get('inputs') or [] if i.get('name')]


def _signature(summary: dict):
  """The SignatureSpec a request file's reader needs, from the summary."""
  from tf_batch_predict.transforms.model.savedmodel import SignatureSpec, TensorSpec
  model = summary.get('model') or {}
  inputs = tuple(TensorSpec(i['name'], i.get('dtype') or 'float32',
                            None if i.get('shape') is None else tuple(i['shape']))
                 for i in model.get('inputs') or [])
  return SignatureSpec(model.get('signature') or 'serving_default', '', inputs, (),
                       takes_examples=bool(model.get('takes_examples')))


def _sample_formats(summary: dict) -> dict:
  from tf_batch_predict.transforms.read.formats import input_formats
  settings = summary.get('settings') or {}
  return input_formats(_signature(summary), settings.get('key_field'),
                       settings.get('passthrough_fields') or (),
                       settings.get('max_instance_bytes') or (64 << 20))


def _spread(items: list, k: int) -> list:
  """k of the items, evenly spaced over them (the first and the last)."""
  n = len(items)
  if n <= k:
    return list(items)
  return [items[round(i * (n - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def input_sample(summary: dict) -> InputSample:
  """The fields of up to INPUT_SAMPLE_INSTANCES instances of the run's
  input, read by the job's own readers (their `sample`, as preflight reads
  them: transforms/read/formats.py `sample_file`) from up to
  INPUT_SAMPLE_FILES files spread over the input, within
  INPUT_SAMPLE_BYTES and INPUT_SAMPLE_SECONDS."""
  from tf_batch_predict.pipeline.config import special_file_reason
  from tf_batch_predict.transforms import file_patterns
  from tf_batch_predict.transforms.read.formats import detect_format, sample_file
  from tf_batch_predict.transforms.read.sampling import SampleLimits
  names = _described_fields(summary)
  sample = InputSample([FieldSample(n) for n in names[:MAX_INPUT_FIELDS]])
  sample.seen_fields = not names and bool((summary.get('model') or {}).get('takes_examples'))
  settings = summary.get('settings') or {}
  requested = settings.get('input_format') or 'auto'
  files, seen = [], set()
  for entry in summary.get('inputs') or []:
    pattern = entry.get('pattern') if isinstance(entry, dict) else None
    if not pattern or not entry.get('files'):
      continue
    try:
      matched = file_patterns.match(pattern)
    except Exception as e:  # pylint: disable=broad-except
      sample.failed.append((pattern, f'cannot list: {type(e).__name__}'))
      continue
    for m in matched:
      # The run set aside what is not a regular file (opening a named pipe
      # waits for a writer forever): so does the sample.
      if m.path not in seen and special_file_reason(m.path) is None:
        seen.add(m.path)
        files.append(m)
  sample.files_matched = len(files)
  if not files or not (sample.fields or sample.seen_fields):
    return sample
  formats = _sample_formats(summary)
  per_file = max(1 << 20, min(4 << 20, INPUT_SAMPLE_BYTES // min(len(files), INPUT_SAMPLE_FILES)))
  limits = SampleLimits(bytes_per_file=per_file, line_scan_bytes=1 << 20,
                        line_scan_seconds=0.5, request_whole_bytes=per_file,
                        request_scan_seconds=0.5)
  by_name = {f.name: f for f in sample.fields}
  chosen = _spread(files, INPUT_SAMPLE_FILES)
  deadline = time.monotonic() + INPUT_SAMPLE_SECONDS
  for i, metadata in enumerate(chosen):
    left = INPUT_SAMPLE_INSTANCES - sample.instances
    if left <= 0 or sample.values >= INPUT_SAMPLE_VALUES:
      break
    if time.monotonic() > deadline:
      sample.cut = f'{INPUT_SAMPLE_SECONDS:g} s spent'
      break
    kind = requested if requested != 'auto' else detect_format(metadata.path)
    if kind not in formats:
      continue
    quota = -(-left // (len(chosen) - i))
    try:
      read = sample_file(kind, metadata, quota, formats, limits)
    except Exception as e:  # pylint: disable=broad-except
      sample.failed.append((metadata.path, f'{type(e).__name__}: {" ".join(str(e).split())[:120]}'))
      continue
    sample.files += 1
    for chunk in read.chunks:
      _describe_chunk(formats[chunk.kind], chunk, by_name, sample)
  if sample.seen_fields:  # a field first seen late was missing before
    for field in sample.fields:
      field.missing = sample.instances - field.present
  return sample


def _describe_chunk(fmt, chunk, by_name: dict, sample: InputSample) -> None:
  single = next(iter(by_name)) if len(by_name) == 1 else None
  for row in range(len(chunk)):
    if sample.instances >= INPUT_SAMPLE_INSTANCES:
      return
    if sample.values >= INPUT_SAMPLE_VALUES:
      sample.cut = f'{INPUT_SAMPLE_VALUES:,} values described'
      return
    if row in chunk.read_errors:
      sample.unreadable += 1
      continue
    try:
      instance = fmt.instance(chunk, row)
    except Exception:  # pylint: disable=broad-except  (its error record says why)
      sample.unreadable += 1
      continue
    sample.instances += 1
    fields = instance.fields
    if fields is None:  # a bare value: the single input's
      fields = {single: instance.value} if single else {}
    elif sample.seen_fields:
      for name in fields:
        if name not in by_name and len(by_name) < MAX_INPUT_FIELDS:
          by_name[name] = FieldSample(name)
          sample.fields.append(by_name[name])
    for name, field in by_name.items():
      value = fields.get(name)
      if value is not None:
        try:
          value = instance.plain(value)
        except Exception:  # pylint: disable=broad-except
          value = None
      if value is None or (instance.text_cells and value == ''):
        field.missing += 1
        continue
      field.present += 1
      before = field.values
      _describe_value(value, field, instance.text_cells)
      sample.values += field.values - before


def _describe_value(value, field: FieldSample, text_cells: bool) -> None:
  if isinstance(value, (list, tuple)):
    for item in value:
      _describe_value(item, field, text_cells)
    return
  field.values += 1
  if isinstance(value, float):  # the commonest, first: numbers.Real is an ABC, slow to check
    if len(field.numbers) < INPUT_VALUES_PER_FIELD:
      field.numbers.append(float(value))
  elif isinstance(value, bool):
    _count_text('true' if value else 'false', field)
  elif isinstance(value, numbers.Real):
    if len(field.numbers) < INPUT_VALUES_PER_FIELD:
      _numbers(value, field.numbers, INPUT_VALUES_PER_FIELD)
  elif isinstance(value, str) and text_cells:
    try:
      number = float(value)
    except ValueError:
      _count_text(value, field)
    else:
      if len(field.numbers) < INPUT_VALUES_PER_FIELD:
        field.numbers.append(number)
  elif isinstance(value, bytes):
    _count_text(value[:TEXT_VALUE_CUT * 4].decode('utf-8', 'replace'), field)
  elif isinstance(value, str):
    _count_text(value, field)
  else:
    _count_text(json.dumps(value, ensure_ascii=False, default=str), field)


def _count_text(text: str, field: FieldSample) -> None:
  if len(text) > TEXT_VALUE_CUT:
    text = text[:TEXT_VALUE_CUT] + '…'
  if text in field.texts or len(field.texts) < DISTINCT_TEXTS:
    field.texts[text] += 1
  else:
    field.other_texts += 1


def quantiles(values: list, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
  """The values' quantiles (nearest rank) of the finite values."""
  finite = sorted(v for v in values if math.isfinite(v))
  if not finite:
    return {}
  return {q: finite[min(len(finite) - 1, max(0, math.ceil(q * len(finite)) - 1))]
          for q in qs}


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
.line{fill:none;stroke-width:2}.under{stroke-width:6;stroke-opacity:.45}
.dashed{stroke-dasharray:6 3}.shade{fill:#eee}svg text.shade-label{fill:#777}
.share{display:inline-block;height:10px;background:#4c78a8;vertical-align:middle}
"""

_W, _H = 460, 190  # chart size (px)
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 24, 34
_CHAR_PX = 6.5  # width of a character of the charts' 11px font, about


def _text_px(text: str) -> float:
  return len(text) * _CHAR_PX


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
  """(svg parts of the axes and grid, y scale, left edge of the plot) for
  values 0..y_top. The y axis's title stands above its tick labels, level
  (not turned beside them, where six-digit labels ran into it), and the
  plot starts right of the widest tick label."""
  ticks = _ticks(y_top)
  top = ticks[-1] or 1
  plot_h = _H - _TOP - _BOTTOM
  labels = [_n(t) for t in ticks]
  left = max(36, math.ceil(max(_text_px(t) for t in labels)) + 10)

  def y(v):
    return _TOP + plot_h * (1 - v / top)
  parts = []
  for t, text in zip(ticks, labels):
    parts.append(f'<line class="grid" x1="{left}" x2="{_W - _RIGHT}" y1="{y(t):.1f}" '
                 f'y2="{y(t):.1f}"/><text x="{left - 4}" y="{y(t) + 4:.1f}" '
                 f'text-anchor="end">{_e(text)}</text>')
  parts.append(f'<line class="axis" x1="{left}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" '
               f'y2="{_H - _BOTTOM}"/>')
  parts.append(f'<text x="{(left + _W - _RIGHT) / 2:.0f}" y="{_H - 4}" '
               f'text-anchor="middle">{_e(x_label)}</text>')
  parts.append(f'<text class="ytitle" x="4" y="11">{_e(y_label)}</text>')
  return parts, y, left


def _svg(parts: list, label: str) -> str:
  return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
          f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(label)}">'
          + ''.join(parts) + '</svg>')


# Each chart's figure says what it is (data-chart, and data-field for an
# output or an input) and each bar its value (data-count): tests/test_report.py
# checks the figures against the summary through them.


def bar_chart(bars: list, x_label: str, y_label: str, label: str,
              edges: tuple = None) -> str:
  """Bars of (label under the bar or '', value, tooltip). `edges`: (left,
  right) texts under the ends of the axis (a histogram of numbers)."""
  parts, y, left = _frame(max((b[1] for b in bars), default=0), y_label, x_label)
  width = (_W - left - _RIGHT) / max(1, len(bars))
  # Labels under every `every`-th bar, as many as fit side by side.
  longest = max((len(b[0]) for b in bars if b[0]), default=0)
  every = max(1, math.ceil(len(bars) * (longest * _CHAR_PX + 8) / (_W - left - _RIGHT)))
  for i, (text, value, tip) in enumerate(bars):
    x = left + i * width
    top = y(value)
    parts.append(f'<rect class="bar" data-count="{value}" x="{x + 1:.1f}" y="{top:.1f}" '
                 f'width="{max(1.0, width - 2):.1f}" height="{_H - _BOTTOM - top:.1f}">'
                 f'<title>{_e(tip)}</title></rect>')
    if text and i % every == 0:
      parts.append(_x_label(x + width / 2, text, left))
  if edges:
    low, high = edges
    room = (_W - _RIGHT - left) / 2 - 4  # each end's text keeps to its half
    if _text_px(low) > room or _text_px(high) > room:
      low, high = _short_number(low), _short_number(high)
    parts.append(f'<text x="{left}" y="{_H - _BOTTOM + 13}">{_e(low)}</text>')
    parts.append(f'<text x="{_W - _RIGHT}" y="{_H - _BOTTOM + 13}" '
                 f'text-anchor="end">{_e(high)}</text>')
  return _svg(parts, label)


def _x_label(middle: float, text: str, left: float) -> str:
  """A label under the x axis centred on `middle`, kept within the plot's
  width (clear of the y axis's tick labels)."""
  half = _text_px(text) / 2
  if middle - half < left:
    return f'<text x="{left + 1}" y="{_H - _BOTTOM + 13}">{_e(text)}</text>'
  if middle + half > _W - _RIGHT:
    return (f'<text x="{_W - _RIGHT}" y="{_H - _BOTTOM + 13}" '
            f'text-anchor="end">{_e(text)}</text>')
  return (f'<text x="{middle:.1f}" y="{_H - _BOTTOM + 13}" '
          f'text-anchor="middle">{_e(text)}</text>')


def _short_number(text: str) -> str:
  try:
    return f'{float(text.replace(",", "")):.3g}'
  except ValueError:
    return text[:20]


# The lines' looks, in order: the first wide and pale under the others, the
# second solid, the third dashed; so that lines that coincide (every
# instance read is predicted) are all seen.
_LINE_STYLES = ('line l0 under', 'line l1', 'line l2 dashed')


def line_chart(lines: list, x_label: str, y_label: str, label: str,
               x_top: float = None, shade: tuple = None) -> str:
  """Lines of (name, [(x, y), ...]), x from 0 to `x_top` (else the largest
  x); a key above the plot where there are several lines. `shade`: (from,
  to, tooltip, label) an x span shaded and named (the command's start-up)."""
  largest = max((x for _, points in lines for x, _ in points), default=0)
  x_top = max(x_top or 0, largest) or 1
  y_top = max((v for _, points in lines for _, v in points), default=0)
  parts, y, left = _frame(y_top, y_label, x_label)
  plot_w = _W - left - _RIGHT

  def x(v):
    return left + plot_w * v / x_top
  if shade and shade[1] > shade[0]:
    a, b = x(shade[0]), x(min(shade[1], x_top))
    parts.append(f'<rect class="shade" x="{a:.1f}" y="{_TOP}" width="{b - a:.1f}" '
                 f'height="{_H - _TOP - _BOTTOM}"><title>{_e(shade[2])}</title></rect>')
    if b - a >= _text_px(shade[3]) + 6:
      parts.append(f'<text class="shade-label" x="{(a + b) / 2:.1f}" y="{_TOP + 14}" '
                   f'text-anchor="middle">{_e(shade[3])}</text>')
  tick_parts, last_end = [], -1e9
  for t in _ticks(x_top, 5):
    if t <= x_top * 1.0001:
      text = _n(t)
      middle = x(t)
      if middle - _text_px(text) / 2 > last_end + 4:  # no two run into each other
        tick_parts.append(_x_label(middle, text, left))
        last_end = middle + _text_px(text) / 2
  parts += tick_parts
  for i, (name, points) in enumerate(lines):
    if points:
      path = ' '.join(f'{x(a):.1f},{y(b):.1f}' for a, b in points)
      style = _LINE_STYLES[i % 3] if len(lines) > 1 else 'line l0'
      parts.append(f'<polyline class="{style}" data-line="{_e(name)}" '
                   f'points="{path}"><title>{_e(name)}</title></polyline>')
  if len(lines) > 1:  # the key, right of the y axis's title
    at = 4 + _text_px(y_label) + 18
    for i, (name, _) in enumerate(lines):
      parts.append(f'<line class="{_LINE_STYLES[i % 3]} key" x1="{at:.1f}" x2="{at + 18:.1f}" '
                   f'y1="7" y2="7"/><text x="{at + 22:.1f}" y="11">{_e(name)}</text>')
      at += 22 + _text_px(name) + 14
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


def startup_s(summary: dict) -> float:
  """Seconds from the command's start to the pipeline's (checking the
  model, matching the inputs, building the pipeline): the whole command's
  time less the pipeline's (both end when the pipeline ends); 0 where the
  summary does not say."""
  total, pipeline = summary.get('total_wall_time_s'), summary.get('pipeline_wall_time_s')
  if not isinstance(total, (int, float)) or not isinstance(pipeline, (int, float)):
    return 0.0
  return max(0.0, float(total) - float(pipeline))


def _throughput(summary: dict) -> str:
  series = summary.get('throughput')
  startup = startup_s(summary)
  totals = (f'{_n(summary.get("instances_read"))} instances read in '
            f'{_n(summary.get("pipeline_wall_time_s", summary.get("wall_time_s")))} s: '
            f'{_n(summary.get("instances_per_s"))} instances/s on average.'
            + (f' The command started {_n(round(startup, 1))} s before the pipeline.'
               if startup else ''))
  if not series or not series.get('samples'):
    return (f'<p>{_e(totals)}</p><p class="note">No time series: the runner '
            f'({_e(summary.get("runner"))}) runs its workers elsewhere, and only the local '
            'runner is watched while it runs.</p>')
  samples = [[s[0] + startup, *s[1:]] for s in series['samples']]
  x_top = max(summary.get('total_wall_time_s') or 0, samples[-1][0])
  shade = (0.0, startup, f'start-up: {startup:.1f} s (checking the model, matching the '
           'inputs, building the pipeline)', 'start-up')
  x_label = 'seconds since the command started'
  rate = line_chart([('instances read/s (mean of each step)', _rates(samples))],
                    x_label, 'instances/s', 'instances read per second', x_top, shade)
  cumulative = line_chart(
      [(name, [(s[0], s[i]) for s in samples])
       for i, name in ((1, 'read'), (2, 'predicted'), (3, 'errors'))],
      x_label, 'instances', 'instances so far', x_top, shade)
  return (f'<p>{_e(totals)}</p><div class="charts">'
          + _figure(rate, 'Instances read per second', 'rate')
          + _figure(cumulative, 'Instances read (wide, pale), predicted (solid) and failed '
                    '(dashed) so far', 'cumulative')
          + f'</div><p class="note">{len(samples)} samples of the local runner\'s progress '
            'counts, about one a second (five a second in the first seconds; a long run\'s '
            'are thinned). The shaded span is the start-up, from the command\'s start to '
            'the pipeline\'s.</p>')


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
  text += _percentiles(batches)
  if not charts:
    return text + '<p class="note">No batch histograms were reported.</p>'
  return text + '<div class="charts">' + ''.join(charts) + '</div>'


def _percentiles(batches: dict) -> str:
  """The model calls' latency percentiles (summary.json `batches`
  `latency_ms_percentiles`, or from the histogram of an older summary)."""
  found = batches.get('latency_ms_percentiles')
  if not found and batches.get('latency_ms_histogram'):
    from tf_batch_predict.pipeline.summary import percentiles
    found = percentiles(batches['latency_ms_histogram'])
  if not found:
    return ''
  rows = [(f'p{p}', found.get(f'p{p}')) for p in (50, 95, 99) if f'p{p}' in found]
  return ('<table data-table="percentiles"><tr><th>latency per model call</th><th>at most '
          '(ms)</th></tr>' + ''.join(f'<tr><td>{_e(name)}</td><td class="n">{_e(_n(v))}</td>'
                                     '</tr>' for name, v in rows) + '</table>'
          '<p class="note">Percentiles from the latency histogram: each is the upper bound of '
          'the bucket (four per doubling) that holds it, so the latency is at most that.</p>')


_STAGE_NAMES = (('decode', 'read and decode'), ('score', 'score (the model)'),
                ('format', 'format the records'), ('write', 'write the files'))


def _stages(summary: dict) -> str:
  """Where the time went: seconds and shares of the job's steps."""
  stages = summary.get('stages')
  if not stages or not stages.get('seconds'):
    return ('<p class="note">No step times were reported (a summary written before the '
            'job counted them, or a runner that reports no counters).</p>')
  seconds, share = stages['seconds'], stages.get('share') or {}
  rows = []
  for key, name in _STAGE_NAMES:
    if key in seconds:
      part = share.get(key, 0) or 0
      rows.append(f'<tr data-stage="{key}"><td>{_e(name)}</td><td class="n">'
                  f'{_e(_n(seconds[key]))}</td><td class="n">{part * 100:.1f}%</td><td>'
                  f'<span class="share" style="width:{max(1, round(part * 200))}px"></span>'
                  '</td></tr>')
  calls = stages.get('model_calls_s')
  return ('<table data-table="stages"><tr><th>step</th><th>seconds</th><th>share</th>'
          '<th></th></tr>' + ''.join(rows) + '</table><p class="note">Time inside each '
          'step, measured per chunk or per batch by the workers and summed over all of them '
          '(and their threads), as Dataflow shows a step\'s time: with several workers the '
          'sum exceeds the wall time. Reading and decoding: decoding the chunks read '
          '(reading the files\' bytes runs alongside, untimed); scoring: each chunk\'s '
          'model calls and what surrounds them'
          + (f' (the model calls alone: {_n(calls)} s)' if calls is not None else '')
          + '; writing: the file sinks\' writes and closes.</p>')


def _cut(value):
  """A record for display: long strings cut."""
  if isinstance(value, dict):
    return {k: _cut(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_cut(v) for v in value[:20]] + (['...'] if len(value) > 20 else [])
  if isinstance(value, str) and len(value) > TEXT_CUT:
    return value[:TEXT_CUT] + f'... ({len(value):,} characters)'
  return value


def _messages(groups: list, read: int) -> str:
  """The most frequent error messages, with counts and one example each."""
  if not groups:
    return ''
  out = ['<h3>Most frequent messages</h3>', '<table data-table="messages"><tr><th>count</th>'
         '<th>category</th><th>message (quoted texts as \'…\', numbers as N)</th></tr>']
  for group in groups[:MESSAGES_SHOWN]:
    example = json.dumps(_cut(group['example']), ensure_ascii=False, default=str)
    out.append(f'<tr data-message><td class="n">{_e(_n(group["count"]))}</td><td>'
               f'{_e(group["category"])}</td><td>{_e(group["pattern"])}<details><summary>'
               f'example</summary><pre class="message-example">{_e(example)}</pre></details>'
               '</td></tr>')
  out.append('</table>')
  capped = read >= ERROR_RECORDS_READ
  more = len(groups) - MESSAGES_SHOWN
  out.append(f'<p class="note">Counted over the first {_n(read)} error records of the error '
             'files' + (f' (at most {_n(ERROR_RECORDS_READ)} are read; the counts of the '
                        'whole run are in the table above)' if capped else '')
             + (f'; {_n(more)} less frequent messages are not shown' if more > 0 else '')
             + '.</p>')
  return ''.join(out)


def _errors(summary: dict, examples: dict, groups: list = None, read: int = 0) -> str:
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
  out.append(_messages(groups or [], read))
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


def _input_fields(summary: dict, sample) -> str:
  if sample is None:
    return '<p class="note">The input could not be sampled.</p>'
  if not sample.fields and not sample.seen_fields:
    return '<p class="note">The summary names no model input to describe.</p>'
  if not sample.instances:
    return ('<p class="note">No instance could be read from the input for a sample'
            + (f' ({_e(sample.failed[0][0])}: {_e(sample.failed[0][1])})' if sample.failed
               else '') + '.</p>')
  more = len(_described_fields(summary)) - len(sample.fields)
  note = (f'<p class="note">A sample of {_n(sample.instances)} instances (at most '
          f'{_n(INPUT_SAMPLE_INSTANCES)}), read by the job\'s own readers from the start of '
          f'{_n(sample.files)} of the {_n(sample.files_matched)} input files (spread over '
          'them; at most ' f'{INPUT_SAMPLE_FILES} files, {INPUT_SAMPLE_BYTES >> 20} MiB and '
          f'{INPUT_SAMPLE_SECONDS:g} s)' + (f', cut short: {_e(sample.cut)}' if sample.cut else '')
          + (f'; {_n(sample.unreadable)} records of it were no instance' if sample.unreadable
             else '') + '. A list counts each of its values (numbers: the first '
          f'{_n(INPUT_VALUES_PER_FIELD)} per field).'
          + (f' The first {MAX_INPUT_FIELDS} fields; {_n(more)} more are not shown.'
             if more > 0 else '')
          + (' The model takes serialized tf.Examples whose features its graph does not '
             f'name: these are the fields the sample shows (the first {MAX_INPUT_FIELDS}).'
             if sample.seen_fields else '') + '</p>')
  rows, charts = [], []
  for field in sample.fields:
    q = quantiles(field.numbers)
    h = histogram(field.numbers) if field.numbers else None
    top = ', '.join(f'{t} ({_n(c)})' for t, c in sorted(
        field.texts.items(), key=lambda item: (-item[1], item[0]))[:TOP_TEXTS])
    if field.other_texts or len(field.texts) > TOP_TEXTS:
      top += f'; {_n(len(field.texts) - min(TOP_TEXTS, len(field.texts)))}' + (
          '+' if field.other_texts else '') + ' other values'
    rows.append('<tr data-input="{}"><td>{}</td>{}</tr>'.format(
        _e(field.name), _e(field.name), ''.join(
            f'<td class="n">{_e(_n(v))}</td>' for v in (
                field.present, field.missing, field.values, len(field.numbers),
                h.get('min') if h else None, q.get(0.05), q.get(0.25), q.get(0.5),
                q.get(0.75), q.get(0.95), h.get('max') if h else None))
        + f'<td>{_e(top) or "–"}</td>'))
    if h and h['counts']:
      bars = [('', c, f'{_n(c)} values in [{_n(a)}, {_n(b)}]')
              for a, b, c in zip(h['edges'], h['edges'][1:], h['counts'])]
      chart = bar_chart(bars, field.name, 'count', f'{field.name} histogram (input)',
                        edges=(_n(h['min']), _n(h['max'])))
      caption = (f'<b>{_e(field.name)}</b> (input): {_n(h["n"])} numbers, mean '
                 f'{_n(h["mean"])}' + (f', {_n(h["non_finite"])} not finite'
                                       if h['non_finite'] else ''))
      if len(charts) < MAX_OUTPUT_CHARTS:
        charts.append(_figure(chart, caption, 'input', field.name))
  table = ('<table data-table="inputs"><tr><th>field</th><th>given</th><th>missing</th>'
           '<th>values</th><th>numbers</th><th>min</th><th>p5</th><th>p25</th><th>median</th>'
           '<th>p75</th><th>p95</th><th>max</th><th>most frequent texts</th></tr>'
           + ''.join(rows) + '</table>')
  return note + table + ('<div class="charts">' + ''.join(charts) + '</div>' if charts else '')


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


def render(summary: dict, examples: dict, fields: dict, sampled: int,
           messages: tuple = ((), 0), features=None) -> str:
  """The page; `messages`: (error message groups, error records read)
  (read_errors); `features`: the input's InputSample, None where there is
  none."""
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
      '<h2>Time by step</h2>', _stages(summary),
      '<h2>Model batches</h2>', _batches(summary),
      '<h2>Errors</h2>', _errors(summary, examples, list(messages[0]), messages[1]),
      '<h2>Input features</h2>', _input_fields(summary, features),
      '<h2>Outputs</h2>', _outputs(fields, sampled),
      '<p class="note">Written by batch-predict with summary.json; self-contained, '
      'nothing is fetched.</p>',
  ]
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          '<meta name="viewport" content="width=device-width,initial-scale=1">'
          f'<title>batch-predict report: {_e(summary.get("output"))}</title>'
          f'<style>{_CSS}</style></head><body>' + ''.join(body) + '</body></html>\n')
