"""Read stage: turns the files of a corpus into Documents and dead letters.

    file patterns ──MatchAll──> files ──ReadMatches──> one reader per file
        ──> Document (good record)  |  DeadLetter (bad record or bad file)

Every record of every matched file ends up as exactly one Document or one
DeadLetter; bad input never fails the run. A file that is not the format it
claims becomes one DeadLetter(UNREADABLE_FILE) and keeps the records read
before the damage.

Each file is read whole by one worker, from start to end: positions are record
indexes (a line number, a row number), which only a sequential read can count.
Parallelism comes from having many files; files are spread over workers by the
shuffle that also drops files matched by more than one pattern.

The per-format readers are plain generators over a binary stream
(`read_text_records`, `read_jsonl_records`, ...), testable without Beam. Files
are opened through Beam's filesystem layer, so `gs://` globs and compressed
files (`.gz`, `.bz2`, ... decompressed by their suffix) work for every
line-based format and for TFRecord.
"""

import csv
import functools
import json
import logging
import lzma
import os
import re
import struct
import sys
import zlib
from typing import (BinaryIO, Callable, Iterable, Iterator, List, Optional,
                    Sequence, Union)

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics
import google_crc32c
import pyarrow as pa
import pyarrow.parquet as pq
from tfx_bsl.coders import example_coder

from transforms.records import (DEAD_LETTER, DOCUMENTS, METRICS_NAMESPACE,
                                DeadLetter, Document, Reason,
                                derive_document_id, make_snippet)

_LOGGER = logging.getLogger(__name__)

INPUT_FORMATS = ("text", "jsonl", "csv", "tsv", "parquet", "tfrecord")

_FORMAT_BY_EXTENSION = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
}

# Suffixes Beam's filesystem layer decompresses on the fly (see
# CompressionTypes.detect_compression_type): "a.jsonl.gz" is JSONL.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".xz",
                         ".lzma")

STAGE = "read"

Record = Union[Document, DeadLetter]

# Errors that mean the bytes are not the format the file claims, or the file
# cannot be read at all (gone, no permission, corrupt compression): the file
# becomes one UNREADABLE_FILE dead letter. pyarrow reports corrupt Parquet pages
# as OSError, bz2 a corrupt stream too, hence OSError in this list.
_UNREADABLE_FILE_ERRORS = (ValueError, EOFError, OSError, csv.Error,
                           struct.error, zlib.error, lzma.LZMAError)
# ...except storage errors a retry may cure: they fail the bundle so that the
# runner retries it, instead of dropping a good file. (Beam's GCS client has
# already retried them a few times when they get here.)
_TRANSIENT_ERRORS = (ConnectionError, TimeoutError)

_UTF8_BOM = b"\xef\xbb\xbf"

# Rows per Parquet batch and serialized Examples per TFRecord decode batch:
# large enough that the columnar / C++ decoding dominates, small enough to
# bound memory (a TFRecord batch is also capped by its size in bytes).
_PARQUET_BATCH_ROWS = 1024
_TFRECORD_BATCH_RECORDS = 1024
_TFRECORD_BATCH_BYTES = 16 << 20


def infer_input_format(pattern: str) -> str:
  """The input format named by a file pattern's extension.

  A compression suffix is looked through ("part-*.jsonl.gz" is JSONL).

  Raises:
    ValueError: if the extension names no known format (e.g. "data/*").
  """
  name = re.split(r"[/\\]", pattern)[-1].lower()
  for suffix in _COMPRESSION_SUFFIXES:
    if name.endswith(suffix):
      name = name[:-len(suffix)]
      break
  extension = os.path.splitext(name)[1]
  input_format = _FORMAT_BY_EXTENSION.get(extension)
  if input_format is None:
    raise ValueError(
        f"Cannot infer the input format of {pattern!r} from its extension "
        f"(known: {', '.join(sorted(_FORMAT_BY_EXTENSION))}). Pass "
        f"--input_format, one of: {', '.join(INPUT_FORMATS)}.")
  return input_format


