"""Arrow renderings of a table's columns, both ways.

- `to_arrow_schema`: the BigQuery-shaped rows as Arrow (Parquet files,
  readers of the BigQuery-loadable copy).
- The tf.Example layout of TFRecord files: tf.Example is flat, so every column
  is a feature of the same name, scalars as one-value lists, booleans as int64
  0/1, strings as bytes; the nested `tokens` column is stored as two parallel
  features, `token_ids` [T] and `sequence_embedding` [T*H] (row major; or one
  bytes value of little-endian float16 when `sequence_dtype` is float16).
  `rows_to_record_batch` writes it (for tfx-bsl's C++
  RecordBatchToExamplesEncoder), `from_example_layout` reads decoded Examples
  back, typed by `example_layout_arrow_schema`.
- Helpers that build Arrow list arrays from numpy in bulk.
"""

from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from run_directory.columns import Column
from run_directory.columns import RECORD_TYPES
from run_directory.columns import REPEATED
from run_directory.columns import REQUIRED
from run_directory.columns import SEQUENCE_EMBEDDING
from run_directory.columns import TOKEN_IDS
from run_directory.columns import TOKENS

_ARROW_TYPES = {
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float32(),  # see the module docstring
    "FLOAT64": pa.float32(),
    "BOOLEAN": pa.bool_(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DATE": pa.date32(),
}


def to_arrow_schema(columns: Sequence[Column]) -> pa.Schema:
  """Arrow schema of the BigQuery-shaped rows (Parquet files, readers)."""
  return pa.schema([_arrow_field(column) for column in columns])


def _arrow_field(column: Column) -> pa.Field:
  if column.type in RECORD_TYPES:
    value_type = pa.struct([_arrow_field(f) for f in column.fields])
  elif column.type in _ARROW_TYPES:
    value_type = _ARROW_TYPES[column.type]
  else:
    raise ValueError(
        f"Column {column.name}: type {column.type} has no Arrow rendering")
  if column.mode == REPEATED:
    # BigQuery arrays are never NULL and hold no NULLs. "element" is the name
    # the Parquet spec gives list items.
    return pa.field(
        column.name, _arrow_list(value_type), nullable=False)
  return pa.field(column.name, value_type, nullable=column.mode != REQUIRED)


def _arrow_list(value_type: pa.DataType) -> pa.ListType:
  return pa.list_(pa.field("element", value_type, nullable=False))


def example_layout_arrow_schema(columns: Sequence[Column]) -> pa.Schema:
  """Arrow schema of a table read back from TFRecord, scalars unwrapped.

  The flat tf.Example layout (see the module docstring) with one value per
  scalar column, booleans as booleans and strings as strings; the float16
  bytes of `sequence_embedding` read back as float32 values.
  """
  fields = []
  for column in columns:
    if column.name == TOKENS and column.type in RECORD_TYPES:
      fields.append(pa.field(TOKEN_IDS, _arrow_list(pa.int64()), False))
      fields.append(
          pa.field(SEQUENCE_EMBEDDING, _arrow_list(pa.float32()), False))
    elif column.type in RECORD_TYPES:
      raise ValueError(
          f"Column {column.name}: only the tokens record has a tf.Example "
          "layout")
    else:
      fields.append(_arrow_field(column))
  return pa.schema(fields)


def rows_to_arrow(
    rows: Sequence[Mapping], columns: Sequence[Column]) -> pa.RecordBatch:
  """BigQuery-shaped rows as an Arrow batch (small tables' Parquet path)."""
  return pa.RecordBatch.from_pylist(list(rows), schema=to_arrow_schema(columns))


def rows_to_record_batch(
    rows: Sequence[Mapping], columns: Sequence[Column]) -> pa.RecordBatch:
  """Flat BigQuery-shaped rows in the tf.Example layout (small tables).

  A NULL becomes a feature without values. For tables without RECORD
  columns.
  """
  arrays, names = [], []
  for column in columns:
    if column.type in RECORD_TYPES:
      raise ValueError(
          f"Column {column.name}: RECORD columns need a table-specific "
          "tf.Example layout")
    values = [row.get(column.name) for row in rows]
    if column.mode == REPEATED:
      to_feature = _EXAMPLE_VALUE[column.type]
      arrays.append(pa.array(
          [[to_feature(v) for v in value or ()] for value in values],
          pa.list_(_EXAMPLE_TYPES[column.type])))
    else:
      arrays.append(_scalar_feature(values, column.type))
    names.append(column.name)
  return pa.RecordBatch.from_arrays(arrays, names=names)


def _scalar_feature(values: list, column_type: str) -> pa.ListArray:
  """One value per row as a one-value list, a NULL as an empty one.

  Built flat and wrapped by offsets: a table of neighbours has k rows per
  document, and a Python list per value cost more than the encoding.
  """
  present = [value is not None for value in values]
  flat = pa.array([_SCALAR_VALUE[column_type](value)
                   for value in values if value is not None],
                  _SCALAR_TYPES[column_type])
  offsets = np.zeros(len(values) + 1, dtype=np.int32)
  np.cumsum(present, out=offsets[1:])
  return pa.ListArray.from_arrays(
      pa.array(offsets), flat.cast(_EXAMPLE_TYPES[column_type]))


# tf.Example holds bytes, int64 and float32 lists only.
_EXAMPLE_TYPES = {
    "STRING": pa.binary(),
    "BYTES": pa.binary(),
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float32(),
    "FLOAT64": pa.float32(),
    "BOOLEAN": pa.int64(),
    "BOOL": pa.int64(),
}
_EXAMPLE_VALUE = {
    "STRING": lambda v: v.encode("utf-8"),
    "BYTES": bytes,
    "INTEGER": int,
    "INT64": int,
    "FLOAT": float,
    "FLOAT64": float,
    "BOOLEAN": int,
    "BOOL": int,
}
# A scalar column's values as Arrow takes them in bulk, cast to the
# _EXAMPLE_TYPES afterwards (strings as UTF-8 strings, then bytes: a view).
_SCALAR_TYPES = {**_EXAMPLE_TYPES, "STRING": pa.string()}
_SCALAR_VALUE = {**_EXAMPLE_VALUE, "STRING": str}


def from_example_layout(
    decoded: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
  """Decoded tf.Examples (all lists) typed by `example_layout_arrow_schema`."""
  arrays = []
  for field in schema:
    index = decoded.schema.get_field_index(field.name)
    if index < 0:
      if not field.nullable:
        raise ValueError(f"TFRecord examples lack the feature {field.name!r}")
      arrays.append(pa.nulls(decoded.num_rows, field.type))
    else:
      arrays.append(_feature_to_column(decoded.column(index), field))
  return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _feature_to_column(feature: pa.Array, field: pa.Field) -> pa.Array:
  if pa.types.is_null(feature.type):  # no example had a value
    if pa.types.is_list(field.type):
      return pa.array([[]] * len(feature), field.type)
    return pa.nulls(len(feature), field.type)
  if pa.types.is_list(field.type):
    if (field.name == SEQUENCE_EMBEDDING and
        pa.types.is_large_binary(feature.type.value_type)):
      return _float16_lists(feature, field.type)
    return feature.cast(field.type)
  lengths = pc.list_value_length(feature).to_numpy(zero_copy_only=False)
  if np.all(lengths == 1):
    values = feature.flatten()
  elif np.all(np.nan_to_num(lengths, nan=0) <= 1):  # some absent (NULL)
    values = pa.array([v[0] if v else None for v in feature.to_pylist()])
  else:
    raise ValueError(f"Feature {field.name!r} holds several values per row")
  return values.cast(field.type)


def _float16_lists(feature: pa.Array, list_type: pa.DataType) -> pa.Array:
  """One bytes value of little-endian float16 per row -> float32 lists."""
  parts = [
      np.frombuffer(value, dtype="<f2")
      for value in feature.flatten().to_pylist()
  ]
  offsets = np.zeros(len(parts) + 1, dtype=np.int32)
  np.cumsum([len(p) for p in parts], out=offsets[1:])
  values = (
      np.concatenate(parts).astype(np.float32) if parts else np.zeros(
          0, np.float32))
  return pa.ListArray.from_arrays(
      pa.array(offsets), pa.array(values), type=list_type)


# Helpers: Arrow list arrays from numpy, in bulk.


def list_offsets(lengths: np.ndarray) -> pa.Array:
  offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  if offsets[-1] > np.iinfo(np.int32).max:
    raise ValueError(
        f"A batch holds {offsets[-1]} values in one column, more than an "
        "Arrow list can address; use a smaller batch_size")
  return pa.array(offsets.astype(np.int32))


def list_array(values, lengths: np.ndarray, list_type=None) -> pa.ListArray:
  if not isinstance(values, pa.Array):
    values = pa.array(values)
  return pa.ListArray.from_arrays(list_offsets(lengths), values, type=list_type)


def fixed_lists(matrix: np.ndarray, h: int, list_type=None) -> pa.ListArray:
  lengths = np.full(len(matrix), h, dtype=np.int64)
  return list_array(
      np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), lengths,
      list_type)


def one_value_lists(values: pa.Array) -> pa.ListArray:
  return list_array(values, np.ones(len(values), dtype=np.int64))


def repeat(value, type_: pa.DataType, n: int) -> pa.Array:
  return pa.repeat(pa.scalar(value, type_), n)


def float16_bytes(sequence: np.ndarray, value_counts: np.ndarray) -> pa.Array:
  """One bytes value per row: its [T*H] float16 values, little endian."""
  data = np.ascontiguousarray(sequence, dtype="<f2").tobytes()
  byte_offsets = np.zeros(len(value_counts) + 1, dtype=np.int64)
  np.cumsum(value_counts * 2, out=byte_offsets[1:])
  if byte_offsets[-1] > np.iinfo(np.int32).max:
    raise ValueError(
        "A batch's float16 sequence bytes exceed 2 GiB; use a smaller "
        "batch_size")
  return pa.BinaryArray.from_buffers(
      pa.binary(), len(value_counts),
      [None, pa.py_buffer(byte_offsets.astype(np.int32)), pa.py_buffer(data)])
