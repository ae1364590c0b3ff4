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
  For an input of shape [1], a list of several scalars is a batch too (each
  scalar fits [1], as in every format; as one instance's value it would
  not), and a one-element list reads either way (`_reading`).
  A value for a name that is not an input of known rank (the key, a
  passthrough field, a tf.Example feature, an input of unknown rank) is a
  batch when it is a list, one instance's value otherwise, unless the
  inputs of known rank decide: if none is a batch, the body is one
  instance and the other values are taken as they are; if one is, every
  value must be a list of the same length. Batches of
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

A file of more than STREAM_MIN_BYTES whose body is `{..., "instances":
[...], ...}` is read as a stream of its instances (`_instances_layout`,
`_streamed_chunks`), in memory bounded by a few blocks whatever its size:
a first pass finds the elements of "instances" (json_structure.py) and has
simdjson validate them, a block at a time, and the definition parse the
rest of the body with "instances" emptied; only then does a second pass
hand the elements on, each as a JSON Lines line is (its fast paths and its
definition: an element of "instances" means what a line holding it means).
Anything else (another body, an element simdjson rejects, a body that is
not valid) is read whole, as above, so that what it means and its error
messages are the definition's. Smaller files are read whole too.
A sample (`sample_request_file`, for batch-predict preflight): the file read
by ReadJsonRequests where it is small enough, else the first elements of its
"instances", its start scanned and parsed by the same definition.
"""
import re
import time
from typing import Optional

import numpy as np
import simdjson

from tf_batch_predict.transforms.convert import SchemaError, carried_text, short
from tf_batch_predict.transforms.read.decode import InputFormat
from tf_batch_predict.transforms.read.input_jsonl import JsonLinesFormat, json_instance
from tf_batch_predict.transforms.read.json_structure import (CLOSE, COLON, COMMA, OPEN,
                                                             StructureScanner)
from tf_batch_predict.transforms.json_values import _DECODER, JsonObject, _object, parse_json
from tf_batch_predict.transforms.read.sampling import FileSample, first_records, is_gzip
from tf_batch_predict.transforms.records import JSON, Lines, RawChunk
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec

MAX_INSTANCES_PER_CHUNK = 4096
# Request files larger than this are streamed where their body allows it.
STREAM_MIN_BYTES = 4 << 20
STREAM_BLOCK_BYTES = 4 << 20  # read and validated at a time
# What lies before and after the "instances" array of a streamed body, at
# most (the definition parses it whole).
STREAM_OUTSIDE_BYTES = 1 << 20
# Separators the first pass keeps for the second, at most (4 bytes each);
# beyond, the second pass finds them again.
STREAM_SEPARATORS_KEPT = 16 << 20
_WHITESPACE = b' \t\n\r'
_SPACE, _TAB, _LF, _CR = ord(' '), ord('\t'), ord('\n'), ord('\r')
_IS_SPACE = np.zeros(256, bool)
_IS_SPACE[[_SPACE, _TAB, _LF]] = True  # in an element's line: carriage returns are spaces
# A request file is read whole: at most this many times --max_instance_bytes.
REQUEST_FILE_INSTANCES = 64
_BODY_FIELDS = ('instances', 'inputs', 'examples')


def _lines():
  """lines.py, imported where first used: it reads through Beam, which the
  decoding helper process (decoder_process.py), decoding with this format,
  does not import."""
  from tf_batch_predict.transforms.read import lines
  return lines


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
  if _reading(inputs, signature.inputs[0]) == _BATCH:
    return inputs
  return [inputs]  # _EITHER: one instance's [v] is the batch [v]'s instance


# How a columnar value reads for an input: one instance's value, a batch
# (split on its leading dimension), or either (both readings fit the input).
_ONE, _BATCH, _EITHER = 'one', 'batch', 'either'


def _reading(value, spec) -> str:
  """_ONE, _BATCH or _EITHER for a value given for an input (`spec`; None
  for a name that is not an input). A list of scalars for an input of shape
  [1] is a batch, as TF Serving reads it: each scalar fits [1] (the rule of
  every format, convert.convert_value), where as one instance's value it
  would hold more than one; with one element it is either, and gives the
  same instance both ways. An empty list stays one instance's value (a
  schema error for it): read as an empty batch it would drop the file
  without a word. For inputs of other shapes a value as deep as the input's
  rank is one instance's: a scalar fits no other shape ([None], [2], [1,1]),
  so only that reading is valid."""
  if spec is None or spec.shape is None:
    return _BATCH if isinstance(value, list) else _ONE
  depth = _depth(value)
  if depth > len(spec.shape):
    return _BATCH
  if spec.shape == (1,) and depth == 1 and value:
    return _EITHER if len(value) == 1 else _BATCH
  return _ONE


def _named_columns(inputs, signature) -> list:
  if not inputs:
    raise RequestError('"inputs" names no input')
  # Inputs of known rank decide; other names are batches when they are lists.
  # Where an input reads either way (a one-element list for a [1] input), the
  # others decide: a batch beside it makes it a batch of one; if none is a
  # batch, the body is one instance, its other values taken as they are (an
  # `id` of [7] stays [7]): that case, the only one where both readings fit
  # and give different instances, keeps the reading of one instance. Still
  # refused (an error for the file): a batch beside one instance's value (a
  # list of scalars for a [1] input beside a scalar for a scalar input, or
  # beside a key that is not a list), and batches of different lengths.
  known = {n: _reading(v, signature.input(n)) for n, v in inputs.items()
           if signature.input(n) is not None and signature.input(n).shape is not None}
  if known and _BATCH not in known.values():
    return [inputs]  # every input one instance's value: the body is one instance
  batch = {n: isinstance(v, list) for n, v in inputs.items()}
  batch.update({n: reading != _ONE for n, reading in known.items()})
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


class ReadJsonRequests:
  """FileMetadata -> RawChunks of parsed instances, or of the instances'
  texts (records.Lines) where the file is streamed."""
  stream_min_bytes = STREAM_MIN_BYTES

  def __init__(self, signature: SignatureSpec, max_bytes: int):
    self._signature = signature
    self._max_bytes = max_bytes

  def process(self, metadata):
    # Chunks carry the file's stored size (for the progress output,
    # transforms/progress.py), in proportion to their instances; a file
    # that cannot be read, as bytes that could not be.
    path, size = metadata.path, metadata.size_in_bytes or 0
    if self.stream_min_bytes <= size <= self._max_bytes:
      layout = None
      try:
        with _lines().open_input(path) as f:
          layout = _instances_layout(f, self._signature, self._max_bytes)
      except Exception:  # pylint: disable=broad-except  (read whole below, which reports it)
        pass
      if layout is not None:
        yield from self._streamed(path, layout, size)
        return
    if size > self._max_bytes:
      yield RawChunk([(path, 0)], [None], [b''], kind=JSON, read_errors={0: (
          f'the request file is {metadata.size_in_bytes} bytes, more than '
          f'{REQUEST_FILE_INSTANCES} x --max_instance_bytes ({self._max_bytes}); '
          'it was not read')}, stored_bytes=size)
      return
    try:
      with _lines().open_input(path) as f:
        content = f.read(self._max_bytes + 1)
    except Exception as e:  # pylint: disable=broad-except
      yield RawChunk([(path, 0)], [], [], kind=JSON, file_errors=[
          (path, f'reading failed: {_lines().fault_reason(e)}')], skipped_bytes=size)
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

  def _streamed(self, path, layout, size):
    done = 0  # instances handed on: a fault after them is a file error
    try:
      with _lines().open_input(path) as f:
        for chunk in _streamed_chunks(f, path, layout, size):
          done += len(chunk)
          yield chunk
    except Exception as e:  # pylint: disable=broad-except
      yield RawChunk([(path, 0)], [], [], kind=JSON, file_errors=[
          (path, f'reading failed after {done} instances: {_lines().fault_reason(e)}')],
                     skipped_bytes=size - size * done // layout.count)


class JsonRequestFormat(InputFormat):
  kind = JSON

  def __init__(self, signature: SignatureSpec, max_instance_bytes: int):
    self._signature = signature
    self._max_bytes = REQUEST_FILE_INSTANCES * max_instance_bytes
    # Streamed instances are what JSON Lines lines holding them are.
    self._lines = JsonLinesFormat(max_instance_bytes)

  def read_unit(self, metadata, offsets):  # pylint: disable=unused-argument  (whole files)
    return ReadJsonRequests(self._signature, self._max_bytes).process(metadata)

  def fast(self, chunk, rows, decoder):
    if not isinstance(chunk.records, Lines):
      return None  # parsed values: decoded per instance
    return self._lines.fast(chunk, rows, decoder)

  def sample(self, metadata, quota, limits):
    return sample_request_file(metadata, quota, self._signature, self._max_bytes, limits)

  def instance(self, chunk, row):
    record = chunk.records[row]
    if isinstance(chunk.records, Lines):  # a streamed instance's text
      return json_instance(parse_json(record))
    if isinstance(record, NotAnExample):
      raise SchemaError(f'an element of "examples" must be an object of features, got '
                        f'{short(record.value)}')
    instance = json_instance(record)
    instance.all_features = isinstance(record, ExampleFeatures)
    return instance

  def raw(self, chunk, row) -> bytes:
    record = chunk.records[row]
    if isinstance(chunk.records, Lines):  # as the value read whole is written
      try:
        record = parse_json(record)
      except (ValueError, RecursionError):
        return record
    if isinstance(record, NotAnExample):
      record = record.value
    if isinstance(record, bytes):
      return record
    try:
      return carried_text(record, repeated_ok=True)
    except (ValueError, TypeError, RecursionError):
      return repr(record).encode('utf-8', 'replace')


# -- streamed request files ----------------------------------------------------------

class _Layout:
  """Where a streamed body's instances are: the "instances" array's '[' and
  ']', and cut points [(position of a separator, instances before it)] at
  which the second pass starts a block, outside any string."""
  def __init__(self, array_open: int, array_close: int, cuts: list, count: int,
               separators: list):
    self.array_open, self.array_close, self.cuts, self.count = (
        array_open, array_close, cuts, count)
    # Per block, the separators between its elements (uint32, from the
    # block's start) as the first pass found them; None: found again.
    self.separators = separators


def _instances_layout(f, signature: SignatureSpec, max_bytes: int) -> Optional[_Layout]:
  """The first pass over a request file: its layout where its body is an
  object with an "instances" array of at least two elements that simdjson
  accepts, and the rest of the body (that array emptied) is small and a
  valid body by the definition; else None (the file is then read whole)."""
  head = f.read(STREAM_BLOCK_BYTES)
  skip = 3 if head.startswith(b'\xef\xbb\xbf') else 0
  scanner = StructureScanner()
  positions, kinds, depths = scanner.feed(head)
  array_open = _array_open(head, skip, positions.tolist(), kinds.tolist(), depths.tolist())
  if array_open is None:
    return None
  prefix = head[skip:array_open]
  parser = simdjson.Parser()
  cuts, count, separators, kept = [], 0, [], 0
  pending = bytearray(head[array_open + 1:])  # the bytes after the last separator validated
  pending_at = array_open + 1  # the position of pending[0]
  array_close = None
  read = len(head)
  after = positions > array_open
  events = (positions[after], kinds[after], depths[after])
  while True:
    block_positions, block_kinds, block_depths = events
    closes = np.flatnonzero((block_kinds == CLOSE) & (block_depths == 1))
    if len(closes):
      array_close = int(block_positions[closes[0]])
    commas = block_positions[(block_kinds == COMMA) & (block_depths == 2)]
    if array_close is not None:
      commas = commas[commas < array_close]
    end = array_close if array_close is not None else (int(commas[-1]) if len(commas) else None)
    if end is not None:
      text = bytes(pending[:end - pending_at])
      elements = len(commas) + (1 if array_close is not None else 0)
      if array_close is not None and not count and not len(commas) and not text.strip(
          _WHITESPACE):
        elements = 0  # "instances": []
      if elements and not _valid_elements(parser, text, elements):
        return None
      count += elements
      inner = commas[:-1] if array_close is None else commas
      kept += len(inner)
      separators.append((inner - pending_at).astype(np.uint32)
                        if kept <= STREAM_SEPARATORS_KEPT else None)
      if array_close is None:
        cuts.append((end, count))
        del pending[:end + 1 - pending_at]
        pending_at = end + 1
    if array_close is not None:
      break
    if read > max_bytes:
      return None
    block = f.read(STREAM_BLOCK_BYTES)
    if not block:
      return None  # the array never closes: not valid JSON
    pending += block
    read += len(block)
    events = scanner.feed(block)
  suffix = bytes(pending[array_close + 1 - pending_at:]) + f.read(STREAM_OUTSIDE_BYTES + 1)
  if len(prefix) + len(suffix) > STREAM_OUTSIDE_BYTES or count < 2:
    return None
  if array_close + 1 + len(suffix) > max_bytes:
    return None  # larger than allowed once decompressed: read whole, which says so
  try:
    body = parse_json(prefix + b'[]' + suffix)
    if not (isinstance(body, dict) and 'instances' in body) or split_request(body, signature):
      return None
  except (ValueError, RecursionError):  # not a valid body: read whole, which says why
    return None
  return _Layout(array_open, array_close, cuts, count, separators)


def _array_open(head: bytes, skip: int, positions, kinds, depths) -> Optional[int]:
  """The position of the "instances" array's '[' where the body is an
  object that has it within STREAM_OUTSIDE_BYTES; else None."""
  if not positions or kinds[0] != OPEN or head[positions[0]:positions[0] + 1] != b'{' or (
      head[skip:positions[0]].strip(_WHITESPACE)):
    return None
  separator = positions[0]
  for position, kind, depth in zip(positions[1:], kinds[1:], depths[1:]):
    if position > STREAM_OUTSIDE_BYTES or depth == 0:
      return None
    if kind == COMMA and depth == 1:
      separator = position
    elif kind == COLON and depth == 1:
      try:
        key = parse_json(head[separator + 1:position])
      except ValueError:
        return None
      if key == 'instances':
        start = len(head) - len(head[position + 1:].lstrip(_WHITESPACE))
        return start if head[start:start + 1] == b'[' else None
  return None


def _valid_elements(parser, text: bytes, count: int) -> bool:
  """Whether `text` is `count` JSON values separated by commas, each one
  simdjson accepts, nested as deep as they are in the body (in an object's
  array)."""
  try:
    doc = parser.parse(b'{"":[' + text + b']}')
    try:
      return len(doc['']) == count
    finally:
      doc = None  # the parser reuses its buffer: no proxy may outlive the parse
  except (ValueError, TypeError, KeyError, RuntimeError, IndexError, OverflowError,
          UnicodeDecodeError):
    return False


def _skip(f, count: int) -> None:
  while count > 0:
    skipped = len(f.read(min(count, STREAM_BLOCK_BYTES)))
    if not skipped:
      raise OSError('the file changed while it was read')
    count -= skipped


def _streamed_chunks(f, path: str, layout: _Layout, size: int):
  """The second pass: RawChunks of the instances' texts (records.Lines; a
  line break inside an instance, whitespace there, read as a space),
  indexed by their position in "instances"."""
  bounds = [(layout.array_open, 0)] + layout.cuts + [(layout.array_close, layout.count)]
  buffer, buffer_at = b'', 0  # buffer holds the file from buffer_at on
  for (start, first), (end, last), found in zip(bounds[:-1], bounds[1:], layout.separators):
    drop = start + 1 - buffer_at  # what lies before this block is done with
    if drop >= len(buffer):
      _skip(f, drop - len(buffer))
      buffer = b''
    else:
      buffer = buffer[drop:]
    buffer_at = start + 1
    while buffer_at + len(buffer) < end:
      block = f.read(max(STREAM_BLOCK_BYTES, end - buffer_at - len(buffer)))
      if not block:
        raise OSError('the file changed while it was read')
      buffer += block
    text = buffer[:end - buffer_at]
    if found is not None:
      separators = found.astype(np.int64)
    else:
      positions, kinds, depths = StructureScanner(depth=2).feed(text)
      separators = positions[(kinds == COMMA) & (depths == 2)]
    if len(separators) != last - first - 1:
      raise OSError('the file changed while it was read')
    lines = _element_lines(text, separators)
    for at in range(0, len(lines), MAX_INSTANCES_PER_CHUNK):
      part = lines[at:at + MAX_INSTANCES_PER_CHUNK]
      index = first + at
      yield RawChunk([(path, 0)], list(range(index, index + len(part))), part,
                     kind=JSON, stored_bytes=(size * (index + len(part)) // layout.count
                                              - size * index // layout.count))


def _element_lines(text: bytes, separators: np.ndarray) -> Lines:
  """The elements of an array's part `text` (separated at `separators`) as
  records.Lines: each separator becomes the line feed between two lines,
  and a line break inside an element, whitespace there, a space."""
  data = bytearray(text)
  array = np.frombuffer(data, np.uint8)
  array[(array == _LF) | (array == _CR)] = _SPACE
  array[separators] = _LF
  starts = np.concatenate([[0], separators + 1]).astype(np.int64)
  ends = np.concatenate([separators, [len(text)]]).astype(np.int64)
  # Whitespace around each element (none is empty: validated) is trimmed a
  # byte a round, for all at once; past a few rounds, by a search.
  for _ in range(8):
    leading = _IS_SPACE[array[starts]]
    trailing = _IS_SPACE[array[ends - 1]]
    if not (leading.any() or trailing.any()):
      break
    starts[leading] += 1
    ends[trailing] -= 1
  else:
    visible = np.flatnonzero(~_IS_SPACE[array])
    starts = visible[np.searchsorted(visible, starts)]
    ends = visible[np.searchsorted(visible, ends) - 1] + 1
  return Lines(bytes(data), starts, ends)


# -- a sample: the first instances of a file -----------------------------------------

def sample_request_file(metadata, quota: int, signature: SignatureSpec, job_limit: int,
                        limits) -> FileSample:
  """The first `quota` instances of a request file (`job_limit`: the bytes
  the run reads of one): ReadJsonRequests where the run parses it whole and
  it holds at most `limits.request_whole_bytes` (decompressed; its instance
  count is then exact); a larger one is sampled from its start
  (`_sample_request_start`). A gzip file is read through a bounded
  decompressing reader, never whole past the cap."""
  path, size = metadata.path, metadata.size_in_bytes
  if size > job_limit or (not is_gzip(path) and size <= limits.request_whole_bytes):
    return _sample_whole(metadata, quota, signature, job_limit, None)
  # Larger than the cap as stored, or gzip: the first bytes decompressed.
  read_limit = min(limits.request_whole_bytes, job_limit)
  content = b''
  try:
    with _lines().open_input(path) as f:
      content = f.read(read_limit + 1)
      if len(content) <= read_limit:
        decompressed = len(content)
      elif not is_gzip(path):
        decompressed = size
      else:  # how much there is, without keeping it (the run reads up to its limit)
        decompressed = _read_on(f, len(content), job_limit, limits.request_scan_seconds)
  except Exception as e:  # pylint: disable=broad-except
    if len(content) <= read_limit:  # the run's read fails as early: its own record
      return _sample_whole(metadata, quota, signature, job_limit, None)
    return FileSample(path, JSON, size, [RawChunk([(path, 0)], [], [], kind=JSON, file_errors=[
        (path, f'reading failed: {_lines().fault_reason(e)}')])], count=0)
  if len(content) <= read_limit or (decompressed is not None and decompressed > job_limit):
    # Whole within the cap, or larger than the run reads (its error record,
    # read no further than its limit, here at most the cap).
    if decompressed is not None and decompressed > job_limit > read_limit:
      return _too_large_request(metadata, content, job_limit)
    return _sample_whole(metadata, quota, signature, job_limit, decompressed)
  sample = _sample_request_start(metadata, content[:read_limit], quota, signature)
  sample.decompressed = decompressed
  return sample


def _read_on(f, done: int, limit: int, seconds: float) -> Optional[int]:
  """Reads on (not keeping it) to tell the decompressed size of a file, up
  to `limit` + 1 bytes: the size, or None after `seconds`."""
  deadline = time.monotonic() + seconds
  while done <= limit:
    if time.monotonic() > deadline:
      return None
    block = f.read(min(_lines().BLOCK_SIZE, limit + 1 - done))
    if not block:
      break
    done += len(block)
  return done


def _sample_whole(metadata, quota, signature, job_limit, decompressed) -> FileSample:
  """The run's own reading of the whole file, its first `quota` instances kept."""
  chunks = list(ReadJsonRequests(signature, job_limit).process(metadata))
  count = sum(len(c) for c in chunks)
  sample = FileSample(metadata.path, JSON, metadata.size_in_bytes, first_records(chunks, quota),
                      count=count, decompressed=decompressed)
  sample.instances = sum(len(c) for c in sample.chunks)
  if not any(c.file_errors for c in chunks):
    sample.span = (count, 0, None)  # bytes: the file's, decompressed (filled in later)
  return sample


