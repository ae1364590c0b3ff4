"""batch-predict: score instances with a SavedModel on Apache Beam.

Exit status (one line on stderr for every status but 0, never a traceback):
  0  the run completed and at most --max_error_fraction of the instances failed
  1  the pipeline failed: the previous result in --output is left as it was
  2  a configuration mistake (or another run uses --output): nothing ran
  3  completed, but too many errors (or no instance at all); outputs written
  4  completed, but some input files could not be read to their end
  130  interrupted (Ctrl-C), 143 terminated (SIGTERM): the previous result in
       --output is left as it was
The pipeline writes into a staging folder of the output directory; the
result replaces the previous one only once complete (pipeline/outputs.py).
"""
import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import time
import traceback

from tf_batch_predict.pipeline.command import (
    EXIT_CONFIG_ERROR, EXIT_INPUT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPELINE_FAILED,
    EXIT_TERMINATED, EXIT_TOO_MANY_ERRORS, PipelineFailed, collect_young_objects,
    configure_logging, debug, error, fails_as, freeze_imports, hold_collector, last_line,
    take_log_level)
from tf_batch_predict.pipeline import workers

_LOG = logging.getLogger(__name__)


def exit_status(summary: dict, max_error_fraction: float) -> tuple:
  """(status, reason): whether the result is usable."""
  read = summary['instances_read']
  # Instances that failed; a `file` error is a fault of a file, not an instance.
  errors = summary['errors'] - summary['errors_by_category'].get('file', 0)
  if summary['files_incomplete']:
    return EXIT_INPUT_INCOMPLETE, (f'{summary["files_incomplete"]} input file(s) could not '
                                   'be read completely; see the file errors')
  if read == 0:
    return EXIT_TOO_MANY_ERRORS, 'no instance was read: the input files hold none'
  if summary['predictions'] == 0:
    return EXIT_TOO_MANY_ERRORS, f'no instance could be predicted: all {read} failed'
  if errors > max_error_fraction * read:
    return EXIT_TOO_MANY_ERRORS, (f'{errors} of {read} instances failed '
                                  f'({errors / read:.1%}), more than '
                                  f'--max_error_fraction={max_error_fraction:g}')
  return EXIT_OK, f'completed; {errors} of {read} instances failed'


def _pipeline_options(config):
  from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
  flags = list(config.options.beam_args)
  plugins = PipelineOptions(flags).view_as(SetupOptions).beam_plugins or []
  # Imported by each SDK worker at start: see pipeline/quiet.py (first, before
  # anything imports TensorFlow), transforms/storage.py and state_sampler.py.
  return PipelineOptions(flags, runner=config.options.runner,
                         beam_plugins=['tf_batch_predict.pipeline.quiet', *plugins,
                                       'tf_batch_predict.transforms.storage',
                                       'tf_batch_predict.transforms.state_sampler'],
                         **_op_library_requirements(config, flags))


def _op_library_requirements(config, flags) -> dict:
  """Beam options that make remote workers install the op libraries the
  model needs (TF Text), where they install this package from --setup_file:
  pip installs setup.py's requirements, not its extras. Workers install the
  pinned versions from PyPI at start (`--requirements_cache=skip`: Beam
  would otherwise download source packages here, which TF Text has none of).
  A container image (--sdk_container_image) or the user's own
  --requirements_file is left as it is."""
  from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, WorkerOptions
  from tf_batch_predict.transforms.model import op_libraries
  beam_options = PipelineOptions(flags)
  setup = beam_options.view_as(SetupOptions)
  modules = config.model.signature.op_libraries
  if (not modules or not setup.setup_file or setup.requirements_file
      or beam_options.view_as(WorkerOptions).sdk_container_image):
    return {}
  import atexit
  import tempfile
  with tempfile.NamedTemporaryFile('w', prefix='batch-predict-', suffix='-requirements.txt',
                                   delete=False) as f:
    f.write(''.join(f'{line}\n' for line in op_libraries.requirements(modules)))
  atexit.register(lambda: os.path.exists(f.name) and os.remove(f.name))  # staged by then
  return {'requirements_file': f.name, 'requirements_cache': 'skip'}


