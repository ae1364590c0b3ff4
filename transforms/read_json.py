"""Read JSON files that each hold one TF Serving request body.

Accepted bodies: row format `{"instances": [...]}` (optionally with
`"signature_name"`), columnar format `{"inputs": ...}` (one value for a
single-input signature, or an object of named inputs; the leading dimension
of each value is the batch), or a single instance. A file with one instance
gives one record without an index; with several, each has its index.
"""
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.convert import parse_json_line
from transforms.records import JSON, RawChunk

MAX_INSTANCES_PER_CHUNK = 4096


class RequestError(ValueError):
  pass


def split_request(body, signature_name: str) -> list:
  """The instances of a request body; RequestError for a malformed body."""
  if not isinstance(body, dict) or not ({'instances', 'inputs'} & set(body)):
    return [body]
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
  return [{name: value[i] for name, value in inputs.items()} for i in range(count)]


class ReadJsonRequests(beam.DoFn):
  """FileMetadata -> RawChunks of parsed instances (a malformed file becomes
  one unreadable record)."""
  def __init__(self, signature_name: str):
    self._signature_name = signature_name

  def process(self, metadata):
    path = metadata.path
    with FileSystems.open(path) as f:
      content = f.read()
    try:
      instances = split_request(parse_json_line(content), self._signature_name)
    except ValueError as e:  # invalid JSON or RequestError
      yield RawChunk([(path, 0)], [None], [content.decode('utf-8', 'replace')],
                     kind=JSON, read_errors={0: str(e)})
      return
    if len(instances) == 1:
      yield RawChunk([(path, 0)], [None], instances, kind=JSON)
      return
    for start in range(0, len(instances), MAX_INSTANCES_PER_CHUNK):
      part = instances[start:start + MAX_INSTANCES_PER_CHUNK]
      yield RawChunk([(path, 0)], list(range(start, start + len(part))), part, kind=JSON)
