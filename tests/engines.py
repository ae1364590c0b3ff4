"""Flink and Spark for real: Beam's job servers, standalone clusters whose
master and workers are separate processes, and a pool of Python SDK workers.
Everything listens on free ports of 127.0.0.1 and is stopped (its whole
process group killed) when the `with` block ends. `make engines` fetches the
jars; a missing one fails the test with the reason, never skips it."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests import cloud

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = os.environ.get('BATCH_PREDICT_ENGINES', os.path.join(ROOT, '.cache', 'engines'))
FLINK_JOB_SERVER = os.path.join(ENGINES, 'beam-runners-flink-1.19-job-server-2.62.0.jar')
SPARK_JOB_SERVER = os.path.join(ENGINES, 'beam-runners-spark-3-job-server-2.62.0.jar')
FLINK_DIST = os.path.join(ENGINES, 'flink-1.19.3')
SPARK_DIST = os.path.join(ENGINES, 'spark-3.5.9')
FLINK_VERSION = '1.19'


def require(path: str) -> str:
  if not os.path.exists(path):
    pytest.fail(f'{path} is missing: `make engines` fetches it (needs a JDK and Maven)')
  if not shutil.which('java'):
    pytest.fail('java is not on PATH: Flink and Spark need a JDK (17 or newer)')
  return path


def die_with_parent():
  """For subprocess's preexec_fn: the child gets SIGTERM when the test
  process dies, however it dies (a CI time-out's SIGKILL included), so
  that no cluster or worker is left behind."""
  import ctypes
  ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start(cmd, log_path, env=None, cwd=ROOT):
  log = open(log_path, 'ab')
  try:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent)
  finally:
    log.close()


def _stop(process, seconds=15):
  """Kills the process's whole group (a worker pool's workers, a JVM's
  children), gently first."""
  if process is None or process.poll() is not None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
      if process is not None:
        os.killpg(process.pid, signal.SIGKILL)
    return
  with contextlib.suppress(ProcessLookupError):
    os.killpg(process.pid, signal.SIGTERM)
  try:
    process.wait(seconds)
  except subprocess.TimeoutExpired:
    pass
  with contextlib.suppress(ProcessLookupError):
    os.killpg(process.pid, signal.SIGKILL)
  process.wait(seconds)


def children(pid: int) -> list:
  """Pids of the processes whose parent is `pid` (from /proc)."""
  found = []
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    with contextlib.suppress(OSError):
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
      if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
        found.append(int(entry))
  return found


def command_line(pid: int) -> str:
  with contextlib.suppress(OSError):
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return f.read().replace(b'\0', b' ').decode(errors='replace')
  return ''


def wait_until(condition, seconds, what):
  deadline = time.time() + seconds
  while time.time() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError(f'{what}: not after {seconds} s')


class WorkerPool:
  """Beam's worker pool (`--environment_type=EXTERNAL`): it starts one Python
  SDK worker per environment the runner asks for, with the virtualenv's
  `python` (its `bin` first on PATH, as on a cluster's machines)."""
  def __init__(self, log_dir, env=None):
    self.port = cloud.free_port()
    self.log = os.path.join(log_dir, f'worker-pool-{self.port}.log')
    env = dict(env or os.environ)
    env['PATH'] = cloud.venv_bin() + os.pathsep + env.get('PATH', '')
    self.process = _start([sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
                           f'--service_port={self.port}'], self.log, env=env)
    cloud.wait_for_port(self.port, self.process)

  @property
  def config(self) -> str:
    return f'localhost:{self.port}'

  def workers_started(self) -> int:
    with open(self.log, errors='replace') as f:
      return sum('Starting worker with command' in line for line in f)

  def worker_pids(self) -> list:
    """The SDK workers running now (the pool's children)."""
    return [pid for pid in children(self.process.pid) if 'SdkHarness' in command_line(pid)]

  def stop(self):
    _stop(self.process)


@contextlib.contextmanager
def worker_pool(log_dir, env=None):
  pool = WorkerPool(str(log_dir), env)
  try:
    yield pool
  finally:
    pool.stop()


def _http_json(url, seconds=5):
  with urllib.request.urlopen(url, timeout=seconds) as response:
    return json.load(response)


class FlinkCluster:
  """A standalone Flink session cluster from Flink's own distribution: a
  JobManager and a TaskManager as separate JVMs, started as Flink's
  `jobmanager.sh` and `taskmanager.sh` start them (memory settings from
  Flink's BashJavaUtils)."""
  def __init__(self, work_dir, slots=2):
    self.dist = require(FLINK_DIST)
    self.dir = str(work_dir)
    self.conf = os.path.join(self.dir, 'conf')
    os.makedirs(self.conf, exist_ok=True)
    self.rest_port = cloud.free_port()
    settings = {
        'jobmanager.rpc.address': 'localhost', 'jobmanager.rpc.port': cloud.free_port(),
        'jobmanager.bind-host': 'localhost', 'rest.address': 'localhost',
        'rest.bind-address': 'localhost', 'rest.port': self.rest_port,
        'taskmanager.host': 'localhost', 'taskmanager.bind-host': 'localhost',
        'taskmanager.numberOfTaskSlots': slots, 'parallelism.default': slots,
        'jobmanager.memory.process.size': '1024m', 'taskmanager.memory.process.size': '2048m',
        # Beam's shuffles at parallelism 2 need more than Flink's default 64 MiB
        # of network buffers ("Insufficient number of network buffers").
        'taskmanager.memory.network.min': '256m', 'taskmanager.memory.network.max': '256m',
        # A lost TaskManager is noticed in seconds, not Flink's default 50 s.
        'heartbeat.timeout': 8000, 'heartbeat.interval': 2000,
        'taskmanager.data.port': 0, 'taskmanager.rpc.port': '0',
        'blob.server.port': cloud.free_port(), 'io.tmp.dirs': os.path.join(self.dir, 'tmp'),
        # As a production cluster is set up: a failed job restarts (Flink's
        # default without checkpointing is never).
        'restart-strategy.type': 'fixed-delay', 'restart-strategy.fixed-delay.attempts': 3,
        'restart-strategy.fixed-delay.delay': '2 s',
    }
    with open(os.path.join(self.conf, 'config.yaml'), 'w') as f:
      f.writelines(f'{k}: {v}\n' for k, v in settings.items())
    self.jobmanager = None
    self.taskmanagers = []

  @property
  def master(self) -> str:
    return f'localhost:{self.rest_port}'

  def _classpath(self):
    return os.path.join(self.dist, 'lib', '*')

  def _resource_params(self, which):
    """Flink's BashJavaUtils: (JVM options, dynamic properties)."""
    out = subprocess.run(
        ['java', '-cp', os.path.join(self.dist, 'bin', 'bash-java-utils.jar') + os.pathsep
         + self._classpath(), 'org.apache.flink.runtime.util.bash.BashJavaUtils',
         f'GET_{which}_RESOURCE_PARAMS', '--configDir', self.conf],
        capture_output=True, text=True, timeout=60, check=True).stdout
    results = [line.split(':', 1)[1] for line in out.splitlines()
               if line.startswith('BASH_JAVA_UTILS_EXEC_RESULT:')]
    return results[0].split(), results[1].split()

  def _java(self, jvm, main, dynamic, log_name):
    log = os.path.join(self.dir, log_name)
    return _start(['java', *jvm, f'-Dlog.file={log}', '-cp', self._classpath(), main,
                   '--configDir', self.conf, *dynamic], log + '.out')

  def overview(self):
    with contextlib.suppress(OSError, ValueError):
      return _http_json(f'http://{self.master}/overview')
    return None

  def start(self):
    jvm, dynamic = self._resource_params('JM')
    self.jobmanager = self._java(
        jvm, 'org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint',
        dynamic, 'jobmanager.log')
    wait_until(self.overview, 60, 'Flink JobManager REST endpoint')
    self.start_taskmanager()
    return self

  def start_taskmanager(self):
    jvm, dynamic = self._resource_params('TM')
    self.taskmanagers.append(self._java(
        jvm, 'org.apache.flink.runtime.taskexecutor.TaskManagerRunner', dynamic,
        f'taskmanager-{len(self.taskmanagers)}.log'))
    alive = sum(p.poll() is None for p in self.taskmanagers)
    wait_until(lambda: (self.overview() or {}).get('taskmanagers') == alive, 60,
               'Flink TaskManager registered')

  def kill_taskmanager(self):
    """SIGKILL, as a machine lost: no deregistration."""
    process = self.taskmanagers[-1]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)

  def restarts(self, job_id) -> int:
    """Failures the job recovered from or failed by (Flink's exception history)."""
    with contextlib.suppress(OSError, ValueError):
      return len(_http_json(f'http://{self.master}/jobs/{job_id}/exceptions')
                 .get('exceptionHistory', {}).get('entries', []))
    return 0

  def jobs(self):
    with contextlib.suppress(OSError, ValueError):
      return _http_json(f'http://{self.master}/jobs/overview')['jobs']
    return []

  def stop(self):
    for process in self.taskmanagers + [self.jobmanager]:
      _stop(process)


