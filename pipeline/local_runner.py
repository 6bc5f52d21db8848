"""The local runner: Beam's DirectRunner minus its network step.

Beam's default DirectRunner (SwitchingDirectRunner) first tries the Prism runner,
which downloads a Go binary from GitHub on first use. Local runs of this
pipeline must open no outside connection, so `--runner=DirectRunner` (or no
runner at all) is mapped to this runner: the same portable FnApiRunner that
DirectRunner falls back to, with the same pipeline options handed to its
workers. `--direct_num_workers` and `--direct_running_mode` work as usual.
"""

import contextlib
import gc

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineRunner

# Runner names that mean "run it here" and are served by LocalRunner.
LOCAL_RUNNER_NAMES = ("DirectRunner", "SwitchingDirectRunner", "LocalRunner")


class LocalRunner(PipelineRunner):
  """Runs a batch pipeline in this process (or worker subprocesses)."""

  def run_pipeline(self, pipeline, options):
    # Imported here, as DirectRunner does, to keep the import of this module
    # cheap for Dataflow submissions that never run locally.
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded_options = JobServiceHandle.encode_pipeline_options(
        options.get_all_options())
    provision_info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded_options))
    with batch_garbage_collection():
      return fn_runner.FnApiRunner(
          provision_info=provision_info).run_pipeline(pipeline, options)


# Allocations between young-generation collections while a run lasts (Python's
# default is 700).
_RUN_GC_THRESHOLD = (50_000, 20, 100)


@contextlib.contextmanager
def batch_garbage_collection():
  """Cheaper garbage collection for one in-process batch run.

  TensorFlow and Beam leave millions of long-lived objects that every full
  collection walks again, while a run allocates a few records per document:
  on 10,000 documents collection cost ~5% of the wall time. Freezing the
  objects that exist at the start takes them out of every collection for the
  run; a higher young-generation threshold collects less often. Both are
  undone afterwards, for callers that go on (tests, notebooks). A process
  that froze objects itself keeps its own freeze (unfreezing is all or
  nothing).
  """
  threshold = gc.get_threshold()
  freeze = gc.get_freeze_count() == 0
  if freeze:
    gc.freeze()
  gc.set_threshold(*_RUN_GC_THRESHOLD)
  try:
    yield
  finally:
    gc.set_threshold(*threshold)
    if freeze:
      gc.unfreeze()


def is_local_runner(options: PipelineOptions) -> bool:
  runner = options.view_as(StandardOptions).runner
  return runner is None or (
      isinstance(runner, str) and runner in LOCAL_RUNNER_NAMES)
