"""Score InstanceBatches with a SavedModel signature through Beam's RunInference.

RunInference loads the model once per worker process in its DoFn's setup
(through Beam's shared handle) and records load and inference metrics; this
handler adds what it lacks for batch prediction: per-instance failure
isolation. RunInference's own dead-letter output is per failed batch; here,
when a model call fails, the batch is split until every instance is either
in a call that succeeded (and gets that call's outputs) or has failed alone
(and becomes an error record with the model's reason). So an instance is a
`model` error only if the model fails on it by itself, whatever its
neighbours.

How a failing batch is split adapts to how often the model fails (group
testing): while failures are rare, halves are tried, so a batch with one bad
instance costs at most 2 log2(n) more calls; when most instances of failing
batches fail, each instance is tried alone at once (n calls, where halving
would take 2n). Calls made to isolate failures run the model's ops in the
calling thread, which for small batches costs a fraction of a pooled call.

A signature whose inputs fix the batch dimension (`[1, ...]`, `[8, ...]`) is
called on exactly that many rows from the start: a batch is cut into calls
of N rows, the last padded by repeating its last row (the padding's outputs
are dropped), and an instance of a failing call is tried alone, padded to N.

`check_model` is the launcher's proof that the signature can run at all: it
loads it as the workers do and calls it once on a sample batch. Where the
worker runs in the launcher's process (Beam's local runner, in memory), the
worker takes the signature the check loaded instead of loading it again.
"""
import collections
import dataclasses
import gc
import logging
import math
import os
import re
import socket
import threading
import time

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from tf_batch_predict.transforms.records import (InstanceBatch, InstanceError, METRICS_NAMESPACE,
                                MODEL, ScoredBatch)
from tf_batch_predict.transforms.model.savedmodel import (EagerSignature, ModelError, ModelRef,
                                                          SessionSignature,
                                                          load_signature_function)

_LOG = logging.getLogger(__name__)

# Estimated failure rate (among the instances of failing batches) from which
# failing batches are split straight into single instances. Below it, groups
# of 2^floor(log2((1-p)/p)) instances are tried, halving those that fail
# (Hwang's generalized binary splitting). Simulated for group calls costing
# 1 to 1.5 times a single-instance call (as calls in the calling thread do
# for small models), this rule costs at most ~10% more than the best fixed
# group size at any failure rate; above 0.3, single instances are the best.
SOLO_FAILURE_RATE = 0.3
# Fixed-batch signatures of at most this many rows are called in the calling
# thread (`call_small`): for a few rows the thread-pool hand-off costs more
# than the ops.
SMALL_CALL_ROWS = 32


