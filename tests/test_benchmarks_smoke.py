"""Smoke tests of the speed and memory benchmark harnesses (benchmarks/).

The tiny model and 20 documents: checks that every child process runs, that
the report has its figures and that the table prints, not the speed itself.
sentence-transformers (which needs the real model) is left out.
"""

import json
import os

import pytest

from benchmarks import memory
from benchmarks import speed


def test_flops_formula():
  shape = {"layers": 6, "hidden": 384, "intermediate": 1536}
  # One layer, T = 10: 2*T*(4H^2 + 2HI) + 4T^2H.
  one_layer = 2 * 10 * (4 * 384**2 + 2 * 384 * 1536) + 4 * 100 * 384
  assert speed.flops([10], shape) == pytest.approx(6 * one_layer)
  assert speed.flops([10, 10], shape) == pytest.approx(12 * one_layer)


def test_speed_harness_runs_end_to_end(tiny_model_dir, tmp_path, capsys):
  out = str(tmp_path / "speed.json")
  code = speed.main([
      "--model", tiny_model_dir, "--docs", "20", "--matmul-n", "256",
      "--only", "matmul,bare,pipeline",
      "--json", out, "--work-dir", str(tmp_path / "work"),
      "--max-wait", "0", "--max_batch_size", "8", "--repeats", "2"])
  assert code == 0
  with open(out) as f:
    report = json.load(f)
  results, derived = report["results"], report["derived"]
  assert set(results) == {"matmul", "bare", "pipeline"}
  for name in ("bare", "pipeline"):
    assert results[name]["docs"] == 20, results[name]
    # Two rounds (the pipeline's second into the same run directory): the
    # faster run is kept.
    runs = results[name]["runs_seconds"]
    assert len(runs) == 2 and None not in runs
    assert results[name]["seconds"] == min(runs)
    assert results[name]["docs_per_s"] > 0
    assert results[name]["peak_rss_mb"] > 50
    assert len(results[name]["load_before"]) == 3
  assert results["matmul"]["gflops_best"] > 0
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
