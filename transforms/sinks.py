"""Sinks: where the embeddings go beside the run directory.

A sink is one writer behind one interface, as Beam's ml/rag/ingestion
`VectorDatabaseWriteConfig` is: its `create_write_transform()` takes the
PCollection of Embeddings. Adding a sink means one class here. The run
directory itself is not a sink: it is the contract every run writes
(transforms/write.py).

  BigQuerySink   --bigquery_table: load the embeddings table's rows
"""

import abc
import dataclasses

import apache_beam as beam
from apache_beam.io.gcp.bigquery import BigQueryDisposition
from apache_beam.io.gcp.bigquery import WriteToBigQuery

from run_directory.columns import to_bigquery_schema
from run_directory.tables import Table


class EmbeddingSink(abc.ABC):
  """A destination of the run's embeddings."""

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """A CamelCase name for the sink's transform labels."""

  @abc.abstractmethod
  def create_write_transform(self) -> beam.PTransform:
    """PCollection[Embedding] -> a PCollection complete only once the write
    is done (the run is published after it: PublishRun)."""


@dataclasses.dataclass(frozen=True)
class BigQuerySink(EmbeddingSink):
  """Appends the embeddings table's rows to a BigQuery table (file loads).

  bigquery_table: PROJECT:DATASET.TABLE or DATASET.TABLE; created with the
    table's schema if needed.
  table: the embeddings table (its columns and row converter).
  """
  bigquery_table: str
  table: Table

  @property
  def name(self) -> str:
    return "BigQuery"

  def create_write_transform(self) -> beam.PTransform:
    return _WriteRowsToBigQuery(self)


class _WriteRowsToBigQuery(beam.PTransform):

  def __init__(self, sink: BigQuerySink):
    super().__init__()
    self._sink = sink

  def expand(self, embeddings):
    sink = self._sink
    result = (
        embeddings
        | "ToRows" >> beam.Map(sink.table.to_row)
        | "WriteToBigQuery" >> WriteToBigQuery(
            sink.bigquery_table,
            schema={"fields": to_bigquery_schema(sink.table.columns)},
            method=WriteToBigQuery.Method.FILE_LOADS,
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_APPEND))
    # The load (and copy) jobs: Beam's job-triggering steps wait for their
    # jobs at the end of each bundle, so these are complete once the rows
    # are in the table.
    return ((result.destination_load_jobid_pairs,
             result.destination_copy_jobid_pairs)
            | "LoadAndCopyJobs" >> beam.Flatten())