def _resolve_input_format(patterns: Sequence[str],
                          input_format: Optional[str]) -> str:
  """The one format of all patterns: the given one, or the inferred one."""
  if input_format is not None:
    if input_format not in INPUT_FORMATS:
      raise ValueError(
          f"Unknown input format {input_format!r}: --input_format must be one "
          f"of {', '.join(INPUT_FORMATS)}.")
    return input_format
  inferred = {pattern: infer_input_format(pattern) for pattern in patterns}
  if len(set(inferred.values())) > 1:
    raise ValueError(
        f"The input patterns have different formats {inferred}; one run reads "
        f"one format. Pass --input_format to read them all as one format.")
  return next(iter(inferred.values()))


# -- Per-record building blocks ------------------------------------------------


class _Rejected(Exception):
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


def _document(source: str, position: int, doc_id: Optional[str],
              text: str, text_pair: Optional[str] = None) -> Document:
  """A Document; an input without an id gets the derived, stable one.

  text_pair: the second text of a pair input (--text_pair_field), else None.
  """
  if doc_id is None:
    doc_id = derive_document_id(source, text, text_pair)
  return Document(id=doc_id, text=text, source=source, position=position,
                  text_pair=text_pair)


def _check_unicode(value: str, field: str,
                   doc_id: Optional[str] = None) -> str:
  """`value`, if it is valid Unicode text (encodable as UTF-8).

  Strings decoded with surrogateescape (CSV) or parsed from JSON "\\ud800"
  escapes can hold lone surrogates, which every later stage (hashing,
  tokenizing, writing) would choke on.
  """
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as error:
    raise _Rejected(Reason.INVALID_UTF8,
                    f"field {field!r} is not valid UTF-8: {error}",
                    doc_id) from None
  return value


def _decode_utf8(raw: bytes, what: str, doc_id: Optional[str] = None) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as error:
    raise _Rejected(Reason.INVALID_UTF8, f"{what} is not valid UTF-8: {error}",
                    doc_id) from None


def _id_from_int(value: int) -> str:
  return str(value)


# -- Line-based formats ----------------------------------------------------------


def _iter_raw_lines(stream: BinaryIO) -> Iterator[bytes]:
  """The stream's lines, terminators included, without a leading UTF-8 BOM.

  readline() streams: only one line is in memory at a time.
  """
  line = stream.readline()
  if line.startswith(_UTF8_BOM):
    line = line[len(_UTF8_BOM):]
  while line:
    yield line
    line = stream.readline()


def _strip_terminator(line: bytes) -> bytes:
  """The line without its "\\n" or "\\r\\n"; other whitespace is content."""
  if line.endswith(b"\n"):
    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
  return line


def read_text_records(stream: BinaryIO, source: str, **unused_fields
                     ) -> Iterator[Record]:
  """One Document per line, empty lines included (validation rejects them)."""
  for position, raw_line in enumerate(_iter_raw_lines(stream)):
    line = _strip_terminator(raw_line)
    try:
      text = _decode_utf8(line, "line")
    except _Rejected as rejected:
      yield rejected.dead_letter(source, position, line)
    else:
      yield _document(source, position, None, text)


def _jsonl_document(line: bytes, source: str, position: int, id_field: str,
                    text_field: str,
                    text_pair_field: Optional[str] = None) -> Document:
  try:
    record = json.loads(_decode_utf8(line, "line"))
  except json.JSONDecodeError as error:
    raise _Rejected(Reason.MALFORMED_RECORD, f"invalid JSON: {error}") from None
  if not isinstance(record, dict):
    raise _Rejected(Reason.MALFORMED_RECORD,
                    f"expected a JSON object, got {type(record).__name__}")
  doc_id = _id_from_json(record.get(id_field), id_field)
  text = _json_text(record, text_field, "--text_field", doc_id)
  text_pair = None
  if text_pair_field is not None:
    text_pair = _json_text(record, text_pair_field, "--text_pair_field",
                           doc_id)
  return _document(source, position, doc_id, text, text_pair)


def _json_text(record: dict, field: str, flag: str,
               doc_id: Optional[str]) -> str:
  text = record.get(field)
  if text is None:
    raise _Rejected(
        Reason.MISSING_FIELD,
        f"no {field!r} field (fields: {', '.join(sorted(record))}); "
        f"set {flag}", doc_id)
  if not isinstance(text, str):
    raise _Rejected(
        Reason.NON_STRING_FIELD,
        f"field {field!r} is a {type(text).__name__}, not a string",
        doc_id)
  return _check_unicode(text, field, doc_id)


