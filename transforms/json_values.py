"""What a JSON text is, for every format that holds JSON (JSON Lines, request
files, array cells of CSV files): one definition, `parse_json`.

- exactly one JSON value (RFC 8259), surrounded by JSON whitespace only;
- valid UTF-8, and no unpaired UTF-16 surrogate escape (`"\\ud800"`)
  anywhere, ignored fields included;
- nesting at most MAX_DEPTH (1024) levels, the limit of simdjson and orjson;
- numbers: integers of any size (kept exact); decimals must fit a 64-bit
  float (1e400 does not); the literals NaN, Infinity and -Infinity are
  numbers, as TF Serving accepts them;
- objects may repeat a field: JsonObject.duplicates names it, and the
  instance rules decide (a field the job uses must not be repeated).

The standard library's parser is the reference here because it has the
hooks this needs (exact integers, decimal texts, repeated fields); the
format modules' fast paths parse with simdjson, which rejects a superset of
what this rejects, and defer every line it rejects to this definition.
"""
import json
import math
import re
import sys

import numpy as np


class JsonFloat(float):
  """A JSON number written with a fraction or exponent (or NaN, Infinity):
  its float value, and its text, which carried values keep."""
  __slots__ = ('text',)

  def __new__(cls, value: float, text: str):
    number = super().__new__(cls, value)
    number.text = text
    return number

  def __reduce__(self):  # chunks are pickled between stages
    return (JsonFloat, (float(self), self.text))


class JsonNegativeZero(int):
  """The JSON integer -0: the integer 0, written back as read."""
  text = '-0'

  def __new__(cls):
    return super().__new__(cls, 0)

  def __reduce__(self):
    return (JsonNegativeZero, ())


class JsonObject(dict):
  """A JSON object; `duplicates` names the fields given more than once (the
  dict holds the last value of each)."""
  __slots__ = ('duplicates',)

  def __reduce__(self):  # subclasses too (input_json.ExampleFeatures)
    return (_json_object, (type(self), list(self.items()), self.duplicates))


def _json_object(cls, items, duplicates):
  obj = cls(items)
  obj.duplicates = duplicates
  return obj


MAX_DEPTH = 1024
# The standard library's parser recurses once per level (and convert.py's
# nesting check once more): room for MAX_DEPTH levels on top of a worker's
# own stack.
sys.setrecursionlimit(max(sys.getrecursionlimit(), MAX_DEPTH + 3000))

_SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F]')
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_SPECIALS = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}


def _float(text: str) -> JsonFloat:
  value = float(text)
  if math.isinf(value):
    raise ValueError(f'the number {text[:30]} is out of the 64-bit float range')
  return JsonFloat(value, text)


def _int(text: str) -> int:
  return JsonNegativeZero() if text == '-0' else int(text)


def _constant(text: str) -> JsonFloat:
  return JsonFloat(_SPECIALS[text], text)


def _object(pairs) -> JsonObject:
  obj = JsonObject(pairs)
  obj.duplicates = (frozenset(k for i, (k, _) in enumerate(pairs)
                              if any(k == other for other, _ in pairs[:i]))
                    if len(obj) < len(pairs) else None)
  return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=_float, parse_int=_int,
                            parse_constant=_constant)


def nesting_depth(data: bytes) -> int:
  """The deepest nesting of arrays and objects in a JSON text."""
  structure = np.frombuffer(_STRING.sub(b'', data), np.uint8)
  steps = (np.isin(structure, (ord('['), ord('{'))).astype(np.int32)
           - np.isin(structure, (ord(']'), ord('}'))))
  return int(np.cumsum(steps).max(initial=0))


def _has_lone_surrogate(value) -> bool:
  pending = [value]
  while pending:
    item = pending.pop()
    if isinstance(item, str):
      try:
        item.encode('utf-8')
      except UnicodeEncodeError:
        return True
    elif isinstance(item, list):
      pending.extend(item)
    elif isinstance(item, dict):
      pending.extend(item)
      pending.extend(item.values())
  return False


def parse_json(data: bytes):
  """The value of one JSON text; ValueError with a one-line reason."""
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'invalid UTF-8 at byte {e.start}') from None
  if data.count(b'[') + data.count(b'{') > MAX_DEPTH and nesting_depth(data) > MAX_DEPTH:
    raise ValueError(f'invalid JSON: nested deeper than {MAX_DEPTH} levels')
  try:
    value = _DECODER.decode(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'invalid JSON: {e.msg} at character {e.pos}') from None
  except (ValueError, RecursionError) as e:  # from the number hooks
    raise ValueError(f'invalid JSON: {e}') from None
  if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
    raise ValueError('invalid JSON: a string holds an unpaired UTF-16 surrogate')
  return value