def starts_no_job(options) -> str:
  """For a Dataflow template or dry run, what to say instead of running."""
  from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  TestOptions)
  beam_options = PipelineOptions(list(options.beam_args))
  location = beam_options.view_as(GoogleCloudOptions).template_location
  if location:
    return f'Dataflow template written to {location}; no job was started.'
  if beam_options.view_as(TestOptions).dry_run:
    return 'Dry run: the pipeline was translated for Dataflow and not submitted.'
  return ''


def build_template(config, message: str) -> str:
  """A template runs later, without this command, so it writes straight
  into the output directory: no staging, lock or summary."""
  import apache_beam as beam
  from tf_batch_predict.pipeline import graph
  p = beam.Pipeline(options=_pipeline_options(config))
  graph.build(p, config, collect=True)
  p.run()
  return message


def _workers_stderr_filtered(beam_args):
  """Local worker processes (multi_processing) write TensorFlow's start-up
  lines, and the traceback of a failing bundle, straight to the stderr they
  inherit: it is filtered for the run (pipeline/quiet.py), unless debugging."""
  from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
  from tf_batch_predict.pipeline import quiet
  mode = PipelineOptions(list(beam_args)).view_as(DirectOptions).direct_running_mode
  if mode != 'multi_processing' or debug():
    return contextlib.nullcontext()
  # A failing bundle's traceback, printed by the worker, is reported in one line.
  return quiet.stderr_filtered_by_process(drop_tracebacks=True)


def _worker_deaths_reported(beam_args, stderr_filter):
  """A local worker process that dies (multi_processing) fails the run in
  one line that says how, at once (pipeline/workers.py)."""
  from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
  mode = PipelineOptions(list(beam_args)).view_as(DirectOptions).direct_running_mode
  if mode != 'multi_processing':
    return contextlib.nullcontext()
  return workers.deaths_reported(stderr_filter, show_tracebacks=debug())


def run(config, staging, all_units) -> dict:
  """Runs the pipeline on config.units into the staging folder, showing
  its progress, and returns the summary of the units `all_units` committed
  there; raises PipelineFailed."""
  import dataclasses

  import apache_beam as beam
  from apache_beam.runners.runner import PipelineState

  from tf_batch_predict.pipeline import graph, progress, resume, summary
  staged = dataclasses.replace(
      config, options=dataclasses.replace(config.options, output=staging.path))
  watched = progress.watched_here(config.options)
  interval = config.options.progress_interval if watched else 0
  total_bytes = sum(m.size_in_bytes or 0 for files in config.files_by_format.values()
                    for m in files)
  started = time.time()
  try:
    # The reporter first: on a terminal it writes to stderr as it is before
    # the workers' filter.
    # Also with the progress output off, it keeps the throughput series of
    # a local run for report.html.
    with progress.Reporter(interval, total_bytes, started=_STARTED,
                           series=watched) as reporter:
      with _workers_stderr_filtered(config.options.beam_args) as stderr_filter, \
          _worker_deaths_reported(config.options.beam_args, stderr_filter):
        p = beam.Pipeline(options=_pipeline_options(config))
        graph.build(p, staged)
        result = p.run()
        state = result.wait_until_finish()
  except workers.WorkerDied as e:
    raise PipelineFailed(str(e)) from (e.__cause__ or e)
  except Exception as e:  # pylint: disable=broad-except
    interrupt = _interrupt_in(e)
    if interrupt is not None:
      raise interrupt from e
    raise PipelineFailed(workers.engine_failure(last_line(e))) from e
  ended = time.time()
  if state not in (None, PipelineState.DONE):
    raise PipelineFailed(f'it ended in state {state}')
  counts = summary.counters(result)
  # The counts of the records are those of the units committed (each once,
  # whatever tasks an engine ran again; its metrics may count those twice).
  from tf_batch_predict.transforms.write import units
  with fails_as(f'collecting the outputs in {staging.path} failed'):
    counts.update(units.collect(staging.path, all_units, config.layout,
                                resume.result_settings(config)))
  return summary.build(config, counts, config.options.runner,
                       ended - started, started=min(_STARTED, started), ended=ended,
                       series=reporter.series())


