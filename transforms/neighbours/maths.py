"""The neighbour maths, in numpy: no Beam.

Scores. Every reported score is the canonical cosine of a pair: the float64
sum of the exact products of the two L2-normalised float32 vectors, divided
by their own float64 norms, rounded once to float32 (`pair_scores`). It is a
function of the two vectors only, so a pair gets the same bits in every
block, in `exact_top_k` and in ANN mode, and duplicate vectors tie exactly.
Dividing by the norms again matters: a float32 unit vector's squared norm is
1 only to within rounding, so without it an exact copy could score
0.99999994 and rank below a vector that is not one; with it the score is the
float32 of the cosine of the vectors as the table stores them, what a
brute-force query over the table (DuckDB, BigQuery) computes. The float32
matrix product (fast, but its last bits depend on the matrix shapes) only
chooses candidates, with a margin larger than its proven rounding error (the
norms' rounding on top); the candidates are then re-scored canonically and
ordered by (higher score, smaller neighbour_id).

Also here: the stable hash that shards documents, the recall sample and
recall@K, and `Shard` (a block of documents: sorted ids, normalised vectors).
"""

import dataclasses
import hashlib
import heapq
import itertools
import math
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from run_directory.records import document_of_chunk
from run_directory.records import Embedding
from transforms.neighbours.names import CHUNK
from transforms.neighbours.names import DEFAULT_BLOCK_SIZE
from transforms.neighbours.names import DOCUMENT

# Query rows scored at once inside a block: bounds the score matrix (and its
# partitioned copy) to QUERY_ROWS_PER_CHUNK x corpus shard rows float32.
QUERY_ROWS_PER_CHUNK = 1024
# Candidate pairs re-scored at once: keeps the float64 products in cache.
PAIRS_PER_CHUNK = 256

# One neighbour of a query: (score, neighbour_id).
Neighbour = Tuple[float, str]
# A query's neighbours, best first.
QueryNeighbours = Tuple[str, List[Neighbour]]


def same_id(item_id: str) -> str:
  """A document's owner: the document itself."""
  return item_id


# Level -> the owner of an id. A query is never matched with an item of the
# same owner: a document with itself, a chunk with its own document's chunks
# (a chunk id is "<document id>#<index>").
OWNERS = {DOCUMENT: same_id, CHUNK: document_of_chunk}


# A row whose norm is within this of 1 is already a unit vector (a model's
# L2-normalised float32 output is off 1 by about one ulp): it is kept as it
# is, bit for bit.
UNIT_NORM_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def normalize_rows(matrix) -> np.ndarray:
  """float32 rows scaled to unit L2 norm; an all-zero row stays zero.

  The norm is taken in float64, row by row, so a row's result depends on that
  row only: identical vectors stay identical wherever they are. A row that
  is already a unit vector (`UNIT_NORM_TOLERANCE`) is returned unchanged:
  dividing it by its norm would move its last bits, and with them the
  canonical scores away from the cosine of the vectors as the table stores
  them (what DuckDB or BigQuery compute over it).
  """
  matrix = np.asarray(matrix, dtype=np.float32)
  if matrix.ndim != 2:
    raise ValueError(f"Expected a [rows, hidden] matrix, got {matrix.shape}")
  norms = np.sqrt(np.square(matrix, dtype=np.float64).sum(axis=1))
  # A zero vector has no direction: it stays zero, cosine 0 with everything.
  norms[norms == 0] = 1.0
  norms[np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE] = 1.0
  return (matrix / norms[:, None]).astype(np.float32)


def pair_scores(left: np.ndarray, right: np.ndarray) -> np.ndarray:
  """Canonical scores of row pairs: float32(a . b / sqrt(|a|^2 |b|^2)).

  left, right: float32 [P, H], normalised. All in float64 (products of
  float32 values are exact there), summed in a fixed order, so the result
  depends on the two rows only (and is symmetric). Identical vectors score
  exactly 1 (the sqrt of a correctly rounded square is the number itself);
  a zero vector scores 0.
  """
  return indexed_pair_scores(left, np.arange(len(left)), right,
                              np.arange(len(right)))


def indexed_pair_scores(left: np.ndarray, left_rows: np.ndarray,
                         right: np.ndarray, right_rows: np.ndarray):
  """pair_scores(left[left_rows], right[right_rows]), gathered in small
  chunks: cache-sized temporaries instead of fresh [P, H] float64 arrays."""
  scores = np.empty(len(left_rows), dtype=np.float32)
  for start in range(0, len(left_rows), PAIRS_PER_CHUNK):
    end = start + PAIRS_PER_CHUNK
    a = left[left_rows[start:end]].astype(np.float64)
    b = right[right_rows[start:end]].astype(np.float64)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    dots = (a * b).sum(axis=1)
    scores[start:end] = np.divide(dots, norms, out=np.zeros_like(dots),
                                  where=norms > 0)
  return scores


def candidate_margin(hidden_size: int) -> float:
  """How far below a canonical score the float32 matrix product of the same
  unit vectors may fall: the product's rounding, the unit vectors' norms off
  1 by as much again, and by UNIT_NORM_TOLERANCE for rows kept as stored."""
  return 2 * gemm_tolerance(hidden_size) + 2 * UNIT_NORM_TOLERANCE


