"""What a SavedModel offers (versions, tag sets, signatures) and how to load one.

Reading the signature needs only the SavedModel proto, so the launcher can
validate options without loading variables. Workers load the whole model into
a graph-mode Session with the TF1 loader, as TF Serving does, and call the
signature's tensors by name (`SessionSignature`): it runs TF2
(`tf.saved_model.save`, Keras `model.export`) and TF1 (`SavedModelBuilder`)
models alike, and a call costs a fraction of an eager one. A model a Session
cannot load falls back to `tf.saved_model.load` (`EagerSignature`). (Under
Keras 3, `tf.keras.models.load_model` loads neither, which is also why Beam's
stock `TFModelHandlerNumpy` loader is not used.)

TensorFlow is imported inside functions only: importing it costs seconds.
Reading the proto (signatures, what `batch-predict inspect` shows) imports
none of it (`_tf_protos`).
"""
import atexit
import dataclasses
import functools
import gc
import logging
import os
import re
import sys
import weakref
from typing import Optional

from tf_batch_predict.transforms.model import example_spec, op_libraries
from tf_batch_predict.transforms import file_patterns
from tf_batch_predict.transforms.file_patterns import is_local

# Signature dtypes this job can feed and return, by TF DataType enum name.
NUMPY_DTYPES = {
    'DT_FLOAT': 'float32', 'DT_DOUBLE': 'float64', 'DT_HALF': 'float16',
    'DT_INT8': 'int8', 'DT_INT16': 'int16', 'DT_INT32': 'int32',
    'DT_INT64': 'int64', 'DT_UINT8': 'uint8', 'DT_UINT16': 'uint16',
    'DT_UINT32': 'uint32', 'DT_UINT64': 'uint64', 'DT_BOOL': 'bool',
    'DT_STRING': 'string',
}


class ModelError(ValueError):
  """A configuration problem with the model: one line for the user."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One signature input or output.

  `dtype` is a numpy dtype name or 'string'; `shape` excludes the batch
  dimension, with None for unknown sizes; `shape` is None for unknown rank.
  An output returned as a tf.RaggedTensor has `ragged_rank` > 0: each
  instance's value is a list (of lists, for a rank above 1) of any length.
  An output the job cannot write says why in `unwritable` (it can be left
  out with --output_fields).
  """
  name: str
  dtype: str
  shape: Optional[tuple]
  ragged_rank: int = 0
  unwritable: str = ''

  @property
  def fully_defined(self) -> bool:
    return self.shape is not None and None not in self.shape

  def describe(self) -> str:
    dims = '?' if self.shape is None else ','.join(
        '?' if d is None else str(d) for d in self.shape)
    ragged = ' (ragged)' if self.ragged_rank else ''
    return (f'{self.name}: {self.dtype}[batch,{dims}]{ragged}' if dims else
            f'{self.name}: {self.dtype}[batch]')


CLASSIFY_REGRESS = ('tensorflow/serving/classify', 'tensorflow/serving/regress')


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
  name: str
  method: str
  inputs: tuple  # of TensorSpec, sorted by name
  outputs: tuple  # of TensorSpec, sorted by name
  # The signature's only input is serialized tf.Examples (Estimator exports,
  # classify/regress signatures).
  takes_examples: bool = False
  # Feature name -> example_spec.FeatureSpec (kind, required, shape), from
  # the parsing ops in the graph; None when the graph does not say.
  example_features: Optional[dict] = None
  # Rows per model call when the inputs fix the batch dimension (`[1, ...]`
  # in TF2 exports of a single-example function); None: any number.
  fixed_batch: Optional[int] = None
  # One line per tensor whose SignatureDef shape disagrees with the graph
  # (older TF1 exports): the graph's shape is used, as a Session enforces it.
  graph_shapes_used: tuple = ()
  # In a signature that fixes the batch at one (a single-example export),
  # the outputs not declared with a leading 1 (a scalar, a `[10]` vector,
  # `[None]` tokens): the whole output is the one instance's. Their
  # TensorSpec shape is the full shape.
  unbatched_outputs: tuple = ()
  # No input has a batch dimension (all are declared `[]`): the signature
  # is called once per instance, on its own values; every output is then
  # the instance's whole output (`unbatched_outputs`).
  per_instance: bool = False
  # Modules to import before loading the model: the custom op libraries
  # its graph uses (transforms/model/op_libraries.py).
  op_libraries: tuple = ()
  # Op types not yet checked against TensorFlow's registry (read with
  # check_registry=False): `check_ops` checks them.
  unchecked_ops: tuple = ()

  def input(self, name: str) -> Optional[TensorSpec]:
    return next((s for s in self.inputs if s.name == name), None)


