"""The launch scripts: parameters from flags or environment variables,
validation before submitting, pass-through of extra arguments, and a command
line the job itself accepts."""
import os
import shlex
import subprocess
import sys

import pytest

from tf_batch_predict.pipeline.options import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in (
    'MODEL', 'INPUT', 'OUTPUT', 'PROJECT', 'REGION', 'TEMP_LOCATION', 'FLINK_MASTER')}


def launch(script, *args, **env):
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), '--print_only', *args],
                        env={**CLEAN_ENV, 'PYTHON': sys.executable, **env},
                        capture_output=True, text=True)


def job_args(proc):
  """The job arguments of a printed command (after `python -m tf_batch_predict.pipeline`)."""
  assert proc.returncode == 0, proc.stderr
  words = shlex.split(proc.stdout)
  assert words[:3] == [sys.executable, '-m', 'tf_batch_predict.pipeline']
  return words[3:]


def test_dataflow_from_flags_and_environment():
  args = job_args(launch('dataflow.sh', '--model=gs://b/m', '--input=gs://b/in/*.jsonl',
                         '--output=gs://b/out', '--subnetwork=regions/r/subnetworks/s',
                         '--key_field=id', '--experiments=use_runner_v2',
                         PROJECT='my-project', TEMP_LOCATION='gs://b/tmp', MAX_WORKERS='50',
                         SERVICE_ACCOUNT='sa@p.iam.gserviceaccount.com'))
  for expected in ['--runner=DataflowRunner', '--project=my-project', '--region=us-central1',
                   '--temp_location=gs://b/tmp', '--staging_location=gs://b/tmp',
                   '--max_num_workers=50', '--machine_type=n2-standard-4',
                   '--service_account_email=sa@p.iam.gserviceaccount.com',
                   '--subnetwork=regions/r/subnetworks/s', f'--setup_file={ROOT}/setup.py',
                   '--key_field=id', '--experiments=use_runner_v2']:
    assert expected in args
  options = parse_args(args)  # the job accepts every argument
  assert options.runner == 'DataflowRunner' and options.key_field == 'id'


@pytest.mark.parametrize('given, flag, path', [
    (['--model=/data/model'], '--model', '/data/model'),
    (['--input=in/*.jsonl'], '--input', 'in/*.jsonl'),
    # Each pattern of --input, split as the job splits them ([,] is one).
    (['--input=gs://b/[,]x.jsonl, ./more/*.jsonl'], '--input', './more/*.jsonl'),
    (['--output', 'out'], '--output', 'out'),
    (['--temp_location=/tmp/t'], '--temp_location', '/tmp/t'),
    (['--staging_location=file:///tmp/s'], '--staging_location', 'file:///tmp/s'),
])
@pytest.mark.parametrize('print_only', [True, False])
def test_dataflow_refuses_local_paths_in_one_line(given, flag, path, print_only):
  """Dataflow's workers cannot reach this machine's files: refused before
  anything is printed or submitted."""
  paths = ['--model=gs://b/m', '--input=gs://b/i/*', '--output=gs://b/o',
           '--temp_location=gs://b/t']
  paths = [p for p in paths if not p.startswith(given[0].split('=')[0] + '=')]
  args = [*paths, *given, '--project=p']
  proc = launch('dataflow.sh', *args) if print_only else run_script('dataflow.sh', *args)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.splitlines() == [
      f'launch/dataflow.sh: {flag}: {path} is not a gs:// path; paths must be gs:// on '
      "Dataflow (its workers cannot reach this machine's files)"]
  # The same with a gs:// path: printed.
  job_args(launch('dataflow.sh', *paths, '--project=p', *(
      [f'{flag}=gs://b/x,gs://b/[,]y'] if flag == '--input' else [f'{flag}=gs://b/x'])))


def test_dataflow_custom_container_replaces_setup_file():
  args = job_args(launch('dataflow.sh', '--sdk_container_image=eu.gcr.io/p/batch:1',
                         MODEL='gs://b/m', INPUT='gs://b/i', OUTPUT='gs://b/o',
                         PROJECT='p', TEMP_LOCATION='gs://b/t'))
  assert '--sdk_container_image=eu.gcr.io/p/batch:1' in args
  assert not any(a.startswith('--setup_file') for a in args)


