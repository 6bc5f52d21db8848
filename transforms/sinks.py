"""Sinks: where the embeddings go beside the run directory.

A sink is one writer behind one interface, as Beam's ml/rag/ingestion
`VectorDatabaseWriteConfig` is: its `create_write_transform()` is applied by
the publish stage (transforms/publish.py), once the run's guardrails passed,
to the paths of the embeddings table's BigQuery-loadable files (Avro,
Parquet or JSON lines, in the staging directory); the run is published once
its output is complete. Taking the files the run wrote, rather than the
embeddings themselves, means nothing waits in memory for the checks, and the
sink gets exactly the rows `bigquery/load.sh` would load. Adding a sink means
one class here. The run directory itself is not a sink: it is the contract
every run writes (transforms/write.py).

  BigQuerySink   --bigquery_table: load the embeddings table's rows
"""

import abc
import dataclasses
import json

import apache_beam as beam
from apache_beam.io.avroio import ReadAllFromAvro
from apache_beam.io.gcp.bigquery import BigQueryDisposition
from apache_beam.io.gcp.bigquery import WriteToBigQuery
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.io.textio import ReadAllFromText

from run_directory.columns import Column
from run_directory.columns import to_bigquery_schema
from run_directory.layout import AVRO
from run_directory.layout import JSONL
from run_directory.layout import PARQUET


class EmbeddingSink(abc.ABC):
  """A destination of the run's embeddings."""

  @property
  @abc.abstractmethod
  def name(self) -> str:
    """A CamelCase name for the sink's transform labels."""

  @abc.abstractmethod
  def create_write_transform(self) -> beam.PTransform:
    """PCollection[path of a BigQuery-loadable file of the embeddings table]
    -> a PCollection complete only once the write is done."""


def read_bigquery_rows(file_format: str) -> beam.PTransform:
  """PCollection[path] -> the rows of those files, as BigQuery-shaped dicts."""
  if file_format == AVRO:
    return ReadAllFromAvro()
  if file_format == PARQUET:
    return ReadAllFromParquet()
  if file_format == JSONL:
    return ReadAllFromText() | beam.Map(json.loads)
  raise ValueError(f"No reader of BigQuery-loadable {file_format!r} files")


@dataclasses.dataclass(frozen=True)
class BigQuerySink(EmbeddingSink):
  """Appends the embeddings table's rows to a BigQuery table (file loads).

  bigquery_table: PROJECT:DATASET.TABLE or DATASET.TABLE; created with the
    table's schema if needed.
  columns: the embeddings table's columns (its schema).
  file_format: the format of the files it is given (--bigquery_format).
  """
  bigquery_table: str
  columns: tuple[Column, ...]
  file_format: str

  @property
  def name(self) -> str:
    return "BigQuery"

  def create_write_transform(self) -> beam.PTransform:
    return _WriteFilesToBigQuery(self)


class _WriteFilesToBigQuery(beam.PTransform):

  def __init__(self, sink: BigQuerySink):
    super().__init__()
    self._sink = sink

  def expand(self, paths):
    sink = self._sink
    result = (
        paths
        | "ReadRows" >> read_bigquery_rows(sink.file_format)
        | "WriteToBigQuery" >> WriteToBigQuery(
            sink.bigquery_table,
            schema={"fields": to_bigquery_schema(sink.columns)},
            method=WriteToBigQuery.Method.FILE_LOADS,
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_APPEND))
    # The load (and copy) jobs: Beam's job-triggering steps wait for their
    # jobs at the end of each bundle, so these are complete once the rows
    # are in the table.
    return ((result.destination_load_jobid_pairs,
             result.destination_copy_jobid_pairs)
            | "LoadAndCopyJobs" >> beam.Flatten())
