"""The run report: report.html, one self-contained page per run.

    embeddings, neighbour rows, duplicate rows ──SummarizeForReport──>
        {section: PCollection of one small summary}  ──> PublishRun
                                     (renders the page before manifest.json)

The page (page.py) shows the counts, throughput and stage times, the error
reasons with examples, a histogram of token lengths (or of chunks per
document) with the truncation line, the neighbour scores, the duplicate
groups, a similarity heatmap of a sample and a few documents with their top
neighbours. Its pictures are inline SVG (charts.py, no plotting library:
nothing to import at start-up, nothing to fetch); every text of the corpus
is escaped.

Everything the page needs reaches the publish stage as side inputs of a
fixed size (summaries.py), whatever the size of the run.
"""

import dataclasses
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from transforms.names import COUNTERS
from transforms.names import QUERIES
from transforms.report.page import fallback_page
from transforms.report.page import render_report
from transforms.report.summaries import DuplicateSummaryFn
from transforms.report.summaries import EmbeddingSummaryFn
from transforms.report.summaries import NeighbourSummaryFn
from transforms.report.summaries import snippet

__all__ = ["ReportSettings", "SummarizeForReport", "draw_report",
           "render_report", "stage_times", "EMBEDDINGS", "NEIGHBOURS",
           "DUPLICATES", "TEXTS"]

_LOG = logging.getLogger(__name__)

# Sections of the report's side inputs.
EMBEDDINGS = "embeddings"
NEIGHBOURS = "neighbours"
DUPLICATES = "duplicates"
TEXTS = "texts"  # {role: {id: text}} of the ids the examples show

# Whose texts the examples show: the queries of the neighbour examples,
# their neighbours (in the corpus), the members of the largest duplicate
# groups (documents).
QUERY_ROLE, CORPUS_ROLE, DOCUMENT_ROLE = "queries", "corpus", "documents"


@dataclasses.dataclass(frozen=True)
class ReportSettings:
  """What the report summarises.

  limit: --max_seq_length, or --max_chunks when chunked (the truncation
    line of the length histogram).
  include_text: whether the run keeps texts (not with --no_text): without,
    the report shows ids only.
  """
  limit: int
  chunked: bool = False
  include_text: bool = True
  heatmap_documents: int = 24
  shown_queries: int = 5
  shown_neighbours: int = 5
  shown_groups: int = 5


# The manifest counts whose records mark a stage's output, and its label.
_COUNTED_STAGES = (
    (COUNTERS.read, "read"), (COUNTERS.inferred, "embed"),
    (COUNTERS.reused, "carry over"),
    (QUERIES + COUNTERS.read, "read queries"),
    (QUERIES + COUNTERS.inferred, "embed queries"))


def stage_times(started_at: float, now: float, count_spans: Mapping[str, dict],
                written: Mapping[str, List[float]],
                sections: Mapping[str, dict]
                ) -> List[Tuple[str, Optional[float], Optional[float]]]:
  """(stage, first, last) in seconds since `started_at`, for the report.

  count_spans: count name -> CountWithSpanFn's output; written: table -> the
  times its files were finished; sections: the report's summaries (the
  neighbour and duplicate rows' spans). Stages that made nothing are left
  out.
  """
  rows = []

  def add(label, first, last):
    rows.append((label, first - started_at, last - started_at))

  for count, label in _COUNTED_STAGES:
    span = count_spans.get(count)
    if span and span["count"]:
      add(label, span["first"], span["last"])
  for section in (NEIGHBOURS, DUPLICATES):
    summary = sections.get(section)
    if summary and summary["rows"]:
      add(section, summary["first"], summary["last"])
  for table, times in sorted(written.items()):
    if times:
      add(f"write {table}", min(times), max(times))
  add("publish", now, now)
  return rows


def draw_report(manifest: Mapping, sections: Mapping[str, dict],
                top_errors: Sequence[Mapping], started_at: float, now: float,
                count_spans: Mapping[str, dict],
                written: Mapping[str, List[float]],
                refusal: Optional[Sequence[str]] = None) -> str:
  """The page of a run (see stage_times and page.render_report for the
  arguments), or, if drawing it fails, a short page that says so.

  The report describes the run; a bug in drawing it must not cost a night's
  embeddings. The error is logged, and the short page names it.
  """
  try:
    stages = stage_times(started_at, now, count_spans, written, sections)
    return render_report(manifest, sections, top_errors, stages, now,
                         refusal=refusal)
  except Exception as error:  # pylint: disable=broad-except
    _LOG.exception("Drawing the run report failed; writing a short one")
    return fallback_page(manifest, error)


