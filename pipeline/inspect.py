"""batch-predict inspect: what a SavedModel offers and what an instance of
each of its signatures looks like.

  batch-predict inspect --model=PATH [--model_version=N] [--tag=A,B] [--json]

Prints the versions of a TF Serving base directory (and which one the job
uses by default), the tag sets, and for every signature its method, inputs
and outputs as the job reads them (`float32[batch,3]`, with the graph's
shape where an older TF1 SignatureDef disagrees with it), the features of the
parsing spec for signatures that take tf.Examples, and an instance line that
the job scores: writing input then needs neither `saved_model_cli show --all`
nor guesswork. Everything comes from the SavedModel proto, read through
Beam's file systems (so `gs://` too), as the launcher reads it: nothing is
loaded. `--json` prints one JSON object instead.

A mistake (a missing path, not a SavedModel, an unknown tag set) is one line
on stderr and exit status 2.
"""
import argparse
import json
import os
import sys
import traceback

# The command's one-line errors and its debugging switch (--log_level=debug,
# BATCH_PREDICT_DEBUG=1).
from tf_batch_predict.pipeline.command import EXIT_CONFIG_ERROR, EXIT_OK, debug, error, last_line
# The job's own option parsing: a mistake is a ConfigError, one line.
from tf_batch_predict.pipeline.options import ConfigError, _csv, _Parser


DEFAULT_TAGS = ('serve',)
DEFAULT_SIGNATURE = 'serving_default'
# Example lines longer than this are shortened in the text output (an image
# input is hundreds of thousands of zeros); --json holds them whole.
TEXT_LINE_LIMIT = 2000


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog='batch-predict inspect', allow_abbrev=False,
      description='Show what a SavedModel offers: versions, tag sets, signatures with '
                  'their inputs and outputs, parsing specs, and an example instance '
                  'line for each signature. Nothing is loaded.')
  parser.add_argument('--model', required=True,
                      help='SavedModel directory, or a TF Serving base directory of '
                           'numeric versions (local or gs://)')
  parser.add_argument('--model_version', default=None,
                      help='with a TF Serving base directory: the version to inspect '
                           '(default: the highest, which the job uses by default)')
  parser.add_argument('--tag', dest='tags', default=None, type=_csv,
                      help='only this tag set, comma-separated (default: every tag set)')
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object instead of text')
  return parser


# -- example instances --------------------------------------------------------

def _leaf(dtype: str, name: str):
  """A zero of a dtype, as a JSON value the job takes for it."""
  if dtype == 'string':
    # TF Serving's convention: inputs named *_bytes take {"b64": ...}.
    return {'b64': ''} if name.endswith('_bytes') else ''
  if dtype == 'bool':
    return False
  if dtype.startswith(('float', 'half', 'bfloat')):
    return 0.0
  return 0


def _filled(leaf, shape):
  """`leaf` nested to `shape` (unknown sizes as 1); `leaf` itself for a
  scalar or an unknown rank."""
  value = leaf
  for size in reversed(shape or ()):
    value = [value] * (1 if size is None else size)
  return value


_FEATURE_LEAVES = {'float': 0.0, 'int64': 0, 'bytes': ''}


def example_instance(spec):
  """One instance of the signature (a SignatureSpec) as a JSON value: zeros,
  empty strings, false; for a signature that takes tf.Examples, an object of
  the parsing spec's features (every one, optional ones included, sparse
  ones with one value), which the job turns into an Example; without a
  parsing spec, an empty serialized Example."""
  if spec.takes_examples:
    if not spec.example_features:
      return {'b64': ''}
    return {name: _filled(_FEATURE_LEAVES.get(feature.kind, ''),
                          (None,) if feature.shape is None else feature.shape)
            for name, feature in sorted(spec.example_features.items())}
  return {tensor.name: _filled(_leaf(tensor.dtype, tensor.name), tensor.shape)
          for tensor in spec.inputs}


def instance_line(value) -> str:
  return json.dumps(value, ensure_ascii=False)


# -- describing the model -----------------------------------------------------

def _shape_text(dims) -> str:
  return '[' + ','.join('?' if d is None else str(d) for d in dims) + ']'


def _type_text(dtype: str, shape, batched: bool) -> str:
  """`float32[batch,3]`: the shape as the job reads it, batch dimension
  first; `float32[10]` for an output that is not batched."""
  if shape is None:
    return f'{dtype}[unknown rank]'
  dims = (['batch'] if batched else []) + ['?' if d is None else str(d) for d in shape]
  return f'{dtype}[{",".join(dims)}]'


