"""Tests for pipeline.read_outputs, on a run written by the real writers."""

import json
import os
import re
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline

from pipeline import read_outputs
from pipeline.local_runner import LocalRunner
from run_directory import readers
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.tfrecord import iter_frames
from tests.run_fixtures import FINGERPRINT
from tests.run_fixtures import make_dead_letters
from tests.run_fixtures import make_embeddings
from tests.run_fixtures import publish_manifest
from tests.run_fixtures import RUN_ID
from tests.run_fixtures import write_dead_letters
from tests.run_fixtures import write_embeddings
from tests.run_fixtures import write_neighbours

H = 5
SPEC = EmbeddingTableSpec(
    hidden_size=H, sequence_output=True, sequence_dtype="float16",
    encoder_layers=(0,))
EMBEDDINGS = make_embeddings(4, SPEC, seed=11)
DEAD_LETTERS = make_dead_letters(3)
# Each query's neighbours, as the neighbours stage gives them to the table.
NEIGHBOURS = [("doc-000", [(0.5, "doc-001")]), ("doc-001", [(0.5, "doc-000")])]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A published run: embeddings (parquet), neighbours (jsonl), errors."""
  run_dir = str(tmp_path_factory.mktemp("runs") / "run-1")
  with TestPipeline(runner=LocalRunner()) as p:
    ids = dict(run_id=RUN_ID, model_fingerprint=FINGERPRINT)
    embeddings = (
        p
        | "CreateEmbeddings" >> beam.Create(EMBEDDINGS)
        | write_embeddings(
            run_dir, SPEC, bigquery_format="parquet", **ids))
    neighbours = (
        p
        | "CreateNeighbours" >> beam.Create(NEIGHBOURS)
        | write_neighbours(run_dir, bigquery_format="jsonl", **ids))
    errors = (
        p
        | "CreateDeadLetters" >> beam.Create(DEAD_LETTERS)
        | write_dead_letters(run_dir, run_id=RUN_ID))
    publish_manifest(
        p, run_dir, H, {
            "embeddings": embeddings, "neighbours": neighbours,
            "errors": {"jsonl": errors}
        })
  return run_dir


def copy_run(run_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(run_dir, copy)
  return copy


def edit_manifest(run_dir, change):
  path = os.path.join(run_dir, "manifest.json")
  with open(path) as f:
    manifest = json.load(f)
  change(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f)


# --- API --------------------------------------------------------------------


def test_missing_manifest_means_unpublished(tmp_path):
  (tmp_path / "embeddings").mkdir()
  with pytest.raises(read_outputs.RunNotPublishedError, match="incomplete"):
    read_outputs.load_manifest(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no manifest.json"):
    read_outputs.read_table(str(tmp_path))
  # A directory that is not there is told as such.
  with pytest.raises(read_outputs.RunNotPublishedError,
                     match="no such run directory"):
    read_outputs.load_manifest(str(tmp_path / "typo"))


def test_load_manifest(run_dir):
  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["run_id"] == RUN_ID
  assert set(manifest["outputs"]) == {"embeddings", "neighbours", "errors"}


def test_read_table_formats(run_dir):
  loadable = read_outputs.read_table(run_dir)
  assert loadable.column_names == [
      "id", "text", "embedding", "num_tokens", "truncated", "run_id",
      "model_fingerprint", "content_hash", "encoder_layer_0", "tokens"]
  assert loadable.num_rows == 4
  assert loadable.equals(read_outputs.read_table(run_dir, format="parquet"))
  examples = read_outputs.read_table(run_dir, format="tfrecord")
  assert examples.column_names[-2:] == ["token_ids", "sequence_embedding"]
  # Both copies hold the same documents and token ids.
  tokens = {r["id"]: [t["token_id"] for t in r["tokens"]]
            for r in loadable.to_pylist()}
  assert tokens == {r["id"]: r["token_ids"] for r in examples.to_pylist()}


def test_load_embeddings(run_dir):
  ids, matrix = read_outputs.load_embeddings(run_dir)
  by_id = {e.id: e.embedding for e in EMBEDDINGS}
  assert sorted(ids) == sorted(by_id)
  np.testing.assert_allclose(matrix, np.stack([by_id[i] for i in ids]))


def test_read_other_tables(run_dir):
  neighbours = read_outputs.read_table(run_dir, "neighbours").to_pylist()
  assert sorted((r["id"], r["neighbour_id"], r["score"]) for r in neighbours
               ) == [("doc-000", "doc-001", 0.5), ("doc-001", "doc-000", 0.5)]
  errors = read_outputs.read_errors(run_dir)
  assert sorted(r["position"] for r in errors) == [0, 1, 2]
  assert read_outputs.read_table(run_dir, "errors").num_rows == 3


def test_only_files_in_the_manifest_are_read(run_dir, tmp_path):
  copy = copy_run(run_dir, tmp_path)
  shard = os.path.join(
      copy, "embeddings", "parquet", "embeddings-00000-of-00001.parquet")
  # A leftover shard of an interrupted attempt, not in the manifest.
  shutil.copy(shard, shard.replace("-of-00001", "-of-00002"))
  assert read_outputs.read_table(copy).num_rows == 4


def test_manifest_errors_name_the_problem(run_dir, tmp_path):
  with pytest.raises(ValueError, match=r"no 'avro' files; it has \['parquet'"):
    read_outputs.read_table(run_dir, format="avro")
  copy = copy_run(run_dir, tmp_path)
  edit_manifest(copy, lambda m: m["outputs"].pop("neighbours"))
  with pytest.raises(ValueError, match="no 'neighbours' table"):
    read_outputs.read_table(copy, "neighbours")
  absolute = os.path.join(copy, "errors", "errors-00000-of-00001.jsonl")
  edit_manifest(copy, lambda m: m["outputs"]["errors"].update(jsonl=[absolute]))
  with pytest.raises(ValueError, match="must be relative"):
    read_outputs.read_errors(copy)


def test_tfrecord_reader_agrees_with_tensorflow(run_dir, tmp_path):
  manifest = read_outputs.load_manifest(run_dir)
  (relative,) = manifest["outputs"]["embeddings"]["tfrecord"]
  path = os.path.join(run_dir, relative)
  with open(path, "rb") as f:
    ours = list(iter_frames(f))
  theirs = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  assert len(ours) == 4 and ours == theirs

  corrupt = str(tmp_path / "corrupt.tfrecord")
  data = bytearray(open(path, "rb").read())
  data[20] ^= 0xFF  # inside the first record's payload
  open(corrupt, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="TFRecord data fails its CRC"):
    with open(corrupt, "rb") as f:
      list(iter_frames(f))


# --- Command line -----------------------------------------------------------


def test_cli_summary(run_dir, capsys):
  assert read_outputs.main([run_dir, "--head", "2"]) == 0
  out = capsys.readouterr().out
  assert f"run: {RUN_ID}" in out
  assert "table: embeddings (parquet, 1 file)" in out
  assert "rows: 4" in out
  assert "  embedding: list<element: float not null>" in out
  assert "first 2 rows:" in out
  row_lines = [line for line in out.splitlines() if line.startswith("  {id:")]
  assert len(row_lines) == 2
  first_id = read_outputs.read_table(run_dir).column("id")[0].as_py()
  assert f'id: "{first_id}"' in row_lines[0]


def test_cli_head_past_the_rows_prints_them_all(run_dir, capsys):
  # Found by a fuzzer: --head 2**70 was an OverflowError.
  assert read_outputs.main([run_dir, "--head", str(2**70)]) == 0
  assert "first 4 rows:" in capsys.readouterr().out


def test_cli_errors_table(run_dir, capsys):
  assert read_outputs.main([run_dir, "--table", "errors", "--head", "0"]) == 0
  out = capsys.readouterr().out
  assert "table: errors (jsonl, 1 file)" in out
  assert "rows: 3" in out
  assert "first" not in out


@pytest.mark.parametrize("head, told", [
    ("-5", "-5 is negative: give 0 for no rows"),
    ("many", "'many' is not a whole number")])
def test_cli_refuses_a_wrong_head(run_dir, capsys, head, told):
  # A negative --head once printed no rows and no complaint.
  with pytest.raises(SystemExit) as exit_:
    read_outputs.main([run_dir, "--head", head])
  assert exit_.value.code == 2
  assert f"argument --head: {told}" in capsys.readouterr().err


def test_cli_exports(run_dir, tmp_path, capsys):
  parquet_path = str(tmp_path / "out" / "embeddings.parquet")
  numpy_path = str(tmp_path / "out" / "embeddings.npz")
  assert read_outputs.main([
      run_dir, "--format", "tfrecord", "--to_parquet", parquet_path,
      "--to_numpy", numpy_path
  ]) == 0
  assert "wrote 4x5 vectors of the embeddings table" in capsys.readouterr().out
  exported = pq.read_table(parquet_path)
  assert exported.num_rows == 4
  assert "sequence_embedding" in exported.column_names
  with np.load(numpy_path) as arrays:
    ids, matrix = arrays["ids"].tolist(), arrays["embeddings"]
  by_id = {e.id: e.embedding for e in EMBEDDINGS}
  assert sorted(ids) == sorted(by_id)
  np.testing.assert_allclose(matrix, np.stack([by_id[i] for i in ids]))


def test_cli_reports_unpublished_run(tmp_path, capsys):
  assert read_outputs.main([str(tmp_path)]) == 2
  assert "no manifest.json" in capsys.readouterr().err


def test_cli_rejects_numpy_export_of_other_tables(run_dir, tmp_path):
  with pytest.raises(SystemExit) as exited:
    read_outputs.main(
        [run_dir, "--table", "errors", "--to_numpy", str(tmp_path / "x.npz")])
  assert exited.value.code == 2


def test_cli_runs_as_a_module(run_dir):
  result = subprocess.run(
      [sys.executable, "-m", "pipeline.read_outputs", run_dir, "--table",
       "neighbours", "--head", "1"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert "table: neighbours (jsonl, 1 file)" in result.stdout
  assert "rows: 2" in result.stdout


def test_cli_tells_a_damaged_run_in_one_line(run_dir, tmp_path, capsys):
  # Found by a fuzzer: tracebacks for a shard that is gone, a manifest that
  # is a directory, and a Parquet footer with flipped bytes.
  gone = str(tmp_path / "gone")
  shutil.copytree(run_dir, gone)
  manifest = read_outputs.load_manifest(gone)
  for files in manifest["outputs"]["embeddings"].values():
    for relative in [files] if isinstance(files, str) else files:
      os.remove(os.path.join(gone, relative))
  as_directory = str(tmp_path / "dir")
  os.makedirs(os.path.join(as_directory, "manifest.json"))
  # Found by a fuzzer: a FIFO in the manifest's place blocked for ever.
  as_fifo = str(tmp_path / "fifo")
  os.makedirs(as_fifo)
  os.mkfifo(os.path.join(as_fifo, "manifest.json"))
  for damaged in (gone, as_directory, as_fifo):
    assert read_outputs.main([damaged]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline.read_outputs: error: ") and len(err.splitlines()) == 1, err
    assert damaged in err
  # A shard alone gone: told as the run's damage, not as a bare Errno 2.
  shard_gone = str(tmp_path / "shard_gone")
  shutil.copytree(run_dir, shard_gone)
  shard = os.path.join(shard_gone, manifest["outputs"]["embeddings"]
                       ["tfrecord"][0])
  os.remove(shard)
  assert read_outputs.main([shard_gone, "--format", "tfrecord"]) == 2
  assert capsys.readouterr().err == (
      f"pipeline.read_outputs: error: {shard}, a file the run's "
      "manifest.json lists, is gone: the run is damaged. Rerun it (or "
      "restore the file).\n")


def test_vectors_of_a_normalised_run_must_be_unit_vectors():
  # Avro's snappy blocks are read without checking their CRC: a flipped
  # byte can come back as a changed vector, which this catches.
  ids = ["a", "b", "c"]
  table = pa.table({"id": ids, "embedding": [[0.6, 0.8], [1.0, 0.0],
                                             [0.0, 0.0]]})
  manifest = {"model": {"normalize": True}}
  assert readers.ids_and_matrix(table, manifest)[0] == ids  # 0: no vector
  damaged = pa.table({"id": ids, "embedding": [[0.6, 0.8], [2.4, 0.1],
                                               [0.0, 0.0]]})
  with pytest.raises(ValueError, match=r"first: id 'b'.*--format tfrecord"):
    readers.ids_and_matrix(damaged, manifest)
  assert readers.ids_and_matrix(damaged, {"model": {"normalize": False}})
  with pytest.raises(ValueError, match="not finite"):
    readers.ids_and_matrix(pa.table({"id": ["x"], "embedding": [[np.nan, 1.]]}),
                           {"model": {"normalize": False}})


def test_a_missing_table_is_told_with_the_tables_the_run_has(run_dir, capsys):
  # Once listed every output, files and pages too ("bigquery", "report").
  assert read_outputs.main([run_dir, "--table", "duplicates"]) == 2
  err = capsys.readouterr().err
  assert err == ("pipeline.read_outputs: error: The run has no 'duplicates' "
                 "table; it has embeddings, neighbours, errors\n")


@pytest.mark.parametrize("format_", ["parquet", "tfrecord"])
@pytest.mark.parametrize("damage, rows", [("listed twice", 8), ("emptied", 0)])
def test_a_table_must_hold_the_rows_its_manifest_counts(
    run_dir, tmp_path, format_, damage, rows):
  # Found by a fuzzer: a shard emptied (or cut after a whole record) or
  # listed twice passes its format's checks, and was read as 0 or 8 rows.
  copy = str(tmp_path / "copy")
  shutil.copytree(run_dir, copy)
  path = os.path.join(copy, "manifest.json")
  manifest = read_outputs.load_manifest(copy)
  manifest["counts"] = {"embedded": len(EMBEDDINGS)}
  files = manifest["outputs"]["embeddings"][format_]
  if damage == "listed twice":
    manifest["outputs"]["embeddings"][format_] = files + files
  else:
    for relative in files:
      open(os.path.join(copy, relative), "wb").close()
  with open(path, "w") as f:
    json.dump(manifest, f)
  if format_ == "parquet" and damage == "emptied":
    told = "cannot be read"  # an empty file is no Parquet file
  else:
    told = (f"The embeddings table's {format_} files hold {rows} rows, but "
            "the manifest counts 4: a file of it is damaged, emptied or "
            "listed twice.")
  with pytest.raises(ValueError, match=re.escape(told)):
    read_outputs.read_table(copy, format=format_)


def test_a_damaged_schema_or_table_entry_is_told_naming_it(run_dir, tmp_path):
  # Found by a fuzzer: "Expecting value: line 1 column 1 (char 0)", and "no
  # 'embeddings' table; it has [..., 'embeddings', ...]".
  copy = str(tmp_path / "copy")
  shutil.copytree(run_dir, copy)
  manifest = read_outputs.load_manifest(copy)
  schema = os.path.join(copy,
                        manifest["outputs"]["embeddings"]["bigquery_schema"])
  with open(schema, "w") as f:
    f.write("not json")
  with pytest.raises(ValueError, match=re.escape(schema) +
                     r" is not a BigQuery schema the run wrote \(Expecting"):
    read_outputs.read_table(copy)
  manifest["outputs"]["embeddings"] = None
  with open(os.path.join(copy, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  with pytest.raises(ValueError, match="outputs.embeddings is None, not a "
                     "JSON object: the manifest is damaged"):
    read_outputs.read_table(copy)


@pytest.fixture(scope="module")
def avro_run_dir(tmp_path_factory):
  """A published run whose embeddings' BigQuery-loadable copy is Avro."""
  run_dir = str(tmp_path_factory.mktemp("runs") / "run-avro")
  with TestPipeline(runner=LocalRunner()) as p:
    embeddings = (
        p
        | "CreateEmbeddings" >> beam.Create(EMBEDDINGS)
        | write_embeddings(run_dir, SPEC, bigquery_format="avro",
                           run_id=RUN_ID, model_fingerprint=FINGERPRINT))
    publish_manifest(p, run_dir, H, {"embeddings": embeddings})
  return run_dir


