"""batch-predict evaluate: how good predictions are against labels, as
metrics.json and a self-contained report.html.

  batch-predict evaluate --joined=PATTERN[,PATTERN...] --label_field=NAME
                         --prediction_field=NAME --output=DIR
                         [--task=auto|classification|regression]
                         [--threshold=0.5] [--class_names=A,B,C]
                         [--format=auto|jsonl|parquet] [--slice_by=FIELD]

`--joined`: rows that hold both the label and the prediction (JSON Lines,
also gzipped, or Parquet), e.g. the output of `batch-predict join`, or the
job's own predictions when the label was a `--passthrough_fields` field.
Rows with a non-null `error` field are instances that failed to predict:
they are counted (by category), not evaluated.

`--slice_by=FIELD`: also the counts and main metrics per value of FIELD
(a field of the rows; with --predictions/--labels, of the labels' files),
as TensorFlow Model Analysis slices: the MAX_SLICES (20) most frequent
values, then one slice "other" of the rest (metrics.json `slices`).

What a binary classifier's scores add (1-D scores, or two-class score
vectors): the average precision (the area under the precision-recall
curve), a threshold sweep (precision, recall, F1 and the count predicted
positive at thresholds 0.05 to 0.95 and at --threshold; the best F1 over 0,
0.01, ..., 1) and, where the scores are probabilities, a calibration table
(10 equal-width bins: mean predicted probability against the observed
frequency, and the expected calibration error); multi-class probability
vectors get the calibration of the top class's probability.

report.html has the run report's look (pipeline/report.py: its CSS and its
inline SVG charts, imported from it): a binary classifier's ROC and
precision-recall curves, the threshold sweep, the scores per label and the
calibration plot are SVG; multi-class score histograms and ROC curves and a
regression's plots are matplotlib PNGs. Where the predictions come from a
run's folder (--predictions, or --joined files all in one folder) holding
its summary.json, the page names the model (path, version, signature) and
links to that run's report.html (a relative link where both are local),
and metrics.json has them under `inputs.run`.

API (the Beam path, pipeline/join.py, calls the same functions):

  compute(labels, predictions, task='auto', threshold=0.5, class_names=None,
          failed=0) -> dict
      The metrics (the content of metrics.json) of two equally long
      sequences: one label and one prediction per instance, as they come out
      of JSON (numbers, strings, booleans, lists of scores, one-element
      lists such as a Keras sigmoid's `[0.57]`, None) or numpy arrays
      (1-D labels; 1-D or 2-D predictions). `labels` may instead be a
      `Pairs` (then `predictions` is None). `failed`: the number of
      instances that failed to predict, or a {category: count} dict; only
      reported. Raises EvaluateError for a mistake in the settings or one
      that the data shows (e.g. class-name labels against score vectors
      without `class_names`).
  write_outputs(metrics, labels, predictions, output_dir) -> None
      Writes metrics.json and report.html (plots of the same pairs) into
      output_dir (local, or any Beam file system such as gs://), each into
      a temporary name first and then renamed over the previous file.
  evaluate(labels, predictions, output_dir, task=..., threshold=...,
           class_names=..., failed=..., inputs=None) -> dict
      Both, preparing the pairs once.
  Pairs()
      A compact accumulator of (label, prediction) pairs: `add(label,
      prediction)`, `add_row(row, label_field, prediction_field)` (a joined
      row: counts failed rows and missing fields), `extend(labels,
      predictions)`, `merge(other)`; picklable and mergeable, so it can be
      the accumulator of a Beam CombineFn.
  main(argv) -> int
      The subcommand (argv without the word `evaluate`).

Scale: the pairs are gathered into ONE process, because scikit-learn's
metrics (exact ROC AUC, quantiles) need them all at once. `Pairs` keeps
them as numpy arrays: about 30 bytes per pair plus 8 bytes per score of a
score vector (3 GB for 100 million binary pairs; up to twice that while its
chunks are joined). About 100 million pairs is the documented limit;
evaluate a sample beyond that. Time, measured here (2 cores, loaded): a
million binary pairs with --slice_by from one JSONL file, 6.0 s reading,
2.2 s metrics (sweep, calibration, 21 slices included), 0.1 s the page;
about 11 s for the whole command; the page is about 37 KB at any size.

Exit status of main: 0 written; 2 a configuration mistake (no file matches,
a field missing from every row, an unknown task, a bad threshold, class
names needed): one line on stderr, nothing written; 3 no pair could be
evaluated (metrics.json and report.html are still written, saying why).
"""
import base64
import collections
import datetime
import html
import io
import json
import math
import os
import sys
import traceback
import warnings

import numpy as np

from tf_batch_predict.pipeline.command import EXIT_CONFIG_ERROR, EXIT_INPUT_INCOMPLETE, EXIT_OK, error

EXIT_NOTHING_EVALUATED = 3
PROG = 'batch-predict evaluate'

TASKS = ('auto', 'classification', 'regression')
# Beyond this many classes, a k x k confusion matrix is too large to write
# (10,000 classes: 100 million cells).
MAX_CLASSES = 2000
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
# Whole-number labels with whole-number predictions are class ids, unless
# there are more distinct labels than this (then: counts, a regression).
MAX_AUTO_CLASSES = 50
# Score vectors are probabilities when every value is in [0, 1] and every
# row sums to 1 within this (float32 softmax outputs written as JSON).
PROBABILITY_TOLERANCE = 1e-3
# Plots: drawn for at most this many classes; scatter plots of a sample.
MAX_CURVE_CLASSES = 12
MAX_SCATTER_POINTS = 5000
FIGSIZE = (5.0, 3.5)
DPI = 80
# Binary scores: the threshold sweep's thresholds (metrics.json and the
# table; the chart and the best F1 use a finer one), the calibration plot's
# bins (equal widths over [0, 1]), points drawn per curve.
SWEEP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
FINE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(0, 101))
CALIBRATION_BINS = 10
CURVE_POINTS = 300
# --slice_by: the most frequent values each get a slice; the rest are one
# slice, "other".
MAX_SLICES = 20


class EvaluateError(ValueError):
  """A mistake in the settings, or one that the data shows."""


MISSING = object()  # the field is not in the row (unlike a null value)

# Label kinds (Pairs' int8 codes).
L_MISSING, L_NULL, L_NONFINITE, L_UNUSABLE, L_BOOL, L_INT, L_INTEGRAL, L_FLOAT, L_STR = range(9)
# Prediction kinds.
P_MISSING, P_NULL, P_NONFINITE, P_UNUSABLE, P_BOOL, P_INT, P_FLOAT, P_STR, P_VECTOR = range(9)

_LABEL_REASONS = {
    L_MISSING: 'label field missing from the row',
    L_NULL: 'label is null',
    L_NONFINITE: 'label is not a finite number',
    L_UNUSABLE: 'label is not a scalar (an object or a list of several values)',
}
_PREDICTION_REASONS = {
    P_MISSING: 'prediction field missing from the row',
    P_NULL: 'prediction is null',
    P_NONFINITE: 'prediction holds a value that is not a finite number',
    P_UNUSABLE: 'prediction is neither a number, a string nor a vector of numbers',
}


# -- gathering pairs ------------------------------------------------------------

def _unwrap(value):
  """A one-element list (tf.Example features, Keras [n, 1] outputs) is its element."""
  while isinstance(value, (list, tuple)) and len(value) == 1:
    value = value[0]
  if isinstance(value, np.ndarray) and value.size == 1:
    value = value.reshape(()).item()
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode('utf-8', 'replace')
  return value


# Integers from here on do not fit a double (float() raises): not a finite number.
_FLOAT_MAX_INT = 2 ** 1023 * 2


def _error_record(row: dict, prediction_field: str):
  """The error of a row of a failed instance, or None. A row holding the
  prediction is not one, whatever else it holds. Else its `error`; where
  the instance has a field of that name, the join writes the error as
  `error_output` (the run's renaming rule), an object of category and
  message."""
  if prediction_field in row:
    return None
  for name in ('error_output', 'error'):
    error = row.get(name)
    if name == 'error_output' and not (isinstance(error, dict) and 'category' in error):
      continue
    if error is not None:
      return error
  return None


