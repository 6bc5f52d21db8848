"""The run's BigQuery scripts: `bigquery/load.sh` and `bigquery/vector_search.sql`.

Every published run carries them, rendered from the manifest's own file
lists, so they name exactly the files the run published:

- load.sh: one `bq load` per table of the run (embeddings, chunks,
  neighbours, duplicates, errors), each replacing the table
  `$DATASET.$TABLE_PREFIX<table>` with the run's rows. The run directory is
  `$RUN_DIR`, local or `gs://` (bq loads a local source one file per job,
  and Cloud Storage sources many per job; it reads schema files only from
  the local disk, so a JSON-lines table on gs:// has its schema copied down
  with `gcloud storage cp`). Avro and Parquet files carry their schema.
- vector_search.sql: a BigQuery script that creates a vector index (IVF,
  cosine) on the embedding column of the embeddings table and, with
  --chunk_size, of the chunks table, and finds one document's nearest
  neighbours with VECTOR_SEARCH. Table names cannot be query parameters, so
  the script declares them as variables and runs its statements through
  EXECUTE IMMEDIATE FORMAT(...).

`render_load_script` and `render_vector_search_sql` are pure;
`write_bigquery_scripts` writes both into the staging directory for the
publish stage to move into place. Neither holds a path of the run directory
itself: the same run gives the same bytes wherever it was written.
"""

import shlex
from typing import Mapping

from apache_beam.io.filesystems import FileSystems

from run_directory.atomic import write_text_atomically
from run_directory.layout import AVRO
from run_directory.layout import BIGQUERY
from run_directory.layout import BIGQUERY_FORMATS
from run_directory.layout import BIGQUERY_SCHEMA
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.layout import ERRORS
from run_directory.layout import JSONL
from run_directory.layout import LOAD_SCRIPT
from run_directory.layout import LOAD_SCRIPT_FILE
from run_directory.layout import PARQUET
from run_directory.layout import TABLES
from run_directory.layout import VECTOR_SEARCH_FILE
from run_directory.layout import VECTOR_SEARCH_SQL
from run_directory.tables import ERROR_COLUMNS

# bq load's --source_format for each BigQuery-loadable format of a run.
SOURCE_FORMATS = {
    AVRO: "AVRO",
    PARQUET: "PARQUET",
    JSONL: "NEWLINE_DELIMITED_JSON",
}
# What load.sh and vector_search.sql name the tables by default.
DEFAULT_DATASET = "bert_embeddings"
# The tables with a vector column BigQuery can index, and the columns their
# vector index stores (so that a filter on them runs inside the index).
VECTOR_TABLES = {EMBEDDINGS: ("id",), CHUNKS: ("id", "document_id")}
VECTOR_COLUMN = "embedding"
# Neighbours in the example query when the run computed none.
DEFAULT_K = 10