@dataclasses.dataclass(frozen=True)
class ModelRef:
  """A resolved SavedModel: the directory to load and, for a TF Serving base
  directory, the version chosen and its folder's name (`00000123`)."""
  path: str
  version: Optional[int]
  tags: tuple
  signature: SignatureSpec
  version_folder: Optional[str] = None
  # How workers load the signature: 'session' (a graph-mode Session, as TF
  # Serving does) or 'eager' (`tf.saved_model.load`), where the launcher's
  # check found that only the eager function runs it.
  loader: str = 'session'


class _LocalFiles:
  """The calls of Beam's FileSystems that reading a SavedModel's proto
  makes, for a path of this machine, made as Beam's LocalFileSystem makes
  them (os.path.join, os.path.exists, io.open; no SavedModel file has a
  compressed file's extension), without importing Beam: a second of
  `batch-predict inspect`. Other paths go through Beam's file systems."""
  join = staticmethod(os.path.join)
  exists = staticmethod(os.path.exists)

  @staticmethod
  def open(path: str):
    return open(path, 'rb')  # pylint: disable=consider-using-with


def _files(path: str):
  """_LocalFiles for a local path, else Beam's FileSystems."""
  if is_local(path):
    return _LocalFiles
  from apache_beam.io.filesystems import FileSystems
  return FileSystems


def _is_saved_model_dir(path: str) -> bool:
  files = _files(path)
  return any(files.exists(files.join(path, name))
             for name in ('saved_model.pb', 'saved_model.pbtxt'))


def _is_keras_file(path: str) -> bool:
  """A file of Keras's own formats: .keras (Keras 3, a zip archive) or HDF5
  (.h5, Keras 2's `model.save`), told by its first bytes."""
  try:
    if is_local(path):
      with open(path, 'rb') as f:
        head = f.read(8)
    else:
      from apache_beam.io.filesystem import CompressionTypes
      from apache_beam.io.filesystems import FileSystems
      with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        head = f.read(8)
  except Exception:  # pylint: disable=broad-except  (a directory, or unreadable)
    return False
  return head == b'\x89HDF\r\n\x1a\n' or (head.startswith(b'PK\x03\x04')
                                          and path.endswith('.keras'))


def version_folders(base: str) -> dict:
  """Version number -> names of the folders of a TF Serving base directory
  that hold a SavedModel (`1`, `07`, `00000123`: TF Serving reads the name
  as a number, so `7` and `007` are both version 7)."""
  try:  # the base's own name is no pattern
    if is_local(base):  # without Beam
      candidates = file_patterns.local_paths(
          os.path.join(file_patterns.escape(base), '*', 'saved_model.pb*'))
    else:
      from apache_beam.io.filesystems import FileSystems
      candidates = [m.path for m in file_patterns.match(
          FileSystems.join(file_patterns.escape(base), '*', 'saved_model.pb*'))]
  except Exception:  # a missing directory matches nothing
    candidates = []
  folders = {}
  for candidate in candidates:
    name = os.path.basename(os.path.dirname(candidate))
    # ASCII digits only, and an int64, as TF Serving parses version names
    # (Python's \d would take '٣' or a fullwidth '９').
    if (re.fullmatch(r'[0-9]+', name) and int(name) < 2**63
        and os.path.basename(candidate) in ('saved_model.pb', 'saved_model.pbtxt')):
      folders.setdefault(int(name), set()).add(name)
  return {number: sorted(names) for number, names in folders.items()}


def resolve_model_dir(path: str, version: Optional[int] = None) -> tuple:
  """Returns (SavedModel directory, version or None, version folder or None).

  A base directory in TF Serving layout (`base/1`, `base/00000123`, ...)
  resolves to the version asked for, else its highest numeric version that
  holds a SavedModel, as TF Serving serves by default.
  """
  path = path.rstrip('/') or '/'
  if _is_saved_model_dir(path):
    if version is not None:
      raise ModelError(f'--model_version: {path} is a SavedModel, not a TF Serving '
                       'base directory of versions; leave --model_version out')
    return path, None, None
  files = _files(path)
  folders = version_folders(path)
  if not folders:
    if not files.exists(path):
      raise ModelError(f'--model: {path} does not exist')
    if _is_keras_file(path):
      raise ModelError(
          f'--model: {path} is a Keras model file, not a SavedModel; export one with '
          f"keras.models.load_model({path!r}).export('DIR') (Keras 3; in Keras 2, "
          "tf.saved_model.save(model, 'DIR')) and pass --model=DIR")
    raise ModelError(
        f'--model: {path} is not a SavedModel (no saved_model.pb) and has no '
        'numeric version subdirectories holding one')
  option = '--model' if version is None else '--model_version'
  if version is None:
    version = max(folders)
  elif version not in folders:
    raise ModelError(f'--model_version: {path} has no version {version}; available: '
                     f'{", ".join(str(v) for v in sorted(folders))}')
  names = folders[version]
  if len(names) > 1:
    raise ModelError(f'{option}: {path} holds version {version} twice, in folders '
                     f'{" and ".join(names)}; remove or rename one of them')
  return files.join(path, names[0]), version, names[0]


