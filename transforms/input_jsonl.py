"""JSON Lines: reading, and what a line means.

Definition (`JsonLinesFormat.instance`): each line (transforms/lines.py says
what a line is) is exactly one JSON text (transforms/json_values.py says
what that is). An object's fields name the inputs; a single-input signature
also takes the bare value. Values convert by transforms/convert.py.

Fast path (`JsonLinesFormat.fast`): simdjson parses each line (it rejects
every line the definition rejects, and a few it accepts: NaN, integers
beyond 64 bits, nesting beyond its limit), then typed extraction for inputs
of fully defined shape of rank 0 or 1. A line is accepted only in the plain
case where the result is the definition's by construction: an object with
no repeated field, each input of exactly its dtype's JSON kind and shape,
carried values that are strings, integers, booleans or (passthrough only)
null. Anything else, from a decimal key (whose digits only the definition
keeps) to a one-element list for a scalar input, goes to the definition.
"""
import threading
import weakref

import numpy as np
import orjson
import simdjson

from transforms.decode import FastRows, Instance, InputFormat
from transforms.json_values import parse_json
from transforms.lines import DESIRED_RANGE_SIZE, ReadLineChunks
from transforms.records import JSONL


_BOM = b'\xef\xbb\xbf'


class _Defer(Exception):
  """The fast path leaves this line to the definition. (Raised as a new
  instance each time: a shared one would keep the last traceback, and with
  it simdjson proxies that forbid the parser's next parse.)"""


def json_instance(value) -> Instance:
  """The instance a parsed JSON value is (JSON Lines, request files): an
  object is its fields, anything else a bare value."""
  if isinstance(value, dict):
    return Instance(value, value, duplicates=getattr(value, 'duplicates', None) or frozenset())
  return Instance(None, value)


class JsonLinesFormat(InputFormat):
  kind = JSONL
  # Bytes per byte range a file is split into, where transforms/inputs.py
  # sets it for a job; None: the reader's default.
  range_size = None

  def __init__(self, max_instance_bytes: int):
    self._max_instance_bytes = max_instance_bytes
    self._local = threading.local()  # simdjson parsers are not thread-safe
    self._plans = weakref.WeakKeyDictionary()  # decoder -> its fast-path plan

  def __getstate__(self):
    return {'_max_instance_bytes': self._max_instance_bytes}

  def __setstate__(self, state):
    self.__init__(state['_max_instance_bytes'])

  def read(self, files):
    return files | ReadLineChunks(JSONL, self._max_instance_bytes,
                                  desired_range_size=self.range_size or DESIRED_RANGE_SIZE)

  def instance(self, chunk, row) -> Instance:
    return json_instance(parse_json(chunk.records[row]))

  # -- fast path -------------------------------------------------------------

  def fast(self, chunk, rows, decoder):
    plan = self._plans.get(decoder)
    if plan is None:
      plan = self._plans[decoder] = _plan(decoder)
    if not plan:
      return None
    parser = getattr(self._local, 'parser', None)
    if parser is None:
      parser = self._local.parser = simdjson.Parser()
    extractors, carriers = plan
    accepted, values, scalars = [], [[] for _ in extractors], []
    texts = [[] for _ in carriers]
    records = chunk.records
    for row in rows:
      try:
        row_values, row_scalars, row_texts = _extract(parser, records[row], extractors,
                                                      carriers, decoder)
      except _Defer:
        continue
      except (ValueError, TypeError, KeyError, RuntimeError, IndexError, OverflowError,
              UnicodeDecodeError):
        # simdjson's refusals; a fresh parser, in case one left it unusable.
        parser = self._local.parser = simdjson.Parser()
        continue
      accepted.append(row)
      scalars.append(row_scalars)
      for column, value in zip(values, row_values):
        column.append(value)
      for column, text in zip(texts, row_texts):
        column.append(text)
    if not accepted:
      return None
    feeds = {}
    for (spec, _, finish), column in zip(extractors, values):
      feeds[spec.name] = finish(column)
    if extractors.scalar_floats:
      table = np.array(scalars, dtype=np.float64)
      for j, spec in enumerate(extractors.scalar_floats):
        feeds[spec.name] = _to_float(table[:, j], spec.dtype)
    return FastRows(accepted, feeds,
                    {field: column for (field, _), column in zip(carriers, texts)})


def _extract(parser, line, extractors, carriers, decoder):
  if line.startswith(_BOM):  # simdjson skips one; in a line it is not JSON
    raise _Defer
  doc = parser.parse(line)
  try:
    if type(doc) is simdjson.Object:  # pylint: disable=unidiomatic-typecheck
      names = set(doc.keys())
      if len(names) != len(doc):  # a repeated field
        raise _Defer
      if decoder.single is not None and names == {'b64'} and decoder.single.dtype == 'string':
        raise _Defer
      get = doc.get
      # Each vector input holds one '['; any other means nesting may hide in
      # one (simdjson's buffers flatten nested arrays).
      nested = line.count(b'[') != len(extractors.vectors)
      row_values = [extract(get(spec.name), nested) for spec, extract, _ in extractors]
      # Scalar float inputs, the many narrow fields of tabular data, at once:
      # each a JSON number (int or float), never a bool, string or null.
      row_scalars = [get(name) for name in extractors.scalar_float_names]
      if not _NUMBER_TYPES.issuperset(map(type, row_scalars)):
        raise _Defer
      row_texts = [carry(get(field), line) for field, carry in carriers]
    elif decoder.single is not None and not carriers:
      nested = line.count(b'[') != len(extractors.vectors)
      if extractors.scalar_floats:
        if type(doc) not in _NUMBER_TYPES:  # pylint: disable=unidiomatic-typecheck
          raise _Defer
        return [], [doc], []
      row_values, row_scalars, row_texts = [extractors[0][1](doc, nested)], [], []
    else:
      raise _Defer
    return row_values, row_scalars, row_texts
  finally:
    doc = None  # the parser reuses its buffer: no proxy may outlive the line


