"""Tidehost's workstation toolkit: image build, VMs, cloud-config, Vagrant, and the CLI."""
