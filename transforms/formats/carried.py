"""Input fields a record carries besides its id and text: the values of
--restrict_fields, --numeric_restrict_fields and --crowding_tag_field, which
the Vertex AI Vector Search export writes with each vector.

Every format reader hands over a field's raw value (a JSON value, a CSV
cell, a Parquet cell, a tf.Example feature's values); the rules for what a
good value is are here, once:

- restrict: one or more tokens: strings (or integers, written in decimal),
  e.g. "en" or ["news", "sport"];
- numeric restrict: one number: an integer (Vertex `value_int`) or a finite
  float (`value_double`); a CSV/TSV cell or a string is parsed as one;
- crowding tag: one string (or integer).

A record that lacks one of these fields (absent, null, "" or an empty list)
is a MISSING_FIELD dead letter, as the flags' documentation says: a datapoint
without its restrict would match filters it should not. A value of the
wrong type is NON_STRING_FIELD (NON_NUMERIC_FIELD for a numeric restrict).
"""

import dataclasses
import math
import re
from typing import Callable, Optional, Sequence, Tuple

from run_directory.records import CarriedFields
from run_directory.records import CarriedValue
from run_directory.records import Reason
from run_directory.vertex import CROWDING_TAG
from run_directory.vertex import NUMERIC_RESTRICT
from run_directory.vertex import RESTRICT
from transforms.formats.fields import check_unicode
from transforms.formats.fields import kind_of
from transforms.formats.fields import Rejected

FLAG_OF_KIND = {
    RESTRICT: "--restrict_fields",
    NUMERIC_RESTRICT: "--numeric_restrict_fields",
    CROWDING_TAG: "--crowding_tag_field",
}
# Vertex `value_int` is an int64.
_INT64 = (-2**63, 2**63 - 1)
# Numbers in ASCII digits, with a sign, decimal point and exponent: Python's
# int() and float() also take "1_000", "nan" and other scripts' digits.
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_FLOAT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*",
                    re.ASCII)


@dataclasses.dataclass(frozen=True)
class CarriedField:
  """An input field carried with each record, and what it is for."""
  name: str
  kind: str  # RESTRICT, NUMERIC_RESTRICT or CROWDING_TAG

  def __post_init__(self):
    if self.kind not in FLAG_OF_KIND:
      raise ValueError(f"unknown carried field kind {self.kind!r}")

  @property
  def flag(self) -> str:
    return FLAG_OF_KIND[self.kind]


def carried_fields(fields: Sequence[CarriedField],
                   raw_value: Callable[[str], object],
                   doc_id: Optional[str]) -> CarriedFields:
  """((kind, name, values), ...) of `fields`, each raw value from
  `raw_value(name)`; Rejected for the first field that is missing or
  malformed."""
  return tuple((field.kind, field.name,
                carried_value(field, raw_value(field.name), doc_id))
               for field in fields)


def carried_value(field: CarriedField, raw,
                  doc_id: Optional[str]) -> Tuple[CarriedValue, ...]:
  """The field's values, checked for its kind (see the module docstring)."""
  values = _present(raw)
  if not values:
    raise Rejected(
        Reason.MISSING_FIELD,
        f"no value for {field.name!r} ({field.flag}); every record needs one",
        doc_id)
  if field.kind == RESTRICT:
    return tuple(_token(field, value, doc_id) for value in values)
  if len(values) != 1:
    raise Rejected(
        Reason.NON_NUMERIC_FIELD if field.kind == NUMERIC_RESTRICT else
        Reason.NON_STRING_FIELD,
        f"{field.name!r} ({field.flag}) holds {len(values)} values, not one",
        doc_id)
  if field.kind == NUMERIC_RESTRICT:
    return (_number(field, values[0], doc_id),)
  return (_token(field, values[0], doc_id),)


def _present(raw) -> list:
  """The raw value as a list of scalars; absent, null and "" left out."""
  values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
  return [value for value in values if value is not None and value != ""
          and value != b""]


def _token(field: CarriedField, value, doc_id: Optional[str]) -> str:
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as error:
      raise Rejected(Reason.INVALID_UTF8,
                     f"field {field.name!r} is not valid UTF-8: {error}",
                     doc_id) from None
  if isinstance(value, str):
    # A str subclass too: the JSON reader keeps huge integers as digits.
    return check_unicode(str(value), field.name, doc_id)
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  raise Rejected(
      Reason.NON_STRING_FIELD,
      f"field {field.name!r} ({field.flag}) is {kind_of(value)}, not a "
      "string or integer", doc_id)


def _number(field: CarriedField, value, doc_id: Optional[str]):
  number = value
  if isinstance(value, bytes):
    number = value.decode("utf-8", errors="replace")
  if isinstance(number, str):
    number = _parse_number(number)
  if isinstance(number, int) and not isinstance(number, bool):
    if _INT64[0] <= number <= _INT64[1]:
      return number
  elif isinstance(number, float) and math.isfinite(number):
    return number
  raise Rejected(
      Reason.NON_NUMERIC_FIELD,
      f"field {field.name!r} ({field.flag}) is {_shown(value)}, not a finite "
      "number (an int64 integer or a float)", doc_id)


def _parse_number(text: str):
  """An int for integer text (leading zeros allowed), a float for decimal
  text, None otherwise."""
  if _INTEGER.fullmatch(text):
    # More digits are past int64 anyway (and int() refuses over 4300).
    digits = text.strip().lstrip("+-").lstrip("0")
    return int(text) if len(digits) <= 19 else None
  if _FLOAT.fullmatch(text):
    return float(text)
  return None


def _shown(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:39] + "…"
