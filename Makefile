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

.PHONY: test lint unit compat soak alerts image image-test demo demo-down

## test: everything on every change: lint, unit tests, end-to-end tests on 1.37.2 (control
## plane, Keycloak, oidc-provider, Prometheus, the chart), the compatibility subset on 1.35.4
test: lint
	@testenv/build.sh k8s etcd helm
	$(CARGO) test --workspace --all-targets --no-fail-fast
	@K8S_VERSION=1.35.4 testenv/build.sh k8s etcd
	K8S_VERSION=1.35.4 $(CARGO) test --test compat

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit: the fast tests, no control plane
unit:
	$(CARGO) test --lib --test crd_drift --test token_client

## compat: the compatibility subset on 1.35.4 only
compat:
	@K8S_VERSION=1.35.4 testenv/build.sh k8s etcd
	K8S_VERSION=1.35.4 $(CARGO) test --test compat

## soak: 100 credentials with 10-second tokens for 10 minutes (SOAK_SECONDS=... to change)
soak:
	@testenv/build.sh k8s etcd
	$(CARGO) test --test e2e_faults -- --ignored --nocapture

## alerts: the chart's alerts in promtool, and the dashboard's queries
alerts:
	@testenv/prometheus/test-rules.sh

## image: build the Dockerfile with buildah and local stand-ins for its base images
image:
	@testenv/image/build.sh

## image-test: build the image, then run it as the chart's Pod does against the control plane
image-test: image
	@testenv/build.sh k8s etcd
	$(CARGO) test --test e2e_image -- --ignored --nocapture

## demo: the operator end to end on a local control plane (KEEP=1 leaves it running)
demo:
	@testenv/demo.sh

## demo-down: stop what KEEP=1 make demo left running
demo-down:
	@pkill -f 'dscc-token-operator run --allow-insecure-token-url' || true
	@pkill -f 'token-endpoint --port 0' || true
	@testenv/cluster.sh down $(HOME)/.cache/dscc-token-operator/demo/cluster

.PHONY: crds
## crds: regenerate the CRD from src/api.rs into crds/ and the chart (tests check both)
crds:
	$(CARGO) run --quiet -- crd > crds/dscc.io_dscccredentials.yaml
	cp crds/dscc.io_dscccredentials.yaml charts/dscc-token-operator/crds/

.PHONY: bench
# Credentials for make bench; also N=10000 make bench, or make bench ARGS="--help".
N ?= 1000
## bench: the operator at scale on its own local control plane; prints tables, writes
## target/bench/ (results.json and plots; ARGS="--help" lists the knobs)
bench:
	@testenv/build.sh k8s etcd
	$(CARGO) build --release -p dscc-token-operator --bin dscc-token-operator -p dscc-testkit --bin bench
	$(CARGO) run --release --quiet -p dscc-testkit --bin bench -- --credentials $(N) $(ARGS)
