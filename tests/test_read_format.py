"""Unit tests of the chunked line reader and the output records."""
import gzip

import numpy as np
import pytest
from apache_beam.io.range_trackers import OffsetRangeTracker
from apache_beam.io.restriction_trackers import OffsetRange

from tf_batch_predict.transforms.write.format import (FormatRecords, OutputLayout, common_base, output_names,
                               relative_name)
from tf_batch_predict.transforms.read.lines import LineChunkSource
from tf_batch_predict.transforms.records import FeedGroup, InstanceBatch, InstanceError, RawChunk, ScoredBatch


def read_all(path, ranges, chunk_size=3):
  source = LineChunkSource(path, "jsonl", chunk_size, 1 << 20)
  chunks = []
  for start, stop in ranges:
    chunks.extend(source.read_records(path, OffsetRangeTracker(start, stop)))
  return chunks


@pytest.mark.parametrize('range_size', [1, 7, 20, 1000])
def test_every_line_read_once_whatever_the_ranges(tmp_path, range_size):
  content = b'{"a": 1}\n\n{"b": 22}\r\n  \n{"c": 333}\n{"d": 4444}'  # no final newline
  path = str(tmp_path / 'f.jsonl')
  with open(path, 'wb') as f:
    f.write(content)
  ranges = [(r.start, r.stop) for r in OffsetRange(0, len(content)).split(range_size, 0)]
  chunks = read_all(path, ranges)
  lines = [(o, l) for c in chunks for o, l in zip(c.positions, c.records)]
  assert lines == [(0, b'{"a": 1}'), (10, b'{"b": 22}'), (24, b'{"c": 333}'),
                   (35, b'{"d": 4444}')]
  assert sum(c.blank_lines for c in chunks) == 2
  assert all(len(c) <= 3 for c in chunks)


def test_gzip_offsets_are_in_the_uncompressed_content(tmp_path):
  path = str(tmp_path / 'f.jsonl.gz')
  with gzip.open(path, 'wb') as f:
    f.write(b'[1]\n[22]\n[333]\n')
  chunks = read_all(path, [(0, OffsetRangeTracker.OFFSET_INFINITY)], chunk_size=10)
  assert [(c.positions, c.records) for c in chunks] == [([0, 4, 9], [b'[1]', b'[22]', b'[333]'])]


def test_merged_chunks_keep_each_line_file():
  a = RawChunk([('a', 0)], [0, 5], [b'1', b'2'])
  b = RawChunk([('b', 0)], [0], [b'3'], blank_lines=2)
  merged = a.merge(b).merge(RawChunk([('c', 0)], [9], [b'4']))
  assert [merged.path_of(i) for i in range(4)] == ['a', 'a', 'b', 'c']
  assert merged.positions == [0, 5, 0, 9] and merged.blank_lines == 2


def test_output_names_never_replace_carried_fields():
  assert output_names(['key', 'score', 'key_output'], ['key']) == {
      'key': 'key_output_2', 'score': 'score', 'key_output': 'key_output'}
  assert output_names(['filename', 'y'], ['filename', 'offset']) == {
      'filename': 'filename_output', 'y': 'y'}


@pytest.mark.parametrize('patterns, path, name', [
    (['/data/d1/*.jsonl', '/data/d2/*.jsonl'], '/data/d1/part.jsonl', 'd1/part.jsonl'),
    (['/data/d1/*.jsonl', '/data/d2/*.jsonl'], '/data/d2/part.jsonl', 'd2/part.jsonl'),
    (['/data/*.jsonl', '/data/sub/*.jsonl'], '/data/sub/x.jsonl', 'sub/x.jsonl'),
    (['/data/*.jsonl', '/data/sub/*.jsonl'], '/data/x.jsonl', 'x.jsonl'),
    (['/data/in/part-*.jsonl'], '/data/in/part-1.jsonl', 'part-1.jsonl'),
    (['/data/in/**/*.jsonl'], '/data/in/a/b.jsonl', 'a/b.jsonl'),
    (['/d1/x.jsonl', '/d2/x.jsonl'], '/d2/x.jsonl', 'd2/x.jsonl'),
    (['gs://b/d1/*', 'gs://c/d1/*'], 'gs://c/d1/p', 'c/d1/p'),
    (['gs://b/in/*', '/local/in/*'], '/local/in/p', '/local/in/p'),
])
def test_file_names_are_relative_to_the_patterns_common_directory(patterns, path, name):
  """Unique across every pattern of a job: relative to the deepest
  directory all patterns share."""
  assert relative_name(path, common_base(patterns)) == name


def test_format_records_predictions_and_errors():
  chunk = RawChunk([('/in/a.jsonl', 0)], [0, 10, 20], [b'l0', b'l1', b'x' * 9000])
  batch = InstanceBatch(chunk, {'key': [b'"k0"', b'"k1"', None], 'p': [b'1', b'2.50', None]},
                        [FeedGroup([0, 1], {})], [InstanceError(2, 'parse', 'bad')])
  outputs = {'score': np.array([0.5, 0.25], np.float32),
             'label': np.array([b'yes', b'\xff'], object),
             'key': np.array([[1, 2], [3, 4]], np.int64)}
  layout = OutputLayout('key', ('p',), output_names(['key', 'label', 'score'], ['key', 'p']),
                        '/in/')
  from tf_batch_predict.transforms.read.input_jsonl import JsonLinesFormat
  fn = FormatRecords(layout, {'jsonl': JsonLinesFormat(1 << 20)})
  out = list(fn.process(ScoredBatch(batch, [([0, 1], outputs)], batch.errors)))
  predictions, errors = out[0], out[1]
  assert predictions.split(b'\n') == [
      b'{"key":"k0","p":1,"key_output":[1,2],"label":"yes","score":0.5}',
      b'{"key":"k1","p":2.50,"key_output":[3,4],"label":{"b64":"/w=="},"score":0.25}']
  assert errors.tag == 'errors'
  import json
  error = json.loads(errors.value)
  assert error['filename'] == 'a.jsonl' and error['offset'] == 20 and 'key' not in error
  assert error['error'] == {'category': 'parse', 'message': 'bad'}
  assert len(error['raw']) == 8192 and error['raw_truncated_from_bytes'] == 9000


def test_small_chunks_are_merged_up_to_min_batch_size():
  from tf_batch_predict.transforms.read.coalesce import CoalesceChunks
  fn = CoalesceChunks(min_lines=4)
  fn.start_bundle()
  small = [RawChunk([(f'f{i}', 0)], [0, 9], [b'a', b'b']) for i in range(3)]
  big = RawChunk([('big', 0)], list(range(5)), [b'x'] * 5)
  out = [c for chunk in small[:2] + [big] + small[2:] for c in fn.process(chunk)]
  rest = list(fn.finish_bundle())
  assert [len(c) for c in out] == [4, 5]
  assert [out[0].path_of(i) for i in range(4)] == ['f0', 'f0', 'f1', 'f1']
  assert len(rest) == 1 and rest[0].value.segments == [('f2', 0)]
