"""Names the stages share: their output tags, the metrics namespace, and the
counters' names.

A stage that splits records into good ones and rejects returns
{DOCUMENTS: ..., DEAD_LETTERS: ...}. Every counter of the pipeline is in
METRICS_NAMESPACE, under the word the manifest uses for the same count:

  read           every record read, good or bad (the read stage)
  dead_lettered  records rejected, at any stage
  repeated       of which exact repeats of a kept record (duplicate_record:
                 embedded once; not bad records to the guardrails)
  inferred       documents the model ran on (the embed stage)
  reused         documents whose vectors were carried over (--previous_run)
  removed        documents of the previous run not in this one (gone from
                 the corpus, or dead-lettered)
  truncated      documents cut to --max_seq_length (or --max_chunks)
  derived_ids    documents whose ids were derived from file name and text
                 (their records hold no --id_field value): a manifest count
                 with no counter, as `embedded`
  tokens, batches, token_budget_halved   the model handler's work

The manifest's `embedded` (documents with a vector in this run) is
inferred + reused: no stage sees both, so it has no counter of its own.

The stages that read, validate and embed the --neighbours_of queries count
under the same names in the QUERIES scope ("queries.read", ...), as the
manifest nests the queries' counts under "queries". The model handler's work
counters (tokens, batches, token_budget_halved) count all the model's work,
of both, as the manifest has no such counts.
"""

import dataclasses

from apache_beam.metrics import Metrics

# Output tags of the stages that split records into good ones and rejects.
DOCUMENTS = "documents"
DEAD_LETTERS = "dead_letters"
# The embed stage's outputs: Embedding records, and the Chunk records of
# long documents (--chunk_size).
EMBEDDINGS = "embeddings"
CHUNKS = "chunks"

# Beam metrics namespace for every counter of the pipeline, Beam's own
# RunInference counters included.
METRICS_NAMESPACE = "embedding_pipeline"


@dataclasses.dataclass(frozen=True)
class _CounterNames:
  read: str = "read"
  dead_lettered: str = "dead_lettered"
  repeated: str = "repeated"
  inferred: str = "inferred"
  reused: str = "reused"
  removed: str = "removed"
  truncated: str = "truncated"
  tokens: str = "tokens"
  batches: str = "batches"
  token_budget_halved: str = "token_budget_halved"


COUNTERS = _CounterNames()

# A manifest count (of documents with derived ids) that has no counter.
DERIVED_IDS = "derived_ids"

# The counters' scope of the --neighbours_of queries, and the manifest's.
CORPUS = ""
QUERIES = "queries."


def counter(name: str, scope: str = CORPUS):
  """The pipeline's counter `name` (one of COUNTERS) in a scope."""
  return Metrics.counter(METRICS_NAMESPACE, f"{scope}{name}")
