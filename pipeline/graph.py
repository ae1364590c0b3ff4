"""The pipeline graph: named transforms, composed in one place."""
import apache_beam as beam

from pipeline.config import JobConfig
from transforms.coalesce import CoalesceChunks
from transforms.decode import DecodeInstances, InstanceDecoder
from transforms.format import ERRORS_TAG, FormatRecords
from transforms.inputs import ReadInstances, input_formats
from transforms.records import InstanceBatch, RawChunk, ScoredBatch
from transforms.score import ScoreBatches
from transforms.write import WriteJsonlShards, write_predictions


def build(p: beam.Pipeline, config: JobConfig) -> None:
  opts, signature = config.options, config.model.signature
  formats = input_formats(signature, opts.key_field, opts.passthrough_fields,
                          opts.max_instance_bytes)
  decoder = InstanceDecoder(signature, formats, opts.key_field, opts.passthrough_fields)
  records = (
      p
      | 'ReadInstances' >> ReadInstances(config.files_by_format, formats,
                                         config.unreadable_files)
      | 'MergeSmallChunks' >> beam.ParDo(CoalesceChunks(opts.min_batch_size))
          .with_output_types(RawChunk)
      | 'Decode' >> beam.ParDo(DecodeInstances(decoder)).with_output_types(InstanceBatch)
      | 'Score' >> ScoreBatches(config.model, opts.max_batch_size, opts.share_model)
          .with_output_types(ScoredBatch)
      | 'Format' >> beam.ParDo(FormatRecords(config.layout, formats)).with_outputs(
          ERRORS_TAG, main='predictions'))
  _ = records.predictions | 'WritePredictions' >> write_predictions(
      f'{config.output}/predictions', config.layout)
  _ = records[ERRORS_TAG] | 'WriteErrors' >> WriteJsonlShards(f'{config.output}/errors')
