"""Export of tiny random BERTs: reload with tensorflow_hub, compare with PyTorch."""

import dataclasses
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the preprocess model's ops)
import tensorflow_hub as hub
import torch
from safetensors import numpy as safetensors_numpy
from transformers import BertModel
from transformers import BertTokenizerFast

from bert_model import checkpoint
from bert_model import checkpoint_files
from bert_model import default_model
from bert_model import encoder as encoder_lib
from bert_model import export
from bert_model import metadata as metadata_lib
from bert_model import resolution
from pipeline import export_model
from bert_model import tiny_checkpoint as tiny_bert

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, World! Ünïcode text embedding",
    "unknown words: zzz qqq, numbers 42 and [CLS] literal",
    "",
    "a",
]


def _export(tmp_path, name, **checkpoint_args):
  ckpt = tiny_bert.write_tiny_checkpoint(str(tmp_path / f"{name}_ckpt"),
                                         **checkpoint_args)
  model_dir = str(tmp_path / name)
  export.export_checkpoint(ckpt, model_dir)
  return ckpt, model_dir


def _torch_outputs(checkpoint_dir, inputs):
  model = BertModel.from_pretrained(checkpoint_dir).eval()
  with torch.no_grad():
    out = model(
        input_ids=torch.tensor(inputs["input_word_ids"].numpy()).long(),
        attention_mask=torch.tensor(inputs["input_mask"].numpy()).long(),
        token_type_ids=torch.tensor(inputs["input_type_ids"].numpy()).long(),
        output_hidden_states=True)
  return out


def _reference_tokenizer(checkpoint_dir, lower_case):
  return BertTokenizerFast(os.path.join(checkpoint_dir, "vocab.txt"),
                           do_lower_case=lower_case)


def test_model_directory_layout_and_metadata(tiny_model_dir):
  for part in ("encoder/saved_model.pb", "preprocess/saved_model.pb",
               "vocab.txt", "model_metadata.json"):
    assert os.path.exists(os.path.join(tiny_model_dir, part)), part
  meta = metadata_lib.read_metadata(tiny_model_dir)
  # Read from the sentence-transformers files of the tiny checkpoint.
  assert (meta.pooling, meta.normalize, meta.max_seq_length) == ("mean", True,
                                                                 32)
  assert (meta.hidden_size, meta.num_layers, meta.lower_case) == (16, 1, True)
  assert meta.vocab_size == len(tiny_bert.tiny_vocab())
  assert len(meta.fingerprint) == 64
  assert set(meta.checksums) == {"config.json", "vocab.txt",
                                 "model.safetensors"}
  assert meta.exporter_revision == metadata_lib.EXPORTER_REVISION
  assert not meta.is_outdated_export


def test_every_dense_layer_is_a_fusable_matmul_bias_add(tiny_checkpoint):
  # Grappler fuses MatMul+BiasAdd into one oneDNN kernel, not MatMul+AddV2.
  ckpt = checkpoint.read_checkpoint(tiny_checkpoint)
  encoder = encoder_lib.BertEncoder(ckpt.config, ckpt.weights)
  graph = tf.function(encoder.encode).get_concrete_function(
      encoder_lib.INPUT_SIGNATURE).graph
  matmuls = [op for op in graph.get_operations() if op.type == "MatMul"]
  # qkv, attention output, intermediate, output (one layer) and the pooler.
  assert len(matmuls) == 5
  for op in matmuls:
    assert [c.type for c in op.outputs[0].consumers()] == ["BiasAdd"], op.name


def _rewrite_metadata(model_dir, **changes):
  path = metadata_lib.metadata_path(model_dir)
  with open(path) as f:
    values = json.load(f)
  values.update(changes)
  for name in [k for k, v in changes.items() if v is None]:
    del values[name]
  with open(path, "w") as f:
    json.dump(values, f)


