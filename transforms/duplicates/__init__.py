"""Near-duplicate groups stage (--duplicate_threshold T).

    Embedding ──pairs (cosine >= T)──> ConnectedComponents ──> {
        DUPLICATE_ROWS: {id, group_id, group_size, representative, max_score},
        STATS: one dict for manifest.json}

Groups are the connected components of the graph of all pairs with cosine
>= T (`indexed_pair_scores`), literally all of them: a document with 40
duplicates finds all 40, whatever --neighbours_k. A group's id is its
smallest document id, which is also its representative. Only documents in a
group of two or more get a row.

* exact (the default, --neighbours_mode exact): the pairs come from the same
  blocked matrix products as the exact neighbours (shards by stable hash,
  streamed past each other), each pair of shards once; the same pairs as
  brute force.
* ann: one worker range-searches a FAISS index of the whole corpus for
  candidates above T (less the float32 margin), scores them as exact mode does,
  and measures the recall of pairs against the exact pairs of a sample of
  documents, for the stats.

The components are computed in Beam (components.py), so the stage scales with
the runner.
"""

import dataclasses

import apache_beam as beam
import numpy as np

from transforms.duplicates.components import ConnectedComponents
from transforms.duplicates.components import DEFAULT_ROUNDS
from transforms.duplicates.pairs import block_pairs
from transforms.neighbours.approximate import AnnIndexSettings
from transforms.neighbours.approximate import build_index
from transforms.neighbours.approximate import GatherShard
from transforms.neighbours.exact import ShardEmbeddings
from transforms.neighbours.maths import candidate_margin
from transforms.neighbours.maths import indexed_pair_scores
from transforms.neighbours.maths import recall_sample
from transforms.neighbours.names import ANN
from transforms.neighbours.names import DEFAULT_BLOCK_SIZE
from transforms.neighbours.names import DEFAULT_RECALL_SAMPLE_SIZE
from transforms.neighbours.names import EXACT
from transforms.neighbours.names import STATS

DUPLICATE_ROWS = "duplicate_rows"

__all__ = ["DUPLICATE_ROWS", "STATS", "DuplicateSettings", "NearDuplicates"]


@dataclasses.dataclass(frozen=True)
class DuplicateSettings:
  """threshold: cosine in (0, 1]; mode: exact or ann (as the neighbours);
  block_size: documents per shard in exact mode."""
  threshold: float
  mode: str = EXACT
  block_size: int = DEFAULT_BLOCK_SIZE
  recall_sample_size: int = DEFAULT_RECALL_SAMPLE_SIZE
  rounds: int = DEFAULT_ROUNDS

  def __post_init__(self):
    if not 0 < self.threshold <= 1:
      raise ValueError(f"threshold must be in (0, 1], not {self.threshold}")
    if self.mode not in (EXACT, ANN):
      raise ValueError(f"Unknown duplicates mode {self.mode!r}")


def _pairs_of_shard(indexed_shard, corpus_shards, threshold):
  """One shard against itself and every shard of a higher index."""
  index, shard = indexed_shard
  for other_index, other in corpus_shards:  # streamed
    if other_index >= index:
      yield from block_pairs(shard.ids, shard.vectors, other.ids,
                             other.vectors, threshold,
                             same_block=other_index == index)


class _ExactPairs(beam.PTransform):

  def __init__(self, settings: DuplicateSettings):
    super().__init__()
    self._settings = settings

  def expand(self, embeddings):
    size = embeddings | "Count" >> beam.combiners.Count.Globally()
    shards = embeddings | "Shard" >> ShardEmbeddings(self._settings.block_size,
                                                     size)
    pairs = shards | "PairsOfShards" >> beam.FlatMap(
        _pairs_of_shard, beam.pvalue.AsIter(shards), self._settings.threshold)
    return {"pairs": pairs,
            STATS: size | "Stats" >> beam.Map(lambda _: {})}


