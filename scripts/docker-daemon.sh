#!/usr/bin/env bash
# Make a Docker engine available for the image builds and tests.
#
#   scripts/docker-daemon.sh ensure   print a DOCKER_HOST that answers, starting
#                                     volt's own dockerd when none does
#   scripts/docker-daemon.sh stop     stop the dockerd this script started
#
# An engine that already answers (DOCKER_HOST or the default socket) is used
# as it is. Otherwise volt starts its own dockerd on its own socket, with its
# data under $VOLT_CACHE/docker so that image layers survive between runs. It
# touches no iptables rules and makes no bridge (--iptables=false,
# --bridge=none): builds use the host network, containers run with
# --network none or host, and the machine's own networking is left alone.
set -euo pipefail

VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"
state="$VOLT_CACHE/docker"
sock="$state/docker.sock"
pidfile="$state/dockerd.pid"
# Debian's client matches Debian's engine; any docker client works otherwise.
docker_cli="${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}"

die() { echo "docker-daemon: $*" >&2; exit 1; }

answers() { DOCKER_HOST="$1" "$docker_cli" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ensure() {
    [[ -n "$docker_cli" ]] || die "no docker client found; run 'make docker' (installs Debian's docker.io)"
    if [[ -n "${DOCKER_HOST:-}" ]] && answers "$DOCKER_HOST"; then echo "$DOCKER_HOST"; return; fi
    if answers "unix:///var/run/docker.sock"; then echo "unix:///var/run/docker.sock"; return; fi
    if answers "unix://$sock"; then echo "unix://$sock"; return; fi

    command -v dockerd >/dev/null || die "dockerd not found; run 'make docker' (installs Debian's docker.io)"
    [[ "$(id -u)" == 0 ]] || die "starting dockerd needs root; start a Docker engine yourself and set DOCKER_HOST"
    mkdir -p "$state/root" "$state/exec"
    # setsid: the daemon must outlive the shell that started it (a test, make).
    setsid dockerd \
        --host "unix://$sock" \
        --data-root "$state/root" \
        --exec-root "$state/exec" \
        --pidfile "$pidfile" \
        --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
        >"$state/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        if answers "unix://$sock"; then echo "unix://$sock"; return; fi
        kill -0 $! 2>/dev/null || die "dockerd exited during start; last lines of $state/dockerd.log:
$(tail -n 20 "$state/dockerd.log")"
        sleep 0.5
    done
    die "dockerd did not answer on $sock within 60 s; see $state/dockerd.log"
}

stop() {
    if [[ -f "$pidfile" ]]; then
        local pid; pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
        rm -f "$pidfile"
    fi
    # dockerd leaves its own network namespace bind-mounted under exec-root.
    if mountpoint -q "$state/exec/netns/default" 2>/dev/null; then
        umount "$state/exec/netns/default" || true
    fi
}

case "${1:-}" in
    ensure) ensure ;;
    stop) stop ;;
    *) die "usage: $0 ensure|stop" ;;
esac
