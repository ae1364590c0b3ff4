"""The Beam coder of the job's records (transforms/records.py), registered
on import: the modules that build pipelines of them import this one.

Apart from the records themselves so that the decoding helper process
(transforms/read/decoder_process.py), which unpickles them, imports no Beam:
that import is about 1 s of the helper's start.
"""
import pickle

import apache_beam as beam

# Workers unpickle records through this coder, so importing the storage module
# here applies its emulator setting in every worker process, whichever way it
# was started.
import tf_batch_predict.transforms.storage  # noqa: F401  pylint: disable=unused-import
from tf_batch_predict.transforms.records import (InstanceBatch, RawChunk, ScoredBatch,
                                                 approximate_size)


class RecordCoder(beam.coders.Coder):
  """Pickles the job's records, but estimates their size without pickling.

  Beam samples element sizes for its metrics with the coder; the default
  pickle coder would serialize most multi-megabyte chunks just to measure
  them.
  """
  def encode(self, value):
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded):
    return pickle.loads(encoded)

  def estimate_size(self, value):
    return approximate_size(value)

  def is_deterministic(self):
    return False


for _record_type in (RawChunk, InstanceBatch, ScoredBatch):
  beam.coders.registry.register_coder(_record_type, RecordCoder)
