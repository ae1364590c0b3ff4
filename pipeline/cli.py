"""batch-predict: score instances with a SavedModel on Apache Beam.

Configuration mistakes end with one line on stderr and exit status 2, before
any pipeline starts; instance errors are counted and written, exit status 0.
"""
import logging
import os
import sys
import time

EXIT_CONFIG_ERROR = 2


def _drop_beam_resource_warning(record) -> bool:
  # Beam's inference module imports `resource` and `torch` in one try block,
  # so without torch it warns at every model load that `resource` is missing.
  return not record.getMessage().startswith('Resource module is not available')


def _configure_logging():
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  for handler in logging.getLogger().handlers:
    handler.addFilter(_drop_beam_resource_warning)
  for name in ('pipeline', 'transforms'):
    logging.getLogger(name).setLevel(logging.INFO)
  # TensorFlow's C++ start-up chatter is not for batch-job users.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def clear_previous_outputs(output_dir: str) -> None:
  """A re-run replaces the previous run's files, whatever its shard count.
  Also the check that the output location can be listed at all."""
  from apache_beam.io.filesystem import BeamIOError
  from apache_beam.io.filesystems import FileSystems
  from pipeline.options import ConfigError
  try:
    _delete_outputs(FileSystems, output_dir)
  except BeamIOError as e:
    details = list((e.exception_details or {}).values())
    reason = str(details[0] if details else e).split(': ', 1)[-1][:200]
    raise ConfigError(f'--output: cannot use {output_dir}: {reason}') from None


def _delete_outputs(FileSystems, output_dir: str) -> None:  # pylint: disable=invalid-name
  patterns = [f'{output_dir}/{name}' for name in (
      'predictions-*-of-*.jsonl', 'predictions-*-of-*.parquet',
      'predictions-*-of-*.tfrecord', 'errors-*-of-*.jsonl', 'summary.json')]
  stale = [m.path for result in FileSystems.match(patterns)
           for m in result.metadata_list]
  # Temporary folders of Beam's file sinks, left behind by a failed run.
  stale += [m.path.rstrip('/') for m in FileSystems.match(
      [f'{output_dir}/beam-temp-*'])[0].metadata_list]
  if stale:
    FileSystems.delete(sorted(set(stale)))


def run(config):
  """Runs the job to completion and returns the summary dict; for a
  Dataflow template or dry run, which start no job, returns a message."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  TestOptions)

  from pipeline import graph, summary

  from apache_beam.options.pipeline_options import SetupOptions
  flags = list(config.options.beam_args)
  plugins = PipelineOptions(flags).view_as(SetupOptions).beam_plugins or []
  # Imported by each SDK worker at start: see transforms/storage.py.
  options = PipelineOptions(flags, runner=config.options.runner,
                            beam_plugins=plugins + ['transforms.storage'])
  started = time.time()
  p = beam.Pipeline(options=options)
  graph.build(p, config)
  result = p.run()
  cloud = options.view_as(GoogleCloudOptions)
  if cloud.template_location:
    return f'Dataflow template written to {cloud.template_location}; no job was started.'
  if options.view_as(TestOptions).dry_run:
    return 'Dry run: the pipeline was translated for Dataflow and not submitted.'
  result.wait_until_finish()
  wall_time = time.time() - started
  job_summary = summary.build(config, summary.counters(result),
                              config.options.runner, wall_time)
  summary.write(job_summary, config.output)
  return job_summary


def main(argv=None) -> int:
  _configure_logging()
  from transforms import storage
  storage.use_anonymous_credentials_for_emulator()
  from pipeline import config as job_config
  from pipeline.options import ConfigError, parse_args
  from pipeline import summary

  argv = sys.argv[1:] if argv is None else argv
  try:
    options = parse_args(argv)
    if storage.is_local(options.output):
      if os.path.exists(options.output) and not os.path.isdir(options.output):
        raise ConfigError(f'--output: {options.output} exists and is not a directory')
      os.makedirs(options.output, exist_ok=True)
    config = job_config.resolve(options)
    clear_previous_outputs(config.output)
  except (ConfigError, OSError) as e:
    print(f'batch-predict: error: {e}', file=sys.stderr)
    return EXIT_CONFIG_ERROR
  job_summary = run(config)
  print(job_summary if isinstance(job_summary, str) else summary.table(job_summary))
  return 0
