"""The files of a checkpoint directory read as they are, without torch.

Weights are read without torch: safetensors is a JSON header plus raw arrays,
and a torch `.bin` is a zip of raw storages plus a pickle that only names them.
The pickle is read with an unpickler that admits nothing but tensor rebuilding,
so a checkpoint cannot run code on the machine that converts it. JSON side
files are read into what they must be, or refused naming the file
(CheckpointError). checkpoint.py makes a model of what they hold.
"""

import collections
import hashlib
import json
import os
import pickle
import struct
import zipfile
import zlib
from typing import Dict, Optional

import numpy as np


class CheckpointError(ValueError):
  """The checkpoint directory cannot be converted; the message says why."""


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from e
  except IsADirectoryError:
    raise CheckpointError(
        f"{path} is a directory; it must be a JSON file.") from None


# --- safetensors -------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Reads a .safetensors file: 8-byte header size, JSON header, raw data."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise CheckpointError(f"{path} is not a safetensors file (too short).")
  (header_size,) = struct.unpack("<Q", data[:8])
  if header_size > len(data) - 8:
    raise CheckpointError(f"{path} is not a safetensors file (bad header).")
  try:
    header = json.loads(data[8:8 + header_size])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} is not a safetensors file: {e}") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{path} is not a safetensors file (bad header).")
  body = memoryview(data)[8 + header_size:]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = info.get("dtype") if isinstance(info, dict) else None
    if not isinstance(dtype, str) or (
        dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES):
      raise CheckpointError(
          f"{path}: tensor {name} has unsupported dtype {dtype}.")
    try:
      tensors[name] = _safetensors_tensor(body, info)
    except (KeyError, TypeError, ValueError) as e:
      # A cut or damaged file: offsets past its end, shapes that do not fit.
      raise CheckpointError(
          f"{path} is damaged or cut short (tensor {name}: {e}); "
          "download it again.") from e
  return tensors


def _safetensors_tensor(body: memoryview, info: dict) -> np.ndarray:
  start, end = info["data_offsets"]
  if not 0 <= start <= end <= len(body):
    raise ValueError(
        f"its bytes {start}..{end} lie outside the file's {len(body)}")
  raw = body[start:end]
  if info["dtype"] == "BF16":
    array = _storage_array("bfloat16", raw)
  else:
    array = _storage_array(_SAFETENSORS_DTYPES[info["dtype"]], raw)
  return array.reshape(info["shape"])


# --- torch pytorch_model.bin, without torch -----------------------------------

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}


class _StorageType:

  def __init__(self, name):
    self.name = name


def _storage_array(dtype, buffer: bytes) -> np.ndarray:
  if dtype == "bfloat16":
    # bfloat16 is the upper half of a float32.
    return (np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16).view(
        np.float32)
  return np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<"))


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  flat = _storage_array(*storage)
  size, stride = tuple(size), tuple(stride)
  # as_strided reads wherever the layout points: a damaged file's offset,
  # sizes or strides must not reach past its storage (a crash, or other
  # memory's bytes as weights).
  if (len(size) != len(stride) or offset < 0 or
      any(n < 0 for n in size) or any(st < 0 for st in stride)):
    raise ValueError(f"a tensor's layout is invalid (offset {offset}, size "
                     f"{size}, stride {stride})")
  if 0 in size:
    return np.zeros(size, dtype=flat.dtype)
  last = offset + sum((n - 1) * st for n, st in zip(size, stride))
  if last >= len(flat):
    raise ValueError(f"a tensor reaches element {last} of a storage of "
                     f"{len(flat)}")
  return np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size,
      strides=tuple(st * flat.itemsize for st in stride)).copy()


class _TorchUnpickler(pickle.Unpickler):
  """Admits only what a state dict of plain tensors needs."""

  def __init__(self, file, archive, prefix):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2",
                                             "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(name)
    raise CheckpointError(
        f"refusing to load {module}.{name} from a checkpoint; only plain "
        "tensors are supported (convert the checkpoint to safetensors).")

  def persistent_load(self, pid):
    # ("storage", storage_type, key, location, numel)
    storage_type, key = pid[1], pid[2]
    dtype = _TORCH_STORAGE_DTYPES[storage_type.name]
    return dtype, self._archive.read(f"{self._prefix}/data/{key}")


def read_torch_bin(path: str) -> Dict[str, np.ndarray]:
  """Reads a zip-format pytorch_model.bin (torch >= 1.6) into numpy."""
  if not zipfile.is_zipfile(path):
    raise CheckpointError(
        f"{path} is not a zip-format torch checkpoint; re-save it with "
        "torch >= 1.6 or convert it to model.safetensors.")
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not pickles:
      raise CheckpointError(f"{path} has no data.pkl; not a torch checkpoint.")
    prefix = pickles[0][:-len("/data.pkl")]
    try:
      with archive.open(pickles[0]) as f:
        state = _TorchUnpickler(f, archive, prefix).load()
    except CheckpointError:
      raise
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError,
            TypeError, IndexError, zipfile.BadZipFile, zlib.error) as error:
      raise CheckpointError(
          f"{path} is damaged ({type(error).__name__}: {error}); download "
          "it again, or convert it to model.safetensors.") from None
  if not isinstance(state, dict):
    raise CheckpointError(f"{path} does not hold a state dict of tensors.")
  return dict(state)


def optional_json_object(path: str, name: str, holds: str) -> Optional[dict]:
  """The JSON object of the checkpoint's file `name`; None without the
  file. Anything but an object is refused, naming the file."""
  file_path = os.path.join(path, name)
  if not os.path.exists(file_path):
    return None
  value = read_json(file_path)
  if not isinstance(value, dict):
    raise CheckpointError(
        f"{file_path}: holds a JSON {type(value).__name__}, not {holds}; fix "
        "or remove the file.")
  return value
