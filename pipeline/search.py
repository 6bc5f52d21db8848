"""A run searched with a question: the question embedded exactly like the
run's documents (pipeline/embedder.py: the run's model and settings from its
manifest), then scored by cosine against the run's embeddings, or its chunks
when the run has them (--chunk_size). The candidates come from the FAISS
index the run kept (--neighbours_mode ann, run_directory/ann_index.py) when
it is an index of the table searched, else from every row (numpy, exact);
`python -m pipeline.query` prints what it finds.
"""

import os
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.embedder import check_question
from pipeline.embedder import Embedder
from run_directory.ann_index import has_ann_index
from run_directory.ann_index import read_ann_index
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.layout import TFRECORD
from run_directory.manifest import load_manifest
from run_directory.readers import read_vectors
from transforms.neighbours.maths import normalize_rows


def search(run_dir: str, question: str, k: int = 10,
           table: Optional[str] = None,
           embedder: Optional[Embedder] = None,
           exact: bool = False, model: Optional[str] = None) -> list:
  """The run's k rows nearest the question: [(score, row dict)], best first
  (ties: the smaller id). table None: chunks if the run has them. exact:
  score every row even when the run kept an index of the table. model:
  where the run's model is now, if not at its manifest's path (see
  Embedder.from_run); with no embedder given."""
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be a whole number of hits, at least 1, not {k!r}")
  check_question(question)  # before the run's files and the model are read
  run_dir = os.fspath(run_dir)
  if table not in (None, EMBEDDINGS, CHUNKS):
    raise ValueError(f"table must be {EMBEDDINGS!r} or {CHUNKS!r} (the tables "
                     f"with vectors), not {table!r}")
  manifest = load_manifest(run_dir)
  if table is None:
    table = CHUNKS if CHUNKS in manifest["outputs"] else EMBEDDINGS
  elif table == CHUNKS and CHUNKS not in manifest["outputs"]:
    raise ValueError("The run has no chunks table (it was made without "
                     "--chunk_size): search its embeddings instead (--table "
                     "embeddings, or leave --table out)")
  # The TFRecord copy: its records carry checksums (Avro's snappy blocks
  # are read without checking theirs), so a damaged file is found.
  rows, ids, matrix = read_vectors(run_dir, table, TFRECORD)
  index = None
  if not exact and index_table(manifest) == table:
    # Read (and checked) before the model's seconds of loading.
    index = _checked_index(run_dir, manifest, ids, matrix)
  embedder = embedder or Embedder.from_run(run_dir, model=model)
  query = embedder.embed_query(question)
  candidates = None
  if index is not None:
    candidates = _index_candidates(*index, query, k)
    if len(candidates) < min(k, len(ids)):
      # HNSW reaches about efSearch rows: a larger k is answered by scoring
      # every row, not cut short.
      candidates = None
  if candidates is None:
    candidates, scores = np.arange(len(ids)), _cosines(matrix, query)
  else:
    scores = _cosines(matrix[candidates], query)
  # Scored alike either way: the index only chooses which rows.
  order = _best_first(scores, lambda c: ids[candidates[c]], k)
  best = [int(candidates[c]) for c in order]
  columns = [name for name in ("id", "document_id", "text")
             if name in rows.column_names]
  picked = rows.select(columns).take(best).to_pylist()
  return [(float(scores[c]), row) for c, row in zip(order, picked)]


def index_table(manifest: dict) -> Optional[str]:
  """The table whose rows the run's FAISS index holds; None without one. As
  the neighbours: documents, or with --neighbours_level chunk the chunks."""
  if not has_ann_index(manifest):
    return None
  # "settings" is an object (load_manifest checks it); its parts may not be.
  neighbours = manifest.get("settings", {}).get("neighbours")
  level = (neighbours.get("neighbours_level")
           if isinstance(neighbours, dict) else None)
  return CHUNKS if level == "chunk" else EMBEDDINGS