class Pairs:
  """(label, prediction) pairs, kept as numpy arrays (see the module's
  docstring for the memory it takes). Strings (class names) are codes into
  `vocabulary`."""
  CHUNK = 65536

  def __init__(self, slice_field=None):
    self.vocabulary = []  # code -> string
    self._codes = {}
    self._chunks = []  # (label kind, label value, prediction kind, value, vector length, flat vectors)
    # --slice_by: each pair's value of that field, as a code into
    # `slice_values` (texts); -1 where there is no slice field.
    self.slice_field = slice_field
    self.slice_values = []
    self._slice_codes = {}
    self._slice_chunks = []
    self.slice_present = 0  # add_row: rows (not failed) holding the slice field
    self._reset_pending()
    self.rows = 0  # add_row: rows seen
    self.failed = collections.Counter()  # add_row: failed instances by error category
    self.unreadable = collections.Counter()  # rows that are not objects / not JSON, by reason
    self.label_present = 0  # rows (not failed) holding the label field
    self.prediction_present = 0
    self.fields_seen = set()  # some field names, for error messages
    # Files that could not be read to their end: {path, reason} (their rows
    # before the fault are counted).
    self.incomplete_files = []

  def _reset_pending(self):
    self._lk, self._lv, self._pk, self._pv, self._plen, self._flat = [], [], [], [], [], []
    self._sc = []

  def __len__(self):
    return sum(len(c[0]) for c in self._chunks) + len(self._lk)

  def _code(self, text):
    code = self._codes.get(text)
    if code is None:
      code = self._codes[text] = len(self.vocabulary)
      self.vocabulary.append(text)
    return code

  def _slice_code(self, value) -> int:
    if self.slice_field is None:
      return -1
    return self._slice_code_of_text(slice_text(value))

  def _label(self, value):
    if value is MISSING:
      return L_MISSING, 0.0
    value = _unwrap(value)
    if value is None:
      return L_NULL, 0.0
    if isinstance(value, bool):
      return L_BOOL, float(value)
    if isinstance(value, int):
      return (L_INT, float(value)) if abs(value) < _FLOAT_MAX_INT else (L_NONFINITE, 0.0)
    if isinstance(value, float):
      if not math.isfinite(value):
        return L_NONFINITE, 0.0
      return (L_INTEGRAL if value.is_integer() else L_FLOAT), value
    if isinstance(value, str):
      return L_STR, float(self._code(value))
    return L_UNUSABLE, 0.0

  def _prediction(self, value):
    """(kind, scalar, vector or None)."""
    if value is MISSING:
      return P_MISSING, 0.0, None
    value = _unwrap(value)
    if value is None:
      return P_NULL, 0.0, None
    if isinstance(value, bool):
      return P_BOOL, float(value), None
    if isinstance(value, int):
      return ((P_INT, float(value), None) if abs(value) < _FLOAT_MAX_INT
              else (P_NONFINITE, 0.0, None))
    if isinstance(value, float):
      return (P_FLOAT, value, None) if math.isfinite(value) else (P_NONFINITE, 0.0, None)
    if isinstance(value, str):
      return P_STR, float(self._code(value)), None
    if isinstance(value, (list, tuple, np.ndarray)) and len(value):
      if any(isinstance(x, (str, bytes, dict, bool)) for x in value):
        return P_UNUSABLE, 0.0, None
      try:
        vector = np.asarray(value, dtype=np.float64)
      except OverflowError:  # an integer beyond the doubles
        return P_NONFINITE, 0.0, None
      except (ValueError, TypeError):
        return P_UNUSABLE, 0.0, None
      if vector.ndim != 1:
        return P_UNUSABLE, 0.0, None
      if not np.isfinite(vector).all():
        return P_NONFINITE, 0.0, None
      return P_VECTOR, 0.0, vector
    return P_UNUSABLE, 0.0, None

  def add(self, label, prediction, slice_value=MISSING):
    lk, lv = self._label(label)
    pk, pv, vector = self._prediction(prediction)
    self._sc.append(self._slice_code(slice_value))
    self._lk.append(lk)
    self._lv.append(lv)
    self._pk.append(pk)
    self._pv.append(pv)
    if vector is None:
      self._plen.append(0)
    else:
      self._plen.append(len(vector))
      self._flat.append(vector)
    if len(self._lk) >= self.CHUNK:
      self._flush()
    return self

  def add_row(self, row, label_field, prediction_field):
    """One joined row: a failed instance (`_error_record`) is counted,
    anything else is a pair (missing fields are counted as such)."""
    self.rows += 1
    if not isinstance(row, dict):
      self.unreadable['row is not a JSON object'] += 1
      return self
    if len(self.fields_seen) < 100:
      self.fields_seen.update(list(row)[:100])
    error = _error_record(row, prediction_field)
    if error is not None:
      category = error.get('category') if isinstance(error, dict) else None
      self.failed[str(category or 'unknown')] += 1
      return self
    label = row.get(label_field, MISSING)
    prediction = row.get(prediction_field, MISSING)
    self.label_present += label is not MISSING
    self.prediction_present += prediction is not MISSING
    slice_value = MISSING
    if self.slice_field is not None:
      slice_value = row.get(self.slice_field, MISSING)
      self.slice_present += slice_value is not MISSING
    return self.add(label, prediction, slice_value)

  def extend(self, labels, predictions):
    """Many pairs; numeric numpy arrays take a vectorized path."""
    if (isinstance(labels, np.ndarray) and isinstance(predictions, np.ndarray)
        and labels.ndim == 1 and labels.dtype.kind in 'biuf'
        and predictions.dtype.kind in 'biuf' and predictions.ndim in (1, 2)
        and len(labels) == len(predictions)):
      self._extend_arrays(labels, predictions)
      return self
    labels, predictions = list(labels), list(predictions)
    if len(labels) != len(predictions):
      raise EvaluateError(f'{len(labels)} labels but {len(predictions)} predictions')
    for label, prediction in zip(labels, predictions):
      self.add(label, prediction)
    return self

  def _extend_arrays(self, labels, predictions):
    self._flush()
    n = len(labels)
    if labels.dtype.kind == 'b':
      lk = np.full(n, L_BOOL, np.int8)
    elif labels.dtype.kind in 'iu':
      lk = np.full(n, L_INT, np.int8)
    else:
      finite = np.isfinite(labels)
      lk = np.where(~finite, L_NONFINITE,
                    np.where(np.mod(np.where(finite, labels, 0), 1) == 0, L_INTEGRAL, L_FLOAT))
      lk = lk.astype(np.int8)
    lv = np.where(lk == L_NONFINITE, 0, labels).astype(np.float64)
    if predictions.ndim == 2 and predictions.shape[1] == 1:
      predictions = predictions[:, 0]
    plen = np.zeros(n, np.int32)
    flat = np.zeros(0)
    if predictions.ndim == 1:
      kind = {'b': P_BOOL, 'i': P_INT, 'u': P_INT, 'f': P_FLOAT}[predictions.dtype.kind]
      pk = np.full(n, kind, np.int8)
      pv = predictions.astype(np.float64)
      bad = ~np.isfinite(pv)
      pk[bad] = P_NONFINITE
      pv[bad] = 0
    else:
      vectors = predictions.astype(np.float64)
      good = np.isfinite(vectors).all(axis=1)
      pk = np.where(good, P_VECTOR, P_NONFINITE).astype(np.int8)
      pv = np.zeros(n)
      plen[good] = vectors.shape[1]
      flat = vectors[good].ravel()
    self._chunks.append((lk, lv, pk, pv, plen, flat))
    self._slice_chunks.append(np.full(n, self._slice_code(MISSING), np.int32))

  def _flush(self):
    if self._lk:
      flat = np.concatenate(self._flat) if self._flat else np.zeros(0)
      self._chunks.append((np.array(self._lk, np.int8), np.array(self._lv, np.float64),
                           np.array(self._pk, np.int8), np.array(self._pv, np.float64),
                           np.array(self._plen, np.int32), flat))
      self._slice_chunks.append(np.array(self._sc, np.int32))
      self._reset_pending()

  def merge(self, other: 'Pairs') -> 'Pairs':
    """Adds `other`'s pairs and counts (its string codes mapped onto ours)."""
    self._flush()
    other._flush()
    remap = np.array([self._code(text) for text in other.vocabulary] or [0], np.float64)
    for lk, lv, pk, pv, plen, flat in other._chunks:
      lv = np.where(lk == L_STR, remap[np.where(lk == L_STR, lv, 0).astype(np.int64)], lv)
      pv = np.where(pk == P_STR, remap[np.where(pk == P_STR, pv, 0).astype(np.int64)], pv)
      self._chunks.append((lk, lv, pk, pv, plen, flat))
    if self.slice_field is None:
      self.slice_field = other.slice_field
    slice_remap = np.array([self._slice_code_of_text(text) for text in other.slice_values]
                           + [-1], np.int32)  # (index -1: no slice field)
    for codes in other._slice_chunks:
      self._slice_chunks.append(slice_remap[codes])
    self.slice_present += other.slice_present
    self.rows += other.rows
    self.failed.update(other.failed)
    self.unreadable.update(other.unreadable)
    self.label_present += other.label_present
    self.prediction_present += other.prediction_present
    self.fields_seen.update(list(other.fields_seen)[:100])
    self.incomplete_files += getattr(other, 'incomplete_files', [])
    return self

  def _slice_code_of_text(self, text) -> int:
    code = self._slice_codes.get(text)
    if code is None:
      code = self._slice_codes[text] = len(self.slice_values)
      self.slice_values.append(text)
    return code

  def slice_codes(self):
    """Each pair's slice code (-1: no slice field), in the order of `arrays`."""
    self._flush()
    if len(self._slice_chunks) > 1:
      self._slice_chunks = [np.concatenate(self._slice_chunks)]
    return self._slice_chunks[0] if self._slice_chunks else np.zeros(0, np.int32)

  def arrays(self):
    """(label kinds, label values, prediction kinds, values, vector lengths,
    vector offsets, flat vector values), all pairs."""
    self._flush()
    if len(self._chunks) > 1:
      self._chunks = [tuple(np.concatenate(parts) for parts in zip(*self._chunks))]
    if not self._chunks:
      empty = np.zeros(0)
      return (np.zeros(0, np.int8), empty, np.zeros(0, np.int8), empty,
              np.zeros(0, np.int32), np.zeros(0, np.int64), empty)
    lk, lv, pk, pv, plen, flat = self._chunks[0]
    offsets = np.cumsum(plen, dtype=np.int64) - plen
    return lk, lv, pk, pv, plen, offsets, flat


SLICE_TEXT_CUT = 200


def slice_text(value) -> str:
  """A slice's name for a field's value: the text of a string, JSON for
  anything else (true, 3, 2.5, null), '(missing)' where the row lacks the
  field."""
  if value is MISSING:
    return '(missing)'
  value = _unwrap(value)
  if isinstance(value, str):
    return value[:SLICE_TEXT_CUT]
  try:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)[:SLICE_TEXT_CUT]
  except (TypeError, ValueError):
    return str(value)[:SLICE_TEXT_CUT]


def _as_pairs(labels, predictions) -> Pairs:
  if isinstance(labels, Pairs):
    if predictions is not None:
      raise TypeError('with a Pairs, give predictions=None')
    return labels
  return Pairs().extend(labels, predictions)


# -- preparing: exclusions, the task, classes ----------------------------------

class _Prepared:
  """What the metrics and the plots are computed from."""
  task = None
  task_reason = ''
  n = 0
  # classification
  classes = None  # list of JSON values, in confusion-matrix order
  y_true = y_pred = None  # int class indices
  scores = None  # None, 1-D positive-class scores, or 2-D score vectors
  prediction_kind = None
  # regression
  y = y_hat = None
  # --slice_by: the field, its values (texts) and each evaluated pair's code
  slice_field = None
  slice_values = ()
  slice_codes = None
  threshold = 0.5


def _plural(count, word):
  return f'{count} {word}' + ('' if count == 1 else 's')


