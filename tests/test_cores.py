"""All cores of one machine: with several local workers, each text file is
cut into byte ranges small enough that every worker gets a share (Beam deals
ranges out once, round robin); any other run keeps the readers' default."""
from tf_batch_predict.pipeline import parallelism
from tf_batch_predict.pipeline.config import resolve
from tf_batch_predict.pipeline.options import parse_args
from tf_batch_predict.transforms.read.lines import DESIRED_RANGE_SIZE


def _config(model_dir, pattern, *beam_args):
  return resolve(parse_args([f'--model={model_dir / "ragged"}', f'--input={pattern}',
                             '--output=/tmp/unused', *beam_args]))


def test_ranges_per_worker(model_dir, tmp_path):
  size = 40 << 20
  with open(tmp_path / 'big.jsonl', 'wb') as f:
    f.truncate(size)  # only its size matters here
  pattern = str(tmp_path / 'big.jsonl')
  assert parallelism.range_bytes(_config(model_dir, pattern)) is None
  two = _config(model_dir, pattern, '--direct_running_mode=multi_processing',
                '--direct_num_workers=2')
  expected = size // (parallelism.RANGES_PER_WORKER * 2)
  assert parallelism.range_bytes(two) == expected < DESIRED_RANGE_SIZE
  units = parallelism.work_units(two)
  assert [(u.start, u.stop) for u in units] == [
      (start, min(start + expected, size)) for start in range(0, size, expected)]
  assert [(u.start, u.stop) for u in parallelism.work_units(_config(model_dir, pattern))] == [
      (0, size)]
  # Not smaller than MIN_RANGE_BYTES, however many workers.
  many = _config(model_dir, pattern, '--direct_num_workers=64')
  assert parallelism.range_bytes(many) == parallelism.MIN_RANGE_BYTES
  # gzip files are read whole: nothing to split.
  with open(tmp_path / 'small.jsonl.gz', 'wb') as f:
    f.truncate(size)
  assert parallelism.range_bytes(_config(model_dir, str(tmp_path / 'small.jsonl.gz'),
                                   '--direct_num_workers=2')) is None


def test_decoding_helper_where_one_local_worker_decodes_lines(model_dir, tmp_path):
  """A helper process decodes beside a lone local worker where it has lines
  to decode: text files, and request files large enough to be streamed."""
  from tf_batch_predict.transforms.read.input_json import REQUEST_FILE_INSTANCES, STREAM_MIN_BYTES
  max_bytes = 1 << 20  # --max_instance_bytes: a request file above 64 of them is not read
  for name, size in [('a.jsonl', 10), ('b.csv', 10), ('big.json', STREAM_MIN_BYTES),
                     ('small.json', STREAM_MIN_BYTES - 1),
                     ('huge.json', REQUEST_FILE_INSTANCES * max_bytes + 1),
                     ('c.parquet', STREAM_MIN_BYTES)]:
    with open(tmp_path / name, 'wb') as f:
      f.truncate(size)
  for name, helper in [('a.jsonl', True), ('b.csv', True), ('big.json', True),
                       ('small.json', False), ('huge.json', False), ('c.parquet', False)]:
    pattern = str(tmp_path / name)

    def config(*args):
      return _config(model_dir, pattern, f'--max_instance_bytes={max_bytes}', *args)
    assert parallelism.decoding_helper(config()) is helper, name
    assert parallelism.decoding_helper(config('--direct_num_workers=2')) is False
    assert parallelism.decoding_helper(config(), in_launcher=True) is helper
    multi = config('--direct_running_mode=multi_processing')
    assert parallelism.decoding_helper(multi) is helper  # in the worker process
    assert parallelism.decoding_helper(multi, in_launcher=True) is False


def test_workers_in_the_launchers_process(model_dir, tmp_path):
  """Where the local runner's workers run in the launcher's process, they
  take the model the launcher's check loaded (transforms/model/score.py)."""
  pattern = str(tmp_path / 'a.jsonl')
  with open(pattern, 'w') as f:
    f.write('[1.0, 2.0]\n')
  assert parallelism.workers_in_launcher(_config(model_dir, pattern)) is True
  assert parallelism.workers_in_launcher(_config(
      model_dir, pattern, '--direct_running_mode=multi_threading', '--direct_num_workers=2'))
  assert parallelism.workers_in_launcher(_config(
      model_dir, pattern, '--direct_running_mode=multi_processing')) is False
  assert parallelism.workers_in_launcher(_config(
      model_dir, pattern, '--share_model_across_processes')) is False
