"""A/B slots on the host: which one runs, writing the other one, switching between them.

Write order (``write_slot``), so that an interruption at any point boots the current slot:

0. validate the boot entry to be written, and check usr.verity's levels against the signed
   root hash (nothing is written if either fails); start hashing usr.img's blocks against
   that tree (two threads; ``updater.verity.check_data``);
1. remove the target slot's boot entries (the old contents of that slot become unbootable);
2. stream usr.img and usr.verity into the target's USR-x and USR-x-VERITY devices, fsync,
   drop them from the page cache, while the hashing runs over the same mapped pages (the
   tree check of every block adds no read) and vmlinuz and initrd are copied to
   ``<esp>/tidehost/<slot>/`` (temp file, fsync, rename);
3. read both partitions back and compare them with the release's files; wait for the
   hashing: a usr.img that does not match its own tree (``BadRelease``) is never staged;
   ``full_verify`` adds ``veritysetup verify``;
4. write ``loader/entries/tidehost-<slot>+<tries>.conf`` (temp file, fsync, rename) last:
   only now can the bootloader pick the new slot, and it prefers it (newer ``version``).

A format-2 or 3 release boots from its UKI instead (no kernel or initrd on the ESP): in step 0
its UKI (``uki.efi``, or the slot's ``uki-<slot>.efi``) must carry the release's root hash
(and in format 2 the slot's command line) and, when the firmware enforces Secure Boot, pass
the enrolled db and dbx (``updater.secureboot``): a UKI the firmware would refuse is never
written, and the host stays on its slot. Before step 4 a format-3 slot's two partitions get
the UUIDs its root hash derives (``updater.partitions``: its UKI finds /usr by them). Step 4
writes exactly the checked bytes as ``EFI/Linux/tidehost-<slot>+<tries>.efi`` (temp file,
fsync, rename, fsync of the folder), the type #2 entry that systemd-boot counts the same way.

The active slot's devices and entry are never written; a target that resolves to the same
device as the active slot is refused.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from channels.bundle import UKI_DIR, Manifest, Slot
from channels.entries import BootEntry, boot_entry, entry_stem, uki_entry_name
from updater import partitions, secureboot, verity
from updater.errors import BadRelease, CommandError, SlotError, VerificationError
from updater.run import run
from updater.state import atomic_write, fsync_dir

log = logging.getLogger(__name__)
BY_PARTLABEL = Path("/dev/disk/by-partlabel")
ENTRIES = "loader/entries"
CHUNK = verity.CHUNK
_ENTRY = re.compile(r"^(?P<stem>tidehost-[ab])(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?"
                    r"\.(?P<ext>conf|efi)$")
_ENTRY_DIRS = {"conf": ENTRIES, "efi": UKI_DIR}  # type #1 entries, type #2 entries (UKIs)


def active_slot(cmdline: str) -> Slot:
    """The slot named by ``tidehost.slot=`` on the kernel command line."""
    for arg in cmdline.split():
        if arg.startswith("tidehost.slot="):
            value = arg.split("=", 1)[1].lower()
            try:
                return Slot(value)
            except ValueError:
                raise SlotError(f"kernel command line: tidehost.slot={value} is not a or b") \
                    from None
    raise SlotError("kernel command line has no tidehost.slot=: not booted from a Tidehost slot")


def cmdline_usrhash(cmdline: str) -> str:
    for arg in cmdline.split():
        if arg.startswith("usrhash="):
            return arg.split("=", 1)[1]
    return ""


@dataclass(frozen=True)
class SlotDevices:
    usr: Path
    verity: Path

    @classmethod
    def by_label(cls, slot: Slot, base: Path = BY_PARTLABEL) -> SlotDevices:
        return cls(usr=base / slot.usr_label, verity=base / slot.verity_label)


@dataclass(frozen=True)
class EntryName:
    slot: Slot
    left: int | None  # None: no counter (factory entry, or blessed)
    done: int

    @property
    def bad(self) -> bool:
        return self.left == 0


def parse_entry(name: str) -> EntryName | None:
    m = _ENTRY.match(name)
    if not m:
        return None
    left = int(m["left"]) if m["left"] is not None else None
    return EntryName(Slot(m["stem"][-1]), left, int(m["done"] or 0))


def slot_entries(esp: Path, slot: Slot) -> list[Path]:
    """``slot``'s boot entries on the ESP: type #1 ``.conf`` files and type #2 UKIs."""
    out = []
    for ext, rel in _ENTRY_DIRS.items():
        d = Path(esp) / rel
        if d.is_dir():
            out += [p for p in d.iterdir() if p.name.endswith(f".{ext}")
                    and (e := parse_entry(p.name)) and e.slot is slot]  # fmt: skip
    return sorted(out)


