"""The Flex Template's program (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

Dataflow's launcher runs it in the worker image with the template parameters
as --name=value flags; it runs `pipeline.main` with them, after turning
--flag=true/false into what the pipeline's flags expect (see
`pipeline.flex_template.flex_template_args`). Without --model, the default
model baked into the image is used, at the path the workers have too.
"""

import sys

from pipeline import flex_template

if __name__ == "__main__":
  sys.exit(flex_template.launch_flex_template(sys.argv[1:]))
