"""JSON Lines: reading, and what a line means.

Definition (`JsonLinesFormat.instance`): each line (transforms/read/lines.py says
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
import re
import threading
import weakref

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import simdjson

from tf_batch_predict.transforms.read.decode import FastRows, Instance, InputFormat
from tf_batch_predict.transforms.json_values import parse_json
from tf_batch_predict.transforms.records import JSONL, Lines, TextColumn


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
  def __init__(self, max_instance_bytes: int):
    self._max_instance_bytes = max_instance_bytes
    self._local = threading.local()  # simdjson parsers are not thread-safe
    self._plans = weakref.WeakKeyDictionary()  # decoder -> its fast-path plan
    self._columnar_plans = weakref.WeakKeyDictionary()  # decoder -> its columnar plan
    self._columnar = ColumnarJsonLines()

  def __getstate__(self):
    return {'_max_instance_bytes': self._max_instance_bytes,
            'parse_threads': self._columnar.threads}

  def __setstate__(self, state):
    self.__init__(state['_max_instance_bytes'])
    self._columnar.threads = state.get('parse_threads')

  def set_parse_threads(self, threads) -> None:
    """How many threads the columnar path's parser may use per chunk: None
    for pyarrow's pool (every core), 1 for the calling thread alone (where
    a machine's cores are shared among worker processes)."""
    self._columnar.threads = threads

  def read_unit(self, metadata, offsets):
    # Imported here: lines.py reads through Beam, which the decoding helper
    # process (decoder_process.py), decoding with this format, does not import.
    from tf_batch_predict.transforms.read.lines import read_line_range
    return read_line_range(JSONL, self._max_instance_bytes, None, metadata, offsets)

  def sample(self, metadata, quota, limits):
    """The first `quota` lines of a file, as `read` reads them (lines.py)."""
    from tf_batch_predict.transforms.read.lines import sample_lines
    return sample_lines(metadata, JSONL, quota, self._max_instance_bytes, limits)

  def instance(self, chunk, row) -> Instance:
    return json_instance(parse_json(chunk.records[row]))

  # -- fast path -------------------------------------------------------------

  def fast(self, chunk, rows, decoder):
    columnar = None
    if isinstance(chunk.records, Lines):
      plan = self._columnar_plans.get(decoder, False)
      if plan is False:
        plan = self._columnar_plans[decoder] = _columnar_plan(decoder)
      if plan:
        columnar = self._columnar.decode(chunk, rows, decoder, plan)
    if columnar is None:
      return self._fast_lines(chunk, rows, decoder)
    accepted, feeds, carried = columnar
    if len(accepted) == len(chunk):  # every row: the texts stay columns
      return FastRows(accepted.tolist(), feeds,
                      {field: TextColumn(texts) for field, texts in carried.items()})
    accepted = accepted.tolist()
    carried = {field: texts.to_pylist() for field, texts in carried.items()}
    taken = set(accepted)
    rest = self._fast_lines(chunk, [row for row in rows if row not in taken], decoder)
    if rest is None or not rest.rows:
      return FastRows(accepted, feeds, carried)
    return FastRows(accepted + rest.rows,
                    {name: np.concatenate([feeds[name], rest.feeds[name]]) for name in feeds},
                    {field: carried[field] + rest.carried[field] for field in carried})

  def _fast_lines(self, chunk, rows, decoder):
    """The per-line fast path."""
    if not rows:
      return None
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
      nested = _brackets_other_than(line, extractors.brackets)
      row_values = [extract(get(spec.name), nested) for spec, extract, _ in extractors]
      # Scalar float inputs, the many narrow fields of tabular data, at once:
      # each a JSON number (int or float), never a bool, string or null.
      row_scalars = [get(name) for name in extractors.scalar_float_names]
      if not _NUMBER_TYPES.issuperset(map(type, row_scalars)):
        raise _Defer
      row_texts = [carry(get(field), line) for field, carry in carriers]
    elif decoder.single is not None and not carriers:
      nested = _brackets_other_than(line, extractors.brackets)
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
    if not spec.fully_defined:
      return None
    if len(spec.shape) > 1 and (spec.dtype == 'string' or np.dtype(spec.dtype).kind == 'b'):
      return None  # nested lists of strings or booleans: the definition's
    if spec.shape == () and spec.dtype != 'string' and np.dtype(spec.dtype).kind == 'f':
      extractors.scalar_floats.append(spec)
    else:
      extractors.append(_input_extractor(spec))
  extractors.scalar_float_names = [s.name for s in extractors.scalar_floats]
  extractors.brackets = sum(_arrays_in(s.shape) for s in decoder.inputs if s.shape)
  carriers = [(field, _carrier(field == decoder.key_field)) for field in decoder.carried]
  return extractors, carriers