def test_exports_without_a_revision_are_outdated(tiny_model_dir, tmp_path):
  model_dir = str(tmp_path / "old")
  shutil.copytree(tiny_model_dir, model_dir)
  _rewrite_metadata(model_dir, exporter_revision=None)
  meta = metadata_lib.read_metadata(model_dir)
  assert meta.exporter_revision == 1 and meta.is_outdated_export
  # Same model: the fingerprint does not depend on the exporter revision.
  assert meta.fingerprint == metadata_lib.read_metadata(
      tiny_model_dir).fingerprint


def test_outdated_default_model_is_exported_again(tiny_model_dir, tmp_path,
                                                  monkeypatch):
  exported = []
  monkeypatch.setattr(default_model, "export_default_model",
                      lambda model_dir, overwrite: exported.append(model_dir))
  current = str(tmp_path / "current")
  shutil.copytree(tiny_model_dir, current)
  assert default_model.ensure_default_model(current) == current
  assert exported == []
  outdated = str(tmp_path / "outdated")
  shutil.copytree(tiny_model_dir, outdated)
  _rewrite_metadata(outdated, exporter_revision=None)
  default_model.ensure_default_model(outdated)
  missing = str(tmp_path / "missing")
  default_model.ensure_default_model(missing)
  assert exported == [outdated, missing]


def test_an_outdated_model_directory_warns_how_to_re_export(
    tiny_model_dir, tmp_path, caplog):
  model_dir = str(tmp_path / "old")
  shutil.copytree(tiny_model_dir, model_dir)
  _rewrite_metadata(model_dir, exporter_revision=1)
  with caplog.at_level(logging.WARNING):
    resolution.resolve_model(model_dir)
  assert "pipeline.export_model" in caplog.text and "--overwrite" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    resolution.resolve_model(tiny_model_dir)
  assert "export_model" not in caplog.text


def test_encoder_interface_and_dynamic_shapes(tiny_model_dir):
  preprocess = hub.load(os.path.join(tiny_model_dir, "preprocess"))
  encoder = hub.load(os.path.join(tiny_model_dir, "encoder"))
  for batch in (["a"], SENTENCES):
    inputs = preprocess(tf.constant(batch))
    outputs = encoder(inputs)
    seq = inputs["input_word_ids"].shape[1]
    assert set(outputs) == {"pooled_output", "sequence_output",
                            "encoder_outputs", "default"}
    assert outputs["sequence_output"].shape == (len(batch), seq, 16)
    assert outputs["pooled_output"].shape == (len(batch), 16)
    assert len(outputs["encoder_outputs"]) == 1
    np.testing.assert_array_equal(outputs["default"],
                                  outputs["pooled_output"])
  serving = encoder.signatures["serving_default"]
  flat = serving(**preprocess(tf.constant(SENTENCES)))
  assert "encoder_outputs_0" in flat and "sequence_output" in flat


@pytest.mark.parametrize("variant", [
    dict(),
    dict(cased=True, seed=1),
    dict(weights_format="bin", seed=2, layers=2),
    dict(pooler=False, seed=3),
])
def test_export_matches_pytorch(tmp_path, variant):
  ckpt, model_dir = _export(tmp_path, "model", **variant)
  preprocess = hub.load(os.path.join(model_dir, "preprocess"))
  encoder = hub.load(os.path.join(model_dir, "encoder"))
  inputs = preprocess(tf.constant(SENTENCES))
  outputs = encoder(inputs)
  reference = _torch_outputs(ckpt, inputs)

  mask = inputs["input_mask"].numpy().astype(bool)
  np.testing.assert_allclose(
      outputs["sequence_output"].numpy()[mask],
      reference.last_hidden_state.numpy()[mask], atol=1e-5)
  for mine, theirs in zip(outputs["encoder_outputs"],
                          reference.hidden_states[1:]):
    np.testing.assert_allclose(mine.numpy()[mask], theirs.numpy()[mask],
                               atol=1e-5)
  if variant.get("pooler", True):
    np.testing.assert_allclose(outputs["pooled_output"].numpy(),
                               reference.pooler_output.numpy(), atol=1e-5)
  else:
    # No pooler weights: the pooled output is the first token.
    np.testing.assert_allclose(outputs["pooled_output"].numpy(),
                               outputs["sequence_output"].numpy()[:, 0])


