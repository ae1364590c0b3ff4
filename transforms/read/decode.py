"""Decode chunks of records into the arrays a signature takes.

Every input format (one module each: input_jsonl, input_csv, input_json,
input_tfrecord, input_parquet) gives an `InputFormat`: its reader, and
`instance(chunk, row)`, the exact definition of what one record means (its
fields, or a bare value) and how its values convert. The decoder applies
the signature's rules to that definition, one instance at a time, and
catches every failure at the boundary of the instance: nothing about one
record's content can raise out of `decode`.

A format may also give `fast(chunk, rows, decoder)`: the same definition,
optimized for many instances at once. It may only accept a row, with the
very result the exact path would give, or leave it to the exact path; it
never reports errors. So one odd row costs only itself, and a row's result
never depends on its neighbours (tests/test_equivalence.py checks this on
generated input).

This module imports no Beam: the decoding helper process
(decoder_process.py) runs the same decoder, and starts faster without it.
The pipeline's step is decode_step.py.
"""
import copy
import dataclasses
import logging
from typing import Callable, Optional

import numpy as np

from tf_batch_predict.transforms import convert
from tf_batch_predict.transforms.convert import carried_text, convert_value
from tf_batch_predict.transforms.records import (FeedGroup, InstanceBatch, InstanceError,
                                PARSE, RawChunk, SCHEMA, TextColumn)
from tf_batch_predict.transforms.model.savedmodel import SignatureSpec

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Instance:
  """One record, as its format defines it: an object of fields, or a bare
  value (`fields` None). `convert(value, spec)` turns one of its values
  into an input array; `carry(value)` gives a carried value's JSON text."""
  fields: Optional[dict]
  value: object = None
  convert: Callable = convert_value
  carry: Callable = carried_text
  duplicates: frozenset = frozenset()  # field names given more than once
  example: Optional[bytes] = None  # a serialized tf.Example, fed as it is
  text_cells: bool = False  # values are CSV text (for building Examples)
  plain: Callable = lambda value: value  # noqa: E731  a value as Python data
  # Every field is a feature (an element of a classify/regress body): none
  # is a serialized Example fed by the input's name.
  all_features: bool = False


@dataclasses.dataclass
class FastRows:
  """What a fast path decoded: rows, their feeds (stacked in row order) and
  carried texts (field -> list in row order; or a records.TextColumn where
  the rows are every row of the chunk, in order)."""
  rows: list
  feeds: dict
  carried: dict


class InputFormat:
  """An input format: `kind`, `read(files)`, `sample(metadata, quota,
  limits)`, `instance(chunk, row)` and, optionally, `fast(chunk, rows,
  decoder)`."""
  kind = None
  fast = None
  binary_records = False  # error records show them as base64

  def read_unit(self, metadata, offsets):
    """The RawChunks of one work unit (transforms/read/units.py): the file's
    records in byte range `offsets` (OffsetRange; a format that reads whole
    files gets the whole file)."""
    raise NotImplementedError

  def sample(self, metadata, quota: int, limits):
    """The first `quota` instances of one file, read as `read` reads it,
    within `limits` (a FileSample; transforms/read/sampling.py)."""
    raise NotImplementedError

  def instance(self, chunk: RawChunk, row: int) -> Instance:
    raise NotImplementedError

  def raw(self, chunk: RawChunk, row: int) -> bytes:
    """The record as read, for its error record."""
    return chunk.records[row]


def did_you_mean(name: str, fields) -> str:
  """` (did you mean 'id'?)` where the instance lacks field `name` and has
  one spelt alike (another case, a typo); '' otherwise (also where the
  field is there and null)."""
  if name in fields:
    return ''
  import difflib
  others = [f for f in fields if isinstance(f, str)]
  close = [f for f in others if f.lower() == name.lower()] or difflib.get_close_matches(
      name, others, n=1, cutoff=0.75)
  return f' (did you mean {close[0]!r}?)' if close else ''


