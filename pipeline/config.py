"""Everything checked before the pipeline starts: the inputs exist, the model
is a SavedModel with the signature and tags asked for, the options fit it."""
import dataclasses
import os
import stat
from typing import Optional

from tf_batch_predict.pipeline.outputs import check_outside_inputs
from tf_batch_predict.pipeline.options import ConfigError, JobOptions
from tf_batch_predict.transforms.write.format import LOCATION_FIELDS, OutputLayout, common_base, output_names
from tf_batch_predict.transforms.read.formats import detect_format
from tf_batch_predict.transforms.records import POSITION_FIELDS
from tf_batch_predict.transforms.model.savedmodel import (ModelError, ModelRef, check_ops,
                                                          inspect_model)
from tf_batch_predict.transforms import file_patterns
from tf_batch_predict.transforms.file_patterns import is_local


@dataclasses.dataclass(frozen=True)
class JobConfig:
  options: JobOptions
  model: ModelRef
  files_by_format: dict  # input format -> FileMetadata of its files, each file once
  layout: OutputLayout
  # Matched files that are not regular files (pipes, devices, sockets):
  # (path, format, reason); each is a file error record, never opened.
  unreadable_files: tuple = ()
  # The work units to read (transforms/read/units.py); None: every unit of
  # the files. A resumed run reads those its stopped run left.
  units: Optional[list] = None

  @property
  def output(self) -> str:
    return self.options.output


def _absolute(path: str) -> str:
  return os.path.abspath(path) if is_local(path) else path


def match_inputs(patterns) -> tuple:
  """FileMetadata of every file the patterns match, each once (the first
  pattern's), by the definition of transforms/file_patterns.py. Locally that
  includes paths that cannot be read as files (broken links, pipes), so that
  each is accounted for."""
  files, seen = [], set()
  for pattern in patterns:
    try:
      matched = file_patterns.match(pattern)
    except file_patterns.PatternError as e:
      raise ConfigError(f'--input: {e}') from None
    except Exception as e:  # pylint: disable=broad-except  (a file system's own error)
      raise ConfigError(f'--input: cannot list {pattern}: {_first_line(e)}') from None
    if not matched and not file_patterns.has_wildcards(pattern) and file_patterns.is_folder(
        pattern):
      raise ConfigError(f'--input: {pattern} is a directory; give a file pattern such as '
                        f'{pattern.rstrip("/")}/*.jsonl')
    if not matched:
      raise ConfigError(f'--input: {pattern} matches no file')
    for metadata in matched:
      if metadata.path not in seen:
        seen.add(metadata.path)
        files.append(metadata)
  return tuple(files)


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:300]


def special_file_reason(path: str):
  """Why a local path cannot be read as a file (opening a named pipe would
  wait forever for a writer), else None."""
  if not is_local(path):
    return None
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    return f'cannot be read: {e.strerror}'
  if stat.S_ISREG(mode):
    return None
  kind = ('a named pipe' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode)
          else 'a device' if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'not a regular file')
  return f'the path is {kind}, not a regular file; it was not read'


def _unsupported_compression(path: str):
  """The compression a file's name says, other than gzip: Beam would read
  it, but stops silently where such a stream is cut short (.gz goes through
  Python's gzip module, which does not); `.gzip` Beam would not even see as
  compressed."""
  name = path.lower()
  for suffix, kind in (('.gzip', 'gzip under a .gzip name (rename it .gz)'),
                       ('.bz2', 'bzip2'), ('.zst', 'zstd'), ('.deflate', 'deflate'),
                       ('.xz', 'xz'), ('.lzma', 'lzma'), ('.snappy', 'snappy')):
    if name.endswith(suffix):
      return kind
  return None


def group_by_format(files, requested: str) -> dict:
  groups = {}
  for metadata in files:
    compressed = _unsupported_compression(metadata.path)
    if compressed:
      raise ConfigError(f'--input: {metadata.path} is compressed with {compressed}; '
                        'only gzip (.gz) is supported')
    kind = requested if requested != 'auto' else detect_format(metadata.path)
    if kind is None:
      raise ConfigError(f'--input: cannot tell the format of {metadata.path} from '
                        'its extension; give --format')
    groups.setdefault(kind, []).append(metadata)
  return groups


