"""Corpora as the tools users export them with write them: pandas, DuckDB,
TensorFlow.

Each file is written by the tool itself, with the options a user picks (or
a European Excel would), and read back: every record with its own id and
text, or, for a layout the readers do not take, one error that names the
fix. (Found by a trial with real exports, docs/nightly.md "What happens to
bad input".)
"""

import collections
import csv
import gzip
import lzma
import zipfile

import duckdb
import pandas as pd
import pytest
import tensorflow as tf

from pipeline import main
from pipeline import read_outputs
from run_directory.records import Document
from run_directory.records import Reason
from transforms import formats
from transforms.formats import infer_input_format
from transforms.formats.fields import RecordSpec
from transforms.formats.files import open_for_reading
from transforms.formats.files import read_file_records

# Real text with what trips delimited formats: the separators, quotes, line
# breaks inside a cell, and text beyond ASCII.
_ROWS = [
    {"id": "a1", "title": "semi", "text": "a;b;c, with; semicolons"},
    {"id": "a2", "title": "quotes",
     "text": 'He said "hello, world"; then left.\tTabbed.'},
    {"id": "a3", "title": "lines",
     "text": "The \"assert\" statement\n*********************\n\nAssert "
             "statements are a convenient way to insert debugging "
             "assertions into a program:"},
    {"id": "a4", "title": "café",
     "text": "Crème brûlée; “smart quotes”, an em dash — and 日本語."},
    {"id": "a5", "title": "crlf", "text": "line one\r\nline two"},
]


def _frame():
  return pd.DataFrame(_ROWS)


def _read(path, input_format, **spec):
  """(documents, dead letters) of one file, as the read stage reads it."""
  records = list(read_file_records(
      lambda: open_for_reading(
          lambda: open(path, "rb"), str(path),
          input_format in formats.RANDOM_ACCESS_FORMATS),
      str(path),
      lambda stream, source: formats.READERS[input_format](
          stream, source, RecordSpec(**spec))))
  documents = [r for r in records if isinstance(r, Document)]
  return documents, [r for r in records if not isinstance(r, Document)]


def _as_written(documents):
  return [(d.id, d.text) for d in documents]


_EXPECTED = [(row["id"], row["text"]) for row in _ROWS]


# -- Delimiters: Excel's ";" CSV, tab-separated files quoted like CSV ----------


@pytest.mark.parametrize("options", [
    # Excel's "CSV (semicolon)" where the decimal mark is a comma.
    dict(sep=";", encoding="utf-8-sig", lineterminator="\r\n"),
    dict(sep=";"),
    # Excel's "Unicode text": UTF-16, tabs, quoted cells.
    dict(sep="\t", encoding="utf-16"),
    dict(sep="\t"),
    # Every cell quoted, the header's too (R's write.csv2, pandas'
    # QUOTE_ALL, LibreOffice): "id";"title";"text" did not parse with
    # commas, and the whole file was one unreadable_file (a review).
    dict(sep=";", quoting=csv.QUOTE_ALL),
    dict(sep="\t", quoting=csv.QUOTE_ALL),
])
def test_csv_with_another_delimiter_reads_as_written(tmp_path, options):
  path = tmp_path / "corpus.csv"
  _frame().to_csv(path, index=False, **options)

  documents, dead_letters = _read(path, "csv")

  assert dead_letters == []
  assert _as_written(documents) == _EXPECTED


@pytest.mark.parametrize("separator", [";", ",", "\t", "|"])
def test_excels_delimiter_declaration_is_followed(tmp_path, separator):
  # A formats trial: the "sep=;" line some exporters write for Excel was
  # taken for the header, and every row was missing_field.
  path = tmp_path / "corpus.csv"
  path.write_text(f"sep={separator}\r\n" + _frame().to_csv(
      index=False, sep=separator, lineterminator="\r\n"), encoding="utf-8-sig")

  documents, dead_letters = _read(path, "csv")

  assert dead_letters == []
  assert _as_written(documents) == _EXPECTED


