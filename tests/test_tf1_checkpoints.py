"""Original BERT (TF1) checkpoints convert to the TF Hub format faithfully:
sequence_output within 1e-4 of PyTorch on the same weights, sentence vectors
of the default model within cosine 0.9999 of sentence-transformers."""

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml
import tensorflow_hub as hub
import tensorflow_text  # noqa: F401  (the preprocess model's ops)
# Part of the test extras, like the other parity checks: never skipped.
import torch
from sentence_transformers import SentenceTransformer
from transformers import BertModel

from bert_model import checkpoint as checkpoint_lib
from bert_model import default_model
from bert_model import metadata as metadata_lib
from pipeline import export_model
from bert_model import tiny_checkpoint as tiny_bert
from tests.parity_sentences import PARITY_SENTENCES
from tests import tf1_bert
from tests.tf1_bert import write_tf1_checkpoint


def _export(checkpoint_dir, output_dir, *flags):
  assert export_model.main([f"--checkpoint={checkpoint_dir}",
                            f"--output_dir={output_dir}", *flags]) == 0
  return (hub.load(os.path.join(output_dir, "preprocess")),
          hub.load(os.path.join(output_dir, "encoder")))


def _torch_sequence(hf_dir, inputs):
  model = BertModel.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    return model(
        input_ids=torch.tensor(inputs["input_word_ids"].numpy()).long(),
        attention_mask=torch.tensor(inputs["input_mask"].numpy()).long(),
        token_type_ids=torch.tensor(inputs["input_type_ids"].numpy()).long(),
    ).last_hidden_state.numpy()


@pytest.mark.parametrize("cased", [False, True])
def test_tiny_tf1_checkpoint_matches_pytorch(tmp_path, cased):
  hf_dir = tiny_bert.write_tiny_checkpoint(str(tmp_path / "hf"), cased=cased)
  tf1_dir = write_tf1_checkpoint(hf_dir, str(tmp_path / "tf1"))
  preprocess, encoder = _export(tf1_dir, str(tmp_path / "model"))
  texts = ["the quick brown fox", "Hello World, the lazy dog sat on a mat!"]
  inputs = preprocess(tf.constant(texts))
  ours = encoder(inputs)["sequence_output"].numpy()
  theirs = _torch_sequence(hf_dir, inputs)
  mask = inputs["input_mask"].numpy().astype(bool)
  assert np.abs(ours[mask] - theirs[mask]).max() <= 1e-4
  metadata = metadata_lib.read_metadata(str(tmp_path / "model"))
  assert metadata.source["kind"] == "bert_tf1"
  assert checkpoint_lib.read_checkpoint(tf1_dir).lower_case == (not cased)


def test_default_model_as_tf1_matches_sentence_transformers(tmp_path,
                                                            report_figure):
  reference_dir = default_model.packaged_checkpoint_dir()
  tf1_dir = write_tf1_checkpoint(reference_dir, str(tmp_path / "tf1"))
  # An original BERT directory records none of the sentence-transformers
  # settings: they come from the flags, as its users would give them.
  preprocess, encoder = _export(tf1_dir, str(tmp_path / "model"),
                                "--pooling=mean", "--normalize=true",
                                "--lower_case=true", "--max_seq_length=256")
  inputs = preprocess(tf.constant(PARITY_SENTENCES))
  sequence = encoder(inputs)["sequence_output"].numpy()
  # Token by token, the real tokens agree with PyTorch on the same weights.
  real = inputs["input_mask"].numpy().astype(bool)
  torch_sequence = _torch_sequence(reference_dir, inputs)
  report_figure("TF1 default model vs PyTorch max |sequence_output| diff",
                f"{np.abs(sequence[real] - torch_sequence[real]).max():.2e}")
  assert np.abs(sequence[real] - torch_sequence[real]).max() <= 1e-4
  mask = inputs["input_mask"].numpy()[..., None].astype(np.float32)
  mean = (sequence * mask).sum(1) / mask.sum(1)
  ours = mean / np.linalg.norm(mean, axis=1, keepdims=True)
  theirs = SentenceTransformer(reference_dir, device="cpu").encode(
      PARITY_SENTENCES, normalize_embeddings=True)
  cosine = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
  report_figure("TF1 default model vs sentence-transformers min cosine",
                f"{cosine.min():.7f}")
  assert cosine.min() >= 0.9999


def test_a_checkpoint_without_pooler_converts(tmp_path):
  hf_dir = tiny_bert.write_tiny_checkpoint(str(tmp_path / "hf"))
  tf1_dir = write_tf1_checkpoint(hf_dir, str(tmp_path / "tf1"), pooler=False)
  assert not checkpoint_lib.read_checkpoint(tf1_dir).has_pooler
  _export(tf1_dir, str(tmp_path / "model"), "--pooling=mean")


