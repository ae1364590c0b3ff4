"""Write blocks of JSON lines as sharded files `PREFIX-SSSSS-of-NNNNN.jsonl`.

Beam's text sink already writes to temporary files and renames them when the
job commits; each element here is many lines joined, which the sink writes
with one trailing newline like any other element.
"""
import apache_beam as beam


class WriteJsonlShards(beam.PTransform):
  def __init__(self, file_prefix: str):
    super().__init__()
    self._file_prefix = file_prefix

  def expand(self, blocks):
    return blocks | beam.io.WriteToText(
        self._file_prefix, file_name_suffix='.jsonl',
        shard_name_template='-SSSSS-of-NNNNN')
