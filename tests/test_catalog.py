"""Catalogue names, hub handles and where they resolve, without the network.

Handles resolve to local directories laid out as tensorflow_hub's cache
(TFHUB_CACHE_DIR/<sha1 of the handle>) or as a --model_root mirror
(MODEL_ROOT/<handle path>), filled by the tests with the tiny models. Any
attempt to reach the network is refused and recorded.
"""

import json
import os
import shutil
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (the preprocess model's ops)
from apache_beam.runners.runner import PipelineState
from tensorflow_hub import compressed_module_resolver

from bert_model import catalog
from bert_model import export
from bert_model import metadata as metadata_lib
from bert_model import resolution
from bert_model import saved_model_facts
from pipeline import main
from pipeline import read_outputs
from pipeline.errors import ConfigError
from bert_model import tiny_checkpoint as tiny_bert
from tests import tiny_v1

PUBMED = "https://tfhub.dev/google/experts/bert/pubmed/2"
UNCASED_PRE = "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"
CASED_PRE = "https://tfhub.dev/tensorflow/bert_en_cased_preprocess/3"
H = 16


@pytest.fixture
def no_network(monkeypatch):
  """Refuses (and records) name lookups and connections off this machine."""
  attempts = []
  original_getaddrinfo = socket.getaddrinfo
  original_connect = socket.socket.connect

  def getaddrinfo(host, *args, **kwargs):
    if host not in ("localhost", "127.0.0.1", "::1"):
      attempts.append(host)
      raise socket.gaierror(f"test guard: no network ({host})")
    return original_getaddrinfo(host, *args, **kwargs)

  def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
        "127.0.0.1", "::1", "localhost"):
      attempts.append(address)
      raise ConnectionRefusedError(f"test guard: no network ({address})")
    return original_connect(self, address)

  monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
  monkeypatch.setattr(socket.socket, "connect", connect)
  return attempts


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  cache = str(tmp_path / "tfhub_cache")
  os.makedirs(cache)
  monkeypatch.setenv("TFHUB_CACHE_DIR", cache)
  return cache


@pytest.fixture(scope="module")
def cased_model_dir(tmp_path_factory):
  """A tiny cased model (a different vocabulary size from the uncased one)."""
  ckpt = tiny_bert.write_tiny_checkpoint(
      str(tmp_path_factory.mktemp("cased_ckpt")), cased=True)
  model_dir = str(tmp_path_factory.mktemp("cased") / "model")
  export.export_checkpoint(ckpt, model_dir, name="tiny-cased")
  return model_dir


def _encoder(model_dir):
  return os.path.join(model_dir, metadata_lib.ENCODER_DIR)


def _preprocess(model_dir):
  return os.path.join(model_dir, metadata_lib.PREPROCESS_DIR)


@pytest.fixture
def pubmed_in_cache(hub_cache, tiny_model_dir):
  """The tiny uncased encoder and preprocess, cached as experts/pubmed and
  bert_en_uncased_preprocess/3."""
  tiny_v1.install_in_cache(hub_cache, PUBMED, _encoder(tiny_model_dir))
  tiny_v1.install_in_cache(hub_cache, UNCASED_PRE,
                           _preprocess(tiny_model_dir))
  return hub_cache


# ---------------------------------------------------------------------------
# The catalogue.


