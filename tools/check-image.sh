#!/usr/bin/env bash
# Checks the Dockerfile without a container engine (none runs on the project's machines):
# hadolint lints it, then its install steps run as written in a clean virtual environment
# (wheels built with the pinned constraints, installed with --no-index, policies copied), and the
# installed console script must answer --help and accept the copied policies.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv_bin="$root/.venv/bin"
"$venv_bin/hadolint" "$root/Dockerfile"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
grep -q "sidecar-injector==$version" "$root/Dockerfile" \
  || { echo "Dockerfile installs a version other than $version"; exit 1; }
# build stage
mkdir -p "$work/src" "$work/out/policies"
cp "$root/pyproject.toml" "$root/constraints.txt" "$root/README.md" "$work/src/"
cp -r "$root/webhook" "$root/policies" "$work/src/"
(cd "$work/src" && "$venv_bin/pip" wheel --quiet --no-cache-dir --wheel-dir "$work/wheels" \
  -c constraints.txt .)
cp "$work/src/policies/"*.yaml "$work/out/policies/"
# runtime stage
python3 -m venv "$work/runtime"
"$work/runtime/bin/pip" install --quiet --no-cache-dir --no-index --find-links "$work/wheels" \
  "sidecar-injector==$version"
"$work/runtime/bin/sidecar-injector" --help > /dev/null
SIDECAR_INJECTOR_POLICIES="$work/out/policies" "$work/runtime/bin/sidecar-injector" \
  policies check "$work/out/policies"
echo "image-check: Dockerfile lint clean; its install steps work in a clean environment"
