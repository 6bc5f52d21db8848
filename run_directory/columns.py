"""A table's columns, as data: the one description every schema is made from.

A `Column` says a column in BigQuery's terms (name, type, mode, description,
nested fields). Every table of the run directory is a tuple of Columns
(tables.py, embeddings.py), from which the BigQuery schema (here), the Arrow
schema and the tf.Example layout (arrow.py) and the Avro schema (avro.py) are
rendered; nothing else spells a schema out.

Floats: every FLOAT the pipeline produces is a float32 (tf.Example can only
hold float32), so the files store FLOAT columns as 32-bit floats in every
format; BigQuery widens them to FLOAT64 exactly on load. JSON lines carry the
same values as decimal text.
"""

import dataclasses
import re
from typing import Any, Mapping, Sequence

# BigQuery column modes.
NULLABLE = "NULLABLE"
REQUIRED = "REQUIRED"
REPEATED = "REPEATED"
MODES = (NULLABLE, REQUIRED, REPEATED)

# Every type BigQuery's load API knows (standard and legacy SQL spellings).
# BigQuery's Python client accepts any string as a type, so a misspelt type
# would only fail at load time, hours later: `validate_bigquery_schema` checks.
BIGQUERY_TYPES = (
    "STRING", "BYTES", "INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC",
    "BIGNUMERIC", "BOOLEAN", "BOOL", "TIMESTAMP", "DATE", "TIME", "DATETIME",
    "GEOGRAPHY", "JSON", "RECORD", "STRUCT")
RECORD_TYPES = ("RECORD", "STRUCT")

# The keys of a BigQuery TableFieldSchema; anything else is a typo BigQuery
# would silently ignore (a misspelt "mode" makes a column NULLABLE).
_FIELD_KEYS = frozenset((
    "name", "type", "mode", "fields", "description", "policyTags",
    "maxLength", "precision", "scale", "defaultValueExpression", "collation",
    "roundingMode", "rangeElementType", "foreignTypeDefinition",
    "dataPolicies"))
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
# Prefixes BigQuery reserves for its own pseudo-columns.
_RESERVED_PREFIXES = (
    "_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLON_")

# Column and feature names other stages and readers refer to.
TOKENS = "tokens"
CONTENT_HASH = "content_hash"
TOKEN_IDS = "token_ids"
SEQUENCE_EMBEDDING = "sequence_embedding"


def encoder_layer_column(layer: int) -> str:
  return f"encoder_layer_{layer}"


@dataclasses.dataclass(frozen=True)
class Column:
  """One column of an output table, in BigQuery's terms."""
  name: str
  type: str
  mode: str = NULLABLE
  description: str = ""
  fields: tuple["Column", ...] = ()  # only for RECORD columns


def to_bigquery_schema(columns: Sequence[Column]) -> list[dict]:
  """The schema as `bq load --schema=FILE.json` and the BigQuery API take it."""
  fields = []
  for column in columns:
    field = {"name": column.name, "type": column.type, "mode": column.mode}
    if column.description:
      field["description"] = column.description
    if column.fields:
      field["fields"] = to_bigquery_schema(column.fields)
    fields.append(field)
  return fields


def columns_from_bigquery_schema(
    fields: Sequence[Mapping]) -> tuple[Column, ...]:
  """The inverse of `to_bigquery_schema`, for readers of a written schema."""
  validate_bigquery_schema(fields)
  return _columns_from_fields(fields)


def _columns_from_fields(fields: Sequence[Mapping]) -> tuple[Column, ...]:
  return tuple(
      Column(
          name=field["name"],
          type=field["type"].upper(),
          mode=field.get("mode", NULLABLE).upper(),
          description=field.get("description", ""),
          fields=_columns_from_fields(field.get("fields", ())))
      for field in fields)


def validate_bigquery_schema(fields: Any) -> None:
  """Raises ValueError listing every problem BigQuery would reject at load.

  Checks types, modes and names (the Python client accepts misspelt types),
  keys (a misspelt key is silently ignored by BigQuery), duplicate names
  (case-insensitive, as in BigQuery) and that RECORDs, and only they, have
  fields.
  """
  problems = []
  _collect_schema_problems(fields, "", problems)
  if problems:
    raise ValueError(
        "Invalid BigQuery schema:\n  " + "\n  ".join(problems))


def _collect_schema_problems(fields, parent: str, problems: list) -> None:
  where = parent or "schema"
  if not isinstance(fields, (list, tuple)) or not fields:
    problems.append(f"{where}: expected a non-empty list of fields")
    return
  seen = set()
  for index, field in enumerate(fields):
    if not isinstance(field, Mapping):
      problems.append(f"{where}[{index}]: expected an object, got {field!r}")
      continue
    name = field.get("name")
    path = f"{parent}.{name}" if parent else str(name)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
      problems.append(
          f"{where}[{index}]: bad column name {name!r} (letters, digits and "
          "underscores, not starting with a digit, at most 300 characters)")
    elif name.upper().startswith(_RESERVED_PREFIXES):
      problems.append(f"{path}: the name prefix is reserved by BigQuery")
    elif name.lower() in seen:
      problems.append(f"{path}: duplicate column name")
    else:
      seen.add(name.lower())
    unknown = sorted(set(field) - _FIELD_KEYS)
    if unknown:
      problems.append(f"{path}: unknown keys {unknown}")
    type_ = field.get("type")
    if not isinstance(type_, str) or type_.upper() not in BIGQUERY_TYPES:
      problems.append(
          f"{path}: unknown type {type_!r}; expected one of "
          f"{', '.join(BIGQUERY_TYPES)}")
      type_ = None
    mode = field.get("mode", NULLABLE)
    if not isinstance(mode, str) or mode.upper() not in MODES:
      problems.append(
          f"{path}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    is_record = type_ is not None and type_.upper() in RECORD_TYPES
    if is_record:
      _collect_schema_problems(field.get("fields"), path, problems)
    elif type_ is not None and "fields" in field:
      problems.append(f"{path}: only RECORD columns have fields")