class _Extractors(list):
  """The extractors of the inputs taken one by one; scalar float inputs are
  taken together (`scalar_floats`)."""
  def __init__(self):
    super().__init__()
    self.scalar_floats = []
    self.scalar_float_names = []
    # The '[' of a line whose input values are lists of exactly their
    # shapes (and nothing else holds a '['): any other count means that a
    # list may hide in a list (simdjson's buffers flatten nested lists).
    self.brackets = 0


def _arrays_in(shape) -> int:
  """How many JSON arrays a value of this shape is written with: 1 for
  [n], 1 + 28 for [28, 28]."""
  arrays, count = 1, 1
  for size in shape[:-1]:
    count *= size
    arrays += count
  return arrays


def _of_shape(value, shape) -> bool:
  """Whether a simdjson Array whose flattened numbers are as many as the
  shape holds is nested exactly as the shape: each list at each depth of
  the size there (a number in place of a list, or a list in place of a
  number, fails). Lists of the last depth are only counted: the caller's
  flattened size, equal to the shape's, then rules out a list inside."""
  if len(value) != shape[0]:
    return False
  if len(shape) == 2:
    try:
      return set(map(len, value)) <= {shape[1]}
    except TypeError:  # a number where a list belongs
      return False
  for item in value:
    if type(item) is not simdjson.Array or not _of_shape(item, shape[1:]):  # pylint: disable=unidiomatic-typecheck
      return False
  return True


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
    shape, size = spec.shape, int(np.prod(spec.shape))

    def extract(value, nested=False):
      if type(value) is not simdjson.Array or len(value) != shape[0]:  # pylint: disable=unidiomatic-typecheck
        raise _Defer
      flat = np.frombuffer(value.as_buffer(of_type='d'), np.float64)
      if flat.size != size:
        raise _Defer
      _check_nesting(value, shape, nested)
      return flat
    def finish(column):
      with np.errstate(over='ignore'):  # as convert.convert_value: astype's cast, in one pass
        return np.concatenate(column, dtype=dtype, casting='unsafe').reshape(
            (len(column),) + shape)
    return spec, extract, finish

  info = np.iinfo(dtype)
  if spec.shape == ():
    def extract(value, nested=False):
      if type(value) is not int or not info.min <= value <= info.max:  # pylint: disable=unidiomatic-typecheck
        raise _Defer
      return value
    return spec, extract, lambda column: np.array(column, dtype=dtype)
  shape, size = spec.shape, int(np.prod(spec.shape))

  def extract(value, nested=False):
    if type(value) is not simdjson.Array or len(value) != shape[0]:  # pylint: disable=unidiomatic-typecheck
      raise _Defer
    ints = np.frombuffer(value.as_buffer(of_type='i'), np.int64)  # larger integers defer
    if ints.size != size:
      raise _Defer
    _check_nesting(value, shape, nested)
    if dtype != np.int64 and size and (ints.min() < info.min or ints.max() > info.max):
      raise _Defer
    return ints
  return spec, extract, lambda column: np.concatenate(column).reshape(
      (len(column),) + shape).astype(dtype)


