"""The run directory's tables, each declared once: its columns, its order,
and how its elements become rows.

A `Table` is what every writer and reader of a table goes by: the columns
(from which the BigQuery, Arrow, Avro and tf.Example schemas are rendered),
the sort key that orders and shards its rows, the row converters, and how
many rows a shard holds. Adding a table means one factory here (or beside
it, as embeddings.py): its columns, its sort key and its converter.

  embedding_table(spec, run_id, model_fingerprint)  Embedding -> row
  chunk_table(spec, run_id, model_fingerprint)      Chunk -> row
  duplicate_table(run_id, model_fingerprint)        {id, group_id, ...} -> row
  neighbour_table(run_id, model_fingerprint)        (id, [(score, neighbour
                                                    id)]) -> rows
  error_table(run_id)                               DeadLetter -> row
"""

import dataclasses
import functools
import itertools
import operator
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa

from run_directory import embeddings as embeddings_lib
from run_directory.arrow import rows_to_arrow
from run_directory.arrow import rows_to_record_batch
from run_directory.columns import Column
from run_directory.columns import NULLABLE
from run_directory.columns import REQUIRED
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.layout import CHUNKS
from run_directory.layout import DUPLICATES
from run_directory.layout import EMBEDDINGS
from run_directory.layout import ERRORS
from run_directory.layout import NEIGHBOURS
from run_directory.records import DeadLetter
from run_directory.records import document_of_chunk

# Rows per shard. Memory: one worker holds all rows of a shard while it sorts
# and writes them (plus one converted batch), so rows_per_shard bounds a
# worker's memory:
# with N = ceil(rows / rows_per_shard) shards, hashing gives each about
# rows / N <= rows_per_shard rows (give or take a few times its square root).
# A fixed num_shards gives rows / num_shards instead. Shards aim at about
# SHARD_BYTES of rows in memory.
SHARD_BYTES = 256 * 1024 * 1024
# An embedding row in memory: its float32 vectors (1.5 KiB at H=384), its text
# and the Python objects around them (~3 KiB together): ~4.5 KiB, so 20_000
# rows is ~90 MiB; more rows per shard would only make fewer, bigger files.
EMBEDDING_ROWS_PER_SHARD = 20_000
_EMBEDDING_ROW_OVERHEAD_BYTES = 3 * 1024
# With sequence output a row also holds its per-token vectors; assume this
# many tokens per row (the real count is only known when the rows exist).
_TOKENS_PER_ROW_ESTIMATE = 128
# Neighbour rows are small dicts (two ids, a rank, a score: ~0.5 KiB) and
# error rows short records (~1 KiB of source, detail and snippet), so more of
# them fit in the same memory: ~100 MiB per shard either way.
NEIGHBOUR_ROWS_PER_SHARD = 200_000
ERROR_ROWS_PER_SHARD = 100_000