def _tensor(spec, info, where: str, signature, batched: bool) -> dict:
  """One input or output: what the job reads (spec, a TensorSpec) and what
  the SignatureDef declares (info, a TensorInfo)."""
  from tf_batch_predict.transforms.model import savedmodel
  declared = savedmodel.declared_dims(info)
  notes = []
  # read_signature's note for this tensor, where the graph's shape is used.
  prefix = f'signature {signature.name!r} {where} {spec.name!r} ('
  graph_used = any(n.startswith(prefix) for n in signature.graph_shapes_used)
  if graph_used:
    notes.append('graph shape used (the SignatureDef declares '
                 + ('unknown rank' if declared is None else _shape_text(declared)) + ')')
  full = None if spec.shape is None else list(spec.shape)
  if batched and full is not None:
    batch = declared[0] if declared and not graph_used else None
    if where == 'input' and signature.fixed_batch:
      batch = signature.fixed_batch
    full.insert(0, batch)
  if where == 'input' and signature.per_instance:
    batched = False
    notes.append('no batch dimension: one instance per call')
  elif where == 'input' and signature.fixed_batch:
    notes.append(f'fixed batch {signature.fixed_batch}')
  if where == 'output' and not batched:
    notes.append("not batched: the one instance's whole output")
  if spec.ragged_rank:
    notes.append("ragged: each instance's own list, of any length")
  if spec.unwritable:
    notes.append('cannot be written: leave it out with --output_fields')
  type_text = (_raw_tensor(spec.name, info)['type'] if spec.unwritable
               else _type_text(spec.dtype, spec.shape, batched))
  return {'name': spec.name, 'dtype': spec.dtype,
          'type': type_text,
          'shape': full,
          'instance_shape': None if spec.shape is None else list(spec.shape),
          'batched': batched, 'tensor': info.name, 'notes': notes}


def _raw_tensor(name: str, info) -> dict:
  """A tensor of a signature the job cannot use, as the SignatureDef has it."""
  from tf_batch_predict.transforms.model import savedmodel
  dims = savedmodel.declared_dims(info)
  dtype = savedmodel.dtype_name(info)
  type_text = (f'{dtype}[unknown rank]' if dims is None
               else f'{dtype}{_shape_text(dims)}')
  return {'name': name, 'dtype': dtype, 'type': type_text, 'shape': dims,
          'instance_shape': None, 'batched': None, 'tensor': info.name, 'notes': []}


def _flags(tags, signature_name: str) -> str:
  """The job's options that select this signature (defaults left out)."""
  flags = []
  if set(tags) != set(DEFAULT_TAGS):
    flags.append(f'--tag={",".join(tags)}')
  if signature_name != DEFAULT_SIGNATURE:
    flags.append(f'--signature={signature_name}')
  return ' '.join(flags)


def _registry_at_hand() -> bool:
  """Whether to check the graph's ops against TensorFlow's op registry:
  only where TensorFlow is imported already (a program that calls
  `describe`, the tests). The command itself imports no TensorFlow, whose
  import costs seconds and most of a gigabyte, for a report read from the
  proto: it then names the ops of the libraries it knows (TF Text, TF
  Decision Forests: transforms/model/op_libraries.py's lists, and whether
  each is installed), but not the ops of another custom library, which
  only the registry can tell from TensorFlow's own. A run checks them all
  before it starts (exit status 2), as does `batch-predict preflight`."""
  return 'tensorflow' in sys.modules


