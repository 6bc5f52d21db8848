"""Loading SavedModels: as `hub.load` does, and only the parts a run calls.

`load_saved_model(path)` is `hub.load(path)` without importing
tensorflow_hub for a plain directory (local or gs://), where hub.load is
`tf.saved_model.load`: tensorflow_hub imports Keras, seconds of every
worker's start. TF Hub handles and TF1 Hub modules still go through it.

`load_parts(path, names)` loads only some children of a SavedModel's root
(with everything they hold), and only the functions those call. Loading
spends its time turning every FunctionDef of the SavedModel's library into a
graph, whether anything calls it or not: the preprocess model's library is
178 functions (4,245 nodes, mostly the assertion branches of ragged ops in
`bert_pack_inputs` and `__call__`), of which `tokenize` calls 50 (911
nodes). The functions that are loaded are the same FunctionDefs, so they
compute what a full load's do.
"""

import contextlib
import os
import re
from typing import Dict, Sequence

import tensorflow as tf
from tensorflow.python.saved_model import load as load_lib  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.saved_model import loader_impl  # pylint: disable=g-direct-tensorflow-import

from bert_model.catalog import is_handle

# The file that marks a TF1 Hub module (hub.Module format).
_TF1_HUB_MODULE_FILE = "tfhub_module.pb"


def _uses_tensorflow_hub(path: str) -> bool:
  return is_handle(path) or tf.io.gfile.exists(
      os.path.join(path, _TF1_HUB_MODULE_FILE))


def load_saved_model(path: str):
  """The SavedModel at `path` (a directory, local or gs://, or a TF Hub
  handle), as `hub.load(path)` loads it."""
  with _loading(path):
    if _uses_tensorflow_hub(path):
      # Imported here: only handles and TF1 Hub modules need it (module doc).
      import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
      return hub.load(path)
    return tf.saved_model.load(path)


@contextlib.contextmanager
def _loading(path: str):
  """A model whose variables fail their checksum or end early (changed or
  cut files) told as a damaged model, naming it, not as TensorFlow's
  DataLossError."""
  try:
    yield
  except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as e:
    # Without TensorFlow's wrapping: "{{function_node ...}} ... [Op:X]".
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\]", "", str(e.message))
    message = " ".join(message.split())[:300]
    raise ValueError(
        f"The model at {path} is damaged ({message}); export it again "
        "(python -m pipeline.export_model).") from e


def _resolved(path: str) -> str:
  if is_handle(path):
    # Imported here: only handles need it (module doc). A handle resolves to
    # its directory in the TF Hub cache, downloaded there if it is not.
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    return hub.resolve(path)
  return path


def _functions_called(function_names, library) -> set:
  """The FunctionDefs these call, directly or through other functions (as
  ops or in the function attributes of If, While, PartitionedCall...)."""
  by_name = {f.signature.name: f for f in library.function}
  called, stack = set(), list(function_names)
  while stack:
    name = stack.pop()
    if name in called or name not in by_name:
      continue
    called.add(name)
    for node in by_name[name].node_def:
      if node.op in by_name:
        stack.append(node.op)
      for attr in node.attr.values():
        if attr.HasField("func"):
          stack.append(attr.func.name)
        if attr.HasField("list"):
          stack.extend(f.name for f in attr.list.func)
  return called


def _descendants(graph, node_id: int, found: set) -> set:
  if node_id not in found:
    found.add(node_id)
    for child in graph.nodes[node_id].children:
      _descendants(graph, child.node_id, found)
  return found


def _prune_library(saved_model, names: Sequence[str]):
  """Drops from `saved_model` (in place) the functions no node under the
  root's children `names` calls."""
  meta_graph = saved_model.meta_graphs[0]
  graph = meta_graph.object_graph_def
  children = {c.local_name: c.node_id for c in graph.nodes[0].children}
  kept_nodes = set()
  for name in names:
    _descendants(graph, children[name], kept_nodes)
  concrete = set()
  for node_id in kept_nodes:
    node = graph.nodes[node_id]
    kind = node.WhichOneof("kind")
    if kind == "function":
      concrete.update(node.function.concrete_functions)
    elif kind == "bare_concrete_function":
      concrete.add(node.bare_concrete_function.concrete_function_name)
  called = _functions_called(concrete, meta_graph.graph_def.library)
  library = meta_graph.graph_def.library
  kept = [f for f in library.function if f.signature.name in called]
  del library.function[:]
  library.function.extend(kept)
  kept_gradients = [g for g in library.gradient if g.function_name in called]
  del library.gradient[:]
  library.gradient.extend(kept_gradients)
  for name in list(graph.concrete_functions):
    if name not in concrete:
      del graph.concrete_functions[name]


def load_parts(path: str, names: Sequence[str]) -> Dict[str, object]:
  """{name: the root's child `name`} of the SavedModel at `path` (a
  directory or a TF Hub handle), loaded with only the functions they call
  (module doc); of a TF1 Hub module, loaded whole. Raises KeyError for a
  name the root does not have."""
  if not is_handle(path) and _uses_tensorflow_hub(path):
    whole = load_saved_model(path)
    return {name: getattr(whole, name) for name in names}
  path = _resolved(path)
  saved_model = loader_impl.parse_saved_model(path)
  root_children = {
      c.local_name for c in
      saved_model.meta_graphs[0].object_graph_def.nodes[0].children}
  missing = [name for name in names if name not in root_children]
  if missing:
    raise KeyError(f"{path} has no {', '.join(missing)}")
  _prune_library(saved_model, names)
  filters = [f"root.{name}" for name in names]
  # What tf.__internal__.saved_model.load_partial does with the proto it
  # reads itself.
  with tf.init_scope(), _loading(path):
    loader = load_lib.Loader(
        saved_model.meta_graphs[0].object_graph_def, saved_model, path,
        tf.train.CheckpointOptions(),
        # The variables of the parts not loaded are in the checkpoint too.
        tf.saved_model.LoadOptions(allow_partial_checkpoint=True), filters)
    return {name: loader.get(node) for name, node in zip(names, filters)}