def _too_large_request(metadata, content: bytes, job_limit: int) -> FileSample:
  """ReadJsonRequests' record for a request file larger once decompressed
  than it reads, made here because ReadJsonRequests reads up to `job_limit`
  + 1 bytes to tell (64 x --max_instance_bytes), which a sample does not."""
  path = metadata.path
  chunk = RawChunk([(path, 0)], [None], [content[:8192]], kind=JSON, read_errors={0: (
      f'the request file holds more than {job_limit} bytes ({REQUEST_FILE_INSTANCES} x '
      '--max_instance_bytes); it was not read')}, unread_sizes={0: job_limit + 1})
  return FileSample(path, JSON, metadata.size_in_bytes, [chunk], instances=1, count=1)


# The start of a request file too large for a sample to parse whole: the run
# parses every file whole (ReadJsonRequests), which a sample cannot afford,
# so the body's start is scanned here. Values are delimited by brackets and
# strings alone (`_value_end`), then each is parsed by the job's JSON
# definition (transforms/json_values.py), so an instance taken is the run's.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{}]')
_JSON_SCALAR_END = re.compile(r'[,\]}\s]')
_JSON_SPACE = re.compile(r'[ \t\n\r]*')


def _value_end(text: str, start: int) -> Optional[int]:
  """Where the JSON value starting at `start` ends, by its brackets and
  strings alone (after its last character); None where `text` ends first."""
  first = text[start:start + 1]
  if first in ('[', '{', '"'):
    depth = 0
    for token in _JSON_TOKEN.finditer(text, start):
      mark = token.group()
      if mark == '"':  # a string that does not end
        return None
      if mark in '[{':
        depth += 1
      elif mark in ']}':
        depth -= 1
      if depth <= 0:
        return token.end()
    return None
  end = _JSON_SCALAR_END.search(text, start)
  return end.start() if end else None


