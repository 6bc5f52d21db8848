"""The Avro rendering of a table's columns (BigQuery loads Avro files).

REPEATED is an array, NULLABLE a union with null; FLOAT a 32-bit float (see
columns.py).
"""

from typing import Sequence

from run_directory.columns import Column
from run_directory.columns import NULLABLE
from run_directory.columns import RECORD_TYPES
from run_directory.columns import REPEATED

_AVRO_TYPES = {
    "STRING": "string",
    "BYTES": "bytes",
    "INTEGER": "long",
    "INT64": "long",
    "FLOAT": "float",  # see the module docstring
    "FLOAT64": "float",
    "BOOLEAN": "boolean",
    "BOOL": "boolean",
    "TIMESTAMP": {"type": "long", "logicalType": "timestamp-micros"},
    "DATE": {"type": "int", "logicalType": "date"},
}


def to_avro_schema(
    columns: Sequence[Column],
    name: str,
    namespace: str = "bert_batch_embeddings") -> dict:
  """Avro record schema: REPEATED is an array, NULLABLE a union with null."""
  return {
      "type": "record",
      "name": name,
      "namespace": namespace,
      "fields": [_avro_field(column, name) for column in columns],
  }


def _avro_field(column: Column, record_name: str) -> dict:
  if column.type in RECORD_TYPES:
    # Avro record names must be unique within a schema.
    nested_name = f"{record_name}_{column.name}"
    value_type = {
        "type": "record",
        "name": nested_name,
        "fields": [_avro_field(f, nested_name) for f in column.fields],
    }
  elif column.type in _AVRO_TYPES:
    value_type = _AVRO_TYPES[column.type]
  else:
    raise ValueError(
        f"Column {column.name}: type {column.type} has no Avro rendering")
  field = {"name": column.name}
  if column.description:
    field["doc"] = column.description
  if column.mode == REPEATED:
    field["type"] = {"type": "array", "items": value_type}
  elif column.mode == NULLABLE:
    field["type"] = ["null", value_type]
    field["default"] = None
  else:
    field["type"] = value_type
  return field
