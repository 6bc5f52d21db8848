"""Smoke test of the speed benchmark harness (benchmarks/speed.py).

The tiny model and 20 documents: checks that every child process runs, that
the report has its figures and that the table prints, not the speed itself.
sentence-transformers (which needs the real model) is left out.
"""

import json
import os

import pytest

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
