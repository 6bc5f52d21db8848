"""Regression tests of inputs that once crashed a run or lost records.

Each case is an input found by trying the pipeline as a new user would (the
exact inputs of issue 14). The promise they check: bad input never stops a
run and is never lost. Every record ends in exactly one of the embeddings or
the errors, the counts add up, and error rows are valid UTF-8 JSON of bounded
size, whatever they quote.
"""

import bz2
import gzip
import io
import json
import lzma
import os
import struct
import tracemalloc
import zlib

from google.api_core import exceptions as google_api_errors
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import tensorflow as tf
import zstandard

from pipeline import read_outputs
from run_directory.records import DeadLetter
from run_directory.records import DETAIL_CHARS
from run_directory.records import ID_CHARS
from run_directory.records import Document
from run_directory.records import SNIPPET_CHARS
from run_directory.tfrecord import encode_frame
from run_directory.tfrecord import masked_crc32c
from transforms import formats
from transforms.formats.fields import RecordSpec
from transforms.formats.files import open_for_reading
from transforms.formats.files import read_file_records
from transforms.formats.lines import iter_lines
from tests.main_runs import run_main as _run

# Reasons, spelled out here (the errors table's contract), not imported.
EMPTY = "empty_text"
UTF8 = "invalid_utf8"
MALFORMED = "malformed_record"
MISSING = "missing_field"
UNREADABLE = "unreadable_file"
TOO_LARGE = "record_too_large"

# An error row's JSON, at most: bounded detail and snippet, plus the rest.
MAX_ERROR_ROW_BYTES = 4 * (DETAIL_CHARS + SNIPPET_CHARS + ID_CHARS) + 2048


def _read(input_format, data: bytes, source="f", **spec):
  """Every record of one file, as the read stage sees it."""
  random_access = input_format in formats.RANDOM_ACCESS_FORMATS
  return list(read_file_records(
      lambda: open_for_reading(lambda: io.BytesIO(data), source,
                               random_access), source,
      lambda stream, src: formats.READERS[input_format](
          stream, src, RecordSpec(**spec))))


def _kinds(records):
  return [(r.position, r.reason if isinstance(r, DeadLetter) else "doc")
          for r in records]


def _check_error_rows(run_dir):
  """Error rows as written: valid UTF-8 JSON, bounded in size."""
  manifest = read_outputs.load_manifest(run_dir)
  rows = []
  for relative in manifest["outputs"]["errors"]["jsonl"]:
    with open(os.path.join(run_dir, relative), "rb") as f:
      for line in f:
        assert len(line) <= MAX_ERROR_ROW_BYTES
        rows.append(json.loads(line.decode("utf-8")))
  counts = manifest["counts"]
  assert counts["read"] == counts["embedded"] + counts["dead_lettered"]
  assert counts["dead_lettered"] == len(rows)
  return manifest, rows


# ---------------------------------------------------------------------------
# JSON lines: one bad line costs only itself, and its error row is writable.


def test_hostile_json_lines_cost_only_themselves(tmp_path, tiny_model_dir):
  lines = [
      b'{"id": "ok-0", "text": "the quick brown fox"}',
      b"[" * 1000 + b"]" * 1000,  # nested 1,000 deep
      b'{"id":"s1","\\ud800k":"x"}',  # a key with a lone surrogate escape
      b'{"id": "big", "text": "a big number", "n": ' + b"9" * 5000 + b"}",
      b'{"id": "ok-4", "text": "after the big number"}',
      json.dumps({f"k{i}": i for i in range(20000)}).encode(),  # no text
      json.dumps({"id": "zw", "text": "\u200b\u200b\ufeff"}).encode(),
      json.dumps({"id": "nul", "text": "\x00\x01\x1b\x7f"}).encode(),
      json.dumps({"id": "shy", "text": "\u00ad"}).encode(),
      json.dumps({"id": "tex", "text": "set path $HOME\\bin$ here"}).encode(),
      json.dumps({"id": "ok-10", "text": "the lazy dog"}).encode(),
      json.dumps({"id": "x" * 1_000_000, "body": "no text"}).encode(),
  ]
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "hostile.jsonl").write_bytes(b"\n".join(lines) + b"\n")

  code, run_dir = _run(tmp_path, tiny_model_dir, str(corpus / "*.jsonl"),
                       "--similarity_plot", "--max_bad_fraction=1")

  assert code == 0
  manifest, errors = _check_error_rows(run_dir)
  by_position = {e["position"]: e for e in errors}
  assert {p: e["reason"] for p, e in by_position.items()} == {
      1: MALFORMED, 2: MISSING, 5: MISSING, 6: EMPTY, 7: EMPTY, 8: EMPTY,
      11: MISSING}
  assert len(by_position[11]["id"]) == ID_CHARS  # a megabyte id, cut
  assert "nested too deeply" in by_position[1]["detail"]
  assert "\\ud800k" in by_position[2]["detail"]  # escaped, still findable
  assert len(by_position[5]["detail"]) <= DETAIL_CHARS
  assert "20000 in all" in by_position[5]["detail"]
  embedded = {row["id"] for row in read_outputs.read_table(run_dir).to_pylist()}
  assert embedded == {"ok-0", "big", "ok-4", "tex", "ok-10"}
  assert manifest["outputs"]["similarity_plot"]["png"] == ["similarity.png"]


