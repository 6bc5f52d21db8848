"""Tests for transforms.model_handler on the tiny real model, without Beam.

Reference values come from an independent path: the exported preprocess and
encoder SavedModels loaded with hub.load, inputs packed by the preprocess
model's own `bert_pack_inputs` to a fixed length (padding + mask), pooling and
normalisation redone in numpy over the real tokens.
"""

import pickle

import cloudpickle
import numpy as np
import pytest
from apache_beam.internal import pickler as beam_pickler
from apache_beam.ml.inference.base import PredictionResult

from pipeline.bert import export
from pipeline.bert import metadata as metadata_lib
from tests import tiny_bert
from transforms.model_handler import BertEmbeddingModelHandler
from transforms.model_handler import EmbeddingSettings
from transforms.model_handler import EncodedText
from transforms.model_handler import InferenceFailure
from transforms.model_handler import LoadedBertModel
from transforms.model_handler import estimate_tokens
from transforms.model_handler import plan_model_calls

HIDDEN = 16
MAX_SEQ_LENGTH = 32  # the tiny model's own
VOCAB = tiny_bert.tiny_vocab()
CLS_ID = VOCAB.index("[CLS]")
SEP_ID = VOCAB.index("[SEP]")

# Very different lengths, deliberately not in length order; all fit in 32
# wordpieces with [CLS] and [SEP].
TEXTS = [
    "the quick brown fox jumps over the lazy dog while the cat sat on a mat",
    "hello",
    "embeddings",
    "a vector search is unknown to the dog",
    "Hello World!",
    "the cat sat on the mat, the dog sat on the fox, hello world again",
    "fox",
    "text embedding vectors: 1, 2, 3",
]
LONG_TEXT = ("the quick brown fox jumps over the lazy dog and the cat sat on "
             "the mat")


# ---------------------------------------------------------------------------
# Fixtures and the independent reference.


def settings_for(model_dir, **kwargs) -> EmbeddingSettings:
  kwargs.setdefault("max_seq_length", MAX_SEQ_LENGTH)
  return EmbeddingSettings(
      preprocess_path=f"{model_dir}/{metadata_lib.PREPROCESS_DIR}",
      encoder_path=f"{model_dir}/{metadata_lib.ENCODER_DIR}",
      **kwargs)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
  """(handler, model) for settings; each distinct settings loaded once."""
  cache = {}

  def get(**kwargs):
    settings = settings_for(tiny_model_dir, **kwargs)
    if settings not in cache:
      handler = BertEmbeddingModelHandler(settings)
      cache[settings] = (handler, handler.load_model())
    return cache[settings]

  return get


def run(handler, model, texts):
  results = list(handler.run_inference(list(texts), model))
  assert len(results) == len(texts)
  for text, result in zip(texts, results):
    assert isinstance(result, PredictionResult)
    assert result.example == text  # input order, not the sorted one
  return [result.inference for result in results]


def unit(v):
  return v / np.linalg.norm(v)


class Reference:
  """The tiny model run without the handler, one text at a time."""

  def __init__(self, model_dir):
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import
    self.preprocess = hub.load(f"{model_dir}/{metadata_lib.PREPROCESS_DIR}")
    self.encoder = hub.load(f"{model_dir}/{metadata_lib.ENCODER_DIR}")

  def wordpieces(self, text) -> np.ndarray:
    tokens = self.preprocess.tokenize([text])
    return tokens.merge_dims(1, -1)[0].numpy()

  def encode(self, text, seq_length=MAX_SEQ_LENGTH) -> dict:
    tokens = self.preprocess.tokenize([text])
    # Fixed-length padding: the opposite of the handler's dynamic padding.
    inputs = self.preprocess.bert_pack_inputs([tokens], seq_length=seq_length)
    assert inputs["input_word_ids"].shape == (1, seq_length)
    outputs = self.encoder(inputs)
    mask = inputs["input_mask"][0].numpy().astype(bool)
    return {
        "word_ids": inputs["input_word_ids"][0].numpy()[mask],
        "sequence": outputs["sequence_output"][0].numpy()[mask],
        "pooled": outputs["pooled_output"][0].numpy(),
        "layers": [layer[0].numpy()[mask]
                   for layer in outputs["encoder_outputs"]],
    }

  def embedding(self, text, pooling="mean", normalize=True,
                seq_length=MAX_SEQ_LENGTH) -> np.ndarray:
    ref = self.encode(text, seq_length)
    sequence = ref["sequence"]
    vector = {
        "mean": lambda: sequence.mean(axis=0),
        "cls": lambda: sequence[0],
        "pooler": lambda: ref["pooled"],
        "max": lambda: sequence.max(axis=0),
    }[pooling]()
    return unit(vector) if normalize else vector


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
  return Reference(tiny_model_dir)


