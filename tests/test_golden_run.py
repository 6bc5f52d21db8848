"""Golden outputs: the restructured code writes the same rows as before.

Fixed runs (`--run_id=golden`, the tiny model) over a corpus of every input
format, with neighbours, sequence output, encoder layers, every
BigQuery-loadable format, and an incremental second run. Every row of every
table, from both copies (the BigQuery-loadable one and TFRecord), and the
manifest's counts, file lists and settings are compared with
tests/golden/run_rows.json: exactly, but for floats (within 1e-5, as CPUs
differ in the last bits of a matmul).

The golden file was recorded before the architecture was restructured (issue
15); the rows are still those. Since then the manifest's counts gained
`inferred` and `derived_ids`, its settings are recorded by flag group (the
neighbours group with the --neighbours_of queries' field flags), and an
`ann` run lists
the index it keeps (`outputs.ann_index`). Regenerate it only
for an intended change of the output:
`GOLDEN_UPDATE=1 bash run_tests.sh tests/test_golden_run.py`, and say why in
the commit.
"""

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline import main
from pipeline import read_outputs

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "run_rows.json")
_TOLERANCE = 1e-5

_TEXTS = ["the quick brown fox", "hello world", "a cat sat on the mat",
          "search vector embeddings", "the lazy dog is on the mat",
          "embedding text is a search", "hello cat", "brown dog"]


def _write_corpora(directory: str) -> dict:
  """{run name: (pattern, flags)}: one corpus per format, bad rows included."""
  runs = {}
  path = os.path.join(directory, "lines.txt")
  with open(path, "wb") as f:
    f.write("\n".join(_TEXTS + ["", "hello world"]).encode() + b"\n\xff\n")
  runs["text"] = (path, ["--bigquery_format=avro"])

  path = os.path.join(directory, "records.jsonl")
  lines = [json.dumps({"id": f"j{i}", "text": t}) for i, t in enumerate(_TEXTS)]
  lines += ['{"id": "bad"', json.dumps({"id": "j9"})]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  runs["jsonl"] = (path, ["--bigquery_format=jsonl", "--sequence_output",
                          "--encoder_layers=-1"])

  path = os.path.join(directory, "rows.csv")
  rows = ["id,text"] + [f'c{i},"{t}"' for i, t in enumerate(_TEXTS)]
  rows += ["c9,too,many", "c10,"]
  with open(path, "w") as f:
    f.write("\n".join(rows) + "\n")
  runs["csv"] = (path, ["--bigquery_format=parquet"])

  path = os.path.join(directory, "rows.tsv")
  rows = ["text\tid"] + [f"{t}\tt{i}" for i, t in enumerate(_TEXTS)]
  with open(path, "w") as f:
    f.write("\n".join(rows + ["no id column"]) + "\n")
  runs["tsv"] = (path, ["--bigquery_format=avro", "--sequence_output",
                        "--sequence_dtype=float16"])

  path = os.path.join(directory, "table.parquet")
  pq.write_table(pa.table({
      "id": [f"p{i}" for i in range(len(_TEXTS))] + ["p8"],
      "text": _TEXTS + [None]}), path)
  runs["parquet"] = (path, ["--bigquery_format=parquet", "--no_text"])

  path = os.path.join(directory, "examples.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for i, text in enumerate(_TEXTS):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
          "text": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[text.encode()])),
      })).SerializeToString())
  runs["tfrecord"] = (path, ["--bigquery_format=jsonl",
                             "--neighbours_mode=ann"])

  # The second night of the JSONL corpus: one text changed, one removed, one
  # added.
  path = os.path.join(directory, "records-2.jsonl")
  texts = dict(enumerate(_TEXTS))
  texts[1] = "hello brave new world"
  del texts[7]
  texts[20] = "a new fox"
  with open(path, "w") as f:
    f.write("".join(json.dumps({"id": f"j{i}", "text": t}) + "\n"
                    for i, t in texts.items()))
  runs["jsonl-incremental"] = (path, ["--bigquery_format=jsonl",
                                      "--sequence_output",
                                      "--encoder_layers=-1"])
  return runs


