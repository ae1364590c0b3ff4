"""Every file a pattern matches is read exactly once, by its exact name,
whatever characters the name holds, locally and in a bucket; `**` matches
zero or more folders; a pattern that can match the run's own output is a
configuration error. Real models, real pipelines, real files."""
import collections
import gzip
import json
import os
import re
import urllib.parse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import cloud
from tests.helpers import assert_conserved, read_jsonl, run_job
from tf_batch_predict.pipeline import cli, config as job_config, evaluate, outputs
from tf_batch_predict.pipeline.options import parse_args
from tf_batch_predict.transforms import file_patterns

BUCKET = 'file-names-test'
# Names that are patterns of other names here (`q?` of `q1`, `br[1]` of `br1`,
# `s*` of `s8`), hold characters some matcher treats specially, or are not
# UTF-8 (bytes). The model: y = 3 * x for x float32[2].
PATTERN_NAMES = ['q?.jsonl', 'q1.jsonl', 'br[1].jsonl', 'br1.jsonl', 'back\\slash.jsonl',
                 's*.jsonl', 's8.jsonl', '[!x].jsonl', 'a]b.jsonl', 'a{b,c}.jsonl',
                 'sp ace.jsonl', 'quo"te\'s.jsonl', 'ünï ☃.jsonl', '50%.jsonl', 'a%20b.jsonl',
                 '.hidden.jsonl', 'g[1].jsonl.gz', 'g1.jsonl.gz', 'c[1].csv', 'c,1.csv',
                 'r[1].json', 'p[1].parquet', 'p?.parquet']
LOCAL_ONLY_NAMES = ['new\nline.jsonl', b'caf\xe9.jsonl', b'\xff[1].csv']


def _name_bytes(name) -> bytes:
  return name if isinstance(name, bytes) else name.encode()


def _file_bytes(name, ids) -> bytes:
  """A file of instances `ids` (x = [i, 1] for the i-th) in the format its name says."""
  rows = [{'id': key, 'x': [float(i), 1.0]} for i, key in enumerate(ids)]
  text = _name_bytes(name).decode('utf-8', 'replace')
  if text.endswith('.csv'):
    return ('id,x\n' + ''.join(f'{r["id"]},"{json.dumps(r["x"])}"\n' for r in rows)).encode()
  if text.endswith('.json'):
    return json.dumps({'instances': rows}).encode()
  if text.endswith('.parquet'):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({'id': [r['id'] for r in rows], 'x': [r['x'] for r in rows]}), sink)
    return sink.getvalue().to_pybytes()
  data = ''.join(json.dumps(r) + '\n' for r in rows).encode()
  return gzip.compress(data) if text.endswith('.gz') else data


def _instances(names) -> dict:
  """name -> the ids of its instances (1 to 4 per file, each id unique)."""
  return {name: [f'f{n}-{i}' for i in range(1 + n % 4)] for n, name in enumerate(names)}


def _write(folder, contents: dict) -> None:
  os.makedirs(folder, exist_ok=True)
  for name, ids in contents.items():
    with open(os.path.join(os.fsencode(folder), _name_bytes(name)), 'wb') as f:
      f.write(_file_bytes(name, ids))


def _ids(records) -> collections.Counter:
  return collections.Counter(str(r['id']) for r in records)


def _check_by_key(contents, predictions, errors, summary):
  assert_conserved(summary, predictions, errors)
  assert errors == []
  expected = collections.Counter(i for ids in contents.values() for i in ids)
  assert _ids(predictions) == expected  # every instance of every file, once
  assert summary['input_files'] == len(contents)


def _check_by_location(contents, predictions, base=b''):
  """Without a key: the instances of each file carry its name (relative to
  `base`) by the documented rule (unquote_to_bytes gives the name's bytes),
  once each."""
  per_file = collections.Counter(base + urllib.parse.unquote_to_bytes(p['filename'])
                                 for p in predictions)
  assert per_file == {_name_bytes(n): len(ids) for n, ids in contents.items()}
  locations = [(p['filename'], p.get('offset', p.get('index'))) for p in predictions]
  assert len(set(locations)) == len(locations)
  for p in predictions:
    p['filename'].encode('utf-8')  # valid text