@pytest.fixture(scope="module")
def two_layer_model_dir(tmp_path_factory):
  """Like tiny_model_dir with 2 layers: the last layer is not layer 0."""
  checkpoint = tiny_bert.write_tiny_checkpoint(
      str(tmp_path_factory.mktemp("tiny_ckpt_2l")), sentence_transformers=True,
      layers=2)
  model_dir = str(tmp_path_factory.mktemp("tiny_model_2l") / "model")
  export.export_checkpoint(checkpoint, model_dir, name="tiny-bert-2l")
  return model_dir


# ---------------------------------------------------------------------------
# Embedding a batch.


def test_batch_results_in_input_order_and_match_reference(loaded, reference):
  handler, model = loaded(pooling="mean", normalize=True)
  encoded = run(handler, model, TEXTS)

  for text, enc in zip(TEXTS, encoded):
    assert isinstance(enc, EncodedText)
    assert enc.embedding.shape == (HIDDEN,)
    assert enc.embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(enc.embedding), 1.0, atol=1e-5)
    assert enc.num_tokens == 2 + len(reference.wordpieces(text))
    assert enc.truncated is False
    np.testing.assert_allclose(enc.embedding, reference.embedding(text),
                               atol=1e-5)
    # No sequence output asked for.
    assert enc.token_ids is None and enc.sequence_embedding is None
    assert enc.layers == {}

  # The texts really differ, so a mix-up of the order could not pass.
  vectors = np.stack([enc.embedding for enc in encoded])
  similarity = vectors @ vectors.T
  off_diagonal = similarity[~np.eye(len(TEXTS), dtype=bool)]
  assert off_diagonal.max() < 0.999
  assert len({enc.num_tokens for enc in encoded}) >= 5


@pytest.mark.parametrize("max_batch_tokens", [None, 40])
def test_batch_equals_each_text_alone(tiny_model_dir, loaded,
                                      max_batch_tokens):
  """Padding to the batch's longest row (masked) changes nothing."""
  _, model = loaded(pooling="mean", normalize=True)
  handler = BertEmbeddingModelHandler(
      settings_for(tiny_model_dir, pooling="mean", normalize=True),
      max_batch_tokens=max_batch_tokens)
  batch = run(handler, model, TEXTS)
  for text, enc in zip(TEXTS, batch):
    [alone] = run(handler, model, [text])
    np.testing.assert_allclose(enc.embedding, alone.embedding, atol=1e-5)
    assert enc.num_tokens == alone.num_tokens


def test_padded_batch_really_is_padded(loaded):
  """The equality above is meaningful: the batch goes to the model as one
  padded call (one call of rows of different lengths)."""
  handler, model = loaded(pooling="mean", normalize=True)
  recorder = RecordingModel(model)
  run(handler, recorder, TEXTS)
  assert len(recorder.calls) == 1
  assert sorted(recorder.calls[0]) == sorted(TEXTS)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler", "max"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_modes(loaded, reference, pooling, normalize):
  handler, model = loaded(pooling=pooling, normalize=normalize)
  encoded = run(handler, model, TEXTS)
  for text, enc in zip(TEXTS, encoded):
    expected = reference.embedding(text, pooling=pooling, normalize=normalize)
    np.testing.assert_allclose(enc.embedding, expected, atol=1e-5)
    if normalize:
      np.testing.assert_allclose(np.linalg.norm(enc.embedding), 1.0,
                                 atol=1e-5)


