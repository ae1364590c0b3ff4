"""--parquet_column_types: key and passthrough fields in typed Parquet
columns, a value that is not exactly of its type kept as its text in
FIELD_text; join and evaluate read such results as the run wrote them."""
import decimal
import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from tests.helpers import read_jsonl, write_lines
from tf_batch_predict.pipeline import cli
from tf_batch_predict.transforms.convert import typed_carried
from tf_batch_predict.transforms.rejoin import read_outputs

# JSON texts of carried values, with what each type makes of them.
CASES = [
    # text, int64, float64, bool
    (b'42', 42, 42.0, '42'),
    (b'"42"', 42, 42.0, '42'),  # CSV cells are strings
    (b'-7', -7, -7.0, '-7'),
    (b'-0', '-0', -0.0, '-0'),
    (b'007', '007', '007', '007'),
    (b'"007"', '007', '007', '007'),
    (b'1.0', '1.0', 1.0, '1.0'),
    (b'1e2', '1e2', 100.0, '1e2'),
    (b'0.1', '0.1', 0.1, '0.1'),
    (b'0.10000000000000000001', '0.10000000000000000001', '0.10000000000000000001',
     '0.10000000000000000001'),
    (b'9223372036854775807', 9223372036854775807, '9223372036854775807', '9223372036854775807'),
    (b'9223372036854775808', '9223372036854775808', '9223372036854775808',
     '9223372036854775808'),
    (b'12345678901234567890', '12345678901234567890', '12345678901234567890',
     '12345678901234567890'),
    (b'1e400', '1e400', '1e400', '1e400'),
    (b'true', 'true', 'true', True),
    (b'"False"', 'False', 'False', False),
    (b'0', 0, 0.0, '0'),
    (b'"yes"', 'yes', 'yes', 'yes'),
    (b'[1, 2]', '[1, 2]', '[1, 2]', '[1, 2]'),
    (b'null', None, None, None),
]


@pytest.mark.parametrize('text,as_int,as_float,as_bool', CASES)
def test_a_value_is_typed_only_where_its_text_is_exactly_of_the_type(text, as_int, as_float,
                                                                    as_bool):
  for column_type, expected in (('int64', as_int), ('float64', as_float), ('bool', as_bool)):
    value, shown = typed_carried(text, column_type)
    if isinstance(expected, str):
      assert (value, shown) == (None, expected)
    else:
      assert shown is None and type(value) is type(expected) and value == expected
      if isinstance(expected, float):  # -0 keeps its sign
        assert str(value) == str(expected)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.integers(-2**70, 2**70).map(str), st.floats().map(repr),
                 st.decimals(allow_nan=False, allow_infinity=False).map(str),
                 st.from_regex(r'-?[0-9]{1,25}(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?',
                               fullmatch=True)))
def test_typed_values_lose_nothing(text):
  """A value of the type says exactly what its text said; anything else is
  its text."""
  for column_type in ('int64', 'float64'):
    value, shown = typed_carried(text.encode(), column_type)
    assert (value is None) != (shown is None)
    if shown is not None:
      assert shown == text
    elif column_type == 'int64':
      assert str(value) == text
    else:
      assert decimal.Decimal(repr(value)) == decimal.Decimal(text)


def _run(model_dir, tmp_path, lines, name, *extra, suffix='jsonl'):
  data = tmp_path / f'{name}.{suffix}'
  write_lines(str(data), lines)
  out = tmp_path / f'{name}-out'
  rc = cli.main([f'--model={model_dir / "keras"}', '--signature=serve', f'--input={data}',
                 f'--output={out}', '--output_format=parquet', *extra])
  return rc, data, out


def _instances(n=60):
  ids = [str(i) for i in range(n - 3)] + ['12345678901234567890', '"007"', '-0']
  labels = ['true', 'false', '"no"']
  weights = ['0.1', '1e2', '3', '0.10000000000000000001', '"heavy"', 'null']
  return [f'{{"id": {ids[i]}, "label": {labels[i % 3]}, "weight": {weights[i % 6]}, '
          f'"features": [{i / 10}, 1.0, -0.5], "bucket": {i % 5}}}' for i in range(n)], ids


