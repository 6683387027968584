"""Production code imports one way: no import circle among the bot's, the cogs', the core's and
the request package's modules, and no module imports a cog. discord.py loads and reloads each
cog (extension) by name; a cog another module imported is not reloaded with it, so the two
would run different versions of it. Read statically from the source (ast), nothing imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "cogs", "ponybot_core", "ponybot_request")
# Everything that runs in production, for the "nobody imports a cog" rule.
PRODUCTION = (*PACKAGES, "ponybot_cli", "inference")


def modules(packages: tuple[str, ...]) -> dict[str, Path]:
    """Each module's dotted name and file (a package by its `__init__.py`)."""
    found = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt], *,
                  type_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported (inside `if`/`try` too, not inside a
    function or class); `if TYPE_CHECKING:` blocks only with `type_only`."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if _type_checking(node) and not type_only:
                continue
            yield from _module_level(node.body, type_only=type_only)
            yield from _module_level(node.orelse, type_only=type_only)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse,
                          node.finalbody):
                yield from _module_level(block, type_only=type_only)


def imported_names(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names `node` may import: `from a import b` is module `a.b` or a name in `a`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: counted from the module's own package
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(packages: tuple[str, ...], *, type_only: bool) -> dict[str, set[str]]:
    """Each module's module-level imports of other modules in `packages`."""
    known = modules(packages)
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = set()
        for node in _module_level(ast.parse(path.read_text()).body, type_only=type_only):
            for name in imported_names(module, path, node):
                while name and name not in known:  # `a.b.name` → module `a.b`
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of `graph`, [] when there is none."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return []


def test_production_code_has_no_import_circle():
    assert circle(import_graph(PACKAGES, type_only=False)) == []


def test_the_bot_and_its_cogs_form_no_circle_even_through_type_only_imports():
    """A circle through `if TYPE_CHECKING:` runs nowhere, but it binds the modules on it
    together as tightly as a real one: one cannot be read, moved or type-checked alone."""
    assert circle(import_graph(("bot", "cogs"), type_only=True)) == []


def test_no_module_imports_a_cog():
    importers = []
    for module, path in modules(PRODUCTION).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom) and any(
                    name == "cogs" or name.startswith("cogs.")
                    for name in imported_names(module, path, node)):
                importers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert importers == []


@pytest.mark.parametrize(("source", "expected"), [
    ("import a.b\n", {"a.b"}),
    ("from a import b\n", {"a", "a.b"}),
    ("from a.b import name\n", {"a.b"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.b\n", set()),
    ("try:\n    import a\nexcept ImportError:\n    import a.b\n", {"a", "a.b"}),
    ("def f():\n    import a.b\n", set()),
])
def test_the_graph_reads_module_level_imports_and_leaves_type_only_ones_out(
        tmp_path, monkeypatch, source, expected):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "__init__.py").write_text("")
    (tmp_path / "a" / "b.py").write_text("")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "__init__.py").write_text("")
    (tmp_path / "m" / "x.py").write_text(source)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)

    assert import_graph(("a", "m"), type_only=False)["m.x"] == expected


def test_a_circle_is_found():
    assert sorted(set(circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}))) == ["a", "b", "c"]
