"""Guardrails: a mostly-bad or mostly-missing corpus is never published.

Each refusal must happen before manifest.json and the latest pointer: no
manifest, the pointer unmoved, exit status 3, the reason named, and
refused.json left in the staging directory with the counts behind it. Each
override flag lets the run through.
"""

import dataclasses
import json
import logging
import os

import apache_beam as beam
import fastavro
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import job
from pipeline import main
from pipeline import read_outputs
from pipeline.flags import format_help
from pipeline.plan import PlanEnvironment
from pipeline.plan import plan_run
from bert_model import resolution
from run_directory import tables
from run_directory.embeddings import EmbeddingTableSpec
from run_directory.records import DeadLetter
from transforms.guardrails import PublishLimits
from transforms.guardrails import refusal_reasons
from transforms.guardrails import ErrorSummaryFn
from transforms.sinks import BigQuerySink
from transforms.sinks import EmbeddingSink
from transforms.sinks import read_bigquery_rows

EXIT_REFUSED = 3


def _corpus(path, good: int, bad: int = 0, field: str = "text"):
  """good records, then bad ones (no text field), as JSON lines."""
  lines = [json.dumps({"id": f"d{i}", field: f"the quick brown fox {i}"})
           for i in range(good)]
  lines += [json.dumps({"id": f"bad{i}", "body": "not the text field"})
            for i in range(bad)]
  path.write_text("\n".join(lines) + "\n")
  return str(path)


class _Workdir:
  """A test's directory, and the model its runs use."""

  def __init__(self, path, model_dir):
    self.path = path
    self.model_dir = model_dir

  def __truediv__(self, name):
    return self.path / name


@pytest.fixture
def workdir(tmp_path, tiny_model_dir):
  return _Workdir(tmp_path, tiny_model_dir)


def _run(workdir, corpus, name, *flags):
  run_dir = str(workdir / name)
  code = main.main([f"--input={corpus}", f"--output={run_dir}",
                    f"--model={workdir.model_dir}", "--runner=DirectRunner",
                    "--neighbours_k=0",
                    f"--latest_pointer={workdir / 'LATEST'}",
                    *flags])
  return code, run_dir


def _assert_refused(code, run_dir, pointer, pointer_before, capsys, *reasons,
                    err=None):
  assert code == EXIT_REFUSED
  if err is None:
    err = capsys.readouterr().err
  assert "refused to publish" in err
  assert not os.path.exists(os.path.join(run_dir, "manifest.json"))
  assert (pointer.read_text() if pointer.exists() else None) == pointer_before
  refusal = read_outputs.load_refusal(run_dir)
  for reason in reasons:
    assert any(reason in text for text in refusal["reasons"]), refusal
    assert reason in err
  # The staged outputs stay for inspection, next to refused.json.
  staging = os.path.dirname(read_outputs.refusal_paths(run_dir)[-1])
  assert os.path.isdir(os.path.join(staging, "embeddings"))
  # ... but not the scratch files of the local runner's on-disk groupings.
  assert not os.path.exists(os.path.join(staging, "spill"))
  # ... with the run's report, which says it was refused.
  with open(os.path.join(staging, "report.html"), encoding="utf-8") as f:
    assert "Refused: not published." in f.read()
  with pytest.raises(read_outputs.RunNotPublishedError, match="refused"):
    read_outputs.load_manifest(run_dir)
  return refusal


def test_a_wrong_text_field_fails_before_the_run(workdir, capsys):
  # Its records are read before the run (pipeline/field_check.py): the
  # wrong flag is named in a second, not after the corpus is read.
  corpus = _corpus(workdir / "corpus.jsonl", good=50)
  pointer = workdir / "LATEST"
  pointer.write_text("runs/yesterday\n")
  for flags in ([], ["--max_bad_fraction=1"], ["--max_bad_records=1000"]):
    code, run_dir = _run(workdir, corpus, "run", "--text_field=body", *flags)
    err = capsys.readouterr().err
    assert code == 2
    assert ("no 'body' field (fields: id, text); set --text_field. (Each of "
            "the 50 records read from its first 1 file(s) before the run "
            "lacks a field the flags name") in err
    assert not os.path.exists(run_dir)
    assert pointer.read_text() == "runs/yesterday\n"


