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
import logging
import lzma
import os
import re
import socket
import struct
import time
import tracemalloc
import zlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as google_api_errors
import google.auth
from google.auth.exceptions import DefaultCredentialsError
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import tensorflow as tf
import zstandard

from pipeline import main
from pipeline import output_lock
from pipeline import preflight
from pipeline import read_outputs
from run_directory.records import DeadLetter
from run_directory.staging import remove_unlisted_files
from run_directory.records import DETAIL_CHARS
from run_directory.records import ID_CHARS
from run_directory.records import Document
from run_directory.records import SNIPPET_CHARS
from run_directory.tfrecord import encode_frame
from run_directory.tfrecord import masked_crc32c
from tests.network_guard import guard_network
from transforms import formats
from transforms import publish as publish_stage
from transforms.formats.fields import RecordSpec
from transforms.formats.files import open_for_reading
from transforms.formats.files import read_file_records
from transforms.formats.lines import iter_lines

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


def _run(tmp_path, model_dir, pattern, *flags, output="run"):
  run_dir = str(tmp_path / output)
  code = main.main([f"--input={pattern}", f"--output={run_dir}",
                    f"--model={model_dir}", "--runner=DirectRunner",
                    "--neighbours_k=2", *flags])
  return code, run_dir


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
  corpus.write_bytes(b"id,caf\xe9\n1,first\n2,second\n")
  code, run_dir = _run(tmp_path, tiny_model_dir, str(corpus),
                       "--max_bad_fraction=1")
  # Nothing embedded: the run refuses to publish, but the errors it staged
  # are written, and say what the header holds.
  assert code == 3
  refusal = read_outputs.load_refusal(run_dir)
  assert refusal["counts"]["dead_lettered"] == 2
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


# ---------------------------------------------------------------------------
# Flags: checked before anything runs, exit 2, a message naming the fix.


