"""Watching a run (issue 9): progress lines while the pipeline runs (not a
terminal: a log line every --progress_interval seconds; a terminal: one live
line), in the launcher's own process and from local worker processes; the
last line's counts are the summary's. The percent follows the instances
decoded, also when the runner reads ahead; the last line shows no ETA and
says when input could not be read; the progress folder is this run's only,
and is gone after the run, also after SIGTERM or a launcher killed before."""
import glob
import gzip
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

from tf_batch_predict.pipeline import cli, progress
from tests.helpers import write_lines
from tests.test_runs import ROOT, keras_args, keras_lines

LINE = re.compile(r'(?P<final>pipeline ended: )?(?P<read>[\d,]+) instances read, '
                  r'(?P<predicted>[\d,]+) predicted, (?P<errors>[\d,]+) errors'
                  r'(, [\d,]+ instances/s)?, (?P<percent>\d+)% of [\d.]+ ([KMGT]iB|bytes) input read'
                  r'( \((?P<faults>[\d,]+) files? could not be read completely\))?, '
                  r'\d+(s|m\d\ds|h\d\dm) elapsed(?P<eta>, ETA \S+|, starting)?')
# The terminal's line: the same, in fewer words.
COMPACT = re.compile(r'(?P<final>)(?P<read>[\d,]+) read, (?P<predicted>[\d,]+) predicted, '
                     r'(?P<errors>[\d,]+) errors(, [\d,]+/s)?, (?P<percent>\d+)% of '
                     r'[\d.]+ ([KMGT]iB|bytes), \d+(s|m\d\ds|h\d\dm) elapsed(, ETA \S+|, starting)?')


def _figures(lines, pattern=LINE) -> list:
  figures = []
  for line in lines:
    match = pattern.fullmatch(line)
    assert match, line
    figures.append((bool(match['final']),
                    tuple(int(match[k].replace(',', '')) for k in ('read', 'predicted',
                                                                   'errors', 'percent'))))
  return figures


def _check_progress(lines, summary):
  """Several lines, figures that never go back, instances seen part-way
  through, and a last line that says what the summary says."""
  figures = _figures(lines)
  assert len(figures) >= 3, lines
  assert [final for final, _ in figures] == [False] * (len(figures) - 1) + [True]
  for (_, before), (_, after) in zip(figures, figures[1:]):
    assert all(a <= b for a, b in zip(before, after)), (before, after)
  total = summary['instances_read']
  assert any(0 < read < total for _, (read, *_) in figures[:-1]), lines
  assert figures[-1][1] == (total, summary['predictions'], summary['errors'], 100)


def _input(tmp_path, files=4, lines=10_000):
  for f in range(files):
    write_lines(str(tmp_path / 'in' / f'{f}.jsonl'), keras_lines(f'f{f}-', lines, bad_every=50))
  return tmp_path / 'in' / '*.jsonl'


