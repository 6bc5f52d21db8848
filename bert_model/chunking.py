"""Long documents cut into chunks of wordpieces, on word boundaries.

A document whose wordpieces fit in one chunk is one chunk: its whole text,
tokenized as without chunking, so its vector is the unchunked one exactly. A
longer document is cut into words with their character offsets, each word is
tokenized by the model's own tokenizer (`preprocess.tokenize`), and the words
are grouped greedily into chunks of at most chunk_size - 2 wordpieces (room
for [CLS] and [SEP]):

  * a chunk starts and ends on a word boundary, so [CLS] + its wordpieces +
    [SEP] is exactly what the model gets from the chunk's own text;
  * a chunk ends after a sentence end (. ! ? and their CJK forms) when one
    lies in its last quarter;
  * a chunk starts and ends where whitespace separates two words, not
    between two words written together ("e.g." is four words, "GLM4V_MOE"
    three), unless that would leave it less than half full;
  * consecutive chunks share up to chunk_overlap wordpieces (whole words);
  * every word is in a chunk, up to max_chunks chunks: a document with more,
    or with one word of more wordpieces than a chunk holds, is truncated.

Words are split where the tokenizer itself splits: at whitespace, around
punctuation and CJK ideographs, and around literal special tokens ("[CLS]").
Tokenizing each word alone then gives the same wordpieces as tokenizing the
whole text, which is checked for every document: where a tokenizer splits
differently (a TF Hub preprocess with other rules), that document is cut at
ASCII whitespace only, where every BERT tokenizer splits.

Offsets come from tensorflow_text's regex_split_with_offsets on the original
text (UTF-8 bytes), mapped to Unicode code points in numpy, so
`text[start:end]` is the chunk in Python.
"""

import dataclasses
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from bert_model.graph_functions import traced_once

# Literal special tokens the tokenizers keep whole (the reference matches its
# added tokens; tensorflow_text's BertTokenizer the [unusedN] ones). Keeping
# them whole here is harmless for a tokenizer that splits them: the word is
# tokenized alone, so it gets the same three pieces either way.
_SPECIAL_TOKENS = r"\[(?:PAD|UNK|CLS|SEP|MASK|unused\d+)\]"
# The reference tokenizer's whitespace (preprocess.py: clean text).
_WHITESPACE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]+"
# BERT's punctuation: the ASCII symbol ranges and Unicode's P categories.
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"
_CJK = (r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}"
        r"\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}"
        r"\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]")
_WORD_DELIMITERS = "|".join([_SPECIAL_TOKENS, _WHITESPACE, _PUNCTUATION, _CJK])
_KEPT_DELIMITERS = "|".join([_SPECIAL_TOKENS, _PUNCTUATION, _CJK])
# Where every BERT tokenizer splits: tensorflow_text's \s is ASCII only, and
# the reference deletes form feeds rather than splitting at them.
_ASCII_WHITESPACE = r"[ \t\n\r]+"
# A word after which a sentence ends: a chunk prefers to end there.
_SENTENCE_END = r"[.!?\x{3002}\x{FF01}\x{FF1F}\x{2026}\x{061F}\x{0964}]+"
_COARSE_SENTENCE_END = r".*[.!?]"
# Python's view of the reference's whitespace: what a chunk's span leaves out
# at its two ends.
_PYTHON_WHITESPACE = re.compile(
    "[\t\n\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*")
# Texts are cut to this many characters per allowed token before tokenizing,
# so a multi-megabyte line costs no more than a long sentence. Every kept
# wordpiece spans at least one character and a word over 100 characters is one
# [UNK], so only texts whose first allowed tokens span more than this
# (runs of deleted control characters, say) can lose a token at the cut.
MAX_CHARS_PER_TOKEN = 128


