"""The whole job on hostile input: no instance's or file's content can take
it down, every instance ends in exactly one of predictions or errors,
carried values are written exactly as read, and predictions equal the model
called directly on what the definition says each line means."""
import gzip
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.helpers import assert_conserved, run_job
from tests.test_convert_decode import decoder_for, rows_and_feeds
from tests.test_equivalence import MIXED, SETTINGS, jsonl_chunk, jsonl_lines


def _good(i, **extra):
  return json.dumps({'id': i, 'a': [i, 1], 'b': 'x' * (i % 3), 'c': i, 'd': 0.5, **extra})


HOSTILE = {
    'deep_input': '{"id": 101, "a": ' + '[' * 5000 + ']' * 5000 + ', "b": "", "c": 1, "d": 1}',
    'deep_ignored': '{"id": 102, "a": [1, 2], "b": "", "c": 1, "d": 1, "z": '
                    + '[' * 5000 + ']' * 5000 + '}',
    'deep_bare': '[' * 100000,
    'surrogate_key': '{"id": "\\ud800", "a": [1, 2], "b": "", "c": 1, "d": 1}',
    'surrogate_passthrough': '{"id": 105, "p": "a\\udc00", "a": [1, 2], "b": "", "c": 1, "d": 1}',
    'surrogate_ignored': '{"id": 106, "a": [1, 2], "b": "", "c": 1, "d": 1, "z": "\\ud800"}',
    'two_values': '{"id": 107, "a": [1, 2], "b": "", "c": 1, "d": 1} {"id": 108}',
    'split_start': '{"id": 109, "a": [1, 2],',
    'split_end': '"b": "", "c": 1, "d": 1}',
    'repeated': '{"id": 110, "a": [1, 2], "b": "", "c": 1, "c": 2, "d": 1}',
    'bool_float': '{"id": 111, "a": [true, 2], "b": "", "c": 1, "d": 1}',
}
# Valid instances whose carried values no float can hold.
EXACT = {
    'big_key_nan': ('{"id": 123456789012345678901234567890, "a": [NaN, 2], "b": "", '
                    '"c": 1, "d": Infinity, "p": 0.30000000000000001}',
                    '123456789012345678901234567890', '0.30000000000000001'),
    'int64_plus_one': ('{"id": 9223372036854775808, "a": [1, 2], "b": "", "c": 1, "d": 1, '
                       '"p": 1E2}', '9223372036854775808', '1E2'),
    'float_key': ('{"id": 1.5, "a": [1, 2], "b": "", "c": 1, "d": 1, "p": 0.3164}',
                  '1.5', '0.3164'),
    'after_float_key': ('{"id": 9007199254740993, "a": [1, 2], "b": "", "c": 1, "d": 1, '
                        '"p": -0.0}', '9007199254740993', '-0.0'),
}


def test_hostile_lines_become_errors_and_valid_ones_keep_their_digits(model_dir, tmp_path):
  lines = [_good(i) for i in range(20)]
  lines[3:3] = list(HOSTILE.values())
  lines[10:10] = [line for line, _, _ in EXACT.values()]
  lines.append('{"id": 200, "a": [1, 2], "b": "' + 'x' * 400000 + '", "c": 1, "d": 1}')
  path = tmp_path / 'in' / 'hostile.jsonl'
  path.parent.mkdir()
  path.write_bytes(b'\xef\xbb\xbf' + '\r\n'.join(lines).encode('utf-8', 'surrogatepass'))
  out = tmp_path / 'out'
  predictions, errors, summary = run_job(
      str(out), f'--model={model_dir / "mixed"}', f'--input={path}', '--key_field=id',
      '--passthrough_fields=p', '--max_instance_bytes=300000', '--max_error_fraction=1')
  assert_conserved(summary, predictions, errors)
  assert summary['instances_read'] == len(lines)  # a split object is two lines
  assert len(errors) == len(HOSTILE) + 1  # the oversize one too
  assert {e['error']['category'] for e in errors} == {'parse', 'schema'}
  too_large = [e for e in errors if 'max_instance_bytes' in e['error']['message']]
  assert len(too_large) == 1 and too_large[0]['raw_truncated_from_bytes'] > 300000
  text = b''.join(open(p, 'rb').read() for p in sorted(out.glob('predictions-*')))
  for _, key, passthrough in EXACT.values():
    assert f'"id":{key},"p":{passthrough},'.encode() in text
  predicted = {json.dumps(p['id']) for p in predictions}
  assert {str(i) for i in range(20)} <= predicted


