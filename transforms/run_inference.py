"""Beam's RunInference API, imported without its ModelManager.

`apache_beam.ml.inference.base` imports the ModelManager (which imports
PyTorch and SciPy) at import time, inside a try block, for RunInference's
`use_model_manager` option, which this pipeline does not use; Beam imports it
itself when that option is set. Hidden while the module is imported
(bert_model/lean_imports.py), it costs nothing. The same try block also sets
`resource` (what Beam measures a model load's memory with) to None when the
ModelManager's import fails; it is put back.
"""

import sys

from bert_model.lean_imports import import_lean

_base = import_lean("apache_beam.ml.inference.base",
                    hidden=("apache_beam.ml.inference.model_manager",))
if _base.resource is None and _base.ModelManager is None:
  # Beam's try block imported it before the ModelManager (not on Windows).
  _base.resource = sys.modules.get("resource")

KeyedModelHandler = _base.KeyedModelHandler
ModelHandler = _base.ModelHandler
PredictionResult = _base.PredictionResult
RunInference = _base.RunInference