def test_the_delimiter_is_taken_only_when_the_header_needs_it(tmp_path):
  # A comma header that has the text column keeps commas, ";" in cells
  # and all.
  path = tmp_path / "comma.csv"
  _frame().to_csv(path, index=False)
  documents, dead_letters = _read(path, "csv")
  assert dead_letters == [] and _as_written(documents) == _EXPECTED

  # A header without it under any delimiter is read with commas, and its
  # rows told as before; the header shows the column to name.
  path = tmp_path / "no_text.csv"
  _frame().rename(columns={"text": "body"}).to_csv(path, index=False, sep=";")
  documents, dead_letters = _read(path, "csv")
  assert documents == []
  missing = [d for d in dead_letters if d.reason == Reason.MISSING_FIELD]
  assert missing and "id;title;body" in missing[0].detail

  # Named, the column is found under ";".
  documents, dead_letters = _read(path, "csv", text_field="body")
  assert dead_letters == [] and _as_written(documents) == _EXPECTED


@pytest.mark.parametrize("max_record_bytes", [None, 200])
def test_a_header_that_commas_run_over_loses_no_rows(tmp_path,
                                                     max_record_bytes):
  # A fuzzing find: in a ";" header, the column 'a,"' is written "a,""",
  # which read with commas opens a quoted cell that ran on over the data
  # rows. Every row was lost without a trace, or, when that run passed
  # --max_record_bytes (200: more than any row, less than the file), the
  # file was one unreadable_file.
  path = tmp_path / "corpus.csv"
  _frame().rename(columns={"title": 'a,"'}).to_csv(path, index=False,
                                                    sep=";")
  spec = {} if max_record_bytes is None else dict(
      max_record_bytes=max_record_bytes)

  documents, dead_letters = _read(path, "csv", **spec)

  assert dead_letters == []
  assert _as_written(documents) == _EXPECTED


def test_a_header_name_holding_a_line_break_is_read_with_its_delimiter(
    tmp_path):
  # A fuzzing find: a ";" header naming a column with a line break (a
  # quoted cell over two lines) was one unreadable_file, as only the one
  # line that commas had read was split on ";".
  path = tmp_path / "corpus.csv"
  _frame().rename(columns={"title": "the\ntitle"}).to_csv(
      path, index=False, sep=";", quoting=csv.QUOTE_ALL)

  documents, dead_letters = _read(path, "csv")

  assert dead_letters == []
  assert _as_written(documents) == _EXPECTED


def test_a_quoted_tab_separated_file_read_as_tsv_names_the_fix(tmp_path):
  # TSV is read unquoted (IANA): the lines of a quoted multi-line cell are
  # rows of the wrong width, and their errors say how to read the file.
  path = tmp_path / "corpus.tsv"
  _frame().to_csv(path, index=False, sep="\t")

  _, dead_letters = _read(path, "tsv")

  assert dead_letters
  assert all(d.reason == Reason.MALFORMED_RECORD for d in dead_letters)
  assert all("--input_format csv" in d.detail for d in dead_letters)


# -- JSON: an array of records is not JSON Lines -------------------------------


def _pandas_array(path):
  _frame().to_json(path, orient="records")


def _pandas_array_indented(path):
  _frame().to_json(path, orient="records", indent=2)


def _duckdb_copy(path, options):
  """DuckDB's COPY of the rows to `path`."""
  connection = duckdb.connect()
  connection.register("frame", _frame())
  connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' ({options})")


def _duckdb_array(path):
  _duckdb_copy(path, "FORMAT json, ARRAY true")


@pytest.mark.parametrize(
    "write", [_pandas_array, _pandas_array_indented, _duckdb_array])
def test_a_json_array_file_is_one_error_that_names_the_fix(tmp_path, write):
  # Read line by line, DuckDB's array gave an "Extra data" error per record
  # and read its last record as a document; pandas' gave one "got an array".
  path = tmp_path / "corpus.json"
  write(path)

  documents, dead_letters = _read(path, "jsonl")

  assert documents == []
  [dead_letter] = dead_letters
  assert dead_letter.reason == Reason.UNREADABLE_FILE
  assert "JSON array" in dead_letter.detail
  assert "lines=True" in dead_letter.detail


def test_a_json_array_on_one_line_over_the_record_limit_names_the_fix(
    tmp_path):
  # A review: pandas writes the array on one line, over --max_record_bytes
  # in any large corpus, and it was one record_too_large saying to raise
  # the limit.
  path = tmp_path / "corpus.json"
  _pandas_array(path)

  documents, dead_letters = _read(path, "jsonl", max_record_bytes=200)

  assert documents == []
  [dead_letter] = dead_letters
  assert dead_letter.reason == Reason.UNREADABLE_FILE
  assert "lines=True" in dead_letter.detail


