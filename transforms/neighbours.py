"""Nearest neighbours stage: the K most similar other documents by cosine.

    Embedding ──NearestNeighbours──> {NEIGHBOURS: rows {id, rank,
                                                  neighbour_id, score},
                                      STATS: one dict for manifest.json}

Two modes, one output contract (the neighbours table of the design brief):

* exact (ExactNeighbours, the default): blocked matrix products spread over the
  Beam graph. The corpus is cut into S = ceil(N / block_size) shards by a
  stable hash of the id. Each query shard is one unit of work: it streams the
  corpus shards past itself (a side input read as an iterable), scores one
  (query shard, corpus shard) block at a time and keeps a running top K per
  query. A worker holds one query shard, one corpus shard and one block of
  scores at a time, whatever N is, and the corpus crosses the shuffle once
  (replicating every shard to the S blocks it takes part in would shuffle
  S x N vectors, and ran a 2-core machine out of memory at 100k documents).
  The result is exactly that of a brute-force computation.

   Embedding ─┬─ShardQueries──> ScoreAgainstCorpus ──> ToRows ──> rows
              └─ShardCorpus ───────────┘ (side input, streamed)

* approximate (ApproximateNeighbours, `ann`): one worker builds a FAISS index
  of the whole corpus (HNSW; an exact flat index below `flat_index_below`
  documents), queries it, and measures recall@K against the exact answer on a
  deterministic sample of queries; the figure goes into the stats.

Both find the neighbours of `queries` within the corpus when a query set is
given (e.g. new documents against yesterday's corpus), of every corpus
document otherwise. A document is never its own neighbour: a query is never
matched with a corpus document of the same id.

Scores. Every reported score is the canonical cosine of a pair: the float64
sum of the exact products of the two L2-normalised float32 vectors, rounded
once to float32 (`pair_scores`). It is a function of the two vectors only, so
a pair gets the same bits in every block, in `exact_top_k` and in ANN mode,
and duplicate vectors tie exactly. The float32 matrix product (fast, but its
last bits depend on the matrix shapes) only chooses candidates, with a margin
larger than its proven rounding error; the candidates are then re-scored
canonically and ordered by (higher score, smaller neighbour_id).
"""

import dataclasses
import hashlib
import heapq
import itertools
import math
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from transforms.records import Embedding

# Keys of the dict every neighbours transform returns.
NEIGHBOURS = "neighbours"
STATS = "stats"

EXACT = "exact"
ANN = "ann"
MODES = (EXACT, ANN)

DEFAULT_BLOCK_SIZE = 4096
DEFAULT_RECALL_SAMPLE_SIZE = 1000
# HNSW settings, about (4 H + 8 M) bytes a document. Measured recall@10: 1.0
# on clustered vectors (5k x 32, 20k x 384); 0.94 on isotropic Gaussian 20k x
# 384, the structureless worst case (0.955 at efSearch 192, 0.968 at 256).
# efConstruction above FAISS's default of 40 builds a better graph for a
# one-off cost.
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF_SEARCH = 256
# Below this corpus size an exact flat index is fast enough (N^2 H flops in
# one worker) and has recall 1.
DEFAULT_FLAT_INDEX_BELOW = 20_000

# Query rows scored at once inside a block: bounds the score matrix (and its
# partitioned copy) to QUERY_ROWS_PER_CHUNK x corpus shard rows float32.
QUERY_ROWS_PER_CHUNK = 1024
# Candidate pairs re-scored at once: keeps the float64 products in cache.
PAIRS_PER_CHUNK = 256

# One neighbour of a query: (score, neighbour_id).
Neighbour = Tuple[float, str]
# A query's neighbours, best first.
QueryNeighbours = Tuple[str, List[Neighbour]]

# ---------------------------------------------------------------------------
# The math, in numpy: no Beam.


