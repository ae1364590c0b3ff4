"""Start-up: `batch-predict inspect`, `--help` (of the job and of each
command) and configuration mistakes found before the model is loaded import
no TensorFlow (seconds and most of a gigabyte). Each command runs as users
run it, in its own process (`python -X importtime -m tf_batch_predict.pipeline
...`), on the real test models (tests/models.py); the import log it writes
says whether any `tensorflow` module was imported.

The SavedModel proto is read with TensorFlow's own message definitions taken
from its generated modules without running them (transforms/model/
savedmodel.py `_tf_protos`): they must parse every test model exactly as
TensorFlow's classes do."""
import json
import os
import re
import subprocess
import sys

import pytest

from tf_batch_predict.pipeline import inspect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IMPORT_LINE = re.compile(r'^import time:\s+\S+ \|\s+\S+ \|(?P<indent>\s*)(?P<module>\S+)\s*$')


def _command(*args) -> tuple:
  """(exit status, stdout, stderr without the import log, modules imported)
  of `batch-predict ARGS` in a process of its own."""
  env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS='100')
  env.pop('BATCH_PREDICT_DEBUG', None)
  proc = subprocess.run(
      [sys.executable, '-X', 'importtime', '-m', 'tf_batch_predict.pipeline', *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  modules, other = [], []
  for line in proc.stderr.splitlines():
    match = _IMPORT_LINE.match(line)
    if match:
      modules.append(match['module'])
    elif not line.startswith('import time:'):
      other.append(line)
  assert 'tf_batch_predict.pipeline.cli' in modules  # the log is what it seems
  return proc.returncode, proc.stdout, '\n'.join(other), modules


def _tensorflow(modules) -> list:
  return [m for m in modules if m == 'tensorflow' or m.startswith('tensorflow.')
          or m.startswith(('tensorflow_text', 'keras', 'tf_keras'))]


@pytest.mark.parametrize('model', ['keras', 'estimator', 'tf1', 'versioned', 'ragged',
                                   'mixed'])
def test_inspect_imports_no_tensorflow_and_says_the_same(model_dir, model, capsys):
  """The command's output, text and --json, is the same as where TensorFlow
  is imported (this process: inspect then also checks the ops against
  TensorFlow's registry)."""
  path = str(model_dir / model)
  for extra in ([], ['--json']):
    rc, out, err, modules = _command('inspect', f'--model={path}', *extra)
    assert rc == 0 and err == '', err
    assert _tensorflow(modules) == []
    # Nor Beam, for a local model (a second more: transforms/model/savedmodel.py
    # `_LocalFiles`).
    assert [m for m in modules if m.startswith('apache_beam')] == []
    assert inspect.main([f'--model={path}', *extra]) == 0
    assert out == capsys.readouterr().out
  assert json.loads(out)['meta_graphs'][0]['signatures']


def test_inspect_names_tf_text_ops_without_tensorflow(tmp_path, capsys):
  """A TF Text model: the library is told from the op names alone, as the
  run does (transforms/model/op_libraries.py), without importing it."""
  from tests import models_exporters as exporters
  path = str(tmp_path / 'text')
  exporters.build_text_classifier(path)
  rc, out, err, modules = _command('inspect', f'--model={path}')
  assert rc == 0 and err == '', err
  assert _tensorflow(modules) == []
  assert ('note: uses TensorFlow Text ops: tensorflow_text is installed and is loaded with '
          'the model') in out
  assert inspect.main([f'--model={path}']) == 0
  assert out == capsys.readouterr().out


def test_inspect_mistakes_import_no_tensorflow(model_dir):
  for args, expected in (
      ([f'--model={model_dir}/nothing-here'], f'--model: {model_dir}/nothing-here does not '
                                              'exist'),
      ([f'--model={model_dir}/keras', '--tag=gpu'], '--tag: the SavedModel has no tag set '
                                                    '"gpu"; available: "serve"'),
      ([f'--model={model_dir}/keras', '--model_version=x'], "--model_version: 'x' is not a "
                                                            'version number')):
    rc, out, err, modules = _command('inspect', *args)
    assert (rc, out, err) == (2, '', f'batch-predict: error: {expected}')
    assert _tensorflow(modules) == []


@pytest.mark.parametrize('command', [[], ['inspect'], ['preflight'], ['join'], ['evaluate']])
def test_help_imports_no_tensorflow_nor_beam(command):
  rc, out, err, modules = _command(*command, '--help')
  assert rc == 0 and err == '' and 'batch-predict' in out.splitlines()[0], err
  assert _tensorflow(modules) == []
  assert [m for m in modules if m.split('.')[0] == 'apache_beam'] == []


def test_configuration_mistakes_import_no_tensorflow(model_dir, tmp_path):
  """Mistakes found before the model is loaded: one line, exit status 2,
  and no TensorFlow (the model's proto is read for its signature; its ops
  are checked against TensorFlow's registry only after these checks)."""
  data = tmp_path / 'in.jsonl'
  data.write_text('{"features": [1.0, 2.0, 3.0], "bucket": 1}\n')
  model = f'--model={model_dir / "keras"}'
  run = [model, f'--input={data}', f'--output={tmp_path / "out"}']
  for args, expected in (
      ([model, f'--input={tmp_path}/missing/*.jsonl', f'--output={tmp_path / "out"}'],
       f'--input: {tmp_path}/missing/*.jsonl matches no file'),
      ([*run, '--output_format=xml'],
       "argument --output_format: invalid choice: 'xml' (choose from 'jsonl', 'parquet', "
       "'tfrecord')"),
      ([*run, '--max_batch_size=0'], '--min_batch_size and --max_batch_size must be at '
                                     'least 1'),
      ([*run, '--log_level=loud'], "--log_level: 'loud' is not one of debug, info, warning, "
                                   'error'),
      ([*run, '--signature=nope'], "--signature: no signature 'nope'; available: serve, "
                                   'serving_default; pass --signature=NAME'),
      # Found once the signature is read: still before TensorFlow's op
      # registry is consulted.
      ([*run, '--signature=serve', '--output_fields=nope'],
       "--output_fields: the signature has no output 'nope'; outputs: probs, score"),
      ([*run, '--key_field=id', '--passthrough_fields=id'],
       "--passthrough_fields: 'id' is already written as the key or location field"),
      ([f'--model={tmp_path / "no-model"}', *run[1:]],
       f'--model: {tmp_path / "no-model"} does not exist')):
    rc, out, err, modules = _command(*args)
    assert (rc, out, err) == (2, '', f'batch-predict: error: {expected}')
    assert _tensorflow(modules) == []
  assert not (tmp_path / 'out' / 'summary.json').exists()


def test_protos_read_without_tensorflow_parse_as_tensorflow_does(model_dir, tmp_path):
  """Every test model, saved_model.pb and as saved_model.pbtxt, parsed by
  the job's reader and by TensorFlow's own SavedModel class: the same
  message, field for field."""
  from google.protobuf import text_format
  from tensorflow.core.protobuf import saved_model_pb2
  from tf_batch_predict.transforms.model import savedmodel
  paths = sorted(p.parent for p in model_dir.glob('**/saved_model.pb'))
  assert len(paths) >= 8
  for number, path in enumerate(paths):
    data = (path / 'saved_model.pb').read_bytes()
    theirs = saved_model_pb2.SavedModel.FromString(data)
    ours, read = savedmodel.read_saved_model(str(path))
    assert read.endswith('saved_model.pb') and type(ours) is not type(theirs)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True), path
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs), path
    as_text = tmp_path / str(number)
    as_text.mkdir()
    (as_text / 'saved_model.pbtxt').write_text(text_format.MessageToString(theirs))
    ours, read = savedmodel.read_saved_model(str(as_text))
    assert read.endswith('saved_model.pbtxt')
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True), path
  from tensorflow.core.framework import types_pb2
  data_type = savedmodel._tf_protos().data_type  # pylint: disable=protected-access
  assert {v.name: v.number for v in data_type.values} == dict(types_pb2.DataType.items())


