"""The README and docs/*.md stay true: every command line they show parses, the short
ones run on the demo, and every internal link resolves.

Command lines are taken from the fenced code blocks of README.md and docs/*.md, except
blocks fenced as ```text (outputs, synopses' results, JSON) or ```yaml/```json. A line is
checked when its command is `batch-predict` (also `.venv/bin/batch-predict`),
`python -m tf_batch_predict.pipeline`, `launch/*.sh` or `make`; lines ending in `\\` are
joined, `# comments` dropped. Synopses are checked too: `[--opt=X]` is read as `--opt=X`,
`a|b` as `a`, bracketed prose (`[Beam options]`) and a bare `...` are left out (a bare
`...` stands for the options a command needs, which the check then supplies).

- `batch-predict ...` (and its subcommands inspect, preflight, join, evaluate) must parse
  with the job's own parsers; placeholders (DIR, PATH, gs://bucket/...) are fine.
- The lines that name only the demo's paths, or the quick start's (`my_model`,
  `data/*.jsonl`), run for real on the demo built by launch/make_demo.py, in document
  order (a run before the join that reads it), and must exit 0.
- `launch/*.sh` lines run with `--print_only`; the command they print must parse.
- `make TARGET` names a target of the Makefile (`make -n`).
A broken line fails the test with its file and line number.
"""
import functools
import glob
import os
import pathlib
import re
import shlex
import subprocess
import sys
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
BATCH_PREDICT = str(pathlib.Path(sys.executable).parent / 'batch-predict')
NOT_COMMANDS = {'text', 'yaml', 'json', 'jsonl', 'python', 'dockerfile'}
SUBCOMMANDS = ('inspect', 'preflight', 'join', 'evaluate')
# What a bare `...` stands for, per command: the options it must have to parse.
REQUIRED = {
    'run': ['--model=MODEL', '--input=PATTERN', '--output=DIR'],
    'preflight': ['--model=MODEL', '--input=PATTERN'],
    'inspect': ['--model=MODEL'],
    'join': ['--input=PATTERN', '--predictions=DIR', '--output=DIR'],
    'evaluate': ['--label_field=label', '--prediction_field=p', '--output=DIR'],
    'launch/local.sh': ['--model=MODEL', '--input=PATTERN', '--output=DIR'],
    'launch/portable.sh': ['--model=MODEL', '--input=PATTERN', '--output=DIR'],
    'launch/dataflow.sh': ['--project=p', '--region=r', '--temp_location=gs://b/tmp',
                           '--model=gs://b/m', '--input=gs://b/in/*.jsonl',
                           '--output=gs://b/out'],
    'launch/flink.sh': ['--flink_master=[local]', '--sdk_container_image=IMAGE',
                        '--model=MODEL', '--input=PATTERN', '--output=DIR'],
    'launch/spark.sh': ['--spark_master_url=local[2]', '--sdk_container_image=IMAGE',
                        '--model=MODEL', '--input=PATTERN', '--output=DIR'],
}


# -- reading the pages ----------------------------------------------------------------

def code_blocks(path):
  """(first line number, fence info, lines) of each fenced block."""
  blocks, block, info, start = [], None, '', 0
  for number, line in enumerate(path.read_text().splitlines(), 1):
    fence = re.match(r'\s*(```+|~~~+)\s*(\S*)', line)
    if fence and block is None:
      block, info, start = [], fence.group(2).lower(), number + 1
    elif fence and block is not None:
      blocks.append((start, info, block))
      block = None
    elif block is not None:
      block.append(line)
  return blocks


def _command_kind(words):
  """'run', a subcommand, 'launch/X.sh', 'make' or None."""
  while words and re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', words[0]):
    words = words[1:]  # VAR=value before the command
  if not words:
    return None, []
  first = words[0]
  if first.endswith('batch-predict') and '/' not in first.replace('.venv/bin/', ''):
    rest = words[1:]
  elif (len(words) >= 3 and os.path.basename(first) in ('python', 'python3')
        and words[1:3] == ['-m', 'tf_batch_predict.pipeline']):
    rest = words[3:]
  elif re.fullmatch(r'launch/[\w-]+\.sh', first):
    return first, words[1:]
  elif first == 'make':
    return 'make', words[1:]
  else:
    return None, []
  if rest[:1] and rest[0] in SUBCOMMANDS:
    return rest[0], rest[1:]
  return 'run', rest


def _synopsis(text):
  """A usage line as a command: [--opt=X] as --opt=X, a|b as a, prose dropped."""
  text = re.sub(r'\s\(.*\)\s*$', '', text)  # a trailing remark: (a run: ...)
  def bracket(match):
    inner = match.group(1).strip()
    return ' ' + inner + ' ' if inner.startswith('-') else ' ... '
  previous = None
  while previous != text:
    previous, text = text, re.sub(r'\[([^\[\]]*)\]', bracket, text)
  return re.sub(r'(--[\w-]+=)([^\s|]*)(\|\S*)', r'\1\2', text)


