"""Cloud Storage and other remote file systems: the emulator, and model
staging.

Imported by every SDK worker at start (the job adds this module to Beam's
`--beam_plugins`), so that the emulator setting takes effect in each process
before Beam first touches a bucket.
"""
import hashlib
import logging
import os
import shutil
import tempfile
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from tf_batch_predict.transforms import file_patterns
from tf_batch_predict.transforms.file_patterns import is_local

_LOG = logging.getLogger(__name__)


def use_anonymous_credentials_for_emulator() -> None:
  """Under STORAGE_EMULATOR_HOST, connect anonymously at once.

  Beam's GCS file system looks for Google credentials first, with retries:
  about 20 s per process before it connects anonymously, which is all an
  emulator needs. Beam has no option for this (`--no_auth` is not read by
  its GCS client), so its credential cache is filled with "none".
  """
  if not os.environ.get('STORAGE_EMULATOR_HOST'):
    return
  try:
    from apache_beam.internal.gcp import auth
    with auth._Credentials._credentials_lock:  # pylint: disable=protected-access
      auth._Credentials._credentials = None  # pylint: disable=protected-access
      auth._Credentials._credentials_init = True  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # another Beam: it will just look longer
    _LOG.warning('Could not skip the credential look-up for the storage emulator')


use_anonymous_credentials_for_emulator()


def staging_root() -> str:
  """Where remote models are staged: $BATCH_PREDICT_STAGING_DIR, else a
  folder of the system's temporary directory."""
  return os.environ.get('BATCH_PREDICT_STAGING_DIR') or os.path.join(
      tempfile.gettempdir(), 'batch-predict-models')


def stage_model(path: str) -> str:
  """A local directory holding the SavedModel at `path`.

  TensorFlow reads `gs://` with its own client, which cannot be pointed at an
  emulator and duplicates what Beam's file systems do; so a remote model is
  copied once per machine through Beam's file systems into a directory named
  after its path. The copy is made in a private temporary directory and
  renamed into place, so no process ever loads a half-copied model: when two
  threads or processes stage at once, the first rename wins and the other
  copy is discarded.
  """
  if is_local(path):
    return path
  root = staging_root()
  destination = os.path.join(root, hashlib.sha256(path.encode()).hexdigest()[:24])
  if os.path.isdir(destination):
    return destination
  os.makedirs(root, exist_ok=True)
  partial = f'{destination}.partial-{os.getpid()}-{uuid.uuid4().hex}'
  prefix = path.rstrip('/') + '/'
  files = file_patterns.match(file_patterns.escape(prefix) + '**')  # the model's name is no pattern
  try:
    # Everything under the model is copied, `assets.extra/` (TF Serving's
    # warm-up requests, which loading ignores) included.
    for metadata in files:
      relative = metadata.path[len(prefix):]
      if not relative or relative.endswith('/'):
        continue  # a directory placeholder object
      target = os.path.join(partial, relative)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      # As stored: Beam would otherwise decompress a `.gz` asset.
      with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED
                            ) as source, open(target, 'wb') as sink:
        shutil.copyfileobj(source, sink, 8 << 20)
  except BaseException:  # a failed copy leaves nothing behind
    shutil.rmtree(partial, ignore_errors=True)
    raise
  try:
    os.rename(partial, destination)
    _LOG.info('Staged model %s into %s (%d files)', path, destination, len(files))
  except OSError:  # another thread or process staged it first
    shutil.rmtree(partial, ignore_errors=True)
  return destination