def _first_error(data: bytes) -> Optional[str]:
  """The message the job's JSON definition gives for `data`, or None."""
  try:
    parse_json(data)
  except ValueError as e:
    return str(e)
  return None


class _Cut(Exception):
  """The text ends within what is being parsed."""


class _Invalid(Exception):
  """What is there up to `position` is not valid JSON (whatever follows)."""
  def __init__(self, position):
    super().__init__(position)
    self.position = position


def _json_value(text: str, at: int) -> tuple:
  """(value, the end) of the JSON value at `at` (by the job's definition);
  _Cut where the text ends first, _Invalid where it cannot be parsed."""
  end = _value_end(text, at)
  if end is None:
    raise _Cut()
  try:
    return _DECODER.raw_decode(text, at)
  except (ValueError, RecursionError):
    raise _Invalid(end + 1) from None


def _json_fields(text: str, at: int, pairs: list, stop_at_instances: bool,
                 first: bool = True) -> int:
  """Parses the fields of an object from `at` into `pairs` ((name, value)):
  up to a field "instances" whose value is a list (returns where its first
  element starts) where `stop_at_instances`, else to the object's end or
  the text's (returns -1). _Cut where a field before "instances" cannot be
  told whole, _Invalid where it is not valid; a field after it that the
  text cuts is there with the value None. `first`: no field before `at`."""
  while True:
    at = _JSON_SPACE.match(text, at).end()
    if at >= len(text):
      if stop_at_instances:
        raise _Cut()
      return -1
    if text[at] == '}':
      if stop_at_instances:
        raise _Cut()  # no "instances": one instance, larger than the sample reads
      return -1
    if not first:
      if text[at] != ',':
        raise _Invalid(at + 1)
      at = _JSON_SPACE.match(text, at + 1).end()
    first, name = False, None
    try:
      name, at = _json_value(text, at)
      at = _JSON_SPACE.match(text, at).end()
      if at >= len(text):
        raise _Cut()
      if text[at] != ':' or not isinstance(name, str):
        raise _Invalid(at + 1)
      at = _JSON_SPACE.match(text, at + 1).end()
      if stop_at_instances:
        if name == 'instances' and text[at:at + 1] == '[':
          return at + 1
        if name in ('inputs', 'examples', 'context'):
          raise _Cut()  # a body of another form: its instances are told from the whole
      value, at = _json_value(text, at)
    except _Cut:
      if stop_at_instances:
        raise
      if isinstance(name, str):  # its value cut: there, of a value not known
        pairs.append((name, None))
      return -1
    pairs.append((name, value))


