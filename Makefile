# kplab: two commands for a newcomer.  `make lab` gives a running lab (JupyterLab on labs/),
# `make test` runs the whole suite.  Both install what they need first (as root, Debian/Ubuntu).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := iproute2 iputils-ping iptables nfacct nftables ipvsadm ipset conntrack tcpdump util-linux procps kmod
TEST_DEBS := chromium chromium-driver
STAMP := $(VENV)/.kplab-installed

.PHONY: setup debs test-debs lab test test-unit test-ipvs clean-labs image wheelhouse

setup: debs $(STAMP)  ## install Debian packages and the venv (creates .venv/bin/kplab)

debs:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test-debs:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[lab,test]'
	@touch $(STAMP)

lab: setup  ## bring the default lab up and open JupyterLab on labs/
	$(BIN)/kplab lab

test: setup test-debs  ## the whole suite (root: real namespaces)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-ipvs: setup  ## just the IPVS tests (in a throwaway VM when the host kernel lacks IPVS)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ipvs tests

clean-labs: setup  ## remove leftovers of crashed labs (by the kplab- prefix only)
	$(BIN)/kplab clean --all

# The workshop image (docs/WORKSHOP.md).  `docker compose build` does the same with its own knobs.
IMAGE ?= kplab/lab:latest
WHEELHOUSE ?= 0
EXTRA_CA ?=
DOCKER_BUILD_FLAGS ?=
image:  ## the workshop image; WHEELHOUSE=1: pip only from containers/lab/wheelhouse; EXTRA_CA=corp.pem
	@docker image inspect debian:bookworm-slim >/dev/null 2>&1 || docker pull debian:bookworm-slim \
	  || containers/lab/build-base debian:bookworm-slim
	docker build $(DOCKER_BUILD_FLAGS) -f containers/lab/Dockerfile -t $(IMAGE) --build-arg WHEELHOUSE=$(WHEELHOUSE) \
	  --build-arg EXTRA_CA_CERTS="$$( [ -z '$(EXTRA_CA)' ] || cat '$(EXTRA_CA)')" .

# Wheels for bookworm's Python (3.11.2) on this machine's platform: build the image on the same architecture.
wheelhouse: setup  ## wheels of everything the image pip-installs, for `make image WHEELHOUSE=1` offline
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.11.2 -d containers/lab/wheelhouse \
	  -r <($(BIN)/python containers/lab/requirements.py)
