"""Long documents cut into chunks (bert_model/chunking.py, --chunk_size).

On hard text and on real long documents (pydoc's topic help), for an uncased
model (the default model), a cased one and a v1 encoder (each with its own
vocabulary and lower-case setting): every chunk's span is exact (re-tokenizing
text[start:end] gives exactly its wordpieces), no chunk is longer than
chunk_size, chunks start and end between words, and together they cover every
non-space character. Vectors: a chunk's equals embedding its text alone, a
one-chunk document's equals the unchunked one, a document's is the weighted
mean of its chunks'; and against sentence-transformers on the chunk texts.
"""

import os
import unicodedata

import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from pydoc_data.topics import topics
from sentence_transformers import SentenceTransformer

from bert_model import default_model
from bert_model import export
from bert_model.chunking import ChunkSettings
from bert_model.choices import default_overlap
from bert_model.chunking import DocumentChunker
from bert_model.chunking import plan_chunks
from bert_model.chunking import pool_chunks
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings
from bert_model.v1 import build_v1_preprocessor
from bert_model import tiny_checkpoint as tiny_bert
from tests import tiny_v1

HARD_TEXT = (
    "Café naïve résumé ß Straße ﬁnance ﬂow ﬀ. 東京は日本の首都です。"
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 combining e\u0301 a\u0308 o\u0302! "
    "[CLS] literal [SEP] and [MASK] tokens; \x00nul \x07bell \x1b[0m "
    "\u200bzero\u200bwidth soft\u00adhyphen \ufeffbom "
    + "x" * 200 + " " + "é" * 150 + " end. "
    "Tabs\tand\nnewlines\r\nnbsp\u00a0ideographic\u3000space. ÉCOLE Ωμέγα "
    "Привет мир. مرحبا بالعالم؟ नमस्ते दुनिया। ")


def long_documents(limit=12) -> list:
  """Real long documents: pydoc topics of 2,000+ characters."""
  return [topics[key] for key in sorted(topics)
          if len(topics[key]) > 2000][:limit]


@pytest.fixture(scope="module")
def tokenizers(default_model_dir, tmp_path_factory):
  """name -> the tokenize function of a preprocess model: uncased (the
  default model), cased (a tiny cased export) and v1 (built from a v1
  encoder's own vocabulary)."""
  root = tmp_path_factory.mktemp("chunk_models")
  cased_dir = str(root / "cased")
  export.export_checkpoint(
      tiny_bert.write_tiny_checkpoint(str(root / "cased_ckpt"), cased=True),
      cased_dir)
  v1_encoder = hub.load(tiny_v1.write_tiny_v1_encoder(str(root / "v1"),
                                                      cased=True))
  return {
      "uncased": hub.load(os.path.join(default_model_dir,
                                       "preprocess")).tokenize,
      "cased": hub.load(os.path.join(cased_dir, "preprocess")).tokenize,
      "v1": build_v1_preprocessor(v1_encoder, 64).tokenize,
  }


def _pieces(tokenize, text: str) -> np.ndarray:
  tokens = tokenize(tf.constant([text])).merge_dims(1, -1)
  return tf.cast(tokens, tf.int32).flat_values.numpy()


def _in_a_word(char: str) -> bool:
  return char.isalnum() and not unicodedata.name(char, "").startswith("CJK")


def _check_chunks(tokenize, texts, settings, chunker=None):
  chunker = chunker or DocumentChunker(tokenize, settings)
  chunked = chunker.chunk(texts)
  assert len(chunked.num_chunks) == len(texts)
  k = 0
  covered_texts = []
  for text, n in zip(texts, chunked.num_chunks):
    covered = np.zeros(len(text), bool)
    for _ in range(n):
      start, end = int(chunked.starts[k]), int(chunked.ends[k])
      piece_ids = chunked.pieces[k]
      assert 0 <= start <= end <= len(text)
      assert len(piece_ids) + 2 <= settings.chunk_size
      retokenized = _pieces(tokenize, text[start:end])
      if len(retokenized) > settings.budget:
        # One word of more wordpieces than a chunk holds (only with chunks
        # under ~100 wordpieces): cut to its first ones, and flagged.
        assert chunked.truncated[len(covered_texts)]
        retokenized = retokenized[:settings.budget]
      np.testing.assert_array_equal(retokenized, piece_ids,
                                    err_msg=repr(text[start:end]))
      # Between words: never letters or digits of one word on both sides
      # of a boundary (a CJK ideograph is a word of its own).
      for at in (start, end):
        assert not (0 < at < len(text) and _in_a_word(text[at - 1]) and
                    _in_a_word(text[at])), (at, text[at - 5:at + 5])
      covered[start:end] = True
      k += 1
    missed = [c for c, seen in zip(text, covered)
              if not seen and not c.isspace()]
    assert not missed, missed[:10]
    covered_texts.append(text)
  return chunked


