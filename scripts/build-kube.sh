#!/usr/bin/env bash
# Build the local Kubernetes cluster (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kubelet, CoreDNS and the
# pod sandbox's pause program) from the Go module proxy.
#
# Outputs, keyed by version and never inside the repository:
#   $VOLT_CACHE/kube/<KUBE_VERSION>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,kubelet}
#   $VOLT_CACHE/etcd/<ETCD_VERSION>/bin/etcd
#   $VOLT_CACHE/coredns/<COREDNS_VERSION>/bin/coredns
#   $VOLT_CACHE/pause/<hash of scripts/pause/pause.go>/bin/pause
#   $VOLT_CACHE/bin/kubectl -> the kubectl above
# Go's module and build caches live in $VOLT_CACHE/go so CI reuses them.
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces every staging
# module with a local path), so each build goes through a small wrapper module
# that pins each staging module to its published v0.X.Y twin.
# A second run with the outputs present is a no-op.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
# The CoreDNS release kubeadm installs with Kubernetes 1.34.
COREDNS_VERSION="${COREDNS_VERSION:-1.12.1}"
VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"

KUBE_DIR="$VOLT_CACHE/kube/$KUBE_VERSION"
ETCD_DIR="$VOLT_CACHE/etcd/$ETCD_VERSION"
COREDNS_DIR="$VOLT_CACHE/coredns/$COREDNS_VERSION"
PAUSE_SRC="$(cd "$(dirname "$0")" && pwd)/pause/pause.go"
PAUSE_DIR="$VOLT_CACHE/pause/$(sha256sum "$PAUSE_SRC" | cut -c1-12)"
KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

log() { printf '>> [build-kube %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'build-kube: error: %s\n' "$*" >&2; exit 1; }

kube_done() {
    local b
    for b in "${KUBE_BINS[@]}"; do [[ -x "$KUBE_DIR/bin/$b" ]] || return 1; done
    [[ -f "$KUBE_DIR/bin/.complete" ]]
}
etcd_done() { [[ -x "$ETCD_DIR/bin/etcd" && -f "$ETCD_DIR/bin/.complete" ]]; }
coredns_done() { [[ -x "$COREDNS_DIR/bin/coredns" && -f "$COREDNS_DIR/bin/.complete" ]]; }
pause_done() { [[ -x "$PAUSE_DIR/bin/pause" && -f "$PAUSE_DIR/bin/.complete" ]]; }
all_done() { kube_done && etcd_done && coredns_done && pause_done; }

# `make` puts $VOLT_CACHE/bin on PATH: point kubectl there at this release's,
# so every make target talks to the server with a client of the same version.
link_kubectl() {
    mkdir -p "$VOLT_CACHE/bin"
    ln -sfn "$KUBE_DIR/bin/kubectl" "$VOLT_CACHE/bin/kubectl"
}

# Fast path: nothing to do (no Go needed, no lock taken).
if all_done; then
    link_kubectl
    log "up to date: kubernetes v$KUBE_VERSION ($KUBE_DIR/bin), etcd v$ETCD_VERSION ($ETCD_DIR/bin), coredns v$COREDNS_VERSION ($COREDNS_DIR/bin)"
    exit 0
fi

[[ "$KUBE_VERSION" =~ ^1\.([0-9]+)\.([0-9]+)$ ]] || die "KUBE_VERSION must look like 1.34.4, got '$KUBE_VERSION'"
KUBE_MINOR="${BASH_REMATCH[1]}"
STAGING_VERSION="v0.${KUBE_MINOR}.${BASH_REMATCH[2]}"
[[ "$ETCD_VERSION" =~ ^3\.[0-9]+\.[0-9]+$ ]] || die "ETCD_VERSION must look like 3.6.16, got '$ETCD_VERSION'"
[[ "$COREDNS_VERSION" =~ ^1\.[0-9]+\.[0-9]+$ ]] || die "COREDNS_VERSION must look like 1.12.1, got '$COREDNS_VERSION'"

GO="${GO:-$(command -v go || true)}"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
[[ -n "$GO" ]] || die "no Go toolchain found (install Go >= 1.24 or set GO=/path/to/go)"

. "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$VOLT_CACHE/kube" "$VOLT_CACHE/etcd" "$VOLT_CACHE/coredns" "$VOLT_CACHE/pause"

# Two concurrent `make cluster` runs must not build into the same directory:
# one lock for etcd and Kubernetes, one for CoreDNS and pause (they share no
# modules, so a second run can build those while the first compiles Kubernetes).
lock() {  # lock <file>: take it on fd 9 (closing any lock held before), waiting if needed
    exec 9>"$1"
    if ! flock -n 9; then
        log "another build holds $1; waiting for it"
        flock 9
    fi
}

# `go build -v` names every package it compiles; print a count every 200
# so a cold build (tens of minutes on 2 cores) shows it is alive.
progress() {
    # Lines with a space are not package paths (compiler errors): pass them through.
    awk -v what="$1" '/ / { print; fflush(); next }
                      { n++; if (n % 200 == 0) { printf(">>   %s: %d packages compiled\n", what, n); fflush() } }
                      END { printf(">>   %s: %d packages compiled in total\n", what, n) }'
}

# Staging modules of k8s.io/kubernetes: each is published as k8s.io/<m> v0.<minor>.<patch>.
staging_modules() {
    local mods=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
        cloud-provider cluster-bootstrap code-generator component-base component-helpers
        controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
        endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
        kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
        sample-apiserver sample-cli-plugin sample-controller)
    (( KUBE_MINOR >= 36 )) && mods+=(cri-streaming)
    (( KUBE_MINOR >= 37 )) && mods+=(streaming)
    printf '%s\n' "${mods[@]}"
}