def test_json_integers_too_long_for_python_are_still_numbers():
  records = _read("jsonl", b"\n".join([
      b'{"id": ' + b"1" * 5000 + b', "text": "a long integer id"}',
      b'{"id": "t", "text": ' + b"7" * 5000 + b"}",
      b'{"id": "after", "text": "read as usual"}',
  ]), "n.jsonl")
  assert records[0] == Document("1" * 5000, "a long integer id", "n.jsonl", 0)
  assert (records[1].reason, records[1].id) == ("non_string_field", "t")
  assert records[2].text == "read as usual"


# ---------------------------------------------------------------------------
# CSV and TSV.


def test_an_unterminated_csv_quote_costs_only_its_row():
  rows = [f"r{i},text number {i}" for i in range(50)]
  rows[3] = 'r3,"an unterminated quote'
  rows[49] = 'r49,"a quoted last row"'
  records = _read("csv", ("id,text\n" + "\n".join(rows) + "\n").encode(),
                  "q.csv")
  assert _kinds(records) == [(i, MALFORMED if i == 3 else "doc")
                             for i in range(50)]
  assert records[49].text == "a quoted last row"


def test_a_csv_header_that_is_not_utf8_makes_writable_errors(
    tmp_path, tiny_model_dir):
  corpus = tmp_path / "latin1.csv"
  # A malformed first row: the check before the run (which would stop on
  # a sample of rows all missing the text column) leaves the file to the run.
  corpus.write_bytes(b'id,caf\xe9\n0,"unterminated\n1,first\n2,second\n')
  code, run_dir = _run(tmp_path, tiny_model_dir, str(corpus),
                       "--max_bad_fraction=1")
  # Nothing embedded: the run refuses to publish, but the errors it staged
  # are written, and say what the header holds.
  assert code == 3
  refusal = read_outputs.load_refusal(run_dir)
  assert refusal["counts"]["dead_lettered"] == 3
  example = refusal["top_errors"][0]["examples"][0]
  assert example["reason"] == MISSING and "caf\\xe9" in example["detail"]


def test_tsv_has_no_quoting():
  records = _read("tsv", b'id\ttext\na\t"starts with a quote\nb\tnext\n'
                  b'c\tlast "one\n', "q.tsv")
  assert [(r.id, r.text) for r in records] == [
      ("a", '"starts with a quote'), ("b", "next"), ("c", 'last "one')]


@pytest.mark.parametrize("input_format", ["tsv", "csv"])
def test_a_file_with_cr_only_line_ends_is_an_unreadable_file(input_format):
  # Found by a fuzzer: as TSV the whole file was one header row, and its
  # three records vanished with no error row.
  sep = "\t" if input_format == "tsv" else ","
  data = "\r".join(f"{a}{sep}{b}" for a, b in (
      ("id", "text"), ("1", "one"), ("2", "two"), ("3", "three"))).encode()
  assert _kinds(_read(input_format, data + b"\r", "mac.x")) == [
      (-1, UNREADABLE)]
  # CRLF line ends are fine.
  crlf = _read(input_format, data.replace(b"\r", b"\r\n"), "dos.x")
  assert [r.text for r in crlf] == ["one", "two", "three"]


