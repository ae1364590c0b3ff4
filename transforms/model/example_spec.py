"""The tf.Example parsing spec a SavedModel's graph holds: which features a
signature that takes serialized Examples reads, of which kind, which are
required and how many values each must hold. Read from the graph's
ParseExample / ParseExampleV2 nodes, without loading the model, so that an
Example the model's own parser would refuse is a `schema` error naming the
feature, found before scoring, rather than a `model` error from TensorFlow.

Per feature (`FeatureSpec`):
- kind: 'float', 'int64' or 'bytes' (the op's Tdense / sparse_types /
  ragged_value_types attributes); the Example must hold that list kind;
- dense features (FixedLenFeature): the value count must be the product of
  the node's `dense_shapes` entry; a dense shape whose first dimension is
  unknown (FixedLenSequenceFeature) takes any multiple of the rest;
- required: a dense feature of known size whose default (the op's
  dense_defaults input) is an empty constant, as parse_example writes for a
  FixedLenFeature without default_value; every other feature may be absent
  (a feature whose kind is unset counts as absent, as in TensorFlow's
  parser);
- sparse (VarLenFeature) and ragged (RaggedFeature) features: optional, any
  count (shape None).
Where several parsing nodes name one feature, it is required only if every
one of them requires it with the same shape (the stricter reading could
refuse Examples the signature accepts).
"""
import dataclasses
import math
from typing import Optional

