"""`batch-predict inspect`: what a SavedModel offers, read from its proto as
the launcher reads it, and an example instance per signature that the job
itself scores. Models: tests/models.py (`model_dir`, `serving_models`)."""
import json
import os

import pytest

from tf_batch_predict.pipeline import inspect
from tests import cloud
from tests.helpers import run_job, write_lines


def inspected(capsys, *args) -> str:
  """Runs the command expecting success: its standard output."""
  rc = inspect.main(list(args))
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  assert captured.err == ''
  return captured.out


def report(capsys, *args) -> dict:
  return json.loads(inspected(capsys, *args, '--json'))


def mistake(capsys, *args) -> str:
  """Runs the command expecting a mistake: the one line on stderr."""
  rc = inspect.main(list(args))
  captured = capsys.readouterr()
  assert rc == 2, captured
  assert captured.out == ''
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in captured.err, captured.err
  assert lines[0].startswith('batch-predict: error: ')
  return lines[0].removeprefix('batch-predict: error: ')


def signature(found: dict, name: str, tags=('serve',)) -> dict:
  [meta_graph] = [m for m in found['meta_graphs'] if set(m['tags']) == set(tags)]
  [sig] = [s for s in meta_graph['signatures'] if s['name'] == name]
  return sig


def tensors(entries) -> dict:
  return {t['name']: t['type'] for t in entries}


ESTIMATOR_FEATURES = [
    {'name': 'age', 'kind': 'float', 'required': True, 'shape': [1],
     'count': '1 value (shape [1])'},
    {'name': 'count', 'kind': 'int64', 'required': False, 'shape': [],
     'count': '1 value (shape [])'},
    {'name': 'thal', 'kind': 'bytes', 'required': True, 'shape': [1],
     'count': '1 value (shape [1])'}]


def test_estimator_signatures_features_and_examples(model_dir, capsys):
  path = str(model_dir / 'estimator')
  found = report(capsys, f'--model={path}')
  assert found['saved_model'] == path and not found['base_directory']
  assert found['versions'] is None and found['tag_sets'] == [['serve']]
  [meta_graph] = found['meta_graphs']
  assert meta_graph['default'] and meta_graph['default_signature'] == 'serving_default'
  # The default first, then by name.
  assert [(s['name'], s['method'], s['default']) for s in meta_graph['signatures']] == [
      ('serving_default', 'tensorflow/serving/predict', True),
      ('classification', 'tensorflow/serving/classify', False),
      ('regression', 'tensorflow/serving/regress', False)]
  for sig in meta_graph['signatures']:
    assert sig['usable'] and sig['takes_examples'] and sig['error'] is None
    assert sig['features'] == ESTIMATOR_FEATURES
    assert sig['example'] == {'age': [0.0], 'count': 0, 'thal': ['']}
    assert json.loads(sig['example_line']) == sig['example']
  default = meta_graph['signatures'][0]
  assert tensors(default['inputs']) == {'examples': 'string[batch]'}
  assert tensors(default['outputs']) == {'score': 'float32[batch]'}
  assert default['inputs'][0]['shape'] == [None] and default['flags'] == ''
  classify = signature(found, 'classification')
  assert tensors(classify['outputs']) == {'classes': 'string[batch,2]',
                                          'scores': 'float32[batch,2]'}
  assert classify['outputs'][1]['shape'] == [None, 2]
  assert classify['outputs'][1]['instance_shape'] == [2]
  assert classify['flags'] == '--signature=classification'

  text = inspected(capsys, f'--model={path}')
  assert text.startswith(f'SavedModel: {path}\nTag sets: "serve" (the default)\n\n'
                         'Tag set "serve": 3 signatures\n')
  assert '''
  Signature "serving_default" (the default)
    method: tensorflow/serving/predict
    takes serialized tf.Examples
    inputs:
      examples  string[batch]
    outputs:
      score  float32[batch]
    features of each tf.Example (the graph's parsing spec):
      age    float  required  1 value (shape [1])
      count  int64  optional  1 value (shape [])
      thal   bytes  required  1 value (shape [1])
    example instance (JSONL):
      {"age": [0.0], "count": 0, "thal": [""]}
''' in text
  assert 'Signature "classification" (--signature=classification)\n' in text
  assert 'Signature "regression" (--signature=regression)\n' in text


