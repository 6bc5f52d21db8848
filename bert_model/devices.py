"""Where a model copy runs: with several copies on a machine, one per GPU.

With `--model_copies N` Beam loads N copies of the model on each worker
machine; left to TensorFlow, every copy would go on the first GPU. Copy i
goes on device i mod n of the n devices of a type (GPU) that TensorFlow
lists, so N copies on a worker with N GPUs use one GPU each.
"""

from typing import List, Optional, Sequence

import tensorflow as tf


def logical_devices(device_type: str) -> List[str]:
  """TensorFlow's logical devices of a type ("GPU", or "CPU" split into
  logical devices), by name ("/job:localhost/replica:0/task:0/device:GPU:1").
  Initialises TensorFlow's devices: process-wide settings (GPU memory
  growth) must come first."""
  return [device.name for device in tf.config.list_logical_devices(device_type)]


def copy_device(copy_index: int, devices: Sequence[str]) -> Optional[str]:
  """The device of model copy `copy_index` among `devices`; None (the
  default placement) when there are none."""
  if not devices:
    return None
  return devices[copy_index % len(devices)]