def test_a_run_that_embeds_nothing_is_refused_whatever_the_limits(workdir,
                                                                   capsys):
  corpus = workdir / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": " \u200b "})
                            + "\n" for i in range(50)))
  pointer = workdir / "LATEST"
  pointer.write_text("runs/yesterday\n")
  for flags in ([], ["--max_bad_fraction=1"], ["--max_bad_records=1000"]):
    code, run_dir = _run(workdir, str(corpus), "run", *flags)
    refusal = _assert_refused(code, run_dir, pointer, "runs/yesterday\n",
                              capsys, "nothing was embedded",
                              "every record was dead-lettered: the most "
                              "common errors say why")
    assert refusal["counts"]["read"] == 50
    assert refusal["counts"]["dead_lettered"] == 50
    top = refusal["top_errors"][0]
    assert (top["reason"], top["count"]) == ("empty_text", 50)


def test_a_corpus_with_30_percent_bad_records(workdir, capsys, caplog):
  corpus = _corpus(workdir / "corpus.jsonl", good=70, bad=30)
  pointer = workdir / "LATEST"
  code, run_dir = _run(workdir, corpus, "default")
  err = capsys.readouterr().err
  # Told once, by pipeline.main: a refusal is no crash, so neither the
  # publish stage nor Beam's DoFn runner logs it (with a traceback).
  assert err.count("The run was not published") == 1, err
  assert "Traceback" not in err
  assert not [record for record in caplog.records
              if record.levelno >= logging.ERROR], caplog.text
  # The reason names the flag that would let the run through.
  assert "raise it (e.g. --max_bad_fraction=0.31)" in err
  _assert_refused(code, run_dir, pointer, None, capsys,
                  "30 of 100 records (30.0%) were dead-lettered",
                  "--max_bad_fraction=0.1", err=err)
  code, run_dir = _run(workdir, corpus, "few", "--max_bad_records=10")
  _assert_refused(code, run_dir, pointer, None, capsys,
                  "more than --max_bad_records=10")

  code, run_dir = _run(workdir, corpus, "fraction", "--max_bad_fraction=0.3")
  assert code == 0
  assert read_outputs.load_manifest(run_dir)["counts"]["embedded"] == 70
  assert pointer.read_text() == run_dir + "\n"
  # --max_bad_records alone lifts the default fraction.
  code, run_dir = _run(workdir, corpus, "records", "--max_bad_records=30")
  assert code == 0
  manifest = read_outputs.load_manifest(run_dir)
  assert manifest["dead_letters"]["by_reason"] == {"missing_field": 30}


def test_repeated_lines_of_a_text_corpus_are_not_bad_records(workdir,
                                                             capsys):
  # Found by a user trial on /usr/share/doc copyright files: a line repeated
  # in a text file gets the same derived id, and its repeats, dead-lettered,
  # made the run refused under the default --max_bad_fraction.
  lines = [f"line number {i} of the licence" for i in range(60)]
  lines += ["All rights reserved."] * 30 + ["Copyright (C) the authors"] * 10
  corpus = workdir / "licence.txt"
  corpus.write_text("\n".join(lines) + "\n")
  code, run_dir = _run(workdir, str(corpus), "repeats")
  assert code == 0, capsys.readouterr().err
  manifest = read_outputs.load_manifest(run_dir)
  counts = manifest["counts"]
  assert (counts["read"], counts["embedded"], counts["dead_lettered"],
          counts["repeated"]) == (100, 62, 38, 38)
  assert manifest["dead_letters"]["by_reason"] == {"duplicate_record": 38}
  errors = read_outputs.read_table(run_dir, "errors")
  assert set(errors.column("reason").to_pylist()) == {"duplicate_record"}
  assert any(detail.startswith("a repeat of the kept record at "
                               f"{corpus}:60 (the same id and text)")
             for detail in errors.column("detail").to_pylist())
  # Bad records beside them still count: 12 blank lines of 112 read.
  with open(corpus, "a", encoding="utf-8") as f:
    f.write(" \n" * 12)
  code, run_dir = _run(workdir, str(corpus), "repeats_and_blanks")
  _assert_refused(code, run_dir, workdir / "LATEST",
                  (workdir / "LATEST").read_text(), capsys,
                  "12 of 112 records (10.7%) were dead-lettered (38 exact "
                  "repeats not counted)")


