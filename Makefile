# volt: every target bootstraps what it needs. Heavy artifacts (the Python
# environment, Kubernetes binaries, helm) live in $(VOLT_CACHE), keyed by
# version, never in the repo.
SHELL := /bin/bash
VOLT_CACHE ?= $(HOME)/.cache/volt
DEPS_KEY := $(shell cat pyproject.toml | sha256sum | cut -c1-12)
VENV ?= $(VOLT_CACHE)/venv-$(DEPS_KEY)
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/trainer_image:$(CURDIR)/operator
export PATH := $(VENV)/bin:$(VOLT_CACHE)/bin:$(PATH)
# The 25 slowest tests close every run's report: where `make test`'s time goes.
PYTEST_ARGS ?= --durations=25
KUBE_VERSION ?= 1.34.4
ETCD_VERSION ?= 3.6.16
COREDNS_VERSION ?= 1.12.1
KUEUE_VERSION ?= v0.17.0
# volt_operator.testing.cluster finds the binaries by these.
export VOLT_CACHE
export VOLT_KUBE_VERSION := $(KUBE_VERSION)
export VOLT_ETCD_VERSION := $(ETCD_VERSION)
export VOLT_COREDNS_VERSION := $(COREDNS_VERSION)
export VOLT_KUEUE_VERSION := $(KUEUE_VERSION)

.PHONY: setup lightning-env prometheus helm docker node-runtime images lock test test-engine test-operator test-e2e test-chaos test-loaded bench lint cluster kueue crds demo demo-down clean

# The path is keyed by the pyproject hash, so existence is enough (a fresh clone
# has new mtimes and must not rebuild a matching environment).
$(VENV)/.ok:
	@echo ">> creating Python environment $(VENV)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q '.[dev]'
	touch $@

# Dependencies are cached per pyproject hash; volt itself is reinstalled
# (no deps, seconds) so that `volt-run` runs this checkout's code.
# Each use touches the environment's .ok; environments of other pyproject versions
# (about 6 GB each) that no run used for $(ENV_KEEP_DAYS) days are deleted.
ENV_KEEP_DAYS ?= 14
setup: $(VENV)/.ok
	@touch $(VENV)/.ok
	@find $(VOLT_CACHE) -mindepth 2 -maxdepth 2 -path '$(VOLT_CACHE)/venv-*/.ok' -mtime +$(ENV_KEEP_DAYS) -printf '%h\n' | \
	  while read -r env; do echo ">> removing $$env (no run used it for $(ENV_KEEP_DAYS) days)"; rm -rf "$$env"; done
	@$(PY) -m pip install -q --no-deps --no-build-isolation . >/dev/null

# Test-only reference packages volt never imports: Lightning for the differential
# tests (tests/engine/test_lightning_differential.py), onnx to check what
# LightningModule.to_onnx() writes (tests/engine/test_export.py), and the loggers' clients. A separate venv
# whose .pth file puts the main venv's site-packages on its path: torch and numpy
# are the main venv's (no second torch download, same versions), pip sees them as
# installed and adds only the rest. Keyed by the main venv too, since it points into it.
LIGHTNING_VERSION ?= 2.6.6
ONNX_VERSION ?= 1.23.2
# The client libraries of the MLflow, W&B and Comet loggers (tests/engine/test_loggers_external.py runs
# them offline, next to Lightning's own loggers); volt does not depend on them.
LOGGER_CLIENTS := 'wandb==0.31.0' 'mlflow-skinny==3.17.2' 'comet_ml==3.58.8'
LOGGERS_KEY := $(shell echo "$(LOGGER_CLIENTS)" | sha256sum | cut -c1-8)
LIGHTNING_VENV ?= $(VOLT_CACHE)/venv-lightning-$(LIGHTNING_VERSION)-onnx-$(ONNX_VERSION)-loggers-$(LOGGERS_KEY)-$(DEPS_KEY)
export VOLT_LIGHTNING_PYTHON := $(LIGHTNING_VENV)/bin/python

