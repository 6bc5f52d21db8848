"""The check before the run of the fields the flags name
(pipeline/field_check.py): a flag no sampled record has fails then; a
corpus that only starts badly, or has one good file, is left to the run."""

import pandas as pd
import pytest
import tensorflow as tf

from pipeline import field_check
from pipeline.errors import ConfigError
from pipeline.field_check import check_fields
from transforms.formats.fields import RecordSpec
from transforms.read import CorpusSettings

_FRAME = pd.DataFrame({"id": [f"d{i}" for i in range(30)],
                       "body": [f"text number {i}" for i in range(30)]})


def _tfrecord(frame, path):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for row in frame.itertuples(index=False):
      feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[value.encode()])) for name, value in row._asdict().items()}
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())


# Each format as a tool other than this project writes it.
_WRITERS = {
    "jsonl": lambda frame, path: frame.to_json(path, orient="records",
                                               lines=True),
    "csv": lambda frame, path: frame.to_csv(path, index=False),
    "tsv": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "parquet": lambda frame, path: frame.to_parquet(path),
    "tfrecord": _tfrecord,
}


def _corpus(tmp_path, input_format, frame=_FRAME, name="corpus", **spec):
  path = tmp_path / f"{name}.{input_format}"
  _WRITERS[input_format](frame, path)
  return CorpusSettings(str(path), input_format, RecordSpec(**spec))


@pytest.mark.parametrize("input_format", sorted(_WRITERS))
def test_a_field_no_record_has_fails_naming_the_flag(tmp_path, input_format):
  corpus = _corpus(tmp_path, input_format)  # text under "body", not "text"
  with pytest.raises(ConfigError) as error:
    check_fields("--input", corpus)
  kind = {"jsonl": "field", "tfrecord": "feature"}.get(input_format, "column")
  assert str(error.value).startswith(
      f"--input={corpus.pattern}: no 'text' {kind}")
  assert ("set --text_field. (Each of the 30 records read from its first 1 "
          "file(s) before the run lacks a field the flags name") in str(
              error.value)
  check_fields("--input", _corpus(tmp_path, input_format, text_field="body"))


def test_the_flag_a_record_spec_names_is_the_one_told(tmp_path):
  queries = _corpus(tmp_path, "jsonl", text_field="body",
                    text_pair_field="pair",
                    text_pair_flag="--text_pair_field (it applies to the "
                    "--neighbours_of queries too)")
  with pytest.raises(ConfigError, match=r"no 'pair' field \(fields: body, "
                     r"id\); set --text_pair_field \(it applies to the "
                     r"--neighbours_of queries too\)"):
    check_fields("--neighbours_of", queries)


def test_a_corpus_that_only_starts_badly_is_left_to_the_run(tmp_path):
  # One good record in the sample, or one with another error, and the run
  # (with its guardrails) decides.
  frame = _FRAME.rename(columns={"body": "text"}).astype(object)
  frame.loc[:9, "text"] = None  # JSON null: a missing text
  check_fields("--input", _corpus(tmp_path, "jsonl", frame))
  bad_first = tmp_path / "bad_first.jsonl"
  bad_first.write_text('{"id": "a", "body": \n' +
                       _FRAME.to_json(orient="records", lines=True))
  check_fields("--input", CorpusSettings(str(bad_first), "jsonl"))


def test_one_file_with_the_field_among_those_sampled_is_enough(tmp_path):
  _corpus(tmp_path, "jsonl", name="a")
  _corpus(tmp_path, "jsonl", _FRAME.rename(columns={"body": "text"}),
          name="b")
  check_fields("--input", CorpusSettings(str(tmp_path / "*.jsonl"), "jsonl"))
  (tmp_path / "b.jsonl").unlink()
  with pytest.raises(ConfigError, match="from its first 1 file"):
    check_fields("--input", CorpusSettings(str(tmp_path / "*.jsonl"),
                                           "jsonl"))


def test_a_storage_error_leaves_the_fields_to_the_run(tmp_path, monkeypatch,
                                                      caplog):
  # A retry may cure it: the run's reads retry, a sample is not worth a
  # failed run (nor a traceback before it).
  corpus = _corpus(tmp_path, "jsonl")

  def unreachable(*args, **kwargs):
    raise ConnectionError("connection reset by peer")

  monkeypatch.setattr(field_check, "read_path", unreachable)
  check_fields("--input", corpus)
  assert "its first records could not be read before the run" in caplog.text