@pytest.mark.parametrize("flags, message", [
    (["--input={tmp}/nothing-*.jsonl"], r"matches no file"),
    (["--input={tmp}/missing.jsonl"], r"missing.jsonl does not exist"),
    (["--input={tmp}"], r"is a directory; name its files with a glob"),
    (["--output={tmp}/corpus.jsonl"], r"is a file; name a run directory"),
    (["--output={tmp}/run-*"], r"holds glob characters"),
    (["--output={tmp}/run-[1]"], r"holds glob characters"),
    (["--latest_pointer={tmp}"], r"is a directory; name a file inside it"),
    (["--latest_pointer={tmp}/corpus.jsonl/LATEST"],
     r"corpus.jsonl is a file, not a directory"),
    # Found by a user trial: the pointer replaced the run's manifest.json,
    # or was the run directory itself (found only after publishing).
    (["--latest_pointer={tmp}/run/manifest.json"],
     r"--latest_pointer=.*/run/manifest.json is inside the run directory "
     r"--output=.*/run, whose files it would replace; put it beside the "
     r"runs, e.g. --latest_pointer=.*/LATEST\."),
    (["--latest_pointer={tmp}/run/"], r"is inside the run directory"),
    (["--restrict_fields=a,b,a", "--vertex_export=full"],
     r"--restrict_fields names \['a'\] twice; name each field once"),
    (["--input={tmp}/no/such/dir/c.jsonl"],
     r"does not exist\. Check the path \(the nearest directory that exists "
     r"is .*\)"),
    (["--text_field="], r"--text_field is empty: name the field"),
    (["--id_field= "], r"--id_field is empty: name the field"),
    (["--max_seq_length=0"], r"--max_seq_length must be a positive integer"),
    (["--max_record_bytes=0"], r"--max_record_bytes must be a positive"),
    (["--neighbours_block_size=0"], r"--neighbours_block_size must be a"),
    (["--num_shards=-1"], r"--num_shards must be 0"),
    # Found by a fuzzer: tracebacks deep in the run (a C long, a histogram's
    # bins, an index-sized integer), or a hang loading 2**70 model copies.
    *[([f"--{name}={2**70}", *extra], rf"--{name}={2**70}: at most [0-9,]+\.")
      for name, extra in (("neighbours_k", []), ("model_copies", []),
                          ("max_chunks", ["--chunk_size=16"]),
                          ("max_record_bytes", []), ("max_batch_size", []),
                          ("max_batch_tokens", []),
                          ("neighbours_block_size", []))],
    # Found by a fuzzer: "/" stripped of its slash was the working directory.
    (["--output=/"], r"--output=/ is the root directory; name a run "
     r"directory"),
    (["--output= "], r"--output is required"),
    (["--input=http://example.com/x.txt"], r"--input=http://example.com/"
     r"x.txt: Beam has no file system for this scheme; use a local path or "
     r"gs://\."),
    (["--output={tmp}/r\udcffn"], r"--output=.*/r\\xffn: holds bytes that "
     r"are not UTF-8; rename the path \(or pass the value\) in UTF-8\."),
    (["--output", "{tmp}/r\udcffn"], r"--output=.*/r\\xffn: holds bytes"),
    (["--output=/tmp/.."], r"--output=/tmp/\.\. is the root directory"),
    (["--previous_run=latest"], r"--previous_run=latest needs "
     r"--latest_pointer, the file each published run writes its directory "
     r"into\."),
    # Where even root cannot write: tried, not judged by permissions.
    (["--output=/proc/run"], r"--output=/proc/run: /proc is not writable"),
    (["--latest_pointer=/proc/LATEST"], r"/proc is not writable"),
    (["--neighbours_of={tmp}/q-*.jsonl"], r"--neighbours_of=.* matches no"),
    # Values argparse cannot take: one line naming the flag, not Beam's
    # usage of every option.
    (["--max_bad_fraction=abc"], r"^pipeline.main: error: argument "
     r"--max_bad_fraction: invalid float value: 'abc'\.[^\n]*\n$"),
    (["--neighbours_mode=foo"], r"--neighbours_mode: invalid choice: 'foo'"),
    (["--max_bad_fractio=0.2"], r"^pipeline.main: error: unknown flag\(s\): "
     r"--max_bad_fractio \(did you mean --max_bad_fraction\?\)"),
])
def test_wrong_paths_and_numbers_exit_2_before_anything_runs(
    flags, message, corpus_file, tiny_model_dir, tmp_path, capsys):
  defaults = {"--input": corpus_file, "--output": str(tmp_path / "run")}
  argv = [flag.format(tmp=tmp_path) for flag in flags]
  for flag, value in defaults.items():
    if not any(arg.startswith(flag + "=") for arg in argv):
      argv.append(f"{flag}={value}")
  before = sorted(os.listdir(tmp_path))
  code = main.main(argv + [f"--model={tiny_model_dir}",
                           "--runner=DirectRunner"])
  assert code == 2
  err = capsys.readouterr().err
  assert "pipeline.main: error:" in err
  assert re.search(message, err), err
  assert sorted(os.listdir(tmp_path)) == before  # nothing made


@pytest.mark.parametrize("pointer_bytes", [b"\xff\xfe garbage\n", None,
                                           b"", b" \n"])
def test_an_unreadable_latest_pointer_exits_2(
    pointer_bytes, corpus_file, tiny_model_dir, tmp_path, capsys):
  # Found by a new user's trial: a pointer file of non-UTF-8 bytes was a
  # traceback. A directory in its place is not readable as text either.
  pointer = tmp_path / "LATEST"
  if pointer_bytes is None:
    pointer.mkdir()
    (pointer / "x").write_text("x")
  else:
    pointer.write_bytes(pointer_bytes)
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    "--previous_run=latest", f"--latest_pointer={pointer}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert re.search(r"pipeline.main: error: --latest_pointer=.*LATEST "
                   r"(cannot be read as the text naming the latest run|is a "
                   r"directory|is empty; write the latest published run's "
                   r"directory into it, or delete it)", err), err
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("flag", ["--output=gs://bucket/runs/x",
                                  "--latest_pointer=gs://bucket/LATEST",
                                  "--bigquery_table=my-project:ds.t"])
