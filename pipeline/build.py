"""Building the pipeline from a plan: the stages, wired, each given its own
settings.

  EmbedCorpus = ReadCorpus -> ValidateDocuments [-> ReuseEmbeddings]
                -> EmbedDocuments
  embeddings -> WriteTable(embeddings)
             [-> NearestNeighbours -> WriteTable(neighbours) [, ann_index]]
  [chunks -> WriteTable(chunks)] [-> NearestNeighbours at chunk level]
             [-> NearDuplicates -> WriteTable(duplicates)]
             [-> ExportToVertex (documents, or chunks)]
             [-> WriteSimilarityPlot] [-> WriteProjectorFiles]
  dead letters of every stage -> WriteTable(errors)
  embeddings, neighbours and duplicate rows -> SummarizeForReport
  every count, file list, figure and summary -> PublishRun: report.html and
    the checks [-> sinks (--bigquery_table), from the staged files] -> the
    files into place, manifest.json last

`build_pipeline(pipeline, plan)` takes no flags and does no IO: everything it
needs is in the RunPlan (pipeline/plan.py), so a test can build the graph on
a TestPipeline from a plan it made itself.
"""

from typing import Dict, Optional

import apache_beam as beam

from pipeline.plan import RunPlan
from run_directory import layout
from run_directory.records import has_derived_id
from run_directory.records import Reason
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.tables import chunk_table
from run_directory.tables import duplicate_table
from run_directory.tables import embedding_table
from run_directory.tables import error_table
from run_directory.tables import neighbour_table
from run_directory.tables import Table
from transforms.batching import LengthBatching
from transforms.duplicates import DUPLICATE_ROWS
from transforms.duplicates import NearDuplicates
from transforms.embed import EmbedDocuments
from transforms.model_handler import BertEmbeddingModelHandler
from transforms.model_handler import HandlerSettings
from transforms.names import CHUNKS
from transforms.names import COUNTERS
from transforms.names import DEAD_LETTERS
from transforms.names import DERIVED_IDS
from transforms.names import DOCUMENTS
from transforms.names import EMBEDDINGS
from transforms.neighbours import CHUNK as CHUNK_LEVEL
from transforms.neighbours import INDEX_FILES
from transforms.neighbours import NearestNeighbours
from transforms.neighbours import NEIGHBOUR_LISTS
from transforms.neighbours import STATS
from transforms.publish import PublishRun
from transforms.read import CorpusSettings
from transforms.read import ReadCorpus
from transforms.report import SummarizeForReport
from transforms.reuse import PreviousRun
from transforms.reuse import REMOVED
from transforms.reuse import REUSED
from transforms.reuse import REUSED_CHUNKS
from transforms.reuse import ReuseEmbeddings
from transforms.reuse import TO_EMBED
from transforms.validate import ValidateDocuments
from transforms.vertex import ExportToVertex
from transforms.vertex import STATS as VERTEX_STATS
from transforms.visualize import WriteProjectorFiles
from transforms.visualize import WriteSimilarityPlot
from transforms.write import WriteTable


