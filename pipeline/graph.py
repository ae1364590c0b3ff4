"""The pipeline graph: named transforms, composed in one place."""
import apache_beam as beam

from pipeline.config import JobConfig
from transforms.coalesce import CoalesceChunks
from transforms.decode import DecodeInstances, InstanceDecoder
from transforms.format import ERRORS_TAG, FormatRecords
from transforms.read import ReadInstances
from transforms.records import InstanceBatch, RawChunk, ScoredBatch
from transforms.score import ScoreBatches
from transforms.write import WriteJsonlShards, write_predictions


def build(p: beam.Pipeline, config: JobConfig) -> None:
  opts, signature = config.options, config.model.signature
  decoder = InstanceDecoder(signature, opts.key_field, opts.passthrough_fields)
  parquet_columns = None if signature.takes_examples else (
      [s.name for s in signature.inputs] + [opts.key_field or ''] +
      list(opts.passthrough_fields))
  records = (
      p
      | 'ReadInstances' >> ReadInstances(config.files_by_format, signature.name,
                                         parquet_columns)
      | 'MergeSmallChunks' >> beam.ParDo(CoalesceChunks(opts.min_batch_size))
          .with_output_types(RawChunk)
      | 'Decode' >> beam.ParDo(DecodeInstances(decoder)).with_output_types(InstanceBatch)
      | 'Score' >> ScoreBatches(config.model, opts.max_batch_size, opts.share_model)
          .with_output_types(ScoredBatch)
      | 'Format' >> beam.ParDo(FormatRecords(config.layout)).with_outputs(
          ERRORS_TAG, main='predictions'))
  _ = records.predictions | 'WritePredictions' >> write_predictions(
      f'{config.output}/predictions', config.layout)
  _ = records[ERRORS_TAG] | 'WriteErrors' >> WriteJsonlShards(f'{config.output}/errors')
