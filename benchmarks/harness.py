"""A measurement in a forked child process, cut off by time or memory.

Shared by the benchmarks that run a Beam pipeline (or any other function)
in a child of their own, so that it can be stopped at a time limit, or when
its resident memory grows past MAX_CHILD_RSS_MB, and so that its peak RSS
is its own: neighbours_benchmark.py and duplicates_benchmark.py.
"""

import multiprocessing
import os
import resource
import time
import traceback

# A child above this resident size is stopped (the machine is shared: better
# a failed measurement than the kernel's OOM killer picking a victim).
MAX_CHILD_RSS_MB = 14_000


def peak_rss_mb() -> float:
  """This process's peak resident set size (the kernel's high-water mark)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb(pid: int) -> float:
  """A process's current resident set size; 0 when it cannot be read."""
  try:
    with open(f"/proc/{pid}/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    return 0.0


def in_child(function, timeout: float, *args):
  """function(*args) in a forked child: (result, None) or (None, error).

  `function` returns a dict, to which the child adds its "peak_rss_mb". The
  child is killed after `timeout` seconds or above MAX_CHILD_RSS_MB."""
  context = multiprocessing.get_context("fork")
  parent_end, child_end = context.Pipe(duplex=False)

  def target():
    try:
      result = function(*args)
      result["peak_rss_mb"] = peak_rss_mb()
      child_end.send((result, None))
    except BaseException:  # pylint: disable=broad-except
      child_end.send((None, traceback.format_exc()))

  process = context.Process(target=target, daemon=True)
  process.start()
  child_end.close()
  deadline = time.monotonic() + timeout
  peak = 0.0
  while time.monotonic() < deadline:
    if parent_end.poll(1.0):
      try:
        result = parent_end.recv()
      except EOFError:
        result = (None, f"child died (exit code {process.exitcode}; "
                  f"peak RSS seen {peak:.0f} MB)")
      process.join()
      return result
    peak = max(peak, rss_mb(process.pid))
    if peak > MAX_CHILD_RSS_MB:
      process.kill()
      process.join()
      return None, (f"stopped above {MAX_CHILD_RSS_MB} MB RSS after "
                    f"{timeout - (deadline - time.monotonic()):.0f} s")
  process.kill()
  process.join()
  return None, f"timed out after {timeout:.0f} s"
