#!/usr/bin/env bash
# Builds the Flex Template of the embedding job, so a scheduler can launch it
# by its spec path with only the run's parameters (input, output, ...).
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \
#   [BUILD_IMAGE=true] dataflow/build_flex_template.sh
#
# IMAGE defaults as in run_dataflow.sh (dataflow/settings.sh):
# $REGION-docker.pkg.dev/$PROJECT/bert-embeddings/worker:<package version>.
#
# 1. regenerates dataflow/flex_template_metadata.json from the pipeline's
#    flags (python -m pipeline.dataflow_job flex-metadata), so the template
#    declares every flag there is;
# 2. with BUILD_IMAGE=true, builds and pushes IMAGE with
#    dataflow/build_image.sh (Cloud Build, no local Docker needed);
# 3. writes the template spec to TEMPLATE (default
#    gs://$BUCKET/templates/bert-embeddings.json) with `gcloud dataflow
#    flex-template build`: the image is both the launcher and the worker
#    image; GPU, machine type, Runner v2 and worker limits are the template's
#    defaults (GPU_TYPE, GPU_COUNT, MACHINE_TYPE, MAX_WORKERS as in
#    run_dataflow.sh).
# It prints the command that launches a job from the template.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=build_flex_template.sh
fail() { echo "$PROG: $*" >&2; exit 2; }

missing=()
for name in PROJECT REGION BUCKET; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] ||
  fail "missing setting(s): ${missing[*]} (environment variables; see the top of this script)."
BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
# shellcheck source=dataflow/settings.sh
source dataflow/settings.sh
resolve_image || exit 2
TEMPLATE="${TEMPLATE:-gs://$BUCKET/templates/bert-embeddings.json}"
case "$TEMPLATE" in gs://*.json) ;; *) fail "TEMPLATE=$TEMPLATE: use a gs://.../NAME.json path." ;; esac
GPU_TYPE="${GPU_TYPE:-t4}"
GPU_COUNT="${GPU_COUNT:-1}"
MACHINE_TYPE="${MACHINE_TYPE:-}"
MAX_WORKERS="${MAX_WORKERS:-4}"
DISK_SIZE_GB="${DISK_SIZE_GB:-50}"
[[ "$MAX_WORKERS" =~ ^[1-9][0-9]*$ ]] || fail "MAX_WORKERS=$MAX_WORKERS: use a positive whole number."
# shellcheck source=dataflow/gpu.sh
source dataflow/gpu.sh
resolve_gpu || exit 2
command -v "${GCLOUD:-gcloud}" >/dev/null ||
  fail "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)."
GCLOUD="${GCLOUD:-gcloud}"

PYTHON=.venv/bin/python
[ -x "$PYTHON" ] || fail "no ./.venv: run ./run_local.sh or bash run_tests.sh once to create it."
METADATA="${METADATA:-dataflow/flex_template_metadata.json}"
"$PYTHON" -m pipeline.dataflow_job flex-metadata --output "$METADATA"
echo "Template metadata: $METADATA ($("$PYTHON" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['parameters']))" "$METADATA") parameters)"

if [ "${BUILD_IMAGE:-false}" = true ]; then
  IMAGE="$IMAGE" GCLOUD="$GCLOUD" dataflow/build_image.sh
fi

"$GCLOUD" dataflow flex-template build "$TEMPLATE" \
  --project="$PROJECT" \
  --image="$IMAGE" \
  --sdk-language=PYTHON \
  --metadata-file="$METADATA" \
  --temp-location="gs://$BUCKET/tmp" \
  --staging-location="gs://$BUCKET/staging" \
  --worker-machine-type="$MACHINE_TYPE" \
  --max-workers="$MAX_WORKERS" \
  --additional-experiments="use_runner_v2,$WORKER_ACCELERATOR"

cat <<EOF

Template written to $TEMPLATE. Launch a run (a scheduler sends the same
request; the output directory must be new for each run):

  $GCLOUD dataflow flex-template run "bert-embeddings-\$(date -u +%Y%m%d-%H%M%S)" \\
    --project=$PROJECT --region=$REGION \\
    --template-file-gcs-location=$TEMPLATE \\
    --parameters="input=gs://$BUCKET/corpus/*.jsonl,output=gs://$BUCKET/runs/\$(date -u +%Y%m%d),model_copies=$GPU_COUNT,sdk_container_image=$IMAGE,disk_size_gb=$DISK_SIZE_GB"
EOF
