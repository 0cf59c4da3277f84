#!/usr/bin/env bash
# `make demo` / `make demo-down`: volt end to end on this machine.
#
#   up    start the local control plane with two nodes (volt_operator.testing.cluster,
#         pods run as local processes by the node agent), install the helm chart
#         (CRD, ServiceAccount, least-privilege RBAC; operator.replicas=0), run the
#         operator here as the chart's ServiceAccount (a `kubectl create token`
#         token, not an admin), apply examples/trainingjob.yaml and follow
#         `kubectl get tj` until the job ends; then say where checkpoints and
#         metrics are. Everything keeps running for you to explore.
#   down  stop the operator and the cluster, remove the demo's state.
#
# VOLT_DEMO_RUNTIME=kubelet (the default as root) runs the nodes as real kubelets
# with their own containerd (docs/local-cluster.md, "Real nodes"): the images are
# built with docker (scripts/build-images.sh) and imported into every node, the
# operator runs in-cluster from the chart (operator.replicas=1, in a namespace
# that enforces the restricted Pod Security Standard), and the trainer pods are
# containers of the trainer image. VOLT_DEMO_RUNTIME=agent (the default without
# root: real nodes change the host's network and cgroups) runs pods as local
# processes and the operator on the host.
#
# Needs what `make demo` builds first: the Python environment, the Kubernetes
# binaries and helm, on PATH (the Makefile exports it).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
VOLT_CACHE="${VOLT_CACHE:-$HOME/.cache/volt}"
demo_dir="${VOLT_DEMO_DIR:-$VOLT_CACHE/demo}"
cluster_dir="$demo_dir/cluster"
release=volt
release_ns=volt-system
# Host ports below 30000: Kubernetes' NodePorts are 30000-32767, and Linux gives
# 32768-60999 to outgoing connections, so a port there can be taken at any moment.
health_port="${VOLT_DEMO_HEALTH_PORT:-28080}"
metrics_port="${VOLT_DEMO_METRICS_PORT:-28081}"
job_timeout="${VOLT_DEMO_TIMEOUT:-900}"
manifest="$repo/examples/trainingjob.yaml"
runtime="${VOLT_DEMO_RUNTIME:-$([[ $EUID == 0 ]] && echo kubelet || echo agent)}"
prometheus_port="${VOLT_DEMO_PROMETHEUS_PORT:-28090}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# Something else listening on a port the demo serves on would answer its readiness checks.
require_free_port() {  # PORT VARIABLE
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 on 127.0.0.1 is in use by another program: set $2 to a free port"
    fi
}