@pytest.mark.parametrize('script, missing', [
    ('dataflow.sh', ['--input', '--output', '--project', '--temp_location']),
    ('flink.sh', ['--input', '--output', '--flink_master', '--sdk_container_image']),
    ('local.sh', ['--input', '--output']),
    ('portable.sh', ['--input', '--output']),
])
def test_missing_values_fail_before_submitting_one_line_each(script, missing):
  proc = launch(script, '--model=m')
  assert proc.returncode == 2 and proc.stdout == ''
  lines = proc.stderr.strip().splitlines()
  assert [line.split('missing ')[1].split(' ')[0] for line in lines] == missing
  assert all(line.startswith(f'launch/{script}: missing --') for line in lines)


def test_flink_command_line():
  args = job_args(launch('flink.sh', '--flink_master=flink:8081', '--parallelism=8',
                         '--flink_job_server_jar=/opt/beam-flink-job-server.jar',
                         MODEL='gs://b/m', INPUT='gs://b/i', OUTPUT='gs://b/o',
                         ENVIRONMENT_TYPE='EXTERNAL', ENVIRONMENT_CONFIG='pool:50000'))
  for expected in ['--runner=FlinkRunner', '--flink_master=flink:8081', '--parallelism=8',
                   '--environment_type=EXTERNAL', '--environment_config=pool:50000',
                   '--flink_job_server_jar=/opt/beam-flink-job-server.jar']:
    assert expected in args
  assert parse_args(args).runner == 'FlinkRunner'


def test_portable_and_local_defaults():
  args = job_args(launch('portable.sh', MODEL='m', INPUT='i', OUTPUT='o'))
  assert {'--runner=PortableRunner', '--job_endpoint=embed',
          '--environment_type=LOOPBACK'} <= set(args)
  proc = launch('portable.sh', '--environment_type=EXTERNAL', MODEL='m', INPUT='i', OUTPUT='o')
  assert proc.returncode == 2 and 'missing --environment_config' in proc.stderr
  args = job_args(launch('local.sh', '--direct_num_workers=2', MODEL='m', INPUT='i',
                         OUTPUT='o'))
  assert {'--runner=FnApiRunner', '--direct_num_workers=2',
          '--direct_running_mode=in_memory'} <= set(args)
  assert parse_args(args).runner == 'FnApiRunner'


def test_local_script_runs_the_job(model_dir, tmp_path):
  with open(tmp_path / 'in.jsonl', 'w') as f:
    f.write('[1, 2]\n[3]\n')
  proc = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local.sh'),
                         f'--model={model_dir / "ragged"}', f'--input={tmp_path / "in.jsonl"}',
                         f'--output={tmp_path / "out"}'],
                        env={**CLEAN_ENV, 'PYTHON': sys.executable}, capture_output=True,
                        text=True, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert 'predictions          2' in proc.stdout


def test_flink_workers_get_an_image_with_the_package_or_a_worker_pool():
  """Beam's default worker image lacks the package and TensorFlow: flink.sh
  wants an image (built from launch/Dockerfile) or a worker pool, and the
  image it is given is the one Beam's portable runner starts workers from."""
  from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions
  from apache_beam.transforms.environments import DockerEnvironment, Environment
  required = dict(MODEL='gs://b/m', INPUT='gs://b/i', OUTPUT='gs://b/o', FLINK_MASTER='f:8081')
  proc = launch('flink.sh', **required)
  assert proc.returncode == 2 and proc.stdout == ''
  [line] = proc.stderr.strip().splitlines()
  version = f'{sys.version_info.major}.{sys.version_info.minor}'
  assert line.startswith('launch/flink.sh: missing --sdk_container_image')
  assert f'--build-arg PYTHON_VERSION={version}' in line and 'make image' in line
  for given in (['--sdk_container_image=eu.gcr.io/p/bp:1'],
                ['--environment_config=eu.gcr.io/p/bp:1'],
                ['--sdk_container_image', 'eu.gcr.io/p/bp:1', '--environment_type=DOCKER']):
    args = job_args(launch('flink.sh', *given, **required))
    options = parse_args(args)
    environment = Environment.from_options(
        PipelineOptions(list(options.beam_args)).view_as(PortableOptions))
    assert isinstance(environment, DockerEnvironment)
    assert environment.container_image == 'eu.gcr.io/p/bp:1'
  proc = launch('flink.sh', '--sdk_container_image=a:1', '--environment_config=b:1', **required)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  proc = launch('flink.sh', '--environment_type=EXTERNAL', **required)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ('launch/flink.sh: missing --environment_config '
                                 '(or environment variable ENVIRONMENT_CONFIG)')
  proc = launch('flink.sh', '--environment_type=LOOPBACK', **required)
  assert proc.returncode == 2 and 'is not DOCKER, EXTERNAL or PROCESS' in proc.stderr