def test_tf1_tag_sets_and_a_non_default_signature(model_dir, capsys):
  path = str(model_dir / 'tf1')
  found = report(capsys, f'--model={path}')
  assert found['tag_sets'] == [['serve'], ['serve', 'batch']]
  assert found['default_tag_set'] == ['serve']
  assert [(m['tags'], m['default_signature'], [s['name'] for s in m['signatures']])
          for m in found['meta_graphs']] == [(['serve'], None, ['predict_scores']),
                                             (['serve', 'batch'], None, ['batch_scores'])]
  for name, tags, flags in (
      ('predict_scores', ('serve',), '--signature=predict_scores'),
      ('batch_scores', ('serve', 'batch'), '--tag=serve,batch --signature=batch_scores')):
    sig = signature(found, name, tags)
    assert sig['flags'] == flags and not sig['takes_examples'] and sig['features'] is None
    assert tensors(sig['inputs']) == {'key': 'int64[batch]', 'name': 'string[batch]',
                                      'x': 'float32[batch,2]'}
    assert tensors(sig['outputs']) == {'key': 'int64[batch]', 'name_length': 'int32[batch]',
                                       'y': 'float32[batch]'}
    assert sig['example_line'] == '{"key": 0, "name": "", "x": [0.0, 0.0]}'
  # --tag shows that tag set only; the header still lists them all.
  only = report(capsys, f'--model={path}', '--tag=batch,serve')
  assert [m['tags'] for m in only['meta_graphs']] == [['serve', 'batch']]
  text = inspected(capsys, f'--model={path}', '--tag=serve,batch')
  assert 'Tag sets: "serve" (the default), "serve,batch" (--tag=serve,batch)\n' in text
  assert ('Tag set "serve,batch": 1 signature, none named serving_default: pass '
          '--signature=NAME\n') in text
  assert ('  Signature "batch_scores" (--tag=serve,batch --signature=batch_scores)\n'
          '    method: tensorflow/serving/predict\n') in text
  assert 'predict_scores' not in text


def test_keras_export(model_dir, capsys):
  found = report(capsys, f'--model={model_dir / "keras"}')
  sig = signature(found, 'serving_default')
  assert tensors(sig['inputs']) == {'bucket': 'int64[batch]', 'features': 'float32[batch,3]'}
  assert tensors(sig['outputs']) == {'probs': 'float32[batch,2]', 'score': 'float32[batch,1]'}
  assert sig['example'] == {'bucket': 0, 'features': [0.0, 0.0, 0.0]}
  text = inspected(capsys, f'--model={model_dir / "keras"}')
  assert '      bucket    int64[batch]\n      features  float32[batch,3]\n' in text


def test_versions_of_a_base_directory(model_dir, serving_models, capsys):
  base = str(model_dir / 'versioned')
  found = report(capsys, f'--model={base}')
  assert found['base_directory'] and found['default_version'] == 10
  assert found['versions'] == [{'version': v, 'folders': [str(v)]} for v in (1, 2, 10)]
  assert (found['version'], found['version_folder']) == (10, '10')
  assert found['saved_model'] == os.path.join(base, '10')
  sig = signature(found, 'serving_default')
  assert tensors(sig['inputs']) == {'x': 'float32[batch,?]'}
  assert sig['inputs'][0]['shape'] == [None, None] and sig['example'] == {'x': [0.0]}

  padded = str(serving_models / 'padded')
  text = inspected(capsys, f'--model={padded}', '--model_version=7')
  assert text.startswith(
      f'Model: {padded} (a TF Serving base directory)\n'
      'Versions:\n'
      '  7    folder 00000007  <- inspected\n'
      '  123  folder 00000123\n'
      '  124  folder 00000124  <- the default (highest)\n'
      f'SavedModel: {padded}/00000007 (version 7)\n')
  found = report(capsys, f'--model={padded}/', '--model_version=00123')
  assert (found['version'], found['version_folder'], found['default_version']) == (
      123, '00000123', 124)


def test_older_tf1_export_shows_the_graph_shapes(serving_models, capsys):
  found = report(capsys, f'--model={serving_models / "stale"}')
  sig = signature(found, 'serving_default')
  assert tensors(sig['inputs']) == {'x': 'float32[batch,1]'}
  assert tensors(sig['outputs']) == {'y': 'float32[batch,2]'}
  assert sig['inputs'][0]['notes'] == ['graph shape used (the SignatureDef declares [])']
  assert sig['example'] == {'x': [0.0]}
  text = inspected(capsys, f'--model={serving_models / "stale"}')
  assert '      x  float32[batch,1]  graph shape used (the SignatureDef declares [])\n' in text