def _range_search_pairs(corpus, threshold: float, sample_size: int):
  """Pairs of one Shard by FAISS range search; the recall of pairs on a
  sample (tagged STATS)."""
  cut = np.float32(threshold)
  stats = {"pair_recall": None, "recall_sample_size": 0, "index": None}
  found = []
  if len(corpus.ids) > 1:
    index, stats["index"] = build_index(corpus.vectors, 1, AnnIndexSettings())
    margin = candidate_margin(corpus.vectors.shape[1])
    limits, _, labels = index.range_search(
        np.ascontiguousarray(corpus.vectors), float(cut - margin))
    rows = np.repeat(np.arange(len(corpus.ids)),
                     np.diff(limits.astype(np.int64)))
    keep = rows < labels  # each pair once, never a document with itself
    rows, cols = rows[keep], labels[keep]
    scores = indexed_pair_scores(corpus.vectors, rows, corpus.vectors, cols)
    keep = scores >= cut
    found = [(corpus.ids[r], corpus.ids[c], s) for r, c, s in zip(
        rows[keep].tolist(), cols[keep].tolist(), scores[keep].tolist())]
    sample = set(recall_sample(corpus.ids, sample_size))
    positions = [i for i, doc_id in enumerate(corpus.ids) if doc_id in sample]
    exact = {(a, b) for a, b, _ in block_pairs(
        [corpus.ids[i] for i in positions], corpus.vectors[positions],
        corpus.ids, corpus.vectors, threshold, same_block=False) if a != b}
    if exact:
      approximate = {(a, b) for a, b, _ in found
                     if a in sample or b in sample}
      stats["pair_recall"] = len(exact & approximate) / len(exact)
    stats["recall_sample_size"] = len(positions)
  yield from found
  yield beam.pvalue.TaggedOutput(STATS, stats)


class _ApproximatePairs(beam.PTransform):

  def __init__(self, settings: DuplicateSettings):
    super().__init__()
    self._settings = settings

  def expand(self, embeddings):
    results = (embeddings
               | "Gather" >> GatherShard()
               | "RangeSearch" >> beam.FlatMap(
                   _range_search_pairs, self._settings.threshold,
                   self._settings.recall_sample_size).with_outputs(
                       STATS, main="pairs"))
    return {"pairs": results["pairs"], STATS: results[STATS]}


def _member(grouped):
  """(id, {group, score}) -> (group id, (id, its highest score))."""
  document_id, values = grouped
  return values["group"][0], (document_id, max(values["score"]))


def _rows_of_group(grouped):
  """(group id, {members, size}) -> the duplicates rows of its members."""
  group_id, values = grouped
  size = values["size"][0]
  for document_id, max_score in values["members"]:
    yield {
        "id": document_id,
        "group_id": group_id,
        "group_size": size,
        "representative": document_id == group_id,
        "max_score": max_score,
    }


def _stats(search_stats, settings, pairs, groups, documents, unresolved):
  return {"threshold": settings.threshold, "mode": settings.mode,
          "pairs": pairs, "groups": groups, "documents": documents,
          "unresolved_after_rounds": unresolved, **search_stats}


class NearDuplicates(beam.PTransform):
  """Embedding -> {DUPLICATE_ROWS: rows, STATS: one dict} (module doc).

  Stats: {"threshold", "mode", "pairs", "groups", "documents" (in groups),
  "unresolved_after_rounds"; ann: "pair_recall", "recall_sample_size",
  "index"}.
  """

  def __init__(self, settings: DuplicateSettings):
    super().__init__()
    self._settings = settings

  def expand(self, embeddings):
    s = self._settings
    search = embeddings | "Pairs" >> (
        _ExactPairs(s) if s.mode == EXACT else _ApproximatePairs(s))
    pairs = search["pairs"]
    components = (pairs
                  | "ToEdges" >> beam.MapTuple(lambda a, b, _: (a, b))
                  | "Components" >> ConnectedComponents(s.rounds))
    labels = components["labels"]
    max_scores = (pairs
                  | "ScoreOfEachEnd" >> beam.FlatMapTuple(
                      lambda a, b, score: [(a, score), (b, score)])
                  | "MaxScore" >> beam.CombinePerKey(max))
    sizes = (labels
             | "ByGroup" >> beam.MapTuple(lambda _, group: (group, 1))
             | "GroupSizes" >> beam.CombinePerKey(sum))
    members = ({"group": labels, "score": max_scores}
               | "JoinScores" >> beam.CoGroupByKey()
               | "ToMembers" >> beam.Map(_member))
    rows = ({"members": members, "size": sizes}
            | "JoinSizes" >> beam.CoGroupByKey()
            | "ToRows" >> beam.FlatMap(_rows_of_group))

    def count(pcollection, name):
      return beam.pvalue.AsSingleton(
          pcollection | f"Count{name}" >> beam.combiners.Count.Globally())

    stats = search[STATS] | "Stats" >> beam.Map(
        _stats, s, count(pairs, "Pairs"), count(sizes, "Groups"),
        count(labels, "Documents"), beam.pvalue.AsSingleton(
            components["unresolved"]))
    return {DUPLICATE_ROWS: rows, STATS: stats}