@dataclasses.dataclass(frozen=True)
class ChunkSettings:
  """How documents are cut (--chunk_size, --chunk_overlap, --max_chunks).

  chunk_size: wordpieces per chunk, [CLS] and [SEP] included.
  chunk_overlap: wordpieces consecutive chunks share, less than half a chunk.
  max_chunks: chunks per document at most; the rest is truncated.
  """
  chunk_size: int
  chunk_overlap: int
  max_chunks: int

  def __post_init__(self):
    if self.chunk_size < 3:
      raise ValueError(f"chunk_size must be at least 3, not {self.chunk_size}")
    if not 0 <= self.chunk_overlap < self.chunk_size / 2:
      raise ValueError(
          f"chunk_overlap must be in [0, chunk_size / 2), not "
          f"{self.chunk_overlap} (chunk_size {self.chunk_size})")
    if self.max_chunks < 1:
      raise ValueError(f"max_chunks must be at least 1, not {self.max_chunks}")

  @property
  def budget(self) -> int:
    """Wordpieces of text per chunk: chunk_size less [CLS] and [SEP]."""
    return self.chunk_size - 2


@dataclasses.dataclass(frozen=True)
class ChunkedTexts:
  """Chunks of a batch of texts, in order: document 0's, then 1's, ...

  pieces: each chunk's wordpiece ids, without [CLS] and [SEP].
  starts, ends: each chunk's code point offsets into its document's text.
  num_chunks: chunks per document; truncated: per document.
  """
  pieces: List[np.ndarray]
  starts: np.ndarray
  ends: np.ndarray
  num_chunks: np.ndarray
  truncated: np.ndarray