def test_gcs_paths_without_credentials_exit_2_at_once(
    flag, corpus_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
  # Found by a fuzzer: each request retried for two minutes, then a
  # traceback (or, for the pointer, a hang after publishing).
  def no_credentials(*args, **kwargs):
    raise DefaultCredentialsError("none here")

  monkeypatch.setattr(google.auth, "default", no_credentials)
  argv = [f"--input={corpus_file}", f"--output={tmp_path}/run", flag,
          "--temp_location=gs://bucket/tmp"]
  code = main.main(argv + [f"--model={tiny_model_dir}",
                           "--runner=DirectRunner"])
  assert code == 2
  assert re.search(rf"^pipeline.main: error: {re.escape(flag)}: Google Cloud "
                   r"needs credentials, and none were found\. Run `gcloud "
                   r"auth application-default login`", capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "run")


def test_gcs_paths_with_google_cloud_out_of_reach_exit_2_at_once(
    corpus_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
  # Found by a user trial: with credentials but no way to Google Cloud (no
  # network, a proxy it needs), each request retried for two minutes, then
  # a traceback. A service account key that is never sent anywhere.
  private_key = rsa.generate_private_key(public_exponent=65537,
                                         key_size=2048)
  key_file = tmp_path / "key.json"
  key_file.write_text(json.dumps({
      "type": "service_account", "project_id": "p", "private_key_id": "k",
      "private_key": private_key.private_bytes(
          serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
          serialization.NoEncryption()).decode(),
      "client_email": "runner@p.iam.gserviceaccount.com", "client_id": "1",
      "token_uri": "https://oauth2.googleapis.com/token"}))
  monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
  guard_network(monkeypatch)  # unreachable wherever the test runs
  started = time.monotonic()
  code = main.main([f"--input={corpus_file}", "--output=gs://bucket/runs/x",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  assert time.monotonic() - started < 60
  assert re.search(r"^pipeline.main: error: --output=gs://bucket/runs/x: "
                   r"Google Cloud cannot be reached to sign in \(.*\)\. Check "
                   r"the network", capsys.readouterr().err, re.M)


@pytest.mark.parametrize("inside", ["manifest.json", "embeddings/LATEST"])
def test_a_latest_pointer_inside_a_published_run_exits_2(
    inside, corpus_file, tiny_model_dir, tmp_path, capsys):
  # Found by a user trial: --latest_pointer OTHER_RUN/manifest.json
  # replaced another published run's manifest with a path.
  other = tmp_path / "other"
  (other / "embeddings").mkdir(parents=True)
  (other / "manifest.json").write_text('{"run_id": "r", "outputs": {}}')
  # Other tools' manifest.json (a web app's, say) is not a run.
  (tmp_path / "manifest.json").write_text('{"name": "my-app"}')
  before = sorted(os.listdir(other))
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    f"--latest_pointer={other}/{inside}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  err = capsys.readouterr().err
  assert re.search(rf"--latest_pointer=.*/{inside} is inside the published "
                   rf"run {other}, whose files it would replace; put it "
                   rf"beside the runs, e.g. --latest_pointer={tmp_path}/"
                   r"LATEST\.", err), err
  assert sorted(os.listdir(other)) == before
  assert (other / "manifest.json").read_text() == (
      '{"run_id": "r", "outputs": {}}')
  preflight.check_latest_pointer(str(tmp_path / "LATEST"))  # beside: fine
  assert not os.path.exists(tmp_path / "run")


def test_a_previous_run_named_by_the_pointer_is_told_so(
    corpus_file, tiny_model_dir, tmp_path, capsys):
  # Found by a user trial: a pointer holding a wrong path was told as
  # "--previous_run=<that path>", which the user never typed; and the
  # pointer file passed as --previous_run was not recognised.
  pointer = tmp_path / "LATEST"
  pointer.write_text("runs/gone\n")
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    "--previous_run=latest", f"--latest_pointer={pointer}",
                    f"--model={tiny_model_dir}", "--runner=DirectRunner"])
  assert code == 2
  assert re.search(r"--previous_run=latest \(runs/gone, named by "
                   rf"--latest_pointer={pointer}\) has no manifest.json: it "
                   rf"is not a published run\. Write the last complete run's "
                   rf"directory into {pointer}\.", capsys.readouterr().err)
  code = main.main([f"--input={corpus_file}", f"--output={tmp_path}/run",
                    f"--previous_run={pointer}", f"--model={tiny_model_dir}",
                    "--runner=DirectRunner"])
  assert code == 2
  assert re.search(rf"If {pointer} is a --latest_pointer file, pass "
                   rf"--previous_run latest --latest_pointer {pointer}\.",
                   capsys.readouterr().err)


def test_a_relative_output_is_published_quietly_and_named_absolutely(
    tmp_path, corpus_file, tiny_model_dir, monkeypatch, caplog):
  # Found running ./run_local.sh (OUTPUT=runs/...): the run's own lock was
  # taken for a file left by an earlier publish, and LATEST would have held
  # a path relative to whatever directory the run was started in.
  monkeypatch.chdir(tmp_path)
  code = main.main([f"--input={corpus_file}", "--output=runs/today",
                    "--latest_pointer=LATEST", f"--model={tiny_model_dir}",
                    "--runner=DirectRunner"])
  assert code == 0
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], (
      caplog.text)
  run_dir = tmp_path / "runs" / "today"
  assert (tmp_path / "LATEST").read_text() == f"{run_dir}\n"
  assert read_outputs.load_manifest(str(run_dir))["counts"]["embedded"] == 1


def test_a_previous_run_with_missing_shards_is_refused(
    tmp_path, corpus_file, tiny_model_dir, capsys, caplog):
  code, previous = _run(tmp_path, tiny_model_dir, corpus_file,
                        output="previous")
  assert code == 0
  shard = read_outputs.load_manifest(previous)["outputs"]["embeddings"][
      "tfrecord"][0]
  os.remove(os.path.join(previous, shard))
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 f"--previous_run={previous}", output="next")
  assert code == 2
  err = capsys.readouterr().err
  assert "shard(s) that are gone" in err
  assert "or leave --previous_run out to embed everything." in err
  assert not os.path.exists(tmp_path / "next")
  # Named by a pointer (run_nightly.sh passes --previous_run=latest itself):
  # the fix offered is the pointer's, not a flag the user cannot leave out.
  pointer = tmp_path / "LATEST"
  pointer.write_text(f"{previous}\n")
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 "--previous_run=latest", f"--latest_pointer={pointer}",
                 output="next")
  assert code == 2
  assert capsys.readouterr().err.rstrip().endswith(
      f"Write the last complete run's directory into {pointer}, or delete "
      f"{pointer} to embed everything afresh.")
  assert not os.path.exists(tmp_path / "next")
  # A file reuse does not read gone (the Avro copy): carried over, and told.
  code, previous = _run(tmp_path, tiny_model_dir, corpus_file,
                        output="previous3")
  assert code == 0
  avro = read_outputs.load_manifest(previous)["outputs"]["embeddings"]["avro"]
  os.remove(os.path.join(previous, avro[0]))
  with caplog.at_level(logging.WARNING):
    code, run_dir = _run(tmp_path, tiny_model_dir, corpus_file,
                         f"--previous_run={previous}", output="next3")
  assert code == 0
  assert read_outputs.load_manifest(run_dir)["counts"]["reused"] == 1
  assert (f"--previous_run={previous} is damaged: 1 other file(s) its "
          f"manifest lists are gone, e.g. {previous}/{avro[0]}") in caplog.text
  # Its schema file gone: named, not a traceback.
  code, previous = _run(tmp_path, tiny_model_dir, corpus_file,
                        output="previous2")
  assert code == 0
  os.remove(os.path.join(previous, "embeddings", "bigquery_schema.json"))
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 f"--previous_run={previous}", output="next2")
  assert code == 2
  err = capsys.readouterr().err
  assert ("its embeddings schema (embeddings/bigquery_schema.json) cannot be "
          "read") in err, err
  assert "Traceback" not in err


