"""The records a run reads and writes: documents, vectors, rows, rejects.

Every stage speaks in these few immutable records, so a stage can be tested on
its own with plain Python values:

  ReadCorpus ──Document──> ValidateDocuments ──Document──> EmbedDocuments
      │                          │                              │
      └──────── DeadLetter ──────┴──────────── DeadLetter ──────┘
                                                 Embedding ──> WriteTable

A DeadLetter is a row of the errors table, an Embedding a row of the
embeddings table (a document's identity and its `Vectors`).

Ids are deterministic (taken from the input, or derived from the source name and
the text), never random: a retried bundle must produce the same rows.
"""

import dataclasses
import hashlib
import os
import re
from typing import Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

# How much of a rejected record the dead letter keeps: enough to find it, never
# a whole document (documents may be large or sensitive).
SNIPPET_CHARS = 200
# How long a dead letter's reason text may be: a message can quote the input
# (a record's field names, a header), and the input can be anything.
DETAIL_CHARS = 500
# How long a dead letter's id may be: enough to find the record by (with its
# source and position), when a record's "id" can be a megabyte of anything.
ID_CHARS = 1000

# Lone surrogates: what Python makes of bytes that are not UTF-8 (file names,
# surrogateescape-decoded CSV) or of JSON "\ud800" escapes. No UTF-8 writer
# can encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Reason:
  """Machine-readable reasons a record goes to the dead letter."""
  EMPTY_TEXT = "empty_text"
  INVALID_UTF8 = "invalid_utf8"
  MALFORMED_RECORD = "malformed_record"  # bad JSON line, bad CSV row, bad proto
  MISSING_FIELD = "missing_field"
  NON_STRING_FIELD = "non_string_field"
  NON_NUMERIC_FIELD = "non_numeric_field"  # a --numeric_restrict_fields value
  DUPLICATE_ID = "duplicate_id"  # an id a kept record of other content has
  # An exact repeat of a kept record (the same id, text, text pair and
  # carried fields, e.g. a line repeated in a text file, whose derived id is
  # the same): embedded once, so not a bad record to the guardrails.
  DUPLICATE_RECORD = "duplicate_record"
  UNREADABLE_FILE = "unreadable_file"  # a file that is not the format it claims
  RECORD_TOO_LARGE = "record_too_large"  # over --max_record_bytes
  MODEL_ERROR = "model_error"


# Input fields a record carries besides its id and text, for the Vertex AI
# export (--restrict_fields and the like): ((kind, field name, its values),
# ...) in flag order, kind as transforms/formats/carried.py names them; the
# values a tuple of str, or of one int or float.
CarriedValue = Union[str, int, float]
CarriedFields = Tuple[Tuple[str, str, Tuple[CarriedValue, ...]], ...]


class Document(NamedTuple):
  """One text (or text pair) to embed.

  source: the file the record came from (as matched by the input glob).
  position: where in that file: 0-based line for text/JSONL/CSV, row index for
    Parquet, record index for TFRecord.
  text_pair: the second segment of a pair-task input (--text_pair_field),
    packed after `text` as segment B; None for single texts.
  fields: the input fields carried with the record (CarriedFields).
  """
  id: str
  text: str
  source: str
  position: int
  text_pair: Optional[str] = None
  fields: CarriedFields = ()


def printable(text: str, limit: Optional[int] = None) -> str:
  """`text` as valid Unicode, cut to `limit` characters.

  A lone surrogate becomes a visible escape: "\\xff" for a byte that was not
  UTF-8 (surrogateescape), "\\ud800" otherwise. So every dead letter can be
  written as UTF-8 JSON, whatever input it quotes.
  """
  text = _SURROGATE.sub(_escape_surrogate, text)
  if limit is not None and len(text) > limit:
    text = text[:limit - 1] + "\u2026"
  return text


def _escape_surrogate(match: re.Match) -> str:
  code = ord(match.group())
  if 0xdc80 <= code <= 0xdcff:
    return f"\\x{code - 0xdc00:02x}"
  return f"\\u{code:04x}"


class _DeadLetterFields(NamedTuple):
  source: str
  position: int
  stage: str  # "read", "validate" or "embed"
  reason: str  # one of Reason
  detail: str  # human readable, e.g. the exception text
  snippet: str  # at most SNIPPET_CHARS characters of the raw record
  id: Optional[str] = None


class DeadLetter(_DeadLetterFields):
  """A rejected record: where it came from, why, and a short snippet of it.

  Every text field is made printable and bounded when the dead letter is
  made (see `printable`), so no input can make an error row unwritable.
  """
  __slots__ = ()

  def __new__(cls, source: str, position: int, stage: str, reason: str,
              detail: str, snippet: str, id: Optional[str] = None):  # pylint: disable=redefined-builtin
    return super().__new__(
        cls, printable(source), position, stage, reason,
        printable(detail, DETAIL_CHARS), printable(snippet, SNIPPET_CHARS),
        None if id is None else printable(id, ID_CHARS))

  def to_json_dict(self) -> dict:
    return self._asdict()


def make_snippet(raw) -> str:
  """A short, printable excerpt of a raw record (str or bytes)."""
  if isinstance(raw, bytes):
    raw = raw[:SNIPPET_CHARS * 4].decode("utf-8", errors="backslashreplace")
  elif not isinstance(raw, str):
    raw = repr(raw)
  return printable(raw[:SNIPPET_CHARS])


