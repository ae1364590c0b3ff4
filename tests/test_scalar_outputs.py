"""--scalar_outputs: an output of shape [1] per instance written as its one
value, in every output format; the same numbers as the list form."""
import glob
import json

import pytest

from tests.helpers import write_lines
from tf_batch_predict.pipeline import cli
from tf_batch_predict.transforms.rejoin import read_outputs


@pytest.mark.parametrize('output_format', ['jsonl', 'parquet', 'tfrecord'])
def test_scalar_outputs_are_the_lists_one_value(model_dir, tmp_path, output_format):
  write_lines(str(tmp_path / 'in.jsonl'), [
      json.dumps({'id': f'i{i}', 'features': [i / 10, -i / 5, 1.0], 'bucket': i % 7})
      for i in range(300)])
  records = {}
  for name, extra in (('lists', []), ('scalars', ['--scalar_outputs'])):
    out = tmp_path / name
    assert cli.main([f'--model={model_dir / "keras"}', '--signature=serve', '--key_field=id',
                     f'--input={tmp_path / "in.jsonl"}', f'--output={out}',
                     f'--output_format={output_format}', *extra]) == 0
    [path] = glob.glob(str(out / f'predictions-*.{output_format}'))
    records[name] = {json.dumps(r['id']): r for r in read_outputs.iter_records(path)}
  assert sorted(records['lists']) == sorted(records['scalars'])
  for key, listed in records['lists'].items():
    scalar = records['scalars'][key]
    if output_format == 'tfrecord':  # an Example's feature is a list either way
      assert scalar == listed
      continue
    assert isinstance(listed['score'], list) and len(listed['score']) == 1
    assert scalar['score'] == listed['score'][0]  # the same float, one value
    assert scalar['probs'] == listed['probs']  # [2]: unchanged