def _prepare(pairs: Pairs, task='auto', threshold=0.5, class_names=None) -> tuple:
  """(prepared, excluded {reason: count})."""
  if task not in TASKS:
    raise EvaluateError(f'--task: {task!r} is not one of {", ".join(TASKS)}')
  threshold = _check_threshold(threshold)
  if class_names is not None:
    class_names = [str(c) for c in class_names]
    if len(set(class_names)) != len(class_names) or not class_names:
      raise EvaluateError('--class_names: give distinct names, in class-id order')
  lk, lv, pk, pv, plen, offsets, flat = pairs.arrays()
  vocabulary = pairs.vocabulary
  excluded = collections.Counter()
  ok = np.ones(len(lk), bool)

  def exclude(mask, reason):
    mask = mask & ok
    count = int(mask.sum())
    if count:
      excluded[reason] += count
      ok[mask] = False

  for code, reason in _LABEL_REASONS.items():
    exclude(lk == code, reason)
  for code, reason in _PREDICTION_REASONS.items():
    exclude(pk == code, reason)

  # The form of the predictions: numbers, class names, or score vectors of
  # one length. Most of the usable ones decide; the others are excluded.
  forms = collections.Counter()
  number = np.isin(pk, (P_BOOL, P_INT, P_FLOAT))
  forms['number'] = int((number & ok).sum())
  forms['class name'] = int(((pk == P_STR) & ok).sum())
  lengths, counts = np.unique(plen[(pk == P_VECTOR) & ok], return_counts=True)
  for length, count in zip(lengths, counts):
    forms[int(length)] = int(count)
  forms = {form: count for form, count in forms.items() if count}

  def describe(form):
    return f'a vector of {form} scores' if isinstance(form, int) else f'a {form}'

  form = None
  if forms:
    form = max(forms, key=lambda f: (forms[f], str(f)))
    for other in forms:
      if other != form:
        mask = (pk == P_VECTOR) & (plen == other) if isinstance(other, int) else (
            number if other == 'number' else pk == P_STR)
        exclude(mask, f'prediction is {describe(other)}, most are {describe(form)}')

  prepared = _Prepared()
  prepared.labels_from_text = 0
  if form != 'class name' and (lk[ok] == L_STR).any():
    # CSV cells are carried as their text: labels that are all numbers or
    # booleans written as text are read as such (class names stay names).
    read = [_text_value(text) for text in vocabulary]
    codes = lv[ok & (lk == L_STR)].astype(np.int64)
    if all(read[code] is not None for code in np.unique(codes)):
      lk, lv = lk.copy(), lv.copy()  # (the Pairs stay as they are)
      where = ok & (lk == L_STR)
      kinds = np.array([r[0] if r else L_STR for r in read], np.int8)
      values = np.array([r[1] if r else 0.0 for r in read], np.float64)
      lk[where], lv[where] = kinds[codes], values[codes]
      prepared.labels_from_text = int(where.sum())
  if not ok.any():
    prepared.task = None if task == 'auto' else task
    prepared.task_reason = 'no pair to evaluate'
    return prepared, excluded
  if task == 'auto':
    task, prepared.task_reason = _decide(form, lk[ok], lv[ok], pk[ok], pv[ok])
  else:
    prepared.task_reason = 'given by --task'
  prepared.task = task

  if task == 'regression':
    if form != 'number':
      raise EvaluateError(f'--task=regression: the predictions are {describe(form)}, '
                          'not numbers')
    exclude(lk == L_STR, 'label is not a number (a string)')
    prepared.y = lv[ok]
    prepared.y_hat = pv[ok]
    prepared.n = int(ok.sum())
    _attach_slices(prepared, pairs, ok)
    return prepared, excluded

  y_true = np.full(len(lk), -1, np.int64)  # class index per pair; -1: not a class
  y_pred = np.full(len(lk), -1, np.int64)
  label_str = lk == L_STR
  label_id = np.isin(lk, (L_BOOL, L_INT, L_INTEGRAL))
  exclude(lk == L_FLOAT, 'label is a fractional number, not a class')

  def labels_by_name(names):
    index = {name: i for i, name in enumerate(names)}
    lookup = np.array([index.get(text, -1) for text in vocabulary] or [-1], np.int64)
    where = label_str & ok
    y_true[where] = lookup[lv[where].astype(np.int64)]

  def labels_by_id(count, reason):
    where = label_id & ok
    ids = lv[where].astype(np.int64)
    y_true[where] = np.where((ids >= 0) & (ids < count), ids, -1)
    exclude(label_id & (y_true < 0), reason)

  def need_names(what):
    if (label_str & ok).any():
      raise EvaluateError(f'the labels are class names and the predictions are {what}: '
                          'give --class_names (in class-id order) to map them')

  all_bool = bool((lk[ok] == L_BOOL).all())
  scores = None
  if isinstance(form, int):  # score vectors: argmax
    k = form
    if class_names is not None and len(class_names) != k:
      raise EvaluateError(f'--class_names names {len(class_names)} classes but the '
                          f'score vectors have {k} values')
    vectors = np.zeros((len(lk), k))
    where = ok & (pk == P_VECTOR)
    vectors[where] = flat[offsets[where][:, None] + np.arange(k)]
    y_pred[where] = np.argmax(vectors[where], axis=1)
    classes = class_names or ([False, True] if all_bool and k == 2 else list(range(k)))
    prepared.prediction_kind = f'score vector ({k} classes, argmax)'
    if class_names is None:
      need_names('score vectors')
    else:
      labels_by_name(class_names)
      exclude(label_str & (y_true < 0), 'label is not one of --class_names')
    labels_by_id(k, f'label is not a class id of the score vectors (0 to {k - 1})')
    scores = vectors
  elif form == 'number':
    values = pv[ok]
    whole = bool((np.mod(values, 1) == 0).all())
    typed_ints = bool(np.isin(pk[ok], (P_INT, P_BOOL)).all())
    in_unit = bool(((values >= 0) & (values <= 1)).all())
    if typed_ints or (whole and not in_unit):  # class ids
      ids = pv.astype(np.int64)
      if class_names is not None:
        classes = class_names
        y_pred[ok] = np.where((ids[ok] >= 0) & (ids[ok] < len(classes)), ids[ok], -1)
        exclude(y_pred < 0, 'predicted class id is not one of --class_names')
        labels_by_name(class_names)
        exclude(label_str & (y_true < 0), 'label is not one of --class_names')
        labels_by_id(len(classes), 'label is not a class id of --class_names')
      else:
        need_names('class ids')
        present = np.unique(np.concatenate([ids[ok], lv[ok & label_id].astype(np.int64)]))
        classes = [int(c) for c in present]
        if all_bool and set(classes) <= {0, 1}:
          classes = [False, True]
          present = np.array([0, 1])
        y_pred[ok] = np.searchsorted(present, ids[ok])
        where = ok & label_id
        y_true[where] = np.searchsorted(present, lv[where].astype(np.int64))
      prepared.prediction_kind = 'class id'
    elif in_unit:  # one score: the positive class's
      if class_names is not None and len(class_names) != 2:
        raise EvaluateError(f'--class_names names {len(class_names)} classes but the '
                            'predictions are binary scores: give NEGATIVE,POSITIVE')
      classes = class_names or ([False, True] if all_bool else [0, 1])
      if class_names is None and (label_str & ok).any():
        raise EvaluateError('the labels are class names and the predictions are binary '
                            'scores: give --class_names=NEGATIVE,POSITIVE')
      if class_names is not None:
        labels_by_name(class_names)
        exclude(label_str & (y_true < 0), 'label is not one of --class_names')
      labels_by_id(2, 'label is not a binary class (0, 1, false or true)')
      y_pred[ok] = (pv[ok] >= threshold).astype(np.int64)
      scores = pv
      prepared.prediction_kind = f'binary score (positive at >= {threshold:g})'
    else:
      raise EvaluateError('the predictions are numbers, neither scores in [0, 1] nor whole '
                          'class ids: for a regressor use --task=regression')
  else:  # class names
    if class_names is not None:
      classes = class_names
      labels_by_name(class_names)
      exclude(label_str & (y_true < 0), 'label is not one of --class_names')
      labels_by_id(len(classes), 'label is not a class id of --class_names')
    else:
      if (label_id & ok).any():
        raise EvaluateError('the labels are class ids or booleans and the predictions are '
                            'class names: give --class_names (in class-id order) to map them')
      used = np.unique(np.concatenate([lv[ok & label_str], pv[ok]]).astype(np.int64))
      classes = sorted(vocabulary[i] for i in used)
      labels_by_name(classes)
    index = {name: i for i, name in enumerate(classes)}
    lookup = np.array([index.get(text, -1) for text in vocabulary] or [-1], np.int64)
    y_pred[ok] = lookup[pv[ok].astype(np.int64)]
    exclude(y_pred < 0, 'predicted class is not one of --class_names')
    prepared.prediction_kind = 'class name'
  exclude(y_true < 0, 'label is not a class')  # (a safety net: every case above says why)
  if len(classes) > MAX_CLASSES:
    raise EvaluateError(
        f'{len(classes)} classes: the confusion matrix and per-class metrics are written for '
        f'at most {MAX_CLASSES}; are the predictions or labels free text, or is this a '
        'regression (--task=regression)?')
  prepared.classes = list(classes)
  prepared.y_true = y_true[ok]
  prepared.y_pred = y_pred[ok]
  prepared.scores = None if scores is None else scores[ok]
  prepared.n = int(ok.sum())
  prepared.threshold = threshold
  _attach_slices(prepared, pairs, ok)
  return prepared, excluded


def _attach_slices(prepared, pairs, ok) -> None:
  if pairs.slice_field is not None:
    prepared.slice_field = pairs.slice_field
    prepared.slice_values = pairs.slice_values
    prepared.slice_codes = pairs.slice_codes()[ok]


_TEXT_BOOLS = {'true': True, 'false': False, 'True': True, 'False': False}


def _text_value(text: str):
  """(label kind, value) of a number or boolean written as text, or None."""
  if text in _TEXT_BOOLS:
    return L_BOOL, float(_TEXT_BOOLS[text])
  stripped = text.strip()
  if not stripped or not (stripped[0].isdigit() or stripped[0] in '+-.'):
    return None  # (not 'nan', 'inf', 'infinity': names)
  try:
    value = float(stripped)
  except ValueError:
    return None
  if not math.isfinite(value):
    return None
  if stripped.lstrip('+-').isdigit():
    return L_INT, value
  return (L_INTEGRAL if value.is_integer() else L_FLOAT), value


def _decide(form, lk, lv, pk, pv) -> tuple:
  """(task, why) from the usable pairs."""
  if isinstance(form, int):
    return 'classification', f'the predictions are vectors of {form} scores'
  if form == 'class name':
    return 'classification', 'the predictions are class names (strings)'
  if (lk == L_STR).any():
    return 'classification', 'the labels are class names (strings)'
  if (lk == L_BOOL).all():
    return 'classification', 'the labels are booleans'
  distinct = len(np.unique(lv))
  if (lk == L_FLOAT).any():
    return 'regression', (f'the labels include fractional numbers ({distinct} distinct '
                          'values)')
  if np.isin(pk, (P_INT, P_BOOL)).all() and distinct <= MAX_AUTO_CLASSES:
    return 'classification', ('the labels and the predictions are whole numbers: class ids '
                              f'({distinct} distinct labels)')
  if np.isin(lv, (0, 1)).all() and ((pv >= 0) & (pv <= 1)).all():
    return 'classification', ('the labels are 0 or 1 and the predictions are scores in '
                              '[0, 1]: a binary classifier')
  return 'regression', (f'the labels are numbers ({distinct} distinct values) and the '
                        'predictions are numbers that are neither binary scores nor few '
                        'class ids')


def _check_threshold(threshold) -> float:
  try:
    value = float(threshold)
  except (TypeError, ValueError):
    raise EvaluateError(f'--threshold: {threshold!r} is not a number') from None
  if not 0 <= value <= 1:
    raise EvaluateError(f'--threshold: {threshold!r} is not in [0, 1]')
  return value


# -- metrics ----------------------------------------------------------------------