def run_and_promote(config, run_id: str) -> tuple:
  """(exit status, summary): the pipeline's result replaces the previous
  one in the output directory only once complete. With --resume, the run
  stopped in the output directory is continued; with --incremental, the
  records of unchanged input files are kept from its result (either raises
  ConfigError where that does not fit this command)."""
  from tf_batch_predict.pipeline import outputs, parallelism, report, resume, summary
  from tf_batch_predict.pipeline.options import ConfigError
  stopped = resume.find_stopped(config.output, config) if config.options.resume else None
  changes = None  # --incremental's
  staging = outputs.Staging(config.output, stopped.run_id if stopped else run_id)
  with fails_as(f'removing what killed runs left in {config.output} failed'):
    staging.clear_leftovers()
  if stopped:
    with fails_as(f'clearing {staging.path} failed'):
      staging.remove_shards()
    units = stopped.units
    kept = [stopped.committed[u.id] for u in units if u.id in stopped.committed]
    _LOG.info('Resuming the run stopped in %s: %d of %d work units were committed '
              '(%d instances); scoring the other %d', staging.path, len(kept), len(units),
              sum(k['instances'] for k in kept), len(units) - len(kept))
  else:
    if config.options.resume:
      _LOG.info('--resume: no stopped run in %s to continue; starting from the first '
                'instance', config.output)
    units, kept = parallelism.work_units(config), []
    if config.options.incremental:
      try:
        changes = resume.incremental(config, staging.path)
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise PipelineFailed(f'copying the records of the unchanged files in '
                             f'{config.output} failed ({last_line(e)})') from e
      if changes is None:
        _LOG.info('--incremental: %s holds no complete result to add to; scoring every '
                  'file', config.output)
      else:
        units, kept = changes.units, list(changes.kept.values())
        _LOG.info('--incremental: %d input files unchanged (%d instances kept); %d added, '
                  '%d changed, %d removed', len(changes.files['kept']),
                  sum(k['instances'] for k in kept), len(changes.files['added']),
                  len(changes.files['replaced']), len(changes.files['removed']))
    with fails_as(f'writing the run\'s plan to {staging.path} failed'):
      resume.write_plan(staging.path, config, units)
  done = {k['unit'] for k in kept}
  left = [u for u in units if u.id not in done]
  try:
    job_summary = run(dataclasses.replace(config, units=left), staging, units)
  except BaseException as e:
    # Kept for --resume where it holds committed units (an early stop's
    # would only stop again).
    e.kept_for_resume = staging.holds_committed_units() and not early_stop(e)
    if not e.kept_for_resume:
      staging.discard()
    raise
  job_summary['resumed'] = resumed(stopped.run_id, kept, units) if stopped else None
  job_summary['incremental'] = (
      {**resumed(None, kept, units), **_listed(changes.files)}
      if changes else None)
  if kept:
    done = job_summary['instances_read'] - sum(k['instances'] for k in kept)
    seconds = job_summary['pipeline_wall_time_s']
    job_summary['instances_per_s'] = round(done / seconds, 1) if seconds > 0 else None
  status, reason = exit_status(job_summary, config.options.max_error_fraction)
  job_summary.update(exit_status=status, exit_reason=reason)
  # Too many errors never replace a good result (a misspelt option would
  # otherwise leave yesterday's predictions replaced by today's errors):
  # the run's outputs go next to it, to OUTPUT/failed-run.
  previous = outputs.good_result(config.output) if status == EXIT_TOO_MANY_ERRORS else None
  if previous:
    job_summary['set_aside_in'] = f'{config.output}/{outputs.FAILED_RUN_NAME}'
  with fails_as('moving the outputs into place failed',
                 f'; without {config.output}/summary.json the directory holds no '
                 'complete result: run again'):
    summary.write(job_summary, staging.path)
    report.write_quietly(job_summary, staging.path)  # never fails the run
    if previous:
      staging.set_aside()
    else:
      staging.promote()
  return status, job_summary


def resumed(run_id, kept: list, units: list) -> dict:
  """summary.json `resumed` (or `incremental`): the units kept."""
  from tf_batch_predict.transforms.write.units import counts_of
  counts = counts_of(kept)
  return {**({'run_id': run_id} if run_id else {}), 'units': len(kept), 'of_units': len(units),
          'instances': counts['instances_read'], 'predictions': counts['predictions'],
          'errors': sum(counts[k] for k in counts if k.startswith('errors_'))}


