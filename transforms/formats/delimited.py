"""CSV and TSV with a header row; positions count data rows from 0.

CSV follows RFC 4180 as Python's csv module reads it in strict mode: quoted
fields may hold commas, newlines and doubled quotes. A damaged row costs only
itself: when a row fails to parse (bad quoting, an unterminated quote, the
wrong number of cells) after running over several lines, its first line is
rejected and reading starts again at the next line, so a stray quote does
not swallow the rows after it. (One that a later quote closes in a row of
the right width is a valid multi-line field to RFC 4180, and is read as one:
the lines between are in its text. Nothing tells the two apart.) The
delimiter is a comma, unless the header names the text column only when
split on ";" or a tab (Excel's CSV where the decimal mark is a comma, its
"Unicode text", pandas' to_csv(sep=...)): then that one, for the file. A
first line "sep=;" (Excel's declaration) names the delimiter outright.

TSV is IANA's text/tab-separated-values: fields split on tabs, and no quoting
at all; a quote is an ordinary character. Lines end in \n or \r\n; a header
holding a bare \r (a file with CR-only line ends would be one header row,
its records lost unseen) makes the file UNREADABLE_FILE, as CSV's parser
does.

Both: blank lines hold no record and are skipped. A header without the text
column makes every row a MISSING_FIELD dead letter, so that each row is still
accounted for (a header that names a column the record needs twice makes
every row MALFORMED_RECORD); a header without the id column means derived
ids. Lines are
decoded with surrogateescape, so a bad byte lands in its row's cells, and the
row is rejected as INVALID_UTF8 only if it is in a cell the record needs.
"""

import collections
import csv
import re
import sys
from typing import BinaryIO, Iterator, List, Optional, Tuple

from run_directory.records import Document
from run_directory.records import Reason
from transforms.formats.carried import carried_fields
from transforms.formats.fields import ambiguous
from transforms.formats.fields import check_unicode
from transforms.formats.fields import document
from transforms.formats.fields import ENCODING_HINT
from transforms.formats.fields import missing
from transforms.formats.fields import Record
from transforms.formats.fields import RecordSpec
from transforms.formats.fields import Rejected
from transforms.formats.fields import too_large
from transforms.formats.lines import iter_lines
from transforms.formats.lines import Line
from transforms.formats.lines import OversizedLine
from transforms.formats.lines import strip_terminator


def _allow_large_csv_fields():
  # The csv module refuses fields over 128 KiB, and after that error it would
  # resume parsing in the middle of the field. Records are bounded by
  # --max_record_bytes instead. The limit is process-wide; raising it only
  # allows more.
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class _Columns:
  """Where the record's fields are in a header row."""

  def __init__(self, header: List[str], spec: RecordSpec,
               width_hint: str = ""):
    self.header = header
    # Said after a row of the wrong width: what may have caused it.
    self.width_hint = width_hint
    self.text = _index(header, spec.text_field)
    self.id = _index(header, spec.id_field)
    self.pair = (None if spec.text_pair_field is None else
                 _index(header, spec.text_pair_field))
    self.carried = {field.name: _index(header, field.name)
                    for field in spec.carried}
    self.spec = spec
    # Columns the record needs that the header names twice: every row is
    # rejected, since which of the two cells is meant is unknown.
    self.repeated = {name for name in spec.field_names
                     if header.count(name) > 1}


def _index(header: List[str], name: str) -> Optional[int]:
  return header.index(name) if name in header else None


def _required_cell(row: List[str], columns: _Columns, column: Optional[int],
                   field: str, flag: str, doc_id: Optional[str]) -> str:
  """The row's value of a column the record must have, checked as text."""
  if column is None:
    raise missing(field, flag, columns.header, kind="column", doc_id=doc_id)
  return check_unicode(row[column], field, doc_id, ENCODING_HINT)


def _row_document(row: List[str], columns: _Columns, source: str,
                  position: int) -> Document:
  header, spec = columns.header, columns.spec
  if columns.repeated:
    raise ambiguous(columns.repeated, "column")
  if len(row) != len(header):
    raise Rejected(
        Reason.MALFORMED_RECORD,
        f"expected {len(header)} columns (as in the header), found "
        f"{len(row)}{columns.width_hint}")
  doc_id = None
  if columns.id is not None:
    doc_id = check_unicode(row[columns.id], header[columns.id],
                           hint=ENCODING_HINT) or None
  text = _required_cell(row, columns, columns.text, spec.text_field,
                        spec.text_flag, doc_id)
  text_pair = None
  if spec.text_pair_field is not None:
    text_pair = _required_cell(row, columns, columns.pair,
                               spec.text_pair_field, spec.text_pair_flag,
                               doc_id)
  fields = carried_fields(
      spec.carried,
      lambda name: (None if columns.carried[name] is None
                    else row[columns.carried[name]]),
      doc_id)
  return document(source, position, doc_id, text, text_pair, fields)