def _id_from_json(value, id_field: str) -> Optional[str]:
  """The record's own id, or None (absent, null or "") for a derived one."""
  if value is None or value == "":
    return None
  if isinstance(value, str):
    return _check_unicode(value, id_field)
  # bool is an int subclass, but `true` is no id.
  if isinstance(value, int) and not isinstance(value, bool):
    return _id_from_int(value)
  raise _Rejected(
      Reason.NON_STRING_FIELD,
      f"field {id_field!r} is a {type(value).__name__}, not a string or "
      f"integer")


def read_jsonl_records(stream: BinaryIO, source: str, id_field: str,
                       text_field: str, text_pair_field: Optional[str] = None
                      ) -> Iterator[Record]:
  """One record per line; every line (blank ones too) must be a JSON object."""
  for position, raw_line in enumerate(_iter_raw_lines(stream)):
    line = _strip_terminator(raw_line)
    try:
      document = _jsonl_document(line, source, position, id_field, text_field,
                                 text_pair_field)
    except _Rejected as rejected:
      yield rejected.dead_letter(source, position, line)
    else:
      yield document


class _DecodedLines:
  """Iterates a stream's lines as str for the csv module, keeping the last one.

  Lines are decoded with surrogateescape so that a bad byte never stops the
  csv parser mid-file: it lands in its row's cells as a lone surrogate, and the
  row (only that row) is then rejected as INVALID_UTF8. Splitting on b"\\n"
  first is safe: no multi-byte UTF-8 sequence contains that byte.
  """

  def __init__(self, stream: BinaryIO):
    self._lines = _iter_raw_lines(stream)
    self.last = ""

  def __iter__(self):
    return self

  def __next__(self) -> str:
    self.last = next(self._lines).decode("utf-8", errors="surrogateescape")
    return self.last


def _allow_large_csv_fields():
  # The csv module refuses fields over 128 KiB, and after that error it would
  # resume parsing in the middle of the field. Documents can be larger. The
  # limit is process-wide; raising it only allows more.
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_delimited_records(stream: BinaryIO, source: str, id_field: str,
                           text_field: str,
                           delimiter: str = ",",
                           text_pair_field: Optional[str] = None
                          ) -> Iterator[Record]:
  """CSV (or TSV) with a header row; positions count data rows from 0.

  Quoting follows the csv module's default dialect in strict mode, for TSV as
  for CSV: quoted fields may hold delimiters and newlines, and a badly quoted
  row (or an unterminated quote at the end) is rejected instead of silently
  swallowing the rows after it. Blank lines are skipped, as csv.DictReader
  does; they hold no record. A header without the text column makes every row
  a MISSING_FIELD dead letter, so that each row is still accounted for; a
  header without the id column means derived ids.
  """
  _allow_large_csv_fields()
  dialect_name = "TSV" if delimiter == "\t" else "CSV"
  lines = _DecodedLines(stream)
  rows = csv.reader(lines, delimiter=delimiter, strict=True)
  header = next(rows, None)  # csv.Error here: the whole file is unreadable.
  if header is None:
    return
  text_column = _column_index(header, text_field)
  id_column = _column_index(header, id_field)
  pair_column = (None if text_pair_field is None else
                 _column_index(header, text_pair_field))
  position = 0
  while True:
    try:
      row = next(rows)
    except StopIteration:
      return
    except csv.Error as error:
      # The snippet goes back to bytes: a lone surrogate is no printable text.
      raw = lines.last.encode("utf-8", errors="surrogateescape")
      yield _Rejected(Reason.MALFORMED_RECORD,
                      f"bad {dialect_name} row: {error}").dead_letter(
                          source, position, raw)
      position += 1
      continue
    if not row:
      continue
    try:
      document = _delimited_document(row, header, text_column, id_column,
                                     source, position, text_field,
                                     text_pair_field, pair_column)
    except _Rejected as rejected:
      raw = delimiter.join(row).encode("utf-8", errors="surrogateescape")
      yield rejected.dead_letter(source, position, raw)
    else:
      yield document
    position += 1


