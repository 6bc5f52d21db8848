"""Beam's own options, checked with the pipeline's flags before anything
runs: Beam checks them only when the pipeline is run (after planning, which
may export a model) and answers with a traceback.

- `--runner` names a runner Beam knows (or a PipelineRunner class path),
  other than the portable ones (Prism, Flink, Spark), which fetch binaries
  from the internet;
- `--direct_num_workers` is 0 (one per core) to 64 (or the core count);
- a service runner (Dataflow) has a project and a region, as Beam's own
  validator checks them (PipelineOptionsValidator.validate_cloud_options:
  no network; the region may come from gcloud's configuration). The temp
  and staging locations are left to Beam, which may make a default bucket.
"""

import os

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.pipeline_options_validator import (
    PipelineOptionsValidator)
from apache_beam.runners.runner import create_runner

from pipeline.errors import ConfigError
from pipeline.local_runner import LOCAL_RUNNER_NAMES

# At most this many local workers, or one per core if there are more.
MAX_DIRECT_NUM_WORKERS = 64


def check_runner_options(options: PipelineOptions) -> None:
  """Raises ConfigError naming the option and the fix."""
  workers = options.view_as(DirectOptions).direct_num_workers
  most = max(MAX_DIRECT_NUM_WORKERS, os.cpu_count() or 1)
  if workers is not None and not 0 <= workers <= most:
    # Each is a thread or, multi-processing, a process loading the model.
    raise ConfigError(
        f"--direct_num_workers={workers}: must be 0 (one per core) to "
        f"{most}.")
  name = options.view_as(StandardOptions).runner
  if not isinstance(name, str) or name in LOCAL_RUNNER_NAMES:
    return
  try:
    runner = create_runner(name)
  except (ValueError, ImportError) as error:
    raise ConfigError(f"--runner={name}: {error}") from None
  if "PortableRunner" in (cls.__name__ for cls in type(runner).__mro__):
    # Prism, Flink, Spark and PortableRunner itself fetch a binary or a job
    # server from the internet before they start. (By name: importing the
    # class would cost every run's start-up for a check of other runners.)
    raise ConfigError(
        f"--runner={name}: the pipeline runs on DirectRunner (the default: "
        "local, with no outside connection) or DataflowRunner.")
  validator = PipelineOptionsValidator(options, runner)
  if validator.is_service_runner():
    errors = validator.validate_cloud_options(
        options.view_as(GoogleCloudOptions))
    if errors:
      raise ConfigError(
          f"--runner={name}: {' '.join(errors)} Dataflow runs need "
          "--project and --region (and a gs:// --temp_location).")
