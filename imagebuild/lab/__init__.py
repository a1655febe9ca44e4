"""lab: Tidehost hosts on this machine, under QEMU.

A VM (``vm``), a cluster of VMs on a private bridge in a network namespace (``cluster``), a
channel repository served to them (``channel``), a local etcd (``etcd``), a probe of a
replicated service (``probe``), the rolling-update watcher (``rollout``), the single-host
update lab (``hostlab``), the agent's status as a value (``agent``), ports and network
namespaces (``net``) and the demo (``demo``).
Imports ``core``, ``image``, ``cloudconfig`` and ``vagrant``; calls the toolkit's functions,
never a subprocess of itself.
"""