class EmbedCorpus(beam.PTransform):
  """Read + validate (+ carry over) + embed one corpus.

  Returns a dict of PCollections: EMBEDDINGS (computed and carried over),
  CHUNKS (likewise; empty without chunking), DEAD_LETTERS (of every stage),
  DOCUMENTS (every document read: at least one per embedding, known before
  embedding ends), and the records `COUNTED` names, counted for the
  manifest.
  """

  # Output -> the manifest count (and the counter) its elements make.
  COUNTED = {
      COUNTERS.read: COUNTERS.read,
      EMBEDDINGS: "embedded",  # inferred + reused: no counter of its own
      COUNTERS.inferred: COUNTERS.inferred,
      COUNTERS.reused: COUNTERS.reused,
      COUNTERS.removed: COUNTERS.removed,
      DEAD_LETTERS: COUNTERS.dead_lettered,
      COUNTERS.repeated: COUNTERS.repeated,
      COUNTERS.truncated: COUNTERS.truncated,
      DERIVED_IDS: DERIVED_IDS,
  }
  CHUNKS_COUNTED = {CHUNKS: "chunks"}

  def __init__(self, corpus: CorpusSettings, handler: HandlerSettings,
               batching: LengthBatching, table: EmbeddingTableSpec,
               previous_run: Optional[PreviousRun] = None,
               one_line_ids: bool = False, spill_dir: Optional[str] = None):
    super().__init__()
    self._corpus = corpus
    self._handler = handler
    self._batching = batching
    self._table = table
    self._previous_run = previous_run
    self._one_line_ids = one_line_ids
    self._spill_dir = spill_dir

  def expand(self, pbegin):
    scope = self._corpus.scope
    read = pbegin | "Read" >> ReadCorpus.of(self._corpus)
    valid = read[DOCUMENTS] | "Validate" >> ValidateDocuments(
        self._spill_dir, one_line_ids=self._one_line_ids, scope=scope)
    to_embed = valid[DOCUMENTS]
    if self._previous_run:
      reuse = to_embed | "Reuse" >> ReuseEmbeddings(self._previous_run,
                                                     self._table)
      to_embed, reused, removed = (reuse[TO_EMBED], reuse[REUSED],
                                   reuse[REMOVED])
    else:
      reused = pbegin | "NoneReused" >> beam.Create([])
      removed = pbegin | "NoneRemoved" >> beam.Create([])
    embedded = to_embed | "Embed" >> EmbedDocuments(
        BertEmbeddingModelHandler(self._handler), self._batching, scope)
    inferred = embedded[EMBEDDINGS]
    embeddings, chunks = inferred, embedded[CHUNKS]
    if self._previous_run:
      # Only then: a Flatten costs the local runner one more pass over every
      # embedding, and without a previous run nothing is reused.
      embeddings = (inferred, reused) | "InferredAndReused" >> beam.Flatten()
      if self._table.chunked:
        chunks = ((chunks, reuse[REUSED_CHUNKS])
                  | "InferredAndReusedChunks" >> beam.Flatten())
    return {
        EMBEDDINGS: embeddings,
        CHUNKS: chunks,
        DEAD_LETTERS: (read[DEAD_LETTERS], valid[DEAD_LETTERS],
                       embedded[DEAD_LETTERS])
                      | "AllDeadLetters" >> beam.Flatten(),
        COUNTERS.read: (read[DOCUMENTS], read[DEAD_LETTERS])
                       | "AllRecordsRead" >> beam.Flatten(),
        COUNTERS.repeated: valid[DEAD_LETTERS] | "Repeated" >> beam.Filter(
            lambda dead_letter: dead_letter.reason == Reason.DUPLICATE_RECORD),
        DOCUMENTS: read[DOCUMENTS],
        # What the removal guardrail's reason tells of: a renamed id field
        # (or file) changes every derived id.
        DERIVED_IDS: valid[DOCUMENTS] | "DerivedIds" >> beam.Filter(
            has_derived_id),
        COUNTERS.inferred: inferred,
        COUNTERS.reused: reused,
        COUNTERS.removed: removed,
        COUNTERS.truncated: embeddings | "Truncated" >> beam.Filter(
            lambda embedding: embedding.truncated),
    }

  @classmethod
  def counts(cls, outputs: Dict[str, beam.PCollection], scope: str,
             chunked: bool = False) -> Dict[str, beam.PCollection]:
    """The manifest's counts among `outputs`, named in `scope`
    ("queries.read", ...)."""
    counted = {**cls.COUNTED, **(cls.CHUNKS_COUNTED if chunked else {})}
    return {f"{scope}{count}": outputs[key]
            for key, count in counted.items()}


def _embed_corpus(plan: RunPlan, corpus: CorpusSettings,
                  previous_run: Optional[PreviousRun] = None) -> EmbedCorpus:
  return EmbedCorpus(corpus, plan.handler, plan.batching, plan.table,
                     previous_run=previous_run,
                     one_line_ids=plan.vertex is not None,
                     spill_dir=plan.spill_dir)


def _write_table(plan: RunPlan, table: Table,
                 count: Optional[beam.PCollection] = None,
                 bigquery_copy: bool = True) -> WriteTable:
  """WriteTable of one table into the staging directory, in the run's
  --bigquery_format (none without `bigquery_copy`: the errors table is JSON
  lines only) and --num_shards."""
  return WriteTable(
      plan.staging_dir, table,
      bigquery_format=plan.writing.bigquery_format if bigquery_copy else None,
      num_shards=plan.writing.num_shards, count=count,
      spill_dir=plan.spill_dir)