class InstanceDecoder:
  """Turns RawChunks into InstanceBatches for one signature.

  An instance is an object whose fields name the inputs; for a single-input
  signature it may also be the bare value. `key_field` and
  `passthrough_fields` are carried to the output; other fields are ignored.
  A signature that takes serialized tf.Examples is fed one per instance, as
  `_example` says, checked against the graph's parsing spec before scoring.
  """
  def __init__(self, signature: SignatureSpec, formats: dict,
               key_field: Optional[str] = None, passthrough_fields=()):
    self.signature = signature
    self.inputs = signature.inputs
    self.single = self.inputs[0] if len(self.inputs) == 1 else None
    self.key_field = key_field
    self.carried = tuple(dict.fromkeys(
        ([key_field] if key_field else []) + list(passthrough_fields)))
    # Fields whose repetition is an error (which value was meant is
    # unknown): carried ones, inputs, and an Example signature's features.
    self.used = (frozenset(self.carried) | {s.name for s in self.inputs}
                 | set(signature.example_features or ()))
    self._formats = formats

  def format(self, kind) -> InputFormat:
    return self._formats[kind]

  def only(self, kinds) -> 'InstanceDecoder':
    """A copy that decodes chunks of these kinds only (pickled, it carries
    only their formats' classes)."""
    decoder = copy.copy(self)
    decoder._formats = {k: f for k, f in self._formats.items() if k in kinds}  # pylint: disable=protected-access
    return decoder

  def set_parse_threads(self, threads) -> None:
    """Threads its formats' parsers may use (JsonLinesFormat's)."""
    for fmt in self._formats.values():
      if hasattr(fmt, 'set_parse_threads'):
        fmt.set_parse_threads(threads)

  def decode(self, chunk: RawChunk, use_fast: bool = True) -> InstanceBatch:
    """The chunk's instances, decoded; `use_fast=False` decodes each one by
    its format's definition alone (what the fast paths are tested against)."""
    fmt = self._formats[chunk.kind]
    carried = {f: [None] * len(chunk) for f in self.carried}
    errors = [InstanceError(row, PARSE, reason) for row, reason in chunk.read_errors.items()]
    rows = ([row for row in range(len(chunk)) if row not in chunk.read_errors]
            if chunk.read_errors else list(range(len(chunk))))
    groups, fast_rows = [], 0
    if use_fast and fmt.fast is not None and rows:
      try:
        fast = fmt.fast(chunk, rows, self)
      except Exception:  # pylint: disable=broad-except
        # A fast path is only an optimization: on any surprise the exact
        # path decodes every row, and says what is wrong with each.
        _LOG.warning('Fast decoding of a %s chunk failed; decoding one instance at a time',
                     chunk.kind, exc_info=True)
        fast = None
      if fast is not None and fast.rows:
        fast_rows = len(fast.rows)
        groups.append(FeedGroup(fast.rows, fast.feeds))
        for field, texts in fast.carried.items():
          if isinstance(texts, TextColumn):  # every row of the chunk, in order
            carried[field] = texts
            continue
          for row, text in zip(fast.rows, texts):
            carried[field][row] = text
        if len(fast.rows) == len(rows):  # rows are distinct: the fast path took all
          rows = []
        else:
          done = set(fast.rows)
          rows = [row for row in rows if row not in done]
    by_shapes = {}
    for row in rows:
      try:
        arrays = self._exact(fmt, chunk, row, carried)
      except convert.SchemaError as e:
        errors.append(InstanceError(row, SCHEMA, str(e)))
        continue
      except ValueError as e:
        errors.append(InstanceError(row, PARSE, str(e)))
        continue
      except Exception as e:  # pylint: disable=broad-except
        errors.append(InstanceError(row, SCHEMA, f'cannot convert: {type(e).__name__}: '
                                    f'{" ".join(str(e).split())[:300]}'))
        continue
      rows_of, columns = by_shapes.setdefault(tuple(a.shape for a in arrays),
                                              ([], [[] for _ in arrays]))
      rows_of.append(row)
      for column, array in zip(columns, arrays):
        column.append(array)
    for rows_of, columns in by_shapes.values():
      groups.append(FeedGroup(rows_of, {s.name: np.stack(c)
                                        for s, c in zip(self.inputs, columns)}))
    errors.sort(key=lambda e: e.row)
    return InstanceBatch(chunk, carried, groups, errors, fast_rows)

  def _exact(self, fmt: InputFormat, chunk: RawChunk, row: int, carried: dict) -> list:
    """The arrays of one instance, by its format's definition; fills in its
    carried texts as far as they can be read. Raises ValueError (parse) or
    SchemaError."""
    instance = fmt.instance(chunk, row)
    fields = instance.fields
    if fields is not None and not instance.all_features and self._is_bare_b64(fields):
      fields = None
    if fields is not None:
      repeated = sorted(instance.duplicates & self.used)
      for field in self.carried:  # the error record keeps those it can (not a repeated one)
        if field not in repeated:
          carried[field][row] = instance.carry(fields.get(field))
      if repeated:
        raise convert.SchemaError(f'field {repeated[0]!r} is given more than once')
      if self.key_field and fields.get(self.key_field) is None:
        carried[self.key_field][row] = None
        raise convert.SchemaError(f'missing key field {self.key_field!r}'
                                  f'{did_you_mean(self.key_field, fields)}')
    elif self.key_field:
      raise convert.SchemaError(f'missing key field {self.key_field!r} (the instance '
                                'is not an object of fields)')
    elif self.carried:
      for field in self.carried:
        carried[field][row] = b'null'
    if self.signature.takes_examples:
      return [self._example(instance, fields)]
    if fields is None:
      if self.single is None:
        names = ', '.join(s.name for s in self.inputs)
        raise convert.SchemaError(f'a bare value needs a single-input signature; write '
                                  f'an object with fields {names}')
      return [instance.convert(instance.value, self.single)]
    arrays = []
    for spec in self.inputs:
      if fields.get(spec.name) is None:
        raise convert.SchemaError(f'missing input field {spec.name!r}'
                                  f'{did_you_mean(spec.name, fields)}')
      arrays.append(instance.convert(fields[spec.name], spec))
    return arrays

  def _is_bare_b64(self, fields) -> bool:
    """{"b64": ...} alone is a bare binary value for a single string input."""
    single = self.single
    return (single is not None and single.dtype == 'string' and single.name != 'b64'
            and set(fields) == {'b64'})

  def _example(self, instance: Instance, fields: Optional[dict]) -> np.ndarray:
    """The serialized Example to feed, checked against the graph's parsing
    spec where there is one (convert.check_example):
    - the record itself where it is one (TFRecord);
    - a bare value (`{"b64": ...}`, a string) is a serialized Example;
    - a field named like the signature's input (`{"inputs": {"b64": ...}}`,
      as TF Serving's predict clients send it) is one, fed as it is, unless
      the parsing spec names a feature of that name or every field is a
      feature (`instance.all_features`: a classify/regress example); the key and
      passthrough fields beside it are carried, other fields ignored;
    - else an Example built from the instance's fields."""
    features = self.signature.example_features
    if instance.example is not None:
      data = instance.example
    elif fields is None or (self.single.name in fields and not instance.all_features
                            and self.single.name not in (features or ())):
      value = instance.value if fields is None else fields[self.single.name]
      array = instance.convert(value, self.single)
      if not features or array.shape != () or not isinstance(array[()], bytes):
        return array
      data = array[()]
    else:
      skip = set(self.carried) - set(features or ())
      kept = {k: instance.plain(v) for k, v in fields.items()
              if k not in skip and v is not None}
      return bytes_scalar(convert.serialize_example(kept, features,
                                                     text_cells=instance.text_cells))
    if features:
      convert.check_example(data, features)
    return bytes_scalar(data)


def bytes_scalar(data: bytes) -> np.ndarray:
  arr = np.empty((), dtype=object)
  arr[()] = data
  return arr