# ---------------------------------------------------------------------------
# Encodings and repeated fields (found by the second probe of issue 14).


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("input_format, content", [
    ("text", "first line \u00e9\nsecond \u65e5\u672c\r\nthird"),
    ("csv", 'id,text\n1,"caf\u00e9, quoted"\n2,plain\n'),
    ("tsv", "id\ttext\n1\tcaf\u00e9\n2\tplain\n"),
    ("jsonl", '{"id": "1", "text": "caf\u00e9"}\n{"id": "2", "text": "x"}\n'),
])
def test_a_file_with_a_utf16_or_utf32_byte_order_mark_reads_like_utf8(
    input_format, content, encoding):
  # What Windows tools save as "Unicode": read as its UTF-8 twin, not as
  # lines of NUL-laden text (utf-16 and utf-32 write their mark first).
  data = content.encode(encoding)
  if encoding == "utf-16-be":
    data = b"\xfe\xff" + data
  expected = _read(input_format, content.encode("utf-8"), "u")
  assert all(isinstance(r, Document) for r in expected)
  assert _read(input_format, data, "u") == expected


class _Trickle(io.RawIOBase):
  """A stream whose every read gives two bytes (a decompressor's smallest
  pieces): its byte-order mark never arrives in one read."""

  def __init__(self, data: bytes):
    super().__init__()
    self._data = data

  def readable(self):
    return True

  def readinto(self, buffer):
    n = min(2, len(buffer), len(self._data))
    buffer[:n], self._data = self._data[:n], self._data[n:]
    return n


def test_a_byte_order_mark_split_over_reads_is_still_seen():
  text = "h\u00e9llo\nw\u00f6rld\n"
  for encoding in ("utf-32", "utf-16", "utf-8"):
    stream = io.BufferedReader(_Trickle(text.encode(encoding)))
    assert list(iter_lines(stream, 100)) == [b"h\xc3\xa9llo\n",
                                             b"w\xc3\xb6rld\n"]


def test_bytes_a_utf16_file_cannot_decode_reject_only_their_line():
  data = (b"\xff\xfe" + "ok\n".encode("utf-16-le") + b"\x00\xd8" +
          "lone surrogate\n".encode("utf-16-le") +
          "after\n".encode("utf-16-le") + b"A")  # and an odd last byte
  assert _kinds(_read("text", data)) == [(0, "doc"), (1, UTF8), (2, "doc"),
                                         (3, UTF8)]


def test_a_field_a_record_needs_twice_rejects_the_record():
  records = _read("jsonl", b'{"id": "a", "text": "x", "text": "y"}\n'
                  b'{"id": "b", "text": "ok", "other": 1, "other": 2}\n')
  assert _kinds(records) == [(0, MALFORMED), (1, "doc")]
  assert "'text' twice" in records[0].detail
  for input_format, sep in (("csv", ","), ("tsv", "\t")):
    header = sep.join(["id", "text", "text"])
    records = _read(input_format, f"{header}\n1{sep}a{sep}b\n".encode())
    assert _kinds(records) == [(0, MALFORMED)]
    assert "column 'text' twice" in records[0].detail


# ---------------------------------------------------------------------------
# Parquet.


def test_a_parquet_cell_that_is_not_utf8_rejects_its_row_alone():
  texts = pa.array([b"good one", b"bad \xff cell", b"good three"],
                   pa.binary()).view(pa.string())
  sink = io.BytesIO()
  pq.write_table(pa.table({"id": ["a", "b", "c"], "text": texts}), sink)
  records = _read("parquet", sink.getvalue(), "u.parquet")
  assert _kinds(records) == [(0, "doc"), (1, UTF8), (2, "doc")]
  assert records[1].id == "b"


def test_dictionary_encoded_parquet_text_is_text():
  sink = io.BytesIO()
  table = pa.table({
      "id": ["a", "b", "c"],
      "text": pa.array(["red", "blue", "red"]).dictionary_encode()})
  pq.write_table(table, sink)
  records = _read("parquet", sink.getvalue(), "d.parquet")
  assert [(r.id, r.text) for r in records] == [("a", "red"), ("b", "blue"),
                                               ("c", "red")]


# ---------------------------------------------------------------------------
# TFRecord framing.


def _frame_header(length: int) -> bytes:
  encoded = struct.pack("<Q", length)
  return encoded + struct.pack("<I", masked_crc32c(encoded))


@pytest.mark.parametrize("length", [2**40, 2**64 - 1])
def test_a_tfrecord_length_past_the_end_of_the_file_is_not_allocated(length):
  good = tf.train.Example(features=tf.train.Features(feature={
      "text": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[b"kept"]))})).SerializeToString()
  data = encode_frame(good) + _frame_header(length) + b"x" * 100
  records = _read("tfrecord", data, "big.tfrecord")
  assert _kinds(records) == [(0, "doc"), (1, UNREADABLE)]
  assert "truncated TFRecord data" in records[1].detail


