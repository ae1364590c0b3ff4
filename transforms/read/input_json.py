"""JSON request files: reading, and what an instance means.

Each file holds one TF Serving request body, parsed whole by the JSON
definition (transforms/json_values.py); `split_request` turns it into
instances, each then what a JSON Lines line holding it would be:

- row format `{"instances": [v, ...]}`: each element is one instance;
- classify/regress format `{"examples": [{...}, ...], "context": {...}}`:
  each example is one instance, the context's fields merged into it (the
  example's value wins where both name a field, as TF Serving serializes
  context then example into one Example); an example that is not an object
  is a `schema` error for that instance alone; a context that is not an
  object is an error for the file. Every field of an example is a feature,
  as TF Serving reads them (`ExampleFeatures`): one named like the input
  is not a serialized Example to feed. For a signature that does not take
  Examples, the merged fields name the inputs as an instance's fields do;
- columnar format `{"inputs": value}` (a single-input signature) or
  `{"inputs": {name: value, ...}}`: a value whose nesting depth is at most
  its input's per-instance rank is ONE instance's value (a number, a string
  or `{"b64": ...}` for a rank-0 input: `{"inputs": {"b64": ...}}`); a
  deeper one is a batch, its leading dimension splitting it into instances.
  A value for a name that is not an input of known rank (the key, a
  passthrough field, a tf.Example feature, an input of unknown rank) is a
  batch when it is a list, one instance's value otherwise, unless the
  inputs of known rank decide: if they are all one instance's values, the
  body is one instance and the other values are taken as they are; if they
  are batches, every value must be a list of the same length. Batches of
  different lengths, or one instance's value beside a batch (TF Serving's
  columnar form allows inputs of different leading dimensions), cannot be
  split into instances: an error for the file. `{"b64": ...}` is a binary
  value, not an object of named inputs, unless an input is named "b64";
- anything else (an object without "instances", "inputs" or a list of
  "examples", or a non-object) is a single instance: `{"examples": {"b64":
  ...}}` is an instance for a signature whose input is named "examples"
  (with "context" or "signature_name" beside it, "examples" must be a
  list).

"signature_name", where given, must name the job's signature (else an error
for the file naming both). A body holds one of "instances", "inputs" or
"examples". A file with one instance gives one record without an index;
with several, each has its index (its position in the body's list or
batch). A body that is not valid is one `parse` error record for the file.
There is no fast path: request files are small, and decoding is per
instance.
"""
import apache_beam as beam

from tf_batch_predict.transforms.convert import SchemaError, carried_text, short
from tf_batch_predict.transforms.read.decode import InputFormat
from tf_batch_predict.transforms.read.input_jsonl import json_instance
from tf_batch_predict.transforms.json_values import JsonObject, parse_json
from tf_batch_predict.transforms.read.lines import fault_reason, open_input
from tf_batch_predict.transforms.records import JSON, RawChunk
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec

MAX_INSTANCES_PER_CHUNK = 4096
# A request file is read whole: at most this many times --max_instance_bytes.
REQUEST_FILE_INSTANCES = 64
_BODY_FIELDS = ('instances', 'inputs', 'examples')


class RequestError(ValueError):
  pass


class NotAnExample:
  """An element of "examples" that is not an object: a schema error for
  that instance alone."""
  def __init__(self, value):
    self.value = value

  def __eq__(self, other):
    return isinstance(other, NotAnExample) and other.value == self.value

  def __repr__(self):
    return f'NotAnExample({self.value!r})'


def _is_body(body) -> bool:
  return isinstance(body, dict) and ('instances' in body or 'inputs' in body or isinstance(
      body.get('examples'), list) or ('examples' in body and (
          'context' in body or 'signature_name' in body)))


