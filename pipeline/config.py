"""Everything checked before the pipeline starts: the inputs exist, the model
is a SavedModel with the signature and tags asked for, the options fit it."""
import dataclasses
import os
import re

from apache_beam.io.filesystems import FileSystems

from pipeline.options import ConfigError, JobOptions
from transforms.format import LOCATION_FIELDS, OutputLayout, output_names
from transforms.read import detect_format
from transforms.records import POSITION_FIELDS
from transforms.savedmodel import ModelError, ModelRef, inspect_model
from transforms.storage import is_local


@dataclasses.dataclass(frozen=True)
class JobConfig:
  options: JobOptions
  model: ModelRef
  files_by_format: dict  # input format -> FileMetadata of its files, each file once
  layout: OutputLayout

  @property
  def output(self) -> str:
    return self.options.output


def _absolute(path: str) -> str:
  return os.path.abspath(path) if is_local(path) else path


def pattern_base(pattern: str) -> str:
  """The directory part of a pattern before its first wildcard."""
  literal = re.split(r'[*?\[{]', pattern, maxsplit=1)[0]
  return literal[:literal.rfind('/') + 1]


def match_inputs(patterns) -> tuple:
  files, seen = [], set()
  for pattern in patterns:
    try:
      matched = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # a missing directory matches nothing; say so below
      matched = []
    directories = [m for m in matched if is_local(m.path) and os.path.isdir(m.path)]
    matched = [m for m in matched if m not in directories]
    if not matched and directories:
      raise ConfigError(f'--input: {pattern} is a directory; give a file pattern such as '
                        f'{pattern.rstrip("/")}/*.jsonl')
    if not matched:
      raise ConfigError(f'--input: {pattern} matches no file')
    for metadata in sorted(matched, key=lambda m: m.path):
      if metadata.path not in seen:
        seen.add(metadata.path)
        files.append(metadata)
  return tuple(files)


def group_by_format(files, requested: str) -> dict:
  groups = {}
  for metadata in files:
    kind = requested if requested != 'auto' else detect_format(metadata.path)
    if kind is None:
      raise ConfigError(f'--input: cannot tell the format of {metadata.path} from '
                        'its extension; give --format')
    groups.setdefault(kind, []).append(metadata)
  return groups


def resolve(options: JobOptions) -> JobConfig:
  patterns = tuple(_absolute(p) for p in options.inputs)
  files = match_inputs(patterns)
  files_by_format = group_by_format(files, options.input_format)
  try:
    model = inspect_model(_absolute(options.model), options.tags, options.signature)
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
  layout = OutputLayout(
      key_field=options.key_field, passthrough_fields=options.passthrough_fields,
      output_names=output_names([s.name for s in kept], carried),
      input_bases=tuple(pattern_base(p) for p in patterns),
      output_format=options.output_format, output_specs=tuple(kept),
      position_fields=tuple(sorted({POSITION_FIELDS[k] for k in files_by_format})))
  return JobConfig(
      options=dataclasses.replace(options, output=_absolute(options.output)),
      model=model, files_by_format=files_by_format, layout=layout)