def _number(value):
  """A JSON number, or None for NaN/inf."""
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _classification_metrics(p: _Prepared, notes: dict) -> dict:
  from sklearn import metrics as skm
  k = len(p.classes)
  indices = np.arange(k)
  yt, yp = p.y_true, p.y_pred
  out = {'classes': p.classes, 'prediction_kind': p.prediction_kind}
  if p.scores is not None and p.scores.ndim == 1:
    out['threshold'] = p.threshold
    out['positive_class'] = p.classes[1]
  out['accuracy'] = _number(skm.accuracy_score(yt, yp))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        yt, yp, labels=indices, zero_division=np.nan)
    averages = {}
    for average in ('macro', 'weighted'):
      ap, ar, af, _ = skm.precision_recall_fscore_support(
          yt, yp, labels=indices, average=average, zero_division=np.nan)
      averages[average] = {'precision': _number(ap), 'recall': _number(ar),
                           'f1': _number(af)}
  matrix = skm.confusion_matrix(yt, yp, labels=indices)
  predicted = matrix.sum(axis=0)

  # ROC AUC: binary from the positive score; otherwise one-vs-rest per class.
  auc = [None] * k
  auc_reason = [None] * k
  roc_auc = None
  if p.scores is None:
    notes['roc_auc'] = notes['log_loss'] = (
        f'the predictions are {p.prediction_kind}s, not scores')
  else:
    binary = p.scores.ndim == 1 or k == 2
    for c in ([1] if binary else range(k)):
      positive = yt == c
      score = p.scores if p.scores.ndim == 1 else p.scores[:, c]
      if positive.all() or not positive.any():
        auc_reason[c] = (f'every label is class {_label(p.classes[c])}' if positive.all()
                         else f'no label of class {_label(p.classes[c])}')
      else:
        auc[c] = _number(skm.roc_auc_score(positive, score))
    if binary:
      roc_auc = auc[1]
      if roc_auc is None:
        notes['roc_auc'] = f'only one class in the labels ({auc_reason[1]})'
      out['roc_auc_method'] = f'binary: the score of class {_label(p.classes[1])}'
      auc = [None] * k
      auc_reason = [None] * k
    else:
      defined = [a for a in auc if a is not None]
      roc_auc = _number(np.mean(defined)) if defined else None
      out['roc_auc_method'] = (f'one-vs-rest, macro average over the {len(defined)} of {k} '
                               'classes present in the labels (but not alone)')
      if roc_auc is None:
        notes['roc_auc'] = 'fewer than two classes in the labels'
    # log loss: scores that are probabilities
    if p.scores.ndim == 1:
      out['log_loss'] = _number(skm.log_loss(yt, p.scores, labels=[0, 1]))
    else:
      rows = p.scores.sum(axis=1)
      if ((p.scores >= 0) & (p.scores <= 1)).all() and (
          np.abs(rows - 1) <= PROBABILITY_TOLERANCE).all():
        with warnings.catch_warnings():
          warnings.simplefilter('ignore')  # float32 sums are 1 within 1e-7, not 1e-8
          out['log_loss'] = _number(skm.log_loss(yt, p.scores, labels=indices))
      else:
        notes['log_loss'] = ('the score vectors are not probabilities (a value outside '
                             f'[0, 1], or a row not summing to 1 within '
                             f'{PROBABILITY_TOLERANCE:g}): logits?')
  out.setdefault('log_loss', None)
  out['roc_auc'] = roc_auc
  _binary_metrics(p, out, notes)

  per_class = []
  for c in range(k):
    row = {'class': p.classes[c], 'precision': _number(precision[c]),
           'recall': _number(recall[c]), 'f1': _number(f1[c]), 'support': int(support[c]),
           'predicted': int(predicted[c])}
    if p.scores is not None and p.scores.ndim == 2 and k > 2:
      row['roc_auc'] = auc[c]
      if auc[c] is None:
        notes[f'per_class[{c}].roc_auc'] = auc_reason[c]
    if row['precision'] is None:
      notes[f'per_class[{c}].precision'] = f'class {_label(p.classes[c])} is never predicted'
    if row['recall'] is None:
      notes[f'per_class[{c}].recall'] = f'no label of class {_label(p.classes[c])}'
    if row['f1'] is None:
      notes[f'per_class[{c}].f1'] = 'precision and recall are both undefined or 0'
    per_class.append(row)
  out['per_class'] = per_class
  out['macro_avg'] = averages['macro']
  out['weighted_avg'] = averages['weighted']
  out['averages_note'] = ('macro: unweighted mean over classes, weighted: by support; '
                          'undefined per-class values are left out of the means')
  out['confusion_matrix'] = {'classes': p.classes, 'rows': 'label (true class)',
                             'columns': 'predicted class', 'counts': matrix.tolist()}
  return out


class _Binary:
  """A binary classifier's positive-class scores, sorted once: the
  threshold sweep, the ROC and precision-recall curves and the average
  precision come from the same counts."""

  def __init__(self, positive, score):
    self.positive, self.score = positive, score
    order = np.argsort(score, kind='stable')
    self.sorted = score[order]
    # cp[i]: positives among the i lowest scores
    self.cp = np.concatenate([[0], np.cumsum(positive[order], dtype=np.int64)])
    self.n = len(score)
    self.p = int(self.cp[-1])

  def at(self, thresholds):
    """(predicted positive, true positives) for `score >= t`, each t."""
    i = np.searchsorted(self.sorted, np.asarray(thresholds, np.float64), side='left')
    predicted = self.n - i
    return predicted, self.p - self.cp[i]

  def curve(self):
    """(thresholds, predicted positive, true positives) at each distinct
    score, from the highest down."""
    first = np.concatenate([[0], np.nonzero(np.diff(self.sorted))[0] + 1])[::-1]
    return self.sorted[first], self.n - first, self.p - self.cp[first]

  def sweep(self, thresholds):
    predicted, tp = self.at(thresholds)
    rows = []
    for t, pp, t_p in zip(thresholds, predicted, tp):
      pp, t_p = int(pp), int(t_p)
      rows.append({'threshold': float(t), 'predicted_positive': pp, 'true_positive': t_p,
                   'precision': t_p / pp if pp else None,
                   'recall': t_p / self.p if self.p else None,
                   'f1': 2 * t_p / (pp + self.p) if pp + self.p else None})
    return rows

  def average_precision(self):
    """sum over the distinct thresholds of (recall step) x precision (as
    scikit-learn's average_precision_score)."""
    _, predicted, tp = self.curve()
    recall = tp / self.p
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * tp / predicted))


def _binary(p: _Prepared):
  """The _Binary of a binary classifier's scores (cached on `p`), or None."""
  if p.task != 'classification' or p.scores is None or not p.n:
    return None
  if p.scores.ndim == 2 and len(p.classes) != 2:
    return None
  if getattr(p, '_binary', None) is None:
    score = p.scores if p.scores.ndim == 1 else p.scores[:, 1]
    p._binary = _Binary(p.y_true == 1, score)
  return p._binary


def _are_probabilities(p: _Prepared) -> bool:
  if p.scores is None:
    return False
  if not ((p.scores >= 0) & (p.scores <= 1)).all():
    return False
  return p.scores.ndim == 1 or bool(
      (np.abs(p.scores.sum(axis=1) - 1) <= PROBABILITY_TOLERANCE).all())


def _calibration(confidence, outcome, kind: str) -> dict:
  """Reliability: in equal-width bins of the predicted probability, the
  mean prediction against the observed frequency."""
  bins = CALIBRATION_BINS
  index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
  count = np.bincount(index, minlength=bins)
  predicted = np.bincount(index, confidence, minlength=bins)
  observed = np.bincount(index, outcome.astype(np.float64), minlength=bins)
  rows, gap = [], 0.0
  for i in range(bins):
    c = int(count[i])
    row = {'from': i / bins, 'to': (i + 1) / bins, 'count': c,
           'mean_predicted': _number(predicted[i] / c) if c else None,
           'observed': _number(observed[i] / c) if c else None}
    if c:
      gap += c * abs(row['mean_predicted'] - row['observed'])
    rows.append(row)
  return {'of': kind, 'bins': rows,
          'expected_calibration_error': _number(gap / len(confidence)),
          'expected_calibration_error_is': 'the pairs-weighted mean of |mean predicted - '
                                           'observed| over the bins'}


def _binary_metrics(p: _Prepared, out: dict, notes: dict) -> None:
  """Binary scores: average precision, the threshold sweep, calibration."""
  b = _binary(p)
  if b is not None:
    positive = _label(p.classes[1])
    if 0 < b.p:
      out['average_precision'] = _number(b.average_precision())
    else:
      out['average_precision'] = None
      notes['average_precision'] = f'no label of class {positive}'
    thresholds = sorted(set(SWEEP_THRESHOLDS) | {float(p.threshold)}) if p.scores.ndim == 1 \
        else list(SWEEP_THRESHOLDS)
    fine = b.sweep(FINE_THRESHOLDS)
    best = max((r for r in fine if r['f1'] is not None), key=lambda r: r['f1'], default=None)
    out['threshold_sweep'] = {
        'score': f'the score of class {positive}; positive from the threshold on',
        'rows': b.sweep(thresholds),
        'best_f1': best and {k: best[k] for k in ('threshold', 'precision', 'recall', 'f1')},
        'best_f1_of': 'thresholds 0, 0.01, ..., 1'}
  if _are_probabilities(p):
    if b is not None:
      out['calibration'] = _calibration(b.score, b.positive,
                                        f'the probability of class {_label(p.classes[1])}')
    else:
      out['calibration'] = _calibration(
          p.scores.max(axis=1), p.y_pred == p.y_true,
          'the probability of the predicted (top) class against how often it is right')
  elif p.scores is not None:
    notes['calibration'] = 'the scores are not probabilities'


