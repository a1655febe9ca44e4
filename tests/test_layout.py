"""The toolkit's layout in wings (STYLE.md, "The workstation toolkit in wings"), checked on
its source: each wing imports only the wings before it, nothing imports ``updater``, no
import circle, every subprocess goes through ``core/run.py``, each wing says what it is for,
and no module is over ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imagebuild"
WINGS = ("core", "image", "cloudconfig", "vagrant", "fleet", "lab", "commands")
TOP = {"__init__.py", "__main__.py", "cli.py"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports (function-local imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:  # `from pkg import module` imports the module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return found


def rank(module: str) -> int:
    """The wing's place in the order; the top (cli, __main__) comes after every wing."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in WINGS:
        return WINGS.index(parts[1])
    return len(WINGS)


def test_nothing_loose_at_the_top_but_cli_and_main() -> None:
    loose = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"} - TOP - set(WINGS)
    assert not loose


def test_each_wing_imports_only_the_wings_before_it_and_never_updater() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        for target in imports(path, known):
            if target.split(".")[0] == "updater":
                wrong.append(f"{name} imports {target}")
            elif target.startswith("imagebuild.") and rank(target) > rank(name):
                wrong.append(f"{name} imports {target}, a later wing")
    assert not wrong


def test_no_import_circle() -> None:
    known = modules()
    graph = {n: {t for t in imports(p, known) if t in known and t != n} for n, p in known.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles


def test_every_subprocess_goes_through_core_run() -> None:
    known = modules()
    callers = [n for n, p in known.items() if "subprocess" in imports(p, known)]
    assert callers == ["imagebuild.core.run"]


def test_each_wing_opens_with_what_it_is_for() -> None:
    for wing in WINGS:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and doc.startswith(f"{wing}: "), wing


def test_no_module_over_400_lines() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: lines for n, lines in long.items() if lines > 400}
