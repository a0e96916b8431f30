# Two commands do all set-up on a fresh Debian 12 machine (as root, or with sudo):
#   make run    install what the server needs and serve the embedded default target
#   make test   install what the tests need (Debian packages, venv) and run them all
#   make demo   boot a Linux guest on the default target and show the CDBs it sends
# The Python environment lives in .venv at the repository root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?= -n 2
LINT := target tests images qemu tools/conformance tools/bench tools/crashtest tools/droptest tools/soak \
        tools/guest-smoke tools/demo tools/fuzz tools/*.py

# Debian packages: what building the venv needs, and the real peers the tests use
# (QEMU and its iscsi:// driver, libiscsi's tools, tgtd, sg3_utils, the guest image tools,
# node for the independent lzjb implementation the dump tests compare with).
DEB_VENV := python3-venv python3-pip python3-dev gcc
DEB_TEST := qemu-system-x86 qemu-block-extra qemu-utils libiscsi-bin tgt sg3-utils \
            busybox-static cpio kmod open-iscsi zstd makedumpfile iperf3

.PHONY: run test demo venv deps-venv deps-test deps-node lint clean

run: venv
	$(VENV)/bin/scsi-target serve

demo: deps-test venv
	$(PY) tools/demo

test: deps-test venv
	$(PY) -m ruff check $(LINT)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check $(LINT)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | deps-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fast,tools]'
	touch $@

# Install the named Debian packages that are missing (nothing when all are present).
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:" $$missing; \
	    $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps-venv:
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	    $(MAKE) --no-print-directory deps-venv-debian; fi

deps-venv-debian:
	$(call apt_install,$(DEB_VENV))

deps-test:
	$(call apt_install,$(DEB_TEST))
	@# npm's lzjb (a JavaScript lzjb), the oracle of tests/unit/test_dump_illumos.py; Debian's
	@# nodejs and npm unless a node with npm is there already (NodeSource's conflicts with them).
	@if ! command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory deps-node; fi
	@d="$${XDG_CACHE_HOME:-$$HOME/.cache}/scsi-target/lzjb-js"; \
	if [ ! -f "$$d/node_modules/lzjb/package.json" ]; then \
	    echo "installing npm lzjb@0.0.4 into $$d"; \
	    npm install -q --no-audit --no-fund --prefix "$$d" lzjb@0.0.4; fi
	@# tgt's package may start a system tgtd on 0.0.0.0:3260; the tests start their own.
	@if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q tgt 2>/dev/null; then \
	    $(SUDO) systemctl disable --now tgt; fi

deps-node:
	$(call apt_install,nodejs npm)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