# ---------------------------------------------------------------------------
# Publishing: one run per directory, nothing fallible after the manifest,
# table directories hold only what the manifest lists.


def test_only_unlisted_files_of_the_runs_directories_are_removed(
    tmp_path, monkeypatch):
  # A run directory given relative to the cwd: its own top level (the lock,
  # the report) and a directory of the user's are left alone; a table's
  # stale shard goes, and so do the files of tables and of an index that an
  # earlier run wrote and this one does not.
  monkeypatch.chdir(tmp_path)
  for relative in (".run.lock", "report.html", "notes.txt", "mine/notes.txt",
                   "embeddings/avro/embeddings-00000-of-00001.avro",
                   "embeddings/avro/embeddings-00000-of-00002.avro",
                   "duplicates/avro/duplicates-00000-of-00001.avro",
                   "duplicates/bigquery_schema.json",
                   "ann_index/index.faiss", "ann_index/ids.jsonl"):
    path = tmp_path / "run" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
  remove_unlisted_files("run", [
      "report.html", "embeddings/avro/embeddings-00000-of-00001.avro"])
  left = sorted(str(p.relative_to(tmp_path / "run"))
                for p in (tmp_path / "run").rglob("*") if p.is_file())
  assert left == [".run.lock", "embeddings/avro/embeddings-00000-of-00001.avro",
                  "mine/notes.txt", "notes.txt", "report.html"]