@pytest.mark.parametrize("name, handle, preprocess", [
    ("experts/pubmed", PUBMED, UNCASED_PRE),
    ("experts/pubmed/squad2",
     "https://tfhub.dev/google/experts/bert/pubmed/squad2/2", UNCASED_PRE),
    ("experts/wiki_books", "https://tfhub.dev/google/experts/bert/wiki_books/2",
     UNCASED_PRE),
    ("experts/mnli", "https://tfhub.dev/google/experts/bert/wiki_books/mnli/2",
     UNCASED_PRE),
    ("experts/wiki_books/sst2",
     "https://tfhub.dev/google/experts/bert/wiki_books/sst2/2", UNCASED_PRE),
    ("bert_en_uncased_L-12_H-768_A-12",
     "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4",
     UNCASED_PRE),
    ("bert_en_cased_L-24_H-1024_A-16",
     "https://tfhub.dev/tensorflow/bert_en_cased_L-24_H-1024_A-16/4",
     CASED_PRE),
    ("bert_en_cased_L-24_H-1024_A-16/2",
     "https://tfhub.dev/tensorflow/bert_en_cased_L-24_H-1024_A-16/2",
     CASED_PRE),
    ("small_bert/bert_en_uncased_L-4_H-256_A-4",
     "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-4_H-256_A-4/2",
     UNCASED_PRE),
    ("bert_multi_cased_L-12_H-768_A-12",
     "https://tfhub.dev/tensorflow/bert_multi_cased_L-12_H-768_A-12/4",
     "https://tfhub.dev/tensorflow/bert_multi_cased_preprocess/3"),
])
def test_short_names_and_their_preprocess(name, handle, preprocess):
  entry = catalog.lookup_name(name)
  assert entry.handle == handle
  assert entry.kind == "encoder"
  assert entry.preprocess == preprocess
  assert entry.lower_case == (preprocess == UNCASED_PRE)
  # The full handle finds the same entry (also with a trailing slash and on
  # the China mirror).
  assert catalog.lookup_handle(handle) == entry
  assert catalog.lookup_handle(handle + "/") == entry
  assert catalog.lookup_handle(handle.replace(
      "tfhub.dev", "hub.tensorflow.google.cn")) == entry


def test_catalogue_facts():
  large = catalog.lookup_name("bert_en_cased_L-24_H-1024_A-16")
  assert (large.num_layers, large.hidden_size, large.num_attention_heads,
          large.vocab_size) == (24, 1024, 16, 28996)
  small = catalog.lookup_name("small_bert/bert_en_uncased_L-2_H-128_A-2")
  assert (small.num_layers, small.hidden_size, small.vocab_size) == (
      2, 128, 30522)
  pre = catalog.lookup_name("bert_en_cased_preprocess")
  assert pre.kind == "preprocess" and pre.handle == CASED_PRE
  assert not pre.lower_case
  assert "experts/qqp" in catalog.names("encoder")
  assert "bert_en_uncased_preprocess" in catalog.names("preprocess")


@pytest.mark.parametrize("name, message", [
    ("experts/pubmd", r"not a model of the catalogue.*experts/pubmed"),
    ("bert_en_cased_L-24_H-1024_A-16/7", r"has versions 1, 2, 3, 4, not 7"),
    ("roberta-base", r"not a model of the catalogue"),
])
def test_unknown_names(name, message):
  with pytest.raises(catalog.UnknownModelError, match=message):
    catalog.lookup_name(name)


def test_unknown_handles_are_not_in_the_catalogue():
  assert catalog.lookup_handle("https://tfhub.dev/me/my_bert/1") is None
  assert catalog.lookup_handle("https://example.com/google/experts/bert/"
                               "pubmed/2") is None
  assert catalog.lookup_handle(PUBMED.replace("/2", "/9")) is None


def test_cache_path_is_tensorflow_hubs_own(hub_cache):
  for handle in (PUBMED, UNCASED_PRE):
    # pylint: disable=protected-access
    assert catalog.cache_path(handle) == (
        compressed_module_resolver._module_dir(handle))
    assert catalog.cache_path(handle).startswith(hub_cache + "/")


def test_mirror_layout():
  assert catalog.mirror_path("gs://bucket/hub/", PUBMED) == (
      "gs://bucket/hub/google/experts/bert/pubmed/2")
  assert catalog.mirror_path("/m", UNCASED_PRE) == (
      "/m/tensorflow/bert_en_uncased_preprocess/3")


# ---------------------------------------------------------------------------
# Resolution to paths, metadata and checks.


def test_short_name_and_handle_resolve_through_the_tfhub_cache(
    pubmed_in_cache, no_network):
  by_name = resolution.resolve_model("experts/pubmed")
  by_handle = resolution.resolve_model(PUBMED)
  assert by_name == by_handle
  assert by_name.encoder_format == "v2"
  # Workers load the handles; tensorflow_hub finds them in the same cache.
  assert by_name.encoder_path == PUBMED
  assert by_name.preprocess_path == UNCASED_PRE
  assert by_name.path == PUBMED
  meta = by_name.metadata
  assert meta.name == "experts/pubmed"
  assert meta.license == "Apache-2.0"
  assert (meta.pooling, meta.normalize) == ("pooler", False)
  # 128 (the TF Hub default), capped by the tiny model's 64 positions.
  assert meta.max_seq_length == 64 and meta.max_position_embeddings == 64
  # Read from the model itself, not the catalogue's BERT-base figures.
  assert (meta.hidden_size, meta.num_layers, meta.vocab_size) == (H, 1, 98)
  assert meta.source["preprocess"] == UNCASED_PRE
  assert meta.lower_case
  assert no_network == []


