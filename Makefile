# Tidehost: `make demo` runs the main job, `make test` runs every test.
# Both set up everything they need first, idempotently: Debian packages with apt-get,
# Python packages in .venv.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

# What each part needs on the build machine, installed without recommends (the list is the
# whole set: nothing else is pulled in but their dependencies).
APT_IMAGE := mmdebstrap mount gpg squashfs-tools erofs-utils cryptsetup-bin fdisk mtools \
	dosfstools e2fsprogs zstd qemu-utils genisoimage systemd util-linux tar gzip gcc libc6-dev binutils
APT_VM := qemu-system-x86 ovmf openssh-client netcat-openbsd iproute2
APT_TEST := etcd-server etcd-client cloud-init python3-venv casync softhsm2 opensc
APT_BOOT := swtpm swtpm-tools sbsigntool efitools
APT_FLEET := chromium chromium-driver
APT_VAGRANT := vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base
APT_PACKAGES := $(APT_IMAGE) $(APT_VM) $(APT_TEST) $(APT_BOOT) $(APT_FLEET) $(APT_VAGRANT)

.PHONY: setup apt venv demo demo-vagrant demo-vagrant-down test test-fast bench clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
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

# The 3-node Vagrant cluster from a served channel (vagrant/demo.sh; NODES=1 for one node).
demo-vagrant: setup
	vagrant/demo.sh up

demo-vagrant-down:
	vagrant/demo.sh down

test: setup
	$(VENV)/bin/pytest -v --durations=20

test-fast: setup
	$(VENV)/bin/pytest -v -m 'not slow and not vm'

bench: setup
	@for b in bench/*; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf out build