def gemm_tolerance(hidden_size: int) -> float:
  """Twice a bound on |float32 matrix product - canonical score|.

  A float32 dot product of length H has an error of at most H u |x||y|
  (u = 2^-24, any summation order, FMA or not); the canonical score is off by
  at most u. Anything that can rank in the exact top K then scores, in the
  matrix product, at least the K-th product score minus twice that.
  """
  return (hidden_size + 2) * float(np.finfo(np.float32).eps) * 1.001


# Below any score of finite vectors, above the -inf that marks a query itself.
_LOWEST_FLOAT32 = np.finfo(np.float32).min


def id_ranks(ids: Sequence[str]) -> np.ndarray:
  """Each id's position in sorted order: the numeric tie-breaking key."""
  order = sorted(range(len(ids)), key=ids.__getitem__)
  ranks = np.empty(len(ids), dtype=np.int64)
  ranks[order] = np.arange(len(ids))
  return ranks


def rank_candidates(
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
  scores = indexed_pair_scores(query_vectors, rows, corpus_vectors, cols)
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
    exclude_self: bool = True,
    owner=same_id) -> List[QueryNeighbours]:
  """The top K corpus documents of every query, within one block.

  Vectors: float32 [n, H] rows of `normalize_rows`. Returns
  [(query_id, [(score, neighbour_id), ...])] in query order, each list best
  first (higher score, then smaller neighbour_id), at most K long; queries
  without any candidate are left out. With exclude_self, a query is never
  matched with a corpus item of the same owner (`OWNERS`: the same id for
  documents, the same document for chunks).

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
  tolerance = candidate_margin(corpus_vectors.shape[1])
  corpus_id_ranks = id_ranks(corpus_ids)
  corpus_positions = {}
  if exclude_self:
    for position, corpus_id in enumerate(corpus_ids):
      corpus_positions.setdefault(owner(corpus_id), []).append(position)

  results = []
  for start in range(0, len(query_ids), QUERY_ROWS_PER_CHUNK):
    chunk = query_vectors[start:start + QUERY_ROWS_PER_CHUNK]
    scores = chunk @ corpus_vectors.T
    for row in range(len(chunk)):
      for col in corpus_positions.get(owner(query_ids[start + row]), ()):
        scores[row, col] = -np.inf
    # The K-th best product score of each row; -inf when a row has fewer than
    # K candidates, and then all its finite scores are candidates.
    kth_best = np.partition(scores, n_corpus - kept, axis=1)[:, n_corpus - kept]
    threshold = np.maximum(kth_best - tolerance, _LOWEST_FLOAT32)
    rows, cols = np.nonzero(scores >= threshold[:, None])
    for row, neighbours in rank_candidates(
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
    exclude_self: bool = True,
    owner=same_id) -> List[QueryNeighbours]:
  """ExactNeighbours in one process: blocks of `block_top_k`, merged.

  Raw (unnormalised) vectors in. Returns [(query_id, top K)] in query order,
  queries without neighbours left out; the same lists as ExactNeighbours.
  """
  return blocked_top_k(query_ids, normalize_rows(query_vectors), corpus_ids,
                        normalize_rows(corpus_vectors), k, block_size,
                        exclude_self, owner)


def blocked_top_k(query_ids, queries, corpus_ids, corpus, k, block_size,
                  exclude_self=True, owner=same_id) -> List[QueryNeighbours]:
  """exact_top_k of vectors already normalised (re-normalising could move
  their last bits, and with them the canonical scores)."""
  corpus_ids = list(corpus_ids)
  best = {}
  for start in range(0, len(corpus_ids), block_size):
    end = start + block_size
    for query_id, neighbours in block_top_k(
        query_ids, queries, corpus_ids[start:end], corpus[start:end], k,
        exclude_self, owner):
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
    query_vectors=None,
    owner=same_id,
    exclude_self: bool = True) -> List[QueryNeighbours]:
  """The reference answer: every pair scored, then sorted. Small inputs only.

  Scores are `pair_scores` of every pair (the float32 of the cosine of the
  vectors, computed in float64); neighbours of
  `query_ids` within `ids` (of `ids` themselves by default), with
  exclude_self never an item of the query's own owner (its own id, or for
  chunks its own document): off for queries of their own (--neighbours_of).
  Same return shape as `exact_top_k`.
  """
  if query_ids is None:
    query_ids, query_vectors = ids, vectors
  corpus = normalize_rows(vectors)
  queries = normalize_rows(query_vectors)
  rows, cols = np.divmod(np.arange(len(queries) * len(corpus)), len(corpus))
  scores = indexed_pair_scores(queries, rows, corpus, cols).reshape(
      len(queries), len(corpus)).tolist()
  results = []
  for query_id, row in zip(query_ids, scores):
    neighbours = sorted(
        ((score, corpus_id)
         for score, corpus_id in zip(row, ids)
         if not exclude_self or owner(corpus_id) != owner(query_id)),
        key=_neighbour_order)[:k]
    if neighbours:
      results.append((query_id, neighbours))
  return results


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


@dataclasses.dataclass(frozen=True, eq=False)
class Shard:
  """A shard of documents: ids sorted, and their normalised vectors."""
  ids: Tuple[str, ...]
  vectors: np.ndarray  # float32 [len(ids), H], rows of normalize_rows


def vector_of(embedding: Embedding) -> np.ndarray:
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


def check_k(k: int) -> None:
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise ValueError(
        f"The number of neighbours k must be an int >= 1, got {k!r}")