@pytest.mark.parametrize("cased", [False, True])
def test_tokenize_matches_reference_tokenizer(tmp_path, cased):
  ckpt, model_dir = _export(tmp_path, "model", cased=cased)
  preprocess = hub.load(os.path.join(model_dir, "preprocess"))
  reference = _reference_tokenizer(ckpt, lower_case=not cased)
  texts = SENTENCES + ["The Fox, THE FOX!", "Hello\x00World\u200b[SEP]x",
                       "Ünïcode ünïcode UNICODE", "x" * 101 + " fox"]
  tokens = preprocess.tokenize(tf.constant(texts)).merge_dims(1, 2).to_list()
  for text, ids in zip(texts, tokens):
    assert ids == reference(text, add_special_tokens=False)["input_ids"], text


def test_pack_inputs_pads_truncates_and_pairs(tiny_model_dir):
  preprocess = hub.load(os.path.join(tiny_model_dir, "preprocess"))
  special = {k: int(v) for k, v in
             preprocess.tokenize.get_special_tokens_dict().items()}
  assert special["vocab_size"] == len(tiny_bert.tiny_vocab())
  cls, sep = special["start_of_sequence_id"], special["end_of_segment_id"]

  tokens = preprocess.tokenize(tf.constant(["hello world", "the cat"]))
  dynamic = preprocess.bert_pack_inputs([tokens])
  assert dynamic["input_word_ids"].shape == (2, 4)  # [CLS] w w [SEP]
  fixed = preprocess.bert_pack_inputs([tokens], seq_length=tf.constant(8))
  assert fixed["input_word_ids"].shape == (2, 8)
  np.testing.assert_array_equal(fixed["input_mask"][0], [1] * 4 + [0] * 4)

  pair = preprocess.bert_pack_inputs(
      [tokens, preprocess.tokenize(tf.constant(["fox", "dog"]))])
  word_ids = pair["input_word_ids"].numpy()[0].tolist()
  assert word_ids[0] == cls and word_ids.count(sep) == 2
  np.testing.assert_array_equal(pair["input_type_ids"][0], [0, 0, 0, 0, 1, 1])

  # Longer than max_seq_length (32): truncated to it, ending in [SEP].
  long_inputs = preprocess(tf.constant([" ".join(["fox"] * 50)]))
  assert long_inputs["input_word_ids"].shape == (1, 32)
  assert long_inputs["input_word_ids"][0, -1] == sep


def test_export_refuses_to_overwrite(tiny_checkpoint, tiny_model_dir):
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export_checkpoint(tiny_checkpoint, tiny_model_dir)


@pytest.mark.parametrize("output_dir, told", [
    ("a_file", "a_file is a file; name a new directory"),
    # Once "[Errno 17] File exists: '.../a_file'", after the conversion.
    ("a_file/model", "a_file/model cannot be created: {tmp}/a_file is a "
     "file"),
])
def test_export_refuses_an_output_dir_on_a_file(tiny_checkpoint, tmp_path,
                                                output_dir, told):
  (tmp_path / "a_file").write_text("kept")
  with pytest.raises(FileExistsError, match=re.escape(
      told.format(tmp=tmp_path))):
    export.export_checkpoint(tiny_checkpoint, str(tmp_path / output_dir),
                             overwrite=True)
  assert (tmp_path / "a_file").read_text() == "kept"


def _broken_copy(tmp_path, edit):
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "broken"))
  edit(path)
  return path


def _edit_config(path, **changes):
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  _write(path, "config.json", json.dumps({**config, **changes}))


def _edit_weights(path, edit):
  weights_path = os.path.join(path, "model.safetensors")
  weights = safetensors_numpy.load_file(weights_path)
  edit(weights)
  safetensors_numpy.save_file(weights, weights_path)