def _plain(value, places):
  """JSON-able, with temporary directories named as `places` names them."""
  if isinstance(value, dict):
    return {k: _plain(v, places) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [_plain(v, places) for v in value]
  if isinstance(value, bytes):
    return value.hex()
  if isinstance(value, str):
    for path, name in places.items():
      value = value.replace(path, name)
  return value


def _run_outputs(run_dir: str, places: dict) -> dict:
  manifest = read_outputs.load_manifest(run_dir)
  tables = {}
  for table, entry in sorted(manifest["outputs"].items()):
    for file_format in ("tfrecord", "avro", "parquet", "jsonl"):
      if file_format in entry and table in read_outputs.TABLES:
        rows = read_outputs.read_table(run_dir, table,
                                       format=file_format).to_pylist()
        tables[f"{table}.{file_format}"] = _plain(rows, places)
  return {
      "counts": manifest["counts"],
      "outputs": manifest["outputs"],
      "settings": _plain(manifest["settings"], places),
      "neighbours": {k: v for k, v in manifest.get("neighbours", {}).items()
                     if k not in ("seconds", "build_secs", "search_secs")},
      "tables": tables,
  }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_model_dir):
  corpus_dir = str(tmp_path_factory.mktemp("golden-corpus"))
  runs_dir = tmp_path_factory.mktemp("golden-runs")
  places = {corpus_dir: "<corpus>", str(runs_dir): "<runs>",
            tiny_model_dir: "<model>"}
  results = {}
  for name, (pattern, flags) in _write_corpora(corpus_dir).items():
    run_dir = str(runs_dir / name)
    if name == "jsonl-incremental":
      flags = flags + [f"--previous_run={runs_dir / 'jsonl'}"]
    code = main.main([f"--input={pattern}", f"--output={run_dir}",
                      f"--model={tiny_model_dir}", "--runner=DirectRunner",
                      "--run_id=golden", "--neighbours_k=3",
                      "--max_bad_fraction=1", *flags])
    assert code == 0, name
    results[name] = _run_outputs(run_dir, places)
  return results


def _compare(actual, expected, where="") -> list:
  """The differences, floats within _TOLERANCE."""
  if isinstance(expected, float) or isinstance(actual, float):
    if not (isinstance(actual, (int, float)) and
            isinstance(expected, (int, float)) and
            math.isclose(actual, expected, rel_tol=0, abs_tol=_TOLERANCE)):
      return [f"{where}: {actual!r} != {expected!r}"]
    return []
  if isinstance(expected, dict) and isinstance(actual, dict):
    problems = []
    if set(actual) != set(expected):
      problems.append(f"{where}: keys {sorted(actual)} != {sorted(expected)}")
    for key in sorted(set(actual) & set(expected)):
      problems += _compare(actual[key], expected[key], f"{where}.{key}")
    return problems
  if isinstance(expected, list) and isinstance(actual, list):
    if len(actual) != len(expected):
      return [f"{where}: {len(actual)} items != {len(expected)}"]
    problems = []
    for i, (a, e) in enumerate(zip(actual, expected)):
      problems += _compare(a, e, f"{where}[{i}]")
    return problems
  return [] if actual == expected else [f"{where}: {actual!r} != {expected!r}"]


def test_the_runs_write_the_golden_rows(outputs):
  if os.environ.get("GOLDEN_UPDATE"):
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
      json.dump(outputs, f, indent=1, sort_keys=True)
      f.write("\n")
  with open(GOLDEN) as f:
    golden = json.load(f)
  problems = _compare(json.loads(json.dumps(outputs)), golden)
  assert not problems, "\n".join(problems[:40])
  # The golden runs cover what they claim to.
  assert set(golden) == {"text", "jsonl", "csv", "tsv", "parquet",
                         "tfrecord", "jsonl-incremental"}
  incremental = golden["jsonl-incremental"]["counts"]
  assert (incremental["reused"], incremental["removed"]) == (6, 1)