def normalize_rows(matrix) -> np.ndarray:
  """float32 rows scaled to unit L2 norm; an all-zero row stays zero.

  The norm is taken in float64, row by row, so a row's result depends on that
  row only: identical vectors stay identical wherever they are.
  """
  matrix = np.asarray(matrix, dtype=np.float32)
  if matrix.ndim != 2:
    raise ValueError(f"Expected a [rows, hidden] matrix, got {matrix.shape}")
  norms = np.sqrt(np.square(matrix, dtype=np.float64).sum(axis=1))
  # A zero vector has no direction: it stays zero, cosine 0 with everything.
  norms[norms == 0] = 1.0
  return (matrix / norms[:, None]).astype(np.float32)


def pair_scores(left: np.ndarray, right: np.ndarray) -> np.ndarray:
  """Canonical scores of row pairs: float32(sum(float64(left * right))).

  left, right: float32 [P, H], normalised. Products of float32 values are
  exact in float64, and the sum runs in a fixed order, so the result depends
  on the two rows only (and is symmetric).
  """
  return _indexed_pair_scores(left, np.arange(len(left)), right,
                              np.arange(len(right)))


def _indexed_pair_scores(left: np.ndarray, left_rows: np.ndarray,
                         right: np.ndarray, right_rows: np.ndarray):
  """pair_scores(left[left_rows], right[right_rows]), gathered in small
  chunks: cache-sized temporaries instead of fresh [P, H] float64 arrays."""
  scores = np.empty(len(left_rows), dtype=np.float32)
  for start in range(0, len(left_rows), PAIRS_PER_CHUNK):
    end = start + PAIRS_PER_CHUNK
    products = left[left_rows[start:end]].astype(np.float64)
    products *= right[right_rows[start:end]]
    scores[start:end] = products.sum(axis=1)
  return scores


def _gemm_tolerance(hidden_size: int) -> float:
  """Twice a bound on |float32 matrix product - canonical score|.

  A float32 dot product of length H has an error of at most H u |x||y|
  (u = 2^-24, any summation order, FMA or not); the canonical score is off by
  at most u. Anything that can rank in the exact top K then scores, in the
  matrix product, at least the K-th product score minus twice that.
  """
  return (hidden_size + 2) * float(np.finfo(np.float32).eps) * 1.001


# Below any score of finite vectors, above the -inf that marks a query itself.
_LOWEST_FLOAT32 = np.finfo(np.float32).min


def _id_ranks(ids: Sequence[str]) -> np.ndarray:
  """Each id's position in sorted order: the numeric tie-breaking key."""
  order = sorted(range(len(ids)), key=ids.__getitem__)
  ranks = np.empty(len(ids), dtype=np.int64)
  ranks[order] = np.arange(len(ids))
  return ranks


def _rank_candidates(
    query_vectors: np.ndarray,
    corpus_vectors: np.ndarray,
    corpus_ids: Sequence[str],
    corpus_id_ranks: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    k: int) -> Iterator[Tuple[int, List[Neighbour]]]:
  """(query row, top K) from candidate (row, col) pairs, canonically scored.

  Rows without candidates are left out.
  """
  if not len(rows):
    return
  scores = _indexed_pair_scores(query_vectors, rows, corpus_vectors, cols)
  order = np.lexsort((corpus_id_ranks[cols], -scores, rows))
  rows, cols, scores = rows[order], cols[order], scores[order]
  # Keep the first K of every row: position in the row's run < K.
  run_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
  run_lengths = np.diff(np.r_[run_starts, len(rows)])
  position_in_row = np.arange(len(rows)) - np.repeat(run_starts, run_lengths)
  kept = position_in_row < k
  rows, cols, scores = rows[kept], cols[kept], scores[kept]
  # One conversion to Python values, then slices of lists (no per-row numpy).
  boundaries = np.r_[0, np.cumsum(np.minimum(run_lengths, k))].tolist()
  neighbours = list(zip(scores.tolist(), map(corpus_ids.__getitem__,
                                              cols.tolist())))
  row_values = rows.tolist()
  for start, end in zip(boundaries[:-1], boundaries[1:]):
    yield row_values[start], neighbours[start:end]


