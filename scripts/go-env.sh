# Sourced by the scripts (and Makefile rules) that build Go programs from the
# module proxy. One module cache and one build cache under $VOLT_CACHE/go serve
# every build, never the repository; the local toolchain only; static binaries
# whose contents do not depend on the build directory or a VCS checkout.
: "${VOLT_CACHE:?go-env.sh needs VOLT_CACHE}"
export GOMODCACHE="$VOLT_CACHE/go/mod"
export GOCACHE="$VOLT_CACHE/go/build"
export GOTOOLCHAIN=local
export GOFLAGS="-trimpath -buildvcs=false"
export CGO_ENABLED=0

# go_module_dir MODULE@VERSION: download the module (once) and print its directory.
go_module_dir() {
    go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}