_LOAD_SCRIPT_BODY = r"""set -euo pipefail

# From gs://, one load job takes this many files (bq's limit is 10,000 URIs,
# but they travel in one command-line argument).
FILES_PER_JOB="${FILES_PER_JOB:-500}"

if [[ -z "${RUN_DIR:-}" ]]; then
  if [[ ! -f "${BASH_SOURCE[0]:-}" ]]; then
    echo "load.sh: set RUN_DIR to the run directory (a local path or gs://...)" >&2
    exit 2
  fi
  RUN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
RUN_DIR="${RUN_DIR%/}"
DATASET="${DATASET:-@DEFAULT_DATASET@}"
TABLE_PREFIX="${TABLE_PREFIX:-}"
BQ="${BQ:-bq}"
GCLOUD="${GCLOUD:-gcloud}"
# bq's global flags, e.g. BQ_FLAGS="--location=EU --project_id=my-project".
read -r -a bq_flags <<< "${BQ_FLAGS:-}"

case "$RUN_DIR" in
  gs://*) ;;
  *://*)
    echo "load.sh: bq loads local files or gs:// objects, not $RUN_DIR" >&2
    exit 2 ;;
  *)
    if [[ ! -f "$RUN_DIR/manifest.json" ]]; then
      echo "load.sh: $RUN_DIR has no manifest.json: not a published run" >&2
      exit 2
    fi ;;
esac

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

# schema_file PATH: the run's schema file PATH where bq can read it: bq
# reads schema files from the local disk only.
schema_file() {
  if [[ "$RUN_DIR" == gs://* ]]; then
    local copy
    copy="$work_dir/$(dirname "$1" | tr / _).json"
    # Said outright: a command substitution does not stop on errors itself.
    if ! "$GCLOUD" storage cp "$RUN_DIR/$1" "$copy" >&2; then
      echo "load.sh: could not copy $RUN_DIR/$1" >&2
      return 1
    fi
    echo "$copy"
  else
    echo "$RUN_DIR/$1"
  fi
}

# bq_load FORMAT WRITE DESTINATION SOURCES [SCHEMA]: one load job. WRITE is
# --replace (the job replaces the table) or --noreplace (it appends).
bq_load() {
  local format="$1" write="$2"
  shift 2
  local options=("--source_format=$format" "$write")
  case "$format" in
    AVRO) options+=("--use_avro_logical_types") ;;
    PARQUET) options+=("--parquet_enable_list_inference") ;;
  esac
  "$BQ" ${bq_flags[@]+"${bq_flags[@]}"} load "${options[@]}" "$@"
}

# load_table TABLE FORMAT SCHEMA FILE...: replaces $DATASET.$TABLE_PREFIX$TABLE
# with the rows of FILE... (paths relative to RUN_DIR). FORMAT: AVRO, PARQUET
# or NEWLINE_DELIMITED_JSON. SCHEMA: "-" when the files carry their schema,
# a schema file of the run (*.json), or a text schema (name:type,...).
load_table() {
  local table="$1" format="$2" schema="$3"
  shift 3
  local destination="$DATASET.$TABLE_PREFIX$table" schema_args=() copy
  case "$schema" in
    -) ;;
    *.json)
      copy="$(schema_file "$schema")"
      schema_args=("$copy") ;;
    *) schema_args=("$schema") ;;
  esac
  echo "load.sh: $destination <- $# files" >&2
  local write="--replace" batch=()
  while (( $# )); do
    if [[ "$RUN_DIR" == gs://* ]]; then
      batch=()
      while (( $# )) && (( ${#batch[@]} < FILES_PER_JOB )); do
        batch+=("$RUN_DIR/$1")
        shift
      done
      bq_load "$format" "$write" "$destination" "$(IFS=,; echo "${batch[*]}")" \
          ${schema_args[@]+"${schema_args[@]}"}
    else
      bq_load "$format" "$write" "$destination" "$RUN_DIR/$1" \
          ${schema_args[@]+"${schema_args[@]}"}
      shift
    fi
    write="--noreplace"
  done
}
"""


def _load_script_header(run_id: str) -> str:
  return f"""#!/usr/bin/env bash
# Loads run {run_id} into BigQuery: each table of the run replaces the table
# $DATASET.$TABLE_PREFIX<table>. Written by the pipeline with the run, from
# the files manifest.json lists (docs/bigquery.md).
#
#   bash RUN_DIR/bigquery/load.sh                             # a local run
#   RUN_DIR=gs://BUCKET/RUN DATASET=my_dataset bash load.sh   # on Cloud Storage
#
# RUN_DIR       the run directory, a local path or gs://... (default: the
#               directory above this script's)
# DATASET       [PROJECT:]DATASET to load into; it must exist (default:
#               {DEFAULT_DATASET})
# TABLE_PREFIX  put before each table's name (default: none)
# BQ, GCLOUD    the bq and gcloud commands; BQ_FLAGS: bq's global flags
#
# From gs://, a table loads in one job (up to FILES_PER_JOB files per job),
# which replaces it at once. From a local directory, bq uploads one file per
# job: a table loads in as many jobs as it has files, the first replacing
# it, the others appending, so it is complete only once this script is done.
# Avro and Parquet files carry their schema (the types and modes of
# <table>/bigquery_schema.json); JSON lines are loaded with the schema file.
# The embedding column loads as ARRAY<FLOAT64> (FLOAT REPEATED), every row
# with the same number of values: ready for bigquery/vector_search.sql.
"""