def _row_record(row: List[str], columns: _Columns, source: str, position: int,
                raw: bytes) -> Record:
  try:
    return _row_document(row, columns, source, position)
  except Rejected as rejected:
    return rejected.dead_letter(source, position, raw)


def _decode(line: bytes) -> str:
  return line.decode("utf-8", errors="surrogateescape")


# -- CSV -----------------------------------------------------------------------


class _RecordTooLarge(Exception):
  """The record being parsed has run past --max_record_bytes."""


class _RecordLines:
  """Physical lines for the csv module, a record at a time, with push-back.

  csv.reader asks for the next line when a quoted field runs past a newline.
  This keeps the lines the current record took, so that a damaged record can
  be taken apart again: its first line is rejected, the others are pushed
  back and read anew.
  """

  def __init__(self, lines: Iterator[Line], max_bytes: int):
    self._lines = lines
    self._max_bytes = max_bytes
    self._pending = collections.deque()
    self.taken: List[Line] = []
    self._taken_bytes = 0

  def start_record(self):
    self.taken, self._taken_bytes = [], 0

  def push_back_all_but_first(self):
    self._pending.extendleft(reversed(self.taken[1:]))

  def push_back_all(self):
    self._pending.extendleft(reversed(self.taken))

  def __iter__(self):
    return self

  def __next__(self) -> str:
    line = self._pending.popleft() if self._pending else next(self._lines)
    self.taken.append(line)
    if isinstance(line, OversizedLine):
      raise _RecordTooLarge()
    self._taken_bytes += len(line)
    if self._taken_bytes > self._max_bytes:
      raise _RecordTooLarge()
    return _decode(line)


def _first_line_bytes(taken: List[Line]) -> bytes:
  first = taken[0]
  return first.head if isinstance(first, OversizedLine) else first


def _first_line_rejected(taken: List[Line], why: str,
                         spec: RecordSpec) -> Rejected:
  if isinstance(taken[0], OversizedLine):
    return too_large(taken[0].size, spec.max_record_bytes, "line")
  if len(taken) == 1:
    return Rejected(Reason.MALFORMED_RECORD, f"bad CSV row: {why}")
  return Rejected(
      Reason.MALFORMED_RECORD,
      f"bad CSV row: {why}, after running over {len(taken)} lines; only its "
      "first line is rejected, and reading goes on at the next one")


def read_csv_records(stream: BinaryIO, source: str,
                     spec: RecordSpec) -> Iterator[Record]:
  """One record per CSV row after the header (see the module docstring)."""
  _allow_large_csv_fields()
  lines = _RecordLines(iter_lines(stream, spec.max_record_bytes),
                       spec.max_record_bytes)
  rows, header, header_error = _read_header(lines, ",")
  declared = _declared_delimiter(lines.taken)
  if declared is not None:
    # The reader takes lines one at a time as it needs them: a new one goes
    # on at the line after the declaration.
    rows, header, header_error = _read_header(lines, declared)
  elif header is None or spec.text_field not in header:
    rows, header, header_error = _header_of_another_delimiter(lines, spec)
  if header is None:
    if header_error is None:
      return
    raise ValueError(header_error)
  columns = _Columns(header, spec)
  position = 0
  while True:
    lines.start_record()
    why = None
    try:
      row = next(rows)
    except StopIteration:
      return
    except _RecordTooLarge:
      why = (f"longer than --max_record_bytes ({spec.max_record_bytes:,} "
             "bytes), an unterminated quote?")
    except csv.Error as error:
      why = str(error)
    else:
      if not row:
        continue  # a blank line
      if len(row) != len(header) and len(lines.taken) > 1:
        why = (f"expected {len(header)} columns (as in the header), found "
               f"{len(row)}")
    taken = lines.taken
    if why is None:
      yield _row_record(row, columns, source, position, b"".join(taken))
    else:
      rejected = _first_line_rejected(taken, why, spec)
      yield rejected.dead_letter(source, position,
                                 strip_terminator(_first_line_bytes(taken)))
      lines.push_back_all_but_first()
    position += 1


# Delimiters tried, in order, when a header read with commas has no text
# column: Excel writes ";" where the decimal mark is a comma (its "CSV" in
# most of Europe), and a tab in its "Unicode text"; pandas and DuckDB write
# either on request. Such files quote like CSV, so the CSV parser reads them.
_OTHER_DELIMITERS = (";", "\t")