def block_top_k(
    query_ids: Sequence[str],
    query_vectors: np.ndarray,
    corpus_ids: Sequence[str],
    corpus_vectors: np.ndarray,
    k: int,
    exclude_self: bool = True) -> List[QueryNeighbours]:
  """The top K corpus documents of every query, within one block.

  Vectors: float32 [n, H] rows of `normalize_rows`. Returns
  [(query_id, [(score, neighbour_id), ...])] in query order, each list best
  first (higher score, then smaller neighbour_id), at most K long; queries
  without any candidate are left out. With exclude_self, a query is never
  matched with a corpus document of the same id.

  Memory: QUERY_ROWS_PER_CHUNK x len(corpus_ids) float32 scores at a time.
  """
  if k < 1:
    raise ValueError(f"k must be at least 1, got {k}")
  query_vectors = np.asarray(query_vectors, dtype=np.float32)
  corpus_vectors = np.asarray(corpus_vectors, dtype=np.float32)
  corpus_ids = list(corpus_ids)
  if not len(query_ids) or not corpus_ids:
    return []
  if query_vectors.shape[1] != corpus_vectors.shape[1]:
    raise ValueError(
        f"Queries have {query_vectors.shape[1]} dimensions, the corpus "
        f"{corpus_vectors.shape[1]}; both must come from the same model")
  n_corpus = len(corpus_ids)
  kept = min(k, n_corpus)
  tolerance = _gemm_tolerance(corpus_vectors.shape[1])
  corpus_id_ranks = _id_ranks(corpus_ids)
  corpus_positions = {}
  if exclude_self:
    for position, corpus_id in enumerate(corpus_ids):
      corpus_positions.setdefault(corpus_id, []).append(position)

  results = []
  for start in range(0, len(query_ids), QUERY_ROWS_PER_CHUNK):
    chunk = query_vectors[start:start + QUERY_ROWS_PER_CHUNK]
    scores = chunk @ corpus_vectors.T
    for row in range(len(chunk)):
      for col in corpus_positions.get(query_ids[start + row], ()):
        scores[row, col] = -np.inf
    # The K-th best product score of each row; -inf when a row has fewer than
    # K candidates, and then all its finite scores are candidates.
    kth_best = np.partition(scores, n_corpus - kept, axis=1)[:, n_corpus - kept]
    threshold = np.maximum(kth_best - tolerance, _LOWEST_FLOAT32)
    rows, cols = np.nonzero(scores >= threshold[:, None])
    for row, neighbours in _rank_candidates(
        chunk, corpus_vectors, corpus_ids, corpus_id_ranks, rows, cols, k):
      results.append((query_ids[start + row], neighbours))
  return results


def _neighbour_order(neighbour: Neighbour):
  score, neighbour_id = neighbour
  return -score, neighbour_id


def merge_top_k(lists: Iterable[Sequence[Neighbour]],
                k: int) -> List[Neighbour]:
  """The K best of several neighbour lists of one query, best first."""
  return heapq.nsmallest(k, itertools.chain.from_iterable(lists),
                         key=_neighbour_order)


def exact_top_k(
    query_ids: Sequence[str],
    query_vectors,
    corpus_ids: Sequence[str],
    corpus_vectors,
    k: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    exclude_self: bool = True) -> List[QueryNeighbours]:
  """ExactNeighbours in one process: blocks of `block_top_k`, merged.

  Raw (unnormalised) vectors in. Returns [(query_id, top K)] in query order,
  queries without neighbours left out; the same lists as ExactNeighbours.
  """
  return _blocked_top_k(query_ids, normalize_rows(query_vectors), corpus_ids,
                        normalize_rows(corpus_vectors), k, block_size,
                        exclude_self)


def _blocked_top_k(query_ids, queries, corpus_ids, corpus, k, block_size,
                   exclude_self=True) -> List[QueryNeighbours]:
  """exact_top_k of vectors already normalised (re-normalising could move
  their last bits, and with them the canonical scores)."""
  corpus_ids = list(corpus_ids)
  best = {}
  for start in range(0, len(corpus_ids), block_size):
    end = start + block_size
    for query_id, neighbours in block_top_k(
        query_ids, queries, corpus_ids[start:end], corpus[start:end], k,
        exclude_self):
      previous = best.get(query_id)
      best[query_id] = (
          neighbours if previous is None else
          merge_top_k([previous, neighbours], k))
  return [(query_id, best[query_id]) for query_id in query_ids
          if query_id in best]


