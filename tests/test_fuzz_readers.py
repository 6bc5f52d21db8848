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

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

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