def _slice_metrics(p: _Prepared) -> dict:
  """Counts and the main metrics per value of the --slice_by field: the
  MAX_SLICES most frequent values, then one slice of all other values."""
  from sklearn import metrics as skm
  codes, values = p.slice_codes, p.slice_values
  counts = np.bincount(codes, minlength=len(values))
  present = [i for i in np.argsort(-counts, kind='stable') if counts[i]]
  present.sort(key=lambda i: (-counts[i], values[i]))
  shown, rest = present[:MAX_SLICES], present[MAX_SLICES:]
  groups = [(values[i], codes == i) for i in shown]
  if rest:
    groups.append((None, np.isin(codes, np.array(rest, np.int32))))
  b = _binary(p)
  rows = []
  for value, mask in groups:
    row = {'value': value, 'count': int(mask.sum())}
    if value is None:
      row['values'] = len(rest)
    if p.task == 'classification':
      yt, yp = p.y_true[mask], p.y_pred[mask]
      row['accuracy'] = _number((yt == yp).mean())
      if len(p.classes) == 2:
        tp = int(((yt == 1) & (yp == 1)).sum())
        pp, ap = int((yp == 1).sum()), int((yt == 1).sum())
        row.update({'label_positive_rate': ap / len(yt), 'predicted_positive_rate': pp / len(yt),
                    'precision': tp / pp if pp else None, 'recall': tp / ap if ap else None,
                    'f1': 2 * tp / (pp + ap) if pp + ap else None})
        if b is not None:
          row['roc_auc'] = (_number(skm.roc_auc_score(yt == 1, b.score[mask]))
                            if 0 < ap < len(yt) else None)
      else:
        with warnings.catch_warnings():
          warnings.simplefilter('ignore')
          row['macro_f1'] = _number(skm.f1_score(yt, yp, labels=np.unique(yt),
                                                 average='macro', zero_division=0))
    else:
      residual = p.y_hat[mask] - p.y[mask]
      row.update({'mae': _number(np.abs(residual).mean()),
                  'rmse': _number(np.sqrt((residual ** 2).mean())),
                  'mean_residual': _number(residual.mean()),
                  'label_mean': _number(p.y[mask].mean())})
    rows.append(row)
  return {'field': p.slice_field, 'distinct_values': len(present), 'shown': len(shown),
          'other_values': len(rest),
          'note': (f'the {MAX_SLICES} most frequent values, then one slice of the other '
                   f'{len(rest)} values' if rest else 'every value'),
          'slices': rows}


def _regression_metrics(p: _Prepared, notes: dict) -> dict:
  from sklearn import metrics as skm
  y, y_hat = p.y, p.y_hat
  residuals = y_hat - y
  out = {
      'mae': _number(skm.mean_absolute_error(y, y_hat)),
      'rmse': _number(skm.root_mean_squared_error(y, y_hat)),
      'r2': None,
      'mean_residual': _number(residuals.mean()),
      'residual': 'prediction - label',
      'residual_quantiles': {f'{q:g}': _number(v) for q, v in
                             zip(QUANTILES, np.quantile(residuals, QUANTILES))},
      'label_mean': _number(y.mean()), 'label_std': _number(y.std()),
      'prediction_mean': _number(y_hat.mean()), 'prediction_std': _number(y_hat.std()),
  }
  if len(y) < 2:
    notes['r2'] = 'fewer than two pairs'
  else:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      out['r2'] = _number(skm.r2_score(y, y_hat, force_finite=False))
    if out['r2'] is None:
      notes['r2'] = ('the labels are all equal (no variance to explain)'
                     if np.all(y == y[0]) else
                     'not a finite number: the labels vary too little next to the errors')
  return out


def _metrics(p: _Prepared, pairs: Pairs, excluded, settings, failed) -> dict:
  if isinstance(failed, dict):
    failed_by = {str(k): int(v) for k, v in failed.items() if v}
  else:
    failed_by = {'unknown': int(failed)} if failed else {}
  for category, count in pairs.failed.items():
    failed_by[category] = failed_by.get(category, 0) + count
  excluded = dict(excluded)
  excluded.update(pairs.unreadable)
  notes = {}
  metrics = {
      'task': p.task,
      'task_reason': p.task_reason,
      'settings': settings,
      'counts': {
          'pairs': len(pairs),
          'evaluated': p.n,
          'excluded': sum(excluded.values()),
          'excluded_by_reason': dict(sorted(excluded.items(), key=lambda kv: -kv[1])),
          'failed_predictions': sum(failed_by.values()),
          'failed_predictions_by_category': failed_by,
      },
  }
  if pairs.rows:
    metrics['counts']['rows'] = pairs.rows
  incomplete = getattr(pairs, 'incomplete_files', [])
  metrics['counts']['files_incomplete'] = len(incomplete)
  if incomplete:
    metrics['incomplete_files'] = incomplete[:100]
  if getattr(p, 'labels_from_text', 0):
    metrics['counts']['labels_read_from_text'] = p.labels_from_text
  if not p.n:
    notes['metrics'] = 'no pair could be evaluated' + (
        f' ({", ".join(f"{r}: {c}" for r, c in excluded.items())})' if excluded else '')
  elif p.task == 'classification':
    metrics['classification'] = _classification_metrics(p, notes)
  else:
    metrics['regression'] = _regression_metrics(p, notes)
  if p.n and p.slice_codes is not None:
    metrics['slices'] = _slice_metrics(p)
  metrics['null_reasons'] = notes
  return metrics


def _evaluation(labels, predictions, task, threshold, class_names, failed):
  pairs = _as_pairs(labels, predictions)
  prepared, excluded = _prepare(pairs, task, threshold, class_names)
  settings = {'task': task, 'threshold': _check_threshold(threshold),
              'class_names': None if class_names is None else [str(c) for c in class_names]}
  return prepared, _metrics(prepared, pairs, excluded, settings, failed)


def compute(labels, predictions, task='auto', threshold=0.5, class_names=None,
            failed=0) -> dict:
  """The metrics of the pairs: see the module's docstring."""
  return _evaluation(labels, predictions, task, threshold, class_names, failed)[1]


def write_outputs(metrics: dict, labels, predictions, output_dir: str) -> None:
  """metrics.json and report.html of `metrics` (from `compute` on the same
  pairs, which are prepared again here for the plots)."""
  settings = metrics.get('settings') or {}
  prepared, _ = _prepare(_as_pairs(labels, predictions), metrics.get('task') or
                         settings.get('task', 'auto'), settings.get('threshold', 0.5),
                         settings.get('class_names'))
  _write(metrics, prepared, output_dir)


def evaluate(labels, predictions, output_dir: str, task='auto', threshold=0.5,
             class_names=None, failed=0, inputs=None) -> dict:
  """compute + write_outputs, the pairs prepared once; returns the metrics.
  `inputs`: what was read (a dict), recorded in metrics.json."""
  prepared, metrics = _evaluation(labels, predictions, task, threshold, class_names, failed)
  if inputs:
    metrics = {'inputs': inputs, **metrics}
  _write(metrics, prepared, output_dir)
  return metrics


def _write(metrics, prepared, output_dir):
  """Renders both files in memory, then replaces each through a temporary name."""
  text = json.dumps(metrics, indent=2, allow_nan=False, ensure_ascii=False) + '\n'
  page = render_html(metrics, prepared).replace('\x00', '\ufffd')
  # Text that cannot be UTF-8 (an unpaired surrogate from a JSON escape) is
  # replaced, in both files, rather than failing the write.
  text, page = (t.encode('utf-8', 'replace').decode('utf-8') for t in (text, page))
  if '://' in output_dir:
    from apache_beam.io.filesystems import FileSystems
    if not FileSystems.exists(output_dir):
      FileSystems.mkdirs(output_dir)
    for name, content in (('metrics.json', text), ('report.html', page)):
      path = FileSystems.join(output_dir, name)
      temporary = path + f'.tmp-{os.getpid()}'
      with FileSystems.create(temporary) as f:
        f.write(content.encode('utf-8'))
      if FileSystems.exists(path):
        FileSystems.delete([path])
      FileSystems.rename([temporary], [path])
    return
  os.makedirs(output_dir, exist_ok=True)
  for name, content in (('metrics.json', text), ('report.html', page)):
    path = os.path.join(output_dir, name)
    temporary = f'{path}.tmp-{os.getpid()}'
    try:
      with open(temporary, 'w', encoding='utf-8') as f:
        f.write(content)
      os.replace(temporary, path)
    finally:
      if os.path.exists(temporary):
        os.remove(temporary)


# -- the report -----------------------------------------------------------------

def _figure():
  from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
  return Figure(figsize=FIGSIZE, dpi=DPI, layout='constrained')


def _png(figure) -> str:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=DPI)
  return base64.b64encode(buffer.getvalue()).decode('ascii')


def _label(value) -> str:
  """A class as plot text: what the fonts can draw (no control characters,
  no unpaired surrogates)."""
  text = json.dumps(value) if isinstance(value, bool) else str(value)
  text = text.encode('utf-8', 'replace').decode('utf-8')
  return ''.join(c if c.isprintable() else '?' for c in text)


# The PNG plots in the run report's colours (pipeline/report.py's CSS).
_PLOT_COLOURS = ('#4c78a8', '#54a24b', '#e45756', '#f58518', '#72b7b2', '#b279a2',
                 '#eeca3b', '#9d755d', '#bab0ac', '#ff9da6', '#79706e', '#d67195')


def _plot_style() -> dict:
  from cycler import cycler  # (matplotlib's)
  return {'font.size': 8, 'font.family': 'sans-serif', 'text.color': '#444',
          'axes.labelcolor': '#444', 'axes.edgecolor': '#999', 'xtick.color': '#444',
          'ytick.color': '#444', 'axes.spines.top': False, 'axes.spines.right': False,
          'axes.prop_cycle': cycler(color=list(_PLOT_COLOURS))}


def _plots(p: _Prepared) -> list:
  """[(title, base64 PNG or None, caption)]. A plot that cannot be drawn
  (whatever the data holds) is a note: the numbers are written regardless."""
  if not p.n or (p.task == 'classification' and (_binary(p) is not None or p.scores is None)):
    return []  # (binary scores: SVG charts, _charts; no need of matplotlib)
  import matplotlib
  import matplotlib.pyplot as plt
  try:
    with matplotlib.rc_context(_plot_style()), warnings.catch_warnings():
      warnings.simplefilter('ignore')  # missing glyphs: drawn as boxes
      return _draw(p) if p.n else []
  except Exception as error:  # pylint: disable=broad-except
    plt.close('all')
    return [('Plots', None, f'not drawn: {type(error).__name__}: {error}'[:300])]


