"""The frozen config: one section per --help group, built from the flags by
name, with no IO."""

import dataclasses
import datetime

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.flags import FILLED_DEFAULTS
from pipeline.flags import flag_actions
from pipeline.flags import FLAG_GROUPS


def test_each_section_holds_exactly_its_groups_flags():
  actions = flag_actions()
  assert [title for title, _ in FLAG_GROUPS] == list(actions)
  assert set(config_lib.SECTIONS) == set(actions)
  for title, (attribute, section) in config_lib.SECTIONS.items():
    flags = [action.dest for action in actions[title]]
    fields = [field.name for field in dataclasses.fields(section)]
    assert fields == flags, title
    assert attribute in [f.name for f in dataclasses.fields(
        config_lib.RunConfig)]


def _config(*argv, now=datetime.datetime(2026, 12, 1, 2, 15, 0)):
  return config_lib.config_from_options(
      PipelineOptions(["--input=in.jsonl", "--output=runs/{run_id}",
                       *argv]), now=now)


def test_config_from_options_is_pure_and_fills_the_defaults(tmp_path):
  # Neither path exists: nothing is checked that needs IO.
  config = _config("--normalize=false", "--max_bad_records=5")
  assert config.outputs.run_id == "20261201T021500Z"
  assert config.outputs.output == "runs/20261201T021500Z"
  assert config.model.normalize is False
  assert config.model.max_seq_length is None  # the model's own, later
  # --max_bad_records alone lifts the default fraction.
  assert config.nightly.max_bad_fraction is None
  assert _config().nightly.max_bad_fraction == 0.1
  assert _config("--run_id=night-1").outputs.output == "runs/night-1"
  settings = config_lib.settings_of(config)
  assert settings["outputs"]["run_id"] == "20261201T021500Z"
  assert set(settings) == {"input", "model", "outputs", "neighbours",
                           "nightly", "performance"}


@pytest.mark.parametrize("argv, message", [
    (["--sort_buffer_size=10"], "smaller than --max_batch_size"),
    (["--max_bad_fraction=1.5"], "between 0 and 1"),
    (["--run_id=../x"], "--run_id"),
    (["--text_pair_field=text"], "other than --text_field"),
    (["--bigquery_table=nope"], "is not a table reference"),
    (["--bigquery_table=my-project:ds.t"], "needs --temp_location=gs://"),
    (["--bigquery_table=my-project:ds.t", "--temp_location=/tmp"],
     "needs --temp_location=gs://"),
    (["--num_shards=100000"], "at most 10000"),
    (["--neighbours_of=q.jsonl", "--neighbours_k=0"], "needs --neighbours_k"),
    (["--query_text_field=question"],
     "--query_text_field names a field of the --neighbours_of queries; set "
     "--neighbours_of"),
    (["--neighbours_of=q.jsonl", "--text_pair_field=question",
      "--query_text_field=question"], "is --query_text_field too"),
    (["--id_field=text"], "--id_field and --text_field both name 'text'"),
    (["--text_field=id"], "--id_field and --text_field both name 'id'"),
    (["--id_field=b", "--text_pair_field=b"],
     "--id_field and --text_pair_field both name 'b'"),
    (["--neighbours_of=q.jsonl", "--query_id_field=q",
      "--query_text_field=q"],
     "--query_id_field and --query_text_field both name 'q'"),
    (["--neighbours_of=q.jsonl", "--query_id_field= "],
     "--query_id_field is empty: name the field, column or feature that "
     "holds the id"),
])
def test_wrong_values_are_refused_without_io(argv, message):
  with pytest.raises(ConfigError, match=message):
    _config(*argv)


# Found by fuzzing the command line: each of these was taken without a word,
# and the flag ignored (an empty --previous_run embedded everything, an
# empty --neighbours_of searched all against all; --sequence_dtype without
# --sequence_output changed the vector settings a previous run is reused by).
@pytest.mark.parametrize("argv, message", [
    *[([f"--{name}="], rf"^--{name} is empty \(an unset variable\?\): give "
       r"it a value, or leave the flag out\.$")
      for name in ("model", "preprocessor", "model_root", "run_id",
                   "bigquery_table", "neighbours_of", "previous_run",
                   "latest_pointer")],
    (["--crowding_tag_field= ", "--vertex_export=full"],
     r"^--crowding_tag_field is empty"),
    (["--sequence_dtype=float16"], r"^--sequence_dtype needs "
     r"--sequence_output \(.*\): add it, or leave --sequence_dtype out\.$"),
    (["--projector_max_points=5"], r"--projector_max_points needs "
     r"--projector_export"),
    (["--max_removed_fraction=0.5"], r"--max_removed_fraction needs "
     r"--previous_run"),
    (["--allow_large_removal"], r"--allow_large_removal needs --previous_run"),
    (["--neighbours_k=0", "--neighbours_level=document",
      "--duplicate_threshold=0.9"], r"--neighbours_level needs --neighbours_k "
     r"above 0"),
    (["--neighbours_k=0", "--neighbours_mode=ann"], r"--neighbours_mode needs "
     r"--neighbours_k above 0 or --duplicate_threshold"),
    (["--neighbours_k=0", "--neighbours_block_size=8"],
     r"--neighbours_block_size needs --neighbours_k above 0"),
])
def test_empty_values_and_flags_without_the_flag_they_need_are_refused(
    argv, message):
  with pytest.raises(ConfigError, match=message):
    _config(*argv)


def test_flags_declared_without_a_default_get_it_in_the_config():
  config = _config()
  for name, default in FILLED_DEFAULTS.items():
    section = next(getattr(config, attribute) for attribute, cls
                   in config_lib.SECTIONS.values()
                   if name in [f.name for f in dataclasses.fields(cls)])
    assert getattr(section, name) == default, name
  # With the flag they need, they are taken.
  config = _config("--sequence_output", "--sequence_dtype=float16",
                   "--previous_run=runs/x", "--max_removed_fraction=0.5",
                   "--allow_large_removal", "--neighbours_k=0",
                   "--duplicate_threshold=0.9", "--neighbours_mode=ann")
  assert config.outputs.sequence_dtype == "float16"
  assert config.nightly.max_removed_fraction == 0.5
  assert config.neighbours.neighbours_mode == "ann"


@pytest.mark.parametrize("argv, message", [
    (["--input=a.jsonl", "--input", "b.jsonl"], r"^--input is given 2 times, "
     r"with 'a.jsonl', 'b.jsonl', and only the last would be read: give it "
     r"once \(for several files, one glob: --input 'DIR/\*.jsonl'\)\.$"),
    (["--input=a.jsonl", "--vertex_export=full", "--restrict_fields=lang",
      "--restrict_fields=color"], r"^--restrict_fields is given 2 times, with "
     r"'lang', 'color', .*\(a comma-separated list: --restrict_fields=a,b\)"),
])
def test_a_list_flag_given_twice_with_different_values_is_refused(
    argv, message):
  # Found by fuzzing: argparse kept the last value and dropped the other.
  with pytest.raises(ConfigError, match=message):
    config_lib.check_flags([*argv, "--output=runs/x"])
  # The same value twice (a wrapper passing a flag on) is taken, and other
  # flags keep "the last one wins", with which wrappers override defaults.
  config = config_lib.check_flags(["--input=a.jsonl", "--input", "a.jsonl",
                                   "--neighbours_k=2", "--neighbours_k=3",
                                   "--output=runs/x"])
  assert config.input.input == "a.jsonl"
  assert config.neighbours.neighbours_k == 3
