#!/usr/bin/env bash
# Builds the image from the project's Dockerfile on a machine with no container registry (the
# project's own machines and CI): lints it with hadolint, makes the local Debian base
# (tools/image/base.sh), builds with buildah on that base, then checks that the image starts as
# the chart runs it: uid 65532, read-only root, no capabilities, and reports the pinned version.
# IMAGE and VERSION come from the Makefile (pyproject.toml's version).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${IMAGE:?IMAGE is not set (run make image-local)}" "${VERSION:?VERSION is not set}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
base=${BASE_IMAGE:-localhost/sidecar-injector-base:bookworm}

missing=()
for tool in podman buildah debootstrap runc; do command -v "$tool" > /dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "image: installing ${missing[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap runc > /dev/null
fi

"$root/.venv/bin/hadolint" "$root/Dockerfile"
BASE_IMAGE=$base bash "$here/base.sh"
# What the build reads (the Dockerfile's COPY sources, the base, the version), as a label: an
# image built from the same inputs is current and is not built again.
digest=$( (cd "$root" && find Dockerfile pyproject.toml constraints.txt README.md webhook policies \
  -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum;
  podman image inspect --format '{{.Id}}' "$base"; echo "$VERSION") | sha256sum | cut -d' ' -f1)
current=$(podman image inspect --format '{{index .Labels "io.sidecar-injector.inputs"}}' "$IMAGE" \
  2>/dev/null || true)
build() {
  # This machine's way to the package index (its CA bundle, an index URL if one is set) reaches
  # the build's RUN steps as read-only mounts, never the image: pip in the build stage sees the
  # same index the host's pip does.
  local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}} pipconf start
  pipconf=$(mktemp)
  trap 'rm -f "$pipconf"' RETURN
  { echo "[global]"; echo "cert = /etc/ssl/certs/ca-certificates.crt"
    [ -n "${PIP_INDEX_URL:-}" ] && echo "index-url = $PIP_INDEX_URL"; } > "$pipconf"
  local mounts=(--volume "$pipconf:/etc/pip.conf:ro")
  [ -f "$ca" ] && mounts+=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
  start=$SECONDS
  # chroot isolation and the host network: the RUN step reaches PyPI; --pull=never: no registry
  buildah bud --quiet --pull=never --isolation chroot --network host --layers=false "${mounts[@]}" \
    --build-arg "BASE=$base" --build-arg "VERSION=$VERSION" \
    --label "io.sidecar-injector.inputs=$digest" -t "$IMAGE" "$root" > /dev/null
  echo "image: built $IMAGE on $base in $((SECONDS - start))s"
}
if [ "$current" = "$digest" ]; then
  echo "image: $IMAGE is current (built from the same inputs)"
else
  build
fi

run=(podman run --rm --network none --read-only --user 65532:65532 --cap-drop ALL
     --security-opt no-new-privileges "$IMAGE")
said=$("${run[@]}" --version)
[ "$said" = "sidecar-injector, version $VERSION" ] \
  || { echo "image: $IMAGE says '$said', not version $VERSION"; exit 1; }
"${run[@]}" policies check /etc/sidecar-injector/policies
labels=$(podman image inspect "$IMAGE" --format '{{index .Labels "org.opencontainers.image.version"}}')
[ "$labels" = "$VERSION" ] || { echo "image: label org.opencontainers.image.version is '$labels'"; exit 1; }
echo "image: $IMAGE runs as 65532 on a read-only root and reports $VERSION"
