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
# The sdist holds no private key (a developer's certs/, say).
if tar tzf "$dist"/sidecar_injector-"$VERSION".tar.gz | grep -E '\.(key|pem)$'; then
  echo "dist: the sdist holds the private keys above" >&2; exit 1
fi
# The wheel serves its shipped policies: unpacked alone on the path, it finds and loads them all.
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
"$root/.venv/bin/python" -m zipfile -e "$dist"/sidecar_injector-"$VERSION"-py3-none-any.whl "$unpacked"
(cd "$unpacked" && PYTHONPATH="$unpacked" "$root/.venv/bin/python" -I -c '
import sys, pathlib
sys.path.insert(0, ".")
from webhook.settings import shipped_policies
from webhook.policy import load_policy_dir
found = shipped_policies()
assert found.resolve().is_relative_to(pathlib.Path(".").resolve()), found
print(f"dist: the wheel ships {len(load_policy_dir(found))} policies")
' | grep -E "ships ($(ls "$root"/policies/*.yaml | wc -l)) policies") \
  || { echo "dist: the wheel does not ship the policies/ directory" >&2; exit 1; }
"$root/bin/helm" package "$root/charts/sidecar-injector" --destination "$dist" > /dev/null
podman save --quiet --format oci-archive -o "$dist/sidecar-injector-$VERSION.oci.tar" "$IMAGE"
(cd "$dist" && sha256sum -- * > SHA256SUMS)
ls -l "$dist"
