"""Builds tiny random BERT checkpoints (Hugging Face layout).

Hidden size 16, one layer, two heads, a vocabulary of about 100 wordpieces:
exported through the project's own export code (bert_model/export.py), such a
model loads and runs in well under a second. The tests run every pipeline on
one; the memory benchmark (benchmarks/memory.py) uses one so that the
pipeline's own cost shows, not the model's. Its vectors mean nothing.
"""

import json
import os
import string

import numpy as np

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
         "hello", "world", "cat", "sat", "on", "mat", "is", "a", "an", "text",
         "embed", "##ding", "##s", "##ed", "##ing", "search", "vector", "un",
         "##known"]
CASED_WORDS = ["The", "Hello", "World", "Fox", "Ünïcode"]


def tiny_vocab(cased: bool = False) -> list:
  letters = list(string.ascii_lowercase)
  vocab = SPECIAL + WORDS + letters + ["##" + c for c in letters]
  vocab += list(".,!?'-") + [str(d) for d in range(10)]
  if cased:
    vocab += CASED_WORDS + list(string.ascii_uppercase[:10])
  return list(dict.fromkeys(vocab))  # unique, in order


def tiny_config(vocab_size: int, hidden: int = 16, layers: int = 1) -> dict:
  return {
      "model_type": "bert", "architectures": ["BertModel"],
      "hidden_size": hidden, "num_hidden_layers": layers,
      "num_attention_heads": 2, "intermediate_size": 2 * hidden,
      "vocab_size": vocab_size, "max_position_embeddings": 64,
      "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
      "position_embedding_type": "absolute",
  }


def tiny_weights(config: dict, seed: int = 0, pooler: bool = True) -> dict:
  rng = np.random.default_rng(seed)
  h, i = config["hidden_size"], config["intermediate_size"]

  def w(*shape):
    return rng.normal(0, 0.2, size=shape).astype(np.float32)

  weights = {
      "embeddings.word_embeddings.weight": w(config["vocab_size"], h),
      "embeddings.position_embeddings.weight": w(
          config["max_position_embeddings"], h),
      "embeddings.token_type_embeddings.weight": w(2, h),
      "embeddings.LayerNorm.weight": 1 + w(h),
      "embeddings.LayerNorm.bias": w(h),
  }
  for layer in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    for name, (out_dim, in_dim) in {
        "attention.self.query": (h, h), "attention.self.key": (h, h),
        "attention.self.value": (h, h), "attention.output.dense": (h, h),
        "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
      weights[p + name + ".weight"] = w(out_dim, in_dim)
      weights[p + name + ".bias"] = w(out_dim)
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
      weights[p + norm + ".weight"] = 1 + w(h)
      weights[p + norm + ".bias"] = w(h)
  if pooler:
    weights["pooler.dense.weight"] = w(h, h)
    weights["pooler.dense.bias"] = w(h)
  return weights


def write_tiny_checkpoint(path: str, cased: bool = False, seed: int = 0,
                          weights_format: str = "safetensors",
                          sentence_transformers: bool = False,
                          pooler: bool = True, layers: int = 1,
                          hidden: int = 16) -> str:
  """Writes a random tiny BERT checkpoint directory and returns its path."""
  os.makedirs(path, exist_ok=True)
  vocab = tiny_vocab(cased)
  config = tiny_config(len(vocab), hidden=hidden, layers=layers)
  weights = tiny_weights(config, seed, pooler=pooler)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"do_lower_case": not cased}, f)
  if weights_format == "safetensors":
    # Imported here: only the chosen weights format's library is needed.
    from safetensors.numpy import save_file
    save_file(weights, os.path.join(path, "model.safetensors"))
  else:
    # Imported here: PyTorch is large, and only this format needs it.
    import torch
    torch.save({"bert." + k: torch.from_numpy(v) for k, v in weights.items()},
               os.path.join(path, "pytorch_model.bin"))
  if sentence_transformers:
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    with open(os.path.join(path, "modules.json"), "w") as f:
      json.dump([
          {"idx": 0, "name": "0", "path": "",
           "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling",
           "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Normalize",
           "type": "sentence_transformers.models.Normalize"}], f)
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
      json.dump({"pooling_mode_mean_tokens": True}, f)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
      json.dump({"max_seq_length": 32}, f)
  return path
