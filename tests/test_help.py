"""`batch-predict --help`: what the tool does today, options grouped with
their defaults, example command lines that the job accepts."""
import re
import subprocess
import sys

from tf_batch_predict.pipeline import options as job_options
from tf_batch_predict.pipeline.options import parse_args


def _help() -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'tf_batch_predict.pipeline', '--help'], capture_output=True,
                        text=True, env={'COLUMNS': '100', 'PATH': '/usr/bin:/bin'})


def test_help_describes_every_format_groups_options_and_shows_defaults():
  proc = _help()
  assert proc.returncode == 0 and proc.stderr == ''
  text = proc.stdout
  assert 'JSON-lines' not in text
  for fmt in ('JSON Lines', 'TF Serving request files', 'CSV', 'TFRecord', 'Parquet'):
    assert fmt in text
  for command in ('batch-predict inspect', 'batch-predict preflight', 'batch-predict join',
                  'batch-predict evaluate'):
    assert command in text
  sections = re.findall(r'^(\w[\w ,]*):$', text, re.M)
  assert sections[:8] == ['Other commands', 'options', 'model', 'input', 'output', 'batching',
                          'checks, errors and output on the terminal', 'examples']
  # Every option of the job is listed once, in a group, with its default.
  parser = job_options._parser()
  for action in parser._actions:
    if not action.option_strings or action.dest == 'help':
      continue
    flag = action.option_strings[0]
    assert len(re.findall(rf'^  {flag}\b', text, re.M)) == 1, flag
    if action.default not in (None, False, ()):
      shown = (','.join(action.default) if isinstance(action.default, tuple)
               else str(action.default))
      block = text.split(f'\n  {flag}', 1)[1].split('\n  --', 1)[0]
      assert f'(default: {shown})' in ' '.join(block.split()), flag
  assert 'pipeline_options' in text and '--runner' in text  # where Beam's options are
  assert 'exit status' in text


def test_help_examples_are_command_lines_the_job_accepts():
  text = _help().stdout.split('examples:\n', 1)[1].split('\n\n', 1)[0]
  commands = [' '.join(c.split()) for c in text.replace('\\\n', ' ').splitlines()]
  assert len(commands) >= 3
  import shlex
  for command in commands:
    words = shlex.split(command)
    assert words[0] in ('batch-predict', 'launch/dataflow.sh')
    if words[0] == 'batch-predict':
      options = parse_args(words[1:])
      assert options.model and options.inputs and options.output
    else:
      launched = subprocess.run(['bash', *words, '--print_only'], capture_output=True,
                                text=True, cwd=job_options.__file__.rsplit('/pipeline/', 1)[0],
                                env={'PATH': '/usr/bin:/bin', 'PYTHON': sys.executable})
      assert launched.returncode == 0, launched.stderr
      job = shlex.split(launched.stdout)[3:]
      assert parse_args(job).runner == 'DataflowRunner'
