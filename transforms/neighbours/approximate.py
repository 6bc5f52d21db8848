"""Approximate neighbours: one FAISS index of the whole corpus.

One worker builds a FAISS index of the corpus (HNSW; an exact flat index
below `flat_index_below` documents), queries it, and measures recall@K
against the exact answer on a deterministic sample of queries; the figure
goes into the stats. Given a directory, it also writes the index there
(run_directory/ann_index.py), for searches after the run (pipeline/search.py).
"""

import collections
import dataclasses
import functools
from typing import BinaryIO, List, Optional, Sequence

import apache_beam as beam
import numpy as np

from run_directory.ann_index import write_ann_index
from run_directory.layout import ANN_INDEX_FILES
from transforms.neighbours.maths import blocked_top_k
from transforms.neighbours.maths import check_k
from transforms.neighbours.maths import id_ranks
from transforms.neighbours.maths import OWNERS
from transforms.neighbours.maths import QueryNeighbours
from transforms.neighbours.maths import rank_candidates
from transforms.neighbours.maths import recall_at_k
from transforms.neighbours.maths import recall_sample
from transforms.neighbours.maths import Shard
from transforms.neighbours.maths import stack_documents
from transforms.neighbours.maths import vector_of
from transforms.neighbours.names import ANN
from transforms.neighbours.names import CHUNK
from transforms.neighbours.names import CHUNK_LEVEL_EXTRA_CANDIDATES
from transforms.neighbours.names import DOCUMENT_LEVEL_EXTRA_CANDIDATES
from transforms.neighbours.names import DEFAULT_BLOCK_SIZE
from transforms.neighbours.names import DEFAULT_EF_CONSTRUCTION
from transforms.neighbours.names import DEFAULT_EF_SEARCH
from transforms.neighbours.names import DEFAULT_FLAT_INDEX_BELOW
from transforms.neighbours.names import DEFAULT_HNSW_M
from transforms.neighbours.names import DEFAULT_RECALL_SAMPLE_SIZE
from transforms.neighbours.names import DOCUMENT
from transforms.neighbours.names import INDEX_FILES
from transforms.neighbours.names import NEIGHBOUR_LISTS
from transforms.neighbours.names import STATS


@dataclasses.dataclass(frozen=True)
class AnnIndexSettings:
  """How ApproximateNeighbours builds and searches its FAISS index."""
  hnsw_m: int = DEFAULT_HNSW_M
  ef_construction: int = DEFAULT_EF_CONSTRUCTION
  ef_search: int = DEFAULT_EF_SEARCH
  # Corpora smaller than this get an exact flat index instead of HNSW.
  flat_index_below: int = DEFAULT_FLAT_INDEX_BELOW


