"""libvirt for Vagrant clusters: started here when no service runs it, stopped by its starter.

On a machine with systemd, ``libvirt-daemon-system`` runs libvirtd (socket-activated):
``start`` finds it answering and starts nothing, and vagrant runs as usual.

Where PID 1 is not systemd (containers, CI machines like ours) nothing starts libvirtd.
``start`` then runs it in a network namespace of its own, so that libvirt's NAT networks
(vagrant-libvirt's management network with its dnsmasq) come up there and lead nowhere
else; this is the whole recipe, idempotent (each step is skipped when already done)::

    ip netns add tidehost-libvirt
    ip -n tidehost-libvirt link set lo up
    ip -n tidehost-libvirt addr add 192.168.120.1/32 dev lo     # the service address
    ip netns exec tidehost-libvirt virtlogd -d
    ip netns exec tidehost-libvirt libvirtd -d                  # until `virsh version` answers

The QEMUs libvirtd starts inherit its namespace, so vagrant, which SSHes to each guest's
DHCP address on the management network, runs there too (``ip netns exec tidehost-libvirt
vagrant up``); so does the channel server the boxes and the nodes' agents fetch from, on
the service address (it exists before ``vagrant up`` makes the networks; the guests reach
it through their default gateway). The namespace has no link out: only loopback, the
namespace itself and its guests are ever addressed.

``stop`` ends only what ``start`` started (recorded in ``/run/tidehost/libvirt.json``),
and refuses while libvirt still has domains or active networks (``vagrant destroy`` first).
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from channels.serve import ChannelServer, published_root
from imagebuild.core.errors import CommandTimeout, VMError
from imagebuild.core.files import write_atomic
from imagebuild.core.run import require, run
from imagebuild.core.wait import poll
from imagebuild.lab.net import enter_netns, in_netns, netns_exists

log = logging.getLogger(__name__)

URI = "qemu:///system"
NETNS = "tidehost-libvirt"
SERVICE_ADDRESS = "192.168.120.1"  # on the namespace's loopback: the channel server's
STATE_FILE = Path("/run/tidehost/libvirt.json")
DAEMONS = ("virtlogd", "libvirtd")  # started in this order, stopped in the reverse
PIDFILES = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}


@dataclass(frozen=True)
class LibvirtState:
    """Where libvirtd runs and what ``start`` started (``/run/tidehost/libvirt.json``)."""

    netns: str = ""  # the namespace libvirtd runs in; "" = this process's own
    service_address: str = ""  # where guests and vagrant reach a server in it ("": none)
    made_netns: bool = False
    pids: tuple[tuple[str, int], ...] = ()  # (daemon, pid) that start started

    @property
    def started(self) -> bool:
        return bool(self.pids) or self.made_netns

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command where libvirtd's guests are reachable."""
        return in_netns(self.netns or None, [])

    def save(self, path: Path = STATE_FILE) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path = STATE_FILE) -> LibvirtState | None:
        try:
            raw = json.loads(path.read_text())
            return cls(netns=raw["netns"], service_address=raw["service_address"],
                       made_netns=raw["made_netns"],
                       pids=tuple((str(n), int(p)) for n, p in raw["pids"]))  # fmt: skip
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VMError(f"{path}: not a libvirt state file ({e})") from None


def virsh(*args: str, timeout: float = 30) -> str:
    """``virsh -c qemu:///system ARGS``'s output.

    Raises:
        VMError: libvirt does not answer or the command failed (its message).
    """
    try:
        r = run(["virsh", "-c", URI, *args], check=False, capture=True, timeout=timeout)
    except CommandTimeout:
        raise VMError(f"virsh {' '.join(args)}: libvirt did not answer in {timeout:.0f}s") from None
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise VMError(f"virsh {' '.join(args)}: {err[0] if err else f'exit {r.returncode}'}")
    return r.stdout.decode(errors="replace")


def answers() -> bool:
    """Whether libvirtd answers on qemu:///system now."""
    try:
        virsh("version", timeout=15)
    except VMError:
        return False
    return True


