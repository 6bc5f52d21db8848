#!/usr/bin/env bash
# Builds the worker image from ./Dockerfile with Cloud Build (no local Docker
# needed) and pushes it to IMAGE, where run_dataflow.sh and
# dataflow/build_flex_template.sh look for it.
#
#   PROJECT=my-project REGION=us-central1 dataflow/build_image.sh [--dry_run]
#
# Settings (environment), read as run_dataflow.sh reads them:
#   PROJECT, REGION   required
#   IMAGE             default $REGION-docker.pkg.dev/$PROJECT/bert-embeddings/worker:<version>,
#                     <version> being the package version in setup.py
#                     (dataflow/settings.sh); rebuild when the code changes
#   BUILD_MACHINE_TYPE  Cloud Build machine (default e2-highcpu-8)
#   BUILD_TIMEOUT       default 2h (the CUDA wheels make a large image)
# The Artifact Registry repository of a *-docker.pkg.dev IMAGE is created
# when it does not exist yet.
#
# --dry_run prints the gcloud commands instead of running them: no gcloud,
# no credentials and no network needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PROG=build_image.sh
fail() { echo "$PROG: $*" >&2; exit 2; }

DRY_RUN=false
for arg in "$@"; do
  case "$arg" in
    --dry_run|--dry-run) DRY_RUN=true ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $arg (see --help)." ;;
  esac
done

missing=()
for name in PROJECT REGION; do
  [ -n "${!name:-}" ] || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] ||
  fail "missing setting(s): ${missing[*]} (environment variables, e.g. PROJECT=my-project REGION=us-central1 $0)."
# shellcheck source=dataflow/settings.sh
source dataflow/settings.sh
resolve_image || exit 2
GCLOUD="${GCLOUD:-gcloud}"

# run COMMAND...: runs it, or with --dry_run prints it, quoted for a shell.
run() {
  if [ "$DRY_RUN" = true ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

if [ "$DRY_RUN" != true ]; then
  command -v "$GCLOUD" >/dev/null ||
    fail "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or see the commands with --dry_run."
fi

# The Artifact Registry repository, REGION-docker.pkg.dev/PROJECT/REPOSITORY/...
if [[ "$IMAGE" =~ ^([a-z0-9-]+)-docker\.pkg\.dev/[^/]+/([^/]+)/ ]]; then
  location="${BASH_REMATCH[1]}" repository="${BASH_REMATCH[2]}"
  describe=("$GCLOUD" artifacts repositories describe "$repository"
            --project="$PROJECT" --location="$location")
  create=("$GCLOUD" artifacts repositories create "$repository"
          --project="$PROJECT" --location="$location"
          --repository-format=docker
          --description="Worker images of the BERT batch embedding pipeline")
  if [ "$DRY_RUN" = true ]; then
    echo "# Create the image repository if it does not exist yet:"
    run "${describe[@]}"
    echo "# (if that fails:)"
    run "${create[@]}"
  elif ! "${describe[@]}" >/dev/null 2>&1; then
    echo "Creating the Artifact Registry repository $repository in $location"
    "${create[@]}"
  fi
fi

[ "$DRY_RUN" = true ] && echo "# Build ./Dockerfile and push it:"
run "$GCLOUD" builds submit --project="$PROJECT" --region="$REGION" \
  --tag="$IMAGE" --machine-type="${BUILD_MACHINE_TYPE:-e2-highcpu-8}" \
  --timeout="${BUILD_TIMEOUT:-2h}" .
if [ "$DRY_RUN" != true ]; then
  echo "Image $IMAGE built and pushed; run_dataflow.sh uses it."
fi
