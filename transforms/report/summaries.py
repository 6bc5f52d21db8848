"""The report's side inputs: small summaries of a run's records.

Each summary is a CombineFn whose accumulator has a fixed size, whatever the
number of records (a few dozen counters, a sample of a set size), so a run
of 100M documents sends the publish stage a few kilobytes, never the
records. Samples are the records with the smallest ids: deterministic, and
the same on every runner.

Times are `time.time()` when a combiner saw a record. Beam lifts a combine
into the stage that produces the records (Dataflow and the local runner
both do), so that is when the record came out of its stage, by the clock
of the machine that made it.
"""

import math
import time
from typing import List, Optional, Sequence

import apache_beam as beam

# Characters of a text a summary keeps: the page shows less.
SNIPPET_CHARS = 300
# Neighbour scores (cosines) are counted in this many bins over [-1, 1].
SCORE_BINS = 100
_HALF_SCORE_BINS = SCORE_BINS / 2
# Duplicate groups are counted by size in bins (2^k, 2^(k+1)], k < this.
GROUP_SIZE_BINS = 40
# A length histogram has at most this many bins.
MAX_LENGTH_BINS = 64


def snippet(text: Optional[str]) -> str:
  return (text or "")[:SNIPPET_CHARS]


def length_bin_width(limit: int, max_bins: int = MAX_LENGTH_BINS) -> int:
  """The smallest of 1, 2, 5, 10, 20, 50, ... that fits 0..limit in
  `max_bins` bins."""
  for exponent in range(19):
    for mantissa in (1, 2, 5):
      width = mantissa * 10**exponent
      if math.ceil((limit + 1) / width) <= max_bins:
        return width
  raise ValueError(f"no bin width fits {limit}")


def _new_span() -> list:
  return [math.inf, -math.inf]


def _stamp(span: list):
  # Records reach one accumulator in time order: the latest is the last.
  now = time.time()
  span[1] = now
  if now < span[0]:
    span[0] = now


def _merge_spans(spans) -> list:
  merged = _new_span()
  for first, last in spans:
    merged = [min(merged[0], first), max(merged[1], last)]
  return merged


def span_output(span: Sequence[float]) -> dict:
  """{"first", "last"} as times, or None for a span that saw nothing."""
  first, last = span
  if first == math.inf:
    return {"first": None, "last": None}
  return {"first": first, "last": last}


def _add_counts(into: List[int], counts: Sequence[int]):
  for i, count in enumerate(counts):
    into[i] += count


class CountWithSpanFn(beam.CombineFn):
  """Records -> {"count", "first", "last"}: how many, and when the first and
  the last were seen (None if none were)."""

  def create_accumulator(self):
    return [0, _new_span()]

  def add_input(self, accumulator, unused_element):
    accumulator[0] += 1
    _stamp(accumulator[1])
    return accumulator

  def merge_accumulators(self, accumulators):
    accumulators = list(accumulators)
    return [sum(a[0] for a in accumulators),
            _merge_spans(a[1] for a in accumulators)]

  def extract_output(self, accumulator):
    return {"count": accumulator[0], **span_output(accumulator[1])}


def _keep_smallest(kept: dict, key, value, limit: int) -> bool:
  """Adds key -> value to `kept` if key is among the `limit` smallest."""
  if key in kept or len(kept) < limit:
    kept.setdefault(key, value)
    return True
  largest = max(kept)
  if key < largest:
    del kept[largest]
    kept[key] = value
    return True
  return False


