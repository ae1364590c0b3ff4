"""Resuming a stopped run (--resume): the work units it committed are kept,
the others are read and scored; and scoring only new and changed input
files (--incremental): the units of unchanged files are kept from the
complete result.

A run writes its plan into its staging folder before the pipeline starts:

    OUTPUT/.staging-RUN_ID/plan.json   what decides the result, and the units
    OUTPUT/.staging-RUN_ID/units/      the units committed (transforms/write/units.py)

A run that stops before it commits (killed, failed, interrupted) leaves that
folder. `--resume` takes the newest such folder over: where its plan's
result-deciding settings are this command's, the units it committed stay
and the rest are scored into the same folder, which is then committed as
one result. Settings that decide only how the work is done (workers, batch
sizes, progress output, the runner) may differ.

A complete result holds its unit manifest (transforms/write/units.py
MANIFEST_NAME): its units, the shards holding each one's records, and the
settings it was made with. `--incremental` copies the units of the files
that have not changed into a new staging folder as committed units and
scores the others, as a resumed run does.
"""
import dataclasses
import hashlib
import json
import logging
from typing import Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from tf_batch_predict.pipeline.options import ConfigError
from tf_batch_predict.transforms.read.units import Unit
from tf_batch_predict.transforms.write import units as unit_outputs

_LOG = logging.getLogger(__name__)

PLAN_NAME = 'plan.json'
PLAN_VERSION = 2

# Options that decide how the work is done, not what the result holds: a
# resumed run may change them. Every other option decides the result.
WORK_OPTIONS = frozenset({
    'min_batch_size', 'max_batch_size', 'share_model', 'max_error_fraction', 'beam_args',
    'runner', 'skip_model_check', 'preflight', 'preflight_instances', 'progress_interval',
    'early_stop_after', 'resume', 'incremental',
    'output'})  # the folder the stopped run is in, wherever it was moved
# The files of a SavedModel whose content decides what it computes.
_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt', 'variables/variables.index',
                'fingerprint.pb')


@dataclasses.dataclass
class Stopped:
  """A stopped run's staging folder, taken over by a resumed run."""
  run_id: str
  units: list  # every unit of its plan
  committed: dict  # unit id -> commit record, of the units it committed


def result_settings(config) -> dict:
  """What decides a run's result, as JSON values: the options but those of
  WORK_OPTIONS, the model's files, the folder records name their files
  relative to, and each input file's size and time."""
  options = {f.name: getattr(config.options, f.name)
             for f in dataclasses.fields(config.options) if f.name not in WORK_OPTIONS}
  settings = {f'--{name}': _json(value) for name, value in sorted(options.items())}
  settings['model version folder'] = config.model.version_folder
  settings['model files'] = _model_digest(config.model.path)
  # Records name their file relative to the patterns' common folder: other
  # patterns may change every name (--incremental compares files, not patterns).
  settings['file names relative to'] = config.layout.input_base
  for kind, files in sorted(config.files_by_format.items()):
    for metadata in files:
      settings[f'input file {metadata.path}'] = {
          'format': kind, 'bytes': metadata.size_in_bytes,
          'modified': getattr(metadata, 'last_updated_in_seconds', None)}
  for path, kind, reason in config.unreadable_files:
    settings[f'input file {path}'] = {'format': kind, 'unreadable': reason}
  return settings


def _json(value):
  return json.loads(json.dumps(value, default=str))