def plan_chunks(piece_counts: np.ndarray, sentence_ends: np.ndarray,
                settings: ChunkSettings,
                glued: Optional[np.ndarray] = None) -> Tuple[list, bool]:
  """Groups words into chunks: ([(first word, end word), ...], truncated).

  piece_counts[i]: wordpieces of word i (0 for a word the tokenizer drops);
  sentence_ends[i]: whether a sentence ends after word i; glued[i]: whether
  word i follows word i - 1 with no whitespace between (None: never). A
  chunk holds words [first, end). See the module doc for the rules.
  """
  n = len(piece_counts)
  cumulative = np.concatenate([[0], np.cumsum(piece_counts, dtype=np.int64)])
  # Word indices before which a chunk may start or end cleanly (and n).
  clean = np.ones(n + 1, bool)
  if glued is not None:
    clean[:n] = ~np.asarray(glued, bool)
  clean_boundaries = np.flatnonzero(clean)
  boundaries_after_sentences = np.flatnonzero(sentence_ends) + 1
  boundaries_after_sentences = boundaries_after_sentences[
      clean[boundaries_after_sentences]]
  budget, overlap = settings.budget, settings.chunk_overlap
  # A sentence end counts when at least this many wordpieces precede it.
  preferred_fill = budget - budget // 4
  chunks, first, truncated = [], 0, False
  while first < n:
    if len(chunks) == settings.max_chunks:
      return chunks, True
    base = cumulative[first]
    end = int(np.searchsorted(cumulative, base + budget, side="right")) - 1
    if end == first:  # one word of more wordpieces than a chunk holds
      end, truncated = first + 1, True
    elif end < n:
      k = int(np.searchsorted(boundaries_after_sentences, end, side="right"))
      if k and cumulative[boundaries_after_sentences[k - 1]] >= (
          base + preferred_fill):
        end = int(boundaries_after_sentences[k - 1])
      elif not clean[end]:
        # Back to where whitespace separates words, if the chunk stays at
        # least half full.
        k = int(np.searchsorted(clean_boundaries, end, side="right"))
        if k and clean_boundaries[k - 1] > first and (
            cumulative[clean_boundaries[k - 1]] >= base + budget // 2):
          end = int(clean_boundaries[k - 1])
    chunks.append((first, end))
    if end >= n:
      break
    # The next chunk starts up to `overlap` wordpieces back, on a word
    # boundary, unless the word after this chunk would not fit beside them.
    following = int(np.searchsorted(cumulative, cumulative[end] - overlap,
                                    side="left"))
    if following <= first or (cumulative[end + 1] - cumulative[following] >
                              budget):
      following = end
    elif not clean[following]:
      # Forward to where whitespace separates words (less overlap), or none.
      k = int(np.searchsorted(clean_boundaries, following, side="left"))
      following = min(int(clean_boundaries[k]), end)
    first = following
  return chunks, truncated


def outer_span(text: str) -> Tuple[int, int]:
  """text's code point span without the whitespace at its two ends."""
  start = _PYTHON_WHITESPACE.match(text).end()
  if start == len(text):
    return 0, 0
  end = len(text)
  while _PYTHON_WHITESPACE.fullmatch(text[end - 1]):
    end -= 1
  return start, end


def _code_point_offsets(utf8: bytes) -> np.ndarray:
  """For each byte offset (and the end), the code points before it."""
  data = np.frombuffer(utf8, dtype=np.uint8)
  starts = (data & 0xC0) != 0x80
  return np.concatenate([[0], np.cumsum(starts, dtype=np.int64)])


class DocumentChunker:
  """Cuts texts into chunks with the model's own tokenizer (module doc)."""

  def __init__(self, tokenize, settings: ChunkSettings):
    self._tokenize = tokenize  # the preprocess model's tokenize
    self._settings = settings
    signature = [tf.TensorSpec([None], tf.string)]
    self._pieces = traced_once(self._pieces_graph, signature)
    self._fine_words = traced_once(
        lambda texts: self._words_graph(texts, _WORD_DELIMITERS,
                                        _KEPT_DELIMITERS, _SENTENCE_END),
        signature)
    self._coarse_words = traced_once(
        lambda texts: self._words_graph(texts, _ASCII_WHITESPACE, "",
                                        _COARSE_SENTENCE_END),
        signature)

  def _pieces_graph(self, texts):
    with tf.device("/CPU:0"):
      pieces = tf.cast(self._tokenize(texts).merge_dims(1, -1), tf.int32)
      return pieces.flat_values, pieces.row_lengths()

  def _words_graph(self, texts, delimiters, kept, sentence_end):
    """Texts to words: byte offsets, wordpieces, sentence ends (flat)."""
    with tf.device("/CPU:0"):
      # regex_split stops at a NUL byte; \x01 has the same length and every
      # tokenizer treats the two alike (a control character).
      texts = tf.strings.regex_replace(texts, r"\x00", "\x01")
      words, starts, ends = tf_text.regex_split_with_offsets(
          texts, delimiters, kept)
      pieces = tf.cast(
          self._tokenize(words.flat_values).merge_dims(1, -1), tf.int32)
      return {
          "words_per_text": words.row_lengths(),
          "starts": starts.flat_values,
          "ends": ends.flat_values,
          "pieces": pieces.flat_values,
          "pieces_per_word": pieces.row_lengths(),
          "sentence_end": tf.strings.regex_full_match(words.flat_values,
                                                      sentence_end),
      }

  def chunk(self, texts: Sequence[str]) -> ChunkedTexts:
    # As LoadedBertModel cuts a text to what its tokens could span: every
    # kept wordpiece spans at least one character, so a text is cut only
    # where it has more than max_chunks chunks anyway.
    limit = (self._settings.max_chunks * self._settings.chunk_size *
             MAX_CHARS_PER_TOKEN)
    cut = [len(text) > limit for text in texts]
    texts = [text[:limit] for text in texts]
    flat, lengths = (v.numpy() for v in self._pieces(texts))
    splits = np.concatenate([[0], np.cumsum(lengths)])
    whole = [flat[splits[i]:splits[i + 1]] for i in range(len(texts))]
    long_docs = [i for i, n in enumerate(lengths) if n > self._settings.budget]
    per_doc = {i: ([whole[i]], [outer_span(texts[i])], False)
               for i in range(len(texts))}
    if long_docs:
      per_doc.update(self._chunk_long([texts[i] for i in long_docs],
                                      [whole[i] for i in long_docs],
                                      long_docs))
    pieces, spans, num_chunks, truncated = [], [], [], []
    for i in range(len(texts)):
      doc_pieces, doc_spans, doc_truncated = per_doc[i]
      pieces += doc_pieces
      spans += doc_spans
      num_chunks.append(len(doc_pieces))
      truncated.append(doc_truncated or cut[i])
    spans = np.array(spans, dtype=np.int64).reshape(-1, 2)
    return ChunkedTexts(pieces=pieces, starts=spans[:, 0], ends=spans[:, 1],
                        num_chunks=np.array(num_chunks, np.int64),
                        truncated=np.array(truncated, np.bool_))

  def _chunk_long(self, texts, whole_pieces, indices) -> dict:
    words = {k: v.numpy() for k, v in self._fine_words(texts).items()}
    per_doc = _cut_into_chunks(texts, words, self._settings)
    mismatched = [j for j, (_, _, _, word_pieces) in enumerate(per_doc)
                  if not np.array_equal(word_pieces, whole_pieces[j])]
    if mismatched:
      coarse = {k: v.numpy() for k, v in
                self._coarse_words([texts[j] for j in mismatched]).items()}
      for j, chunks in zip(mismatched, _cut_into_chunks(
          [texts[j] for j in mismatched], coarse, self._settings)):
        per_doc[j] = chunks
    return {indices[j]: per_doc[j][:3] for j in range(len(texts))}


def _cut_into_chunks(texts, words, settings: ChunkSettings) -> list:
  """Per text: (chunk pieces, chunk spans, truncated, all word pieces)."""
  word_splits = np.concatenate([[0], np.cumsum(words["words_per_text"])])
  piece_splits = np.concatenate([[0], np.cumsum(words["pieces_per_word"])])
  results = []
  for j, text in enumerate(texts):
    w0, w1 = word_splits[j], word_splits[j + 1]
    counts = words["pieces_per_word"][w0:w1]
    byte_starts, byte_ends = words["starts"][w0:w1], words["ends"][w0:w1]
    glued = np.zeros(len(counts), bool)
    glued[1:] = byte_starts[1:] == byte_ends[:-1]
    plan, truncated = plan_chunks(counts, words["sentence_end"][w0:w1],
                                  settings, glued)
    code_points = _code_point_offsets(text.encode("utf-8"))
    starts, ends = code_points[byte_starts], code_points[byte_ends]
    doc_pieces = words["pieces"][piece_splits[w0]:piece_splits[w1]]
    offsets = piece_splits[w0:w1 + 1] - piece_splits[w0]
    chunk_pieces, spans = [], []
    for first, end in plan:
      chunk_pieces.append(
          doc_pieces[offsets[first]:offsets[end]][:settings.budget])
      spans.append((int(starts[first]), int(ends[end - 1])))
    if not plan:  # no words at all: one empty chunk, as a short text gets
      chunk_pieces, spans = [doc_pieces[:0]], [outer_span(text)]
    results.append((chunk_pieces, spans, truncated, doc_pieces))
  return results


def pack_chunks(pieces: Sequence[np.ndarray], cls_id: int,
                sep_id: int) -> dict:
  """Chunks' wordpieces to the encoder's inputs: [CLS] pieces [SEP], padded
  to the longest chunk; with "num_tokens" per chunk."""
  lengths = np.array([len(p) + 2 for p in pieces], dtype=np.int64)
  word_ids = np.zeros((len(pieces), int(lengths.max(initial=2))), np.int32)
  word_ids[:, 0] = cls_id
  for row, chunk_pieces in enumerate(pieces):
    word_ids[row, 1:len(chunk_pieces) + 1] = chunk_pieces
  word_ids[np.arange(len(pieces)), lengths - 1] = sep_id
  mask = (np.arange(word_ids.shape[1]) < lengths[:, np.newaxis]).astype(
      np.int32)
  return {
      "input_word_ids": word_ids,
      "input_mask": mask,
      "input_type_ids": np.zeros_like(word_ids),
      "num_tokens": lengths,
  }


def pool_chunks(vectors: np.ndarray, num_tokens: np.ndarray,
                num_chunks: np.ndarray, normalize: bool) -> np.ndarray:
  """Documents' vectors from their chunks' (in order, num_chunks each):
  the mean weighted by each chunk's num_tokens, L2-normalised when
  `normalize`. A one-chunk document keeps its chunk's vector exactly."""
  first = np.concatenate([[0], np.cumsum(num_chunks)[:-1]]).astype(np.int64)
  weights = num_tokens.astype(np.float64)[:, np.newaxis]
  weighted = np.add.reduceat(vectors.astype(np.float64) * weights, first,
                             axis=0)
  totals = np.add.reduceat(weights, first, axis=0)
  pooled = weighted / np.maximum(totals, 1.0)
  if normalize:
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True),
                         1e-12)
  pooled = pooled.astype(vectors.dtype)
  single = num_chunks == 1
  pooled[single] = vectors[first[single]]
  return pooled