def _draw(p: _Prepared) -> list:
  plots = []
  if p.task == 'classification':
    from sklearn.metrics import roc_curve
    k = len(p.classes)
    names = [_label(c) for c in p.classes]
    if _binary(p) is not None or p.scores is None:
      return plots  # drawn as SVG charts (_charts); the confusion matrix is a table
    # Multi-class score vectors.
    bins = np.linspace(0, 1, 41) if ((p.scores >= 0) & (p.scores <= 1)).all() else 40
    figure = _figure()
    shown = min(k, MAX_CURVE_CLASSES)
    columns = 3
    rows = -(-shown // columns)
    figure.set_size_inches(FIGSIZE[0] * 1.4, 1.6 * rows + 0.4)
    for c in range(shown):
      ax = figure.add_subplot(rows, columns, c + 1)
      positive = p.y_true == c
      for mask, name in ((~positive, 'other labels'), (positive, f'label {names[c]}')):
        if mask.any():
          ax.hist(p.scores[mask, c], bins=bins, alpha=0.55, density=True, label=name)
      ax.set_title(f'score of class {names[c]}', fontsize=8)
      ax.tick_params(labelsize=6)
      if c == 0:
        ax.legend(fontsize=6)
    caption = ('for each class: its score on instances of that label and on the others '
               '(densities)' + (f'; the first {shown} of {k} classes' if shown < k else ''))
    plots.append(('Score histograms per class', _png(figure), caption))
    figure = _figure()
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color='grey', linestyle=':', linewidth=1)
    curves = 0
    for c in range(shown):
      if 0 < (p.y_true == c).sum() < p.n:
        fpr, tpr, _ = roc_curve(p.y_true == c, p.scores[:, c])
        ax.plot(fpr, tpr, linewidth=1, label=f'{names[c]} vs rest')
        curves += 1
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    if curves:
      ax.legend(fontsize=6 if curves > 4 else 8)
      plots.append(('ROC curve', _png(figure), 'one-vs-rest per class'))
    else:
      plots.append(('ROC curve', None, 'only one class in the labels: no curve'))
  else:
    residuals = p.y_hat - p.y
    sample = np.arange(p.n)
    if p.n > MAX_SCATTER_POINTS:
      sample = np.random.default_rng(0).choice(p.n, MAX_SCATTER_POINTS, replace=False)
    note = (f'a random sample of {MAX_SCATTER_POINTS} of {p.n} pairs'
            if p.n > MAX_SCATTER_POINTS else '')
    figure = _figure()
    ax = figure.add_subplot()
    ax.scatter(p.y_hat[sample], residuals[sample], s=4, alpha=0.5)
    ax.axhline(0, color='black', linewidth=1)
    ax.set_xlabel('prediction')
    ax.set_ylabel('residual (prediction - label)')
    plots.append(('Residuals against predictions', _png(figure), note))
    figure = _figure()
    ax = figure.add_subplot()
    ax.hist(residuals, bins=50)
    ax.set_xlabel('residual (prediction - label)')
    ax.set_ylabel('pairs')
    plots.append(('Residual histogram', _png(figure), ''))
    figure = _figure()
    ax = figure.add_subplot()
    ax.scatter(p.y[sample], p.y_hat[sample], s=4, alpha=0.5)
    low, high = float(min(p.y.min(), p.y_hat.min())), float(max(p.y.max(), p.y_hat.max()))
    ax.plot([low, high], [low, high], color='grey', linestyle=':', linewidth=1)
    ax.set_xlabel('label')
    ax.set_ylabel('prediction')
    plots.append(('Predictions against labels', _png(figure), note))
  return plots


# The run report's page style (pipeline/report.py): its CSS, tables' look and
# SVG charts, and these few rules of our own.
_CSS_EXTRA = """
td.null{color:#999}td.n.null{text-align:right}.headline{font-size:1.05em}
table.matrix td.n{min-width:3em}figure img{display:block}
"""


def _cell(value, reason=None) -> str:
  if value is None:
    title = f' title="{html.escape(reason)}"' if reason else ''
    return f'<td class="n null"{title}>n/a</td>'
  if isinstance(value, float):
    return f'<td class="n">{value:.6g}</td>'
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return f'<td class="n">{value:,}</td>'
  return f'<td>{html.escape(_label(value))}</td>'


def _table(rows, header=None, css=None) -> str:
  parts = [f'<table class="{css}">' if css else '<table>']
  if header:
    parts.append('<tr>' + ''.join(f'<th>{html.escape(h)}</th>' for h in header) + '</tr>')
  for name, *cells in rows:
    parts.append(f'<tr><th>{html.escape(str(name))}</th>' + ''.join(cells) + '</tr>')
  parts.append('</table>')
  return ''.join(parts)


def _thin(points: list) -> list:
  """At most CURVE_POINTS points of a curve, its ends kept."""
  if len(points) <= CURVE_POINTS:
    return points
  keep = np.unique(np.linspace(0, len(points) - 1, CURVE_POINTS).astype(np.int64))
  return [points[i] for i in keep]


def _charts(metrics: dict, p: _Prepared) -> list:
  """The binary classifier's charts as the run report draws its own (inline
  SVG): [(html of a figure)]."""
  from tf_batch_predict.pipeline import report as look
  b = _binary(p)
  c = metrics.get('classification') or {}
  figures = []
  if b is not None and 0 < b.p < b.n:
    positive = _label(p.classes[1])
    thresholds, predicted, tp = b.curve()
    fp = predicted - tp
    negatives = b.n - b.p
    roc = _thin([(0.0, 0.0)] + [(float(f) / negatives, float(t) / b.p)
                                for f, t in zip(fp, tp)])
    figures.append(look._figure(look.line_chart(
        [('chance', [(0, 0), (1, 1)]), ('model', roc)], 'false positive rate',
        'true positive rate', 'ROC curve', x_top=1),
        f'<b>ROC curve</b> of class {html.escape(positive)}: AUC '
        f'{_fmt(c.get("roc_auc"))}', 'roc'))
    pr = _thin([(float(t) / b.p, float(t) / float(n)) for t, n in zip(tp, predicted)])
    base = b.p / b.n
    figures.append(look._figure(look.line_chart(
        [('chance (positive share)', [(0, base), (1, base)]), ('model', pr)], 'recall',
        'precision', 'Precision-recall curve', x_top=1),
        f'<b>Precision–recall curve</b>: average precision '
        f'{_fmt(c.get("average_precision"))}', 'pr'))
    fine = b.sweep(FINE_THRESHOLDS)
    lines = [(name, [(r['threshold'], r[key]) for r in fine if r[key] is not None])
             for name, key in (('precision', 'precision'), ('recall', 'recall'),
                               ('F1', 'f1'))]
    best = (c.get('threshold_sweep') or {}).get('best_f1')
    figures.append(look._figure(look.line_chart(
        lines, f'threshold (score of class {positive})', 'value', 'Threshold sweep',
        x_top=1),
        '<b>Threshold sweep</b>: precision, recall and F1 when the positive class is '
        'predicted from each threshold on'
        + (f'; best F1 {_fmt(best["f1"])} at {best["threshold"]:g}' if best else ''),
        'thresholds'))
    bins = np.linspace(0, 1, 21) if p.scores.ndim == 1 or _are_probabilities(p) else 20
    for c_index, name in ((0, _label(p.classes[0])), (1, positive)):
      counts, edges = np.histogram(b.score[p.y_true == c_index], bins=bins)
      bars = [('', int(n), f'{edges[i]:.3g} to {edges[i + 1]:.3g}: {int(n):,}')
              for i, n in enumerate(counts)]
      figures.append(look._figure(look.bar_chart(
          bars, f'score of class {positive}', 'pairs', f'Scores, label {name}',
          edges=(f'{edges[0]:.3g}', f'{edges[-1]:.3g}')),
          f'<b>Scores of the pairs labelled {html.escape(name)}</b>', 'scores',
          field=name))
  calibration = c.get('calibration')
  if calibration:
    points = [(r['mean_predicted'], r['observed']) for r in calibration['bins'] if r['count']]
    figures.append(look._figure(look.line_chart(
        [('perfectly calibrated', [(0, 0), (1, 1)]), ('model', points)],
        'mean predicted probability (bin)', 'observed frequency', 'Calibration', x_top=1),
        f'<b>Calibration (reliability)</b>: {html.escape(calibration["of"])}, in '
        f'{CALIBRATION_BINS} bins; expected calibration error '
        f'{_fmt(calibration["expected_calibration_error"])}', 'calibration'))
  return figures


def _fmt(value) -> str:
  return 'n/a' if value is None else f'{value:.4g}'


def _run_header(run: dict) -> list:
  """The model and the run the predictions came from (--predictions)."""
  e = html.escape
  model = run.get('model') or {}
  name = str(model.get('base') or model.get('path') or '?')
  out = [f'<h1>Evaluation of model {e(name)}'
         + (f', version {e(str(model["version"]))}' if model.get('version') is not None
            else '') + '</h1>']
  link = run.get('report')
  where = e(str(run.get('output')))
  out.append('<p>Predictions of the run in '
             + (f'<a href="{e(link)}">{where}</a> (its report)' if link else where)
             + (f'; model {e(str(model.get("path")))}, signature '
                f'{e(str(model.get("signature")))}' if model else '') + '.</p>')
  return out


