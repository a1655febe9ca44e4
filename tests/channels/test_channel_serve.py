"""``channel serve``: Range semantics, only the published tree; the client's import budget."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.errors import NotARepositoryError
from channels.serve import ChannelServer, published_root


@pytest.fixture
def server(repo: Path) -> Iterator[ChannelServer]:
    (repo / "published/targets/blob").write_bytes(bytes(range(256)) * 4)
    s = ChannelServer(published_root(repo))
    s.start()
    yield s
    s.stop()


def get(server: ChannelServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=5)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def test_serves_only_the_published_tree(server: ChannelServer, repo: Path) -> None:
    assert published_root(repo) == repo / "published"
    assert server.root == (repo / "published").resolve()
    assert get(server, "/metadata/timestamp.json")[0] == 200
    for path in ("/keys/root.pem", "/tidehost-channels.json", "/metadata/", "/nope"):
        assert get(server, path)[0] == 404, path
    (repo / "published/targets/leak").symlink_to(repo / "keys/root.pem")
    assert get(server, "/targets/leak")[0] == 404  # a symlink out of the tree
    for path in ("/../keys/root.pem", "/%2e%2e/keys/root.pem", "/../tidehost-channels.json",
                 "/metadata/%2E%2E/%2E%2E/keys/root.pem", "/%00", "/metadata/%00.json",
                 "/metadata/%0aroot.json", "/%ff%fe", "/metadata\\..\\..\\keys"):
        assert get(server, path)[0] == 400, path


def test_refuses_to_serve_anything_but_a_published_tree(repo: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from imagebuild.cli import main

    plain = tmp_path / "plain"
    (plain / "keys").mkdir(parents=True)
    (plain / "published").mkdir()  # looks like a repository, has no marker file
    for path in (plain, plain / "published", repo / "keys", repo / "published/metadata",
                 tmp_path / "missing"):
        with pytest.raises(NotARepositoryError, match="not a channel repository"):
            ChannelServer(path)
        assert main(["channel", "serve", str(path), "--port", "0"]) == 4
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "never a plain directory" in err
    s = ChannelServer(repo / "published")  # the repository's own published/ is fine
    s.server_close()


@pytest.mark.parametrize("rng", [
    "bytes=" + "9" * 4300, "bytes=1-" + "1" * 4300, "bytes=-" + "7" * 5000, "bytes=1-2,5-6",
    "bytes=--1", "bytes= 1-2", "bytes=0x10-", "bytes=\u00d9\u00a1-", "bytes=5-1", "lines=1-2", "bytes=",
])
def test_malformed_ranges_are_416(server: ChannelServer, rng: str) -> None:
    status, h, body = get(server, "/targets/blob", {"Range": rng})
    assert status == 416 and h["content-range"] == "bytes */1024" and body == b""
    assert get(server, "/targets/blob")[0] == 200  # and the server is still there


def raw(server: ChannelServer, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; what comes back until the server closes it."""
    host, port = server.server_address[:2]
    started = time.monotonic()
    with socket.create_connection((str(host), int(port)), timeout=wait) as c:
        c.sendall(data)
        got = b""
        while chunk := c.recv(65536):
            got += chunk
    return got, time.monotonic() - started


def test_bad_request_lines_get_a_status(server: ChannelServer) -> None:
    for line in (b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n" +
                 b"X: " + b"a" * 70000 + b"\r\n\r\n", b"\x16\x03\x01\x00\xa5\r\n\r\n",
                 b"GET " + b"/a" * 40000 + b" HTTP/1.1\r\n\r\n"):
        got, _ = raw(server, line, 5)
        assert got.split(b" ", 2)[1] in (b"400", b"414", b"431"), got[:80]


def test_idle_and_half_open_connections_time_out(repo: Path) -> None:
    s = ChannelServer(published_root(repo), idle_timeout=0.5, head_timeout=1.0)
    s.start()
    try:
        got, took = raw(s, b"", 10)  # connects and says nothing
        assert got == b"" and took < 3
        got, took = raw(s, b"GET /metadata/timestamp.json HTTP/1.1\r\n", 10)  # half a request
        assert got == b"" and took < 3
        host, port = s.server_address[:2]
        started = time.monotonic()  # a slow-loris head: one header byte every 0.3 s
        with socket.create_connection((str(host), int(port)), timeout=10) as c:
            c.sendall(b"GET /metadata/timestamp.json HTTP/1.1\r\n")
            with contextlib.suppress(OSError):
                for _ in range(100):
                    c.sendall(b"X")
                    time.sleep(0.3)
            assert time.monotonic() - started < 4
    finally:
        s.stop()


def test_threads_are_bounded(repo: Path) -> None:
    s = ChannelServer(published_root(repo), workers=4, backlog=4, idle_timeout=2,
                      head_timeout=2)
    s.start()
    host, port = s.server_address[:2]
    conns = []
    try:
        base = threading.active_count()
        for _ in range(40):  # forty idle connections
            conns.append(socket.create_connection((str(host), int(port)), timeout=5))
        time.sleep(0.5)
        assert threading.active_count() == base  # the same four workers, no more
        workers = [t for t in threading.enumerate() if t.name.startswith("channel-serve-")]
        assert len(workers) == 4
        for c in conns:
            c.close()
        time.sleep(2.5)  # the idle ones time out; the server answers again
        assert get(s, "/metadata/timestamp.json")[0] == 200
    finally:
        for c in conns:
            c.close()
        s.stop()


def test_ranges(server: ChannelServer) -> None:
    data = bytes(range(256)) * 4
    status, h, body = get(server, "/targets/blob")
    assert status == 200 and body == data and h["accept-ranges"] == "bytes"
    status, h, body = get(server, "/targets/blob", {"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:] and h["content-range"] == "bytes 1000-1023/1024"
    status, h, body = get(server, "/targets/blob", {"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    status, h, body = get(server, "/targets/blob", {"Range": "bytes=-4"})
    assert status == 206 and body == data[-4:]
    status, h, _ = get(server, "/targets/blob", {"Range": "bytes=1024-"})
    assert status == 416 and h["content-range"] == "bytes */1024"
    status, h, body = get(server, "/targets/blob", method="HEAD")
    assert status == 200 and h["content-length"] == "1024" and body == b""


def test_client_imports_only_what_the_host_image_has() -> None:
    """The host runs Debian python3 with requests, yaml, cryptography, tuf, securesystemslib."""
    code = (
        "import sys\n"
        "for banned in ('zstandard', 'jinja2', 'imagebuild'):\n"
        "    sys.modules[banned] = None\n"
        "before = set(sys.modules)\n"
        "import channels.client\n"
        "tops = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "extra = tops - set(sys.stdlib_module_names) - {'channels', 'requests', 'urllib3',\n"
        "    'charset_normalizer', 'idna', 'certifi', 'tuf', 'securesystemslib',\n"
        "    'cryptography', 'yaml', '_cffi_backend', 'chardet', 'socks', 'brotli', 'zstd',\n"
        "    'simplejson', 'brotlicffi', '_openssl', 'cython_runtime',\n"
        # securesystemslib imports python-pkcs11 where it is installed (the workstation's
        # [hsm] extra, for HSM signing keys); the host image has none
        "    'pkcs11', 'asn1crypto'}\n"
        "extra = {m for m in extra if not m.startswith('_cython_')}  # compiled helpers\n"
        "print(sorted(extra))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
