# Sidecar Injector: every developer and CI command. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install certs run test unit lint schema schema-check policy-tests golden e2e e2e-all soak haproxy tools image image-local image-check dist chart-lint chart-template bench bench-apiserver bench-growth clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its pinned dependencies

certs: install ## write a development CA and serving pair into certs/ once; later runs reuse them
	@if [ -e certs/tls.crt ]; then echo "certs/: reusing the certificates there (delete them for new ones)"; \
	else $(BIN)/sidecar-injector certs generate --out certs --service sidecar-injector --namespace default \
		>/dev/null && echo "certs/: wrote ca.crt, ca.key, tls.crt, tls.key (see certs/README.md)"; fi

run: certs ## run the webhook on https://127.0.0.1:8443 with certs/ and the shipped policies
	$(BIN)/sidecar-injector serve --host 127.0.0.1 --port 8443 --tls-cert certs/tls.crt --tls-key certs/tls.key

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check webhook tests bench
	$(BIN)/mypy

schema: install ## regenerate policies/schema.json and policies/test-schema.json from the models
	$(BIN)/sidecar-injector policies schema > policies/schema.json
	$(BIN)/sidecar-injector policies schema --test > policies/test-schema.json

schema-check: install ## fail if policies/schema.json or policies/test-schema.json is stale
	@$(BIN)/sidecar-injector policies schema | diff -u policies/schema.json - \
		|| { echo "policies/schema.json is stale: run 'make schema'"; exit 1; }
	@$(BIN)/sidecar-injector policies schema --test | diff -u policies/test-schema.json - \
		|| { echo "policies/test-schema.json is stale: run 'make schema'"; exit 1; }

policy-tests: install ## the shipped policies' own tests (policies/tests), as users run theirs
	$(BIN)/sidecar-injector policies test policies/tests

golden: install ## refresh the golden files under tests/golden (review the diff!)
	REFRESH_GOLDEN=true $(BIN)/pytest -q tests/golden

unit: install ## unit, golden, property and server integration tests (no apiserver, no helm)
	$(BIN)/pytest -q --ignore=tests/e2e --ignore=tests/chart

test: lint schema-check policy-tests unit ## everything CI runs before the end-to-end suite

# the Kubernetes versions the end-to-end suite runs on (tools/versions.env), newest first, and
# the helm (bin/helm: Helm 3, bin/helm4: Helm 4) the chart suites use
K8S_VERSIONS := $(shell . tools/versions.env && echo $$K8S_VERSIONS)
K8S_VERSION ?= $(firstword $(K8S_VERSIONS))
HELM ?= helm4

e2e: image-local haproxy ## the chart and end-to-end suites through a real kube-apiserver (K8S_VERSION=, HELM=)
	K8S_VERSION=$(K8S_VERSION) bash tools/build.sh
	K8S_VERSION=$(K8S_VERSION) HELM=$(HELM) $(BIN)/pytest -q tests/chart tests/e2e

e2e-all: ## make e2e on the newest supported Kubernetes with Helm 4, then the oldest with Helm 3
	$(MAKE) e2e K8S_VERSION=$(firstword $(K8S_VERSIONS)) HELM=helm4
	$(MAKE) e2e K8S_VERSION=$(lastword $(K8S_VERSIONS)) HELM=helm

soak: install haproxy ## the HA soak of docs/reliability.md: 3 minutes through the real apiserver
	K8S_VERSION=$(K8S_VERSION) bash tools/build.sh
	SOAK_SECONDS=180 K8S_VERSION=$(K8S_VERSION) HELM=$(HELM) $(BIN)/pytest -q -s tests/e2e/test_ha.py

haproxy: ## install HAProxy (Debian's package) for the HA soak, when missing
	@command -v haproxy >/dev/null || { echo "installing haproxy"; apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; }

tools: ## build etcd, helm, helm4 and, for every K8S_VERSIONS, kube-apiserver, kube-controller-manager, agnhost into bin/
	bash tools/build.sh

# the one version: pyproject.toml's; the image tag, the chart's appVersion and the Dockerfile follow
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= ghcr.io/company/sidecar-injector:$(VERSION)
# BASE: another base image for the Dockerfile (default: its official slim Python image)
BASE ?=

image: ## build the image with docker, podman or buildah (BASE=... for another base image)
	@engine=$$(command -v docker || command -v podman || command -v buildah) \
		|| { echo "no container engine here: run 'make image-local' instead"; exit 1; }; \
	$$engine build $(if $(BASE),--build-arg BASE=$(BASE)) --build-arg VERSION=$(VERSION) -t $(IMAGE) .

image-local: install ## build the image here without a registry: a local Debian base, buildah, podman
	IMAGE=$(IMAGE) VERSION=$(VERSION) bash tools/image/build.sh

image-check: image-local ## lint the Dockerfile, build it (image-local) and check the image starts

dist: image-local ## wheel, sdist, packaged chart and OCI image archive in dist/
	K8S_VERSION=$(K8S_VERSION) bash tools/build.sh  # for bin/helm
	IMAGE=$(IMAGE) VERSION=$(VERSION) bash tools/image/dist.sh

chart-lint: tools ## helm lint --strict the chart
	bin/helm lint --strict charts/sidecar-injector

chart-template: tools ## render the chart with its defaults
	bin/helm template sidecar-injector charts/sidecar-injector --namespace sidecar-injector

bench: install ## benchmarks (see docs/benchmarks.md); needs wrk (apt-get install wrk)
	@command -v wrk >/dev/null || { echo "bench: installing wrk"; apt-get install -y -qq wrk; }
	$(BIN)/python -m bench

bench-growth: install ## latency against pod size and policies, RSS after 1M reviews (about 6 minutes; not in bench)
	@command -v wrk >/dev/null || { echo "bench: installing wrk"; apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.growth --plot docs/bench-growth.png

bench-apiserver: install ## pod creation through the e2e control plane: no webhook, ours, agnhost, compiled (about 3 minutes; not in bench)
	K8S_VERSION=$(K8S_VERSION) bash tools/build.sh
	K8S_VERSION=$(K8S_VERSION) $(BIN)/python -m bench.apiserver --plot docs/bench-apiserver.png

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
