"""gcp-storage-emulator's command, with the object's `mediaLink` as Cloud
Storage writes it: the object name percent-encoded. The emulator writes the
name as it is, so a download through mediaLink (Beam's GCS reader uses it)
of `d/q?.jsonl` or `a%20b.jsonl` asks for another object; the client
library's own URLs (which encode the name) always worked."""
import sys
import urllib.parse

from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

_make_object_resource = objects._make_object_resource  # pylint: disable=protected-access


def _object_resource(base_url, bucket_name, object_name, *args, **kwargs):
  resource = _make_object_resource(base_url, bucket_name, object_name, *args, **kwargs)
  link = resource.get('mediaLink')
  if isinstance(link, str):
    raw = f'/o/{object_name}?'
    resource['mediaLink'] = link.replace(raw, f'/o/{urllib.parse.quote(object_name, safe="")}?', 1)
  return resource


objects._make_object_resource = _object_resource  # pylint: disable=protected-access

if __name__ == '__main__':
  sys.exit(main())