def _column_index(header: List[str], name: str) -> Optional[int]:
  return header.index(name) if name in header else None


def _delimited_document(row: List[str], header: List[str],
                        text_column: Optional[int], id_column: Optional[int],
                        source: str, position: int,
                        text_field: str,
                        text_pair_field: Optional[str] = None,
                        pair_column: Optional[int] = None) -> Document:
  if len(row) != len(header):
    raise _Rejected(
        Reason.MALFORMED_RECORD,
        f"expected {len(header)} columns (as in the header), found {len(row)}")
  doc_id = None
  if id_column is not None:
    doc_id = _check_unicode(row[id_column], header[id_column]) or None
  text = _required_cell(row, header, text_column, text_field, "--text_field",
                        doc_id)
  text_pair = None
  if text_pair_field is not None:
    text_pair = _required_cell(row, header, pair_column, text_pair_field,
                               "--text_pair_field", doc_id)
  return _document(source, position, doc_id, text, text_pair)


def _required_cell(row: List[str], header: List[str], column: Optional[int],
                   field: str, flag: str, doc_id: Optional[str]) -> str:
  """The row's value of a column the record must have, checked as text."""
  if column is None:
    raise _Rejected(
        Reason.MISSING_FIELD,
        f"no {field!r} column in the header ({', '.join(header)}); set {flag}",
        doc_id)
  return _check_unicode(row[column], field, doc_id)


# -- Parquet ---------------------------------------------------------------------


def _is_string_type(arrow_type: pa.DataType) -> bool:
  return (pa.types.is_string(arrow_type) or
          pa.types.is_large_string(arrow_type) or
          pa.types.is_string_view(arrow_type))


def read_parquet_records(stream: BinaryIO, source: str, id_field: str,
                         text_field: str, text_pair_field: Optional[str] = None
                        ) -> Iterator[Record]:
  """One record per row, read column-wise: only the id and text columns.

  The text column must be a string column: a missing column or a null cell is
  MISSING_FIELD, any other type NON_STRING_FIELD, row by row. The id column is
  optional, string or integer; a null or empty id means a derived one. A
  --text_pair_field column follows the text column's rules.
  """
  parquet_file = pq.ParquetFile(stream)
  schema = parquet_file.schema_arrow
  text_type = _field_type(schema, text_field)
  id_type = _field_type(schema, id_field)
  fields = [(id_field, id_type), (text_field, text_type)]
  pair_type = None
  if text_pair_field is not None:
    pair_type = _field_type(schema, text_pair_field)
    fields.append((text_pair_field, pair_type))
  columns = [name for name, arrow_type in fields if arrow_type is not None]
  position = 0
  for batch in _iter_parquet_batches(parquet_file, columns):
    texts = _column_values(batch, text_field, text_type)
    ids = _column_values(batch, id_field, id_type)
    pairs = (_column_values(batch, text_pair_field, pair_type)
             if text_pair_field is not None else [None] * batch.num_rows)
    for id_value, text_value, pair_value in zip(ids, texts, pairs):
      try:
        document = _parquet_document(source, position, id_value, text_value,
                                     id_field, text_field, id_type, text_type)
        if text_pair_field is not None:
          own_id = _id_from_cell(id_value, id_field, id_type)
          document = _with_pair(document, own_id, _text_from_cell(
              pair_value, text_pair_field, pair_type, own_id,
              "--text_pair_field"))
      except _Rejected as rejected:
        raw = {id_field: id_value, text_field: text_value}
        if text_pair_field is not None:
          raw[text_pair_field] = pair_value
        yield rejected.dead_letter(source, position, raw)
      else:
        yield document
      position += 1


def _with_pair(document: Document, own_id: Optional[str],
               text_pair: str) -> Document:
  """`document` with its second text; without an id of its own (`own_id`
  None) the id is derived from both texts."""
  return _document(document.source, document.position, own_id, document.text,
                   text_pair)


