"""Property-based tests of the columnar JSON Lines path (input_jsonl's
ColumnarJsonLines): on chunks held as one buffer (records.Lines), the
decoder gives exactly what the definition gives, row by row, whatever the
neighbours; and on plain lines the columnar path is the one that decodes."""
import json

import numpy as np
from hypothesis import given, settings, strategies as st

from tests.test_convert_decode import assert_same_batches, decoder_for
from tests.test_equivalence import MIXED, SETTINGS, jsonl_lines
from tf_batch_predict.transforms.read.input_jsonl import COLUMNAR_MIN_ROWS, _columnar_plan
from tf_batch_predict.transforms.records import Lines, RawChunk, TextColumn
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec, TensorSpec

EXAMPLES, LINES = 60, 40

# Values of the right kind for each field, written as hostile writers do
# (every JSON number form, escapes, non-ASCII), and now and then one that
# is not (`ODD`): a run holding one is split, or left to the other paths.
FLOAT_TEXTS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f'{f:.7g}'),
    st.integers(-2 ** 63, 2 ** 64 - 1).map(str),
    st.sampled_from(['1e2', '1E-3', '-0', '-0.0', '0.30000000000000001', '9007199254740993',
                     '1.50', '1e-400', '2.5e-324', '1.7976931348623157e308', '3.4028236e38',
                     '0.' + '1' * 60]))
INT_TEXTS = st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1).map(str),
                      st.sampled_from(['-0', '0', '-1']))