def commands(path):
  """(line number, text, kind, args) of each command line of the page."""
  found = []
  for start, info, lines in code_blocks(path):
    if info in NOT_COMMANDS:
      continue
    index = 0
    while index < len(lines):
      number, text = start + index, lines[index].strip()
      index += 1
      while text.endswith('\\') and index < len(lines):
        text = text[:-1] + ' ' + lines[index].strip()
        index += 1
      # A synopsis continues on indented lines that start with an option or a label.
      while index < len(lines) and re.match(r'\s{8,}(\w+:\s+)?\[?--', lines[index]):
        text += ' ' + re.sub(r'^\s*\w+:\s+', ' ', lines[index])
        index += 1
      text = re.sub(r'\s&\s*$', '', text)
      try:
        words = shlex.split(text, comments=True)
      except ValueError as e:
        found.append((number, text, 'unreadable', [str(e)]))
        continue
      kind, args = _command_kind(words)
      if kind is None:
        continue
      if kind == 'run' or kind in SUBCOMMANDS:
        words = shlex.split(_synopsis(text), comments=True)
        kind, args = _command_kind(words)
      found.append((number, text, kind, args))
  return found


# -- parsing --------------------------------------------------------------------------

def _filled(kind, args):
  """A bare `...` stands for the options the command needs: supply those missing. A
  number's placeholder (`--direct_num_workers=N`) is read as 2."""
  args = [re.sub(r'^(--[\w-]+=)N$', r'\g<1>2', a) for a in args]
  if '...' not in args:
    return args
  args = [a for a in args if a != '...']
  given = {a.split('=', 1)[0] for a in args}
  return args + [a for a in REQUIRED.get(kind, []) if a.split('=', 1)[0] not in given]


def parse(kind, args):
  """Parses ARGS as the job does; raises on a mistake."""
  from tf_batch_predict.pipeline.command import take_log_level, take_option
  from tf_batch_predict.pipeline.options import parse_args, unknown_beam_args, beam_options
  _, args = take_log_level(list(args))
  if kind == 'run':
    parse_args(args)
  elif kind == 'preflight':
    _, args = take_option(args, '--json', takes_value=False)
    parse_args(args, require_output=False)
  elif kind == 'inspect':
    from tf_batch_predict.pipeline import inspect
    inspect._parser().parse_args(args)
  elif kind in ('join', 'evaluate'):
    from tf_batch_predict.pipeline import join, evaluate
    module = join if kind == 'join' else evaluate
    _, rest = module._parser().parse_known_args(args)
    unknown = unknown_beam_args(rest)
    if unknown:
      raise ValueError(f'unknown option {unknown[0]}')
    beam_options(rest)