def test_dockerfile_copies_the_package_and_keeps_beams_entry_point():
  """The image's Python and Beam versions are build arguments whose defaults
  are the launcher's (workers unpickle what the launcher pickled); `make
  image` passes the virtualenv's."""
  import apache_beam
  with open(os.path.join(ROOT, 'launch', 'Dockerfile')) as f:
    lines = [l.strip() for l in f if l.strip() and not l.startswith('#')]
  first_from = next(i for i, l in enumerate(lines) if l.startswith('FROM'))
  build_args = dict(l.split()[1].split('=', 1) for l in lines[:first_from]
                    if l.startswith('ARG'))
  assert build_args == {'PYTHON_VERSION': f'{sys.version_info.major}.{sys.version_info.minor}',
                        'BEAM_VERSION': apache_beam.__version__}
  assert lines[first_from] == 'FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}'
  copied = [l.split()[1] for l in lines if l.startswith('COPY')]
  assert {'pipeline', 'transforms', 'setup.py'} <= set(copied)
  assert all(os.path.exists(os.path.join(ROOT, c)) for c in copied)
  assert not any(l.startswith(('ENTRYPOINT', 'CMD')) for l in lines)
  make = subprocess.run(['make', '-n', 'image', 'IMAGE=reg/bp:1', f'PY={sys.executable}',
                         'STAMP=Makefile'], cwd=ROOT, capture_output=True, text=True)
  assert make.returncode == 0, make.stderr
  command = make.stdout.replace('\\\n', ' ')
  assert 'docker build -f launch/Dockerfile' in command and '-t reg/bp:1' in command


def test_options_as_separate_words_and_user_options_replace_script_defaults():
  """`--name value` works as `--name=value` does, for parameters and for
  options passed through; a Beam option the user gives (or its alias)
  replaces the script's default instead of appearing twice."""
  args = job_args(launch('dataflow.sh', '--project', 'my-project', '--model', 'gs://b/m',
                         '--input', 'gs://b/in/*.jsonl', '--output=gs://b/out',
                         '--temp_location', 'gs://b/tmp', '--worker_machine_type=n2-highmem-8',
                         '--max_num_workers', '99', '--key_field', 'id'))
  assert '--project=my-project' in args and '--model=gs://b/m' in args
  assert not any(a.startswith('--machine_type') for a in args)
  assert '--worker_machine_type=n2-highmem-8' in args
  assert [a for a in args if a.startswith('--max_num_workers')] == ['--max_num_workers']
  assert args[args.index('--max_num_workers') + 1] == '99'
  options = parse_args(args)
  assert options.key_field == 'id' and options.runner == 'DataflowRunner'
  worker = [a for a in options.beam_args if 'machine_type' in a]
  assert worker == ['--worker_machine_type=n2-highmem-8']
  proc = launch('dataflow.sh', '--project')
  assert proc.returncode == 2
  assert proc.stderr.strip() == ('launch/dataflow.sh: --project needs a value '
                                 '(--project=VALUE or --project VALUE)')


def run_script(script, *args, **env):
  """The script as a user runs it: no --print_only added."""
  return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args],
                        env={**{k: v for k, v in CLEAN_ENV.items()
                                if k not in ('PRINT_ONLY', 'SKIP_PREFLIGHT')},
                             'PYTHON': sys.executable, **env},
                        capture_output=True, text=True)


def printed(proc):
  """The job arguments of a command printed, not run."""
  assert proc.returncode == 0, proc.stderr
  words = shlex.split(proc.stdout)
  assert words[:3] == [sys.executable, '-m', 'tf_batch_predict.pipeline'], proc.stdout
  return words[3:]