@contextlib.contextmanager
def running(cluster):
  """A FlinkCluster or SparkCluster, started, and stopped at the end."""
  try:
    yield cluster.start()
  finally:
    cluster.stop()


def flink_cluster(work_dir):
  return running(FlinkCluster(work_dir))


class SparkCluster:
  """A standalone Spark cluster from Spark's own jars: a master and a worker
  as separate JVMs (what `sbin/start-master.sh` and `start-worker.sh` run)."""
  def __init__(self, work_dir, cores=2):
    self.dist = require(SPARK_DIST)
    self.dir = str(work_dir)
    os.makedirs(self.dir, exist_ok=True)
    self.port = cloud.free_port()
    self.ui_port = cloud.free_port()
    self.cores = cores
    self.master_process = None
    self.workers = []

  @property
  def master(self) -> str:
    return f'spark://127.0.0.1:{self.port}'

  def _java(self, main, args, log_name):
    # The worker builds each executor's command from SPARK_HOME's jars/ (as
    # Spark's scripts set them: SPARK_HOME, and the Scala version its jars are for).
    env = dict(os.environ, SPARK_LOCAL_IP='127.0.0.1', SPARK_WORKER_DIR=self.dir,
               SPARK_HOME=self.dist, SPARK_SCALA_VERSION='2.12')
    return _start(['java', '-Xmx512m', '-cp', os.path.join(self.dist, 'jars', '*'), main, *args],
                  os.path.join(self.dir, log_name), env=env)

  def state(self):
    with contextlib.suppress(OSError, ValueError):
      return _http_json(f'http://127.0.0.1:{self.ui_port}/json/')
    return None

  def start(self):
    self.master_process = self._java(
        'org.apache.spark.deploy.master.Master',
        ['--host', '127.0.0.1', '--port', str(self.port), '--webui-port', str(self.ui_port)],
        'master.log')
    wait_until(self.state, 60, 'Spark master')
    self.start_worker()
    return self

  def start_worker(self):
    self.workers.append(self._java(
        'org.apache.spark.deploy.worker.Worker',
        ['--host', '127.0.0.1', '--cores', str(self.cores), '--memory', '2g',
         '--webui-port', str(cloud.free_port()), '--work-dir', os.path.join(self.dir, 'work'),
         self.master], f'worker-{len(self.workers)}.log'))
    alive = sum(p.poll() is None for p in self.workers)
    wait_until(lambda: sum(w.get('state') == 'ALIVE'
                           for w in (self.state() or {}).get('workers', [])) == alive,
               60, 'Spark worker registered')

  def stop(self):
    for process in self.workers + [self.master_process]:
      _stop(process)


def spark_cluster(work_dir):
  return running(SparkCluster(work_dir))
