"""One model copy per device (--model_copies N on a worker with N GPUs).

No GPU here: a fresh process splits its CPU into logical devices
(tf.config.set_logical_device_configuration) and the handler spreads its
copies over those, as it does over GPUs. What only a GPU machine shows is
in docs/performance.md.
"""

import json
import os
import subprocess
import sys
import textwrap

from transforms.model_copies import claim_copy_index
from bert_model.devices import copy_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_copy_device_is_index_mod_devices():
  devices = ["/GPU:0", "/GPU:1", "/GPU:2"]
  assert [copy_device(i, devices) for i in range(5)] == [
      "/GPU:0", "/GPU:1", "/GPU:2", "/GPU:0", "/GPU:1"]
  assert copy_device(3, []) is None


def test_copy_indices_are_claimed_once_each(tmp_path):
  claims = [claim_copy_index("run-a", str(tmp_path)) for _ in range(3)]
  assert claims == [0, 1, 2]
  # Another run counts on its own.
  assert claim_copy_index("run-b", str(tmp_path)) == 0


def test_copies_land_on_their_own_logical_devices(tiny_model_dir, tmp_path):
  script = textwrap.dedent(f"""\
      import json
      import numpy as np
      import bert_model  # TensorFlow as the pipeline imports it
      import tensorflow as tf
      cpu, = tf.config.list_physical_devices("CPU")
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
      from bert_model import metadata
      from bert_model.loaded_model import LoadedBertModel, ModelSettings
      from transforms.model_handler import (BertEmbeddingModelHandler,
                                            HandlerSettings)
      settings = ModelSettings(
          preprocess_path="{tiny_model_dir}/" + metadata.PREPROCESS_DIR,
          encoder_path="{tiny_model_dir}/" + metadata.ENCODER_DIR,
          max_seq_length=32)
      handler = BertEmbeddingModelHandler(HandlerSettings(
          settings, model_copies=2, copy_device_type="CPU"))
      copies = [handler.load_model(), handler.load_model()]
      ids = tf.constant([[2, 7, 8, 3], [2, 9, 3, 0]], tf.int32)
      mask = tf.cast(ids > 0, tf.int32)
      texts = ["the quick brown fox", "hello world", "a"]
      default = LoadedBertModel(settings).embed(texts)["embedding"]
      report = []
      for model in copies:
        outputs = model.encode_on_device(ids, mask, tf.zeros_like(ids))
        report.append({{
            "device": model.device,
            "variables": sorted({{
                model._encoder.word_embeddings.device,
                model._encoder.position_embeddings.device}}),
            "output": outputs["embedding"].device,
            "same_vectors": bool(np.array_equal(
                model.embed(texts)["embedding"], default)),
        }})
      print(json.dumps(report))
      """)
  process = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, capture_output=True,
      text=True,
      # The copies' index claims go to the temporary directory.
      env=dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp_path)))
  assert process.returncode == 0, process.stderr[-3000:]
  report = json.loads(process.stdout.strip().splitlines()[-1])
  assert len(report) == 2
  assert sorted(p.name.rsplit(".", 1)[1] for p in tmp_path.glob(
      "bert-embeddings-*.copy*")) == ["copy0", "copy1"]
  for index, copy in enumerate(report):
    device = f"device:CPU:{index}"
    assert copy["device"].endswith(device), copy
    assert len(copy["variables"]) == 1, copy
    assert copy["variables"][0].endswith(device), copy
    assert copy["output"].endswith(device), copy
    assert copy["same_vectors"], copy
