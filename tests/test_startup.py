"""Start-up cuts (docs/performance.md): lean imports, and the preprocess
model's tokenize loaded alone. Neither may change a vector.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl  # pylint: disable=g-direct-tensorflow-import

from bert_model import metadata as metadata_lib
from bert_model import saved_models
from bert_model.lean_imports import import_lean
from bert_model.lean_imports import import_lean_when_imported
from tests import hostile_corpus
from tests import real_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What `python -m pipeline.main` has no use for in a default run.
UNUSED_BY_A_RUN = ("torch", "keras", "tf_keras", "sklearn", "matplotlib",
                   "tensorflow_hub", "faiss", "sentence_transformers",
                   "transformers")


def _texts():
  return (real_text.real_sentences(40) + hostile_corpus.GOOD_LINES +
          hostile_corpus.CODE_LIKE + ["", " ", "\u200b\ufeff"])


# ---------------------------------------------------------------------------
# import_lean, on a package of its own (no TensorFlow).


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
  """`lean_user` imports `lean_heavy` in a try block (as TensorFlow does
  Keras) and `lean_layers`, which imports `lean_heavy`, plainly."""
  (tmp_path / "lean_heavy.py").write_text("LOADED = True\n")
  (tmp_path / "lean_layers.py").write_text(
      "import lean_heavy\nLAYER = 'layer'\n")
  (tmp_path / "lean_user.py").write_text(textwrap.dedent("""\
      try:
        import lean_heavy
      except ImportError:
        lean_heavy = None
      import lean_layers
      """))
  monkeypatch.syspath_prepend(str(tmp_path))
  yield
  for name in ("lean_heavy", "lean_layers", "lean_user"):
    sys.modules.pop(name, None)


def test_hidden_module_is_missing_while_importing_and_importable_after(
    fake_packages):
  user = import_lean("lean_user", hidden=("lean_heavy",),
                     deferred=("lean_layers",))
  assert user.lean_heavy is None
  assert "lean_heavy" not in sys.modules
  # The deferred module is a placeholder: its code has not run, and reading
  # its namespace (as Beam's state cache does) does not run it.
  assert "LAYER" not in vars(user.lean_layers)
  assert "lean_heavy" not in sys.modules
  assert user.lean_layers.LAYER == "layer"  # first use: imported now
  assert sys.modules["lean_heavy"].LOADED
  # Imported here: lean_heavy exists only in the fixture's temporary
  # directory, put on sys.path for this test.
  import lean_heavy  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  assert lean_heavy.LOADED
  # Imported before: returned as it is.
  assert import_lean("lean_user", hidden=("lean_heavy",)) is user


def test_an_armed_module_imports_lean_wherever_it_is_first_imported(
    fake_packages):
  import_lean_when_imported("lean_user", hidden=("lean_heavy",),
                            deferred=("lean_layers",))
  assert "lean_user" not in sys.modules  # arming imports nothing
  # Imported here: by a plain import statement, as a library would import
  # it; lean_user exists only in the fixture's temporary directory.
  import lean_user  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  assert lean_user.lean_heavy is None
  assert "lean_heavy" not in sys.modules
  assert "LAYER" not in vars(lean_user.lean_layers)
  # The module keeps its own loader, and the arming is spent.
  assert type(lean_user.__loader__).__name__ == "SourceFileLoader"
  assert lean_user.__spec__.loader is lean_user.__loader__
  assert not [f for f in sys.meta_path if "lean_imports" in type(f).__module__]
  assert lean_user.lean_layers.LAYER == "layer"
  assert sys.modules["lean_heavy"].LOADED


def _main_in_a_fresh_process(argv):
  """(exit status, stdout, stderr, whether TensorFlow was imported) of
  pipeline.main.main(argv) in a new process."""
  script = textwrap.dedent(f"""\
      import json, sys
      from pipeline import main
      code = main.main({list(argv)!r})
      print(json.dumps([code, "tensorflow" in sys.modules]))
      """)
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                        capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO))
  code, imported = json.loads(done.stdout.strip().splitlines()[-1])
  return code, done.stdout, done.stderr, imported


@pytest.mark.parametrize("argv, message", [
    (["--input", "x", "--output", "y", "--poolng", "mean"],
     "unknown flag(s): --poolng (did you mean --pooling?)"),
    (["--input", "x", "--output", "y", "--neighbours_mode", "fast"],
     "--neighbours_mode"),
    (["--input", "x", "--output", "y", "--max_chunks", "3"],
     "--max_chunks needs --chunk_size"),
    (["--output", "y"], "--input is required"),
    # A local path too (it once failed after TensorFlow's 3 s of import).
    (["--input", "no-such-corpus.jsonl", "--output", "y"],
     "--input=no-such-corpus.jsonl does not exist"),
])
def test_a_wrong_flag_fails_before_tensorflow_is_imported(argv, message):
  code, _, stderr, imported = _main_in_a_fresh_process(argv)
  assert code == 2
  assert stderr.startswith("pipeline.main: error: ") and message in stderr
  assert not imported


def test_help_is_printed_without_tensorflow():
  code, stdout, _, imported = _main_in_a_fresh_process(["--help"])
  assert code == 0 and "--chunk_size" in stdout and "--precision" in stdout
  assert not imported


def test_a_default_run_imports_none_of_the_unused_libraries():
  # A fresh process: what `python -m pipeline.main` imports before a run
  # (main starts TensorFlow with its companions, then imports the job).
  # Afterwards Keras still imports and works (by both of TensorFlow's ways
  # to it), and Beam still measures its model loads' memory.
  script = textwrap.dedent(f"""\
      import json, sys
      import pipeline.main
      from transforms import native_logs
      native_logs.start_tensorflow()
      from pipeline import job
      imported = [m for m in {UNUSED_BY_A_RUN!r} if m in sys.modules]
      import tensorflow as tf
      from tensorflow.keras import layers
      import tensorflow_text
      from apache_beam.ml.inference import base
      print(json.dumps({{
          "imported": imported,
          "keras_dense": tf.keras.layers.Dense is layers.Dense,
          "tf_text_keras": tensorflow_text.keras.layers.ToDense.__name__,
          "beam_resource": base.resource is not None,
      }}))
      """)
  output = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, check=True,
      capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=REPO)).stdout
  report = json.loads(output.strip().splitlines()[-1])
  assert report == {"imported": [], "keras_dense": True,
                    "tf_text_keras": "ToDense", "beam_resource": True}


# ---------------------------------------------------------------------------
# The preprocess model's parts, loaded alone.


def test_tokenize_loaded_alone_gives_the_whole_model_s_wordpieces(
    tiny_model_dir):
  path = f"{tiny_model_dir}/{metadata_lib.PREPROCESS_DIR}"
  whole = tf.saved_model.load(path)
  parts = saved_models.load_parts(path, ["tokenize"])
  texts = tf.constant(_texts())
  assert (parts["tokenize"](texts).to_list() ==
          whole.tokenize(texts).to_list())
  assert ({k: int(v) for k, v in
           parts["tokenize"].get_special_tokens_dict().items()} ==
          {k: int(v) for k, v in
           whole.tokenize.get_special_tokens_dict().items()})
  with pytest.raises(KeyError, match="no nonexistent"):
    saved_models.load_parts(path, ["nonexistent"])


def test_pruned_library_keeps_only_what_tokenize_calls(tiny_model_dir):
  path = f"{tiny_model_dir}/{metadata_lib.PREPROCESS_DIR}"
  saved_model = loader_impl.parse_saved_model(path)
  library = saved_model.meta_graphs[0].graph_def.library
  before = {f.signature.name for f in library.function}
  saved_models._prune_library(saved_model, ["tokenize"])  # pylint: disable=protected-access
  after = {f.signature.name for f in library.function}
  assert after < before and len(after) < len(before) / 2, (len(after),
                                                            len(before))
