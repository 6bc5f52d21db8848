"""The whole pipeline on a few thousand real sentences with the default model.

Embeddings read back from the run directory must equal those from calling the
exported model directly, one plain batch at a time (cosine >= 0.9999): the
pipeline's batching, length sorting, per-batch padding and writing change
nothing.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401
import tensorflow_hub as hub

from pipeline import main
from pipeline import read_outputs
from tests.real_text import real_sentences


def _direct_embeddings(model_dir, texts, batch_size=64):
  preprocess = hub.load(os.path.join(model_dir, "preprocess"))
  encoder = hub.load(os.path.join(model_dir, "encoder"))
  vectors = []
  for start in range(0, len(texts), batch_size):
    inputs = preprocess(tf.constant(texts[start:start + batch_size]))
    # Padded to max_seq_length (256); columns past the batch's longest text
    # are all padding, and dropping them keeps the test fast.
    length = int(tf.reduce_max(tf.reduce_sum(inputs["input_mask"], axis=1)))
    inputs = {name: value[:, :length] for name, value in inputs.items()}
    sequence = encoder(inputs)["sequence_output"].numpy()
    mask = inputs["input_mask"].numpy()[..., None].astype(np.float32)
    mean = (sequence * mask).sum(1) / mask.sum(1)
    vectors.append(mean / np.linalg.norm(mean, axis=1, keepdims=True))
  return np.concatenate(vectors)


def test_pipeline_equals_the_model_called_directly(default_model_dir, tmp_path,
                                                   report_figure):
  sentences = real_sentences()
  assert len(sentences) >= 2000
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
  run_dir = str(tmp_path / "run")

  main.run([f"--input={corpus}", f"--output={run_dir}",
            f"--model={default_model_dir}", "--runner=DirectRunner"])

  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["counts"]["read"] == len(sentences)
  assert manifest["counts"]["embedded"] == len(sentences)
  assert manifest["model"]["max_seq_length"] == 256
  table = read_outputs.read_table(run_dir, "embeddings").to_pydict()
  by_text = dict(zip(table["text"], table["embedding"]))
  pipeline_vectors = np.array([by_text[s] for s in sentences],
                              dtype=np.float32)
  direct = _direct_embeddings(default_model_dir, sentences)
  cosine = (pipeline_vectors * direct).sum(1) / np.linalg.norm(
      pipeline_vectors, axis=1)
  report_figure("documents", len(sentences))
  report_figure("pipeline vs direct min cosine", f"{cosine.min():.7f}")
  report_figure("pipeline docs/s (incl. start-up)",
                manifest["metrics"]["docs_per_sec"])
  assert cosine.min() >= 0.9999
