"""Fuzzing the whole pipeline: damaged corpora of every format, end to end.

A few Hypothesis examples (each is a pipeline run of a few seconds): a corpus
of several damaged files of one format, embedded with the tiny model. The run
never fails, publishes (the guardrails are opened wide, and a run that embeds
nothing is refused with exit status 3 instead; one whose every record lacks
the text field is told so before it starts, status 2), and accounts for
every record the readers see: read == embedded + dead_lettered, with the
same number read as the readers alone read from the same files.
"""

import os

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from pipeline import main
from pipeline import read_outputs
from tests.fuzz_inputs import damaged_files
from tests.fuzz_inputs import read_all

_FORMATS = ("text", "jsonl", "csv", "tsv", "parquet", "tfrecord")


@st.composite
def _corpora(draw):
  input_format = draw(st.sampled_from(_FORMATS))
  files = draw(st.lists(damaged_files(input_format), min_size=1, max_size=3))
  return input_format, files


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(_corpora())
def test_damaged_corpora_end_to_end(tmp_path_factory, tiny_model_dir, corpus):
  input_format, files = corpus
  directory = tmp_path_factory.mktemp("corpus")
  expected_read, reasons = 0, []
  for i, (name, data) in enumerate(files):
    path = str(directory / f"{i}-{name}")
    with open(path, "wb") as f:
      f.write(data)
    if data:  # a 0-byte file holds no records and is not read at all
      records = read_all(input_format, path, data)
      expected_read += len(records)
      reasons += [getattr(record, "reason", "document") for record in records]
  run_dir = str(tmp_path_factory.mktemp("run") / "run")

  code = main.main([
      f"--input={directory}/*", f"--input_format={input_format}",
      f"--output={run_dir}", f"--model={tiny_model_dir}",
      "--runner=DirectRunner", "--neighbours_k=2", "--max_bad_fraction=1",
      "--max_record_bytes=2048"])

  if code == 2:
    # Every record lacks the text field (a real Parquet file of other
    # columns, say): told before the run (pipeline/field_check.py), and
    # nothing written. (The check samples up to 1,000 records of 4 files,
    # more than these corpora hold.)
    assert reasons and set(reasons) == {"missing_field"}
    assert not os.path.exists(run_dir)
    return
  if code == 3:  # nothing embedded: refused, never published
    refusal = read_outputs.load_refusal(run_dir)
    counts = refusal["counts"]
    assert counts["embedded"] == 0
    assert not os.path.exists(os.path.join(run_dir, "manifest.json"))
  else:
    assert code == 0
    counts = read_outputs.load_manifest(run_dir)["counts"]
    assert counts["embedded"] == len(read_outputs.read_table(run_dir))
    assert counts["dead_lettered"] == len(read_outputs.read_errors(run_dir))
  assert counts["read"] == expected_read
  assert counts["read"] == counts["embedded"] + counts["dead_lettered"]