def _iter_parquet_batches(parquet_file: pq.ParquetFile,
                          columns: List[str]) -> Iterator[pa.RecordBatch]:
  """The file's rows in batches, one row group at a time.

  Batches never span row groups, so a damaged row group loses only itself
  and what follows it, and memory holds one row group's columns at most.
  columns=[] still gives batches with a row count: rows of a file without a
  text column are dead-lettered one by one.
  """
  for row_group in range(parquet_file.num_row_groups):
    yield from parquet_file.iter_batches(
        batch_size=_PARQUET_BATCH_ROWS, row_groups=[row_group], columns=columns)


def _parquet_document(source: str, position: int, id_value, text_value,
                      id_field: str, text_field: str,
                      id_type: Optional[pa.DataType],
                      text_type: Optional[pa.DataType]) -> Document:
  doc_id = _id_from_cell(id_value, id_field, id_type)
  text = _text_from_cell(text_value, text_field, text_type, doc_id)
  return _document(source, position, doc_id, text)


def _field_type(schema: pa.Schema, name: str) -> Optional[pa.DataType]:
  index = schema.get_field_index(name)
  return None if index < 0 else schema.field(index).type


def _column_values(batch: pa.RecordBatch, name: str,
                   arrow_type: Optional[pa.DataType]) -> list:
  if arrow_type is None:
    return [None] * batch.num_rows
  return batch.column(name).to_pylist()


def _text_from_cell(value, text_field: str, arrow_type: Optional[pa.DataType],
                    doc_id: Optional[str], flag: str = "--text_field") -> str:
  if arrow_type is None:
    raise _Rejected(Reason.MISSING_FIELD,
                    f"no {text_field!r} column; set {flag}", doc_id)
  if value is None:
    raise _Rejected(Reason.MISSING_FIELD, f"{text_field!r} is null", doc_id)
  if not _is_string_type(arrow_type):
    raise _Rejected(
        Reason.NON_STRING_FIELD,
        f"column {text_field!r} is of type {arrow_type}, not string", doc_id)
  return value


def _id_from_cell(value, id_field: str,
                  arrow_type: Optional[pa.DataType]) -> Optional[str]:
  if value is None or value == "":
    return None
  if _is_string_type(arrow_type):
    return value
  if pa.types.is_integer(arrow_type):
    return _id_from_int(value)
  raise _Rejected(
      Reason.NON_STRING_FIELD,
      f"column {id_field!r} is of type {arrow_type}, not string or integer")


# -- TFRecord of tf.train.Example ---------------------------------------------
#
# Why not tfx_bsl's TFExampleRecord TFXIO: it reads through Beam's
# ReadFromTFRecord, whose records carry no index within their file, and it
# fails the whole read on a corrupt file. Here each file is framed by a small
# reader over Beam's filesystem (positions, corrupt framing → one dead letter,
# records before it kept), and the Examples are decoded by tfx-bsl's C++
# ExamplesToRecordBatchDecoder a batch at a time, into Arrow columns.

_TFRECORD_HEADER = struct.Struct("<QI")  # length, masked crc32c of the length
_TFRECORD_FOOTER = struct.Struct("<I")  # masked crc32c of the data


def _masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
  chunks = []
  while size > 0:
    chunk = stream.read(size)
    if not chunk:
      break
    chunks.append(chunk)
    size -= len(chunk)
  return b"".join(chunks)


def iter_tfrecord_frames(stream: BinaryIO) -> Iterator[bytes]:
  """The payloads of a TFRecord stream, CRCs checked.

  Raises:
    ValueError: at the first frame that is truncated or fails its CRC. The
      length's CRC is checked before the payload is read, so a garbage length
      never makes us allocate gigabytes.
  """
  hint = ("not a TFRecord file? (a compressed one must carry its suffix, "
          "e.g. .tfrecord.gz)")
  while True:
    header = _read_exactly(stream, _TFRECORD_HEADER.size)
    if not header:
      return
    if len(header) < _TFRECORD_HEADER.size:
      raise ValueError(f"truncated TFRecord header; {hint}")
    length, length_crc = _TFRECORD_HEADER.unpack(header)
    if _masked_crc32c(header[:8]) != length_crc:
      raise ValueError(f"TFRecord length fails its CRC; {hint}")
    payload = _read_exactly(stream, length + _TFRECORD_FOOTER.size)
    if len(payload) < length + _TFRECORD_FOOTER.size:
      raise ValueError("truncated TFRecord data")
    data = payload[:length]
    (data_crc,) = _TFRECORD_FOOTER.unpack(payload[length:])
    if _masked_crc32c(data) != data_crc:
      raise ValueError("TFRecord data fails its CRC")
    yield data


