"""Guardrails: a run that looks wrong is never published as the new index.

A nightly job whose input lost a field (every record dead-lettered), half its
shards (half the documents gone) or its mount (nothing read) still "runs";
published, such a run would become the index, and the next incremental run
would count everything as removed. So the publish stage checks the run's
counts first, the way BigQuery load jobs (`--max_bad_records`) and
data-quality tools fail a pipeline on thresholds:

- a run that embedded nothing is never published;
- dead-lettered records over `max_bad_records`, or over `max_bad_fraction`
  of the records read (exact repeats of a kept record, `duplicate_record`,
  are embedded once and not counted);
- with a previous run, documents removed over `max_removed_fraction` of the
  previous run's documents (unless `allow_large_removal`: an intended large
  deletion).

A refused run writes `refused.json` (the reasons, the counts and the most
common errors with examples) into its staging directory, which stays for
inspection, and fails with RunRefusedError before manifest.json or the
latest pointer is written. `python -m pipeline.main` then exits with status
3.
"""

import dataclasses
import heapq
from typing import Iterable, List, Mapping, Optional

import apache_beam as beam

from run_directory.records import DeadLetter

DEFAULT_MAX_BAD_FRACTION = 0.1
DEFAULT_MAX_REMOVED_FRACTION = 0.2

# The error summary: reasons shown, and examples of each.
_TOP_REASONS = 10
_EXAMPLES_PER_REASON = 3


class RunRefusedError(RuntimeError):
  """The run's counts broke a guardrail; it was not published."""


@dataclasses.dataclass(frozen=True)
class PublishLimits:
  """When a run may be published (see the module docstring).

  None turns a limit off. previous_documents: the previous run's document
  count, when there is a previous run (the base of the removed fraction).
  """
  max_bad_records: Optional[int] = None
  max_bad_fraction: Optional[float] = DEFAULT_MAX_BAD_FRACTION
  max_removed_fraction: Optional[float] = DEFAULT_MAX_REMOVED_FRACTION
  allow_large_removal: bool = False
  previous_documents: Optional[int] = None

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)


def _bad_record_reasons(counts: Mapping, limits: PublishLimits,
                        what: str, input_flag: str) -> List[str]:
  read, dead_lettered = counts["read"], counts["dead_lettered"]
  reasons = []
  if counts["embedded"] == 0:
    # Which flag to look at is the errors' to say (--text_field, a restrict
    # field, ...): they follow the reasons (top_errors).
    why = (f"check {input_flag}: its files hold no records" if not read else
           "every record was dead-lettered: the most common errors say why")
    reasons.append(
        f"{what}: nothing was embedded ({read} records read, {dead_lettered} "
        f"dead-lettered); {why}")
    # Nothing else to say: no limit lets such a run through.
    return reasons
  # Exact repeats of a kept record are embedded once: not bad records.
  repeated = counts.get("repeated", 0)
  bad = dead_lettered - repeated
  not_counted = f" ({repeated} exact repeats not counted)" if repeated else ""
  if limits.max_bad_records is not None and bad > limits.max_bad_records:
    reasons.append(
        f"{what}: {bad} records were dead-lettered{not_counted}, more than "
        f"--max_bad_records={limits.max_bad_records}; raise it if so many "
        "bad records are expected")
  if (limits.max_bad_fraction is not None and read and
      bad / read > limits.max_bad_fraction):
    reasons.append(
        f"{what}: {bad} of {read} records ({bad / read:.1%}) were "
        f"dead-lettered{not_counted}, more than --max_bad_fraction="
        f"{limits.max_bad_fraction:g}; raise it (e.g. --max_bad_fraction="
        f"{_fraction_above(bad / read)}) if so many bad records are expected")
  return reasons


def _fraction_above(fraction: float) -> str:
  """A round limit just above `fraction`, for a message to suggest."""
  return f"{min(1.0, (int(fraction * 100) + 1) / 100):g}"