def default_embedding_rows_per_shard(spec: EmbeddingTableSpec) -> int:
  """EMBEDDING_ROWS_PER_SHARD, fewer when rows are big (see SHARD_BYTES)."""
  vectors = 1 + len(spec.encoder_layers)
  row_bytes = 4 * spec.hidden_size * vectors + _EMBEDDING_ROW_OVERHEAD_BYTES
  if spec.sequence_output:
    value_bytes = 2 if spec.sequence_dtype == "float16" else 4
    row_bytes += _TOKENS_PER_ROW_ESTIMATE * (
        value_bytes * spec.hidden_size + 8)
  return max(1, min(EMBEDDING_ROWS_PER_SHARD, SHARD_BYTES // row_bytes))


@dataclasses.dataclass(frozen=True)
class RowsPerElement:
  """A table whose elements hold several rows each.

  The neighbours table's element is a query with its K neighbours: K times
  fewer elements cross the pipeline's stages, and its rows are made only
  when a shard is written.

  rows: element -> its rows (what the table's sort_key and to_row take).
  key: element -> the first component of its rows' sort keys, which they
    all share: the key its shard is drawn from.
  count: element -> how many rows it holds (shards are sized by rows).
  """
  rows: Callable[[Any], Iterable]
  key: Callable[[Any], str]
  count: Callable[[Any], int]


@dataclasses.dataclass(frozen=True)
class Table:
  """A table of the run directory: everything its writers and readers need.

  name: the table's name: its directory, its manifest key, its Avro record.
  columns: its columns, from which every schema is rendered (columns.py).
  sort_key: row -> tuple; rows are sorted by it within a shard and
    sharded by a hash of its first component (a str: `shard_key`).
  to_row: row -> dict in the BigQuery shape (Avro, JSON lines).
  to_arrow: list of rows -> pa.RecordBatch typed by
    `arrow.to_arrow_schema(columns)` (Parquet); None if never needed.
  to_examples: list of rows -> pa.RecordBatch in the tf.Example layout
    (TFRecord); None if never needed.
  rows_per_shard: rows one shard holds when the shard count is not fixed:
    a worker holds a whole shard in memory while it sorts and writes it.
  rows_per_element: how an element of the table's PCollection holds rows;
    None when every element is one row (all tables but the neighbours).
  """
  name: str
  columns: tuple[Column, ...]
  sort_key: Callable[[Any], tuple]
  to_row: Callable[[Any], dict]
  to_arrow: Optional[Callable[[list], pa.RecordBatch]] = None
  to_examples: Optional[Callable[[list], pa.RecordBatch]] = None
  rows_per_shard: int = EMBEDDING_ROWS_PER_SHARD
  rows_per_element: Optional[RowsPerElement] = None

  def shard_key(self, element) -> str:
    """The key an element's shard is drawn from (all of its rows')."""
    if self.rows_per_element is None:
      return self.sort_key(element)[0]
    return self.rows_per_element.key(element)

  def rows_of(self, elements: Iterable) -> Iterable:
    """The rows the elements hold."""
    if self.rows_per_element is None:
      return elements
    return itertools.chain.from_iterable(
        map(self.rows_per_element.rows, elements))


def _convert_rows(elements: list, to_row, convert, columns) -> pa.RecordBatch:
  return convert([to_row(element) for element in elements], columns)


def table_of_rows(name: str, columns: Sequence[Column],
                  sort_key: Callable[[Any], tuple],
                  to_row: Callable[[Any], dict],
                  rows_per_shard: int) -> Table:
  """A table whose rows are flat dicts: every file format from `to_row`."""
  columns = tuple(columns)
  return Table(
      name=name,
      columns=columns,
      sort_key=sort_key,
      to_row=to_row,
      to_arrow=functools.partial(
          _convert_rows, to_row=to_row, convert=rows_to_arrow,
          columns=columns),
      to_examples=functools.partial(
          _convert_rows, to_row=to_row, convert=rows_to_record_batch,
          columns=columns),
      rows_per_shard=rows_per_shard)


# The run and model every row of a table names.
_RUN_COLUMNS = (
    Column("run_id", "STRING", REQUIRED, "The run that wrote this row."),
    Column(
        "model_fingerprint", "STRING", REQUIRED,
        "Fingerprint of the model that computed the vectors."),
)
_SCORE_COLUMN = Column("score", "FLOAT", REQUIRED, "Cosine similarity.")

NEIGHBOUR_COLUMNS = (
    Column("id", "STRING", REQUIRED, "The query document."),
    Column("rank", "INTEGER", REQUIRED, "1 for the nearest neighbour."),
    Column("neighbour_id", "STRING", REQUIRED, "The neighbouring document."),
    _SCORE_COLUMN,
) + _RUN_COLUMNS

# --neighbours_level chunk: the rows are chunks, and name their documents.
CHUNK_NEIGHBOUR_COLUMNS = (
    Column("id", "STRING", REQUIRED, "The query chunk."),
    Column("document_id", "STRING", REQUIRED, "The query chunk's document."),
    Column("rank", "INTEGER", REQUIRED, "1 for the nearest neighbour."),
    Column("neighbour_id", "STRING", REQUIRED,
           "The neighbouring chunk, of another document."),
    Column("neighbour_document_id", "STRING", REQUIRED,
           "The neighbouring chunk's document."),
    _SCORE_COLUMN,
) + _RUN_COLUMNS

# --duplicate_threshold: one row per document in a near-duplicate group.
DUPLICATE_COLUMNS = (
    Column("id", "STRING", REQUIRED, "A document in a group of two or more."),
    Column("group_id", "STRING", REQUIRED,
           "The group: its smallest document id."),
    Column("group_size", "INTEGER", REQUIRED, "Documents in the group."),
    Column("representative", "BOOLEAN", REQUIRED,
           "Whether this document represents its group (id == group_id)."),
    Column("max_score", "FLOAT", REQUIRED,
           "Its highest cosine to another document of the group."),
) + _RUN_COLUMNS

# DeadLetter's fields, plus the run. A test keeps the two in step.
ERROR_COLUMNS = (
    Column("source", "STRING", REQUIRED, "The file the record came from."),
    Column("position", "INTEGER", REQUIRED, "Line, row or record in source."),
    Column("stage", "STRING", REQUIRED, "read, validate or embed."),
    Column("reason", "STRING", REQUIRED, "Machine-readable reason."),
    Column("detail", "STRING", NULLABLE, "Human-readable explanation."),
    Column("snippet", "STRING", NULLABLE, "The start of the raw record."),
    Column("id", "STRING", NULLABLE, "Document id, when known."),
    Column("run_id", "STRING", REQUIRED, "The run that wrote this row."),
)


# A flat row's values, typed as their column says. FLOAT is rounded to
# float32 as the files store it, so every format holds the same value.
_TYPED = {
    "STRING": str,
    "INTEGER": int,
    "FLOAT": lambda value: float(np.float32(value)),
    "BOOLEAN": bool,
}


def flat_row(element: Mapping, columns: Sequence[Column],
             given: Mapping = None) -> dict:
  """The row of a flat table: each column's value, in column order, from
  `given` (the run's ids) or else from the element (a dict of the same
  names), typed as the column says; a NULLABLE column may be absent."""
  given = given or {}
  row = {}
  for column in columns:
    if column.name in given:
      value = given[column.name]
    elif column.mode == NULLABLE:
      value = element.get(column.name)
    else:
      value = element[column.name]
    row[column.name] = None if value is None else _TYPED[column.type](value)
  return row


def _run_ids(run_id: str, model_fingerprint: str) -> dict:
  """The values of _RUN_COLUMNS."""
  return {"run_id": run_id, "model_fingerprint": model_fingerprint}


def neighbour_to_row(neighbour: Mapping, run_id: str, model_fingerprint: str,
                     chunks: bool = False) -> dict:
  """A neighbours table row from {id, rank, neighbour_id, score} (chunks:
  and document_id, neighbour_document_id)."""
  return flat_row(neighbour,
                  CHUNK_NEIGHBOUR_COLUMNS if chunks else NEIGHBOUR_COLUMNS,
                  _run_ids(run_id, model_fingerprint))


def duplicate_to_row(member: Mapping, run_id: str,
                     model_fingerprint: str) -> dict:
  """A duplicates table row from {id, group_id, group_size, representative,
  max_score}."""
  return flat_row(member, DUPLICATE_COLUMNS,
                  _run_ids(run_id, model_fingerprint))


def dead_letter_to_row(d: DeadLetter, run_id: str) -> dict:
  """An errors table row: the DeadLetter's fields and the run."""
  row = d.to_json_dict()
  row["run_id"] = run_id
  return row


def embedding_sort_key(e) -> tuple:
  return (e.id,)


def chunk_sort_key(c) -> tuple:
  """By document, then place: a document's chunks share a shard, in order."""
  return (c.document_id, c.chunk_index)


def neighbour_sort_key(neighbour: Mapping) -> tuple:
  return (neighbour["id"], int(neighbour["rank"]))


def duplicate_sort_key(member: Mapping) -> tuple:
  """By group, then id: a group's rows share a shard."""
  return (member["group_id"], member["id"])


def error_sort_key(d) -> tuple:
  return (d.source, d.position, d.stage, d.reason, d.id or "")


def embedding_table(spec: EmbeddingTableSpec, run_id: str,
                    model_fingerprint: str,
                    rows_per_shard: Optional[int] = None) -> Table:
  """The embeddings table (Embedding elements), sorted by id."""
  return _vectors_table(
      EMBEDDINGS, embeddings_lib.embedding_columns(spec), embedding_sort_key,
      (embeddings_lib.embedding_to_row, embeddings_lib.embeddings_to_arrow,
       embeddings_lib.embeddings_to_record_batch),
      spec, run_id, model_fingerprint, rows_per_shard)


def chunk_table(spec: EmbeddingTableSpec, run_id: str,
                model_fingerprint: str,
                rows_per_shard: Optional[int] = None) -> Table:
  """The chunks table (Chunk elements, --chunk_size), sorted by (document
  id, chunk index)."""
  return _vectors_table(
      CHUNKS, embeddings_lib.chunk_columns(spec), chunk_sort_key,
      (embeddings_lib.chunk_to_row, embeddings_lib.chunks_to_arrow,
       embeddings_lib.chunks_to_record_batch),
      spec, run_id, model_fingerprint, rows_per_shard)


def _vectors_table(name, columns, sort_key, converters, spec, run_id,
                   model_fingerprint, rows_per_shard) -> Table:
  """A table of vectors rows: converters (to_row, to_arrow, to_examples)
  take the spec and the run's ids."""
  ids = dict(spec=spec, run_id=run_id, model_fingerprint=model_fingerprint)
  to_row, to_arrow, to_examples = (functools.partial(convert, **ids)
                                   for convert in converters)
  return Table(
      name=name, columns=columns, sort_key=sort_key, to_row=to_row,
      to_arrow=to_arrow, to_examples=to_examples,
      rows_per_shard=(default_embedding_rows_per_shard(spec)
                      if rows_per_shard is None else rows_per_shard))


# The neighbours table's elements, a query's neighbours, are (query id,
# [(score, neighbour id)] best first). The functions taking them are not
# annotated: Beam checks a Map's input against its function's annotations,
# and the scores may be numpy floats.


def neighbour_rows(query_neighbours, chunks: bool = False) -> Iterable[dict]:
  """A query's rows of the neighbours table, {id, rank, neighbour_id,
  score}, rank 1 the best. chunks: the ids are chunks', and the rows also
  name both chunks' documents."""
  query_id, neighbours = query_neighbours
  for rank, (score, neighbour_id) in enumerate(neighbours, start=1):
    row = {
        "id": query_id,
        "rank": rank,
        "neighbour_id": neighbour_id,
        "score": float(score),
    }
    if chunks:
      row["document_id"] = document_of_chunk(query_id)
      row["neighbour_document_id"] = document_of_chunk(neighbour_id)
    yield row


def _neighbour_count(query_neighbours) -> int:
  return len(query_neighbours[1])


def neighbour_table(run_id: str, model_fingerprint: str,
                    rows_per_shard: int = NEIGHBOUR_ROWS_PER_SHARD,
                    chunks: bool = False) -> Table:
  """The neighbours table: a query's neighbours per element, rows {id, rank,
  neighbour_id, score} sorted by (id, rank): all of an id's neighbours are
  in one shard. chunks: of --neighbours_level chunk, whose rows also name
  both documents."""
  table = table_of_rows(
      NEIGHBOURS, CHUNK_NEIGHBOUR_COLUMNS if chunks else NEIGHBOUR_COLUMNS,
      neighbour_sort_key,
      functools.partial(neighbour_to_row, run_id=run_id,
                        model_fingerprint=model_fingerprint, chunks=chunks),
      rows_per_shard)
  return dataclasses.replace(table, rows_per_element=RowsPerElement(
      rows=functools.partial(neighbour_rows, chunks=chunks),
      key=operator.itemgetter(0), count=_neighbour_count))


def duplicate_table(run_id: str, model_fingerprint: str,
                    rows_per_shard: int = NEIGHBOUR_ROWS_PER_SHARD) -> Table:
  """The duplicates table (--duplicate_threshold), sorted by (group_id, id)."""
  return table_of_rows(
      DUPLICATES, DUPLICATE_COLUMNS, duplicate_sort_key,
      functools.partial(duplicate_to_row, run_id=run_id,
                        model_fingerprint=model_fingerprint),
      rows_per_shard)


def error_table(run_id: str,
                rows_per_shard: int = ERROR_ROWS_PER_SHARD) -> Table:
  """The errors table (DeadLetter elements), sorted by (source, position,
  stage, reason, id): all of a source's errors are in one shard. Written as
  JSON lines only."""
  return Table(
      name=ERRORS,
      columns=ERROR_COLUMNS,
      sort_key=error_sort_key,
      to_row=functools.partial(dead_letter_to_row, run_id=run_id),
      rows_per_shard=rows_per_shard)