def _cut_in_half(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _write(path, name, content, mode="w"):
  with open(os.path.join(path, name), mode) as f:
    f.write(content)


@pytest.mark.parametrize("edit, message", [
    (lambda p: os.remove(os.path.join(p, "vocab.txt")), "missing vocab.txt"),
    (lambda p: os.remove(os.path.join(p, "config.json")),
     "missing config.json"),
    (lambda p: os.remove(os.path.join(p, "model.safetensors")),
     "no model.safetensors or pytorch_model.bin"),
    (lambda p: _write(p, "config.json", json.dumps({"model_type": "gpt2"})),
     "only BERT checkpoints"),
    (lambda p: _write(p, "config.json", json.dumps({"model_type": "bert"})),
     "not a BERT config, missing hidden_size"),
    (lambda p: _write(p, "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n"),
     "vocab.txt has 4 entries but the embedding table"),
    (lambda p: _write(p, "model.safetensors", b"garbage", "wb"),
     "not a safetensors file"),
    (lambda p: _write(p, "config.json", "{not json"), "not valid JSON"),
    (lambda p: _cut_in_half(os.path.join(p, "model.safetensors")),
     r"model.safetensors is damaged or cut short \(tensor .*: its bytes"),
    # Found by a fuzzer: tracebacks from deep in the export.
    (lambda p: _edit_config(p, hidden_size="16"),
     r"config.json: hidden_size is '16'; it must be a whole number"),
    (lambda p: _edit_config(p, num_attention_heads=0),
     "num_attention_heads is 0"),
    (lambda p: _edit_config(p, num_hidden_layers=-1),
     "num_hidden_layers is -1"),
    (lambda p: _edit_config(p, layer_norm_eps="x"), "layer_norm_eps is 'x'"),
    (lambda p: _write(p, "config.json", "[1, 2]"), "holds a JSON list"),
    (lambda p: _write(p, "config.json", b"\xff\xfe{}", "wb"),
     "config.json is not valid JSON"),
    (lambda p: _write(p, "vocab.txt", "".join(
        line for line in open(os.path.join(p, "vocab.txt"))
        if line != "[UNK]\n")), r"vocab.txt lacks \[UNK\]"),
    (lambda p: _write(p, "vocab.txt", b"\xff\xfe\x00[PAD]\n", "wb"),
     "vocab.txt is not UTF-8 text"),
    # Once "'[PAD]' is not in list".
    (lambda p: _write(p, "vocab.txt", "".join(
        "<pad>\n" if line == "[PAD]\n" else line
        for line in open(os.path.join(p, "vocab.txt")))),
     r"vocab.txt lacks \[PAD\]: BERT's tokenizer needs \[PAD\]"),
    # Once a KeyError traceback from encoder.py.
    (lambda p: _edit_weights(
        p, lambda w: w.pop("encoder.layer.0.attention.self.key.weight")),
     r"missing encoder.layer.0.attention.self.key.weight, which the encoder "
     "needs"),
    # Once TensorFlow's multi-line dump from tracing the encoder.
    (lambda p: _edit_weights(p, lambda w: w.update({
        "encoder.layer.0.output.dense.weight": np.zeros((16, 24),
                                                        np.float32)})),
     r"encoder.layer.0.output.dense.weight is \(16, 24\), the config says "
     r"\(16, 32\)"),
    (lambda p: _edit_weights(
        p, lambda w: w.pop("embeddings.LayerNorm.bias")),
     "missing embeddings.LayerNorm.bias"),
    # Once exported without a word, then NaN vectors.
    (lambda p: _edit_weights(p, lambda w: w[
        "embeddings.LayerNorm.weight"].__setitem__(3, np.nan)),
     "embeddings.LayerNorm.weight holds NaN or infinite values"),
    (lambda p: _edit_weights(p, lambda w: w[
        "pooler.dense.bias"].__setitem__(0, np.inf)),
     "pooler.dense.bias holds NaN or infinite values"),
    # Malformed side files: once tracebacks.
    (lambda p: _write(p, "modules.json", '{"a": 1}'),
     "modules.json: not a sentence-transformers module list"),
    (lambda p: _write(p, "sentence_bert_config.json",
                      '{"max_seq_length": "64"}'),
     "sentence_bert_config.json: max_seq_length is '64'; it must be a whole"),
    (lambda p: (os.remove(os.path.join(p, "config.json")),
                os.mkdir(os.path.join(p, "config.json"))),
     "config.json is a directory; it must be a JSON file"),
    (lambda p: _write(p, "tokenizer_config.json", "[]"),
     "tokenizer_config.json: holds a JSON list"),
    (lambda p: _write(p, "tokenizer.json", "[]"),
     "tokenizer.json: holds a JSON list, not a Hugging Face tokenizer"),
    # Once "no model.safetensors ... found", with no word of the shards.
    (lambda p: os.rename(os.path.join(p, "model.safetensors"), os.path.join(
        p, "model-00001-of-00002.safetensors")),
     r"the weights are sharded \(model-00001-of-00002.safetensors\)"),
    (lambda p: _edit_config(p, architectures=["RobertaModel"]),
     "architectures RobertaModel is not a BERT model"),
])
def test_bad_checkpoints_fail_at_once_with_a_reason(tmp_path, edit, message):
  path = _broken_copy(tmp_path, edit)
  with pytest.raises(checkpoint.CheckpointError, match=message):
    export.export_checkpoint(path, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_missing_checkpoint_directory(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="is not a directory"):
    checkpoint.read_checkpoint(str(tmp_path / "nowhere"))


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
  path = _broken_copy(tmp_path, lambda p: os.remove(os.path.join(p,
                                                                 "vocab.txt")))
  code = export_model.main(["--checkpoint", path, "--output_dir",
                            str(tmp_path / "out")])
  assert code == 2
  assert "missing vocab.txt" in capsys.readouterr().err


class _RunsCode:

  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_torch_checkpoint_reader_runs_no_code(tmp_path):
  path = str(tmp_path / "pytorch_model.bin")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"x": _RunsCode()}))
  with pytest.raises(checkpoint.CheckpointError, match="refusing to load"):
    checkpoint_files.read_torch_bin(path)


