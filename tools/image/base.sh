#!/usr/bin/env bash
# Makes a local base image for the Dockerfile where no container registry is reachable: Debian
# bookworm (minbase) with Python 3.11 and venv, from the Debian mirror apt already uses, imported
# into podman's storage as $BASE_IMAGE (default localhost/sidecar-injector-base:bookworm).
# An existing image is kept. Needs root, debootstrap and podman (apt-get install podman debootstrap).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
image=${BASE_IMAGE:-localhost/sidecar-injector-base:bookworm}
if podman image exists "$image"; then
  echo "base: $image exists"
  exit 0
fi
# the mirror apt is configured with (deb822 sources or a classic sources.list)
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { echo "base: no Debian mirror found in apt's sources"; exit 1; }
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
  "$mirror" > "$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log"; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$image" > /dev/null
rm -f "$rootfs.log"
echo "base: made $image in $((SECONDS - start))s ($(podman image inspect "$image" --format '{{.Size}}') bytes)"
