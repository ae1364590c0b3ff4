"""CSV with a header row: reading, and what a row means.

Definition (`CsvFormat.instance`): the first line of each file names the
columns. Every other line (transforms/read/lines.py says what a line is) is one
row, split by Python's csv module (comma, double quotes); it must be valid
UTF-8 and have as many cells as the header. A cell feeds a scalar input (or
one of shape [1]) by `convert.text_scalar`, any other input as a JSON array.
A column named twice in the header is a repeated field. Carried cells are
written as JSON strings, the text as read.

Fast path (`CsvFormat.fast`): the same splitting (str.split for lines with
no quote, carriage return or NUL, where it equals the csv module; the csv
module itself for the others), then whole columns converted by the same
rules: the same number grammar matched by pyarrow's regex engine, the same
correctly rounded decimal conversion. A row with a cell that does not match
is left to the definition.
"""
import csv
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tf_batch_predict.transforms import convert
from tf_batch_predict.transforms.read.decode import FastRows, Instance, InputFormat
from tf_batch_predict.transforms.records import CSV

_SPECIAL_FLOAT_TEXTS = pa.array(sorted(convert.SPECIAL_FLOATS))
_BOOL_TEXTS = pa.array(sorted(convert.BOOL_TEXT))


def read_header(line: bytes) -> tuple:
  text = line.decode('utf-8-sig').rstrip('\r')
  return tuple(next(csv.reader([text]), []))


def split_row(line: bytes, header: tuple) -> list:
  """A row's cells; ValueError when the line is not a row of this file."""
  try:
    text = line.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'invalid UTF-8 at byte {e.start}') from None
  try:
    cells = next(csv.reader([text]))
  except csv.Error as e:
    raise ValueError(f'invalid CSV row: {e}') from None
  if len(cells) != len(header):
    raise ValueError(f'the CSV row has {len(cells)} columns, the header {len(header)}')
  return cells


class CsvFormat(InputFormat):
  kind = CSV
  def __init__(self, max_instance_bytes: int):
    self._max_instance_bytes = max_instance_bytes

  def read_unit(self, metadata, offsets):
    # Imported here: lines.py reads through Beam, which the decoding helper
    # process (decoder_process.py), decoding with this format, does not import.
    from tf_batch_predict.transforms.read.lines import read_line_range
    return read_line_range(CSV, self._max_instance_bytes, read_header, metadata, offsets)

  def sample(self, metadata, quota, limits):
    """The first `quota` rows of a file, as `read` reads them (lines.py)."""
    from tf_batch_predict.transforms.read.lines import sample_lines
    return sample_lines(metadata, CSV, quota, self._max_instance_bytes, limits,
                        header_reader=read_header)

  def instance(self, chunk, row) -> Instance:
    header = chunk.header
    cells = split_row(chunk.records[row], header)
    repeated = frozenset(name for name, n in Counter(header).items() if n > 1)
    return Instance(dict(zip(header, cells)), convert=convert.convert_text_value,
                    duplicates=repeated, text_cells=True)

  # -- fast path -------------------------------------------------------------

  def fast(self, chunk, rows, decoder):
    if decoder.signature.takes_examples or not all(
        s.shape in ((), (1,)) for s in decoder.inputs):
      return None
    header = chunk.header
    columns = {name: i for i, name in enumerate(header)}
    if len(columns) != len(header):
      return None  # repeated column names: the definition says which rows fail
    used = [s.name for s in decoder.inputs] + list(decoder.carried)
    if not all(name in columns for name in used):
      return None
    split, kept = [], []
    for row in rows:
      line = chunk.records[row]
      try:
        if b'"' in line or b'\r' in line or b'\0' in line:
          cells = split_row(line, header)
        else:
          cells = line.decode('utf-8').split(',')
          if len(cells) != len(header):
            continue
      except ValueError:
        continue
      split.append(cells)
      kept.append(row)
    if not kept:
      return None
    ok = np.ones(len(kept), dtype=bool)
    converted = {}
    for spec in decoder.inputs:
      index = columns[spec.name]
      cells = pa.array([cells[index] for cells in split], pa.string())
      values, valid = _convert_column(cells, spec)
      converted[spec.name] = values
      ok &= valid
    carried = {}
    for field in decoder.carried:
      index = columns[field]
      carried[field] = [orjson.dumps(cells[index]) for cells in split]
    if not ok.any():
      return None
    rows_ok = [row for row, good in zip(kept, ok) if good]
    feeds = {}
    for spec in decoder.inputs:
      values = converted[spec.name][ok]
      feeds[spec.name] = values.reshape((len(rows_ok),) + spec.shape)
    return FastRows(rows_ok, feeds, {f: [t for t, good in zip(texts, ok) if good]
                                     for f, texts in carried.items()})


def _convert_column(cells: pa.Array, spec):
  """(values, valid): the column's cells converted by `convert.text_scalar`
  where they match its rules (`valid`), placeholders elsewhere."""
  if spec.dtype == 'string':
    valid = pc.not_equal(pc.utf8_length(cells), 0).to_numpy(zero_copy_only=False)
    values = np.empty(len(cells), dtype=object)
    values[:] = [text.encode('utf-8') for text in cells.to_pylist()]
    return values, valid
  kind = np.dtype(spec.dtype).kind
  if kind == 'b':
    valid = pc.is_in(cells, value_set=_BOOL_TEXTS).to_numpy(zero_copy_only=False)
    values = pc.is_in(cells, value_set=pa.array(['true', 'True', '1'])).to_numpy(
        zero_copy_only=False)
    return values, valid
  if kind in 'iu':
    valid = pc.match_substring_regex(cells, f'^{convert.INTEGER_TEXT.pattern}$')
    valid = valid.to_numpy(zero_copy_only=False)
    # Integers too long for int64 are left to the definition.
    valid &= pc.less_equal(pc.utf8_length(cells), 18).to_numpy(zero_copy_only=False)
    texts = pc.if_else(pa.array(valid), cells, '0')
    ints = pc.cast(texts, pa.int64()).to_numpy()
    info = np.iinfo(spec.dtype)
    valid &= (ints >= max(info.min, -2**63)) & (ints <= min(info.max, 2**63 - 1))
    return ints.astype(spec.dtype), valid
  valid = pc.or_(pc.match_substring_regex(cells, f'^{convert.NUMBER_TEXT.pattern}$'),
                 pc.is_in(cells, value_set=_SPECIAL_FLOAT_TEXTS))
  valid = valid.to_numpy(zero_copy_only=False)
  texts = pc.if_else(pa.array(valid), cells, '0')
  floats = pc.cast(texts, pa.float64()).to_numpy()
  # Decimals beyond the 64-bit range are the definition's to report.
  valid &= ~(np.isinf(floats) & ~pc.is_in(cells, value_set=_SPECIAL_FLOAT_TEXTS).to_numpy(
      zero_copy_only=False))
  with np.errstate(over='ignore'):  # as convert.convert_value
    return floats.astype(spec.dtype), valid
