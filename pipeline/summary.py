"""The job's summary: counts from Beam metrics, written as summary.json and
printed as a short table. summary.json is written last, when a run's outputs
are in place (pipeline/outputs.py): it marks a complete result."""
import json

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms.records import METRICS_NAMESPACE

# `file`: a file that could not be read to its end (one record per file).
ERROR_CATEGORIES = ('parse', 'schema', 'model', 'file')


def counters(result) -> dict:
  """Counter name -> value, summed over steps; committed values where the
  runner reports them, else attempted."""
  totals = {}
  query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  for metric in query['counters']:
    value = metric.committed if metric.committed is not None else metric.attempted
    totals[metric.key.metric.name] = totals.get(metric.key.metric.name, 0) + (value or 0)
  for metric in query.get('string_sets', []):  # sets of names, e.g. incomplete_files
    value = metric.committed if metric.committed is not None else metric.attempted
    totals.setdefault(metric.key.metric.name, set()).update(value or ())
  return totals


def build(config, counts: dict, runner: str, wall_time_s: float) -> dict:
  errors = {c: counts.get(f'errors_{c}', 0) for c in ERROR_CATEGORIES}
  read = counts.get('instances_read', 0)
  return {
      'instances_read': read,
      'predictions': counts.get('predictions', 0),
      'errors': sum(errors.values()),
      'errors_by_category': errors,
      'blank_lines_skipped': counts.get('blank_lines', 0),
      # Distinct files (a large file is read in several ranges, each may fail).
      'files_incomplete': len(counts['incomplete_files']) if counts.get('incomplete_files')
                          else counts.get('files_incomplete', 0),
      'incomplete_files': sorted(counts.get('incomplete_files', ()))[:100],
      # `path`: the SavedModel loaded; for a TF Serving base directory
      # (`base`), the folder of the version used (`00000123`: version 123).
      'model': {'path': config.model.path, 'version': config.model.version,
                'version_folder': config.model.version_folder,
                'base': (config.model.path[:-len(config.model.version_folder) - 1]
                         if config.model.version_folder else None),
                'signature': config.model.signature.name,
                'tags': list(config.model.tags),
                'fixed_batch': config.model.signature.fixed_batch},
      'model_loads': counts.get('model_loads', 0),
      'input_files': (sum(len(f) for f in config.files_by_format.values())
                      + len(config.unreadable_files)),
      'output': config.output,
      'runner': runner,
      'wall_time_s': round(wall_time_s, 3),
      'instances_per_s': round(read / wall_time_s, 1) if wall_time_s > 0 else None,
      'exit_status': None,  # set by the command: pipeline/cli.py
      'exit_reason': None,
  }


def write(summary: dict, output_dir: str) -> str:
  path = f'{output_dir}/summary.json'
  with FileSystems.create(path, mime_type='application/json') as f:
    f.write(json.dumps(summary, indent=2).encode('utf-8') + b'\n')
  return path


def table(summary: dict) -> str:
  model = summary['model']
  version = (f' (version {model["version"]}, folder {model.get("version_folder")})'
             if model['version'] is not None else '')
  rows = [
      ('instances read', summary['instances_read']),
      ('predictions', summary['predictions']),
      ('errors', '{} (parse {parse}, schema {schema}, model {model}, file {file})'.format(
          summary['errors'], **summary['errors_by_category'])),
      ('blank lines skipped', summary['blank_lines_skipped']),
      ('files incomplete', summary['files_incomplete']),
      ('model', f'{model["path"]}{version}, signature {model["signature"]}'),
      ('model loads', summary['model_loads']),
      ('runner', summary['runner']),
      ('wall time', f'{summary["wall_time_s"]:.1f} s'),
      ('throughput', f'{summary["instances_per_s"]} instances/s'),
      ('output', summary['output']),
      ('exit status', f'{summary["exit_status"]} ({summary["exit_reason"]})'),
  ]
  width = max(len(name) for name, _ in rows)
  return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)