def bigquery_format(entry: Mapping) -> str:
  """The BigQuery-loadable format a table's manifest entry lists."""
  formats = [f for f in BIGQUERY_FORMATS if f in entry]
  if len(formats) != 1:
    raise ValueError(
        f"a table lists {len(formats)} BigQuery-loadable formats "
        f"({formats}); expected one of {BIGQUERY_FORMATS}")
  return formats[0]


def _text_schema(columns) -> str:
  """bq's text schema (name:type,...): for the errors table, which has no
  schema file. Its columns are flat, and all load as NULLABLE."""
  return ",".join(f"{column.name}:{column.type}" for column in columns)


def loaded_tables(outputs: Mapping) -> list:
  """(table, bq source format, schema argument, files) of every table of
  `outputs` (the manifest's, paths relative to the run) that BigQuery loads;
  the schema argument is as load.sh's load_table takes it."""
  tables = []
  for table in TABLES:
    entry = outputs.get(table)
    if entry is None:
      continue
    file_format = bigquery_format(entry)
    files = list(entry[file_format])
    if not files:
      raise ValueError(f"the {table} table lists no {file_format} files")
    if file_format != JSONL:
      schema = "-"  # Avro and Parquet files carry their schema
    elif BIGQUERY_SCHEMA in entry:
      schema = entry[BIGQUERY_SCHEMA]
    elif table == ERRORS:
      schema = _text_schema(ERROR_COLUMNS)
    else:
      raise ValueError(f"the {table} table's JSON lines have no schema file")
    tables.append((table, SOURCE_FORMATS[file_format], schema, files))
  return tables


def render_load_script(run_id: str, outputs: Mapping) -> str:
  """load.sh for a run whose manifest lists `outputs`."""
  lines = [_load_script_header(run_id),
           _LOAD_SCRIPT_BODY.replace("@DEFAULT_DATASET@", DEFAULT_DATASET)]
  for table, source_format, schema, files in loaded_tables(outputs):
    head = " ".join(shlex.quote(a) for a in (table, source_format, schema))
    lines.append("".join([f"\nload_table {head}"] + [
        f" \\\n    {shlex.quote(path)}" for path in files]) + "\n")
  lines.append('\necho "load.sh: done; vector search: '
               'bigquery/vector_search.sql" >&2\n')
  return "".join(lines)


# vector_search.sql. `%s` and `%d` are FORMAT's (BigQuery's), filled in when
# the script runs; nothing here is filled in by Python but the header's
# run id, k and the tables present.

def _sql_header(run_id: str, k: int) -> str:
  return f"""-- Vector search over run {run_id} in BigQuery (docs/bigquery.md); written
-- by the pipeline with the run. Load the run first (bigquery/load.sh), then:
--
--   bq query --use_legacy_sql=false < bigquery/vector_search.sql
--
-- or paste it into the BigQuery console. Table names cannot be query
-- parameters, so this script takes them as variables, the DECLAREs below
-- (set them to the DATASET and TABLE_PREFIX load.sh used), and builds each
-- statement with FORMAT for EXECUTE IMMEDIATE; the query document's id goes
-- in as a real query parameter (USING ... AS query_id).

DECLARE dataset STRING DEFAULT '{DEFAULT_DATASET}';  -- load.sh's DATASET
DECLARE table_prefix STRING DEFAULT '';  -- load.sh's TABLE_PREFIX
-- The document whose neighbours the examples find (NULL: the smallest id).
DECLARE query_id STRING DEFAULT NULL;
-- How many neighbours (the run's --neighbours_k).
DECLARE k INT64 DEFAULT {k};
"""


def _table_variable(table: str) -> str:
  # `project.dataset.table`: bq's PROJECT:DATASET as SQL writes it.
  return (f"DECLARE {table}_table STRING DEFAULT FORMAT('`%s.%s{table}`',\n"
          f"    REPLACE(dataset, ':', '.'), table_prefix);\n")


def _create_index(table: str) -> str:
  stored = ", ".join(VECTOR_TABLES[table])
  return f"""
-- The {table} table's vector index: IVF, cosine distance, as the run's
-- neighbours are by cosine. It stores {stored}:
-- the examples' filters on them then run inside the index. BigQuery fills
-- an index in only once its table holds 10 MB; until then VECTOR_SEARCH
-- compares the query with every row (exact results).
EXECUTE IMMEDIATE FORMAT(\"\"\"
CREATE VECTOR INDEX IF NOT EXISTS `%s{table}_{VECTOR_COLUMN}`
ON %s({VECTOR_COLUMN})
STORING({stored})
OPTIONS(index_type = 'IVF', distance_type = 'COSINE')\"\"\",
    table_prefix, {table}_table);
"""


