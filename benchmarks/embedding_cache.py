"""Embeddings of the benchmark corpus with the default model, cached on disk.

The vectors are computed like the pipeline computes them: LoadedBertModel
(the TF Hub format export of all-MiniLM-L6-v2), max_seq_length 256, masked
mean pooling, L2-normalised; batches of 64 texts sorted by length, so a batch
is padded to little more than its own texts.

Cache: benchmarks/.cache/embeddings-<model fingerprint>-<corpus sources
fingerprint>-n<N>.npz holding the texts and the float32 [N, 384] vectors.
The corpus is in a fixed hash order, so the first n sentences of a larger
cached corpus are the corpus of size n: a request for n is served from any
cached file with at least n texts whose first n texts are those sentences.

    python -m benchmarks.embedding_cache --count 100000   # ~7 min at 250 docs/s
"""

import argparse
import glob
import json
import os
import re
import sys
import time
from typing import List, Optional

import numpy as np

from benchmarks import corpus as corpus_lib

BATCH_SIZE = 64
MAX_SEQ_LENGTH = 256


def model_fingerprint(model_dir: str) -> str:
  with open(os.path.join(model_dir, "model_metadata.json")) as f:
    return json.load(f)["fingerprint"]


def default_model_dir() -> str:
  """The default model's directory, exported first if it is not there."""
  # Imported here: the model library loads TensorFlow, which a cached corpus
  # does not need and the benchmarks' forked children would then inherit.
  from bert_model import default_model  # pylint: disable=g-import-not-at-top
  return default_model.ensure_default_model()


def _cache_prefix(model_dir: str) -> str:
  return os.path.join(
      corpus_lib.CACHE_DIR,
      f"embeddings-{model_fingerprint(model_dir)[:16]}-"
      f"{corpus_lib.sources_fingerprint()}-n")


def embed_texts(texts: List[str], model_dir: str,
                batch_size: int = BATCH_SIZE, log_every_secs: float = 30.0
                ) -> np.ndarray:
  """float32 [len(texts), H] normalised mean-pooled vectors, input order."""
  # Imported here: TensorFlow, only when texts are embedded (see
  # default_model_dir).
  from bert_model.loaded_model import LoadedBertModel  # pylint: disable=g-import-not-at-top
  from bert_model.loaded_model import ModelSettings  # pylint: disable=g-import-not-at-top
  model = LoadedBertModel(ModelSettings(
      preprocess_path=os.path.join(model_dir, "preprocess"),
      encoder_path=os.path.join(model_dir, "encoder"),
      max_seq_length=MAX_SEQ_LENGTH, pooling="mean", normalize=True))
  order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
  vectors: Optional[np.ndarray] = None
  started = last_log = time.time()
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    batch = model.embed([texts[i] for i in rows])["embedding"]
    if vectors is None:
      vectors = np.zeros((len(texts), batch.shape[1]), dtype=np.float32)
    vectors[rows] = batch
    now = time.time()
    if now - last_log >= log_every_secs:
      done = start + len(rows)
      print(f"  embedded {done}/{len(texts)} ({done / (now - started):.0f} "
            f"docs/s, load {os.getloadavg()[0]:.2f})", file=sys.stderr,
            flush=True)
      last_log = now
  elapsed = time.time() - started
  print(f"  embedded {len(texts)} texts in {elapsed:.0f} s "
        f"({len(texts) / max(elapsed, 1e-9):.0f} docs/s)", file=sys.stderr,
        flush=True)
  if vectors is None:
    vectors = np.zeros((0, 384), dtype=np.float32)
  return vectors


def _cached_sizes(prefix: str) -> List[int]:
  sizes = []
  for path in glob.glob(prefix + "*.npz"):
    match = re.fullmatch(re.escape(prefix) + r"(\d+)\.npz", path)
    if match:
      sizes.append(int(match.group(1)))
  return sorted(sizes)


def load_or_embed(n: int, model_dir: Optional[str] = None):
  """(texts, float32 [n', H] vectors) of the first n corpus sentences
  (n' = min(n, sentences available)); embedded once, then read from cache."""
  model_dir = model_dir or default_model_dir()
  texts = corpus_lib.real_sentences(n)
  n = len(texts)
  prefix = _cache_prefix(model_dir)
  for size in _cached_sizes(prefix):
    if size < n:
      continue
    with np.load(f"{prefix}{size}.npz") as cached:
      cached_texts = cached["texts"][:n].tolist()
      if cached_texts == texts:
        return texts, np.ascontiguousarray(cached["vectors"][:n])
  vectors = embed_texts(texts, model_dir)
  os.makedirs(corpus_lib.CACHE_DIR, exist_ok=True)
  path = f"{prefix}{n}.npz"
  tmp = f"{prefix}{n}.tmp{os.getpid()}.npz"
  np.savez(tmp, texts=np.asarray(texts), vectors=vectors)
  os.replace(tmp, path)
  return texts, vectors


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--count", type=int, default=100_000)
  args = parser.parse_args(argv)
  started = time.time()
  texts, vectors = load_or_embed(args.count)
  print(f"{len(texts)} embeddings {vectors.shape} ready in "
        f"{time.time() - started:.0f} s (load average "
        f"{os.getloadavg()[0]:.2f})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
