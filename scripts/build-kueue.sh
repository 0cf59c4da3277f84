#!/usr/bin/env bash
# Build the Kueue manager from the Go module proxy into
# $VOLT_CACHE/kueue/<version>/bin/kueue, and copy its CRDs from the same module
# (config/components/crd/bases) into $VOLT_CACHE/kueue/<version>/crds.
# volt_operator.testing.kueue_process starts it for LocalCluster(kueue=True).
# Idempotent: a complete cached build is reused.
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"
out_dir="$VOLT_CACHE/kueue/$KUEUE_VERSION"
# Bump when the build recipe changes, so a cache built the old way is rebuilt.
recipe="r1"
marker="$out_dir/.complete-$recipe"

if [[ -x "$out_dir/bin/kueue" && -f "$marker" ]]; then
    echo "kueue $KUEUE_VERSION: cached at $out_dir"
    exit 0
fi

command -v go >/dev/null || { echo "build-kueue: 'go' not found on PATH (Go >= 1.25 is needed to build Kueue)" >&2; exit 1; }

. "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

work="$(mktemp -d "${TMPDIR:-/tmp}/volt-kueue-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo ">> building kueue $KUEUE_VERSION from the Go module proxy (about 4 minutes on a cold cache)"
module_dir="$(go_module_dir "sigs.k8s.io/kueue@$KUEUE_VERSION")"
[[ -d "$module_dir/config/components/crd/bases" ]] || { echo "build-kueue: could not download sigs.k8s.io/kueue@$KUEUE_VERSION" >&2; exit 1; }
GOBIN="$work/bin" nice -n 10 go install -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"

# Assemble beside the final directory and rename it into place, so a concurrent
# reader never sees a half-written one.
stage="$VOLT_CACHE/kueue/.stage-$KUEUE_VERSION.$$"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/crds"
cp "$work/bin/kueue" "$stage/bin/kueue"
cp "$module_dir"/config/components/crd/bases/*.yaml "$stage/crds/"
chmod -R u+w "$stage"
touch "$stage/.complete-$recipe"
rm -rf "$out_dir"
mv "$stage" "$out_dir"
echo "kueue $KUEUE_VERSION: built at $out_dir"
