#!/usr/bin/env bash
# Run one test tier (a make target) several times in a row while busy loops keep
# CPUs loaded, and stop at the first failed round: a test that passes alone but
# fails under load is a bug (docs/reliability.md, "Tiers under load").
#
#   scripts/loaded-rounds.sh [--rounds N] [--hogs K] [--log-dir DIR] TARGET
#
# TARGET is a make target (test-e2e, test-engine, ...). Each of the K hogs is a
# Python loop that never sleeps, so it keeps one CPU busy for the whole run.
# DIR/rounds.log gets one line per round (start, seconds, load averages, the
# pytest summary); DIR/round-<i>.log the round's whole output.
set -euo pipefail

rounds=5 hogs=1 log_dir="${TMPDIR:-/tmp}/volt-loaded-rounds"
while [[ $# -gt 1 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --hogs) hogs="$2"; shift 2 ;;
        --log-dir) log_dir="$2"; shift 2 ;;
        *) echo "loaded-rounds: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ $# -eq 1 ]] || { echo "usage: $0 [--rounds N] [--hogs K] [--log-dir DIR] TARGET" >&2; exit 2; }
target="$1"
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$hogs" =~ ^[0-9]+$ ]] || { echo "loaded-rounds: --rounds must be >= 1 and --hogs >= 0" >&2; exit 2; }

mkdir -p "$log_dir"
summary="$log_dir/rounds.log"
echo "$(date -u +%FT%TZ) $target at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $rounds rounds, $hogs hogs, $(nproc) CPUs" >> "$summary"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq "$hogs"); do
    python3 -c 'while True: pass' &
    pids+=("$!")
done

load() { cut -d' ' -f1-3 /proc/loadavg; }
for round in $(seq "$rounds"); do
    started=$(date +%s) start_load="$(load)"
    status=0
    make "$target" > "$log_dir/round-$round.log" 2>&1 || status=$?
    echo "round $round/$rounds: exit $status after $(( $(date +%s) - started )) s, load $start_load -> $(load): $(grep -E '^=+ .*(passed|failed|error).* =+$' "$log_dir/round-$round.log" | tail -1)" >> "$summary"
    if [[ $status -ne 0 ]]; then
        echo "loaded-rounds: round $round failed; its output is $log_dir/round-$round.log" >&2
        exit "$status"
    fi
done
tail -n "$((rounds + 1))" "$summary"