def test_local_version_folders_are_found_as_file_patterns_finds_them(tmp_path):
  """A local TF Serving base directory is listed without Beam
  (file_patterns.local_paths) exactly as file_patterns.match matches
  `BASE/*/saved_model.pb*`: hidden and zero-padded folders, linked folders
  followed, a folder reached twice listed once, broken links, nothing
  deeper."""
  from apache_beam.io.filesystems import FileSystems
  from tf_batch_predict.transforms import file_patterns
  from tf_batch_predict.transforms.model import savedmodel
  base = tmp_path / 'b[1]'
  for folder, name in (('1', 'saved_model.pb'), ('02', 'saved_model.pbtxt'),
                       ('.3', 'saved_model.pb'), ('x/4', 'saved_model.pb'),
                       ('5', 'saved_model.pbx'), ('../other/7', 'saved_model.pb')):
    (base / folder).mkdir(parents=True, exist_ok=True)
    (base / folder / name).write_bytes(b'')
  (base / '7').symlink_to('../other/7')
  (base / '11').symlink_to('1')
  (base / '8').symlink_to('.')
  (base / '9').mkdir()
  (base / '9' / 'saved_model.pb').symlink_to(tmp_path / 'nothing')
  for path in (str(base), str(base) + '/', str(base / '1'), str(tmp_path / 'missing')):
    pattern = FileSystems.join(file_patterns.escape(path), '*', 'saved_model.pb*')
    assert file_patterns.local_paths(pattern) == [m.path for m in file_patterns.match(pattern)]
  assert savedmodel.version_folders(str(base)) == {1: ['1'], 2: ['02'], 7: ['7'], 9: ['9']}