def test_pooling_modes_differ(loaded):
  """Each mode computes something of its own (no silent fallback)."""
  vectors = {
      pooling: run(*loaded(pooling=pooling, normalize=True), [TEXTS[0]])[0]
      .embedding for pooling in ("mean", "cls", "pooler", "max")
  }
  names = sorted(vectors)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not np.allclose(vectors[a], vectors[b], atol=1e-3), (a, b)


def test_truncation(loaded, reference):
  handler, model = loaded(max_seq_length=8, sequence_output=True)
  assert len(reference.wordpieces(LONG_TEXT)) > 6
  assert len(reference.wordpieces("hello world")) == 2
  long_enc, short_enc, exact_enc = run(
      handler, model, [LONG_TEXT, "hello world", "the quick brown fox jumps a"])

  assert long_enc.truncated is True
  assert long_enc.num_tokens == 8
  expected_ids = [CLS_ID] + list(reference.wordpieces(LONG_TEXT)[:6]) + [
      SEP_ID]
  np.testing.assert_array_equal(long_enc.token_ids, expected_ids)
  np.testing.assert_allclose(
      long_enc.embedding, reference.embedding(LONG_TEXT, seq_length=8),
      atol=1e-5)

  assert short_enc.truncated is False
  assert short_enc.num_tokens == 4

  # Exactly max_seq_length tokens with [CLS] and [SEP]: not truncated.
  assert len(reference.wordpieces("the quick brown fox jumps a")) == 6
  assert exact_enc.truncated is False
  assert exact_enc.num_tokens == 8


def test_no_truncation_at_full_length(loaded):
  handler, model = loaded()
  [enc] = run(handler, model, [LONG_TEXT])
  assert enc.truncated is False
  assert enc.num_tokens > 8


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sequence_output_real_tokens_only(loaded, reference, dtype):
  handler, model = loaded(sequence_output=True, sequence_dtype=dtype,
                          encoder_layers=(0,))
  encoded = run(handler, model, TEXTS)
  tolerance = 1e-5 if dtype == "float32" else 5e-3
  for text, enc in zip(TEXTS, encoded):
    ref = reference.encode(text)
    n = 2 + len(reference.wordpieces(text))
    assert enc.num_tokens == n
    assert enc.token_ids.dtype == np.int32
    assert enc.token_ids.shape == (n,)
    np.testing.assert_array_equal(enc.token_ids, ref["word_ids"])
    assert enc.token_ids[0] == CLS_ID and enc.token_ids[-1] == SEP_ID
    assert 0 not in enc.token_ids  # no padding

    assert enc.sequence_embedding.dtype == np.dtype(dtype)
    assert enc.sequence_embedding.shape == (n, HIDDEN)
    np.testing.assert_allclose(enc.sequence_embedding.astype(np.float32),
                               ref["sequence"], atol=tolerance,
                               rtol=tolerance)

    assert sorted(enc.layers) == [0]
    layer = enc.layers[0]
    assert layer.shape == (HIDDEN,) and layer.dtype == np.float32
    np.testing.assert_allclose(layer, unit(ref["layers"][0].mean(axis=0)),
                               atol=1e-5)
    # The sentence embedding is unaffected by asking for more.
    np.testing.assert_allclose(enc.embedding, reference.embedding(text),
                               atol=1e-5)


# ---------------------------------------------------------------------------
# Planning model calls.


def random_texts(rng, n):
  words = ["a", "fox", "embedding", "the", "unbelievably", "x"]
  return [
      " ".join(rng.choice(words, size=int(rng.integers(0, 60))))
      for _ in range(n)
  ]


def check_plan(texts, max_seq_length, max_tokens):
  calls = plan_model_calls(texts, max_seq_length, max_tokens)
  flat = [i for call in calls for i in call]
  assert sorted(flat) == list(range(len(texts)))  # every index exactly once
  assert all(calls)  # no empty call
  estimates = [estimate_tokens(texts[i], max_seq_length) for i in flat]
  assert estimates == sorted(estimates)  # sorted by length, across calls
  for call in calls:
    longest = max(estimate_tokens(texts[i], max_seq_length) for i in call)
    assert len(call) * longest <= max_tokens or len(call) == 1
  # Greedy: the next call's first text would not have fit in this call.
  for call, following in zip(calls, calls[1:]):
    nxt = estimate_tokens(texts[following[0]], max_seq_length)
    assert (len(call) + 1) * nxt > max_tokens
  return calls


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_tokens", [1, 30, 100, 1000, 10**6])
def test_plan_model_calls_properties(seed, max_tokens):
  rng = np.random.default_rng(seed)
  check_plan(random_texts(rng, 50), 64, max_tokens)


