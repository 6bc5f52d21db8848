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
#
# --dry_run checks the settings, regenerates the metadata and prints the
# gcloud commands instead of running them: no gcloud, credentials or network.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=build_flex_template.sh
fail() { echo "$PROG: $*" >&2; exit 2; }

DRY_RUN=false
for arg in "$@"; do
  case "$arg" in
    --dry_run|--dry-run) DRY_RUN=true ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $arg (settings are environment variables; see --help)." ;;
  esac
done

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
[[ "$DISK_SIZE_GB" =~ ^[1-9][0-9]*$ ]] && [ "$DISK_SIZE_GB" -ge 30 ] ||
  fail "DISK_SIZE_GB=$DISK_SIZE_GB: the GPU worker image alone takes ~10 GB unpacked; use a whole number of GB, 30 or more (default 50)."
# shellcheck source=dataflow/gpu.sh
source dataflow/gpu.sh
resolve_gpu || exit 2
[ "$DRY_RUN" = true ] || command -v "${GCLOUD:-gcloud}" >/dev/null ||
  fail "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)."
GCLOUD="${GCLOUD:-gcloud}"

PYTHON=.venv/bin/python
[ -x "$PYTHON" ] || fail "no ./.venv: run ./run_local.sh or bash run_tests.sh once to create it."
METADATA="${METADATA:-dataflow/flex_template_metadata.json}"
"$PYTHON" -m pipeline.dataflow_job flex-metadata --output "$METADATA"
echo "Template metadata: $METADATA ($("$PYTHON" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['parameters']))" "$METADATA") parameters)"

# run COMMAND...: runs it, or with --dry_run prints it, quoted for a shell.
run() {
  if [ "$DRY_RUN" = true ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

if [ "${BUILD_IMAGE:-false}" = true ]; then
  if [ "$DRY_RUN" = true ]; then
    IMAGE="$IMAGE" GCLOUD="$GCLOUD" dataflow/build_image.sh --dry_run
  else
    IMAGE="$IMAGE" GCLOUD="$GCLOUD" dataflow/build_image.sh
  fi
fi

run "$GCLOUD" dataflow flex-template build "$TEMPLATE" \
  --project="$PROJECT" \
  --image="$IMAGE" \
  --sdk-language=PYTHON \
  --metadata-file="$METADATA" \
  --temp-location="gs://$BUCKET/tmp" \
  --staging-location="gs://$BUCKET/staging" \
  --worker-machine-type="$MACHINE_TYPE" \
  --max-workers="$MAX_WORKERS" \
  --additional-experiments="use_runner_v2,$WORKER_ACCELERATOR"

[ "$DRY_RUN" = true ] && verb="would be written" || verb=written
cat <<EOF

Template $verb to $TEMPLATE. Launch a run (a scheduler sends the same
request; the output directory must be new for each run):

  $GCLOUD dataflow flex-template run "bert-embeddings-\$(date -u +%Y%m%d-%H%M%S)" \\
    --project=$PROJECT --region=$REGION \\
    --template-file-gcs-location=$TEMPLATE \\
    --parameters="input=gs://$BUCKET/corpus/*.jsonl,output=gs://$BUCKET/runs/\$(date -u +%Y%m%d),model_copies=$GPU_COUNT,sdk_container_image=$IMAGE,disk_size_gb=$DISK_SIZE_GB"
EOF
