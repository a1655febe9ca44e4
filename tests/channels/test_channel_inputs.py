"""Fields that reach a boot entry are strict, and no input file's bytes give a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from channels.bundle import Manifest, Slot
from channels.entries import boot_entry
from channels.errors import BundleError
from imagebuild.cli import main


def manifest_dict(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("field, value, why", [
    ("boot_tries", True, r"'boot_tries': True is not a whole number"),
    ("boot_tries", 3.0, r"'boot_tries': 3.0 is not a whole number"),
    ("boot_tries", "3", r"'boot_tries': '3' is not a whole number"),
    ("kernel_cmdline", "quiet\ninitrd /evil\noptions init=/bin/sh",
     r"'kernel_cmdline': contains the control character '\\n'"),
    ("kernel_cmdline", "quiet\tsplash", r"'kernel_cmdline': contains the control character '\\t'"),
    ("kernel_cmdline", "quiet\x00", r"control character '\\x00'"),
    ("kernel_cmdline", "quiet\u2028options x", r"control character '\\u2028'"),
    ("kernel_cmdline", 7, r"'kernel_cmdline': 7 is not a string"),
    ("name", ["tidehost"], r"'name': \['tidehost'\] is not a string"),
    ("name", "Tide host", r"'name': 'Tide host' is not a lowercase name"),
    ("version", "1.2.0\n", r"'version': contains the control character"),
    ("version", 120, r"'version': 120 is not a string"),
    ("channel", "gamma", r"'channel': 'gamma' is not one of alpha, beta, stable"),
    ("build_id", "x\rtitle evil", r"'build_id': contains the control character '\\r'"),
])
def test_manifest_fields_are_strict(field: str, value: object, why: str, make_bundle) -> None:  # noqa: ANN001
    d = manifest_dict(make_bundle("1.2.0"))
    d[field] = value
    with pytest.raises(BundleError, match=why):
        Manifest.from_json(json.dumps(d).encode())


@pytest.mark.parametrize("size", [True, "4096", 4096.0, -1, None])
def test_file_sizes_are_whole_numbers(size: object, make_bundle) -> None:  # noqa: ANN001
    d = manifest_dict(make_bundle("1.2.0"))
    d["files"]["usr.img"]["size"] = size
    with pytest.raises(BundleError, match=r"'files\.usr\.img': needs a whole-number size"):
        Manifest.from_json(json.dumps(d).encode())


def test_boot_entry_never_gains_lines(make_bundle) -> None:  # noqa: ANN001
    m = Manifest.from_json((make_bundle("1.2.0") / "manifest.json").read_bytes())
    entry = boot_entry(m, Slot.B, 3, "console=ttyS1")
    assert entry.filename == "tidehost-b+3.conf"
    assert [line.split()[0] for line in entry.text.splitlines()] == [
        "title", "sort-key", "version", "linux", "initrd", "options"]
    for extra in ("x\ninitrd /evil", "x\rinit=/bin/sh", "x\x00"):  # an OEM file's contents
        with pytest.raises(BundleError, match=r"'options' would contain the control character"):
            boot_entry(m, Slot.B, 3, extra)
    for tries in (True, -1, 100, "3"):
        with pytest.raises(BundleError, match="is not a whole number from 0 to 99"):
            boot_entry(m, Slot.B, tries)  # type: ignore[arg-type]


BAD_UTF8 = b'{"format": 1, "name": "tidehost\xff\xfe"}'


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["channel", *argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> bool:
    return err.startswith("tidehost: error: ") and err.count("\n") == 1


def test_invalid_utf8_manifest_is_one_line(repo: Path, make_bundle, capsys) -> None:  # noqa: ANN001
    bundle = make_bundle("1.2.0")
    (bundle / "manifest.json").write_bytes(BAD_UTF8)
    code, err = run(capsys, "publish", str(repo), str(bundle), "--channel", "alpha")
    assert code == 4 and one_line(err), err
    assert f"{bundle}/manifest.json: not UTF-8 (invalid start byte at byte 31)" in err
    (bundle / "manifest.json").write_bytes('{"name": "x"}'.encode("utf-16"))  # not UTF-8 either
    code, err = run(capsys, "publish", str(repo), str(bundle), "--channel", "alpha")
    assert code == 4 and one_line(err) and "manifest.json: not UTF-8" in err, err


def test_invalid_utf8_repository_files_are_one_line(repo: Path, make_bundle, open_repo,  # noqa: ANN001
                                                    tmp_path: Path, capsys) -> None:
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
    bundle = str(make_bundle("1.3.0"))
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"s3cr\xe9t\n")  # latin-1, not UTF-8
    code, err = run(capsys, "publish", str(repo), bundle, "--channel", "alpha",
                    "--passphrase-file", str(passfile))
    assert code == 4 and one_line(err) and f"{passfile}: not UTF-8" in err, err

    config = repo / "tidehost-channels.json"
    good = config.read_bytes()
    config.write_bytes(good.replace(b'"kind"', b'"k\xc3\x28ind"'))
    code, err = run(capsys, "status", str(repo))
    assert code == 4 and one_line(err) and f"{config}: not UTF-8" in err, err
    config.write_bytes(good)

    ts = repo / "published/metadata/timestamp.json"
    ts.write_bytes(b"\xff" + ts.read_bytes())
    code, err = run(capsys, "status", str(repo))
    assert code == 4 and one_line(err) and f"{ts}: unreadable metadata" in err, err

    root = tmp_path / "root.json"
    root.write_bytes(BAD_UTF8)
    code, err = run(capsys, "check", "http://127.0.0.1:9/", "--channel", "alpha", "--root",
                    str(root), "--state", str(tmp_path / "st"), "--machine-id", "m")
    assert code == 4 and one_line(err), err


def test_invalid_utf8_channel_index_is_one_line(repo: Path, make_bundle, open_repo,  # noqa: ANN001
                                                make_client) -> None:
    from channels.errors import ChannelIndexError
    from channels.index import ChannelIndex

    with pytest.raises(ChannelIndexError, match=r"alpha/index.json: not UTF-8"):
        ChannelIndex.from_bytes(b'{"format": 1, "channel": "alpha\xff"}', "alpha")