def brute_force_neighbours(
    ids: Sequence[str],
    vectors,
    k: int,
    query_ids: Optional[Sequence[str]] = None,
    query_vectors=None) -> List[QueryNeighbours]:
  """The reference answer: every pair scored, then sorted. Small inputs only.

  Scores are a float64 matrix product rounded to float32; neighbours of
  `query_ids` within `ids` (of `ids` themselves by default), never a document
  of the query's own id. Same return shape as `exact_top_k`.
  """
  if query_ids is None:
    query_ids, query_vectors = ids, vectors
  corpus = normalize_rows(vectors).astype(np.float64)
  queries = normalize_rows(query_vectors).astype(np.float64)
  scores = (queries @ corpus.T).astype(np.float32).tolist()
  results = []
  for query_id, row in zip(query_ids, scores):
    neighbours = sorted(
        ((score, corpus_id)
         for score, corpus_id in zip(row, ids)
         if corpus_id != query_id),
        key=_neighbour_order)[:k]
    if neighbours:
      results.append((query_id, neighbours))
  return results


def neighbour_rows(query_id: str,
                   neighbours: Sequence[Neighbour]) -> Iterator[dict]:
  """Rows of the neighbours table for one query: rank 1 is the best."""
  for rank, (score, neighbour_id) in enumerate(neighbours, start=1):
    yield {
        "id": query_id,
        "rank": rank,
        "neighbour_id": neighbour_id,
        "score": float(score),
    }


def stable_hash(document_id: str) -> int:
  """A 64-bit hash of an id, the same in every process and run.

  (Python's hash() of a str is salted per process.)
  """
  return int.from_bytes(
      hashlib.blake2b(document_id.encode("utf-8"), digest_size=8).digest(),
      "big")


def shard_count(num_documents: int, block_size: int) -> int:
  """S = ceil(N / block_size), at least 1."""
  return max(1, math.ceil(num_documents / block_size))


def recall_sample(ids: Sequence[str], sample_size: int) -> List[str]:
  """The recall sample: the first `sample_size` ids ordered by stable hash.

  Deterministic, and spread over the corpus rather than its first file.
  """
  return sorted(ids, key=lambda i: (stable_hash(i), i))[:sample_size]


def recall_at_k(approximate: dict, exact: dict) -> Optional[float]:
  """Recall of approximate neighbour lists against exact ones, tie-aware.

  approximate, exact: query id -> [(score, neighbour_id)], scores canonical.
  A returned neighbour counts as found when it scores at least the exact
  K-th score: among duplicates tied at the cut, any of them is right.
  None when the exact lists are all empty (nothing to find).
  """
  found = wanted = 0
  for query_id, exact_neighbours in exact.items():
    if not exact_neighbours:
      continue
    kth_score = exact_neighbours[-1][0]
    wanted += len(exact_neighbours)
    found += min(
        len(exact_neighbours),
        sum(score >= kth_score
            for score, _ in approximate.get(query_id, ())))
  return found / wanted if wanted else None


# ---------------------------------------------------------------------------
# Exact mode in Beam.


@dataclasses.dataclass(frozen=True, eq=False)
class Shard:
  """A shard of documents: ids sorted, and their normalised vectors."""
  ids: Tuple[str, ...]
  vectors: np.ndarray  # float32 [len(ids), H], rows of normalize_rows


def _vector_of(embedding: Embedding) -> np.ndarray:
  vector = np.asarray(embedding.embedding, dtype=np.float32)
  if vector.ndim != 1 or not np.all(np.isfinite(vector)):
    raise ValueError(
        f"Embedding {embedding.id!r} is not a finite [H] vector (shape "
        f"{vector.shape}); nearest neighbours need finite embeddings")
  return vector


