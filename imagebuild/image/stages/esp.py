"""Stage: the ESP of a UKI image: systemd-boot, and slot A's UKI as a type #2 entry.

::

    EFI/BOOT/BOOTX64.EFI, EFI/systemd/systemd-bootx64.efi   the loader (db-signed with keys)
    EFI/Linux/tidehost-a.efi                                 the UKI, slot A's (no counter: good)
    loader/loader.conf
    loader/keys/auto/{PK,KEK,db}.auth                        with keys: enrolled by systemd-boot
                                                             on firmware in Setup Mode

The loader is the tools tree's newer systemd-boot (``stages.tools``) for its
``reboot-on-error auto``: when the firmware refuses a UKI (Secure Boot, a damaged file) it
resets while that entry has tries left, so each refusal uses up a try and the other slot
boots, where 257 would hand the error back to the firmware and stop at its boot menu.
Without keys everything is unsigned and boots as before on firmware without Secure Boot.

``make_entries_esp`` makes the ESP of a format-1 release (``bundle_format: 1``), as images
were before UKIs: the image tree's systemd-boot, ``loader/entries/tidehost-a.conf`` and
``tidehost/a/{vmlinuz,initrd}``. Such a release is the stepping stone of a fleet whose agents
take only format 1: it brings them the agent that takes format 2.
"""

from __future__ import annotations

import logging
import shutil

from channels.authenticode import verify_image
from channels.bundle import Manifest, Slot, uki_file
from channels.entries import boot_entry, uki_entry_name
from channels.errors import ImageSignatureError
from imagebuild.core.errors import StageError
from imagebuild.core.run import require, run
from imagebuild.image.context import BuildContext
from imagebuild.image.keys import SigningKeys
from imagebuild.image.stages import tools

log = logging.getLogger(__name__)

LOADER_PATHS = ("::/EFI/BOOT/BOOTX64.EFI", "::/EFI/systemd/systemd-bootx64.efi")
ENROL_DIR = "::/loader/keys/auto"


def loader_conf(secure_boot: bool) -> str:
    """loader.conf (pure): no menu, no editor, only our entries; reset on a refused entry
    while it has tries left; with the fleet's keys, enrol them in Setup Mode (``force``: no
    countdown, SPECS §10.4)."""
    conf = ("timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"
            "reboot-on-error auto\n")  # fmt: skip
    return conf + ("secure-boot-enroll force\n" if secure_boot else "")


def signed_loader(ctx: BuildContext, keys: SigningKeys) -> bytes:
    """The tools tree's systemd-boot signed with db (sbsign), checked against db."""
    w = tools.work_dir(ctx) / "esp"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(mode=0o700, parents=True)
    try:
        shutil.copyfile(keys.db_key, w / "db.key")
        shutil.copyfile(keys.db_crt, w / "db.crt")
        inner = tools.inside(ctx, w)
        tools.run_in_tools(ctx, ["sbsign", "--key", f"{inner}/db.key", "--cert", f"{inner}/db.crt",
                                 "--output", f"{inner}/loader.efi", f"/{tools.LOADER}"],
                           "the signed systemd-boot")  # fmt: skip
        data = (w / "loader.efi").read_bytes()
    finally:
        shutil.rmtree(w, ignore_errors=True)
    try:
        log.info("  systemd-boot: %s", verify_image(data, keys.db_esl.read_bytes(),
                                                    name="systemd-bootx64.efi"))  # fmt: skip
    except ImageSignatureError as e:
        raise StageError(str(e)) from None
    return data


def make_esp(ctx: BuildContext, keys: SigningKeys | None) -> None:
    """``parts/esp.img``: a FAT32 ESP with the loader and slot A's UKI (``parts/uki.efi``, or
    ``parts/uki-a.efi`` in format 2)."""
    require("mkfs.vfat", "mmd", "mcopy")
    img = ctx.parts / "esp.img"
    img.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", img,
         str(ctx.config.partitions.esp * 1024)], capture=True)  # fmt: skip
    loader = ctx.work / "systemd-bootx64.efi"
    if keys:
        loader.write_bytes(signed_loader(ctx, keys))
    else:
        shutil.copyfile(tools.tools_dir(ctx) / tools.LOADER, loader)
    (ctx.work / "loader.conf").write_text(loader_conf(keys is not None))
    dirs = ["::/EFI", "::/EFI/BOOT", "::/EFI/systemd", "::/EFI/Linux", "::/loader",
            "::/loader/entries"]  # fmt: skip
    copies = [(loader, dest) for dest in LOADER_PATHS]
    uki = ctx.parts / uki_file(Slot.A, ctx.config.bundle_format)
    copies += [(ctx.work / "loader.conf", "::/loader/loader.conf"),
               (uki, f"::/EFI/Linux/{uki_entry_name(Slot.A, None)}")]  # fmt: skip
    if keys:
        dirs += ["::/loader/keys", ENROL_DIR]
        copies += [(auth, f"{ENROL_DIR}/{auth.name}") for auth in keys.auth]
    run(["mmd", "-i", img, *dirs])
    for src, dest in copies:
        run(["mcopy", "-o", "-i", img, src, dest])


def make_entries_esp(ctx: BuildContext) -> None:
    """``parts/esp.img`` of a format-1 release: systemd-boot (the image tree's) and slot A's
    kernel, initrd and type #1 entry (no counter: the factory slot is good)."""
    require("mkfs.vfat", "mmd", "mcopy")
    img, t = ctx.parts / "esp.img", ctx.tree
    img.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-C", img,
         str(ctx.config.partitions.esp * 1024)], capture=True)  # fmt: skip
    efi = t / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    if not efi.exists():
        efi = t / "usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed"
    manifest = Manifest.from_json((ctx.parts / "manifest.json").read_text())
    entry = boot_entry(manifest, Slot.A, tries=None)
    (ctx.work / "loader.conf").write_text(
        "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n")
    (ctx.work / entry.filename).write_text(entry.text)
    dirs = ["::/EFI", "::/EFI/BOOT", "::/EFI/systemd", "::/loader", "::/loader/entries",
            "::/tidehost", "::/tidehost/a", "::/tidehost/b"]  # fmt: skip
    run(["mmd", "-i", img, *dirs])
    copies = [(efi, dest) for dest in LOADER_PATHS]
    copies += [(ctx.work / "loader.conf", "::/loader/loader.conf"),
               (ctx.work / entry.filename, f"::/loader/entries/{entry.filename}"),
               (ctx.parts / "vmlinuz", f"::{entry.kernel}"),
               (ctx.parts / "initrd", f"::{entry.initrd}")]  # fmt: skip
    for src, dest in copies:
        run(["mcopy", "-o", "-i", img, src, dest])