def test_bad_tf1_checkpoints_fail_with_the_reason(tmp_path, capsys):
  hf_dir = tiny_bert.write_tiny_checkpoint(str(tmp_path / "hf"))
  tf1_dir = write_tf1_checkpoint(
      hf_dir, str(tmp_path / "odd"),
      extra={"bert/encoder/layer_0/attention/self/rotary/kernel":
             np.zeros((2, 2), np.float32)})
  with pytest.raises(checkpoint_lib.CheckpointError, match="rotary"):
    checkpoint_lib.read_checkpoint(tf1_dir)
  # A config that does not match the variables.
  good = write_tf1_checkpoint(hf_dir, str(tmp_path / "good"))
  config_path = os.path.join(good, "bert_config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["hidden_size"] = 32
  with open(config_path, "w") as f:
    json.dump(config, f)
  with pytest.raises(checkpoint_lib.CheckpointError, match="config says"):
    checkpoint_lib.read_checkpoint(good)
  # ... in any of the sizes the variables show: each would export, then
  # fail or cut quietly when embedding.
  for key, change in (("max_position_embeddings", 2),
                      ("type_vocab_size", 2), ("intermediate_size", 2),
                      ("num_hidden_layers", 0.5)):
    wrong = dict(config, hidden_size=16)
    wrong[key] = int(wrong[key] * change)
    with open(config_path, "w") as f:
      json.dump(wrong, f)
    # (Half of the tiny model's one layer is 0, told as no layer count.)
    with pytest.raises(checkpoint_lib.CheckpointError,
                       match=f"config says {key}|{key} is 0; it must be"):
      checkpoint_lib.read_checkpoint(good)
  with open(config_path, "w") as f:
    json.dump(dict(config, hidden_size=16), f)
  # Not BERT at all: names what it expected and what it found.
  other = tmp_path / "other"
  other.mkdir()
  with tf.Graph().as_default():
    variable = tf.compat.v1.Variable(np.zeros(3, np.float32), name="w/x")
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver([variable]).save(
          session, str(other / "bert_model.ckpt"), write_meta_graph=False)
  with open(other / "bert_config.json", "w") as f:
    json.dump(config, f)
  os.link(os.path.join(hf_dir, "vocab.txt"), other / "vocab.txt")
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match="expected variables such as bert/embeddings"):
    checkpoint_lib.read_checkpoint(str(other))
  # Without bert_config.json it is no TF1 checkpoint: the message says what
  # each layout needs.
  os.remove(other / "bert_config.json")
  assert export_model.main([f"--checkpoint={other}",
                            f"--output_dir={tmp_path / 'x'}"]) == 2
  assert "bert_config.json" in capsys.readouterr().err


MODEL_GARDEN_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures",
                                    "model_garden")


def test_model_garden_checkpoint_matches_its_recorded_outputs(tmp_path):
  """The fixture was written by tests/fixtures/make_model_garden_checkpoint.py
  with tf-models-official in its own virtualenv; here only the files."""
  ckpt = checkpoint_lib.read_checkpoint(MODEL_GARDEN_FIXTURE,
                                        lower_case=True)
  assert checkpoint_lib.layout_of(MODEL_GARDEN_FIXTURE) == "model_garden"
  assert ckpt.config.hidden_act == "gelu_new"  # Model Garden's tanh GELU
  assert ckpt.has_pooler
  _, encoder = _export(MODEL_GARDEN_FIXTURE, str(tmp_path / "model"),
                       "--lower_case=true", "--pooling=mean")
  _assert_matches_recorded(encoder, MODEL_GARDEN_FIXTURE)


def _assert_matches_recorded(encoder, fixture):
  """The exported encoder's outputs on the token ids of the fixture's
  outputs.npz are the Model Garden encoder's, within 1e-5."""
  recorded = np.load(os.path.join(fixture, "outputs.npz"))
  for batch in (0, 1):
    inputs = {name: tf.constant(recorded[f"{name}_{batch}"]) for name in (
        "input_word_ids", "input_mask", "input_type_ids")}
    outputs = encoder(inputs)
    mask = recorded[f"input_mask_{batch}"].astype(bool)
    np.testing.assert_allclose(
        outputs["sequence_output"].numpy()[mask],
        recorded[f"sequence_output_{batch}"][mask], atol=1e-5)
    np.testing.assert_allclose(outputs["pooled_output"].numpy(),
                               recorded[f"pooled_output_{batch}"], atol=1e-5)


