"""The Flex Template's program (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

Dataflow's launcher runs it in the worker image with the template parameters
as --name=value flags; it runs `pipeline.main` with them, after turning
--flag=true/false into what the pipeline's flags expect (see
`pipeline.dataflow_job.flex_template_args`). Without --model, the default
model baked into the image is used, at the path the workers have too.
"""

import sys

from pipeline import dataflow_job

if __name__ == "__main__":
  sys.exit(dataflow_job.launch_flex_template(sys.argv[1:]))
