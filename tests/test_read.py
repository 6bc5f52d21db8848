"""Tests of the read stage: every format, every dead-letter reason, bad files.

Each Beam test builds one pipeline over a few small files (a pipeline costs
~1-2 s to start), and checks the exact Documents and the exact
(source, position, stage, reason, id) of the dead letters. Edge cases that need
no runner go straight to the per-format readers over in-memory streams.
"""

import gzip
import io
import json

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.local_runner import LocalRunner
from run_directory.records import derive_document_id
from run_directory.records import Document
from run_directory.records import Reason
from transforms import formats
from transforms.formats import INPUT_FORMATS, infer_input_format
from transforms.formats import parquet as parquet_format
from transforms.formats import tfrecord as tfrecord_format
from run_directory.vertex import RESTRICT
from transforms.formats.carried import carried_value
from transforms.formats.carried import CarriedField
from transforms.formats.fields import kind_of
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected
from transforms.formats.jsonl import parse_json_object
from transforms.formats.files import read_file_records
from transforms.names import DEAD_LETTERS
from transforms.names import DOCUMENTS
from transforms.names import METRICS_NAMESPACE
from transforms.read import ReadCorpus


def _doc(source, position, text, doc_id=None):
  """The expected Document; no id means the derived one."""
  return Document(
      id=doc_id or derive_document_id(str(source), text),
      text=text,
      source=str(source),
      position=position)


def _dead(source, position, reason, doc_id=None):
  """The expected dead letter, as _dead_letter_key projects it."""
  return (str(source), position, "read", reason, doc_id)


def _dead_letter_key(dead_letter):
  return (dead_letter.source, dead_letter.position, dead_letter.stage,
          dead_letter.reason, dead_letter.id)


def _expect(outputs, documents, dead_letters, label):
  """Asserts a ReadCorpus output holds exactly these records."""
  assert_that(outputs[DOCUMENTS], equal_to(documents), label=f"{label}Docs")
  assert_that(
      outputs[DEAD_LETTERS] | f"{label}Keys" >> beam.Map(_dead_letter_key),
      equal_to(dead_letters),
      label=f"{label}Dead")


def _test_pipeline():
  return test_pipeline.TestPipeline(runner=LocalRunner())


def _reader(input_format, **spec):
  """A format's reader as read_file_records calls it: (stream, source)."""
  return lambda stream, source: formats.READERS[input_format](
      stream, source, RecordSpec(**spec))


# -- Formats: inference and construction-time errors ---------------------------


@pytest.mark.parametrize("pattern, expected", [
    ("corpus.txt", "text"),
    ("/data/notes.TEXT", "text"),
    ("gs://bucket/dir/part-*.jsonl", "jsonl"),
    ("gs://bucket/dir/part-*.jsonl.gz", "jsonl"),
    ("a.ndjson", "jsonl"),
    ("a.json", "jsonl"),
    ("rows.csv", "csv"),
    ("rows.csv.bz2", "csv"),
    ("rows.tsv", "tsv"),
    ("gs://b/table/*.parquet", "parquet"),
    ("x.tfrecord", "tfrecord"),
    ("x-*-of-00010.tfrecords", "tfrecord"),
    ("x.tfr.gz", "tfrecord"),
])
def test_infer_input_format(pattern, expected):
  assert infer_input_format(pattern) == expected


@pytest.mark.parametrize("pattern", [
    "data/*", "data/", "corpus.avro", "gs://bucket/dir.csv/part-*", "csv",
    "archive.gz"
])
def test_infer_input_format_names_the_fix_when_it_cannot(pattern):
  with pytest.raises(ValueError, match="--input_format"):
    infer_input_format(pattern)


def test_read_corpus_checks_its_format_at_construction():
  with pytest.raises(ValueError, match="--input_format"):
    ReadCorpus("gs://bucket/corpus/*")
  with pytest.raises(ValueError, match="--input_format"):
    ReadCorpus("a.txt", input_format="xml")
  with pytest.raises(ValueError, match="different formats"):
    ReadCorpus(["a.txt", "b.csv"])
  assert ReadCorpus(["a.txt", "b/*.txt.gz"]).input_format == "text"
  # An explicit format wins over the extension.
  assert ReadCorpus("data/*", input_format="jsonl").input_format == "jsonl"
  assert set(INPUT_FORMATS) == {
      "text", "jsonl", "csv", "tsv", "parquet", "tfrecord"
  }


