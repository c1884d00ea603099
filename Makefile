# Developer entry points. The test control plane is built from source and
# cached under $(HOME)/.cache/dscc-token-operator; see testenv/README.md.
SHELL := bash
# "make cluster-up | tail -1" must end with the kubeconfig path: recipes are
# quiet (@) and sub-makes print no directory. A top-level "make -C dir" still
# prints "Leaving directory" last unless called as "make -s -C dir".
MAKEFLAGS += --no-print-directory

.SHELLFLAGS := -euo pipefail -c

# Kubernetes version of the control plane: 1.37.2 (default) or 1.35.4.
K8S_VERSION ?= 1.37.2
export K8S_VERSION
CLUSTER_DIR ?= $(HOME)/.cache/dscc-token-operator/cluster

.PHONY: tools cluster-up cluster-down

## tools: build kube-apiserver, kube-controller-manager, kubectl, etcd, helm (cached)
tools:
	@testenv/build.sh all

## cluster-up: start the control plane; the last line is the kubeconfig path
cluster-up:
	@testenv/cluster.sh up $(CLUSTER_DIR)

## cluster-down: stop the control plane (logs stay in $(CLUSTER_DIR)/logs)
cluster-down:
	@testenv/cluster.sh down $(CLUSTER_DIR)

# more targets below

# Where cargo builds; .ci/run points it under $(HOME)/.cache so CI reuses it.
CARGO ?= cargo

.PHONY: test lint unit e2e compat demo demo-down

## test: everything: lint, unit tests, end-to-end tests on 1.37.2, the 1.35.4 subset
test: lint
	@testenv/build.sh k8s etcd
	$(CARGO) test --all-targets --no-fail-fast
	@K8S_VERSION=1.35.4 testenv/build.sh k8s etcd
	K8S_VERSION=1.35.4 $(CARGO) test --test compat

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## unit: the fast tests, no control plane
unit:
	$(CARGO) test --lib --test crd_drift --test token_client

## demo: the operator end to end on a local control plane (KEEP=1 leaves it running)
demo:
	@testenv/demo.sh

## demo-down: stop what KEEP=1 make demo left running
demo-down:
	@pkill -f 'dscc-token-operator run --allow-insecure-token-url' || true
	@pkill -f 'examples/token_endpoint --port 0' || true
	@testenv/cluster.sh down $(HOME)/.cache/dscc-token-operator/demo/cluster

.PHONY: crds
## crds: regenerate the CRD from src/api.rs into crds/ and the chart (tests check both)
crds:
	$(CARGO) run --quiet -- crd > crds/dscc.io_dscccredentials.yaml
	cp crds/dscc.io_dscccredentials.yaml charts/dscc-token-operator/crds/

.PHONY: bench
# Credentials for make bench; also N=10000 make bench, or make bench ARGS="--credentials 10000".
N ?= 1000
## bench: the operator at scale on its own local control plane; prints a table, writes
## target/bench/results.json (ARGS="--help" lists the knobs)
bench:
	$(CARGO) build --release --bin dscc-token-operator --example bench
	$(CARGO) run --release --quiet --example bench -- --credentials $(N) $(ARGS)
