"""How the work spreads over an engine's workers: work units (byte ranges)
and parser threads."""
import multiprocessing
import re
from typing import Optional

from apache_beam.io.filesystem import CompressionTypes

from tf_batch_predict.pipeline.config import JobConfig
from tf_batch_predict.pipeline.options import LOCAL_RUNNER
from tf_batch_predict.transforms.read import units
from tf_batch_predict.transforms.read.formats import SPLITTABLE_FORMATS
from tf_batch_predict.transforms.read.input_json import REQUEST_FILE_INSTANCES, STREAM_MIN_BYTES
from tf_batch_predict.transforms.read.lines import DESIRED_RANGE_SIZE
from tf_batch_predict.transforms.records import JSON

# Beam's local runner with several workers (--direct_num_workers), Flink and
# Spark deal the byte ranges of the input files out to their workers once, before
# any is read, and never moves work between them: a worker with a bigger
# share finishes last while the others wait. With the readers' default of
# 64 MiB ranges, a file of 80.6 MiB is a range of 64 MiB and one of 16.6 MiB:
# one of two workers read 79% of it. Ranges are therefore made small enough for
# each worker to get at least this many (ranges of one size but each file's
# last; one range more than another worker is then at most a quarter of a
# worker's work)...
RANGES_PER_WORKER = 4
# ...but not smaller than this (every range starts a new file read, and ends
# with a partial chunk of lines), nor larger than the readers' default range.
MIN_RANGE_BYTES = 4 << 20
MAX_RANGE_BYTES = 64 << 20


def engine_workers(opts) -> int:
  """How many workers read at once: Beam's local runner's processes, Flink's
  --parallelism, the threads of Spark's local[N]; 1 where the launcher
  cannot know (a Spark cluster, Dataflow), which keeps the readers' default
  ranges."""
  from apache_beam.options.pipeline_options import PipelineOptions
  if opts.runner == LOCAL_RUNNER:
    return local_workers(opts.beam_args)
  beam_opts = PipelineOptions(list(opts.beam_args)).get_all_options()
  if opts.runner == 'FlinkRunner':
    return max(beam_opts.get('parallelism') or 1, 1)
  local = re.fullmatch(r'local\[(\d+|\*)\]', beam_opts.get('spark_master_url') or '')
  if opts.runner == 'SparkRunner' and local:
    return multiprocessing.cpu_count() if local[1] == '*' else int(local[1])
  return 1


def range_bytes(config: JobConfig) -> Optional[int]:
  """Bytes per byte range of the text files (JSON Lines, CSV) for this job,
  or None for the readers' default: where one worker reads (every byte range
  goes to some worker once, and stays there)."""
  workers = engine_workers(config.options)
  if workers < 2:
    return None
  splittable = sum(
      m.size_in_bytes or 0 for kind in SPLITTABLE_FORMATS
      for m in config.files_by_format.get(kind, ())
      if CompressionTypes.detect_compression_type(m.path) == CompressionTypes.UNCOMPRESSED)
  if not splittable:
    return None
  share = splittable // (RANGES_PER_WORKER * workers)
  return max(MIN_RANGE_BYTES, min(MAX_RANGE_BYTES, share))


def parse_threads(config: JobConfig) -> Optional[int]:
  """Threads each worker's parser may use: 1 where the engine runs several
  workers (each then has about a core: its parser's threads would only
  compete with the other workers), else None (all the machine's cores, for
  the one process)."""
  return 1 if engine_workers(config.options) > 1 else None


def decoding_helper(config: JobConfig, in_launcher: bool = False) -> bool:
  """Whether the worker decodes lines (JSON Lines, CSV, the instances of a
  streamed request file) with a helper process beside it
  (transforms/read/decoder_process.py): where it is the only worker of
  Beam's local runner. Elsewhere each core has a worker of
  its own (Flink, Spark, several local workers; Dataflow's harness runs one
  per core). `in_launcher`: and that worker runs in the launcher's process
  (not a multi_processing worker)."""
  from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
  opts = config.options
  streamed_max = REQUEST_FILE_INSTANCES * opts.max_instance_bytes  # larger: not read
  if not (opts.runner == LOCAL_RUNNER and local_workers(opts.beam_args) == 1
          and (any(config.files_by_format.get(kind) for kind in SPLITTABLE_FORMATS)
               or any(STREAM_MIN_BYTES <= (m.size_in_bytes or 0) <= streamed_max
                      for m in config.files_by_format.get(JSON, ())))):
    return False
  mode = PipelineOptions(list(opts.beam_args)).view_as(DirectOptions).direct_running_mode
  return not in_launcher or mode != 'multi_processing'


def workers_in_launcher(config: JobConfig) -> bool:
  """Whether the job's workers run in the launcher's process (Beam's local
  runner in memory or in threads), loading the model there themselves."""
  from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
  opts = config.options
  mode = PipelineOptions(list(opts.beam_args)).view_as(DirectOptions).direct_running_mode
  return opts.runner == LOCAL_RUNNER and mode != 'multi_processing' and not opts.share_model


def local_workers(beam_args) -> int:
  """How many workers Beam's local runner runs the job with (1 unless
  --direct_num_workers says otherwise; 0 means one per core, as in Beam)."""
  from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
  workers = PipelineOptions(list(beam_args)).view_as(DirectOptions).direct_num_workers
  if workers == 0:
    return multiprocessing.cpu_count()
  return workers or 1


def work_units(config: JobConfig) -> list:
  """The job's work units (transforms/read/units.py): text files in ranges
  of `range_bytes`, or the readers' default where one worker reads; those
  the config names where it names them (a resumed run's)."""
  if config.units is not None:
    return config.units
  size = range_bytes(config) or DESIRED_RANGE_SIZE
  return units.plan(config.files_by_format, {kind: size for kind in SPLITTABLE_FORMATS},
                    config.unreadable_files, group_bytes=size)
