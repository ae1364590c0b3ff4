"""Ctrl-C and SIGTERM: the job stops with one line and exit status 130 or
143, in every local running mode, cleans up after itself, and the previous
result stays as it was. A worker process that dies (multi_processing): one
line, exit status 1, the previous result as it was."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tf_batch_predict.pipeline import cli, workers
from tf_batch_predict.transforms.write import units
from tests.helpers import write_lines
from tests.test_runs import ROOT, keras_args, keras_lines, snapshot


@pytest.fixture(scope='module')
def big_input(tmp_path_factory):
  """Several seconds of work in any mode: 1,600,000 instances, in 4 files
  (links to one)."""
  folder = tmp_path_factory.mktemp('big')
  first = write_lines(str(folder / 'b0.jsonl'), keras_lines('b', 400_000))
  for i in range(1, 4):
    os.link(first, str(folder / f'b{i}.jsonl'))
  return str(folder / '*.jsonl')


def _as_a_terminals_job():
  """Ctrl-C's default action, as a terminal's job has it: a command started
  in the background of a script (`make test &`) inherits SIGINT ignored."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _in_the_background():
  """As `batch-predict ... &` in a script: SIGINT ignored, which the job's
  workers inherit (SIGTERM must still stop them all)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def assert_stopped(lines, line, out, previous):
  """The one line of a stopped run, the previous result untouched, no lock
  left; a staging folder only where the run had committed work units (to
  --resume), and then the line says so."""
  kept = [n for n in os.listdir(out) if n.startswith('.staging-')]
  assert lines == [line + (cli.RESUME_HINT if kept else '')]
  assert snapshot(out) == previous
  left = set(os.listdir(out)) - set(kept) - {units.MANIFEST_NAME}  # the result's, unchanged
  assert sorted(left) == sorted(previous)  # no lock left
  assert len(kept) <= 1
  if kept:
    assert units.committed(str(out / kept[0] / units.UNITS_FOLDER))


@pytest.mark.parametrize('mode, how', [
    ('multi_processing', 'ctrl-c'), ('multi_threading', 'ctrl-c'),
    ('multi_processing', 'sigterm'), ('multi_processing', 'sigterm, started in the background')])
def test_ctrl_c_and_sigterm_are_one_line_and_keep_the_previous_result(
    model_dir, tmp_path, big_input, mode, how):
  """Ctrl-C reaches every process of the job (a terminal's process group);
  SIGTERM (a scheduler, `timeout`) only the command's."""
  pattern = write_lines(str(tmp_path / 'in' / 'a.jsonl'), keras_lines('a', 40))
  out = tmp_path / 'out'
  args = [sys.executable, '-m', 'tf_batch_predict.pipeline', *keras_args(model_dir, pattern),
          f'--output={out}', '--progress_interval=0.2', f'--direct_running_mode={mode}',
          '--direct_num_workers=2']
  assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0
  previous = snapshot(out)
  args[args.index(f'--input={pattern}')] = f'--input={big_input}'
  # Its own process group, as a shell's job: Ctrl-C reaches every process.
  with open(tmp_path / 'stderr', 'wb') as stderr:
    job = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                           start_new_session=True,
                           preexec_fn=_in_the_background if 'background' in how
                           else _as_a_terminals_job)
    deadline = time.time() + 120
    while b'tf_batch_predict.pipeline.progress' not in (tmp_path / 'stderr').read_bytes():
      assert job.poll() is None and time.time() < deadline
      time.sleep(0.1)
    time.sleep(1.5)  # the worker processes (or threads) are at work by now
    assert job.poll() is None
    if how == 'ctrl-c':
      os.killpg(job.pid, signal.SIGINT)
    else:
      os.kill(job.pid, signal.SIGTERM)
    assert job.wait(timeout=60) == (130 if how == 'ctrl-c' else 143)
  lines = [line for line in (tmp_path / 'stderr').read_text().splitlines()
           if not line.startswith('INFO ')]
  what = 'interrupted' if how == 'ctrl-c' else 'terminated (SIGTERM)'
  assert_stopped(lines, f'batch-predict: error: {what}; a previous result in --output is '
                 'left as it was', out, previous)


def _sdk_workers(pid) -> list:
  """The Python SDK workers among the descendants of `pid` (not the shells
  that start them)."""
  found = []
  for child in workers.descendants(pid):
    try:
      with open(f'/proc/{child}/cmdline', 'rb') as f:
        args = f.read().split(b'\0')
    except OSError:
      continue
    if args[1:3] == [b'-m', b'apache_beam.runners.worker.sdk_worker_main']:
      found.append(child)
  return found