stop_operator() {
    local pidfile="$demo_dir/operator.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}

stop_prometheus() {
    local name pidfile pid
    for name in prometheus discover; do
        pidfile="$demo_dir/$name.pid"
        [[ -f "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid"
        rm -f "$pidfile"
    done
}

# Debian's Prometheus scraping every rank of every TrainingJob and the operator;
# skipped without it. Debian builds it without Kubernetes discovery, so
# scripts/demo_curves.py watches the pods and writes their metrics ports to a file.
start_prometheus() {
    if ! command -v prometheus >/dev/null; then
        echo "prometheus is not installed ('make prometheus' installs Debian's): no curves this time"
        return 0
    fi
    stop_prometheus
    require_free_port "$prometheus_port" VOLT_DEMO_PROMETHEUS_PORT
    mkdir -p "$demo_dir/prometheus"
    echo '[]' >"$demo_dir/prometheus/targets.json"
    python "$repo/scripts/demo_curves.py" config --targets "$demo_dir/prometheus/targets.json" \
        --operator "$1" >"$demo_dir/prometheus/prometheus.yml"
    setsid python "$repo/scripts/demo_curves.py" discover --kubeconfig "$KUBECONFIG" \
        --targets "$demo_dir/prometheus/targets.json" >"$demo_dir/prometheus/discover.log" 2>&1 </dev/null &
    echo $! >"$demo_dir/discover.pid"
    setsid prometheus --config.file="$demo_dir/prometheus/prometheus.yml" \
        --storage.tsdb.path="$demo_dir/prometheus/data" \
        --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn \
        >"$demo_dir/prometheus/prometheus.log" 2>&1 </dev/null &
    echo $! >"$demo_dir/prometheus.pid"
    for _ in $(seq 1 60); do
        curl -sf "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null && break
        kill -0 "$(cat "$demo_dir/prometheus.pid")" 2>/dev/null || { tail -n 20 "$demo_dir/prometheus/prometheus.log" >&2; die "prometheus exited"; }
        sleep 1
    done
    echo "Prometheus on http://127.0.0.1:$prometheus_port (log $demo_dir/prometheus/prometheus.log)"
}

# The operator as a host process with the chart's ServiceAccount's token (agent runtime).
start_host_operator() {
    say "starting the operator as system:serviceaccount:$release_ns:$release (token from 'kubectl create token')"
    stop_operator
    require_free_port "$health_port" VOLT_DEMO_HEALTH_PORT
    require_free_port "$metrics_port" VOLT_DEMO_METRICS_PORT
    local server token op_config="$demo_dir/operator.kubeconfig"
    server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
    token="$(kubectl -n "$release_ns" create token "$release" --duration 24h)"
    rm -f "$op_config"
    kubectl config --kubeconfig "$op_config" set-cluster local --server "$server" \
        --certificate-authority "$cluster_dir/pki/ca.crt" --embed-certs >/dev/null
    kubectl config --kubeconfig "$op_config" set-credentials "$release" --token "$token" >/dev/null
    kubectl config --kubeconfig "$op_config" set-context operator --cluster local --user "$release" >/dev/null
    kubectl config --kubeconfig "$op_config" use-context operator >/dev/null
    chmod 600 "$op_config"
    KUBECONFIG="$op_config" setsid python -m volt_operator --standalone --all-namespaces \
        --liveness "http://127.0.0.1:$health_port/healthz" --metrics-port "$metrics_port" \
        >"$demo_dir/operator.log" 2>&1 </dev/null &
    echo $! >"$demo_dir/operator.pid"
    for _ in $(seq 1 120); do
        python - "$health_port" <<'PY' && break
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2)
except Exception:
    sys.exit(1)
PY
        kill -0 "$(cat "$demo_dir/operator.pid")" 2>/dev/null || { tail -n 30 "$demo_dir/operator.log" >&2; die "the operator exited"; }
        sleep 1
    done
    echo "operator running (pid $(cat "$demo_dir/operator.pid"), log $demo_dir/operator.log)"
}

# Exits the demo when the host operator died; the in-cluster one is its Deployment's to restart.
check_operator() {
    [[ -f "$demo_dir/operator.pid" ]] || return 0
    kill -0 "$(cat "$demo_dir/operator.pid")" 2>/dev/null || { tail -n 30 "$demo_dir/operator.log" >&2; die "the operator exited"; }
}

down() {
    say "stopping Prometheus, the operator and the local cluster"
    stop_prometheus
    stop_operator
    if [[ -d "$cluster_dir" ]]; then
        python -m volt_operator.testing.cluster down --dir "$cluster_dir" --purge
    fi
    rm -rf "$demo_dir"
    echo "demo removed"
}

up() {
    for tool in python kubectl helm; do
        command -v "$tool" >/dev/null || die "'$tool' not on PATH: run this through 'make demo'"
    done
    [[ -f "$manifest" ]] || die "$manifest is missing"
    mkdir -p "$demo_dir"

    case "$runtime" in
        agent) say "starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, node agent)" ;;
        kubelet) say "starting the local control plane and 2 real nodes (kubelet + containerd each, CoreDNS)" ;;
        *) die "VOLT_DEMO_RUNTIME must be agent or kubelet, got '$runtime'" ;;
    esac
    python -m volt_operator.testing.cluster up --dir "$cluster_dir" --nodes 2 --runtime "$runtime"
    export KUBECONFIG="$cluster_dir/kubeconfig"
    kubectl get nodes -o wide

    local version operator_metrics
    if [[ "$runtime" == kubelet ]]; then
        version="$(python -c "import tomllib; print(tomllib.load(open('$repo/pyproject.toml', 'rb'))['project']['version'])")"
        say "building volt-operator:$version and volt-trainer:$version (docker) and loading them into the nodes"
        bash "$repo/scripts/build-images.sh" all
        DOCKER_HOST="$("$repo/scripts/docker-daemon.sh" ensure)" \
            python -m volt_operator.testing.cluster load-image --dir "$cluster_dir" \
            "volt-trainer:$version" "volt-operator:$version"

        say "installing the volt chart with the operator in-cluster (volt-operator:$version) in $release_ns, which enforces the restricted Pod Security Standard"
        kubectl create namespace "$release_ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
        kubectl label namespace "$release_ns" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
        helm upgrade --install "$release" "$repo/charts/volt" --namespace "$release_ns" \
            --set operator.replicas=1 --set image.tag="$version" --wait --timeout 5m
        kubectl wait --for condition=established --timeout 60s crd/trainingjobs.volt.dev
        kubectl -n "$release_ns" get pods -o wide
        operator_metrics="$(kubectl -n "$release_ns" get pods -l "app.kubernetes.io/instance=$release" \
            -o jsonpath='{.items[0].status.podIP}'):$(helm get values "$release" -n "$release_ns" --all -o json |
            python -c 'import json, sys; print(json.load(sys.stdin)["metrics"]["port"])')"
    else
        say "installing the volt chart (CRD, ServiceAccount, RBAC); the operator itself runs here"
        helm upgrade --install "$release" "$repo/charts/volt" --namespace "$release_ns" --create-namespace \
            --set operator.replicas=0 --wait --timeout 2m
        kubectl wait --for condition=established --timeout 60s crd/trainingjobs.volt.dev
        start_host_operator
        operator_metrics="127.0.0.1:$metrics_port"
    fi

    say "starting Prometheus: every rank of every TrainingJob, and the operator"
    start_prometheus "$operator_metrics"

    say "kubectl apply -f examples/trainingjob.yaml"
    kubectl apply -f "$manifest"
    local job ns
    job="$(kubectl get -f "$manifest" -o jsonpath='{range .items[?(@.kind=="TrainingJob")]}{.metadata.name}{end}' 2>/dev/null || true)"
    [[ -n "$job" ]] || job="$(python -c "import sys, yaml; print(next(d['metadata']['name'] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get('kind') == 'TrainingJob'))" "$manifest")"
    ns="$(kubectl get tj "$job" -o jsonpath='{.metadata.namespace}')"

    say "kubectl get tj $job -w   (until it finishes; up to ${job_timeout}s)"
    local phase="" last="" line key deadline=$((SECONDS + job_timeout))
    # The header row (no `| head`: with pipefail, kubectl's SIGPIPE would end the script).
    line="$(kubectl get tj "$job" -n "$ns")"
    echo "${line%%$'\n'*}"
    while (( SECONDS < deadline )); do
        line="$(kubectl get tj "$job" -n "$ns" --no-headers 2>/dev/null || true)"
        # Print a row when something but its AGE column changed.
        key="${line%"${line##*[[:space:]]}"}"
        [[ -n "$line" && "$key" != "$last" ]] && { echo "$line"; last="$key"; }
        phase="$(kubectl get tj "$job" -n "$ns" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
        [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
        check_operator
        sleep 2
    done
    # The row that shows the final phase, unless the loop already printed it.
    line="$(kubectl get tj "$job" -n "$ns" --no-headers 2>/dev/null || true)"
    key="${line%"${line##*[[:space:]]}"}"
    [[ -n "$line" && "$key" != "$last" ]] && echo "$line"
    [[ "$phase" == Succeeded ]] || {
        kubectl describe tj "$job" -n "$ns" >&2 || true
        die "job $job ended in phase '${phase:-unknown}' (operator log: $demo_dir/operator.log)"
    }

    say "done: TrainingJob $job Succeeded"
    kubectl get tj "$job" -n "$ns" -o jsonpath='{"training: "}{.status.training}{"\ncheckpoint: "}{.status.checkpoint}{"\n"}'
    local claim pv host_path
    claim="$(kubectl get tj "$job" -n "$ns" -o jsonpath='{.spec.checkpoint.claimName}')"
    if [[ -n "$claim" ]]; then
        pv="$(kubectl get pvc "$claim" -n "$ns" -o jsonpath='{.spec.volumeName}')"
        host_path="$(kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}{.spec.local.path}')"
        echo
        echo "Checkpoints: PVC $ns/$claim -> PV $pv -> $host_path on this machine:"
        find "$host_path" -maxdepth 3 \( -name '*.ckpt' -o -name latest.json \) -printf '  %p  (%s bytes)\n' 2>/dev/null | sort || true
    fi
    if [[ -f "$demo_dir/prometheus.pid" ]]; then
        say "the curve: Prometheus's samples of rank 0"
        local started ended
        started="$(kubectl get tj "$job" -n "$ns" -o jsonpath='{.status.startTime}')"
        ended="$(kubectl get tj "$job" -n "$ns" -o jsonpath='{.status.completionTime}')"
        python "$repo/scripts/demo_curves.py" plot --prometheus "http://127.0.0.1:$prometheus_port" \
            --job "$job" --start "$(date -d "$started" +%s)" --end "$(( $(date -d "$ended" +%s) + 5 ))" || true
        cat <<EOF2

Prometheus (http://127.0.0.1:$prometheus_port):
  curl -s 'http://127.0.0.1:$prometheus_port/api/v1/query' --data-urlencode 'query=volt_train_loss{trainingjob="$job"}[10m]'
  curl -s 'http://127.0.0.1:$prometheus_port/api/v1/query' --data-urlencode 'query=up'
EOF2
    fi
    cat <<EOF2

The volt command (docs/cli.md):
  export KUBECONFIG=$cluster_dir/kubeconfig
  python -m volt.client get -n $ns
  python -m volt.client describe $job -n $ns
  python -m volt.client logs $job --rank 2 -n $ns
  python -m volt.client submit -n $ns --name hello --nodes 2 --devices 2 --accelerator cpu --max-epochs 1 \\
      -- python -m volt.examples.synthetic --samples 1024
EOF2
    cat <<EOF2

Metrics:
  operator        curl -s http://$operator_metrics/metrics | grep '^volt_'
  trainer pods    each rank serves /metrics on its pod IP, port VOLT_METRICS_PORT+local rank,
                  while it runs (kubectl get pods -n $ns -o wide); names in docs/metrics.md
Explore:
  export KUBECONFIG=$cluster_dir/kubeconfig
  kubectl get tj,pods,svc -n $ns
  kubectl describe tj $job -n $ns
  kubectl logs ${job}-node-0 -n $ns
Clean up:  make demo-down
EOF2
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) die "usage: $0 up|down" ;;
esac