def _request_start(data: bytes, quota: int):
  """The start of a request body cut at len(data) (a byte order mark
  removed): (its fields, with up to `quota` elements of "instances" as
  that field's value, the byte offsets where the first element starts and
  the last ends) where the body is an object whose "instances" list starts
  within `data`; (None, the run's message for the whole file) where what
  is there is already not valid; None where the body is of another form
  (its instances cannot be told from its start)."""
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    if e.reason != 'unexpected end of data':
      return None, _first_error(data)
    data = data[:e.start]  # a character cut at the end
    text = data.decode('utf-8')
  ascii_only = text.isascii()

  def byte_at(position):
    return position if ascii_only else len(text[:position].encode('utf-8'))

  at = _JSON_SPACE.match(text).end()
  if text[at:at + 1] != '{':
    return None  # one instance (a value or a list), larger than the sample reads
  before, instances, after, first, last = [], [], [], None, None
  try:
    at = last = _json_fields(text, at + 1, before, stop_at_instances=True)
    closed = False
    while len(instances) < quota:
      at = _JSON_SPACE.match(text, at).end()
      if at >= len(text):
        break
      if not instances and text[at] == ']':
        closed, last = True, at + 1
        break
      try:
        value, end = _json_value(text, at)
      except _Cut:  # not an instance of the sample
        break
      gap = _JSON_SPACE.match(text, end).end()
      if gap >= len(text) and text[at] not in '[{"':
        break  # a number or literal at the cut: it may go on
      instances.append(value)
      first, last = (at if first is None else first), end
      if gap < len(text) and text[gap] == ']':
        closed, last = True, gap + 1
        break
      if gap < len(text) and text[gap] != ',':
        raise _Invalid(gap + 1)
      at = gap + 1
    if closed:  # the fields after "instances" (one given twice, say)
      _json_fields(text, last, after, stop_at_instances=False, first=False)
  except _Cut:
    return None
  except _Invalid as e:  # the job's parser stops there, on the whole file as here
    return None, _first_error(data[:byte_at(min(e.position, len(text)))]) or 'invalid JSON'
  # The job's definition on what was parsed, closed (nesting too deep, a
  # string with an unpaired surrogate): the run's message for the file.
  message = _first_error(data[:byte_at(last)] + (b'}' if closed else b']}'))
  if message is not None:
    return None, message
  pairs = before + [('instances', instances)] + after
  return pairs, (byte_at(first), byte_at(last)) if instances else None


