"""The older (v1) TF Hub BERT encoders: list inputs, tuple outputs.

The first TF2 TF Hub BERT encoders (e.g. bert_en_*/1 and /2) take a LIST
[input_word_ids, input_mask, segment_ids] and return a TUPLE (pooled_output,
sequence_output), with no encoder_outputs, and come without a preprocess
model: the vocabulary is a SavedModel asset (`encoder.vocab_file`) and the
lower-case flag a variable (`encoder.do_lower_case`). `call_encoder` calls a
v1 or a v2 encoder alike; `build_v1_preprocessor` makes the project's own
BertPreprocessor from a v1 encoder's vocabulary and flag.
"""

from typing import Tuple

from tensorflow.python.util import tf_inspect  # pylint: disable=g-direct-tensorflow-import

from bert_model.preprocess import BertPreprocessor
from bert_model.preprocess import read_vocab_lines

# Tokens the reference tokenizer (Hugging Face BertTokenizerFast with its
# defaults) matches verbatim in raw text, when they are in the vocabulary.
V1_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _has_training_argument(encoder) -> bool:
  """Whether a restored encoder's __call__ takes `training` (Keras-saved
  models do), checked as tensorflow_hub's KerasLayer checks it."""
  try:
    spec = tf_inspect.getfullargspec(encoder.__call__)
  except TypeError:
    return False
  return "training" in spec.args or "training" in spec.kwonlyargs


def call_encoder(encoder, encoder_format: str, word_ids, mask, type_ids):
  """Calls a v2 or v1 encoder; returns the v2 output dict.

  A v1 encoder gives only pooled_output and sequence_output.
  """
  if encoder_format == "v2":
    return encoder({
        "input_word_ids": word_ids,
        "input_mask": mask,
        "input_type_ids": type_ids,
    })
  inputs = [word_ids, mask, type_ids]  # [input_word_ids, input_mask, segment_ids]
  if _has_training_argument(encoder):
    outputs = encoder(inputs, training=False)
  else:
    outputs = encoder(inputs)
  if isinstance(outputs, dict):
    return outputs
  pooled_output, sequence_output = outputs[0], outputs[1]
  return {"pooled_output": pooled_output, "sequence_output": sequence_output}


def v1_tokenizer_settings(encoder) -> Tuple[str, list, bool]:
  """(vocab path, vocab, lower_case) of a loaded v1 TF Hub BERT encoder.

  Raises ValueError when the SavedModel lacks `vocab_file` (an asset) or
  `do_lower_case` (a bool variable), as the v1 TF Hub BERTs have them.
  """
  vocab_file = getattr(encoder, "vocab_file", None)
  do_lower_case = getattr(encoder, "do_lower_case", None)
  if vocab_file is None or do_lower_case is None:
    raise ValueError(
        "a v1 BERT encoder (list inputs) must carry its tokenizer settings as "
        "`vocab_file` (a SavedModel asset) and `do_lower_case` (a variable), "
        "as the TF Hub v1 BERT encoders do; this one has "
        f"{'no vocab_file' if vocab_file is None else 'a vocab_file'} and "
        f"{'no do_lower_case' if do_lower_case is None else 'do_lower_case'}."
        " Pass a matching --preprocessor instead.")
  path = vocab_file.asset_path.numpy()
  path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
  return path, read_vocab_lines(path), bool(do_lower_case.numpy())


def build_v1_preprocessor(encoder, max_seq_length: int):
  """The project's BertPreprocessor from a v1 encoder's vocab and flag.

  The same tokenizer as the project's exports (a cased model keeps case and
  accents); the special tokens matched in raw text are those the reference
  tokenizer matches by default.
  """
  _, vocab, lower_case = v1_tokenizer_settings(encoder)
  special = tuple(sorted(t for t in V1_SPECIAL_TOKENS if t in set(vocab)))
  return BertPreprocessor(vocab, lower_case, special, max_seq_length)
