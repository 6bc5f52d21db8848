"""The frozen config: one section per --help group, built from the flags by
name, with no IO."""

import dataclasses
import datetime

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import config as config_lib
from pipeline.errors import ConfigError
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
    (["--neighbours_of=q.jsonl", "--query_id_field= "],
     "--query_id_field is empty: name the field, column or feature that "
     "holds the id"),
])
def test_wrong_values_are_refused_without_io(argv, message):
  with pytest.raises(ConfigError, match=message):
    _config(*argv)