def stack_documents(documents: Iterable[Tuple[str, np.ndarray]]) -> Shard:
  """(id, vector) pairs as a Shard: sorted by id, so any arrival order gives
  the same shard."""
  documents = sorted(documents, key=lambda document: document[0])
  dimensions = {len(vector) for _, vector in documents}
  if len(dimensions) > 1:
    raise ValueError(
        f"Embeddings of different sizes {sorted(dimensions)} in one corpus; "
        "neighbours need vectors from one model")
  if not documents:
    return Shard(ids=(), vectors=np.zeros((0, 0), dtype=np.float32))
  return Shard(
      ids=tuple(document_id for document_id, _ in documents),
      vectors=normalize_rows(np.stack([vector for _, vector in documents])))


class _ShardEmbeddings(beam.PTransform):
  """Embedding -> (shard index, Shard); shard = stable_hash(id) % S."""

  def __init__(self, block_size: int, num_documents: beam.PCollection):
    super().__init__()
    self._block_size = block_size
    self._num_documents = num_documents

  def expand(self, embeddings):
    block_size = self._block_size

    def key_by_shard(embedding, num_documents):
      shard = stable_hash(embedding.id) % shard_count(num_documents, block_size)
      return shard, (embedding.id, _vector_of(embedding))

    return (
        embeddings
        | "KeyByShard" >> beam.Map(
            key_by_shard, beam.pvalue.AsSingleton(self._num_documents))
        | "GroupByShard" >> beam.GroupByKey()
        | "StackShard" >> beam.MapTuple(
            lambda shard, documents: (shard, stack_documents(documents))))


def _score_against_corpus(indexed_query_shard, corpus_shards,
                          k: int) -> Iterator[QueryNeighbours]:
  """One query shard against every corpus shard, a block at a time."""
  _, queries = indexed_query_shard
  best = {query_id: [] for query_id in queries.ids}
  for _, corpus in corpus_shards:  # streamed: one corpus shard in memory
    for query_id, neighbours in block_top_k(
        queries.ids, queries.vectors, corpus.ids, corpus.vectors, k):
      best[query_id] = merge_top_k([best[query_id], neighbours], k)
  yield from best.items()


def _check_k(k: int) -> None:
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise ValueError(
        f"The number of neighbours k must be an int >= 1, got {k!r}")


class ExactNeighbours(beam.PTransform):
  """Embedding -> {NEIGHBOURS: rows, STATS: one dict}, exactly.

  Args:
    k: neighbours per query (fewer when the corpus has fewer other documents).
    block_size: documents per shard (on average: shards are drawn by hash).
      A worker holds a query shard, a corpus shard and block_size x
      min(block_size, 1024) float32 scores; the corpus crosses the shuffle
      once, plus the side input it is streamed from.
    queries: optional query set; the input PCollection is then the corpus.
      Without it, every corpus document is a query.

  Rows: {"id", "rank", "neighbour_id", "score"}, rank 1 the best, ties broken
  by the smaller neighbour_id; the same as `brute_force_neighbours`.
  Stats: {"mode": "exact", "k", "block_size", "shards", "query_shards",
  "corpus_size", "queries"}.
  """

  def __init__(
      self,
      k: int,
      block_size: int = DEFAULT_BLOCK_SIZE,
      queries: Optional[beam.PCollection] = None):
    super().__init__()
    _check_k(k)
    if block_size < 1:
      raise ValueError(f"block_size must be at least 1, got {block_size}")
    self._k = k
    self._block_size = block_size
    self._queries = queries

  def expand(self, corpus):
    k, block_size = self._k, self._block_size
    corpus_size = corpus | "CountCorpus" >> beam.combiners.Count.Globally()
    corpus_shards = corpus | "ShardCorpus" >> _ShardEmbeddings(
        block_size, corpus_size)
    if self._queries is None:
      num_queries, query_shards = corpus_size, corpus_shards
    else:
      num_queries = (
          self._queries | "CountQueries" >> beam.combiners.Count.Globally())
      query_shards = self._queries | "ShardQueries" >> _ShardEmbeddings(
          block_size, num_queries)

    rows = (
        query_shards
        | "ScoreAgainstCorpus" >> beam.FlatMap(
            _score_against_corpus, beam.pvalue.AsIter(corpus_shards), k)
        | "ToRows" >> beam.FlatMapTuple(neighbour_rows))

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
    return {NEIGHBOURS: rows, STATS: stats_pcoll}