def _dims(shape_proto) -> Optional[list]:
  """A TensorShapeProto as a list (None for unknown sizes), or None for
  unknown rank."""
  if shape_proto.unknown_rank:
    return None
  return [None if d.size < 0 else d.size for d in shape_proto.dim]


def _describe_dims(dims) -> str:
  if dims is None:
    return 'unknown rank'
  return '[' + ','.join('?' if d is None else str(d) for d in dims) + ']'


def _graph_dims(nodes: dict, tensor_name: str) -> Optional[list]:
  """The shape the graph gives a tensor (`x:0`): a placeholder's `shape`
  attribute, else the node's `_output_shapes`; None when the graph does not
  hold the tensor or does not say."""
  node_name, _, index = tensor_name.partition(':')
  node = nodes.get(node_name)
  if node is None or not (index or '0').isdigit():
    return None
  index = int(index or '0')
  if (node.op in ('Placeholder', 'PlaceholderWithDefault') and index == 0
      and 'shape' in node.attr):
    return _dims(node.attr['shape'].shape)
  shapes = node.attr['_output_shapes'].list.shape if '_output_shapes' in node.attr else ()
  return _dims(shapes[index]) if index < len(shapes) else None


def _compatible(a: list, b: list) -> bool:
  return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _composite_spec(name, tensor_info, dtype_names, where) -> tuple:
  """(TensorSpec, full dims) of a composite tensor (a tf.RaggedTensor, a
  tf.SparseTensor) in a signature: a ragged output is written as each
  instance's list; anything else is refused (an input) or unwritable (an
  output)."""
  composite = tensor_info.composite_tensor
  kind = (composite.type_spec.type_spec_class_name or 'composite tensor'
          if tensor_info.HasField('composite_tensor') else 'SparseTensor')  # coo_sparse
  state = composite.type_spec.type_state.tuple_value.values
  if (composite.type_spec.type_spec_class_name == 'RaggedTensorSpec' and len(state) >= 3
      and where.endswith('output') and composite.components):
    dims = _dims(state[0].tensor_shape_value)
    dtype_name = dtype_names[composite.components[0].dtype]
    if dtype_name not in NUMPY_DTYPES:
      return TensorSpec(name, dtype_name, None, unwritable=(
          f'{where} {name!r} (a RaggedTensor) has dtype {dtype_name}, which this job cannot '
          'write')), None
    if dims and state[2].int64_value >= 1:
      return TensorSpec(name, NUMPY_DTYPES[dtype_name], tuple(dims[1:]),
                        ragged_rank=int(state[2].int64_value)), dims
  kind = kind.removesuffix('Spec')
  if where.endswith('input'):
    raise ModelError(f'{where} {name!r} is a {kind}; this job feeds dense tensors only '
                     '(TF Serving does too): export a signature that takes dense inputs')
  return TensorSpec(name, 'unwritable', None,
                    unwritable=f'{where} {name!r} is a {kind}, which this job cannot '
                               'write'), None


def _tensor_spec(name, tensor_info, dtype_names, where, nodes, notes) -> tuple:
  """(TensorSpec, full dims with the batch dimension or None).

  Where the SignatureDef declares a shape the graph's tensor does not have
  (older TF1 exports: `[]` for a `[?,1]` placeholder), the graph's shape is
  used and a line is added to `notes`: the Session runs the graph's tensors
  by name and enforces their shapes, as TF Serving does.
  """
  if tensor_info.WhichOneof('encoding') in ('composite_tensor', 'coo_sparse'):
    return _composite_spec(name, tensor_info, dtype_names, where)
  # A TF1 variable returned directly is reference-typed (DT_FLOAT_REF); a
  # Session fetches its value, so it is read as its base type.
  dtype_name = dtype_names[tensor_info.dtype].removesuffix('_REF')
  if dtype_name not in NUMPY_DTYPES and where.endswith('output'):
    return TensorSpec(name, dtype_name, None, unwritable=(
        f'{where} {name!r} has dtype {dtype_name}, which this job cannot write')), None
  if dtype_name not in NUMPY_DTYPES:
    raise ModelError(f'{where} {name!r} has dtype {dtype_name}, which this job '
                     f'cannot convert from JSON (supported: '
                     f'{", ".join(sorted(NUMPY_DTYPES))})')
  dims = _dims(tensor_info.tensor_shape)
  graph = _graph_dims(nodes, tensor_info.name) if tensor_info.name else None
  if graph and (dims is None or not _compatible(dims, graph)):
    notes.append(f'{where} {name!r} ({tensor_info.name}) is declared '
                 f'{_describe_dims(dims)} but is {_describe_dims(graph)} in the graph')
    dims = graph
  shape = None if dims is None else tuple(dims[1:])  # dimension 0 is the batch
  return TensorSpec(name, NUMPY_DTYPES[dtype_name], shape), dims