@pytest.mark.parametrize("format_", ["avro", "parquet"])
def test_a_flipped_bit_never_reads_back_as_other_rows(
    run_dir, avro_run_dir, tmp_path, format_):
  # Found by a fuzzer: 16 of 19 flipped bits in an Avro or Parquet copy read
  # back as a changed id, text or vector, with no error (fastavro skips the
  # snappy blocks' CRCs; the Parquet files had no page CRCs).
  source = avro_run_dir if format_ == "avro" else run_dir
  [relative] = read_outputs.load_manifest(source)["outputs"]["embeddings"][
      format_]
  original = read_outputs.read_table(source, format=format_).to_pylist()
  copy = copy_run(source, tmp_path)
  path = os.path.join(copy, relative)
  data = open(path, "rb").read()
  failed = 0
  # Every 97th byte, past the header's magic: values, lengths, CRCs, footers.
  for position in range(4, len(data), 97):
    damaged = bytearray(data)
    damaged[position] ^= 0x04
    with open(path, "wb") as f:
      f.write(damaged)
    try:
      rows = read_outputs.read_table(copy, format=format_).to_pylist()
    except ValueError:
      failed += 1
      continue
    assert rows == original, f"a flip at byte {position} changed the rows"
  assert failed >= len(range(4, len(data), 97)) // 2