def refusal_reasons(counts: Mapping, limits: PublishLimits,
                    id_field: str = "id") -> List[str]:
  """Why a run with these (nested manifest) counts may not be published.

  id_field: the --id_field the corpus was read with, for the removal
  reason to name when documents got derived ids.
  """
  reasons = _bad_record_reasons(counts, limits, "corpus", "--input")
  if "queries" in counts:
    reasons += _bad_record_reasons(counts["queries"], limits,
                                   "--neighbours_of queries",
                                   "--neighbours_of")
  removed, previous = counts.get("removed", 0), limits.previous_documents
  if counts["embedded"] == 0:
    # Every document "removed" is one that was not embedded tonight: the
    # reason above says why; --allow_large_removal would not help.
    return reasons
  if (previous and limits.max_removed_fraction is not None and
      not limits.allow_large_removal and
      removed / previous > limits.max_removed_fraction):
    reasons.append(
        f"{removed} of the previous run's {previous} documents "
        f"({removed / previous:.1%}) are not in this run (gone from the "
        "corpus, or dead-lettered tonight), more than "
        f"--max_removed_fraction={limits.max_removed_fraction:g}: a missing "
        f"input shard?{_derived_ids_hint(counts, id_field)} Pass "
        "--allow_large_removal if the deletion is meant")
  return reasons


def _derived_ids_hint(counts: Mapping, id_field: str) -> str:
  """What the removal reason says when documents got derived ids: an id
  field renamed upstream (or a renamed file) changes every id, and looks
  like a large deletion that --allow_large_removal must not wave through."""
  derived = counts.get("derived_ids", 0)
  if not derived:
    return ""
  return (f" Or changed ids? {derived} of this run's {counts['read']} "
          f"records have no --id_field={id_field} value, so their ids are "
          "derived from their file's name and text, and a renamed id field "
          "or file changes them all: set --id_field to the field that holds "
          "the ids.")


# ---------------------------------------------------------------------------
# The error summary: counts by reason, and the first examples of each.


def _example(dead_letter: DeadLetter) -> tuple:
  # Ordered by place in the input, so the examples do not depend on bundles.
  return (dead_letter.source, dead_letter.position, dead_letter.stage,
          dead_letter.detail, dead_letter.snippet, dead_letter.id or "")


class ErrorSummaryFn(beam.CombineFn):
  """DeadLetters -> [{reason, count, examples}], most frequent reason first."""

  def create_accumulator(self):
    return {}

  def add_input(self, accumulator, dead_letter: DeadLetter):
    count, examples = accumulator.get(dead_letter.reason, (0, []))
    examples = heapq.nsmallest(_EXAMPLES_PER_REASON,
                               examples + [_example(dead_letter)])
    accumulator[dead_letter.reason] = (count + 1, examples)
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[dict]):
    merged = {}
    for accumulator in accumulators:
      for reason, (count, examples) in accumulator.items():
        total, kept = merged.get(reason, (0, []))
        merged[reason] = (total + count, heapq.nsmallest(
            _EXAMPLES_PER_REASON, kept + examples))
    return merged

  def extract_output(self, accumulator) -> list:
    ranked = sorted(accumulator.items(), key=lambda item: (-item[1][0],
                                                           item[0]))
    return [{
        "reason": reason,
        "count": count,
        "examples": [
            dict(zip(("source", "position", "stage", "detail", "snippet",
                      "id"), example)) | {"reason": reason}
            for example in examples
        ],
    } for reason, (count, examples) in ranked[:_TOP_REASONS]]


def describe_refusal(refusal: Mapping) -> str:
  """A refusal as a person reads it: reasons, then the top errors."""
  lines = ["The run was not published:"]
  lines += [f"  - {reason}" for reason in refusal["reasons"]]
  if refusal.get("top_errors"):
    lines.append("Most common errors:")
    for entry in refusal["top_errors"]:
      lines.append(f"  {entry['count']:>8}  {entry['reason']}")
      for example in entry["examples"][:2]:
        lines.append(f"            {example['source']}:{example['position']}: "
                     f"{example['detail']}")
  return "\n".join(lines)