def _fixed_batch(where: str, inputs: list) -> Optional[int]:
  """The batch size the inputs fix in dimension 0, if any."""
  fixed = {name: dims[0] for name, dims in inputs if dims and dims[0] is not None}
  if len(set(fixed.values())) > 1:
    described = ', '.join(f'{name!r} {size}' for name, size in sorted(fixed.items()))
    raise ModelError(f'--signature: {where} fixes different batch sizes for its inputs '
                     f'({described}); no batch can satisfy them all')
  return next(iter(fixed.values()), None)


def read_signature(model_dir: str, tags: tuple, signature_name: str,
                   check_registry: bool = True) -> SignatureSpec:
  """Reads one signature from the SavedModel proto, as `saved_model_cli show`
  does; unknown tag sets and signatures name the available ones."""
  saved_model, _ = read_saved_model(model_dir)
  wanted = set(tags)
  meta_graphs = saved_model.meta_graphs
  chosen = next((m for m in meta_graphs
                 if set(m.meta_info_def.tags) == wanted), None)
  if chosen is None:
    available = ['"' + ','.join(m.meta_info_def.tags) + '"' for m in meta_graphs]
    raise ModelError(f'--tag: the SavedModel has no tag set '
                     f'"{",".join(tags)}"; available: {", ".join(available)}')
  return signature_spec(chosen, signature_name, model_dir, check_registry)


def signature_spec(chosen, signature_name: str, model_dir: str,
                   check_registry: bool = True) -> SignatureSpec:
  """One signature of a MetaGraph (`model_dir` only names it in errors).
  `check_registry=False` leaves out the check of the graph's ops against
  TensorFlow's op registry, which imports TensorFlow
  (op_libraries.needed)."""
  tags = tuple(chosen.meta_info_def.tags)
  signatures = chosen.signature_def
  available = callable_signatures(chosen)
  if not available:
    raise ModelError(f'--model: {model_dir} has no signatures (tag set '
                     f'"{",".join(tags)}"), so there is nothing to call; TF Serving '
                     'cannot serve it either: save it with signatures=...')
  if signature_name not in signatures:
    raise ModelError(f'--signature: no signature {signature_name!r}; available: '
                     f'{", ".join(available)}; pass --signature=NAME')
  sig = signatures[signature_name]
  dtype_names = {v.number: v.name for v in _tf_protos().data_type.values}
  where = f'signature {signature_name!r}'
  nodes = {n.name: n for n in chosen.graph_def.node}
  notes = []
  inputs = [(k, *_tensor_spec(k, sig.inputs[k], dtype_names, f'{where} input', nodes,
                              notes)) for k in sorted(sig.inputs)]
  outputs = [(k, *_tensor_spec(k, sig.outputs[k], dtype_names, f'{where} output', nodes,
                               notes)) for k in sorted(sig.outputs)]
  if not inputs:
    raise ModelError(f'{where} takes no inputs; nothing to feed it')
  scalars = [k for k, _, dims in inputs if dims == []]
  per_instance = len(scalars) == len(inputs)
  if scalars and not per_instance:
    batched = next(k for k, _, dims in inputs if dims != [])
    raise ModelError(f'--signature: {where} input {scalars[0]!r} has no batch dimension (shape []) but '
                     f'input {batched!r} has one, so instances cannot be batched nor fed '
                     'one by one: export a signature whose inputs all have a batch dimension')
  fixed_batch = 1 if per_instance else _fixed_batch(where, [(k, dims) for k, _, dims in inputs])
  inputs = tuple(spec for _, spec, _ in inputs)
  unbatched = ()
  if per_instance:
    # Each call is one instance's: every output is its whole output.
    unbatched = tuple(k for k, _, _ in outputs)
  elif fixed_batch == 1:
    # Only an output declared with a leading 1 is batched: one declared
    # `[None, ...]` or of unknown rank may hold any number of rows (the
    # tokens of a single-example tokenizer), and reading its first
    # dimension as the batch would make an instance's result depend on its
    # data.
    unbatched = tuple(k for k, _, dims in outputs if not dims or dims[0] != 1)
  outputs = tuple(dataclasses.replace(spec, shape=None if dims is None else tuple(dims))
                  if k in unbatched else spec for k, spec, dims in outputs)
  parse_nodes = example_spec.parse_example_nodes(
      chosen.graph_def, [sig.outputs[k].name for k in sig.outputs])
  takes_examples = (len(inputs) == 1 and inputs[0].dtype == 'string'
                    and (sig.method_name in CLASSIFY_REGRESS or bool(parse_nodes)))
  features = (example_spec.example_features(chosen.graph_def, parse_nodes)
              if takes_examples else None)
  try:
    libraries = op_libraries.needed(chosen.graph_def, check_registry=check_registry)
  except op_libraries.MissingOps as e:
    raise ModelError(f'--model: {model_dir}: {e}') from None
  unchecked = () if check_registry else op_libraries.unowned(chosen.graph_def)
  return SignatureSpec(signature_name, sig.method_name, inputs, outputs,
                       takes_examples, features, fixed_batch, tuple(notes), unbatched,
                       per_instance, libraries, unchecked)


