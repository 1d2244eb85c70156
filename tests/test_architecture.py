"""The import rule of docs/design.md, checked on the source: every ``unionfs`` import of every module (also
the ones inside functions) must go to its own package, to a lower layer, or to the base modules; the pure
core never reaches a mount, the network, the store or the CLI; nothing imports the CLI; no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unionfs"

#: the base modules any module may import (they import only each other)
BASE = {"errors", "fsops", "mountinfo", "rootpath"}

#: what each area may import besides itself and BASE (docs/design.md, "Import rule")
ALLOWED: dict[str, set[str]] = {
    "oci": set(),
    "layer": {"oci"},
    "union": {"oci", "layer"},
    "store": {"oci", "layer", "union"},
    "mount": {"oci", "layer", "union", "lazy"},
    "run": {"oci", "layer", "union"},
    "image": {"oci", "layer", "union", "store"},
    "registry": {"oci", "layer", "union", "store"},
    "lazy": {"oci", "layer", "union", "store", "registry"},
    "build": {"oci", "layer", "union", "store", "mount", "run", "image", "registry", "lazy"},
    "api": {"oci", "layer", "union", "store", "mount", "run", "image", "registry", "build", "lazy"},
    "pytest_plugin": {"oci", "layer", "union", "store", "mount", "run", "image", "registry", "build", "api", "lazy"},
    "cli": {"oci", "layer", "union", "store", "mount", "run", "image", "registry", "build", "api", "lazy"},
    "__main__": {"cli"},
    "__init__": {"api"},  # the package exposes ``unionfs.mounted`` lazily
}

#: modules of an area that may import a neighbour the rest of the area may not
ONLY: dict[str, str] = {"store": "registry.transfer"}  # of the registry, only transfer knows the store
#: modules of an area that may import another area only for one module of it: the daemon (``mount.server``)
#: loads the lazy layers' filler (``lazy.fill``), and nothing else of the lazy code
ONLY_TARGET: dict[str, tuple[str, str]] = {"mount": ("mount.server", "lazy.fill")}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(rel.parts)


def area(module: str) -> str:
    """``oci`` for ``oci.digest``, ``errors`` for a base module, ``api`` for ``api``."""
    return module.split(".")[0]


def imports_of(path: Path) -> set[str]:
    """Every unionfs module ``path`` imports (``from unionfs.x import y`` counts ``x.y`` when that is a
    module, else ``x``), at any depth of the module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (absolute imports only, so this rule can read them)"
            if not node.module:
                continue
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "unionfs" or not name.startswith("unionfs."):
                continue
            mod = name[len("unionfs."):]
            if (PACKAGE / (mod.replace(".", "/") + ".py")).exists() or (PACKAGE / mod.replace(".", "/")).is_dir():
                out.add(mod)
    return out


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: {i for i in imports_of(p) if i in MODULES} for m, p in MODULES.items()}


def test_every_area_is_known() -> None:
    unknown = {area(m) for m in MODULES} - set(ALLOWED) - BASE
    assert not unknown, f"areas without an import rule: {unknown} (add them to ALLOWED and docs/design.md)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_rule(module: str) -> None:
    mine = area(module)
    bad = []
    for target in sorted(GRAPH[module]):
        theirs = area(target)
        if theirs == mine:
            continue
        if theirs in BASE:
            continue
        if mine in BASE:
            bad.append(target)  # the base imports only the base
        elif theirs not in ALLOWED[mine]:
            bad.append(target)
        elif theirs in ONLY and mine == area(ONLY[theirs]) and module != ONLY[theirs]:
            bad.append(target)
        elif mine in ONLY_TARGET and area(ONLY_TARGET[mine][1]) == theirs and \
                (module, target) != ONLY_TARGET[mine]:
            bad.append(target)
    assert not bad, f"unionfs.{module} imports {bad}, which the import rule of docs/design.md forbids"


def test_nothing_imports_the_cli() -> None:
    users = sorted(m for m, deps in GRAPH.items() if area(m) not in ("cli", "__main__") and any(
        area(d) == "cli" for d in deps))
    assert not users


def test_no_import_cycles() -> None:
    """No cycle between modules, lazy imports included (a cycle means two modules that are really one)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if d.endswith("__init__") or d == area(d) and (PACKAGE / d).is_dir():
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_rule_reads_imports() -> None:
    """The checker itself sees lazy imports and ``from package import module``."""
    assert "union.view" in GRAPH["run.sandbox"]  # imported inside a function
    assert "layer.whiteout" in GRAPH["union.view"]


def test_the_daemon_never_reaches_the_store() -> None:
    """The mount daemon loads the lazy layers' filler; nothing it imports, at any depth, is the store's (the
    daemon never reads the store: docs/design.md) or the CLI's."""
    seen: set[str] = set()
    todo = ["mount.server"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(d for d in GRAPH[m] if not d.endswith("__init__"))
    assert "lazy.fill" in seen
    assert not sorted(m for m in seen if area(m) in ("store", "cli", "image", "build"))
