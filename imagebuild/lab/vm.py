"""Boot a Tidehost disk under QEMU with UEFI, a NoCloud seed and SSH on a local port.

KVM is used only if it really runs a guest: /dev/kvm may open and still fail (a
paravirtual KVM, see BOOT-NOTES), so ``kvm_works`` tries a short firmware boot first and
falls back to TCG software emulation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imagebuild.core.errors import CommandTimeout, VMError
from imagebuild.core.files import private_dir, read_ssh_public_key, write_atomic
from imagebuild.core.run import Process, require, run, spawn
from imagebuild.core.wait import poll
from imagebuild.image.context import default_cache_dir
from imagebuild.lab.net import free_port, in_netns

log = logging.getLogger(__name__)

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot firmware (needs SMM); with the empty OVMF_VARS it starts in Setup Mode, so a
# Tidehost ESP enrols its fleet's keys on the first boot (SPECS §10.5)
OVMF_CODE_SECURE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
SSH_USER = "core"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_works() -> bool:
    """Whether KVM really runs a UEFI guest here; the answer is cached per host boot."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    marker = default_cache_dir() / f"kvm-probe-{_boot_id()}"
    if marker.exists():
        return marker.read_text().strip() == "yes"
    with tempfile.TemporaryDirectory() as tmp:
        debug = Path(tmp) / "debugcon.log"
        vars_copy = Path(tmp) / "vars.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        cmd = ["qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-m", "256",
               "-nodefaults", "-display", "none", "-no-reboot",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
               "-debugcon", f"file:{debug}", "-global", "isa-debugcon.iobase=0x402"]  # fmt: skip
        out = Path(tmp) / "qemu.log"
        proc = spawn(cmd, log=out)
        ok = False  # firmware should not exit by itself within 8 s
        if proc.wait(timeout=8) is None:
            proc.kill()
            ok = b"KVM internal error" not in out.read_bytes() and debug.exists() and (
                b"BdsDxe" in debug.read_bytes() or debug.stat().st_size > 100_000
            )
        err = out.read_bytes()
    log.info("KVM %s here (probe: %s)", "works" if ok else "does not run guests",
             (err or b"").decode(errors="replace").strip().splitlines()[:1])  # fmt: skip
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("yes\n" if ok else "no\n")
    return ok


def accel_args(accel: str, cpus: int) -> list[str]:
    """QEMU acceleration arguments: ``auto`` tries KVM and falls back to TCG."""
    if accel == "auto":
        accel = "kvm" if kvm_works() else "tcg"
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        return ["-accel", "tcg,thread=multi" if cpus > 1 else "tcg", "-cpu", "max"]
    raise VMError(f"--accel: {accel!r} is not one of auto, kvm, tcg")


def user_data_with_key(user_data: str | None, ssh_keys: list[str]) -> str:
    """The seed's user-data: the given #cloud-config with the SSH keys added (pure)."""
    doc: dict = {}
    if user_data:
        if not user_data.lstrip().startswith("#cloud-config"):
            raise VMError("--user-data: only #cloud-config user-data can carry --ssh-key here")
        loaded = yaml.safe_load(user_data) or {}
        if not isinstance(loaded, dict):
            raise VMError("--user-data: the #cloud-config document is not a mapping")
        doc = loaded
    if ssh_keys:
        doc["ssh_authorized_keys"] = [*doc.get("ssh_authorized_keys", []), *ssh_keys]
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def make_seed(dest: Path, user_data: str, hostname: str, network_config: str | None = None,
              instance_id: str | None = None) -> Path:  # fmt: skip
    """A NoCloud seed ISO (volume label ``cidata``), 0600 like the user-data it holds."""
    require("genisoimage")
    with tempfile.TemporaryDirectory() as tmp:  # 0700
        d = Path(tmp)
        iid = instance_id or f"iid-{hostname}-{os.urandom(4).hex()}"
        texts = {"user-data": user_data,
                 "meta-data": f"instance-id: {iid}\nlocal-hostname: {hostname}\n"}
        if network_config:
            texts["network-config"] = network_config
        for name, text in texts.items():
            write_atomic(d / name, text, 0o600)
        _pack_iso([d / name for name in texts], dest)
    return dest