def test_a_previous_run_of_1000_against_a_corpus_of_500(workdir, capsys):
  previous_corpus = _corpus(workdir / "all.jsonl", good=1000)
  code, previous = _run(workdir, previous_corpus, "previous")
  assert code == 0
  pointer = workdir / "LATEST"
  assert pointer.read_text() == previous + "\n"
  half = _corpus(workdir / "half.jsonl", good=500)

  code, run_dir = _run(workdir, half, "next", "--previous_run=latest")
  _assert_refused(code, run_dir, pointer, previous + "\n", capsys,
                  "500 of the previous run's 1000 documents (50.0%) are not "
                  "in this run (gone from the corpus, or dead-lettered "
                  "tonight)",
                  "--allow_large_removal")

  code, run_dir = _run(workdir, half, "intended", "--previous_run=latest",
                       "--allow_large_removal")
  assert code == 0
  counts = read_outputs.load_manifest(run_dir)["counts"]
  assert (counts["embedded"], counts["reused"], counts["removed"]) == (
      500, 500, 500)
  assert pointer.read_text() == run_dir + "\n"


def test_an_id_field_renamed_upstream_is_told_as_changed_ids(workdir,
                                                            capsys):
  # Found by a nightly trial: records whose id field was renamed get ids
  # derived from their text, every document looks removed, and the reason
  # said only "a missing input shard? Pass --allow_large_removal", which
  # would have published the whole corpus under new ids.
  corpus = _corpus(workdir / "corpus.jsonl", good=20)
  code, previous = _run(workdir, corpus, "previous")
  assert code == 0
  assert read_outputs.load_manifest(previous)["counts"]["derived_ids"] == 0
  renamed = workdir / "renamed.jsonl"
  renamed.write_text((workdir / "corpus.jsonl").read_text().replace(
      '"id":', '"doc_id":'))
  pointer = workdir / "LATEST"
  code, run_dir = _run(workdir, renamed, "next", "--previous_run=latest")
  refusal = _assert_refused(
      code, run_dir, pointer, previous + "\n", capsys,
      "20 of the previous run's 20 documents (100.0%) are not in this run",
      "Or changed ids? 20 of this run's 20 records have no --id_field=id "
      "value", "set --id_field to the field that holds the ids")
  assert refusal["counts"]["derived_ids"] == 20


# ---------------------------------------------------------------------------
# The rules and the error summary, without a pipeline.


class _RecordingSink(EmbeddingSink):
  """A sink that notes the documents of each file it is given, and whether
  the run was published then; or fails, if told to."""

  def __init__(self, notes: str, manifest: str, fail: bool = False):
    self._notes, self._manifest, self._fail = notes, manifest, fail

  @property
  def name(self) -> str:
    return "Notes"

  def create_write_transform(self):
    return beam.Map(self._note)

  def _note(self, path):
    if self._fail:
      raise RuntimeError("the sink is down")
    with open(path, "rb") as f:
      ids = [row["id"] for row in fastavro.reader(f)]
    with open(self._notes, "a", encoding="utf-8") as f:
      for doc_id in ids:
        f.write(f"{doc_id} {os.path.exists(self._manifest)}\n")
    return path


def test_sinks_get_rows_only_after_the_checks_and_before_publishing(
    workdir, capsys, monkeypatch):
  # --bigquery_table's sink, in the publish order: a refused run loads
  # nothing into BigQuery, a run is published only once its rows are
  # loaded, and a load that fails fails the run unpublished.
  notes = workdir / "notes.txt"
  failing = []

  def plan_with_sink(config, **kwargs):
    plan = plan_run(config, **kwargs)
    return dataclasses.replace(plan, sinks=(_RecordingSink(
        str(notes), os.path.join(plan.run_dir, "manifest.json"),
        fail=bool(failing)),))

  monkeypatch.setattr(job, "plan_run", plan_with_sink)
  corpus = _corpus(workdir / "corpus.jsonl", good=7, bad=3)
  code, run_dir = _run(workdir, corpus, "refused")
  _assert_refused(code, run_dir, workdir / "LATEST", None, capsys,
                  "3 of 10 records")
  assert not notes.exists()
  code, run_dir = _run(workdir, corpus, "published", "--max_bad_fraction=0.5")
  assert code == 0
  assert sorted(notes.read_text().splitlines()) == [
      f"d{i} False" for i in range(7)]
  failing.append(True)
  with pytest.raises(Exception, match="the sink is down"):
    _run(workdir, corpus, "failed", "--max_bad_fraction=0.5")
  assert not os.path.exists(workdir / "failed" / "manifest.json")
  assert (workdir / "LATEST").read_text() == str(workdir / "published") + "\n"


