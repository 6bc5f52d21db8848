"""The pipeline on real files of other people's making (tests/real_files.py).

Every line of 8 Debian changelogs, every row of matplotlib's sample CSVs
and of pyarrow's Parquet test files ends in exactly one of the embeddings or
the errors, and the counts add up.
"""

import collections
import os
import shutil

from pipeline import main
from pipeline import read_outputs
from tests import real_files


def _run(tmp_path, model_dir, pattern, *flags):
  run_dir = str(tmp_path / "run")
  code = main.main([f"--input={pattern}", f"--output={run_dir}",
                    f"--model={model_dir}", "--runner=DirectRunner",
                    "--neighbours_k=3", "--max_bad_fraction=1", *flags])
  assert code == 0
  manifest = read_outputs.load_manifest(run_dir)
  counts = manifest["counts"]
  errors = read_outputs.read_errors(run_dir)
  embeddings = read_outputs.read_table(run_dir).to_pylist()
  assert counts["read"] == counts["embedded"] + counts["dead_lettered"]
  assert counts["embedded"] == len(embeddings)
  assert counts["dead_lettered"] == len(errors)
  return counts, embeddings, errors


def test_debian_changelogs(tmp_path, tiny_model_dir):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  lines = 0
  for path in real_files.debian_changelogs(8):
    package = path.split(os.sep)[-2]
    shutil.copy(path, corpus / f"{package}.changelog.gz")
    lines += len(real_files.gunzipped(path).splitlines())

  counts, embeddings, errors = _run(tmp_path, tiny_model_dir,
                                    str(corpus / "*.gz"), "--input_format=text")

  assert counts["read"] == lines
  reasons = collections.Counter(e["reason"] for e in errors)
  # Blank lines, and lines repeated within a file ("  * Rebuild.").
  assert set(reasons) <= {"empty_text", "duplicate_record", "invalid_utf8"}
  assert reasons["empty_text"] > 0 and counts["embedded"] > lines / 2
  assert len({e["id"] for e in embeddings}) == len(embeddings)


def test_matplotlib_sample_csvs(tmp_path, tiny_model_dir):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  rows = 0
  for path in real_files.matplotlib_csvs():
    shutil.copy(path, corpus)
    with open(path, "rb") as f:
      rows += sum(1 for line in f.read().splitlines()[1:] if line.strip())
  counts, _, errors = _run(tmp_path, tiny_model_dir, str(corpus / "*.csv"),
                           "--text_field=Date", "--id_field=none")
  # One record per data row: a row without a Date column is an error row.
  assert counts["read"] == rows
  assert {e["reason"] for e in errors} <= {
      "missing_field", "duplicate_id", "duplicate_record", "malformed_record"}


def test_pyarrow_parquet_test_files(tmp_path, tiny_model_dir):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for path in real_files.pyarrow_parquets():
    shutil.copy(path, corpus)
  counts, embeddings, errors = _run(tmp_path, tiny_model_dir,
                                    str(corpus / "*.parquet"),
                                    "--text_field=cut", "--id_field=none")
  # Three files of ten diamonds each have a "cut" column; one of three rows
  # has none.
  assert counts["read"] == 33
  assert sorted({e["text"] for e in embeddings}) == [
      "Fair", "Good", "Ideal", "Premium", "Very Good"]
  assert collections.Counter(e["reason"] for e in errors)["missing_field"] == 3
