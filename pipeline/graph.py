"""The pipeline graph: named transforms, composed in one place."""
import apache_beam as beam

from pipeline.config import JobConfig
from transforms.coalesce import CoalesceChunks
from transforms.decode import DecodeInstances, InstanceDecoder
from transforms.format import ERRORS_TAG, FormatRecords, OutputLayout
from transforms.read import ReadJsonlChunks
from transforms.records import InstanceBatch, RawChunk, ScoredBatch
from transforms.score import ScoreBatches
from transforms.write import WriteJsonlShards


def build(p: beam.Pipeline, config: JobConfig) -> None:
  opts = config.options
  decoder = InstanceDecoder(config.model.signature, opts.key_field,
                            opts.passthrough_fields)
  layout = OutputLayout(opts.key_field, opts.passthrough_fields,
                        config.output_names, config.input_bases)
  records = (
      p
      | 'InputFiles' >> beam.Create(config.input_files)
      | 'ReadChunks' >> ReadJsonlChunks().with_output_types(RawChunk)
      | 'MergeSmallChunks' >> beam.ParDo(CoalesceChunks(opts.min_batch_size))
          .with_output_types(RawChunk)
      | 'Decode' >> beam.ParDo(DecodeInstances(decoder)).with_output_types(InstanceBatch)
      | 'Score' >> ScoreBatches(config.model, opts.max_batch_size)
          .with_output_types(ScoredBatch)
      | 'Format' >> beam.ParDo(FormatRecords(layout)).with_outputs(
          ERRORS_TAG, main='predictions'))
  _ = records.predictions | 'WritePredictions' >> WriteJsonlShards(
      f'{config.output}/predictions')
  _ = records[ERRORS_TAG] | 'WriteErrors' >> WriteJsonlShards(
      f'{config.output}/errors')