def build_index(corpus_vectors: np.ndarray, candidates: int,
                settings: AnnIndexSettings):
  """A FAISS inner-product index of normalised vectors, and its description."""
  # Imported here, not at the top: FAISS costs seconds of start-up, and only
  # runs with --neighbours_mode=ann build an index.
  import faiss  # pylint: disable=g-import-not-at-top
  n, dimensions = corpus_vectors.shape
  if n < settings.flat_index_below:
    index = faiss.IndexFlatIP(dimensions)
    description = "IndexFlatIP (exact inner product)"
  else:
    index = faiss.IndexHNSWFlat(dimensions, settings.hnsw_m,
                                faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    # The search keeps efSearch candidates: it must cover those asked for.
    ef_search = max(settings.ef_search, candidates)
    index.hnsw.efSearch = ef_search
    description = (
        f"IndexHNSWFlat inner product, M={settings.hnsw_m}, "
        f"efConstruction={settings.ef_construction}, efSearch={ef_search}")
  vectors = np.ascontiguousarray(corpus_vectors, dtype=np.float32)
  if n < settings.flat_index_below:
    index.add(vectors)
  else:
    _add_reproducibly(faiss, index, vectors)
  return index, description


def _add_reproducibly(faiss, index, vectors: np.ndarray):
  """HNSW's graph, the same on every rerun and retry (the tables and the
  kept index are byte-identical). FAISS's lock-based build links the
  vectors in whatever order its threads take the locks, so it is
  reproducible only on one thread (faiss pull request 5486); FAISS
  releases that have the deterministic multi-threaded build use it."""
  if hasattr(faiss.cvar, "hnsw_deterministic_build"):
    faiss.cvar.hnsw_deterministic_build = True
    index.add(vectors)
    return
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  try:
    index.add(vectors)
  finally:
    faiss.omp_set_num_threads(threads)


def write_index_to(index, file: BinaryIO) -> None:
  """faiss.write_index into an open file, streamed: no second copy of the
  index in memory."""
  # Imported here, as in build_index: only --neighbours_mode=ann needs FAISS.
  import faiss  # pylint: disable=g-import-not-at-top
  # The callback gets each piece as FAISS writes it, and returns its length
  # as file.write does.
  faiss.write_index(index, faiss.PyCallbackIOWriter(file.write))


def ann_top_k(
    index,
    query_ids: Sequence[str],
    query_vectors: np.ndarray,
    corpus_ids: Sequence[str],
    corpus_vectors: np.ndarray,
    k: int,
    corpus_id_ranks: Optional[np.ndarray] = None,
    level: str = DOCUMENT,
    exclude_self: bool = True) -> List[QueryNeighbours]:
  """The index's top K of every query, scored canonically like exact mode.

  Vectors normalised. With exclude_self (the corpus's own items as queries),
  each query asks the index for K and room for its own items
  (`asked_per_query`), so that dropping them still leaves K; without it
  (queries of their own, --neighbours_of) nothing is dropped.
  """
  if not len(query_ids) or not len(corpus_ids):
    return []
  if corpus_id_ranks is None:
    corpus_id_ranks = id_ranks(corpus_ids)
  owner = OWNERS[level]
  corpus_owners = np.asarray([owner(i) for i in corpus_ids], dtype=object)
  query_owners = np.asarray(
      [owner(i) for i in query_ids] if exclude_self else
      [_NO_OWNER] * len(query_ids), dtype=object)
  asked = asked_per_query(k, level, corpus_owners, query_owners)
  rows, cols = [], []
  for count in np.unique(asked).tolist():  # searches per candidate count
    group = np.flatnonzero(asked == count)
    step = max(1, _RESULTS_PER_SEARCH // count)
    for start in range(0, len(group), step):
      queries = group[start:start + step]
      labels = _search(index, np.ascontiguousarray(
          query_vectors[queries], dtype=np.float32), count)
      # -1: the index found fewer than asked.
      found = labels >= 0
      found[found] = (
          corpus_owners[labels[found]] !=
          np.broadcast_to(query_owners[queries, None], labels.shape)[found])
      found_rows, positions = np.nonzero(found)
      rows.append(queries[found_rows])
      cols.append(labels[found_rows, positions])
  return [(query_ids[row], neighbours)
          for row, neighbours in rank_candidates(
              query_vectors, corpus_vectors, corpus_ids, corpus_id_ranks,
              np.concatenate(rows), np.concatenate(cols), k)]


# The owner of a query of its own (--neighbours_of): no corpus item's.
_NO_OWNER = object()

# Results (query rows x results asked) of one index search: its labels and
# distances take 12 bytes each, so about 50 MB at a time.
_RESULTS_PER_SEARCH = 1 << 22


def _search(index, vectors: np.ndarray, count: int) -> np.ndarray:
  """The labels of index.search, with an HNSW index's efSearch raised to
  `count` for the call when below it: HNSW returns at most about efSearch
  results, fewer than asked."""
  hnsw = getattr(index, "hnsw", None)
  if hnsw is None or hnsw.efSearch >= count:
    return index.search(vectors, count)[1]
  ef_search = hnsw.efSearch
  hnsw.efSearch = count
  try:
    return index.search(vectors, count)[1]
  finally:
    hnsw.efSearch = ef_search  # as built: the index may be kept


def candidates(k: int, level: str) -> int:
  """Results asked of the index per query, at least: K and room for the
  query's own (itself; at chunk level some of its document's chunks) and
  near ties (names.py)."""
  return k + (CHUNK_LEVEL_EXTRA_CANDIDATES if level == CHUNK else
              DOCUMENT_LEVEL_EXTRA_CANDIDATES)


def asked_per_query(k: int, level: str, corpus_owners: np.ndarray,
                    query_owners: np.ndarray) -> np.ndarray:
  """Results to ask of the index for each query: `candidates`, or K plus
  the corpus items the query owns (at chunk level, its document's chunks)
  when those are more, rounded up to a power of two (few index calls);
  never more than the corpus. A long document whose chunks are nearer each
  other than any other document's once got no neighbours at all."""
  base = candidates(k, level)
  if level == DOCUMENT:  # a query owns at most one item, itself
    return np.full(len(query_owners), min(base, len(corpus_owners)))
  owned = collections.Counter(corpus_owners.tolist())
  needed = np.array([k + owned.get(o, 0) for o in query_owners.tolist()],
                    dtype=np.int64)
  rounded = 2 ** np.ceil(np.log2(np.maximum(needed, 1))).astype(np.int64)
  return np.minimum(np.where(needed <= base, base, rounded),
                    len(corpus_owners))


class _SearchIndexFn(beam.DoFn):
  """One corpus Shard in: its index, every query's top K, and the stats;
  with an index directory, the index written there too. One DoFn does all
  four because only this worker holds the index: another step would have to
  build it again, or ship it."""

  def __init__(self, k: int, recall_sample_size: int,
               settings: AnnIndexSettings, block_size: int, level: str,
               index_dir: Optional[str]):
    super().__init__()
    self._index_dir = index_dir
    self._k = k
    self._level = level
    self._recall_sample_size = recall_sample_size
    self._settings = settings
    self._block_size = block_size

  def process(self, corpus: Shard, queries: Optional[Shard] = None):
    k = self._k
    # The corpus's own items as queries are never matched with themselves;
    # queries of their own are matched with every corpus item.
    exclude_self = queries is None
    if queries is None:
      queries = corpus
    stats = {
        "mode": ANN,
        "k": k,
        "recall_at_k": None,
        "recall_sample_size": 0,
        "index": None,
        "corpus_size": len(corpus.ids),
        "queries": len(queries.ids),
    }
    # Without queries the index is built only to be kept (--neighbours_of
    # with no new documents: the run's index is still the corpus's).
    if not corpus.ids or not (queries.ids or self._index_dir):
      yield beam.pvalue.TaggedOutput(STATS, stats)
      return
    index, stats["index"] = build_index(
        corpus.vectors, candidates(k, self._level), self._settings)
    found = ann_top_k(index, queries.ids, queries.vectors, corpus.ids,
                      corpus.vectors, k, id_ranks(corpus.ids), self._level,
                      exclude_self)
    if self._index_dir:
      written = write_ann_index(
          self._index_dir, functools.partial(write_index_to, index),
          corpus.ids)
      for key, path in written.items():
        yield beam.pvalue.TaggedOutput(key, path)
    del index
    yield from found
    if queries.ids:
      sample = recall_sample(queries.ids, self._recall_sample_size)
      position = {query_id: i for i, query_id in enumerate(queries.ids)}
      rows = [position[query_id] for query_id in sample]
      exact = dict(
          blocked_top_k(sample, queries.vectors[rows], corpus.ids,
                        corpus.vectors, k, self._block_size,
                        exclude_self=exclude_self, owner=OWNERS[self._level]))
      stats["recall_at_k"] = recall_at_k(
          dict(found),
          {query_id: exact.get(query_id, []) for query_id in sample})
      stats["recall_sample_size"] = len(sample)
    yield beam.pvalue.TaggedOutput(STATS, stats)


class GatherShard(beam.PTransform):
  """Embedding -> one Shard holding every document (in one worker)."""

  def expand(self, embeddings):
    return (
        embeddings
        # Only what the index needs: no text, no per-token vectors.
        | "ToIdAndVector" >> beam.Map(
            lambda embedding: (embedding.id, vector_of(embedding)))
        | "ToList" >> beam.combiners.ToList()
        | "Stack" >> beam.Map(stack_documents))


class ApproximateNeighbours(beam.PTransform):
  """Embedding -> {NEIGHBOUR_LISTS: neighbours, STATS: one dict}, with a FAISS
  index.

  The whole corpus (ids and vectors, 4 H bytes a document) and the index are
  held by one worker, which also searches it for every query (FAISS uses the
  worker's cores). For corpora where exact mode's N^2 H is too much.

  Args:
    k: neighbours per query.
    recall_sample_size: queries whose exact top K is computed (numpy, against
      the whole corpus) to measure recall@K; the sample is the first ids by
      stable hash.
    settings: the FAISS index settings.
    queries: optional query set; the input PCollection is then the corpus.
    block_size: corpus rows per block of the exact recall computation.
    level: "document" or "chunk", as ExactNeighbours.
    index_dir: where to write the index and the ids of its rows
      (run_directory/ann_index.py); None: not written.

  Rows as ExactNeighbours (canonical scores; among more tied duplicates than
  the index returned, which ones are listed is up to the index). With
  index_dir, also INDEX_FILES: {"faiss": PCollection of the index's path,
  "ids": of its ids file} (empty when nothing was indexed). Stats:
  {"mode": "ann", "k", "recall_at_k" (None if nothing to find),
  "recall_sample_size", "index" (description), "corpus_size", "queries"}.
  """

  def __init__(
      self,
      k: int,
      recall_sample_size: int = DEFAULT_RECALL_SAMPLE_SIZE,
      settings: AnnIndexSettings = AnnIndexSettings(),
      queries: Optional[beam.PCollection] = None,
      block_size: int = DEFAULT_BLOCK_SIZE,
      level: str = DOCUMENT,
      index_dir: Optional[str] = None):
    super().__init__()
    check_k(k)
    if recall_sample_size < 0:
      raise ValueError(
          f"recall_sample_size must be >= 0, got {recall_sample_size}")
    if settings.hnsw_m < 2 or settings.ef_search < 1 or (
        settings.ef_construction < 1):
      raise ValueError(f"Invalid HNSW settings {settings}")
    self._k = k
    self._recall_sample_size = recall_sample_size
    self._settings = settings
    self._queries = queries
    self._block_size = block_size
    self._level = level
    self._index_dir = index_dir

  def expand(self, corpus):
    corpus_shard = corpus | "GatherCorpus" >> GatherShard()
    side_inputs = []
    if self._queries is not None:
      query_shard = self._queries | "GatherQueries" >> GatherShard()
      side_inputs.append(beam.pvalue.AsSingleton(query_shard))
    results = corpus_shard | "SearchIndex" >> beam.ParDo(
        _SearchIndexFn(self._k, self._recall_sample_size, self._settings,
                       self._block_size, self._level, self._index_dir),
        *side_inputs).with_outputs(
            STATS, *ANN_INDEX_FILES, main=NEIGHBOUR_LISTS)
    # One worker found them all: spread them out for the writers.
    neighbours = results[NEIGHBOUR_LISTS] | "SpreadQueries" >> (
        beam.Reshuffle())
    outputs = {NEIGHBOUR_LISTS: neighbours, STATS: results[STATS]}
    if self._index_dir:
      outputs[INDEX_FILES] = {key: results[key] for key in ANN_INDEX_FILES}
    return outputs