def test_escape_and_translate_match_each_name_only_itself():
  names = [_name_bytes(n).decode('utf-8', 'surrogateescape')
           for n in PATTERN_NAMES + LOCAL_ONLY_NAMES]
  for name in names:
    regex = file_patterns.compile_pattern(file_patterns.escape(f'/d/{name}'))
    assert [n for n in names if regex.match(f'/d/{n}')] == [name]
    text = file_patterns.name_text(name)
    assert urllib.parse.unquote_to_bytes(text) == os.fsencode(name)
    text.encode('utf-8')
  regex = file_patterns.compile_pattern('/d/**/*.jsonl')
  assert all(regex.match(p) for p in ['/d/a.jsonl', '/d/x/a.jsonl', '/d/x/y/.a.jsonl'])
  assert not any(regex.match(p) for p in ['/d/a.csv', '/e/a.jsonl', '/dx/a.jsonl'])
  assert not file_patterns.compile_pattern('/d/*.jsonl').match('/d/x/a.jsonl')
  assert file_patterns.compile_pattern('/d/**.jsonl').match('/d/x/y/a.jsonl')


def test_sets_with_dashes_match_as_fnmatch_without_a_warning():
  """`[+--]` is the range from `+` to `-`; Python's re warned of `--` on
  stderr (a set difference to come)."""
  import fnmatch
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    for body in ('+--', '--a', '---', '--', '-', 'a-', 'a-c-e', '!--', '!a-', 'dbn', '&&', '||'):
      regex = file_patterns.compile_pattern(f'[{body}]')
      for ch in '-+,.abcden&|z!':
        assert bool(regex.match(ch)) == fnmatch.fnmatchcase(ch, f'[{body}]'), (body, ch)


def test_odd_names_are_each_read_once_locally_with_join_and_evaluate(model_dir, tmp_path):
  contents = _instances(PATTERN_NAMES + LOCAL_ONLY_NAMES)
  data = tmp_path / 'in[1]'  # the folder's own name looks like a pattern too
  _write(str(data), contents)
  _write(str(tmp_path / 'in1'), {'q1.jsonl': ['decoy']})  # what `in[1]` matches as a pattern
  pattern = f'{file_patterns.escape(str(data))}/*'
  model = f'--model={model_dir / "novars"}'
  _check_by_key(contents, *run_job(str(tmp_path / 'out key'), model, f'--input={pattern}',
                                   '--key_field=id'))
  predictions, errors, summary = run_job(str(tmp_path / 'out 1'), model, f'--input={pattern}')
  assert_conserved(summary, predictions, errors)
  assert errors == [] and summary['instances_read'] == sum(map(len, contents.values()))
  _check_by_location(contents, predictions)
  for p in predictions:
    assert p['y'][1] == 3.0

  # The join reads the same files again, by location (no key), once each.
  joined = tmp_path / 'joined'
  assert cli.main(['join', f'--input={pattern}', f'--predictions={tmp_path / "out 1"}',
                   f'--output={joined}']) == 0
  rows = read_jsonl(str(joined / 'joined-*.jsonl'))
  assert _ids(rows) == collections.Counter(i for ids in contents.values() for i in ids)
  assert all(r['y'][0] == 3.0 * float(r['id'].split('-')[1]) for r in rows)

  # evaluate --joined reads each file its pattern matches once, by its name.
  rows_dir = tmp_path / 'rows'
  rows_dir.mkdir()
  names = ['br[1].jsonl', 'br1.jsonl', 's*.jsonl', b'caf\xe9.jsonl', 'back\\slash.jsonl']
  for n, name in enumerate(names):
    with open(os.path.join(os.fsencode(rows_dir), _name_bytes(name)), 'w') as f:
      f.write(''.join(json.dumps({'l': i % 2, 'p': 0.2 + 0.6 * (i % 2)}) + '\n'
                      for i in range(n + 2)))
  assert evaluate.main([f'--joined={rows_dir}/*.jsonl', '--label_field=l',
                        '--prediction_field=p', f'--output={tmp_path / "ev"}']) == 0
  metrics = json.loads((tmp_path / 'ev' / 'metrics.json').read_text())
  assert metrics['counts']['pairs'] == sum(n + 2 for n in range(len(names)))
  assert metrics['classification']['accuracy'] == 1.0


@pytest.mark.parametrize('command', [[], ['join', '--predictions={out}'], ['evaluate',
                                      '--joined={data}/*', '--label_field=l',
                                      '--prediction_field=p']])