def test_model_root_mirror(tmp_path, tiny_model_dir, pubmed_in_cache,
                           no_network):
  root = str(tmp_path / "mirror")
  encoder = tiny_v1.install_in_mirror(root, PUBMED, _encoder(tiny_model_dir))
  preprocess = tiny_v1.install_in_mirror(root, UNCASED_PRE,
                                         _preprocess(tiny_model_dir))
  assert encoder == os.path.join(root, "google/experts/bert/pubmed/2")
  resolved = resolution.resolve_model("experts/pubmed",
                                            model_root=root)
  assert resolved.encoder_path == encoder
  assert resolved.preprocess_path == preprocess
  assert resolved.metadata.hidden_size == H
  # The same files through the cache: the same model, the same fingerprint.
  assert resolved.fingerprint == resolution.resolve_model(
      "experts/pubmed").fingerprint
  # A handle missing from the mirror is an error naming where it should be;
  # nothing is downloaded.
  with pytest.raises(FileNotFoundError,
                     match=r"not in the --model_root mirror.*"
                     r"tensorflow/bert_en_cased_L-12_H-768_A-12/4/"):
    resolution.resolve_model("bert_en_cased_L-12_H-768_A-12",
                                   model_root=root)
  assert no_network == []


def test_preprocessor_override(pubmed_in_cache, tiny_model_dir, tmp_path,
                               no_network):
  default = resolution.resolve_model("experts/pubmed")
  local = str(tmp_path / "my_preprocess")
  shutil.copytree(_preprocess(tiny_model_dir), local)
  override = resolution.resolve_model("experts/pubmed",
                                            preprocessor=local)
  assert override.preprocess_path == local
  assert override.encoder_path == default.encoder_path
  # The fingerprint covers the preprocess model.
  assert override.fingerprint != default.fingerprint
  assert override.metadata.source["preprocess"].startswith("sha256:")
  # A project model directory works as --preprocessor too (its preprocess/),
  # and so does a catalogue name.
  assert resolution.resolve_model(
      "experts/pubmed", preprocessor=tiny_model_dir).preprocess_path == (
          _preprocess(tiny_model_dir))
  assert resolution.resolve_model(
      "experts/pubmed", preprocessor="bert_en_uncased_preprocess"
  ).fingerprint == default.fingerprint
  assert no_network == []


def test_preprocess_that_does_not_match_the_vocabulary(
    pubmed_in_cache, cased_model_dir, tiny_model_dir):
  with pytest.raises(ValueError,
                     match=r"does not match --model=experts/pubmed.*113 "
                     r"tokens.*98 rows"):
    resolution.resolve_model("experts/pubmed",
                                   preprocessor=cased_model_dir)
  # Also for a project model directory given another preprocess model.
  with pytest.raises(ValueError, match=r"98 tokens.*113 rows"):
    resolution.resolve_model(cased_model_dir,
                                   preprocessor=tiny_model_dir)


def test_a_handle_that_does_not_exist(hub_cache, no_network):
  handle = "https://tfhub.dev/nobody/no_such_model/1"
  with pytest.raises(FileNotFoundError,
                     match=r"not in the TF Hub cache .*could not be "
                     r"downloaded.*TFHUB_CACHE_DIR layout"):
    resolution.resolve_model(handle)
  # It was looked for in the cache, then tensorflow_hub tried to download it.
  assert no_network
  with pytest.raises(FileNotFoundError,
                     match=r"no such directory, and 'experts/pubmd' is not a "
                     r"model of the catalogue. Did you mean experts/pubmed"):
    resolution.resolve_model("experts/pubmd")