def _model_digest(path: str) -> str:
  """A digest of what the model computes: its graph, its variables' index
  (which holds their checksums), its fingerprint and its assets (a
  vocabulary replaced in place changes the outputs, not the graph)."""
  from tf_batch_predict.transforms import file_patterns
  digest = hashlib.sha256()
  try:
    assets = [m.path[len(path) + 1:] for m in file_patterns.match(
        f'{file_patterns.escape(path)}/assets/**')]
  except Exception:  # pylint: disable=broad-except  (no assets folder)
    assets = []
  for name in (*_MODEL_FILES, *sorted(assets)):
    try:
      with FileSystems.open(f'{path}/{name}',
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        digest.update(name.encode() + b'\0' + f.read())
    except Exception:  # pylint: disable=broad-except  (a file this export lacks)
      continue
  return digest.hexdigest()


def write_plan(staging_path: str, config, units: list) -> None:
  plan = {'version': PLAN_VERSION, 'settings': result_settings(config),
          'units': [u.to_json() for u in units]}
  unit_outputs.write_atomically(f'{staging_path}/{PLAN_NAME}',
                                json.dumps(plan).encode())


def find_stopped(output: str, config) -> Optional[Stopped]:
  """The newest stopped run in `output` whose plan can be read, checked
  against this command's settings (raises ConfigError naming the first
  difference); None where there is none."""
  from tf_batch_predict.pipeline import outputs
  for folder in reversed(outputs.staging_folders(output)):
    plan = _read_json(f'{folder}/{PLAN_NAME}')  # None: killed before it was written
    if plan is None or plan.get('version') != PLAN_VERSION:
      continue
    difference = _first_difference(plan['settings'], result_settings(config))
    if difference:
      raise ConfigError(f'--resume: the stopped run in {folder} {difference}; run without '
                        '--resume to start from the first instance')
    units = [Unit.from_json(fields) for fields in plan['units']]
    run_id = folder.rsplit('/', 1)[-1][len(outputs.STAGING_PREFIX):]
    return Stopped(run_id, units, unit_outputs.committed(
        f'{folder}/{unit_outputs.UNITS_FOLDER}'))
  return None


def _first_difference(stopped: dict, now: dict) -> str:
  for name in sorted(set(stopped) | set(now)):
    if stopped.get(name) == now.get(name):
      continue
    if name.startswith('input file '):
      path = name[len('input file '):]
      if name not in now:
        return f'read {path}, which this command does not'
      if name not in stopped:
        return f'did not read {path}, which this command does'
      return f'read {path} as {_brief(stopped[name])}, which is now {_brief(now[name])}'
    return f'had {name}={_brief(stopped.get(name))}, this command {_brief(now.get(name))}'
  return ''


def _brief(value) -> str:
  text = json.dumps(value, ensure_ascii=False, sort_keys=True)
  return text if len(text) <= 120 else text[:117] + '...'


# -- --incremental ----------------------------------------------------------------------

@dataclasses.dataclass
class Incremental:
  """What an --incremental run keeps of the result in the output folder."""
  units: list  # every unit of the new result: those kept, then those to score
  kept: dict  # unit id -> commit record, of the units kept (seeded into staging)
  files: dict  # 'kept', 'added', 'replaced', 'removed' -> paths


def incremental(config, staging_path: str) -> Optional[Incremental]:
  """--incremental: the units of the complete result in config.output whose
  input files are unchanged (same size and modification time), copied into
  the staging folder as committed units, and the units of the new and
  changed files, to score; None where the output folder holds no complete
  result with a unit manifest (everything is scored). Raises ConfigError
  where an option that decides the result differs from the result's."""
  from tf_batch_predict.pipeline import outputs, parallelism
  output = config.output
  manifest = _read_json(f'{output}/{unit_outputs.MANIFEST_NAME}')
  if (outputs.good_result(output, any_status=True) is None or manifest is None
      or not manifest.get('settings')):
    return None
  before, now = manifest['settings'], result_settings(config)
  files_before = {k: v for k, v in before.items() if k.startswith('input file ')}
  files_now = {k: v for k, v in now.items() if k.startswith('input file ')}
  difference = _first_difference(
      {k: v for k, v in before.items() if k not in files_before and k != '--inputs'},
      {k: v for k, v in now.items() if k not in files_now and k != '--inputs'})
  if difference:
    raise ConfigError(f'--incremental: the result in {output} {difference}; run without '
                      '--incremental to score every file')
  path_of = len('input file ')
  unchanged = {k[path_of:] for k, v in files_now.items()
               if files_before.get(k) == v and 'unreadable' not in v}
  kept_units, kept = [], {}
  folder = f'{staging_path}/{unit_outputs.UNITS_FOLDER}'
  for entry in manifest['units']:
    unit = Unit.from_json(entry)
    if unit.error or not all(path in unchanged for path, _ in unit.files):
      continue  # its files are read again (a group: all of them)
    kept_units.append(unit)
    kept[unit.id] = unit_outputs.seed(folder, unit.id, output, entry['shards'],
                                      entry['record'])
  covered = {path for unit in kept_units for path, _ in unit.files}
  changed = {kind: [m for m in files if m.path not in covered]
             for kind, files in config.files_by_format.items()}
  scored = parallelism.work_units(dataclasses.replace(config, files_by_format=changed,
                                                      units=None))
  names_before = {k[path_of:] for k in files_before}
  names_now = {k[path_of:] for k in files_now}
  return Incremental(kept_units + scored, kept, {
      'kept': sorted(unchanged),
      'added': sorted(names_now - names_before),
      'replaced': sorted((names_now & names_before) - unchanged),
      'removed': sorted(names_before - names_now)})


def _read_json(path: str):
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      return json.loads(f.read())
  except Exception:  # pylint: disable=broad-except  (none, or not readable: none)
    return None
