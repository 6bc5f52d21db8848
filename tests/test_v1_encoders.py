"""v1 TF Hub BERT encoders (list in, tuple out, own vocabulary) and layer
selection for v2 ones, on tiny models.

The v1 encoders are built by tests/tiny_v1.py from the tiny BERT weights,
cased and uncased. References are independent of the pipeline: token ids
from Hugging Face's BertTokenizerFast built from the encoder's own vocab
asset and do_lower_case flag, vectors from calling the SavedModel directly on
inputs padded to a fixed length.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (the preprocess model's ops)
from apache_beam.runners.runner import PipelineState
from transformers import BertTokenizerFast

from bert_model import catalog
from bert_model import export
from bert_model import metadata as metadata_lib
from bert_model import resolution
from bert_model import saved_model_facts
from bert_model.loaded_model import LoadedBertModel
from bert_model.loaded_model import ModelSettings
from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from tests import network_guard
from bert_model import tiny_checkpoint as tiny_bert
from tests import tiny_v1

H = 16
SEQ = 64
SENTENCES = [
    "Hello World!",
    "the quick brown fox jumps over the lazy dog",
    "The Fox and the DOG sat on a Mat.",
    "Ünïcode text, with àccents: Àé and Ñ",
    "[CLS] a literal [SEP] token [MASK]",
    "embeddings, searched: 1, 2, 3?",
    "  spaced\ttabs\nand newlines  ",
    "中文 mixed with text",
    "dog 🐶 unknown",
    "unknownword Unknownword",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Refuses, and records, outside connections: no test may try one."""
  attempts = network_guard.guard_network(monkeypatch)
  yield attempts
  assert not attempts, f"network use attempted: {attempts}"


@pytest.fixture(scope="module")
def v1_models(tmp_path_factory):
  """{"uncased", "cased", "cased_keras"} -> v1 SavedModel directory."""
  base = tmp_path_factory.mktemp("v1")
  return {
      "uncased": tiny_v1.write_tiny_v1_encoder(str(base / "uncased")),
      "cased": tiny_v1.write_tiny_v1_encoder(str(base / "cased"), cased=True,
                                             seed=1),
      "cased_keras": tiny_v1.write_tiny_v1_encoder(
          str(base / "cased_keras"), cased=True, seed=1,
          training_argument=True),
  }


def _hf_tokenizer(model_dir):
  loaded = tf.saved_model.load(model_dir)
  vocab = loaded.vocab_file.asset_path.numpy().decode()
  # The vocabulary is the first argument (transformers 5 ignores vocab_file=).
  return BertTokenizerFast(vocab,
                           do_lower_case=bool(loaded.do_lower_case.numpy()))


def _direct_v1(model_dir, token_ids, keras_style):
  """(pooled_output, sequence_output) of the SavedModel called directly on
  the given ids padded to SEQ."""
  model = tf.saved_model.load(model_dir)
  ids = np.zeros([len(token_ids), SEQ], np.int32)
  for i, row in enumerate(token_ids):
    ids[i, :len(row)] = row
  inputs = [tf.constant(ids), tf.constant((ids > 0).astype(np.int32)),
            tf.zeros_like(ids)]
  if keras_style:
    pooled, sequence = model(inputs, training=False)
  else:
    pooled, sequence = model(inputs)
  return pooled.numpy(), sequence.numpy()


def _settings(model_dir, **kwargs):
  kwargs.setdefault("max_seq_length", SEQ)
  return ModelSettings(preprocess_path=None, encoder_path=model_dir,
                           encoder_format="v1", **kwargs)


# ---------------------------------------------------------------------------
# Detection and metadata.


def test_format_detection(v1_models, tiny_model_dir):
  for path in v1_models.values():
    assert saved_model_facts.encoder_format_of(path) == "v1"
  assert saved_model_facts.encoder_format_of(
      os.path.join(tiny_model_dir, metadata_lib.ENCODER_DIR)) == "v2"


@pytest.mark.parametrize("kind, lower_case, vocab_size", [
    ("uncased", True, len(tiny_bert.tiny_vocab())),
    ("cased", False, len(tiny_bert.tiny_vocab(cased=True))),
    ("cased_keras", False, len(tiny_bert.tiny_vocab(cased=True))),
])
def test_v1_directory_resolves_with_its_own_tokenizer(v1_models, kind,
                                                      lower_case, vocab_size):
  resolved = resolution.resolve_model(v1_models[kind])
  assert resolved.encoder_format == "v1"
  assert resolved.preprocess_path is None  # built in the worker
  assert resolved.encoder_path == v1_models[kind]
  meta = resolved.metadata
  assert meta.lower_case is lower_case
  assert (meta.hidden_size, meta.num_layers, meta.vocab_size) == (
      H, 1, vocab_size)
  assert (meta.pooling, meta.normalize, meta.max_seq_length) == (
      "pooler", False, 64)
  assert meta.source["preprocess"] == resolution.BUILTIN_V1_PREPROCESS
  assert "assets/vocab.txt" in meta.checksums
  # Deterministic: the same model gives the same fingerprint.
  assert resolution.resolve_model(
      v1_models[kind]).fingerprint == resolved.fingerprint