def _signature(model_dir: str, meta_graph, name: str) -> dict:
  from tf_batch_predict.transforms.model import savedmodel
  tags = tuple(meta_graph.meta_info_def.tags)
  signature_def = meta_graph.signature_def[name]
  entry = {'name': name, 'method': signature_def.method_name,
           'default': name == DEFAULT_SIGNATURE, 'flags': _flags(tags, name)}
  try:
    spec = savedmodel.signature_spec(meta_graph, name, model_dir,
                                     check_registry=_registry_at_hand())
  except savedmodel.ModelError as e:
    entry.update(
        usable=False, error=str(e), takes_examples=None, fixed_batch=None,
        inputs=[_raw_tensor(k, signature_def.inputs[k]) for k in sorted(signature_def.inputs)],
        outputs=[_raw_tensor(k, signature_def.outputs[k])
                 for k in sorted(signature_def.outputs)],
        notes=[], features=None, example=None, example_line=None)
    return entry
  unbatched = set(spec.unbatched_outputs)
  notes = []
  from tf_batch_predict.transforms.model import op_libraries
  for library in op_libraries.KNOWN:
    if library.module in spec.op_libraries:
      notes.append(f'uses {library.name} ops: {library.module} is installed and is loaded '
                   'with the model')
  if spec.per_instance:
    notes.append('no input has a batch dimension: the job calls the model once per '
                 'instance, on its own values')
  elif spec.fixed_batch:
    notes.append(f'fixed batch {spec.fixed_batch}: the job calls the model on exactly '
                 f'{spec.fixed_batch} row{"s" if spec.fixed_batch > 1 else ""} per call, '
                 'as exported')
  if spec.graph_shapes_used:
    notes.append("the SignatureDef disagrees with the graph (an older TF1 export): the job "
                 "uses the graph's shapes, as TF Serving does")
  if spec.takes_examples and not spec.example_features:
    notes.append('takes serialized tf.Examples, but the graph does not say which '
                 'features it parses: give each instance as {"b64": ...} of a serialized '
                 'Example, or as fields (their types follow the values)')
  features = None
  if spec.example_features:
    features = [{'name': k, 'kind': f.kind, 'required': f.required,
                 'shape': None if f.shape is None else list(f.shape),
                 'count': f.describe_count()}
                for k, f in sorted(spec.example_features.items())]
  example = example_instance(spec)
  entry.update(
      usable=True, error=None, takes_examples=spec.takes_examples,
      fixed_batch=spec.fixed_batch,
      inputs=[_tensor(t, signature_def.inputs[t.name], 'input', spec, True)
              for t in spec.inputs],
      outputs=[_tensor(t, signature_def.outputs[t.name], 'output', spec,
                       t.name not in unbatched) for t in spec.outputs],
      notes=notes, features=features, example=example, example_line=instance_line(example))
  return entry


def describe(path: str, tags=None, version=None) -> dict:
  """The report, as a JSON-ready dict; raises savedmodel.ModelError."""
  from tf_batch_predict.transforms.model import savedmodel
  path = path.rstrip('/') or '/'
  model_dir, chosen, folder = savedmodel.resolve_model_dir(path, version)
  report = {'model': path, 'base_directory': chosen is not None, 'saved_model': model_dir,
            'versions': None, 'default_version': None, 'version': chosen,
            'version_folder': folder}
  if chosen is not None:
    folders = savedmodel.version_folders(path)
    report['versions'] = [{'version': v, 'folders': names}
                          for v, names in sorted(folders.items())]
    report['default_version'] = max(folders)
  saved_model, _ = savedmodel.read_saved_model(model_dir)
  meta_graphs = list(saved_model.meta_graphs)
  report['tag_sets'] = [list(m.meta_info_def.tags) for m in meta_graphs]
  report['default_tag_set'] = next(
      (t for t in report['tag_sets'] if set(t) == set(DEFAULT_TAGS)), None)
  if tags:
    meta_graphs = [m for m in meta_graphs if set(m.meta_info_def.tags) == set(tags)]
    if not meta_graphs:
      available = ', '.join('"' + ','.join(t) + '"' for t in report['tag_sets'])
      raise savedmodel.ModelError(f'--tag: the SavedModel has no tag set '
                                  f'"{",".join(tags)}"; available: {available}')
  report['meta_graphs'] = []
  for meta_graph in meta_graphs:
    meta_tags = tuple(meta_graph.meta_info_def.tags)
    names = savedmodel.callable_signatures(meta_graph)
    names.sort(key=lambda n: n != DEFAULT_SIGNATURE)  # the default first
    report['meta_graphs'].append({
        'tags': list(meta_tags), 'default': set(meta_tags) == set(DEFAULT_TAGS),
        'default_signature': DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in names else None,
        'signatures': [_signature(model_dir, meta_graph, n) for n in names]})
  return report


# -- text ---------------------------------------------------------------------