def test_the_bigquery_sink_reads_the_staged_files_of_each_format(tmp_path):
  # The real sink's graph, built (not run: it needs BigQuery): what it reads
  # the staged files with, for each --bigquery_format.
  columns = tables.embedding_table(
      EmbeddingTableSpec(hidden_size=4), "r", "f").columns
  for file_format in ("avro", "parquet", "jsonl"):
    sink = BigQuerySink("my-project:ds.t", columns, file_format)
    options = PipelineOptions(["--temp_location=gs://b/tmp",
                               "--project=my-project"])
    p = beam.Pipeline(options=options)
    jobs = (p | beam.Create([str(tmp_path / f"x.{file_format}")])
            | sink.create_write_transform())
    assert isinstance(jobs, beam.PCollection)
  with pytest.raises(ValueError, match="No reader"):
    read_bigquery_rows("tfrecord")


def _counts(read, embedded, dead_lettered, removed=0, queries=None,
            repeated=0):
  counts = {"read": read, "embedded": embedded,
            "dead_lettered": dead_lettered, "removed": removed,
            "repeated": repeated}
  if queries:
    counts["queries"] = queries
  return counts


def test_refusal_reasons():
  limits = PublishLimits()
  assert refusal_reasons(_counts(100, 90, 10), limits) == []
  assert len(refusal_reasons(_counts(100, 89, 11), limits)) == 1
  assert refusal_reasons(_counts(100, 89, 11), PublishLimits(
      max_bad_fraction=None)) == []
  assert refusal_reasons(_counts(100, 95, 5), PublishLimits(
      max_bad_records=4, max_bad_fraction=None))
  # An empty corpus embeds nothing: never published.
  assert "nothing was embedded" in refusal_reasons(_counts(0, 0, 0),
                                                   limits)[0]
  # Exact repeats of a kept record (duplicate_record) are not bad records.
  assert refusal_reasons(_counts(100, 50, 50, repeated=45), limits) == []
  assert refusal_reasons(_counts(100, 50, 50, repeated=39), limits) == [
      "corpus: 11 of 100 records (11.0%) were dead-lettered (39 exact "
      "repeats not counted), more than --max_bad_fraction=0.1; raise it "
      "(e.g. --max_bad_fraction=0.12) if so many bad records are expected"]
  assert refusal_reasons(_counts(100, 50, 50, repeated=46), PublishLimits(
      max_bad_records=4, max_bad_fraction=None)) == []
  # Removals count against the previous run's documents.
  with_previous = PublishLimits(previous_documents=100)
  assert refusal_reasons(_counts(90, 90, 0, removed=20), with_previous) == []
  assert refusal_reasons(_counts(90, 90, 0, removed=21), with_previous)
  assert refusal_reasons(_counts(90, 90, 0, removed=21), PublishLimits(
      previous_documents=100, allow_large_removal=True)) == []
  # Derived ids: the reason asks whether the ids changed, naming the field.
  assert "changed ids" not in refusal_reasons(
      _counts(90, 90, 0, removed=21), with_previous)[0]
  derived = {**_counts(90, 90, 0, removed=21), "derived_ids": 90}
  assert ("Or changed ids? 90 of this run's 90 records have no "
          "--id_field=key value" in refusal_reasons(
              derived, with_previous, id_field="key")[0])
  # Each reason names the flag that would let the run through.
  assert "--max_bad_fraction=0.12" in refusal_reasons(_counts(100, 89, 11),
                                                      limits)[0]
  assert "raise it" in refusal_reasons(_counts(100, 95, 5), PublishLimits(
      max_bad_records=4, max_bad_fraction=None))[0]
  # Nothing embedded: the documents are "removed" only because none was
  # embedded, and no flag lets such a run through, so none is suggested.
  nothing = refusal_reasons(_counts(50, 0, 50, removed=50), with_previous)
  assert len(nothing) == 1 and "nothing was embedded" in nothing[0]
  assert "--allow_large_removal" not in nothing[0]
  # The query corpus of --neighbours_of has the same limits.
  reasons = refusal_reasons(_counts(10, 10, 0, queries=_counts(10, 0, 10)),
                            limits)
  assert reasons and all("queries" in r for r in reasons)
  # An empty query file names its own flag.
  assert refusal_reasons(_counts(10, 10, 0, queries=_counts(0, 0, 0)),
                         limits) == [
      "--neighbours_of queries: nothing was embedded (0 records read, 0 "
      "dead-lettered); check --neighbours_of: its files hold no records"]