def test_fixed_batches_unusable_signatures_and_none_at_all(serving_models, capsys):
  found = report(capsys, f'--model={serving_models / "functions"}')
  one = signature(found, 'one')
  assert one['fixed_batch'] == 1 and one['inputs'][0]['notes'] == ['fixed batch 1']
  assert one['inputs'][0]['type'] == 'float32[batch,3]'
  assert one['inputs'][0]['shape'] == [1, 3] and one['example'] == {'x': [0.0, 0.0, 0.0]}
  assert signature(found, 'four')['inputs'][0]['shape'] == [4, 3]
  conflict = signature(found, 'conflict')
  assert not conflict['usable'] and conflict['example_line'] is None
  assert 'fixes different batch sizes' in conflict['error']
  assert tensors(conflict['inputs']) == {'a': 'float32[1,3]', 'b': 'float32[4,3]'}
  text = inspected(capsys, f'--model={serving_models / "functions"}')
  assert ('  Signature "conflict" (--signature=conflict)\n'
          '    method: tensorflow/serving/predict\n'
          '    cannot be used by the job: --signature: signature \'conflict\' fixes') in text
  assert '    note: fixed batch 4: the job calls the model on exactly 4 rows per call' in text

  found = report(capsys, f'--model={serving_models / "nosig"}')
  assert found['meta_graphs'][0]['signatures'] == []
  assert ('Tag set "serve": no signatures: nothing to call' in
          inspected(capsys, f'--model={serving_models / "nosig"}'))


def test_single_example_export_with_unbatched_outputs(tmp_path, capsys):
  """An output declared without the leading 1 is the instance's whole output."""
  import tensorflow as tf

  class Single(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name='x')])
    def serve(self, x):
      return {'y': x * 2.0, 'tokens': tf.where(x[0] > 0.0)[:, 0]}

  module = Single()
  tf.saved_model.save(module, str(tmp_path / 'single'), signatures={
      'serving_default': module.serve})
  sig = signature(report(capsys, f'--model={tmp_path / "single"}'), 'serving_default')
  assert tensors(sig['outputs']) == {'tokens': 'int64[?]', 'y': 'float32[batch,3]'}
  tokens, y = sig['outputs']
  assert tokens['notes'] == ["not batched: the one instance's whole output"]
  assert (tokens['batched'], tokens['shape'], y['batched'], y['shape']) == (
      False, [None], True, [1, 3])


def test_example_instances_of_every_kind():
  from tf_batch_predict.transforms.model.example_spec import FeatureSpec
  from tf_batch_predict.transforms.model.savedmodel import SignatureSpec, TensorSpec
  spec = SignatureSpec('s', 'm', (
      TensorSpec('flag', 'bool', (2,)), TensorSpec('image_bytes', 'string', ()),
      TensorSpec('n', 'uint8', (None, 2)), TensorSpec('any', 'float64', None)), ())
  assert inspect.example_instance(spec) == {
      'flag': [False, False], 'image_bytes': {'b64': ''}, 'n': [[0, 0]], 'any': 0.0}
  examples = SignatureSpec('s', 'm', (TensorSpec('in', 'string', ()),), (),
                           takes_examples=True, example_features={
                               'ids': FeatureSpec('int64'),
                               'seq': FeatureSpec('float', shape=(None, 2)),
                               'grid': FeatureSpec('bytes', True, (2, 1))})
  assert inspect.example_instance(examples) == {
      'grid': [[''], ['']], 'ids': [0], 'seq': [[0.0, 0.0]]}
  unknown = SignatureSpec('s', 'm', (TensorSpec('in', 'string', ()),), (),
                          takes_examples=True)
  assert inspect.example_instance(unknown) == {'b64': ''}


def test_a_long_example_line_is_shortened_in_text_only(tmp_path, capsys):
  """An image input: the text shows the line's start, --json all of it."""
  import tensorflow as tf

  class Image(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name='image')])
    def serve(self, image):
      return {'mean': tf.reduce_mean(image, axis=[1, 2, 3])}

  module = Image()
  tf.saved_model.save(module, str(tmp_path / 'image'), signatures={
      'serving_default': module.serve})
  found = report(capsys, f'--model={tmp_path / "image"}')
  line = signature(found, 'serving_default')['example_line']
  assert len(json.loads(line)['image']) == 32 and len(line) > 10_000
  text = inspected(capsys, f'--model={tmp_path / "image"}')
  assert line not in text and line[:200] + '...' in text
  assert f'({len(line)} characters, shortened here: --json holds the whole line' in text


