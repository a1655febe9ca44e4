"""What each platform's OEM partition carries: pure data and text, no I/O.

The OEM partition (ext4, label OEM, mounted read-only at /oem) is the only place a platform
disk differs from the generic image, apart from slot A's factory boot entry, which already
carries the same arguments. /usr stays byte-identical across platforms, since updates
replace it.

The datasource list travels on the *kernel command line*, in the OEM's ``cmdline`` file
that the updater appends to every boot entry it writes (``channels.entries.read_oem_cmdline``).
It is one token, ``cc:datasource_list:%20[A,B,None]end_cc``, read by both halves of
cloud-init 25.1:

- ``ds-identify`` (the systemd generator, before any disk is mounted) takes
  ``datasource_list`` from ``cc:`` on /proc/cmdline before any config file, then probes
  only those datasources, in that order;
- cloud-init itself reads ``cc: ... end_cc`` (URL-decoded) as configuration that overrides
  /etc/cloud (``util.read_conf_from_cmdline``).

So the list holds from the very first boot, without a hook in /usr and without mounting
/oem early. The OEM also keeps ``platform.json`` (what was applied, for people and tests)
and ``cloud.cfg.d/90-tidehost-platform.cfg`` (the same list as cloud-init config, for an
operator who copies it to /etc/cloud/cloud.cfg.d).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from imagebuild.core.errors import ConfigError
from imagebuild.core.platforms import PLATFORMS, Oem, OutputFormat


@dataclass(frozen=True)
class OemSpec:
    oem: Oem
    title: str
    datasources: tuple[str, ...]  # cloud-init datasource_list, in order, ending in None
    console: tuple[str, ...]  # kernel console arguments; the last console= is /dev/console
    extra: tuple[str, ...] = ()  # other kernel arguments the platform needs

    @property
    def cmdline(self) -> str:
        """The OEM ``cmdline`` file's arguments (one line)."""
        ds = ",".join(self.datasources)
        return " ".join(
            (*self.console, *self.extra, f"tidehost.oem={self.oem.value}",
             f"cc:datasource_list:%20[{ds}]end_cc")
        )  # fmt: skip

    def files(self) -> dict[str, str]:
        """The OEM partition's files (relative path -> text)."""
        ds = json.dumps(list(self.datasources))
        platform = {
            "oem": self.oem.value,
            "title": self.title,
            "datasource_list": list(self.datasources),
            "cmdline": self.cmdline,
        }
        return {
            "cmdline": self.cmdline + "\n",
            "platform.json": json.dumps(platform, indent=2) + "\n",
            "cloud.cfg.d/90-tidehost-platform.cfg": (
                f"# Tidehost OEM ({self.title}); the kernel command line carries the same.\n"
                f"datasource_list: {ds}\n"
            ),
            "README": (
                f"Tidehost OEM partition for {self.title}.\n"
                "cmdline: kernel arguments the updater adds to every boot entry it writes.\n"
            ),
        }

    @property
    def wants_vagrant_user(self) -> bool:
        return self.oem is Oem.VAGRANT


# One OEM per platform with an OEM of its own, from the one table (``core.platforms``).
SPECS: dict[Oem, OemSpec] = {
    Oem(p.value): OemSpec(Oem(p.value), row.title, row.datasources, row.console, row.extra)
    for p, row in PLATFORMS.items()
    if row.has_oem
}
FORMAT_OEM: dict[OutputFormat, Oem] = {
    f: Oem(f.provider.value) for f in OutputFormat if f.is_platform
}


def spec_for(fmt: OutputFormat | str) -> OemSpec:
    """The OEM of a platform output format.

    Raises:
        ConfigError: ``fmt`` is not a platform format.
    """
    try:
        return SPECS[FORMAT_OEM[OutputFormat(fmt)]]
    except (KeyError, ValueError):
        known = ", ".join(f.value for f in FORMAT_OEM)
        raise ConfigError(f"{fmt!r} is not a platform output format ({known})") from None
