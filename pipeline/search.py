"""A run searched with a question: the question embedded exactly like the
run's documents (pipeline/embedder.py: the run's model and settings from its
manifest), then scored by cosine against the run's embeddings, or its chunks
when the run has them (--chunk_size). The candidates come from the FAISS
index the run kept (--neighbours_mode ann, run_directory/ann_index.py) when
it indexed the table searched, else from every row (numpy, exact);
`python -m pipeline.query` prints what it finds.
"""

from typing import Optional, Sequence

import numpy as np

from pipeline.embedder import Embedder
from run_directory.ann_index import ann_index_table
from run_directory.ann_index import read_ann_index
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.manifest import load_manifest
from run_directory.readers import ids_and_matrix
from run_directory.readers import read_table


def search(run_dir: str, question: str, k: int = 10,
           table: Optional[str] = None,
           embedder: Optional[Embedder] = None,
           exact: bool = False) -> list:
  """The run's k rows nearest the question: [(score, row dict)], best first
  (ties: the smaller id). table None: chunks if the run has them. exact:
  score every row even when the run kept an index of the table."""
  manifest = load_manifest(run_dir)
  if table is None:
    table = CHUNKS if CHUNKS in manifest["outputs"] else EMBEDDINGS
  rows = read_table(run_dir, table)
  ids, matrix = ids_and_matrix(rows, manifest)
  embedder = embedder or Embedder.from_run(run_dir)
  query = embedder.embed([question])[0]
  if not exact and ann_index_table(manifest) == table:
    candidates = _index_candidates(run_dir, manifest, query, k, ids)
  else:
    candidates = np.arange(len(ids))
  # Scored alike either way: the index only chooses which rows.
  scores = _cosines(matrix[candidates], query)
  order = sorted(range(len(candidates)),
                 key=lambda c: (-scores[c], ids[candidates[c]]))[:k]
  best = [int(candidates[c]) for c in order]
  columns = [name for name in ("id", "document_id", "text")
             if name in rows.column_names]
  picked = rows.select(columns).take(best).to_pylist()
  return [(float(scores[c]), row) for c, row in zip(order, picked)]


def _index_candidates(run_dir: str, manifest: dict, query: np.ndarray,
                      k: int, ids: Sequence[str]) -> np.ndarray:
  """Rows (positions in `ids`) of the index's top k for the query."""
  # Imported here, not at the top: FAISS costs start-up, and only runs made
  # with --neighbours_mode=ann keep an index.
  import faiss  # pylint: disable=g-import-not-at-top
  index, index_ids = read_ann_index(
      run_dir, manifest,
      lambda read: faiss.read_index(faiss.PyCallbackIOReader(read)))
  position = {item_id: i for i, item_id in enumerate(ids)}
  unknown = set(index_ids) - position.keys()
  if unknown:
    raise ValueError(
        f"The run's index holds ids its table lacks, e.g. {min(unknown)!r}")
  normalised = query / max(float(np.linalg.norm(query)), 1e-12)
  _, labels = index.search(
      np.ascontiguousarray(normalised[None, :], dtype=np.float32),
      min(k, index.ntotal))
  return np.asarray([position[index_ids[label]] for label in labels[0]
                     if label >= 0], dtype=np.int64)


def _cosines(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
  rows, query = rows.astype(np.float64), query.astype(np.float64)
  norms = np.linalg.norm(rows, axis=1) * max(np.linalg.norm(query), 1e-12)
  return (rows @ query) / np.maximum(norms, 1e-12)