@pytest.mark.parametrize('args, message', [
    (('--model={root}/missing',), '--model: {root}/missing does not exist'),
    (('--model={root}',), '--model: {root} is not a SavedModel (no saved_model.pb) and has '
                          'no numeric version subdirectories holding one'),
    (('--model={root}/junk',), '--model: {root}/junk/saved_model.pb is not a readable '
                               'SavedModel proto'),
    (('--model={models}/tf1', '--tag=gpu'), '--tag: the SavedModel has no tag set "gpu"; '
                                            'available: "serve", "serve,batch"'),
    (('--model={models}/tf1', '--model_version=1'),
     '--model_version: {models}/tf1 is a SavedModel, not a TF Serving base directory of '
     'versions; leave --model_version out'),
    (('--model={models}/versioned', '--model_version=3'),
     '--model_version: {models}/versioned has no version 3; available: 1, 2, 10'),
    (('--model={models}/versioned', '--model_version=v2'),
     "--model_version: 'v2' is not a version number"),
    ((), 'the following arguments are required: --model'),
    (('--model={models}/tf1', '--signature=x'), 'unrecognized arguments: --signature=x'),
])
def test_mistakes_are_one_line(model_dir, tmp_path, capsys, args, message):
  (tmp_path / 'junk').mkdir()
  (tmp_path / 'junk' / 'saved_model.pb').write_bytes(b'not a proto')
  fill = {'root': tmp_path, 'models': model_dir}
  assert mistake(capsys, *(a.format(**fill) for a in args)) == message.format(**fill)


@pytest.mark.parametrize('root, model, tags, name', [
    ('model_dir', 'keras', ('serve',), 'serving_default'),
    ('model_dir', 'tf1', ('serve',), 'predict_scores'),
    ('model_dir', 'tf1', ('serve', 'batch'), 'batch_scores'),
    ('model_dir', 'estimator', ('serve',), 'serving_default'),
    ('model_dir', 'estimator', ('serve',), 'classification'),
    ('model_dir', 'estimator', ('serve',), 'regression'),
    ('model_dir', 'versioned', ('serve',), 'serving_default'),
    ('serving_models', 'stale', ('serve',), 'serving_default'),
    ('serving_models', 'functions', ('serve',), 'one'),
])
def test_the_example_line_is_scored_by_the_job(request, tmp_path, capsys, root, model, tags,
                                               name):
  path = request.getfixturevalue(root) / model
  found = report(capsys, f'--model={path}')
  sig = signature(found, name, tags)
  data = write_lines(str(tmp_path / 'in.jsonl'), [sig['example_line']])
  predictions, errors, summary = run_job(
      str(tmp_path / 'out'), f'--model={path}', f'--input={data}', *sig['flags'].split())
  assert errors == [] and len(predictions) == 1
  assert summary['model']['signature'] == name
  assert {o['name'] for o in sig['outputs']} <= set(predictions[0])


def test_a_model_in_a_bucket(model_dir, capsys):
  with cloud.emulated_bucket('inspect-models') as bucket:
    cloud.upload_tree(bucket, str(model_dir / 'versioned'), 'models/versioned')
    cloud.upload_tree(bucket, str(model_dir / 'estimator'), 'models/estimator')
    found = report(capsys, '--model=gs://inspect-models/models/versioned',
                   '--model_version=2')
    assert [v['version'] for v in found['versions']] == [1, 2, 10]
    assert found['saved_model'] == 'gs://inspect-models/models/versioned/2'
    assert (found['version'], found['default_version']) == (2, 10)
    assert signature(found, 'serving_default')['example'] == {'x': [0.0]}
    found = report(capsys, '--model=gs://inspect-models/models/estimator')
    assert signature(found, 'regression')['features'] == ESTIMATOR_FEATURES
    assert mistake(capsys, '--model=gs://inspect-models/models/none') == (
        '--model: gs://inspect-models/models/none does not exist')


def test_the_command_dispatches_inspect(model_dir, capsys):
  """`batch-predict inspect ...` (also with --log_level before it) is this
  report; a mistake in it is one line, exit 2."""
  from tf_batch_predict.pipeline import cli
  assert cli.main(['--log_level=warning', 'inspect', f'--model={model_dir / "keras"}',
                   '--json']) == 0
  found = json.loads(capsys.readouterr().out)
  assert signature(found, 'serve')['example_line']
  assert cli.main(['inspect', f'--model={model_dir / "nope"}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('batch-predict: error: --model:')
