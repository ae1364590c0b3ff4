"""Ctrl-C and SIGTERM: the job stops with one line and exit status 130 or
143, in every local running mode, cleans up after itself, and the previous
result stays as it was."""
import os
import signal
import subprocess
import sys
import time

import pytest

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


@pytest.mark.parametrize('mode, how', [
    ('multi_processing', 'ctrl-c'), ('multi_threading', 'ctrl-c'),
    ('multi_processing', 'sigterm')])
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
                           start_new_session=True)
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
  assert lines == [f'batch-predict: error: {what}; a previous result in --output is '
                   'left as it was']
  assert snapshot(out) == previous
  assert sorted(os.listdir(out)) == sorted(previous)  # no staging folder, no lock left
