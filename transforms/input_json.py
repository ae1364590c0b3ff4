"""JSON request files: reading, and what an instance means.

Each file holds one TF Serving request body, parsed whole by the JSON
definition (transforms/json_values.py): row format `{"instances": [...]}`
(optionally with "signature_name"), columnar format `{"inputs": ...}` (one
value for a single-input signature, or an object of named inputs; the
leading dimension of each value is the batch), or a single instance. Each
instance is then what a JSON Lines line holding it would be. A file with one
instance gives one record without an index; with several, each has its
index. A body that is not valid is one error record for the file. There is
no fast path: request files are small, and decoding is per instance.
"""
import apache_beam as beam

from transforms.convert import carried_text
from transforms.decode import InputFormat
from transforms.input_jsonl import json_instance
from transforms.json_values import parse_json
from transforms.lines import fault_reason, open_input
from transforms.records import JSON, RawChunk

MAX_INSTANCES_PER_CHUNK = 4096
# A request file is read whole: at most this many times --max_instance_bytes.
REQUEST_FILE_INSTANCES = 64


class RequestError(ValueError):
  pass


def split_request(body, signature_name: str) -> list:
  """The instances of a request body; RequestError for a malformed body."""
  if not isinstance(body, dict) or not ({'instances', 'inputs'} & set(body)):
    return [body]
  if getattr(body, 'duplicates', None) and body.duplicates & {
      'instances', 'inputs', 'signature_name'}:
    raise RequestError(f'the request gives "{sorted(body.duplicates)[0]}" twice')
  if 'instances' in body and 'inputs' in body:
    raise RequestError('a request has either "instances" or "inputs", not both')
  asked = body.get('signature_name')
  if asked is not None and asked != signature_name:
    raise RequestError(f'the request asks for signature {asked!r}; this job '
                       f'runs {signature_name!r}')
  if 'instances' in body:
    if not isinstance(body['instances'], list):
      raise RequestError('"instances" must be a list')
    return body['instances']
  inputs = body['inputs']
  if not isinstance(inputs, dict):
    if not isinstance(inputs, list):
      raise RequestError('"inputs" must hold a batch: a list, or an object of lists')
    return inputs
  sizes = {name: len(v) if isinstance(v, list) else None for name, v in inputs.items()}
  if not inputs or None in sizes.values() or len(set(sizes.values())) != 1:
    raise RequestError('every value in "inputs" must be a list of the same length '
                       f'(the batch); got sizes {sizes}')
  count = next(iter(sizes.values()))
  return [_columnar_row(inputs, i) for i in range(count)]


def _columnar_row(inputs, i):
  row = type(inputs)((name, value[i]) for name, value in inputs.items())
  if hasattr(inputs, 'duplicates'):
    row.duplicates = inputs.duplicates
  return row


class ReadJsonRequests(beam.DoFn):
  """FileMetadata -> RawChunks of parsed instances."""
  def __init__(self, signature_name: str, max_bytes: int):
    self._signature_name = signature_name
    self._max_bytes = max_bytes

  def process(self, metadata):
    path = metadata.path
    if metadata.size_in_bytes > self._max_bytes:
      yield RawChunk([(path, 0)], [None], [b''], kind=JSON, read_errors={0: (
          f'the request file is {metadata.size_in_bytes} bytes, more than '
          f'{REQUEST_FILE_INSTANCES} x --max_instance_bytes ({self._max_bytes}); '
          'it was not read')})
      return
    try:
      with open_input(path) as f:
        content = f.read(self._max_bytes + 1)
    except Exception as e:  # pylint: disable=broad-except
      yield RawChunk([(path, 0)], [], [], kind=JSON, file_errors=[
          (path, f'reading failed: {fault_reason(e)}')])
      return
    if len(content) > self._max_bytes:  # larger once decompressed
      yield RawChunk([(path, 0)], [None], [content[:8192]], kind=JSON, read_errors={0: (
          f'the request file holds more than {self._max_bytes} bytes (64 x '
          '--max_instance_bytes); it was not read')}, unread_sizes={0: len(content)})
      return
    if content.startswith(b'\xef\xbb\xbf'):  # a byte order mark, as in every file
      content = content[3:]
    try:
      instances = split_request(parse_json(content), self._signature_name)
    except (ValueError, RecursionError) as e:  # invalid JSON or RequestError
      yield RawChunk([(path, 0)], [None], [content], kind=JSON, read_errors={0: str(e)})
      return
    if len(instances) == 1:
      yield RawChunk([(path, 0)], [None], instances, kind=JSON)
      return
    for start in range(0, len(instances), MAX_INSTANCES_PER_CHUNK):
      part = instances[start:start + MAX_INSTANCES_PER_CHUNK]
      yield RawChunk([(path, 0)], list(range(start, start + len(part))), part, kind=JSON)


class JsonRequestFormat(InputFormat):
  kind = JSON

  def __init__(self, signature_name: str, max_instance_bytes: int):
    self._signature_name = signature_name
    self._max_bytes = REQUEST_FILE_INSTANCES * max_instance_bytes

  def read(self, files):
    return (files | beam.Reshuffle()
            | beam.ParDo(ReadJsonRequests(self._signature_name, self._max_bytes)))

  def instance(self, chunk, row):
    return json_instance(chunk.records[row])

  def raw(self, chunk, row) -> bytes:
    record = chunk.records[row]
    if isinstance(record, bytes):
      return record
    try:
      return carried_text(record)
    except (ValueError, TypeError, RecursionError):
      return repr(record).encode('utf-8', 'replace')
