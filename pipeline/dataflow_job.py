"""The command line of the Dataflow helpers (pipeline/dataflow_description.py).

  # What `run_dataflow.sh --dry_run` runs: writes the Dataflow job (JSON)
  # that `python -m pipeline.main PIPELINE_ARGS` would submit, offline.
  python -m pipeline.dataflow_job describe --job_file dataflow_job.json \\
      [--model_metadata_dir LOCAL_MODEL_DIR] PIPELINE_ARGS...

  # The Flex Template metadata, made from the pipeline's own flags.
  python -m pipeline.dataflow_job flex-metadata --output dataflow/flex_template_metadata.json
"""

import sys

from transforms import native_logs


def _dataflow_description():
  # Imported here, not at the top: the helpers import the pipeline, and
  # TensorFlow with it, whose start-up notices main captures
  # (transforms/native_logs.py).
  from pipeline import dataflow_description  # pylint: disable=g-import-not-at-top
  return dataflow_description


def main(argv=None) -> int:
  with native_logs.captured():
    native_logs.start_tensorflow()
    dataflow_description = _dataflow_description()
  return dataflow_description.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  sys.exit(main())
