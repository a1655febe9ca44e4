"""The image file: parsing into a typed configuration, and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuild.core.errors import ConfigError
from imagebuild.image.config import (
    DEFAULT_EXCLUDE,
    REQUIRED_PACKAGES,
    Channel,
    OutputFormat,
    Suite,
    UsrFilesystem,
    parse_image_file,
    parse_image_text,
)


def parse(text: str, tmp_path: Path | None = None):
    return parse_image_text(text, "my.yaml", tmp_path or Path("."))


def test_reference_image_holds_the_host_stack() -> None:
    c = parse_image_file(None)
    assert c.suite is Suite.TRIXIE
    for pkg in ("openssh-server", "cloud-init", "etcd-server", "docker.io", "python3",
                "systemd", "python3-tuf", c.kernel):  # fmt: skip
        assert pkg in c.all_packages
    assert c.formats == (OutputFormat.RAW, OutputFormat.QCOW2)


def test_full_file_is_parsed_into_typed_fields(tmp_path: Path) -> None:
    (tmp_path / "overlay").mkdir()
    c = parse(
        """
name: edge
version: 2.10.3
channel: beta
suite: bookworm
packages: [htop, jq]
overlay: overlay
kernel_cmdline: [console=ttyS0, quiet]
partitions: {usr: 1024, root: 2048}
usr_filesystem: erofs
boot_tries: 5
formats: qcow2
""",
        tmp_path,
    )
    assert (c.name, c.version, c.channel, c.suite) == ("edge", "2.10.3", Channel.BETA, Suite.BOOKWORM)
    assert c.packages == ("htop", "jq") and set(REQUIRED_PACKAGES) <= set(c.all_packages)
    assert c.overlay == tmp_path / "overlay"
    assert c.kernel_cmdline == ("console=ttyS0", "quiet")
    assert (c.partitions.usr, c.partitions.root, c.partitions.esp) == (1024, 2048, 256)
    assert c.usr_filesystem is UsrFilesystem.EROFS and c.boot_tries == 5
    assert c.formats == (OutputFormat.QCOW2,)
    assert c.mirror is None  # mmdebstrap's own default unless the file names one


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: blue", r"^my\.yaml: colour: unknown field"),
        ("channel: nightly", r"^my\.yaml: channel: 'nightly' is not one of alpha, beta, stable$"),
        ("suite: sid", r"^my\.yaml: suite: 'sid' is not one of trixie, bookworm$"),
        ("version: 1.2", r"^my\.yaml: version: '1\.2' is not a version"),
        ("name: My Image", r"^my\.yaml: name: 'My Image' is not a lowercase name"),
        ("packages: [ok, 'bad pkg!']", r"^my\.yaml: packages\[1\]: 'bad pkg!' is not a Debian"),
        ("formats: [raw, iso]", r"^my\.yaml: formats\[1\]: 'iso' is not one of raw, qcow2, vagrant-libvirt"),
        ("formats: []", r"^my\.yaml: formats: name at least one output format$"),
        ("partitions: {usr: 10}", r"^my\.yaml: partitions\.usr: 10 is not a whole number"),
        ("partitions: {swap: 10}", r"^my\.yaml: partitions\.swap: unknown partition"),
        ("boot_tries: 0", r"^my\.yaml: boot_tries: 0 is not a whole number from 1 to 9$"),
        ("boot_tries: yes", r"^my\.yaml: boot_tries: True is not a whole number"),
        ("mirror: ftp.example", r"^my\.yaml: mirror: 'ftp\.example' is not an http"),
        ("overlay: nowhere", r"^my\.yaml: overlay: .*nowhere does not exist$"),
        ("exclude: [usr/share/doc/*]", r"^my\.yaml: exclude\[0\]: 'usr/share/doc/\*' is not an absolute"),
        ("exclude: ['/usr/*']", r"^my\.yaml: exclude\[0\]: '/usr/\*' is not an absolute path glob"),
        ("exclude: ['/*']", r"^my\.yaml: exclude\[0\]: '/\*' is not"),
        ("compression: gzip", r"^my\.yaml: compression: 'gzip' is not one of zstd, xz$"),
        ("compression_block_size: 100", r"^my\.yaml: compression_block_size: 100 is not a power of two"),
        ("compression_block_size: 2048", r"^my\.yaml: compression_block_size: 2048 is not a whole number from 4 to 1024$"),
        ("fragments: maybe", r"^my\.yaml: fragments: expected true or false"),
        ("- a\n- b", r"^my\.yaml: the image file must be a YAML mapping$"),
        ("name: [unclosed", r"^my\.yaml: not valid YAML \(line 1\)$"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        parse(text)
    assert "\n" not in str(exc.value)


def test_exclude_and_compression_fields(tmp_path: Path) -> None:
    c = parse("""
exclude: [/usr/share/doc/*, "!/usr/share/doc/*/copyright", /usr/bin/ctr]
compression: xz
compression_block_size: 256
fragments: false
""", tmp_path)  # fmt: skip
    assert c.exclude == ("/usr/share/doc/*", "!/usr/share/doc/*/copyright", "/usr/bin/ctr")
    assert (c.compression.value, c.compression_block_size, c.fragments) == ("xz", 256, False)
    plain = parse("name: x")
    assert plain.exclude == DEFAULT_EXCLUDE  # documentation and manual pages stay out
    ref = parse_image_file(None)
    assert set(DEFAULT_EXCLUDE) <= set(ref.exclude) and "/usr/bin/ctr" in ref.exclude
    assert ref.compression.value == "zstd" and ref.compression_level == 19


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the image file"):
        parse_image_file(tmp_path / "nope.yaml")


def test_command_line_overrides_are_validated_like_the_file() -> None:
    c = parse_image_file(None).with_overrides(version="1.2.0", channel="stable", formats="raw")
    assert (c.version, c.channel, c.formats) == ("1.2.0", Channel.STABLE, (OutputFormat.RAW,))
    with pytest.raises(ConfigError, match=r"--channel: 'nightly' is not one of"):
        c.with_overrides(channel="nightly")
    with pytest.raises(ConfigError, match=r"--format\[0\]: 'vhd' is not one of"):
        c.with_overrides(formats="vhd")


# The Debian package that gives the host each third-party module the agent's code imports.
HOST_MODULES = {
    "yaml": "python3-yaml", "requests": "python3-requests", "urllib3": "python3-urllib3",
    "tuf": "python3-tuf", "securesystemslib": "python3-securesystemslib",
    "cryptography": "python3-cryptography", "zstandard": "python3-zstandard",
}  # fmt: skip
# Pulled in by a required package rather than listed (python3-tuf, python3-requests).
DEPENDENCIES = {"python3-urllib3", "python3-securesystemslib"}


def test_every_module_the_host_imports_comes_with_the_image() -> None:
    import ast
    import sys

    root = Path(__file__).resolve().parents[2]
    imported: dict[str, str] = {}
    for pkg in ("updater", "channels"):
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names}:
                    if top not in sys.stdlib_module_names and top not in ("updater", "channels",
                                                                          "__future__"):  # fmt: skip
                        imported.setdefault(top, str(path.relative_to(root)))
    unknown = {m: where for m, where in imported.items() if m not in HOST_MODULES}
    assert not unknown, f"host code imports modules with no Debian package named here: {unknown}"
    missing = {HOST_MODULES[m] for m in imported} - set(REQUIRED_PACKAGES) - DEPENDENCIES
    assert not missing, f"the image lacks {sorted(missing)}"
