#!/usr/bin/env bash
# Build volt's images with a local base image (no registry needed).
#
#   scripts/build-images.sh [operator|trainer|all]      (default: all)
#
# Environment:
#   DOCKER_HOST       the engine to use (default: scripts/docker-daemon.sh ensure)
#   VOLT_IMAGE_TAG    tag of both images (default: the version in pyproject.toml)
#   BASE_IMAGE        base image (default: volt-base:bookworm, built by scripts/build-base-image.sh);
#                     the builds use its image ID, recorded in the label dev.volt.base-image
#   TORCH_SPEC        torch requirement for the trainer image (default: pyproject.toml's)
# Extra CA certificates in /usr/local/share/ca-certificates/*.crt (a TLS-intercepting
# proxy's) are passed to pip inside the build; they do not end up in the images.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
what="${1:-all}"
case "$what" in operator|trainer|all) ;; *) echo "usage: $0 [operator|trainer|all]" >&2; exit 2 ;; esac

docker_cli="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
export DOCKER_HOST="${DOCKER_HOST:-$("$repo/scripts/docker-daemon.sh" ensure)}"
version="$(python3 -c "import tomllib; print(tomllib.load(open('$repo/pyproject.toml', 'rb'))['project']['version'])")"
tag="${VOLT_IMAGE_TAG:-$version}"
base="${BASE_IMAGE:-volt-base:bookworm}"

if [[ -z "${BASE_IMAGE:-}" ]]; then
    DOCKER="$docker_cli" "$repo/scripts/build-base-image.sh" "$base"
fi
# Both images build FROM the base's image ID (its digest), not its tag: a tag moved
# meanwhile cannot change what they are built on, and each image records the ID.
base_id="$("$docker_cli" image inspect --format '{{.Id}}' "$base" 2>/dev/null)" \
    || { echo "build-images: base image $base not found (pull it or unset BASE_IMAGE)" >&2; exit 1; }
echo ">> base image $base = $base_id"

extra_ca=""
shopt -s nullglob
for crt in /usr/local/share/ca-certificates/*.crt; do extra_ca+="$(cat "$crt")"$'\n'; done

build() {  # build <dockerfile> <image>
    echo ">> docker build $2 ($1)"
    # The legacy builder: Debian's engine has no buildx plugin, and nothing here needs BuildKit.
    DOCKER_BUILDKIT=0 "$docker_cli" build --network host \
        --build-arg "BASE_IMAGE=$base_id" \
        --label "dev.volt.base-image=$base ($base_id)" \
        --build-arg "PIP_EXTRA_CA=$extra_ca" \
        ${TORCH_SPEC:+--build-arg "TORCH_SPEC=$TORCH_SPEC"} \
        --label "dev.volt.version=$version" \
        -f "$repo/$1" -t "$2" "$repo"
}

[[ "$what" == trainer ]] || build Dockerfile "volt-operator:$tag"
[[ "$what" == operator ]] || build trainer_image/Dockerfile "volt-trainer:$tag"
# A rebuild leaves the previous volt image untagged; with its torch layer that is
# gigabytes. Remove those (only volt's: they carry the label), never anything else.
"$docker_cli" image prune --force --filter "label=dev.volt.version" >/dev/null