@pytest.mark.parametrize("name", ["uncased", "cased", "v1"])
def test_chunks_of_hard_text_are_exact_and_cover_it(tokenizers, name):
  settings = ChunkSettings(chunk_size=24, chunk_overlap=3, max_chunks=512)
  texts = [HARD_TEXT, HARD_TEXT * 3, "short", "", " \u3000 ",
           "word " * 60, "[CLS]" * 40]
  chunked = _check_chunks(tokenizers[name], texts, settings)
  assert chunked.num_chunks[0] > 1 and chunked.num_chunks[2] == 1
  assert not chunked.truncated[:2].any()


def test_chunks_of_real_long_documents(tokenizers):
  documents = long_documents()
  settings = ChunkSettings(chunk_size=128, chunk_overlap=16, max_chunks=512)
  chunked = _check_chunks(tokenizers["uncased"], documents, settings)
  assert chunked.num_chunks.min() >= 2
  assert not chunked.truncated.any()


def test_too_many_chunks_or_a_giant_word_truncate(tokenizers):
  settings = ChunkSettings(chunk_size=8, chunk_overlap=1, max_chunks=3)
  chunked = DocumentChunker(tokenizers["cased"], settings).chunk(
      ["a b c d e f g h i j k l m n o p q r s t", "a b"])
  np.testing.assert_array_equal(chunked.num_chunks, [3, 1])
  np.testing.assert_array_equal(chunked.truncated, [True, False])


@given(st.lists(st.integers(0, 12), max_size=80),
       st.lists(st.booleans(), min_size=80, max_size=80),
       st.lists(st.booleans(), min_size=80, max_size=80),
       st.integers(3, 40), st.data())