# -- Text --------------------------------------------------------------------------


def test_read_text(tmp_path):
  lines = tmp_path / "lines.txt"
  lines.write_bytes(b"hello\n"
                    b"  keeps spaces \t\r\n"
                    b"\n"
                    b"bad \xff byte\n"
                    b"\xef\xbb\xbfnot a BOM here\n"
                    b"no newline at the end")
  (tmp_path / "one.txt").write_bytes(b"only line\n")
  (tmp_path / "empty.txt").write_bytes(b"")
  compressed = tmp_path / "packed.txt.gz"
  compressed.write_bytes(gzip.compress(b"\xef\xbb\xbfunzipped\nsecond\n"))

  with _test_pipeline() as p:
    # lines.txt is matched by two patterns and must be read once.
    outputs = p | ReadCorpus([
        str(tmp_path / "*.txt"),
        str(lines),
        str(tmp_path / "*.txt.gz"),
    ])
    _expect(
        outputs, [
            _doc(lines, 0, "hello"),
            _doc(lines, 1, "  keeps spaces \t"),
            _doc(lines, 2, ""),
            _doc(lines, 4, "\ufeffnot a BOM here"),
            _doc(lines, 5, "no newline at the end"),
            _doc(tmp_path / "one.txt", 0, "only line"),
            _doc(compressed, 0, "unzipped"),
            _doc(compressed, 1, "second"),
        ], [_dead(lines, 3, Reason.INVALID_UTF8)],
        label="Text")
    assert_that(
        outputs[DEAD_LETTERS] | beam.Map(lambda dead: dead.snippet),
        equal_to(["bad \\xff byte"]),
        label="SnippetShowsTheBadByte")


def test_read_counts_documents_and_dead_letters(tmp_path):
  (tmp_path / "a.txt").write_bytes(b"one\ntwo\n\xff\n")
  p = _test_pipeline()
  _ = p | ReadCorpus(str(tmp_path / "a.txt"))
  result = p.run()
  result.wait_until_finish()

  def counter(name):
    query = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))
    return sum(c.committed for c in query["counters"])

  assert counter("read") == 3  # every record, good or bad
  assert counter("dead_lettered") == 1


# -- JSONL -------------------------------------------------------------------------


def test_read_jsonl(tmp_path):
  records = tmp_path / "records.jsonl"
  lines = [
      b'{"id": "a1", "text": "alpha", "extra": [1]}',  # 0
      b'{"id": 7, "text": "seven"}',  # 1: integer id
      b'{"text": "no id"}',  # 2: derived id
      b'{"id": null, "text": "null id"}',  # 3: derived id
      b'{"id": "", "text": "empty id"}',  # 4: derived id
      b'{not json',  # 5
      b'[1, 2]',  # 6: not an object
      b'',  # 7: blank line
      b'{"id": "m"}',  # 8
      b'{"id": "n", "text": null}',  # 9
      b'{"id": "x", "text": 5}',  # 10
      b'{"id": true, "text": "bool id"}',  # 11
      b'{"id": 1.5, "text": "float id"}',  # 12
      b'{"id": "u", "text": "\xff"}',  # 13: raw invalid UTF-8
      b'{"id": "s", "text": "\\ud800 lone surrogate"}',  # 14
      b'{"id": "crlf", "text": "windows"}\r',  # 15, ends in \r\n
      b'{"id": "\\udfff", "text": "lone surrogate id"}',  # 16
  ]
  records.write_bytes(b"\n".join(lines) + b"\n")
  renamed = tmp_path / "renamed.ndjson"
  renamed.write_text(
      json.dumps({"key": "k1", "body": "custom fields", "text": "ignored"}) +
      "\n" + json.dumps({"id": "k2", "text": "wrong fields"}) + "\n")

  with _test_pipeline() as p:
    outputs = p | "Default" >> ReadCorpus(str(records))
    _expect(
        outputs, [
            _doc(records, 0, "alpha", "a1"),
            _doc(records, 1, "seven", "7"),
            _doc(records, 2, "no id"),
            _doc(records, 3, "null id"),
            _doc(records, 4, "empty id"),
            _doc(records, 15, "windows", "crlf"),
        ], [
            _dead(records, 5, Reason.MALFORMED_RECORD),
            _dead(records, 6, Reason.MALFORMED_RECORD),
            _dead(records, 7, Reason.MALFORMED_RECORD),
            _dead(records, 8, Reason.MISSING_FIELD, "m"),
            _dead(records, 9, Reason.MISSING_FIELD, "n"),
            _dead(records, 10, Reason.NON_STRING_FIELD, "x"),
            _dead(records, 11, Reason.NON_STRING_FIELD),
            _dead(records, 12, Reason.NON_STRING_FIELD),
            _dead(records, 13, Reason.INVALID_UTF8),
            _dead(records, 14, Reason.INVALID_UTF8, "s"),
            _dead(records, 16, Reason.INVALID_UTF8),
        ],
        label="Jsonl")
    custom = p | "Custom" >> ReadCorpus(
        str(renamed), record=RecordSpec(id_field="key", text_field="body"))
    _expect(
        custom, [_doc(renamed, 0, "custom fields", "k1")],
        [_dead(renamed, 1, Reason.MISSING_FIELD)],
        label="CustomFields")