def _ids_of_role(role: str, summary: dict) -> list:
  if role == QUERY_ROLE:
    return [example["id"] for example in summary["examples"]]
  if role == CORPUS_ROLE:
    return [row["neighbour_id"] for example in summary["examples"]
            for row in example["neighbours"]]
  return [member["id"] for group in summary["largest"]
          for member in group["members"]]


def _wanted_ids(unused, roles, **summaries) -> frozenset:
  return frozenset(identifier for role, section in roles
                   for identifier in _ids_of_role(role, summaries[section]))


class _TextsOf(beam.PTransform):
  """Records (with .id, .text) -> one dict {id: snippet} of the wanted ids.

  The records cross to this step as (id, snippet) pairs only: the step waits
  for the wanted ids, so what it reads is held until then.
  """

  def __init__(self, wanted: beam.PCollection):
    super().__init__()
    self._wanted = wanted

  def expand(self, records):
    return (records
            | "IdAndSnippet" >> beam.Map(lambda r: (r.id, snippet(r.text)))
            | "Wanted" >> beam.Filter(lambda pair, wanted: pair[0] in wanted,
                                      AsSingleton(self._wanted))
            | "ToDict" >> beam.combiners.ToDict())


class SummarizeForReport(beam.PTransform):
  """The report's side inputs: {section: PCollection of one summary}.

  Applied to the pipeline. embeddings: every document with a vector;
  neighbour_lists (each query's neighbours, the neighbours table's
  elements) and duplicate_rows when the run has those tables;
  neighbour_items / query_items: the records the neighbours were found
  among and for (documents or chunks; query_items None without
  --neighbours_of), whose texts the examples show.
  """

  def __init__(self, settings: ReportSettings,
               embeddings: beam.PCollection,
               neighbour_lists: Optional[beam.PCollection] = None,
               neighbour_items: Optional[beam.PCollection] = None,
               query_items: Optional[beam.PCollection] = None,
               duplicate_rows: Optional[beam.PCollection] = None):
    super().__init__()
    self._settings = settings
    self._embeddings = embeddings
    self._neighbour_lists = neighbour_lists
    self._neighbour_items = neighbour_items
    self._query_items = query_items
    self._duplicate_rows = duplicate_rows

  def expand(self, pbegin):
    s = self._settings
    sections = {
        EMBEDDINGS: self._embeddings | "SummarizeEmbeddings" >> (
            beam.CombineGlobally(EmbeddingSummaryFn(
                s.limit, s.chunked, s.heatmap_documents, s.include_text)))
    }
    # (role, section the ids come from, records the texts come from)
    lookups = []
    if self._neighbour_lists is not None:
      sections[NEIGHBOURS] = self._neighbour_lists | (
          "SummarizeNeighbours" >> beam.CombineGlobally(
              NeighbourSummaryFn(s.shown_queries, s.shown_neighbours)))
      queries = (self._query_items if self._query_items is not None else
                 self._neighbour_items)
      lookups += [(QUERY_ROLE, NEIGHBOURS, queries),
                  (CORPUS_ROLE, NEIGHBOURS, self._neighbour_items)]
    if self._duplicate_rows is not None:
      sections[DUPLICATES] = self._duplicate_rows | (
          "SummarizeDuplicates" >> beam.CombineGlobally(
              DuplicateSummaryFn(s.shown_groups)))
      lookups.append((DOCUMENT_ROLE, DUPLICATES, self._embeddings))
    if s.include_text and lookups:
      sections[TEXTS] = self._texts(pbegin, sections, lookups)
    return sections

  def _texts(self, pbegin, sections: Dict[str, beam.PCollection],
             lookups: list) -> beam.PCollection:
    """{role: {id: text}}: one pass over each distinct record collection."""
    by_records = {}
    for role, section, records in lookups:
      by_records.setdefault(id(records), (records, []))[1].append(
          (role, section))
    found, role_of = {}, {}
    for index, (records, roles) in enumerate(by_records.values()):
      wanted = (pbegin
                | f"Once[{index}]" >> beam.Create([None])
                | f"WantedIds[{index}]" >> beam.Map(
                    _wanted_ids, roles,
                    **{section: AsSingleton(sections[section])
                       for _, section in roles}))
      found[f"texts{index}"] = AsSingleton(
          records | f"TextsOf[{index}]" >> _TextsOf(wanted))
      role_of.update({role: f"texts{index}" for role, _ in roles})

    def by_role(unused, **texts):
      return {role: texts[key] for role, key in role_of.items()}

    return (pbegin
            | "OnceTexts" >> beam.Create([None])
            | "TextsByRole" >> beam.Map(by_role, **found))
