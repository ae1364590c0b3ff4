"""A real Cloud Storage emulator (gcp-storage-emulator) on 127.0.0.1."""
import contextlib
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_for_port(port: int, process, seconds=30):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'process exited with {process.returncode}')
    with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), 0.5):
      return
    time.sleep(0.2)
  raise RuntimeError(f'nothing listens on port {port} after {seconds} s')


def venv_bin() -> str:
  return os.path.dirname(sys.executable)


@contextlib.contextmanager
def storage_emulator():
  """Yields the emulator's URL, with STORAGE_EMULATOR_HOST set meanwhile."""
  port = free_port()
  # tests/storage_emulator.py: the emulator, with mediaLink encoded as Cloud Storage does.
  process = subprocess.Popen(
      [sys.executable, '-m', 'tests.storage_emulator', 'start', '--host=127.0.0.1',
       f'--port={port}', '--in-memory', '-q'],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  previous = os.environ.get('STORAGE_EMULATOR_HOST')
  try:
    wait_for_port(port, process)
    os.environ['STORAGE_EMULATOR_HOST'] = f'http://127.0.0.1:{port}'
    yield os.environ['STORAGE_EMULATOR_HOST']
  finally:
    if previous is None:
      os.environ.pop('STORAGE_EMULATOR_HOST', None)
    else:
      os.environ['STORAGE_EMULATOR_HOST'] = previous
    process.terminate()
    process.wait(10)


@contextlib.contextmanager
def emulated_bucket(name: str):
  """A bucket of a fresh storage emulator, with every client of this process
  (Beam's too) connecting anonymously."""
  from google.cloud import storage
  with storage_emulator():
    from tf_batch_predict.transforms.storage import use_anonymous_credentials_for_emulator
    use_anonymous_credentials_for_emulator()
    client = storage.Client.create_anonymous_client()
    yield client.create_bucket(name, project='test-project')


def upload_tree(bucket, local_dir: str, prefix: str) -> None:
  for root, _, files in os.walk(local_dir):
    for name in files:
      path = os.path.join(root, name)
      bucket.blob(f'{prefix}/{os.path.relpath(path, local_dir)}').upload_from_filename(path)