def set_aside_special_files(files_by_format: dict) -> tuple:
  """(files_by_format without the paths that are not regular files,
  [(path, format, reason)] of those): each becomes a file error, never
  opened."""
  unreadable = [(m.path, kind, reason) for kind, group in files_by_format.items()
                for m in group for reason in [special_file_reason(m.path)] if reason]
  skipped = {path for path, _, _ in unreadable}
  kept = {kind: [m for m in group if m.path not in skipped]
          for kind, group in files_by_format.items()}
  return {kind: group for kind, group in kept.items() if group}, unreadable


def _check_column_types(options: JobOptions) -> None:
  if options.parquet_column_types and options.output_format != 'parquet':
    raise ConfigError('--parquet_column_types: only for --output_format=parquet (JSON Lines '
                      'keeps every value as read; tf.Examples hold integers as int64)')
  carried = ((options.key_field,) if options.key_field else ()) + options.passthrough_fields
  stray = next((f for f, _ in options.parquet_column_types if f not in carried), None)
  if stray is not None:
    raise ConfigError(f'--parquet_column_types: {stray!r} is not the --key_field or one of '
                      'the --passthrough_fields (outputs have the types of the signature)')


def resolve(options: JobOptions) -> JobConfig:
  _check_column_types(options)
  patterns = tuple(_absolute(p) for p in options.inputs)
  if options.output:  # preflight may have none
    check_outside_inputs(patterns, _absolute(options.output))
  files = match_inputs(patterns)
  files_by_format = group_by_format(files, options.input_format)
  files_by_format, unreadable = set_aside_special_files(files_by_format)
  try:
    # The op registry check imports TensorFlow: it comes after the
    # configuration checks that can be made without it (check_ops below).
    model = inspect_model(_absolute(options.model), options.tags, options.signature,
                          options.model_version, check_registry=False)
  except ModelError as e:
    raise ConfigError(str(e)) from None
  carried = ([options.key_field] if options.key_field else list(LOCATION_FIELDS))
  clash = set(carried) & set(options.passthrough_fields)
  if clash:
    raise ConfigError(f'--passthrough_fields: {sorted(clash)[0]!r} is already '
                      'written as the key or location field')
  carried += list(options.passthrough_fields)
  outputs = [s.name for s in model.signature.outputs]
  unknown = [f for f in options.output_fields if f not in outputs]
  if unknown:
    raise ConfigError(f'--output_fields: the signature has no output {unknown[0]!r}; '
                      f'outputs: {", ".join(outputs)}')
  kept = [s for s in model.signature.outputs
          if not options.output_fields or s.name in options.output_fields]
  unwritable = next((s for s in kept if s.unwritable), None)
  if unwritable:
    writable = [s.name for s in kept if not s.unwritable]
    raise ConfigError(f'--model: {unwritable.unwritable}; leave it out with --output_fields'
                      + (f'={",".join(writable)}' if writable else ''))
  try:
    model = check_ops(model)
  except ModelError as e:
    raise ConfigError(str(e)) from None
  # Only the outputs written are fetched: an output left out costs nothing,
  # and one the job cannot write (no batch dimension) can be left out.
  model = dataclasses.replace(model, signature=dataclasses.replace(
      model.signature, outputs=tuple(kept)))
  # --scalar_outputs: a [1] output per instance is written as its value.
  squeezed = tuple(s.name for s in kept if options.scalar_outputs and s.shape == (1,)
                   and not s.ragged_rank)
  specs = tuple(dataclasses.replace(s, shape=()) if s.name in squeezed else s for s in kept)
  names = output_names([s.name for s in kept], carried)
  typed = tuple((f, t) for f, t in options.parquet_column_types if t != 'string')
  for field, _ in typed:
    if f'{field}_text' in carried or f'{field}_text' in names.values():
      raise ConfigError(f'--parquet_column_types: the column {field}_text, for the values of '
                        f'{field!r} that are not of its type, would have the name of another '
                        'field; rename that field or leave --parquet_column_types out')
  layout = OutputLayout(
      key_field=options.key_field, passthrough_fields=options.passthrough_fields,
      output_names=names, carried_types=typed,
      input_base=common_base(patterns),
      output_format=options.output_format, output_specs=specs, squeezed=squeezed,
      position_fields=tuple(sorted({POSITION_FIELDS[k] for k in files_by_format})))
  return JobConfig(
      options=dataclasses.replace(options, output=_absolute(options.output)),
      model=model, files_by_format=files_by_format, layout=layout,
      unreadable_files=tuple(unreadable))