def make_seed_iso(seed_dir: Path, dest: Path) -> Path:
    """Pack a prepared NoCloud folder (user-data, meta-data[, network-config]) as an ISO,
    written 0600: the user-data in it holds the node's private keys."""
    require("genisoimage")
    names = ("user-data", "meta-data", "network-config", "vendor-data")
    files = [seed_dir / n for n in names if (seed_dir / n).is_file()]
    if not any(f.name == "user-data" for f in files):
        raise VMError(f"{seed_dir}: no user-data in the seed folder")
    _pack_iso(files, dest)
    return dest


def _pack_iso(files: list[Path], dest: Path) -> None:
    """genisoimage into a 0600 file beside ``dest``, renamed into place when complete."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")  # mode 0600
    os.close(fd)
    try:
        run(["genisoimage", "-quiet", "-output", tmp, "-volid", "cidata", "-joliet", "-rock",
             *files])  # fmt: skip
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a log file ("" when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Options of every SSH to a guest (ours and pytest-testinfra's). Keepalives: a guest gone
# mid-session (rebooted, panicked) leaves QEMU's user-net holding the host side open, so only
# they end the client. ConnectTimeout also bounds sshd's greeting, which a guest busy under
# emulation can take several seconds to send (it starts sshd-session for each connection).
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=15", "-o", "BatchMode=yes",
               "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3")  # fmt: skip


@dataclass
class VM:
    """One QEMU guest. Use as a context manager, or call ``start`` and ``stop``."""

    disk: Path
    ssh_key: Path | None = None  # private key for ssh(); its .pub goes into the seed
    authorized_keys: list[str] = field(default_factory=list)  # more public keys for the seed
    user_data: str | None = None
    network_config: str | None = None
    hostname: str = "tidehost"
    memory: int = 2048
    cpus: int = 2
    accel: str = "auto"
    ssh_port: int = 0
    serial_log: Path | None = None
    snapshot: bool = False
    extra_args: list[str] = field(default_factory=list)
    netns: str | None = None  # run QEMU inside this network namespace
    seed_dir: Path | None = None  # a prepared NoCloud folder instead of user_data/hostname
    tap: str | None = None  # a second NIC on this tap device (in netns), e.g. a cluster bridge
    tap_mac: str | None = None
    user_mac: str | None = None  # MAC of the user-networking (SSH) NIC; default QEMU's
    detach: bool = False  # QEMU in its own session (output in WORKDIR/qemu.log): outlives us
    secure_boot: bool = False  # OVMF's Secure Boot firmware, in Setup Mode, with SMM
    tpm: bool = False  # a TPM 2.0 from swtpm (state in WORKDIR/tpm), stopped with QEMU
    proc: Process | None = None
    swtpm: Process | None = None
    started: float = 0.0
    workdir: Path | None = None

    def command(self) -> list[str]:
        assert self.workdir is not None
        fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
        drive = f"file={self.disk},if=virtio,format={fmt},cache=unsafe"
        machine, code = ("q35,smm=on", OVMF_CODE_SECURE) if self.secure_boot else ("q35", OVMF_CODE)
        cmd = ["qemu-system-x86_64", "-machine", machine, "-m", str(self.memory),
               "-smp", str(self.cpus), *accel_args(self.accel, self.cpus),
               "-nodefaults", "-display", "none", "-vga", "none",
               *self.firmware_args(),
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
               "-drive", f"if=pflash,format=raw,unit=1,file={self.workdir / 'vars.fd'}",
               "-drive", drive,
               "-drive", f"file={self.workdir / 'seed.iso'},if=virtio,format=raw,readonly=on",
               "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
               "-device", "virtio-net-pci,netdev=n0" + (f",mac={self.user_mac}"
                                                        if self.user_mac else ""),
               "-device", "virtio-rng-pci",
               # a hardware watchdog: the image's systemd pings it, a hung guest is reset
               "-device", "i6300esb", "-action", "watchdog=reset",
               "-serial", f"file:{self.serial_log}",
               "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off"]  # fmt: skip
        if self.tap:
            mac = f",mac={self.tap_mac}" if self.tap_mac else ""
            cmd += ["-netdev", f"tap,id=n1,ifname={self.tap},script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=n1{mac}"]  # fmt: skip
        if self.snapshot:
            cmd.append("-snapshot")
        cmd += self.extra_args
        return in_netns(self.netns, cmd)

    def firmware_args(self) -> list[str]:
        """Secure Boot's flash protection and the TPM's device (the long ``-global`` form:
        the short one is mis-parsed)."""
        args = []
        if self.secure_boot:
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        if self.tpm:
            assert self.workdir is not None
            args += ["-chardev", f"socket,id=chrtpm,path={self.workdir / 'tpm' / 'swtpm-sock'}",
                     "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                     "-device", "tpm-tis,tpmdev=tpm0"]  # fmt: skip
        return args

    def start_swtpm(self) -> None:
        """swtpm for this VM, its state kept in WORKDIR/tpm across restarts of QEMU."""
        require("swtpm")
        assert self.workdir is not None
        tdir = self.workdir / "tpm"
        tdir.mkdir(mode=0o700, exist_ok=True)
        sock = tdir / "swtpm-sock"
        sock.unlink(missing_ok=True)
        self.swtpm = spawn(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tdir}",
                            "--ctrl", f"type=unixio,path={sock}",
                            "--log", f"file={tdir / 'swtpm.log'},level=1"],
                           new_session=self.detach)  # fmt: skip
        if not poll(lambda: sock.exists() or not self.swtpm.alive(), 10, every=0.1) \
                or not self.swtpm.alive():
            raise VMError(f"swtpm did not start (log: {tdir / 'swtpm.log'})")

    def start(self) -> VM:
        require("qemu-system-x86_64")
        if not self.disk.exists():
            raise VMError(f"{self.disk}: no such disk image")
        for fw in (OVMF_CODE_SECURE if self.secure_boot else OVMF_CODE, OVMF_VARS):
            if not fw.exists():
                raise VMError(f"{fw}: UEFI firmware missing (apt-get install ovmf)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tidehost-vm-"))
        private_dir(self.workdir)  # the seed in it holds keys
        shutil.copy(OVMF_VARS, self.workdir / "vars.fd")
        if self.seed_dir is not None:
            make_seed_iso(self.seed_dir, self.workdir / "seed.iso")
        else:
            keys = list(self.authorized_keys)
            if self.ssh_key and self.ssh_key.with_suffix(".pub").exists():
                keys.append(read_ssh_public_key(self.ssh_key, "ssh_key"))
            make_seed(self.workdir / "seed.iso", user_data_with_key(self.user_data, keys),
                      self.hostname, self.network_config)  # fmt: skip
        self.ssh_port = self.ssh_port or free_port()
        self.serial_log = self.serial_log or self.workdir / "serial.log"
        if self.tpm:
            self.start_swtpm()
        cmd = self.command()
        log.info("Booting %s (SSH on 127.0.0.1:%d, serial log %s)", self.disk, self.ssh_port,
                 self.serial_log)  # fmt: skip
        self.started = time.monotonic()
        (self.workdir / "qemu.log").unlink(missing_ok=True)
        self.proc = spawn(cmd, log=self.workdir / "qemu.log", new_session=self.detach)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def ssh_args(self) -> list[str]:
        args = ["ssh", "-p", str(self.ssh_port), *SSH_OPTIONS]
        if self.ssh_key:
            args += ["-i", str(self.ssh_key)]
        if self.netns:
            # User-net forwards listen on the namespace's loopback (BOOT-NOTES).
            args += ["-o", f"ProxyCommand=ip netns exec {self.netns} nc 127.0.0.1 {self.ssh_port}"]
        return [*args, f"{SSH_USER}@127.0.0.1"]

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120) -> str:
        """``command``'s output on the guest.

        Raises:
            VMError: no answer within ``timeout`` seconds (booting, rebooting, hung), or
                (``check``) the command failed.
        """
        try:
            proc = run([*self.ssh_args(), command], capture=True, check=False, timeout=timeout)
        except CommandTimeout:
            raise VMError(f"ssh {command!r} to {self.hostname}: no answer within "
                          f"{timeout:.0f}s") from None  # fmt: skip
        if check and proc.returncode != 0:
            raise VMError(f"ssh {command!r} exited {proc.returncode}: "
                          f"{proc.stderr.decode(errors='replace').strip()[-300:]}")  # fmt: skip
        return proc.stdout.decode(errors="replace")

    def answers(self, timeout: float = 20) -> bool:
        """Whether the guest answers SSH now."""
        return self.probe("echo ok", timeout) == "ok"

    def _live(self, check: bool) -> bool:
        if not self.alive():
            raise VMError(f"QEMU exited before SSH answered: {self.qemu_output()}")
        return check

    def wait_ssh(self, timeout: float = 600) -> float:
        """Wait until SSH answers; return seconds since QEMU started."""
        if not poll(lambda: self._live(self.answers()), timeout):
            raise VMError(f"SSH on 127.0.0.1:{self.ssh_port} did not answer within "
                          f"{timeout:.0f}s (serial log: {self.serial_log})")  # fmt: skip
        return time.monotonic() - self.started

    def wait_ssh_port(self, timeout: float = 600) -> float:
        """Wait until the guest's sshd sends its banner (no key needed)."""
        if not poll(lambda: self._live(self._banner()), timeout):
            raise VMError(f"SSH on 127.0.0.1:{self.ssh_port} did not answer within "
                          f"{timeout:.0f}s")  # fmt: skip
        return time.monotonic() - self.started

    def _banner(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def qemu_output(self) -> str:
        if self.workdir and not self.alive():
            with contextlib.suppress(OSError):
                return (self.workdir / "qemu.log").read_text(errors="replace").strip()[-500:]
        return ""

    def serial(self) -> str:
        try:
            return Path(str(self.serial_log)).read_text(errors="replace")
        except OSError:
            return ""

    def serial_tail(self, lines: int = 40) -> str:
        """The console's last lines, for an error report (a hung or panicked guest says why)."""
        return log_tail(Path(str(self.serial_log)), lines)

    def probe(self, command: str, timeout: float = 60) -> str:
        """``command``'s output, or "" while the guest does not answer (booting, hung)."""
        try:
            return self.ssh(command, check=False, timeout=timeout).strip()
        except VMError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        """Ask the guest to power off (ACPI), then kill QEMU if it does not."""
        if self.alive() and self.workdir:
            with contextlib.suppress(OSError):
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(self.workdir / "qmp.sock"))
                    s.sendall(b'{"execute":"qmp_capabilities"}\n'
                              b'{"execute":"system_powerdown"}\n')  # fmt: skip
                    time.sleep(0.5)
            assert self.proc is not None
            self.proc.wait(timeout=timeout)
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
        if self.swtpm is not None:
            self.swtpm.stop(timeout=5)  # QEMU gone: swtpm would wait for it forever

    def cleanup(self) -> None:
        self.stop(timeout=5)
        if self.workdir:
            keep_log = self.serial_log and self.workdir in Path(str(self.serial_log)).parents
            if not keep_log:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> VM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(timeout=20)
