"""vagrant: Vagrant box catalogs per channel, and the Vagrantfile of a local cluster.

``catalog`` is the pure catalog logic, ``catalog_io`` keeps the catalogs in a channel
repository's served tree, ``vagrantfile`` renders ``vagrant/Vagrantfile.j2`` with the
cluster's seeds. Imports ``core`` and ``cloudconfig``.
"""
