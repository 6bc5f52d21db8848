"""The model library: BERT checkpoints, export, loading and calling.

TensorFlow and tensorflow_text are armed here, before any module of the
package imports them: whichever module imports them first imports them
without the Keras import they make for nothing (lean_imports.py). Arming
imports nothing, so the modules that need no TensorFlow (choices.py) stay
quick to import.
"""

from bert_model.lean_imports import import_lean_when_imported

import_lean_when_imported("tensorflow", hidden=("keras", "tf_keras"))
import_lean_when_imported("tensorflow_text",
                          deferred=("tensorflow_text.python.keras",))
