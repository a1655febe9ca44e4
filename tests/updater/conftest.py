"""Fixtures of the updater tests: a real etcd, a FleetLock server written to the spec, disk
images with real GPT partitions on loop devices, real release bundles (squashfs + verity), and
in-memory fakes of the host's side effects and of the channel client."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from channels.bundle import FILES, Manifest, load_bundle
from channels.errors import ChannelError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- etcd: the session's real etcd is the ``etcd`` fixture of tests/conftest.py ------------


# --- FleetLock server, written to SPECS §1 -------------------------------------------------

_GROUP = re.compile(r"^[a-zA-Z0-9.-]+$")


class FleetLockServer:
    """In-memory FleetLock server: per-group semaphores, owned recursive locks."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.slots = dict(slots)
        self.holders: dict[str, list[str]] = {g: [] for g in slots}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: dict[str, str] | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(n)
                if self.headers.get("fleet-lock-protocol") != "true":
                    return self.reply(400, {"kind": "invalid_client_identity",
                                            "value": "missing fleet-lock-protocol header"})
                try:
                    params = json.loads(raw)["client_params"]
                    ident, group = str(params["id"]), str(params["group"])
                except (ValueError, KeyError, TypeError):
                    return self.reply(400, {"kind": "invalid_client_parameters",
                                            "value": "bad body"})
                if not ident or not _GROUP.match(group):
                    return self.reply(400, {"kind": "invalid_client_parameters",
                                            "value": "bad id or group"})
                server.requests.append((self.path, params))
                with server.lock:
                    if group not in server.slots:
                        return self.reply(400, {"kind": "unknown_group", "value": group})
                    held = server.holders[group]
                    if self.path == "/v1/pre-reboot":
                        if ident in held:
                            return self.reply(200)
                        if len(held) >= server.slots[group]:
                            return self.reply(500, {"kind": "failed_lock",
                                                    "value": "semaphore full"})
                        held.append(ident)
                        held.sort()
                        return self.reply(200)
                    if self.path == "/v1/steady-state":
                        if ident in held:
                            held.remove(ident)
                        return self.reply(200)
                return self.reply(404, {"kind": "not_found", "value": self.path})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fleetlock_server() -> Iterator[FleetLockServer]:
    s = FleetLockServer({"default": 1, "workers": 2})
    yield s
    s.close()