def test_json_lines_written_by_the_tools_read_as_written(tmp_path):
  pandas_path = tmp_path / "pandas.jsonl"
  _frame().to_json(pandas_path, orient="records", lines=True)
  duckdb_path = tmp_path / "duckdb.json"
  _duckdb_copy(duckdb_path, "FORMAT json")

  for path in (pandas_path, duckdb_path):
    documents, dead_letters = _read(path, "jsonl")
    assert dead_letters == []
    assert _as_written(documents) == _EXPECTED


# -- Files in a legacy encoding ------------------------------------------------


@pytest.mark.parametrize("input_format", ["csv", "jsonl"])
def test_a_windows_1252_file_names_the_conversion(tmp_path, input_format):
  # Excel's "CSV (Comma delimited)" on Windows: a row with accents is not
  # UTF-8; its error says the file's encoding is the cause.
  frame = pd.DataFrame([_ROWS[0], _ROWS[2],
                        {"id": "c1", "title": "café",
                         "text": "Crème brûlée and café au lait"}])
  path = tmp_path / f"corpus.{input_format}"
  if input_format == "csv":
    frame.to_csv(path, index=False, encoding="cp1252")
  else:
    path.write_bytes(frame.to_json(orient="records", lines=True,
                                   force_ascii=False).encode("cp1252"))

  documents, dead_letters = _read(path, input_format)

  assert [d.id for d in documents] == ["a1", "a3"]
  [dead_letter] = dead_letters
  assert dead_letter.reason == Reason.INVALID_UTF8
  assert "iconv -f cp1252 -t utf-8" in dead_letter.detail


# -- Archives, workbooks and misnamed compressed files -------------------------


@pytest.mark.parametrize("name, expected", [
    ("corpus.csv.zip", "unpack it"),
    ("export/*.zip", "unpack it"),
    ("Corpus.XLSX", "save it as CSV UTF-8"),
    ("corpus.feather", "write Parquet instead"),
])
def test_formats_no_reader_reads_are_named_with_what_to_do(name, expected):
  # Not "pass --input_format": no reader would read them.
  with pytest.raises(ValueError, match=expected) as raised:
    infer_input_format(name)
  assert "--input_format" not in str(raised.value)


def _zipped(path):
  _frame().to_csv(path.with_suffix(""), index=False)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.write(path.with_suffix(""), "corpus.csv")


def _gzipped_without_suffix(path):
  path.write_bytes(gzip.compress(_frame().to_csv(index=False).encode()))


def _xz_without_suffix(path):
  path.write_bytes(lzma.compress(_frame().to_csv(index=False).encode()))


@pytest.mark.parametrize("write, name, expected", [
    (_zipped, "corpus.csv.zip", "ZIP archive"),
    (_gzipped_without_suffix, "corpus.csv", "name it with the suffix .gz"),
    (_xz_without_suffix, "corpus.csv", "name it with the suffix .xz"),
])
def test_a_misnamed_binary_file_is_one_error_saying_what_it_is(
    tmp_path, write, name, expected):
  # Read as CSV (--input_format csv), a ZIP archive or a gzip file without
  # its suffix was dozens of malformed rows, none saying why.
  path = tmp_path / name
  write(path)

  documents, dead_letters = _read(path, "csv")

  assert documents == []
  [dead_letter] = dead_letters
  assert dead_letter.reason == Reason.UNREADABLE_FILE
  assert expected in dead_letter.detail


# -- Parquet strings written as binary -----------------------------------------


def test_a_parquet_binary_text_column_is_read_as_utf8(tmp_path):
  # A column of bytes (pandas; fastparquet's object_encoding="bytes"; Impala
  # and Hive write strings so too): every row was non_string_field.
  frame = _frame()
  for column in ("id", "text"):
    frame[column] = frame[column].str.encode("utf-8")
  frame.loc[4, "text"] = "caf\xe9".encode("latin-1")
  path = tmp_path / "corpus.parquet"
  frame.to_parquet(path)

  documents, dead_letters = _read(path, "parquet")

  assert _as_written(documents) == _EXPECTED[:4]
  [dead_letter] = dead_letters
  assert (dead_letter.reason, dead_letter.id) == (Reason.INVALID_UTF8, "a5")


