"""Our code is the package tf_batch_predict: a user's own `pipeline` or
`transforms` (a module in the current folder, on PYTHONPATH, or another
installed distribution) never replaces it, and it never replaces theirs."""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# A module of the user's that announces itself and stops the process: any
# import of it by the job shows in the output and fails the run.
SHADOW = 'import sys\nprint("USER MODULE {name} IMPORTED")\nsys.exit(7)\n'


def _copy_project(into):
  """The files a build needs, so that building leaves nothing in the checkout."""
  os.makedirs(into)
  shutil.copy(os.path.join(ROOT, 'setup.py'), into)
  for folder in ('pipeline', 'transforms'):
    shutil.copytree(os.path.join(ROOT, folder), os.path.join(into, folder),
                    ignore=shutil.ignore_patterns('__pycache__'))
  return into


def _pip(*args, cwd):
  proc = subprocess.run([sys.executable, '-m', 'pip', '-q', *args], cwd=cwd,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  return proc


def _user_folder(path, names=('pipeline', 'transforms')):
  os.makedirs(path, exist_ok=True)
  for name in names:
    with open(os.path.join(path, f'{name}.py'), 'w') as f:
      f.write(SHADOW.format(name=name))
  with open(os.path.join(path, 'in.jsonl'), 'w') as f:
    f.write('[1, 2]\n[3]\n[4, 5, 6]\n')
  return path


def _check_run(proc, out):
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'USER MODULE' not in proc.stdout + proc.stderr
  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['predictions'] == 3 and summary['errors'] == 0
  totals = []
  for name in os.listdir(out):
    if name.startswith('predictions-'):
      with open(os.path.join(out, name)) as f:
        totals += [json.loads(line)['total'] for line in f]
  assert sorted(totals) == [3.0, 3.0, 15.0]


def test_a_fresh_virtualenv_with_only_us_has_no_pipeline_or_transforms(tmp_path):
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  project = _copy_project(str(tmp_path / 'project'))
  # Built as workers build it from setup.py (a wheel), with this setuptools.
  _pip('wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'dist'), project,
       cwd=project)
  wheel, = (tmp_path / 'dist').iterdir()
  _pip('--python', str(venv / 'bin' / 'python'), 'install', '--no-deps', str(wheel),
       cwd=project)
  site = subprocess.run([str(venv / 'bin' / 'python'), '-c',
                         'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  ours = {n for n in os.listdir(site) if not n.startswith(('_', 'pip'))}
  assert {n for n in ours if not n.endswith('.dist-info')} == {'tf_batch_predict'}
  assert sorted(os.listdir(os.path.join(site, 'tf_batch_predict'))) == ['pipeline', 'transforms']
  clean = tmp_path / 'clean'
  clean.mkdir()
  for name in ('pipeline', 'transforms'):
    proc = subprocess.run([str(venv / 'bin' / 'python'), '-c', f'import {name}'], cwd=clean,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and f"No module named '{name}'" in proc.stderr
  proc = subprocess.run([str(venv / 'bin' / 'python'), '-c',
                         'import tf_batch_predict.pipeline, tf_batch_predict.transforms.read, '
                         'tf_batch_predict.transforms.model, tf_batch_predict.transforms.write, '
                         'tf_batch_predict.transforms.rejoin'],
                        cwd=clean, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


def test_a_users_pipeline_and_transforms_in_the_current_folder_and_pythonpath(model_dir,
                                                                             tmp_path):
  work = _user_folder(str(tmp_path / 'work'))
  env = {**os.environ, 'PYTHONPATH': '.', 'PYTHON': sys.executable}
  # The user's module is what plain `import pipeline` finds there.
  proc = subprocess.run([sys.executable, '-c', 'import pipeline'], cwd=work, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 7 and 'USER MODULE pipeline' in proc.stdout
  model = f'--model={model_dir / "ragged"}'
  # The command, with local worker processes started from that folder too.
  proc = subprocess.run([os.path.join(BIN, 'batch-predict'), model, '--input=in.jsonl',
                         '--output=out1', '--direct_running_mode=multi_processing',
                         '--direct_num_workers=2'],
                        cwd=work, env=env, capture_output=True, text=True)
  _check_run(proc, os.path.join(work, 'out1'))
  # The launch script, and the subcommands.
  proc = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'local.sh'), model,
                         '--input=in.jsonl', '--output=out2'],
                        cwd=work, env=env, capture_output=True, text=True)
  _check_run(proc, os.path.join(work, 'out2'))
  proc = subprocess.run([os.path.join(BIN, 'batch-predict'), 'inspect', model], cwd=work,
                        env=env, capture_output=True, text=True)
  assert proc.returncode == 0 and 'USER MODULE' not in proc.stdout + proc.stderr
  assert 'serving_default' in proc.stdout


def test_another_distribution_with_top_level_pipeline_and_transforms(model_dir, tmp_path):
  other = tmp_path / 'other'
  (other / 'transforms').mkdir(parents=True)
  (other / 'pipeline.py').write_text(SHADOW.format(name='pipeline'))
  (other / 'transforms' / '__init__.py').write_text(SHADOW.format(name='transforms'))
  (other / 'setup.py').write_text(
      'import setuptools\n'
      "setuptools.setup(name='other-ml-tools', version='1.0', py_modules=['pipeline'],\n"
      "                 packages=['transforms'])\n")
  site = tmp_path / 'site'
  _pip('install', '--no-deps', '--no-build-isolation', '--target', str(site), str(other),
       cwd=str(other))
  assert os.path.exists(site / 'pipeline.py')
  assert any(n.startswith('other_ml_tools') for n in os.listdir(site))
  env = {**os.environ, 'PYTHONPATH': str(site)}
  proc = subprocess.run([sys.executable, '-c', 'import transforms'], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 7  # theirs is what plain `transforms` is
  work = _user_folder(str(tmp_path / 'work'), names=())
  proc = subprocess.run([os.path.join(BIN, 'batch-predict'), f'--model={model_dir / "ragged"}',
                         '--input=in.jsonl', '--output=out'],
                        cwd=work, env=env, capture_output=True, text=True)
  _check_run(proc, os.path.join(work, 'out'))


def _imports():
  """{module: modules of ours it imports}, from the sources' import lines."""
  import ast
  modules = {}
  for folder in ('pipeline', 'transforms'):
    for directory, _, files in os.walk(os.path.join(ROOT, folder)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          modules['tf_batch_predict.' + dotted.removesuffix('.__init__')] = path
  edges = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module:
        found.update([node.module] + [f'{node.module}.{a.name}' for a in node.names])
      elif isinstance(node, ast.Import):
        found.update(a.name for a in node.names)
    edges[module] = {m for m in found if m in modules and m != module}
  return edges


def test_no_module_imports_its_importer_and_transforms_never_import_the_commands():
  edges = _imports()
  assert len(edges) > 40 and edges['tf_batch_predict.pipeline.graph']  # read them all
  circles = []
  for start in edges:  # a path back to `start` from what it imports
    stack, seen = [(start, (start,))], set()
    while stack:
      module, path = stack.pop()
      for target in edges[module]:
        if target == start:
          circles.append(path + (start,))
        elif target not in seen:
          seen.add(target)
          stack.append((target, path + (target,)))
  assert circles == []
  assert not [(m, t) for m, targets in edges.items() for t in targets
              if m.startswith('tf_batch_predict.transforms') and '.pipeline' in t]