def _sample_request_start(metadata, data: bytes, quota: int, signature) -> FileSample:
  """A request file larger than a sample parses whole: the elements of its
  "instances" within `data` (its first bytes), each parsed by the job's
  JSON definition, the body's fields before them checked by `split_request`.
  The run parses the file whole, so what follows is not checked here."""
  path = metadata.path
  sample = FileSample(path, JSON, metadata.size_in_bytes, [], partial='start')
  bom = 3 if data.startswith(b'\xef\xbb\xbf') else 0
  start = _request_start(data[bom:], quota)
  if start is None:
    sample.partial = 'not sampled'
    return sample
  if start[0] is None:  # not valid by then: the run's record for the file
    sample.chunks = [RawChunk([(path, 0)], [None], [data[bom:]], kind=JSON,
                              read_errors={0: start[1]})]
    sample.instances, sample.count = 1, 1
    return sample
  pairs, span = start
  try:
    instances = split_request(_object(pairs), signature)
  except ValueError as e:  # the fields before "instances" (signature_name, ...)
    sample.chunks = [RawChunk([(path, 0)], [None], [data[bom:]], kind=JSON,
                              read_errors={0: str(e)})]
    sample.instances, sample.count = 1, 1
    return sample
  if instances:
    sample.chunks = [RawChunk([(path, 0)], list(range(len(instances))), instances, kind=JSON)]
    sample.instances = len(instances)
    sample.span = (len(instances), bom + span[0], bom + span[1])
  return sample