def split_request(body, signature: SignatureSpec) -> list:
  """The instances of a request body (see the module's docstring);
  RequestError for a malformed body."""
  if not _is_body(body):
    return [body]
  repeated = (getattr(body, 'duplicates', None) or frozenset()) & {
      *_BODY_FIELDS, 'signature_name', 'context'}
  if repeated:
    raise RequestError(f'the request gives "{sorted(repeated)[0]}" twice')
  given = [f for f in _BODY_FIELDS if f in body]
  if len(given) > 1:
    raise RequestError('a request has one of "instances", "inputs" or "examples", not '
                       f'both (it has {" and ".join(given)})')
  asked = body.get('signature_name')
  if asked is not None and asked != signature.name:
    raise RequestError(f'the request asks for signature {asked!r}; this job '
                       f'runs {signature.name!r}')
  if 'instances' in body:
    if not isinstance(body['instances'], list):
      raise RequestError('"instances" must be a list')
    return body['instances']
  if 'examples' in body:
    return _examples(body)
  return _columnar(body['inputs'], signature)


def _examples(body) -> list:
  examples, context = body['examples'], body.get('context')
  if not isinstance(examples, list):
    raise RequestError('"examples" must be a list of objects')
  if context is not None and not isinstance(context, dict):
    raise RequestError(f'"context" must be an object of features, got {short(context)}')
  return [_merged(context, e) if isinstance(e, dict) else NotAnExample(e) for e in examples]


class ExampleFeatures(JsonObject):
  """An element of a classify/regress body, context merged in: every field
  is a feature, as TF Serving reads it (none is a serialized Example fed by
  the input's name)."""
  __slots__ = ()


def _merged(context, example):
  """Context then example, the example's value winning; a field repeated
  within either counts as repeated unless the example overrides it."""
  merged = ExampleFeatures(context or {})
  merged.update(example)
  merged.duplicates = frozenset(
      (getattr(example, 'duplicates', None) or frozenset())
      | ((getattr(context, 'duplicates', None) or frozenset()) - set(example))) or None
  return merged


def _depth(value) -> int:
  """The nesting depth of a JSON value: 0 for a non-list, else 1 + its first
  element's."""
  depth = 0
  while isinstance(value, list):
    depth += 1
    if not value:
      break
    value = value[0]
  return depth


def _is_b64(value, signature) -> bool:
  return (isinstance(value, dict) and set(value) == {'b64'}
          and signature.input('b64') is None)


def _columnar(inputs, signature) -> list:
  if isinstance(inputs, dict) and not _is_b64(inputs, signature):
    return _named_columns(inputs, signature)
  if len(signature.inputs) != 1:
    if not isinstance(inputs, list):
      raise RequestError('"inputs" must hold a batch: a list, or an object of named inputs')
    return inputs
  if _is_batch(inputs, signature.inputs[0]):
    return inputs
  return [inputs]


def _is_batch(value, spec) -> bool:
  """Whether a value for an input is a batch rather than one instance's."""
  if spec is None or spec.shape is None:
    return isinstance(value, list)
  return _depth(value) > len(spec.shape)


def _named_columns(inputs, signature) -> list:
  if not inputs:
    raise RequestError('"inputs" names no input')
  # Inputs of known rank decide; other names are batches when they are lists.
  known = {n: _is_batch(v, signature.input(n)) for n, v in inputs.items()
           if signature.input(n) is not None and signature.input(n).shape is not None}
  if known and not any(known.values()):
    return [inputs]  # every input one instance's value: the body is one instance
  batch = {n: isinstance(v, list) for n, v in inputs.items()}
  batch.update(known)
  if not any(batch.values()):
    return [inputs]
  singles = sorted(n for n, b in batch.items() if not b)
  if singles:
    batches = sorted(n for n, b in batch.items() if b)
    raise RequestError(f'"inputs" cannot be split into instances: {singles[0]!r} holds one '
                       f'instance\'s value, {batches[0]!r} a batch')
  sizes = {name: len(value) for name, value in inputs.items()}
  if len(set(sizes.values())) != 1:
    raise RequestError('"inputs" cannot be split into instances: the values have different '
                       f'batch lengths {sizes} (TF Serving allows that for inputs of '
                       'different leading dimensions; here each instance needs one of each)')
  count = next(iter(sizes.values()))
  return [_columnar_row(inputs, i) for i in range(count)]


