"""JSON lines: one JSON object per line.

Every line, blank ones too, is a record: positions are 0-based line numbers.
A line that is not a JSON object is MALFORMED_RECORD, and only that line:
whatever it holds (nesting a thousand deep, a number of 5,000 digits, lone
surrogate escapes) the lines after it are read as usual. A record that
holds a field it needs (the id, the text, ...) twice is MALFORMED_RECORD too:
which value is meant is unknown.

A file that is one JSON array of records (pandas `to_json(orient="records")`,
DuckDB `COPY ... (FORMAT json, ARRAY true)`, `json.dump(list)`) is not JSON
Lines: read line by line, its records would be rejected one by one for
reasons that do not say why (DuckDB's "{...}," lines), or all of them as one
line, and the last object of a pretty-printed array would be read as a record.
A file whose first line opens an array of objects is therefore
UNREADABLE_FILE, with the commands that turn it into JSON Lines.
"""

import json
import re
from typing import BinaryIO, Iterator, Optional

from run_directory.records import Document
from run_directory.records import Reason
from transforms.formats.carried import carried_fields
from transforms.formats.fields import ambiguous
from transforms.formats.fields import check_unicode
from transforms.formats.fields import decode_utf8
from transforms.formats.fields import document
from transforms.formats.fields import ENCODING_HINT
from transforms.formats.fields import FLOAT_ID_HINT
from transforms.formats.fields import id_from_int
from transforms.formats.fields import kind_of
from transforms.formats.fields import missing
from transforms.formats.fields import Record
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected
from transforms.formats.fields import too_large
from transforms.formats.lines import iter_lines
from transforms.formats.lines import OversizedLine
from transforms.formats.lines import strip_terminator

# The first line of a JSON array of records: "[" alone, or "[" and the first
# object ("[{...", "[ {").
_JSON_ARRAY_START = re.compile(rb"\s*\[\s*(\{|$)")

# Python refuses to turn more digits than this into an int (a guard against
# quadratic-time conversion, sys.get_int_max_str_digits).
_MAX_INT_DIGITS = 4000


class _LongInteger(str):
  """A JSON integer too long for int(), kept as its digits.

  It is a number all the same: an id of digits, a text it is not.
  """


class _JsonObject(dict):
  """A JSON object, and the keys it holds more than once (JSON allows it;
  Python's json module keeps the last value)."""
  repeated_keys = frozenset()


def _json_object(pairs: list) -> _JsonObject:
  json_object = _JsonObject(pairs)
  if len(json_object) != len(pairs):
    seen = set()
    json_object.repeated_keys = frozenset(
        key for key, _ in pairs if key in seen or seen.add(key))
  return json_object


def _parse_int(digits: str):
  if len(digits) > _MAX_INT_DIGITS:
    return _LongInteger(digits)
  return int(digits)


def _kind_of(value) -> str:
  return "an integer" if isinstance(value, _LongInteger) else kind_of(value)


def parse_json_object(line: bytes) -> dict:
  """The JSON object on a line; Rejected if it is not one."""
  try:
    record = json.loads(decode_utf8(line, "line", hint=ENCODING_HINT),
                        parse_int=_parse_int, object_pairs_hook=_json_object)
  except ValueError as error:  # json.JSONDecodeError is one
    raise Rejected(Reason.MALFORMED_RECORD, f"invalid JSON: {error}") from None
  except RecursionError:
    raise Rejected(Reason.MALFORMED_RECORD,
                   "invalid JSON: nested too deeply to parse") from None
  if not isinstance(record, dict):
    raise Rejected(Reason.MALFORMED_RECORD,
                   f"expected a JSON object, got {_kind_of(record)}")
  return record


def _json_text(record: dict, field: str, flag: str,
               doc_id: Optional[str]) -> str:
  if field not in record:
    raise missing(field, flag, record, doc_id=doc_id)
  text = record[field]
  if text is None:
    raise Rejected(Reason.MISSING_FIELD, f"{field!r} is null", doc_id)
  if not isinstance(text, str) or isinstance(text, _LongInteger):
    raise Rejected(
        Reason.NON_STRING_FIELD,
        f"field {field!r} is {_kind_of(text)}, not a string", doc_id)
  return check_unicode(text, field, doc_id)


def _id_from_json(value, id_field: str) -> Optional[str]:
  """The record's own id, or None (absent, null or "") for a derived one."""
  if value is None or value == "":
    return None
  if isinstance(value, _LongInteger):
    return str(value)
  if isinstance(value, str):
    return check_unicode(value, id_field)
  # bool is an int subclass, but `true` is no id.
  if isinstance(value, int) and not isinstance(value, bool):
    return id_from_int(value)
  hint = FLOAT_ID_HINT if isinstance(value, float) else ""
  raise Rejected(
      Reason.NON_STRING_FIELD,
      f"field {id_field!r} is {kind_of(value)}, not a string or integer"
      f"{hint}")


def _jsonl_document(line: bytes, source: str, position: int,
                    spec: RecordSpec) -> Document:
  record = parse_json_object(line)
  # The spec's field names are made only for an object that repeats a key
  # (rarely), not for every line.
  repeated = record.repeated_keys and record.repeated_keys & spec.field_names
  if repeated:
    raise ambiguous(repeated)
  doc_id = _id_from_json(record.get(spec.id_field), spec.id_field)
  text = _json_text(record, spec.text_field, spec.text_flag, doc_id)
  text_pair = None
  if spec.text_pair_field is not None:
    text_pair = _json_text(record, spec.text_pair_field, spec.text_pair_flag,
                           doc_id)
  fields = carried_fields(spec.carried, record.get, doc_id)
  return document(source, position, doc_id, text, text_pair, fields)


def read_jsonl_records(stream: BinaryIO, source: str,
                       spec: RecordSpec) -> Iterator[Record]:
  """One record per line; every line (blank ones too) must be a JSON object."""
  for position, read in enumerate(iter_lines(stream, spec.max_record_bytes)):
    oversized = isinstance(read, OversizedLine)
    line = read.head if oversized else strip_terminator(read)
    # An array on one line is oversized as soon as the corpus is large
    # (pandas' to_json): its head tells it as well.
    if position == 0 and _JSON_ARRAY_START.match(line):
      raise ValueError(
          "the file is one JSON array of records, not JSON Lines (one "
          "object per line): write it as JSON Lines, e.g. pandas "
          "to_json(orient='records', lines=True), DuckDB COPY ... (FORMAT "
          "json) without ARRAY true, or jq -c '.[]' FILE > FILE.jsonl")
    if oversized:
      yield too_large(read.size, spec.max_record_bytes, "line").dead_letter(
          source, position, line)
      continue
    try:
      yield _jsonl_document(line, source, position, spec)
    except Rejected as rejected:
      yield rejected.dead_letter(source, position, line)