def build_pipeline(pipeline: beam.Pipeline, plan: RunPlan,
                   started_at: float) -> dict:
  """Adds the whole job to `pipeline`; returns its main PCollections."""
  staging = plan.staging_dir
  corpus = pipeline | "EmbedCorpus" >> _embed_corpus(plan, plan.corpus,
                                                      plan.previous_run)
  embeddings = corpus[EMBEDDINGS]
  chunked = plan.table.chunked
  counts = EmbedCorpus.counts(corpus, plan.corpus.scope, chunked=chunked)
  all_dead_letters = [corpus[DEAD_LETTERS]]
  query_corpus = None
  if plan.queries:
    query_corpus = pipeline | "EmbedQueries" >> _embed_corpus(plan,
                                                               plan.queries)
    counts.update(EmbedCorpus.counts(query_corpus, plan.queries.scope,
                                     chunked=chunked))
    all_dead_letters.append(query_corpus[DEAD_LETTERS])
  dead_letters = all_dead_letters | "AllDeadLetters" >> beam.Flatten()

  fingerprint = plan.model.fingerprint
  outputs = {
      layout.EMBEDDINGS: embeddings | "WriteEmbeddings" >> _write_table(
          plan, embedding_table(plan.table, plan.run_id, fingerprint),
          # Known before embedding ends, unlike the number of embeddings:
          # the shard of each embedding is then chosen as it is made, not
          # in another pass over all of them.
          count=corpus[DOCUMENTS]),
      **({layout.CHUNKS: corpus[CHUNKS] | "WriteChunks" >> _write_table(
          plan, chunk_table(plan.table, plan.run_id, fingerprint))}
         if chunked else {}),
      layout.ERRORS: dead_letters | "WriteDeadLetters" >> _write_table(
          plan, error_table(plan.run_id), bigquery_copy=False),
  }
  details = {}
  summarized = {}  # what the report summarises, beside the embeddings
  if plan.neighbours:
    # Documents, or at chunk level chunks, of the corpus and the queries.
    items = (CHUNKS if plan.neighbours.level == CHUNK_LEVEL
             else EMBEDDINGS)
    neighbours = corpus[items] | "NearestNeighbours" >> NearestNeighbours(
        plan.neighbours,
        queries=query_corpus[items] if query_corpus else None,
        # ann mode keeps its index, for searches of the run (pipeline.query).
        index_dir=staging)
    if INDEX_FILES in neighbours:
      outputs[layout.ANN_INDEX] = neighbours[INDEX_FILES]
    outputs[layout.NEIGHBOURS] = neighbours[NEIGHBOUR_LISTS] | (
        "WriteNeighbours" >> _write_table(
            plan, neighbour_table(plan.run_id, fingerprint,
                                  chunks=items == CHUNKS)))
    details[layout.NEIGHBOURS] = neighbours[STATS]
    summarized.update(
        neighbour_lists=neighbours[NEIGHBOUR_LISTS],
        neighbour_items=corpus[items],
        query_items=query_corpus[items] if query_corpus else None)
  if plan.duplicates:
    duplicates = embeddings | "NearDuplicates" >> NearDuplicates(
        plan.duplicates)
    outputs[layout.DUPLICATES] = duplicates[DUPLICATE_ROWS] | (
        "WriteDuplicates" >> _write_table(
            plan, duplicate_table(plan.run_id, fingerprint)))
    details[layout.DUPLICATES] = duplicates[STATS]
    summarized["duplicate_rows"] = duplicates[DUPLICATE_ROWS]
  if plan.vertex:
    # With chunking the chunks are the datapoints: what a passage search
    # retrieves.
    items = corpus[CHUNKS] if chunked else embeddings
    export = items | "ExportToVertex" >> ExportToVertex(
        staging, plan.vertex, spill_dir=plan.spill_dir)
    outputs[layout.VERTEX] = export[layout.VERTEX]
    outputs[layout.VERTEX_STATE] = export[layout.VERTEX_STATE]
    details[layout.VERTEX] = export[VERTEX_STATS]
  if plan.similarity_plot:
    outputs[layout.SIMILARITY_PLOT] = {
        "png": embeddings | "WriteSimilarityPlot" >> WriteSimilarityPlot(
            staging, with_text=plan.table.include_text)
    }
  if plan.projector_max_points:
    outputs[layout.PROJECTOR] = {
        "tsv": embeddings | "WriteProjectorFiles" >> WriteProjectorFiles(
            staging, plan.projector_max_points,
            with_text=plan.table.include_text)
    }

  report_sections = pipeline | "SummarizeForReport" >> SummarizeForReport(
      plan.report, embeddings, **summarized)
  static_details = {}
  if plan.previous_run:
    static_details["previous_run"] = plan.previous_run.manifest_entry()
  _ = pipeline | "PublishRun" >> PublishRun(
      plan.run_dir, staging, plan.run_id, plan.manifest_model,
      counts=counts, outputs=outputs, settings=plan.manifest_settings,
      started_at=started_at, details=details, static_details=static_details,
      latest_pointer=plan.latest_pointer,
      latest_pointer_before=plan.latest_pointer_before, limits=plan.limits,
      dead_letters=dead_letters, report_sections=report_sections,
      # The embeddings table's BigQuery-loadable files, once written.
      sinks=[(outputs[layout.EMBEDDINGS][plan.writing.bigquery_format], sink)
             for sink in plan.sinks])
  return {EMBEDDINGS: embeddings, DEAD_LETTERS: dead_letters}
