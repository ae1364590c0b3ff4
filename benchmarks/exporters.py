"""Models as other exporters build them (tests/models_exporters.py), through
the job and alone: what TF Text ops, ragged outputs, the eager loader and
per-instance calls cost. Prints a Markdown table.

  python benchmarks/exporters.py [--scale 1.0] [--workdir DIR]

Rows (instances in JSON Lines, one run each, in one process):
  text classifier     TF Text: case folding, whitespace tokenizer, lookup,
                      mean embedding, dense (`serving_default`)
  BERT tokenizer      TF Text's BertTokenizer, ragged wordpiece ids written
                      as each instance's list (`bert`)
  Keras 3 subclass    saved with tf.saved_model.save: only the eager
                      loader (tf.saved_model.load) runs it
  ... model.export    the same layers and weights exported with Keras 3's
                      model.export: the graph-mode Session runs it
  per-instance        TF Serving's counter `incr_counter_by(delta:
                      float32[])`: one call per instance
`job` is the job's pipeline time (summary.json `pipeline_wall_time_s`:
model check, interpreter and imports excluded) with its defaults; `model
alone` calls the signature as the job's workers do (the same loader) on
the same instances, already arrays, in calls of the batch size the job
settled on (256 where it did not say).
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import models_exporters as exporters  # noqa: E402  (the models)

COUNTS = {'text': 200_000, 'bert': 200_000, 'keras3': 400_000, 'export': 400_000,
          'counter': 20_000}
WORDS = ['the', 'cat', 'sat', 'on', 'mat', 'dog', 'ran', 'running', 'walked', 'über',
         'straße', 'zebra', 'Σίσυφος', 'quickly', '.', ',']


def write_inputs(workdir, name, count):
  rng = np.random.default_rng(7)
  path = os.path.join(workdir, f'{name}-{count}.jsonl')
  if os.path.exists(path):
    return path
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    for i in range(count):
      if name in ('text', 'bert'):
        words = rng.choice(WORDS, rng.integers(1, 25))
        record = {'id': i, 'text': ' '.join(words)}
      elif name == 'counter':
        record = {'id': i, 'delta': float(rng.integers(1, 5))}
      else:
        record = {'id': i, 'inputs': rng.normal(size=3).round(4).tolist()}
      f.write(json.dumps(record, ensure_ascii=False) + '\n')
  os.rename(path + '.tmp', path)
  return path


def arrays(name, path):
  with open(path, encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  if name in ('text', 'bert'):
    return [np.array([r['text'].encode() for r in records], object)]
  if name == 'counter':
    return [np.array([r['delta'] for r in records], np.float32)]
  return [np.array([r['inputs'] for r in records], np.float32)]


def run_job(model, signature, data, out):
  from tf_batch_predict.pipeline import cli
  shutil.rmtree(out, ignore_errors=True)
  with contextlib.redirect_stdout(io.StringIO()):  # its summary table
    rc = cli.main([f'--model={model}', f'--signature={signature}', f'--input={data}',
                   f'--output={out}', '--key_field=id', '--log_level=warning'])
  assert rc == 0, rc
  with open(os.path.join(out, 'summary.json')) as f:
    return json.load(f)


def model_alone(model, signature, feeds, batch):
  """(seconds of the signature's calls as a worker makes them, the rows
  of each call, the loader)."""
  from tf_batch_predict.transforms.model.savedmodel import inspect_model, load_signature_function
  from tf_batch_predict.transforms.model.score import SMALL_CALL_ROWS, check_model, signature_call
  _, _, ref = check_model(inspect_model(model, ('serve',), signature))
  fn = load_signature_function(ref)
  rows = ref.signature.fixed_batch or batch
  call = signature_call(fn, ref.signature, small=rows <= SMALL_CALL_ROWS)  # as workers do
  count = len(feeds[0])
  call([f[:rows] for f in feeds])  # the first call's one-time costs
  started = time.perf_counter()
  for start in range(0, count, rows):
    call([f[start:start + rows] for f in feeds])
  return time.perf_counter() - started, rows, ref.loader


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--scale', type=float, default=1.0)
  parser.add_argument('--workdir', default='/tmp/batch-predict-bench-exporters')
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  import tensorflow  # noqa: F401  (imports apart from every figure)
  import tensorflow_text  # noqa: F401
  from tf_batch_predict.pipeline import cli, graph  # noqa: F401
  models = os.path.join(args.workdir, 'models')
  builders = [('text', exporters.build_text_classifier), ('keras3', exporters.build_keras3_subclass),
              ('export', exporters.build_keras3_export), ('counter', exporters.build_counter)]
  for name, build in builders:
    if not os.path.exists(os.path.join(models, name)):
      build(os.path.join(models, name))
  cases = [('text classifier (TF Text)', 'text', 'text', 'serving_default'),
           ('BERT tokenizer, ragged output', 'bert', 'text', 'bert'),
           ('Keras 3 subclass (eager loader)', 'keras3', 'keras3', 'serving_default'),
           ('... model.export (Session)', 'export', 'export', 'serving_default'),
           ('per-instance counter', 'counter', 'counter', 'incr_counter_by')]
  started = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  rows = []
  for label, name, model, signature in cases:
    count = int(COUNTS[name] * args.scale)
    data = write_inputs(args.workdir, name, count)
    summary = run_job(os.path.join(models, model), signature, data,
                      os.path.join(args.workdir, f'out-{name}'))
    assert summary['predictions'] == count, summary['predictions']
    batch = (summary.get('batches') or {}).get('size', {}).get('mean') or 256
    batch = 1 << max(0, int(round(np.log2(batch))))
    alone, batch, loader = model_alone(os.path.join(models, model), signature, arrays(name, data), batch)
    job = summary['pipeline_wall_time_s']
    rows.append((label, count, loader, batch, job, alone))
  print(f'Models of other exporters ({started}, {os.cpu_count()} cores; one run each)\n')
  print('| model | instances | loader | batch | job s | job /s | model alone /s | job / alone |')
  print('|---|---|---|---|---|---|---|---|')
  for label, count, loader, batch, job, alone in rows:
    print(f'| {label} | {count:,} | {loader} | {batch} | {job:.1f} | {count / job:,.0f} | '
          f'{count / alone:,.0f} | {alone / job:.2f}x |')


if __name__ == '__main__':
  main()
