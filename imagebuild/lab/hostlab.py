"""An update lab on one machine: a signed channel served on 127.0.0.1, a local etcd for the
reboot lock, and QEMU hosts whose agent polls both (as 10.0.2.2 from the guest).

``make demo`` and the end-to-end update tests drive the same lab, so what the demo shows is
what the tests prove.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from channels.serve import ChannelServer
from imagebuild.core.errors import VMError
from imagebuild.core.run import run
from imagebuild.core.wait import poll
from imagebuild.lab import channel as repo_ops
from imagebuild.lab.agent import AgentStatus, status
from imagebuild.lab.etcd import LocalEtcd
from imagebuild.lab.vm import VM

log = logging.getLogger(__name__)
GUEST_HOST = "10.0.2.2"  # the build machine's loopback, seen from a user-networking guest
ROOT_ON_HOST = "/etc/tidehost/channel-root.json"


def agent_user_data(
    *,
    channel_url: str,
    channel: str,
    root_json: str,
    etcd_url: str,
    strategy: str = "etcd-lock",
    interval: str = "20s",
    group: str = "default",
    health_units: tuple[str, ...] = ("ssh.service",),
) -> str:
    """#cloud-config that points the host's agent at the lab's channel and etcd (pure)."""
    config = {
        "strategy": strategy,
        "group": group,
        "max": 1,
        "channel": {"url": channel_url, "name": channel, "root": ROOT_ON_HOST},
        "check": {"interval": interval, "jitter": "0s"},
        "etcd": {"endpoints": [etcd_url]},
        "health": {"units": list(health_units), "deadline": "5m"},
    }
    doc = {
        "write_files": [
            {"path": "/etc/tidehost/update.yaml", "permissions": "0644",
             "content": yaml.safe_dump(config, sort_keys=False)},
            {"path": ROOT_ON_HOST, "permissions": "0644", "content": root_json},
        ],  # fmt: skip
        "runcmd": [["systemctl", "restart", "tidehost-update.service"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


class UpdateLab:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.server: ChannelServer | None = None
        self.etcd = LocalEtcd(workdir / "etcd")

    # --- the release engineer's side ------------------------------------------------

    def start(self) -> UpdateLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.repo / "published").exists():
            repo_ops.init(self.repo)
        self.server = ChannelServer(self.repo / "published", host="127.0.0.1", port=0)
        self.server.start()
        self.etcd.start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        self.etcd.stop()

    @property
    def guest_channel_url(self) -> str:
        assert self.server is not None
        return f"http://{GUEST_HOST}:{self.server.server_address[1]}/"

    def publish(self, bundle: Path, channel: str = "alpha") -> None:
        repo_ops.publish(self.repo, bundle, channel)

    def user_data(self, channel: str = "alpha", **kw: Any) -> str:
        root = (self.repo / "published/metadata/root.json").read_text()
        return agent_user_data(channel_url=self.guest_channel_url, channel=channel,
                               root_json=root, etcd_url=self.etcd.guest_url(), **kw)  # fmt: skip

    def lock_holders(self, group: str = "default") -> list[str]:
        """The reboot lock's holders, read with the operator's command."""
        agent_cli = Path(sys.executable).with_name("tidehost-update")
        out = run([agent_cli, "lock", "status", "--json", "--etcd", self.etcd.url,
                   "--group", group], capture=True, check=False).stdout  # fmt: skip
        try:
            return list(json.loads(out or b"{}").get("holders", []))
        except json.JSONDecodeError:
            return []

    # --- the hosts' side --------------------------------------------------------------

    def boot(self, disk: Path, ssh_key: Path, name: str, **kw: Any) -> VM:
        vm = VM(disk=disk, ssh_key=ssh_key, hostname=name, user_data=self.user_data(),
                serial_log=self.workdir / f"{name}-serial.log", **kw)  # fmt: skip
        return vm.start()


def wait_for(
    vm: VM,
    done: Callable[[AgentStatus], bool],
    timeout: float,
    on_change: Callable[[AgentStatus], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> AgentStatus:
    """Poll a host's agent status until ``done``; report each new (version, slot, state)."""
    last: tuple[Any, ...] = ()

    def look() -> AgentStatus | None:
        nonlocal last
        if tick:
            tick()
        st = status(vm)
        if st is not None:
            if st.step != last and on_change:
                on_change(st)
            last = st.step
            if done(st):
                return st
        if not vm.alive():
            raise VMError(f"QEMU exited (serial log {vm.serial_log})")
        return None

    st = poll(look, timeout, every=3)
    if st is None:
        print(f"--- last lines of {vm.hostname}'s console ({vm.serial_log}) ---\n"
              f"{vm.serial_tail()}", flush=True)  # fmt: skip
        raise VMError(f"host {vm.hostname} did not reach the expected state in {timeout:.0f}s "
                      f"(last: {last}, serial log {vm.serial_log})")  # fmt: skip
    return st


def bless_latency(vm: VM) -> float | None:
    """Seconds from boot-complete.target to the agent's "healthy, blessed" on this boot."""
    out = vm.ssh("sudo journalctl -b -o short-unix --no-pager | grep -E "
                 "'Reached target boot-complete.target|healthy, blessed'", check=False)  # fmt: skip
    times: dict[str, float] = {}
    for line in out.splitlines():
        stamp = line.split(" ", 1)[0]
        key = "complete" if "boot-complete.target" in line else "blessed"
        try:
            times.setdefault(key, float(stamp))
        except ValueError:
            continue
    if "complete" in times and "blessed" in times:
        return times["blessed"] - times["complete"]
    return None


def unblessed(vm: VM, slot: str) -> str:
    """Why ``slot``'s boot is not blessed; "" when it is.

    Blessed: the slot's one entry on the ESP has lost its boot counter, and this boot is the
    one systemd-bless-boot blessed ("good") or a later boot of the blessed entry ("clean": the
    loader counts no tries of an entry without a counter). Nothing in an update reboots a
    healthy host, so a later boot is printed with the end of the boot before it, for whoever
    reads the log; the update itself stays blessed.
    """
    verdict = vm.ssh("sudo /usr/lib/systemd/systemd-bless-boot status", check=False).strip()
    names = vm.ssh("sudo ls /efi/EFI/Linux /efi/loader/entries", check=False).split()
    mine = sorted(n for n in names if n.startswith(f"tidehost-{slot}"))
    if mine not in ([f"tidehost-{slot}.efi"], [f"tidehost-{slot}.conf"]):
        return f"{vm.hostname}: slot {slot}'s entries on the ESP are {mine} (bless-boot: {verdict})"
    if verdict == "clean":
        print(f"--- {vm.hostname} booted again after its update was blessed ---\n"
              + vm.ssh("journalctl --list-boots --no-pager | tail -n 4; "
                       "sudo journalctl -b -1 -n 25 --no-pager", check=False), flush=True)
    elif verdict != "good":
        return f"{vm.hostname}: systemd-bless-boot status: {verdict!r}"
    return ""