def test_a_second_run_into_a_locked_output_refuses_and_names_the_holder(
    tmp_path, corpus_file, tiny_model_dir, capsys):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  staged = run_dir / ".staging-live" / "embeddings"
  staged.mkdir(parents=True)
  holder = {"run_id": "live", "host": socket.gethostname(),
            "pid": os.getpid(), "started_at": "2026-12-01T00:00:00+00:00"}
  (run_dir / ".run.lock").write_text(json.dumps(holder))
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file)
  assert code == 2
  err = capsys.readouterr().err
  assert f"being written by run live (pid {os.getpid()}" in err
  assert staged.is_dir()  # the live run's staging is left alone
  assert json.loads((run_dir / ".run.lock").read_text()) == holder


def test_a_stale_lock_and_an_earlier_publish_leave_no_trace(
    tmp_path, corpus_file, tiny_model_dir, caplog):
  run_dir = tmp_path / "run"
  (run_dir / "embeddings" / "avro").mkdir(parents=True)
  # A killed publish left a shard of another shard count behind.
  leftover = run_dir / "embeddings" / "avro" / "embeddings-00001-of-00002.avro"
  leftover.write_bytes(b"old")
  (run_dir / ".staging-killed").mkdir()
  dead_pid = 2**22 + 12345  # above Linux's pid_max: never a live process
  (run_dir / ".run.lock").write_text(json.dumps({
      "run_id": "killed", "host": socket.gethostname(),
      "pid": dead_pid}))
  pointer = tmp_path / "pointers" / "LATEST"
  code, _ = _run(tmp_path, tiny_model_dir, corpus_file,
                 f"--latest_pointer={pointer}")
  assert code == 0
  assert "Taking over the lock" in caplog.text
  manifest = read_outputs.load_manifest(str(run_dir))
  listed = {os.path.join(str(run_dir), path)
            for entry in manifest["outputs"].values()
            for files in entry.values()
            for path in ([files] if isinstance(files, str) else files)}
  for table in ("embeddings", "errors", "neighbours"):
    for directory, _, names in os.walk(run_dir / table):
      assert {os.path.join(directory, n) for n in names} <= listed
  assert sorted(os.listdir(run_dir)) == [
      "bigquery", "embeddings", "errors", "manifest.json", "neighbours",
      "report.html"]
  assert pointer.read_text() == f"{run_dir}\n"
  assert os.listdir(pointer.parent) == ["LATEST"]