def test_an_output_folder_named_like_a_pattern_is_refused(model_dir, tmp_path, capsys, command):
  """Beam's file writers and its delete match an output path as a pattern,
  so `out[1]` would fail or touch `out1`: one line, exit status 2."""
  data = tmp_path / 'in'
  _write(str(data), _instances(['a.jsonl']))
  run_job(str(tmp_path / 'out'), f'--model={model_dir / "novars"}', f'--input={data}/*')
  (tmp_path / 'out1').mkdir()
  (tmp_path / 'out1' / 'metrics.json').write_text('{}')
  args = [a.format(out=tmp_path / 'out', data=data) for a in command]
  args += [] if command else [f'--model={model_dir / "novars"}']
  args += [] if command[:1] == ['evaluate'] else [f'--input={data}/*']
  capsys.readouterr()
  assert cli.main([*args, f'--output={tmp_path / "out[1]"}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "holds `*`, `?` or `[`, which Beam's file writers" in err[0], err
  assert not os.path.exists(tmp_path / 'out[1]')
  assert os.listdir(tmp_path / 'out1') == ['metrics.json']


def test_a_name_that_is_not_utf8_is_named_in_file_errors(model_dir, tmp_path):
  """A file that cannot be read is one `file` error naming it by the rule,
  in the error records and summary.json alike; the rest is read."""
  data = tmp_path / 'in'
  contents = _instances(['ok.jsonl'])
  _write(str(data), contents)
  os.symlink(b'/nowhere', os.path.join(os.fsencode(data), b'caf\xe9 %41.jsonl'))
  predictions, errors, summary = run_job(str(tmp_path / 'out'), f'--model={model_dir / "novars"}',
                                         f'--input={data}/*.jsonl', status=4)
  assert_conserved(summary, predictions, errors)
  assert [(e['filename'], e['error']['category']) for e in errors] == [
      ('caf%E9 %2541.jsonl', 'file')]
  assert summary['incomplete_files'] == [f'{data}/caf%E9 %2541.jsonl']
  _check_by_location(contents, predictions)


def test_a_folder_that_is_not_utf8_in_a_pattern_or_as_the_output(model_dir, tmp_path, capsys):
  """A pattern's folder that is not UTF-8 is read, the pattern written in
  summary.json with %XX; an --output that is not UTF-8 (Beam cannot hold
  it) is a configuration error that creates nothing."""
  data = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b'caf\xe9'))
  contents = _instances(['ok.jsonl'])
  _write(data, contents)
  predictions, errors, summary = run_job(str(tmp_path / 'out'), f'--model={model_dir / "novars"}',
                                         f'--input={data}/*.jsonl')
  assert_conserved(summary, predictions, errors)
  assert [i['pattern'] for i in summary['inputs']] == [f'{tmp_path}/caf%E9/*.jsonl']
  assert os.path.exists(tmp_path / 'out' / 'report.html')
  capsys.readouterr()
  output = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b'out\xe9'))
  rc = cli.main([f'--model={model_dir / "novars"}', f'--input={data}/*.jsonl', f'--output={output}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and 'out%E9 is not valid UTF-8' in err[0], err
  assert not os.path.lexists(output)


def test_files_removed_after_matching_are_file_errors(model_dir, tmp_path):
  """Matching happens before the pipeline; a file gone by the time it is
  read is a `file` error naming it, in every format, never skipped."""
  contents = _instances(['a.jsonl', 'gone[1].jsonl', 'gone.jsonl.gz', 'gone.csv', 'gone.json',
                         'gone.parquet'])
  data = tmp_path / 'in'
  _write(str(data), contents)
  options = parse_args([f'--model={model_dir / "novars"}', f'--input={data}/*',
                        f'--output={tmp_path / "out"}', '--key_field=id',
                        '--max_error_fraction=1'])
  outputs.prepare(options.output)
  config = job_config.resolve(options)
  for name in contents:
    if name.startswith('gone'):
      os.remove(data / name)
  status, summary = cli.run_and_promote(config, outputs.new_run_id())
  assert status == 4
  predictions = read_jsonl(str(tmp_path / 'out' / 'predictions-*.jsonl'))
  errors = read_jsonl(str(tmp_path / 'out' / 'errors-*.jsonl'))
  assert_conserved(summary, predictions, errors)
  assert _ids(predictions) == collections.Counter(contents['a.jsonl'])
  assert sorted(e['filename'] for e in errors) == sorted(n for n in contents if n != 'a.jsonl')
  assert all(e['error']['category'] == 'file' and 'No such file' in e['error']['message']
             for e in errors)


def _nested(root) -> dict:
  """{relative path: ids}: files in root and in two levels of folders below."""
  contents = _instances(['a.jsonl', 'b[1].jsonl', 'sub/c.jsonl', 'sub/deeper/d.jsonl',
                         'sub/deeper/e.csv', 'other/f.jsonl'])
  for name, ids in contents.items():
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(_file_bytes(name, ids))
  return contents


@pytest.mark.parametrize('pattern, wanted', [
    ('**/*.jsonl', r'.*\.jsonl'),  # zero or more folders: root's own files too
    ('**.jsonl', r'.*\.jsonl'),
    ('sub/**/*', r'sub/.*'),
    ('*/*.jsonl', r'[^/]+/[^/]+\.jsonl'),
    ('**/deeper/*', r'sub/deeper/.*'),
])
def test_double_star_matches_zero_or_more_folders(model_dir, tmp_path, pattern, wanted):
  contents = _nested(str(tmp_path / 'd'))
  expected = {n: ids for n, ids in contents.items() if re.fullmatch(wanted, n)}
  predictions, errors, summary = run_job(str(tmp_path / 'out'), f'--model={model_dir / "novars"}',
                                         f'--input={tmp_path / "d"}/{pattern}')
  assert errors == [] and summary['input_files'] == len(expected)
  # Names are relative to the pattern's folder (before its first wildcard).
  _check_by_location(expected, predictions, base=file_patterns.literal_folder(pattern).encode())


def test_linked_folders_are_followed_once_without_looping(model_dir, tmp_path):
  contents = _instances(['real/x/a.jsonl', 'real/b.jsonl'])
  for name, ids in contents.items():
    os.makedirs(tmp_path / 'd' / os.path.dirname(name), exist_ok=True)
    (tmp_path / 'd' / name).write_bytes(_file_bytes(name, ids))
  os.symlink('..', tmp_path / 'd' / 'real' / 'x' / 'up')  # a loop
  os.symlink('real', tmp_path / 'd' / 'link')  # the same folder by a second path
  (tmp_path / 'elsewhere').mkdir()
  (tmp_path / 'elsewhere' / 'c.jsonl').write_bytes(_file_bytes('c.jsonl', ['f9-0']))
  os.symlink(tmp_path / 'elsewhere', tmp_path / 'd' / 'real' / 'out')
  predictions, errors, summary = run_job(str(tmp_path / 'out'), f'--model={model_dir / "novars"}',
                                         f'--input={tmp_path}/d/**/*.jsonl')
  assert errors == [] and summary['input_files'] == 3
  # Read once each, under the first path in sorted order: `link` before `real`.
  _check_by_location({'link/x/a.jsonl': contents['real/x/a.jsonl'],
                      'link/b.jsonl': contents['real/b.jsonl'], 'link/out/c.jsonl': ['f9-0']},
                     predictions)


@pytest.mark.parametrize('pattern, output', [
    ('d/*.jsonl', 'd'),
    ('d/**.jsonl', 'd/out'),
    ('d/**/*.jsonl', 'd/out'),
    ('d/**', 'd/x/y'),
    ('d/*', 'd'),
    ('d/*.json', 'd'),  # summary.json
    ('d/*/*', 'd/out'),
])
def test_a_pattern_matching_the_output_is_a_configuration_error(model_dir, tmp_path, capsys,
                                                                 pattern, output):
  _nested(str(tmp_path / 'd'))
  (tmp_path / 'd' / 'x.json').write_text('{"instances": [{"x": [1, 2]}]}')
  rc = cli.main([f'--model={model_dir / "novars"}', f'--input={tmp_path / pattern}',
                 f'--output={tmp_path / output}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and 'where this command writes its output' in err[0], err
  assert f'--input: {tmp_path / pattern} matches {tmp_path / output}/' in err[0]
  assert not os.path.exists(tmp_path / output / 'summary.json')


@pytest.mark.parametrize('pattern, output', [
    ('d/*.jsonl', 'link'),       # the output is a link to the input folder
    ('link/*.jsonl', 'd'),       # the input is read through a link to the output
    ('link/**.jsonl', 'd/out'),
])
def test_an_output_reached_through_a_link_is_a_configuration_error(model_dir, tmp_path, capsys,
                                                                   pattern, output):
  _nested(str(tmp_path / 'd'))
  os.symlink('d', tmp_path / 'link')
  rc = cli.main([f'--model={model_dir / "novars"}', f'--input={tmp_path / pattern}',
                 f'--output={tmp_path / output}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and 'where this command writes its output' in err[0], err
  assert not os.path.exists(tmp_path / output / 'summary.json')


def test_an_invalid_set_in_a_pattern_is_a_configuration_error(model_dir, tmp_path, capsys):
  rc = cli.main([f'--model={model_dir / "novars"}', f'--input={tmp_path}/[z-a].jsonl',
                 f'--output={tmp_path / "out"}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and 'is not a valid pattern' in err[0], err


def test_inputs_beside_the_output_that_it_cannot_match_run_again_alike(model_dir, tmp_path,
                                                                        capsys):
  contents = _nested(str(tmp_path / 'd'))
  expected = {n: ids for n, ids in contents.items() if n == 'sub/deeper/e.csv'}
  first = run_job(str(tmp_path / 'd'), f'--model={model_dir / "novars"}',
                  f'--input={tmp_path}/d/**.csv', '--key_field=id')
  again = run_job(str(tmp_path / 'd'), f'--model={model_dir / "novars"}',
                  f'--input={tmp_path}/d/**.csv', '--key_field=id')
  for predictions, errors, summary in (first, again):
    _check_by_key(expected, predictions, errors, summary)
  # The join checks its own output the same way.
  assert cli.main(['join', f'--input={tmp_path}/d/**', f'--predictions={tmp_path / "d"}',
                   f'--output={tmp_path / "d" / "joined"}']) == 2
  assert 'where this command writes its output' in capsys.readouterr().err


@pytest.fixture(scope='module')
def bucket():
  with cloud.emulated_bucket(BUCKET) as created:
    yield created


def _blob_jsonl(bucket, prefix):
  return [json.loads(line) for blob in bucket.client.list_blobs(bucket, prefix=prefix)
          for line in blob.download_as_text().splitlines() if line.strip()]


def test_odd_names_and_double_star_in_a_bucket(bucket, model_dir, capsys):
  contents = _instances(PATTERN_NAMES)
  for name, ids in contents.items():
    bucket.blob(f'in[1]/{name}').upload_from_string(_file_bytes(name, ids))
  bucket.blob('in1/q1.jsonl').upload_from_string(_file_bytes('q1.jsonl', ['decoy']))
  bucket.blob('in[1]/sub/').upload_from_string(b'')  # a folder placeholder: no file
  pattern = f'gs://{BUCKET}/in[[]1]/*'
  model = f'--model={model_dir / "novars"}'
  assert cli.main([model, f'--input={pattern}', f'--output=gs://{BUCKET}/out 1',
                   '--max_error_fraction=1']) == 0
  predictions = _blob_jsonl(bucket, 'out 1/predictions-')
  errors = _blob_jsonl(bucket, 'out 1/errors-')
  summary = json.loads(bucket.blob('out 1/summary.json').download_as_text())
  assert_conserved(summary, predictions, errors)
  assert errors == []
  _check_by_location(contents, predictions)
  # The join reads them again from the bucket, once each.
  assert cli.main(['join', f'--input={pattern}', f'--predictions=gs://{BUCKET}/out 1',
                   f'--output=gs://{BUCKET}/joined']) == 0
  assert _ids(_blob_jsonl(bucket, 'joined/joined-')) == collections.Counter(
      i for ids in contents.values() for i in ids)

  nested = _instances(['a.jsonl', 'sub/b[1].jsonl', 'sub/deeper/c.jsonl', 'sub/deeper/d.csv'])
  for name, ids in nested.items():
    bucket.blob(f'd/{name}').upload_from_string(_file_bytes(name, ids))
  bucket.blob('d/sub/').upload_from_string(b'')  # a folder placeholder: no file
  for pattern, wanted in (('d/**/*.jsonl', '.jsonl'), ('d/**', '')):
    assert cli.main([model, f'--input=gs://{BUCKET}/{pattern}',
                     f'--output=gs://{BUCKET}/out2', '--key_field=id']) == 0
    predictions = _blob_jsonl(bucket, 'out2/predictions-')
    assert _ids(predictions) == collections.Counter(
        i for name, ids in nested.items() if name.endswith(wanted) for i in ids)
  capsys.readouterr()
  assert cli.main([model, f'--input=gs://{BUCKET}/d/**.jsonl',
                   f'--output=gs://{BUCKET}/d/out']) == 2
  assert 'where this command writes its output' in capsys.readouterr().err