_FIRST_DOCUMENT = """
IF query_id IS NULL THEN
  EXECUTE IMMEDIATE FORMAT('SELECT MIN(id) FROM %s', embeddings_table)
      INTO query_id;
END IF;
"""

_DOCUMENT_SEARCH = """
-- The k documents nearest to query_id, as the run's neighbours table has
-- them: rank from 1, score the cosine similarity (1 - cosine distance), the
-- document itself filtered out of the base table before the search. With a
-- filled index the search is approximate; for the exact neighbours add
-- options => '{"use_brute_force": true}' after distance_type.
EXECUTE IMMEDIATE FORMAT(\"\"\"
SELECT
  query.id AS id,
  ROW_NUMBER() OVER (ORDER BY distance, base.id) AS rank,
  base.id AS neighbour_id,
  1 - distance AS score
FROM VECTOR_SEARCH(
  (SELECT id, embedding FROM %s WHERE id != @query_id),
  'embedding',
  (SELECT id, embedding FROM %s WHERE id = @query_id),
  top_k => %d,
  distance_type => 'COSINE')
ORDER BY rank\"\"\", embeddings_table, embeddings_table, k)
USING query_id AS query_id;
"""

_CHUNK_SEARCH = """
-- The k chunks of other documents nearest to the first chunk of query_id
-- (--neighbours_level chunk's neighbours of that chunk).
EXECUTE IMMEDIATE FORMAT(\"\"\"
SELECT
  query.id AS id,
  query.document_id AS document_id,
  ROW_NUMBER() OVER (ORDER BY distance, base.id) AS rank,
  base.id AS neighbour_id,
  base.document_id AS neighbour_document_id,
  1 - distance AS score
FROM VECTOR_SEARCH(
  (SELECT id, document_id, embedding FROM %s WHERE document_id != @query_id),
  'embedding',
  (SELECT id, document_id, embedding FROM %s
   WHERE document_id = @query_id AND chunk_index = 0),
  top_k => %d,
  distance_type => 'COSINE')
ORDER BY rank\"\"\", chunks_table, chunks_table, k)
USING query_id AS query_id;
"""


def vector_tables(outputs: Mapping) -> list:
  """The tables of `outputs` whose embedding column gets a vector index."""
  return [table for table in VECTOR_TABLES if table in outputs]


def render_vector_search_sql(run_id: str, outputs: Mapping,
                             k: int = DEFAULT_K) -> str:
  """vector_search.sql for a run whose manifest lists `outputs`; k: the
  run's neighbours per document."""
  tables = vector_tables(outputs)
  if EMBEDDINGS not in tables:
    raise ValueError("a run without an embeddings table has no vector search")
  parts = [_sql_header(run_id, k)]
  parts += [_table_variable(table) for table in tables]
  parts += [_create_index(table) for table in tables]
  parts.append(_FIRST_DOCUMENT)
  parts.append(_DOCUMENT_SEARCH)
  if CHUNKS in tables:
    parts.append(_CHUNK_SEARCH)
  return "".join(parts)


def write_bigquery_scripts(output_dir: str, manifest: Mapping) -> dict:
  """Writes load.sh and vector_search.sql for `manifest` under output_dir
  (the staging directory); returns their manifest entry, relative paths."""
  outputs = manifest["outputs"]
  k = manifest.get("neighbours", {}).get("k", DEFAULT_K)
  texts = {
      LOAD_SCRIPT: (LOAD_SCRIPT_FILE,
                    render_load_script(manifest["run_id"], outputs)),
      VECTOR_SEARCH_SQL: (VECTOR_SEARCH_FILE, render_vector_search_sql(
          manifest["run_id"], outputs, k)),
  }
  entry = {}
  for key, (name, text) in texts.items():
    write_text_atomically(FileSystems.join(output_dir, BIGQUERY, name), text)
    entry[key] = f"{BIGQUERY}/{name}"
  return entry
