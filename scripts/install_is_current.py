"""Exits 0 when ./.venv already holds what `pip install -e TARGET` would
install, so scripts/venv.sh can skip pip (and its output) on every later run.

  .venv/bin/python scripts/install_is_current.py ".[test]"

Current means: the project is installed at setup.py's version, with exactly
the requirements setup.py declares now (for the extras of TARGET too), and
every one of them is installed at a version that satisfies it. A changed pin,
an added dependency or a requested extra that was never installed makes it
not current (exit 1), and so does anything this check cannot read.
"""

import importlib.metadata
import re
import runpy
import sys
from typing import Dict, Iterable, List, Mapping, Optional


def setup_arguments(setup_path: str = "setup.py") -> dict:
  """The keyword arguments setup.py passes to setuptools.setup()."""
  # Imported here: only this function needs setuptools, and it is stubbed.
  import setuptools  # pylint: disable=g-import-not-at-top
  captured = {}
  real_setup = setuptools.setup
  setuptools.setup = lambda **kwargs: captured.update(kwargs)
  try:
    runpy.run_path(setup_path, run_name="__main__")
  finally:
    setuptools.setup = real_setup
  return captured


def requested_extras(target: str) -> List[str]:
  """".[test,reference]" -> ["test", "reference"]."""
  match = re.search(r"\[([^\]]*)\]\s*$", target)
  return [e.strip() for e in match.group(1).split(",")] if match else []


def _key(requirement) -> tuple:
  # Imported here: packaging may be missing from a new venv (then nothing is
  # current, and main() says so).
  from packaging.utils import canonicalize_name  # pylint: disable=g-import-not-at-top
  return (canonicalize_name(requirement.name), str(requirement.specifier),
          tuple(sorted(requirement.extras)))


def declared_by_extra(requires: Iterable[str],
                      extras: Iterable[str]) -> Dict[str, set]:
  """Installed Requires-Dist lines, grouped: "" for the base requirements,
  else the extra whose marker selects them."""
  # Imported here: a fresh ./.venv may not have packaging yet, and then the
  # check must still run, and answer "not current" (main's except).
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  grouped = {"": set()}
  for line in requires:
    requirement = Requirement(line)
    extra = ""
    if requirement.marker is not None:
      chosen = [e for e in extras
                if requirement.marker.evaluate({"extra": e})]
      if not chosen or requirement.marker.evaluate({"extra": ""}):
        extra = ""
      else:
        extra = chosen[0]
    grouped.setdefault(extra, set()).add(_key(requirement))
  return grouped


def is_current(arguments: Mapping, extras: List[str],
               installed_version: Optional[str],
               installed_requires: Iterable[str],
               version_of) -> bool:
  """Whether the installed project matches setup.py's `arguments`.

  installed_version / installed_requires: the installed project's metadata
  (None if it is not installed). version_of(name): an installed
  distribution's version, or None.
  """
  # Imported here: as in declared_by_extra.
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  if installed_version is None or installed_version != arguments["version"]:
    return False
  all_extras = list(arguments.get("extras_require", {}))
  declared = declared_by_extra(installed_requires, all_extras)
  wanted = {"": list(arguments.get("install_requires", ()))}
  for extra in extras:
    if extra not in arguments.get("extras_require", {}):
      return False
    wanted[extra] = list(arguments["extras_require"][extra])
  for extra, lines in wanted.items():
    requirements = [Requirement(line) for line in lines]
    if {_key(r) for r in requirements} != declared.get(extra, set()):
      return False
    for requirement in requirements:
      version = version_of(requirement.name)
      if version is None or not requirement.specifier.contains(
          version, prereleases=True):
        return False
  return True


def _installed_version(name: str) -> Optional[str]:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def main(argv: List[str]) -> int:
  target = argv[0] if argv else "."
  try:
    arguments = setup_arguments()
    name = arguments["name"]
    version = _installed_version(name)
    requires = (importlib.metadata.requires(name) or []) if version else []
    current = is_current(arguments, requested_extras(target), version,
                         requires, _installed_version)
  except Exception:  # pylint: disable=broad-except
    return 1  # unreadable: install
  return 0 if current else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