def _checked_index(run_dir: str, manifest: dict, ids: Sequence[str],
                   matrix: np.ndarray):
  """(index, row of each of its ids in `ids`), once the index is found to
  hold exactly the table's rows, in the order of its ids."""
  dimensions = matrix.shape[1]
  # Imported here, not at the top: FAISS costs start-up, and only runs made
  # with --neighbours_mode=ann keep an index.
  import faiss  # pylint: disable=g-import-not-at-top
  index, index_ids = read_ann_index(
      run_dir, manifest,
      lambda read: faiss.read_index(faiss.PyCallbackIOReader(read)))
  index_id_set, id_set = set(index_ids), set(ids)
  only_in_index, only_in_table = index_id_set - id_set, id_set - index_id_set
  if only_in_index or only_in_table:
    raise ValueError(
        "The run's FAISS index (ann_index/) does not hold the rows of its "
        f"table: {len(only_in_index)} ids only in the index, "
        f"{len(only_in_table)} only in the table. Search with --exact.")
  if index.d != dimensions:
    raise ValueError(
        "The run's FAISS index (ann_index/) holds vectors of "
        f"{index.d} dimensions, its table {dimensions}. Search with --exact.")
  position = {item_id: row for row, item_id in enumerate(ids)}
  rows = np.asarray([position[i] for i in index_ids], dtype=np.int64)
  _check_index_order(index, rows, matrix)
  return index, rows


# Candidates asked of the index beyond 2 k (see _index_candidates).
_EXTRA_CANDIDATES = 8
# Rows of the index compared with the table at a time.
_CHECK_BLOCK = 65536


def _check_index_order(index, rows: np.ndarray, matrix: np.ndarray):
  """Row i of the index must be the unit vector of table row rows[i]: an
  ids file out of order would give other documents' hits, silently."""
  for start in range(0, index.ntotal, _CHECK_BLOCK):
    stored = index.reconstruct_n(start, min(_CHECK_BLOCK,
                                            index.ntotal - start))
    # Normalised as the neighbours stage normalised what it indexed.
    table = normalize_rows(matrix[rows[start:start + len(stored)]])
    wrong = np.flatnonzero(np.abs(stored - table).max(axis=1) > 1e-4)
    if len(wrong):
      raise ValueError(
          "The run's FAISS index (ann_index/) does not hold its table's "
          f"vectors in the order of its ids file (row {start + wrong[0]} "
          "first): search with --exact.")


def _index_candidates(index, rows: np.ndarray, query: np.ndarray,
                      k: int) -> np.ndarray:
  """Rows of the table that the index finds nearest the query: more than k,
  so that rows tied with the k-th (copies of one text) are all scored, and
  the smaller id wins as it does when every row is scored."""
  _, labels = index.search(normalize_rows(query[None, :]),
                           min(2 * k + _EXTRA_CANDIDATES, index.ntotal))
  return rows[labels[0][labels[0] >= 0]]


def _best_first(scores: np.ndarray, id_of: Callable[[int], str],
                k: int) -> list:
  """Positions of the k best scores, best first, ties to the smaller id.
  numpy finds the k-th best score in linear time, so only the scores that
  reach it (k, and any tied with the k-th) are sorted in Python."""
  pool = np.arange(len(scores))
  if len(scores) > k:
    kth_best = np.partition(scores, len(scores) - k)[len(scores) - k]
    pool = np.flatnonzero(scores >= kth_best)
  return sorted(pool.tolist(),
                key=lambda c: (-scores[c], id_of(c)))[:k]


def _cosines(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
  """Each row's cosine to the query, row by row (not a matrix product, whose
  rounding depends on which rows are scored together): a row scores the
  same bits whether all rows are scored or the index's few."""
  rows, query = rows.astype(np.float64), query.astype(np.float64)
  norms = np.sqrt((rows * rows).sum(axis=1)) * max(
      np.sqrt((query * query).sum()), 1e-12)
  return (rows * query).sum(axis=1) / np.maximum(norms, 1e-12)
