"""The machine a benchmark figure was measured on: CPU model, ISA, cores.

Ratios move with the CPU (the encoder's matmuls use AVX-512, VNNI, BF16 or
AMX when there), so every benchmark records this beside its figures.
"""

import os
import platform

# ISA flags of /proc/cpuinfo that change the encoder's speed.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
              "amx_tile")


def machine() -> dict:
  """{"cpu": model name, "isa": [flags], "cpus": count, "python": version}."""
  description = {"cpu": platform.processor() or platform.machine(),
                 "isa": [], "cpus": os.cpu_count(),
                 "python": platform.python_version()}
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return description
  for line in info.splitlines():
    if line.startswith("model name"):
      description["cpu"] = line.split(":", 1)[1].strip()
    elif line.startswith("flags"):
      flags = set(line.split(":", 1)[1].split())
      description["isa"] = [flag for flag in _ISA_FLAGS if flag in flags]
      break
  return description