MODEL_GARDEN_TRAINED = os.path.join(os.path.dirname(__file__), "fixtures",
                                    "model_garden_trained")


@pytest.mark.parametrize("beside_an_older_one", [False, True])
def test_a_checkpoint_of_model_gardens_trainer_matches_its_recorded_outputs(
    tmp_path, beside_an_older_one):
  """The directory Model Garden's own trainer left after 4 steps of its
  bert/pretraining experiment (tests/fixtures/make_model_garden_checkpoint.py,
  with tf-models-official in its own virtualenv): converted here from the
  files alone, its encoder gives the outputs recorded from the encoder
  Model Garden restored from that checkpoint."""
  checkpoint = MODEL_GARDEN_TRAINED
  if beside_an_older_one:  # the `checkpoint` file names the latest, ckpt-4
    checkpoint = tmp_path / "trained"
    checkpoint.mkdir()
    for name in os.listdir(MODEL_GARDEN_TRAINED):
      os.link(os.path.join(MODEL_GARDEN_TRAINED, name), checkpoint / name)
    for ext in ("index", "data-00000-of-00001"):
      os.link(os.path.join(MODEL_GARDEN_FIXTURE, f"ckpt-1.{ext}"),
              checkpoint / f"ckpt-2.{ext}")
    checkpoint = str(checkpoint)
  # What the trainer wrote: the whole experiment's params.yaml, and a
  # checkpoint of global_step, model, optimizer and the pre-training model's
  # checkpoint_items (encoder, masked_lm, next_sentence.pooler_dense), in
  # which the word embeddings, shared with the masked-LM head, are stored
  # only under masked_lm/.
  params = yaml.safe_load(open(os.path.join(checkpoint, "params.yaml")))
  assert params["trainer"]["train_steps"] == 4
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoint))
  assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 4
  names = reader.get_variable_to_shape_map()
  assert "masked_lm/embedding_table/.ATTRIBUTES/VARIABLE_VALUE" in names
  assert not any(name.startswith("encoder/layer_with_weights-0/")
                 for name in names)
  ckpt = checkpoint_lib.read_checkpoint(checkpoint, lower_case=True)
  assert checkpoint_lib.layout_of(checkpoint) == "model_garden"
  assert ckpt.config.hidden_act == "gelu_new" and ckpt.has_pooler
  np.testing.assert_array_equal(
      ckpt.weights["embeddings.word_embeddings.weight"],
      reader.get_tensor("masked_lm/embedding_table/.ATTRIBUTES/VARIABLE_VALUE"))
  _, encoder = _export(checkpoint, str(tmp_path / "model"),
                       "--lower_case=true", "--pooling=mean")
  _assert_matches_recorded(encoder, MODEL_GARDEN_TRAINED)


def _training_checkpoint(output_dir):
  """The fixture as Model Garden's trainer saves it: the encoder's variables
  beside their optimizer slots, the step, and a task head under model/."""
  suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
  reader = tf.train.load_checkpoint(os.path.join(MODEL_GARDEN_FIXTURE,
                                                 "ckpt-1"))
  values = {}
  for name in reader.get_variable_to_shape_map():
    if name.startswith("_CHECKPOINTABLE"):
      continue
    values[name] = value = reader.get_tensor(name)
    for slot in ("m", "v"):
      values[f"{name[:-len(suffix)]}/.OPTIMIZER_SLOT/optimizer/{slot}"
             f"{suffix}"] = np.ones_like(value)
  values["global_step" + suffix] = np.int64(100)
  values["model/masked_lm/bias" + suffix] = np.zeros(98, np.float32)
  os.makedirs(output_dir)
  with tf.Graph().as_default():
    variables = {name: tf.compat.v1.Variable(value, name=f"v{i}")
                 for i, (name, value) in enumerate(values.items())}
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver(variables).save(
          session, os.path.join(output_dir, "ckpt-100"),
          write_meta_graph=False)
  for name in ("params.yaml", "vocab.txt"):
    os.link(os.path.join(MODEL_GARDEN_FIXTURE, name),
            os.path.join(output_dir, name))
  return output_dir


def test_a_model_garden_training_checkpoint_converts_its_encoder(tmp_path):
  trained = _training_checkpoint(str(tmp_path / "trained"))
  weights = checkpoint_lib.read_checkpoint(trained, lower_case=True).weights
  expected = checkpoint_lib.read_checkpoint(MODEL_GARDEN_FIXTURE,
                                            lower_case=True).weights
  assert sorted(weights) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(weights[name], value)


