"""The pipeline's decoding step: RawChunk -> InstanceBatch, through the
InstanceDecoder of decode.py, here or in the helper process beside this
worker (decoder_process.py)."""
import time
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from tf_batch_predict.transforms import progress
from tf_batch_predict.transforms.read import decoder_process
from tf_batch_predict.transforms.read.decode import InstanceDecoder
from tf_batch_predict.transforms.records import InstanceBatch, METRICS_NAMESPACE, RawChunk


class DecodeInstances(beam.DoFn):
  """RawChunk -> InstanceBatch; bad instances ride along as errors.

  With `helper_process` (where the worker is alone on the machine), a
  helper process decodes chunks of lines beside this thread
  (decoder_process.py); their batches are given out as they finish, so
  their order may differ from the chunks' (nothing downstream needs it)."""
  def __init__(self, decoder: InstanceDecoder, helper_process: bool = False):
    self._decoder = decoder
    self._helper_process = helper_process
    self._helper = None
    self._read = Metrics.counter(METRICS_NAMESPACE, 'instances_read')
    self._blank = Metrics.counter(METRICS_NAMESPACE, 'blank_lines')
    # Time spent decoding, per chunk (summed over workers: summary.json
    # `stages`, pipeline/summary.py).
    self._time = Metrics.counter(METRICS_NAMESPACE, 'time_decode_us')

  def setup(self):
    if self._helper_process:
      self._helper = decoder_process.DecoderProcess.start(self._decoder)

  def start_bundle(self):
    if self._helper is not None:
      for _ in self._helper.drain():  # a failed bundle's: given out again by its retry
        pass

  def process(self, chunk: RawChunk):
    if not (len(chunk) or chunk.file_errors or chunk.unit_ends):  # a unit's end is written
      self._count(chunk)
      return
    if self._helper is None or not self._helper.submit(chunk):
      yield self._decode(chunk)
    if self._helper is not None:
      for done in self._helper.ready():
        yield self._finished(*done)

  def finish_bundle(self):
    if self._helper is not None:
      for done in self._helper.drain():
        # The job reads bounded files in the global window.
        yield WindowedValue(self._finished(*done), GlobalWindow().max_timestamp(),
                            [GlobalWindow()])
    progress.flush()  # a local worker process's figures, for the launcher

  def teardown(self):
    if self._helper is not None:
      self._helper.close()
      self._helper = None

  def _count(self, chunk: RawChunk) -> None:
    self._read.inc(len(chunk))
    self._blank.inc(chunk.blank_lines)
    # The input bytes are counted with the instances as they are decoded,
    # not where they are read: the runner (and the helper) may read far
    # ahead of decoding.
    progress.add_chunk(len(chunk), chunk.stored_bytes, chunk.skipped_bytes,
                       len(chunk.file_errors))

  def _decode(self, chunk: RawChunk) -> InstanceBatch:
    started = time.perf_counter()
    decoded = self._decoder.decode(chunk)
    self._time.inc(int((time.perf_counter() - started) * 1e6))
    self._count(chunk)
    return decoded

  def _finished(self, chunk: RawChunk, batch: Optional[InstanceBatch],
                seconds: float) -> InstanceBatch:
    """A chunk the helper had: its batch, or decoded here where it has none."""
    if batch is None:
      return self._decode(chunk)
    self._time.inc(int(seconds * 1e6))
    self._count(chunk)
    return batch
