"""Where the structure of a JSON text lies: the brackets, braces, commas and
colons outside its strings, and the nesting depth after each, found a block
at a time with numpy.

Why this exists: a TF Serving request file is one JSON text (up to 64 x
--max_instance_bytes); parsed whole into Python values it takes about 20
times its size. No JSON library the job uses streams an array's elements
as byte ranges: simdjson, orjson and pyarrow parse a whole document, ijson
yields Python values without their bytes. This finds only where elements
begin and end; it validates nothing. The reader (input_json.py) has every
byte validated by simdjson and the definition before any instance is used,
so a text this misreads (it is not valid JSON) is never split by it.
"""
import numpy as np

_QUOTE, _BACKSLASH, _COMMA, _COLON = ord('"'), ord('\\'), ord(','), ord(':')
_BRACKETS, _BRACES = (ord('['), ord(']')), (ord('{'), ord('}'))
OPEN, CLOSE, COMMA, COLON = 1, 2, 3, 4
_KINDS = np.zeros(256, np.uint8)
_KINDS[[ord('['), ord('{')]] = OPEN
_KINDS[[ord(']'), ord('}')]] = CLOSE
_KINDS[ord(',')] = COMMA
_KINDS[ord(':')] = COLON
_DELTA = np.array([0, 1, -1, 0, 0], np.int64)


class StructureScanner:
  """Feeds consecutive blocks of one JSON text; `feed` gives the structural
  characters of each. Starts outside any string at `depth`, `offset` being
  the position of the first byte fed."""
  def __init__(self, depth: int = 0, offset: int = 0):
    self.depth = depth
    self.offset = offset
    self.in_string = False
    self._backslashes = 0  # the run of backslashes the last block ended with

  def feed(self, block) -> tuple:
    """(positions, kinds, depths): int64 absolute positions of the block's
    structural characters outside strings, their kinds (OPEN, CLOSE, COMMA,
    COLON) and the depth after each."""
    data = np.frombuffer(block, np.uint8)
    n = len(data)
    # The quotes and structural characters (comparisons: faster than a
    # lookup table), then only those are looked at.
    marks = ((data == _QUOTE) | (data == _COMMA) | (data == _COLON) | (data == _BRACKETS[0])
             | (data == _BRACKETS[1]) | (data == _BRACES[0]) | (data == _BRACES[1]))
    if self._backslashes or (n and block.find(b'\\') >= 0):
      at = np.flatnonzero(data == _QUOTE)
      if len(at):
        # A quote after an odd run of backslashes is inside a string.
        not_backslash = np.where(data != _BACKSLASH, np.arange(n, dtype=np.int64), -1)
        last = np.maximum.accumulate(not_backslash)  # the last other byte at or before i
        before = at - 1
        last_before = np.where(before >= 0, last[np.maximum(before, 0)], -1)
        run = np.where(last_before >= 0, before - last_before, before + 1 + self._backslashes)
        marks[at[run % 2 == 1]] = False
      other_from_end = data[::-1] != _BACKSLASH
      trailing = int(np.argmax(other_from_end)) if other_from_end.any() else n
      self._backslashes = trailing + (self._backslashes if trailing == n else 0)
    marked = np.flatnonzero(marks)
    chars = data[marked]
    quotes = chars == _QUOTE
    # Quotes so far, modulo 256 (a uint8 sum wraps): its parity tells
    # whether a character lies in a string.
    parity = np.cumsum(quotes, dtype=np.uint8)
    outside = ((parity + np.uint8(self.in_string)) & 1 == 0) & ~quotes
    found = marked[outside]
    kinds = _KINDS[chars[outside]]
    depths = self.depth + np.cumsum(_DELTA[kinds])
    if len(depths):
      self.depth = int(depths[-1])
    if len(parity):
      self.in_string = bool((int(self.in_string) + int(parity[-1])) % 2)
    positions = found + self.offset
    self.offset += n
    return positions, kinds, depths
