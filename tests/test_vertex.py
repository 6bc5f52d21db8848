"""The Vertex AI Vector Search export (--vertex_export): the files checked
line by line against the batch format's rules (suffix, layout, allowed keys,
delete/ only in a delta), vectors equal to the embeddings and chunks tables,
restricts carried from every input format, and delta runs over real
previous runs (a chain of them)."""

import json
import math
import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from bert_model import export
from bert_model import tiny_checkpoint as tiny_bert
from pipeline import main
from pipeline.errors import ConfigError
from run_directory.manifest import load_manifest
from run_directory.readers import read_errors
from run_directory.readers import read_table
from run_directory.records import Reason
from run_directory.vertex import DATAPOINT_KEYS
from run_directory.vertex import datapoint_hash
from run_directory.vertex import MAX_FILES
from transforms.formats.carried import CarriedField
from transforms.formats.carried import carried_value
from transforms.formats.carried import CROWDING_TAG
from transforms.formats.carried import NUMERIC_RESTRICT
from transforms.formats.carried import RESTRICT
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected
from transforms.formats.parquet import read_parquet_records
from transforms.formats.tfrecord import read_tfrecord_records
from tests.run_fixtures import write_jsonl

VERTEX_FLAGS = ("--restrict_fields=lang,tags", "--numeric_restrict_fields=price",
                "--crowding_tag_field=site")
CARRIED = (CarriedField("lang", RESTRICT), CarriedField("tags", RESTRICT),
           CarriedField("price", NUMERIC_RESTRICT),
           CarriedField("site", CROWDING_TAG))


def _record(i, text=None, **overrides):
  record = {"id": f"d{i:02d}", "text": text or f"document number {i} about "
            f"{['cats', 'dogs', 'birds'][i % 3]} and more",
            "lang": ["en", "de"][i % 2], "tags": ["t", f"g{i % 4}"],
            "price": i if i % 2 else i + 0.5, "site": f"s{i % 3}"}
  record.update(overrides)
  return record


def _run(model_dir, corpus, run_dir, *flags):
  main.run([f"--input={corpus}", f"--output={run_dir}", f"--model={model_dir}",
            "--runner=DirectRunner", "--bigquery_format=jsonl",
            "--neighbours_k=0", "--max_bad_fraction=0.6", *flags])
  return load_manifest(str(run_dir))


def _vertex_files(run_dir):
  """{relative path: lines} of everything under vertex/, checking the
  layout: data files directly under it, only delete/ below."""
  root = os.path.join(run_dir, "vertex")
  files = {}
  for entry in os.listdir(root):
    path = os.path.join(root, entry)
    if os.path.isdir(path):
      assert entry == "delete", f"sub-folder {entry} is not allowed"
      for name in os.listdir(path):
        assert os.path.isfile(os.path.join(path, name))
        with open(os.path.join(path, name), encoding="utf-8") as f:
          files[f"delete/{name}"] = f.read().splitlines()
    else:
      assert entry.endswith(".json"), entry
      with open(path, encoding="utf-8") as f:
        files[entry] = f.read().splitlines()
  assert len([p for p in files if not p.startswith("delete/")]) <= MAX_FILES
  return files


def _datapoints(files):
  points = {}
  for path, lines in files.items():
    if path.startswith("delete/"):
      continue
    for line in lines:
      point = json.loads(line)
      assert set(point) <= DATAPOINT_KEYS, set(point) - DATAPOINT_KEYS
      assert {"id", "embedding"} <= set(point)
      assert point["id"] not in points, "an id appears twice"
      points[point["id"]] = point
  return points


def _deleted(files):
  return [line for path, lines in files.items()
          if path.startswith("delete/") for line in lines]


