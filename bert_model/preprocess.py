"""BERT text preprocessing as a tf.Module with the TF Hub preprocess interface.

The exported SavedModel is called like `bert_en_uncased_preprocess`:

  preprocess = hub.load(path)          # import tensorflow_text first
  inputs = preprocess(["a sentence"])  # dict of int32 [batch, seq]
  tokens = preprocess.tokenize(texts)  # int32 RaggedTensor [batch, words, pieces]
  inputs = preprocess.bert_pack_inputs([tokens], seq_length=128)
  inputs = preprocess.bert_pack_inputs([tokens_a, tokens_b], seq_length=128)
  preprocess.tokenize.get_special_tokens_dict()

One difference, on purpose: `preprocess(texts)` and `bert_pack_inputs(segments)`
without `seq_length` pad a batch to its own longest row (at most the model's
max_seq_length) instead of to a fixed 128. That is what makes batch inference
fast; pass `seq_length` for fixed-shape inputs.

Tokenization reproduces the Hugging Face fast tokenizer (BertNormalizer,
BertPreTokenizer, WordPiece) that the checkpoint was trained with.
tensorflow_text's own BertTokenizer disagrees with it on about one sentence in
eight, so the normaliser here is built from TF ops, in the reference's order:

  1. literal special tokens ("[CLS]", "[SEP]", ...) are matched in the raw text
     and kept whole;
  2. clean text: delete NUL, U+FFFD and control/format characters (but not
     tab, newline, CR), turn every whitespace character into a space;
  3. put spaces around CJK ideographs;
  4. uncased models only: NFD, delete nonspacing marks (strip accents), then
     lower-case with the plain Unicode mapping (no NFKC case folding); a
     tokenizer whose strip_accents says otherwise strips accents without
     lower-casing, or lower-cases keeping them;
  5. split on whitespace and punctuation (tensorflow_text BasicTokenizer, with
     its own normalisation switched off);
  6. a word longer than 100 characters becomes [UNK] (the reference counts
     characters; tensorflow_text counts bytes, so it gets a byte limit that
     never binds);
  7. WordPiece (tensorflow_text FastWordpieceTokenizer).
"""

import re
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_text as tf_text
# BasicTokenizer (the whitespace and punctuation split) is not exported at the
# package top level.
from tensorflow_text.python.ops import bert_tokenizer

# The reference WordPiece turns words longer than this (in characters) to [UNK].
MAX_CHARS_PER_WORD = 100
_MAX_BYTES_PER_UTF8_CHAR = 4

# Characters the reference's clean-text step deletes: NUL, U+FFFD and Unicode
# "other" categories (control, format, private use, surrogate). Tab, newline
# and carriage return are turned into spaces before this runs.
_DELETED_CHARS = r"[\x{0}\x{FFFD}\p{Cc}\p{Cf}\p{Co}\p{Cs}]"
# Whitespace the reference maps to a space (after deleting controls).
_WHITESPACE_CHARS = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
# CJK ideographs, which the reference tokenizes one character at a time.
_CJK_CHARS = (r"([\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}"
              r"\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}"
              r"\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}])")

TOKENS_SPEC = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)


# Said of a text (or a question) that tokenizes to nothing but its special
# tokens: the pipeline rejects it as empty_text, and queries refuse it.
NO_WORDPIECES = ("has no wordpieces: only characters the tokenizer drops "
                 "(control, zero-width or format characters)")


def has_no_wordpieces(num_tokens: int, text_pair: bool = False) -> bool:
  """Whether the model saw nothing of a text but [CLS] and [SEP] (and a
  pair's second [SEP]). Texts of only characters the tokenizer drops (zero-
  width spaces, a BOM, NUL and other control characters, soft hyphens)
  would otherwise all get one and the same vector."""
  return num_tokens <= (3 if text_pair else 2)