def test_two_runs_that_find_one_stale_lock_do_not_both_take_it(
    tmp_path, monkeypatch):
  # A finds the lock stale; before it acts, B takes it over. A must then
  # see B's live lock, not delete it.
  (tmp_path / ".run.lock").write_text(json.dumps({
      "run_id": "killed", "host": socket.gethostname(),
      "pid": 2**22 + 12345}))
  first, second = (output_lock.OutputLock(str(tmp_path), "A"),
                   output_lock.OutputLock(str(tmp_path), "B"))
  real_is_gone, interleaved = output_lock._is_gone, []  # pylint: disable=protected-access

  def is_gone(holder):
    gone = real_is_gone(holder)
    if not interleaved:
      interleaved.append("B")
      second.acquire()
    return gone

  monkeypatch.setattr(output_lock, "_is_gone", is_gone)
  with pytest.raises(output_lock.OutputLockedError, match="run B"):
    first.acquire()
  assert json.loads((tmp_path / ".run.lock").read_text())["run_id"] == "B"
  assert sorted(os.listdir(tmp_path)) == [".run.lock"]
  second.release()
  assert not os.listdir(tmp_path)
  # A run killed while taking a stale lock over left its takeover file:
  # stale too, it does not keep the next run out.
  for name in (".run.lock", ".run.lock.takeover"):
    (tmp_path / name).write_text(json.dumps({
        "run_id": "killed", "host": socket.gethostname(),
        "pid": 2**22 + 12345}))
  monkeypatch.setattr(output_lock, "_is_gone", real_is_gone)
  third = output_lock.OutputLock(str(tmp_path), "C").acquire()
  assert sorted(os.listdir(tmp_path)) == [".run.lock"]
  third.release()


def test_nothing_after_the_manifest_can_fail_a_published_run(
    tmp_path, corpus_file, tiny_model_dir, monkeypatch, caplog, capsys):
  rename = publish_stage.FileSystems.rename

  def rename_but_not_the_pointer(sources, destinations):
    if destinations[0].endswith("LATEST"):
      raise OSError("the pointer's file system is gone")
    return rename(sources, destinations)

  monkeypatch.setattr(publish_stage.FileSystems, "rename",
                      rename_but_not_the_pointer)
  pointer = tmp_path / "LATEST"
  code, run_dir = _run(tmp_path, tiny_model_dir, corpus_file,
                       f"--latest_pointer={pointer}")
  # Published: the manifest is there. But a scheduler must see that the
  # pointer still names the run before (here, none): exit status 4.
  assert code == 4
  assert read_outputs.load_manifest(run_dir)["counts"]["embedded"] == 1
  assert not pointer.exists()
  assert "The run is published, but moving" in caplog.text
  assert "LATEST into place failed" in caplog.text
  assert f"echo {run_dir} > {pointer}" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    # The shell expanded an unquoted --input glob: Beam would drop all but
    # the first file with a warning.
    (["--input={tmp}/a.jsonl", "{tmp}/b.jsonl", "{tmp}/c.jsonl"],
     r"unexpected argument\(s\) '.*b\.jsonl', '.*c\.jsonl': .*quote it"),
    # Found by a fuzzer: told as "unknown flag(s): --, --neighbours_k (did
    # you mean --neighbours_k?)".
    (["--", "--neighbours_k=3"], r"`--` ends the flags, and the pipeline "
     r"takes nothing after them: leave it out\."),
    (["--runner=NoSuchRunner"],
     r"--runner=NoSuchRunner: Unexpected pipeline runner.*DataflowRunner"),
    (["--runner=no.such.Runner"], r"--runner=no.such.Runner: No module"),
    (["--direct_num_workers=-3"], r"--direct_num_workers=-3: must be 0"),
    # Found by a fuzzer: 2**70 workers forked until the machine stalled.
    (["--direct_num_workers=1180591620717411303424",
      "--direct_running_mode=multi_processing"],
     r"--direct_num_workers=1180591620717411303424: must be 0 \(one per "
     r"core\) to 64\."),
    # Found by a fuzzer: these fetched a binary from the internet.
    (["--runner=PrismRunner"], r"--runner=PrismRunner: the pipeline runs on "
     r"DirectRunner \(the default: local, with no outside connection\) or "
     r"DataflowRunner\."),
    (["--runner=FlinkRunner"], r"--runner=FlinkRunner: the pipeline runs on"),
    (["--runner=PortableRunner"], r"--runner=PortableRunner: the pipeline "
     r"runs on"),
    (["--runner=DataflowRunner", "--region=us-central1"],
     r"--runner=DataflowRunner: Missing required option: project.*--project"),
])
def test_wrong_beam_options_and_stray_arguments_exit_2_before_anything_runs(
    flags, message, tiny_model_dir, tmp_path, capsys):
  for name in "abc":
    (tmp_path / f"{name}.jsonl").write_text('{"id": "x", "text": "y"}\n')
  before = sorted(os.listdir(tmp_path))
  argv = [flag.format(tmp=tmp_path) for flag in flags]
  if not any(arg.startswith("--input=") for arg in argv):
    argv.append(f"--input={tmp_path}/a.jsonl")
  if not any(arg.startswith("--runner=") for arg in argv):
    argv.append("--runner=DirectRunner")
  code = main.main(argv + [f"--output={tmp_path / 'run'}",
                           f"--model={tiny_model_dir}"])
  assert code == 2
  err = capsys.readouterr().err
  assert re.search(r"^pipeline.main: error: " + message, err, re.M), err
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path)) == before  # nothing made