def _listed(files: dict, most: int = 100) -> dict:
  """summary.json `incremental`'s files: counts, and the first `most` paths
  of each kind."""
  from tf_batch_predict.transforms.file_patterns import name_text
  listed = {f'files_{kind}': len(paths) for kind, paths in files.items()}
  for kind in ('added', 'replaced', 'removed'):
    listed[kind] = [name_text(p) for p in files[kind][:most]]
  return listed


# Where a stopped run's committed work units are kept (run_and_promote).
RESUME_HINT = '; the work committed is kept: the same command with --resume continues it'

# When the command started: the summary's total wall time counts from here.
_STARTED = time.time()


def main(argv=None) -> int:
  global _STARTED
  _STARTED = time.time()
  whole_process = argv is None  # the command itself, not a caller's function call
  argv = list(sys.argv[1:] if argv is None else argv)
  from tf_batch_predict.pipeline.options import ConfigError
  try:
    level, argv = take_log_level(argv)  # before anything else: it sets what is printed
  except ConfigError as e:
    configure_logging()
    error(e)
    return EXIT_CONFIG_ERROR
  configure_logging(level)
  previous_sigterm = _sigterm_raises()
  try:
    if argv[:1] == ['inspect']:  # batch-predict inspect --model=...: what a model offers
      from tf_batch_predict.pipeline import inspect
      return inspect.main(argv[1:])
    if argv[:1] == ['join']:  # batch-predict join ...: predictions back next to instances
      from tf_batch_predict.pipeline import join
      return join.main(argv[1:])
    if argv[:1] == ['evaluate']:  # batch-predict evaluate ...: metrics against labels
      from tf_batch_predict.pipeline import evaluate
      return evaluate.main(argv[1:])
    if whole_process:
      hold_collector()  # until the model is loaded: collect_young_objects
    if argv[:1] == ['preflight']:  # batch-predict preflight ...: a run's sample, scored here
      from tf_batch_predict.pipeline import preflight
      return preflight.main(argv[1:])
    return _batch_predict(argv)
  except KeyboardInterrupt as e:
    # Ctrl-C or SIGTERM: the lock is released and the staging folder kept or
    # removed by now (finally blocks); what the user wants to read is one
    # line, not where it stopped.
    if debug():
      traceback.print_exc()
    else:
      import threading
      threading.excepthook = lambda _: None  # Beam's threads, stopped by the same signal
    hint = RESUME_HINT if getattr(e, 'kept_for_resume', False) else ''
    if isinstance(e, _Terminated):
      error(f'terminated (SIGTERM); a previous result in --output is left as it was{hint}')
      status = EXIT_TERMINATED
    else:
      error(f'interrupted; a previous result in --output is left as it was{hint}')
      status = EXIT_INTERRUPTED
    if whole_process:
      _exit_now(status)
    return status
  finally:
    if previous_sigterm is not None:
      signal.signal(signal.SIGTERM, previous_sigterm)


def _exit_now(status: int) -> None:
  """Ends an interrupted process without the interpreter's shutdown: Beam's
  local worker threads may still be in native code (TensorFlow, pyarrow),
  and tearing the interpreter down under them can abort the process
  ("terminate called ...", SIGABRT) after the run has cleaned up."""
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(status)


