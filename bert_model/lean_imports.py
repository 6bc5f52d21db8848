"""Importing a library without the optional dependencies it loads for nothing.

Three libraries the pipeline needs import heavy optional packages at import
time, for features the pipeline never uses:

- `tensorflow/__init__.py` imports Keras eagerly (`keras.src.optimizers`, "so
  that registration at load time happens"; Keras 3 registers nothing there)
  and goes on without it when it is missing;
- `tensorflow_text` imports its Keras layers (`tensorflow_text.keras`),
  which subclass `tf.keras.layers.Layer` and so import Keras;
- `apache_beam.ml.inference.base` imports its ModelManager, which imports
  PyTorch and SciPy, and goes on without it (Beam imports it itself when a
  RunInference asks for the model manager).

Keras in turn imports scikit-learn and matplotlib. Together: ~5 s of CPU at
every start of the pipeline and of its workers (docs/performance.md).

`import_lean(name, hidden, deferred)` imports `name` with the `hidden`
modules failing to import, as if they were not installed, and each
`deferred` module standing in as a placeholder that imports the real module
on the first use of one of its names. Once it returns, every module imports
as usual again: `tf.keras` and `tensorflow_text.keras` import Keras on first
use. (Not importlib.util.LazyLoader: its modules load on any attribute
access, and Beam's state cache reads `vars()` of every module in
sys.modules when it sizes a side input.)

`import_lean_when_imported(name, hidden, deferred)` imports nothing: it
makes the first import of `name`, wherever it happens, run as `import_lean`
would. The model library arms TensorFlow and tensorflow_text so (its
`__init__`), and so its modules that need no TensorFlow (`choices.py`)
import in a fraction of a second: `pipeline.main` checks the flags with them
before TensorFlow is imported.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Sequence


def _is_in(fullname: str, names: Sequence[str]) -> bool:
  return any(fullname == name or fullname.startswith(name + ".")
             for name in names)


class _RefusingLoader(importlib.abc.Loader):
  """Fails the import of a hidden module, as if it were not installed."""

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    raise ModuleNotFoundError(
        f"{module.__name__} is hidden while another module is imported",
        name=module.__name__)


class _DeferredModule(types.ModuleType):
  """Stands in for a module until one of its names is used; then imports
  the real module (which takes its place in sys.modules and in its parent
  package) and answers from it."""

  def __getattr__(self, attribute):  # only for names not set on the module
    if attribute.startswith("__"):
      raise AttributeError(attribute)
    real = self.__dict__.get("_deferred_real")
    if real is None:
      if sys.modules.get(self.__name__) is self:
        del sys.modules[self.__name__]
      real = importlib.import_module(self.__name__)
      self.__dict__["_deferred_real"] = real
    return getattr(real, attribute)


class _DeferringLoader(importlib.abc.Loader):
  """Makes a deferred module's placeholder; runs none of its code."""

  def create_module(self, spec):
    return _DeferredModule(spec.name)

  def exec_module(self, module):
    pass


class _LeanFinder(importlib.abc.MetaPathFinder):
  """Finds hidden and deferred modules where they are (a library may look up
  where a package lives, as TensorFlow does for Keras), with a loader that
  refuses to run a hidden one, or one that makes a deferred one's
  placeholder."""

  def __init__(self, hidden: Sequence[str], deferred: Sequence[str]):
    self._hidden = tuple(hidden)
    self._deferred = tuple(deferred)

  def find_spec(self, fullname, path=None, target=None):
    hidden = _is_in(fullname, self._hidden)
    if not hidden and fullname not in self._deferred:
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None:
      return None
    if hidden:
      spec.loader = _RefusingLoader()
    else:
      spec.loader = _DeferringLoader()
    return spec


def import_lean(name: str, hidden: Sequence[str] = (),
                deferred: Sequence[str] = ()):
  """`importlib.import_module(name)`, with the `hidden` modules (and their
  submodules) failing to import while it runs, and the `deferred` modules
  imported on the first use of one of their names. Modules imported before are neither hidden nor
  deferred; a `name` imported before is returned as it is."""
  if name in sys.modules:
    return sys.modules[name]
  finder = _LeanFinder([h for h in hidden if h not in sys.modules],
                       [d for d in deferred if d not in sys.modules])
  sys.meta_path.insert(0, finder)
  try:
    return importlib.import_module(name)
  finally:
    sys.meta_path.remove(finder)


class _LeanLoader(importlib.abc.Loader):
  """Runs a module's own loader with the hidden and deferred modules of
  `import_lean` in place; then leaves the module its own loader."""

  def __init__(self, loader, hidden: Sequence[str], deferred: Sequence[str]):
    self._loader = loader
    self._hidden = hidden
    self._deferred = deferred

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    finder = _LeanFinder([h for h in self._hidden if h not in sys.modules],
                         [d for d in self._deferred if d not in sys.modules])
    sys.meta_path.insert(0, finder)
    try:
      self._loader.exec_module(module)
    finally:
      sys.meta_path.remove(finder)
      module.__loader__ = self._loader
      if module.__spec__ is not None:
        module.__spec__.loader = self._loader


class _FirstImportFinder(importlib.abc.MetaPathFinder):
  """Finds `name` once, the first time anything imports it, with a loader
  that imports it lean; then steps aside."""

  def __init__(self, name: str, hidden: Sequence[str],
               deferred: Sequence[str]):
    self._name = name
    self._hidden = tuple(hidden)
    self._deferred = tuple(deferred)

  def find_spec(self, fullname, path=None, target=None):
    if fullname != self._name:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is None or spec.loader is None:
      return spec
    spec.loader = _LeanLoader(spec.loader, self._hidden, self._deferred)
    return spec


def import_lean_when_imported(name: str, hidden: Sequence[str] = (),
                              deferred: Sequence[str] = ()) -> None:
  """Makes the first import of the top-level module `name`, by anyone, run
  as `import_lean(name, hidden, deferred)`; imports nothing itself. Nothing
  happens for a `name` imported before."""
  if "." in name:
    raise ValueError(f"{name}: only a top-level module can be armed")
  if name in sys.modules or any(
      isinstance(finder, _FirstImportFinder) and finder._name == name  # pylint: disable=protected-access
      for finder in sys.meta_path):
    return
  sys.meta_path.insert(0, _FirstImportFinder(name, hidden, deferred))
