"""Custom op libraries a SavedModel needs, told by the op names in its graph.

A SavedModel built with ops from outside TensorFlow's core (TF Text's
tokenizers, most often) loads only in a process where the library that
registers them has been imported; otherwise loading fails with `Op type not
registered`. TF Serving's standard builds link TensorFlow Text's ops, so the
job loads TF Text wherever it loads such a model: in the launcher and in
every worker, before the model.

The op names are listed here, not read from the library: a model must be
recognized where the library is missing, to say what to install, and in a
process that has already imported it (its ops then look like TensorFlow's).
tests/test_exporters.py checks the list against the installed TF Text.
"""
import dataclasses
import importlib
import importlib.util


@dataclasses.dataclass(frozen=True)
class OpLibrary:
  name: str  # as its project names it
  module: str  # the Python module whose import registers the ops
  distribution: str  # its package on PyPI
  install: str  # what to install where it is missing
  ops: frozenset
  prefixes: tuple = ()  # namespaced op names (`TFText>...`)

  def owns(self, op: str) -> bool:
    return op in self.ops or op.startswith(self.prefixes)

  def installed(self) -> bool:
    return importlib.util.find_spec(self.module) is not None


TEXT = OpLibrary(
    name='TensorFlow Text', module='tensorflow_text', distribution='tensorflow-text',
    install="pip install 'tf-batch-predict[text]' (tensorflow-text, versioned as TensorFlow)",
    prefixes=('TFText>',),
    # The ops tensorflow-text 2.21 registers (besides those named TFText>...).
    ops=frozenset((
        'CaseFoldUTF8', 'ConstrainedSequence', 'FastBertNormalize',
        'FastWordpieceTokenizeWithOffsets', 'FindSourceOffsets', 'MaxSpanningTree',
        'NormalizeUTF8', 'NormalizeUTF8WithOffsetsMap', 'PhraseTokenize',
        'RegexSplitWithOffsets', 'RougeL', 'SentenceFragments', 'SentenceFragmentsV2',
        'SentencepieceDetokenizeOp', 'SentencepieceIdToStringOp', 'SentencepieceOp',
        'SentencepieceStringToIdOp', 'SentencepieceTokenizeOp',
        'SentencepieceTokenizeWithOffsetsOp', 'SentencepieceVocabSizeOp',
        'SplitMergeTokenizeWithOffsets', 'TokenizerFromLogits',
        'UnicodeScriptTokenizeWithOffsets', 'WhitespaceTokenizeWithOffsets',
        'WordpieceTokenizeWithOffsets')))

# Recognized to name what a model needs; loaded where installed. No release
# of it is built for this job's TensorFlow, so it is not one of the extras.
DECISION_FORESTS = OpLibrary(
    name='TensorFlow Decision Forests', module='tensorflow_decision_forests',
    distribution='tensorflow-decision-forests',
    install='pip install tensorflow-decision-forests (a release built for this TensorFlow)',
    prefixes=('SimpleML',), ops=frozenset())

KNOWN = (TEXT, DECISION_FORESTS)


class MissingOps(ValueError):
  """The model needs ops this process cannot load: one line for the user."""


def graph_ops(graph_def) -> set:
  """The op types of a GraphDef, those of its functions included (a TF2
  model's ops are in its functions)."""
  ops = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    ops.update(node.op for node in function.node_def)
  # A node may call a function of the library by its name.
  return ops - {function.signature.name for function in graph_def.library.function}


def _registered_ops() -> set:
  """The op types this process's TensorFlow has registered."""
  from tensorflow.core.framework import op_def_pb2
  from tensorflow.python.client import pywrap_tf_session
  buffer = pywrap_tf_session.TF_GetAllOpList()
  try:
    op_list = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(buffer))
  finally:
    pywrap_tf_session.TF_DeleteBuffer(buffer)
  return {op.name for op in op_list.op}


def _listed(ops) -> str:
  ops = sorted(ops)
  return ', '.join(ops[:3]) + (f' and {len(ops) - 3} more' if len(ops) > 3 else '')


def needed(graph_def, check_registry: bool = True) -> tuple:
  """The modules to import before loading a model with this graph, in
  KNOWN's order. Raises MissingOps where a library is not installed or an
  op belongs to no library known here and TensorFlow lacks it.

  Only the second check needs TensorFlow (its op registry), and imports
  it. `check_registry=False` leaves it out: the libraries of KNOWN are
  still told by the static lists above, without TensorFlow, but an op of
  another custom library goes unnoticed (`check_registered` of
  `unowned(graph_def)` does it later). `batch-predict inspect` does that
  where TensorFlow is not imported yet (pipeline/inspect.py); a run
  checks after its cheap configuration checks, and refuses such a model
  before it starts."""
  modules, ops = _owned(graph_def)
  if check_registry:
    check_registered(ops)
  return modules


def unowned(graph_def) -> tuple:
  """The graph's op types that no library of KNOWN owns: TensorFlow's own
  ops, or a custom library's (`check_registered` tells)."""
  return tuple(sorted(_owned(graph_def)[1]))


def _owned(graph_def) -> tuple:
  ops = graph_ops(graph_def)
  modules = []
  for library in KNOWN:
    owned = {op for op in ops if library.owns(op)}
    if not owned:
      continue
    if not library.installed():
      raise MissingOps(f'the model uses {library.name} ops ({_listed(owned)}), and '
                       f'{library.module} is not installed: {library.install}')
    modules.append(library.module)
    ops -= owned
  return tuple(modules), ops


def check_registered(ops) -> None:
  """Raises MissingOps naming the ops of `ops` that this TensorFlow lacks
  (imports TensorFlow)."""
  unknown = set(ops) - _registered_ops()
  if unknown:
    raise MissingOps(f'the model uses ops this TensorFlow does not have ({_listed(unknown)}): '
                     'they come from a custom op library; serve it with a build that '
                     'links that library (known here: '
                     + ', '.join(library.name for library in KNOWN) + ')')


def load(modules) -> None:
  """Imports the op libraries (their import registers the ops)."""
  for module in modules:
    importlib.import_module(module)


def requirements(modules) -> list:
  """`package==version` of the installed op libraries among `modules`: what
  remote workers that install this package from setup.py must install too."""
  from importlib import metadata
  return [f'{library.distribution}=={metadata.version(library.distribution)}'
          for library in KNOWN if library.module in modules]
