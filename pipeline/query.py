"""Searches a run with a question: the quickest way to see an index work.

  python -m pipeline.query RUN_DIR "how do I define a function?" [--k 10]
      [--table embeddings|chunks]

The question is embedded exactly like the run's documents
(pipeline/embedder.py: the run's model and settings from its manifest), and
scored against every row of the run's embeddings, or of its chunks when the
run has them (--chunk_size), by cosine, exactly (numpy; runs keep no ANN
index). Prints rank, score, id (and the chunk's document) and the start of
the text.
"""

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from pipeline.embedder import Embedder
from run_directory.layout import CHUNKS
from run_directory.layout import EMBEDDINGS
from run_directory.manifest import load_manifest
from run_directory.readers import ids_and_matrix
from run_directory.readers import read_table

_SNIPPET_CHARS = 100


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


def _snippet(text: Optional[str]) -> str:
  if not text:
    return ""
  text = " ".join(text.split())
  return text if len(text) <= _SNIPPET_CHARS else (
      text[:_SNIPPET_CHARS - 1] + "\u2026")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.query", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("run_dir", help="A published run directory.")
  parser.add_argument("question", help="The text to search with.")
  parser.add_argument("--k", type=int, default=10,
                      help="Hits to print (default: %(default)s).")
  parser.add_argument("--table", choices=(EMBEDDINGS, CHUNKS),
                      help="What to search. Default: the chunks when the "
                      "run has them, else the embeddings.")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.k < 1:
    parser.error("--k must be at least 1")
  try:
    hits = search(args.run_dir, args.question, args.k, args.table)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"pipeline.query: error: {e}", file=sys.stderr)
    return 2
  for rank, (score, row) in enumerate(hits, start=1):
    owner = f"  ({row['document_id']})" if "document_id" in row else ""
    print(f"{rank:>3}  {score:.4f}  {row['id']}{owner}  "
          f"{_snippet(row.get('text'))}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
