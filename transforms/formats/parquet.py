"""Parquet: one record per row, read column-wise (only the columns needed).

The text column must be a string column (plain, large, view or
dictionary-encoded, as pandas writes a category), or a binary one, read as
UTF-8 as Spark's spark.sql.parquet.binaryAsString does: Impala, Hive and old
Spark write strings as binary without the UTF-8 annotation, as do pandas
(a column of bytes) and fastparquet's object_encoding="bytes". A missing
column or a null cell is MISSING_FIELD, any other type NON_STRING_FIELD, row
by row. Cells are read as bytes and decoded one by one, so a cell that is
not valid UTF-8 (the Parquet writer does not check) rejects its row alone,
as INVALID_UTF8. The id
column is optional, string or integer; a null or empty id means a derived
one. A --text_pair_field column follows the text column's rules.

The file is read a row group at a time, in batches of _BATCH_ROWS rows: a
damaged row group loses only itself and what follows it (one
unreadable_file), and memory holds one batch of the needed columns.
"""

from typing import BinaryIO, Iterator, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from run_directory.records import Reason
from transforms.formats.carried import carried_fields
from transforms.formats.fields import check_size
from transforms.formats.fields import decode_utf8
from transforms.formats.fields import document
from transforms.formats.fields import FLOAT_ID_HINT
from transforms.formats.fields import id_from_int
from transforms.formats.fields import missing
from transforms.formats.fields import Record
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected

_BATCH_ROWS = 1024


def _value_type(arrow_type: Optional[pa.DataType]) -> Optional[pa.DataType]:
  """The type of a column's values: a dictionary's value type, else itself."""
  if arrow_type is not None and pa.types.is_dictionary(arrow_type):
    return arrow_type.value_type
  return arrow_type


def _is_binary_type(arrow_type: pa.DataType) -> bool:
  return (pa.types.is_binary(arrow_type) or
          pa.types.is_large_binary(arrow_type) or
          pa.types.is_binary_view(arrow_type))


def _is_text_type(arrow_type: pa.DataType) -> bool:
  """A column read as text: strings, or binary taken as UTF-8 (fixed-size
  binary is left out: it holds hashes and UUIDs, not text)."""
  return (pa.types.is_string(arrow_type) or
          pa.types.is_large_string(arrow_type) or
          pa.types.is_string_view(arrow_type) or
          _is_binary_type(arrow_type))


# Said of a binary id cell that is not UTF-8.
BINARY_ID_HINT = (
    " (a binary id column is read as UTF-8 text; one of digests or UUIDs "
    "must be written as strings, e.g. hex: bytes.hex())")


def _as_binary(array: pa.Array) -> pa.Array:
  """A string column as the same bytes, unchecked: no UTF-8 validation."""
  if pa.types.is_dictionary(array.type):
    array = array.dictionary_decode()
  if pa.types.is_string(array.type):
    return array.view(pa.binary())
  if pa.types.is_large_string(array.type):
    return array.view(pa.large_binary())
  if pa.types.is_string_view(array.type):
    return array.view(pa.binary_view())
  return array


def _field_type(schema: pa.Schema, name: str) -> Optional[pa.DataType]:
  index = schema.get_field_index(name)
  return None if index < 0 else schema.field(index).type


def _cells(batch: pa.RecordBatch, name: str,
           value_type: Optional[pa.DataType]) -> list:
  """The column's cells as Python values: bytes for strings."""
  if value_type is None:
    return [None] * batch.num_rows
  return _as_binary(batch.column(name)).to_pylist()


def _text_from_cell(value, field: str, value_type: Optional[pa.DataType],
                    doc_id: Optional[str], spec: RecordSpec,
                    present: List[str], flag: str) -> str:
  if value_type is None:
    raise missing(field, flag, present, kind="column", doc_id=doc_id)
  if value is None:
    raise Rejected(Reason.MISSING_FIELD, f"{field!r} is null", doc_id)
  if not _is_text_type(value_type):
    raise Rejected(
        Reason.NON_STRING_FIELD,
        f"column {field!r} is of type {value_type}, not string", doc_id)
  check_size(value, spec, f"{field!r} cell")
  return decode_utf8(value, f"column {field!r}", doc_id)


def _id_from_cell(value, id_field: str,
                  value_type: Optional[pa.DataType]) -> Optional[str]:
  if value is None or value == b"":
    return None
  if _is_text_type(value_type):
    # A binary id column is taken as text too (Hive and Impala write
    # strings so); one of digests (pandas writes bytes so) is not.
    hint = BINARY_ID_HINT if _is_binary_type(value_type) else ""
    return decode_utf8(value, f"column {id_field!r}", hint=hint) or None
  if pa.types.is_integer(value_type):
    return id_from_int(value)
  hint = FLOAT_ID_HINT if pa.types.is_floating(value_type) else ""
  raise Rejected(
      Reason.NON_STRING_FIELD,
      f"column {id_field!r} is of type {value_type}, not string or integer"
      f"{hint}")


def read_parquet_records(stream: BinaryIO, source: str,
                         spec: RecordSpec) -> Iterator[Record]:
  """One record per row (see the module docstring)."""
  parquet_file = pq.ParquetFile(stream)
  schema = parquet_file.schema_arrow
  wanted = [spec.id_field, spec.text_field]
  if spec.text_pair_field is not None:
    wanted.append(spec.text_pair_field)
  wanted.extend(field.name for field in spec.carried)
  types = {name: _value_type(_field_type(schema, name)) for name in wanted}
  columns = [name for name in dict.fromkeys(wanted)
             if types[name] is not None]
  present = list(schema.names)
  position = 0
  for row_group in range(parquet_file.num_row_groups):
    # columns=[] still gives batches with a row count: rows of a file
    # without a text column are dead-lettered one by one.
    for batch in parquet_file.iter_batches(
        batch_size=_BATCH_ROWS, row_groups=[row_group], columns=columns):
      cells = {name: _cells(batch, name, types[name]) for name in wanted}
      for offset in range(batch.num_rows):
        row = {name: cells[name][offset] for name in wanted}
        try:
          doc_id = _id_from_cell(row[spec.id_field], spec.id_field,
                                 types[spec.id_field])
          text = _text_from_cell(row[spec.text_field], spec.text_field,
                                 types[spec.text_field], doc_id, spec, present,
                                 spec.text_flag)
          text_pair = None
          if spec.text_pair_field is not None:
            text_pair = _text_from_cell(
                row[spec.text_pair_field], spec.text_pair_field,
                types[spec.text_pair_field], doc_id, spec, present,
                spec.text_pair_flag)
          fields = carried_fields(spec.carried, row.get, doc_id)
        except Rejected as rejected:
          yield rejected.dead_letter(source, position, _snippet_of(row))
        else:
          yield document(source, position, doc_id, text, text_pair, fields)
        position += 1


def _snippet_of(row: dict) -> str:
  """The row's needed cells, as text, without reading more than a snippet."""
  shown = {}
  for name, value in row.items():
    if isinstance(value, bytes):
      value = value[:800].decode(
          "utf-8", errors="backslashreplace")
    shown[name] = value
  return repr(shown)
