"""Smoke tests of the speed and memory benchmark harnesses (benchmarks/).

The tiny model and 20 documents of pydoc's prose (--corpus: building
benchmarks.corpus would read every installed docstring first, ~7 min): checks
that every child process runs, that the report has its figures and that the
table prints, not the speed itself. sentence-transformers (which needs the
real model) is left out.
"""

import json
import os

import pytest

from benchmarks import memory
from benchmarks import speed
from benchmarks import startup
from benchmarks import user_timed
from tests import real_text


def test_flops_formula():
  shape = {"layers": 6, "hidden": 384, "intermediate": 1536}
  # One layer, T = 10: 2*T*(4H^2 + 2HI) + 4T^2H.
  one_layer = 2 * 10 * (4 * 384**2 + 2 * 384 * 1536) + 4 * 100 * 384
  assert speed.flops([10], shape) == pytest.approx(6 * one_layer)
  assert speed.flops([10, 10], shape) == pytest.approx(12 * one_layer)


def test_keep_fastest_keeps_the_faster_round_and_every_time():
  first = {"seconds": 2.0, "docs": 20}
  kept = speed.keep_fastest(None, first, first)
  assert kept is first
  second = {"seconds": 1.5, "docs": 20}
  kept = speed.keep_fastest(kept, second, second)
  assert kept is second and kept["runs_seconds"] == [2.0, 1.5]
  slower = {"seconds": 3.0, "docs": 20}
  kept = speed.keep_fastest(kept, slower, slower)
  assert kept is second and kept["runs_seconds"] == [2.0, 1.5, 3.0]
  # A failed round (None; its error recorded) keeps the earlier result.
  kept = speed.keep_fastest(kept, None, {"error": "exit 1"})
  assert kept is second and kept["runs_seconds"] == [2.0, 1.5, 3.0, None]
  # A measurement whose first round failed takes the next one's result.
  assert speed.keep_fastest({"error": "exit 1"}, first, first) is first


def test_speed_harness_runs_end_to_end(tiny_model_dir, tmp_path, capsys):
  # One round, numpy's matmul only: three child processes (~30 s on 2
  # shared cores). keep_fastest's rounds are tested above.
  out = str(tmp_path / "speed.json")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(real_text.real_sentences(20)) + "\n")
  code = speed.main([
      "--model", tiny_model_dir, "--docs", "20", "--matmul-n", "256",
      "--no-tf-matmul", "--corpus", str(corpus),
      "--only", "matmul,bare,pipeline",
      "--json", out, "--work-dir", str(tmp_path / "work"),
      "--max-wait", "0", "--max_batch_size", "8", "--repeats", "1"])
  assert code == 0
  with open(out) as f:
    report = json.load(f)
  results, derived = report["results"], report["derived"]
  assert report["corpus"]["source"] == f"--corpus {corpus}"
  assert set(results) == {"matmul", "bare", "pipeline"}
  for name in ("bare", "pipeline"):
    assert results[name]["docs"] == 20, results[name]
    assert results[name]["docs_per_s"] > 0
    assert results[name]["peak_rss_mb"] > 50
    assert len(results[name]["load_before"]) == 3
  assert results["matmul"]["gflops_best"] > 0
  assert "tf_gflops_best" not in results["matmul"]
  assert derived["pipeline_over_bare"] > 0
  # "The same batching": the bare loop cuts the corpus as the pipeline does.
  assert results["bare"]["batches"] == results["pipeline"]["batches"] == 3
  assert results["bare"]["useful_gflops"] > 0
  # The pipeline writes the same vectors as the bare model.
  assert derived["cosine_pipeline_vs_bare_f32"]["min"] > 0.9999
  table = capsys.readouterr().out
  assert "pipeline_over_bare" in table and "docs/s" in table
  assert os.path.exists(out)


def test_memory_line_and_targets_from_measured_points():
  runs = [{"documents": n, "peak_rss_mb": 1000 + n / 1000}
          for n in (20_000, 200_000, 1_000_000)]
  summary = memory.summarize(runs)
  # 1 MB per 1000 documents: 1.024 KB per document, 3 GB at 2M.
  assert summary["line"] == {"base_mb": 1000.0, "per_document_kb": 1.024}
  assert summary["projected_2m_gb"] == pytest.approx(3000 / 1024, abs=0.01)
  assert summary["projection_backed_by_documents"] == 1_000_000
  assert summary["ratio_200k_over_20k"] == pytest.approx(1200 / 1020, 1e-3)
  assert summary["ratio_met"] and summary["projection_met"]