def normalize_text(texts: tf.Tensor, lower_case: bool,
                   strip_accents: Optional[bool] = None) -> tf.Tensor:
  """Steps 2-4 of the module doc, on a 1-D string tensor; strip_accents
  None: when lower-casing, as BERT's tokenizer does by default."""
  if strip_accents is None:
    strip_accents = lower_case
  # Invalid UTF-8 becomes U+FFFD, which clean text then deletes.
  texts = tf.strings.unicode_transcode(
      texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD,
      replace_control_characters=False)
  texts = tf.strings.regex_replace(texts, r"[\t\n\r]", " ")
  texts = tf.strings.regex_replace(texts, _DELETED_CHARS, "")
  texts = tf.strings.regex_replace(texts, _WHITESPACE_CHARS, " ")
  texts = tf.strings.regex_replace(texts, _CJK_CHARS, r" \1 ")
  if strip_accents:
    texts = tf_text.normalize_utf8(texts, "NFD")
    texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
  if lower_case:
    # The reference lower-cases one character at a time, so a capital sigma
    # is always σ; ICU's string lower-casing would make a final one ς.
    texts = tf.strings.regex_replace(texts, "Σ", "σ")
    texts = tf.strings.lower(texts, encoding="utf-8")
  return texts


def read_vocab_lines(path: str) -> list:
  """A vocab.txt (local or gs://) as a list of tokens (index = id),
  trailing blank lines dropped."""
  with tf.io.gfile.GFile(path, "r") as f:
    vocab = [line.rstrip("\r\n") for line in f]
  while vocab and not vocab[-1]:
    vocab.pop()
  return vocab


def _unique_tokens(vocab: Sequence[str]) -> list:
  """The vocabulary with unreachable entries renamed, ids unchanged.

  Some published vocabularies repeat a token (or hold blank lines); the
  reference tokenizer maps a repeated token to its last id, so the earlier ids
  can never be produced. FastWordpieceTokenizer needs unique tokens, so those
  entries get a placeholder name that no text can match.
  """
  last_index = {token: i for i, token in enumerate(vocab)}
  return [
      token if token and last_index[token] == i else f"[UNREACHABLE_{i}]"
      for i, token in enumerate(vocab)
  ]


class BertTokenize(tf.Module):
  """Strings [batch] to wordpiece ids, int32 RaggedTensor [batch, words, pieces]."""

  def __init__(self, vocab: Sequence[str], lower_case: bool,
               special_tokens: Sequence[str],
               strip_accents: Optional[bool] = None):
    super().__init__(name="tokenize")
    vocab = list(vocab)
    self._lower_case = lower_case
    self._strip_accents = strip_accents
    self._special_tokens = tuple(special_tokens)
    self._special_pattern = "|".join(re.escape(t) for t in special_tokens)
    self._basic = bert_tokenizer.BasicTokenizer(
        lower_case=False, keep_whitespace=False, normalization_form=None)
    self._wordpiece = tf_text.FastWordpieceTokenizer(
        vocab=_unique_tokens(vocab), suffix_indicator="##",
        max_bytes_per_word=MAX_CHARS_PER_WORD * _MAX_BYTES_PER_UTF8_CHAR,
        token_out_type=tf.int32, unknown_token="[UNK]",
        no_pretokenization=True)
    self._special_ids = {
        "vocab_size": len(vocab),
        "start_of_sequence_id": vocab.index("[CLS]"),
        "end_of_segment_id": vocab.index("[SEP]"),
        "padding_id": vocab.index("[PAD]"),
        "mask_id": vocab.index("[MASK]") if "[MASK]" in vocab else 0,
    }

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, texts):
    return self._wordpiece.tokenize(self._words(texts))

  @tf.function(input_signature=[])
  def get_special_tokens_dict(self):
    return {k: tf.constant(v, tf.int32) for k, v in self._special_ids.items()}

  def _words(self, texts):
    """Strings [batch] to normalised words, RaggedTensor [batch, words]."""
    if not self._special_pattern:
      return self._split_words(texts)
    # tensorflow_text's regex_split stops at a NUL byte. U+FFFD stands in for
    # it: it cannot be part of a special token, and clean text deletes both.
    texts = tf.strings.regex_replace(texts, r"\x00", "\uFFFD")
    # Step 1: cut each text at literal special tokens; they stay whole.
    pieces = tf_text.regex_split(texts, self._special_pattern,
                                 self._special_pattern)
    flat = pieces.flat_values
    is_special = tf.reduce_any(
        tf.equal(flat[:, tf.newaxis], tf.constant(self._special_tokens)),
        axis=1)
    plain_words = self._split_words(tf.where(is_special, "", flat))
    special_words = tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(flat, is_special), tf.cast(is_special, tf.int64))
    # Each piece is either plain (its words) or special (itself), never both.
    piece_words = tf.concat([plain_words, special_words], axis=1)
    return pieces.with_flat_values(piece_words).merge_dims(1, 2)

  def _split_words(self, texts):
    words = self._basic.tokenize(normalize_text(
        texts, self._lower_case, self._strip_accents))
    too_long = tf.strings.length(
        words.flat_values, unit="UTF8_CHAR") > MAX_CHARS_PER_WORD
    return words.with_flat_values(
        tf.where(too_long, "[UNK]", words.flat_values))


