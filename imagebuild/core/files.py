"""Files: one atomic write, the SSH public keys a user names, and the data the toolkit ships.

Data files (templates, units, keys) are found through ``importlib.resources`` in the
installed packages, so a checkout, an editable install and a wheel read the same files.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from channels.layout import atomic_write
from imagebuild.core.errors import ConfigError, StageError
from imagebuild.core.fields import ssh_key


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, then rename it into place.

    The folder is made if missing; on any error the temporary file is removed and ``path``
    is left as it was (``channels.layout.atomic_write``, which also syncs the file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data.encode() if isinstance(data, str) else data, mode)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (0700), made if missing: where the
    workstation keeps private keys, passwords and seeds that hold them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def copy_atomic(src: Path, dest: Path, mode: int = 0o644) -> None:
    """Copy ``src`` to ``dest`` through a temporary file beside it, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_ssh_public_key(path: Path, where: str = "--ssh-key") -> str:
    """The OpenSSH public key line of ``path``: a public key file, or a private key with its
    ``.pub`` beside it.

    Raises:
        ConfigError: the file cannot be read or holds no public key line.
    """
    path = Path(path).expanduser()
    if path.suffix != ".pub" and path.with_suffix(".pub").is_file():
        path = path.with_suffix(".pub")
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path} ({e.strerror})") from None
    return ssh_key(f"{where}: {path}", text)


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (the build copies
    ``updater`` and ``channels`` into images; the toolkit never imports ``updater``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StageError(f"package {package!r} is not installed with the toolkit")
    return Path(next(iter(spec.submodule_search_locations)))


def data_dir(package: str, name: str = "") -> Path:
    """The folder ``name`` of the data shipped in ``package`` (its own folder when empty).

    Raises:
        StageError: the folder is missing (an install without its package data).
    """
    root = resources.files(package)
    folder = Path(str(root.joinpath(name) if name else root))
    if not folder.is_dir():
        raise StageError(f"{folder}: the toolkit's data folder is missing (a broken install: "
                         "reinstall tidehost)")  # fmt: skip
    return folder


def data_file(package: str, name: str) -> Path:
    """The data file ``name`` shipped in ``package``; StageError when it is missing."""
    path = Path(str(resources.files(package).joinpath(name)))
    if not path.is_file():
        raise StageError(f"{path}: the toolkit's data file is missing (a broken install: "
                         "reinstall tidehost)")  # fmt: skip
    return path