def dead_letter_of(document: "Document", stage: str, reason: str,
                   detail: str) -> DeadLetter:
  """The dead letter of a document a stage after reading rejects."""
  return DeadLetter(source=document.source, position=document.position,
                    stage=stage, reason=reason, detail=detail,
                    snippet=make_snippet(document.text), id=document.id)


def derive_document_id(source: str, text: str,
                       text_pair: Optional[str] = None) -> str:
  """A stable id for a record whose input has none.

  Derived from the source file's base name and the text, so re-reading the same
  corpus (or a copy of it elsewhere) gives the same ids, and a line that moves
  within its file keeps its id. Two identical texts in one file get one id; the
  second is then reported as a duplicate.

  A text pair's id covers both texts: (a, b) and (a, c) are different
  documents. Each text is length-prefixed, so two different pairs never hash
  the same bytes (("x y", "z") and ("x", "y z") get different ids).
  """
  digest = hashlib.sha256()
  digest.update(os.path.basename(source).encode("utf-8"))
  digest.update(b"\x00")
  if text_pair is None:
    digest.update(text.encode("utf-8"))
  else:
    digest.update(b"\x00pair\x00")
    for part in (text, text_pair):
      data = part.encode("utf-8")
      digest.update(len(data).to_bytes(8, "big"))
      digest.update(data)
  return digest.hexdigest()[:32]


def has_derived_id(document: Document) -> bool:
  """Whether the document's id is the derived one: its record held no id."""
  return document.id == derive_document_id(document.source, document.text,
                                           document.text_pair)


def content_hash(text: str) -> str:
  """Hash of a document's text, used to detect changed documents."""
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Vectors:
  """What the model computed for one text: the vectors a row stores.

  embedding: the pooled sentence vector, float32 [H].
  num_tokens: wordpieces fed to the encoder, [CLS] and [SEP] included, after
    truncation.
  truncated: whether the text had more tokens than --max_seq_length allowed.
  token_ids / sequence_embedding: only when sequence output is asked for; the
    real tokens only (no padding): int32 [T] and float32 or float16 [T, H].
  layers: chosen encoder layers (non-negative index) -> pooled vector [H].
  """
  embedding: np.ndarray
  num_tokens: int
  truncated: bool
  token_ids: Optional[np.ndarray] = None
  sequence_embedding: Optional[np.ndarray] = None
  layers: Mapping[int, np.ndarray] = dataclasses.field(default_factory=dict)


class ChunkVectors(NamedTuple):
  """What the model computed for one chunk of a document: its span (code
  point offsets into the document's text, end exclusive) and its vectors."""
  start: int
  end: int
  vectors: Vectors


class ChunkedVectors(NamedTuple):
  """What the model computed for one document cut into chunks: the document's
  vectors (pooled from its chunks') and each chunk's, in order."""
  vectors: Vectors
  chunks: Tuple[ChunkVectors, ...]


class _VectorsOfARow:
  """The fields of a row's Vectors, read through: what the converters take."""
  vectors: Vectors

  @property
  def embedding(self) -> np.ndarray:
    return self.vectors.embedding

  @property
  def num_tokens(self) -> int:
    return self.vectors.num_tokens

  @property
  def truncated(self) -> bool:
    return self.vectors.truncated

  @property
  def token_ids(self) -> Optional[np.ndarray]:
    return self.vectors.token_ids

  @property
  def sequence_embedding(self) -> Optional[np.ndarray]:
    return self.vectors.sequence_embedding

  @property
  def layers(self) -> Mapping[int, np.ndarray]:
    return self.vectors.layers


@dataclasses.dataclass(frozen=True, eq=False)
class Embedding(_VectorsOfARow):
  """A row of the embeddings table: a document and its vectors.

  The vectors are computed by the model in this run, or carried over from a
  previous run (--previous_run); either way one `Vectors`. With chunking
  (--chunk_size), they are the num_tokens-weighted mean of its `num_chunks`
  chunks' vectors. `fields`: its document's carried input fields (not a
  column of the table; the Vertex AI export writes them).
  """
  id: str
  text: str
  source: str
  vectors: Vectors
  num_chunks: int = 0
  fields: CarriedFields = ()


def chunk_id(document_id: str, chunk_index: int) -> str:
  """A chunk's id: deterministic, from its document's id and its index."""
  return f"{document_id}#{chunk_index}"


def document_of_chunk(item_id: str) -> str:
  """The document id of a chunk id (`chunk_id`'s inverse)."""
  return item_id.rpartition("#")[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Chunk(_VectorsOfARow):
  """A row of the chunks table: a span of a long document, and its vectors.

  start, end: Unicode code point offsets into the document's text, end
    exclusive: the chunk's text is `document_text[start:end]`, and it starts
    and ends on word boundaries.
  fields: its document's carried input fields (see Embedding).
  """
  id: str
  document_id: str
  chunk_index: int
  start: int
  end: int
  text: str
  vectors: Vectors
  fields: CarriedFields = ()


def embedding_of(document: Document, vectors: Vectors,
                 num_chunks: int = 0) -> Embedding:
  """The embeddings table's row of a document and its vectors."""
  return Embedding(id=document.id, text=document.text, source=document.source,
                   vectors=vectors, num_chunks=num_chunks,
                   fields=document.fields)


def chunk_of(document: Document, index: int, chunk: ChunkVectors) -> Chunk:
  """The chunks table's row of a document's chunk number `index`."""
  return Chunk(id=chunk_id(document.id, index), document_id=document.id,
               chunk_index=index, start=chunk.start, end=chunk.end,
               text=document.text[chunk.start:chunk.end],
               vectors=chunk.vectors, fields=document.fields)