def test_a_tfrecord_record_over_the_limit_is_skipped_not_held():
  data = encode_frame(b"\x00" * 5000) + encode_frame(b"")
  records = _read("tfrecord", data, "r.tfrecord", max_record_bytes=1000)
  assert _kinds(records) == [(0, TOO_LARGE), (1, MISSING)]


# ---------------------------------------------------------------------------
# Compressed files: corrupt or cut short, never silent.

_LINES = b"".join(b'{"id": "l%d", "text": "line %d"}\n' % (i, i)
                  for i in range(20000))
_CODECS = {
    ".gz": gzip.compress,
    ".bz2": lambda data: bz2.compress(data, 1),  # 100 KB blocks
    ".xz": lzma.compress,
    ".deflate": zlib.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("suffix", sorted(_CODECS))
def test_a_compressed_file_cut_in_half_keeps_its_head_and_says_so(suffix):
  compressed = _CODECS[suffix](_LINES)
  records = _read("jsonl", compressed[:len(compressed) // 2],
                  "cut.jsonl" + suffix)
  *documents, last = records
  assert last.reason == UNREADABLE and "truncated" in last.detail
  assert [r.position for r in documents] == list(range(len(documents)))
  assert all(isinstance(r, Document) for r in documents)
  assert last.position == len(documents)
  # The whole file reads whole.
  assert len(_read("jsonl", compressed, "whole.jsonl" + suffix)) == 20000


class _StorageFailingMidway(io.RawIOBase):
  """A stored file whose reads fail with `error` after its first 30 bytes."""

  def __init__(self, data: bytes, error: Exception):
    super().__init__()
    self._data, self._error, self._at = data, error, 0

  def readable(self):
    return True

  def readinto(self, buffer):
    if self._at >= 30:
      raise self._error
    chunk = self._data[self._at:self._at + min(len(buffer), 30 - self._at)]
    buffer[:len(chunk)] = chunk
    self._at += len(chunk)
    return len(chunk)


@pytest.mark.parametrize("error", [
    google_api_errors.ServiceUnavailable("GCS 503"),
    google_api_errors.TooManyRequests("GCS 429"),
    google_api_errors.RetryError("gave up", None),
    requests.exceptions.ConnectionError("reset by peer"),
    requests.exceptions.ReadTimeout("read timed out"),
    ConnectionResetError("reset"),
], ids=type)
def test_a_storage_outage_fails_the_bundle_for_a_retry(error):
  # Not the rest of a good file dead-lettered as unreadable, unseen by the
  # counts: the runner retries the bundle.
  data = b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n'

  def read(failure):
    return list(read_file_records(
        lambda: io.BufferedReader(_StorageFailingMidway(data, failure)),
        "gs://b/c.jsonl",
        lambda stream, src: formats.READERS["jsonl"](
            stream, src, RecordSpec())))

  with pytest.raises(type(error)):
    read(error)
  # Bytes that break their codec, not storage that failed, still end in a
  # dead letter after the records read.
  assert _kinds(read(zlib.error("invalid block type"))) == [
      (0, "doc"), (1, UNREADABLE)]


def test_a_corrupt_zst_file_is_one_unreadable_file():
  records = _read("jsonl", b"\x28\xb5\x2f\xfd" + b"\xff" * 64, "bad.jsonl.zst")
  assert _kinds(records) == [(-1, UNREADABLE)]


def test_a_huge_line_costs_memory_bounded_by_the_limit():
  line = b'{"id": "huge", "text": "' + b"word " * (10 << 20) + b'"}\n'
  data = gzip.compress(line + b'{"id": "next", "text": "after it"}\n',
                       compresslevel=1)
  tracemalloc.start()
  records = _read("jsonl", data, "huge.jsonl.gz", max_record_bytes=1 << 20)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert _kinds(records) == [(0, TOO_LARGE), (1, "doc")]
  assert peak < 16 << 20  # the line is 50 MB
  assert "--max_record_bytes" in records[0].detail


# ---------------------------------------------------------------------------
# File names.


def test_a_file_name_that_is_not_utf8_is_read(tmp_path, tiny_model_dir):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  name = os.path.join(os.fsencode(corpus), b"caf\xe9.txt")
  with open(name, "wb") as f:
    f.write(b"hello world\nthe quick brown fox\n")
  code, run_dir = _run(tmp_path, tiny_model_dir, str(corpus / "*.txt"))
  assert code == 0
  rows = read_outputs.read_table(run_dir).to_pylist()
  assert len(rows) == 2
  assert {row["text"] for row in rows} == {"hello world",
                                           "the quick brown fox"}
