"""Exact neighbours in Beam: blocked matrix products, exactly brute force.

The corpus is cut into S = ceil(N / block_size) shards by a stable hash of the
id. Each query shard is one unit of work: it streams the corpus shards past
itself (a side input read as an iterable), scores one (query shard, corpus
shard) block at a time and keeps a running top K per query. A worker holds
one query shard, one corpus shard and one block of scores at a time, whatever
N is, and the corpus crosses the shuffle once (replicating every shard to the
S blocks it takes part in would shuffle S x N vectors, and ran a 2-core
machine out of memory at 100k documents).

   Embedding ─┬─ShardQueries──> ScoreAgainstCorpus ──> (query id, neighbours)
              └─ShardCorpus ───────────┘ (side input, streamed)
"""

from typing import Iterator, Optional

import apache_beam as beam

from transforms.neighbours.maths import block_top_k
from transforms.neighbours.maths import check_k
from transforms.neighbours.maths import merge_top_k
from transforms.neighbours.maths import OWNERS
from transforms.neighbours.maths import QueryNeighbours
from transforms.neighbours.maths import shard_count
from transforms.neighbours.maths import stable_hash
from transforms.neighbours.maths import stack_documents
from transforms.neighbours.maths import vector_of
from transforms.neighbours.names import DEFAULT_BLOCK_SIZE
from transforms.neighbours.names import DOCUMENT
from transforms.neighbours.names import EXACT
from transforms.neighbours.names import NEIGHBOUR_LISTS
from transforms.neighbours.names import STATS


class ShardEmbeddings(beam.PTransform):
  """Embedding -> (shard index, Shard); shard = stable_hash(id) % S."""

  def __init__(self, block_size: int, num_documents: beam.PCollection):
    super().__init__()
    self._block_size = block_size
    self._num_documents = num_documents

  def expand(self, embeddings):
    block_size = self._block_size

    def key_by_shard(embedding, num_documents):
      shard = stable_hash(embedding.id) % shard_count(num_documents, block_size)
      return shard, (embedding.id, vector_of(embedding))

    return (
        embeddings
        | "KeyByShard" >> beam.Map(
            key_by_shard, beam.pvalue.AsSingleton(self._num_documents))
        | "GroupByShard" >> beam.GroupByKey()
        | "StackShard" >> beam.MapTuple(
            lambda shard, documents: (shard, stack_documents(documents))))


def _score_against_corpus(indexed_query_shard, corpus_shards, k: int,
                          owner, exclude_self: bool
                          ) -> Iterator[QueryNeighbours]:
  """One query shard against every corpus shard, a block at a time."""
  _, queries = indexed_query_shard
  best = {query_id: [] for query_id in queries.ids}
  for _, corpus in corpus_shards:  # streamed: one corpus shard in memory
    for query_id, neighbours in block_top_k(
        queries.ids, queries.vectors, corpus.ids, corpus.vectors, k,
        exclude_self=exclude_self, owner=owner):
      best[query_id] = merge_top_k([best[query_id], neighbours], k)
  # Queries with any: one with none has no rows, and is no report example.
  yield from ((query_id, neighbours) for query_id, neighbours in best.items()
              if neighbours)


class ExactNeighbours(beam.PTransform):
  """Embedding -> {NEIGHBOUR_LISTS: neighbours, STATS: one dict}, exactly.

  Args:
    k: neighbours per query (fewer when the corpus has fewer other documents).
    block_size: documents per shard (on average: shards are drawn by hash).
      A worker holds a query shard, a corpus shard and block_size x
      min(block_size, 1024) float32 scores; the corpus crosses the shuffle
      once, plus the side input it is streamed from.
    queries: optional query set; the input PCollection is then the corpus.
      Without it, every corpus document is a query, never matched with
      itself (nor, at chunk level, with its own document's chunks). Queries
      of their own (--neighbours_of) are matched with every corpus item: an
      id they share with the corpus makes them no corpus item.
    level: "document" (Embedding elements) or "chunk" (Chunk elements: a
      chunk's neighbours are other documents' chunks).

  Neighbours: (query id, [(score, neighbour id)]) per query with any, best
  first, ties broken by the smaller neighbour id; the same as
  `brute_force_neighbours`.
  Stats: {"mode": "exact", "k", "block_size", "shards", "query_shards",
  "corpus_size", "queries"}.
  """

  def __init__(
      self,
      k: int,
      block_size: int = DEFAULT_BLOCK_SIZE,
      queries: Optional[beam.PCollection] = None,
      level: str = DOCUMENT):
    super().__init__()
    check_k(k)
    if block_size < 1:
      raise ValueError(f"block_size must be at least 1, got {block_size}")
    self._k = k
    self._block_size = block_size
    self._queries = queries
    self._level = level

  def expand(self, corpus):
    k, block_size = self._k, self._block_size
    corpus_size = corpus | "CountCorpus" >> beam.combiners.Count.Globally()
    corpus_shards = corpus | "ShardCorpus" >> ShardEmbeddings(
        block_size, corpus_size)
    if self._queries is None:
      num_queries, query_shards = corpus_size, corpus_shards
    else:
      num_queries = (
          self._queries | "CountQueries" >> beam.combiners.Count.Globally())
      query_shards = self._queries | "ShardQueries" >> ShardEmbeddings(
          block_size, num_queries)

    neighbours = query_shards | "ScoreAgainstCorpus" >> beam.FlatMap(
        _score_against_corpus, beam.pvalue.AsIter(corpus_shards), k,
        OWNERS[self._level], self._queries is None)

    def stats(num_corpus_documents, num_queries):
      return {
          "mode": EXACT,
          "k": k,
          "block_size": block_size,
          "shards": shard_count(num_corpus_documents, block_size),
          "query_shards": shard_count(num_queries, block_size),
          "corpus_size": num_corpus_documents,
          "queries": num_queries,
      }

    stats_pcoll = corpus_size | "Stats" >> beam.Map(
        stats, beam.pvalue.AsSingleton(num_queries))
    return {NEIGHBOUR_LISTS: neighbours, STATS: stats_pcoll}