def test_memory_corpus_is_distinct_real_sentences_then_variants():
  texts = memory.document_texts(3000)
  base = memory.base_sentences()
  assert texts[:len(base)] == base and len(base) > 1000
  variant = texts[len(base)]
  assert sorted(variant.split()) == sorted(base[0].split())
  assert memory.document_texts(3000) == texts  # seeded


def test_memory_harness_runs_end_to_end(tiny_model_dir, tmp_path, capsys):
  out = str(tmp_path / "memory.json")
  assert memory.main(["--sizes", "50", "--model", tiny_model_dir,
                      "--json", out]) == 0
  with open(out) as f:
    report = json.load(f)
  (run,) = report["runs"]
  assert run["counts"]["read"] == run["counts"]["embedded"] == 50
  # The process tree's peak holds at least TensorFlow and the model.
  assert run["peak_rss_mb"] > 200
  assert 200 < run["max_single_process_rss_mb"] <= run["peak_rss_mb"]
  assert report["machine"]["cpus"] >= 1
  assert "peak MB" in capsys.readouterr().out


def test_startup_harness_breaks_the_start_up_into_its_parts(tiny_model_dir,
                                                            tmp_path, capsys):
  out = str(tmp_path / "startup.json")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(real_text.real_sentences(16)) + "\n")
  code = startup.main([
      "--model", tiny_model_dir, "--corpus", str(corpus), "--repeats", "1",
      "--no-importtime", "--no-floor", "--json", out,
      "--work-dir", str(tmp_path / "work")])
  assert code == 0
  with open(out) as f:
    report = json.load(f)
  summary = report["summary"]
  assert list(summary["parts"]) == list(startup.PARTS) + ["rest"]
  for part, figures in summary["parts"].items():
    assert figures["seconds"] >= 0 and figures["cpu_seconds"] >= 0, part
  assert summary["parts"]["imports"]["seconds"] > 0.5  # TensorFlow at least
  assert summary["startup_seconds"] == pytest.approx(
      sum(summary["parts"][p]["seconds"] for p in startup.PARTS))
  assert report["machine"]["cpu"] and report["docs"] == 16
  # Both SavedModels loaded (the preprocess model in parts), the tokenizer
  # and encoder called.
  loads = [name for name, _ in report["model_details"]["saved_model_load_seconds"]]
  assert loads == ["encoder (whole)", "preprocess (parts)"], loads
  assert {c["name"] for c in report["model_details"]["calls"]} == {
      "_tokenize", "_encode"}
  # The whole run, not only its imports, leaves the unused libraries out.
  assert report["unused_imported"] == []
  assert "start-up (to the first batch)" in capsys.readouterr().out


def test_import_floor_times_fresh_processes(monkeypatch):
  monkeypatch.setattr(startup, "FLOOR_IMPORTS", (("python", "pass"),
                                                 ("json", "import json")))
  floor = startup.import_floor(repeats=2)
  assert list(floor) == ["python", "json"]
  for figures in floor.values():
    assert 0 < figures["seconds"] < 30 and figures["cpu_seconds"] >= 0


def test_user_timed_harness_runs_end_to_end(tiny_model_dir, tmp_path,
                                            capsys):
  # The three whole processes once each, on 20 documents: the pipeline and
  # the plain loop with the tiny model (so their vectors must agree), and
  # sentence-transformers with the default model's weights (its figure is
  # only timed here).
  out = str(tmp_path / "user-timed.json")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(real_text.real_sentences(20)) + "\n")
  code = user_timed.main(["--corpus", str(corpus), "--docs", "20",
                          "--repeats", "1", "--model", tiny_model_dir,
                          "--json", out])
  assert code == 0
  with open(out) as f:
    report = json.load(f)
  assert report["docs"] == 20
  assert set(report["results"]) == {"pipeline", "st", "plain"}
  for result in report["results"].values():
    assert result["seconds"] > 0 and len(result["all_seconds"]) == 1
  assert report["ratios"]["plain_over_pipeline"] == pytest.approx(
      report["results"]["plain"]["seconds"] /
      report["results"]["pipeline"]["seconds"])
  assert report["min_cosine"]["pipeline_vs_plain"] >= 0.9999
  assert report["machine"]["cpu"]
  assert json.loads(capsys.readouterr().out)["ratios"] == report["ratios"]