class EmbeddingSummaryFn(beam.CombineFn):
  """Embeddings -> a length histogram and the heatmap's sample.

  Output: {"measure": "num_tokens" (or "num_chunks" when chunked), "limit"
  (--max_seq_length, or --max_chunks), "bin_width", "bins" (documents per
  bin of bin_width values; values over the last bin counted in it),
  "documents", "total" (the sum of the values), "tokens" (the sum of
  num_tokens: wordpieces the model saw), "sample": the
  `sample_size` documents with the smallest ids, [{"id", "text",
  "vector"}] by id (texts empty unless include_text)}.
  """

  def __init__(self, limit: int, chunked: bool, sample_size: int = 24,
               include_text: bool = True):
    super().__init__()
    self._limit = limit
    self._chunked = chunked
    self._width = length_bin_width(limit)
    self._num_bins = math.ceil((limit + 1) / self._width)
    self._sample_size = sample_size
    self._include_text = include_text

  def create_accumulator(self):
    # bins, documents, total, sample {id: (text, vector)}, the sample's
    # largest id once it is full (a record above it is skipped at once),
    # tokens.
    return [[0] * self._num_bins, 0, 0, {}, None, 0]

  def add_input(self, accumulator, embedding):
    value = embedding.num_chunks if self._chunked else embedding.num_tokens
    bins = accumulator[0]
    bins[min(value // self._width, len(bins) - 1)] += 1
    accumulator[1] += 1
    accumulator[2] += value
    accumulator[5] += embedding.num_tokens
    cutoff = accumulator[4]
    if cutoff is None or embedding.id < cutoff:
      sample = accumulator[3]
      _keep_smallest(sample, embedding.id, self._sample_entry(embedding),
                     self._sample_size)
      if len(sample) == self._sample_size:
        accumulator[4] = max(sample)
    return accumulator

  def _sample_entry(self, embedding):
    text = snippet(embedding.text) if self._include_text else ""
    return text, embedding.embedding

  def merge_accumulators(self, accumulators):
    merged = self.create_accumulator()
    for bins, documents, total, sample, _, tokens in accumulators:
      _add_counts(merged[0], bins)
      merged[1] += documents
      merged[2] += total
      merged[5] += tokens
      for key, value in sample.items():
        _keep_smallest(merged[3], key, value, self._sample_size)
    if len(merged[3]) == self._sample_size:
      merged[4] = max(merged[3])
    return merged

  def extract_output(self, accumulator):
    bins, documents, total, sample, _, tokens = accumulator
    return {
        "measure": "num_chunks" if self._chunked else "num_tokens",
        "limit": self._limit,
        "bin_width": self._width,
        "bins": bins,
        "documents": documents,
        "total": total,
        "tokens": tokens,
        "sample": [{"id": key, "text": text, "vector": vector}
                   for key, (text, vector) in sorted(sample.items())],
    }


class NeighbourSummaryFn(beam.CombineFn):
  """Each query's neighbours -> the score histogram and a few queries'.

  Input: the neighbours table's elements, (query id, [(score, neighbour
  id)] best first). Output: {"rows" (the table's rows), "bins" (rows per
  score bin, SCORE_BINS bins over [-1, 1]), "first", "last" (when the
  neighbours came out), "examples": the `shown_queries` smallest query ids,
  [{"id", "neighbours": [{"rank", "neighbour_id", "score"}] of rank <=
  shown_neighbours, by rank}]}.
  """

  def __init__(self, shown_queries: int = 5, shown_neighbours: int = 5):
    super().__init__()
    self._shown_queries = shown_queries
    self._shown_neighbours = shown_neighbours

  def create_accumulator(self):
    # rows, bins, span, examples {query id: [rows]}, their largest id once
    # full.
    return [0, [0] * SCORE_BINS, _new_span(), {}, None]

  def add_input(self, accumulator, query_neighbours):
    # Once per query (N of them): kept short.
    query, neighbours = query_neighbours
    accumulator[0] += len(neighbours)
    bins = accumulator[1]
    for score, _ in neighbours:
      score = float(score)
      if score == score:  # not NaN
        index = int((score + 1.0) * _HALF_SCORE_BINS)
        bins[index if 0 <= index < SCORE_BINS else
             (0 if index < 0 else SCORE_BINS - 1)] += 1
    _stamp(accumulator[2])
    cutoff = accumulator[4]
    if cutoff is None or query <= cutoff:
      examples = accumulator[3]
      if _keep_smallest(examples, query, [], self._shown_queries):
        examples[query] = [
            {"rank": rank, "neighbour_id": neighbour_id,
             "score": float(score)}
            for rank, (score, neighbour_id) in enumerate(
                neighbours[:self._shown_neighbours], start=1)]
        if len(examples) == self._shown_queries:
          accumulator[4] = max(examples)
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = self.create_accumulator()
    spans = []
    for rows, bins, span, examples, _ in accumulators:
      merged[0] += rows
      _add_counts(merged[1], bins)
      spans.append(span)
      for query, kept in examples.items():
        if _keep_smallest(merged[3], query, [], self._shown_queries):
          merged[3][query].extend(kept)
    merged[2] = _merge_spans(spans)
    if len(merged[3]) == self._shown_queries:
      merged[4] = max(merged[3])
    return merged

  def extract_output(self, accumulator):
    rows, bins, span, examples, _ = accumulator
    return {
        "rows": rows,
        "bins": bins,
        **span_output(span),
        "examples": [{"id": query,
                      "neighbours": sorted(kept, key=lambda r: r["rank"])}
                     for query, kept in sorted(examples.items())],
    }


def group_size_bin(size: int) -> int:
  """Bin k holds the sizes in (2^k, 2^(k+1)]: 2 | 3-4 | 5-8 | 9-16 | ..."""
  return min(max(size - 1, 1).bit_length() - 1, GROUP_SIZE_BINS - 1)


class DuplicateSummaryFn(beam.CombineFn):
  """Duplicate rows -> groups by size and the largest groups.

  Output: {"rows", "groups_by_size" (groups per group_size_bin),
  "first", "last", "largest": the `shown_groups` largest groups (ties: the
  smaller group_id), [{"group_id", "size", "members": the smallest
  `shown_members` [{"id", "max_score"}]}]}.
  """

  def __init__(self, shown_groups: int = 5, shown_members: int = 5):
    super().__init__()
    self._shown_groups = shown_groups
    self._shown_members = shown_members

  def create_accumulator(self):
    # rows, groups by size, span, {(-size, group_id): {member id: score}}
    return [0, [0] * GROUP_SIZE_BINS, _new_span(), {}]

  def add_input(self, accumulator, row):
    accumulator[0] += 1
    size = int(row["group_size"])
    if row["representative"]:
      accumulator[1][group_size_bin(size)] += 1
    _stamp(accumulator[2])
    self._add_member(accumulator[3], (-size, row["group_id"]), row["id"],
                     float(row["max_score"]))
    return accumulator

  def _add_member(self, groups, group, member, score):
    if _keep_smallest(groups, group, {}, self._shown_groups):
      _keep_smallest(groups[group], member, score, self._shown_members)

  def merge_accumulators(self, accumulators):
    merged = self.create_accumulator()
    spans = []
    for rows, by_size, span, groups in accumulators:
      merged[0] += rows
      _add_counts(merged[1], by_size)
      spans.append(span)
      for group, members in groups.items():
        for member, score in members.items():
          self._add_member(merged[3], group, member, score)
    merged[2] = _merge_spans(spans)
    return merged

  def extract_output(self, accumulator):
    rows, by_size, span, groups = accumulator
    return {
        "rows": rows,
        "groups_by_size": by_size,
        **span_output(span),
        "largest": [{
            "group_id": group_id,
            "size": -negative_size,
            "members": [{"id": member, "max_score": score}
                        for member, score in sorted(members.items())],
        } for (negative_size, group_id), members in sorted(groups.items())],
    }