def test_plan_chunks_properties(counts, sentence_ends, glued, chunk_size,
                                data):
  overlap = data.draw(st.integers(0, (chunk_size - 1) // 2))
  settings = ChunkSettings(chunk_size, overlap, max_chunks=1000)
  counts = np.array(counts, np.int64)
  ends = np.array(sentence_ends[:len(counts)], bool)
  plan, truncated = plan_chunks(counts, ends, settings,
                                np.array(glued[:len(counts)], bool))
  budget = settings.budget
  assert truncated == bool((counts > budget).any())
  covered = set()
  for i, (first, end) in enumerate(plan):
    assert first < end
    size = counts[first:end].sum()
    assert size <= budget or end == first + 1
    covered.update(range(first, end))
    if i:
      previous_first, previous_end = plan[i - 1]
      assert previous_first < first <= previous_end  # progress, no gap
      assert counts[first:previous_end].sum() <= overlap
  assert covered == set(range(len(counts)))


def test_plan_prefers_a_sentence_end_in_the_last_quarter():
  settings = ChunkSettings(chunk_size=22, chunk_overlap=0, max_chunks=10)
  counts = np.ones(40, np.int64)  # budget 20 words a chunk
  ends = np.zeros(40, bool)
  ends[[5, 16]] = True  # after word 16: in the last quarter (>= 15 words)
  plan, _ = plan_chunks(counts, ends, settings)
  assert plan[0] == (0, 17)
  ends[16] = False  # after word 5 only: too early, the chunk is filled
  plan, _ = plan_chunks(counts, ends, settings)
  assert plan[0] == (0, 20)


def test_plan_ends_and_starts_chunks_between_separate_words():
  # Words 0-39 of one wordpiece each, budget 20 a chunk; words 17-23 are
  # written together ("e.g.," or "GLM4V_MOE"): no chunk ends or starts
  # inside them while a clean boundary keeps it at least half full.
  settings = ChunkSettings(chunk_size=22, chunk_overlap=4, max_chunks=10)
  counts = np.ones(40, np.int64)
  ends = np.zeros(40, bool)
  ends[18] = True  # "e." of "e.g.": no sentence end
  glued = np.zeros(40, bool)
  glued[18:24] = True
  plan, _ = plan_chunks(counts, ends, settings, glued)
  assert plan[0] == (0, 17)
  assert plan[1][0] == 13  # 4 words of overlap, before 17: all clean
  glued[11:18] = True  # words 10-23 one token: the first chunk ends at 10
  plan, _ = plan_chunks(counts, ends, settings, glued)
  assert plan[0] == (0, 10)
  glued[1:40] = True  # nothing clean: as without the rule
  assert plan_chunks(counts, ends, settings, glued)[0][0] == (0, 20)


def test_default_overlap_is_an_eighth():
  assert default_overlap(256) == 32
  with pytest.raises(ValueError, match="chunk_overlap"):
    ChunkSettings(chunk_size=64, chunk_overlap=32, max_chunks=1)


def test_pool_chunks_is_the_weighted_mean():
  vectors = np.array([[1, 0], [0, 1], [3, 4]], np.float32)
  pooled = pool_chunks(vectors, np.array([3, 1, 7]), np.array([2, 1]),
                       normalize=True)
  np.testing.assert_allclose(pooled[0], np.array([3, 1]) / np.sqrt(10),
                             rtol=1e-6)
  np.testing.assert_array_equal(pooled[1], vectors[2])  # one chunk: as is


@pytest.fixture(scope="module")
def default_models(default_model_dir):
  """(chunked, unchunked) LoadedBertModels of the default model."""
  base = dict(preprocess_path=os.path.join(default_model_dir, "preprocess"),
              encoder_path=os.path.join(default_model_dir, "encoder"),
              max_seq_length=256)
  chunking = ChunkSettings(chunk_size=64, chunk_overlap=8, max_chunks=512)
  return (LoadedBertModel(ModelSettings(**base, chunking=chunking)),
          LoadedBertModel(ModelSettings(**base)))


def _chunk_texts(texts, outputs):
  first = np.concatenate([[0], np.cumsum(outputs["num_chunks"])])
  return [texts[d][outputs["chunk_start"][c]:outputs["chunk_end"][c]]
          for d in range(len(texts)) for c in range(first[d], first[d + 1])]


def test_chunk_vectors_equal_their_texts_embedded_alone(default_models):
  chunked_model, plain_model = default_models
  texts = long_documents(4) + ["A short document fits in one chunk."]
  outputs = chunked_model.embed(texts)
  chunk_texts = _chunk_texts(texts, outputs)
  alone = plain_model.embed(chunk_texts)
  np.testing.assert_array_equal(alone["num_tokens"],
                                outputs["chunk_num_tokens"])
  cosine = (alone["embedding"] * outputs["chunk_embedding"]).sum(1)
  assert cosine.min() >= 0.99999
  # A one-chunk document: the unchunked vector, exactly when the encoder
  # gets the same call (in a batch with others, up to float rounding).
  np.testing.assert_array_equal(chunked_model.embed(texts[-1:])["embedding"],
                                plain_model.embed(texts[-1:])["embedding"])
  np.testing.assert_allclose(outputs["embedding"][-1],
                             plain_model.embed(texts[-1:])["embedding"][0],
                             atol=1e-6)
  np.testing.assert_allclose(
      outputs["embedding"],
      pool_chunks(outputs["chunk_embedding"], outputs["chunk_num_tokens"],
                  outputs["num_chunks"], normalize=True), atol=1e-6)
  assert not outputs["truncated"].any()
  assert plain_model.embed(texts[:1])["truncated"][0]


def test_chunk_vectors_match_sentence_transformers(default_models,
                                                   report_figure):
  chunked_model, _ = default_models
  texts = long_documents(3) + [HARD_TEXT * 2]
  outputs = chunked_model.embed(texts)
  reference = SentenceTransformer(default_model.packaged_checkpoint_dir(),
                                  device="cpu")
  theirs = reference.encode(_chunk_texts(texts, outputs),
                            normalize_embeddings=True)
  cosine = (theirs * outputs["chunk_embedding"]).sum(1)
  report_figure("chunk vs sentence-transformers min cosine",
                f"{cosine.min():.7f} over {len(cosine)} chunks")
  assert cosine.min() >= 0.999


_CHUNKERS = {}
_HARD_CHARACTERS = st.sampled_from(list(
    " \t\n\u00a0\u3000.!?,;-'\"()[]#" "aé\u0301ßﬁ東京😀\u200b\u00ad\ufeff\x00\x07"
    "ΩПم्") + ["[CLS]", "[SEP]", "x" * 120, "quick", "brown"])


@hypothesis_settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(_HARD_CHARACTERS,
                          st.text(st.characters(blacklist_categories=("Cs",)),
                                  max_size=8)), max_size=60).map("".join))
def test_chunks_of_generated_text_are_exact(tokenizers, text):
  """Hypothesis' texts, not ours: every invariant on each."""
  settings = ChunkSettings(chunk_size=7, chunk_overlap=2, max_chunks=512)
  for name in ("uncased", "cased"):
    if name not in _CHUNKERS:  # one per tokenizer: its graphs trace once
      _CHUNKERS[name] = DocumentChunker(tokenizers[name], settings)
    _check_chunks(tokenizers[name], [text], settings, _CHUNKERS[name])