def _corrupt_gzip(path, lines):
  data = gzip.compress(''.join(line + '\n' for line in lines).encode())
  path.write_bytes(data[:len(data) // 2] + b'\x00' * 64)


@pytest.mark.parametrize('fault', ['not_gzip', 'corrupt_gzip', 'broken_link', 'fifo',
                                   'directory_named_jsonl'])
def test_unreadable_files_are_file_errors_and_the_job_goes_on(model_dir, tmp_path, fault):
  good = [_good(i) for i in range(30)]
  (tmp_path / 'in').mkdir()
  (tmp_path / 'in' / 'good.jsonl').write_text('\n'.join(good) + '\n')
  bad = tmp_path / 'in' / ('bad.jsonl.gz' if 'gzip' in fault else 'bad.jsonl')
  if fault == 'not_gzip':
    bad.write_text('\n'.join(good) + '\n')
  elif fault == 'corrupt_gzip':
    _corrupt_gzip(bad, [_good(1000 + i) for i in range(20000)])
  elif fault == 'broken_link':
    os.symlink(tmp_path / 'nowhere.jsonl', bad)
  elif fault == 'fifo':
    os.mkfifo(bad)
  else:
    bad.mkdir()
    (bad / 'inner.jsonl').write_text(good[0] + '\n')
  out = tmp_path / 'out'
  status = 0 if fault == 'directory_named_jsonl' else 4
  predictions, errors, summary = run_job(
      str(out), f'--model={model_dir / "mixed"}', f'--input={tmp_path / "in" / "*"}',
      '--key_field=id', status=status)
  assert_conserved(summary, predictions, errors)
  assert {p['id'] for p in predictions} >= set(range(30))
  file_errors = [e for e in errors if e['error']['category'] == 'file']
  if status == 0:  # a directory matched by the pattern holds no instances
    assert file_errors == []
    return
  assert len(file_errors) == 1 and file_errors[0]['filename'] == bad.name
  assert summary['files_incomplete'] == 1 and summary['incomplete_files'] == [str(bad)]
  assert summary['input_files'] == 2
  message = file_errors[0]['error']['message']
  if fault == 'corrupt_gzip':
    read = int(message.split('after ')[1].split()[0])
    assert 0 < read < 20000
    # What was read is accounted for: the last line, cut by the fault, fails.
    assert len(predictions) + len(errors) - 1 == 30 + read


@pytest.mark.cross_batch
@settings(max_examples=4, **SETTINGS)
@given(st.lists(jsonl_lines(), min_size=50, max_size=50))
def test_generated_job_equals_the_model_called_on_the_definition(model_dir, tmp_path_factory,
                                                                 signature_of, lines):
  """Without a key (rows are located by offset), every generated line is in
  exactly one output, with the definition's error, or with the model's own
  prediction for what the definition says the line means."""
  tmp_path = tmp_path_factory.mktemp('generated')
  content = b''.join(line + b'\n' for line in lines)
  (tmp_path / 'g.jsonl').write_bytes(content)
  offsets, at = {}, 0
  for raw in lines:  # what the reader makes of each line, by its definition
    line = raw[3:] if at == 0 and raw.startswith(b'\xef\xbb\xbf') else raw
    offsets[at] = line[:-1] if line.endswith(b'\r') else line
    at += len(raw) + 1
  decoder = decoder_for(MIXED, passthrough_fields=('p',))
  any_valid = any(not decoder.decode(jsonl_chunk([line])).errors for line in offsets.values())
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={model_dir / "mixed"}',
      f'--input={tmp_path / "g.jsonl"}', '--passthrough_fields=p', '--max_error_fraction=1',
      '--max_batch_size=64', status=0 if any_valid else 3)
  assert_conserved(summary, predictions, errors)
  assert sorted(r['offset'] for r in predictions + errors) == sorted(offsets)
  for record in errors:
    alone = decoder.decode(jsonl_chunk([offsets[record['offset']]]))
    assert [(e.category, e.message) for e in alone.errors] == [
        (record['error']['category'], record['error']['message'])]
  if not predictions:
    return
  feeds = [rows_and_feeds(decoder.decode(jsonl_chunk([offsets[p['offset']]])))[0]
           for p in predictions]
  strings = np.empty(len(feeds), dtype=object)  # np.stack would make 'S': no trailing NULs
  strings[:] = [f['b'] for f in feeds]
  expected = signature_of(model_dir / 'mixed', b=strings, **{
      name: np.stack([f[name] for f in feeds]) for name in ('a', 'c', 'd')})
  # Bit for bit although the job's batches are others: the mixed model is
  # elementwise float64 arithmetic (no dot product or reduction), whose
  # rounding no batch composition changes; any other value is a decoding
  # error, which is what this test is for.
  for i, p in enumerate(predictions):
    want = expected['y'][i]
    if p['y'] is None:  # NaN and +-Infinity are written as null
      assert not np.isfinite(want)
    else:
      assert p['y'] == want
  # Carried values: the very text the definition keeps, in the record.
  texts = {}
  for path in sorted((tmp_path / 'out').glob('predictions-*')):
    for line in path.read_bytes().splitlines():
      texts[json.loads(line)['offset']] = line
  for p in predictions:
    carried = decoder.decode(jsonl_chunk([offsets[p['offset']]])).carried['p'][0]
    assert b',"p":' + carried + b',' in texts[p['offset']]