def inspect_model(path: str, tags: tuple, signature_name: str,
                  version: Optional[int] = None, check_registry: bool = True) -> ModelRef:
  """The model and its signature, from the SavedModel proto. With
  `check_registry=False` TensorFlow is not imported, and `check_ops` does
  the check that needs it later (a configuration mistake found first then
  costs no TensorFlow import)."""
  model_dir, version, folder = resolve_model_dir(path, version)
  return ModelRef(model_dir, version, tuple(tags),
                  read_signature(model_dir, tuple(tags), signature_name, check_registry),
                  folder)


def check_ops(model: ModelRef) -> ModelRef:
  """The model once its unchecked ops are known to this TensorFlow; raises
  ModelError naming those it lacks (imports TensorFlow)."""
  if not model.signature.unchecked_ops:
    return model
  try:
    op_libraries.check_registered(model.signature.unchecked_ops)
  except op_libraries.MissingOps as e:
    raise ModelError(f'--model: {model.path}: {e}') from None
  return dataclasses.replace(model, signature=dataclasses.replace(
      model.signature, unchecked_ops=()))


def load_signature(model: ModelRef):
  """Loads the model eagerly and returns (loaded object, signature function).

  The loaded object must be kept alive as long as the function is used.
  """
  import tensorflow as tf

  from tf_batch_predict.transforms.storage import stage_model
  loaded = tf.saved_model.load(stage_model(model.path), tags=list(model.tags))
  return loaded, loaded.signatures[model.signature.name]


