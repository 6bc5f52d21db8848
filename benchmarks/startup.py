"""The pipeline's start-up, from process start to the first batch out of the
model, broken into its parts.

    python -m benchmarks.startup [--model DIR] [--docs 16] [--repeats 3] \\
        [--json benchmarks/results-startup.json] [--corpus FILE]

Each run is a fresh `python -m benchmarks.startup --child SPEC` process that
runs `pipeline.main.run` (local runner, text file in, run directory out,
neighbours off) on --docs documents. The child records a timestamp (wall
clock and the process's CPU time) at each boundary:

  interpreter   process start (the parent's clock just before it starts the
                child) to the child's first line: exec, Python, site;
  imports       what `python -m pipeline.main` imports before it runs:
                TensorFlow with its companions (native_logs.start_tensorflow),
                then `pipeline.job` (Beam, ...);
  flags         flag parsing and the frozen config;
  plan          plan_run: model resolution, output checks, the lock;
  construction  beam.Pipeline and build_pipeline (the graph);
  runner_start  pipeline.run() to the model handler's load_model (the
                runner translating the graph, reading the input);
  model_load    load_model: the preprocess and encoder SavedModels;
  first_batch   the first run_inference call (tokenizer and encoder traced
                on their first call);
and, after the start-up, `rest` (the other batches, writing, manifest).

`startup_seconds` is the sum of the parts up to the first batch out; each
part's figure is its fastest over the --repeats runs. The model load and
first batch are split further: the load of each SavedModel, and the first
tokenize / encoder call against a second call on the same inputs (what the
first call's tracing costs).

One more child runs with `python -X importtime` for the imports' breakdown by
top-level package (their self times summed; importtime's own overhead
included), and lists the heavy packages a default run imports although it
never uses them.

The floor: fresh processes that only import, each timed --repeats times
(fastest kept): the interpreter alone, TensorFlow as the pipeline imports it
(`import bert_model`: TensorFlow without Keras, and tensorflow_text), Beam,
and plain `import tensorflow` (with Keras) for comparison.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.machine import machine

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)

PARTS = ("interpreter", "imports", "flags", "plan", "construction",
         "runner_start", "model_load", "first_batch")
TARGET_STARTUP_SECONDS = 2.0
# Heavy packages that a default run (no ANN neighbours, no plot, a model
# directory rather than a TF Hub handle) has no use for.
UNUSED_BY_DEFAULT_RUN = ("faiss", "matplotlib", "torch", "sentence_transformers",
                         "transformers", "sklearn", "keras", "tf_keras",
                         "tensorflow_hub", "PIL")
# Imported by TensorFlow (scipy, for its legacy Keras code) and Beam
# (pandas, for its schemas) themselves: reported, not counted as unused.
IMPORTED_BY_THE_LIBRARIES = ("scipy", "pandas")


def _cpu() -> float:
  times = os.times()
  return times.user + times.system


# ---------------------------------------------------------------------------
# The child: one start-up, timed at every boundary.


def _child_main(spec_path: str) -> int:
  marks = [("child_start", time.time(), _cpu())]

  def mark(name):
    marks.append((name, time.time(), _cpu()))

  with open(spec_path) as f:
    spec = json.load(f)
  # The pipeline's own imports, as `python -m pipeline.main` makes them: its
  # main starts TensorFlow with its companions (transforms/native_logs.py),
  # then imports the job.
  # Imported here: they are the part "imports" (child_start to its mark).
  from transforms import native_logs  # pylint: disable=g-import-not-at-top
  native_logs.start_tensorflow()
  # Imported here: as above, and after TensorFlow has started.
  from pipeline import job as pipeline_main  # pylint: disable=g-import-not-at-top
  mark("imports")
  details = _instrument(pipeline_main, mark)
  argv = [f"--input={spec['corpus']}", "--input_format=text",
          f"--output={spec['output']}", f"--model={spec['model_dir']}",
          "--neighbours_k=0", "--run_id=startup-benchmark"]
  pipeline_main.run(argv, save_main_session=False)
  mark("rest")
  result = {"marks": marks, "details": details(),
            "modules": sorted({m.split(".")[0] for m in sys.modules})}
  with open(spec["result"], "w") as f:
    json.dump(result, f)
  return 0


def _instrument(pipeline_main, mark):
  """Wraps the steps of pipeline.job.run so that each marks its end; returns
  a function giving the model's finer figures."""
  # Imported here: the child's imports are timed as pipeline.job's.
  from bert_model import loaded_model  # pylint: disable=g-import-not-at-top
  from transforms import model_handler  # pylint: disable=g-import-not-at-top

  def after(function, name):
    def wrapped(*args, **kwargs):
      value = function(*args, **kwargs)
      mark(name)
      return value
    return wrapped

  pipeline_main.config_from_options = after(pipeline_main.config_from_options,
                                            "flags")
  pipeline_main.plan_run = after(pipeline_main.plan_run, "plan")
  pipeline_main.build_pipeline = after(pipeline_main.build_pipeline,
                                       "construction")
  details = {"saved_model_load_seconds": [], "calls": []}
  models = []
  handler = model_handler.BertEmbeddingModelHandler
  load_model, run_inference = handler.load_model, handler.run_inference

  def timed_load_model(self):
    mark("runner_start")
    model = load_model(self)
    mark("model_load")
    models.append(model)
    _time_first_calls(model, details)
    return model

  first = []

  def timed_run_inference(self, batch, model, inference_args=None):
    value = run_inference(self, batch, model, inference_args)
    if not first:
      first.append(True)
      mark("first_batch")
    return value

  handler.load_model = timed_load_model
  handler.run_inference = timed_run_inference
  def timed(function, label):
    def wrapped(path, *args):
      started = time.perf_counter()
      value = function(path, *args)
      details["saved_model_load_seconds"].append(
          [f"{os.path.basename(path.rstrip('/'))} ({label})",
           time.perf_counter() - started])
      return value
    return wrapped

  loaded_model.load_saved_model = timed(loaded_model.load_saved_model,
                                        "whole")
  loaded_model.load_parts = timed(loaded_model.load_parts, "parts")

  def finer():
    # The first calls again on the same inputs, now traced: the difference
    # is what the first call's tracing cost.
    for call in details["calls"]:
      started = time.perf_counter()
      call.pop("again")()
      call["second_seconds"] = time.perf_counter() - started
    return {k: v for k, v in details.items()}

  return finer


