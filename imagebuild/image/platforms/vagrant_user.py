"""The conventional ``vagrant`` user on a Vagrant box's ROOT.

Vagrant logs in as ``vagrant`` with its well-known insecure key, then replaces that key with
a fresh one on the first ``vagrant up`` (``config.ssh.insert_key``, on by default). The
user needs passwordless sudo. Users are state, so this lives on ROOT (/etc and /home), not
in /usr: ``add_vagrant_user`` edits a copy of the ROOT staging tree before it becomes the
box's ROOT filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagebuild.core.errors import StageError
from imagebuild.core.files import data_file, write_atomic

USER = "vagrant"
SUDOERS = f"{USER} ALL=(ALL) NOPASSWD:ALL\n"


def insecure_keys() -> str:
    """Vagrant's insecure public keys (ed25519 and RSA), from hashicorp/vagrant keys/."""
    return data_file("imagebuild.image.platforms.data", "vagrant-insecure.pub").read_text()


def free_id(lines: list[str], start: int = 1000) -> int:
    """The lowest id >= ``start`` not used in a passwd or group file's lines (pure)."""
    used = set()
    for line in lines:
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            used.add(int(parts[2]))
    n = start
    while n in used:
        n += 1
    return n


def add_lines(etc: Path) -> tuple[int, int]:
    """Add the user and its group to passwd, group, shadow and gshadow; return (uid, gid)."""

    def read(name: str) -> list[str]:
        p = etc / name
        return p.read_text().splitlines() if p.exists() else []

    passwd, group = read("passwd"), read("group")
    if any(line.startswith(f"{USER}:") for line in passwd):
        raise StageError(f"{etc}/passwd already has a user {USER!r}")
    uid = free_id(passwd)
    gid = free_id(group, uid)
    additions = {
        "passwd": f"{USER}:x:{uid}:{gid}:Vagrant:/home/{USER}:/bin/bash",
        "group": f"{USER}:x:{gid}:",
        # '*': no password, but not locked, so sshd accepts the key.
        "shadow": f"{USER}:*:20000:0:99999:7:::",
        "gshadow": f"{USER}:!::",
    }
    for name, line in additions.items():
        p = etc / name
        if not p.exists() and name in ("shadow", "gshadow"):
            continue
        st = p.stat()
        # a new inode: the staging copy may share inodes with its source
        write_atomic(p, "\n".join([*read(name), line]) + "\n", st.st_mode & 0o7777)
        os.chown(p, st.st_uid, st.st_gid)
    return uid, gid


def add_vagrant_user(root: Path) -> None:
    """Create ``vagrant`` with the insecure keys and sudo in the ROOT tree ``root``."""
    uid, gid = add_lines(root / "etc")
    sudoers = root / "etc/sudoers.d" / USER
    sudoers.parent.mkdir(parents=True, exist_ok=True)
    sudoers.write_text(SUDOERS)
    sudoers.chmod(0o440)
    home = root / "home" / USER
    ssh = home / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    keys = ssh / "authorized_keys"
    keys.write_text(insecure_keys())
    for path, mode in ((home, 0o755), (ssh, 0o700), (keys, 0o600)):
        os.chown(path, uid, gid)
        path.chmod(mode)