def _batches_then_error(frames: Iterator[bytes]) -> Iterator[List[bytes]]:
  """Batches of frames; a read error is raised only after the batch before it.

  So the records read before a corrupt frame are kept.
  """
  batch, batch_bytes = [], 0
  while True:
    try:
      frame = next(frames, None)
    except _UNREADABLE_FILE_ERRORS as error:
      if batch:
        yield batch
      raise error
    if frame is None:
      break
    batch.append(frame)
    batch_bytes += len(frame)
    if (len(batch) >= _TFRECORD_BATCH_RECORDS or
        batch_bytes >= _TFRECORD_BATCH_BYTES):
      yield batch
      batch, batch_bytes = [], 0
  if batch:
    yield batch


def read_tfrecord_records(stream: BinaryIO, source: str, id_field: str,
                          text_field: str,
                          text_pair_field: Optional[str] = None
                         ) -> Iterator[Record]:
  """One record per serialized tf.train.Example; positions are record indexes.

  The text feature must hold exactly one bytes value (UTF-8): absent or empty
  is MISSING_FIELD; an int64/float feature, or several values, is
  NON_STRING_FIELD (a list of strings is not a string, as for a JSON array).
  The id feature is optional: one bytes or int64 value.
  """
  decoder = example_coder.ExamplesToRecordBatchDecoder()
  position = 0
  for batch in _batches_then_error(iter_tfrecord_frames(stream)):
    yield from _decode_examples(decoder, batch, source, position, id_field,
                                text_field, text_pair_field)
    position += len(batch)


def _decode_examples(decoder, serialized: List[bytes], source: str,
                     first_position: int, id_field: str,
                     text_field: str,
                     text_pair_field: Optional[str] = None
                    ) -> Iterator[Record]:
  try:
    record_batch = decoder.DecodeBatch(serialized)
  except RuntimeError:
    # One unparsable proto, or a feature whose kind differs between Examples,
    # fails the whole batch: decode one by one so that only bad ones are lost.
    for offset, example in enumerate(serialized):
      yield from _decode_example(decoder, example, source,
                                 first_position + offset, id_field, text_field,
                                 text_pair_field)
    return
  yield from _examples_from_batch(record_batch, serialized, source,
                                  first_position, id_field, text_field,
                                  text_pair_field)


def _decode_example(decoder, example: bytes, source: str, position: int,
                    id_field: str, text_field: str,
                    text_pair_field: Optional[str] = None
                   ) -> Iterator[Record]:
  try:
    record_batch = decoder.DecodeBatch([example])
  except RuntimeError as error:
    yield _Rejected(Reason.MALFORMED_RECORD,
                    f"not a tf.train.Example: {error}").dead_letter(
                        source, position, example)
    return
  yield from _examples_from_batch(record_batch, [example], source, position,
                                  id_field, text_field, text_pair_field)


def _examples_from_batch(record_batch: pa.RecordBatch,
                         serialized: List[bytes], source: str,
                         first_position: int, id_field: str,
                         text_field: str,
                         text_pair_field: Optional[str] = None
                        ) -> Iterator[Record]:
  schema = record_batch.schema
  text_type = _feature_value_type(schema, text_field)
  id_type = _feature_value_type(schema, id_field)
  texts = _column_values(record_batch, text_field, text_type)
  ids = _column_values(record_batch, id_field, id_type)
  pair_type = pairs = None
  if text_pair_field is not None:
    pair_type = _feature_value_type(schema, text_pair_field)
    pairs = _column_values(record_batch, text_pair_field, pair_type)
  for offset, (id_values, text_values) in enumerate(zip(ids, texts)):
    position = first_position + offset
    try:
      document = _example_document(source, position, id_values, text_values,
                                   id_field, text_field, id_type, text_type)
      if text_pair_field is not None:
        own_id = _id_from_feature(id_values, id_field, id_type)
        document = _with_pair(document, own_id, _text_from_feature(
            pairs[offset], text_pair_field, pair_type, own_id,
            "--text_pair_field"))
    except _Rejected as rejected:
      yield rejected.dead_letter(source, position, serialized[offset])
    else:
      yield document


