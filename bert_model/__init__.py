"""The model library: BERT checkpoints, export, loading and calling.

TensorFlow and tensorflow_text are imported here, before any module of the
package imports them, without the Keras import they make for nothing
(lean_imports.py); every module below shares these imports.
"""

from bert_model.lean_imports import import_lean

import_lean("tensorflow", hidden=("keras", "tf_keras"))
import_lean("tensorflow_text", deferred=("tensorflow_text.python.keras",))
