"""Near-duplicate pairs, in numpy: every pair of documents with cosine >= T.

A pair's score is its cosine as `indexed_pair_scores` (neighbours/maths.py,
the neighbours' canonical score) computes it from the unit float32 vectors:
in float64, divided by the two vectors' own float64 norms, in a fixed order
(the same bits in every block and mode); a pair is in when
that score, as float32, is at least float32(T). Dividing by the norms again
matters at T = 1: a float32 unit vector's squared norm is 1 only to within
rounding, so its dot product with an identical copy can be 0.99999994, and
exact copies would be missed; divided by the norms it is exactly 1. The
float32 matrix product only picks candidates, with twice the margin of its
proven rounding error (the norms' rounding on top), so no pair at the
threshold is missed; the candidates are then scored exactly. Each unordered
pair is reported once, as (smaller id, larger id, score).

Also here: the reference answers the tests check the Beam stage against
(`brute_force_pairs`, `brute_force_groups`), and the union-find that both the
reference and the stage's last step use.
"""

from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np

from transforms.neighbours.maths import candidate_margin
from transforms.neighbours.maths import indexed_pair_scores
from transforms.neighbours.maths import normalize_rows
from transforms.neighbours.maths import QUERY_ROWS_PER_CHUNK

# (smaller id, larger id, score)
Pair = Tuple[str, str, float]


def block_pairs(left_ids: Sequence[str], left: np.ndarray,
                right_ids: Sequence[str], right: np.ndarray,
                threshold: float, same_block: bool) -> Iterator[Pair]:
  """The pairs of one block, scored by `indexed_pair_scores`: every (left,
  right) pair with score >= float32(threshold). Vectors normalised
  (`normalize_rows`).

  same_block: left and right are the same documents; each pair is then
  reported once and no document is paired with itself. Otherwise the two
  blocks hold different documents, and each pair is reported once anyway.
  """
  if not len(left_ids) or not len(right_ids):
    return
  cut = np.float32(threshold)
  margin = candidate_margin(left.shape[1])
  left_id_array = np.asarray(left_ids, dtype=object)
  right_id_array = np.asarray(right_ids, dtype=object)
  for start in range(0, len(left_ids), QUERY_ROWS_PER_CHUNK):
    block = left[start:start + QUERY_ROWS_PER_CHUNK]
    rows, cols = np.nonzero(block @ right.T >= cut - margin)
    if same_block:
      keep = left_id_array[start + rows] < right_id_array[cols]
      rows, cols = rows[keep], cols[keep]
    if not len(rows):
      continue
    scores = indexed_pair_scores(block, rows, right, cols)
    keep = scores >= cut
    for row, col, score in zip((start + rows[keep]).tolist(),
                               cols[keep].tolist(), scores[keep].tolist()):
      a, b = left_ids[row], right_ids[col]
      yield (a, b, score) if a < b else (b, a, score)


def brute_force_pairs(ids: Sequence[str], vectors,
                      threshold: float) -> List[Pair]:
  """The reference: every pair scored, then filtered. Small inputs only."""
  normalized = normalize_rows(vectors)
  n = len(ids)
  left, right = np.triu_indices(n, k=1)
  scores = indexed_pair_scores(normalized, left, normalized, right)
  cut = np.float32(threshold)
  pairs = []
  for i, j, score in zip(left.tolist(), right.tolist(), scores.tolist()):
    if score >= cut:
      a, b = sorted((ids[i], ids[j]))
      pairs.append((a, b, score))
  return sorted(pairs)


def union_find_roots(edges: Iterable[Tuple[str, str]]) -> Dict[str, str]:
  """Node -> the smallest node of its connected component, for every node of
  `edges`. In memory: for the reference, and for the few edges the Beam
  stage's rounds leave unresolved."""
  parent: Dict[str, str] = {}

  def find(node):
    root = node
    while parent[root] != root:
      root = parent[root]
    while parent[node] != root:  # path compression
      parent[node], node = root, parent[node]
    return root

  for a, b in edges:
    parent.setdefault(a, a)
    parent.setdefault(b, b)
    root_a, root_b = find(a), find(b)
    if root_a != root_b:  # the smaller id becomes the root
      low, high = sorted((root_a, root_b))
      parent[high] = low
  return {node: find(node) for node in parent}


def brute_force_groups(ids: Sequence[str], vectors,
                       threshold: float) -> Dict[str, str]:
  """The reference groups: document -> group id (its component's smallest
  id), for documents in a group of two or more."""
  return union_find_roots((a, b) for a, b, _ in
                          brute_force_pairs(ids, vectors, threshold))
