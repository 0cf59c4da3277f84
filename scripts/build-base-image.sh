#!/usr/bin/env bash
# Build the local base image that both Dockerfiles take as BASE_IMAGE:
# a minimal Debian (debootstrap --variant=minbase) with python3 and venv,
# imported with `docker import`. No registry is needed.
#
#   DOCKER_HOST=... scripts/build-base-image.sh [TAG]    (default volt-base:bookworm)
#
# The root filesystem tarball is cached in $VOLT_CACHE/docker-base, keyed by the
# suite and package list; an image that already carries the same key is reused.
#
# What it holds is checked against requirements/base-image.packages (every Debian
# package and its version, docs/packaging.md): a difference is printed, and fails
# the build with VOLT_BASE_PACKAGES=check. VOLT_BASE_PACKAGES=record writes the
# file from this build instead (after reviewing what changed).
set -euo pipefail

SUITE="${VOLT_BASE_SUITE:-bookworm}"
MIRROR="${VOLT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates"
TAG="${1:-volt-base:$SUITE}"
VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"
docker_cli="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"

key="$(printf '%s|%s|%s|v1' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)"
tarball="$VOLT_CACHE/docker-base/$SUITE-$key.tar.gz"
record="$(cd "$(dirname "$0")/.." && pwd)/requirements/base-image.packages"

installed_packages() {  # installed_packages <rootfs tarball>: name=version per line, sorted (cached beside it)
    if [[ ! -s "$1.packages" || "$1.packages" -ot "$1" ]]; then
        tar -xzOf "$1" ./var/lib/dpkg/status | awk '
            /^Package: /{p=$2} /^Status: /{ok=($4=="installed")} /^Version: /{v=$2}
            /^$/{if (ok) print p"="v; ok=0} END{if (ok) print p"="v}' | LC_ALL=C sort > "$1.packages.tmp"
        mv -f "$1.packages.tmp" "$1.packages"
    fi
    cat "$1.packages"
}

check_packages() {  # what the tarball holds against the committed record
    local built; built="$(installed_packages "$tarball")"
    case "${VOLT_BASE_PACKAGES:-warn}" in
        record)
            { echo "# Debian packages of the base image (debootstrap $SUITE: $PACKAGES)."
              echo "# Written by VOLT_BASE_PACKAGES=record scripts/build-base-image.sh; docs/packaging.md."
              echo "$built"; } > "$record"
            echo "base image packages recorded in $record" ;;
        check|warn)
            local drift; drift="$(diff <(grep -v '^#' "$record" 2>/dev/null) <(echo "$built") || true)"
            [[ -z "$drift" ]] && { echo "base image packages: as recorded in requirements/base-image.packages"; return; }
            echo "build-base-image: the base differs from requirements/base-image.packages (< recorded, > built):" >&2
            echo "$drift" >&2
            [[ "${VOLT_BASE_PACKAGES:-warn}" == check ]] && exit 1
            echo "build-base-image: continuing (VOLT_BASE_PACKAGES=check fails instead; =record updates the file)" >&2 ;;
        *) echo "build-base-image: VOLT_BASE_PACKAGES must be warn, check or record" >&2; exit 2 ;;
    esac
}

current="$("$docker_cli" image inspect --format '{{index .Config.Labels "dev.volt.base-key"}}' "$TAG" 2>/dev/null || true)"
if [[ "$current" == "$key" ]]; then
    [[ -s "$tarball" ]] && check_packages
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

check_packages
echo ">> docker import $TAG"
"$docker_cli" import \
    --change "LABEL dev.volt.base-key=$key" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$tarball" "$TAG" >/dev/null
echo "base image $TAG: imported (key $key)"