def test_a_damaged_torch_checkpoint_is_an_error_not_a_crash(tmp_path):
  # A real torch checkpoint whose storage was cut short: the tensor's
  # layout then points past it, where as_strided would read other memory.
  path = str(tmp_path / "pytorch_model.bin")
  torch.save({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)},
             path)
  assert checkpoint_files.read_torch_bin(path)["w"].shape == (3, 4)
  damaged = str(tmp_path / "damaged.bin")
  with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as out:
    for item in source.infolist():
      data = source.read(item)
      if "/data/" in item.filename:
        data = data[:8]  # 2 of the 12 floats
      out.writestr(item, data)
  with pytest.raises(checkpoint.CheckpointError,
                     match="damaged.*reaches element 11 of a storage of 2"):
    checkpoint_files.read_torch_bin(damaged)
  # A data.pkl cut short: the same kind of error, no traceback of pickle's.
  cut = str(tmp_path / "cut.bin")
  with zipfile.ZipFile(path) as source, zipfile.ZipFile(cut, "w") as out:
    for item in source.infolist():
      data = source.read(item)
      if item.filename.endswith("data.pkl"):
        data = data[:len(data) // 2]
      out.writestr(item, data)
  with pytest.raises(checkpoint.CheckpointError, match="damaged"):
    checkpoint_files.read_torch_bin(cut)



def _sentence_transformers_copy(tmp_path, pooling_config=None, modules=None):
  """A tiny sentence-transformers checkpoint with its Pooling config (and
  module list) replaced."""
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "st"), cased=True,
                                         sentence_transformers=True)
  if pooling_config is not None:
    _write(path, "1_Pooling/config.json", json.dumps(pooling_config))
  if modules is not None:
    _write(path, "modules.json", json.dumps(modules))
  return path


