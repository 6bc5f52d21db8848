"""The Vertex AI Vector Search export: the batch layout that an index build
or update reads (cloud.google.com/vertex-ai/docs/vector-search/format-structure).

  vertex/datapoints-SSSSS-of-NNNNN.json   one JSON object a line:
      {"id", "embedding"[, "restricts"][, "numeric_restricts"]
       [, "crowding_tag"]}, no other key
  vertex/delete/deleted-SSSSS-of-NNNNN.txt   (delta only) one id a line

Data files lie directly under vertex/, at most MAX_FILES of them, and the only
sub-folder is delete/. The manifest lists them as outputs.vertex.json and
outputs.vertex.delete. A datapoint's embedding is the embeddings (or chunks)
table's float32 vector, each value written as the float64 that equals it, so
that it parses back to the identical float32.

Every run with the export also writes the vertex_state table
(vertex_state/*.jsonl: id, datapoint_hash, for every datapoint): the state
its export leaves the index in. A delta run compares its datapoints with the
previous run's state, so that a chain of delta runs stays exact.

Datapoints are rendered here from a row's id, vector and carried fields
(run_directory/records.py CarriedFields): a restrict field becomes
{"namespace": field, "allow": [tokens]}, a numeric one
{"namespace": field, "value_int": n} for an integer or "value_double" for a
float, the crowding tag field "crowding_tag".
"""

import dataclasses
import hashlib
import json
from typing import Mapping, Tuple

from apache_beam.io.filesystems import FileSystems

from run_directory.columns import Column
from run_directory.columns import REQUIRED
from run_directory.layout import VERTEX
from run_directory.layout import VERTEX_DELETE
from run_directory.layout import VERTEX_JSON
from run_directory.layout import VERTEX_STATE
from run_directory.tables import Table

# What a carried field is for (records.py CarriedFields' kinds).
RESTRICT = "restrict"
NUMERIC_RESTRICT = "numeric_restrict"
CROWDING_TAG = "crowding_tag"

FULL = "full"
DELTA = "delta"
EXPORT_MODES = (FULL, DELTA)
# Vertex reads at most this many files in a batch root.
MAX_FILES = 5000
# Rows per data file: a JSON line of a 384-float vector is ~8 KB, so a shard
# held in memory while it is sorted and written is ~160 MB; 100M datapoints
# still fit in MAX_FILES files.
DATAPOINT_ROWS_PER_SHARD = 20_000
DELETED_ROWS_PER_SHARD = 1_000_000
DATAPOINT_KEYS = frozenset(
    {"id", "embedding", "restricts", "numeric_restricts", "crowding_tag"})


@dataclasses.dataclass(frozen=True)
class VertexExportSpec:
  """--vertex_export and the fields it writes with each datapoint."""
  mode: str  # FULL or DELTA
  restrict_fields: Tuple[str, ...] = ()
  numeric_restrict_fields: Tuple[str, ...] = ()
  crowding_tag_field: str = ""


def datapoint_prefixes(output_dir: str) -> dict:
  """{format: shard prefix} of the data files, directly under vertex/."""
  return {VERTEX_JSON: FileSystems.join(output_dir, VERTEX, "datapoints")}


def deleted_prefixes(output_dir: str) -> dict:
  """{format: shard prefix} of the delete files, under vertex/delete/."""
  return {VERTEX_DELETE: FileSystems.join(output_dir, VERTEX, VERTEX_DELETE,
                                          "deleted")}


def datapoint(item) -> dict:
  """The Vertex datapoint of an Embedding or a Chunk (its id, its vector,
  and its carried fields)."""
  row = {"id": item.id,
         "embedding": [float(value) for value in item.embedding]}
  restricts, numeric = [], []
  for kind, name, values in item.fields:
    if kind == RESTRICT:
      restricts.append({"namespace": name, "allow": list(values)})
    elif kind == NUMERIC_RESTRICT:
      value = values[0]
      key = "value_int" if isinstance(value, int) else "value_double"
      numeric.append({"namespace": name, key: value})
    elif kind == CROWDING_TAG:
      row["crowding_tag"] = values[0]
  if restricts:
    row["restricts"] = restricts
  if numeric:
    row["numeric_restricts"] = numeric
  return row


def datapoint_hash(row: Mapping) -> str:
  """A fingerprint of a datapoint: equal exactly when its id, vector and
  restricts are."""
  line = json.dumps(row, sort_keys=True, separators=(",", ":"),
                    ensure_ascii=False)
  return hashlib.blake2b(line.encode("utf-8"), digest_size=16).hexdigest()


def state_row(row: Mapping) -> dict:
  """The vertex_state row of a datapoint."""
  return {"id": row["id"], "datapoint_hash": datapoint_hash(row)}


def _by_id(row: Mapping) -> tuple:
  return (row["id"],)


def _id_line(document_id: str) -> dict:
  return {"id": document_id}


def _by_itself(document_id: str) -> tuple:
  return (document_id,)


def _as_is(row: dict) -> dict:
  return row


# Datapoint rows (dicts) -> vertex/*.json; written as JSON lines.
DATAPOINT_TABLE = Table(name=VERTEX, columns=(), sort_key=_by_id,
                        to_row=_as_is, rows_per_shard=DATAPOINT_ROWS_PER_SHARD)
# Removed ids (str) -> vertex/delete/*.txt; written one id a line.
DELETED_TABLE = Table(name=f"{VERTEX}_{VERTEX_DELETE}", columns=(),
                      sort_key=_by_itself, to_row=_id_line,
                      rows_per_shard=DELETED_ROWS_PER_SHARD)
# {id, datapoint_hash} of every datapoint the index holds after this run.
STATE_COLUMNS = (
    Column("id", "STRING", REQUIRED, "The datapoint's id."),
    Column("datapoint_hash", "STRING", REQUIRED,
           "blake2b-128 of the datapoint's JSON line (sorted keys)."),
)
STATE_TABLE = Table(name=VERTEX_STATE, columns=STATE_COLUMNS,
                    sort_key=_by_id, to_row=_as_is,
                    rows_per_shard=DELETED_ROWS_PER_SHARD)
