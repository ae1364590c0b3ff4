"""Property-based test: FormatRecords' columnar path (transforms/
format_columnar.py) writes exactly what the per-record definition
(`FormatRecords._encode_exact`) writes, on generated ScoredBatches: JSON
Lines byte for byte, Parquet equal tables, TFRecord equal parsed Examples,
and the same error lines. A batch the columnar path declines goes to the
definition, so every batch must come out the same; the last tests check
that the usual batches do take the columnar path."""
import json
import math

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tf_batch_predict.transforms.write import format_columnar as columnar
from tf_batch_predict.transforms.write.format import LOCATION_FIELDS, FormatRecords, OutputLayout, output_names
from tf_batch_predict.transforms.read.input_jsonl import JsonLinesFormat
from tf_batch_predict.transforms.read.input_tfrecord import TFRecordFormat
from tf_batch_predict.transforms.records import (FeedGroup, InstanceBatch, InstanceError, RawChunk, ScoredBatch,
                                TextColumn)
from tf_batch_predict.transforms.model.savedmodel import TensorSpec

SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                phases=(Phase.explicit, Phase.reuse, Phase.generate))
FORMATS = {'jsonl': JsonLinesFormat(1 << 20), 'tfrecord': TFRecordFormat(1 << 20)}

NUMERIC = ['float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64', 'uint8',
           'uint16', 'uint32', 'uint64', 'bool']
# Strings and unknown ranks go to the definition: rarer, so that most
# batches exercise the columnar path.
DTYPES = st.sampled_from(NUMERIC * 2 + ['string'])
RANKS = st.sampled_from([0, 1, 1, 1, 2, 2, 3, 3, 0, 1, None])

# -- carried JSON texts, as a decoder keeps them ------------------------------

_STRINGS = st.one_of(
    st.text(max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=8).map(json.dumps),
    st.sampled_from(['"a\\"b"', '"\\u00e9t\\u00e9"', '"caf\u00e9"', '"\\ud83d\\ude00"', '"\\n"',
                     '""', '"\\ud800"', '"x\ty"', '"\U0001f600"', '"null"']))
_NUMBERS = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.integers(-5, 5).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(['9223372036854775807', '-9223372036854775808', '9223372036854775808',
                     '-0', '1.50', '1e400', '-0.0', '2.5e-324', '0', '12345678901234567890',
                     '0.1', '1E2', '0.10000000000000000001', '007', '"42"', '"True"']))
_SCALARS = st.one_of(_STRINGS, _NUMBERS, st.sampled_from(['true', 'false', 'null']))
TEXTS = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda v: '[' + ','.join(v) + ']'),
    st.lists(st.tuples(st.sampled_from(['a', 'é', 'k"']), inner), max_size=3).map(
        lambda kv: '{' + ', '.join(f'{json.dumps(k)}: {v}' for k, v in kv) + '}')),
    max_leaves=4).map(lambda t: t.encode('utf-8', 'surrogatepass'))
# A None (or a text that is not UTF-8) sends a batch to the definition in
# some formats: only some columns hold them.
HOSTILE_CARRIED = st.one_of(TEXTS, st.none(), st.just(b'\xff"'), st.just(b'"\xc3"'))

FIELD_NAMES = st.sampled_from(['key', 'id', 'p', 'q\u00e9', 'a"b', 'filename', 'offset', 'index'])


def _floats(width):
  return st.one_of(st.floats(width=width), st.sampled_from(
      [0.0, -0.0, float('nan'), float('inf'), -float('inf'), 1e-45, 3.4e38, 1e308, 5e-324,
       0.1, 1 / 3, 65504.0, 6e-8]).map(lambda f: float(np.asarray(f).astype(f'float{width}'))))


def _elements(dtype):
  if dtype == 'string':
    return st.binary(max_size=4)
  if dtype.startswith('float'):
    return _floats(int(dtype[5:]))
  if dtype == 'bool':
    return st.booleans()
  info = np.iinfo(dtype)
  return st.one_of(st.integers(int(info.min), int(info.max)),
                   st.sampled_from([int(info.min), int(info.max), 0]))


