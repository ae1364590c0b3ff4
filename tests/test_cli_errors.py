"""Configuration mistakes fail before any pipeline starts, with one line on
stderr that says what to fix, and exit status 2."""
import json
import os
import subprocess
import sys

import pytest

from tf_batch_predict.pipeline import cli
from tests.helpers import write_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def instances(tmp_path):
  return write_lines(str(tmp_path / 'in.jsonl'), [json.dumps([1.0])])


def config_error(capsys, tmp_path, *args):
  existed = os.path.lexists(tmp_path / 'out')
  rc = cli.main([*args, f'--output={tmp_path / "out"}'])
  err = capsys.readouterr().err.strip()
  assert rc == cli.EXIT_CONFIG_ERROR
  assert len(err.splitlines()) == 1 and 'Traceback' not in err
  assert not (tmp_path / 'out' / 'summary.json').exists()
  if not existed:  # no empty output folder is left behind
    assert not os.path.lexists(tmp_path / 'out')
  return err


def test_a_mistake_leaves_no_output_folder_it_created(capsys, tmp_path, model_dir, instances):
  """The folders a run created for --output are removed where it wrote
  nothing in them; a folder that was there is kept, as is one a run wrote in."""
  nested = tmp_path / 'new' / 'deeper' / 'out'
  rc = cli.main([f'--model={tmp_path / "missing"}', f'--input={instances}', f'--output={nested}'])
  assert rc == cli.EXIT_CONFIG_ERROR and not (tmp_path / 'new').exists()
  (tmp_path / 'there').mkdir()
  rc = cli.main([f'--model={tmp_path / "missing"}', f'--input={instances}',
                 f'--output={tmp_path / "there" / "out"}'])
  assert rc == cli.EXIT_CONFIG_ERROR and os.listdir(tmp_path / 'there') == []
  # A run that stops early (every instance fails the same way) writes nothing either.
  bad = write_lines(str(tmp_path / 'bad.jsonl'), [json.dumps({'y': [1.0]})] * 20)
  capsys.readouterr()
  rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={bad}', f'--output={nested}',
                 '--early_stop_after=10'])
  assert rc == cli.EXIT_TOO_MANY_ERRORS and not (tmp_path / 'new').exists()
  # There was no previous result: the line says nothing of one.
  assert capsys.readouterr().err.strip().endswith('; nothing was written')
  rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={instances}', f'--output={nested}'])
  assert rc == cli.EXIT_OK and (nested / 'summary.json').exists()
  capsys.readouterr()


@pytest.mark.parametrize('model, expected', [
    ('missing', 'does not exist'),
    ('empty', 'is not a SavedModel (no saved_model.pb)'),
])
def test_bad_model_path(capsys, tmp_path, instances, model, expected):
  (tmp_path / 'empty').mkdir()
  err = config_error(capsys, tmp_path, f'--model={tmp_path / model}', f'--input={instances}')
  assert expected in err


def test_unknown_signature_lists_available(capsys, tmp_path, model_dir, instances):
  err = config_error(capsys, tmp_path, f'--model={model_dir / "tf1"}', '--signature=nope',
                     f'--input={instances}')
  assert "no signature 'nope'; available: predict_scores" in err


def test_unknown_tag_lists_available(capsys, tmp_path, model_dir, instances):
  err = config_error(capsys, tmp_path, f'--model={model_dir / "tf1"}', '--tag=serve,gpu',
                     f'--input={instances}')
  assert 'no tag set "serve,gpu"; available: "serve", "serve,batch"' in err


def test_pattern_matching_no_file(capsys, tmp_path, model_dir, instances):
  err = config_error(capsys, tmp_path, f'--model={model_dir / "ragged"}',
                     f'--input={instances},{tmp_path / "none" / "*.jsonl"}')
  assert 'none/*.jsonl matches no file' in err


def test_directory_as_input_and_file_as_output(capsys, tmp_path, model_dir, instances):
  err = config_error(capsys, tmp_path, f'--model={model_dir / "ragged"}', f'--input={tmp_path}')
  assert f'is a directory; give a file pattern such as {tmp_path}/*.jsonl' in err
  rc = cli.main([f'--model={model_dir / "ragged"}', f'--input={instances}',
                 f'--output={instances}'])
  assert rc == 2 and 'exists and is not a directory' in capsys.readouterr().err


