"""Length-aware batching: documents sorted by length before they are batched.

An encoder call is padded to its longest text, so a batch of mixed lengths
pays for pads. Beam's BatchElements batches in arrival order; Beam's
SortAndBatchElements sorts but holds a whole bundle (on the local runner that
is the whole corpus). `SortAndBatchByLength` holds at most `buffer_size`
elements: it sorts each full buffer by estimated wordpieces and cuts it into
batches of at most `max_batch_size` elements and `max_batch_tokens` padded
estimated wordpieces, so the stage holds at most buffer_size documents however
large the corpus (or the bundle).

Estimates come from characters (no tokenizer outside the model); the model
handler plans its encoder calls inside a batch from the real token counts.
"""

import dataclasses
from typing import Callable, Iterator, List, Sequence

import apache_beam as beam
from apache_beam.transforms import window

from transforms.progress import PROGRESS

# A rough wordpiece count from characters, for ordering and cutting batches
# before the text is tokenized (English averages ~4 characters per wordpiece).
CHARS_PER_TOKEN_ESTIMATE = 4


@dataclasses.dataclass(frozen=True)
class LengthBatching:
  """How documents are grouped for the model (see module doc)."""
  max_seq_length: int  # estimates are capped here
  max_batch_size: int  # documents per batch
  max_batch_tokens: int  # padded estimated wordpieces per batch
  buffer_size: int  # documents held and sorted at a time


def _num_chars(text) -> int:
  """Characters of a text, or of both texts of an (a, b) pair."""
  if isinstance(text, str):
    return len(text)
  return sum(len(part) for part in text)


def estimate_tokens(text, max_seq_length: int) -> int:
  """Rough wordpiece count of a text (or pair), [CLS] and [SEP] included."""
  return min(_num_chars(text) // CHARS_PER_TOKEN_ESTIMATE + 2,
             max_seq_length)


def cut_sorted(sizes: Sequence[int], max_batch_size: int,
               max_batch_tokens: int) -> List[slice]:
  """Slices of ascending `sizes` into batches of at most max_batch_size
  elements and (elements x largest) <= max_batch_tokens; an element larger
  than the budget gets a batch of its own."""
  batches, start = [], 0
  for end, size in enumerate(sizes):
    count = end - start
    if count and (count + 1 > max_batch_size or
                  (count + 1) * size > max_batch_tokens):
      batches.append(slice(start, end))
      start = end
  if start < len(sizes):
    batches.append(slice(start, len(sizes)))
  return batches


def length_sorted_batches(elements: Sequence, sizes: Sequence[int],
                          max_batch_size: int,
                          max_batch_tokens: int) -> Iterator[list]:
  """The elements sorted by their sizes and cut by `cut_sorted` into
  batches.

  Stable: equal sizes keep their order (deterministic runs).
  """
  order = sorted(range(len(elements)), key=sizes.__getitem__)
  for part in cut_sorted([sizes[i] for i in order], max_batch_size,
                         max_batch_tokens):
    yield [elements[i] for i in order[part]]


class _SortAndBatchByLengthFn(beam.DoFn):
  """Buffers up to buffer_size elements, then emits them sorted, batched."""

  def __init__(self, size_fn: Callable, buffer_size: int,
               max_batch_size: int, max_batch_tokens: int):
    self._size_fn = size_fn
    self._buffer_size = buffer_size
    self._max_batch_size = max_batch_size
    self._max_batch_tokens = max_batch_tokens
    self._buffer = []

  def start_bundle(self):
    self._buffer = []

  def process(self, element):
    self._buffer.append(element)
    if len(self._buffer) >= self._buffer_size:
      yield from self._flush()

  def finish_bundle(self):
    for batch in self._flush():
      yield window.GlobalWindows.windowed_value_at_end_of_window(batch)

  def _flush(self):
    buffer, self._buffer = self._buffer, []
    sizes = [self._size_fn(element) for element in buffer]
    # The ETA's measure of the work ahead (transforms/progress.py).
    PROGRESS.add_queued(len(buffer), sum(sizes))
    return length_sorted_batches(buffer, sizes, self._max_batch_size,
                                 self._max_batch_tokens)


class SortAndBatchByLength(beam.PTransform):
  """PCollection[T] -> PCollection[List[T]], each list of similar lengths.

  size_fn maps an element to its estimated padded size (wordpieces). Only the
  global window is supported (the pipeline is a batch job).
  """

  def __init__(self, size_fn: Callable, *, buffer_size: int,
               max_batch_size: int, max_batch_tokens: int):
    super().__init__()
    for name, value in (("buffer_size", buffer_size),
                        ("max_batch_size", max_batch_size),
                        ("max_batch_tokens", max_batch_tokens)):
      if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    self._fn = _SortAndBatchByLengthFn(size_fn, buffer_size, max_batch_size,
                                       max_batch_tokens)

  def expand(self, pcoll):
    if not pcoll.windowing.is_default():
      raise ValueError("SortAndBatchByLength supports the global window only")
    return pcoll | beam.ParDo(self._fn)