# -- CSV and TSV ---------------------------------------------------------------------


def test_read_csv(tmp_path):
  rows = tmp_path / "rows.csv"
  rows.write_bytes(b"id,text,lang\n"
                   b'a,"hello, world",en\n'  # 0
                   b',"multi\nline ""quoted""",en\n'  # 1: derived id
                   b"b,too,many,cells\n"  # 2
                   b"\n"  # blank: no record
                   b"c,bad \xff byte,en\n"  # 3
                   b'd,"x"y,en\n'  # 4: bad quoting
                   b"e,last,en\n")  # 5
  no_text = tmp_path / "no_text.csv"
  no_text.write_text("id,body\n1,first\n2,second\n")
  unterminated = tmp_path / "unterminated.csv"
  unterminated.write_text('text\nfine\n"never closed\nnot swallowed\n')
  (tmp_path / "empty.csv").write_bytes(b"")
  (tmp_path / "header_only.csv").write_text("id,text\n")

  with _test_pipeline() as p:
    outputs = p | ReadCorpus(str(tmp_path / "*.csv"))
    _expect(
        outputs, [
            _doc(rows, 0, "hello, world", "a"),
            _doc(rows, 1, 'multi\nline "quoted"'),
            _doc(rows, 5, "last", "e"),
            _doc(unterminated, 0, "fine"),
            # The unterminated quote costs its own line only.
            _doc(unterminated, 2, "not swallowed"),
        ], [
            _dead(rows, 2, Reason.MALFORMED_RECORD),
            _dead(rows, 3, Reason.INVALID_UTF8, "c"),
            _dead(rows, 4, Reason.MALFORMED_RECORD),
            _dead(no_text, 0, Reason.MISSING_FIELD, "1"),
            _dead(no_text, 1, Reason.MISSING_FIELD, "2"),
            _dead(unterminated, 1, Reason.MALFORMED_RECORD),
        ],
        label="Csv")


def test_read_tsv(tmp_path):
  # TSV has no quoting: a quote is text, and a tab always splits.
  rows = tmp_path / "rows.tsv"
  rows.write_bytes(b"text\tid\r\n"
                   b"first row\tt1\r\n"
                   b'"tab\tinside"\tt2\r\n'
                   b"commas, are, text\t\r\n"
                   b"one cell only\r\n"
                   b'"a quote opens\tt5\n'
                   b"the next row\tt6\n")

  with _test_pipeline() as p:
    outputs = p | ReadCorpus(str(rows))
    _expect(
        outputs, [
            _doc(rows, 0, "first row", "t1"),
            _doc(rows, 2, "commas, are, text"),
            _doc(rows, 4, '"a quote opens', "t5"),
            _doc(rows, 5, "the next row", "t6"),
        ], [
            _dead(rows, 1, Reason.MALFORMED_RECORD),
            _dead(rows, 3, Reason.MALFORMED_RECORD),
        ],
        label="Tsv")