# Runs the command (`cli.main()`, as `python -m tf_batch_predict.pipeline`
# does) and says what the garbage collector was doing: at the model check,
# when the pipeline starts and when it decodes its first chunk (in this
# process: Beam's in-memory runner); and whether the graph of a model the
# check closed was collected.
_COLLECTOR_PROBE = '''
import gc, json, sys, weakref
from tf_batch_predict.pipeline import cli
from tf_batch_predict.transforms.model import score
from tf_batch_predict.transforms.read import decode_step
seen = {}
check_model, close, run = cli.check_model, score._close, cli.run_and_promote
closed_graphs = []
def probed_check(*args, **kwargs):
  seen['check'] = gc.isenabled()
  return check_model(*args, **kwargs)
def probed_close(fn):
  if getattr(fn, '_graph', None) is not None:
    closed_graphs.append(weakref.ref(fn._graph))
  return close(fn)
def probed_run(*args, **kwargs):
  seen['run'] = [gc.isenabled(), gc.get_freeze_count()]
  seen['closed_graphs_alive'] = [ref() is not None for ref in closed_graphs]
  return run(*args, **kwargs)
process = decode_step.DecodeInstances.process
def probed_process(self, chunk):
  seen.setdefault('pipeline', [gc.isenabled(), gc.get_freeze_count()])
  return process(self, chunk)
cli.check_model, score._close, cli.run_and_promote = probed_check, probed_close, probed_run
decode_step.DecodeInstances.process = probed_process
status = cli.main()
print('SEEN ' + json.dumps(seen))
sys.exit(status)
'''


def _probed(probe, *args) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-c', probe, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith('SEEN '))[5:])


def test_the_collector_is_off_for_the_imports_and_scans_only_the_pipelines_objects(
    model_dir, tmp_path):
  """The command turns the garbage collector off until TensorFlow, Beam and
  the model are loaded, then freezes those objects and turns it on again:
  the pipeline runs with the collector on (cyclic garbage is freed), over
  young objects only. A model the check does not keep (a multi_processing
  run's) is collected, graph and all, not frozen. Called as a function, the
  job leaves the collector as it found it and freezes nothing."""
  from tests.helpers import read_jsonl, write_lines
  from tests.test_runs import keras_args, keras_lines
  data = write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 300))
  seen = _probed(_COLLECTOR_PROBE, *keras_args(model_dir, data, f'--output={tmp_path / "a"}'))
  assert seen['check'] is False
  for enabled, frozen in (seen['run'], seen['pipeline']):
    assert enabled is True
    assert frozen > 100_000  # TensorFlow's and Beam's objects: about 800,000 here
  assert seen['closed_graphs_alive'] == []  # the worker here took the checked model
  assert len(read_jsonl(str(tmp_path / 'a' / 'predictions-*.jsonl'))) == 300

  seen = _probed(_COLLECTOR_PROBE, *keras_args(
      model_dir, data, f'--output={tmp_path / "b"}', '--direct_running_mode=multi_processing'))
  assert seen['check'] is False and seen['run'][0] is True
  assert seen['closed_graphs_alive'] == [False]
  assert len(read_jsonl(str(tmp_path / 'b' / 'predictions-*.jsonl'))) == 300

  from tf_batch_predict.pipeline import cli
  import gc
  frozen = gc.get_freeze_count()
  gc.disable()
  try:
    assert cli.main(keras_args(model_dir, data, f'--output={tmp_path / "c"}')) == 0
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen
  finally:
    gc.enable()


_PREFLIGHT_PROBE = '''
import gc, json, sys
from tf_batch_predict.pipeline import cli, preflight
seen = {}
checked, check = preflight._checked, preflight.check
def probed_checked(*args, **kwargs):
  seen['model_check'] = gc.isenabled()
  return checked(*args, **kwargs)
def probed_check(*args, **kwargs):
  seen['sample'] = [gc.isenabled(), gc.get_freeze_count()]
  return check(*args, **kwargs)
preflight._checked, preflight.check = probed_checked, probed_check
status = cli.main()
print('SEEN ' + json.dumps(seen))
sys.exit(status)
'''


def test_preflight_scores_its_sample_with_the_collector_on(model_dir, tmp_path):
  """`batch-predict preflight` too: the collector is off while TensorFlow
  and the model load, on (over young objects only) while the sample is
  decoded and scored."""
  from tests.helpers import write_lines
  from tests.test_runs import keras_args, keras_lines
  data = write_lines(str(tmp_path / 'in.jsonl'), keras_lines('k', 50))
  seen = _probed(_PREFLIGHT_PROBE, 'preflight', *keras_args(model_dir, data))
  assert seen['model_check'] is False
  enabled, frozen = seen['sample']
  assert enabled is True and frozen > 100_000