def _columnar_row(inputs, i):
  row = type(inputs)((name, value[i]) for name, value in inputs.items())
  if hasattr(inputs, 'duplicates'):
    row.duplicates = inputs.duplicates
  return row


class ReadJsonRequests(beam.DoFn):
  """FileMetadata -> RawChunks of parsed instances."""
  def __init__(self, signature: SignatureSpec, max_bytes: int):
    self._signature = signature
    self._max_bytes = max_bytes

  def process(self, metadata):
    # The file is read whole: its chunks carry its stored size (for the
    # progress output, transforms/progress.py), in proportion to their
    # instances; a file that cannot be read, as bytes that could not be.
    path, size = metadata.path, metadata.size_in_bytes or 0
    if size > self._max_bytes:
      yield RawChunk([(path, 0)], [None], [b''], kind=JSON, read_errors={0: (
          f'the request file is {metadata.size_in_bytes} bytes, more than '
          f'{REQUEST_FILE_INSTANCES} x --max_instance_bytes ({self._max_bytes}); '
          'it was not read')}, stored_bytes=size)
      return
    try:
      with open_input(path) as f:
        content = f.read(self._max_bytes + 1)
    except Exception as e:  # pylint: disable=broad-except
      yield RawChunk([(path, 0)], [], [], kind=JSON, file_errors=[
          (path, f'reading failed: {fault_reason(e)}')], skipped_bytes=size)
      return
    if len(content) > self._max_bytes:  # larger once decompressed
      yield RawChunk([(path, 0)], [None], [content[:8192]], kind=JSON, read_errors={0: (
          f'the request file holds more than {self._max_bytes} bytes (64 x '
          '--max_instance_bytes); it was not read')}, unread_sizes={0: len(content)},
                     stored_bytes=size)
      return
    if content.startswith(b'\xef\xbb\xbf'):  # a byte order mark, as in every file
      content = content[3:]
    try:
      instances = split_request(parse_json(content), self._signature)
    except (ValueError, RecursionError) as e:  # invalid JSON or RequestError
      yield RawChunk([(path, 0)], [None], [content], kind=JSON, read_errors={0: str(e)},
                     stored_bytes=size)
      return
    if len(instances) == 1:
      yield RawChunk([(path, 0)], [None], instances, kind=JSON, stored_bytes=size)
      return
    count = len(instances)
    for start in range(0, count, MAX_INSTANCES_PER_CHUNK):
      part = instances[start:start + MAX_INSTANCES_PER_CHUNK]
      end = start + len(part)
      yield RawChunk([(path, 0)], list(range(start, end)), part, kind=JSON,
                     stored_bytes=size * end // count - size * start // count)
    if not count:
      yield RawChunk([(path, 0)], [], [], kind=JSON, stored_bytes=size)


class JsonRequestFormat(InputFormat):
  kind = JSON

  def __init__(self, signature: SignatureSpec, max_instance_bytes: int):
    self._signature = signature
    self._max_bytes = REQUEST_FILE_INSTANCES * max_instance_bytes

  def read(self, files):
    return (files | beam.Reshuffle()
            | beam.ParDo(ReadJsonRequests(self._signature, self._max_bytes)))

  def instance(self, chunk, row):
    record = chunk.records[row]
    if isinstance(record, NotAnExample):
      raise SchemaError(f'an element of "examples" must be an object of features, got '
                        f'{short(record.value)}')
    instance = json_instance(record)
    instance.all_features = isinstance(record, ExampleFeatures)
    return instance

  def raw(self, chunk, row) -> bytes:
    record = chunk.records[row]
    if isinstance(record, NotAnExample):
      record = record.value
    if isinstance(record, bytes):
      return record
    try:
      return carried_text(record, repeated_ok=True)
    except (ValueError, TypeError, RecursionError):
      return repr(record).encode('utf-8', 'replace')