def _pid(daemon: str) -> int:
    """The pid in ``daemon``'s pidfile if that process is ``daemon`` and alive, else 0."""
    try:
        pid = int(PIDFILES[daemon].read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return 0
    return pid if comm == daemon else 0


def _netns_of(pid: int) -> str:
    """The name (under /run/netns) of ``pid``'s network namespace; "" when it is ours."""
    try:
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        if ino == os.stat("/proc/self/ns/net").st_ino:
            return ""
        names = os.listdir("/run/netns")
    except OSError:
        return ""
    for name in sorted(names):
        with contextlib.suppress(OSError):
            if os.stat(f"/run/netns/{name}").st_ino == ino:
                return name
    return f"(pid {pid}'s)"


def running() -> LibvirtState | None:
    """The libvirt that answers now (None: none does), with the namespace it runs in."""
    if not answers():
        return None
    recorded = LibvirtState.load()
    pid = _pid("libvirtd")
    netns = _netns_of(pid) if pid else ""
    if recorded is not None and recorded.netns == netns:
        return recorded
    return LibvirtState(netns=netns)


def kvm_device_for_qemu(dev: Path = Path("/dev/kvm")) -> None:
    """Give ``dev`` the group and mode Debian's udev rule gives it (root:kvm 0660) where no
    udev ran (``crw------- root root``). libvirt's QEMU user (in group kvm) then has the
    access libvirt checks for: QEMU's probe finds KVM, and without that access libvirt
    takes its cached capabilities for stale and probes QEMU again on every call (4 s
    each, 32 s for one ``virsh define`` here). Whether guests can run under KVM is the
    Vagrantfile's business (``TIDEHOST_LIBVIRT_DRIVER`` or init's boot probe)."""
    try:
        st, kvm = dev.stat(), grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return  # no device, or no kvm group (libvirt not installed): nothing to do
    if st.st_uid == 0 and st.st_gid == 0 and st.st_mode & 0o077 == 0:
        os.chown(dev, 0, kvm)
        os.chmod(dev, 0o660)
        log.info("%s: group kvm, mode 0660 (what udev would have set)", dev)


def start(netns: str = NETNS, service_address: str = SERVICE_ADDRESS,
          timeout: float = 60) -> LibvirtState:  # fmt: skip
    """libvirt answering on qemu:///system: the one running, or virtlogd and libvirtd
    started in ``netns`` (see the module's recipe); the state is recorded for ``stop``.

    Raises:
        ToolMissingError: libvirt or iproute2 is not installed.
        VMError: libvirtd did not come up (what was started is stopped again).
    """
    found = running()
    if found is not None:
        return found
    require("ip", "virsh", *DAEMONS)
    kvm_device_for_qemu()
    made = not netns_exists(netns)
    if made:
        run(["ip", "netns", "add", netns])
    state = LibvirtState(netns=netns, service_address=service_address, made_netns=made)
    state.save()
    try:
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        addrs = run(["ip", "-n", netns, "-o", "addr", "show", "dev", "lo"], capture=True)
        if f" {service_address}/" not in addrs.stdout.decode():
            run(["ip", "-n", netns, "addr", "add", f"{service_address}/32", "dev", "lo"])
        pids = []
        for daemon in DAEMONS:
            if _pid(daemon) == 0:
                run(in_netns(netns, [daemon, "-d"]))
                if not poll(lambda d=daemon: _pid(d), 10, every=0.2):
                    raise VMError(f"{daemon} -d did not start (no live pid in {PIDFILES[daemon]})")
                pids.append((daemon, _pid(daemon)))
        state = LibvirtState(netns=netns, service_address=service_address, made_netns=made,
                             pids=tuple(pids))  # fmt: skip
        state.save()
        if not poll(answers, timeout, every=0.5):
            raise VMError(f"libvirtd started in netns {netns} but {URI} did not answer "
                          f"within {timeout:.0f}s")  # fmt: skip
    except BaseException:
        stop(force=True)
        raise
    return state


@contextlib.contextmanager
def session() -> Iterator[LibvirtState]:
    """libvirt for the block: started if nothing runs it, and then stopped again after."""
    before = running()
    state = before or start()
    try:
        yield state
    finally:
        if before is None:
            stop()


def serve_channel(state: LibvirtState, repo: Path, port: int = 0) -> ChannelServer:
    """A channel server (this process, a thread) for ``repo``'s published tree where
    libvirt's guests and vagrant reach it: on the service address inside libvirtd's
    namespace, or on 127.0.0.1 when libvirtd shares ours. ``stop()`` it when done."""
    made: list[ChannelServer] = []
    failed: list[BaseException] = []
    root = published_root(Path(repo))
    host = state.service_address or "127.0.0.1"

    def bind() -> None:  # the socket lives in the namespace of the thread that opens it
        try:
            if state.netns:
                enter_netns(state.netns)
            made.append(ChannelServer(root, host, port))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failed.append(e)

    t = threading.Thread(target=bind, name="tidehost-libvirt-bind")
    t.start()
    t.join()
    if failed:
        raise VMError(f"channel server on {host}:{port} in netns {state.netns}: {failed[0]}")
    made[0].start()
    return made[0]


def leftovers() -> list[str]:
    """Domains and active networks libvirt still has (what ``vagrant destroy`` removes)."""
    domains = virsh("list", "--all", "--name").split()
    networks = virsh("net-list", "--name").split()
    return [*(f"domain {d}" for d in domains), *(f"network {n}" for n in networks)]


def _end(daemon: str, pid: int) -> bool:
    if _pid(daemon) != pid:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not poll(lambda: _pid(daemon) != pid, 15, every=0.2):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def stop(force: bool = False) -> list[str]:
    """Stop what ``start`` started (nothing when a service runs libvirt); say what went.

    Raises:
        VMError: libvirt still has domains or active networks (unless ``force``).
    """
    state = LibvirtState.load()
    if state is None:
        return []
    if not force and state.pids and answers():
        left = leftovers()
        if left:
            raise VMError(f"libvirt still has {', '.join(left)}: remove them first "
                          "(vagrant destroy -f), or stop with --force")  # fmt: skip
    done = []
    for daemon, pid in reversed(state.pids):
        if _end(daemon, pid):
            done.append(f"{daemon} (pid {pid})")
    if state.made_netns and netns_exists(state.netns):
        run(["ip", "netns", "del", state.netns])
        done.append(f"netns {state.netns}")
    STATE_FILE.unlink(missing_ok=True)
    return done


def describe(state: LibvirtState | None) -> str:
    """One paragraph for a user: where libvirt runs and how to reach its guests."""
    if state is None:
        return f"libvirt: not running ({URI} does not answer): run `tidehost vagrant libvirt start`"
    if not state.netns:
        return f"libvirt: {URI} answers, in this network namespace: run vagrant as usual"
    text = (f"libvirt: {URI} answers; libvirtd runs in netns {state.netns}: run vagrant there "
            f"(ip netns exec {state.netns} vagrant up)")  # fmt: skip
    if state.service_address:
        text += (f"; serve the channel there on {state.service_address} (ip netns exec "
                 f"{state.netns} tidehost channel serve REPO --bind {state.service_address})")
    return text