def _alive(pid) -> bool:
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      return f.read().rsplit(b')', 1)[1].split()[0] != b'Z'
  except OSError:
    return False


@pytest.mark.parametrize('moment', ['starting', 'at work'])
def test_a_worker_process_that_dies_is_one_line_and_keeps_the_previous_result(
    model_dir, tmp_path, big_input, moment):
  """A worker killed with SIGKILL (as the kernel does when memory runs out),
  before it has connected to the runner (Beam would wait for it forever) or
  while it scores."""
  pattern = write_lines(str(tmp_path / 'in' / 'a.jsonl'), keras_lines('a', 40))
  out = tmp_path / 'out'
  args = [sys.executable, '-m', 'tf_batch_predict.pipeline', *keras_args(model_dir, pattern),
          f'--output={out}', '--progress_interval=0.2']
  assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0  # in one process
  previous = snapshot(out)
  args[args.index(f'--input={pattern}')] = f'--input={big_input}'
  args += ['--direct_running_mode=multi_processing', '--direct_num_workers=2']
  with open(tmp_path / 'stderr', 'wb') as stderr:
    job = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
                           start_new_session=True)
    deadline = time.time() + 120
    if moment == 'at work':
      while b'tf_batch_predict.pipeline.progress' not in (tmp_path / 'stderr').read_bytes():
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.1)
      time.sleep(1.5)
    while not _sdk_workers(job.pid):
      assert job.poll() is None and time.time() < deadline
      time.sleep(0.02)
    started = _sdk_workers(job.pid)
    os.kill(started[0], signal.SIGKILL)
    assert job.wait(timeout=60) == 1
  lines = [line for line in (tmp_path / 'stderr').read_text().splitlines()
           if not line.startswith('INFO ')]
  assert_stopped(lines, 'batch-predict: error: the pipeline failed: a worker process died '
                 '(killed by SIGKILL, which is also how the kernel ends a process when memory '
                 'runs out: fewer --direct_num_workers or a smaller --max_batch_size need '
                 f'less); the previous result in {out} is left as it was', out, previous)
  assert not any(_alive(pid) for pid in started)  # the other worker is stopped too


def test_an_interrupt_that_beam_reports_as_a_step_failure_is_an_interrupt():
  """Ctrl-C (or SIGTERM) raises in the main thread, which runs a local run's
  steps: Beam reports it as the step's failure, which must end as an
  interrupt (exit 130 or 143, one line), not as a failed pipeline."""
  from tf_batch_predict.pipeline.cli import _Terminated, _interrupt_in
  wrapped = RuntimeError("KeyboardInterrupt [while running 'Decode']")
  assert type(_interrupt_in(wrapped)) is KeyboardInterrupt
  assert type(_interrupt_in(RuntimeError("_Terminated [while running 'Score']"))) is _Terminated
  try:
    try:
      raise _Terminated()
    except _Terminated as cause:
      raise ValueError('a step failed') from cause
  except ValueError as chained:
    assert type(_interrupt_in(chained)) is _Terminated
  assert _interrupt_in(RuntimeError("ValueError: bad [while running 'Decode']")) is None


def test_a_job_servers_wait_for_a_dead_worker_is_explained():
  """Beam's Java job servers wait 3 minutes for a new Python worker's data
  connection, then fail the job with only a Guava TimeoutException (the line
  below is Spark's, from tests/test_engines.py's killed worker): the line
  says what it means, and keeps Beam's words."""
  line = ('RuntimeError: Pipeline BeamApp-root-1208021041-361bf607_ca7985d3-8310-4a6f-98f5-'
          'be7dbff402e6 failed in state FAILED: TimeoutException: Waited 3 minutes (plus '
          '190779 nanoseconds delay) for SettableFuture@306528f2[status=PENDING]')
  explained = workers.engine_failure(line)
  assert explained.startswith('a Python worker never opened its data connection: it died or '
                              'could not start')
  assert explained.endswith('(TimeoutException: Waited 3 minutes (plus 190779 nanoseconds '
                            'delay) for SettableFuture)')
  assert 'No client connected within timeout' in workers.engine_failure(
      'RuntimeError: No client connected within timeout')
  other = "RuntimeError: ValueError: bad [while running 'Score']"
  assert workers.engine_failure(other) == other