def test_a_parquet_binary_id_that_is_not_utf8_names_the_fix(tmp_path):
  # Digests in a bytes column (pandas): read as text like Hive's binary
  # strings, a digest that is not UTF-8 says how to write ids.
  frame = _frame()
  frame["id"] = [bytes([0xff, i]) for i in range(len(frame))]
  path = tmp_path / "digests.parquet"
  frame.to_parquet(path)

  documents, dead_letters = _read(path, "parquet")

  assert documents == []
  assert {d.reason for d in dead_letters} == {Reason.INVALID_UTF8}
  assert all("bytes.hex()" in d.detail for d in dead_letters)


# -- Ids pandas made floats ----------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_float_ids_are_rejected_with_the_pandas_fix(tmp_path, suffix):
  # An integer id column with one missing value: pandas makes it float64,
  # and writes 1000.0 (JSON) or a double column (Parquet).
  frame = _frame()
  frame["id"] = [1000.0, 1001.0, None, 1003.0, 1004.0]
  path = tmp_path / f"corpus.{suffix}"
  if suffix == "parquet":
    frame.to_parquet(path)
  else:
    frame.to_json(path, orient="records", lines=True)

  documents, dead_letters = _read(path, suffix)

  assert [d.position for d in documents] == [2]  # the null: a derived id
  assert [d.reason for d in dead_letters] == [Reason.NON_STRING_FIELD] * 4
  assert all("astype('Int64')" in d.detail for d in dead_letters)


# -- TFRecord files TensorFlow compressed under a bare name --------------------


def _write_tfrecord(path, compression_type):
  with tf.io.TFRecordWriter(str(path), compression_type) as writer:
    for row in _ROWS:
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          name: tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[row[name].encode()])) for name in ("id", "text")
      })).SerializeToString())


@pytest.mark.parametrize("compression_type, suffix",
                         [("GZIP", ".gz"), ("ZLIB", ".deflate")])
def test_a_compressed_tfrecord_file_is_told_the_suffix_it_needs(
    tmp_path, compression_type, suffix):
  # The old hint named .gz for both; a ZLIB file renamed .gz fails again.
  path = tmp_path / "corpus.tfrecord"
  _write_tfrecord(path, compression_type)

  documents, dead_letters = _read(path, "tfrecord")

  assert documents == []
  [dead_letter] = dead_letters
  assert dead_letter.reason == Reason.UNREADABLE_FILE
  assert f"compression_type='{compression_type}'" in dead_letter.detail
  assert f".tfrecord{suffix}" in dead_letter.detail

  renamed = path.rename(tmp_path / f"corpus.tfrecord{suffix}")
  documents, dead_letters = _read(renamed, "tfrecord")
  assert dead_letters == [] and _as_written(documents) == _EXPECTED


def test_text_read_as_tfrecord_is_not_told_it_is_compressed(tmp_path):
  # A review: "Hj" passes zlib's two-byte header check; only the bytes
  # after it tell text from a zlib stream.
  path = tmp_path / "notes.tfrecord"
  path.write_text("Hj, these are notes, not a TFRecord file at all.\n")

  [dead_letter] = _read(path, "tfrecord")[1]

  assert dead_letter.reason == Reason.UNREADABLE_FILE
  assert "not a TFRecord file?" in dead_letter.detail
  assert "zlib" not in dead_letter.detail


# -- The whole pipeline on a European Excel export -----------------------------


def test_a_semicolon_csv_runs_through_the_pipeline(tmp_path, tiny_model_dir):
  path = tmp_path / "corpus.csv"
  _frame().to_csv(path, index=False, sep=";", encoding="utf-8-sig",
                  lineterminator="\r\n")
  run_dir = str(tmp_path / "run")

  code = main.main([f"--input={path}", f"--output={run_dir}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner",
                    "--neighbours_k=2"])

  assert code == 0
  counts = read_outputs.load_manifest(run_dir)["counts"]
  assert collections.Counter(
      {k: counts[k] for k in ("read", "embedded", "dead_lettered")}) == (
          collections.Counter(read=5, embedded=5))
  rows = read_outputs.read_table(run_dir).to_pylist()
  assert sorted((r["id"], r["text"]) for r in rows) == sorted(_EXPECTED)