_ST_MODULES = [
    {"idx": 0, "name": "0", "path": "",
     "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling",
     "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Dense",
     "type": "sentence_transformers.models.Dense"},
    {"idx": 3, "name": "3", "path": "3_Normalize",
     "type": "sentence_transformers.models.Normalize"},
]


@pytest.mark.parametrize("pooling_config, modules, message", [
    # LaBSE's layout: the Dense module was dropped without a word.
    (None, _ST_MODULES,
     r"module sentence_transformers.models.Dense \(2_Dense\) is not "
     "reproduced by the export"),
    # Two modes were taken as plain mean pooling.
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
     None, r"pools with cls \+ mean at once"),
    ({"pooling_mode_mean_tokens": True,
      "pooling_mode_mean_sqrt_len_tokens": True},
     None, r"pools with mean \+ mean_sqrt_len_tokens at once"),
    ({"pooling_mode": ["mean", "max"]}, None, r"pools with mean \+ max"),
    ({"pooling_mode_lasttoken": True}, None,
     "pooling mode lasttoken is not supported"),
    ({"pooling_mode": "weightedmean"}, None,
     "pooling mode weightedmean is not supported"),
    ({"pooling_mode": "mean_sqrt_len_tokens", "include_prompt": True}, None,
     "pooling mode mean_sqrt_len_tokens is not supported"),
    ({"pooling_mode_mean_tokens": False}, None,
     "pooling mode none is not supported"),
])
def test_sentence_transformers_models_the_export_cannot_reproduce(
    tmp_path, pooling_config, modules, message):
  path = _sentence_transformers_copy(tmp_path, pooling_config, modules)
  with pytest.raises(checkpoint.CheckpointError, match=message):
    export.export_checkpoint(path, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("mode", ["mean", "cls", "max", ["cls"]])
def test_sentence_transformers_6_pooling_config(tmp_path, mode):
  # As sentence-transformers 6 writes it; once refused as "unsupported
  # ... 'pooling_mode': 'mean' ...; mean, cls and max are supported".
  path = _sentence_transformers_copy(tmp_path, {
      "embedding_dimension": 16, "pooling_mode": mode,
      "include_prompt": True})
  expected = mode[0] if isinstance(mode, list) else mode
  assert checkpoint.read_checkpoint(path).pooling == expected


def _tokenizer_files(path, lowercase, strip_accents):
  _write(path, "tokenizer_config.json", json.dumps(
      {"do_lower_case": lowercase, "strip_accents": strip_accents}))


def test_sentence_bert_config_do_lower_case_lower_cases(tmp_path):
  # sentence-transformers lower-cases the text itself, before a tokenizer
  # that keeps case (and accents); the export once kept case.
  path = _sentence_transformers_copy(tmp_path)
  _write(path, "sentence_bert_config.json", json.dumps(
      {"max_seq_length": 32, "do_lower_case": True}))
  ckpt = checkpoint.read_checkpoint(path)
  assert (ckpt.lower_case, ckpt.strip_accents) == (True, False)


@pytest.mark.parametrize("lowercase, strip_accents, expected", [
    (True, None, (True, True)),
    (True, True, (True, True)),
    (False, None, (False, False)),
    (True, False, (True, False)),  # once exported stripping accents
    (False, True, (False, True)),
])
def test_strip_accents_of_the_tokenizer_is_read(tmp_path, lowercase,
                                                strip_accents, expected):
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "ckpt"))
  _tokenizer_files(path, lowercase, strip_accents)
  ckpt = checkpoint.read_checkpoint(path)
  assert (ckpt.lower_case, ckpt.strip_accents) == expected


@pytest.mark.parametrize("lowercase, strip_accents", [(True, False),
                                                      (False, True)])
