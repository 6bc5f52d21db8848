"""The layers of docs/architecture.md, checked on the source itself.

  pipeline/       the application          may import all below
  transforms/     the stages               may import the two libraries
  bert_model/     the model library        imports neither other package
  run_directory/  the run-directory contract   imports neither other package

No module imports upward or sideways between the two libraries, no import
cycle exists between modules, and an import inside a function is a deliberate
lazy import that says why: a comment starting "# Imported here" above it,
in its paragraph (above the group of imports it belongs to, say). Imports
are absolute.

tests/ and benchmarks/ keep the same rule for imports inside functions, and
share helpers through modules of their own (tests/real_text.py,
benchmarks/harness.py): none of their modules imports an underscore name of
another first-party module or reaches one on a module of tests/ or
benchmarks/ (a test may still reach into the library module it tests), and
no module imports a test module (tests/test_*.py, tests/conftest.py).
benchmarks/ import nothing from tests/.
"""

import ast
import collections
import functools
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"run_directory": 0, "bert_model": 0, "transforms": 1, "pipeline": 2}
# The scripts beside the packages, which import them.
SCRIPTS = ("tests", "benchmarks")
# Other directories of first-party Python files.
OTHERS = ("dataflow", "scripts")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
TEST_MODULE = re.compile(r"tests\.(test_\w+|conftest)")


def _modules(package: str):
  """(module name, path) of every module of a package."""
  root = os.path.join(REPO, package)
  for directory, _, files in os.walk(root):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield module.removesuffix(".__init__"), path


@functools.lru_cache(maxsize=None)
def _tree(path: str) -> ast.Module:
  with open(path) as f:
    return ast.parse(f.read(), path)


def _walk(node, in_function=False):
  """(node, whether inside a function) of every node below `node`."""
  for child in ast.iter_child_nodes(node):
    yield child, in_function
    yield from _walk(child, in_function or isinstance(child, FUNCTIONS))


def _import_nodes(path: str):
  """(Import or ImportFrom node, inside a function) of a file."""
  for node, in_function in _walk(_tree(path)):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node, in_function


def _from_module(node: ast.ImportFrom, path: str) -> str:
  """The absolute name of the module a "from ... import" imports from."""
  if not node.level:
    return node.module
  # Relative: resolved against the file's own package.
  package = os.path.relpath(os.path.dirname(path), REPO).split(os.sep)
  package = package[:len(package) - (node.level - 1)]
  return ".".join(package + ([node.module] if node.module else []))


def _imports(path: str):
  """(imported name, line number, inside a function) of a file's imports.

  "from module import name" gives "module.name" (a module or a name in it)."""
  for node, in_function in _import_nodes(path):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno, in_function
    else:
      module = _from_module(node, path)
      for alias in node.names:
        yield f"{module}.{alias.name}", node.lineno, in_function


def _first_party(name: str, known: set) -> str:
  """The first-party module `name` refers to, or ""."""
  while name and name not in known:
    name = name.rpartition(".")[0]
  return name


ALL_MODULES = {module: path for package in LAYERS
               for module, path in _modules(package)}
SCRIPT_MODULES = {module: path for directory in SCRIPTS
                  for module, path in _modules(directory)}
FIRST_PARTY = {**ALL_MODULES, **SCRIPT_MODULES,
               **{module: path for directory in OTHERS
                  for module, path in _modules(directory)}}


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


def _says_why(path: str, line: int) -> bool:
  """Whether a comment starting "# Imported here" sits above the import at
  `line` in its paragraph: no blank line between, and within its block."""
  lines = open(path).read().splitlines()

  def indent(text):
    return len(text) - len(text.lstrip())

  for text in reversed(lines[:line - 1]):
    if not text.strip() or indent(text) < indent(lines[line - 1]):
      return False
    if text.strip().startswith("# Imported here"):
      return True
  return False


@pytest.mark.parametrize("directory", [*LAYERS, *SCRIPTS, *OTHERS])
def test_imports_inside_functions_say_why(directory):
  problems = []
  for _, path in _modules(directory):
    for name, line, in_function in _imports(path):
      if in_function and not _says_why(path, line):
        problems.append(
            f"{os.path.relpath(path, REPO)}:{line}: import of {name} inside "
            "a function, with no '# Imported here' comment above it saying "
            "why (or move it to the top of the module)")
  assert not problems, "\n".join(problems)


def test_imports_are_absolute():
  relative = [f"{os.path.relpath(path, REPO)}:{node.lineno}"
              for path in FIRST_PARTY.values()
              for node, _ in _import_nodes(path)
              if isinstance(node, ast.ImportFrom) and node.level]
  assert not relative, ("relative imports (import by the absolute name):\n"
                        + "\n".join(relative))


def _is_private(name: str) -> bool:
  return name.startswith("_") and not name.startswith("__")


def _dotted(node) -> str:
  """"a.b.c" of a chain of attributes on a name; "" for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return ""
  return ".".join([node.id] + parts[::-1])


def _private_names_used(module: str, path: str):
  """(line, what) of each underscore name of another first-party module
  that a module imports, or reaches on a module of tests/ or benchmarks/."""
  bound = {}  # a name the file binds by an import -> what it refers to
  for node, _ in _import_nodes(path):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.asname:
          bound[alias.asname] = alias.name
        else:
          bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        target = _first_party(alias.name, set(FIRST_PARTY))
        if (target and target != module and
            any(_is_private(part) for part in alias.name.split("."))):
          yield node.lineno, f"import {alias.name}"
    else:
      source = _from_module(node, path)
      for alias in node.names:
        bound[alias.asname or alias.name] = f"{source}.{alias.name}"
        target = _first_party(f"{source}.{alias.name}", set(FIRST_PARTY))
        if (target and target != module and
            any(_is_private(part) for part in
                f"{source}.{alias.name}".split("."))):
          yield node.lineno, f"from {source} import {alias.name}"
  for node in ast.walk(_tree(path)):
    if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
      continue
    head, _, rest = _dotted(node.value).partition(".")
    if head not in bound:
      continue
    owner = ".".join(filter(None, [bound[head], rest]))
    if owner in SCRIPT_MODULES and owner != module:
      yield node.lineno, f"{owner}.{node.attr}"


@pytest.mark.parametrize("directory", SCRIPTS)
def test_scripts_use_no_private_names_of_other_modules(directory):
  problems = [
      f"{os.path.relpath(path, REPO)}:{line}: {what}"
      for module, path in _modules(directory)
      for line, what in _private_names_used(module, path)]
  assert not problems, (
      "underscore names of other modules (make them public, or move shared "
      "helpers into a module of their own, e.g. benchmarks/harness.py):\n"
      + "\n".join(problems))


def test_no_module_imports_a_test_module():
  problems = []
  for module, path in FIRST_PARTY.items():
    for name, line, _ in _imports(path):
      target = _first_party(name, set(FIRST_PARTY))
      if target != module and TEST_MODULE.fullmatch(target):
        problems.append(f"{os.path.relpath(path, REPO)}:{line}: {module} "
                        f"imports {target}")
  assert not problems, (
      "test modules are run by pytest, not imported; shared test helpers "
      "live in modules of their own (e.g. tests/real_text.py):\n"
      + "\n".join(problems))


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