def render_html(metrics: dict, prepared: _Prepared) -> str:
  """The self-contained report, in the run report's style: inline CSS, SVG
  charts (and for multi-class scores and regressions, inline PNG plots), no
  script."""
  from tf_batch_predict.pipeline import report as look
  notes = metrics.get('null_reasons', {})
  counts = metrics['counts']
  e = html.escape
  inputs = dict(metrics.get('inputs') or {})
  run = inputs.pop('run', None)
  body = _run_header(run) if run else ['<h1>batch-predict evaluation</h1>']
  headline = _headline(metrics).replace('log_loss', 'log loss').replace('roc_auc', 'ROC AUC')
  body.append(f'<p class="headline {"ok" if counts["evaluated"] else "bad"}">'
              f'{counts["evaluated"]:,} pairs evaluated'
              + (f': {e(headline)}' if headline else '') + '</p>')
  facts = [(k, _cell(v if not isinstance(v, (list, dict)) else json.dumps(v)))
           for k, v in inputs.items()]
  facts += [('task', _cell(metrics['task'])), ('why', _cell(metrics['task_reason']))]
  facts.append(('requested task', _cell(metrics['settings']['task'])))
  if metrics['settings'].get('class_names'):
    facts.append(('class_names', _cell(', '.join(metrics['settings']['class_names']))))
  body.append('<h2>Inputs</h2>' + _table(facts))
  body.append('<h2>Pairs</h2>')
  rows = [(k, _cell(counts[k])) for k in ('rows', 'pairs', 'evaluated', 'excluded',
                                          'failed_predictions') if k in counts]
  body.append(_table(rows))
  for title, key in (('Excluded, by reason', 'excluded_by_reason'),
                     ('Failed predictions, by error category',
                      'failed_predictions_by_category')):
    if counts[key]:
      body.append(f'<p class="note">{e(title)}:</p>')
      body.append(_table([(k, _cell(v)) for k, v in counts[key].items()]))
  if 'metrics' in notes:
    body.append(f'<p class="note">{e(notes["metrics"])}</p>')
  c = metrics.get('classification')
  if c:
    body.append('<h2>Classification</h2>')
    rows = [('prediction kind', _cell(c['prediction_kind']))]
    if 'threshold' in c:
      rows += [('positive class', _cell(c['positive_class'])),
               ('threshold', _cell(c['threshold']))]
    rows += [('accuracy', _cell(c['accuracy'])),
             ('log loss', _cell(c['log_loss'], notes.get('log_loss'))),
             ('ROC AUC', _cell(c['roc_auc'], notes.get('roc_auc')))]
    if 'average_precision' in c:
      rows.append(('average precision (PR AUC)',
                   _cell(c['average_precision'], notes.get('average_precision'))))
    if c.get('calibration'):
      rows.append(('expected calibration error',
                   _cell(c['calibration']['expected_calibration_error'])))
    if 'roc_auc_method' in c:
      rows.append(('ROC AUC method', _cell(c['roc_auc_method'])))
    for average in ('macro_avg', 'weighted_avg'):
      for name, value in c[average].items():
        rows.append((f'{name} ({average.replace("_avg", "")} average)', _cell(value)))
    body.append(_table(rows))
    for key in ('log_loss', 'roc_auc', 'average_precision', 'calibration'):
      if key in notes:
        body.append(f'<p class="note">{e(key)} n/a: {e(notes[key])}</p>')
    figures = _charts(metrics, prepared)
    if figures:
      body.append('<h2>Charts</h2><div class="charts">' + ''.join(figures) + '</div>')
    has_auc = any('roc_auc' in row for row in c['per_class'])
    header = ['class', 'precision', 'recall', 'F1', 'support', 'predicted'] + (
        ['ROC AUC (vs rest)'] if has_auc else [])
    rows = []
    for i, row in enumerate(c['per_class']):
      cells = [_cell(row[k], notes.get(f'per_class[{i}].{k}')) for k in
               ('precision', 'recall', 'f1', 'support', 'predicted')]
      if has_auc:
        cells.append(_cell(row.get('roc_auc'), notes.get(f'per_class[{i}].roc_auc')))
      rows.append((_label(row['class']), *cells))
    body.append('<h3>Per class</h3>' + _table(rows, header))
    classes = c['confusion_matrix']['classes']
    if len(classes) <= 100:
      matrix = c['confusion_matrix']['counts']
      top = max((v for r in matrix for v in r), default=0) or 1
      header = ['label \\ predicted'] + [_label(x) for x in classes]
      rows = [(_label(classes[i]),
               *(f'<td class="n" style="background:rgba(76,120,168,{0.6 * v / top:.2f})">'
                 f'{v:,}</td>' for v in counts_row))
              for i, counts_row in enumerate(matrix)]
      body.append('<h3>Confusion matrix</h3>' + _table(rows, header, css='matrix'))
    sweep = c.get('threshold_sweep')
    if sweep:
      rows = [(f'{r["threshold"]:g}' + (' (--threshold)' if 'threshold' in c and
                                        r['threshold'] == c['threshold'] else ''),
               *(_cell(r[k]) for k in ('precision', 'recall', 'f1', 'predicted_positive')))
              for r in sweep['rows']]
      body.append(f'<h3>Threshold sweep</h3><p class="note">{e(sweep["score"])}</p>'
                  + _table(rows, ['threshold', 'precision', 'recall', 'F1',
                                  'predicted positive']))
    calibration = c.get('calibration')
    if calibration:
      rows = [(f'{r["from"]:.1f}–{r["to"]:.1f}', _cell(r['count']), _cell(r['mean_predicted']),
               _cell(r['observed'])) for r in calibration['bins']]
      body.append(f'<h3>Calibration</h3><p class="note">{e(calibration["of"])}</p>'
                  + _table(rows, ['predicted probability', 'pairs', 'mean predicted',
                                  'observed']))
  r = metrics.get('regression')
  if r:
    body.append('<h2>Regression</h2>')
    rows = [('MAE', _cell(r['mae'])), ('RMSE', _cell(r['rmse'])),
            ('R²', _cell(r['r2'], notes.get('r2'))),
            ('mean residual (prediction - label)', _cell(r['mean_residual'])),
            ('label mean', _cell(r['label_mean'])), ('label std', _cell(r['label_std'])),
            ('prediction mean', _cell(r['prediction_mean'])),
            ('prediction std', _cell(r['prediction_std']))]
    body.append(_table(rows))
    body.append('<h3>Residual quantiles</h3>')
    body.append(_table([(q, _cell(v)) for q, v in r['residual_quantiles'].items()],
                       ['quantile', 'residual']))
  slices = metrics.get('slices')
  if slices:
    body.append(_slices_html(slices))
  plots = _plots(prepared)
  if plots:
    body.append('<h2>Plots</h2>')
  for title, png, caption in plots:
    if png is None:
      body.append(f'<p class="note">{e(title)}: {e(caption)}</p>')
      continue
    body.append(f'<figure><img alt="{e(title)}" src="data:image/png;base64,{png}">'
                f'<figcaption><b>{e(title)}</b>{": " + e(caption) if caption else ""}'
                '</figcaption></figure>')
  created = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
  body.append(f'<p class="note">Written by batch-predict evaluate with metrics.json, '
              f'{e(created)}; self-contained, nothing is fetched.</p>')
  return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          '<meta name="viewport" content="width=device-width,initial-scale=1">'
          '<title>batch-predict evaluate</title>'
          f'<style>{look._CSS}{_CSS_EXTRA}</style></head><body>\n' + '\n'.join(body)
          + '\n</body></html>\n')


_SLICE_COLUMNS = (('count', 'pairs'), ('accuracy', 'accuracy'),
                  ('label_positive_rate', 'label positive'),
                  ('predicted_positive_rate', 'predicted positive'),
                  ('precision', 'precision'), ('recall', 'recall'), ('f1', 'F1'),
                  ('roc_auc', 'ROC AUC'), ('macro_f1', 'macro F1'), ('mae', 'MAE'),
                  ('rmse', 'RMSE'), ('mean_residual', 'mean residual'),
                  ('label_mean', 'label mean'))


def _slices_html(slices: dict) -> str:
  e = html.escape
  rows_in = slices['slices']
  columns = [(k, name) for k, name in _SLICE_COLUMNS if any(k in r for r in rows_in)]
  rows = []
  for row in rows_in:
    name = row['value'] if row['value'] is not None else f'(other: {row["values"]:,} values)'
    rows.append((name, *(_cell(row.get(k)) for k, _ in columns)))
  return (f'<h2>Slices by {e(slices["field"])}</h2><p class="note">'
          f'{slices["distinct_values"]:,} distinct values: {e(slices["note"])}.</p>'
          + _table(rows, [slices['field']] + [name for _, name in columns], css='slices'))


# -- reading joined rows ------------------------------------------------------------

def _format_of(path: str, fmt: str) -> str:
  if fmt != 'auto':
    return fmt
  name = path.lower()
  if name.endswith('.gz'):
    name = name[:-3]
  if name.endswith('.parquet'):
    return 'parquet'
  if name.endswith(('.jsonl', '.ndjson', '.json')):
    return 'jsonl'
  raise EvaluateError(f'--joined: {path}: cannot tell the format from the extension; '
                      'give --format=jsonl or --format=parquet')


def _files(patterns) -> list:
  from tf_batch_predict.transforms import file_patterns
  paths = []
  for pattern in patterns:
    try:  # the run's own pattern definition: each file read by its exact name
      matched = file_patterns.match(pattern)
    except Exception as error:  # pylint: disable=broad-except  (a file system's own error)
      raise EvaluateError(f'--joined: cannot list {pattern}: {error}') from None
    if not matched:
      raise EvaluateError(f'--joined: no file matches {pattern}')
    paths.extend(m.path for m in matched if m.path not in paths)  # a file is read once
  return paths


def read_joined(patterns, label_field, prediction_field, fmt='auto',
                slice_field=None) -> tuple:
  """(Pairs, files): the pairs of every row of the files the patterns match
  (with each row's value of `slice_field`, if given)."""
  paths = _files(patterns)
  formats = {path: _format_of(path, fmt) for path in paths}
  pairs = Pairs(slice_field=slice_field)
  from tf_batch_predict.pipeline.config import special_file_reason
  from tf_batch_predict.transforms.file_patterns import name_text, printable
  for path in paths:
    special = special_file_reason(path)  # a named pipe would wait forever
    if special:
      pairs.incomplete_files.append({'path': name_text(path), 'reason': special})
      continue
    try:
      _read_file(pairs, path, formats[path], label_field, prediction_field)
    except Exception as error:  # pylint: disable=broad-except  (a file's fault, any library's)
      reason = str(error).splitlines()[0] if str(error) else type(error).__name__
      pairs.incomplete_files.append({'path': name_text(path), 'reason': printable(reason[:300])})
  return pairs, paths


def _read_file(pairs, path, fmt, label_field, prediction_field) -> None:
  """Adds one file's rows; raises where the file cannot be read to its end
  (the rows before the fault are kept)."""
  import gzip

  from apache_beam.io.filesystems import CompressionTypes, FileSystems
  if fmt == 'parquet':
    import pyarrow.parquet as pq

    from tf_batch_predict.transforms.rejoin import read_outputs
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      parquet = pq.ParquetFile(f)
      names = parquet.schema_arrow.names
      wanted = [c for c in dict.fromkeys((label_field, prediction_field, 'error',
                                          'error_output', pairs.slice_field))
                if c is not None and c in names]
      # A typed carried field's values that are not of its type are in its
      # text column (--parquet_column_types).
      texts = {field: column for field, column in
               read_outputs.text_columns(parquet.schema_arrow).items() if field in wanted}
      columns = wanted + list(texts.values())
      pairs.fields_seen.update(n for n in names[:100] if n not in texts.values())
      for batch in parquet.iter_batches(columns=columns or None, batch_size=65536):
        values = batch.to_pydict() if columns else {}
        for i in range(batch.num_rows):
          row = read_outputs.fold_text_columns({c: values[c][i] for c in columns}, texts)
          pairs.add_row(row, label_field, prediction_field)
    return
  # Python's gzip module rather than Beam's decompressing reader, which
  # stops silently where a gzip stream is cut short.
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
    f = gzip.GzipFile(fileobj=raw) if path.endswith('.gz') else raw
    for line in iter(f.readline, b''):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        pairs.rows += 1
        pairs.unreadable['row is not valid JSON'] += 1
        continue
      pairs.add_row(row, label_field, prediction_field)


# -- the command -------------------------------------------------------------------