def _device_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_rdev, 0) if st.st_rdev else (st.st_dev, st.st_ino)


def _stream(src: Path, dest: Path) -> int:
    """Write ``src`` onto ``dest``, fsync, and drop it from the cache."""
    return verity.write_through(src, dest)


def _read_back(bundle: Path, manifest: Manifest, devices: SlotDevices, full_verify: bool,
               runner: Callable[..., object]) -> None:
    """The written partitions hold the release's bytes."""
    for name, dev in (("usr.img", devices.usr), ("usr.verity", devices.verity)):
        verity.read_back(dev, bundle / name)
    if full_verify:
        verify_verity(devices.usr, devices.verity, manifest.roothash, runner)


def verify_verity(data: Path, hashdev: Path, roothash: str,
                  runner: Callable[..., object] = run) -> None:
    """Read ``data`` back through its hash tree and check it against ``roothash``.

    Raises:
        VerificationError: the data, hash tree and root hash do not agree.
    """
    try:
        runner(["veritysetup", "verify", str(data), str(hashdev), roothash], timeout=1800)
    except CommandError as e:
        raise VerificationError(f"{data}: read-back does not match root hash {roothash[:12]}…"
                                f" ({e})") from None


_ENTRY_KEYS = ["title", "sort-key", "version", "linux", "initrd", "options"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _checked_tries(tries: object) -> int:
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= 9:
        raise BadRelease(f"manifest.json: field 'boot_tries': {tries!r} is not a whole number "
                         "from 1 to 9; no boot entry written")
    return tries


def _checked_uki(bundle: Path, manifest: Manifest, target: Slot, tries: object,
                 efivars: Path) -> tuple[str, bytes]:  # fmt: skip
    """The type #2 entry's name and the UKI's bytes for ``target``, checked where they are
    written (``updater.secureboot.check_uki``).

    Raises:
        BadRelease: not the slot's UKI, or one the firmware would refuse.
    """
    name = uki_entry_name(target, _checked_tries(tries))
    if parse_entry(name) != EntryName(target, tries, 0):  # type: ignore[arg-type]
        raise SlotError(f"boot entry {name!r} is not one this agent writes")
    fname = manifest.uki_file(target)
    try:
        data = (Path(bundle) / fname).read_bytes()
    except OSError as e:
        raise VerificationError(f"{bundle}/{fname}: cannot read ({e.strerror})") from None
    verdict = secureboot.check_uki(data, fname, manifest, target, efivars)
    log.info("slot %s: %s %s", target.name, fname, verdict)
    return name, data


def _checked_entry(manifest: Manifest, target: Slot, tries: object) -> BootEntry:
    """The boot entry for ``target``, validated where it is written: a counter of 1 to 9
    (an int, not a bool), no control character from the manifest (a newline would add
    lines to the entry), and exactly the lines ``boot_entry`` means to write.

    Raises:
        BadRelease: a manifest field cannot go into a boot entry (``tries`` comes from the
            manifest unless the config sets it, and the config's is checked when parsed).
        SlotError: the entry is not one this agent writes.
    """
    _checked_tries(tries)
    for name in ("name", "version", "usr_filesystem", "roothash", "kernel_cmdline"):
        if _CONTROL.search(str(getattr(manifest, name))):
            raise BadRelease(f"manifest.json: field '{name}': contains a control character; "
                             "it is not written into a boot entry")
    entry = boot_entry(manifest, target, tries)
    keys = [line.split(" ", 1)[0] for line in entry.text.splitlines()]
    if keys != _ENTRY_KEYS or parse_entry(entry.filename) != EntryName(target, tries, 0):
        raise SlotError(f"boot entry {entry.filename!r} is not one this agent writes")
    return entry


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)  # in the kernel (sendfile), no copy through Python
    with open(tmp, "rb+") as fo:
        os.fsync(fo.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def _copy_kernel(bundle: Path, dest: Path) -> None:
    for name in ("vmlinuz", "initrd"):
        _copy_atomic(bundle / name, dest / name)


def write_slot(
    bundle: Path,
    manifest: Manifest,
    target: Slot,
    *,
    active: Slot,
    devices: SlotDevices,
    active_devices: SlotDevices | None,
    esp: Path,
    tries: int,
    full_verify: bool = False,
    runner: Callable[..., object] = run,
    efivars: Path = secureboot.EFIVARS,
    set_partuuids: Callable[[SlotDevices, str], None] = partitions.set_partuuids,
) -> str:
    """Write ``bundle`` into slot ``target`` and make it the preferred boot entry; the entry's
    file name (``tidehost-b+3.conf``, or ``tidehost-b+3.efi`` for a format-2 release).

    Raises:
        SlotError: ``target`` is the active slot, a device is missing or too small.
        VerificationError: the read-back does not match the manifest's root hash.
        BadRelease: the release cannot boot this slot here (its UKI is another slot's, or
            the firmware enforces Secure Boot and would refuse it).
    """
    if manifest.uki:  # before anything is written
        entry, uki = None, _checked_uki(bundle, manifest, target, tries, efivars)
    else:
        entry, uki = _checked_entry(manifest, target, tries), None
    if target is active:
        raise SlotError(f"refusing to write slot {target.name}: it is the running slot")
    for dev in (devices.usr, devices.verity):
        if not os.path.exists(dev):
            raise SlotError(f"{dev}: no such device for slot {target.name}")
    if active_devices is not None:
        busy = {_device_id(p) for p in (active_devices.usr, active_devices.verity)
                if os.path.exists(p)}
        for dev in (devices.usr, devices.verity):
            if _device_id(dev) in busy:
                raise SlotError(f"refusing to write {dev}: it is a device of the running slot")
    esp = Path(esp)
    if not esp.is_dir():
        raise SlotError(f"{esp}: the ESP is not mounted")
    bundle = Path(bundle)

    tree = verity.source_tree(bundle / "usr.verity", manifest.files["usr.img"].size,
                              manifest.roothash)  # a tree that is not the release's: stop here
    stop = threading.Event()
    with ThreadPoolExecutor(2) as pool:  # usr.img is hashed against its tree as it is written
        hashed = pool.submit(verity.check_data, bundle / "usr.img", tree, manifest.roothash,
                             stop=stop)
        try:
            for old in slot_entries(esp, target):
                log.info("slot %s: removing old boot entry %s", target.name, old.name)
                old.unlink()
                fsync_dir(old.parent)
            for name in ("vmlinuz", "initrd"):  # unused now: room on a small ESP for new ones
                (esp / target.esp_dir / name).unlink(missing_ok=True)
            esp_files = pool.submit(_copy_kernel, bundle, esp / target.esp_dir) if entry \
                else None
            log.info("slot %s: writing %s to %s", target.name, manifest.version, devices.usr)
            _stream(bundle / "usr.img", devices.usr)
            _stream(bundle / "usr.verity", devices.verity)
            _read_back(bundle, manifest, devices, full_verify, runner)
            if esp_files is not None:
                esp_files.result()
        except BaseException:
            stop.set()  # do not wait for the hashing of a slot that is not staged
            raise
        hashed.result()
    log.info("slot %s: read back and verified (root hash %s…)", target.name,
             manifest.roothash[:12])
    if manifest.shared_uki:  # the UKI finds this slot's /usr by these UUIDs
        set_partuuids(devices, manifest.roothash)
    if uki is not None:
        name, data = uki
        atomic_write(esp / UKI_DIR / name, data)  # the bytes that were checked, nothing else
        fsync_dir(esp / UKI_DIR)
    else:
        assert entry is not None
        name = entry.filename
        atomic_write(esp / ENTRIES / name, entry.text)
        fsync_dir(esp / ENTRIES)
    log.info("slot %s: boot entry %s written (%d tries)", target.name, name, tries)
    return name


def rollback(esp: Path, active: Slot) -> Path:
    """Make the other slot preferred: mark the running slot's entry bad (``+0``).

    The other slot must hold an entry that is not bad; the running one stays as a fallback.

    Raises:
        SlotError: the other slot has no usable entry, or the running slot has none.
    """
    other = [p for p in slot_entries(esp, active.other)
             if (e := parse_entry(p.name)) and not e.bad]
    if not other:
        raise SlotError(f"slot {active.other.name} has no usable boot entry to roll back to")
    mine = slot_entries(esp, active)
    if not mine:
        raise SlotError(f"slot {active.name} (running) has no boot entry in {esp / ENTRIES}")
    for p in mine:
        dest = p.with_name(f"{entry_stem(active)}+0{p.suffix}")  # .conf or .efi
        if p != dest:
            os.replace(p, dest)
            fsync_dir(p.parent)
    log.info("rollback: slot %s marked bad, slot %s preferred at next boot", active.name,
             active.other.name)
    return other[0]