def test_a_vector_that_is_not_finite_is_refused_by_every_reader(
    run_dir, tmp_path):
  # Found by a fuzzer: read_table handed back NaN vectors; only
  # load_embeddings checked them.
  copy = copy_run(run_dir, tmp_path)
  [relative] = read_outputs.load_manifest(copy)["outputs"]["embeddings"][
      "parquet"]
  path = os.path.join(copy, relative)
  table = pq.read_table(path)
  rows = table.to_pylist()
  rows[1]["embedding"][2] = float("nan")
  pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path,
                 write_page_checksum=True)
  for read in (lambda: read_outputs.read_table(copy),
               lambda: read_outputs.load_embeddings(copy)):
    with pytest.raises(ValueError, match=r"1 stored vector\(s\) are not what "
                       r"the run wrote \(not finite"):
      read()


def test_read_vectors_reads_a_table_and_its_checked_matrix_once(run_dir):
  table, ids, matrix = read_outputs.read_vectors(run_dir)
  assert (ids, matrix.tolist()) == (
      [r["id"] for r in table.to_pylist()],
      np.asarray([r["embedding"] for r in table.to_pylist()],
                 np.float32).tolist())
  with pytest.raises(ValueError, match="The neighbours table has no vectors"):
    read_outputs.read_vectors(run_dir, "neighbours")


