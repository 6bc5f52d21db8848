"""Near-duplicate groups benchmark: real texts with planted edited copies.

    python -m benchmarks.duplicates_benchmark [--docs 100000] [--copies 0.02]
        [--threshold 0.95] [--json OUT]

The first N real sentences of benchmarks/corpus.py (embedded with the
default model, cached by benchmarks/embedding_cache.py), plus edited copies
of a fraction of them (a word dropped, two words swapped, the case changed or
punctuation added; embedded the same way). Each in a forked child on
LocalRunner, with its peak RSS, in one run:

  duplicates   the real NearDuplicates stage (exact mode, the default block
               size): groups, documents in groups, and the planted copies
               found in their original's group;
  neighbours   ExactNeighbours with k=10 on the same vectors;
  matmul       the bare float32 matrix products of exact mode over all
               N x N pairs (neighbours_benchmark.matmul_time); the
               duplicates stage computes half of them (each pair of shards
               once).

Figures depend on the CPU (recorded): compare the ratios of one run.
"""

import argparse
import datetime
import random
import sys

import numpy as np

from benchmarks import embedding_cache
from benchmarks import neighbours_benchmark as nb
from benchmarks.harness import in_child
from benchmarks.machine import machine
from benchmarks.report import print_and_write
from transforms import duplicates
from transforms.neighbours import exact

IDS_WIDTH = 6


def edited(text: str, rng: random.Random) -> str:
  """A near copy: the kind of edit that makes a duplicate in a corpus."""
  words = text.split()
  edit = rng.randrange(4)
  if edit == 0 and len(words) > 4:
    del words[rng.randrange(len(words))]
  elif edit == 1 and len(words) > 2:
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
  elif edit == 2:
    return text.lower() if text != text.lower() else text.upper()
  else:
    return text.rstrip(".!?") + "!!"
  return " ".join(words)


def _duplicates(ids, vectors, threshold, block_size):
  result = nb.run_pipeline(
      ids, vectors, lambda: duplicates.NearDuplicates(
          duplicates.DuplicateSettings(threshold, block_size=block_size)),
      "duplicates", rows_output=duplicates.DUPLICATE_ROWS)
  group_of = {row["id"]: row["group_id"] for row in result.pop("rows")}
  result["group_of"] = group_of
  return result


def _neighbours(ids, vectors, block_size):
  result = nb.run_pipeline(
      ids, vectors, lambda: exact.ExactNeighbours(nb.K, block_size),
      "neighbours")
  result["rows"] = len(result["rows"])
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--docs", type=int, default=100_000)
  parser.add_argument("--copies", type=float, default=0.02)
  parser.add_argument("--threshold", type=float, default=0.95)
  parser.add_argument("--block_size", type=int, default=4096)
  parser.add_argument("--timeout", type=float, default=3600)
  parser.add_argument("--json")
  args = parser.parse_args(argv)

  texts, vectors = embedding_cache.load_or_embed(args.docs)
  rng = random.Random(0)
  originals = sorted(rng.sample(range(len(texts)),
                                int(args.copies * len(texts))))
  copies = [edited(texts[i], rng) for i in originals]
  copy_vectors = embedding_cache.embed_texts(
      copies, embedding_cache.default_model_dir())
  ids = [f"doc{i:0{IDS_WIDTH}d}" for i in range(len(texts))]
  copy_ids = [f"doc{i:0{IDS_WIDTH}d}~copy" for i in originals]
  all_ids = ids + copy_ids
  all_vectors = np.concatenate([vectors, copy_vectors]).astype(np.float32)

  report = {
      "date": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "machine": machine(),
      "docs": len(all_ids), "originals": len(texts), "copies": len(copies),
      "threshold": args.threshold, "block_size": args.block_size,
  }
  for name, function, extra in (
      ("duplicates", _duplicates, (args.threshold, args.block_size)),
      ("neighbours", _neighbours, (args.block_size,)),
      ("matmul", lambda v, b: nb.matmul_time(v, b), None)):
    if name == "matmul":
      result, error = in_child(
          function, args.timeout, all_vectors, args.block_size)
    else:
      result, error = in_child(
          function, args.timeout, all_ids, all_vectors, *extra)
    if error:
      report[name] = {"error": error[-2000:]}
      continue
    if name == "duplicates":
      group_of = result.pop("group_of")
      found = sum(group_of.get(c) == group_of.get(o, o) and c in group_of
                  for c, o in zip(copy_ids, (ids[i] for i in originals)))
      result["planted_copies_found"] = found
      result["planted_copies_recall"] = round(found / max(1, len(copies)), 4)
      result["stats"] = result["stats"][0] if result["stats"] else None
    report[name] = result
  seconds = {name: report[name].get("seconds") for name in
             ("duplicates", "neighbours", "matmul")}
  if all(seconds.values()):
    report["ratios"] = {
        "duplicates_over_neighbours": round(
            seconds["duplicates"] / seconds["neighbours"], 3),
        # The duplicates stage multiplies each pair of shards once.
        "duplicates_over_half_matmul": round(
            seconds["duplicates"] / (seconds["matmul"] / 2), 3),
    }
  print_and_write(report, args.json, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
