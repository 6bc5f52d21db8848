"""The encoder call planner: how a batch of texts is cut into encoder calls.

An encoder call is padded to its longest text, and costs TensorFlow a fixed
dispatch on top of the padded tokens' work. `plan_model_calls` sorts a
batch's texts by their real token counts and cuts them into the consecutive
runs of least estimated cost (`call_cost`), each within a padded-token
budget. Deterministic for given lengths.
"""

from typing import Sequence

import numpy as np

# The cost model of one encoder call that plan_model_calls minimises, in units
# of one padded token's time: FIXED + rows * length * (1 + length / ATTENTION).
# FIXED is TensorFlow's per-call dispatch plus the inefficiency of small
# matrices; ATTENTION the length at which attention's quadratic work equals
# the linear part. Fitted to encoder timings of the default model on a 2-core
# AVX-512 CPU by `python -m benchmarks.call_cost` (4.7 ms fixed = 66 tokens,
# 2227; 13,800 tokens/s at best; see benchmarks/README.md). Only the ratio
# matters, and it moves slowly with the model's size.
_CALL_COST_FIXED_TOKENS = 64.0
_CALL_COST_ATTENTION_LENGTH = 2048.0


def call_cost(rows, length):
  """Estimated cost of one encoder call on [rows, length] padded inputs, in
  units of the time one padded token takes (see _CALL_COST_* above)."""
  return _CALL_COST_FIXED_TOKENS + rows * length * (
      1.0 + length / _CALL_COST_ATTENTION_LENGTH)


def plan_model_calls(lengths: Sequence[int], max_tokens: int) -> list:
  """Cuts texts with these real token counts into encoder calls.

  A call is padded to its longest text: it costs about `call_cost(rows,
  longest)`. The texts are sorted by length and cut into consecutive runs
  that minimise the summed cost (a dynamic programme: fewer calls save the
  fixed cost, shorter calls save pads), each call holding at most
  max_tokens padded tokens (a text longer than that gets a call of its
  own). Deterministic for given lengths. Returns arrays of indices into
  `lengths`, in ascending length order.
  """
  lengths = np.asarray(lengths, dtype=np.int64)
  n = len(lengths)
  if not n:
    return []
  order = np.argsort(lengths, kind="stable")
  ordered = lengths[order]
  best = np.zeros(n + 1)  # best[j]: least cost of the first j sorted texts
  start_of = np.zeros(n + 1, dtype=np.int64)
  for j in range(1, n + 1):
    longest = int(ordered[j - 1])
    most_rows = max(1, max_tokens // max(longest, 1))
    starts = np.arange(max(0, j - most_rows), j)
    costs = best[starts] + call_cost(j - starts, longest)
    k = int(np.argmin(costs))  # the first of equal costs: deterministic
    best[j], start_of[j] = costs[k], starts[k]
  calls, end = [], n
  while end:
    start = int(start_of[end])
    calls.append(order[start:end])
    end = start
  return calls[::-1]