def _interrupt_in(error: BaseException):
  """The Ctrl-C or SIGTERM that made a step fail, or None: the signal raises
  in the main thread, which runs the steps of a local run, and Beam reports
  it as the step's failure (RuntimeError: KeyboardInterrupt [while running
  'Decode'])."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, KeyboardInterrupt):
      return type(error)()
    for kind in (_Terminated, KeyboardInterrupt):
      if str(error).startswith(kind.__name__):
        return kind()
    error = error.__cause__ or error.__context__
  return None


class _Terminated(KeyboardInterrupt):
  """SIGTERM (a scheduler stopping the job, `timeout`, `kill`), raised in the
  main thread as Ctrl-C is, so the run cleans up after itself the same way."""


def _raise_terminated(signum, frame):
  # Unlike Ctrl-C, SIGTERM reaches this process only: its local worker
  # processes (multi_processing, started through a shell) and their stderr
  # filter get Ctrl-C's signal, so that everything stops as it does then
  # (else Beam would wait for the workers forever). A command started with
  # SIGINT ignored (in the background of a script) passed that on to its
  # workers: they get SIGTERM.
  sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  for pid in workers.descendants():
    try:
      os.kill(pid, signal.SIGTERM if sigint_ignored and workers.is_worker(pid)
              else signal.SIGINT)
    except OSError:
      pass
  raise _Terminated()


def _sigterm_raises():
  """SIGTERM raises _Terminated while the command runs, where it would
  otherwise end the process without cleaning up (the default handler);
  returns the handler to restore, or None."""
  import threading
  if threading.current_thread() is not threading.main_thread():
    return None
  if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
    return None  # someone else's (a test runner, an embedding program)
  return signal.signal(signal.SIGTERM, _raise_terminated)


def _batch_predict(argv: list) -> int:
  from tf_batch_predict.pipeline.options import (ConfigError, check_runner,
                                                 fetch_job_server_jar, parse_args)
  try:
    # First: --help and mistakes in the options themselves need no Beam.
    options = parse_args(argv)
  except ConfigError as e:
    error(e)
    return EXIT_CONFIG_ERROR
  from tf_batch_predict.transforms import storage
  storage.use_anonymous_credentials_for_emulator()
  from tf_batch_predict.pipeline import outputs

  created = outputs.missing_folder(options.output)
  try:
    check_runner(options.runner)
    fetch_job_server_jar(options)
    output = outputs.prepare(options.output)
  except ConfigError as e:
    error(e)
    outputs.remove_if_empty(options.output, created)
    return EXIT_CONFIG_ERROR
  lock = outputs.OutputLock(output, outputs.new_run_id(), options.beam_args)
  try:
    return _run(options, lock)
  finally:
    lock.release()
    _release_checked_model()  # where no worker took it (a run that stopped first)
    outputs.remove_if_empty(output, created)  # where the run wrote nothing
    from tf_batch_predict.transforms.read import decoder_process
    decoder_process.stop_early()  # one started for a run that stopped before its pipeline


def check_model(config, keep: bool = False) -> tuple:
  """Proves the signature callable (transforms/model/score.py `check_model`)
  unless --skip_model_check; raises ConfigError. With `keep`, the loaded
  signature is kept for a worker of this process. Returns (config, notes):
  the config with the loader the workers use, and what to log once the run
  goes ahead, as (level, message): a run that stops says one line only."""
  from tf_batch_predict.pipeline.options import ConfigError
  from tf_batch_predict.transforms.model.savedmodel import ModelError
  from tf_batch_predict.transforms.model.score import check_model as load_and_call
  notes = [(logging.WARNING, "Using the graph's shape, as TF Serving does (the SignatureDef "
            f'disagrees with the graph, as in older TF1 exports): {note}')
           for note in config.model.signature.graph_shapes_used]
  fixed = config.model.signature.fixed_batch
  if config.model.signature.per_instance:
    notes.append((logging.INFO, f'Signature {config.model.signature.name} has no batch '
                  'dimension: the model is called once per instance'))
  elif fixed:
    notes.append((logging.INFO, f'Signature {config.model.signature.name} fixes the batch '
                  f'dimension at {fixed}: scored in calls of {fixed} rows, the last of '
                  'each batch padded'))
  if config.options.skip_model_check:
    return config, notes
  try:
    seconds, warning, model = load_and_call(config.model, keep=keep)
  except ModelError as e:
    raise ConfigError(str(e)) from None
  config = dataclasses.replace(config, model=model)  # the loader the workers use
  if warning:
    notes.append((logging.WARNING, f'Model check: {warning}'))
  notes.append((logging.INFO, f'Model check: loaded {config.model.path} and called signature '
                f'{config.model.signature.name} on a sample batch in {seconds:.1f} s'))
  return config, notes


def _release_checked_model() -> None:
  """Closes the model the check kept where no worker took it, so that no
  later run of this process takes it. The module is looked up, not
  imported: without a check it is not loaded, and importing it costs
  TensorFlow's import."""
  score = sys.modules.get('tf_batch_predict.transforms.model.score')
  if score is not None:
    score.release_checked()