build_etcd() {
    local src="$ETCD_DIR/src" stage="$ETCD_DIR/bin.partial"
    log "etcd v$ETCD_VERSION: resolving modules (go.etcd.io/etcd/server/v3@v$ETCD_VERSION)"
    mkdir -p "$src"
    cat >"$src/go.mod" <<EOF
module volt.local/etcd-build

go 1.24.0

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION

tool go.etcd.io/etcd/server/v3
EOF
    (cd "$src" && "$GO" mod tidy) || die "go mod tidy failed for go.etcd.io/etcd/server/v3@v$ETCD_VERSION (see above for the module the proxy lacks)"
    log "etcd v$ETCD_VERSION: compiling"
    rm -rf "$stage" && mkdir -p "$stage"
    (cd "$src" && "$GO" build -v -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" \
        -o "$stage/etcd" go.etcd.io/etcd/server/v3 2>&1 | progress etcd; exit "${PIPESTATUS[0]}") \
        || die "building etcd v$ETCD_VERSION failed"
    touch "$stage/.complete"
    rm -rf "$ETCD_DIR/bin" && mv "$stage" "$ETCD_DIR/bin"
    log "etcd v$ETCD_VERSION: done -> $ETCD_DIR/bin/etcd ($("$ETCD_DIR/bin/etcd" --version | head -1))"
}

build_kube() {
    local src="$KUBE_DIR/src" stage="$KUBE_DIR/bin.partial" m b
    log "kubernetes v$KUBE_VERSION: resolving modules (staging modules at $STAGING_VERSION)"
    mkdir -p "$src"
    {
        printf 'module volt.local/kube-build\n\ngo 1.24.0\n\n'
        # Keep the language defaults kubernetes itself was released with.
        printf 'godebug default=go1.24\n\n'
        printf 'require k8s.io/kubernetes v%s\n\ntool (\n' "$KUBE_VERSION"
        for b in "${KUBE_BINS[@]}"; do printf '\tk8s.io/kubernetes/cmd/%s\n' "$b"; done
        printf ')\n\n'
        while read -r m; do printf 'replace k8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$STAGING_VERSION"; done < <(staging_modules)
    } >"$src/go.mod"
    (cd "$src" && "$GO" mod tidy) || die "go mod tidy failed for k8s.io/kubernetes@v$KUBE_VERSION (see above for the module the proxy lacks)"

    # Stamp the version the way upstream's hack/lib/version.sh does, so that
    # `kubectl version` and the apiserver's /version report v$KUBE_VERSION.
    local x="" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KUBE_MINOR -X $p.gitTreeState=clean"
    done
    local pkgs=()
    for b in "${KUBE_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    log "kubernetes v$KUBE_VERSION: compiling ${KUBE_BINS[*]} (cold: about 5 min on 2 cores)"
    rm -rf "$stage" && mkdir -p "$stage"
    (cd "$src" && "$GO" build -v -ldflags "-s -w$x" -o "$stage/" "${pkgs[@]}" 2>&1 | progress kubernetes; exit "${PIPESTATUS[0]}") \
        || die "building kubernetes v$KUBE_VERSION failed"
    touch "$stage/.complete"
    rm -rf "$KUBE_DIR/bin" && mv "$stage" "$KUBE_DIR/bin"
    log "kubernetes v$KUBE_VERSION: done -> $KUBE_DIR/bin ($("$KUBE_DIR/bin/kubectl" version --client | head -1))"
}

build_coredns() {
    local src="$COREDNS_DIR/src" stage="$COREDNS_DIR/bin.partial"
    log "coredns v$COREDNS_VERSION: resolving modules (github.com/coredns/coredns@v$COREDNS_VERSION)"
    mkdir -p "$src"
    cat >"$src/go.mod" <<EOF
module volt.local/coredns-build

go 1.24.0

require github.com/coredns/coredns v$COREDNS_VERSION

tool github.com/coredns/coredns
EOF
    (cd "$src" && "$GO" mod tidy) || die "go mod tidy failed for github.com/coredns/coredns@v$COREDNS_VERSION"
    log "coredns v$COREDNS_VERSION: compiling"
    rm -rf "$stage" && mkdir -p "$stage"
    (cd "$src" && "$GO" build -v -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION" \
        -o "$stage/coredns" github.com/coredns/coredns 2>&1 | progress coredns; exit "${PIPESTATUS[0]}") \
        || die "building coredns v$COREDNS_VERSION failed"
    touch "$stage/.complete"
    rm -rf "$COREDNS_DIR/bin" && mv "$stage" "$COREDNS_DIR/bin"
    log "coredns v$COREDNS_VERSION: done -> $COREDNS_DIR/bin/coredns ($("$COREDNS_DIR/bin/coredns" -version | head -1))"
}

# The pod sandbox's pause program (scripts/pause/pause.go, standard library
# only); the local cluster packs it into an image for each node's containerd.
build_pause() {
    local stage="$PAUSE_DIR/bin.partial"
    log "pause: compiling $PAUSE_SRC"
    rm -rf "$stage" && mkdir -p "$stage"
    (cd "$(dirname "$PAUSE_SRC")" && "$GO" build -ldflags "-s -w" -o "$stage/pause" pause.go) \
        || die "building $PAUSE_SRC failed"
    touch "$stage/.complete"
    rm -rf "$PAUSE_DIR/bin" && mv "$stage" "$PAUSE_DIR/bin"
}

start=$SECONDS
lock "$VOLT_CACHE/coredns/.build.lock"
pause_done || build_pause
coredns_done || build_coredns
lock "$VOLT_CACHE/kube/.build.lock"
etcd_done || build_etcd
kube_done || build_kube
link_kubectl
log "all built in $(( SECONDS - start ))s; cache sizes: $(du -sh "$VOLT_CACHE/go" 2>/dev/null | cut -f1) go, $(du -sh "$KUBE_DIR/bin" | cut -f1) kube, $(du -sh "$ETCD_DIR/bin" | cut -f1) etcd, $(du -sh "$COREDNS_DIR/bin" | cut -f1) coredns"