def _dead(source, position, reason):
  return DeadLetter(source=source, position=position, stage="read",
                    reason=reason, detail=f"{reason} at {position}",
                    snippet="", id=None)


def test_the_error_summary_is_the_same_however_records_are_bundled():
  dead = [_dead(f"f{i % 3}", i, "missing_field") for i in range(20)]
  dead += [_dead("g", i, "malformed_record") for i in range(5)]
  combine = ErrorSummaryFn()

  def summarize(parts):
    accumulators = []
    for part in parts:
      accumulator = combine.create_accumulator()
      for d in part:
        accumulator = combine.add_input(accumulator, d)
      accumulators.append(accumulator)
    return combine.extract_output(combine.merge_accumulators(accumulators))

  whole = summarize([dead])
  assert whole == summarize([dead[::2], dead[1::2]])
  assert whole == summarize([reversed(dead)])
  assert [(e["reason"], e["count"]) for e in whole] == [
      ("missing_field", 20), ("malformed_record", 5)]
  assert [(x["source"], x["position"]) for x in whole[0]["examples"]] == [
      ("f0", 0), ("f0", 3), ("f0", 6)]


# ---------------------------------------------------------------------------
# --help.


def test_help_lists_the_pipeline_flags_first_in_groups_with_defaults(capsys):
  assert main.main(["--help"]) == 0
  text = capsys.readouterr().out
  titles = ["input:", "model:", "outputs:", "neighbours:", "nightly runs:",
            "performance:"]
  positions = [text.index("\n" + title) for title in titles]
  assert positions == sorted(positions)
  assert "\n  --runner" not in text and "--help_beam" in text
  flat = " ".join(text.split())
  assert "--max_bad_fraction" in flat and "Default: 0.1" in flat
  assert "Exit status: 0 published" in flat
  # Every flag of ours says its default.
  for block in text.split("\n  --")[1:]:
    assert "default" in block.lower() or "(required" in block, block
  assert main.main(["--help_beam"]) == 0
  full = capsys.readouterr().out
  assert full.startswith(text.rstrip("\n")[:200])
  assert "\n  --runner" in full and "\n  --temp_location" in full
  assert format_help() in full
  # Found by fuzzing the command line: Beam's usage ("usage: main.py [-h]
  # ...", a hundred lines) came after ours, naming another program.
  assert full.count("usage:") == 1 and "main.py" not in full


def test_docs_flags_lists_every_flag_in_its_group():
  text = open(os.path.join(os.path.dirname(__file__), "..", "docs",
                           "flags.md")).read()
  sections = text.split("\n## ")[1:]
  help_text = format_help()
  for section in sections:
    title = section.split("\n", 1)[0].lower()
    block = help_text.split(f"\n{title}:\n", 1)[1].split("\n\n", 2)[1]
    flags = [line.split()[0] for line in block.splitlines()
             if line.startswith("  --")]
    assert flags, title
    for flag in flags:
      assert f"`{flag}`" in section, (flag, title)


def test_a_run_published_into_the_output_while_this_one_planned_is_kept(
    workdir, capsys, monkeypatch):
  # check_output runs before the model is resolved, which can take
  # minutes; a run that published into the same --output meanwhile must
  # be found once the lock is held, not overwritten.
  other = {"run_id": "other", "note": "published while the second planned"}

  def plan_while_another_publishes(config, **kwargs):
    def resolve(*args, **resolve_kwargs):
      model = resolution.resolve_model(*args, **resolve_kwargs)
      os.makedirs(config.outputs.output, exist_ok=True)
      with open(os.path.join(config.outputs.output, "manifest.json"), "w",
                encoding="utf-8") as f:
        json.dump(other, f)
      return model
    return plan_run(config, environment=PlanEnvironment(resolve_model=resolve),
                    **kwargs)

  monkeypatch.setattr(job, "plan_run", plan_while_another_publishes)
  corpus = _corpus(workdir / "corpus.jsonl", good=3)
  code, run_dir = _run(workdir, corpus, "raced")
  assert code == 2
  assert "already holds a published run" in capsys.readouterr().err
  assert os.listdir(run_dir) == ["manifest.json"]  # no lock, no staging
  with open(os.path.join(run_dir, "manifest.json"), encoding="utf-8") as f:
    assert json.load(f) == other
  assert not (workdir / "LATEST").exists()