@st.composite
def outputs(draw, specs, n):
  """{name: array of n rows} for the specs (None in a shape: any size)."""
  arrays = {}
  for spec in specs:
    shape = spec.shape if spec.shape is not None else [None] * draw(st.integers(0, 2))
    shape = tuple(draw(st.integers(0, 2)) if d is None else d for d in shape)
    dtype = object if spec.dtype == 'string' else spec.dtype
    array = draw(hnp.arrays(dtype, (n,) + shape, elements=_elements(spec.dtype)))
    if draw(st.integers(0, 9)) == 0:
      array = np.asfortranarray(array)
    if draw(st.integers(0, 19)) == 0 and spec.dtype.startswith('float'):
      array = array.astype('float64')  # not the signature's dtype
    arrays[spec.name] = array
  return arrays


@st.composite
def scored_batches(draw):
  output_format = draw(st.sampled_from(['jsonl', 'parquet', 'tfrecord']))
  n = draw(st.one_of(st.integers(1, 10), st.integers(0, 3)))
  keyed = draw(st.booleans())
  key_field = draw(FIELD_NAMES.filter(lambda f: f not in LOCATION_FIELDS)) if keyed else None
  carried = [key_field] if keyed else list(LOCATION_FIELDS)
  passthrough = tuple(draw(st.lists(FIELD_NAMES.filter(lambda f: f not in carried),
                                    max_size=2, unique=True)))
  names = draw(st.lists(st.sampled_from(['score', 'probs', 'class', 'key', 'filename', 'p',
                                         'out_bytes', 'key_output']),
                        min_size=1, max_size=3, unique=True))
  specs = []
  for name in names:
    dtype = draw(DTYPES)
    rank = draw(RANKS)
    shape = None if rank is None else tuple(
        draw(st.one_of(st.integers(0, 3), st.none())) for _ in range(rank))
    specs.append(TensorSpec(name, dtype, shape))
  kind = draw(st.sampled_from(['jsonl', 'tfrecord']))
  firsts = sorted(draw(st.lists(st.integers(0, n), min_size=0, max_size=2)))
  paths = draw(st.lists(st.sampled_from(['/in/a.jsonl', '/in/d\u00e9j\u00e0/b "x".jsonl',
                                         '/other/c.jsonl']), min_size=3, max_size=3))
  segments = [(paths[0], 0)] + [(paths[i + 1], f) for i, f in enumerate(firsts)]
  positions = draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))
  chunk = RawChunk(segments, positions, [b'{"x": %d}' % i for i in range(n)], kind=kind)
  texts = {}
  for field in carried[:1] * keyed + list(passthrough):
    hostile = draw(st.integers(0, 7)) == 0
    column = draw(st.lists(HOSTILE_CARRIED if hostile else TEXTS, min_size=n, max_size=n))
    if draw(st.booleans()):
      column = TextColumn(pa.array(column, pa.binary()))
    texts[field] = column
  # Rows scored: a subset in any order, in groups; the others failed.
  order = draw(st.permutations(list(range(n))))
  scored_rows = order[:draw(st.one_of(st.just(n), st.integers(0, n)))]
  cuts = sorted(draw(st.lists(st.integers(0, len(scored_rows)), max_size=2)))
  groups = [scored_rows[a:b] for a, b in zip([0] + cuts, cuts + [len(scored_rows)])]
  results = [(rows, draw(outputs(specs, len(rows)))) for rows in groups]
  errors = [InstanceError(r, 'model', 'failed') for r in range(n) if r not in scored_rows]
  batch = InstanceBatch(chunk, texts, [FeedGroup(rows, {}) for rows in groups], errors)
  # Typed Parquet columns of carried fields (--parquet_column_types).
  carried_types = ()
  if output_format == 'parquet' and draw(st.booleans()):
    typed = (carried[:1] if keyed else []) + list(passthrough)
    carried_types = tuple((f, draw(st.sampled_from(['int64', 'float64', 'bool'])))
                          for f in typed if draw(st.booleans()))
  layout = OutputLayout(key_field, passthrough, output_names(names, carried + list(passthrough)),
                        '/in/', output_format, tuple(specs),
                        position_fields=tuple(sorted({'offset', chunk.position_field})),
                        carried_types=carried_types)
  return layout, ScoredBatch(batch, results, errors)