def test_strip_accents_apart_from_lower_case_tokenizes_like_hugging_face(
    tmp_path, lowercase, strip_accents):
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "ckpt"), cased=True)
  _tokenizer_files(path, lowercase, strip_accents)
  model_dir = str(tmp_path / "model")
  export.export_checkpoint(path, model_dir)
  preprocess = hub.load(os.path.join(model_dir, "preprocess"))
  reference = BertTokenizerFast(
      os.path.join(path, "vocab.txt"), do_lower_case=lowercase,
      strip_accents=strip_accents)
  texts = ["Ünïcode ünïcode UNICODE café", "The Fox Ünïcode", "ΟΔΟΣ Σ"]
  tokens = preprocess.tokenize(tf.constant(texts)).merge_dims(1, 2).to_list()
  for text, ids in zip(texts, tokens):
    assert ids == reference(text, add_special_tokens=False)["input_ids"], text
  # Another model than the same weights with BERT's default accents.
  ckpt = checkpoint.read_checkpoint(path)
  default = dataclasses.replace(ckpt, strip_accents=ckpt.lower_case)
  assert metadata_lib.read_metadata(model_dir).fingerprint == (
      export._fingerprint(ckpt)) != export._fingerprint(default)


@pytest.mark.parametrize("output_dir", ["ckpt", "."])
def test_export_refuses_an_output_dir_that_holds_the_checkpoint(
    tmp_path, monkeypatch, output_dir):
  # With --overwrite it once deleted the checkpoint for the model.
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "ckpt"))
  before = sorted(os.listdir(path))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="is or holds the checkpoint"):
    export.export_checkpoint("ckpt", output_dir, overwrite=True)
  assert sorted(os.listdir(path)) == before


def test_export_into_the_checkpoint_dir_keeps_the_checkpoint(tmp_path):
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "ckpt"))
  export.export_checkpoint(path, os.path.join(path, "model"), overwrite=True)
  assert checkpoint.read_checkpoint(path).vocab


def test_pooler_pooling_needs_a_pooler(tmp_path):
  # Once accepted, then refused by pipeline.main for a --pooling never given.
  path = tiny_bert.write_tiny_checkpoint(str(tmp_path / "ckpt"), pooler=False)
  ckpt = checkpoint.read_checkpoint(path)
  with pytest.raises(ValueError, match="has no pooler weights"):
    export.build_metadata(ckpt, "m", {}, pooling="pooler")
  assert export.build_metadata(ckpt, "m", {}).pooling == "cls"


def test_cli_tells_a_successful_export_once(tiny_checkpoint, tmp_path,
                                            capsys, caplog):
  # Once twice: bert_model's INFO line, then the command's summary.
  with caplog.at_level(logging.INFO):
    assert export_model.main(["--checkpoint", tiny_checkpoint,
                              "--output_dir", str(tmp_path / "out")]) == 0
  captured = capsys.readouterr()
  told = captured.out + captured.err + caplog.text
  assert told.count("Exported") == 1 and "pooling mean" in captured.out


def test_the_export_command_prints_its_result_and_no_notices(tiny_checkpoint,
                                                             tmp_path):
  # Found by a docs check: the export's first model call printed oneDNN's
  # int64 note ("E0000 ... util.cc:131] oneDNN supports DT_INT64 only ...")
  # before the "Exported" line, which the other commands keep off the screen.
  output_dir = tmp_path / "model"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, "-m", "pipeline.export_model",
       f"--checkpoint={tiny_checkpoint}", f"--output_dir={output_dir}"],
      capture_output=True, text=True, check=True, cwd=repo,
      env=dict(os.environ, PYTHONPATH=repo))
  assert done.stdout.startswith(f"Exported {os.path.basename(tiny_checkpoint)}"
                                f" to {output_dir}"), done.stdout
  assert done.stderr == ""
  # An error is still told, once the export ends.
  failed = subprocess.run(
      [sys.executable, "-m", "pipeline.export_model",
       f"--checkpoint={tmp_path / 'nothing'}", f"--output_dir={tmp_path / 'x'}"],
      capture_output=True, text=True, cwd=repo,
      env=dict(os.environ, PYTHONPATH=repo))
  assert failed.returncode == 2
  assert failed.stderr == (f"pipeline.export_model: error: {tmp_path / 'nothing'}"
                           " is not a directory.\n")