def _example_document(source: str, position: int, id_values: Optional[list],
                      text_values: Optional[list], id_field: str,
                      text_field: str, id_type: Optional[pa.DataType],
                      text_type: Optional[pa.DataType]) -> Document:
  doc_id = _id_from_feature(id_values, id_field, id_type)
  text = _text_from_feature(text_values, text_field, text_type, doc_id)
  return _document(source, position, doc_id, text)


def _feature_value_type(schema: pa.Schema,
                        name: str) -> Optional[pa.DataType]:
  """The value type of a decoded feature (binary, int64, float), or None.

  A feature that no Example of the batch sets decodes as an all-null column.
  """
  arrow_type = _field_type(schema, name)
  if arrow_type is None or pa.types.is_null(arrow_type):
    return None
  return arrow_type.value_type


def _is_bytes_type(value_type: pa.DataType) -> bool:
  return pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type)


def _text_from_feature(values: Optional[list], text_field: str,
                       value_type: Optional[pa.DataType],
                       doc_id: Optional[str],
                       flag: str = "--text_field") -> str:
  if not values:
    raise _Rejected(Reason.MISSING_FIELD,
                    f"no {text_field!r} feature; set {flag}", doc_id)
  if not _is_bytes_type(value_type):
    raise _Rejected(
        Reason.NON_STRING_FIELD,
        f"feature {text_field!r} holds {value_type} values, not bytes", doc_id)
  if len(values) != 1:
    raise _Rejected(
        Reason.NON_STRING_FIELD,
        f"feature {text_field!r} holds {len(values)} values, not one string",
        doc_id)
  return _decode_utf8(values[0], f"feature {text_field!r}", doc_id)


def _id_from_feature(values: Optional[list], id_field: str,
                     value_type: Optional[pa.DataType]) -> Optional[str]:
  if not values:
    return None
  if len(values) == 1:
    if pa.types.is_integer(value_type):
      return _id_from_int(values[0])
    if _is_bytes_type(value_type):
      return _decode_utf8(values[0], f"feature {id_field!r}") or None
  raise _Rejected(
      Reason.NON_STRING_FIELD,
      f"feature {id_field!r} holds {len(values)} {value_type} values, not one "
      f"string or integer")


# -- Files to records ------------------------------------------------------------

_READERS = {
    "text": read_text_records,
    "jsonl": read_jsonl_records,
    "csv": functools.partial(read_delimited_records, delimiter=","),
    "tsv": functools.partial(read_delimited_records, delimiter="\t"),
    "parquet": read_parquet_records,
    "tfrecord": read_tfrecord_records,
}


def read_file_records(open_file: Callable[[], BinaryIO], source: str,
                      read_records: Callable[..., Iterable[Record]]
                     ) -> Iterator[Record]:
  """The records of one file, then a dead letter if the file breaks its format.

  A file that cannot be read on (not the format it claims, corrupt, gone) ends
  in one UNREADABLE_FILE dead letter, after the records read before the damage.
  Its position is that of the first record not read: one past the last record,
  or -1 when nothing could be read from the file at all.
  """
  next_position = -1
  try:
    with open_file() as stream:
      for record in read_records(stream, source):
        next_position = record.position + 1
        yield record
  except _TRANSIENT_ERRORS:
    raise
  except _UNREADABLE_FILE_ERRORS as error:
    _LOGGER.warning("Unreadable file %s at record %d: %s", source,
                    next_position, error)
    yield DeadLetter(
        source=source,
        position=next_position,
        stage=STAGE,
        reason=Reason.UNREADABLE_FILE,
        detail=f"{type(error).__name__}: {error}",
        snippet="")


