"""What every input format shares: which fields a record needs, and how a
record becomes a Document or is rejected.

A format reader finds the id, the text (and the pair text) of each record its
own way; the rules for what makes a good record are here, once:

- the text must be a string of valid UTF-8; absent or null is MISSING_FIELD,
  another type NON_STRING_FIELD;
- the id is optional: a string or an integer; absent, null or "" means an id
  derived from the source and the text;
- a record may be at most `RecordSpec.max_record_bytes` long
  (RECORD_TOO_LARGE), so that no input can make a reader hold more.
"""

import dataclasses
from typing import Iterable, Optional, Union

from run_directory.records import CarriedFields
from run_directory.records import DeadLetter
from run_directory.records import derive_document_id
from run_directory.records import Document
from run_directory.records import make_snippet
from run_directory.records import Reason

STAGE = "read"

Record = Union[Document, DeadLetter]

# The default of --max_record_bytes: far more text than any model reads (a
# 256-wordpiece window is about 1.5 KB), small enough that a reader's memory
# stays bounded by a few times it.
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024

# Field names quoted in a reason, at most: a record can have thousands.
_NAMES_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class RecordSpec:
  """Where a record's id and text are, and how large a record may be.

  id_field: the id field / column / feature; absent means derived ids.
  text_field: the text field / column / feature (not used for plain text).
  text_pair_field: for pair tasks, the second text's field, else None.
  max_record_bytes: a longer record (line, row cell, TFRecord frame) is a
    RECORD_TOO_LARGE dead letter, and is never held in memory whole.
  carried: the other fields each record carries (carried.CarriedField, for
    the Vertex AI export); a record without one is a dead letter.
  text_flag: the flag that names text_field, as a missing text's error row
    says to set it (the --neighbours_of queries' is --query_text_field).
  text_pair_flag: the same for text_pair_field.
  """
  id_field: str = "id"
  text_field: str = "text"
  text_pair_field: Optional[str] = None
  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
  carried: tuple = ()
  text_flag: str = "--text_field"
  text_pair_flag: str = "--text_pair_field"

  def __post_init__(self):
    if self.max_record_bytes < 1:
      raise ValueError(
          f"max_record_bytes must be positive, got {self.max_record_bytes}")

  @property
  def field_names(self) -> frozenset:
    """Every field a record's values are taken from."""
    names = {self.id_field, self.text_field}
    names.update(field.name for field in self.carried)
    if self.text_pair_field is not None:
      names.add(self.text_pair_field)
    return frozenset(names)


class Rejected(Exception):
  """A record that cannot become a Document, and why."""

  def __init__(self, reason: str, detail: str, doc_id: Optional[str] = None):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail
    self.doc_id = doc_id

  def dead_letter(self, source: str, position: int, raw) -> DeadLetter:
    return DeadLetter(
        source=source,
        position=position,
        stage=STAGE,
        reason=self.reason,
        detail=self.detail,
        snippet=make_snippet(raw),
        id=self.doc_id)


def ambiguous(names: Iterable[str], kind: str = "field") -> Rejected:
  """The rejection of a record that names a field it needs twice: which of
  the two values is meant is unknown."""
  shown = ", ".join(repr(name) for name in sorted(names))
  return Rejected(
      Reason.MALFORMED_RECORD,
      f"the record has the {kind} {shown} twice; which value is meant is "
      "unknown")


def too_large(size: int, limit: int, what: str = "record") -> Rejected:
  """The rejection of a record over --max_record_bytes."""
  return Rejected(
      Reason.RECORD_TOO_LARGE,
      f"the {what} is {size:,} bytes or more, over --max_record_bytes "
      f"({limit:,}); raise the flag or split the document")


def document(source: str, position: int, doc_id: Optional[str], text: str,
             text_pair: Optional[str] = None,
             fields: CarriedFields = ()) -> Document:
  """A Document; an input without an id gets the derived, stable one."""
  if doc_id is None:
    doc_id = derive_document_id(source, text, text_pair)
  return Document(id=doc_id, text=text, source=source, position=position,
                  text_pair=text_pair, fields=fields)


# Said of bytes that are not UTF-8 in a file of text lines (text, JSONL,
# CSV, TSV): most often the whole file is in a legacy encoding, as Excel's
# "CSV (Comma delimited)" and Notepad's "ANSI" save Windows-1252, and only
# its lines with accents are rejected. (Not said of a Parquet or TFRecord
# cell: their files are binary, and a bad cell is that cell's.)
ENCODING_HINT = (
    "; text files must be UTF-8 (or UTF-16/32 with a byte-order mark): one "
    "saved in a legacy encoding converts with e.g. iconv -f cp1252 -t utf-8 "
    "(Excel: save as \"CSV UTF-8\")")


def check_unicode(value: str, field: str, doc_id: Optional[str] = None,
                  hint: str = "") -> str:
  """`value`, if it is valid Unicode text (encodable as UTF-8).

  Strings decoded with surrogateescape (CSV) or parsed from JSON "\\ud800"
  escapes can hold lone surrogates, which every later stage (hashing,
  tokenizing, writing) would choke on. `hint` is added to the reason.
  """
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as error:
    raise Rejected(Reason.INVALID_UTF8,
                   f"field {field!r} is not valid UTF-8: {error}{hint}",
                   doc_id) from None
  return value


def decode_utf8(raw: bytes, what: str, doc_id: Optional[str] = None,
                hint: str = "") -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as error:
    raise Rejected(Reason.INVALID_UTF8,
                   f"{what} is not valid UTF-8: {error}{hint}",
                   doc_id) from None


def check_size(raw: bytes, spec: RecordSpec, what: str = "record") -> bytes:
  if len(raw) > spec.max_record_bytes:
    raise too_large(len(raw), spec.max_record_bytes, what)
  return raw


def kind_of(value) -> str:
  """What a field holds, as an error detail names it: "an object", "an
  array", "a boolean", "an integer", "a number", "null", ... (JSON's names:
  the reader's own classes, such as its ordered object, stay out of view)."""
  for kind, name in ((bool, "a boolean"), (int, "an integer"),
                     (float, "a number"), (str, "a string"),
                     (dict, "an object"), ((list, tuple), "an array"),
                     ((bytes, bytearray), "bytes"), (type(None), "null")):
    if isinstance(value, kind):
      return name
  return f"a {type(value).__name__}"


def id_from_int(value: int) -> str:
  return str(value)


# Said of an id of floating-point numbers. Ids are strings or integers: a
# float is no id (1000.0 and 1000 would be two). pandas makes floats of an
# integer column that has a missing value (NaN), and writes them as such to
# Parquet and JSON, so every row of such a file would be rejected with no
# hint of why the ids are floats.
FLOAT_ID_HINT = (
    " (pandas stores an integer column holding a missing value as floats: "
    "cast it to the nullable dtype, df[column].astype('Int64'), or to "
    "strings before writing)")


def names(fields: Iterable[str]) -> str:
  """Field names for a reason text: sorted, the first few, and how many."""
  fields = sorted(fields)
  shown = ", ".join(fields[:_NAMES_SHOWN])
  if len(fields) > _NAMES_SHOWN:
    shown += f", ... ({len(fields)} in all)"
  return shown


def missing(field: str, flag: str, present: Iterable[str],
            kind: str = "field", doc_id: Optional[str] = None) -> Rejected:
  """The rejection of a record without a required field."""
  return Rejected(
      Reason.MISSING_FIELD,
      f"no {field!r} {kind} ({kind}s: {names(present)}); set {flag}", doc_id)