def _check_nesting(value, shape, nested) -> None:
  """Defers a value whose lists are not nested exactly as `shape` (its
  flattened numbers already counted as many as the shape holds). The lists
  the shape has are checked; a list more (inside a list of the last depth,
  an empty one too) adds a '[' to the line: only where the line's count
  says so (`nested`) are the last lists searched for one."""
  if len(shape) > 1 and not _of_shape(value, shape):
    raise _Defer
  if nested:
    _no_nested_below(value, len(shape))


def _no_nested_below(value, depth) -> None:
  if depth == 1:
    _no_nested(value)
    return
  for item in value:
    _no_nested_below(item, depth - 1)


def _brackets_other_than(line: bytes, expected: int) -> bool:
  """Whether the line holds other than `expected` '[' bytes. Where few are
  expected, by bytes.find (memchr) from one to the next: on a line of 784
  numbers, 0.3 us against 1.3 us for bytes.count."""
  if expected > 4:
    return line.count(b'[') != expected
  at = -1
  for _ in range(expected):
    at = line.find(b'[', at + 1)
    if at < 0:
      return True
  return line.find(b'[', at + 1) >= 0


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



# -- columnar path -------------------------------------------------------------
#
# The same definition again, optimized for a whole chunk at once, when the
# chunk's lines are one buffer (records.Lines). A run of consecutive lines
# is taken as it is in the buffer:
#  1. simdjson parses it as one JSON array (a comma written after each line
#     but the last): so every line is exactly one strict JSON value, and the
#     run holds nothing simdjson rejects (which the definition may accept:
#     those lines go on to the paths above). In C, no Python per line.
#  2. pyarrow's JSON reader parses it again into typed columns, with an
#     explicit schema: the inputs, and the carried fields as integers,
#     strings or booleans (their JSON texts are then rebuilt exactly). It
#     refuses a line whose object repeats a schema field, or whose value is
#     not of the column's type, and then the run is split in two and each
#     half tried again, down to COLUMNAR_MIN_ROWS lines.
#  3. A row is accepted where every input is present and in its dtype's range
#     and the carried texts are certain; the others go to the paths above
#     (a missing input, a key written `-0`, ...).
# pyarrow alone is not enough: it accepts invalid UTF-8, a byte order mark,
# two values on a line and nesting deeper than MAX_DEPTH; simdjson alone
# gives no columns.

COLUMNAR_MIN_ROWS = 64
# The integer -0 (not -0.0, -0e1, -05): its value is 0 to the definition;
# pyarrow reads it as -0.0 into a float column, and as 0 into an integer
# one, whose text is then not certain. Found anywhere (a string too), the
# run's zeros are checked.
_INTEGER_NEGATIVE_ZERO = re.compile(rb'-0(?![.eE0-9])')
_OPEN_BRACE = ord('{')
# pyarrow's reader converts numbers several times slower than simdjson: on
# the 784-float MLP benchmark it takes 71 us a line where the per-line path's
# simdjson parse takes 19. Per-line Python costs matter where lines hold many
# narrow fields, not a few wide vectors: signatures whose vector inputs
# hold more items than this in all are left to the per-line path.
COLUMNAR_MAX_VECTOR_ITEMS = 32
_COMMA = ord(',')


def _columnar_plan(decoder):
  """Per input: (name, arrow type to read it as, spec); None where an input
  is of no kind the columnar path reads."""
  if decoder.signature.takes_examples:
    return None
  if not all(spec.fully_defined and len(spec.shape) <= 1 for spec in decoder.inputs):
    return None
  if sum(spec.shape[0] for spec in decoder.inputs if spec.shape) > COLUMNAR_MAX_VECTOR_ITEMS:
    return None
  plan = []
  for spec in decoder.inputs:
    if spec.dtype == 'string':
      arrow = pa.string()
    else:
      kind = np.dtype(spec.dtype).kind
      arrow = {'f': pa.float64(), 'i': pa.int64(), 'u': pa.int64(), 'b': pa.bool_()}.get(kind)
      if arrow is None:
        return None
    if spec.shape:
      if spec.dtype != 'string' and arrow == pa.bool_():
        return None  # as the per-line path: vectors of booleans go to the definition
      arrow = pa.list_(arrow)
    plan.append((spec.name, arrow, spec))
  return plan


