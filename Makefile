# kplab: two commands for a newcomer.  `make lab` gives a running lab (JupyterLab on labs/),
# `make test` runs the whole suite.  Both install what they need first (as root, Debian/Ubuntu).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBS := iproute2 iputils-ping iptables nfacct nftables ipvsadm ipset conntrack tcpdump util-linux procps kmod clang llvm bpftool libbpf-dev
TEST_DEBS := chromium chromium-driver
STAMP := $(VENV)/.kplab-installed

.PHONY: setup debs test-debs lab test test-unit test-ipvs clean-labs image hub-image wheelhouse

setup: debs $(STAMP) bpf/kplab_lb.o  ## install Debian packages and the venv (creates .venv/bin/kplab)

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

# The eBPF mode's programs (kplab/proxy/ebpf), compiled with Debian's clang; BTF in the object for bpftool.
bpf/kplab_lb.o: bpf/kplab_lb.c
	clang -O2 -g -target bpf -mcpu=v3 -I/usr/include/$$(uname -m)-linux-gnu -Wall -c $< -o $@

lab: setup  ## bring the default lab up and open JupyterLab on labs/
	$(BIN)/kplab lab

test: setup test-debs  ## the import contracts (pyproject.toml), then the whole suite (root: real namespaces)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-ipvs: setup  ## just the IPVS tests (in a throwaway VM when the host kernel lacks IPVS)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m ipvs tests

clean-labs: setup  ## remove leftovers of crashed labs (by the kplab- prefix only)
	$(BIN)/kplab clean --all

# The workshop image (docs/WORKSHOP.md).  `docker compose build` does the same with its own knobs.
# EXTRA_CA: one or more PEM files (default: the host's own extra CAs, /usr/local/share/ca-certificates).
# BUILD_NETWORK: host by default, so builds reach the mirrors even where the engine gives build containers
# no network (dockerd --bridge=none, as in our tests); BUILD_NETWORK=default for the engine's own.
# --force-rm: a failed build step leaves no container behind.
IMAGE ?= kplab/lab:latest
HUB_IMAGE ?= kplab/hub:latest
WHEELHOUSE ?= 0
EXTRA_CA ?= $(wildcard /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt)
BUILD_NETWORK ?= host
DOCKER_BUILD_FLAGS ?=
image:  ## the workshop image; WHEELHOUSE=1: pip only from containers/lab/wheelhouse; EXTRA_CA="a.pem b.pem"
	@docker image inspect debian:bookworm-slim >/dev/null 2>&1 || docker pull debian:bookworm-slim \
	  || containers/lab/build-base debian:bookworm-slim
	docker build --force-rm --network=$(BUILD_NETWORK) $(DOCKER_BUILD_FLAGS) -f containers/lab/Dockerfile -t $(IMAGE) \
	  --build-arg WHEELHOUSE=$(WHEELHOUSE) --build-arg EXTRA_CA_CERTS="$$(cat /dev/null $(EXTRA_CA))" .

hub-image: image  ## the class's hub (JupyterHub + DockerSpawner) on top of the workshop image (docs/WORKSHOP.md)
	docker build --force-rm --network=$(BUILD_NETWORK) $(DOCKER_BUILD_FLAGS) -f containers/hub/Dockerfile \
	  -t $(HUB_IMAGE) --build-arg LAB_IMAGE=$(IMAGE) --build-arg EXTRA_CA_CERTS="$$(cat /dev/null $(EXTRA_CA))" .

# Wheels for bookworm's Python (3.11.2) on this machine's platform: build the image on the same architecture.
wheelhouse: setup  ## wheels of everything the image pip-installs, for `make image WHEELHOUSE=1` offline
	$(BIN)/pip download -q --only-binary=:all: --python-version 3.11.2 -d containers/lab/wheelhouse \
	  -r <($(BIN)/python containers/lab/requirements.py)
