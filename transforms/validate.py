"""Validate stage: rejects empty documents and repeated ids (and, for the
Vertex AI export, ids that hold a line break).

    Document ──RejectEmptyText──> GroupById ──KeepOnePerId──> Document
                   │                                 │
                   └──────────── DeadLetter ─────────┘

Empty texts are rejected first, so an empty record never wins its id over a
real one. Of the documents sharing an id, the one with the smallest
(source, position) is kept: the choice depends on the data only, not on how
the runner bundled or ordered it, so a rerun keeps the same rows. The others
are dead-lettered as `duplicate_record` when they repeat the kept record
exactly (a line repeated in a text file: its derived id is the same), which
the guardrails do not count as bad, and as `duplicate_id` otherwise.

On the local runner the grouping by id goes through files (`spill_dir`,
transforms/spill.py): memory then holds 1/ID_PARTITIONS of the corpus at a
time instead of all of it.
"""

from typing import Iterable, Iterator, Optional, Tuple

import apache_beam as beam

from run_directory.records import dead_letter_of
from run_directory.records import DeadLetter
from run_directory.records import Document
from run_directory.records import Reason
from transforms.names import CORPUS
from transforms.names import counter
from transforms.names import COUNTERS
from transforms.names import DEAD_LETTERS
from transforms.names import DOCUMENTS
from transforms.progress import PROGRESS
from transforms.spill import GroupByKeyOnDisk

STAGE = "validate"
# Partitions of the grouping by id on disk: 2,000,000 documents are then
# held about 31,000 at a time.
ID_PARTITIONS = 64


def is_empty_text(text: str) -> bool:
  """Whether a text has nothing to embed: "" or only whitespace."""
  return not text or text.isspace()


def _location(document: Document) -> Tuple[str, int]:
  return document.source, document.position


def choose_kept(documents: Iterable[Document]) -> Document:
  """The document an id keeps: the one with the smallest (source, position)."""
  return min(documents, key=_location)


def duplicates_of(kept: Document,
                  documents: Iterable[Document]) -> Iterator[Document]:
  """All of `documents` but (one occurrence of) `kept`.

  Compares by value, not identity: a runner may decode the grouped values
  afresh on each iteration.
  """
  kept_skipped = False
  for document in documents:
    if not kept_skipped and document == kept:
      kept_skipped = True
    else:
      yield document


def _dead_letter(document: Document, reason: str, detail: str) -> DeadLetter:
  return dead_letter_of(document, STAGE, reason, detail)


def empty_text_dead_letter(document: Document) -> DeadLetter:
  return _dead_letter(document, Reason.EMPTY_TEXT,
                      "the text is empty or only whitespace")


def is_repeat_of(document: Document, kept: Document) -> bool:
  """Whether `document` is the same record as `kept`, wherever it is."""
  return (document.id, document.text, document.text_pair, document.fields) == (
      kept.id, kept.text, kept.text_pair, kept.fields)


def duplicate_dead_letter(document: Document, kept: Document) -> DeadLetter:
  if is_repeat_of(document, kept):
    return _dead_letter(
        document, Reason.DUPLICATE_RECORD,
        f"a repeat of the kept record at {kept.source}:{kept.position} (the "
        "same id and text)")
  return _dead_letter(
      document, Reason.DUPLICATE_ID,
      f"id {document.id!r} is already used by the kept record at "
      f"{kept.source}:{kept.position}")


def multiline_id_dead_letter(document: Document) -> DeadLetter:
  return _dead_letter(
      document, Reason.MALFORMED_RECORD,
      "the id holds a line break, which a Vertex AI delete file (one id a "
      "line) cannot list: --vertex_export needs one-line ids")


def has_line_break(document_id: str) -> bool:
  return "\n" in document_id or "\r" in document_id


class _RejectEmptyTextFn(beam.DoFn):

  def __init__(self, one_line_ids: bool, scope: str):
    self._one_line_ids = one_line_ids
    self._dead_lettered = counter(COUNTERS.dead_lettered, scope)

  def process(self, document: Document):
    if is_empty_text(document.text):
      dead_letter = empty_text_dead_letter(document)
    elif self._one_line_ids and has_line_break(document.id):
      dead_letter = multiline_id_dead_letter(document)
    else:
      yield document
      return
    self._dead_lettered.inc()
    PROGRESS.add_skipped()
    yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter)


class _KeepOnePerIdFn(beam.DoFn):

  def __init__(self, scope: str):
    self._dead_lettered = counter(COUNTERS.dead_lettered, scope)
    self._repeated = counter(COUNTERS.repeated, scope)

  def process(self, id_and_documents):
    # Two passes over the group, never a copy of it: Beam's grouped values are
    # re-iterable, and a hot id's group need not fit in memory.
    _, documents = id_and_documents
    kept = choose_kept(documents)
    yield kept
    for duplicate in duplicates_of(kept, documents):
      dead_letter = duplicate_dead_letter(duplicate, kept)
      self._dead_lettered.inc()
      if dead_letter.reason == Reason.DUPLICATE_RECORD:
        self._repeated.inc()
      PROGRESS.add_skipped()
      yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter)


class ValidateDocuments(beam.PTransform):
  """Documents -> {DOCUMENTS: valid, unique ids; DEAD_LETTERS: the rest}.

  spill_dir: group by id through files there (GroupByKeyOnDisk), for the
    local runner; None: Beam's GroupByKey.
  one_line_ids: also reject ids with a line break (--vertex_export).
  scope: the counters' scope (names.CORPUS or names.QUERIES).
  """

  def __init__(self, spill_dir: Optional[str] = None,
               one_line_ids: bool = False, scope: str = CORPUS):
    super().__init__()
    self._spill_dir = spill_dir
    self._one_line_ids = one_line_ids
    self._scope = scope

  def expand(self, documents):
    non_empty = (
        documents
        | "RejectEmptyText" >> beam.ParDo(
            _RejectEmptyTextFn(self._one_line_ids, self._scope)).with_outputs(
                DEAD_LETTERS, main=DOCUMENTS))
    unique = (
        non_empty[DOCUMENTS]
        | "KeyById" >> beam.Map(lambda document: (document.id, document))
        | "GroupById" >> (
            beam.GroupByKey() if self._spill_dir is None
            else GroupByKeyOnDisk(self._spill_dir, ID_PARTITIONS))
        | "KeepOnePerId" >> beam.ParDo(
            _KeepOnePerIdFn(self._scope)).with_outputs(
            DEAD_LETTERS, main=DOCUMENTS))
    dead_letters = ((non_empty[DEAD_LETTERS], unique[DEAD_LETTERS])
                    | "MergeDeadLetters" >> beam.Flatten())
    return {DOCUMENTS: unique[DOCUMENTS], DEAD_LETTERS: dead_letters}