class BertPackInputs(tf.Module):
  """Token segments to the encoder's three int32 inputs.

  Each segment is an int32 RaggedTensor [batch, words, pieces] (or [batch,
  tokens]) from `tokenize`. Rows are trimmed round-robin to fit seq_length,
  joined as [CLS] a [SEP] (b [SEP]), and padded with zeros: to `seq_length`
  when given, else to the batch's longest row.
  """

  def __init__(self, start_of_sequence_id: int, end_of_segment_id: int,
               max_seq_length: int):
    super().__init__(name="bert_pack_inputs")
    self._start_id = start_of_sequence_id
    self._end_id = end_of_segment_id
    self.max_seq_length = max_seq_length

  @tf.function
  def __call__(self, segments, seq_length=None):
    dynamic = seq_length is None
    if dynamic:
      seq_length = self.max_seq_length
    seq_length = tf.cast(seq_length, tf.int32)
    segments = [s.merge_dims(1, -1) if s.ragged_rank > 1 else s
                for s in segments]
    # [CLS] plus one [SEP] per segment.
    budget = seq_length - 1 - len(segments)
    trimmed = tf_text.RoundRobinTrimmer(budget).trim(segments)
    word_ids, type_ids = tf_text.combine_segments(
        trimmed, start_of_sequence_id=self._start_id,
        end_of_segment_id=self._end_id)
    shape = None if dynamic else tf.stack(
        [word_ids.nrows(), tf.cast(seq_length, tf.int64)])
    return {
        "input_word_ids": word_ids.to_tensor(0, shape=shape),
        "input_mask": tf.ones_like(word_ids).to_tensor(0, shape=shape),
        "input_type_ids": tf.cast(type_ids, tf.int32).to_tensor(
            0, shape=shape),
    }


class BertPreprocessor(tf.Module):
  """The preprocess SavedModel's root object (see module doc)."""

  def __init__(self, vocab: Sequence[str], lower_case: bool,
               special_tokens: Sequence[str], max_seq_length: int,
               strip_accents: Optional[bool] = None):
    super().__init__(name="bert_preprocess")
    self.tokenize = BertTokenize(vocab, lower_case, special_tokens,
                                 strip_accents)
    self.bert_pack_inputs = BertPackInputs(
        vocab.index("[CLS]"), vocab.index("[SEP]"), max_seq_length)
    self.max_seq_length = tf.Variable(
        max_seq_length, trainable=False, dtype=tf.int32, name="max_seq_length")
    self.do_lower_case = tf.Variable(
        lower_case, trainable=False, name="do_lower_case")

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, texts):
    return self.bert_pack_inputs([self.tokenize(texts)])

  def trace_for_export(self):
    """Traces every call a restored model must answer (1 and 2 segments)."""
    for num_segments in (1, 2):
      specs = [TOKENS_SPEC] * num_segments
      self.bert_pack_inputs.__call__.get_concrete_function(specs)
      self.bert_pack_inputs.__call__.get_concrete_function(
          specs, seq_length=tf.TensorSpec([], tf.int32))
