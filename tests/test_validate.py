"""Tests of the validate stage: empty texts and repeated ids."""

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pytest

from pipeline.local_runner import LocalRunner
from run_directory.records import DeadLetter
from run_directory.records import Document
from run_directory.records import Reason
from transforms.names import DEAD_LETTERS
from transforms.names import DOCUMENTS
from transforms.names import METRICS_NAMESPACE
from transforms.validate import (ValidateDocuments, choose_kept,
                                 duplicates_of, is_empty_text)


@pytest.mark.parametrize("text, empty", [
    ("", True),
    (" ", True),
    (" \t\r\n", True),
    ("\u3000\u00a0", True),  # ideographic and no-break spaces
    ("a", False),
    ("  padded  ", False),
    ("\u200b", False),  # zero-width space is not whitespace to str.isspace
])
def test_is_empty_text(text, empty):
  assert is_empty_text(text) == empty


def test_choose_kept_takes_the_smallest_source_and_position():
  documents = [
      Document("a", "x", "b.txt", 0),
      Document("a", "x", "a.txt", 10),
      Document("a", "x", "a.txt", 2),
  ]
  for ordering in (documents, documents[::-1]):
    kept = choose_kept(ordering)
    assert kept == Document("a", "x", "a.txt", 2)
    assert sorted(duplicates_of(kept, ordering)) == sorted(
        [documents[0], documents[1]])


def test_duplicates_of_keeps_one_of_two_equal_documents():
  twin = Document("a", "x", "a.txt", 0)
  assert list(duplicates_of(twin, [twin, twin])) == [twin]


# One id of each kind of outcome, listed in an order that favours no one.
_DOCUMENTS = [
    Document("unique", "just one", "s1.txt", 4),
    Document("dup", "third copy", "s2.txt", 0),
    Document("dup", "second copy", "s1.txt", 9),
    Document("dup", "first copy", "s1.txt", 3),
    Document("empty", "", "s1.txt", 0),
    Document("blank", " \t\n", "s1.txt", 1),
    # An empty record never wins its id over a real one.
    Document("shared", "", "s0.txt", 0),
    Document("shared", "the real one", "s9.txt", 7),
    # Exact repeats of the kept record: not the same as another text under
    # its id; carried fields that differ make a record no repeat.
    Document("rep", "the same line", "s3.txt", 2),
    Document("rep", "the same line", "s1.txt", 5),
    Document("rep", "the same line", "s1.txt", 8),
    Document("rep", "the same line", "s4.txt", 0,
             fields=(("restrict", "colour", ("red",)),)),
]

_EXPECTED_DOCUMENTS = [
    Document("unique", "just one", "s1.txt", 4),
    Document("dup", "first copy", "s1.txt", 3),
    Document("shared", "the real one", "s9.txt", 7),
    Document("rep", "the same line", "s1.txt", 5),
]

_EXPECTED_DEAD_LETTERS = [
    DeadLetter("s2.txt", 0, "validate", Reason.DUPLICATE_ID,
               "id 'dup' is already used by the kept record at s1.txt:3",
               "third copy", "dup"),
    DeadLetter("s1.txt", 9, "validate", Reason.DUPLICATE_ID,
               "id 'dup' is already used by the kept record at s1.txt:3",
               "second copy", "dup"),
    DeadLetter("s1.txt", 0, "validate", Reason.EMPTY_TEXT,
               "the text is empty or only whitespace", "", "empty"),
    DeadLetter("s1.txt", 1, "validate", Reason.EMPTY_TEXT,
               "the text is empty or only whitespace", " \t\n", "blank"),
    DeadLetter("s0.txt", 0, "validate", Reason.EMPTY_TEXT,
               "the text is empty or only whitespace", "", "shared"),
    DeadLetter("s3.txt", 2, "validate", Reason.DUPLICATE_RECORD,
               "a repeat of the kept record at s1.txt:5 (the same id and "
               "text)", "the same line", "rep"),
    DeadLetter("s1.txt", 8, "validate", Reason.DUPLICATE_RECORD,
               "a repeat of the kept record at s1.txt:5 (the same id and "
               "text)", "the same line", "rep"),
    DeadLetter("s4.txt", 0, "validate", Reason.DUPLICATE_ID,
               "id 'rep' is already used by the kept record at s1.txt:5",
               "the same line", "rep"),
]


@pytest.mark.parametrize("on_disk", [False, True])
def test_validate_documents(on_disk, tmp_path):
  # On disk: the local runner's grouping by id through files.
  spill_dir = str(tmp_path / "spill") if on_disk else None
  p = test_pipeline.TestPipeline(runner=LocalRunner())
  # The same records in two orders, each spread over several bundles, must
  # give the same result.
  for label, documents in (("Forward", _DOCUMENTS),
                           ("Backward", _DOCUMENTS[::-1])):
    outputs = (
        p
        | f"{label}Create" >> beam.Create(documents)
        | f"{label}Shuffle" >> beam.Reshuffle()
        | f"{label}Validate" >> ValidateDocuments(spill_dir))
    assert_that(
        outputs[DOCUMENTS],
        equal_to(_EXPECTED_DOCUMENTS),
        label=f"{label}Documents")
    assert_that(
        outputs[DEAD_LETTERS],
        equal_to(_EXPECTED_DEAD_LETTERS),
        label=f"{label}DeadLetters")
    # equal_to sees a Document as a plain tuple: check the types as well.
    assert_that(
        outputs[DOCUMENTS] | f"{label}DocumentTypes" >> beam.Map(
            lambda document: type(document).__name__),
        equal_to(["Document"] * len(_EXPECTED_DOCUMENTS)),
        label=f"{label}DocumentsAreDocuments")
    assert_that(
        outputs[DEAD_LETTERS] | f"{label}DeadLetterTypes" >> beam.Map(
            lambda dead_letter: type(dead_letter).__name__),
        equal_to(["DeadLetter"] * len(_EXPECTED_DEAD_LETTERS)),
        label=f"{label}DeadLettersAreDeadLetters")
  result = p.run()
  result.wait_until_finish()

  dead_lettered = result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(
          "dead_lettered"))["counters"]
  assert sum(counter.committed for counter in dead_lettered) == 2 * len(
      _EXPECTED_DEAD_LETTERS)
  repeated = result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(
          "repeated"))["counters"]
  assert sum(counter.committed for counter in repeated) == 2 * 2