GOOD = {
    'a': st.lists(FLOAT_TEXTS, min_size=2, max_size=2).map(lambda v: '[' + ', '.join(v) + ']'),
    'b': st.one_of(st.text(max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
                   st.text(max_size=12).map(json.dumps),
                   st.sampled_from(['"\\ud83d\\ude00"', '"\\u0000"', '"\\n\\t"',
                                    '"caf\\u00e9"', '"\\/"', '"\\"\\\\"', '"\x7f"'])),
    'c': INT_TEXTS,
    'd': FLOAT_TEXTS,
    'ignored': st.sampled_from(['{"id": 1}', '[]', '"\\u00e9"', '123456789012345678901234567890',
                                '[[[{"a": null}]]]']),
}
KEYS = {'int': INT_TEXTS, 'string': GOOD['b'], 'bool': st.sampled_from(['true', 'false'])}
ODD = {
    'a': st.sampled_from(['[1]', '[1,2,3]', '[]', 'null', '[1,null]', '[[1],[2]]', '[1e400, 1]',
                          '["1", 2]', '{"b64": "AA=="}']),
    'b': st.sampled_from(['null', '1', '{"b64": "AA=="}', '["x"]', '""']),
    'c': st.sampled_from(['9223372036854775808', '1.0', '2e1', 'null', 'true', '[3]']),
    'd': st.sampled_from(['null', '[0.5]', 'true', '"1"', 'NaN', '1e400']),
    'id': st.sampled_from(['null', '1.5', '{"k": 1}', '[1]', '"-0"', '-0']),
    'p': st.sampled_from(['null', '1.50', '{"x": 1}', '[1]', '"\\u00e9"']),
    'ignored': st.sampled_from(['NaN', '1e400', '"\\ud800"', '"\\q"']),
}
NAMES = {'a': st.sampled_from(['"a"', '"a"', '"\\u0061"'])}


@st.composite
def plausible_lines(draw, key_kind, passthrough_kind):
  values = dict(GOOD, id=KEYS[key_kind], p=KEYS[passthrough_kind])
  names = ['id', 'a', 'b', 'c', 'd'] + draw(st.lists(st.sampled_from(['p', 'ignored']),
                                                      max_size=2))
  if draw(st.integers(0, 30)) == 0:
    names.remove(draw(st.sampled_from(names)))
  if draw(st.integers(0, 30)) == 0:
    names.append(draw(st.sampled_from(names)))
  odd = draw(st.sampled_from(names)) if draw(st.integers(0, 15)) == 0 else None
  order = draw(st.permutations(names))
  colon = draw(st.sampled_from([':', ': ']))
  pairs = [f'{draw(NAMES[n]) if n in NAMES else json.dumps(n)}{colon}'
           f'{draw(ODD.get(n, values[n]) if n == odd else values[n])}' for n in order]
  line = ('{' + draw(st.sampled_from([',', ', '])).join(pairs) + '}').encode(
      'utf-8', 'surrogatepass')
  return line + draw(st.sampled_from([b'', b'', b' ', b'\r', b'\t']))


@st.composite
def plausible_chunks(draw):
  key_kind = draw(st.sampled_from(['int', 'int', 'string', 'bool']))
  passthrough_kind = draw(st.sampled_from(['int', 'string', 'bool']))
  return draw(st.lists(plausible_lines(key_kind, passthrough_kind), min_size=LINES,
                       max_size=LINES))


def lines_chunk(lines, blank=()):
  """A chunk of the lines as one buffer; `blank`: rows after which a blank
  line (spaces, tabs, carriage returns) sits in the buffer."""
  parts, starts, ends, position = [], [], [], 0
  for row, line in enumerate(lines):
    starts.append(position)
    ends.append(position + len(line))
    gap = b'\n' + (b' \t\r\n' if row in blank else b'')
    parts.append(line + gap)
    position += len(line) + len(gap)
  return RawChunk([('g.jsonl', 0)], [s * 1 for s in starts],
                  Lines(b''.join(parts), np.array(starts, np.int64), np.array(ends, np.int64)))


def _decode_both(decoder, chunk):
  fast = decoder.decode(chunk)
  exact = decoder.decode(chunk, use_fast=False)
  assert_same_batches(fast, exact)
  assert len(fast) + len(fast.errors) == len(chunk)
  return fast


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(plausible_chunks(), st.lists(jsonl_lines(), max_size=2), st.booleans(),
       st.randoms(use_true_random=False))
def test_columnar_path_is_the_definition(lines, hostile, with_key, random):
  decoder = decoder_for(MIXED, key_field='id' if with_key else None,
                        passthrough_fields=('p',))
  # Runs split down to 2 lines around a bad one, so that most good lines of
  # a generated chunk are taken by the columnar path.
  decoder.format('jsonl')._columnar.min_rows = 2  # pylint: disable=protected-access
  # Each line three times, shuffled, with the hostile ones among them: runs
  # long enough to be split around a bad line (COLUMNAR_MIN_ROWS), and the
  # same line among different neighbours.
  rows = (lines + hostile) * 3
  random.shuffle(rows)
  blank = set(random.sample(range(len(rows)), 5))
  _decode_both(decoder, lines_chunk(rows, blank))
  # Alone, each line gives what it gives among the others (the exact path
  # is the reference for both).
  for line in lines[:8]:
    _decode_both(decoder, lines_chunk([line] * 2))


def plain_line(i):
  return (b'{"id": %d, "a": [1.5, -2], "b": "s%d", "c": %d, "d": 0.25, "p": "x"}'
          % (i, i, i))


def test_plain_lines_are_decoded_columnar_with_text_columns():
  decoder = decoder_for(MIXED, key_field='id', passthrough_fields=('p',))
  chunk = lines_chunk([plain_line(i) for i in range(300)], blank={5, 77})
  fmt = decoder.format('jsonl')
  accepted, feeds, carried = fmt._columnar.decode(  # pylint: disable=protected-access
      chunk, list(range(300)), decoder, _columnar_plan(decoder))
  assert accepted.tolist() == list(range(300))
  assert feeds['c'].tolist() == list(range(300))
  batch = _decode_both(decoder, chunk)
  assert isinstance(batch.carried['id'], TextColumn) and batch.carried['id'][42] == b'42'
  assert batch.carried['p'][0] == b'"x"'


def test_one_bad_line_keeps_the_rest_columnar():
  decoder = decoder_for(MIXED, key_field='id')
  lines = [plain_line(i) for i in range(8 * COLUMNAR_MIN_ROWS)]
  lines[100] = b'{"id": 100, "a": [1, 2], "b": "x", "c": NaN, "d": 1}'  # no int64 NaN
  lines[300] = b'{"id": "k300", "a": [1, 2], "b": "x", "c": 3, "d": 1}'  # key turns text
  chunk = lines_chunk(lines)
  fmt = decoder.format('jsonl')
  accepted, _, _ = fmt._columnar.decode(  # pylint: disable=protected-access
      chunk, list(range(len(lines))), decoder, _columnar_plan(decoder))
  # Only runs of at most 2 * COLUMNAR_MIN_ROWS around each bad line are left.
  assert len(accepted) >= len(lines) - 4 * COLUMNAR_MIN_ROWS
  batch = _decode_both(decoder, chunk)
  assert [e.row for e in batch.errors] == [100]
  assert batch.carried['id'][300] == b'"k300"'


def test_lines_that_are_not_objects_never_reach_pyarrow():
  # pyarrow 25 crashes the process on a run whose first line is `null`.
  decoder = decoder_for(MIXED, key_field='id')
  for odd in (b'null', b' null', b'5', b'[1, 2]', b'"s"', b'{}'):
    chunk = lines_chunk([odd] + [plain_line(i) for i in range(1, 200)])
    batch = _decode_both(decoder, chunk)
    assert [e.row for e in batch.errors] == [0] and batch.fast_rows == 199


def test_negative_zero_and_integers_beyond_a_vector_dtype():
  sig = SignatureSpec('s', 'tensorflow/serving/predict',
                      (TensorSpec('v', 'int8', (3,)), TensorSpec('z', 'float32', ())),
                      (TensorSpec('y', 'float32', ()),))
  decoder = decoder_for(sig, key_field='k')
  lines = [b'{"k": %d, "v": [1, 2, 3], "z": %d}' % (i, i) for i in range(300)]
  lines[7] = b'{"k": 7, "v": [1, 2, 300], "z": 1}'  # beyond int8: a schema error
  lines[9] = b'{"k": 9, "v": [1, 2, 3], "z": -0}'  # the integer -0: 0.0, not -0.0
  lines[11] = b'{"k": 11, "v": [1, 2, 3], "z": -0.0}'  # the float -0.0
  batch = _decode_both(decoder, lines_chunk(lines))
  assert [e.row for e in batch.errors] == [7]
  z = {row: value for group in batch.groups for row, value in zip(group.rows, group.feeds['z'])}
  assert not np.signbit(z[9]) and np.signbit(z[11])
  accepted, _, _ = decoder.format('jsonl')._columnar.decode(  # pylint: disable=protected-access
      lines_chunk(lines), list(range(300)), decoder, _columnar_plan(decoder))
  # All but the odd rows, and row 0: a key 0 where the run holds `-0` is
  # left to the definition, which alone keeps how it was written.
  assert sorted(set(range(300)) - set(accepted.tolist())) == [0, 7, 9, 11]


def test_a_run_with_no_integer_minus_zero_keeps_its_float_negative_zeros():
  """-0.0, -0e1 and -0.5 are floats to both parsers: a run whose only minus
  zeros are those is read whole by pyarrow; one integer -0 anywhere (a key,
  a string too) makes the run's zeros checked again."""
  sig = SignatureSpec('s', 'tensorflow/serving/predict',
                      (TensorSpec('z', 'float32', ()), TensorSpec('w', 'float64', ())),
                      (TensorSpec('y', 'float32', ()),))
  decoder = decoder_for(sig, key_field='k')
  lines = [b'{"k": %d, "z": %d.5, "w": %s}' % (i, i, b'-0.0' if i % 10 == 0 else b'%d.25' % i)
           for i in range(200)]
  lines[3] = b'{"k": 3, "z": -0e1, "w": -0.5}'
  lines[4] = b'{"k": 0, "z": -0.0, "w": -0.00}'
  batch = _decode_both(decoder, lines_chunk(lines))
  assert batch.fast_rows == 200 and not batch.errors
  rows = {row: (z, w) for g in batch.groups
          for row, z, w in zip(g.rows, g.feeds['z'], g.feeds['w'])}
  assert np.signbit(rows[3][0]) and np.signbit(rows[4][0]) and np.signbit(rows[4][1])
  plan = _columnar_plan(decoder)
  accepted, _, _ = decoder.format('jsonl')._columnar.decode(  # pylint: disable=protected-access
      lines_chunk(lines), list(range(200)), decoder, plan)
  assert len(accepted) == 200
  for odd in (b'{"k": 7, "z": -0, "w": 1}', b'{"k": 7, "z": 1, "w": 1, "s": "a-0"}'):
    changed = lines[:7] + [odd] + lines[8:]
    _decode_both(decoder, lines_chunk(changed))
    accepted, _, _ = decoder.format('jsonl')._columnar.decode(  # pylint: disable=protected-access
        lines_chunk(changed), list(range(200)), decoder, plan)
    # Rows with a minus zero (4 has a key 0 too) left to the definition.
    assert sorted(set(range(200)) - set(accepted.tolist())) == sorted(
        {3, 4, 7} | set(range(0, 200, 10))) if odd.count(b'-0,') else sorted(
        {3, 4} | set(range(0, 200, 10)))
