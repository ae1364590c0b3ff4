"""Merge small chunks (small files, range tails) into batches of at least
`min_batch_size` instances, so the model is not called with tiny batches
when the input is many small files.

Beam's `BatchElements` batches elements, not lines, and adapts sizes by
timing; here the unit is the line and sizes are the user's bounds.
"""
import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue


class CoalesceChunks(beam.DoFn):
  """Chunks of at least `min_lines` pass through; smaller ones are merged,
  within a bundle, until they reach it."""
  def __init__(self, min_lines: int):
    self._min_lines = min_lines
    self._pending = None

  def start_bundle(self):
    self._pending = None

  def process(self, chunk):
    if len(chunk) >= self._min_lines:
      yield chunk
      return
    if self._pending is None:
      self._pending = chunk
    elif self._pending.can_merge(chunk):
      self._pending = self._pending.merge(chunk)
    else:  # another input kind or CSV header: score what we have
      yield self._pending
      self._pending = chunk
    if len(self._pending) >= self._min_lines:
      yield self._pending
      self._pending = None

  def finish_bundle(self):
    if self._pending is not None:
      # The job reads bounded files in the global window.
      yield WindowedValue(self._pending, GlobalWindow().max_timestamp(), [GlobalWindow()])
      self._pending = None
