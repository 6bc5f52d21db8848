"""tf.function for a model object's methods, each traced once.

The model objects (LoadedBertModel, DocumentChunker) give their graph
functions a fixed input signature, so each traces once per object.
TensorFlow counts traces by the method's code, across objects, so a process
that loads a sixth model (a test suite, a notebook of Embedders) would be
warned of "excessive retracing" that is not there. The warning is turned
off for these functions, as TensorFlow turns it off for the functions of a
loaded SavedModel (saved_model/function_deserialization.py).
"""

import tensorflow as tf


def traced_once(method, input_signature, **kwargs):
  """tf.function(method) with a fixed signature and without autograph: the
  graphs branch only on fixed settings, never on tensors, and converting
  them would add ~0.4 s to every worker's start."""
  function = tf.function(method, input_signature=input_signature,
                         autograph=False, **kwargs)
  function._omit_frequent_tracing_warning = True  # pylint: disable=protected-access
  return function