def _time_first_calls(model, details):
  """Times the model's first tokenize and encoder calls, and keeps a way to
  repeat them (on the same inputs) after the run."""
  for attribute in ("_tokenize", "_encode"):
    function = getattr(model, attribute)

    def timed(*args, _function=function, _name=attribute):
      started = time.perf_counter()
      value = _function(*args)
      if not any(c["name"] == _name for c in details["calls"]):
        details["calls"].append({
            "name": _name, "first_seconds": time.perf_counter() - started,
            "again": lambda: _function(*args)})
      return value

    setattr(model, attribute, timed)


# ---------------------------------------------------------------------------
# The parent.


def run_child(spec: dict, work_dir: str, name: str,
              importtime: bool = False) -> dict:
  spec = dict(spec, result=os.path.join(work_dir, f"{name}.result"),
              output=os.path.join(work_dir, f"run-{name}"))
  # A work directory used before holds a published run there.
  shutil.rmtree(spec["output"], ignore_errors=True)
  spec_path = os.path.join(work_dir, f"{name}.spec.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  log_path = os.path.join(work_dir, f"{name}.log")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=_REPO)
  command = [sys.executable] + (["-X", "importtime"] if importtime else []) + [
      "-m", "benchmarks.startup", "--child", spec_path]
  load_before = [round(x, 2) for x in os.getloadavg()]
  with open(log_path, "w") as log:
    started = time.time()
    code = subprocess.call(command, cwd=_REPO, env=env, stdout=log,
                           stderr=log)
  if code != 0 or not os.path.exists(spec["result"]):
    with open(log_path) as f:
      raise RuntimeError(f"start-up child {name} failed (exit {code}):\n"
                         f"{f.read()[-3000:]}")
  with open(spec["result"]) as f:
    result = json.load(f)
  result["parts"] = parts_of(result["marks"], started)
  result["load_before"] = load_before
  result["load_after"] = [round(x, 2) for x in os.getloadavg()]
  if importtime:
    with open(log_path) as f:
      result["imports_by_package"] = imports_by_package(f.read())
  return result


# The floor's processes: (name, statement).
FLOOR_IMPORTS = (
    ("python", "pass"),
    ("bert_model (tensorflow without keras, tensorflow_text)",
     "import bert_model"),
    ("apache_beam", "import apache_beam"),
    ("tensorflow (plain, with keras)", "import tensorflow"),
)


def import_floor(repeats: int) -> dict:
  """{name: {"seconds", "cpu_seconds"}}: the fastest of `repeats` fresh
  processes that import only that (FLOOR_IMPORTS)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=_REPO)
  floor = {}
  for name, statement in FLOOR_IMPORTS:
    runs = []
    for _ in range(repeats):
      started = time.perf_counter()
      process = subprocess.Popen([sys.executable, "-c", statement], cwd=_REPO,
                                 env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
      _, status, usage = os.wait4(process.pid, 0)
      if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"python -c {statement!r} failed")
      runs.append((time.perf_counter() - started,
                   usage.ru_utime + usage.ru_stime))
    floor[name] = {"seconds": min(r[0] for r in runs),
                   "cpu_seconds": min(r[1] for r in runs)}
  return floor


def parts_of(marks, process_started: float) -> dict:
  """{part: {"seconds": wall, "cpu_seconds": CPU}} from the child's marks."""
  parts = {"interpreter": {"seconds": marks[0][1] - process_started,
                           "cpu_seconds": marks[0][2]}}
  for (_, wall0, cpu0), (name, wall1, cpu1) in zip(marks, marks[1:]):
    parts[name] = {"seconds": wall1 - wall0, "cpu_seconds": cpu1 - cpu0}
  return parts


def imports_by_package(importtime_log: str) -> dict:
  """Seconds of import self time per top-level package, largest first."""
  totals = {}
  for line in importtime_log.splitlines():
    if not line.startswith("import time:") or "|" not in line:
      continue
    fields = line[len("import time:"):].split("|")
    try:
      self_us = int(fields[0])
    except ValueError:
      continue  # the header line
    package = fields[2].strip().split(".")[0]
    totals[package] = totals.get(package, 0) + self_us / 1e6
  return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def summarise(runs: list) -> dict:
  """Each part's fastest run; start-up = their sum up to the first batch."""
  best = {}
  for part in PARTS + ("rest",):
    values = [run["parts"][part] for run in runs if part in run["parts"]]
    if values:
      best[part] = {
          "seconds": min(v["seconds"] for v in values),
          "cpu_seconds": min(v["cpu_seconds"] for v in values),
          "runs_seconds": [round(v["seconds"], 3) for v in values],
      }
  totals = [sum(run["parts"][p]["seconds"] for p in PARTS) for run in runs]
  return {
      "parts": best,
      "startup_seconds": sum(best[p]["seconds"] for p in PARTS),
      "startup_cpu_seconds": sum(best[p]["cpu_seconds"] for p in PARTS),
      "startup_seconds_excluding_imports": sum(
          best[p]["seconds"] for p in PARTS
          if p not in ("interpreter", "imports")),
      "startup_runs_seconds": [round(t, 3) for t in totals],
      "target_seconds": TARGET_STARTUP_SECONDS,
  }


def format_report(report: dict) -> str:
  s = report["summary"]
  lines = [f"start-up benchmark {report['date']}  host "
           f"{report['machine']['cpu']} x{report['machine']['cpus']}  model "
           f"{report['model_dir']}  {report['docs']} docs, "
           f"{report['repeats']} runs (fastest of each part)",
           f"{'part':<14}{'wall s':>8}{'CPU s':>8}  runs"]
  for part, figures in s["parts"].items():
    lines.append(f"{part:<14}{figures['seconds']:>8.2f}"
                 f"{figures['cpu_seconds']:>8.2f}  {figures['runs_seconds']}")
  ok = s["startup_seconds"] <= s["target_seconds"]
  lines.append(f"start-up (to the first batch): {s['startup_seconds']:.2f} s "
               f"wall, {s['startup_cpu_seconds']:.2f} s CPU (target <= "
               f"{s['target_seconds']} s: {'met' if ok else 'NOT met'}); "
               f"without interpreter + imports "
               f"{s['startup_seconds_excluding_imports']:.2f} s")
  model = report.get("model_details") or {}
  for name, seconds in model.get("saved_model_load_seconds", []):
    lines.append(f"  load {name}: {seconds:.2f} s")
  for call in model.get("calls", []):
    lines.append(f"  first {call['name']} call {call['first_seconds']:.2f} s, "
                 f"second {call['second_seconds']:.3f} s")
  for name, figures in (report.get("import_floor") or {}).items():
    lines.append(f"  floor: {name}: {figures['seconds']:.2f} s wall, "
                 f"{figures['cpu_seconds']:.2f} s CPU")
  imports = report.get("imports_by_package")
  if imports:
    lines.append("imports by package (self time, -X importtime): " + ", ".join(
        f"{k} {v:.2f}" for k, v in list(imports.items())[:12]))
  lines.append("heavy packages imported, unused by a default run: "
               + (", ".join(report["unused_imported"]) or "none")
               + "; imported by TensorFlow / Beam themselves: "
               + (", ".join(report["imported_by_the_libraries"]) or "none"))
  return "\n".join(lines)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=None,
                      help="model directory (default: the default model)")
  parser.add_argument("--docs", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs; each part keeps its fastest")
  parser.add_argument("--corpus", default=None,
                      help="a text file, one document a line (default: "
                      "benchmarks.corpus)")
  parser.add_argument("--no-importtime", action="store_true",
                      help="skip the -X importtime child")
  parser.add_argument("--no-floor", action="store_true",
                      help="skip the import-only processes (the floor)")
  parser.add_argument("--json", default=None, help="where to write the JSON")
  parser.add_argument("--work-dir", default=None)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    return _child_main(args.child)
  if args.model:
    model_dir = args.model
  else:
    # Imported here: the parent needs the model library only for this.
    from bert_model import default_model  # pylint: disable=g-import-not-at-top
    model_dir = default_model.ensure_default_model()
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="startup-bench-")
  os.makedirs(work_dir, exist_ok=True)
  corpus = os.path.join(work_dir, "corpus.txt")
  if args.corpus:
    with open(args.corpus, encoding="utf-8") as f:
      texts = [line.rstrip("\n") for line in f][:args.docs]
  else:
    # Imported here, not at the top: the children run this module, and its
    # top's imports would count in their "interpreter" part.
    from benchmarks import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
    texts = corpus_lib.real_sentences(args.docs)
  with open(corpus, "w", encoding="utf-8") as f:
    f.writelines(text.replace("\n", " ") + "\n" for text in texts)
  spec = {"corpus": corpus, "model_dir": model_dir}
  runs = [run_child(spec, work_dir, f"run{i}") for i in range(args.repeats)]
  report = {
      "date": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "command": " ".join(["python -m benchmarks.startup"] +
                          list(sys.argv[1:] if argv is None else argv)),
      "machine": machine(), "model_dir": model_dir, "docs": len(texts),
      "repeats": args.repeats,
      "summary": summarise(runs),
      "runs": [{"parts": r["parts"], "load_before": r["load_before"],
                "load_after": r["load_after"]} for r in runs],
      "model_details": runs[-1]["details"],
  }
  imported = set(runs[-1]["modules"])
  report["unused_imported"] = [p for p in UNUSED_BY_DEFAULT_RUN
                               if p in imported]
  report["imported_by_the_libraries"] = [p for p in IMPORTED_BY_THE_LIBRARIES
                                         if p in imported]
  if not args.no_importtime:
    traced = run_child(spec, work_dir, "importtime", importtime=True)
    report["imports_by_package"] = dict(
        list(traced["imports_by_package"].items())[:30])
  if not args.no_floor:
    report["import_floor"] = import_floor(args.repeats)
  print(format_report(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
    print(f"\nJSON: {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