# Excel's declaration of a file's delimiter, on a line of its own before the
# header ("sep=;"): Excel reads it, some exporters write it for Excel.
_DELIMITER_DECLARATION = re.compile(r'sep=([^"\w\r\n])\r?\n?')


def _declared_delimiter(taken: List[Line]) -> Optional[str]:
  """The delimiter a first line "sep=X" declares; None without one."""
  if len(taken) != 1 or isinstance(taken[0], OversizedLine):
    return None
  declaration = _DELIMITER_DECLARATION.fullmatch(_decode(taken[0]).lstrip(
      "\ufeff"))
  return declaration and declaration.group(1)


def _read_header(lines: _RecordLines, delimiter: str
                ) -> Tuple[object, Optional[List[str]], Optional[str]]:
  """(a csv reader of `lines` split on `delimiter`, then _csv_header's
  (header, why) as it reads it)."""
  rows = csv.reader(lines, strict=True, delimiter=delimiter)
  return (rows,) + _csv_header(rows, lines)


def _header_of_another_delimiter(lines: _RecordLines, spec: RecordSpec
                                 ) -> Tuple[object, Optional[List[str]],
                                            Optional[str]]:
  """_read_header's result with ";" or tab, if the header read with it names
  the text column; else with commas, as before. Called when the header read
  with commas does not name it, or does not parse at all (a quoted
  "id";"text", as R's write.csv2 and pandas' QUOTE_ALL write).

  Without this, every row of a ";"-separated file would be rejected as
  having no text column, with a hint (set --text_field) that cannot help.
  A header both readings split alike is taken as ";" when only ";" names
  the text column: in a ";" file a column name may well hold a comma (the
  decimal mark where ";" is the separator), while a comma file whose
  header holds ";text" is contrived; a first line "sep=," settles it.

  Each try reads the header anew from its first line (the lines the last
  try took are pushed back): a quote may make the header one line with one
  delimiter and several with another. (Re-splitting only the lines the
  comma read took lost the data rows that read had run on into, after a
  ";" header naming a column 'a,"', and refused a ";" header whose quoted
  name holds a line break.)
  """
  for delimiter in _OTHER_DELIMITERS:
    lines.push_back_all()
    rows, header, why = _read_header(lines, delimiter)
    if header is not None and spec.text_field in header:
      return rows, header, why
  lines.push_back_all()
  return _read_header(lines, ",")


def _csv_header(rows, lines: _RecordLines
                ) -> Tuple[Optional[List[str]], Optional[str]]:
  """(the first non-blank row, None), or (None, why) when it does not parse
  (with commas, another delimiter may read it: _header_of_another_delimiter);
  (None, None) for a file of blank lines."""
  while True:
    lines.start_record()
    try:
      header = next(rows)
    except StopIteration:
      return None, None
    except _RecordTooLarge:
      return None, ("the CSV header is longer than --max_record_bytes: "
                    "not a CSV file?")
    except csv.Error as error:
      return None, f"bad CSV header: {error}"
    if header:
      return header, None


# -- TSV -----------------------------------------------------------------------

# Most tools that write tab-separated files quote a cell holding a tab, a
# quote or a line break as CSV does, which a TSV file cannot: each line of
# such a cell becomes a row of the wrong width. The CSV reader parses their
# quoting, and finds the tabs in the header.
_TSV_WIDTH_HINT = (
    "; TSV is read unquoted, a record a line: a file that quotes cells "
    "holding line breaks or tabs as CSV does (pandas to_csv(sep='\\t'), "
    "Excel's Unicode text) reads with --input_format csv")


def read_tsv_records(stream: BinaryIO, source: str,
                     spec: RecordSpec) -> Iterator[Record]:
  """One record per line after the header; cells split on tabs, unquoted."""
  columns = None
  position = 0
  for line in iter_lines(stream, spec.max_record_bytes):
    if isinstance(line, OversizedLine):
      if columns is None:
        raise ValueError("the TSV header is longer than --max_record_bytes: "
                         "not a TSV file?")
      yield too_large(line.size, spec.max_record_bytes, "line").dead_letter(
          source, position, line.head)
      position += 1
      continue
    line = strip_terminator(line)
    if not line:
      continue  # a blank line
    row = _decode(line).split("\t")
    if columns is None:
      if b"\r" in line:
        # Lines that end in a bare CR (classic Mac) would make the whole
        # file one header row, and its records vanish without a trace.
        raise ValueError(
            "the TSV header holds a carriage return (\\r): lines must end "
            "in \\n or \\r\\n (a file with CR-only line ends, or not a "
            "TSV file?)")
      columns = _Columns(row, spec, _TSV_WIDTH_HINT)
      continue
    yield _row_record(row, columns, source, position, line)
    position += 1
