#!/usr/bin/env bash
# Build helm from the Go module proxy into $VOLT_CACHE/helm/<version>/helm.
# Idempotent: a cached binary that reports the wanted version is reused.
# Also links it as $VOLT_CACHE/bin/helm, which the Makefile puts on PATH.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"
out_dir="$VOLT_CACHE/helm/$HELM_VERSION"
helm_bin="$out_dir/helm"
# Bump when the build recipe changes, so a cached binary built the old way is rebuilt.
recipe="r2"
marker="$out_dir/.built-$recipe"

link_into_bin() {
    mkdir -p "$VOLT_CACHE/bin"
    ln -sfn "$helm_bin" "$VOLT_CACHE/bin/helm"
}

reports_version() { [[ "$("$helm_bin" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; }

if [[ -x "$helm_bin" && -f "$marker" ]] && reports_version; then
    link_into_bin
    echo "helm $HELM_VERSION: cached at $helm_bin"
    exit 0
fi

command -v go >/dev/null || { echo "build-helm: 'go' not found on PATH (Go >= 1.24 is needed to build helm)" >&2; exit 1; }

. "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

work="$(mktemp -d "${TMPDIR:-/tmp}/volt-helm-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo ">> building helm $HELM_VERSION from the Go module proxy (a few minutes on a cold cache)"
module_dir="$(go_module_dir "helm.sh/helm/v3@$HELM_VERSION")"
[[ -f "$module_dir/go.mod" ]] || { echo "build-helm: could not download helm.sh/helm/v3@$HELM_VERSION" >&2; exit 1; }
# Stamp what helm's own Makefile stamps: its version, and the Kubernetes version
# that `helm template`/`helm lint` assume without a cluster (the client-go minor
# + 1.x; unstamped it is 1.20 and charts requiring a newer kubeVersion fail).
client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$module_dir/go.mod")"
[[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || { echo "build-helm: no k8s.io/client-go version in helm's go.mod" >&2; exit 1; }
kube_minor="${BASH_REMATCH[1]}"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
done
GOBIN="$work/bin" nice -n 10 go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

mkdir -p "$out_dir"
# Rename into place so a concurrent reader never sees a half-written binary.
cp "$work/bin/helm" "$out_dir/.helm.tmp.$$"
mv -f "$out_dir/.helm.tmp.$$" "$helm_bin"
reports_version || { echo "build-helm: built binary does not report $HELM_VERSION" >&2; exit 1; }
touch "$marker"
link_into_bin
echo "helm $HELM_VERSION: built at $helm_bin"
