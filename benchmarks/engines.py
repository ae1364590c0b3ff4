"""The job on Flink and Spark against Beam's local runner, whole commands
timed: Flink (`[local]`) at parallelism 1 and 2 and Spark with local[1] and
local[2], workers from a worker pool, against Beam's local multi_processing
mode with 1 and 2 workers, on the tabular and MLP
workloads of benchmarks/run.py. Start-up apart: the same command on a few
thousand instances; steady state: the extra instances of the full run over
its extra seconds. Prints a Markdown table.

  python benchmarks/engines.py [--scale 0.25] [--only Spark] [--workdir DIR]

Needs `make engines` (the job server). One run per configuration and size.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run as bench  # noqa: E402  (the data, models and timing)
from tests import engines  # noqa: E402  (the worker pool and the jars' places)


def configs(pool):
  flink = ['--runner=FlinkRunner', '--flink_master=[local]', '--environment_type=EXTERNAL',
           f'--environment_config={pool.config}', '--flink_version=1.19',
           f'--flink_job_server_jar={engines.require(engines.FLINK_JOB_SERVER)}']
  spark = ['--runner=SparkRunner', '--environment_type=EXTERNAL',
           f'--environment_config={pool.config}',
           f'--spark_job_server_jar={engines.require(engines.SPARK_JOB_SERVER)}']
  return [
      ('local, multi_processing, 1 worker', bench.multi_processing(1)),
      ('local, multi_processing, 2 workers', bench.multi_processing(2)),
      ('Flink [local], parallelism 1', flink + ['--parallelism=1', '--sdk_worker_parallelism=1']),
      ('Flink [local], parallelism 2', flink + ['--parallelism=2', '--sdk_worker_parallelism=2']),
      ('Spark local[1]', spark + ['--spark_master_url=local[1]']),
      ('Spark local[2]', spark + ['--spark_master_url=local[2]']),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--scale', type=float, default=1.0,
                      help='share of run.py\'s instance counts (tabular 2M, MLP 800k)')
  parser.add_argument('--workdir', default='/tmp/batch-predict-bench')
  parser.add_argument('--only', default='',
                      help='run the configurations whose name starts with this (local, Flink, Spark)')
  args = parser.parse_args()
  bench.prepare(args.workdir, 1.0, ('cores',))
  counts = {w: int(bench.WORKERS_INSTANCES[w] * args.scale) for w in ('tabular', 'mlp')}
  started = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
  rows = []
  with engines.worker_pool(args.workdir) as pool:
    for workload in ('tabular', 'mlp'):
      count = int(bench.WORKLOADS[workload])
      whole, _, tiny = bench.cores_inputs(args.workdir, workload, count, counts[workload], 0)
      model = os.path.join(args.workdir, f'{workload}-model')
      for name, beam_args in configs(pool):
        if not name.startswith(args.only):
          continue
        out = os.path.join(args.workdir, 'out', 'engines')
        small = bench.run_commands(model, [[tiny]], out, beam_args)
        full = bench.run_commands(model, [[whole]], out, beam_args)
        extra = full['seconds'] - small['seconds']
        # Start-up varies by seconds between runs: a full run that adds less
        # than a quarter to it gives no steady rate worth printing.
        steady = (full['count'] - small['count']) / extra if extra > full['seconds'] / 4 else None
        rows.append((workload, name, full['count'], full['seconds'], small['seconds'],
                     small['model_load_s'], steady, full['others']))
  print(f'\nWhole commands on {os.cpu_count()} cores, {started}; one run each. Start-up: the '
        f'same command on {bench.CORES_TINY:,} instances (job server, cluster, workers\' '
        'TensorFlow import and model load included). Steady: extra instances / extra seconds. '
        "Others' cores: other processes' CPU use meanwhile (for Flink, its Python workers, "
        'which the worker pool starts).\n')
  header = ('workload', 'configuration', 'instances', 'seconds', 'start-up s', 'model load s',
            'steady inst/s', 'vs 1 worker', "others' cores")
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  one = {}
  for workload, name, count, seconds, start, load, steady, others in rows:
    key = (workload, name.split(',')[0].split(' ')[0])
    one.setdefault(key, steady)
    rate = 'not measurable' if steady is None else f'{steady:,.0f}'
    ratio = f'{steady / one[key]:.2f}x' if steady and one[key] else '-'
    print(f'| {workload} | {name} | {count:,} | {seconds:.1f} | {start:.1f} | '
          f'{"-" if load is None else f"{load:.1f}"} | {rate} | {ratio} | '
          f'{"-" if others is None else f"{others:.2f}"} |')


if __name__ == '__main__':
  main()
