# Sidecar Injector: every developer and CI command. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install run test unit lint schema schema-check golden e2e tools image image-check chart-lint chart-template bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its pinned dependencies

run: install ## run the webhook on https://127.0.0.1:8443 with dev certificates and the shipped policies
	$(BIN)/sidecar-injector serve --host 127.0.0.1 --port 8443

lint: install ## ruff and mypy --strict
	$(BIN)/ruff check webhook tests bench
	$(BIN)/mypy

schema: install ## regenerate policies/schema.json from the policy model
	$(BIN)/sidecar-injector policies schema > policies/schema.json

schema-check: install ## fail if policies/schema.json is stale
	@$(BIN)/sidecar-injector policies schema | diff -u policies/schema.json - \
		|| { echo "policies/schema.json is stale: run 'make schema'"; exit 1; }

golden: install ## refresh the golden files under tests/golden (review the diff!)
	REFRESH_GOLDEN=true $(BIN)/pytest -q tests/golden

unit: install ## unit, golden, property and server integration tests (no apiserver, no helm)
	$(BIN)/pytest -q --ignore=tests/e2e --ignore=tests/chart

test: lint schema-check unit ## everything CI runs before the end-to-end suite

e2e: install tools ## the chart and end-to-end suites, through a real kube-apiserver
	$(BIN)/pytest -q tests/chart tests/e2e

tools: ## build etcd, kube-apiserver, kube-controller-manager, helm, agnhost into bin/
	bash tools/build.sh

IMAGE ?= ghcr.io/company/sidecar-injector:0.1.0

image: ## build the container image (needs docker, podman or buildah)
	@engine=$$(command -v docker || command -v podman || command -v buildah) \
		|| { echo "no container engine here: run 'make image-check' instead"; exit 1; }; \
	$$engine build -t $(IMAGE) .

image-check: install ## lint the Dockerfile and run its install steps in a clean virtualenv
	bash tools/check-image.sh

chart-lint: tools ## helm lint --strict the chart
	bin/helm lint --strict charts/sidecar-injector

chart-template: tools ## render the chart with its defaults
	bin/helm template sidecar-injector charts/sidecar-injector --namespace sidecar-injector

bench: install ## benchmarks (see docs/benchmarks.md); needs wrk (apt-get install wrk)
	@command -v wrk >/dev/null || { echo "bench: installing wrk"; apt-get install -y -qq wrk; }
	$(BIN)/python -m bench

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
