"""Score InstanceBatches with a SavedModel signature through Beam's RunInference.

RunInference loads the model once per worker process in its DoFn's setup
(through Beam's shared handle) and records load and inference metrics; this
handler adds what it lacks for batch prediction: per-instance failure
isolation. RunInference's own dead-letter output is per failed batch, so a
failing model call is bisected here until the instances that fail are alone,
and only they become error records.
"""
import logging
import os
import re
import threading
import time

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from transforms.records import (InstanceBatch, InstanceError, METRICS_NAMESPACE,
                                MODEL, ScoredBatch)
from transforms.savedmodel import ModelRef, load_signature

_LOG = logging.getLogger(__name__)


class LoadedSignature:
  """A loaded SavedModel and its signature function.

  Used through methods only: with `--share_model_across_processes` callers
  hold a proxy to it in another process (Beam's MultiProcessShared).
  """
  def __init__(self, model: ModelRef):
    self._loaded, self._fn = load_signature(model)
    self._first_use = True
    self._lock = threading.Lock()

  def claim_first_use(self) -> bool:
    """True once, for the first caller after the load."""
    with self._lock:
      first, self._first_use = self._first_use, False
      return first

  def predict(self, feeds: dict) -> dict:
    return {k: v.numpy() for k, v in self._fn(**feeds).items()}


def one_line(error: Exception) -> str:
  """The informative line of a (possibly multi-line) TensorFlow error: graph
  errors put the stack first and the reason last, before the node name."""
  text = getattr(error, 'message', None) or str(error)
  lines = [re.sub(r'\s*\[\[\{\{node .*?\}\}\]\]|\s*\[Op:[^\]]*\]', '', line).strip()
           for line in text.splitlines()]
  lines = [line for line in lines if line]
  reason = lines[-1] if lines else ''
  return f'{type(error).__name__}: {reason}' if reason else type(error).__name__


class SavedModelHandler(ModelHandler[InstanceBatch, ScoredBatch, LoadedSignature]):
  """Scores pre-batched InstanceBatches; never raises for a bad instance."""
  def __init__(self, model: ModelRef, max_batch_size: int, share_across_processes=False):
    super().__init__()
    self._model = model
    self._max_batch_size = max_batch_size
    self._share_across_processes = share_across_processes

  def share_model_across_processes(self) -> bool:
    # One copy per machine instead of one per process, for big models.
    return self._share_across_processes

  def load_model(self) -> LoadedSignature:
    started = time.time()
    loaded = LoadedSignature(self._model)
    _LOG.info('Loaded SavedModel %s (signature %s) in %.1f s in process %d',
              self._model.path, self._model.signature.name,
              time.time() - started, os.getpid())
    return loaded

  def run_inference(self, batch, model: LoadedSignature, inference_args=None):
    if model.claim_first_use():
      # Counted here rather than in load_model: metrics are reliably
      # attributed inside process(), not inside DoFn.setup().
      Metrics.counter(METRICS_NAMESPACE, 'model_loads').inc()
    results, errors = [], list(batch.errors)
    size = self._max_batch_size
    for group in batch.groups:
      for start in range(0, len(group.rows), size):
        feeds = {k: v[start:start + size] for k, v in group.feeds.items()}
        self._score(model, group.rows[start:start + size], feeds, results, errors)
    return [ScoredBatch(batch, results, errors)]

  def _score(self, model, rows, feeds, results, errors):
    try:
      outputs = model.predict(feeds)
      for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != len(rows):
          raise ValueError(f'output {name!r} has shape {list(value.shape)}, '
                           f'not one row per instance of the batch')
      results.append((rows, outputs))
    except Exception as e:  # pylint: disable=broad-except
      if len(rows) == 1:
        errors.append(InstanceError(rows[0], MODEL, one_line(e)))
        return
      half = len(rows) // 2
      for part in (slice(0, half), slice(half, None)):
        self._score(model, rows[part], {k: v[part] for k, v in feeds.items()},
                    results, errors)

  def get_num_bytes(self, batch: InstanceBatch) -> int:
    # The default pickles the whole batch just to measure it.
    return sum(v.nbytes for g in batch.groups for v in g.feeds.values())

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE


def ScoreBatches(model: ModelRef, max_batch_size: int,
                 share_across_processes: bool = False) -> RunInference:
  """InstanceBatch -> ScoredBatch, batches already formed by the reader."""
  handler = SavedModelHandler(model, max_batch_size, share_across_processes)
  return RunInference(handler.with_no_batching())
