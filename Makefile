# zt: `make test` sets up a fresh Debian 12 machine (as root) and runs every test tier plus
# mypy --strict and ruff. `make setup` alone is idempotent.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := .stamps

.PHONY: setup test lint typecheck unit bench bench-node bench-fleet clean

setup: $(STAMP)/venv
	@scripts/setup-host.sh

$(STAMP)/venv: pyproject.toml scripts/setup-venv.sh
	@scripts/setup-host.sh
	@VENV=$(VENV) scripts/setup-venv.sh
	@mkdir -p $(STAMP) && touch $@

lint: setup
	$(VENV)/bin/ruff check zt cli tests bench vagrant
	$(VENV)/bin/ruff format --check zt cli tests bench vagrant

typecheck: setup
	$(VENV)/bin/mypy --strict

test: setup lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Not a test: direct TCP vs an Envoy pair vs a zt pair on loopback (BENCH_ARGS=--quick: < 2 min).
bench: setup
	$(PY) -m bench.hbone_bench $(BENCH_ARGS)

# Not a test, as root: pod to pod across two captured nodes, direct vs Envoy vs zt as the node
# proxy (`zt bench node`; BENCH_NODE_ARGS=--quick: < 3 min, a full run ~10 min).
bench-node: setup
	$(VENV)/bin/zt bench node $(BENCH_NODE_ARGS)

# Not a test: 100 simulated fleet nodes against one etcd, 5,000 workloads (docs/fleet.md; <= 5 min).
bench-fleet: setup
	$(PY) -m bench.fleet_scale $(BENCH_FLEET_ARGS)

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# The sdist and the wheel, into dist/ (version: zt/__init__.py). tests/packaging builds the same
# way and installs the wheel in a fresh venv. Byte-compiling on: setuptools warns when it is off.
.PHONY: dist
dist: $(STAMP)/venv
	rm -f dist/zt-*.tar.gz dist/zt-*.whl
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) $(STAMP) .mypy_cache .ruff_cache .pytest_cache

# The local lab (`make lab`, the main job) and the VM lab on real kernels (`make vm-test`).
include lab.mk
include vagrant/vm-test.mk
