"""Nearest-neighbours benchmark on real-text embeddings of the default model.

For each corpus size N (first N sentences of benchmarks.corpus, embedded with
all-MiniLM-L6-v2, H=384; cached by benchmarks.embedding_cache), with k=10 and
the default block size:

  exact_beam   wall time of the real `ExactNeighbours` transform on
               LocalRunner (FnApiRunner, in-memory), from beam.Create over
               N Embedding records to the collected neighbour rows; run in a
               child process (fork) so it can be cut off at --beam-timeout,
               and so its peak RSS is its own.
  create_only  the same pipeline with `beam.combiners.Count` instead of the
               neighbours transform: what Create and the runner cost anyway.
  exact_numpy  `exact_top_k` (the same blocked algorithm in one process).
  matmul       the pure matrix-product work of exact mode: float32 Q @ C.T
               over all N x N pairs in block_size x block_size blocks,
               2 N^2 H floating-point operations; its GFLOP/s.
  ratios       exact_beam / matmul and exact_numpy / matmul.
  ann          `ApproximateNeighbours` on LocalRunner with default settings
               (a flat exact index below 20,000 documents, HNSW above), and
               with HNSW forced (flat_index_below=0) where the default is
               flat: wall time, recall@10 from its stats, and recall@10
               recomputed here against numpy exact_top_k on the 1000-query
               recall sample.

Beam exact mode's rows are checked against exact_top_k on the same sample.

    python -m benchmarks.neighbours_benchmark [--sizes 10000,50000,100000]
        [--json OUT] [--beam-timeout 900]
"""

import argparse
import datetime
import importlib
import json
import os
import sys
import time
from typing import Dict, List, Optional

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from benchmarks import embedding_cache
from benchmarks.harness import in_child
from benchmarks.machine import machine
from pipeline.local_runner import LocalRunner
from run_directory.records import Embedding
from run_directory.records import Vectors
from run_directory.tables import neighbour_rows
from transforms import neighbours
from transforms.neighbours import approximate
from transforms.neighbours import exact as exact_mode
from transforms.neighbours import maths
from transforms.neighbours import names

K = 10
SAMPLE_SIZE = 1000

# Rows collected by the pipelines' last step. LocalRunner runs the DoFns in
# this process (in-memory FnApiRunner), so a module global reaches them.
_SINK: Dict[str, list] = {}


def _load() -> str:
  return "%.2f %.2f %.2f" % os.getloadavg()


def document_ids(n: int) -> List[str]:
  return [f"doc{i:06d}" for i in range(n)]


def make_records(ids, vectors) -> list:
  return [
      Embedding(id=doc_id, text="", source="benchmark",
                vectors=Vectors(embedding=np.array(vector, dtype=np.float32),
                                num_tokens=0, truncated=False))
      for doc_id, vector in zip(ids, vectors)
  ]


def _sink(element, key):
  _SINK[key].append(element)


# In-memory inputs of the pipelines, by key: (ids, vectors). Read by
# `_records_of_chunk` in the runner (same process), so the vectors never go
# into the pipeline proto.
_DATA: Dict[str, tuple] = {}
CHUNK = 1000

# How the Embedding records enter the pipeline:
#   "chunks":  beam.Create(chunk numbers) | FlatMap(records of the chunk from
#              an in-process array): cheap, like a file source.
#   "records": beam.Create(records): Beam pickles every record into the
#              pipeline proto (bz2-compressed cloudpickle, several times),
#              which costs far more than the neighbours themselves.
FEEDS = ("chunks", "records")


def _records_of_chunk(chunk, key):
  ids, vectors = _DATA[key]
  start = chunk * CHUNK
  return make_records(ids[start:start + CHUNK], vectors[start:start + CHUNK])


