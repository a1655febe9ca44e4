"""Stage: the release's unified kernel image (UKI), made by ukify in the tools tree.

A UKI is one PE file: systemd-stub (from the image's own tree, so the boot code changes with
the image), the kernel, the initrd, the command line (``channels.entries.slot_cmdline``:
``usrhash=`` and the image's arguments) and the image's os-release. A format-3 release has
one, ``uki.efi``, for both slots: its command line names no slot (the initrd finds /usr by
the partition UUIDs the root hash derives). A format-2 release has one per slot
(``uki-a.efi``, ``uki-b.efi``), each naming its slot's partitions.

With the fleet's keys each UKI is signed with db for Secure Boot
(sbsign, through ukify) and carries a PCR 11 policy signed with the PCR key (systemd-measure,
through ukify), so that a secret sealed to that key opens on every release signed with it.
Each signed UKI is checked against db before the build goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from channels.authenticode import pe_sections, verify_image
from channels.errors import ImageSignatureError
from imagebuild.core.errors import StageError
from imagebuild.image.context import BuildContext
from imagebuild.image.keys import SigningKeys
from imagebuild.image.stages import tools

log = logging.getLogger(__name__)

STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # in the image's tree
ADDON_STUB = "usr/lib/systemd/boot/efi/addonx64.efi.stub"
ADDON_DIR = "loader/addons"  # on the ESP: systemd-stub appends every addon's .cmdline
OS_RELEASE = "usr/lib/os-release"
SECTIONS = (".linux", ".initrd", ".cmdline", ".osrel", ".uname")
PCR_SECTIONS = (".pcrsig", ".pcrpkey")


def ukify_args(w: str, name: str, uname: str, signed: bool) -> list[str]:
    """``ukify build`` of the UKI ``name`` with its inputs in the tools tree's folder ``w``
    (pure)."""
    args = ["ukify", "build", f"--linux={w}/vmlinuz", f"--initrd={w}/initrd",
            f"--cmdline=@{w}/{name}.cmdline", f"--os-release=@{w}/os-release",
            f"--uname={uname}", f"--stub={w}/stub.efi",
            f"--output={w}/{name}"]  # fmt: skip
    if signed:
        args += [f"--secureboot-private-key={w}/keys/db.key",
                 f"--secureboot-certificate={w}/keys/db.crt",
                 f"--pcr-private-key={w}/keys/pcr.key",
                 f"--pcr-public-key={w}/keys/pcr.pub.pem"]  # fmt: skip
    return args


def check_uki(data: bytes, name: str, cmdline: str, keys: SigningKeys | None) -> str:
    """What the built UKI ``name`` must be: its sections, the command line it was built with,
    and (signed) a signature that passes Secure Boot under the fleet's db (pure).

    Raises:
        StageError: it is not.
    """
    try:
        sections = pe_sections(data)
    except ImageSignatureError as e:
        raise StageError(f"{name}: {e}") from None
    want = SECTIONS + (PCR_SECTIONS if keys else ())
    missing = [s for s in want if s not in sections]
    if missing:
        raise StageError(f"{name}: ukify made a UKI without {', '.join(missing)}")
    if sections[".cmdline"].rstrip(b"\0").decode(errors="replace") != cmdline:
        raise StageError(f"{name}: its .cmdline is not the command line it was built with")
    if keys is None:
        return "unsigned"
    try:
        return verify_image(data, keys.db_esl.read_bytes(), name=name)
    except ImageSignatureError as e:
        raise StageError(str(e)) from None


def make_ukis(ctx: BuildContext, cmdlines: Mapping[str, str],
              keys: SigningKeys | None) -> dict[str, Path]:  # fmt: skip
    """``parts/<name>`` for each UKI name and its command line (``release.uki_cmdlines``),
    from ``parts/vmlinuz`` and ``parts/initrd``.

    Raises:
        StageError: ukify failed, or a UKI is not what ``check_uki`` expects.
    """
    w = tools.work_dir(ctx) / "uki"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(mode=0o700, parents=True)
    try:
        for name in ("vmlinuz", "initrd"):
            os.link(ctx.parts / name, w / name)
        stub = ctx.tree / STUB
        if not stub.is_file():
            raise StageError(f"the image's tree has no {STUB} (is systemd-boot-efi installed?)")
        shutil.copyfile(stub, w / "stub.efi")
        shutil.copyfile(ctx.tree / OS_RELEASE, w / "os-release")
        if keys:
            (w / "keys").mkdir(mode=0o700)
            for src, dest in ((keys.db_key, "db.key"), (keys.db_crt, "db.crt"),
                              (keys.pcr_key, "pcr.key"), (keys.pcr_public, "pcr.pub.pem")):
                shutil.copyfile(src, w / "keys" / dest)  # fmt: skip
        out = {}
        for name, cmdline in cmdlines.items():
            (w / f"{name}.cmdline").write_text(cmdline)  # no trailing newline
            args = ukify_args(tools.inside(ctx, w), name, ctx.kernel_version, keys is not None)
            tools.run_in_tools(ctx, args, f"the UKI {name}")
            made = w / name
            verdict = check_uki(made.read_bytes(), name, cmdline, keys)
            dest = ctx.parts / name
            os.replace(made, dest)
            dest.chmod(0o644)
            log.info("  %s: %.1f MiB, %s", dest.name, dest.stat().st_size / (1 << 20), verdict)
            out[name] = dest
        return out
    finally:
        shutil.rmtree(w, ignore_errors=True)  # the decrypted keys never outlive the stage


def make_addon(ctx: BuildContext, cmdline: str, name: str, keys: SigningKeys | None) -> Path:
    """A command-line addon (``ukify build --stub=addonx64.efi.stub``): a PE holding only
    ``cmdline``, signed with db when there are keys. systemd-stub appends the ``.cmdline``
    of every addon in the ESP's ``loader/addons/`` to the UKI's own (under Secure Boot only
    signed ones), so a platform's kernel arguments apply to every slot's UKI, updates
    included, and the UKIs stay the same on every platform. It is measured into PCR 12,
    not 11: it does not touch the PCR 11 policy.

    Raises:
        StageError: ukify failed, or the addon does not pass Secure Boot under db.
    """
    w = tools.work_dir(ctx) / "addon"
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(mode=0o700, parents=True)
    try:
        shutil.copyfile(ctx.tree / ADDON_STUB, w / "stub.efi")
        (w / "cmdline").write_text(cmdline)
        inner = tools.inside(ctx, w)
        args = ["ukify", "build", f"--stub={inner}/stub.efi", f"--cmdline=@{inner}/cmdline",
                f"--output={inner}/{name}"]  # fmt: skip
        if keys:
            (w / "keys").mkdir(mode=0o700)
            shutil.copyfile(keys.db_key, w / "keys/db.key")
            shutil.copyfile(keys.db_crt, w / "keys/db.crt")
            args += [f"--secureboot-private-key={inner}/keys/db.key",
                     f"--secureboot-certificate={inner}/keys/db.crt"]  # fmt: skip
        tools.run_in_tools(ctx, args, f"the addon {name}")
        data = (w / name).read_bytes()
        if keys:
            try:
                verify_image(data, keys.db_esl.read_bytes(), name=name)
            except ImageSignatureError as e:
                raise StageError(str(e)) from None
        dest = ctx.work / name
        dest.write_bytes(data)
        return dest
    finally:
        shutil.rmtree(w, ignore_errors=True)