@pytest.mark.parametrize('direct_mode', ['in_memory', 'multi_processing'])
def test_typed_columns_load_as_their_types_and_keep_other_values_as_text(
    model_dir, tmp_path, direct_mode):
  lines, ids = _instances()
  args = ['--key_field=id', '--passthrough_fields=label,weight',
          '--parquet_column_types=id:int64,label:bool,weight:float64',
          f'--direct_running_mode={direct_mode}', '--direct_num_workers=2']
  rc, data, out = _run(model_dir, tmp_path, lines, 'typed', *args)
  assert rc == 0
  table = pa.concat_tables(pq.read_table(p) for p in glob.glob(f'{out}/predictions-*.parquet'))
  schema = table.schema
  assert [(f.name, str(f.type)) for f in schema][:6] == [
      ('id', 'int64'), ('id_text', 'string'), ('label', 'bool'), ('label_text', 'string'),
      ('weight', 'double'), ('weight_text', 'string')]
  rows = {r['id'] if r['id'] is not None else r['id_text']: r for r in table.to_pylist()}
  assert len(rows) == len(lines) == table.num_rows
  for i, line in enumerate(lines):
    value, text = typed_carried(ids[i].encode(), 'int64')
    row = rows[text if value is None else value]
    assert (row['id'], row['id_text']) == typed_carried(ids[i].encode(), 'int64')
    label = line.split('"label": ')[1].split(',')[0]
    assert (row['label'], row['label_text']) == typed_carried(label.encode(), 'bool')
    weight = line.split('"weight": ')[1].split(',')[0]
    assert (row['weight'], row['weight_text']) == typed_carried(weight.encode(), 'float64')
  # The ones that did not fit, as the user sees them.
  assert rows['12345678901234567890']['id_text'] == '12345678901234567890'
  assert rows['007']['id_text'] == '007' and rows['-0']['id'] is None
  assert {r['label_text'] for r in rows.values()} == {None, 'no'}
  assert {r['weight_text'] for r in rows.values()} == {None, '0.10000000000000000001', 'heavy'}
  assert sorted({r['weight'] for r in rows.values() if r['weight'] is not None}) == [
      0.1, 3.0, 100.0]
  with open(out / 'summary.json') as f:
    assert json.load(f)['settings']['parquet_column_types'] == {
        'id': 'int64', 'label': 'bool', 'weight': 'float64'}

  # Read back, each field is one value again: its typed value or its text.
  records = [r for p in glob.glob(f'{out}/predictions-*.parquet')
             for r in read_outputs.iter_records(p)]
  assert not any(name.endswith('_text') for r in records for name in r)
  assert sorted(str(r['id']) for r in records) == sorted(i.strip('"') for i in ids)

  # join matches typed keys, those kept as text included.
  joined = tmp_path / 'joined'
  assert cli.main(['join', f'--input={data}', f'--predictions={out}',
                   f'--output={joined}']) == 0
  rows_joined = read_jsonl(f'{joined}/joined-*-of-*.jsonl')
  assert len(rows_joined) == len(lines) and all('probs' in r for r in rows_joined)
  assert not glob.glob(f'{joined}/unmatched-*') or not read_jsonl(
      f'{joined}/unmatched-*-of-*.jsonl')

  # evaluate reads a typed label, and the texts of the values that are not
  # of its type as the strings they are.
  assert cli.main(['evaluate', f'--joined={out}/predictions-*.parquet', '--label_field=weight',
                   '--prediction_field=score', '--task=regression',
                   f'--output={tmp_path / "eval"}']) == 0
  with open(tmp_path / 'eval' / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics['counts']['evaluated'] == 30
  assert metrics['counts']['excluded_by_reason'] == {'label is not a number (a string)': 20,
                                                     'label is null': 10}
  assert metrics['regression']['label_mean'] == pytest.approx((0.1 + 100 + 3) / 3)


def test_csv_cells_fill_typed_columns(model_dir, tmp_path):
  header = 'id,label,features,bucket'
  rows = [f'{i},{"True" if i % 2 else "False"},"[{i / 10}, 1.0, -0.5]",{i % 5}'
          for i in range(40)]
  rc, _, out = _run(model_dir, tmp_path, [header] + rows, 'csv', '--key_field=id',
                    '--passthrough_fields=label', '--parquet_column_types=id:int64,label:bool',
                    suffix='csv')
  assert rc == 0
  table = pa.concat_tables(pq.read_table(p) for p in glob.glob(f'{out}/predictions-*.parquet'))
  assert sorted(table.column('id').to_pylist()) == list(range(40))
  assert table.column('id_text').null_count == 40
  by_id = dict(zip(table.column('id').to_pylist(), table.column('label').to_pylist()))
  assert by_id == {i: bool(i % 2) for i in range(40)}


@pytest.mark.parametrize('args,message', [
    (['--key_field=id', '--parquet_column_types=id:int64', '--output_format=jsonl'],
     '--parquet_column_types: only for --output_format=parquet'),
    (['--key_field=id', '--parquet_column_types=bucket:string'],
     "--parquet_column_types: 'bucket' is not the --key_field or one of the "
     '--passthrough_fields'),
    (['--key_field=id', '--parquet_column_types=id:integer'],
     "--parquet_column_types: 'integer' (id) is not one of string, int64, float64, bool"),
    (['--key_field=id', '--parquet_column_types=id'],
     "--parquet_column_types: 'id' is not FIELD:TYPE"),
    (['--key_field=id', '--parquet_column_types=id:int64,id:string'],
     "--parquet_column_types: 'id' is given twice"),
    (['--key_field=id', '--passthrough_fields=id_text', '--parquet_column_types=id:int64'],
     '--parquet_column_types: the column id_text, for the values of '),
])
def test_configuration_mistakes_are_one_line(model_dir, tmp_path, capsys, args, message):
  lines, _ = _instances(3)
  rc, _, out = _run(model_dir, tmp_path, lines, 'mistake', '--output_format=parquet', *args)
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f'batch-predict: error: {message}'), err
  assert not (out / 'summary.json').exists()