def check_launch(script, args):
  """`launch/X.sh ... --print_only`: exit 0, and the command it prints parses."""
  result = subprocess.run(['bash', str(ROOT / script), '--print_only'] + args, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  if result.returncode != 0:
    raise ValueError(f'--print_only exits {result.returncode}: {result.stderr.strip()}')
  words = shlex.split(result.stdout)
  kind, job_args = _command_kind(words)
  if kind is None:
    raise ValueError(f'prints no job command: {result.stdout.strip()}')
  parse(kind, job_args)


@functools.lru_cache(maxsize=None)
def _make_targets():
  result = subprocess.run(['make', '-qp'], cwd=ROOT, capture_output=True, text=True)
  return set(re.findall(r'^([\w.-]+):(?!=)', result.stdout, re.M))


def _where(path, number, text):
  return f'{path.relative_to(ROOT)}:{number}: {text}'


ALL_COMMANDS = [(path, *command) for path in PAGES for command in commands(path)]


def test_pages_show_commands():
  kinds = {kind for _, _, _, kind, _ in ALL_COMMANDS}
  assert {'run', 'inspect', 'preflight', 'join', 'evaluate', 'make'} <= kinds, kinds
  assert any(k.startswith('launch/') for k in kinds), kinds


def test_every_command_line_parses():
  failures = []
  for path, number, text, kind, args in ALL_COMMANDS:
    try:
      if kind == 'unreadable':
        raise ValueError(args[0])
      if kind == 'make':
        targets = [a for a in args if '=' not in a and not a.startswith('-')] or ['demo']
        missing = [t for t in targets if t not in _make_targets()]
        if missing:
          raise ValueError(f'no make target {missing[0]!r}')
      elif kind.startswith('launch/'):
        if not (ROOT / kind).exists():
          raise ValueError(f'no script {kind}')
        check_launch(kind, _filled(kind, args))
      else:
        parse(kind, _filled(kind, args))
    except (Exception, SystemExit) as e:  # pylint: disable=broad-except
      failures.append(f'{_where(path, number, text)}\n    {type(e).__name__}: {e}')
  assert not failures, 'command lines that do not parse:\n' + '\n'.join(failures)


# -- running the short ones on the demo -----------------------------------------------

QUICK_START = {'my_model': 'model', 'data/*.jsonl': 'instances/*.jsonl'}


def _on_demo(args, demo, work):
  """ARGS with the demo's and the quick start's paths pointing into DEMO, or None where
  a path is a placeholder or remote (the line is only parsed)."""
  out = []
  for arg in args:
    name, sep, value = arg.partition('=') if arg.startswith('--') else ('', '', arg)
    if value.startswith('out/demo/') or value == 'out/demo':
      value = str(demo / value[len('out/demo/'):]) if value != 'out/demo' else str(demo)
    elif value in QUICK_START:
      value = str(demo / QUICK_START[value])
    elif value.startswith('/tmp/'):
      value = str(work / value[len('/tmp/'):])
    if re.search(r'://|\.\.\.|^[A-Z_]{3,}$', value):
      return None
    out.append(f'{name}{sep}{value}' if name else value)
  # Only lines whose model and inputs are the demo's run (the predictions: a run's above).
  for arg in out:
    name, _, value = arg.partition('=')
    if name in ('--model', '--predictions') and not (work / value).exists():
      return None
    if name in ('--input', '--labels', '--joined') and not any(
        glob.glob(str(work / p.strip())) for p in value.split(',')):
      return None
  return out


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  path = tmp_path_factory.mktemp('docs') / 'demo'
  subprocess.run([sys.executable, str(ROOT / 'launch' / 'make_demo.py'), str(path)],
                 cwd=ROOT, check=True, capture_output=True, timeout=300)
  return path


def test_short_commands_run_on_the_demo(demo, tmp_path):
  ran, failures = [], []
  for path in PAGES:
    work = tmp_path / path.stem
    work.mkdir()
    for number, text, kind, args in commands(path):
      if kind not in ('run',) + SUBCOMMANDS or '...' in args:
        continue
      real = _on_demo(args, demo, work)
      if real is None or any(w in text for w in ('--runner', '--direct_num_workers',
                                                '--template_location', '--dry_run')):
        continue
      prefix = [BATCH_PREDICT] + ([] if kind == 'run' else [kind])
      result = subprocess.run(prefix + real, cwd=work, capture_output=True, text=True,
                              timeout=120)
      ran.append(kind)
      if result.returncode != 0:
        failures.append(f'{_where(path, number, text)}\n    exit status {result.returncode}: '
                        f'{result.stderr.strip()[-2000:]}')
  assert not failures, 'command lines that fail on the demo:\n' + '\n'.join(failures)
  assert {'run', 'inspect', 'preflight', 'join', 'evaluate'} <= set(ran), ran


# -- links ----------------------------------------------------------------------------

def _slug(heading):
  """GitHub's anchor for a heading."""
  text = re.sub(r'`|\*\*|\*|<[^>]+>', '', heading.strip()).lower()
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
  text = ''.join(c for c in text if c in ' -_' or unicodedata.category(c)[0] in 'LN')
  return text.replace(' ', '-')


@functools.lru_cache(maxsize=None)
def anchors(path):
  found, counts, fenced = set(), {}, False
  for line in path.read_text().splitlines():
    if re.match(r'\s*(```|~~~)', line):
      fenced = not fenced
      continue
    heading = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
    if heading and not fenced:
      slug = _slug(heading.group(1))
      n = counts.get(slug, 0)
      counts[slug] = n + 1
      found.add(slug if n == 0 else f'{slug}-{n}')
  return frozenset(found)


def links(path):
  fenced = False
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if re.match(r'\s*(```|~~~)', line):
      fenced = not fenced
      continue
    if fenced:
      continue
    line = re.sub(r'`[^`]*`', '', line)  # code spans hold no links
    for target in re.findall(r'\]\(([^)\s]+)\)', line):
      if not re.match(r'[a-z]+:', target):
        yield number, target


def test_internal_links_resolve():
  broken = []
  for path in PAGES:
    for number, target in links(path):
      file_part, _, anchor = target.partition('#')
      target_path = (path.parent / file_part).resolve() if file_part else path
      if not target_path.exists():
        broken.append(f'{path.relative_to(ROOT)}:{number}: {target}: no file {file_part}')
      elif anchor and target_path.suffix == '.md' and anchor not in anchors(target_path):
        broken.append(f'{path.relative_to(ROOT)}:{number}: {target}: no heading '
                      f'#{anchor} in {target_path.relative_to(ROOT)}')
  assert not broken, 'links that do not resolve:\n' + '\n'.join(broken)


def test_slugs_are_githubs():
  assert _slug('Knowing the model: `batch-predict inspect`') == \
      'knowing-the-model-batch-predict-inspect'
  assert _slug('Outputs, re-runs and exit status') == 'outputs-re-runs-and-exit-status'
  assert _slug('How it works (and why it is fast)') == 'how-it-works-and-why-it-is-fast'
