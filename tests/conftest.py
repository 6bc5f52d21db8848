"""Shared fixtures: tiny real models exported with the project's own code."""

import os

# Keep TensorFlow's start-up chatter out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # pylint: disable=g-import-not-at-top
from hypothesis import settings  # pylint: disable=g-import-not-at-top

from bert_model import default_model  # pylint: disable=g-import-not-at-top
from bert_model import export  # pylint: disable=g-import-not-at-top
from bert_model import tiny_checkpoint as tiny_bert  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A random tiny uncased sentence-transformers style checkpoint directory."""
  return tiny_bert.write_tiny_checkpoint(
      str(tmp_path_factory.mktemp("tiny_ckpt")), sentence_transformers=True)


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory):
  """The real default model, exported with the project's code (~20 s)."""
  model_dir = str(tmp_path_factory.mktemp("default") / "all-MiniLM-L6-v2")
  default_model.export_default_model(model_dir)
  return model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory):
  """The tiny checkpoint exported to a TF Hub format model directory."""
  model_dir = str(tmp_path_factory.mktemp("tiny_model") / "model")
  export.export_checkpoint(tiny_checkpoint, model_dir, name="tiny-bert")
  return model_dir


@pytest.fixture
def corpus_file(tmp_path):
  """A JSONL corpus of one good document."""
  path = tmp_path / "corpus.jsonl"
  path.write_text('{"id": "a", "text": "hello world"}\n')
  return str(path)


_FIGURES_KEY = pytest.StashKey[list]()


@pytest.fixture
def report_figure(request):
  """Records a measured figure; all of them are printed after the run."""
  figures = request.config.stash.setdefault(_FIGURES_KEY, [])

  def report(name, value):
    figures.append((request.node.nodeid, name, value))

  return report


def pytest_terminal_summary(terminalreporter, config):
  figures = config.stash.get(_FIGURES_KEY, [])
  if figures:
    terminalreporter.section("measured figures")
    for nodeid, name, value in figures:
      terminalreporter.write_line(f"{nodeid}: {name} = {value}")


# Hypothesis: bounded for CI by default; `HYPOTHESIS_PROFILE=soak` (see
# scripts/fuzz_soak.sh) runs the same properties far longer.
settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile(
    "soak", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