def test_wrong_kinds_of_models(pubmed_in_cache, tiny_model_dir, tmp_path):
  with pytest.raises(ValueError, match=r"is a preprocess model; pass it with "
                     r"--preprocessor"):
    resolution.resolve_model("bert_en_uncased_preprocess")
  with pytest.raises(ValueError, match=r"is not a BERT encoder.*preprocess"):
    resolution.resolve_model(_preprocess(tiny_model_dir))
  # A v2 encoder outside the catalogue needs its preprocess model named.
  with pytest.raises(ValueError, match=r"pass the one it was trained with as "
                     r"--preprocessor"):
    resolution.resolve_model(_encoder(tiny_model_dir))
  resolved = resolution.resolve_model(
      _encoder(tiny_model_dir), preprocessor=_preprocess(tiny_model_dir))
  assert resolved.encoder_format == "v2"
  assert resolved.metadata.license == "unknown"


def test_remote_catalogue_models_take_the_catalogues_facts(tiny_model_dir):
  entry = catalog.lookup_name("experts/pubmed")
  facts = saved_model_facts.encoder_facts(_encoder(tiny_model_dir), "v2",
                                          entry, load=False)
  assert (facts.hidden_size, facts.num_layers, facts.vocab_size) == (
      768, 12, 30522)
  loaded = saved_model_facts.encoder_facts(_encoder(tiny_model_dir), "v2",
                                           entry)
  assert (loaded.hidden_size, loaded.num_layers, loaded.vocab_size) == (
      H, 1, 98)


# ---------------------------------------------------------------------------
# Through the pipeline.


def _corpus(tmp_path):
  path = tmp_path / "corpus.jsonl"
  texts = {"a": "hello world", "b": "the quick brown fox jumps",
           "c": "a lazy dog is on the mat", "d": "text embedding search"}
  path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n"
                          for k, v in texts.items()))
  return str(path), texts


def _reference_pooled(model_dir, texts):
  """pooled_output of the tiny model called directly on fixed-length inputs."""
  preprocess = hub.load(_preprocess(model_dir))
  encoder = hub.load(_encoder(model_dir))
  inputs = preprocess.bert_pack_inputs(
      [preprocess.tokenize(tf.constant(texts))],
      seq_length=tf.constant(64, tf.int32))
  return encoder(inputs)["pooled_output"].numpy()


def test_catalogue_model_end_to_end(pubmed_in_cache, tiny_model_dir, tmp_path,
                                    no_network):
  corpus, texts = _corpus(tmp_path)
  run_dir = str(tmp_path / "run")
  result = main.run(["--input", corpus, "--output", run_dir, "--model",
                     "experts/pubmed", "--neighbours_k", "0",
                     "--runner=DirectRunner"])
  assert result.state == PipelineState.DONE
  with open(os.path.join(run_dir, "manifest.json")) as f:
    manifest = json.load(f)
  model = manifest["model"]
  assert model["path"] == PUBMED and model["name"] == "experts/pubmed"
  assert model["encoder_format"] == "v2"
  assert (model["pooling"], model["normalize"]) == ("pooler", False)
  assert model["source"]["preprocess"] == UNCASED_PRE
  ids, matrix = read_outputs.load_embeddings(run_dir)
  expected = _reference_pooled(tiny_model_dir, [texts[i] for i in ids])
  np.testing.assert_allclose(matrix, expected, atol=1e-5)
  assert no_network == []


@pytest.mark.parametrize("flags, message", [
    (["--model", "https://tfhub.dev/nobody/no_such_model/1"],
     r"could not be downloaded"),
    (["--model", "experts/pubmed", "--preprocessor", "{cased}"],
     r"does not match --model=experts/pubmed"),
    (["--model", "experts/pubmed", "--model_root", "{empty_root}"],
     r"not in the --model_root mirror"),
])
def test_model_errors_stop_the_run_before_it_starts(
    flags, message, pubmed_in_cache, cased_model_dir, tmp_path, no_network):
  corpus, _ = _corpus(tmp_path)
  run_dir = str(tmp_path / "run")
  argv = [flag.format(cased=cased_model_dir,
                      empty_root=str(tmp_path / "root")) for flag in flags]
  with pytest.raises(ConfigError, match=message):
    main.run(["--input", corpus, "--output", run_dir, *argv,
              "--runner=DirectRunner"])
  assert not os.path.exists(run_dir)
