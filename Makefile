# Tidehost: `make demo` runs the main job, `make test` runs every test.
# Both set up everything they need first, idempotently: Debian packages with apt-get,
# Python packages in .venv.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# What the build machine needs: image build (mmdebstrap, squashfs/erofs, verity, GPT, ESP
# through mtools), QEMU with UEFI firmware, a NoCloud seed, a real etcd, cloud-init and casync
# for the tests, gcc for the casync chunker library, ssh for pytest-testinfra.
APT_PACKAGES := mmdebstrap uidmap arch-test squashfs-tools erofs-utils cryptsetup-bin fdisk \
	mtools dosfstools e2fsprogs zstd qemu-system-x86 qemu-utils ovmf genisoimage \
	openssh-client netcat-openbsd etcd-server etcd-client cloud-init iproute2 python3-venv \
	vagrant vagrant-libvirt systemd util-linux tar gzip casync gcc binutils

.PHONY: setup apt venv demo test test-fast bench clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q $$missing; \
	else echo "apt-get: all $(words $(APT_PACKAGES)) system packages present"; fi
	@# Debian starts etcd and cloud-init services on install where it can; the tests start their own.
	@systemctl disable --now etcd >/dev/null 2>&1 || true

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tidehost demo

test: setup
	$(VENV)/bin/pytest -v --durations=20

test-fast: setup
	$(VENV)/bin/pytest -v -m 'not slow and not vm'

bench: setup
	@for b in bench/*; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf out build
