"""``channel serve``: Range semantics, only the published tree; the client's import budget."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    assert get(server, "/metadata/timestamp.json")[0] == 200
    for path in ("/keys/root.pem", "/../keys/root.pem", "/%2e%2e/keys/root.pem",
                 "/../tidehost-channels.json", "/metadata/", "/nope"):
        assert get(server, path)[0] == 404, path


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
    assert get(server, "/targets/blob", {"Range": "lines=1-2"})[0] == 416
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
