"""A pipeline run as a person starts one: `pipeline.main` with a corpus, a
model and a run directory under a test's tmp_path, giving its exit status."""

from pipeline import main


def run_main(tmp_path, model_dir, pattern, *flags, output="run"):
  """(exit status, run directory) of `pipeline.main` on the local runner."""
  run_dir = str(tmp_path / output)
  code = main.main([f"--input={pattern}", f"--output={run_dir}",
                    f"--model={model_dir}", "--runner=DirectRunner",
                    "--neighbours_k=2", *flags])
  return code, run_dir
