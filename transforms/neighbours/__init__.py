"""Nearest neighbours stage: the K most similar other documents by cosine.

    Embedding ──NearestNeighbours──> {NEIGHBOUR_LISTS: (id, [(score,
                                                      neighbour_id)]),
                                      STATS: one dict for manifest.json}

Two modes, one output contract (the neighbours table of the design brief):

* exact (ExactNeighbours, exact.py, the default): blocked matrix products
  spread over the Beam graph, exactly a brute-force computation, a worker
  holding two shards of documents and one block of scores at a time.
* approximate (ApproximateNeighbours, approximate.py, `ann`): one worker
  builds a FAISS index of the whole corpus, queries it, and measures recall@K
  against the exact answer on a sample of queries, for the stats; given an
  index directory, it keeps the index there (INDEX_FILES).

Both find the neighbours of `queries` within the corpus when a query set is
given (e.g. new documents against yesterday's corpus), of every corpus
document otherwise. A corpus document is never its own neighbour (nor, at
chunk level, are its own chunks); queries of their own (--neighbours_of) are
a collection apart, matched with every corpus item, even one that shares
their id (`exclude_self` in maths.py). At chunk level
(--neighbours_level chunk) the items are chunks (Chunk records), and a chunk's
neighbours are other documents' chunks.

Scores are canonical cosines, the same for a pair in every block and mode
(maths.py says how).
"""

import dataclasses
from typing import Optional

import apache_beam as beam

from transforms.neighbours.approximate import AnnIndexSettings
from transforms.neighbours.approximate import ApproximateNeighbours
from transforms.neighbours.exact import ExactNeighbours
from transforms.neighbours.names import ANN
from transforms.neighbours.names import CHUNK
from transforms.neighbours.names import DEFAULT_BLOCK_SIZE
from transforms.neighbours.names import DEFAULT_RECALL_SAMPLE_SIZE
from transforms.neighbours.names import DOCUMENT
from transforms.neighbours.names import EXACT
from transforms.neighbours.names import INDEX_FILES
from transforms.neighbours.names import LEVELS
from transforms.neighbours.names import MODES
from transforms.neighbours.names import NEIGHBOUR_LISTS
from transforms.neighbours.names import STATS

__all__ = ["ANN", "CHUNK", "DOCUMENT", "EXACT", "INDEX_FILES", "LEVELS",
           "MODES", "NEIGHBOUR_LISTS", "STATS",
           "NearestNeighbours", "NeighbourSettings"]


@dataclasses.dataclass(frozen=True)
class NeighbourSettings:
  """What the neighbours stage computes: k neighbours per document (or per
  chunk, at level "chunk"), by mode (exact or ann), exact mode's block
  size."""
  k: int
  mode: str = EXACT
  block_size: int = DEFAULT_BLOCK_SIZE
  level: str = DOCUMENT


class NearestNeighbours(beam.PTransform):
  """The neighbours stage: ExactNeighbours or ApproximateNeighbours by mode.

  Embedding (the corpus) -> {NEIGHBOUR_LISTS: each query's neighbours, best
  first (the neighbours table's elements), STATS: one dict for the
  manifest}. `queries`: find the neighbours of these within the corpus
  instead of all against all. `index_dir`: in ann mode, keep the index there
  (its files under INDEX_FILES).
  """

  def __init__(
      self,
      settings: NeighbourSettings,
      recall_sample_size: int = DEFAULT_RECALL_SAMPLE_SIZE,
      ann_settings: AnnIndexSettings = AnnIndexSettings(),
      queries: Optional[beam.PCollection] = None,
      index_dir: Optional[str] = None):
    super().__init__()
    k, mode, block_size = settings.k, settings.mode, settings.block_size
    if settings.level not in LEVELS:
      raise ValueError(f"Unknown neighbours level {settings.level!r}: use one "
                       f"of {', '.join(LEVELS)}")
    if mode == EXACT:
      self._transform = ExactNeighbours(k, block_size, queries=queries,
                                        level=settings.level)
    elif mode == ANN:
      self._transform = ApproximateNeighbours(
          k, recall_sample_size, ann_settings, queries=queries,
          block_size=block_size, level=settings.level, index_dir=index_dir)
    else:
      raise ValueError(
          f"Unknown neighbours mode {mode!r}: use one of {', '.join(MODES)}")

  def expand(self, corpus):
    return corpus | self._transform