def test_v1_catalogue_version_in_the_cache(v1_models, tmp_path, monkeypatch):
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
  handle = "https://tfhub.dev/tensorflow/bert_en_cased_L-24_H-1024_A-16/2"
  tiny_v1.install_in_cache(str(tmp_path), handle, v1_models["cased"])
  resolved = resolution.resolve_model("bert_en_cased_L-24_H-1024_A-16/2")
  assert resolved.encoder_format == "v1"
  assert resolved.encoder_path == handle
  # The catalogue's preprocess model is for the dict interface: a v1 encoder
  # keeps its own vocabulary.
  assert resolved.preprocess_path is None
  assert resolved.metadata.name == "bert_en_cased_L-24_H-1024_A-16"
  assert not resolved.metadata.lower_case
  # The worker loads the handle, offline, from the cache.
  model = LoadedBertModel(_settings(resolved.encoder_path))
  assert model.embed(["Hello"])["embedding"].shape == (1, H)


def test_v1_preprocessor_override_and_mismatch(v1_models, tiny_model_dir):
  preprocess = os.path.join(tiny_model_dir, metadata_lib.PREPROCESS_DIR)
  resolved = resolution.resolve_model(v1_models["uncased"],
                                            preprocessor=preprocess)
  assert resolved.preprocess_path == preprocess
  with pytest.raises(ValueError, match=r"does not match.*98 tokens.*113 rows"):
    resolution.resolve_model(v1_models["cased"], preprocessor=preprocess)


# ---------------------------------------------------------------------------
# Tokens and vectors against the references.


@pytest.mark.parametrize("kind", ["uncased", "cased", "cased_keras"])
def test_v1_token_ids_equal_the_reference_tokenizer(v1_models, kind):
  reference = _hf_tokenizer(v1_models[kind])
  model = LoadedBertModel(_settings(v1_models[kind], sequence_output=True))
  outputs = model.embed(SENTENCES)
  for i, sentence in enumerate(SENTENCES):
    expected = reference(sentence)["input_ids"]
    n = int(outputs["num_tokens"][i])
    assert outputs["token_ids"][i, :n].tolist() == expected, sentence


def test_cased_models_keep_case_and_accents(v1_models):
  vocab = tiny_bert.tiny_vocab(cased=True)
  cased = LoadedBertModel(_settings(v1_models["cased"], sequence_output=True))
  uncased = LoadedBertModel(_settings(v1_models["uncased"],
                                      sequence_output=True))
  texts = ["Hello", "hello", "Ünïcode"]
  cased_ids = cased.embed(texts)["token_ids"]
  assert cased_ids[0, 1] == vocab.index("Hello")
  assert cased_ids[1, 1] == vocab.index("hello")
  assert cased_ids[2, 1] == vocab.index("Ünïcode")  # accents kept
  uncased_ids = uncased.embed(texts)["token_ids"]
  assert uncased_ids[0, 1] == uncased_ids[1, 1] == tiny_bert.tiny_vocab().index(
      "hello")


@pytest.mark.parametrize("kind", ["uncased", "cased_keras"])
def test_v1_vectors_equal_calling_the_saved_model(v1_models, kind):
  path = v1_models[kind]
  token_ids = [_hf_tokenizer(path)(s)["input_ids"] for s in SENTENCES]
  pooled, sequence = _direct_v1(path, token_ids, kind == "cased_keras")

  model = LoadedBertModel(_settings(path, pooling="pooler", normalize=False,
                                    sequence_output=True))
  outputs = model.embed(SENTENCES)
  np.testing.assert_allclose(outputs["embedding"], pooled, atol=1e-5)
  for i, ids in enumerate(token_ids):
    np.testing.assert_allclose(outputs["sequence_output"][i, :len(ids)],
                               sequence[i, :len(ids)], atol=1e-5)

  mean = LoadedBertModel(_settings(path, pooling="mean")).embed(SENTENCES)
  for i, ids in enumerate(token_ids):
    vector = sequence[i, :len(ids)].mean(axis=0)
    np.testing.assert_allclose(mean["embedding"][i],
                               vector / np.linalg.norm(vector), atol=1e-5)


