#!/usr/bin/env bash
# Writes the release artefacts of VERSION (pyproject.toml's) to dist/: the wheel and sdist, the
# packaged chart, and the image (built by tools/image/build.sh) as an OCI archive, with SHA256SUMS.
# docs/install.md says how to load the archive and push it to your own registry.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${IMAGE:?IMAGE is not set (run make dist)}" "${VERSION:?VERSION is not set}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
dist="$root/dist"
rm -rf "$dist"
mkdir -p "$dist"
"$root/.venv/bin/python" -m build --outdir "$dist" "$root" > /dev/null
"$root/bin/helm" package "$root/charts/sidecar-injector" --destination "$dist" > /dev/null
podman save --quiet --format oci-archive -o "$dist/sidecar-injector-$VERSION.oci.tar" "$IMAGE"
(cd "$dist" && sha256sum -- * > SHA256SUMS)
ls -l "$dist"
