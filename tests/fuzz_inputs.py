"""Fuzz inputs for the readers: valid files of every format, and damaged ones.

Valid files are written by each format's own library (json, csv, pyarrow,
tfx-bsl) or found on this machine (tests/real_files.py: Debian changelogs,
matplotlib's CSVs, pyarrow's Parquet test files). `damaged_files(format)` is
a Hypothesis strategy of such files with mutations nobody here wrote by hand:
truncation, byte flips, deletions, and insertions of hostile values (deep
nesting, huge numbers, surrogate escapes, NUL and control characters, invalid
UTF-8, quotes, tabs, line breaks), before or after compression.

`check_records` is the read stage's promise for one file's records (see
tests/test_fuzz_readers.py).
"""

import bz2
import csv
import gzip
import io
import json
import lzma
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from hypothesis import strategies as st

from run_directory.records import DeadLetter
from run_directory.records import DETAIL_CHARS
from run_directory.records import ID_CHARS
from run_directory.records import Document
from run_directory.records import SNIPPET_CHARS
from run_directory.tables import dead_letter_to_row
from run_directory.tfrecord import canonical_example
from run_directory.tfrecord import encode_frame
from run_directory.tfrecord import encode_examples
from tests import real_files
from tests.real_text import real_sentences
from transforms import formats
from transforms.formats.fields import RecordSpec
from transforms.formats.files import open_for_reading
from transforms.formats.files import read_file_records

MAX_RECORD_BYTES = 2048
MAX_ERROR_ROW_BYTES = 4 * (DETAIL_CHARS + SNIPPET_CHARS + ID_CHARS) + 2048
_SPEC = RecordSpec(max_record_bytes=MAX_RECORD_BYTES)
SENTENCES = real_sentences(200)

# Hostile values a mutation inserts at a random offset.
HOSTILE = [
    b"[" * 3000, b'{"a":' * 1200, b"9" * 5000, b"1e99999", b"-0",
    b'"\\ud800"', b'"\\udfff\\ud800"', b"\\u0000", b"\x00", b"\x00" * 64,
    b"\x1b[31m", b"\x7f\x85", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80",
    b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe\x00\x00", b'"', b'""', b'"\n"', b"\t", b"\r", b"\r\n", b"\n",
    b"\n\n\n", b",", b",,,,", "\u2028\u2029\u200b\u00ad".encode(),
    b"PAR1", b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08",
    b"\x00\x00\x00\x00\x00\x01\x00\x00",  # a TFRecord length of 2^48
]

COMPRESSORS = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".bz2": lambda data: bz2.compress(data, 1),
    ".xz": lzma.compress,
    ".deflate": zlib.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}
# Real files of other people's making, to damage as well (cut to 64 KB).
_REAL_FILES = {
    "text": [real_files.gunzipped(path)[:1 << 16]
             for path in real_files.debian_changelogs(3)],
    "csv": [open(path, "rb").read()[:1 << 16]
            for path in real_files.matplotlib_csvs()],
    "parquet": [open(path, "rb").read()
                for path in real_files.pyarrow_parquets()],
}
EXTENSIONS = {"text": ".txt", "jsonl": ".jsonl", "csv": ".csv",
               "tsv": ".tsv", "parquet": ".parquet", "tfrecord": ".tfrecord"}


# ---------------------------------------------------------------------------
# Valid files, written by each format's own library.

# Any Unicode text (Hypothesis leaves out lone surrogates, which no valid
# file can hold), real sentences, and some long enough to pass the limit.
_texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(SENTENCES),
    st.text(alphabet="ab \u00e9\u4e2d", min_size=MAX_RECORD_BYTES // 2,
            max_size=MAX_RECORD_BYTES + 100),
)
_ids = st.one_of(st.none(), st.text(min_size=1, max_size=12),
                 st.integers(-2**70, 2**70))


def records_of(texts=_texts):
  return st.lists(st.tuples(_ids, texts), max_size=25)


def line_text(text: str) -> str:
  # A line cannot hold a line break (the reader splits on "\n" and drops a
  # "\r" before it).
  return text.replace("\n", " ").replace("\r", " ")


def write_text(records) -> bytes:
  return "".join(line_text(text) + "\n" for _, text in records).encode()


def write_jsonl(records) -> bytes:
  lines = []
  for doc_id, text in records:
    record = {"text": text}
    if doc_id is not None:
      record["id"] = doc_id
    lines.append(json.dumps(record, ensure_ascii=False))
  return "".join(line + "\n" for line in lines).encode()