LOCAL = ['--model=/nonexistent', '--input=in/*', '--output=/tmp/x']
DATAFLOW = ['--model=gs://b/m', '--input=gs://b/i/*', '--output=gs://b/o', '--project=p',
            '--temp_location=gs://b/t']


@pytest.mark.parametrize('given, env', [
    (['--print_only'], {}),
    (['--print_only=1'], {}),
    (['--print_only=true'], {}),
    (['--print_only=YES'], {}),
    (['--print_only=On'], {}),
    ([], {'PRINT_ONLY': 'true'}),
    ([], {'PRINT_ONLY': '1'}),
    ([], {'PRINT_ONLY': 'Yes'}),
    (['--print_only'], {'PRINT_ONLY': 'false'}),  # the flag wins
])
def test_print_only_in_every_spelling_prints_and_runs_nothing(given, env):
  args = printed(run_script('local.sh', *LOCAL, *given, **env))
  assert args[:3] == LOCAL and not any('print_only' in a for a in args)


@pytest.mark.parametrize('given, env', [
    (['--print_only=0'], {}),
    (['--print_only=no'], {'PRINT_ONLY': '1'}),  # the flag wins
    (['--print_only=OFF'], {}),
    ([], {'PRINT_ONLY': 'False'}),
])
def test_print_only_off_runs_the_job(given, env, tmp_path):
  proc = run_script('local.sh', '--model=/nonexistent', f'--input={tmp_path}/none/*',
                    f'--output={tmp_path}/out', *given, **env)
  # The job itself ran, and stopped at the missing input (one line, exit 2).
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.splitlines() == [
      f'batch-predict: error: --input: {tmp_path}/none/* matches no file']


@pytest.mark.parametrize('script, given, env, expected', [
    ('local.sh', ['--print_only=maybe'], {}, "launch/local.sh: --print_only: 'maybe' is "
     'neither true/1/yes/on nor false/0/no/off'),
    ('local.sh', [], {'PRINT_ONLY': 'sure'}, "launch/local.sh: environment variable PRINT_ONLY: "
     "'sure' is neither true/1/yes/on nor false/0/no/off"),
    ('dataflow.sh', ['--print_only', '--skip_preflight=2'], {}, "launch/dataflow.sh: "
     "--skip_preflight: '2' is neither true/1/yes/on nor false/0/no/off"),
    ('dataflow.sh', ['--print_only'], {'SKIP_PREFLIGHT': 'y'}, "launch/dataflow.sh: environment "
     "variable SKIP_PREFLIGHT: 'y' is neither true/1/yes/on nor false/0/no/off"),
    # A yes/no flag takes no next word as its value; the word is no option's.
    ('dataflow.sh', ['--print_only', '--skip_preflight', '1'], {}, "launch/dataflow.sh: "
     "unexpected argument '1': --skip_preflight takes no separate value (give "
     "--skip_preflight=1)"),
    ('local.sh', ['--print_only', 'true'], {}, "launch/local.sh: unexpected argument 'true': "
     '--print_only takes no separate value (give --print_only=true)'),
    ('local.sh', ['--print_only', '--key_field=id', 'extra'], {}, "launch/local.sh: unexpected "
     "argument 'extra' (options are --name=VALUE or --name VALUE)"),
])
def test_a_yes_no_value_that_is_neither_is_one_line(script, given, env, expected):
  proc = run_script(script, *(LOCAL if script == 'local.sh' else DATAFLOW), *given, **env)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.splitlines() == [expected]


@pytest.mark.parametrize('given, env, preflight', [
    (['--skip_preflight'], {}, False),
    (['--skip_preflight=TRUE'], {}, False),
    (['--skip_preflight=on'], {}, False),
    (['--skip_preflight=no'], {'SKIP_PREFLIGHT': 'yes'}, True),
    ([], {'SKIP_PREFLIGHT': 'true'}, False),
    ([], {'SKIP_PREFLIGHT': 'Off'}, True),
    ([], {}, True),
])
def test_skip_preflight_in_every_spelling(given, env, preflight):
  args = printed(run_script('dataflow.sh', '--print_only', *DATAFLOW, *given, **env))
  assert ('--preflight' in args) == preflight
  assert not any('skip_preflight' in a for a in args)
  assert parse_args(args).preflight == preflight
