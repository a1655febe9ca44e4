"""EC2's ``UefiData``: the fleet's Secure Boot keys as the variable store an instance starts with.

``aws ec2 register-image --uefi-data`` takes a base64 blob in AWS's own format (a header, a
CRC-32C and a zlib stream with a preset dictionary, written by AWS's python-uefivars and
virt-firmware). With PK, KEK and db set, the instance boots in User Mode with Secure Boot on
and the fleet's db, so the image's signed systemd-boot and UKIs run and nothing else does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imagebuild.core.errors import ConfigError
from imagebuild.image.keys import SECURE_BOOT_KEYS, check_key_dir


def aws_uefi_data(keys_dir: Path, where: str) -> str:
    """The base64 ``UefiData`` holding PK, KEK and db of ``keys_dir`` (public files only).

    Raises:
        ConfigError: a certificate of the key set is missing or unreadable.
    """
    from virt.firmware.efi import efivar  # the workstation's; imported only for EC2 outputs
    from virt.firmware.varstore.aws import AwsVarStore

    d = check_key_dir(keys_dir, where)
    owner = (d / "owner-guid.txt").read_text().strip() if (d / "owner-guid.txt").is_file() \
        else "00000000-0000-0000-0000-000000000000"
    varlist = efivar.EfiVarList()
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(max(quiet, logging.WARNING))  # it logs every variable at INFO
    try:
        for name in SECURE_BOOT_KEYS:
            try:
                varlist.add_cert(name, owner, str(d / f"{name}.crt"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"{where}: {d / name}.crt: not a usable certificate ({e})") \
                    from None
    finally:
        logging.getLogger().setLevel(quiet)
    return AwsVarStore.base64_varstore(varlist).decode()