def test_csv_fields_may_exceed_the_csv_module_default_limit():
  long_text = "word " * 60_000  # 300 kB, over the csv module's 128 KiB
  data = f'id,text\nlong,"{long_text}"\nnext,short\n'.encode()

  records = list(
      formats.READERS["csv"](io.BytesIO(data), "big.csv", RecordSpec()))

  assert [(r.id, r.text, r.position) for r in records] == [
      ("long", long_text, 0), ("next", "short", 1)
  ]


# -- Parquet ---------------------------------------------------------------------------


def test_read_parquet(tmp_path):
  int_ids = tmp_path / "int_ids.parquet"
  pq.write_table(
      pa.table({
          "id": pa.array([10, 11, 12], pa.int64()),
          "text": ["ten", None, "twelve"],
      }), int_ids)
  string_ids = tmp_path / "string_ids.parquet"
  pq.write_table(
      pa.table({
          "text": pa.array(["x", "y", "z"], pa.large_string()),
          "id": ["s0", None, ""],
      }), string_ids)
  no_ids = tmp_path / "no_ids.parquet"
  pq.write_table(pa.table({"text": ["derived"]}), no_ids)
  int_text = tmp_path / "int_text.parquet"
  pq.write_table(pa.table({"id": ["n0", "n1"], "text": [1, 2]}), int_text)
  no_text = tmp_path / "no_text.parquet"
  pq.write_table(pa.table({"id": ["m0", "m1"], "body": ["a", "b"]}), no_text)
  bad_ids = tmp_path / "bad_ids.parquet"
  pq.write_table(pa.table({"id": [1.5], "text": ["float id"]}), bad_ids)
  not_parquet = tmp_path / "not_parquet.parquet"
  not_parquet.write_text("just some text\n")
  (tmp_path / "empty.parquet").write_bytes(b"")

  with _test_pipeline() as p:
    outputs = p | ReadCorpus(str(tmp_path / "*.parquet"))
    _expect(
        outputs, [
            _doc(int_ids, 0, "ten", "10"),
            _doc(int_ids, 2, "twelve", "12"),
            _doc(string_ids, 0, "x", "s0"),
            _doc(string_ids, 1, "y"),
            _doc(string_ids, 2, "z"),
            _doc(no_ids, 0, "derived"),
        ], [
            _dead(int_ids, 1, Reason.MISSING_FIELD, "11"),
            _dead(int_text, 0, Reason.NON_STRING_FIELD, "n0"),
            _dead(int_text, 1, Reason.NON_STRING_FIELD, "n1"),
            _dead(no_text, 0, Reason.MISSING_FIELD, "m0"),
            _dead(no_text, 1, Reason.MISSING_FIELD, "m1"),
            _dead(bad_ids, 0, Reason.NON_STRING_FIELD),
            _dead(not_parquet, -1, Reason.UNREADABLE_FILE),
        ],
        label="Parquet")


def _parquet_bytes(table, **write_options):
  sink = io.BytesIO()
  pq.write_table(table, sink, **write_options)
  return sink.getvalue()


def test_parquet_positions_run_on_across_batches(monkeypatch):
  monkeypatch.setattr(parquet_format, "_BATCH_ROWS", 2)
  data = _parquet_bytes(pa.table({"text": [f"t{i}" for i in range(5)]}))
  records = list(
      formats.READERS["parquet"](io.BytesIO(data), "s.parquet", RecordSpec()))
  assert [(r.position, r.text) for r in records] == [(i, f"t{i}")
                                                      for i in range(5)]


def test_corrupt_parquet_keeps_the_rows_before_the_damage():
  table = pa.table({"text": [f"row {i}" for i in range(6)]})
  data = bytearray(_parquet_bytes(table, row_group_size=2,
                                  compression="none"))
  metadata = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
  damaged_page = metadata.row_group(2).column(0).data_page_offset
  data[damaged_page:damaged_page + 8] = b"\xff" * 8

  records = list(
      read_file_records(lambda: io.BytesIO(bytes(data)), "s.parquet",
                        _reader("parquet")))

  assert [r.text for r in records[:-1]] == [f"row {i}" for i in range(4)]
  assert records[-1].reason == Reason.UNREADABLE_FILE
  assert records[-1].position == 4