def test_plan_model_calls_cases():
  assert plan_model_calls([], 32, 100) == []
  texts = ["x" * 400, "ab", "abcd" * 10, "abcd"]
  # Estimates: 32 (capped at max_seq_length), 2, 12, 3.
  assert [estimate_tokens(t, 32) for t in texts] == [32, 2, 12, 3]
  assert plan_model_calls(texts, 32, 10**6) == [[1, 3, 2, 0]]
  # A text longer than the budget alone gets a call of its own.
  assert plan_model_calls(texts, 32, 20) == [[1, 3], [2], [0]]
  assert plan_model_calls(texts, 32, 1) == [[1], [3], [2], [0]]


def test_run_inference_keeps_calls_within_budget(tiny_model_dir, loaded,
                                                 reference):
  _, model = loaded()
  budget = 40
  handler = BertEmbeddingModelHandler(settings_for(tiny_model_dir),
                                      max_batch_tokens=budget)
  recorder = RecordingModel(model)
  texts = TEXTS * 3
  encoded = run(handler, recorder, texts)
  assert len(recorder.calls) > 1
  assert sorted(t for call in recorder.calls for t in call) == sorted(texts)
  for call in recorder.calls:
    longest = max(estimate_tokens(t, MAX_SEQ_LENGTH) for t in call)
    assert len(call) * longest <= budget or len(call) == 1
  for text, enc in zip(texts, encoded):
    np.testing.assert_allclose(enc.embedding, reference.embedding(text),
                               atol=1e-5)


# ---------------------------------------------------------------------------
# Failure isolation.


class RecordingModel:
  """Wraps a model; records the texts of every embed call."""

  def __init__(self, model):
    self._model = model
    self.calls = []

  def embed(self, texts):
    self.calls.append(list(texts))
    return self._model.embed(texts)


class PoisonedModel(RecordingModel):
  """Fails any call whose batch holds a text containing POISON."""

  def embed(self, texts):
    self.calls.append(list(texts))
    for text in texts:
      if POISON in text:
        raise ValueError(f"cannot embed {text!r}")
    return self._model.embed(texts)


POISON = "vector poison"


@pytest.mark.parametrize("poisoned", [[0], [4], [9], [2, 7]])
def test_failure_isolation(loaded, poisoned):
  handler, model = loaded()
  assert isinstance(model, LoadedBertModel)
  good_texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(10)]
  texts = list(good_texts)
  for i in poisoned:
    texts[i] = f"the {POISON} number {i}"
  normal = run(handler, model, texts=[t for t in texts if POISON not in t])

  wrapped = PoisonedModel(model)
  results = run(handler, wrapped, texts)

  failures = [i for i, r in enumerate(results)
              if isinstance(r, InferenceFailure)]
  assert failures == poisoned
  for i in poisoned:
    assert "ValueError" in results[i].error
    assert f"cannot embed {texts[i]!r}" in results[i].error
  good = [r for r in results if not isinstance(r, InferenceFailure)]
  assert len(good) == len(texts) - len(poisoned)
  assert all(isinstance(r, EncodedText) for r in good)
  for got, want in zip(good, normal):
    np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)
    assert got.num_tokens == want.num_tokens
  # Each poisoned text was finally tried on its own.
  for i in poisoned:
    assert [texts[i]] in wrapped.calls


def test_every_text_failing(loaded):
  handler, model = loaded()
  texts = [f"{POISON} {i}" for i in range(5)]
  results = run(handler, PoisonedModel(model), texts)
  assert all(isinstance(r, InferenceFailure) for r in results)


# ---------------------------------------------------------------------------
# Shipping the handler to workers.


