"""Quiet, honest output (issue 9): a normal run's stderr holds our lines only,
none of TensorFlow's native start-up lines (absl, oneDNN, CUDA), in the
launcher and in worker processes alike; a configuration mistake is one line;
debugging shows everything; real errors get through. The real command, in
a subprocess, as a user runs it (without TF_CPP_MIN_LOG_LEVEL)."""
import glob
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest

from tf_batch_predict.pipeline import cli, quiet
from tf_batch_predict.pipeline.options import ConfigError
from tests import models_exporters as exporters
from tests.helpers import write_lines
from tests.test_runs import ROOT, TF_CHATTER, keras_args, keras_lines

# What this machine's TensorFlow 2.21 prints at start (one process).
STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795288811.168489   18870 port.cc:153] oneDNN custom operations are on. You may see \
slightly different numerical results due to floating-point round-off errors from different \
computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1795288811.168872   18870 cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.
I0000 00:00:1795288811.253335   18870 cpu_feature_guard.cc:227] This TensorFlow binary is \
optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow \
with the appropriate compiler flags.
E0000 00:00:1795288812.851196   18870 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA \
error: Failed call to cuInit: UNKNOWN ERROR (303)
"""
CUINIT = STARTUP.splitlines(keepends=True)[-1]


def test_start_up_noise_is_dropped_and_everything_else_kept(monkeypatch):
  monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  real = ('/x/keras/src/foo.py:12: UserWarning: something real\n'
          'W0000 00:00:1795288812.1   18870 op_kernel.cc:1857] OP_REQUIRES failed: real\n'
          'E0000 00:00:1795288812.1   18870 cuda_dnn.cc:522] Loaded runtime CuDNN library: '
          '8.1.0 but source was compiled with: 8.6.0\n'
          'F0000 00:00:1795288812.1   18870 logging.cc:62] Check failed: x\n')
  assert quiet.drop_noise(STARTUP) == ''
  assert quiet.drop_noise(STARTUP + real) == real
  assert quiet.drop_noise(real[:40]) == real[:40]  # a line without its end
  # A failing cuInit is noise where TensorFlow found no CUDA driver, or every
  # GPU is hidden on purpose; on a machine with a driver, a real error.
  assert quiet.drop_noise(CUINIT) == CUINIT
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '-1')
  assert quiet.drop_noise(CUINIT) == ''


def test_worker_stream_filter_drops_noise_and_a_failing_bundles_traceback():
  stream = quiet._StreamFilter(drop_tracebacks=True)  # pylint: disable=protected-access
  text = (STARTUP + 'Traceback (most recent call last):\n  File "a.py", line 1, in f\n'
          '    g()\nValueError: inner\n\nDuring handling of the above exception, another '
          'exception occurred:\n\nTraceback (most recent call last):\n  File "b.py", line 2\n'
          'RuntimeError: outer\n\nreal line\n'
          # The shell around a worker that died of a signal (its death is
          # reported by the launcher: pipeline/workers.py).
          'Killed\nSegmentation fault (core dumped)\nlast without end').encode()
  kept = b''.join(stream.feed(text[i:i + 7]) for i in range(0, len(text), 7)) + stream.end()
  assert kept == b'real line\nlast without end'
  assert quiet._StreamFilter().feed(b'Traceback (most recent call last):\n') != b''  # pylint: disable=protected-access


def test_log_level_option():
  assert cli.take_log_level(['--a', '--log_level=WARNING', '--b']) == (
      logging.WARNING, ['--a', '--b'])
  assert cli.take_log_level(['--log_level', 'debug', '--a']) == (logging.DEBUG, ['--a'])
  assert cli.take_log_level(['--a']) == (logging.INFO, ['--a'])
  with pytest.raises(ConfigError, match="--log_level: 'loud' is not one of debug, info"):
    cli.take_log_level(['--log_level=loud'])


def run(*args, **env_changes):
  """The real command, in a user's environment: no TF_CPP_MIN_LOG_LEVEL."""
  env = dict(os.environ, PYTHONPATH=ROOT, **env_changes)
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'BATCH_PREDICT_DEBUG', quiet.ENV):
    if name not in env_changes:
      env.pop(name, None)
  proc = subprocess.run([sys.executable, '-m', 'tf_batch_predict.pipeline', *map(str, args)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stderr.splitlines()


@pytest.fixture(scope='module')
def instances(tmp_path_factory):
  return write_lines(str(tmp_path_factory.mktemp('quiet') / 'in.jsonl'), keras_lines('k', 20))


def test_a_normal_run_prints_our_lines_only(model_dir, instances, tmp_path):
  rc, lines = run(*keras_args(model_dir, instances), f'--output={tmp_path / "out"}')
  assert rc == 0, lines
  model = re.escape(str(model_dir / 'keras'))
  expected = [rf'INFO tf_batch_predict\.pipeline\.cli: Model check: loaded {model} and called signature serve '
              r'on a sample batch in \d+\.\d s',
              # The worker runs in this process: it takes the check's model.
              rf'INFO tf_batch_predict\.transforms\.model\.score: Loaded SavedModel {model} \(signature serve, .*\) in '
              r'process \d+ by the model check; the worker uses it']
  assert len(lines) == len(expected) and all(
      re.fullmatch(pattern, line) for pattern, line in zip(expected, lines)), lines


def test_a_configuration_mistake_is_one_line_even_after_loading_tensorflow(model_dir, instances,
                                                                           tmp_path):
  # An op this TensorFlow lacks is found in its registry: TensorFlow is
  # imported first (with its start-up lines, kept from the user).
  model = tmp_path / 'custom-op'
  shutil.copytree(model_dir / 'keras', model)
  exporters.rename_ops(str(model), 'MatMul', 'MyCompanyMatMul')
  args = [f'--model={model}', '--signature=serve', f'--input={instances}',
          f'--output={tmp_path / "out"}']
  expected = (f'batch-predict: error: --model: {model}: the model uses ops this TensorFlow '
              'does not have (MyCompanyMatMul): they come from a custom op library; serve it '
              'with a build that links that library (known here: TensorFlow Text, TensorFlow '
              'Decision Forests)')
  rc, lines = run(*args)
  assert rc == 2 and lines == [expected], lines
  rc, lines = run(*args, '--log_level=loud')
  assert rc == 2 and lines == [
      "batch-predict: error: --log_level: 'loud' is not one of debug, info, warning, error"]
  # Debugging shows TensorFlow's own lines too, the error line last.
  for debug_args, env in (([], {'BATCH_PREDICT_DEBUG': '1'}), (['--log_level=debug'], {})):
    rc, lines = run(*args, *debug_args, **env)
    assert rc == 2 and lines[-1] == expected
    assert any(TF_CHATTER.match(line) for line in lines), lines


def test_worker_processes_are_quiet_and_their_failure_is_one_line(model_dir, instances,
                                                                  tmp_path):
  """multi_processing: each worker imports TensorFlow (its start-up lines),
  and here fails to load the model (its traceback): one line, exit 1."""
  broken = tmp_path / 'broken'
  shutil.copytree(model_dir / 'keras', broken)
  for path in glob.glob(str(broken / 'variables' / 'variables.data-*')):
    os.remove(path)
  rc, lines = run(f'--model={broken}', '--signature=serve', f'--input={instances}',
                  f'--output={tmp_path / "out"}', '--skip_model_check', '--log_level=warning',
                  '--direct_running_mode=multi_processing', '--direct_num_workers=2')
  assert rc == 1 and len(lines) == 1, lines
  assert lines[0].startswith('batch-predict: error: the pipeline failed: ')
  assert 'variables.data-00000-of-00001; No such file or directory' in lines[0]


def test_make_demo_is_quiet(tmp_path):
  """`make demo` builds its model with Keras, which imports TensorFlow: its
  start-up lines are filtered as the job filters them (shown when debugging)."""
  script = os.path.join(ROOT, 'launch', 'make_demo.py')
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'BATCH_PREDICT_DEBUG', quiet.ENV)}
  proc = subprocess.run([sys.executable, script, str(tmp_path / 'demo')], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stderr == '', proc.stderr
  assert (tmp_path / 'demo' / 'model' / '1' / 'saved_model.pb').exists()
  proc = subprocess.run([sys.executable, script, str(tmp_path / 'demo')],
                        env={**env, 'BATCH_PREDICT_DEBUG': '1'}, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0
  assert any(TF_CHATTER.match(line) for line in proc.stderr.splitlines()), proc.stderr


def test_tensorflow_imports_without_scikit_learn_which_imports_afterwards():
  """Keras imports scikit-learn (and SciPy) wherever it is installed; the
  command's import of TensorFlow leaves it out, and evaluate's import of it
  works after."""
  script = ('import sys\n'
            'from tf_batch_predict.pipeline import quiet\n'
            'quiet.install()\n'
            'import tensorflow\n'
            'fixes = sys.modules["keras.src.wrappers.fixes"]  # where Keras imports it\n'
            'print("sklearn" in sys.modules, fixes.sklearn is None)\n'
            'from sklearn import metrics\n'
            'print(metrics.roc_auc_score([0, 1, 1], [0.1, 0.9, 0.4]))\n')
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ['False', 'True', '1.0']