@pytest.mark.parametrize("key, match", [
    ("num_attention_heads", "attention kernels have 2 heads"),
    ("intermediate_size", "config says intermediate_size"),
    ("max_position_embeddings", "config says max_position_embeddings"),
])
def test_a_model_garden_config_that_does_not_fit_is_refused(
    tmp_path, key, match):
  checkpoint = tmp_path / "mg"
  checkpoint.mkdir()
  for name in os.listdir(MODEL_GARDEN_FIXTURE):
    os.link(os.path.join(MODEL_GARDEN_FIXTURE, name), checkpoint / name)
  params = (checkpoint / "params.yaml").read_text()
  bert = yaml.safe_load(params)["task"]["model"]["encoder"]["bert"]
  os.remove(checkpoint / "params.yaml")
  (checkpoint / "params.yaml").write_text(params.replace(
      f"{key}: {bert[key]}", f"{key}: {bert[key] * 2}"))
  with pytest.raises(ValueError, match=match):
    checkpoint_lib.read_checkpoint(str(checkpoint), lower_case=True)


def _model_garden_copy(tmp_path):
  checkpoint = tmp_path / "mg"
  checkpoint.mkdir()
  for name in os.listdir(MODEL_GARDEN_FIXTURE):
    shutil.copy(os.path.join(MODEL_GARDEN_FIXTURE, name), checkpoint / name)
  return checkpoint


def _cut_short(path):
  with open(path, "r+b") as f:
    f.truncate(1000)


@pytest.mark.parametrize("edit, message", [
    # Once tracebacks of TensorFlow's (OpError, IndexError).
    (lambda d: _cut_short(d / "ckpt-1.data-00000-of-00001"),
     r"ckpt-1.data-00000-of-00001: cannot read .* \(Read less bytes than "
     r"requested\); the checkpoint's data file is missing or damaged"),
    (lambda d: os.remove(d / "ckpt-1.data-00000-of-00001"),
     r"ckpt-1.data-\*: cannot read .*No such file"),
    # Once yaml.parser.ParserError's traceback.
    (lambda d: (d / "params.yaml").write_text("task:\n  model: [unclosed\n"),
     r"params.yaml is not valid YAML: while parsing a flow sequence"),
    # Once a message that did not name the file.
    (lambda d: (os.remove(d / "params.yaml"),
                (d / "encoder_config.json").write_text("{bad")),
     r"encoder_config.json is not valid JSON: Expecting property name"),
    # Once "missing config.json" as if it were a Hugging Face directory.
    (lambda d: [shutil.copy(d / f"ckpt-1.{ext}", d / f"ckpt-2.{ext}")
                for ext in ("index", "data-00000-of-00001")],
     r"several checkpoints \(ckpt-1.index, ckpt-2.index\) and no "
     "`checkpoint` file"),
    (lambda d: os.remove(d / "ckpt-1.index"),
     r"no TF2 checkpoint \(ckpt-N.index and .data-\*\) beside"),
])
def test_a_damaged_model_garden_checkpoint_is_refused_in_words(
    tmp_path, capsys, edit, message):
  checkpoint = _model_garden_copy(tmp_path)
  edit(checkpoint)
  assert export_model.main([f"--checkpoint={checkpoint}",
                            f"--output_dir={tmp_path / 'out'}"]) == 2
  error = capsys.readouterr().err.strip()
  assert "Traceback" not in error and len(error.splitlines()) == 1
  assert re.search(message, error), error


def test_a_damaged_tf1_checkpoint_is_refused_in_words(tmp_path, monkeypatch):
  hf_dir = tiny_bert.write_tiny_checkpoint(str(tmp_path / "hf"))
  tf1_dir = write_tf1_checkpoint(hf_dir, str(tmp_path / "tf1"))
  data = glob.glob(os.path.join(tf1_dir, "bert_model.ckpt.data-*"))[0]
  os.remove(data)
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r"bert_model.ckpt.data-\*: cannot read .*missing "
                     "or damaged"):
    checkpoint_lib.read_checkpoint(tf1_dir)
  os.remove(os.path.join(tf1_dir, "bert_model.ckpt.index"))
  # Once "missing config.json", as if a Hugging Face directory.
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match="bert_config.json but no bert_model.ckpt.index"):
    checkpoint_lib.read_checkpoint(tf1_dir)
  # A variable of the encoder missing: once a KeyError from encoder.py.
  names = tf1_bert.tf1_names
  monkeypatch.setattr(tf1_bert, "tf1_names", lambda n, pooler=True: [
      name for name in names(n, pooler)
      if name != "bert/embeddings/position_embeddings"])
  incomplete = write_tf1_checkpoint(hf_dir, str(tmp_path / "incomplete"))
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match="missing embeddings.position_embeddings.weight"):
    checkpoint_lib.read_checkpoint(incomplete)
