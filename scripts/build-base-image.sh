#!/usr/bin/env bash
# Build the local base image that both Dockerfiles take as BASE_IMAGE:
# a minimal Debian (debootstrap --variant=minbase) with python3 and venv,
# imported with `docker import`. No registry is needed.
#
#   DOCKER_HOST=... scripts/build-base-image.sh [TAG]    (default volt-base:bookworm)
#
# The root filesystem tarball is cached in $VOLT_CACHE/docker-base, keyed by the
# suite and package list; an image that already carries the same key is reused.
set -euo pipefail

SUITE="${VOLT_BASE_SUITE:-bookworm}"
MIRROR="${VOLT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates"
TAG="${1:-volt-base:$SUITE}"
VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"
docker_cli="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"

key="$(printf '%s|%s|%s|v1' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)"
tarball="$VOLT_CACHE/docker-base/$SUITE-$key.tar.gz"

current="$("$docker_cli" image inspect --format '{{index .Config.Labels "dev.volt.base-key"}}' "$TAG" 2>/dev/null || true)"
if [[ "$current" == "$key" ]]; then
    echo "base image $TAG: up to date (key $key)"
    exit 0
fi

if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap not found; run 'make docker'" >&2; exit 1; }
    work="$(mktemp -d "${TMPDIR:-/tmp}/volt-base.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    echo ">> debootstrap $SUITE ($PACKAGES) from $MIRROR"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 30 "$work/debootstrap.log" >&2; echo "build-base-image: debootstrap failed" >&2; exit 1; }
    # Package lists and caches only bloat the image; derived images run apt-get update first.
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb
    mkdir -p "$(dirname "$tarball")"
    tar --numeric-owner -C "$work/rootfs" -czf "$tarball.tmp" .
    mv -f "$tarball.tmp" "$tarball"
fi

echo ">> docker import $TAG"
"$docker_cli" import \
    --change "LABEL dev.volt.base-key=$key" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$tarball" "$TAG" >/dev/null
echo "base image $TAG: imported (key $key)"