def _listed(manifest, key):
  return sorted(manifest["outputs"]["vertex"].get(key, []))


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("vertex_full")
  records = [_record(i) for i in range(12)]
  records.append({"id": "no-lang", "text": "a record without its restrict",
                  "tags": ["t"], "price": 1, "site": "s0"})
  records.append(_record(20, price="cheap"))
  records.append({"id": "two\nlines", "text": "an id Vertex cannot delete",
                  "lang": "en", "tags": "t", "price": 1, "site": "s1"})
  corpus = write_jsonl(root / "corpus.jsonl", records)
  run_dir = str(root / "run1")
  manifest = _run(tiny_model_dir, corpus, run_dir, "--vertex_export=full",
                  *VERTEX_FLAGS)
  return root, records, run_dir, manifest


def test_full_export_follows_the_batch_format(full_run):
  _, records, run_dir, manifest = full_run
  files = _vertex_files(run_dir)
  assert not _deleted(files) and not any(p.startswith("delete/")
                                         for p in files)
  assert _listed(manifest, "json") == sorted(
      f"vertex/{p}" for p in files)
  points = _datapoints(files)
  embeddings = {row["id"]: row for row in
                read_table(run_dir, "embeddings").to_pylist()}
  assert set(points) == set(embeddings) == {f"d{i:02d}" for i in range(12)}
  by_id = {r["id"]: r for r in records}
  for point_id, point in points.items():
    record = by_id[point_id]
    np.testing.assert_array_equal(
        np.asarray(point["embedding"], np.float32),
        np.asarray(embeddings[point_id]["embedding"], np.float32))
    assert point["restricts"] == [
        {"namespace": "lang", "allow": [record["lang"]]},
        {"namespace": "tags", "allow": record["tags"]}]
    key = "value_int" if isinstance(record["price"], int) else "value_double"
    assert point["numeric_restricts"] == [
        {"namespace": "price", key: record["price"]}]
    assert point["crowding_tag"] == record["site"]
  assert manifest["vertex"]["datapoints"] == 12
  assert manifest["vertex"]["written"] == 12


def test_records_that_cannot_be_exported_are_dead_letters(full_run):
  _, _, run_dir, manifest = full_run
  errors = {row["id"]: row for row in read_errors(run_dir)}
  assert errors["no-lang"]["reason"] == Reason.MISSING_FIELD
  assert "--restrict_fields" in errors["no-lang"]["detail"]
  assert errors["d20"]["reason"] == Reason.NON_NUMERIC_FIELD
  assert errors["two\nlines"]["reason"] == Reason.MALFORMED_RECORD
  counts = manifest["counts"]
  assert counts["read"] == 15
  assert counts["embedded"] + counts["dead_lettered"] == counts["read"]