def run_pipeline(ids, vectors, transform_factory, label: str,
                 feed: str = "chunks", rows_output: Optional[str] = None
                 ) -> dict:
  """Runs Embedding records | transform on LocalRunner; returns wall time,
  the collected rows (the transform's `rows_output`, by default the
  neighbours table's rows) and stats (STATS) or the count."""
  # Functions and globals by their importable name (under `python -m` this
  # file is also __main__, whose functions Beam would pickle by value,
  # globals and all).
  this = importlib.import_module("benchmarks.neighbours_benchmark")
  rows_key, stats_key = f"{label}/rows", f"{label}/stats"
  this._SINK[rows_key], this._SINK[stats_key] = [], []  # pylint: disable=protected-access
  started = time.perf_counter()
  with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions([])) as p:
    if feed == "records":
      embeddings = p | "Create" >> beam.Create(
          this.make_records(ids, vectors), reshuffle=False)
    else:
      this._DATA[label] = (ids, vectors)  # pylint: disable=protected-access
      embeddings = (
          p
          | "CreateChunks" >> beam.Create(
              range((len(ids) + CHUNK - 1) // CHUNK), reshuffle=False)
          | "ToEmbeddings" >> beam.FlatMap(this._records_of_chunk, label))  # pylint: disable=protected-access
    outputs = embeddings | "Transform" >> transform_factory()
    if isinstance(outputs, dict):
      if rows_output is None:  # the neighbours table's rows
        rows = outputs[neighbours.NEIGHBOUR_LISTS] | "ToRows" >> beam.FlatMap(
            neighbour_rows)
      else:
        rows = outputs[rows_output]
      _ = rows | "SinkRows" >> beam.Map(this._sink, rows_key)  # pylint: disable=protected-access
      _ = outputs[neighbours.STATS] | "SinkStats" >> beam.Map(
          this._sink, stats_key)  # pylint: disable=protected-access
    else:
      _ = outputs | "SinkCount" >> beam.Map(this._sink, stats_key)  # pylint: disable=protected-access
  seconds = time.perf_counter() - started
  this._DATA.pop(label, None)  # pylint: disable=protected-access
  return {"seconds": seconds, "rows": this._SINK.pop(rows_key),  # pylint: disable=protected-access
          "stats": this._SINK.pop(stats_key)}  # pylint: disable=protected-access


def rows_to_lists(rows) -> Dict[str, list]:
  lists: Dict[str, list] = {}
  for row in sorted(rows, key=lambda r: (r["id"], r["rank"])):
    lists.setdefault(row["id"], []).append((row["score"], row["neighbour_id"]))
  return lists


def _exact_beam_child(ids, vectors, block_size, sample, sample_lists, feed):
  """Runs in the child: the pipeline and its checks; returns a small dict."""
  run = run_pipeline(
      ids, vectors, lambda: exact_mode.ExactNeighbours(K, block_size),
      "exact", feed)
  lists = rows_to_lists(run["rows"])
  mismatches = sum(lists.get(q) != sample_lists[q] for q in sample)
  return {
      "seconds": run["seconds"],
      "rows": len(run["rows"]),
      "queries_with_rows": len(lists),
      "stats": run["stats"][0] if run["stats"] else None,
      "sample_mismatches_vs_exact_top_k": mismatches,
  }


def _create_only_child(ids, vectors, feed):
  run = run_pipeline(ids, vectors, lambda: beam.combiners.Count.Globally(),
                     "create_only", feed)
  return {"seconds": run["seconds"], "count": run["stats"][0]}


def _ann_child(ids, vectors, settings, exact_sample, feed):
  run = run_pipeline(
      ids, vectors,
      lambda: approximate.ApproximateNeighbours(K, settings=settings), "ann",
      feed)
  lists = rows_to_lists(run["rows"])
  stats = run["stats"][0] if run["stats"] else {}
  recall = maths.recall_at_k(
      {q: lists.get(q, []) for q in exact_sample}, exact_sample)
  return {
      "seconds": run["seconds"],
      "rows": len(run["rows"]),
      "index": stats.get("index"),
      "recall_at_10_stats": stats.get("recall_at_k"),
      "recall_sample_size": stats.get("recall_sample_size"),
      "recall_at_10_numpy_check": recall,
  }


def matmul_time(vectors: np.ndarray, block_size: int) -> dict:
  """One float32 Q @ C.T over all N x N pairs, block by block."""
  n, hidden = vectors.shape
  out = np.empty((block_size, block_size), dtype=np.float32)
  vectors = np.ascontiguousarray(vectors, dtype=np.float32)
  # Warm-up (BLAS threads, page faults of `out`).
  block = vectors[:block_size]
  np.matmul(block, block.T, out=out[:len(block), :len(block)])
  started = time.perf_counter()
  for q in range(0, n, block_size):
    queries = vectors[q:q + block_size]
    for c in range(0, n, block_size):
      corpus = vectors[c:c + block_size]
      np.matmul(queries, corpus.T, out=out[:len(queries), :len(corpus)])
  seconds = time.perf_counter() - started
  flops = 2.0 * n * n * hidden
  return {"seconds": seconds, "flops": flops,
          "gflops_per_sec": flops / seconds / 1e9}


def benchmark_size(n: int, texts_vectors, block_size: int,
                   beam_timeout: float, skip_beam_exact: bool,
                   skip_create_only: bool, feed: str = "chunks",
                   skip_numpy_exact: bool = False,
                   parts=("matmul", "ann")) -> dict:
  _, all_vectors = texts_vectors
  vectors = np.ascontiguousarray(all_vectors[:n])
  ids = document_ids(n)
  result = {"n": n, "hidden": int(vectors.shape[1]), "k": K,
            "block_size": block_size, "feed": feed,
            "load_before": _load()}
  log = lambda msg: print(f"[n={n} load {_load()}] {msg}", flush=True)

  # The recall sample, and its exact neighbours (numpy).
  sample = maths.recall_sample(ids, SAMPLE_SIZE)
  position = {doc_id: i for i, doc_id in enumerate(ids)}
  sample_rows = [position[q] for q in sample]
  exact_sample = dict(maths.exact_top_k(
      sample, vectors[sample_rows], ids, vectors, K, block_size))

  # (b) the pure matrix product.
  result["matmul"] = matmul_time(vectors, block_size)
  log(f"matmul {result['matmul']['seconds']:.1f} s, "
      f"{result['matmul']['gflops_per_sec']:.1f} GFLOP/s")

  # (a) exact_top_k in numpy.
  if skip_numpy_exact:
    result["exact_numpy"] = {"skipped": True}
  else:
    started = time.perf_counter()
    exact_all = maths.exact_top_k(ids, vectors, ids, vectors, K,
                                  block_size)
    result["exact_numpy"] = {"seconds": time.perf_counter() - started,
                             "queries": len(exact_all)}
    del exact_all
    log(f"exact_top_k {result['exact_numpy']['seconds']:.1f} s")

  # Pipeline floor: Create + Count.
  if not skip_create_only:
    created, error = in_child(_create_only_child, beam_timeout, ids, vectors,
                               feed)
    result["create_only"] = created or {"error": error}
    log(f"create_only {created and round(created['seconds'], 1)} "
        f"{error or ''}")

  # (a) exact mode on Beam.
  if skip_beam_exact:
    result["exact_beam"] = {"skipped": True}
  else:
    exact, error = in_child(_exact_beam_child, beam_timeout, ids, vectors,
                             block_size, sample, exact_sample, feed)
    result["exact_beam"] = exact or {"error": error}
    log(f"exact_beam {exact and round(exact['seconds'], 1)} {error or ''}")

  # (d) ANN: default settings, and HNSW forced when the default is flat.
  variants = [("ann_default", approximate.AnnIndexSettings())]
  if "ann" not in parts:
    variants = []
    result["ann_default"] = {"skipped": True}
  if n < names.DEFAULT_FLAT_INDEX_BELOW and "ann" in parts:
    variants.append(("ann_hnsw", approximate.AnnIndexSettings(
        flat_index_below=0)))
  for name, settings in variants:
    ann, error = in_child(_ann_child, beam_timeout, ids, vectors, settings,
                           exact_sample, feed)
    result[name] = ann or {"error": error}
    log(f"{name} {ann and round(ann['seconds'], 1)} "
        f"recall {ann and ann['recall_at_10_stats']} {error or ''}")
  if "ann_hnsw" not in result:
    result["ann_hnsw"] = {"same_as": "ann_default"}

  matmul_seconds = result["matmul"]["seconds"]
  for name in ("exact_beam", "exact_numpy"):
    if "seconds" in result[name]:
      result[name]["ratio_to_matmul"] = (
          result[name]["seconds"] / matmul_seconds)
  result["load_after"] = _load()
  return result


def extrapolate(results: List[dict], target_n: int,
                name: str = "exact_beam") -> Optional[dict]:
  """results[name] time at target_n from the measured sizes: t = a N^2 + b N
  (least squares) with two or more sizes, t = a N^2 with one."""
  points = [(r["n"], r[name]["seconds"]) for r in results
            if "seconds" in r.get(name, {})]
  if not points:
    return None
  ns = np.array([p[0] for p in points], dtype=np.float64)
  ts = np.array([p[1] for p in points], dtype=np.float64)
  if len(points) >= 2:
    (a, b), *_ = np.linalg.lstsq(np.stack([ns**2, ns], axis=1), ts,
                                 rcond=None)
    model = "a N^2 + b N"
  else:
    a, b, model = ts[0] / ns[0]**2, 0.0, "a N^2"
  return {"n": target_n, "seconds": float(a * target_n**2 + b * target_n),
          "model": model, "from_sizes": [int(x) for x in ns]}


def _fmt(value, digits=1):
  return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: List[dict]) -> None:
  header = ("N", "matmul s", "GFLOP/s", "exact_top_k s", "ratio",
            "Beam exact s", "ratio", "Create s", "ANN s", "recall@10",
            "HNSW s", "HNSW recall")
  rows = []
  for r in results:
    beam_exact = r["exact_beam"]
    ann = r["ann_default"]
    hnsw = r["ann_hnsw"] if "seconds" in r["ann_hnsw"] else ann
    beam_seconds = beam_exact.get("seconds")
    rows.append((
        str(r["n"]), _fmt(r["matmul"]["seconds"]),
        _fmt(r["matmul"]["gflops_per_sec"]),
        _fmt(r["exact_numpy"].get("seconds")),
        _fmt(r["exact_numpy"].get("ratio_to_matmul")),
        _fmt(beam_seconds) if beam_seconds is not None else
        beam_exact.get("error", "skipped")[:20],
        _fmt(beam_exact.get("ratio_to_matmul")),
        _fmt(r.get("create_only", {}).get("seconds")),
        _fmt(ann.get("seconds")), _fmt(ann.get("recall_at_10_stats"), 4),
        _fmt(hnsw.get("seconds")), _fmt(hnsw.get("recall_at_10_stats"), 4)))
  widths = [max(len(h), *(len(row[i]) for row in rows))
            for i, h in enumerate(header)]
  print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
  print("-+-".join("-" * w for w in widths))
  for row in rows:
    print(" | ".join(v.rjust(w) for v, w in zip(row, widths)))


def _finish(report: dict) -> None:
  """Extrapolates what was not measured, prints the table."""
  results = report["results"]
  for r in results:
    for name in ("exact_beam", "exact_numpy"):
      if "seconds" not in r[name]:
        r[name]["extrapolated"] = extrapolate(results, r["n"], name)
  print()
  print_table(results)
  print(f"\nload average: start {report['load_average_start']}, "
        f"end {report.get('load_average_end')}")
  for r in results:
    for name in ("exact_beam", "exact_numpy"):
      extrapolated = r[name].get("extrapolated")
      if extrapolated:
        print(f"{name} at N={r['n']} not measured "
              f"({r[name].get('error', 'skipped')}); extrapolated "
              f"{extrapolated['seconds']:.0f} s ({extrapolated['model']} "
              f"from {extrapolated['from_sizes']}), "
              f"{extrapolated['seconds'] / r['matmul']['seconds']:.1f}x "
              "the matrix product")


def merge_reports(paths: List[str], output: Optional[str]) -> int:
  reports = []
  for path in paths:
    with open(path) as f:
      reports.append(json.load(f))
  merged = dict(reports[0])
  merged["results"] = sorted(
      (r for report in reports for r in report["results"]),
      key=lambda r: r["n"])
  merged["load_average_end"] = reports[-1].get(
      "load_average_end") or merged["results"][-1].get("load_after")
  merged["merged_from"] = [
      {"path": path, "date": report["date"],
       "load_average_start": report["load_average_start"]}
      for path, report in zip(paths, reports)]
  _finish(merged)
  if output:
    with open(output, "w") as f:
      json.dump(merged, f, indent=2)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="10000,50000,100000")
  parser.add_argument("--json", help="write the figures to this file")
  parser.add_argument("--block-size", type=int, default=None,
                      help="default: names.DEFAULT_BLOCK_SIZE")
  parser.add_argument("--beam-timeout", type=float, default=900.0,
                      help="seconds after which a Beam run is abandoned "
                      "(its time is then extrapolated)")
  parser.add_argument("--skip-beam-exact-above", type=int, default=None,
                      help="do not run Beam exact mode above this N; "
                      "extrapolate it")
  parser.add_argument("--skip-create-only", action="store_true")
  parser.add_argument("--skip-ann", action="store_true")
  parser.add_argument("--skip-numpy-exact-above", type=int, default=None,
                      help="do not run exact_top_k above this N (time "
                      "budget)")
  parser.add_argument("--feed", choices=FEEDS, default="chunks",
                      help="how records enter the pipeline (see FEEDS)")
  parser.add_argument("--merge", nargs="+", metavar="JSON",
                      help="no run: merge these reports (sizes in order) "
                      "into --json and print the table")
  args = parser.parse_args(argv)
  if args.merge:
    return merge_reports(args.merge, args.json)

  block_size = args.block_size or names.DEFAULT_BLOCK_SIZE
  sizes = sorted(int(s) for s in args.sizes.split(","))
  texts, vectors = embedding_cache.load_or_embed(max(sizes))
  if len(texts) < max(sizes):
    print(f"only {len(texts)} sentences available", flush=True)
    sizes = sorted({min(s, len(texts)) for s in sizes})

  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "machine": {**machine(), "numpy": np.__version__},
      "load_average_start": _load(),
      "corpus": {"sentences": len(texts),
                 "mean_chars": float(np.mean([len(t) for t in texts]))},
      "k": K, "block_size": block_size, "feed": args.feed, "results": [],
  }
  for n in sizes:
    skip = (args.skip_beam_exact_above is not None and
            n > args.skip_beam_exact_above)
    report["results"].append(benchmark_size(
        n, (texts, vectors), block_size, args.beam_timeout, skip,
        args.skip_create_only, args.feed,
        args.skip_numpy_exact_above is not None and
        n > args.skip_numpy_exact_above,
        ("matmul",) if args.skip_ann else ("matmul", "ann")))
    if args.json:  # after every size: a partial report survives a kill
      with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
  report["load_average_end"] = _load()
  _finish(report)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