def _previous_result(output: str) -> str:
  """What a run that stopped says of --output: that its previous result is
  left as it was, where it holds one."""
  from apache_beam.io.filesystems import FileSystems
  from tf_batch_predict.pipeline import outputs
  try:  # local or gs://
    held = FileSystems.exists(FileSystems.join(output, outputs.SUMMARY_NAME))
  except Exception:  # pylint: disable=broad-except  (unknown: said as where there is one)
    held = True
  return f'the previous result in {output} is left as it was' if held else ''


def _run(options, lock) -> int:
  from tf_batch_predict.pipeline import config as job_config
  from tf_batch_predict.pipeline import summary
  from tf_batch_predict.pipeline.options import ConfigError
  from tf_batch_predict.pipeline.parallelism import decoding_helper, workers_in_launcher
  from tf_batch_predict.transforms.read import decoder_process
  from tf_batch_predict.transforms.read.decode import InstanceDecoder
  try:
    message = starts_no_job(options)
    if not message:
      lock.check_free()  # a second run stops here, before loading anything
    config = job_config.resolve(options)
    freeze_imports()
    if not message and decoding_helper(config, in_launcher=True):
      decoder_process.start_early(InstanceDecoder)  # its imports overlap the model check
    # A worker in this process takes the model the check loaded.
    config, notes = check_model(config, keep=not message and workers_in_launcher(config))
  except (ConfigError, OSError) as e:
    error(e)
    return EXIT_CONFIG_ERROR
  collect_young_objects()
  if options.preflight:  # its report is printed; a failing sample stops the run
    from tf_batch_predict.pipeline import preflight
    status = preflight.before_run(config)
    if status != EXIT_OK:
      return status
  try:
    if not message:  # a template or dry run writes nothing now
      lock.acquire()
  except (ConfigError, OSError) as e:
    error(e)
    return EXIT_CONFIG_ERROR
  for level, note in notes:
    _LOG.log(level, '%s', note)
  if message:
    print(build_template(config, message))
    return EXIT_OK
  try:
    status, job_summary = run_and_promote(config, lock.run_id)
  except PipelineFailed as e:
    if debug():
      traceback.print_exception(e.__cause__ or e)
    stopped = early_stop(e)
    previous = _previous_result(config.output)
    if stopped:
      error(f'{stopped}; nothing was written{": " + previous if previous else ""}')
      return EXIT_TOO_MANY_ERRORS
    error(f'the pipeline failed: {e}; {previous or "no result was written"}'
          f'{RESUME_HINT if getattr(e, "kept_for_resume", False) else ""}')
    return EXIT_PIPELINE_FAILED
  except ConfigError as e:  # --resume of a run that does not fit this command
    error(e)
    return EXIT_CONFIG_ERROR
  print(summary.table(job_summary))
  if status != EXIT_OK and job_summary.get('set_aside_in'):
    error(f'{job_summary["exit_reason"]}; the previous result in {config.output} (complete, '
          f'exit status 0) is kept; this run\'s outputs are in {job_summary["set_aside_in"]}')
  elif status != EXIT_OK:
    error(f'{job_summary["exit_reason"]}; the outputs are in {config.output}')
  return status


def early_stop(failure: BaseException) -> str:
  """The early stop's line (transforms/write/format.py `_watch`) where the
  pipeline failed for one, found in whatever the runner reported (a Python
  traceback as text, a Java exception quoting it); else ''."""
  from tf_batch_predict.transforms.write.format import EARLY_STOP_MARK
  texts, seen = [], set()
  while failure is not None and id(failure) not in seen:
    seen.add(id(failure))
    texts.append(''.join(traceback.format_exception_only(type(failure), failure)))
    failure = failure.__cause__ or failure.__context__
  for text in texts:
    at = text.find(EARLY_STOP_MARK)
    if at >= 0:
      line = text[at + len(EARLY_STOP_MARK):].splitlines()[0].strip()
      # Runners add their own suffixes: Beam's ` [while running 'Format/...']`,
      # a quoted message's closing quote; the message ends at its period.
      line = re.sub(r"\s*\[while running .*$", '', line)
      line = re.sub(r"""(\\n|['"]\s*\]?)*$""", '', line).strip()
      return 'stopped early: ' + (line[:-1] if line.endswith('.') else line)
  return ''