# ---------------------------------------------------------------------------
# Approximate mode: FAISS.


@dataclasses.dataclass(frozen=True)
class AnnIndexSettings:
  """How ApproximateNeighbours builds and searches its FAISS index."""
  hnsw_m: int = DEFAULT_HNSW_M
  ef_construction: int = DEFAULT_EF_CONSTRUCTION
  ef_search: int = DEFAULT_EF_SEARCH
  # Corpora smaller than this get an exact flat index instead of HNSW.
  flat_index_below: int = DEFAULT_FLAT_INDEX_BELOW


def build_index(corpus_vectors: np.ndarray, k: int,
                settings: AnnIndexSettings):
  """A FAISS inner-product index of normalised vectors, and its description."""
  import faiss  # pylint: disable=g-import-not-at-top

  n, dimensions = corpus_vectors.shape
  if n < settings.flat_index_below:
    index = faiss.IndexFlatIP(dimensions)
    description = "IndexFlatIP (exact inner product)"
  else:
    index = faiss.IndexHNSWFlat(dimensions, settings.hnsw_m,
                                faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    # The search keeps efSearch candidates: it must cover the K+1 asked for.
    ef_search = max(settings.ef_search, k + 1)
    index.hnsw.efSearch = ef_search
    description = (
        f"IndexHNSWFlat inner product, M={settings.hnsw_m}, "
        f"efConstruction={settings.ef_construction}, efSearch={ef_search}")
  index.add(np.ascontiguousarray(corpus_vectors, dtype=np.float32))
  return index, description


def ann_top_k(
    index,
    query_ids: Sequence[str],
    query_vectors: np.ndarray,
    corpus_ids: Sequence[str],
    corpus_vectors: np.ndarray,
    k: int,
    corpus_id_ranks: Optional[np.ndarray] = None) -> List[QueryNeighbours]:
  """The index's top K of every query, scored canonically like exact mode.

  Vectors normalised. Asks for K+1 so that dropping the query's own id
  still leaves K.
  """
  if not len(query_ids) or not len(corpus_ids):
    return []
  if corpus_id_ranks is None:
    corpus_id_ranks = _id_ranks(corpus_ids)
  _, labels = index.search(
      np.ascontiguousarray(query_vectors, dtype=np.float32),
      min(k + 1, len(corpus_ids)))
  corpus_id_array = np.asarray(corpus_ids, dtype=object)
  query_id_array = np.asarray(query_ids, dtype=object)
  # -1: the index found fewer than asked.
  found = labels >= 0
  found[found] = (
      corpus_id_array[labels[found]] !=
      np.broadcast_to(query_id_array[:, None], labels.shape)[found])
  rows, positions = np.nonzero(found)
  return [(query_ids[row], neighbours)
          for row, neighbours in _rank_candidates(
              query_vectors, corpus_vectors, corpus_ids, corpus_id_ranks,
              rows, labels[rows, positions], k)]


class _SearchIndexFn(beam.DoFn):
  """One corpus Shard in: its index, every query's top K, and the stats."""

  def __init__(self, k: int, recall_sample_size: int,
               settings: AnnIndexSettings, block_size: int):
    super().__init__()
    self._k = k
    self._recall_sample_size = recall_sample_size
    self._settings = settings
    self._block_size = block_size

  def process(self, corpus: Shard, queries: Optional[Shard] = None):
    k = self._k
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
    if corpus.ids and queries.ids:
      index, stats["index"] = build_index(corpus.vectors, k, self._settings)
      corpus_id_ranks = _id_ranks(corpus.ids)
      found = ann_top_k(index, queries.ids, queries.vectors, corpus.ids,
                        corpus.vectors, k, corpus_id_ranks)
      del index
      yield from found

      sample = recall_sample(queries.ids, self._recall_sample_size)
      position = {query_id: i for i, query_id in enumerate(queries.ids)}
      rows = [position[query_id] for query_id in sample]
      exact = dict(
          _blocked_top_k(sample, queries.vectors[rows], corpus.ids,
                         corpus.vectors, k, self._block_size))
      approximate = dict(found)
      stats["recall_at_k"] = recall_at_k(
          approximate,
          {query_id: exact.get(query_id, []) for query_id in sample})
      stats["recall_sample_size"] = len(sample)
    yield beam.pvalue.TaggedOutput(STATS, stats)


class _GatherShard(beam.PTransform):
  """Embedding -> one Shard holding every document (in one worker)."""

  def expand(self, embeddings):
    return (
        embeddings
        # Only what the index needs: no text, no per-token vectors.
        | "ToIdAndVector" >> beam.Map(
            lambda embedding: (embedding.id, _vector_of(embedding)))
        | "ToList" >> beam.combiners.ToList()
        | "Stack" >> beam.Map(stack_documents))


class ApproximateNeighbours(beam.PTransform):
  """Embedding -> {NEIGHBOURS: rows, STATS: one dict}, with a FAISS index.

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

  Rows as ExactNeighbours (canonical scores; among more tied duplicates than
  the index returned, which ones are listed is up to the index). Stats:
  {"mode": "ann", "k", "recall_at_k" (None if nothing to find),
  "recall_sample_size", "index" (description), "corpus_size", "queries"}.
  """

  def __init__(
      self,
      k: int,
      recall_sample_size: int = DEFAULT_RECALL_SAMPLE_SIZE,
      settings: AnnIndexSettings = AnnIndexSettings(),
      queries: Optional[beam.PCollection] = None,
      block_size: int = DEFAULT_BLOCK_SIZE):
    super().__init__()
    _check_k(k)
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

  def expand(self, corpus):
    corpus_shard = corpus | "GatherCorpus" >> _GatherShard()
    side_inputs = []
    if self._queries is not None:
      query_shard = self._queries | "GatherQueries" >> _GatherShard()
      side_inputs.append(beam.pvalue.AsSingleton(query_shard))
    results = corpus_shard | "SearchIndex" >> beam.ParDo(
        _SearchIndexFn(self._k, self._recall_sample_size, self._settings,
                       self._block_size), *side_inputs).with_outputs(
                           STATS, main=NEIGHBOURS)
    rows = (
        results[NEIGHBOURS]
        # One worker found them all: spread the rows out for the writers.
        | "SpreadQueries" >> beam.Reshuffle()
        | "ToRows" >> beam.FlatMapTuple(neighbour_rows))
    return {NEIGHBOURS: rows, STATS: results[STATS]}


class NearestNeighbours(beam.PTransform):
  """The neighbours stage: ExactNeighbours or ApproximateNeighbours by mode.

  Embedding (the corpus) -> {NEIGHBOURS: rows, STATS: one dict for the
  manifest}. `queries`: find the neighbours of these within the corpus
  instead of all against all.
  """

  def __init__(
      self,
      k: int,
      mode: str = EXACT,
      block_size: int = DEFAULT_BLOCK_SIZE,
      recall_sample_size: int = DEFAULT_RECALL_SAMPLE_SIZE,
      ann_settings: AnnIndexSettings = AnnIndexSettings(),
      queries: Optional[beam.PCollection] = None):
    super().__init__()
    if mode == EXACT:
      self._transform = ExactNeighbours(k, block_size, queries=queries)
    elif mode == ANN:
      self._transform = ApproximateNeighbours(
          k, recall_sample_size, ann_settings, queries=queries,
          block_size=block_size)
    else:
      raise ValueError(
          f"Unknown neighbours mode {mode!r}: use one of {', '.join(MODES)}")

  def expand(self, corpus):
    return corpus | self._transform
