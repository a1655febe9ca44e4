"""``tidehost channel ...`` end to end: the verb, its errors, and ``serve`` + ``check``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from channels.bundle import load_bundle
from imagebuild.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["channel", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_release_workflow(tmp_path: Path, make_bundle, capsys) -> None:  # noqa: ANN001
    repo = str(tmp_path / "r")
    assert run(capsys, "init", repo, "--expiry", "timestamp=0.25", "--expiry", "beta=10")[0] == 0
    roles = json.loads(run(capsys, "status", repo, "--json")[1])["roles"]
    assert roles["timestamp"]["expires"] < roles["snapshot"]["expires"]
    assert roles["beta"]["expires"] < roles["alpha"]["expires"]
    assert run(capsys, "init", str(tmp_path / "x"), "--expiry", "nightly=3")[0] == 2
    code, out, _ = run(capsys, "publish", repo, str(make_bundle("1.2.0")), "--channel", "alpha")
    assert code == 0 and "published 1.2.0 to alpha" in out
    code, out, _ = run(capsys, "promote", repo, "1.2.0", "--from", "alpha", "--to", "beta")
    assert code == 0 and "0 bytes copied" in out
    code, out, _ = run(capsys, "rollout", repo, "1.2.0", "--channel", "beta",
                       "--waves", "1%@0h,10%@24h,100%@72h")
    assert code == 0 and "1%@0h,10%@24h,100%@72h" in out
    assert run(capsys, "pause", repo, "1.2.0", "--channel", "beta")[0] == 0
    code, out, _ = run(capsys, "status", repo, "--json")
    st = json.loads(out)
    beta = st["channels"]["beta"]["releases"][0]
    assert beta["paused"] and beta["waves"] == "1%@0h,10%@24h,100%@72h"
    assert st["channels"]["alpha"]["current"] == "1.2.0"
    assert st["channels"]["stable"]["current"] is None
    assert run(capsys, "resume", repo, "1.2.0", "--channel", "beta")[0] == 0
    assert run(capsys, "pull", repo, "1.2.0", "--channel", "alpha")[0] == 0
    code, out, _ = run(capsys, "status", repo)
    assert "pulled" in out and "beta: current 1.2.0" in out
    ts_before = st["roles"]["timestamp"]["version"]
    assert run(capsys, "refresh", repo)[0] == 0
    code, out, _ = run(capsys, "rotate-key", repo, "--role", "stable")
    assert code == 0 and "new key" in out
    st = json.loads(run(capsys, "status", repo, "--json")[1])
    assert st["roles"]["timestamp"]["version"] > ts_before


@pytest.mark.parametrize("argv, code, message", [
    (["status", "{tmp}/nothing"], 4, "no such directory"),
    (["status", "{tmp}"], 4, "not a channel repository"),
    (["publish", "{repo}", "{tmp}/missing.release", "--channel", "alpha"], 4,
     "not a release bundle"),
    (["publish", "{repo}", "{bundle}", "--channel", "alpha", "--waves", "10%@1h"], 2,
     "--waves: the last wave (10%@1h) must open 100%"),
    (["pause", "{repo}", "9.9.9", "--channel", "stable"], 4, "channel stable has no release 9.9.9"),
    (["publish", "{repo}", "{bundle}", "--channel", "edge"], 4,
     "unknown channel 'edge': use one of alpha, beta, stable"),
    (["promote", "{repo}", "1.0.0", "--from", "alpha", "--to", "lts"], 4, "unknown channel 'lts'"),
    (["rotate-key", "{repo}", "--role", "mirror"], 4, "unknown role 'mirror'"),
    (["check", "http://127.0.0.1:9/", "--channel", "edge", "--root", "{repo}/published/metadata/"
      "root.json", "--state", "{tmp}/st", "--machine-id", "m"], 4, "unknown channel 'edge'"),
    (["check", "http://127.0.0.1:9/", "--channel", "beta", "--root", "{repo}/published/metadata/"
      "root.json", "--state", "{tmp}/st", "--machine-id", "m"], 4, "127.0.0.1:9"),
    (["pull", "{repo}", "latest", "--channel", "stable"], 4, "'latest' is not a version"),
    (["publish", "{repo}", "{bundle}", "--channel", "alpha", "--passphrase-file", "{tmp}/nope"],
     4, "cannot read"),
])
def test_errors_are_one_line(argv: list[str], code: int, message: str, tmp_path: Path,  # noqa: ANN001
                             repo: Path, make_bundle, capsys) -> None:
    bundle = make_bundle("1.0.0")
    args = [a.format(tmp=tmp_path, repo=repo, bundle=bundle) for a in argv]
    got, out, err = run(capsys, *args)
    assert got == code
    assert err.startswith("tidehost: error: ") and err.count("\n") == 1, err
    assert message in err


def test_wrong_passphrase_on_cli(tmp_path: Path, make_bundle, capsys,  # noqa: ANN001
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo = str(tmp_path / "r")
    monkeypatch.setenv("TIDEHOST_KEY_PASSPHRASE", "s3cret")
    assert run(capsys, "init", repo)[0] == 0
    bundle = str(make_bundle("1.0.0"))
    monkeypatch.delenv("TIDEHOST_KEY_PASSPHRASE")
    code, _, err = run(capsys, "publish", repo, bundle, "--channel", "alpha")
    assert code == 4 and "is encrypted: set TIDEHOST_KEY_PASSPHRASE" in err
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    code, _, err = run(capsys, "publish", repo, bundle, "--channel", "alpha",
                       "--passphrase-file", str(wrong))
    assert code == 4 and "wrong passphrase" in err
    right = tmp_path / "right"
    right.write_text("s3cret\n")
    assert run(capsys, "publish", repo, bundle, "--channel", "alpha",
                "--passphrase-file", str(right))[0] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_and_check(repo: Path, open_repo, make_bundle, tmp_path: Path) -> None:  # noqa: ANN001
    with open_repo() as r:
        r.publish(make_bundle("1.2.0"), "alpha")
        r.promote("1.2.0", "alpha", "beta")
    port = free_port()
    tidehost = [sys.executable, "-m", "imagebuild.cli"]
    server = subprocess.Popen([*tidehost, "channel", "serve", str(repo), "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert "serving" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        root = repo / "published/metadata/root.json"
        check = [*tidehost, "channel", "check", url, "--channel", "beta", "--root", str(root),
                 "--state", str(tmp_path / "st"), "--machine-id", "m1", "--current", "1.0.0"]
        done = subprocess.run([*check, "--download", str(tmp_path / "dl"), "--json"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "beta: offers 1.2.0 to m1" in done.stdout
        report = json.loads(done.stdout.splitlines()[-1])
        assert report["offered"] == "1.2.0"
        assert load_bundle(Path(report["bundle"])).version == "1.2.0"
        # the state persists: replaying an older timestamp is now caught
        ts = repo / "published/metadata/timestamp.json"
        old = ts.read_bytes()
        with open_repo() as r:
            r.tuf.refresh()
        assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
        ts.write_bytes(old)
        done = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert done.returncode == 4
        assert done.stderr.count("\n") == 1 and "must be >=" in done.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