def write_csv(records) -> bytes:
  out = io.StringIO(newline="")
  writer = csv.writer(out)
  writer.writerow(["id", "text"])
  for doc_id, text in records:
    writer.writerow(["" if doc_id is None else doc_id, text])
  return out.getvalue().encode()


def write_tsv(records) -> bytes:
  rows = ["id\ttext"]
  for doc_id, text in records:
    cells = ["" if doc_id is None else str(doc_id), text]
    rows.append("\t".join(line_text(c).replace("\t", " ") for c in cells))
  return ("\n".join(rows) + "\n").encode()


def _string_ids(records) -> list:
  return [None if doc_id is None else str(doc_id) for doc_id, _ in records]


def write_parquet(records) -> bytes:
  sink = io.BytesIO()
  table = pa.table({"id": pa.array(_string_ids(records), pa.string()),
                    "text": pa.array([t for _, t in records], pa.string())})
  pq.write_table(table, sink, row_group_size=7)
  return sink.getvalue()


def write_tfrecord(records) -> bytes:
  if not records:
    return b""
  ids = [[] if doc_id is None else [doc_id.encode()]
         for doc_id in _string_ids(records)]
  batch = pa.RecordBatch.from_pydict({
      "id": pa.array(ids, pa.list_(pa.binary())),
      "text": pa.array([[t.encode()] for _, t in records],
                       pa.list_(pa.binary())),
  })
  examples = encode_examples(batch)
  # Canonical bytes: the encoder's feature order changes from run to run,
  # and Hypothesis needs the same file from the same draws.
  return b"".join(encode_frame(canonical_example(e)) for e in examples)


WRITERS = {"text": write_text, "jsonl": write_jsonl, "csv": write_csv,
           "tsv": write_tsv, "parquet": write_parquet,
           "tfrecord": write_tfrecord}


# ---------------------------------------------------------------------------
# Mutations.


@st.composite
def _mutated(draw, data: bytes) -> bytes:
  data = bytearray(data)
  for _ in range(draw(st.integers(1, 4))):
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
    offset = draw(st.integers(0, len(data)))
    if kind == "truncate":
      del data[offset:]
    elif kind == "flip" and offset < len(data):
      data[offset] ^= draw(st.integers(1, 255))
    elif kind == "insert":
      data[offset:offset] = draw(st.sampled_from(HOSTILE))
    elif kind == "delete":
      del data[offset:offset + draw(st.integers(1, 64))]
  return bytes(data)


@st.composite
def damaged_files(draw, input_format: str):
  """(file name, bytes): a valid file, compressed or not, then damaged."""
  if input_format in _REAL_FILES and draw(st.booleans()):
    data = draw(st.sampled_from(_REAL_FILES[input_format]))
  else:
    data = WRITERS[input_format](draw(records_of()))
  suffix = ("" if input_format in formats.RANDOM_ACCESS_FORMATS else
            draw(st.sampled_from(sorted(COMPRESSORS))))
  before = draw(st.booleans())
  if before:
    data = draw(_mutated(data))
  data = COMPRESSORS[suffix](data)
  if not before or draw(st.booleans()):
    data = draw(_mutated(data))
  return f"fuzz{EXTENSIONS[input_format]}{suffix}", data


# ---------------------------------------------------------------------------
# The properties.


def read_all(input_format: str, name: str, data: bytes) -> list:
  random_access = input_format in formats.RANDOM_ACCESS_FORMATS
  return list(read_file_records(
      lambda: open_for_reading(lambda: io.BytesIO(data), name, random_access),
      name, lambda stream, source: formats.READERS[input_format](
          stream, source, _SPEC)))


def check_records(records: list, name: str):
  """The promise of the read stage, for one file's records."""
  unreadable = [r for r in records if isinstance(r, DeadLetter) and
                r.reason == "unreadable_file"]
  assert len(unreadable) <= 1
  if unreadable:
    assert records[-1] is unreadable[0]  # reading stops there
    records = records[:-1]
  positions = [r.position for r in records]
  assert positions == list(range(len(records)))  # each record once
  if unreadable:
    assert unreadable[0].position == (len(records) if records else -1)
  for record in records + unreadable:
    assert isinstance(record, (Document, DeadLetter))
    assert record.source == name
    if isinstance(record, Document):
      assert len(record.text.encode("utf-8")) <= MAX_RECORD_BYTES
      record.id.encode("utf-8")  # valid UTF-8, or this raises
    else:
      row = json.dumps(dead_letter_to_row(record, run_id="fuzz"),
                       ensure_ascii=False).encode("utf-8")
      assert len(row) <= MAX_ERROR_ROW_BYTES