# -- TFRecord of tf.train.Example ---------------------------------------------------


def _example(**features):
  """A serialized tf.train.Example; bytes, int or float values per feature."""
  feature_map = {}
  for name, values in features.items():
    if all(isinstance(v, bytes) for v in values):
      feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    elif all(isinstance(v, int) for v in values):
      feature = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    else:
      feature = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    feature_map[name] = feature
  return tf.train.Example(features=tf.train.Features(
      feature=feature_map)).SerializeToString()


def _write_tfrecord(path, records, compression_type=None):
  with tf.io.TFRecordWriter(str(path), options=compression_type) as writer:
    for record in records:
      writer.write(record)


def test_read_tfrecord(tmp_path):
  # Features of one kind throughout: the whole file decodes as one batch.
  batch = tmp_path / "batch.tfrecord"
  _write_tfrecord(batch, [
      _example(id=[b"t0"], text=[b"zero"]),  # 0
      _example(text=[b"derived"]),  # 1
      _example(id=[b"m"]),  # 2: no text
      _example(id=[b"two"], text=[b"a", b"b"]),  # 3: two values
      _example(id=[b"u"], text=[b"\xff"]),  # 4: invalid UTF-8
      _example(id=[b"e"], text=[]),  # 5: empty feature
      _example(id=[b"\xfe"], text=[b"bad id"]),  # 6: invalid UTF-8 id
  ])
  # Kinds that differ between Examples, and an unparsable proto: the batch
  # fails to decode and falls back to one Example at a time.
  mixed = tmp_path / "mixed.tfrecord"
  _write_tfrecord(mixed, [
      _example(id=[5], text=[b"five"]),  # 0: int64 id
      b"\xff\xff not a proto",  # 1
      _example(id=[b"i"], text=[7]),  # 2: int64 text
      _example(id=[b"f"], text=[0.5]),  # 3: float text
      _example(id=[0.5], text=[b"float id"]),  # 4
      _example(id=[b"last"], text=[b"after the bad ones"]),  # 5
  ])
  compressed = tmp_path / "packed.tfrecord.gz"
  _write_tfrecord(compressed, [_example(id=[b"z"], text=[b"zipped"])], "GZIP")
  # Good records, then a frame whose length fails its CRC.
  corrupt = tmp_path / "corrupt.tfrecord"
  frames = [_example(id=[f"c{i}".encode()], text=[b"ok"]) for i in range(3)]
  _write_tfrecord(corrupt, frames)
  damaged = bytearray(corrupt.read_bytes())
  damaged[2 * 16 + len(frames[0]) + len(frames[1])] ^= 0x01
  corrupt.write_bytes(bytes(damaged))
  # A frame whose data alone is damaged (found by an acceptance audit: it
  # once ended the file, and the records after it were lost).
  bad_data = tmp_path / "bad_data.tfrecord"
  frames = [_example(id=[f"b{i}".encode()], text=[b"fine"]) for i in range(4)]
  _write_tfrecord(bad_data, frames)
  damaged = bytearray(bad_data.read_bytes())
  damaged[16 + len(frames[0]) + 12 + 2] ^= 0x01  # in frame 1's data
  bad_data.write_bytes(bytes(damaged))
  not_tfrecord = tmp_path / "not_tfrecord.tfrecord"
  not_tfrecord.write_text("plain text, no TFRecord framing\n")
  (tmp_path / "empty.tfrecord").write_bytes(b"")

  with _test_pipeline() as p:
    outputs = p | ReadCorpus(
        [str(tmp_path / "*.tfrecord"),
         str(tmp_path / "*.tfrecord.gz")])
    _expect(
        outputs, [
            _doc(batch, 0, "zero", "t0"),
            _doc(batch, 1, "derived"),
            _doc(mixed, 0, "five", "5"),
            _doc(mixed, 5, "after the bad ones", "last"),
            _doc(compressed, 0, "zipped", "z"),
            _doc(corrupt, 0, "ok", "c0"),
            _doc(corrupt, 1, "ok", "c1"),
            _doc(bad_data, 0, "fine", "b0"),
            _doc(bad_data, 2, "fine", "b2"),
            _doc(bad_data, 3, "fine", "b3"),
        ], [
            _dead(batch, 2, Reason.MISSING_FIELD, "m"),
            _dead(batch, 3, Reason.NON_STRING_FIELD, "two"),
            _dead(batch, 4, Reason.INVALID_UTF8, "u"),
            _dead(batch, 5, Reason.MISSING_FIELD, "e"),
            _dead(batch, 6, Reason.INVALID_UTF8),
            _dead(mixed, 1, Reason.MALFORMED_RECORD),
            _dead(mixed, 2, Reason.NON_STRING_FIELD, "i"),
            _dead(mixed, 3, Reason.NON_STRING_FIELD, "f"),
            _dead(mixed, 4, Reason.NON_STRING_FIELD),
            _dead(corrupt, 2, Reason.UNREADABLE_FILE),
            _dead(bad_data, 1, Reason.MALFORMED_RECORD),
            _dead(not_tfrecord, -1, Reason.UNREADABLE_FILE),
        ],
        label="TFRecord")


