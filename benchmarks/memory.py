"""Peak memory of whole local runs, by corpus size, with a tiny model.

    python -m benchmarks.memory [--sizes 20000,200000] [--large 1000000]
        [--json benchmarks/results-memory.json]

Each size is one `python -m pipeline.main` subprocess on the local runner
(neighbours off: exact neighbours need every vector, see
docs/performance.md), with the tiny random BERT model of
bert_model/tiny_checkpoint.py (hidden size 16, one layer), so that the
pipeline's own memory shows rather than the model's. Its peak is the largest
sum of the resident set sizes of the process and all its descendants,
sampled from /proc every 0.2 s (worker subprocesses included), or the
kernel's own high-water mark of the largest single process (the rusage of
wait4) where that is larger.

The corpus: JSON lines `{"id": "doc00000000", "text": ...}`: the ~1,500
prose sentences of Python's own reference (pydoc_data.topics, cut and
filtered as benchmarks/corpus.py does), then the same sentences with their
words shuffled (seeded by the document's number): real lengths and
vocabulary, mean 106 characters (1.4% of 200,000 texts repeat one), and
nothing to build first.

Printed and written as JSON: per size the peak, wall time and docs/s; the
ratio of the peaks of 200,000 and 20,000 documents; a least-squares line
peak = base + per_document * N through every measured size, and from it the
projected peak of 2,000,000 documents, with the largest size measured.
`--source DIR` runs the pipeline of another checkout (e.g. an older commit
from `git archive`), for before/after figures.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from benchmarks import corpus as corpus_lib
from benchmarks.machine import machine

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
CACHE_DIR = os.path.join(_HERE, ".cache")

DEFAULT_SIZES = (20_000, 200_000)
PROJECTED_SIZE = 2_000_000
SAMPLE_SECS = 0.2
# The targets of issue 19.
TARGET_RATIO_200K_20K = 1.25
TARGET_2M_GB = 8.0


def tiny_model_dir() -> str:
  """The tiny random model, exported once into benchmarks/.cache/."""
  # Imported here: TensorFlow takes seconds to import, and only the first
  # run (no cached model yet) needs it.
  from bert_model import export
  from bert_model import tiny_checkpoint
  model_dir = os.path.join(CACHE_DIR, "tiny-bert-model")
  if not os.path.exists(os.path.join(model_dir, "model_metadata.json")):
    with tempfile.TemporaryDirectory() as scratch:
      checkpoint = tiny_checkpoint.write_tiny_checkpoint(
          os.path.join(scratch, "checkpoint"), sentence_transformers=True)
      export.export_checkpoint(checkpoint, model_dir, name="tiny-bert")
  return model_dir


def base_sentences() -> List[str]:
  """The prose sentences of pydoc_data.topics (Python's own reference), in
  hash order: real text that needs no corpus build (benchmarks/corpus.py)."""
  sentences = {sentence for topic in corpus_lib.pydoc_topics()
               for sentence in corpus_lib.split_sentences(topic)
               if corpus_lib.is_prose(sentence)}
  return sorted(sentences, key=corpus_lib.sort_key)


def document_texts(n: int) -> List[str]:
  """n distinct texts: the real sentences, then shuffled-word variants."""
  sentences = base_sentences()
  texts = list(sentences[:n])
  for i in range(len(texts), n):
    words = sentences[i % len(sentences)].split()
    random.Random(i).shuffle(words)
    texts.append(" ".join(words))
  return texts


def write_corpus(path: str, n: int) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for i, text in enumerate(document_texts(n)):
      f.write(json.dumps({"id": f"doc{i:08d}", "text": text}) + "\n")


def _tree_rss_kb(root: int) -> int:
  """Summed VmRSS of `root` and every descendant, in KiB."""
  children, rss = {}, {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/status") as f:
        status = f.read()
    except OSError:
      continue
    fields = dict(line.split(":", 1) for line in status.splitlines()
                  if ":" in line)
    pid = int(entry)
    children.setdefault(int(fields.get("PPid", "0").strip()), []).append(pid)
    rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
  total, stack = 0, [root]
  while stack:
    pid = stack.pop()
    total += rss.get(pid, 0)
    stack.extend(children.get(pid, ()))
  return total


def measure_run(corpus: str, n: int, model_dir: str, work_dir: str,
                source: str, extra_flags: List[str]) -> Dict:
  """One pipeline run in a subprocess: its peak memory, time and counts."""
  output = os.path.join(work_dir, f"run-{n}")
  shutil.rmtree(output, ignore_errors=True)
  command = [sys.executable, "-m", "pipeline.main", f"--input={corpus}",
             f"--output={output}", f"--model={model_dir}",
             "--neighbours_k=0", "--run_id=memory-benchmark", *extra_flags]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", NO_GCE_CHECK="true",
             HF_HUB_OFFLINE="1")
  log_path = f"{output}.log"
  started = time.monotonic()
  load = [os.getloadavg()[0]]
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=source, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    peak_kb, samples = 0, 0
    while True:
      # wait4, not poll: its rusage is this run's own high-water mark.
      pid, status, usage = os.wait4(process.pid, os.WNOHANG)
      if pid:
        break
      peak_kb = max(peak_kb, _tree_rss_kb(process.pid))
      samples += 1
      if samples % 50 == 0:
        load.append(os.getloadavg()[0])
      time.sleep(SAMPLE_SECS)
  process.returncode = os.waitstatus_to_exitcode(status)
  seconds = time.monotonic() - started
  if process.returncode != 0:
    raise RuntimeError(f"the pipeline failed on {n} documents (exit "
                       f"{process.returncode}); see {log_path}")
  with open(os.path.join(output, "manifest.json")) as f:
    manifest = json.load(f)
  counts = manifest["counts"]
  if counts["read"] != n or counts["read"] != (counts["embedded"]
                                               + counts["dead_lettered"]):
    raise RuntimeError(f"counts do not add up on {n} documents: {counts}")
  largest_kb = usage.ru_maxrss  # the largest process of the run, by the kernel
  shutil.rmtree(output, ignore_errors=True)
  return {
      "documents": n,
      # Sampling can miss a short spike that the kernel's figure holds.
      "peak_rss_mb": round(max(peak_kb, largest_kb) / 1024, 1),
      "max_single_process_rss_mb": round(largest_kb / 1024, 1),
      "seconds": round(seconds, 1),
      "pipeline_seconds": manifest["metrics"]["wall_time_secs"],
      "docs_per_sec": manifest["metrics"]["docs_per_sec"],
      "counts": counts,
      "load_average_1min": [round(min(load), 2), round(max(load), 2)],
  }


def fit_line(points: List[Dict]) -> Optional[Dict]:
  """Least-squares peak_mb = base_mb + per_document_kb / 1024 * N."""
  if len(points) < 2:
    return None
  xs = [p["documents"] for p in points]
  ys = [p["peak_rss_mb"] for p in points]
  mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
  slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
           / sum((x - mean_x) ** 2 for x in xs))
  base = mean_y - slope * mean_x
  return {"base_mb": round(base, 1),
          "per_document_kb": round(slope * 1024, 3)}


def summarize(runs: List[Dict]) -> Dict:
  by_size = {run["documents"]: run for run in runs}
  summary = {}
  if 20_000 in by_size and 200_000 in by_size:
    ratio = by_size[200_000]["peak_rss_mb"] / by_size[20_000]["peak_rss_mb"]
    summary["ratio_200k_over_20k"] = round(ratio, 3)
    summary["ratio_target"] = TARGET_RATIO_200K_20K
    summary["ratio_met"] = ratio <= TARGET_RATIO_200K_20K
  line = fit_line(runs)
  if line:
    projected_mb = line["base_mb"] + line["per_document_kb"] / 1024 * (
        PROJECTED_SIZE)
    largest = max(by_size)
    summary["line"] = line
    summary["projected_2m_gb"] = round(projected_mb / 1024, 2)
    summary["projection_backed_by_documents"] = largest
    summary["projection_target_gb"] = TARGET_2M_GB
    summary["projection_met"] = projected_mb / 1024 <= TARGET_2M_GB
  return summary


def print_report(report: Dict) -> None:
  m = report["machine"]
  print(f"machine: {m['cpu']} x{m['cpus']}, {report['memory_gb']} GB RAM, "
        f"model {report['model']}")
  print(f"{'documents':>10} {'peak MB':>9} {'largest':>9} {'s':>7} "
        f"{'docs/s':>8}  load")
  for run in report["runs"]:
    print(f"{run['documents']:>10,} {run['peak_rss_mb']:>9.0f} "
          f"{run['max_single_process_rss_mb']:>9.0f} {run['seconds']:>7.1f} "
          f"{run['docs_per_sec']:>8.0f}  {run['load_average_1min']}")
  s = report["summary"]
  if "ratio_200k_over_20k" in s:
    print(f"peak 200k / 20k: {s['ratio_200k_over_20k']:.3f} (target <= "
          f"{s['ratio_target']}: {'met' if s['ratio_met'] else 'NOT met'})")
  if "line" in s:
    print(f"line: {s['line']['base_mb']:.0f} MB + "
          f"{s['line']['per_document_kb']:.3f} KB per document; 2M "
          f"projected {s['projected_2m_gb']:.2f} GB (largest measured: "
          f"{s['projection_backed_by_documents']:,}; target <= "
          f"{s['projection_target_gb']} GB: "
          f"{'met' if s['projection_met'] else 'NOT met'})")


def _memory_gb() -> Optional[float]:
  try:
    with open("/proc/meminfo") as f:
      return round(int(f.readline().split()[1]) / 1024 ** 2, 1)
  except (OSError, ValueError, IndexError):
    return None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                      help="corpus sizes, comma-separated")
  parser.add_argument("--large", type=int, default=0,
                      help="also measure this size (e.g. 1000000): backs "
                      "the 2M projection")
  parser.add_argument("--json", default=None, help="write the report here")
  parser.add_argument("--model", default=None,
                      help="model directory (default: the tiny random "
                      "model, exported into benchmarks/.cache/ once)")
  parser.add_argument("--source", default=_REPO,
                      help="checkout whose pipeline runs (default: this one)")
  parser.add_argument("--work_dir", default=None,
                      help="corpora and run directories (default: a "
                      "temporary directory, removed afterwards)")
  parser.add_argument("--pipeline_flag", action="append", default=[],
                      help="extra flag for pipeline.main (repeatable)")
  args = parser.parse_args(argv)
  sizes = sorted({int(s) for s in args.sizes.split(",") if s}
                 | ({args.large} if args.large else set()))
  model_dir = args.model or tiny_model_dir()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="memory-benchmark-")
  os.makedirs(work_dir, exist_ok=True)
  runs = []
  try:
    for n in sizes:
      corpus = os.path.join(work_dir, f"corpus-{n}.jsonl")
      write_corpus(corpus, n)
      run = measure_run(corpus, n, model_dir, work_dir,
                        os.path.abspath(args.source), args.pipeline_flag)
      os.remove(corpus)
      print(f"{n:,} documents: peak {run['peak_rss_mb']:.0f} MB in "
            f"{run['seconds']:.0f} s", flush=True)
      runs.append(run)
  finally:
    if not args.work_dir:
      shutil.rmtree(work_dir, ignore_errors=True)
  report = {
      "benchmark": "memory",
      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "machine": machine(),
      "memory_gb": _memory_gb(),
      "model": (args.model or
                "tiny-bert (bert_model/tiny_checkpoint.py: H=16, 1 layer)"),
      "source": os.path.abspath(args.source),
      "pipeline_flags": ["--neighbours_k=0", *args.pipeline_flag],
      "runs": runs,
      "summary": summarize(runs),
  }
  print_report(report)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