# --- release bundles -----------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bundle(dest: Path, version: str, payload: int = 256 * 1024) -> Path:
    """A real bundle: squashfs /usr holding ``payload`` bytes, its verity tree, manifest."""
    if not shutil.which("mksquashfs") or not shutil.which("veritysetup"):
        pytest.skip("squashfs-tools and cryptsetup-bin (veritysetup) are needed")
    d = dest / f"tidehost-{version}.release"
    tree = dest / f"tree-{version}"
    (tree / "lib").mkdir(parents=True)
    (tree / "lib" / "os-release").write_text(f"VERSION_ID={version}\n")
    (tree / "lib" / "payload").write_bytes(os.urandom(payload))
    d.mkdir(parents=True)
    subprocess.run(["mksquashfs", str(tree), str(d / "usr.img"), "-noappend", "-quiet",
                    "-no-progress"], check=True, capture_output=True)
    out = subprocess.run(["veritysetup", "format", str(d / "usr.img"), str(d / "usr.verity")],
                         check=True, capture_output=True, text=True).stdout
    roothash = re.search(r"Root hash:\s+([0-9a-f]{64})", out)[1]  # type: ignore[index]
    (d / "vmlinuz").write_bytes(b"kernel " + version.encode())
    (d / "initrd").write_bytes(b"initrd " + version.encode())
    files = {f: {"size": (d / f).stat().st_size, "sha256": sha256(d / f)} for f in FILES}
    manifest = {
        "format": 1, "name": "tidehost", "version": version, "channel": "stable",
        "build_id": f"test-{version}", "arch": "x86-64", "suite": "trixie",
        "usr_filesystem": "squashfs", "roothash": roothash, "kernel_cmdline": "console=ttyS0",
        "boot_tries": 3, "files": files,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(tree)
    return d


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundles of 1.0.0, 2.0.0 and 3.0.0, built once per session."""
    root = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(root, v) for v in ("1.0.0", "2.0.0", "3.0.0")}


# --- disk image with real partitions on loop devices ------------------------------------------

LAYOUT = (("USR-A", 24), ("USR-A-VERITY", 4), ("USR-B", 24), ("USR-B-VERITY", 4), ("ROOT", 4))


@dataclass
class Disk:
    image: Path
    parts: dict[str, Path]  # label → loop device
    offsets: dict[str, tuple[int, int]]  # label → (byte offset, size)


def make_disk(image: Path, layout: tuple[tuple[str, int], ...] = LAYOUT) -> Iterator[Disk]:
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("sfdisk"):
        pytest.skip("needs root, losetup and sfdisk for loop devices")
    probe = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"losetup cannot find a free loop device: {probe.stderr.strip()}")
    total = sum(mb for _, mb in layout) + 2
    with open(image, "wb") as f:
        f.truncate(total << 20)
    script = "label: gpt\n" + "".join(f"size={mb}MiB, name={lbl}\n" for lbl, mb in layout)
    subprocess.run(["sfdisk", "--quiet", str(image)], input=script, text=True, check=True,
                   capture_output=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    ssz = int(table.get("sectorsize", 512))
    offsets = {p["name"]: (p["start"] * ssz, p["size"] * ssz) for p in table["partitions"]}
    parts: dict[str, Path] = {}
    try:
        for label, (off, size) in offsets.items():
            dev = subprocess.run(["losetup", "-f", "--show", "-o", str(off), "--sizelimit",
                                  str(size), str(image)], check=True, capture_output=True,
                                 text=True).stdout.strip()
            parts[label] = Path(dev)
        yield Disk(image, parts, offsets)
    finally:
        for dev in parts.values():
            subprocess.run(["losetup", "-d", str(dev)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    yield from make_disk(tmp_path / "disk.img")


# --- fakes of the side effects (beside the real tests above) -------------------------------


@dataclass
class FakeHost:
    """The host as the agent sees it: a booted slot, units, and what the agent asked for."""

    slot: str = "a"
    version: str = "1.0.0"
    roothash: str = ""
    boot: int = 1
    units: dict[str, bool] = field(default_factory=lambda: {"boot-complete.target": True})
    commands_ok: bool = True
    failed: set[str] = field(default_factory=set)
    blessed: list[bool] = field(default_factory=list)
    reboots: int = 0

    def cmdline(self) -> str:
        return f"root=PARTLABEL=ROOT usrhash={self.roothash} tidehost.slot={self.slot}"

    def boot_id(self) -> str:
        return f"boot-{self.boot}"

    def os_release(self) -> dict[str, str]:
        return {"VERSION_ID": self.version}

    def machine_id(self) -> str:
        return "m-test"

    def unit_active(self, unit: str) -> bool:
        return self.units.get(unit, False)

    def unit_failed(self, unit: str) -> bool:
        return unit in self.failed

    def check_command(self, argv: object) -> bool:
        return self.commands_ok

    def bless(self, good: bool) -> None:
        self.blessed.append(good)

    def reboot(self) -> None:
        self.reboots += 1

    def boot_into(self, slot: str, manifest: Manifest) -> None:
        """What the firmware and bootloader do: a new boot of ``slot``."""
        self.slot, self.version, self.roothash = slot, manifest.version, manifest.roothash
        self.boot += 1


@dataclass(frozen=True)
class FakeOffer:
    version: str
    manifest: Manifest


class FakeChannel:
    """The ChannelClient API over a dict of published bundles."""

    def __init__(self) -> None:
        self.published: dict[str, Path] = {}
        self.error: Exception | None = None
        self.download_error: Exception | None = None
        self.downloads: list[str] = []
        self.seeds: list[object] = []  # the seeds of each download
        self.last_report = None

    def publish(self, bundle: Path) -> None:
        self.published[load_bundle(bundle, verify=False).version] = bundle

    def offer(self, machine_id: str, current_version: str,
              now: datetime | None = None) -> FakeOffer | None:
        if self.error:
            raise self.error
        if not self.published:
            return None
        from channels.version import Version

        v = max(self.published, key=Version.parse)
        return FakeOffer(v, load_bundle(self.published[v], verify=False))

    def download(self, offer: FakeOffer, dest_dir: Path, progress: object = None, *,
                 seeds: object = ()) -> Path:
        if self.download_error:
            raise self.download_error
        self.downloads.append(offer.version)
        self.seeds.append(list(seeds))  # type: ignore[call-overload]
        dest = Path(dest_dir) / offer.manifest.bundle_name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.published[offer.version], dest)
        return dest


class FakeLock:
    """RebootLock in memory (the real ones are tested against etcd and a FleetLock server)."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self.holders: set[str] = set()
        self.unreachable = False
        self.renewals = 0

    def _up(self) -> None:
        if self.unreachable:
            from updater.errors import LockError

            raise LockError("etcd unreachable (fake)")

    def acquire(self, holder: str) -> bool:
        self._up()
        if holder in self.holders:
            return True
        if len(self.holders) >= self.slots:
            return False
        self.holders.add(holder)
        return True

    def release(self, holder: str) -> None:
        self._up()
        self.holders.discard(holder)

    def renew(self, holder: str) -> bool:
        self._up()
        self.renewals += 1
        return holder in self.holders


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.001)


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def fake_lock() -> FakeLock:
    return FakeLock()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bundle_factory(tmp_path: Path):  # noqa: ANN201
    return lambda version, payload=256 * 1024: make_bundle(tmp_path, version, payload)


@pytest.fixture
def disk_factory():  # noqa: ANN201
    return make_disk


__all__ = ["ChannelError"]