def test_delta_runs_write_what_changed_and_delete_what_is_gone(
    full_run, tiny_model_dir):
  root, records, run1, _ = full_run
  good = [r for r in records if r["id"].startswith("d") and r["id"] != "d20"]
  changed = dict(good[0], text="a text that changed overnight")
  retagged = dict(good[1], lang="fr")  # same text, new restrict
  kept = good[2:-1]  # good[-1] is removed
  added = _record(30)
  corpus = write_jsonl(root / "corpus2.jsonl",
                        [changed, retagged, *kept, added])
  run2 = str(root / "run2")
  manifest = _run(tiny_model_dir, corpus, run2, "--vertex_export=delta",
                  f"--previous_run={run1}", *VERTEX_FLAGS)
  files = _vertex_files(run2)
  points, deleted = _datapoints(files), _deleted(files)
  assert set(points) == {changed["id"], retagged["id"], added["id"]}
  assert deleted == [good[-1]["id"]]
  assert not set(points) & set(deleted)
  assert points[retagged["id"]]["restricts"][0] == {"namespace": "lang",
                                                    "allow": ["fr"]}
  assert _listed(manifest, "delete") == sorted(
      f"vertex/{p}" for p in files if p.startswith("delete/"))
  assert manifest["vertex"]["written"] == 3
  assert manifest["vertex"]["deleted"] == 1

  # A delta over a delta run compares with its whole state, not with the
  # few datapoints it wrote: nothing changed, nothing is written.
  run3 = str(root / "run3")
  _run(tiny_model_dir, corpus, run3, "--vertex_export=delta",
       f"--previous_run={run2}", *VERTEX_FLAGS)
  files = _vertex_files(run3)
  assert not _datapoints(files) and not _deleted(files)


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_damaged_previous_state_fails_the_delta_in_one_line(
    full_run, tiny_model_dir, tmp_path, capsys, damage):
  # Found by a user trial: a state file cut after a whole line gave a delta
  # that deleted too little from the index; a garbage line, a traceback.
  root, _, run1, manifest = full_run
  previous = str(tmp_path / "run1")
  shutil.copytree(run1, previous)
  states = [os.path.join(previous, name)
            for name in manifest["outputs"]["vertex_state"]["jsonl"]]
  with open(states[0], "rb") as f:
    lines = f.read().splitlines(keepends=True)
  with open(states[0], "wb") as f:
    f.write(b"".join(lines[:len(lines) // 2]) if damage == "cut" else
            b"".join(lines) + b"\xffgarbage\n")
  run2 = str(tmp_path / "run2")
  code = main.main([
      f"--input={root / 'corpus.jsonl'}", f"--output={run2}",
      f"--model={tiny_model_dir}", "--runner=DirectRunner",
      "--neighbours_k=0", "--max_bad_fraction=0.6", "--vertex_export=delta",
      f"--previous_run={previous}", *VERTEX_FLAGS])
  assert code == 1
  err = capsys.readouterr().err.splitlines()
  told = (rf"holds {12 - (len(lines) - len(lines) // 2)} rows, but its "
          r"manifest counts 12 datapoints: a file was cut short, emptied or "
          r"listed twice"
          if damage == "cut" else
          r"has a line that is not an id and datapoint_hash in .*"
          r"vertex_state.*\.jsonl: b'\\xffgarbage'")
  assert re.fullmatch(
      rf"pipeline.main: error: --previous_run={previous}: the previous "
      rf"run's vertex_state table {told}, so nothing was published\. Run "
      r"once with --vertex_export full and rebuild the index from it "
      r"\(isCompleteOverwrite\), then go back to delta\.", err[-1]), err[-1]
  assert not os.path.exists(os.path.join(run2, "manifest.json"))


def test_chunks_are_the_datapoints_with_chunking(tiny_model_dir, tmp_path):
  long_text = " ".join(f"word{i} is here." for i in range(60))
  corpus = write_jsonl(tmp_path / "c.jsonl",
                        [_record(1, text=long_text), _record(2)])
  run_dir = str(tmp_path / "run")
  _run(tiny_model_dir, corpus, run_dir, "--vertex_export=full",
       "--chunk_size=16", "--restrict_fields=lang")
  points = _datapoints(_vertex_files(run_dir))
  chunks = {row["id"]: row for row in read_table(run_dir,
                                                 "chunks").to_pylist()}
  assert set(points) == set(chunks)
  assert sum(1 for p in points if p.startswith("d01#")) > 2
  for point_id, point in points.items():
    np.testing.assert_array_equal(
        np.asarray(point["embedding"], np.float32),
        np.asarray(chunks[point_id]["embedding"], np.float32))
    lang = "de" if point_id.startswith("d01#") else "en"
    assert point["restricts"] == [{"namespace": "lang", "allow": [lang]}]


def test_csv_cells_become_restricts_and_numbers(tiny_model_dir, tmp_path):
  corpus = tmp_path / "c.csv"
  corpus.write_text("id,text,lang,price\n"
                    "a,first text here,en,3\n"
                    "b,second text here,de,2.5\n"
                    "c,third text here,,4\n"
                    "d,fourth text here,en,many\n")
  run_dir = str(tmp_path / "run")
  _run(tiny_model_dir, str(corpus), run_dir, "--vertex_export=full",
       "--restrict_fields=lang", "--numeric_restrict_fields=price")
  points = _datapoints(_vertex_files(run_dir))
  assert points["a"]["numeric_restricts"] == [{"namespace": "price",
                                               "value_int": 3}]
  assert points["b"]["numeric_restricts"] == [{"namespace": "price",
                                               "value_double": 2.5}]
  errors = {row["id"]: row["reason"] for row in read_errors(run_dir)}
  assert errors == {"c": Reason.MISSING_FIELD, "d": Reason.NON_NUMERIC_FIELD}


def test_parquet_and_tfrecord_carry_typed_fields(tmp_path):
  spec = RecordSpec(carried=CARRIED)
  table = pa.table({
      "id": ["a", "b"], "text": ["x", "y"],
      "lang": pa.array(["en", "de"]).dictionary_encode(),
      "tags": [["t1", "t2"], []], "price": [7, 8], "site": ["s", "s"]})
  path = tmp_path / "c.parquet"
  pq.write_table(table, path)
  with open(path, "rb") as f:
    first, second = list(read_parquet_records(f, str(path), spec))
  assert first.fields == (("restrict", "lang", ("en",)),
                          ("restrict", "tags", ("t1", "t2")),
                          ("numeric_restrict", "price", (7,)),
                          ("crowding_tag", "site", ("s",)))
  assert second.reason == Reason.MISSING_FIELD  # an empty tags list

  def example(**features):
    return tf.train.Example(features=tf.train.Features(
        feature=features)).SerializeToString()

  def strings(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

  path = tmp_path / "c.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(example(
        id=strings(b"a"), text=strings(b"x"), lang=strings(b"en"),
        tags=strings(b"t1", b"t2"), site=strings(b"s"),
        price=tf.train.Feature(float_list=tf.train.FloatList(value=[1.5]))))
  with open(path, "rb") as f:
    (record,) = list(read_tfrecord_records(f, str(path), spec))
  assert record.fields[2] == ("numeric_restrict", "price", (1.5,))
  assert record.fields[1] == ("restrict", "tags", ("t1", "t2"))


@pytest.mark.parametrize("kind,raw,expected", [
    (RESTRICT, "en", ("en",)),
    (RESTRICT, ["a", 7], ("a", "7")),
    (RESTRICT, b"bytes", ("bytes",)),
    (NUMERIC_RESTRICT, 3, (3,)),
    (NUMERIC_RESTRICT, " -12 ", (-12,)),
    (NUMERIC_RESTRICT, "2.5e3", (2500.0,)),
    # Found by a user trial: integers with leading zeros came as doubles.
    (NUMERIC_RESTRICT, "000000000000000000001", (1,)),
    (NUMERIC_RESTRICT, "-9223372036854775808", (-2**63,)),
    (NUMERIC_RESTRICT, ".5", (0.5,)),
    (CROWDING_TAG, 42, ("42",)),
])
def test_carried_values_are_checked_for_their_kind(kind, raw, expected):
  assert carried_value(CarriedField("f", kind), raw, None) == expected


@pytest.mark.parametrize("kind,raw,reason", [
    (RESTRICT, None, Reason.MISSING_FIELD),
    (RESTRICT, [], Reason.MISSING_FIELD),
    (RESTRICT, 1.5, Reason.NON_STRING_FIELD),
    (RESTRICT, {"a": 1}, Reason.NON_STRING_FIELD),
    (RESTRICT, [True], Reason.NON_STRING_FIELD),
    (RESTRICT, b"\xff", Reason.INVALID_UTF8),
    (NUMERIC_RESTRICT, math.nan, Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, "inf", Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, 2**63, Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, "9" * 5000, Reason.NON_NUMERIC_FIELD),
    # Found by a user trial: what Python's int() and float() also take.
    (NUMERIC_RESTRICT, "1_000", Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, "\u0661\u0662", Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, "9223372036854775808", Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, "nan", Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, True, Reason.NON_NUMERIC_FIELD),
    (NUMERIC_RESTRICT, [1, 2], Reason.NON_NUMERIC_FIELD),
    (CROWDING_TAG, ["a", "b"], Reason.NON_STRING_FIELD),
])
def test_bad_carried_values_are_rejected_with_a_reason(kind, raw, reason):
  with pytest.raises(Rejected) as caught:
    carried_value(CarriedField("f", kind), raw, "doc")
  assert caught.value.reason == reason
  assert "'f'" in caught.value.detail


def test_datapoint_hash_changes_with_any_part():
  point = {"id": "a", "embedding": [0.5, 0.25],
           "restricts": [{"namespace": "l", "allow": ["en"]}]}
  same = json.loads(json.dumps(point))
  assert datapoint_hash(point) == datapoint_hash(same)
  for changed in (dict(point, id="b"), dict(point, embedding=[0.5, 0.5]),
                  dict(point, restricts=[{"namespace": "l",
                                          "allow": ["de"]}])):
    assert datapoint_hash(changed) != datapoint_hash(point)


@pytest.mark.parametrize("flags,fix", [
    (("--restrict_fields=lang",), "--vertex_export full"),
    (("--vertex_export=delta",), "--previous_run"),
    (("--vertex_export=full", "--restrict_fields=a",
      "--numeric_restrict_fields=a"), "in one flag"),
    (("--vertex_export=full", "--num_shards=6000"), "at most"),
])
def test_wrong_vertex_flags_fail_before_the_run(flags, fix, tiny_model_dir,
                                                corpus_file, tmp_path):
  with pytest.raises(ConfigError, match=fix):
    _run(tiny_model_dir, corpus_file, str(tmp_path / "run"), *flags)


def test_plain_text_has_no_fields_to_carry(tiny_model_dir, tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("one line\n")
  with pytest.raises(ConfigError, match="jsonl, csv"):
    _run(tiny_model_dir, str(corpus), str(tmp_path / "run"),
         "--vertex_export=full", "--restrict_fields=lang")


def test_delta_needs_a_previous_export(tiny_model_dir, tmp_path,
                                       corpus_file):
  first = str(tmp_path / "first")
  _run(tiny_model_dir, corpus_file, first)
  second = tmp_path / "second"
  with pytest.raises(ConfigError, match="--vertex_export full"):
    _run(tiny_model_dir, corpus_file, str(second),
         "--vertex_export=delta", f"--previous_run={first}")
  # Refused while planning: no lock left behind to refuse the next run.
  assert not second.exists() or not os.listdir(second)


def test_delta_to_a_model_of_another_dimension_is_refused(
    tiny_model_dir, tmp_path, corpus_file):
  # A Vector Search index has one dimension: a delta of 32-float datapoints
  # cannot update one built from 16-float ones (it once was published, and
  # its vertex_state claimed the index held them).
  wider = str(tmp_path / "wider")
  export.export_checkpoint(
      tiny_bert.write_tiny_checkpoint(str(tmp_path / "ckpt"), hidden=32,
                                      sentence_transformers=True),
      wider, name="tiny-bert-32")
  first = str(tmp_path / "first")
  _run(tiny_model_dir, corpus_file, first, "--vertex_export=full")
  second = tmp_path / "second"
  with pytest.raises(ConfigError, match="32 values.*16.*--vertex_export full"):
    _run(wider, corpus_file, str(second), "--vertex_export=delta",
         f"--previous_run={first}")
  assert not second.exists() or not os.listdir(second)
  # A full export of it is the way on.
  manifest = _run(wider, corpus_file, str(second), "--vertex_export=full",
                  f"--previous_run={first}")
  assert manifest["vertex"]["datapoints"] == 1
