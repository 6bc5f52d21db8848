"""Connected components in Beam: each node labelled with its component's
smallest id, at any scale, deterministically.

The rounds are the Large-Star / Small-Star algorithm of Kiveris et al.,
"Connected Components in MapReduce and Beyond" (SoCC 2014): each round
groups the edges by node and rewires them towards smaller ids, so the graph
turns into stars around each component's smallest node, in O(log^2 n)
rounds at worst and a few in practice. The rounds are unrolled in the graph
(a Beam graph is fixed before it runs). Whatever the rounds left unresolved
(edges whose two ends still carry different labels: none, once the stars
have formed) is joined in one worker with a union-find over those labels
only, so the result is exact whatever the graph.

Every step is a function of the edge set, never of arrival order: the same
labels on every runner and rerun.
"""

import apache_beam as beam

from transforms.duplicates.pairs import union_find_roots

# Large-Star + Small-Star alternations unrolled in the graph.
DEFAULT_ROUNDS = 6


def _both_directions(edge):
  a, b = edge
  yield a, b
  yield b, a


def _large_star(grouped):
  """Node u: its larger neighbours are linked to its smallest neighbour."""
  node, neighbours = grouped
  neighbours = set(neighbours)
  smallest = min(neighbours | {node})
  for neighbour in neighbours:
    if neighbour > node:
      yield smallest, neighbour


def _small_star(grouped):
  """Node u: u and its smaller neighbours are linked to the smallest."""
  node, neighbours = grouped
  # Without smaller neighbours, its edges to larger nodes are those nodes'
  # to rewire.
  smaller = {neighbour for neighbour in neighbours if neighbour < node}
  if smaller:
    smallest = min(smaller)
    for neighbour in smaller | {node}:
      if neighbour != smallest:
        yield smallest, neighbour


def _smallest_of_star(grouped):
  node, neighbours = grouped
  return node, min(set(neighbours) | {node})


def _fixed_label(node_and_label, fixes):
  node, label = node_and_label
  return node, fixes.get(label, label)


class _Round(beam.PTransform):
  """One rewiring of the edges: (a, b) with a < b in, the same out."""

  def __init__(self, star):
    super().__init__()
    self._star = star

  def expand(self, edges):
    return (edges
            | "BothDirections" >> beam.FlatMap(_both_directions)
            | "GroupByNode" >> beam.GroupByKey()
            | "Rewire" >> beam.FlatMap(self._star)
            | "Distinct" >> beam.Distinct())


class ConnectedComponents(beam.PTransform):
  """Edges (a, b) (ids, a < b) -> (node, label) for every node of an edge,
  label = the smallest id of its component. Also returns the number of
  edges left unresolved by the rounds (under "unresolved"), for the stats.
  """

  def __init__(self, rounds: int = DEFAULT_ROUNDS):
    super().__init__()
    self._rounds = rounds

  def expand(self, edges):
    for i in range(self._rounds):
      edges = (edges
               | f"LargeStar{i}" >> _Round(_large_star)
               | f"SmallStar{i}" >> _Round(_small_star))
    labels = (edges
              | "BothDirections" >> beam.FlatMap(_both_directions)
              | "GroupByNode" >> beam.GroupByKey()
              | "Label" >> beam.Map(_smallest_of_star))
    # Edges whose ends still have different labels (none once converged):
    # their labels are merged in one worker.
    by_first = ({"edge": edges, "label": labels}
                | "JoinFirstEnd" >> beam.CoGroupByKey()
                | "ToSecondEnd" >> beam.FlatMap(
                    lambda grouped: [(b, grouped[1]["label"][0])
                                     for b in grouped[1]["edge"]]))
    unresolved = (
        {"first_label": by_first, "label": labels}
        | "JoinSecondEnd" >> beam.CoGroupByKey()
        | "LabelPairs" >> beam.FlatMap(
            lambda grouped: [(first, grouped[1]["label"][0])
                             for first in grouped[1]["first_label"]
                             if first != grouped[1]["label"][0]])
        | "DistinctLabelPairs" >> beam.Distinct())
    fixes = (unresolved
             | "GatherUnresolved" >> beam.combiners.ToList()
             | "MergeLabels" >> beam.Map(union_find_roots))
    return {
        "labels": labels | "FixLabels" >> beam.Map(
            _fixed_label, beam.pvalue.AsSingleton(fixes)),
        "unresolved": unresolved | "CountUnresolved" >> (
            beam.combiners.Count.Globally()),
    }