def _table(rows, indent: str) -> list:
  """Rows of cells as aligned lines."""
  widths = [max(len(r[i]) for r in rows) for i in range(max(len(r) for r in rows))]
  return [indent + '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _tag_text(tags) -> str:
  return '"' + ','.join(tags) + '"'


def _tensor_rows(tensors) -> list:
  return [[t['name'], t['type'], '; '.join(t['notes'])] for t in tensors]


def _versions_text(report) -> list:
  lines = [f'Model: {report["model"]} (a TF Serving base directory)', 'Versions:']
  rows = []
  for entry in report['versions']:
    marks = []
    if entry['version'] == report['default_version']:
      marks.append('the default (highest)')
    if entry['version'] == report['version']:
      marks.append('inspected')
    if len(entry['folders']) > 1:
      marks.append('two folders of one version: cannot be used')
    rows.append([str(entry['version']),
                 ('folders ' if len(entry['folders']) > 1 else 'folder ')
                 + ' and '.join(entry['folders']),
                 ('<- ' + ', '.join(marks)) if marks else ''])
  lines.extend(_table(rows, '  '))
  lines.append(f'SavedModel: {report["saved_model"]} (version {report["version"]})')
  return lines


def _signature_text(sig) -> list:
  head = f'  Signature "{sig["name"]}"'
  if sig['default']:
    head += ' (the default)'
  if sig['flags']:
    head += f' ({sig["flags"]})'
  lines = [head, f'    method: {sig["method"] or "(none)"}']
  if sig['error']:
    lines.append(f'    cannot be used by the job: {sig["error"]}')
  elif sig['takes_examples']:
    lines.append('    takes serialized tf.Examples')
  lines.extend(f'    note: {n}' for n in sig['notes'])
  for title, tensors in (('inputs', sig['inputs']), ('outputs', sig['outputs'])):
    lines.append(f'    {title}:')
    lines.extend(_table(_tensor_rows(tensors), '      ') if tensors else ['      (none)'])
  if sig['features']:
    lines.append('    features of each tf.Example (the graph\'s parsing spec):')
    lines.extend(_table([[f['name'], f['kind'], 'required' if f['required'] else 'optional',
                          f['count']] for f in sig['features']], '      '))
  if sig['example_line'] is not None:
    line = sig['example_line']
    lines.append('    example instance (JSONL):')
    if len(line) > TEXT_LINE_LIMIT:
      lines.append(f'      {line[:200]}...')
      lines.append(f'      ({len(line)} characters, shortened here: --json holds the whole '
                   'line as "example_line")')
    else:
      lines.append(f'      {line}')
  return lines


def text(report) -> str:
  lines = (_versions_text(report) if report['base_directory']
           else [f'SavedModel: {report["saved_model"]}'])
  tag_sets = []
  for tags in report['tag_sets']:
    described = _tag_text(tags)
    if set(tags) == set(DEFAULT_TAGS):
      described += ' (the default)'
    else:
      described += f' (--tag={",".join(tags)})'
    tag_sets.append(described)
  lines.append('Tag sets: ' + (', '.join(tag_sets) or '(none)'))
  if report['default_tag_set'] is None:
    lines.append(f'  (no tag set "{",".join(DEFAULT_TAGS)}", the default: pass --tag)')
  for meta_graph in report['meta_graphs']:
    signatures = meta_graph['signatures']
    lines.append('')
    count = f'{len(signatures)} signature{"" if len(signatures) == 1 else "s"}'
    if not signatures:
      count = ('no signatures: nothing to call (TF Serving cannot serve it either; save it '
               'with signatures=...)')
    elif meta_graph['default_signature'] is None:
      count += f', none named {DEFAULT_SIGNATURE}: pass --signature=NAME'
    lines.append(f'Tag set {_tag_text(meta_graph["tags"])}: {count}')
    for sig in signatures:
      lines.append('')
      lines.extend(_signature_text(sig))
  return '\n'.join(lines)


# -- the command ---------------------------------------------------------------

def main(argv=None) -> int:
  # TensorFlow's C++ start-up chatter is not for this output.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args = _parser().parse_args(argv)
  except ConfigError as e:
    error(e)
    return EXIT_CONFIG_ERROR
  except SystemExit as e:  # --help
    return e.code if isinstance(e.code, int) else EXIT_OK
  from tf_batch_predict.transforms.model.savedmodel import ModelError
  from tf_batch_predict.transforms.file_patterns import is_local
  if not is_local(args.model):  # (a local model is read without Beam's file systems)
    from tf_batch_predict.transforms import storage
    storage.use_anonymous_credentials_for_emulator()
  version = args.model_version
  try:
    if version is not None:
      if not version.strip().isascii() or not version.strip().isdigit():
        raise ConfigError(f'--model_version: {version!r} is not a version number')
      version = int(version)
    if args.tags is not None and not args.tags:
      raise ConfigError('--tag: give at least one tag')
    report = describe(args.model, args.tags, version)
  except (ConfigError, ModelError) as e:
    error(e)
    return EXIT_CONFIG_ERROR
  except Exception as e:  # pylint: disable=broad-except  (a file system's own error)
    if debug():
      traceback.print_exception(e)
    error(f'--model: cannot read {args.model}: {last_line(e)}')
    return EXIT_CONFIG_ERROR
  print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else text(report))
  return EXIT_OK
