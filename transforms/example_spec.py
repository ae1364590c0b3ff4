"""The tf.Example parsing spec a SavedModel's graph holds: which features a
signature that takes serialized Examples reads, and of which kind. Read from
the graph's ParseExample(V2) nodes, without loading the model."""
from typing import Optional

_PARSE_OPS = ('ParseExample', 'ParseExampleV2')


def _all_nodes(graph_def):
  yield from graph_def.node
  for function in graph_def.library.function:
    yield from function.node_def


def parse_example_nodes(graph_def) -> list:
  return [n for n in _all_nodes(graph_def) if n.op in _PARSE_OPS]


def example_features(graph_def, parse_nodes) -> Optional[dict]:
  """Feature name -> kind, read from ParseExample(V2) nodes: the keys are
  string constants feeding the op, their types the op's attributes."""
  kinds = {1: 'float', 9: 'int64', 7: 'bytes'}  # DT_FLOAT, DT_INT64, DT_STRING
  consts = {n.name: n for n in _all_nodes(graph_def) if n.op == 'Const'}

  def keys(input_names):
    found = []
    for name in input_names:
      node = consts.get(name.lstrip('^').split(':')[0])
      if node is None:
        return None
      found.extend(v.decode('utf-8') for v in node.attr['value'].tensor.string_val)
    return found

  features = {}
  for node in parse_nodes:
    if node.op == 'ParseExampleV2':
      sparse = keys([node.input[2]])
      dense = keys([node.input[3]])
    else:
      n_sparse, n_dense = node.attr['Nsparse'].i, node.attr['Ndense'].i
      sparse = keys(node.input[2:2 + n_sparse])
      dense = keys(node.input[2 + n_sparse:2 + n_sparse + n_dense])
    if sparse is None or dense is None:
      return None
    for key, dtype in zip(sparse, node.attr['sparse_types'].list.type):
      features[key] = kinds.get(dtype, 'bytes')
    for key, dtype in zip(dense, node.attr['Tdense'].list.type):
      features[key] = kinds.get(dtype, 'bytes')
  return features or None
