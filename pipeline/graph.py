"""The pipeline graph: named transforms, composed in one place."""
import apache_beam as beam

from tf_batch_predict.pipeline.config import JobConfig
from tf_batch_predict.pipeline.parallelism import decoding_helper, parse_threads, work_units
from tf_batch_predict.transforms.read.coalesce import CoalesceChunks
from tf_batch_predict.transforms.read.decode import InstanceDecoder
from tf_batch_predict.transforms.read.decode_step import DecodeInstances
from tf_batch_predict.transforms.write.format import FormatRecords
from tf_batch_predict.transforms.read.formats import input_formats
from tf_batch_predict.transforms.read.units import ReadInstances
from tf_batch_predict.transforms.records import InstanceBatch, RawChunk, ScoredBatch
import tf_batch_predict.transforms.record_coder  # noqa: F401  (registers the records' coder)
import tf_batch_predict.transforms.state_sampler  # noqa: F401  (bundles end sooner)
from tf_batch_predict.transforms.model.score import ScoreBatches
from tf_batch_predict.transforms.write.units import (UNITS_FOLDER, CollectUnits, FormatUnits,
                                                     UnitRecords, WriteUnits)


def build(p: beam.Pipeline, config: JobConfig, collect: bool = False) -> None:
  """The job's pipeline, writing into config.output's units folder; with
  `collect` (a template, run without this command), also its last step:
  the units into the result's shards."""
  opts, signature = config.options, config.model.signature
  formats = input_formats(signature, opts.key_field, opts.passthrough_fields,
                          opts.max_instance_bytes, parse_threads=parse_threads(config))
  decoder = InstanceDecoder(signature, formats, opts.key_field, opts.passthrough_fields)
  units = work_units(config)
  committed = (
      p
      | 'ReadInstances' >> ReadInstances(units, formats)
      | 'MergeSmallChunks' >> beam.ParDo(CoalesceChunks(opts.min_batch_size))
          .with_output_types(RawChunk)
      | 'Decode' >> beam.ParDo(DecodeInstances(decoder, decoding_helper(config)))
          .with_output_types(InstanceBatch)
      | 'Score' >> ScoreBatches(config.model, opts.max_batch_size, opts.share_model)
          .with_output_types(ScoredBatch)
      | 'Format' >> beam.ParDo(FormatUnits(FormatRecords(
          config.layout, formats, opts.early_stop_after))).with_output_types(UnitRecords)
      | 'Write' >> beam.ParDo(WriteUnits(f'{config.output}/{UNITS_FOLDER}', config.layout)))
  if collect:
    _ = committed | 'Collect' >> CollectUnits(config.output, units, config.layout)
