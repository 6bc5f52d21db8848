"""scripts/install_is_current.py: run_local.sh skips pip only when ./.venv
holds what setup.py declares now."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def check():
  spec = importlib.util.spec_from_file_location(
      "install_is_current", os.path.join(REPO, "scripts",
                                         "install_is_current.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ARGUMENTS = {
    "name": "bert-batch-embeddings",
    "version": "0.1.0",
    "install_requires": ["apache-beam[gcp]==2.77.0", "tqdm==4.70.1"],
    "extras_require": {"test": ["pytest>=8"]},
}
# The installed project's Requires-Dist lines, as setuptools writes them.
REQUIRES = ["apache-beam[gcp]==2.77.0", "tqdm==4.70.1",
            'pytest>=8; extra == "test"']
VERSIONS = {"apache-beam": "2.77.0", "tqdm": "4.70.1", "pytest": "8.3.0"}


def _current(check, arguments=ARGUMENTS, extras=("test",), version="0.1.0",
             requires=REQUIRES, versions=VERSIONS):
  return check.is_current(arguments, list(extras), version, requires,
                          versions.get)


def test_an_install_matching_setup_py_is_current(check):
  assert _current(check)
  assert _current(check, extras=())


def test_anything_setup_py_declares_differently_is_not(check):
  assert not _current(check, version=None)  # not installed
  assert not _current(check, version="0.0.9")
  # A pin changed or a dependency added since the install.
  changed = dict(ARGUMENTS, install_requires=["apache-beam[gcp]==2.78.0",
                                              "tqdm==4.70.1"])
  assert not _current(check, arguments=changed)
  added = dict(ARGUMENTS, install_requires=ARGUMENTS["install_requires"] +
               ["rich>=13"])
  assert not _current(check, arguments=added)
  # An extra asked for now, never installed or unknown.
  assert not _current(check, versions={**VERSIONS, "pytest": None})
  assert not _current(check, extras=("docs",))
  # A dependency installed at a version outside its pin.
  assert not _current(check, versions={**VERSIONS, "tqdm": "4.66.0"})


def test_extras_are_read_from_the_target(check):
  assert check.requested_extras(".") == []
  assert check.requested_extras(".[test]") == ["test"]
  assert check.requested_extras(".[test, reference]") == ["test", "reference"]


def test_setup_py_is_read_without_installing(check, monkeypatch):
  monkeypatch.chdir(REPO)
  arguments = check.setup_arguments()
  assert arguments["name"] == "bert-batch-embeddings"
  assert any(r.startswith("tqdm==") for r in arguments["install_requires"])
  assert "test" in arguments["extras_require"]
