"""``tidehost fleet serve``: a page that shows a rollout as it happens.

A thread reads the fleet every ``interval`` seconds (``source.snapshot``) and keeps the
hosts per version over time; the server answers ``/`` (``page.html``, package data, with the
tables already filled in: it reads without JavaScript, and refreshes itself then) and
``/fleet.json`` (what the page's own script polls).  No CDN, no framework: one file.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from channels.errors import ChannelError
from channels.fleet import shown

log = logging.getLogger(__name__)
HISTORY = 1440  # points of the version chart kept (an hour at 2.5 s)


class FleetView:
    """The latest snapshot, the error of the last read, and hosts per version over time."""

    def __init__(self, read: Callable[[], dict[str, Any]], interval: float = 2.0) -> None:
        self.read = read
        self.interval = interval
        self.lock = threading.Lock()
        self.snapshot: dict[str, Any] | None = None
        self.error = ""
        self.history: list[tuple[float, dict[str, int]]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fleet-read", daemon=True)

    def refresh(self) -> None:
        try:
            snap = self.read()
        except ChannelError as e:  # etcd unreachable, refusing: shown on the page
            with self.lock:
                self.error = str(e)
            return
        with self.lock:
            self.snapshot, self.error = snap, ""
            self.history.append((snap["read_at"], dict(snap["versions"])))
            del self.history[:-HISTORY]

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self.refresh()
            self.stopped.wait(self.interval)

    def start(self) -> FleetView:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"snapshot": self.snapshot, "error": self.error,
                    "history": [[t, v] for t, v in self.history], "now": time.time()}


# --- the page, filled in on the server --------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(shown(str(text)), quote=True)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S") if t else "?"


def host_rows(snap: dict[str, Any] | None) -> str:
    if not snap or not snap["hosts"]:
        return '<tr><td colspan="9" class="none">no host reports yet</td></tr>'
    out = []
    for h in snap["hosts"]:
        cls = "bad" if h["bad_versions"] or h["state"] in ("rolled-back", "error") else ""
        out.append(
            f'<tr data-host="{_e(h["id"])}" class="{cls}"><td>{_e(h["id"])}</td>'
            f'<td>{_e(h["version"])}</td><td>{_e(h["slot"].upper())}</td>'
            f'<td class="state">{_e(h["state"])}</td><td>{_e(h["target_version"])}</td>'
            f'<td>{_e(h["group"])}</td><td>{"held" if h["lock_held"] else ""}</td>'
            f'<td>{_ts(h["time"])}</td><td>{_e(h["halted"] or h["last_error"])}</td></tr>')
    return "\n".join(out)


def group_rows(snap: dict[str, Any] | None) -> str:
    if not snap:
        return ""
    out = []
    for g, info in snap["groups"].items():
        halted = "; ".join(f"{_e(v)} (rolled back on {', '.join(map(_e, who))})"
                           for v, who in info["halted"].items())
        out.append(f'<tr><td>{_e(g)}</td><td>{info["hosts"]}</td>'
                   f'<td>{len(info["lock_holders"])}/{info["lock_max"] or "–"}</td>'
                   f'<td>{", ".join(map(_e, info["lock_holders"])) or "nobody"}</td>'
                   f'<td class="halted">{halted}</td></tr>')
    return "\n".join(out)


def list_items(items: list[str]) -> str:
    return "\n".join(f"<li>{_e(i)}</li>" for i in items)


def page(state: dict[str, Any]) -> str:
    snap = state["snapshot"]
    text = resources.files("imagebuild.fleet").joinpath("page.html").read_text()
    rolled = [f"{r['id']} ({', '.join(r['versions'])}): {r['why']}"
              for r in (snap["rolled_back"] if snap else [])]
    fill = {
        "HOSTS": host_rows(snap), "GROUPS": group_rows(snap), "ROLLED": list_items(rolled),
        "PROBLEMS": list_items(snap["problems"] if snap else []),
        "ERROR": _e(state["error"]),
        "STATE": json.dumps(state).replace("<", "\\u003c"),  # inert inside <script>
    }
    for k, v in fill.items():
        text = text.replace(f"<!--{k}-->", v)
    return text


def handler(view: FleetView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            log.debug("fleet serve: " + fmt, *args)

        def send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self.send(200, page(view.state()).encode(), "text/html; charset=utf-8")
            elif path == "/fleet.json":
                self.send(200, json.dumps(view.state()).encode(), "application/json")
            else:
                self.send(404, b"not found\n", "text/plain")

    return Handler


def server(view: FleetView, host: str = "127.0.0.1", port: int = 8090) -> ThreadingHTTPServer:
    """The HTTP server of ``view`` (call ``serve_forever``); port 0 picks a free one."""
    httpd = ThreadingHTTPServer((host, port), handler(view))
    httpd.daemon_threads = True
    return httpd