def _run(layout, scored, exact):
  fn = FormatRecords(layout, FORMATS)
  fn.setup()
  if exact:
    fn._columnar = lambda scored: columnar.Declined  # pylint: disable=protected-access
  return list(fn.process(scored))


def _same_values(a, b) -> bool:
  """Equal Python values, NaN equal to NaN, -0.0 not equal to 0.0."""
  if isinstance(a, float) and isinstance(b, float):
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a)
                                                 == math.copysign(1, b))
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same_values(x, y) for x, y in zip(a, b))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same_values(a[k], b[k]) for k in a)
  return type(a) is type(b) and a == b


def _canonical_examples(records):
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  return [example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
          for r in records]


def assert_same_output(layout, scored, fast, exact):
  assert len(fast) == len(exact)
  for got, want in zip(fast, exact):
    got, want = getattr(got, 'value', got), getattr(want, 'value', want)
    if layout.output_format == 'parquet' and isinstance(want, pa.Table):
      assert got.schema == want.schema
      assert _same_values(got.to_pylist(), want.to_pylist())
    elif layout.output_format == 'tfrecord' and isinstance(want, list):
      assert _canonical_examples(got) == _canonical_examples(want)
    else:
      assert got == want


@settings(max_examples=600, **SETTINGS)
@given(scored_batches())
def test_columnar_records_are_the_definitions(case):
  layout, scored = case
  assert_same_output(layout, scored, _run(layout, scored, False), _run(layout, scored, True))


# -- the usual batches take the columnar path --------------------------------

def _usual(output_format, mlp, keyed=True, n=64):
  rng = np.random.default_rng(0)
  chunk = RawChunk([('/in/a.jsonl', 0), ('/in/b.jsonl', n // 2)], list(range(0, 10 * n, 10)),
                   [b'{}'] * n)
  if mlp:
    probs = rng.random((n, 10)).astype(np.float32)
    outs = {'probs': probs, 'class': probs.argmax(1).astype(np.int64)}
    specs = (TensorSpec('probs', 'float32', (10,)), TensorSpec('class', 'int64', ()))
  else:
    outs = {'score': rng.random((n, 1)).astype(np.float32)}
    specs = (TensorSpec('score', 'float32', (1,)),)
  carried = ['id'] if keyed else list(LOCATION_FIELDS)
  texts = {'id': TextColumn(pa.array([b'%d' % i for i in range(n)], pa.binary()))} if keyed else {}
  layout = OutputLayout('id' if keyed else None, (), output_names(list(outs), carried), '/in/',
                        output_format, specs)
  rows = list(range(n))[::-1]
  batch = InstanceBatch(chunk, texts, [FeedGroup(rows, {})], [])
  return layout, ScoredBatch(batch, [(rows, outs)], [])


def test_usual_batches_take_the_columnar_path():
  for output_format in ('jsonl', 'parquet', 'tfrecord'):
    for mlp in (False, True):
      for keyed in (False, True):
        layout, scored = _usual(output_format, mlp, keyed)
        fn = FormatRecords(layout, FORMATS)
        fn.setup()
        assert fn._columnar(scored) is not columnar.Declined  # pylint: disable=protected-access
        assert_same_output(layout, scored, _run(layout, scored, False),
                           _run(layout, scored, True))


def test_jsonl_block_is_the_records_lines():
  layout, scored = _usual('jsonl', False, n=3)
  block = _run(layout, scored, False)[0]
  score = scored.results[0][1]['score']
  assert block.split(b'\n') == [b'{"id":%d,"score":%s}' % (i, orjson.dumps(
      score[j], option=orjson.OPT_SERIALIZE_NUMPY)) for j, i in enumerate((2, 1, 0))]
