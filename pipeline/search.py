"""A run searched with a question: the question embedded exactly like the
run's documents (pipeline/embedder.py: the run's model and settings from its
manifest), scored against every row of the run's embeddings, or of its
chunks when the run has them (--chunk_size), by cosine, exactly (numpy; runs
keep no ANN index). `python -m pipeline.query` prints what it finds.
"""

from typing import Optional

import numpy as np

from pipeline.embedder import Embedder
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.manifest import load_manifest
from run_directory.readers import ids_and_matrix
from run_directory.readers import read_table


def search(run_dir: str, question: str, k: int = 10,
           table: Optional[str] = None,
           embedder: Optional[Embedder] = None) -> list:
  """The run's k rows nearest the question: [(score, row dict)], best first
  (ties: the smaller id). table None: chunks if the run has them."""
  manifest = load_manifest(run_dir)
  if table is None:
    table = CHUNKS if CHUNKS in manifest["outputs"] else EMBEDDINGS
  rows = read_table(run_dir, table)
  ids, matrix = ids_and_matrix(rows, manifest)
  embedder = embedder or Embedder.from_run(run_dir)
  query = embedder.embed([question])[0].astype(np.float64)
  norms = np.linalg.norm(matrix, axis=1) * max(np.linalg.norm(query), 1e-12)
  scores = (matrix.astype(np.float64) @ query) / np.maximum(norms, 1e-12)
  best = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:k]
  columns = [name for name in ("id", "document_id", "text")
             if name in rows.column_names]
  picked = rows.select(columns).take(best).to_pylist()
  return [(float(scores[i]), row) for i, row in zip(best, picked)]
