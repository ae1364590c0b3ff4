"""Session fixtures: real SavedModels built once per test session."""
import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from tests import models  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'cross_batch: compares model outputs computed in different batches '
      '(tests/helpers.py: assert_close_across_batches); `make test` runs these a second '
      'time with oneDNN limited to AVX2, as on a CPU without AVX-512')


@pytest.fixture(scope='session')
def model_dir(tmp_path_factory):
  """Directory holding every test model, built once."""
  root = tmp_path_factory.mktemp('models')
  models.build_keras_dict_model(str(root / 'keras'))
  models.build_tf1_model(str(root / 'tf1'))
  models.build_ragged_model(str(root / 'ragged'))
  models.build_versioned_base(str(root / 'versioned'))
  models.build_estimator_style_model(str(root / 'estimator'))
  models.build_assets_tuple_model(str(root / 'assets'))
  models.build_no_variables_model(str(root / 'novars'))
  models.build_mixed_model(str(root / 'mixed'))
  return root


@pytest.fixture(scope='session')
def shape_one_model(tmp_path_factory):
  """models.build_shape_one_model, built once, for the tests that use it."""
  path = tmp_path_factory.mktemp('shape_one') / 'model'
  models.build_shape_one_model(str(path))
  return path


@pytest.fixture(scope='session')
def signature_of():
  """Calls a model's signature directly, for reference predictions."""
  import tensorflow as tf
  cache = {}

  def call(path, signature='serving_default', tags=('serve',), **inputs):
    key = (str(path), signature)
    if key not in cache:
      loaded = tf.saved_model.load(str(path), tags=list(tags))
      cache[key] = (loaded, loaded.signatures[signature])
    outputs = cache[key][1](**inputs)
    return {k: v.numpy() for k, v in outputs.items()}
  return call


@pytest.fixture(scope='session')
def serving_models(tmp_path_factory):
  """The unusual models TF Serving serves (tests/test_serving_models.py),
  built once, apart from `model_dir` so that other tests do not pay for them."""
  root = tmp_path_factory.mktemp('serving_models')
  models.build_zero_padded_base(str(root / 'padded'))
  models.build_stale_signature_model(str(root / 'stale'))
  models.build_ref_output_model(str(root / 'ref'))
  models.build_functions_model(str(root / 'functions'))
  models.build_no_signatures_model(str(root / 'nosig'))
  return root