class ColumnarJsonLines:
  """Decodes the lines of a chunk held as records.Lines by the columnar
  path; one per JsonLinesFormat (it remembers the carried fields' types)."""
  def __init__(self, min_rows: int = COLUMNAR_MIN_ROWS):
    self.min_rows = min_rows  # runs shorter than twice this are not split
    self.threads = None  # JsonLinesFormat.set_parse_threads
    self._parser = None
    self._carried_types = {}  # field -> 'int', 'string' or 'bool': last seen

  def decode(self, chunk, rows, decoder, plan):
    """(accepted rows, feeds, carried) for the rows it accepts, or None."""
    lines = chunk.records
    accepted, parts = [], []
    # Only lines that start with '{' go to pyarrow: the others cannot be
    # instances of fields, and pyarrow 25 crashes (a segmentation fault) on
    # a run whose first line is `null`.
    rows = np.asarray(rows, np.int64)
    if len(rows):
      first_bytes = np.frombuffer(lines.buffer, np.uint8)[lines.starts[rows]]
      rows = rows[(first_bytes == _OPEN_BRACE) & (lines.ends[rows] > lines.starts[rows])]
    for first, last in _runs(rows):
      self._decode_run(lines, first, last, decoder, plan, accepted, parts)
    if not accepted:
      return None
    rows_out = np.concatenate(accepted)
    feeds = {name: np.concatenate([p[0][name] for p in parts]) if len(parts) > 1
             else parts[0][0][name] for name, _, _ in plan}
    carried = {}
    for field in decoder.carried:
      columns = [p[1][field] for p in parts]
      carried[field] = columns[0] if len(columns) == 1 else _concat_arrays(columns)
    return rows_out, feeds, carried

  def _decode_run(self, lines, first, last, decoder, plan, accepted, parts):
    pending = [(first, last)]
    while pending:
      first, last = pending.pop()
      result = self._try(lines, first, last, decoder, plan)
      if result is not None:
        rows, feeds, carried = result
        if len(rows):
          accepted.append(rows)
          parts.append((feeds, carried))
      elif last - first + 1 >= 2 * self.min_rows:
        middle = (first + last) // 2
        pending += [(middle + 1, last), (first, middle)]

  def _try(self, lines, first, last, decoder, plan):
    """The accepted rows of lines first..last (inclusive) with their feeds
    and carried texts (arrow arrays), or None if the run cannot be read
    columnar as a whole."""
    # pyarrow sets a SIGINT handler around a read and restores the previous
    # one after: reads in several threads (Beam's multi_threading mode) can
    # leave the default handler behind, and Ctrl-C then kills the process
    # instead of stopping the job cleanly. The job handles signals itself.
    pa.enable_signal_handlers(False)
    starts, ends = lines.starts[first:last + 1], lines.ends[first:last + 1]
    begin, stop = int(starts[0]), int(ends[-1])
    text = memoryview(lines.buffer)[begin:stop]
    if not self._strict_json_values(text, ends[:-1] - begin, len(starts)):
      return None
    longest = int((ends - starts).max())
    # Blocks are parsed in parallel; in one thread, one block for the whole
    # chunk (measured: 1.68 against 1.76 us a line in blocks of a quarter).
    block = (max(1 << 20, len(text) + 1) if self.threads == 1
             else max(1 << 18, min(1 << 22, len(text) // 4)))
    read_options = pj.ReadOptions(use_threads=self.threads != 1,
                                  block_size=max(block, 2 * longest + 2))
    for attempt in range(2):
      schema = pa.schema([(name, arrow) for name, arrow, _ in plan] + [
          (field, _ARROW_CARRIED[self._carried_types.get(field, 'int')]())
          for field in decoder.carried])
      try:
        table = pj.read_json(pa.BufferReader(text), read_options=read_options,
                             parse_options=pj.ParseOptions(
                                 explicit_schema=schema, newlines_in_values=False,
                                 unexpected_field_behavior='ignore'))
        break
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if attempt or not decoder.carried or not self._learn_carried_types(
            lines[first], decoder):
          return None
    if table.num_rows != len(starts):
      return None
    ok = np.ones(len(starts), np.bool_)
    feeds = {}
    has_negative_zero = _INTEGER_NEGATIVE_ZERO.search(lines.buffer, begin, stop) is not None
    for name, _, spec in plan:
      feeds[name] = _feed(table.column(name), spec, ok)
      if has_negative_zero and feeds[name].dtype.kind == 'f':
        # The integer -0 is 0 to the definition, and -0.0 to pyarrow's
        # float column: where the run holds one, a row with a negative zero
        # goes to the other paths (a float written -0.0 is -0.0 to both).
        negative_zero = (feeds[name] == 0) & np.signbit(feeds[name])
        ok &= ~negative_zero.reshape(len(starts), -1).any(axis=1)
    carried = {}
    for field in decoder.carried:
      carried[field] = _carried_texts(table.column(field), field == decoder.key_field,
                                      has_negative_zero, ok)
    keep = np.flatnonzero(ok)
    rows = keep + first
    if len(keep) < len(starts):
      feeds = {name: value[keep] for name, value in feeds.items()}
      carried = {field: texts.take(pa.array(keep)) for field, texts in carried.items()}
    return rows, feeds, carried

  def _strict_json_values(self, text, line_ends, count) -> bool:
    """Whether each of the `count` lines of `text` (ending at `line_ends`,
    relative to its start, all but the last) is exactly one JSON value that
    simdjson accepts."""
    wrapped = bytearray(len(text) + 2)
    wrapped[0], wrapped[-1] = ord('['), ord(']')
    wrapped[1:-1] = text
    np.frombuffer(wrapped, np.uint8)[line_ends + 1] = _COMMA
    if self._parser is None:
      self._parser = simdjson.Parser()
    try:
      doc = self._parser.parse(wrapped)
      try:
        return len(doc) == count
      finally:
        doc = None  # the parser reuses its buffer: no proxy may outlive the parse
    except (ValueError, TypeError, KeyError, RuntimeError, IndexError, OverflowError,
            UnicodeDecodeError):
      self._parser = simdjson.Parser()
      return False

  def _learn_carried_types(self, line, decoder) -> bool:
    """Takes the carried fields' types from one line; False where a type is
    one the columnar path does not carry."""
    try:
      value = orjson.loads(line)
    except orjson.JSONDecodeError:
      return False
    if not isinstance(value, dict):
      return False
    changed = False
    for field in decoder.carried:
      kind = {int: 'int', str: 'string', bool: 'bool'}.get(type(value.get(field)))
      if kind is None and value.get(field) is not None:
        return False
      if kind is not None and kind != self._carried_types.get(field, 'int'):
        self._carried_types[field] = kind
        changed = True
    return changed


# The arrow types carried fields are read as, by the kind last seen.
_ARROW_CARRIED = {'int': pa.int64, 'string': pa.string, 'bool': pa.bool_}


def _runs(rows):
  """Runs of consecutive rows, as (first, last) pairs."""
  rows = np.asarray(rows, np.int64)
  if not len(rows):
    return []
  breaks = np.flatnonzero(np.diff(rows) != 1)
  firsts = np.concatenate([rows[:1], rows[breaks + 1]])
  lasts = np.concatenate([rows[breaks], rows[-1:]])
  return list(zip(firsts.tolist(), lasts.tolist()))


def _concat_arrays(arrays):
  return pa.concat_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
                           for a in arrays])


def _feed(column, spec, ok) -> np.ndarray:
  """One input's feed from its arrow column; clears `ok` for the rows it
  cannot take (null, a vector of the wrong size, an integer beyond the
  dtype)."""
  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  n = len(column)
  if column.null_count:
    ok &= ~column.is_null().to_numpy(zero_copy_only=False)
  if spec.shape:
    size = spec.shape[0]
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy()
    ok &= lengths == size
    # Rows not taken get zeros (dropped with them), so that the rest stacks.
    good = pa.array(ok)
    values = pc.list_flatten(pc.if_else(good, column, pa.scalar(
        [''] * size if spec.dtype == 'string' else [0] * size, type=column.type)))
    if values.null_count:  # a null inside a vector
      return _feed_null_items(column, spec, ok)
    inside = np.ones(len(values), np.bool_)
    flat = _values(values, spec, inside)
    ok &= inside.reshape((n, size)).all(axis=1)
    return flat.reshape((n, size))
  if column.null_count:
    column = pc.fill_null(column, '' if spec.dtype == 'string' else (
        False if spec.dtype == 'bool' else 0))
  return _values(column, spec, ok)


def _feed_null_items(column, spec, ok):
  """A vector column with null items: those rows are not taken."""
  rows = column.to_pylist()
  size = spec.shape[0]
  filler = b'' if spec.dtype == 'string' else 0
  out = []
  for i, items in enumerate(rows):
    if not ok[i] or items is None or any(v is None for v in items):
      ok[i] = False
      items = [filler] * size
    out.append(items)
  flat = pa.array([v for items in out for v in items],
                  type=pa.binary() if spec.dtype == 'string' else column.type.value_type)
  inside = np.ones(len(flat), np.bool_)
  values = _values(flat, spec, inside).reshape((len(rows), size))
  ok &= inside.reshape((len(rows), size)).all(axis=1)
  return values


def _values(values, spec, ok) -> np.ndarray:
  """A flat arrow array as the input's dtype (the definition's conversion:
  floats read as 64-bit floats and rounded to the input's type); clears
  `ok` (one per value) for integers beyond the dtype."""
  if spec.dtype == 'string':
    return values.cast(pa.binary()).to_numpy(zero_copy_only=False)
  array = values.to_numpy(zero_copy_only=False)
  dtype = np.dtype(spec.dtype)
  if dtype.kind == 'f':
    return _to_float(array, dtype)
  if dtype.kind in 'iu' and dtype != np.int64:
    info = np.iinfo(dtype)
    inside = (array >= info.min) & (array <= info.max)
    ok &= inside
    return np.where(inside, array, 0).astype(dtype)
  return array.astype(dtype) if array.dtype != dtype else array


def _carried_texts(column, is_key, has_negative_zero, ok):
  """A carried field's JSON texts (arrow binary array); clears `ok` for
  rows whose text is not certain: a missing or null key (an error of the
  definition's), and 0 where the run holds `-0` (which only the definition
  keeps). A missing or null passthrough field is `null`, as in the
  definition."""
  column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
  if column.null_count:
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    if is_key:
      ok &= ~nulls
  if pa.types.is_integer(column.type):
    if has_negative_zero:
      ok &= pc.fill_null(pc.not_equal(column, 0), True).to_numpy(zero_copy_only=False)
    texts = column.cast(pa.string())
  elif pa.types.is_boolean(column.type):
    texts = pc.if_else(column, 'true', 'false')
  else:
    texts = _json_strings(column)
  if column.null_count:
    texts = pc.fill_null(texts, 'null')
  return texts.cast(pa.binary())


def _json_strings(column):
  """Strings as JSON texts, as orjson writes them (the definition's
  carried_text): quoted, with '"', '\\' and control characters escaped and
  everything else as it is."""
  data = column.buffers()[2]
  if data is not None:
    raw = np.frombuffer(data, np.uint8)
    needs_escape = bool(((raw < 0x20) | (raw == 0x22) | (raw == 0x5c)).any())
  else:
    needs_escape = False
  if needs_escape:
    return pa.array([None if v is None else orjson.dumps(v).decode()
                     for v in column.to_pylist()], pa.string())
  return pc.binary_join_element_wise('"', column, '"', '')