def test_parquet_is_read_without_handing_arrow_a_python_file(
    run_dir, monkeypatch):
  """pq.read_table's dataset layer can drop its Python file object on one of
  Arrow's threads while the interpreter exits, which aborts the reading
  process (exit status 134, one run in a few). The reader hands pyarrow the
  file's bytes instead, never a Python file, and never goes through
  read_table."""
  sources = []
  real_parquet_file = pq.ParquetFile

  def parquet_file(source, *args, **kwargs):
    sources.append(source)
    return real_parquet_file(source, *args, **kwargs)

  def read_table(*args, **kwargs):
    raise AssertionError("pq.read_table was called")

  monkeypatch.setattr(readers.pq, "ParquetFile", parquet_file)
  monkeypatch.setattr(readers.pq, "read_table", read_table)
  table = read_outputs.read_table(run_dir, format="parquet")
  assert table.num_rows == len(EMBEDDINGS)
  assert sources and all(
      isinstance(s, (pa.NativeFile, pa.Buffer)) for s in sources), sources


@pytest.mark.parametrize("change,told", [
    (lambda m: m["counts"].__setitem__("embedded", "lots"),
     "manifest: counts.embedded is 'lots', not a number of rows"),
    (lambda m: m["counts"].__setitem__("embedded", True),
     "manifest: counts.embedded is True, not a number of rows"),
    (lambda m: m["model"].__setitem__("hidden_size", H + 1),
     f"The vectors hold {H} values, but the manifest's model.hidden_size is "
     f"{H + 1}"),
    (lambda m: m["model"].__setitem__("hidden_size", "5"),
     "manifest: model.hidden_size is '5', not a number of values"),
])
def test_an_edited_count_or_hidden_size_is_told_not_passed_over(
    run_dir, tmp_path, capsys, change, told):
  # A count that is not a number turned the row-count check off, and a
  # hidden_size other than the vectors' went unnoticed (--to_numpy wrote
  # them, pipeline.query searched them).
  copy = copy_run(run_dir, tmp_path)
  edit_manifest(copy, change)
  for format_ in ("parquet", "tfrecord"):
    assert read_outputs.main(
        [copy, "--format", format_, "--to_numpy",
         str(tmp_path / "v.npz")]) == 2
    err = capsys.readouterr().err
    assert told in err and len(err.splitlines()) == 1, err
