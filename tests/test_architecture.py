"""The layers of docs/architecture.md, checked on the source itself.

  pipeline/       the application          may import all below
  transforms/     the stages               may import the two libraries
  bert_model/     the model library        imports neither other package
  run_directory/  the run-directory contract   imports neither other package

No module imports upward or sideways between the two libraries, no import
cycle exists between modules, and an import inside a function is a deliberate
lazy import (for start-up cost) that says so: "Imported here" in a comment
just above it. benchmarks/ import nothing from tests/.
"""

import ast
import collections
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"run_directory": 0, "bert_model": 0, "transforms": 1, "pipeline": 2}


def _modules(package: str):
  """(module name, path) of every module of a package."""
  root = os.path.join(REPO, package)
  for directory, _, files in os.walk(root):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield module.removesuffix(".__init__"), path


def _imports(path: str):
  """(imported module, line number, at top level) of a file's imports."""
  tree = ast.parse(open(path).read())
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno, id(node) in top_level
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        # "from package import module" imports the module.
        yield f"{node.module}.{alias.name}", node.lineno, id(node) in top_level


def _first_party(name: str, known: set) -> str:
  """The first-party module `name` refers to, or ""."""
  while name and name not in known:
    name = name.rpartition(".")[0]
  return name


ALL_MODULES = {module: path for package in LAYERS
               for module, path in _modules(package)}


def test_layers_import_only_downward():
  problems = []
  for module, path in ALL_MODULES.items():
    layer = module.split(".")[0]
    for name, line, _ in _imports(path):
      target = _first_party(name, set(ALL_MODULES))
      if not target:
        continue
      target_layer = target.split(".")[0]
      if target_layer == layer:
        continue
      if LAYERS[target_layer] >= LAYERS[layer]:
        problems.append(f"{path}:{line}: {module} imports {target}")
  assert not problems, "\n".join(problems)


def test_no_import_cycles():
  graph = collections.defaultdict(set)
  for module, path in ALL_MODULES.items():
    for name, _, _ in _imports(path):
      target = _first_party(name, set(ALL_MODULES))
      if target and target != module:
        graph[module].add(target)
  # A package's __init__ importing its own submodules is how a package
  # exposes them, not a cycle.
  for module in list(graph):
    graph[module] = {t for t in graph[module]
                     if not t.startswith(module + ".")}
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == "open":
        cycles.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = "done"

  for module in sorted(ALL_MODULES):
    if module not in state:
      visit(module)
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_say_why():
  problems = []
  for module, path in ALL_MODULES.items():
    lines = open(path).read().splitlines()
    for name, line, top_level in _imports(path):
      if top_level:
        continue
      # The comment may sit above a group of such imports.
      above = lines[max(0, line - 6):line - 1]
      if not any("Imported here" in text for text in above):
        problems.append(f"{path}:{line}: import of {name} inside a "
                        "function, with no comment saying why")
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", ["benchmarks"])
def test_benchmarks_import_nothing_from_tests(package):
  for module, path in _modules(package):
    for name, line, _ in _imports(path):
      assert not name.startswith("tests"), f"{path}:{line} imports {name}"


def test_no_module_does_several_jobs_by_its_size():
  # A rough guard on the structure: the modules that were split stay split.
  sizes = {module: len(open(path).read().splitlines())
           for module, path in ALL_MODULES.items()}
  too_long = {module: n for module, n in sizes.items() if n > 600}
  assert not too_long, too_long
