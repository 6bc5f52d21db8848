"""A generator of hostile input: every way a record can be bad or strange.

`write_hostile_corpus(directory)` writes one corpus per format family and
returns, for each, its glob and how many records it holds (a record being a
line, a row, or a file that is not the format it claims).
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

TEN_MEGABYTES = 10 * 1024 * 1024

# Texts that must come out exactly as they went in: nothing is ever evaluated.
CODE_LIKE = [
    "__import__('os').system('touch /tmp/pwned')",
    "{{7*7}} ${HOME} $(id) `id` %s%n",
    "'; DROP TABLE documents; --",
    "<script>alert(1)</script>",
]

GOOD_LINES = [
    "A perfectly ordinary sentence.",
    "Right-to-left: \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 "
    "\u202eevil\u202c text",
    "Combining: e\u0301\u0301\u0301 a\u0308\u0308 Z\u0335\u0321\u0362",
    "Emoji: \U0001F600\U0001F44D\U0001F3FD \U0001F1EB\U0001F1F7 "
    "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "NUL\x00and\x01control\x1bcharacters\x7f inside",
    "x" * 20000 + " a very long word",
] + CODE_LIKE


def _text_corpus(directory):
  path = os.path.join(directory, "lines.txt")
  lines = [line.encode("utf-8") for line in GOOD_LINES]
  lines += [
      b"",  # empty line
      b"   \t  ",  # whitespace only
      b"invalid \xff\xfe utf-8 \xc3",  # invalid UTF-8
      GOOD_LINES[0].encode(),  # the same line again: an exact repeat
      ("word " * (TEN_MEGABYTES // 5)).encode(),  # a 10 MB single line
  ]
  with open(path, "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  expected = {
      "records": len(lines),
      "embedded": len(GOOD_LINES) + 1,
      "reasons": {"empty_text": 2, "invalid_utf8": 1, "duplicate_record": 1},
  }
  return path, expected


def _jsonl_corpus(directory):
  good = [{"id": f"ok-{i}", "text": text} for i, text in enumerate(GOOD_LINES)]
  good.append({"id": "../../../etc/passwd", "text": "an id like a path"})
  lines = [json.dumps(r, ensure_ascii=False).encode() for r in good]
  lines += [
      b"{not json",
      b"[1, 2, 3]",
      b"",  # a blank line: a malformed record
      json.dumps({"id": "no-text"}).encode(),
      json.dumps({"id": "null-text", "text": None}).encode(),
      json.dumps({"id": "number-text", "text": 42}).encode(),
      json.dumps({"id": "list-text", "text": ["a", "b"]}).encode(),
      json.dumps({"id": {"nested": 1}, "text": "id is an object"}).encode(),
      json.dumps({"id": "ok-0", "text": "duplicate id"}).encode(),
      b'{"id": "bad-utf8", "text": "\xff\xfe"}',
  ]
  with open(os.path.join(directory, "records.jsonl"), "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  open(os.path.join(directory, "empty.jsonl"), "wb").close()  # 0 bytes
  # Not JSONL at all, whatever its name says: binary, one "line".
  with open(os.path.join(directory, "image.jsonl"), "wb") as f:
    f.write(b"\x89PNG\x1a\x00\x00\x00\rIHDR\xff\xd8\xff")
  expected = {
      "records": len(lines) + 1,  # image.jsonl: one undecodable line
      "embedded": len(good),
      "reasons": {"malformed_record": 3, "missing_field": 2,
                  "non_string_field": 3, "duplicate_id": 1,
                  "invalid_utf8": 2},
  }
  return os.path.join(directory, "*.jsonl"), expected


def _parquet_corpus(directory):
  table = pa.table({"id": ["p1", "p2", "p3", None],
                    "text": ["parquet one", None, "", "parquet four"]})
  pq.write_table(table, os.path.join(directory, "good.parquet"))
  with open(os.path.join(directory, "fake.parquet"), "w") as f:
    f.write("I am a text file pretending to be Parquet.\n")
  expected = {
      "records": 5,
      "embedded": 2,
      "reasons": {"missing_field": 1, "empty_text": 1, "unreadable_file": 1},
  }
  return os.path.join(directory, "*.parquet"), expected


def write_hostile_corpus(directory):
  """{family: (glob, expected)} for the text, jsonl and parquet corpora."""
  corpora = {}
  for family, write in (("text", _text_corpus), ("jsonl", _jsonl_corpus),
                        ("parquet", _parquet_corpus)):
    sub = os.path.join(directory, family)
    os.makedirs(sub)
    corpora[family] = write(sub)
  return corpora
