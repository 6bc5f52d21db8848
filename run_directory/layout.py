"""Where everything is in a run directory: the names of its files and parts.

  RUN_DIR/
    manifest.json                                    written last: published
    <table>/tfrecord/<table>-SSSSS-of-NNNNN.tfrecord  tf.train.Example
    <table>/<format>/<table>-SSSSS-of-NNNNN.<format>  avro, parquet or jsonl
    <table>/bigquery_schema.json
    errors/errors-SSSSS-of-NNNNN.jsonl
    similarity.png, projector/{vectors,metadata}.tsv (when asked for)
    ann_index/index.faiss, ann_index/ids.jsonl       --neighbours_mode ann
    bigquery/load.sh, bigquery/vector_search.sql     bq load, vector index
    report.html                                      the run report, every run
    .run.lock                                        while a run writes here
    .staging-<run_id>/...                            until the run publishes
    .staging-<run_id>/refused.json                   a run a guardrail refused
    .staging-<run_id>/spill/...                      the local runner's groupings

The manifest lists every file by its path relative to the run directory
(`relative_to_run_dir`, `resolve`), so a run directory can be moved or copied.
"""

from apache_beam.io.filesystems import FileSystems

MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".run.lock"
REFUSAL_FILE = "refused.json"
STAGING_PREFIX = ".staging-"

# Tables: sub-directories of the run directory and keys of the manifest's
# "outputs".
EMBEDDINGS = "embeddings"
CHUNKS = "chunks"  # with --chunk_size
NEIGHBOURS = "neighbours"
DUPLICATES = "duplicates"  # with --duplicate_threshold
ERRORS = "errors"
TABLES = (EMBEDDINGS, CHUNKS, NEIGHBOURS, DUPLICATES, ERRORS)

# File formats: sub-directories of a table and keys of its manifest entry.
TFRECORD = "tfrecord"
AVRO = "avro"
PARQUET = "parquet"
JSONL = "jsonl"
BIGQUERY_FORMATS = (AVRO, PARQUET, JSONL)
FORMATS = BIGQUERY_FORMATS + (TFRECORD,)
# The Vertex AI Vector Search export (--vertex_export; run_directory/vertex.py):
# vertex/<datapoints shards>.json and vertex/delete/<deleted shards>.txt,
# listed as outputs.vertex.json and outputs.vertex.delete.
VERTEX = "vertex"
VERTEX_JSON = "json"
VERTEX_DELETE = "delete"
VERTEX_STATE = "vertex_state"  # table: id, datapoint_hash of each datapoint
FILE_SUFFIXES = {
    TFRECORD: ".tfrecord",
    AVRO: ".avro",
    PARQUET: ".parquet",
    JSONL: ".jsonl",
    VERTEX_JSON: ".json",  # the suffix Vertex AI reads as JSON lines
    VERTEX_DELETE: ".txt",
}
# Key of a table's BigQuery schema file in its manifest entry, and the file.
BIGQUERY_SCHEMA = "bigquery_schema"
SCHEMA_FILE_NAME = "bigquery_schema.json"

# Pictures: top-level outputs of their own (manifest keys, then files).
SIMILARITY_PLOT = "similarity_plot"
SIMILARITY_PLOT_FILE = "similarity.png"
PROJECTOR = "projector"
# The FAISS index a --neighbours_mode ann run found its neighbours with
# (run_directory/ann_index.py): a top-level output ("ann_index": {"faiss":
# [index file], "ids": [ids file]}) and its directory.
ANN_INDEX = "ann_index"
ANN_INDEX_FAISS = "faiss"
ANN_INDEX_IDS = "ids"
ANN_INDEX_FILES = {ANN_INDEX_FAISS: "index.faiss", ANN_INDEX_IDS: "ids.jsonl"}
# The run report: one self-contained HTML page (transforms/report/).
REPORT = "report"
REPORT_FILE = "report.html"

# The run's BigQuery scripts (bigquery_scripts.py), written with every run: a
# top-level output ("bigquery": {key: file}) and their directory.
BIGQUERY = "bigquery"
LOAD_SCRIPT = "load_script"
LOAD_SCRIPT_FILE = "load.sh"
VECTOR_SEARCH_SQL = "vector_search_sql"
VECTOR_SEARCH_FILE = "vector_search.sql"


def output_directories() -> tuple:
  """Every directory of a run directory that only runs write into (relative
  paths): a file there that the manifest does not list is stale, an earlier
  run's or an unfinished publish's."""
  tables = TABLES + (VERTEX_STATE,)
  return (tables + tuple(f"{table}/{file_format}" for table in tables
                         for file_format in FORMATS) +
          (VERTEX, f"{VERTEX}/{VERTEX_DELETE}", PROJECTOR, ANN_INDEX,
           BIGQUERY))


def staging_dir(run_dir: str, run_id: str) -> str:
  """Where a run's stages write until it is published."""
  return FileSystems.join(run_dir, f"{STAGING_PREFIX}{run_id}")


def spill_dir(staging: str) -> str:
  """Where the local runner's groupings on disk (transforms/spill.py) go:
  inside the staging directory, removed with it when the run publishes."""
  return FileSystems.join(staging, "spill")


def shard_prefix(output_dir: str, table: str, file_format: str = "") -> str:
  """`<output_dir>/<table>/[<format>/]<table>`: shard names append to it."""
  parts = (table, file_format, table) if file_format else (table, table)
  return FileSystems.join(output_dir, *parts)


def shard_path(prefix: str, shard: int, num_shards: int, suffix: str) -> str:
  return f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


def schema_path(output_dir: str, table: str) -> str:
  return FileSystems.join(output_dir, table, SCHEMA_FILE_NAME)


def relative_to_run_dir(run_dir: str, path: str) -> str:
  """A written path as the manifest holds it: relative to the run directory."""
  base = run_dir.rstrip("/") + "/"
  if not path.startswith(base):
    raise ValueError(f"{path} is not inside the run directory {run_dir}")
  return path[len(base):]


def resolve(run_dir: str, relative: str) -> str:
  """A path the manifest lists, as a full path; only paths inside the run."""
  if (not isinstance(relative, str) or not relative or
      relative.startswith("/") or "://" in relative or
      ".." in relative.split("/")):
    raise ValueError(
        f"manifest lists {relative!r}: output paths must be relative to the "
        "run directory")
  return FileSystems.join(run_dir, relative)