$(LIGHTNING_VENV)/.ok: | $(VENV)/.ok
	@echo ">> creating the test reference environment $(LIGHTNING_VENV)"
	python3 -m venv $(LIGHTNING_VENV)
	purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'; \
	  $(PY) -c "$$purelib" > "$$($(LIGHTNING_VENV)/bin/python -c "$$purelib")/volt-main-venv.pth"
	$(LIGHTNING_VENV)/bin/python -m pip install -q 'lightning==$(LIGHTNING_VERSION)' 'onnx==$(ONNX_VERSION)' $(LOGGER_CLIENTS)
	$(LIGHTNING_VENV)/bin/python -c 'import lightning.pytorch, onnx, wandb, mlflow, comet_ml, torch; assert torch.__file__.startswith("$(VENV)/"), torch.__file__'
	touch $@

lightning-env: $(LIGHTNING_VENV)/.ok
	@touch $(LIGHTNING_VENV)/.ok

# Debian's Prometheus (prometheus + promtool) for the metrics tests: installed once, idempotent.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"; \
	  $$apt install -y --no-install-recommends prometheus || { $$apt update && $$apt install -y --no-install-recommends prometheus; }; }

# etcd, kube-apiserver/controller-manager/scheduler/kubectl/kubelet, CoreDNS and the
# pod sandbox's pause program from the Go module proxy into
# $(VOLT_CACHE)/{kube,etcd,coredns,pause}/<version>/bin; a no-op once built.
cluster:
	@KUBE_VERSION=$(KUBE_VERSION) ETCD_VERSION=$(ETCD_VERSION) COREDNS_VERSION=$(COREDNS_VERSION) \
	  VOLT_CACHE=$(VOLT_CACHE) bash scripts/build-kube.sh

# The Kueue manager and its CRDs from the Go module proxy into
# $(VOLT_CACHE)/kueue/<version>/{bin,crds} (docs/kueue.md); a no-op once built.
kueue:
	@KUEUE_VERSION=$(KUEUE_VERSION) VOLT_CACHE=$(VOLT_CACHE) bash scripts/build-kueue.sh

# KWOK (simulated nodes: tests/e2e/test_operator_scale.py, `make bench-scale`) from the Go
# module proxy into $(VOLT_CACHE)/kwok/<version>/kwok; a no-op once built.
KWOK_VERSION ?= v0.7.0
export VOLT_KWOK_VERSION := $(KWOK_VERSION)
KWOK_BIN := $(VOLT_CACHE)/kwok/$(KWOK_VERSION)/kwok
.PHONY: kwok bench-scale
$(KWOK_BIN):
	@echo ">> building kwok $(KWOK_VERSION) from the Go module proxy (a few minutes on a cold cache)"
	export VOLT_CACHE=$(VOLT_CACHE) && . scripts/go-env.sh && GOBIN=$(dir $@) go install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)

kwok: $(KWOK_BIN)

# The operator at scale (docs/benchmarks.md, "The operator at scale"): requests while 40 and 50
# suspended jobs idle, then 50 and 500 jobs of 8 nodes on 1,000 KWOK nodes.
bench-scale: setup cluster kwok
	$(PY) bench/operator_scale.py idle --jobs 40,50 --out bench/results/operator_scale_idle.json
	$(PY) bench/operator_scale.py kwok --jobs 50,500 --nodes 1000 --out bench/results/operator_scale_kwok.json

# volt-operator and volt-trainer with docker (scripts/build-images.sh, tag: the
# pyproject version). With CLUSTER_DIR naming a running local cluster of real
# nodes (`--runtime kubelet`), both are then imported into every node.
CLUSTER_DIR ?=
images: setup docker
	@bash scripts/build-images.sh all
	@if [ -n "$(CLUSTER_DIR)" ]; then \
	  version=$$($(PY) -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])"); \
	  DOCKER_HOST=$$(bash scripts/docker-daemon.sh ensure) $(PY) -m volt_operator.testing.cluster load-image \
	    --dir "$(CLUSTER_DIR)" "volt-operator:$$version" "volt-trainer:$$version"; fi

# The images' hashed lock files (requirements/*.lock, installed with pip install
# --require-hashes) from pyproject.toml, with pip-tools from its own environment.
# LOCK_ARGS=--upgrade takes the newest versions; without it, pins that still satisfy
# pyproject.toml are kept. docs/packaging.md, "What is pinned".
PIP_TOOLS_VERSION ?= 7.6.2
PIP_TOOLS_VENV := $(VOLT_CACHE)/venv-pip-tools-$(PIP_TOOLS_VERSION)
LOCK_ARGS ?=