def _parser():
  from tf_batch_predict.pipeline.options import _csv, _Parser, _patterns
  parser = _Parser(
      prog=PROG, allow_abbrev=False,
      description='Metrics of predictions against labels (classification: accuracy, '
                  'per-class precision/recall/F1, confusion matrix, log loss, ROC AUC; '
                  'regression: MAE, RMSE, R², residual quantiles; binary scores: '
                  'precision-recall curve, threshold sweep, calibration; metrics per slice '
                  'with --slice_by), written as metrics.json and a self-contained '
                  'report.html.')
  parser.add_argument('--predictions', default=None, metavar='DIR',
                      help="a run's --output directory: its predictions are joined to "
                           '--labels first (batch-predict join), by key or by file and '
                           'position')
  parser.add_argument('--labels', default=None, type=_patterns, metavar='PATTERN',
                      help='files holding the labels (any input format): the run\'s '
                           'instances, or files of key and label')
  parser.add_argument('--key_field', default=None,
                      help="with --predictions: the run's --key_field (default: from its "
                           'summary.json)')
  parser.add_argument('--joined', default=None, type=_patterns,
                      help='instead of --predictions/--labels: JSONL (also .gz) or Parquet '
                           'files of rows holding both the label and the prediction, '
                           'comma-separated patterns')
  parser.add_argument('--label_field', required=True, help='the field holding the label')
  parser.add_argument('--prediction_field', required=True,
                      help='the field holding the prediction (a number, a class name, '
                           'or a vector of scores)')
  parser.add_argument('--output', required=True,
                      help='directory for metrics.json and report.html')
  parser.add_argument('--task', default='auto',
                      help='auto (default: decided from the data, the reason recorded), '
                           'classification or regression')
  parser.add_argument('--threshold', default='0.5',
                      help='binary scores: the positive class from this score on (default 0.5)')
  parser.add_argument('--class_names', default=None, type=_csv,
                      help='class names in class-id (score vector) order, comma-separated')
  parser.add_argument('--format', default='auto',
                      help='auto (by extension), jsonl or parquet')
  parser.add_argument('--slice_by', default=None, metavar='FIELD',
                      help='also the metrics per value of this field of the rows (the '
                           f'labels\' files): the {MAX_SLICES} most frequent values, then '
                           'the others as one slice')
  return parser


# What evaluate writes into --output (the join's own files go to a hidden
# folder there, which the join checks itself).
EVALUATE_FILES = ('metrics.json', 'report.html')


def main(argv=None) -> int:
  from tf_batch_predict.pipeline.options import ConfigError
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args, beam_args = _parser().parse_known_args(argv)
    if beam_args and not args.predictions:
      raise ConfigError(f'unknown option {beam_args[0]}')
  except ConfigError as e:
    error(e, PROG)
    return EXIT_CONFIG_ERROR
  except SystemExit as e:  # --help
    return e.code if isinstance(e.code, int) else EXIT_OK
  join_dir, join_summary = None, None
  try:
    from tf_batch_predict.pipeline.outputs import check_output_name, check_outside_inputs
    from tf_batch_predict.transforms.file_patterns import is_local

    def _absolute(path):
      return os.path.abspath(path) if is_local(path) else path
    from tf_batch_predict.transforms.rejoin.read_outputs import output_files
    check_output_name(args.output)  # Beam's delete and rename would match it as a pattern
    # A re-run would read this run's metrics.json or report.html as rows.
    for flag, patterns in (('--labels', args.labels), ('--joined', args.joined)):
      check_outside_inputs([_absolute(p) for p in patterns or ()], _absolute(args.output),
                           EVALUATE_FILES, flag, run_files=False)
    found = output_files(args.output)
    if found['predictions'] or found['errors']:
      # Its report.html is the run's: writing ours there would replace it.
      raise EvaluateError(f'--output: {args.output} holds a run\'s result; give a directory '
                          'of its own')
    if args.predictions:
      if args.joined:
        raise EvaluateError('give either --joined or --predictions with --labels, not both')
      if not args.labels:
        raise EvaluateError('--labels: give the files holding the labels (the run\'s '
                            'instances, or files of key and label)')
      args.joined, join_dir, join_summary = _join(args, beam_args)
    elif not args.joined:
      raise EvaluateError('give --predictions=DIR with --labels=PATTERN, or --joined=PATTERN')
    return _evaluate(args, join_summary)
  except (EvaluateError, ConfigError) as e:
    error(e, PROG)
    return EXIT_CONFIG_ERROR
  except _JoinFailed as e:
    return e.status
  finally:
    if join_dir:
      _remove(join_dir)


def _join(args, beam_args) -> tuple:
  """Joins the predictions to the labels (batch-predict join, the same
  Beam pipeline) into a hidden folder of --output; returns (the joined
  files' pattern, the folder, the join's summary). Raises EvaluateError."""
  import contextlib
  import uuid

  from tf_batch_predict.pipeline import join, outputs
  from tf_batch_predict.pipeline.options import ConfigError
  try:
    output = outputs.prepare(args.output.rstrip('/'))
  except ConfigError as e:
    raise EvaluateError(str(e)) from None
  folder = f'{output}/.join-{uuid.uuid4().hex[:12]}'
  argv = [f'--input={",".join(args.labels)}', f'--predictions={args.predictions}',
          f'--output={folder}', '--format=auto', *beam_args]
  if args.key_field is not None:
    argv.append(f'--key_field={args.key_field}')
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):  # the join's table: its counts go in metrics.json
    status = join.main(argv)
  if status not in (join.EXIT_OK, join.EXIT_UNMATCHED):
    _remove(folder)
    raise _JoinFailed(status)  # the join said why, in one line
  from tf_batch_predict.transforms.rejoin.read_outputs import read_summary
  return [f'{folder}/joined-*-of-*.jsonl'], folder, read_summary(folder)


class _JoinFailed(Exception):
  def __init__(self, status: int):
    super().__init__(status)
    self.status = status


def _remove(folder: str) -> None:
  from apache_beam.io.filesystems import FileSystems
  try:
    if FileSystems.exists(folder):
      FileSystems.delete([folder])
  except Exception:  # pylint: disable=broad-except  (a temporary folder: best effort)
    pass


def _evaluate(args, join_summary) -> int:
  from tf_batch_predict.pipeline.options import ConfigError
  try:
    if args.task not in TASKS:
      raise EvaluateError(f'--task: {args.task!r} is not one of {", ".join(TASKS)}')
    threshold = _check_threshold(args.threshold)
    if args.format not in ('auto', 'jsonl', 'parquet'):
      raise EvaluateError(f'--format: {args.format!r} is not one of auto, jsonl, parquet')
    if not args.joined:
      raise EvaluateError('--joined: give at least one file pattern')
    if args.class_names is not None and not args.class_names:
      raise EvaluateError('--class_names: give at least one name')
    if args.slice_by is not None and not args.slice_by:
      raise EvaluateError('--slice_by: give a field name')
    pairs, paths = read_joined(args.joined, args.label_field, args.prediction_field,
                               args.format, args.slice_by)
    if not pairs.rows and pairs.incomplete_files:
      first = pairs.incomplete_files[0]
      raise EvaluateError(f'--joined: {first["path"]} cannot be read: {first["reason"]}')
    if not pairs.rows:
      raise EvaluateError(f'--joined: no rows in the {_plural(len(paths), "file")} matched')
    evaluated_rows = pairs.rows - sum(pairs.failed.values()) - sum(pairs.unreadable.values())
    seen = ', '.join(sorted(pairs.fields_seen)[:20])
    for flag, field, present in (('--label_field', args.label_field, pairs.label_present),
                                 ('--prediction_field', args.prediction_field,
                                  pairs.prediction_present)):
      if evaluated_rows and not present:
        raise EvaluateError(f'{flag}: no row has a field {field!r} (fields seen: {seen})')
    if args.slice_by and evaluated_rows and not pairs.slice_present:
      raise EvaluateError(f'--slice_by: no row has a field {args.slice_by!r} '
                          f'(fields seen: {seen})')
    inputs = {'joined': list(args.joined), 'files': len(paths),
              'label_field': args.label_field, 'prediction_field': args.prediction_field}
    if join_summary is not None:
      keep = ('instances', 'joined', 'failed', 'instances_without_output',
              'outputs_without_instance', 'ambiguous', 'joined_by')
      inputs = {'predictions': args.predictions, 'labels': list(args.labels),
                'label_field': args.label_field, 'prediction_field': args.prediction_field,
                'join': {k: join_summary.get(k) for k in keep}}
    if args.slice_by:
      inputs['slice_by'] = args.slice_by
    run = _run(args.predictions or _folder_of(args.joined), args.output)
    if run:
      inputs['run'] = run
    metrics = evaluate(pairs, None, args.output, task=args.task, threshold=threshold,
                       class_names=args.class_names, inputs=inputs)
  except (EvaluateError, ConfigError) as e:
    error(e, PROG)
    return EXIT_CONFIG_ERROR
  except OSError as e:
    if os.environ.get('BATCH_PREDICT_DEBUG', '') not in ('', '0'):
      traceback.print_exc()
    error(f'{e}', PROG)
    return EXIT_CONFIG_ERROR
  counts = metrics['counts']
  headline = _headline(metrics)
  print(f'Evaluated {counts["evaluated"]:,} of {counts["pairs"]:,} pairs '
        f'({metrics["task"] or "no task"}; {metrics["task_reason"]}); excluded '
        f'{counts["excluded"]:,}, failed predictions {counts["failed_predictions"]:,}.'
        + (f' {headline}.' if headline else ''))
  print(f'Wrote {os.path.join(args.output, "metrics.json")} and '
        f'{os.path.join(args.output, "report.html")}')
  if counts.get('files_incomplete'):
    first = metrics['incomplete_files'][0]
    error(f'{counts["files_incomplete"]} file(s) could not be read to their end, e.g. '
          f'{first["path"]}: {first["reason"]}; the metrics are of the rows before', PROG)
    return EXIT_INPUT_INCOMPLETE
  if not counts['evaluated']:
    error(metrics['null_reasons'].get('metrics', 'no pair could be evaluated'), PROG)
    return EXIT_NOTHING_EVALUATED
  return EXIT_OK


def _folder_of(patterns):
  """The one folder the --joined patterns read from, or None."""
  folders = {os.path.dirname(p) or '.' for p in patterns}
  return folders.pop() if len(folders) == 1 else None


def _run(folder, output_dir):
  """The run whose predictions are evaluated: its output folder, model
  (path, version, signature) and a link to its report.html (relative to
  --output where both are local), from its summary.json; None where the
  folder holds no summary."""
  if not folder:
    return None
  from tf_batch_predict.transforms.rejoin.read_outputs import read_summary
  summary = read_summary(folder)
  if not summary or not isinstance(summary.get('model'), dict):
    return None
  model = summary['model']
  run = {'output': folder,
         'model': {k: model.get(k) for k in ('path', 'base', 'version', 'signature')}}
  report = f'{folder.rstrip("/")}/report.html'
  try:
    from apache_beam.io.filesystems import FileSystems
    exists = FileSystems.exists(report)
  except Exception:  # pylint: disable=broad-except  (no link rather than no evaluation)
    exists = False
  if exists:
    run['report'] = (report if '://' in report or '://' in output_dir else
                     os.path.relpath(os.path.abspath(report), os.path.abspath(output_dir)))
  return run


def _headline(metrics) -> str:
  parts = []
  for section, keys in (('classification', ('accuracy', 'log_loss', 'roc_auc')),
                        ('regression', ('mae', 'rmse', 'r2'))):
    for key in keys:
      value = (metrics.get(section) or {}).get(key)
      if value is not None:
        parts.append(f'{key} {value:.4g}')
  return ', '.join(parts)