def test_progress_lines_of_an_in_process_run(model_dir, tmp_path, caplog):
  """The local runner's default mode: the steps count in this process."""
  pattern = _input(tmp_path)
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO, logger='tf_batch_predict.pipeline'):
    assert cli.main([*keras_args(model_dir, pattern), f'--output={out}', '--max_batch_size=64',
                     '--progress_interval=0.2']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  _check_progress([r.getMessage() for r in caplog.records if r.name == 'tf_batch_predict.pipeline.progress'],
                  summary)
  assert progress.ENV not in os.environ  # the progress channel is gone with the run

  # --progress_interval=0: no progress output.
  caplog.clear()
  write_lines(str(tmp_path / 'small.jsonl'), keras_lines('s', 50))
  with caplog.at_level(logging.INFO, logger='tf_batch_predict.pipeline'):
    assert cli.main([*keras_args(model_dir, tmp_path / 'small.jsonl'),
                     f'--output={tmp_path / "out0"}', '--progress_interval=0']) == 0
  assert [r for r in caplog.records if r.name == 'tf_batch_predict.pipeline.progress'] == []
  assert any(r.name == 'tf_batch_predict.pipeline.cli' for r in caplog.records)  # other lines still there


def test_progress_lines_from_worker_processes(model_dir, tmp_path):
  """multi_processing: the steps run in worker processes, which pass their
  counts on through the progress folder. The real command, its stderr not a
  terminal."""
  pattern = _input(tmp_path)
  out = tmp_path / 'out'
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop(progress.ENV, None)
  done = subprocess.run(
      [sys.executable, '-m', 'tf_batch_predict.pipeline', *keras_args(model_dir, pattern), f'--output={out}',
       '--max_batch_size=64', '--progress_interval=0.2',
       '--direct_running_mode=multi_processing', '--direct_num_workers=2'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  prefix = 'INFO tf_batch_predict.pipeline.progress: '
  lines = [line[len(prefix):] for line in done.stderr.splitlines() if line.startswith(prefix)]
  _check_progress(lines, json.loads((out / 'summary.json').read_text()))


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_terminal_gets_one_live_line_cleared_at_the_end(caplog):
  stream = _Terminal()
  with caplog.at_level(logging.INFO, logger='tf_batch_predict.pipeline'):
    with progress.Reporter(0.05, total_bytes=1000, stream=stream) as reporter:
      assert reporter.terminal
      for _ in range(5):
        progress.add(progress.READ, 7)
        progress.add(progress.PREDICTED, 6)
        progress.add(progress.ERRORS, 1)
        progress.add(progress.BYTES, 100)
        time.sleep(0.06)
      deadline = time.time() + 10
      while '35 read, ' not in stream.getvalue() and time.time() < deadline:
        time.sleep(0.02)
  text = stream.getvalue()
  assert '\n' not in text  # rewritten in place
  assert text.endswith('\r\x1b[K')  # and cleared for what is printed next
  drawn = [part[:-len('\x1b[K')] for part in text.split('\r') if part != '\x1b[K']
  figures = [_figures([line], COMPACT)[0][1] for line in drawn if line]
  assert all(len(line) < 100 for line in drawn)
  assert len(figures) >= 2 and figures == sorted(figures)
  assert figures[-1] == (35, 30, 5, 50)
  assert [r for r in caplog.records if r.name == 'tf_batch_predict.pipeline.progress'] == []  # no log lines
  progress.add(progress.READ, 1)  # after the run: counted nowhere, no error
  assert progress.ENV not in os.environ


def test_rate_and_eta_are_based_on_input_bytes_read():
  read, consumed, total, reading_s = 400, 250, 1000, 5.0
  line = progress.describe([read, 390, 10, consumed], 12.0, total, reading_s)
  eta_s = (total - consumed) / (consumed / reading_s)
  assert f'{read / reading_s:,.0f} instances/s' in line
  assert f'{consumed / total:.0%} of {total} bytes input read' in line
  assert line.endswith(f'12s elapsed, ETA {progress.duration(eta_s)}')
  assert progress.duration(eta_s) == f'{int(eta_s)}s'
  # No ETA from the first moments of reading, nor without a known input size.
  assert 'ETA' not in progress.describe([1, 0, 0, 10], 3.0, total, progress.ETA_AFTER_S / 2)
  assert 'ETA' not in progress.describe([read, 390, 10, consumed], 12.0, 0, reading_s)
  assert progress.duration(3725) == '1h02m' and progress.duration(65) == '1m05s'


def _progress_lines(caplog) -> list:
  return [r.getMessage() for r in caplog.records if r.name == 'tf_batch_predict.pipeline.progress']


def test_percent_follows_the_instances_decoded(model_dir, tmp_path, caplog):
  """Input of two formats: the runner may read every file before it decodes
  any (the reads' Flatten is not fused with Decode). The percent counts the
  bytes of the instances decoded, not of those read ahead: it keeps pace
  with the instances (these formats hold about as many bytes per instance)."""
  pattern = _input(tmp_path, files=3)
  request = tmp_path / 'in' / 'request.json'
  request.write_text(json.dumps({'instances': [json.loads(line)
                                               for line in keras_lines('r', 10_000)]}))
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO, logger='tf_batch_predict.pipeline'):
    assert cli.main([*keras_args(model_dir, f'{pattern},{request}'), f'--output={out}',
                     '--max_batch_size=64', '--progress_interval=0.1']) == 0
  summary = json.loads((out / 'summary.json').read_text())
  lines = _progress_lines(caplog)
  _check_progress(lines, summary)
  for line in lines:
    match = LINE.fullmatch(line)
    instances = 100 * int(match['read'].replace(',', '')) / summary['instances_read']
    assert abs(int(match['percent']) - instances) <= 10, line


def test_last_line_of_input_that_could_not_be_read(model_dir, tmp_path, caplog):
  """A .gz cut short and a TFRecord file broken from its start: the last
  line shows no ETA, the percent of the bytes read (all of the .gz's, 12 of
  the TFRecord file's: its first header) and how many files could not be
  read completely."""
  folder = tmp_path / 'in'
  complete = write_lines(str(folder / 'complete.jsonl'), keras_lines('c', 20_000))
  cut = gzip.compress(''.join(f'{line}\n' for line in keras_lines('g', 20_000)).encode())
  (folder / 'cut.jsonl.gz').write_bytes(cut[:len(cut) * 2 // 3])
  (folder / 'broken.tfrecord').write_bytes(os.urandom(1 << 20))
  sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
  out = tmp_path / 'out'
  with caplog.at_level(logging.INFO, logger='tf_batch_predict.pipeline'):
    assert cli.main([*keras_args(model_dir, folder / '*'), f'--output={out}',
                     '--progress_interval=0.1']) == 4
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['files_incomplete'] == 2 and os.path.exists(complete)
  last = LINE.fullmatch(_progress_lines(caplog)[-1])
  assert last['final'] and last['eta'] is None, last[0]
  assert int(last['faults']) == 2
  assert int(last['read'].replace(',', '')) == summary['instances_read'] > 20_000
  read = sizes['complete.jsonl'] + sizes['cut.jsonl.gz'] + 12
  assert abs(int(last['percent']) - 100 * read / sum(sizes.values())) <= 1, last[0]


def test_an_inherited_progress_folder_is_not_written_to(model_dir, tmp_path, monkeypatch):
  """BATCH_PREDICT_PROGRESS_DIR in the environment a command inherits names
  no folder of its run: with progress off, nothing counts into it (nor do
  worker processes, which inherit the launcher's environment)."""
  inherited = tmp_path / 'inherited'
  inherited.mkdir()
  monkeypatch.setenv(progress.ENV, str(inherited))
  progress.end_watching()  # this process decides afresh where it counts
  write_lines(str(tmp_path / 'in.jsonl'), keras_lines('i', 500))
  assert cli.main([*keras_args(model_dir, tmp_path / 'in.jsonl'), f'--output={tmp_path / "out"}',
                   '--progress_interval=0']) == 0
  assert os.listdir(inherited) == []
  assert progress.ENV not in os.environ


def _folder(temp, name, owner=None, age_s=0.0):
  path = temp / f'{progress.FOLDER_PREFIX}{name}'
  path.mkdir()
  if owner is not None:
    (path / progress.OWNER).write_text(json.dumps(owner))
  (path / '1234.json').write_text('[1, 0, 0, 0, 0, 0]')
  then = time.time() - age_s
  os.utime(path, (then, then))
  return path


def test_progress_folders_are_removed_after_sigterm_and_after_sigkill(model_dir, tmp_path):
  """The real command, worker processes writing their tallies: SIGTERM to
  the launcher (as `timeout` or a supervisor sends it) removes its progress
  folder; folders of launchers killed before (SIGKILL leaves them) are
  removed when the next one starts, not those of a live launcher nor of
  another host's."""
  temp = tmp_path / 'tmp'
  temp.mkdir()
  gone = subprocess.Popen(['true'])
  gone.wait()
  host = socket.gethostname()
  killed = _folder(temp, f'{gone.pid}-a1b2c3d4', {'pid': gone.pid, 'host': host})
  being_made = _folder(temp, f'{gone.pid}-e5f6g7h8')  # no marker yet: left a while
  killed_unmarked = _folder(temp, f'{gone.pid}-i9j0k1l2', age_s=600)
  legacy = _folder(temp, 'm3n4o5p6', age_s=3600)  # an earlier version's name
  live = _folder(temp, f'{os.getpid()}-q7r8s9t0', {'pid': os.getpid(), 'host': host})
  elsewhere = _folder(temp, f'{gone.pid}-u1v2w3x4', {'pid': gone.pid, 'host': f'not-{host}'})
  pattern = _input(tmp_path, files=4, lines=20_000)
  env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(temp))
  env.pop(progress.ENV, None)
  with open(tmp_path / 'stderr', 'w') as stderr:
    run = subprocess.Popen(
        [sys.executable, '-m', 'tf_batch_predict.pipeline', *keras_args(model_dir, pattern),
         f'--output={tmp_path / "out"}', '--progress_interval=0.2',
         '--direct_running_mode=multi_processing', '--direct_num_workers=1'],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    tallies = str(temp / f'{progress.FOLDER_PREFIX}{run.pid}-*' / '[0-9]*.json')
    deadline = time.time() + 120
    while not glob.glob(tallies) and run.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    assert glob.glob(tallies), (tmp_path / 'stderr').read_text()[-3000:]
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 143  # the command's own status for SIGTERM (pipeline/cli.py)
  finally:
    if run.poll() is None:
      run.kill()
      run.wait()
  assert not glob.glob(str(temp / f'{progress.FOLDER_PREFIX}{run.pid}-*'))
  remaining = set(glob.glob(str(temp / f'{progress.FOLDER_PREFIX}*')))
  assert remaining == {str(being_made), str(live), str(elsewhere)}
  assert not {str(killed), str(killed_unmarked), str(legacy)} & remaining
