"""Tests for transforms.model_handler on the tiny real model, without Beam.

Reference values come from an independent path: the exported preprocess and
encoder SavedModels loaded with hub.load, inputs packed by the preprocess
model's own `bert_pack_inputs` to a fixed length (padding + mask), pooling and
normalisation redone in numpy over the real tokens.
"""

import itertools
import pickle

import cloudpickle
import numpy as np
import pytest
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (the preprocess model's ops)
from apache_beam.internal import pickler as beam_pickler
from apache_beam.ml.inference.base import PredictionResult

from bert_model import export
from bert_model import metadata as metadata_lib
from bert_model.call_plan import call_cost
from bert_model.call_plan import plan_model_calls
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings
from run_directory.records import Vectors
from bert_model import tiny_checkpoint as tiny_bert
from transforms.model_handler import BertEmbeddingModelHandler
from transforms.model_handler import HandlerSettings
from transforms.model_handler import BROKEN_MODEL_BATCHES
from transforms.model_handler import InferenceFailure

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


def settings_for(model_dir, **kwargs) -> ModelSettings:
  kwargs.setdefault("max_seq_length", MAX_SEQ_LENGTH)
  return ModelSettings(
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
      handler = BertEmbeddingModelHandler(HandlerSettings(settings))
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
    assert isinstance(enc, Vectors)
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
  handler = BertEmbeddingModelHandler(HandlerSettings(
      settings_for(tiny_model_dir, pooling="mean", normalize=True),
      **({"max_batch_tokens": max_batch_tokens} if max_batch_tokens else {})))
  batch = run(handler, model, TEXTS)
  for text, enc in zip(TEXTS, batch):
    [alone] = run(handler, model, [text])
    np.testing.assert_allclose(enc.embedding, alone.embedding, atol=1e-5)
    assert enc.num_tokens == alone.num_tokens


def test_long_runs_of_whitespace_or_one_long_word_are_not_lost(loaded):
  # Found by a fuzzer: texts are cut to max_seq_length * 128 characters
  # before tokenizing (4,096 here). 5,000 spaces before a sentence made it
  # "empty"; a 5,000-character word hid the words after it, untold.
  _, model = loaded()
  sentence = "the quick brown fox"
  out = model.embed([sentence, " " * 5000 + sentence,
                     "\t\n\r " * 2000 + sentence + "\r\n" * 3000,
                     "x" * 5000 + " " + sentence,
                     sentence + "\u200b" * 5000])
  np.testing.assert_array_equal(out["embedding"][1], out["embedding"][0])
  np.testing.assert_array_equal(out["embedding"][2], out["embedding"][0])
  assert out["num_tokens"][:3].tolist() == [out["num_tokens"][0]] * 3
  # Cut inside the long word: the words after it are lost, and told.
  assert out["truncated"].tolist() == [False, False, False, True, False]
  # Nothing after the cut but what the tokenizer drops: nothing lost.
  assert out["num_tokens"][4] == out["num_tokens"][0]


def record_encoder_calls(model, monkeypatch) -> list:
  """Records (word_ids, mask) of every encoder call the model makes."""
  calls = []
  encode = model.encode_padded

  def recording(word_ids, mask, type_ids):
    calls.append((word_ids.copy(), mask.copy()))
    return encode(word_ids, mask, type_ids)

  monkeypatch.setattr(model, "encode_padded", recording)
  return calls


def test_padded_batch_really_is_padded(loaded, monkeypatch):
  """The equality above is meaningful: texts of different lengths share a
  padded, masked encoder call."""
  handler, model = loaded(pooling="mean", normalize=True)
  calls = record_encoder_calls(model, monkeypatch)
  encoded = run(handler, model, TEXTS)
  assert sum(len(word_ids) for word_ids, _ in calls) == len(TEXTS)
  real = sorted(enc.num_tokens for enc in encoded)
  assert sorted(n for _, mask in calls for n in mask.sum(axis=1)) == real
  padded = [mask for _, mask in calls if len(set(mask.sum(axis=1))) > 1]
  assert padded, [mask.sum(axis=1) for _, mask in calls]
  for mask in padded:
    assert mask.shape[1] == mask.sum(axis=1).max()  # to its own longest


# ---------------------------------------------------------------------------
# Planning model calls.


def brute_force_cost(lengths, max_tokens) -> float:
  """Least summed call_cost over every cut of the sorted lengths into
  consecutive calls within the budget (exponential: small inputs only)."""
  ordered = sorted(lengths)
  n = len(ordered)
  best = float("inf")
  for cuts in itertools.product([False, True], repeat=n - 1):
    bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
    cost = 0.0
    for start, end in zip(bounds, bounds[1:]):
      rows, longest = end - start, ordered[end - 1]
      if rows > 1 and rows * longest > max_tokens:
        cost = float("inf")
        break
      cost += call_cost(rows, longest)
    best = min(best, cost)
  return best


def check_plan(lengths, max_tokens):
  calls = plan_model_calls(lengths, max_tokens)
  flat = [int(i) for call in calls for i in call]
  assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
  assert all(len(call) for call in calls)  # no empty call
  in_order = [lengths[i] for i in flat]
  assert in_order == sorted(in_order)  # sorted by length, across calls
  for call in calls:
    longest = max(lengths[i] for i in call)
    assert len(call) * longest <= max_tokens or len(call) == 1
  return calls


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_tokens", [1, 30, 100, 1000, 10**6])
def test_plan_model_calls_properties(seed, max_tokens):
  rng = np.random.default_rng(seed)
  check_plan([int(n) for n in rng.integers(3, 64, size=50)], max_tokens)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_tokens", [64, 400, 10**6])
def test_plan_model_calls_is_the_cheapest_cut(seed, max_tokens):
  rng = np.random.default_rng(seed)
  # Lengths with a wide spread, so that the best cut is not trivial.
  lengths = [int(n) for n in rng.choice([3, 5, 9, 20, 60, 200, 512], size=9)]
  calls = check_plan(lengths, max_tokens)
  cost = sum(call_cost(len(call), max(lengths[i] for i in call))
             for call in calls)
  assert cost == pytest.approx(brute_force_cost(lengths, max_tokens))


def test_plan_model_calls_cases():
  assert plan_model_calls([], 100) == []
  # Similar short texts share one call: the fixed cost outweighs the pads.
  [call] = plan_model_calls([10] * 50 + [11] * 50, 16384)
  assert len(call) == 100
  # A long text among short ones is not padded into their call.
  calls = plan_model_calls([3, 200, 3, 3], 16384)
  assert [sorted(call.tolist()) for call in calls] == [[0, 2, 3], [1]]
  # The budget splits calls; a text longer than it gets a call of its own.
  assert [call.tolist() for call in plan_model_calls([40, 50, 30], 20)] == [
      [2], [0], [1]]
  # The same lengths always give the same plan (deterministic output).
  lengths = list(np.random.default_rng(7).integers(3, 128, size=300))
  first = plan_model_calls(lengths, 4096)
  again = plan_model_calls(lengths, 4096)
  assert [c.tolist() for c in first] == [c.tolist() for c in again]


def test_run_inference_keeps_calls_within_budget(tiny_model_dir, loaded,
                                                 reference, monkeypatch):
  _, model = loaded()
  budget = 40
  handler = BertEmbeddingModelHandler(HandlerSettings(
      settings_for(tiny_model_dir), max_batch_tokens=budget))
  calls = record_encoder_calls(model, monkeypatch)
  texts = TEXTS * 3
  encoded = run(handler, model, texts)
  assert len(calls) > 1
  assert sum(len(word_ids) for word_ids, _ in calls) == len(texts)
  for word_ids, mask in calls:
    rows, length = word_ids.shape
    assert rows * length <= budget or rows == 1
    assert mask[:, -1].any()  # padded to the call's own longest text
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

  def embed(self, texts, **kwargs):
    self.calls.append(list(texts))
    return self._model.embed(texts, **kwargs)


class PoisonedModel(RecordingModel):
  """Fails any call whose batch holds a text containing POISON."""

  def embed(self, texts, **kwargs):
    self.calls.append(list(texts))
    for text in texts:
      if POISON in text:
        raise ValueError(f"cannot embed {text!r}")
    return self._model.embed(texts, **kwargs)


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
  assert all(isinstance(r, Vectors) for r in good)
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


def test_a_model_failing_every_text_batch_after_batch_fails_the_bundle(
    loaded, tiny_model_dir):
  # A broken model or device, not bad input: after BROKEN_MODEL_BATCHES
  # batches of nothing but failures the run stops instead of spending
  # 2n - 1 calls a batch to dead-letter the whole corpus.
  _, model = loaded()
  # Its own handler: the count of failed batches is the handler's.
  handler = BertEmbeddingModelHandler(
      HandlerSettings(settings_for(tiny_model_dir)))
  poisoned = PoisonedModel(model)
  bad = [f"{POISON} {i}" for i in range(4)]
  for _ in range(BROKEN_MODEL_BATCHES - 1):
    assert all(isinstance(r, InferenceFailure)
               for r in run(handler, poisoned, bad))
  # A batch with one good text is bad input, and starts the count again.
  run(handler, poisoned, bad + [TEXTS[0]])
  for _ in range(BROKEN_MODEL_BATCHES - 1):
    run(handler, poisoned, bad)
  with pytest.raises(RuntimeError, match="broken model or device.*"
                     "cannot embed"):
    run(handler, poisoned, bad)


# ---------------------------------------------------------------------------
# Shipping the handler to workers.


@pytest.mark.parametrize("dumps,loads", [
    (pickle.dumps, pickle.loads),
    (cloudpickle.dumps, cloudpickle.loads),
    (beam_pickler.dumps, beam_pickler.loads),
], ids=["pickle", "cloudpickle", "beam_pickler"])
def test_handler_pickles_before_load(tiny_model_dir, loaded, dumps, loads):
  settings = settings_for(tiny_model_dir, pooling="cls", sequence_output=True)
  handler = BertEmbeddingModelHandler(HandlerSettings(
      settings, large_model=True, max_batch_tokens=99))
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
  handler = BertEmbeddingModelHandler(HandlerSettings(settings_for(
      two_layer_model_dir, pooling=pooling, encoder_layers=(0, 1))))
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
  texts = ["the quick brown fox", "hello world", "a cat sat on the mat"] * 4
  paths = dict(preprocess_path=f"{tiny_model_dir}/preprocess",
               encoder_path=f"{tiny_model_dir}/encoder", max_seq_length=32)
  reduced = LoadedBertModel(ModelSettings(
      **paths, precision=precision)).embed(texts)["embedding"]
  full = LoadedBertModel(ModelSettings(**paths)).embed(texts)["embedding"]
  cosine = (reduced * full).sum(1)
  assert cosine.min() >= min_cosine
  assert reduced.dtype == np.float32


def test_xla_path_gives_the_same_vectors(tiny_model_dir, monkeypatch):
  texts = ["the quick brown fox jumps", "hello", "a cat sat on the mat"]
  paths = dict(preprocess_path=f"{tiny_model_dir}/preprocess",
               encoder_path=f"{tiny_model_dir}/encoder", max_seq_length=32)
  jit_model = LoadedBertModel(ModelSettings(**paths, jit_compile=True,
                                                sequence_output=True))
  calls = record_encoder_calls(jit_model, monkeypatch)
  jit = jit_model.embed(texts)
  plain = LoadedBertModel(ModelSettings(**paths,
                                            sequence_output=True)).embed(texts)
  np.testing.assert_allclose(jit["embedding"], plain["embedding"], atol=1e-5)
  # Encoder calls are rounded up to a multiple of 16 under XLA; the real
  # tokens and their vectors are the same.
  assert calls and all(ids.shape[1] % 16 == 0 for ids, _ in calls)
  assert max(plain["num_tokens"]) % 16  # so the rounding really padded
  np.testing.assert_array_equal(jit["num_tokens"], plain["num_tokens"])
  np.testing.assert_array_equal(jit["token_ids"], plain["token_ids"])
  for i, n in enumerate(plain["num_tokens"]):
    np.testing.assert_allclose(jit["sequence_output"][i, :n],
                               plain["sequence_output"][i, :n], atol=1e-5)