@pytest.mark.parametrize("dumps,loads", [
    (pickle.dumps, pickle.loads),
    (cloudpickle.dumps, cloudpickle.loads),
    (beam_pickler.dumps, beam_pickler.loads),
], ids=["pickle", "cloudpickle", "beam_pickler"])
def test_handler_pickles_before_load(tiny_model_dir, loaded, dumps, loads):
  settings = settings_for(tiny_model_dir, pooling="cls", sequence_output=True)
  handler = BertEmbeddingModelHandler(settings, large_model=True,
                                      max_batch_size=16, max_batch_tokens=99)
  restored = loads(dumps(handler))
  assert restored.share_model_across_processes() is True
  assert restored.batch_elements_kwargs() == handler.batch_elements_kwargs()
  model = restored.load_model()
  got = run(restored, model, TEXTS[:3])
  _, reference_model = loaded(pooling="cls", sequence_output=True)
  want = run(handler, reference_model, TEXTS[:3])
  for g, w in zip(got, want):
    np.testing.assert_allclose(g.embedding, w.embedding, atol=1e-6)
    np.testing.assert_array_equal(g.token_ids, w.token_ids)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "pooler"])
def test_encoder_layers_pool_their_own_layer(two_layer_model_dir, pooling):
  reference = Reference(two_layer_model_dir)
  handler = BertEmbeddingModelHandler(
      settings_for(two_layer_model_dir, pooling=pooling, encoder_layers=(0, 1)))
  encoded = run(handler, handler.load_model(), TEXTS[:4])
  # Layers pool like the sentence vector, but "pooler" (no pooler per
  # layer) falls back to the mean.
  layer_pool = {
      "mean": lambda s: s.mean(axis=0), "cls": lambda s: s[0],
      "max": lambda s: s.max(axis=0), "pooler": lambda s: s.mean(axis=0),
  }[pooling]
  for text, enc in zip(TEXTS[:4], encoded):
    ref = reference.encode(text)
    assert len(ref["layers"]) == 2
    assert sorted(enc.layers) == [0, 1]
    for layer in (0, 1):
      np.testing.assert_allclose(enc.layers[layer],
                                 unit(layer_pool(ref["layers"][layer])),
                                 atol=1e-5)
    assert not np.allclose(enc.layers[0], enc.layers[1], atol=1e-3)
    np.testing.assert_allclose(
        enc.embedding, reference.embedding(text, pooling=pooling), atol=1e-5)


@pytest.mark.parametrize("precision, min_cosine", [
    ("bfloat16", 0.99), ("mixed_float16", 0.99999)])
def test_precision_paths_run_on_cpu(tiny_model_dir, precision, min_cosine):
  # bfloat16 really computes in bfloat16 here (oneDNN); mixed_float16 only
  # rewrites GPU kernels, so on a CPU it must give the float32 result.
  from transforms.model_handler import EmbeddingSettings, LoadedBertModel
  texts = ["the quick brown fox", "hello world", "a cat sat on the mat"] * 4
  paths = dict(preprocess_path=f"{tiny_model_dir}/preprocess",
               encoder_path=f"{tiny_model_dir}/encoder", max_seq_length=32)
  reduced = LoadedBertModel(EmbeddingSettings(
      **paths, precision=precision)).embed(texts)["embedding"]
  full = LoadedBertModel(EmbeddingSettings(**paths)).embed(texts)["embedding"]
  cosine = (reduced * full).sum(1)
  assert cosine.min() >= min_cosine
  assert reduced.dtype == np.float32


def test_xla_path_gives_the_same_vectors(tiny_model_dir):
  from transforms.model_handler import EmbeddingSettings, LoadedBertModel
  texts = ["the quick brown fox jumps", "hello", "a cat sat on the mat"]
  paths = dict(preprocess_path=f"{tiny_model_dir}/preprocess",
               encoder_path=f"{tiny_model_dir}/encoder", max_seq_length=32)
  jit = LoadedBertModel(EmbeddingSettings(**paths, jit_compile=True,
                                          sequence_output=True)).embed(texts)
  plain = LoadedBertModel(EmbeddingSettings(**paths,
                                            sequence_output=True)).embed(texts)
  np.testing.assert_allclose(jit["embedding"], plain["embedding"], atol=1e-5)
  # Lengths are rounded up to 16 under XLA; the real tokens are the same.
  assert jit["token_ids"].shape[1] % 16 == 0
  np.testing.assert_array_equal(jit["num_tokens"], plain["num_tokens"])