def test_truncated_tfrecord_keeps_the_records_of_earlier_batches(
    tmp_path, monkeypatch):
  monkeypatch.setattr(tfrecord_format, "_BATCH_RECORDS", 2)
  path = tmp_path / "cut.tfrecord"
  _write_tfrecord(path, [_example(text=[f"r{i}".encode()]) for i in range(5)])
  data = path.read_bytes()[:-3]  # the last frame loses its CRC

  records = list(
      read_file_records(lambda: io.BytesIO(data), "cut.tfrecord",
                        _reader("tfrecord")))

  assert [(r.position, r.text) for r in records[:-1]] == [
      (i, f"r{i}") for i in range(4)
  ]
  assert (records[-1].position, records[-1].reason) == (4,
                                                        Reason.UNREADABLE_FILE)


# -- Errors of the storage layer -----------------------------------------------------


def test_a_null_text_is_told_apart_from_an_absent_one():
  # A null text once read "no 'text' field (fields: id, text); set
  # --text_field", naming the field it says is not there.
  lines = b'{"id": "a", "text": null}\n{"id": "b", "body": "x"}\n'
  records = list(read_file_records(lambda: io.BytesIO(lines), "n.jsonl",
                                   _reader("jsonl")))
  assert [(r.reason, r.detail) for r in records] == [
      (Reason.MISSING_FIELD, "'text' is null"),
      (Reason.MISSING_FIELD, "no 'text' field (fields: body, id); set "
       "--text_field")]


class _FlakyStream(io.BytesIO):

  def readline(self, *args):
    raise ConnectionResetError("connection reset by peer")


def test_transient_storage_errors_fail_the_bundle_for_a_retry():
  with pytest.raises(ConnectionResetError):
    list(
        read_file_records(lambda: _FlakyStream(b"x\n"), "gs://b/a.txt",
                          _reader("text")))


def test_a_missing_file_is_one_unreadable_file_dead_letter():

  def open_gone_file():
    raise FileNotFoundError("gs://b/gone.txt")

  records = list(
      read_file_records(open_gone_file, "gs://b/gone.txt", _reader("text")))

  assert [(r.source, r.position, r.reason) for r in records
         ] == [("gs://b/gone.txt", -1, Reason.UNREADABLE_FILE)]


@pytest.mark.parametrize("value, kind", [
    (True, "a boolean"), (7, "an integer"), (1.5, "a number"),
    ("x", "a string"), ({"a": 1}, "an object"), ([1], "an array"),
    (None, "null"), (b"x", "bytes")])
def test_kinds_are_named_as_json_names_them(value, kind):
  assert kind_of(value) == kind


def test_details_name_json_kinds_not_the_readers_classes():
  # A new user's trial met "is a _JsonObject" (the reader's ordered object)
  # and "is a int" in error details.
  with pytest.raises(Rejected, match="expected a JSON object, got an array"):
    parse_json_object(b"[1, 2]")
  record = parse_json_object(b'{"lang": {"a": 1}, "n": 12345678901234567890}')
  with pytest.raises(Rejected, match=r"field 'lang' \(--restrict_fields\) is "
                     r"an object, not a string or integer"):
    carried_value(CarriedField("lang", RESTRICT), record["lang"], None)