_NOT_VALID = "a TFRecord shard of its tables is damaged (not a valid TFRecord: "


def _three_documents(tmp_path) -> str:
  path = tmp_path / "three.jsonl"
  path.write_text("".join(
      json.dumps({"id": doc_id, "text": text}) + "\n" for doc_id, text in
      (("a", "hello world"), ("b", "the quick brown fox"),
       ("c", "a cat sat on the mat"))))
  return str(path)


def _first_run(tmp_path, model_dir):
  """(its corpus, its directory, its manifest) of a published run of three
  documents, for a test to damage as a --previous_run."""
  corpus_file = _three_documents(tmp_path)
  code, first = _run(tmp_path, model_dir, corpus_file, output="first")
  assert code == 0
  return corpus_file, first, read_outputs.load_manifest(first)


def _first_record_only(data: bytes) -> bytes:
  """A TFRecord file cut just after its first whole record: length (8
  bytes), its CRC (4), the data, the data's CRC (4)."""
  (length,) = struct.unpack("<Q", data[:8])
  return data[:8 + 4 + length + 4]


@pytest.mark.parametrize("damage, told", [
    ("flipped byte", _NOT_VALID),
    ("cut short", _NOT_VALID),
    # Found by a fuzzer: each of these passes TFRecord's checksums, so the
    # run counted fewer (or more) previous documents and its removed count,
    # which guards publishing, said nothing was gone.
    ("emptied", "the previous run's embeddings table holds 0 rows, but its "
     "manifest counts 3 documents"),
    ("cut after a whole record", "the previous run's embeddings table holds "
     "1 rows, but its manifest counts 3 documents"),
    ("listed twice", "the previous run's embeddings table holds 6 rows, but "
     "its manifest counts 3 documents"),
])
def test_a_damaged_previous_run_shard_fails_in_one_line(
    damage, told, tmp_path, tiny_model_dir, capsys):
  # Found by a fuzzer: the runner's traceback, with a hex dump of the
  # record. A missing shard is found while planning; a damaged one only
  # when it is read.
  corpus_file, first, manifest = _first_run(tmp_path, tiny_model_dir)
  assert manifest["counts"]["embedded"] == 3
  [shard] = manifest["outputs"]["embeddings"]["tfrecord"]
  path = os.path.join(first, shard)
  data = bytearray(open(path, "rb").read())
  if damage == "flipped byte":
    data[len(data) // 2] ^= 0x10
  elif damage == "cut short":
    data = data[:len(data) - 7]
  elif damage == "emptied":
    data = b""
  elif damage == "cut after a whole record":
    data = _first_record_only(bytes(data))
  else:
    manifest["outputs"]["embeddings"]["tfrecord"] = [shard, shard]
    with open(os.path.join(first, "manifest.json"), "w") as f:
      json.dump(manifest, f)
  with open(path, "wb") as f:
    f.write(data)
  capsys.readouterr()
  code, second = _run(tmp_path, tiny_model_dir, corpus_file,
                      f"--previous_run={first}", output="second")
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith(
      f"pipeline.main: error: --previous_run={first}: {told}"), err
  assert len(err.splitlines()) == 1
  assert not os.path.exists(os.path.join(second, "manifest.json"))


@pytest.mark.parametrize("damage, told", [
    (lambda m: m["counts"].update(embedded=-5),
     "counts.embedded is -5, not a count"),
    (lambda m: m["counts"].update(embedded=1e30),
     "counts.embedded is 1e+30, not a count"),
    (lambda m: m["counts"].update(embedded=True),
     "counts.embedded is True, not a count"),
    (lambda m: m.update(settings=None),
     '"settings" is None, not a JSON object: the manifest is damaged'),
    (lambda m: m.pop("run_id"), "run_id is None, not a string"),
    (lambda m: m["model"].update(fingerprint=123),
     "model.fingerprint is 123, not a string"),
    (lambda m: m["outputs"]["embeddings"].update(tfrecord=[]),
     "outputs.embeddings.tfrecord lists no file"),
    (lambda m: m.update(model=[]),
     '"model" is [], not a JSON object: the manifest is damaged'),
])
def test_a_damaged_previous_manifest_is_a_flag_error(
    damage, told, tmp_path, tiny_model_dir, capsys):
  # Found by a fuzzer: tracebacks, "its manifest lacks int() argument ...",
  # or (a count of 0) a removed-documents guardrail that checked nothing.
  corpus_file, first, manifest = _first_run(tmp_path, tiny_model_dir)
  path = os.path.join(first, "manifest.json")
  damage(manifest)
  with open(path, "w") as f:
    json.dump(manifest, f)
  capsys.readouterr()
  code, second = _run(tmp_path, tiny_model_dir, corpus_file,
                      f"--previous_run={first}", output="second")
  assert code == 2
  err = capsys.readouterr().err
  assert err.startswith("pipeline.main: error: --previous_run") and (
      len(err.splitlines()) == 1), err
  if told.startswith('"'):  # told by load_manifest, as to every reader
    assert told in err, err
  else:
    assert err == (f"pipeline.main: error: --previous_run={first}: its "
                   f"manifest.json is damaged ({told}). Point --previous_run "
                   "at the last complete run directory, or leave "
                   "--previous_run out to embed everything.\n")
  assert not os.path.exists(second)


def test_a_file_named_like_a_glob_is_told_how_to_escape_it(
    tmp_path, tiny_model_dir, capsys):
  # Found by a fuzzer: "corpus[1].jsonl" was "matches no file" ([1] is a
  # character class to Beam's globs); the escaped name reads it.
  named = tmp_path / "corpus[1].jsonl"
  named.write_text('{"id": "a", "text": "the quick brown fox"}\n')
  code, _ = _run(tmp_path, tiny_model_dir, str(named))
  assert code == 2
  err = capsys.readouterr().err
  escaped = str(tmp_path / "corpus[[]1].jsonl")
  assert "is read as a glob, in which * ? [ ] are special" in err
  assert f"escape them, --input='{escaped}'" in err
  code, run_dir = _run(tmp_path, tiny_model_dir, escaped)
  assert code == 0
  assert read_outputs.load_manifest(run_dir)["counts"]["embedded"] == 1
