"""Property-based fuzzing of every reader, with Hypothesis.

For every damaged file of tests/fuzz_inputs.py:

- no exception escapes the reader;
- every record ends in exactly one of documents or dead letters: positions
  run 0, 1, 2, ... without a gap or a repeat, then at most one
  unreadable_file at the position where reading stopped;
- documents hold valid UTF-8 (Beam's coders and every writer need it) and
  no more than --max_record_bytes;
- error rows are valid UTF-8 JSON under a size bound.

Unmutated files must read back exactly as written.

The examples per test come from the Hypothesis profile: "ci" (the default,
bounded for CI) or "soak" (HYPOTHESIS_PROFILE=soak, scripts/fuzz_soak.sh).
"""

import csv
import io

from hypothesis import assume
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pandas as pd

from run_directory.records import Document
from tests.fuzz_inputs import check_records
from tests.fuzz_inputs import COMPRESSORS
from tests.fuzz_inputs import damaged_files
from tests.fuzz_inputs import EXTENSIONS
from tests.fuzz_inputs import line_text
from tests.fuzz_inputs import read_all
from tests.fuzz_inputs import records_of
from tests.fuzz_inputs import SENTENCES
from tests.fuzz_inputs import WRITERS
from transforms import formats
from transforms.formats.fields import RecordSpec
from transforms.formats.files import open_for_reading
from transforms.formats.files import read_file_records


def _fuzz(input_format):

  @settings(suppress_health_check=[HealthCheck.too_slow,
                                   HealthCheck.data_too_large],
            deadline=None)
  @given(damaged_files(input_format))
  def test(file):
    name, data = file
    check_records(read_all(input_format, name, data), name)

  test.__name__ = f"test_damaged_{input_format}_files_lose_nothing"
  return test


test_damaged_text_files_lose_nothing = _fuzz("text")
test_damaged_jsonl_files_lose_nothing = _fuzz("jsonl")
test_damaged_csv_files_lose_nothing = _fuzz("csv")
test_damaged_tsv_files_lose_nothing = _fuzz("tsv")
test_damaged_parquet_files_lose_nothing = _fuzz("parquet")
test_damaged_tfrecord_files_lose_nothing = _fuzz("tfrecord")


# Line formats may come in UTF-16 or UTF-32, with a byte-order mark.
_LINE_FORMATS = ("text", "jsonl", "csv", "tsv")


@settings(deadline=None)
@given(st.sampled_from(sorted(WRITERS)), records_of(
    st.one_of(st.text(max_size=60), st.sampled_from(SENTENCES))),
       st.sampled_from(sorted(COMPRESSORS)),
       st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_valid_files_read_back_as_written(input_format, records, suffix,
                                          encoding):
  if input_format in formats.RANDOM_ACCESS_FORMATS:
    suffix = ""
  name = f"valid{EXTENSIONS[input_format]}{suffix}"
  data = WRITERS[input_format](records)
  if input_format in _LINE_FORMATS and encoding != "utf-8":
    data = data.decode("utf-8").encode(encoding)
  data = COMPRESSORS[suffix](data)
  read = read_all(input_format, name, data)
  check_records(read, name)
  expected_texts = [text for _, text in records]
  if input_format in ("text", "tsv"):
    expected_texts = [line_text(t) for t in expected_texts]
  if input_format == "tsv":
    expected_texts = [t.replace("\t", " ") for t in expected_texts]
  if input_format == "text" and expected_texts:
    # At the start of a file, U+FEFF is a byte-order mark, not text.
    expected_texts[0] = expected_texts[0].removeprefix("\ufeff")
  assert all(isinstance(r, Document) for r in read), read
  assert [r.text for r in read] == expected_texts
  if input_format != "text":
    for record, (doc_id, _) in zip(read, records):
      if doc_id not in (None, ""):
        expected_id = str(doc_id)
        if input_format == "tsv":
          expected_id = line_text(expected_id).replace("\t", " ")
        assert record.id == expected_id


# -- CSV written with another delimiter ----------------------------------------

# Header names and cells with what trips the choice of delimiter: the
# delimiters themselves, quotes, line breaks, a BOM, "sep=", the text
# column's name inside another.
_CSV_PIECES = st.sampled_from(
    list(';\t",\n\r =\ufeff\x00é') + ["text", "id", "sep=", "日本", "\r\n"])
_CSV_STRINGS = st.lists(_CSV_PIECES, max_size=6).map("".join)


@st.composite
def _delimited_exports(draw):
  """(text field, header, rows, file bytes) written by csv or pandas with
  ",", ";" or a tab, perhaps after "sep=X" and blank lines, with the text
  column once; only headers whose delimiter the reader can tell."""
  delimiter = draw(st.sampled_from([",", ";", "\t"]))
  text_field = draw(st.sampled_from(["text", "a;b", 'q"t', "t,x"]))
  others = [name for name in draw(st.lists(_CSV_STRINGS, max_size=3))
            if name not in (text_field, "id")]
  header = draw(st.permutations(
      others + [text_field] + (["id"] if draw(st.booleans()) else [])))
  rows = [[draw(_CSV_STRINGS) for _ in header]
          for _ in range(draw(st.integers(0, 5)))]
  declared = draw(st.booleans())
  if not declared:
    # Commas are tried first, then ";", then a tab (the module docstring):
    # a header that another tried earlier names the text column in is
    # ambiguous.
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter).writerow(header)
    for earlier in [",", ";", "\t"][:[",", ";", "\t"].index(delimiter)]:
      try:
        split = next(csv.reader([out.getvalue()], delimiter=earlier))
      except csv.Error:
        split = []
      assume(text_field not in split)
  # Python 3.11's writer leaves a bare "\r" unquoted under "\n" line ends,
  # which RFC 4180 does not allow.
  has_cr = any("\r" in cell for row in [header] + rows for cell in row)
  line_end = "\r\n" if has_cr else draw(st.sampled_from(["\r\n", "\n"]))
  quoting = draw(st.sampled_from(
      [csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
  if draw(st.booleans()):
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting,
                        lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue()
  else:
    text = pd.DataFrame(rows, columns=range(len(header)), dtype=object).to_csv(
        index=False, header=header, sep=delimiter, quoting=quoting,
        lineterminator=line_end)
  text = draw(st.sampled_from(["", "\n", "\r\n\r\n"])) + text
  if declared:
    text = f"sep={delimiter}{line_end}" + text
  encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
  return text_field, header, rows, text.encode(encoding)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.filter_too_much])
@given(_delimited_exports())
def test_csv_exports_with_any_delimiter_read_as_written(export):
  # Found a ";" header whose comma read ran on over the rows, losing them.
  text_field, header, rows, data = export
  records = list(read_file_records(
      lambda: open_for_reading(lambda: io.BytesIO(data), "export.csv"),
      "export.csv", lambda stream, source: formats.READERS["csv"](
          stream, source, RecordSpec(text_field=text_field))))
  assert all(isinstance(r, Document) for r in records), records
  assert [r.text for r in records] == [
      row[header.index(text_field)] for row in rows]
  if "id" in header:
    for record, row in zip(records, rows):
      if row[header.index("id")]:
        assert record.id == row[header.index("id")]