$(PIP_TOOLS_VENV)/.ok:
	python3 -m venv $(PIP_TOOLS_VENV)
	$(PIP_TOOLS_VENV)/bin/python -m pip install -q 'pip-tools==$(PIP_TOOLS_VERSION)'
	touch $@

lock: $(PIP_TOOLS_VENV)/.ok
	VOLT_PIP_COMPILE=$(PIP_TOOLS_VENV)/bin/pip-compile bash scripts/lock-image-requirements.sh $(LOCK_ARGS)

# Debian's containerd, runc and CNI plugins (bridge, host-local, loopback) for the
# local cluster's real nodes (docs/local-cluster.md); installed once, idempotent.
node-runtime:
	@command -v containerd >/dev/null && command -v runc >/dev/null && command -v iptables >/dev/null \
	  && [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"; \
	  pkgs="containerd runc containernetworking-plugins iptables"; \
	  $$apt install -y --no-install-recommends $$pkgs || { $$apt update && $$apt install -y --no-install-recommends $$pkgs; }; }

# helm from the Go module proxy into $(VOLT_CACHE)/helm/<version>/helm, linked
# as $(VOLT_CACHE)/bin/helm; a no-op once built.
HELM_VERSION ?= v3.22.0
helm:
	@HELM_VERSION=$(HELM_VERSION) VOLT_CACHE=$(VOLT_CACHE) bash scripts/build-helm.sh

# Debian's docker.io (dockerd, containerd, runc, client) and debootstrap for the
# image tests; installed once, idempotent. The tests start dockerd themselves
# (scripts/docker-daemon.sh) when no engine answers.
docker:
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"; \
	  $$apt install -y docker.io debootstrap || { $$apt update && $$apt install -y docker.io debootstrap; }; }

# The whole system on this machine: local control plane + two real nodes (kubelet
# + containerd; without root, the node agent), the helm chart with the operator
# in-cluster, an example TrainingJob followed to Succeeded. It keeps running;
# `make demo-down` removes it.
demo: setup prometheus cluster helm node-runtime docker
	@bash scripts/demo.sh up

demo-down:
	@bash scripts/demo.sh down

test: setup lint lightning-env prometheus cluster kwok kueue helm docker node-runtime
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-engine: setup lightning-env prometheus
	$(PY) -m pytest tests/engine $(PYTEST_ARGS)

test-operator: setup cluster
	$(PY) -m pytest tests/operator $(PYTEST_ARGS)

test-e2e: setup prometheus cluster kwok kueue helm docker node-runtime
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# A tier several times in a row with CPUs kept busy (docs/reliability.md, "Tiers under load").
LOADED_TIER ?= test-e2e
LOADED_ROUNDS ?= 5
LOADED_HOGS ?= 1
test-loaded:
	bash scripts/loaded-rounds.sh --rounds $(LOADED_ROUNDS) --hogs $(LOADED_HOGS) $(LOADED_TIER)

# Fault injection on the example job (tests/chaos, docs/reliability.md); VOLT_CHAOS_SEED picks the steps.
test-chaos: setup cluster
	$(PY) -m pytest tests/chaos -v $(PYTEST_ARGS)

# Each benchmark prints its ratio and writes bench/results/<name>.json.
bench: setup
	$(PY) bench/engine_overhead.py
	$(PY) bench/prometheus_overhead.py
	$(PY) bench/ddp_scaling.py
	$(PY) bench/checkpoint.py

lint: setup
	$(PY) scripts/check_test_names.py tests && $(PY) -m compileall -q trainer_image/volt operator/volt_operator tests bench && $(VENV)/bin/lint-imports --config .importlinter

# The CRD is generated from the pydantic models (operator/volt_operator/api.py);
# tests/operator/test_crd.py fails when the committed files drift from them
# (the chart installs its own copy from charts/volt/crds/).
crds: setup
	$(PY) -m volt_operator.crdgen > crds/trainingjob.yaml
	cp crds/trainingjob.yaml charts/volt/crds/trainingjob.yaml
	$(PY) -m volt_operator.docgen > docs/trainingjob.md

clean:
	rm -rf build *.egg-info bench/results/*.json
