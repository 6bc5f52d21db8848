# Settings shared by run_dataflow.sh, dataflow/build_image.sh and
# dataflow/build_flex_template.sh, so that the image one builds is the image
# the others use. Source it from the repository root, then call
# `resolve_image` with PROJECT and REGION set (and IMAGE, optionally): it
# checks REGION, sets IMAGE to its default when unset and checks it, or
# prints what is wrong and returns 2.
#
#   IMAGE   default: $REGION-docker.pkg.dev/$PROJECT/bert-embeddings/worker:<version>
#           (<version>: the package version in setup.py), in the Artifact
#           Registry repository IMAGE_REPOSITORY (default bert-embeddings).

IMAGE_REPOSITORY="${IMAGE_REPOSITORY:-bert-embeddings}"

# package_version: the version setup.py gives the package (version="...").
package_version() {
  sed -n 's/^[[:space:]]*version="\([^"]*\)".*/\1/p' setup.py | head -n 1
}

_settings_error() {
  echo "$(basename "$0"): $*" >&2
  return 2
}

resolve_image() {
  [[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] ||
    _settings_error "REGION=$REGION is not a Dataflow region (e.g. us-central1)." || return 2
  # A domain-scoped project (example.com:my-project) is example.com/my-project
  # in image paths.
  IMAGE="${IMAGE:-$REGION-docker.pkg.dev/${PROJECT/://}/$IMAGE_REPOSITORY/worker:$(package_version)}"
  [[ "$IMAGE" =~ ^[a-z0-9.-]+(:[0-9]+)?/[^[:space:]]+$ ]] ||
    _settings_error "IMAGE=$IMAGE: give the full image path, e.g. REGION-docker.pkg.dev/PROJECT/REPO/worker:TAG (built by dataflow/build_image.sh)." || return 2
}