def _plan(decoder):
  """(input extractors, carried extractors), or None where the signature
  takes nothing the fast path knows."""
  if decoder.signature.takes_examples:
    return None
  extractors = _Extractors()
  for spec in decoder.inputs:
    if not spec.fully_defined or len(spec.shape) > 1:
      return None
    if spec.shape == () and spec.dtype != 'string' and np.dtype(spec.dtype).kind == 'f':
      extractors.scalar_floats.append(spec)
    else:
      extractors.append(_input_extractor(spec))
  extractors.scalar_float_names = [s.name for s in extractors.scalar_floats]
  extractors.vectors = [s for s in decoder.inputs if s.shape]
  carriers = [(field, _carrier(field == decoder.key_field)) for field in decoder.carried]
  return extractors, carriers


class _Extractors(list):
  """The extractors of the inputs taken one by one; scalar float inputs are
  taken together (`scalar_floats`)."""
  def __init__(self):
    super().__init__()
    self.scalar_floats = []
    self.scalar_float_names = []
    self.vectors = []


_NUMBER_TYPES = frozenset((int, float))


def _no_nested(value):
  if any(type(item) is list for item in value.as_list()):  # pylint: disable=unidiomatic-typecheck
    raise _Defer


def _input_extractor(spec):
  """(spec, extract(value) -> column entry, finish(column) -> feed array)."""
  if spec.dtype == 'string':
    if spec.shape == ():
      def extract(value, nested=False):
        if type(value) is not str:  # pylint: disable=unidiomatic-typecheck
          raise _Defer
        return value.encode('utf-8')
    else:
      size = spec.shape[0]

      def extract(value, nested=False):
        if type(value) is not simdjson.Array or len(value) != size:  # pylint: disable=unidiomatic-typecheck
          raise _Defer
        items = value.as_list()
        if not all(type(v) is str for v in items):  # pylint: disable=unidiomatic-typecheck
          raise _Defer
        return [v.encode('utf-8') for v in items]

    def finish(column):
      arr = np.empty((len(column),) + spec.shape, dtype=object)
      if spec.shape == ():
        arr[:] = column
      else:
        for i, items in enumerate(column):
          arr[i, :] = items
      return arr
    return spec, extract, finish

  dtype = np.dtype(spec.dtype)
  kind = dtype.kind
  if kind == 'b':
    if spec.shape != ():
      def extract(value, nested=False):  # vectors of booleans: left to the definition
        raise _Defer
    else:
      def extract(value, nested=False):
        if type(value) is not bool:  # pylint: disable=unidiomatic-typecheck
          raise _Defer
        return value
    return spec, extract, lambda column: np.array(column, dtype=np.bool_)

  if kind == 'f':
    if spec.shape == ():
      def extract(value, nested=False):
        if type(value) is not float and type(value) is not int:  # pylint: disable=unidiomatic-typecheck
          raise _Defer
        return value
      return spec, extract, lambda column: _to_float(np.array(column, np.float64), dtype)
    size = spec.shape[0]

    def extract(value, nested=False):
      if type(value) is not simdjson.Array or len(value) != size:  # pylint: disable=unidiomatic-typecheck
        raise _Defer
      flat = np.frombuffer(value.as_buffer(of_type='d'), np.float64)
      if flat.size != size:
        raise _Defer
      if nested:
        _no_nested(value)
      return flat
    return spec, extract, lambda column: _to_float(
        np.concatenate(column).reshape((len(column), size)), dtype)

  info = np.iinfo(dtype)
  if spec.shape == ():
    def extract(value, nested=False):
      if type(value) is not int or not info.min <= value <= info.max:  # pylint: disable=unidiomatic-typecheck
        raise _Defer
      return value
    return spec, extract, lambda column: np.array(column, dtype=dtype)
  size = spec.shape[0]

  def extract(value, nested=False):
    if type(value) is not simdjson.Array or len(value) != size:  # pylint: disable=unidiomatic-typecheck
      raise _Defer
    ints = np.frombuffer(value.as_buffer(of_type='i'), np.int64)  # larger integers defer
    if ints.size != size:
      raise _Defer
    if nested:
      _no_nested(value)
    if dtype != np.int64 and size and (ints.min() < info.min or ints.max() > info.max):
      raise _Defer
    return ints
  return spec, extract, lambda column: np.concatenate(column).reshape(
      (len(column), size)).astype(dtype)


def _to_float(values: np.ndarray, dtype) -> np.ndarray:
  with np.errstate(over='ignore'):  # as convert.convert_value
    return values.astype(dtype)


def _carrier(is_key):
  """A carried value's JSON text, for the kinds whose text the parsed value
  determines: strings and integers (and null for a passthrough field); 0
  may have been written -0, which only the definition keeps."""
  dumps = orjson.dumps

  def carry(value, line):
    kind = type(value)
    if kind is str:
      return dumps(value)
    if kind is int and (value or b'-0' not in line):
      return str(value).encode('ascii')
    if kind is bool:
      return b'true' if value else b'false'
    if value is None and not is_key:
      return b'null'
    raise _Defer
  return carry