class LoadedSignature:
  """A loaded SavedModel signature, scored with failure isolation.

  Used through methods only: with `--share_model_across_processes` callers
  hold a proxy to it in another process (Beam's MultiProcessShared), so a
  whole batch, isolation included, is one call.
  """
  def __init__(self, model: ModelRef):
    checked = take_checked(model)
    self.from_check = checked is not None  # the launcher's check loaded it
    self._fn = checked or load_signature_function(model)
    self._signature = model.signature
    self._fixed_batch = model.signature.fixed_batch
    self._first_use = True
    self._lock = threading.Lock()
    # Fraction of the instances of recent failing batches that failed alone
    # (a moving average): decides how the next failing batch is split.
    self._failure_rate = 0.0

  def how(self) -> str:
    return self._fn.how

  def claim_first_use(self) -> bool:
    """True once, for the first caller after the load."""
    with self._lock:
      first, self._first_use = self._first_use, False
      return first

  def predict(self, feeds: dict) -> dict:
    """The signature's outputs for one batch; raises what the model raises."""
    outputs = self._fn.call([feeds[name] for name in self._fn.input_names])
    return dict(zip(self._fn.output_names, outputs))

  def score(self, feeds: dict) -> tuple:
    """Scores one batch (input name -> array, one row per instance) and never
    raises for what the model does with it.

    Returns (parts, failures): parts is a list of (positions, outputs), where
    outputs ({output name: array}) has one row per position (positions None:
    every instance of the batch, in order); failures is a list of (position,
    reason) for the instances the model fails on alone.
    """
    arrays = [feeds[name] for name in self._fn.input_names]
    size = len(arrays[0])
    if self._fixed_batch:
      return self._score_fixed(arrays, size, self._fixed_batch)
    values, error = self._call(arrays, size, small=size == 1)
    if error is None:
      return [(None, self._named(values))], []
    if size == 1:
      return [], [(0, one_line(error))]
    parts, failures = [], []
    self._isolate(arrays, size, parts, failures)
    self._failure_rate = (self._failure_rate + len(failures) / size) / 2
    return self._merged(parts), failures

  def _score_fixed(self, arrays, size, rows) -> tuple:
    """`score` for a signature that takes exactly `rows` rows per call."""
    call = signature_call(self._fn, self._signature, small=rows <= SMALL_CALL_ROWS)
    names = self._fn.output_names
    parts, failures = [], []
    whole = size - size % rows
    # The calls' feeds as views, without slicing each input per call: with
    # one instance per call, Python's share of a call is most of what the
    # job adds to the model's own cost.
    calls = zip(*[a[:whole].reshape(whole // rows, rows, *a.shape[1:]) for a in arrays])
    for start, feeds in zip(range(0, whole, rows), calls):
      try:
        values = call(list(feeds))
        _check_rows(names, values, rows)
      except Exception as e:  # pylint: disable=broad-except
        self._fixed_alone(call, arrays, start, start + rows, rows, e, parts, failures)
        continue
      parts.append((start, start + rows, values))
    if whole < size:  # the rest, padded
      try:
        parts.append((whole, size, _call_padded(call, names, arrays, whole, size, rows)))
      except Exception as e:  # pylint: disable=broad-except
        self._fixed_alone(call, arrays, whole, size, rows, e, parts, failures)
    return self._merged(parts), failures

  def _fixed_alone(self, call, arrays, start, stop, rows, error, parts, failures):
    """The call on rows [start, stop) failed with `error`: each row alone,
    padded to `rows`."""
    if stop - start == 1:
      failures.append((start, one_line(error)))
      return
    for row in range(start, stop):
      try:
        parts.append((row, row + 1, _call_padded(call, self._fn.output_names, arrays,
                                                 row, row + 1, rows)))
      except Exception as e:  # pylint: disable=broad-except
        failures.append((row, one_line(e)))

  def _call(self, arrays, size, small):
    """(output arrays, None), or (None, the exception)."""
    try:
      values = (self._fn.call_small if small else self._fn.call)(arrays)
      _check_rows(self._fn.output_names, values, size)
      return values, None
    except Exception as e:  # pylint: disable=broad-except
      return None, e

  def _group_size(self) -> int:
    rate = self._failure_rate
    if rate >= SOLO_FAILURE_RATE:
      return 1
    if rate <= 0:
      return 1 << 30  # halves
    return 1 << max(0, int(math.log2((1 - rate) / rate)))

  def _isolate(self, arrays, size, parts, failures):
    """The call on rows [0, size) failed: finds the rows that fail alone.
    Appends (start, stop, output arrays) to parts, (row, reason) to
    failures."""
    group = self._group_size()
    failing = [(0, size)]  # ranges of two or more rows whose call failed
    while failing:
      low, high = failing.pop()
      step = max(1, min(group, (high - low) // 2))
      if step == 1:
        self._alone(arrays, low, high, parts, failures)
        continue
      all_passed = True
      for start in range(low, high, step):
        stop = min(start + step, high)
        if stop == high and all_passed and stop - start > 1:
          # The rest of a failing range passed, so this part fails (unless
          # the model's outcome depends on the batch; then splitting it
          # further still finds its good rows). No need to call it whole.
          failing.append((start, stop))
          continue
        values, error = self._call([a[start:stop] for a in arrays], stop - start,
                                   small=True)
        if error is None:
          parts.append((start, stop, values))
        elif stop - start == 1:
          failures.append((start, one_line(error)))
          all_passed = False
        else:
          failing.append((start, stop))
          all_passed = False

  def _alone(self, arrays, low, high, parts, failures):
    """Calls the model on each of rows [low, high) alone (the loop above,
    without its bookkeeping: when every instance fails, this is the cost)."""
    call, names = self._fn.call_small, self._fn.output_names
    for row in range(low, high):
      try:
        values = call([a[row:row + 1] for a in arrays])
        _check_rows(names, values, 1)
      except Exception as e:  # pylint: disable=broad-except
        failures.append((row, one_line(e)))
        continue
      parts.append((row, row + 1, values))

  def _merged(self, parts) -> list:
    """(positions, outputs) from (start, stop, values) parts: one part where
    the outputs' shapes beyond the batch agree (the usual case), so that a
    batch split into many single instances still formats as one."""
    if not parts:
      return []
    if len(parts) > 1 and all(
        v.shape[1:] == w.shape[1:] and v.dtype == w.dtype
        for part in parts[1:] for v, w in zip(part[2], parts[0][2])):
      positions = [i for start, stop, _ in parts for i in range(start, stop)]
      values = [np.concatenate([part[2][k] for part in parts])
                for k in range(len(self._fn.output_names))]
      return [(positions, self._named(values))]
    return [(range(start, stop), self._named(values)) for start, stop, values in parts]

  def _named(self, values) -> dict:
    return dict(zip(self._fn.output_names, values))


def _positions(names, wanted) -> tuple:
  return tuple(i for i, name in enumerate(names) if name in wanted)


def _batching(call, unbatched):
  """`call`, with a batch dimension of one added to the outputs at the
  positions `unbatched` (a signature fixing the batch at one whose outputs
  have none: the whole output is the instance's)."""
  def batched(arrays):
    values = list(call(arrays))
    for i in unbatched:
      value = np.asarray(values[i])
      if value.dtype == object and value.ndim == 1 and value.size and isinstance(
          value[0], (np.ndarray, list)):
        # A ragged output's rows (savedmodel.ragged_rows): one row of them.
        row = np.empty(1, dtype=object)
        row[0] = list(value)
        value = row
      else:
        value = value[np.newaxis]
      values[i] = value
    return values
  return batched


def _call_padded(call, names, arrays, start, stop, rows) -> list:
  """Outputs for rows [start, stop) of `arrays` from one call on exactly
  `rows` rows: the last row is repeated to fill the call, and the repeats'
  outputs are dropped. Raises what the model raises."""
  count = stop - start
  if count == rows:
    values = call([a[start:stop] for a in arrays])
    _check_rows(names, values, rows)
    return values
  feeds = [np.concatenate([a[start:stop], np.repeat(a[stop - 1:stop], rows - count, axis=0)])
           for a in arrays]
  values = call(feeds)
  _check_rows(names, values, rows)
  return [v[:count] for v in values]


class OutputRowsError(ValueError):
  """An output without one row per instance: the job cannot split it."""


def _check_rows(names, values, size):
  for name, value in zip(names, values):
    if value.ndim == 0 or value.shape[0] != size:
      raise OutputRowsError(f'output {name!r} has shape {list(value.shape)}, '
                            f'not one row per instance of the batch ({size})')


_NODE_SUFFIX = re.compile(
    r'\s*\[\[(?:\{\{function_node [^}]*\}\})*\{\{node .*?\}\}\]\]|\s*\[Op:[^\]]*\]')
# Eager calls name the function first: `{{function_node __inference_...}} reason`.
_FUNCTION_PREFIX = re.compile(r'^(?:\{\{function_node [^}]*\}\}\s*)+')


def one_line(error: Exception) -> str:
  """The informative line of a (possibly multi-line) TensorFlow error: graph
  errors put the stack first and the reason last, before the node name."""
  text = getattr(error, 'message', None) or str(error)
  for line in reversed(text.splitlines()):
    if '[[' in line or '[Op:' in line:
      line = _NODE_SUFFIX.sub('', line)
    line = _FUNCTION_PREFIX.sub('', line.strip())
    if line:
      return f'{type(error).__name__}: {line}'
  return type(error).__name__


def sample_feeds(signature) -> list:
  """A tiny batch built from the signature, in input order: zeros or empty
  strings of each input's dtype, unknown dimensions as 1, two rows (or the
  fixed batch size); for a signature that takes serialized tf.Examples, an
  Example that satisfies its parsing spec where one can be built, else an
  empty one."""
  # Two rows where the batch is free: one row would not show an output that
  # has no batch dimension (a constant `[1]`), which fails every batch.
  rows = signature.fixed_batch or 2
  if signature.takes_examples:
    from tf_batch_predict.transforms.model import example_spec
    make = getattr(example_spec, 'sample_example', None)
    example = b''
    if make and signature.example_features:
      try:
        example = make(signature.example_features)
      except Exception:  # pylint: disable=broad-except  (an empty Example still tests the load)
        _LOG.warning('Could not build a sample tf.Example from the parsing spec; '
                     'checking the model with an empty one')
    return [np.array([example] * rows, dtype=object)]
  arrays = []
  for spec in signature.inputs:
    shape = (rows, *(1 if d is None else d for d in spec.shape or ()))
    arrays.append(np.full(shape, b'', dtype=object) if spec.dtype == 'string'
                  else np.zeros(shape, spec.dtype))
  return arrays


def check_model(model: ModelRef, keep: bool = False) -> tuple:
  """Loads the signature as the workers do and calls it once on
  `sample_feeds`, so that a model that cannot run stops the job before it
  starts instead of failing every batch. Raises ModelError (one line).

  Where the graph-mode Session loads the model but cannot run the
  signature and `tf.saved_model.load`'s function can (a Keras 3 model saved
  with `tf.saved_model.save`: its variables are restored only through the
  object graph), the workers are told to load it that way.

  With `keep`, the signature that passed is kept for the first worker of
  this process to load it (take_checked): where the worker runs in this
  process, it is not loaded twice. Not where the signature's ops change
  state that a later call sees (the sample call would have changed it).

  Returns (seconds, warning or None, the ModelRef the workers load):
  InvalidArgumentError on the sample is only a warning, since
  data-dependent checks in a model (assertions, lookups) may reject zeros
  and accept real instances.
  """
  started = time.time()
  try:
    fn = load_signature_function(model)
  except Exception as e:  # pylint: disable=broad-except
    raise ModelError(f'--model: cannot load {model.path}: {one_line(e)}') from None
  warning, error = _sample_call(model, fn)
  passed = fn
  if error is not None and fn.how == SessionSignature.how:
    try:
      eager = EagerSignature(model)
    except Exception:  # pylint: disable=broad-except  (the Session's error says why)
      eager = None
    eager_warning, eager_error = _sample_call(model, eager) if eager else (None, error)
    passed = eager
    if eager_error is None:
      _LOG.warning('Signature %s of %s fails in a graph session (%s); it runs through '
                   'tf.saved_model.load, which the workers use instead',
                   model.signature.name, model.path, one_line(error).split('. ')[0])
      model, warning, error = dataclasses.replace(model, loader='eager'), eager_warning, None
  if fn.how == EagerSignature.how:  # only tf.saved_model.load loads it
    model = dataclasses.replace(model, loader='eager')
  if error is not None:
    _close(fn)
    if passed is not fn:
      _close(passed)
    if isinstance(error, OutputRowsError):
      raise ModelError(f'--model: signature {model.signature.name!r} of {model.path}: '
                       f'{error}; leave it out with --output_fields')
    raise ModelError(f'--model: signature {model.signature.name!r} of {model.path} '
                     f'fails on a sample batch: {one_line(error)}')
  if passed is not fn:
    _close(fn)
  # Not a model whose calls change its state (a counter, a random op): the
  # workers' calls would not start where a fresh load starts.
  if keep and not passed.changes_state():
    _keep_checked(model, passed)
  else:
    _close(passed)
  return time.time() - started, warning, model


# The signature check_model loaded, kept for this process's worker:
# (ModelRef, loaded signature) or None.
_checked = None
_checked_lock = threading.Lock()


def _keep_checked(model: ModelRef, fn) -> None:
  global _checked
  with _checked_lock:
    if _checked is not None:
      _close(_checked[1])
    _checked = (model, fn)


def take_checked(model: ModelRef):
  """The signature check_model kept for `model` (once), or None."""
  global _checked
  with _checked_lock:
    if _checked is None or _checked[0] != model:
      return None
    fn, _checked = _checked[1], None
    return fn


def release_checked() -> None:
  """Closes a signature check_model kept that no worker took."""
  global _checked
  with _checked_lock:
    if _checked is not None:
      _close(_checked[1])
      _checked = None


def _close(fn) -> None:
  if fn is not None and hasattr(fn, 'close'):
    fn.close()


def _sample_call(model: ModelRef, fn) -> tuple:
  """(warning, error), either or both None, of one call of a loaded
  signature on `sample_feeds`."""
  import tensorflow as tf
  try:
    arrays = sample_feeds(model.signature)
    values = signature_call(fn, model.signature)(arrays)
    _check_rows(fn.output_names, values, len(arrays[0]))
  except tf.errors.InvalidArgumentError as e:
    return (f'the model rejects a sample batch of zeros ({one_line(e)}); going on, '
            'as real instances may pass'), None
  except Exception as e:  # pylint: disable=broad-except
    return None, e
  return None, None


def signature_call(fn, signature, small: bool = False):
  """fn's `call` (or `call_small`) on a batch of the signature's rows:
  for a signature called per instance, on the one row's own values; with
  a batch dimension of one added to the outputs that have none."""
  call = fn.call_small if small else fn.call
  if signature.per_instance:
    call = _one_instance(call)
  unbatched = _positions(fn.output_names, signature.unbatched_outputs)
  return _batching(call, unbatched) if unbatched else call


def _one_instance(call):
  """`call` on a batch of one row, fed without its batch dimension (a
  signature whose inputs are declared `[]`)."""
  def unbatched(arrays):
    return call([a[0] for a in arrays])
  return unbatched


# The model's batch size is chosen at run time (BatchSizer): it starts at
# START_BATCH_SIZE and doubles while the time per instance falls by at least
# CLIMB_GAIN, up to --max_batch_size and to MAX_FEED_BYTES of inputs per
# call (a bound on memory: a big model's activations grow with its inputs).
# Measured on this job's benchmark models (2 cores, model alone): a call of
# the 13-feature tabular model costs about 1 ms whatever its size, so it
# scores 10x faster per instance at 4096 than at 256; the 784-float MLP 1.8x
# faster at 1024 than at 256 and no faster beyond; a compute-bound model
# gains nothing past a few dozen. No single default suits every model.
START_BATCH_SIZE = 256
CLIMB_GAIN = 0.9  # a doubling is kept if it costs at most this per instance
CALLS_PER_STEP = 8  # full-size calls timed before a size is judged
# Calls after which a settled size tries the next again: under load (a
# decoding helper on the other core) a size can lose its first calls by
# chance; the tabular benchmark's then spent a quarter of a run at half size.
REPROBE_CALLS = 100
MAX_FEED_BYTES = 64 << 20
MAX_CALL_SECONDS = 2.0  # no doubling past a call this long


class BatchSizer:
  """Chooses how many instances each model call takes, by timing calls
  (as Beam's BatchElements does for elements): the job needs no batch-size
  tuning for small or large models. Only calls of exactly the current size
  that did not fail are timed."""
  def __init__(self, max_size: int):
    self.max_size = max(1, max_size)
    self.size = min(START_BATCH_SIZE, self.max_size)
    self._per_row = {}  # size -> (calls timed, least seconds per instance)
    self._settled_at = None  # size judged best; None while climbing
    self._since_settled = 0
    self._bounded = False  # the feed-bytes bound has been applied

  def bound_by_memory(self, row_bytes: int) -> None:
    """Applies MAX_FEED_BYTES once the size of an instance's inputs is known."""
    if self._bounded or row_bytes <= 0:
      return
    self._bounded = True
    fits = max(1, MAX_FEED_BYTES // row_bytes)
    if fits < self.max_size:
      self.max_size = 1 << (fits.bit_length() - 1)  # a power of two, at most `fits`
      self.size = min(self.size, self.max_size)

  def observe(self, rows: int, seconds: float) -> None:
    size = self.size
    if rows != size or seconds <= 0:
      return
    # The fastest call: other processes' work only ever adds time to a call.
    calls, per_row = self._per_row.get(size, (0, math.inf))
    per_row = min(per_row, seconds / rows)
    calls += 1
    self._per_row[size] = (calls, per_row)
    if self._settled_at is not None and size == self._settled_at:
      self._since_settled += 1
      self._recent.append(seconds / rows)
      if (self._since_settled >= REPROBE_CALLS and size * 2 <= self.max_size
          and seconds < MAX_CALL_SECONDS):
        self._since_settled = 0
        self._per_row.pop(size * 2, None)
        # Judged against its last calls, as many as the next size gets: the
        # fastest of hundreds is luckier than the fastest of a few.
        self._per_row[size] = (calls, min(self._recent))
        self.size = size * 2  # conditions change: try the next size again
      return
    if calls < CALLS_PER_STEP:
      return
    smaller = self._per_row.get(size // 2)
    if smaller is not None and size > 1 and per_row > CLIMB_GAIN * smaller[1]:
      self._settle(size // 2)  # the doubling did not pay
    elif size * 2 <= self.max_size and seconds < MAX_CALL_SECONDS:
      self.size = size * 2
      self._per_row.pop(self.size, None)
    else:
      self._settle(size)

  def _settle(self, size: int) -> None:
    self.size, self._settled_at, self._since_settled = size, size, 0
    self._recent = collections.deque(maxlen=CALLS_PER_STEP)


class SavedModelHandler(ModelHandler[InstanceBatch, ScoredBatch, LoadedSignature]):
  """Scores pre-batched InstanceBatches; never raises for a bad instance."""
  def __init__(self, model: ModelRef, max_batch_size: int, share_across_processes=False):
    super().__init__()
    self._model = model
    self._max_batch_size = max_batch_size
    self._share_across_processes = share_across_processes
    self._sizer = None  # per worker: made on first use
    self._launcher = (socket.gethostname(), os.getpid())

  def share_model_across_processes(self) -> bool:
    # One copy per machine instead of one per process, for big models.
    return self._share_across_processes

  def load_model(self) -> LoadedSignature:
    started = time.time()
    loaded = LoadedSignature(self._model)
    if gc.get_freeze_count() == 0 and (socket.gethostname(), os.getpid()) != self._launcher:
      # A worker process's first model: what exists now (TensorFlow, Beam,
      # the model) is frozen, never scanned by the garbage collector again,
      # which then scans only the objects scoring makes (a full scan of
      # TensorFlow's takes about 0.25 s). Once per process, and not in the
      # launcher's (the command freezes its own, pipeline/command.py; a
      # program calling the job keeps its collector as it is). What is
      # frozen is never collected as a cycle: a worker's first bundle
      # processor, dropped after a failed bundle, stays; collecting first
      # would cost the full scan this saves.
      gc.freeze()
    if loaded.from_check:
      _LOG.info('Loaded SavedModel %s (signature %s, %s) in process %d by the model check; '
                'the worker uses it', self._model.path, self._model.signature.name,
                loaded.how(), os.getpid())
    else:
      _LOG.info('Loaded SavedModel %s (signature %s, %s) in %.1f s in process %d',
                self._model.path, self._model.signature.name, loaded.how(),
                time.time() - started, os.getpid())
    return loaded

  def run_inference(self, batch, model: LoadedSignature, inference_args=None):
    if model.claim_first_use():
      # Counted here rather than in load_model: metrics are reliably
      # attributed inside process(), not inside DoFn.setup().
      Metrics.counter(METRICS_NAMESPACE, 'model_loads').inc()
    results, errors = [], list(batch.errors)
    if self._sizer is None:
      self._sizer = BatchSizer(self._max_batch_size)
    sizer = self._sizer
    adaptive = not self._model.signature.fixed_batch  # those are cut into their size
    batch_size, latency = _model_batch_metrics()
    buckets = _BatchBuckets()
    began = time.perf_counter()
    for group in batch.groups:
      if group.rows:
        sizer.bound_by_memory(sum(v.nbytes for v in group.feeds.values()) // len(group.rows))
      start = 0
      while start < len(group.rows):
        size = sizer.size if adaptive else self._max_batch_size
        rows = group.rows[start:start + size]
        called = time.perf_counter()
        parts, failures = model.score({k: v[start:start + size]
                                       for k, v in group.feeds.items()})
        seconds = time.perf_counter() - called
        start += size
        if adaptive and not failures and len(parts) == 1:
          sizer.observe(len(rows), seconds)
        # Per model batch (RunInference's own metrics are per element: a
        # chunk of up to thousands of instances, scored in such batches).
        micros = int(seconds * 1e6)
        latency.update(micros)
        batch_size.update(len(rows))
        buckets.count(len(rows), micros)
        for positions, outputs in parts:
          results.append((rows if positions is None else [rows[i] for i in positions],
                          outputs))
        errors.extend(InstanceError(rows[i], MODEL, reason) for i, reason in failures)
    # The whole element's time (model calls and what surrounds them), for
    # summary.json `stages`.
    Metrics.counter(METRICS_NAMESPACE, 'time_score_us').inc(
        int((time.perf_counter() - began) * 1e6))
    return [ScoredBatch(batch, results, errors)]

  def get_num_bytes(self, batch: InstanceBatch) -> int:
    # The default pickles the whole batch just to measure it.
    return sum(v.nbytes for g in batch.groups for v in g.feeds.values())

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE


def _model_batch_metrics() -> tuple:
  """(batch size, batch latency in microseconds): distributions of the
  batches the model is called on (at most --max_batch_size instances, the
  calls that isolate failing instances included)."""
  return (Metrics.distribution(METRICS_NAMESPACE, 'model_batch_size'),
          Metrics.distribution(METRICS_NAMESPACE, 'model_batch_latency_micro_secs'))


# Histograms of the model batches, as Beam counters (Beam's distributions
# keep only count, sum, min and max, and counters work on every runner):
# `model_batch_size_le_N` counts the batches of at most N instances (and
# more than the bound below N), `model_batch_latency_le_Nus` those of at most
# N microseconds (latencies of LATENCY_FLOOR_US or less in the first bucket).
# The bounds: 1, 2, 3, 4, then four per doubling (5, 6, 7, 8, 10, 12, 14,
# 16, 20, ...): a batch of 200 instances is one of 193-224 (`bucket`).
# pipeline/summary.py turns them into the summary's histograms.
BATCH_SIZE_BUCKET = 'model_batch_size_le_'
BATCH_LATENCY_BUCKET = 'model_batch_latency_le_'
LATENCY_FLOOR_US = 64


def bucket(value: int, floor: int = 1) -> int:
  """The upper bound of the value's bucket (at least `floor`); the bound
  after bound b is bucket(b + 1)."""
  value = max(int(value), floor, 1)
  if value <= 4:
    return value
  low = 1 << (value - 1).bit_length() - 1  # low < value <= 2 * low
  step = low // 4
  return low + -(-(value - low) // step) * step


class _BatchBuckets:
  """The bucket counters of one bundle's batches (looked up once each)."""
  def __init__(self):
    self._counters = {}

  def _inc(self, name: str):
    counter = self._counters.get(name)
    if counter is None:
      counter = self._counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
    counter.inc()

  def count(self, size: int, micros: int):
    self._inc(f'{BATCH_SIZE_BUCKET}{bucket(size)}')
    self._inc(f'{BATCH_LATENCY_BUCKET}{bucket(micros, LATENCY_FLOOR_US)}us')


def ScoreBatches(model: ModelRef, max_batch_size: int,
                 share_across_processes: bool = False) -> RunInference:
  """InstanceBatch -> ScoredBatch, batches already formed by the reader."""
  handler = SavedModelHandler(model, max_batch_size, share_across_processes)
  return RunInference(handler.with_no_batching())
