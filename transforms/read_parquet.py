"""Read Parquet files as chunks of pyarrow RecordBatches, one row group
slice at a time, never a whole file in memory."""
import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.records import PARQUET, RawChunk

ROWS_PER_CHUNK = 4096


class ReadParquetBatches(beam.DoFn):
  """FileMetadata -> RawChunks holding one RecordBatch each; positions are
  row indexes within the file."""
  def __init__(self, columns=None):
    self._columns = columns  # None: all columns

  def process(self, metadata):
    path = metadata.path
    with FileSystems.open(path) as f:
      parquet = pq.ParquetFile(f)
      names = set(parquet.schema_arrow.names)
      columns = None if self._columns is None else [
          c for c in self._columns if c in names]
      row = 0
      for batch in parquet.iter_batches(batch_size=ROWS_PER_CHUNK, columns=columns):
        yield RawChunk([(path, 0)], list(range(row, row + batch.num_rows)), batch,
                       kind=PARQUET)
        row += batch.num_rows