def test_v1_encoder_refuses_encoder_layers(v1_models):
  with pytest.raises(ValueError, match="no encoder_outputs"):
    LoadedBertModel(_settings(v1_models["uncased"], encoder_layers=(0,)))


# ---------------------------------------------------------------------------
# Through the pipeline.


def _corpus(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n"
                          for i, s in enumerate(SENTENCES)))
  return str(path)


def test_v1_end_to_end(v1_models, tmp_path):
  path = v1_models["cased"]
  run_dir = str(tmp_path / "run")
  result = main.run(["--input", _corpus(tmp_path), "--output", run_dir,
                     "--model", path, "--neighbours_k", "0",
                     "--runner=DirectRunner"])
  assert result.state == PipelineState.DONE
  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["model"]["encoder_format"] == "v1"
  assert manifest["model"]["pooling"] == "pooler"
  assert manifest["counts"]["embedded"] == len(SENTENCES)
  ids, matrix = read_outputs.load_embeddings(run_dir)
  tokenizer = _hf_tokenizer(path)
  token_ids = [tokenizer(SENTENCES[int(i[1:])])["input_ids"] for i in ids]
  pooled, _ = _direct_v1(path, token_ids, False)
  np.testing.assert_allclose(matrix, pooled, atol=1e-5)


def test_encoder_layers_with_a_v1_encoder_is_a_config_error(v1_models,
                                                            tmp_path):
  run_dir = str(tmp_path / "run")
  with pytest.raises(ConfigError,
                     match=r"--encoder_layers='-1'.*v1 TF Hub encoder.*no "
                     r"encoder_outputs"):
    main.run(["--input", _corpus(tmp_path), "--output", run_dir, "--model",
              v1_models["uncased"], "--encoder_layers=-1",
              "--runner=DirectRunner"])
  assert not os.path.exists(run_dir)


@pytest.fixture(scope="module")
def two_layer_model_dir(tmp_path_factory):
  ckpt = tiny_bert.write_tiny_checkpoint(
      str(tmp_path_factory.mktemp("two_layer_ckpt")), layers=2, seed=3)
  model_dir = str(tmp_path_factory.mktemp("two_layer") / "model")
  export.export_checkpoint(ckpt, model_dir, name="tiny-2-layers")
  return model_dir


def test_v2_catalogue_encoder_layer_selection(two_layer_model_dir, tmp_path,
                                              monkeypatch):
  """A 2-layer v2 encoder under a small BERT handle, --encoder_layers all."""
  cache = str(tmp_path / "cache")
  monkeypatch.setenv("TFHUB_CACHE_DIR", cache)
  entry = catalog.lookup_name("small_bert/bert_en_uncased_L-2_H-128_A-2")
  encoder_dir = os.path.join(two_layer_model_dir, metadata_lib.ENCODER_DIR)
  preprocess_dir = os.path.join(two_layer_model_dir,
                                metadata_lib.PREPROCESS_DIR)
  tiny_v1.install_in_cache(cache, entry.handle, encoder_dir)
  tiny_v1.install_in_cache(cache, entry.preprocess, preprocess_dir)

  run_dir = str(tmp_path / "run")
  main.run(["--input", _corpus(tmp_path), "--output", run_dir, "--model",
            entry.name, "--encoder_layers", "all", "--neighbours_k", "0",
            "--runner=DirectRunner"])
  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["model"]["encoder_layers"] == [0, 1]
  assert manifest["model"]["num_layers"] == 2

  preprocess, encoder = hub.load(preprocess_dir), hub.load(encoder_dir)
  rows = read_outputs.read_table(run_dir, "embeddings",
                                 format="tfrecord").to_pylist()
  assert len(rows) == len(SENTENCES)
  for row in rows:
    text = SENTENCES[int(row["id"][1:])]
    inputs = preprocess(tf.constant([text]))
    outputs = encoder(inputs)
    n = int(inputs["input_mask"].numpy().sum())
    # The main vector is the pooler's (TF Hub default, not normalised)...
    np.testing.assert_allclose(row["embedding"],
                               outputs["pooled_output"].numpy()[0], atol=1e-5)
    # ...and each layer is its own field, mean-pooled over the real tokens.
    for layer in (0, 1):
      expected = outputs["encoder_outputs"][layer].numpy()[0, :n].mean(axis=0)
      np.testing.assert_allclose(row[f"encoder_layer_{layer}"], expected,
                                 atol=1e-5)
    assert not np.allclose(row["encoder_layer_0"], row["encoder_layer_1"])