class SessionSignature:
  """One signature of a SavedModel loaded into a graph-mode Session (the way
  TF Serving runs SavedModels), called on numpy arrays.

  Why not the eager `tf.saved_model.load` function: calling a loaded TF2
  ConcreteFunction costs a fixed ~0.4-1 ms of Python and runtime overhead
  (feeds converted one tensor at a time, structure checks, a hop to the
  inter-op thread pool and back) whatever the batch size, where a Session
  callable costs ~0.1 ms, and ~0.03-0.05 ms when its ops run in the calling
  thread. That matters where the batch is small: isolating the instances a
  model fails on calls it on one instance at a time.

  Both callables are thread-safe; the Session holds the only copy of the
  variables.
  """
  how = 'graph session'

  def __init__(self, path: str, tags: tuple, signature: SignatureSpec):
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    graph = tf.Graph()
    self._session = tf.compat.v1.Session(
        graph=graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
    try:
      with graph.as_default(), _silenced_deprecation():
        meta_graph = tf.compat.v1.saved_model.load(self._session, list(tags), path)
      signature_def = meta_graph.signature_def[signature.name]
      self.input_names = [s.name for s in signature.inputs]
      self.output_names = [s.name for s in signature.outputs]
      options = config_pb2.CallableOptions()
      options.feed.extend(signature_def.inputs[n].name for n in self.input_names)
      # A ragged output is fetched as its components (flat values, then
      # the row splits of each ragged dimension) and put together after.
      self._ragged = []  # (position of the output, components)
      for position, name in enumerate(self.output_names):
        info = signature_def.outputs[name]
        if info.HasField('composite_tensor'):
          components = [c.name for c in info.composite_tensor.components]
          self._ragged.append((position, len(components)))
          options.fetch.extend(components)
        else:
          options.fetch.append(info.name)
      with graph.as_default():
        _check_variables_restored(self._session, graph, list(options.fetch))
      self._graph, self._fetches = graph, list(options.fetch)
      graph.finalize()
      # pylint: disable=protected-access  (the callable API behind
      # Session.make_callable; the public wrapper feeds through a dict and
      # costs ten times more per call)
      self._pooled = self._session._make_callable_from_options(options)
      # Ops in the calling thread: no thread hand-off per op, the cheapest
      # way to run a small graph on a small batch.
      options.run_options.inter_op_thread_pool = -1
      self._inline = self._session._make_callable_from_options(options)
    except BaseException:
      self._session.close()
      raise
    _open_sessions.add(self)

  def changes_state(self) -> list:
    """state_changing_ops of what the signature's outputs depend on. Const
    nodes are left out: a frozen graph's weights are in theirs."""
    nodes = [op.node_def for op in _reached(self._graph, self._fetches) if op.type != 'Const']
    calls = any(a.HasField('func') or a.HasField('list') and a.list.func
                for node in nodes for a in node.attr.values())
    return state_changing_ops(nodes, self._graph.as_graph_def().library if calls else None)

  def close(self) -> None:
    """Releases the callables and the Session (also done at exit, before
    TensorFlow's modules are torn down: releasing a callable later fails
    noisily)."""
    self._pooled = self._inline = None
    self._session.close()

  def call(self, arrays: list) -> list:
    """Output arrays (in `output_names` order) for input arrays (in
    `input_names` order); raises what the model raises."""
    values = self._pooled(*arrays)
    return self._assembled(values) if self._ragged else values

  def call_small(self, arrays: list) -> list:
    """As `call`, for a few instances: runs in the calling thread."""
    values = self._inline(*arrays)
    return self._assembled(values) if self._ragged else values

  def _assembled(self, values) -> list:
    """The fetched tensors, each ragged output's components as one array
    of rows (`ragged_rows`)."""
    values, outputs = list(values), []
    ragged = dict(self._ragged)
    for position in range(len(self.output_names)):
      count = ragged.get(position)
      if count is None:
        outputs.append(values.pop(0))
      else:
        components, values = values[:count], values[count:]
        outputs.append(ragged_rows(components[0], components[1:]))
    return outputs


class VariablesNotRestored(RuntimeError):
  """The TF1 loader left resource variables of the model unrestored."""


# Stateful ops (by TensorFlow's op registry) that change nothing a later
# call would see: variable and table reads, assertions, printing, the
# per-call state of loops and tensor arrays, calls into functions (whose
# bodies are looked at).
_READ_ONLY_STATEFUL = frozenset((
    'VarHandleOp', 'ReadVariableOp', 'VariableV2', 'Variable', 'VarIsInitializedOp',
    'HashTable', 'HashTableV2', 'LookupTableFind', 'LookupTableFindV2', 'LookupTableSize',
    'LookupTableSizeV2', 'Assert', 'Print', 'PrintV2', 'StatefulPartitionedCall',
    'PartitionedCall', 'While', 'If', 'Case', 'StackV2', 'StackPushV2', 'StackPopV2',
    'StackCloseV2', 'TensorArrayV3', 'TensorArrayReadV3', 'TensorArrayWriteV3',
    'TensorArrayGatherV3', 'TensorArrayScatterV3', 'TensorArrayConcatV3', 'TensorArraySplitV3',
    'TensorArraySizeV3', 'TensorArrayCloseV3', 'TensorArrayGradV3', 'Enter', 'Exit',
    'NextIteration', 'Merge', 'Switch', 'LoopCond'))


# Ops that take a TF1 reference variable and only read it or pass it on.
_READ_ONLY_REF = frozenset((
    'IsVariableInitialized', 'RefIdentity', 'RefEnter', 'RefExit', 'RefMerge', 'RefSwitch',
    'RefNextIteration', 'RefSelect'))


def state_changing_ops(node_defs, library=None) -> list:
  """The types of the ops among `node_defs` (NodeDefs), and in the
  functions of `library` (a FunctionDefLibrary, or None) they call, that may
  change what a later call of the model returns (a counter's AssignAdd, a
  random op's state): stateful by TensorFlow's op registry and not known to
  be read-only, or taking a TF1 reference variable (its Assign ops are not
  marked stateful) other than to read it. An op the registry lacks counts."""
  from tensorflow.python.framework import op_def_registry
  functions = {f.signature.name: f for f in library.function} if library is not None else {}
  found, seen, pending = set(), set(), [list(node_defs)]
  while pending:
    for node in pending.pop():
      called = [a.func.name for a in node.attr.values() if a.HasField('func')]
      called += [f.name for a in node.attr.values() if a.HasField('list') for f in a.list.func]
      if node.op in functions:
        called.append(node.op)
      else:
        op_def = op_def_registry.get(node.op)
        if op_def is None or (op_def.is_stateful and node.op not in _READ_ONLY_STATEFUL) or (
            any(arg.is_ref for arg in op_def.input_arg) and node.op not in _READ_ONLY_REF):
          found.add(node.op)
      for name in called:
        if name in functions and name not in seen:
          seen.add(name)
          pending.append(list(functions[name].node_def))
  return sorted(found)


def _check_variables_restored(session, graph, fetches) -> None:
  """Raises VariablesNotRestored where a resource variable that the
  fetches depend on holds no value after the TF1 loader's restore: a
  SavedModel whose variables are restored only through its object graph (a
  Keras 3 model saved with `tf.saved_model.save`) loads into a Session, but
  every call that reads such a variable fails (`Could not find variable`),
  and a sample call cannot always show it (an assertion may fail first).
  Only the fetches' variables: such graphs may also hold unrestored copies
  that no signature uses (Keras 3's `model.export`)."""
  import tensorflow as tf
  handles = [op.outputs[0] for op in _reached(graph, fetches) if op.type == 'VarHandleOp']
  if not handles:
    return
  states = session.run([tf.raw_ops.VarIsInitializedOp(resource=h) for h in handles])
  missing = [h.op.get_attr('shared_name').decode('utf-8', 'replace') or h.op.name
             for h, restored in zip(handles, states) if not restored]
  if missing:
    raise VariablesNotRestored(
        f'{len(missing)} of {len(handles)} variables hold no value in a graph session '
        f'({", ".join(missing[:3])}{", ..." if len(missing) > 3 else ""})')


def _reached(graph, fetches) -> list:
  """The ops the fetches (tensor names) depend on, through inputs and
  control inputs."""
  reached, seen = [], set()
  pending = [graph.get_tensor_by_name(name).op for name in fetches]
  while pending:
    op = pending.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    reached.append(op)
    pending.extend(t.op for t in op.inputs)
    pending.extend(op.control_inputs)
  return reached


_open_sessions = weakref.WeakSet()


@atexit.register
def _close_sessions():
  for signature in list(_open_sessions):
    signature.close()
  if 'tensorflow' in sys.modules:
    # Interpreter shutdown then runs the cyclic garbage collector over
    # TensorFlow's whole object graph, again as modules are torn down: about
    # 1 s of a process's exit here, paid by the command after its summary
    # and by each local worker process (multi_processing) in turn, as Beam
    # stops its workers one after the other (0.2 s for two instead of 1.4 to
    # 2.4). Frozen objects are never scanned again; what only that scan would
    # free is released with the process (objects still referenced are freed
    # as before; every output file is closed explicitly before exit).
    gc.freeze()


class EagerSignature:
  """The same interface over `tf.saved_model.load`: the fallback for a
  SavedModel that a graph-mode Session cannot load."""
  how = 'eager'

  def __init__(self, model: ModelRef):
    self._loaded, self._fn = load_signature(model)
    self.input_names = [s.name for s in model.signature.inputs]
    self.output_names = [s.name for s in model.signature.outputs]

  def changes_state(self) -> list:
    """state_changing_ops of the signature's function graph."""
    graph_def = self._fn.graph.as_graph_def()
    return state_changing_ops(graph_def.node, graph_def.library)

  def call(self, arrays: list) -> list:
    outputs = self._fn(**dict(zip(self.input_names, arrays)))
    return [_numpy(outputs[name]) for name in self.output_names]

  call_small = call


def _numpy(value):
  """An eager output as numpy: a tf.RaggedTensor as `ragged_rows`."""
  if hasattr(value, 'nested_row_splits'):
    return ragged_rows(value.flat_values.numpy(), [s.numpy() for s in value.nested_row_splits])
  return value.numpy()


def ragged_rows(flat_values, nested_splits) -> 'np.ndarray':
  """A ragged tensor's rows (from its flat values and the row splits of
  each ragged dimension, outermost first) as a 1-D object array: each row
  a numpy array for ragged rank 1, a list of such rows for rank 2, and so
  on. Rows are views of `flat_values`."""
  import numpy as np
  rows = flat_values
  for splits in reversed(nested_splits):
    bounds = np.asarray(splits).tolist()
    rows = [rows[start:stop] for start, stop in zip(bounds, bounds[1:])]
  column = np.empty(len(rows), dtype=object)
  for i, row in enumerate(rows):
    column[i] = row
  return column


def _silenced_deprecation():
  """TensorFlow logs a deprecation warning for the TF1 loader, which is the
  supported way to run a SavedModel in a Session."""
  try:
    from tensorflow.python.util import deprecation
    return deprecation.silence()
  except (ImportError, AttributeError):
    import contextlib
    return contextlib.nullcontext()


def load_signature_function(model: ModelRef):
  """The model's signature as a SessionSignature, or, when a Session cannot
  load this SavedModel, as an EagerSignature (logged). When neither loads
  it, raises the Session's error: the loader TF Serving uses says why.
  With `model.loader == 'eager'`, an EagerSignature straight away. Custom
  op libraries the model needs are imported first."""
  from tf_batch_predict.transforms.storage import stage_model
  op_libraries.load(model.signature.op_libraries)
  if model.loader == 'eager':
    return EagerSignature(model)
  path = stage_model(model.path)
  try:
    return SessionSignature(path, model.tags, model.signature)
  except Exception as session_error:  # pylint: disable=broad-except
    try:
      eager = EagerSignature(model)
    except Exception:  # pylint: disable=broad-except
      raise session_error from None
    logging.getLogger(__name__).warning(
        'Loading %s into a graph session failed (%s: %s); loaded it eagerly '
        'instead (slower per model call)', model.path, type(session_error).__name__,
        (str(session_error).strip().splitlines() or [''])[-1])
    return eager


# -- the whole SavedModel (read_signature, `batch-predict inspect`) --------------

def read_saved_model(model_dir: str):
  """(SavedModel proto, path of the file read): saved_model.pb, else
  saved_model.pbtxt. The proto is an instance of `_tf_protos().SavedModel`
  (TensorFlow's own message definitions, read without importing
  TensorFlow)."""
  from google.protobuf import message, text_format

  protos = _tf_protos()
  files = _files(model_dir)
  pb_path = files.join(model_dir, 'saved_model.pb')
  saved_model = protos.SavedModel()
  try:
    if files.exists(pb_path):
      with files.open(pb_path) as f:
        saved_model.ParseFromString(f.read())
    else:
      pb_path = files.join(model_dir, 'saved_model.pbtxt')
      with files.open(pb_path) as f:
        text_format.Parse(f.read().decode('utf-8'), saved_model,
                          descriptor_pool=protos.pool)
  except (message.DecodeError, text_format.ParseError, UnicodeDecodeError):
    raise ModelError(f'--model: {pb_path} is not a readable SavedModel proto') from None
  return saved_model, pb_path


def callable_signatures(meta_graph) -> list:
  """A MetaGraph's signature names, sorted, without `__saved_model_init_op`
  and the like (not signatures one can call)."""
  return sorted(k for k in meta_graph.signature_def if not k.startswith('__'))


def declared_dims(tensor_info) -> Optional[list]:
  """A TensorInfo's shape as its SignatureDef declares it, batch dimension
  included (None for unknown sizes), or None for unknown rank."""
  return _dims(tensor_info.tensor_shape)


def dtype_name(tensor_info) -> str:
  """A TensorInfo's dtype as this job names it (`float32`, `string`), else
  as TensorFlow does (`DT_VARIANT`)."""
  if tensor_info.WhichOneof('encoding') == 'coo_sparse':
    return 'SparseTensor'
  if tensor_info.HasField('composite_tensor'):  # RaggedTensor
    spec = tensor_info.composite_tensor.type_spec.type_spec_class_name
    return spec.removesuffix('Spec') or 'composite tensor'
  name = _tf_protos().data_type.values_by_number[tensor_info.dtype].name.removesuffix('_REF')
  return NUMPY_DTYPES.get(name, name)


# -- TensorFlow's protos, without importing TensorFlow ---------------------------

# The protos read_saved_model needs, and those they import, each in the
# installed TensorFlow's generated module of that name (`..._pb2.py`).
_SAVED_MODEL_PROTO = 'tensorflow/core/protobuf/saved_model.proto'


@dataclasses.dataclass(frozen=True)
class _Protos:
  pool: object  # a google.protobuf DescriptorPool of their own
  SavedModel: type  # pylint: disable=invalid-name  (the message class)
  data_type: object  # the EnumDescriptor of tensorflow.DataType


@functools.lru_cache(maxsize=None)
def _tf_protos() -> _Protos:
  """TensorFlow's SavedModel message definitions, as the installed
  TensorFlow holds them, in a descriptor pool of their own.

  Importing any `tensorflow.*` module (`tensorflow.core.protobuf.
  saved_model_pb2` too) runs tensorflow/__init__.py: seconds and most of a
  gigabyte, for a command that only reads a proto (`inspect`, the launcher's
  checks). Each generated module holds its .proto file's descriptor as one
  serialized FileDescriptorProto (the argument of `AddSerializedFile`): it
  is read from the module's source as data (nothing of TensorFlow runs),
  with those of the files it imports, into a private pool, whose messages
  parse a SavedModel exactly as TensorFlow's classes do (the same
  definitions; tests/test_startup.py compares them). Messages of this pool
  are not TensorFlow's classes: they are for reading, never handed to
  TensorFlow."""
  import ast
  import importlib
  import importlib.util
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  spec = importlib.util.find_spec('tensorflow')  # finds it; runs nothing
  if spec is None or not spec.submodule_search_locations:
    raise ModelError('reading a SavedModel needs TensorFlow, which is not installed')
  root = os.path.dirname(list(spec.submodule_search_locations)[0])
  pool = descriptor_pool.DescriptorPool()
  added = set()

  def serialized(proto_file: str) -> bytes:
    if proto_file.startswith('google/protobuf/'):  # protobuf's own well-known types
      module = importlib.import_module(
          proto_file.removesuffix('.proto').replace('/', '.') + '_pb2')
      return module.DESCRIPTOR.serialized_pb
    path = os.path.join(root, proto_file.removesuffix('.proto') + '_pb2.py')
    with open(path, 'rb') as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == 'AddSerializedFile' and len(node.args) == 1
          and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, bytes)):
        return node.args[0].value
    raise ImportError(f'{path} holds no serialized descriptor of {proto_file}')

  def add(proto_file: str) -> None:
    if proto_file in added:
      return
    data = serialized(proto_file)
    for dependency in descriptor_pb2.FileDescriptorProto.FromString(data).dependency:
      add(dependency)
    pool.AddSerializedFile(data)
    added.add(proto_file)

  add(_SAVED_MODEL_PROTO)
  return _Protos(pool=pool,
                 SavedModel=message_factory.GetMessageClass(
                     pool.FindMessageTypeByName('tensorflow.SavedModel')),
                 data_type=pool.FindEnumTypeByName('tensorflow.DataType'))
