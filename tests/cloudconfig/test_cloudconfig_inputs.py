"""Values from the cluster file reach scripts and units only quoted (issue 11, item 3).

Every value a ``.sh.j2`` template writes goes through the ``sh`` filter, every word of a
unit's ``ExecStart=`` through ``unit``; the parser refuses control characters before that.
A CRI socket with spaces and quotes reaches kubeadm intact when the rendered script runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2
import pytest
from cloudconfig_helpers import REPO, materialise, matrix_data
from jinja2 import nodes

from imagebuild.cloudconfig import Provider, parse_cluster_file, render_user_data
from imagebuild.cloudconfig.render import sh_word, unit_word
from imagebuild.core.errors import ConfigError
from imagebuild.core.run import run

PARTS = REPO / "cloud-config" / "parts"


def _values(source: str) -> list[nodes.Expr]:
    """Every expression a template writes (jinja2's own parser; literals included)."""
    ast = jinja2.Environment().parse(source)
    return [child for out in ast.find_all(nodes.Output) for child in out.nodes
            if not isinstance(child, nodes.TemplateData)]


def _is(expr: nodes.Expr, filt: str) -> bool:
    """``expr`` is ``... | filt`` or a string literal (``{{ "{{" }}``)."""
    return (isinstance(expr, nodes.Filter) and expr.name == filt) or \
        (isinstance(expr, nodes.Const) and isinstance(expr.value, str))


@pytest.mark.parametrize("part", sorted(p.name for p in PARTS.glob("*.sh.j2")))
def test_every_value_in_a_script_is_shell_quoted(part: str) -> None:
    values = _values((PARTS / part).read_text())
    assert values, f"{part}: no values at all?"
    for v in values:
        assert _is(v, "sh"), f"{part}:{v.lineno}: a value without | sh"


UNITS = sorted(p.name for p in PARTS.glob("*.j2") if p.name.endswith((".service.j2", ".conf.j2")))


@pytest.mark.parametrize("part", UNITS)
def test_every_execstart_word_is_unit_quoted(part: str) -> None:
    text = (PARTS / part).read_text()
    start = text.index("ExecStart={{")  # the command line, continuation lines included
    values = _values(text[start:].split("\n\n")[0])
    assert values
    for v in values:
        assert _is(v, "unit"), f"{part}: ExecStart: a word without | unit (line {v.lineno})"


def test_filters_quote_and_refuse() -> None:
    assert sh_word("node1") == "node1"
    assert sh_word("it's a $x") == "'it'\"'\"'s a $x'"
    assert unit_word("--name=node1") == "--name=node1"
    assert unit_word('/run/a b/"x"%i$HOME') == '"/run/a b/\\"x\\"%%i$$HOME"'
    for write in (sh_word, unit_word):
        with pytest.raises(ConfigError, match="control character"):
            write("a\nreboot")


ODD_SOCKET = "unix:///run/my runtime/it's \"odd\" $HOME `id`;.sock"

FAKE_ETCDCTL = """#!/bin/sh
case "$*" in
  *join-command*) echo "kubeadm join 10.77.0.21:6443 --token abc.def" ;;
esac
"""
FAKE_KUBEADM = """#!/usr/bin/python3
import json, os, sys
with open(os.environ["KUBEADM_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_odd_cri_socket_reaches_kubeadm_intact(tmp_path: Path, cluster_file) -> None:
    data = matrix_data(scheduler={"kind": "kubeadm", "kubeadm": {"cri_socket": ODD_SOCKET}})
    cluster = parse_cluster_file(cluster_file(data))
    assert cluster.scheduler.kubeadm.cri_socket == ODD_SOCKET
    root = tmp_path / "w"
    materialise(render_user_data(cluster, "w", Provider.NOCLOUD), root)
    script = root / "etc/tidehost/bin/tidehost-kubeadm"
    assert ODD_SOCKET not in script.read_text()  # only quoted
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("etcdctl", FAKE_ETCDCTL), ("kubeadm", FAKE_KUBEADM)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    log = tmp_path / "kubeadm.log"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "KUBEADM_LOG": str(log),
           "HOME": "/nonexistent"}
    run(["sh", script], env=env, capture=True, timeout=30)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [["join", "10.77.0.21:6443", "--token", "abc.def", "--cri-socket",
                      ODD_SOCKET]]
    assert not (tmp_path / "w" / "reboot").exists()
