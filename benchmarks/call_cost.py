"""Time of one encoder call by shape, and the cost model the planner uses.

    python -m benchmarks.call_cost [--model DIR] [--rows 1,2,...] \\
        [--lengths 8,16,...] [--repeats 5] [--precision float32] [--json OUT]

`bert_model.call_plan.plan_model_calls` cuts a length-sorted batch into
encoder calls by an estimated cost per call,

    seconds ~ fixed + per_token * rows * length * (1 + length / attention)

(the fixed part is TensorFlow's dispatch and the small-matrix inefficiency;
the quadratic part is attention). This probe times the default model's
encoder (tokenization excluded) on a grid of (rows, length) shapes, fits the
three constants by least squares and prints them in the planner's units:
`fixed / per_token` is the fixed cost in padded tokens. Re-run it on a new
kind of machine (a GPU, say) to see whether the planner's constants still
fit.
"""

import argparse
import json
import os
import sys
import time

# Keep TensorFlow's start-up chatter (the model library imports it) out of
# the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top

from bert_model import default_model  # pylint: disable=g-import-not-at-top
from bert_model import loaded_model as mh  # pylint: disable=g-import-not-at-top
from bert_model import metadata as metadata_lib  # pylint: disable=g-import-not-at-top

DEFAULT_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_LENGTHS = (8, 16, 32, 64, 128, 256)


def _ints(value: str):
  return tuple(int(v) for v in value.split(",") if v)


def time_shapes(model_dir: str, rows, lengths, repeats: int,
                precision: str) -> list:
  """[(rows, length, best seconds)] for each shape within 16384 tokens."""
  meta = metadata_lib.read_metadata(model_dir)
  model = mh.LoadedBertModel(mh.ModelSettings(
      preprocess_path=os.path.join(model_dir, "preprocess"),
      encoder_path=os.path.join(model_dir, "encoder"),
      max_seq_length=meta.max_seq_length, pooling=meta.pooling,
      normalize=meta.normalize, precision=precision))
  rng = np.random.default_rng(0)
  timings = []
  for length in lengths:
    for count in rows:
      if count * length > 16384 or length > meta.max_seq_length:
        continue
      ids = rng.integers(1000, 2000, (count, length)).astype(np.int32)
      mask = np.ones_like(ids)
      types = np.zeros_like(ids)
      model.encode_padded(ids, mask, types)  # warm-up
      best = float("inf")
      for _ in range(repeats):
        started = time.perf_counter()
        model.encode_padded(ids, mask, types)
        best = min(best, time.perf_counter() - started)
      timings.append((count, length, best))
      print(f"rows {count:4d} length {length:4d}: {best * 1e3:8.2f} ms "
            f"({count * length / best:9.0f} tokens/s)", flush=True)
  return timings


def fit(timings) -> dict:
  """Least squares of seconds = a + b * rows*length + c * rows*length^2,
  weighted by 1/seconds (relative error)."""
  t = np.array([s for _, _, s in timings])
  tokens = np.array([r * l for r, l, _ in timings], np.float64)
  square = np.array([r * l * l for r, l, _ in timings], np.float64)
  design = np.stack([np.ones_like(t), tokens, square], axis=1) / t[:, None]
  (a, b, c), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
  predicted = a + b * tokens + c * square
  return {"fixed_seconds": float(a), "per_token_seconds": float(b),
          "per_token_square_seconds": float(c),
          "fixed_in_tokens": float(a / b),
          "attention_length": float(b / c) if c > 0 else None,
          "max_relative_error": float(np.max(np.abs(predicted - t) / t)),
          "median_relative_error": float(np.median(np.abs(predicted - t) / t))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", help="exported model directory (default: "
                      "the default model, exported if needed)")
  parser.add_argument("--rows", type=_ints, default=DEFAULT_ROWS)
  parser.add_argument("--lengths", type=_ints, default=DEFAULT_LENGTHS)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--precision", default="float32")
  parser.add_argument("--json")
  args = parser.parse_args(argv)
  model_dir = args.model
  if not model_dir:
    model_dir = default_model.ensure_default_model()
  timings = time_shapes(model_dir, args.rows, args.lengths, args.repeats,
                        args.precision)
  fitted = fit(timings)
  print(json.dumps(fitted, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"timings": timings, "fit": fitted,
                 "load": os.getloadavg()}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
