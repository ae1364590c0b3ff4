"""The decoding helper process (transforms/read/decoder_process.py): its
batches are the worker's own, and whatever happens to it, every chunk it
was handed comes back exactly once."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.test_convert_decode import assert_same_batches, decoder_for
from tests.test_equivalence import CSV_HEADER, CSV_SIG, MIXED
from tf_batch_predict.transforms.read.decoder_process import (IN_BYTES, MIN_LINES, OUT_BYTES, SLOTS,
                                                              DecoderProcess)
from tf_batch_predict.transforms.records import Lines, RawChunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines of every kind the paths treat apart: plain, wrong types, NaN, a
# BOM, invalid UTF-8, repeated fields, nesting, a missing key, not JSON.
HOSTILE = [b'{"id": 1, "a": [1, 2.5], "b": "x", "c": 3, "d": 0.1}',
           b'{"id": "k", "a": [1e400, -0], "b": "\\u00e9", "c": -7, "d": -0.0}',
           b'{"id": 2, "a": [NaN, 1], "b": "x", "c": 3, "d": 1}',
           b'\xef\xbb\xbf{"id": 3, "a": [1, 2], "b": "x", "c": 3, "d": 1}',
           b'{"id": 4, "a": [1, 2], "b": "\xff", "c": 3, "d": 1}',
           b'{"id": 5, "id": 6, "a": [1, 2], "b": "x", "c": 3, "d": 1}',
           b'{"id": 7, "a": [[1], 2], "b": "x", "c": 3, "d": 1}',
           b'{"a": [1, 2], "b": "x", "c": 3, "d": 1}',
           b'{"id": 8, "a": [1, 2], "b": 5, "c": 3.5, "d": true}',
           b'not json', b'[1, 2]', b'{"id": 9, "a": [1, 2], "b": "x", "c": 99999999999999999999}']


def jsonl_chunk(lines, name='h.jsonl'):
  return RawChunk([(name, 0)], [i * 10 for i in range(len(lines))], Lines.of(lines),
                  units=[(0, 0, name)], unit_ends={name: {'records': len(lines)}})


def generated_lines(count, seed):
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(count):
    if rng.random() < 0.1:
      lines.append(HOSTILE[rng.integers(len(HOSTILE))])
    else:
      lines.append(json.dumps({'id': i, 'a': rng.normal(size=2).tolist(), 'b': f's{i}',
                               'c': int(rng.integers(-9, 9)), 'd': float(rng.normal())}).encode())
  return lines


def run_all(helper, decoder, chunks):
  """Each chunk's batch, by the helper where it takes it; (batches by chunk
  position, how many the helper decoded)."""
  batches, by_helper = {}, 0
  position = {id(c): i for i, c in enumerate(chunks)}

  def take(done):
    nonlocal by_helper
    for chunk, batch, _ in done:
      assert position[id(chunk)] not in batches  # never given out twice
      by_helper += batch is not None
      batches[position[id(chunk)]] = batch if batch is not None else decoder.decode(chunk)
  for i, chunk in enumerate(chunks):
    if not helper.submit(chunk):
      batches[i] = decoder.decode(chunk)
    take(helper.ready())
  take(helper.drain())
  return batches, by_helper


def test_the_helpers_batches_are_the_workers_own():
  decoder = decoder_for(MIXED, key_field='id')
  chunks = [jsonl_chunk(generated_lines(size, seed), f'f{seed}.jsonl')
            for seed, size in enumerate([MIN_LINES, 200, 1000, 3000, MIN_LINES - 1, 500])]
  csv_lines = [b'%d,%d,x%d,3,true,n' % (i, i, i) for i in range(300)] + [b'1,,x', b'"a,b', b'\xff,1,2,3,true,n']
  csv_decoder = decoder_for(CSV_SIG, key_field='id', passthrough_fields=('note',))
  csv_chunk = RawChunk([('g.csv', 0)], list(range(len(csv_lines))), Lines.of(csv_lines),
                       kind='csv', header=CSV_HEADER)
  helper = DecoderProcess.start(decoder)
  csv_helper = DecoderProcess.start(csv_decoder)
  try:
    batches, by_helper = run_all(helper, decoder, chunks)
    csv_batches, csv_by_helper = run_all(csv_helper, csv_decoder, [csv_chunk])
  finally:
    helper.close()
    csv_helper.close()
  assert by_helper >= 3 and csv_by_helper == 1
  for i, chunk in enumerate(chunks):
    assert batches[i].chunk is chunk
    assert_same_batches(batches[i], decoder.decode(chunk))
  assert any(b.errors for b in batches.values()) and any(b.fast_rows for b in batches.values())
  assert_same_batches(csv_batches[0], csv_decoder.decode(csv_chunk))
  assert csv_batches[0].errors


def test_the_helpers_batches_of_a_streamed_request_file_are_the_workers_own(tmp_path):
  """A request file's streamed instances (records.Lines of the elements of
  "instances") go to the helper as JSON Lines lines do."""
  from apache_beam.io.filesystem import FileMetadata
  from tf_batch_predict.transforms.read.input_json import ReadJsonRequests
  valid = [line for line in HOSTILE if _strict_json(line)]
  elements = [valid[i % len(valid)] if i % 7 == 0 else line
              for i, line in enumerate(generated_lines(10000, 11))]
  elements = [e for e in elements if _strict_json(e)]
  body = b'{"signature_name": "serving_default",\n "instances": [\n' + b',\n'.join(
      elements) + b'\n]}'
  path = tmp_path / 'request.json'
  path.write_bytes(body)
  decoder = decoder_for(MIXED, key_field='id')
  reader = ReadJsonRequests(decoder.signature, len(body) + 1)
  reader.stream_min_bytes = 0
  chunks = list(reader.process(FileMetadata(str(path), len(body))))
  assert len(chunks) > 1 and all(isinstance(c.records, Lines) for c in chunks)
  assert sum(len(c) for c in chunks) == len(elements)
  helper = DecoderProcess.start(decoder)
  try:
    batches, by_helper = run_all(helper, decoder, chunks)
  finally:
    helper.close()
  assert by_helper >= 1
  for i, chunk in enumerate(chunks):
    assert batches[i].chunk is chunk
    assert_same_batches(batches[i], decoder.decode(chunk))
  assert any(b.errors for b in batches.values()) and any(b.fast_rows for b in batches.values())


def _strict_json(line) -> bool:
  """Whether a request file may hold it and still be streamed: JSON both the
  definition and simdjson accept (not NaN, 1e400, a byte order mark, ...)."""
  import simdjson
  from tf_batch_predict.transforms.json_values import parse_json
  try:
    parse_json(line)
    simdjson.Parser().parse(line)
    return not line.startswith(b'\xef\xbb\xbf')
  except ValueError:
    return False


def test_a_result_larger_than_its_slot_is_decoded_by_the_worker():
  """Control characters in a CSV passthrough cell are written \\u00XX: the
  carried texts are 6 times the cells, more than a slot holds; the chunk
  comes back to the worker, and the chunk queued behind it is untouched."""
  decoder = decoder_for(CSV_SIG, key_field='id', passthrough_fields=('note',))
  cell = b'\x01' * 1000
  lines = [b'%d,%d,x,3,true,%s' % (i, i, cell) for i in range(IN_BYTES // 1200)]
  assert len(lines) * len(cell) * 6 > OUT_BYTES
  big = RawChunk([('big.csv', 0)], list(range(len(lines))), Lines.of(lines), kind='csv',
                 header=CSV_HEADER)
  small = [b'%d,%d,x,3,true,n' % (i, i) for i in range(500)]
  behind = RawChunk([('small.csv', 0)], list(range(len(small))), Lines.of(small), kind='csv',
                    header=CSV_HEADER)
  helper = DecoderProcess.start(decoder)
  try:
    assert helper.submit(big) and helper.submit(behind)
    back = {id(chunk): batch for chunk, batch, _ in helper.drain()}
  finally:
    helper.close()
  assert back[id(big)] is None  # too big for its slot: the worker decodes it
  assert_same_batches(back[id(behind)], decoder.decode(behind))


def test_a_killed_helper_costs_nothing_but_speed():
  decoder = decoder_for(MIXED, key_field='id')
  chunks = [jsonl_chunk(generated_lines(3000, seed), f'k{seed}.jsonl') for seed in range(8)]
  helper = DecoderProcess.start(decoder)
  try:
    assert all(helper.submit(c) for c in chunks[:SLOTS])
    os.kill(helper._process.pid, signal.SIGKILL)  # pylint: disable=protected-access
    back = list(helper.drain())
    assert sorted(id(c) for c, _, _ in back) == sorted(id(c) for c in chunks[:SLOTS])
    assert not helper.submit(chunks[SLOTS])  # the worker decodes the rest itself
    for chunk, batch, _ in back:
      assert_same_batches(batch if batch is not None else decoder.decode(chunk),
                          decoder.decode(chunk))
  finally:
    helper.close()


def test_the_helper_ends_with_its_worker(tmp_path):
  """A worker killed outright leaves no helper behind."""
  script = ('import os, sys\n'
            'from tests.test_convert_decode import decoder_for\n'
            'from tests.test_equivalence import MIXED\n'
            'from tf_batch_predict.transforms.read.decoder_process import DecoderProcess\n'
            'helper = DecoderProcess.start(decoder_for(MIXED))\n'
            'print(helper._process.pid, flush=True)\n'
            'os.kill(os.getpid(), 9)\n')
  worker = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert worker.returncode == -signal.SIGKILL, worker.stderr
  pid = int(worker.stdout.split()[0])
  deadline = time.time() + 30
  while alive(pid):
    assert time.time() < deadline, f'helper {pid} outlived its worker'
    time.sleep(0.1)


def alive(pid) -> bool:
  try:
    with open(f'/proc/{pid}/status') as f:
      return not any(line.startswith('State:') and 'Z' in line.split()[1] for line in f)
  except FileNotFoundError:
    return False


def test_the_helper_imports_neither_beam_nor_tensorflow(tmp_path):
  """What the helper process imports to decode (its module, then the
  decoder it is sent, pickled) holds no Beam and no TensorFlow: either
  would cost its start about a second, while the worker decodes alone."""
  import pickle
  from tf_batch_predict.transforms.read.decoder_process import LINE_KINDS
  from tf_batch_predict.transforms.read.decode import InstanceDecoder
  decoder = decoder_for(MIXED, 'id').only(LINE_KINDS)
  sent = tmp_path / 'decoder.pickle'
  sent.write_bytes(pickle.dumps((InstanceDecoder,)) + pickle.dumps(decoder))
  script = ('import pickle, sys\n'
            'import tf_batch_predict.transforms.read.decoder_process\n'
            f'with open({str(sent)!r}, "rb") as f:\n'
            '  pickle.load(f)\n'
            '  decoder = pickle.load(f)\n'
            'print(sorted(decoder._formats), "apache_beam" in sys.modules, '
            '"tensorflow" in sys.modules)\n')
  process = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
  assert process.returncode == 0, process.stderr
  assert process.stdout.split() == ["['csv',", "'json',", "'jsonl']", 'False', 'False']