class _ReadFileFn(beam.DoFn):
  """Reads one matched file; bad records go to the DEAD_LETTER output."""

  def __init__(self, input_format: str, id_field: str, text_field: str,
               text_pair_field: Optional[str] = None):
    fields = dict(id_field=id_field, text_field=text_field)
    if text_pair_field is not None:
      fields["text_pair_field"] = text_pair_field
    self._read_records = functools.partial(_READERS[input_format], **fields)
    # Parquet needs random access to its footer; its pages carry their own
    # compression.
    self._compression = (CompressionTypes.UNCOMPRESSED
                         if input_format == "parquet" else
                         CompressionTypes.AUTO)
    self._documents_read = Metrics.counter(METRICS_NAMESPACE, "documents_read")
    self._dead_lettered = Metrics.counter(METRICS_NAMESPACE, "dead_lettered")

  def process(self, readable_file: fileio.ReadableFile):
    open_file = functools.partial(
        readable_file.open,
        mime_type="application/octet-stream",
        compression_type=self._compression)
    for record in read_file_records(open_file, readable_file.metadata.path,
                                    self._read_records):
      if isinstance(record, DeadLetter):
        self._dead_lettered.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
      else:
        self._documents_read.inc()
        yield record


class _DistinctFiles(beam.PTransform):
  """One FileMetadata per path, however many patterns matched it.

  Overlapping patterns would otherwise read a file twice and dead-letter all
  its records as duplicate ids. The shuffle also spreads the files over
  workers (the Create above is a single bundle).
  """

  def expand(self, files):
    return (files
            | "KeyByPath" >> beam.Map(lambda metadata: (metadata.path, metadata))
            | "GroupByPath" >> beam.GroupByKey()
            | "FirstOfEach" >> beam.Map(lambda path_files: next(
                iter(path_files[1]))))


class ReadCorpus(beam.PTransform):
  """Reads a corpus into {DOCUMENTS: Document, DEAD_LETTER: DeadLetter}.

  Args:
    file_pattern: a local path or glob, a gs:// glob, or a list of them. A glob
      that matches nothing reads nothing; a plain path that does not exist
      fails the run.
    input_format: one of INPUT_FORMATS; None infers it from the patterns'
      extension (ValueError if it cannot, raised here, at construction).
    id_field: the id field / column / feature; absent means derived ids.
    text_field: the text field / column / feature (not used for "text").
    text_pair_field: for pair tasks, the field / column / feature of the
      second text (segment B); a record without it is a MISSING_FIELD dead
      letter. Not for "text" input (ValueError).
  """

  def __init__(self,
               file_pattern: Union[str, Sequence[str]],
               input_format: Optional[str] = None,
               id_field: str = "id",
               text_field: str = "text",
               text_pair_field: Optional[str] = None):
    super().__init__()
    patterns = ([file_pattern]
                if isinstance(file_pattern, str) else list(file_pattern))
    if not patterns:
      raise ValueError("No input file pattern given.")
    self._patterns = patterns
    self._input_format = _resolve_input_format(patterns, input_format)
    self._id_field = id_field
    self._text_field = text_field
    if text_pair_field is not None and self._input_format == "text":
      raise ValueError(
          "Text files hold one text per line; pair input (--text_pair_field) "
          "needs jsonl, csv, tsv, parquet or tfrecord.")
    self._text_pair_field = text_pair_field

  @property
  def input_format(self) -> str:
    return self._input_format

  def expand(self, pbegin):
    read = (
        pbegin
        | "FilePatterns" >> beam.Create(self._patterns)
        | "MatchFiles" >> fileio.MatchAll(
            fileio.EmptyMatchTreatment.ALLOW_IF_WILDCARD)
        # A 0-byte file holds no records (and would be an invalid Parquet file).
        | "SkipEmptyFiles" >> beam.Filter(
            lambda metadata: metadata.size_in_bytes > 0)
        | "DropRepeatedFiles" >> _DistinctFiles()
        | "OpenFiles" >> fileio.ReadMatches()
        | "ReadRecords" >> beam.ParDo(
            _ReadFileFn(self._input_format, self._id_field,
                        self._text_field,
                        self._text_pair_field)).with_outputs(
                            DEAD_LETTER, main=DOCUMENTS))
    return {DOCUMENTS: read[DOCUMENTS], DEAD_LETTER: read[DEAD_LETTER]}