_PARSE_OPS = ('ParseExample', 'ParseExampleV2')
_KINDS = {1: 'float', 9: 'int64', 7: 'bytes'}  # DT_FLOAT, DT_INT64, DT_STRING


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One feature of a parsing spec. `shape` is the dense shape (first
  dimension None for a sequence feature), None for sparse and ragged
  features (any count)."""
  kind: str
  required: bool = False
  shape: Optional[tuple] = None

  def count_fits(self, count: int) -> bool:
    if self.shape is None:
      return True
    if self.shape and self.shape[0] is None:
      step = math.prod(self.shape[1:])
      return count % step == 0 if step else count == 0
    return count == math.prod(self.shape)

  def describe_count(self) -> str:
    """How many values the feature takes, in words."""
    if self.shape is None:
      return 'any number of values'
    shape = '[' + ','.join('?' if d is None else str(d) for d in self.shape) + ']'
    if self.shape and self.shape[0] is None:
      return f'a multiple of {math.prod(self.shape[1:])} values (shape {shape})'
    count = math.prod(self.shape)
    return f'{count} value{"" if count == 1 else "s"} (shape {shape})'


def _scopes(graph_def):
  """(scope name, nodes): the graph's (scope None), then each library
  function's. Node names are only unique within one scope, and two
  functions may hold identical nodes reading different constants."""
  yield None, list(graph_def.node)
  for function in graph_def.library.function:
    yield function.signature.name, list(function.node_def)


def parse_example_nodes(graph_def, tensor_names) -> list:
  """(scope, node name) of the parsing nodes that the tensors named (a
  signature's outputs, `y:0`) depend on: other signatures of the same graph
  may parse other Examples, or none at all. Walks back from the tensors
  through node inputs and into every function a reached node calls (wholly:
  a function is one unit)."""
  functions = {f.signature.name: f for f in graph_def.library.function}
  nodes = {n.name: n for n in graph_def.node}
  pending = [name.lstrip('^').split(':')[0] for name in tensor_names]
  reached, called, found = set(), [], []

  def calls(node):
    for value in node.attr.values():
      if value.HasField('func'):
        yield value.func.name
      yield from (f.name for f in value.list.func)

  while pending:
    name = pending.pop()
    if name in reached or name not in nodes:
      continue
    reached.add(name)
    node = nodes[name]
    if node.op in _PARSE_OPS:
      found.append((None, name))
    pending.extend(i.lstrip('^').split(':')[0] for i in node.input)
    called.extend(calls(node))
    if node.op in functions:  # a function called as an op
      called.append(node.op)
  seen = set()
  while called:
    name = called.pop()
    if name in seen or name not in functions:
      continue
    seen.add(name)
    for node in functions[name].node_def:
      if node.op in _PARSE_OPS:
        found.append((name, node.name))
      called.extend(calls(node))
      if node.op in functions:
        called.append(node.op)
  return found


def _const_of(consts, input_name):
  return consts.get(input_name.lstrip('^').split(':')[0])


def _empty_constant(node) -> bool:
  if node is None:
    return False
  shape = node.attr['value'].tensor.tensor_shape
  return not shape.unknown_rank and any(d.size == 0 for d in shape.dim)


def _node_features(node, consts) -> Optional[dict]:
  """{name: FeatureSpec} of one parsing node; None where its keys are not
  constants."""
  def keys(input_names):
    found = []
    for name in input_names:
      const = _const_of(consts, name)
      if const is None:
        return None
      found.extend(v.decode('utf-8') for v in const.attr['value'].tensor.string_val)
    return found

  if node.op == 'ParseExampleV2':
    sparse, dense, ragged = keys([node.input[2]]), keys([node.input[3]]), keys([node.input[4]])
    defaults = list(node.input[5:5 + len(dense or ())])
  else:
    n_sparse, n_dense = node.attr['Nsparse'].i, node.attr['Ndense'].i
    sparse = keys(node.input[2:2 + n_sparse])
    dense = keys(node.input[2 + n_sparse:2 + n_sparse + n_dense])
    ragged = []
    defaults = list(node.input[2 + n_sparse + n_dense:2 + n_sparse + 2 * n_dense])
  if sparse is None or dense is None or ragged is None:
    return None
  features = {}
  for key, dtype in zip(sparse, node.attr['sparse_types'].list.type):
    features[key] = FeatureSpec(_KINDS.get(dtype, 'bytes'))
  for key, dtype in zip(ragged, node.attr['ragged_value_types'].list.type):
    features[key] = FeatureSpec(_KINDS.get(dtype, 'bytes'))
  shapes = node.attr['dense_shapes'].list.shape
  for i, (key, dtype) in enumerate(zip(dense, node.attr['Tdense'].list.type)):
    shape = None
    if i < len(shapes) and not shapes[i].unknown_rank:
      shape = tuple(None if d.size < 0 else d.size for d in shapes[i].dim)
    known_size = shape is not None and None not in shape
    default = _const_of(consts, defaults[i]) if i < len(defaults) else None
    features[key] = FeatureSpec(_KINDS.get(dtype, 'bytes'),
                                required=known_size and _empty_constant(default),
                                shape=shape)
  return features


def example_features(graph_def, parse_nodes) -> Optional[dict]:
  """Feature name -> FeatureSpec, read from ParseExample(V2) nodes: the keys
  are string constants feeding the op, kinds and shapes the op's
  attributes, defaults its dense_defaults inputs. None when the graph does
  not say (no parsing node, or keys that are not constants)."""
  features, wanted = {}, set(parse_nodes)
  for scope_name, scope in _scopes(graph_def):
    consts = {n.name: n for n in scope if n.op == 'Const'}
    for node in scope:
      if node.op not in _PARSE_OPS or (scope_name, node.name) not in wanted:
        continue
      found = _node_features(node, consts)
      if found is None:
        return None
      for key, spec in found.items():
        seen = features.get(key)
        if seen is not None and (seen.required != spec.required or seen.shape != spec.shape):
          spec = dataclasses.replace(seen, required=False)
        features[key] = spec
  return features or None


def sample_example(features: Optional[dict]) -> bytes:
  """A serialized Example that satisfies the spec: every dense feature of
  known size with zeros (empty bytes) of its count; sparse, ragged and
  sequence features left out (all optional). For a call of the signature
  before the job starts."""
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  example = example_pb2.Example()
  for name, spec in (features or {}).items():
    spec = spec if isinstance(spec, FeatureSpec) else FeatureSpec(spec)
    if spec.shape is None or None in spec.shape:
      continue
    count = math.prod(spec.shape)
    values = getattr(example.features.feature[name], f'{spec.kind}_list').value
    values.extend([b''] * count if spec.kind == 'bytes' else [0] * count)
  return example.SerializeToString()
