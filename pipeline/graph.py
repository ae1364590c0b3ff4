"""The pipeline graph: named transforms, composed in one place."""
import apache_beam as beam

from tf_batch_predict.pipeline.config import JobConfig
from tf_batch_predict.pipeline.parallelism import parse_threads, work_units
from tf_batch_predict.transforms.read.coalesce import CoalesceChunks
from tf_batch_predict.transforms.read.decode import DecodeInstances, InstanceDecoder
from tf_batch_predict.transforms.write.format import ERRORS_TAG, FormatRecords
from tf_batch_predict.transforms.read.formats import input_formats
from tf_batch_predict.transforms.read.units import ReadInstances
from tf_batch_predict.transforms.records import InstanceBatch, RawChunk, ScoredBatch
from tf_batch_predict.transforms.model.score import ScoreBatches
from tf_batch_predict.transforms.write.shards import WriteJsonlShards, write_predictions


def build(p: beam.Pipeline, config: JobConfig) -> None:
  opts, signature = config.options, config.model.signature
  formats = input_formats(signature, opts.key_field, opts.passthrough_fields,
                          opts.max_instance_bytes, parse_threads=parse_threads(config))
  decoder = InstanceDecoder(signature, formats, opts.key_field, opts.passthrough_fields)
  records = (
      p
      | 'ReadInstances' >> ReadInstances(work_units(config), formats)
      | 'MergeSmallChunks' >> beam.ParDo(CoalesceChunks(opts.min_batch_size))
          .with_output_types(RawChunk)
      | 'Decode' >> beam.ParDo(DecodeInstances(decoder)).with_output_types(InstanceBatch)
      | 'Score' >> ScoreBatches(config.model, opts.max_batch_size, opts.share_model)
          .with_output_types(ScoredBatch)
      | 'Format' >> beam.ParDo(FormatRecords(config.layout, formats, opts.early_stop_after))
          .with_outputs(ERRORS_TAG, main='predictions'))
  _ = records.predictions | 'WritePredictions' >> write_predictions(
      f'{config.output}/predictions', config.layout)
  _ = records[ERRORS_TAG] | 'WriteErrors' >> WriteJsonlShards(f'{config.output}/errors')