@pytest.mark.parametrize('args, expected', [
    (['--max_batch_sise=3'], 'unknown option --max_batch_sise'),
    (['--min_batch_size=9', '--max_batch_size=4'], 'is larger than --max_batch_size'),
    (['--max_batch_size=0'], 'must be at least 1'),
    (['--key_field=id', '--passthrough_fields=id'], "'id' is already written"),
    (['--passthrough_fields=offset'], "'offset' is already written"),
])
def test_bad_options(capsys, tmp_path, model_dir, instances, args, expected):
  err = config_error(capsys, tmp_path, f'--model={model_dir / "ragged"}', f'--input={instances}',
                     *args)
  assert expected in err


@pytest.mark.parametrize('runner, flag', [('FlinkRunner', 'flink_job_server_jar'),
                                          ('SparkRunner', 'spark_job_server_jar')])
@pytest.mark.parametrize('jar, reason', [
    ('missing/job-server.jar', 'Unable to parse jar URL'),
    ('http://127.0.0.1:9/job-server.jar', 'Connection refused'),
])
def test_a_job_server_jar_that_cannot_be_had_is_one_line(capsys, tmp_path, model_dir, instances,
                                                         runner, flag, jar, reason):
  """Flink and Spark start Beam's job server from a jar, fetched before the
  model is loaded: a path that is not there, or a URL that cannot be read, is
  a configuration mistake naming the option, not a failed pipeline."""
  err = config_error(capsys, tmp_path, f'--model={model_dir / "ragged"}',
                     f'--input={instances}', f'--runner={runner}', f'--{flag}={jar}')
  assert f'--runner={runner}: cannot get --{flag}={jar} (' in err
  assert reason in err and err.endswith('--job_endpoint= a running job server')


def test_console_script_reports_missing_option_in_one_line(tmp_path):
  """The real command: no stack trace, status 2, and no TensorFlow import
  just to print an argument error."""
  proc = subprocess.run(
      [sys.executable, '-c',
       'import sys; from tf_batch_predict.pipeline.cli import main; rc = main(["--model=x"]); '
       'print("tensorflow" in sys.modules); sys.exit(rc)'],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ('batch-predict: error: the following arguments '
                                 'are required: --input, --output')
  assert proc.stdout.strip() == 'False'


def test_a_mistyped_option_is_one_line_without_beams_warning(tmp_path, instances):
  """Beam warns about options it cannot parse before the job names the
  first one: the real command's stderr is the job's line only."""
  for command in ([], ['preflight']):
    proc = subprocess.run(
        [sys.executable, '-m', 'tf_batch_predict.pipeline', *command, '--model=m', f'--input={instances}',
         f'--output={tmp_path / "out"}', '--key_fild=id'],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('batch-predict: error: unknown option --key_fild=id '
                                   '(see batch-predict --help)')


def test_corrupt_saved_model_proto(capsys, tmp_path, instances):
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'saved_model.pb').write_bytes(b'\xff\xff\xff not a proto')
  err = config_error(capsys, tmp_path, f'--model={tmp_path / "bad"}', f'--input={instances}')
  assert 'is not a readable SavedModel proto' in err


@pytest.mark.parametrize('value', ['False', 'false', '0'])
def test_dry_run_with_a_false_value_is_a_mistake(capsys, tmp_path, model_dir, instances, value):
  """Beam keeps --dry_run's text, so any value would make a dry run."""
  err = config_error(capsys, tmp_path, f'--model={model_dir / "ragged"}',
                     f'--input={instances}', f'--dry_run={value}')
  assert err == (f"batch-predict: error: --dry_run: Beam treats any value as true, "
                 f"'{value}' too; give --dry_run=True for a dry run, or leave it out")


def test_a_keras_model_file_says_how_to_export_a_saved_model(capsys, tmp_path, instances):
  """model.keras (Keras 3) and model.h5 (HDF5) are Keras's own formats, not
  SavedModels: the line says how to export one, and that works."""
  import keras
  x = keras.Input(shape=(1,), name='x')
  model = keras.Model(x, keras.layers.Dense(1)(x))
  for name in ('model.keras', 'model.h5'):
    model.save(str(tmp_path / name))
    err = config_error(capsys, tmp_path, f'--model={tmp_path / name}', f'--input={instances}')
    assert err == (f'batch-predict: error: --model: {tmp_path / name} is a Keras model file, '
                   f"not a SavedModel; export one with keras.models.load_model('{tmp_path / name}')"
                   ".export('DIR') (Keras 3; in Keras 2, tf.saved_model.save(model, 'DIR')) and "
                   'pass --model=DIR')
    exported = tmp_path / f'{name}-exported'
    keras.models.load_model(str(tmp_path / name)).export(str(exported), verbose=False)
    rc = cli.main([f'--model={exported}', f'--input={instances}', f'--output={exported}-out'])
    assert rc == 0, capsys.readouterr().err
