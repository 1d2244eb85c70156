"""ONE table of union cases: lowers + upper + operations -> expected tree and errno.

Declared as data; the layers are built in code by ``support.layers`` (no committed ``.wh.*`` files or device
nodes). ``tests/test_union_suite.py`` runs the whole table against every implementation of
``support/impls.py``: the core, the daemon (default and ``-o passthrough=off``) and the kernel overlayfs.
Where the kernel legitimately shows something else, the case says so in ``kernel`` (what it shows, and why).

Layer specs map a relative path to what is there:
``"f:TEXT"`` a file, ``"d"`` a directory, ``"l:TARGET"`` a symlink, ``"w"`` a char 0/0 whiteout,
``"wx"`` an xattr whiteout, ``"o"`` an opaque directory (xattr), ``"p"`` a fifo, ``"h:OTHER"`` a hardlink to OTHER
(same layer). A name written ``.wh.X`` is built as an OCI whiteout file; ``.wh..wh..opq`` as the OCI opaque marker.
Lowers are listed **base first**.

Operations (all relative paths): ``("write", p, text)`` open O_WRONLY|O_CREAT|O_TRUNC and write,
``("append", p, text)``, ``("unlink", p)``, ``("rmdir", p)``, ``("mkdir", p)``, ``("rename", a, b)``,
``("rename", a, b, flags)`` (1 NOREPLACE, 2 EXCHANGE), ``("symlink", target, p)``, ``("link", a, b)``,
``("chmod", p, mode)``, ``("truncate", p, n)``, ``("mkfifo", p)``, ``("setxattr", p, name, value)``,
``("rmtree", p)``. Every operation must succeed except the last one when ``errno`` is set.

The expected tree maps every visible path to ``"f:TEXT"``, ``"d"``, ``"l:TARGET"`` or ``"p"``;
``same_ino`` lists groups of paths that must share one inode number (hardlinks), ``nlink`` expected link counts.
Every implementation must also show a consistent tree (readdir's d_ino equals lstat's st_ino, one st_dev, every
listed name can be looked up) unless the case's ``kernel`` lists the kernel's inconsistencies.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from support.layers import Dir, Entry, Fifo, File, Hardlink, Symlink, Whiteout, XattrWhiteout, build_layer
from support.tree import Snapshot, tree_snapshot

Spec = dict[str, str]


@dataclass(frozen=True)
class KernelShows:
    """What the kernel overlayfs shows instead of the case's expected tree, and why that is no bug of either."""

    why: str
    expect: Spec
    problems: tuple[str, ...] = ()  #: the inconsistencies of its tree (see support.tree.tree_snapshot)


@dataclass(frozen=True)
class Case:
    name: str
    lowers: tuple[Spec, ...]
    ops: tuple[tuple[Any, ...], ...]
    expect: Spec | None = None
    upper: Spec = field(default_factory=dict)
    errno: int | None = None
    same_ino: tuple[tuple[str, ...], ...] = ()
    nlink: tuple[tuple[str, int], ...] = ()
    kernel: KernelShows | None = None  #: a documented difference of the kernel overlayfs

    def expected(self, impl: str) -> tuple[Spec | None, tuple[str, ...]]:
        """The tree (None: not checked) and the tree's problems implementation ``impl`` must show."""
        if impl == "kernel" and self.kernel is not None:
            return self.kernel.expect, self.kernel.problems
        return self.expect, ()


BASE = {"d": "d", "d/f": "f:base", "d/sub": "d", "d/sub/x": "f:x", "top": "f:top", "link": "l:top"}

CASES: list[Case] = [
    Case("lookup merges and hides by whiteout",
         ({"a": "f:1", "d": "d", "d/x": "f:x", "d/y": "f:y"}, {"b": "f:2", "d": "d", "d/y": "w", "d/z": "f:z"}),
         (), {"a": "f:1", "b": "f:2", "d": "d", "d/x": "f:x", "d/z": "f:z"}),
    Case("upper hides lower and a file stops the search",
         ({"d": "d", "d/x": "f:x"},), (), {"d": "f:file"}, upper={"d": "f:file"}),
    Case("opaque directory stops merging",
         ({"d": "d", "d/x": "f:x"}, {"d": "o", "d/y": "f:y"}), (), {"d": "d", "d/y": "f:y"}),
    Case("an opaque directory between two merges stops the merge below it",
         ({"d": "d", "d/x": "f:x", "d/s": "d", "d/s/v": "f:v"}, {"d": "o", "d/y": "f:y", "d/s": "d"},
          {"d": "d", "d/z": "f:z", "d/s": "d", "d/s/w": "f:w"}), (),
         {"d": "d", "d/y": "f:y", "d/z": "f:z", "d/s": "d", "d/s/w": "f:w"}),
    Case("OCI whiteout and opaque marker formats",
         ({"a": "f:1", "b": "f:2", "d": "d", "d/x": "f:x"}, {".wh.a": "f:", "d": "d", "d/.wh..wh..opq": "f:",
                                                             "d/n": "f:n"}),
         (), {"b": "f:2", "d": "d", "d/n": "f:n"},
         kernel=KernelShows("the kernel knows no OCI whiteout names: .wh.NAME and .wh..wh..opq are the image "
                            "format's (unionfs reads them in layers, docs/semantics.md); to it they are files",
                            {"a": "f:1", "b": "f:2", ".wh.a": "f:", "d": "d", "d/x": "f:x", "d/.wh..wh..opq": "f:",
                             "d/n": "f:n"})),
    Case("xattr whiteout", ({"a": "f:1", "b": "f:2"}, {"a": "wx"}), (), {"b": "f:2"},
         kernel=KernelShows("the kernel hides an xattr whiteout on lookup, but readdir lists it unless its "
                            "directory is marked trusted.overlay.opaque=x (overlayfs.rst); unionfs needs no mark",
                            {"b": "f:2"}, ("a: listed by readdir, but lstat fails: ENOENT",))),
    Case("a directory over a file in a lower does not merge",
         ({"d": "f:file"}, {"d": "d", "d/y": "f:y"}), (), {"d": "d", "d/y": "f:y"}),
    Case("write copies up", (BASE,), (("write", "d/f", "new"),), {**BASE, "d/f": "f:new"}),
    Case("append copies up with data", (BASE,), (("append", "top", "+"),),
         {**BASE, "top": "f:top+"}),
    Case("unlink of a lower file leaves it hidden", (BASE,), (("unlink", "top"),),
         {k: v for k, v in BASE.items() if k != "top"}),
    Case("unlink of a missing file", (BASE,), (("unlink", "nope"),), None, errno=E.ENOENT),
    Case("unlink of a directory", (BASE,), (("unlink", "d"),), None, errno=E.EISDIR),
    Case("rmdir of a non-empty lower dir", (BASE,), (("rmdir", "d"),), None, errno=E.ENOTEMPTY),
    Case("rmdir of a dir emptied by whiteouts", (BASE,),
         (("unlink", "d/f"), ("rmtree", "d/sub"), ("rmdir", "d")),
         {"top": "f:top", "link": "l:top"}),
    Case("mkdir over a whiteout is opaque", (BASE,), (("rmtree", "d"), ("mkdir", "d")),
         {"d": "d", "top": "f:top", "link": "l:top"}),
    Case("rm -rf d; mkdir d; mv d d2 does not bring d back", (BASE,),
         (("rmtree", "d"), ("mkdir", "d"), ("rename", "d", "d2")),
         {"d2": "d", "top": "f:top", "link": "l:top"}),
    Case("mkdir where a name exists", (BASE,), (("mkdir", "top"),), None, errno=E.EEXIST),
    Case("rename a lower file", (BASE,), (("rename", "top", "t2"),),
         {**{k: v for k, v in BASE.items() if k != "top"}, "t2": "f:top"}),
    Case("rename a whole lower directory", (BASE,), (("rename", "d", "e"),),
         {"e": "d", "e/f": "f:base", "e/sub": "d", "e/sub/x": "f:x", "top": "f:top", "link": "l:top"}),
    Case("rename a merged directory", (BASE, {"d": "d", "d/g": "f:g"}), (("write", "d/h", "h"), ("rename", "d", "e")),
         {"e": "d", "e/f": "f:base", "e/g": "f:g", "e/h": "f:h", "e/sub": "d", "e/sub/x": "f:x",
          "top": "f:top", "link": "l:top"}),
    Case("rename a directory over one emptied by whiteouts", (BASE, {"e": "d", "e/z": "f:z"}),
         (("unlink", "e/z"), ("rename", "d/sub", "e")),
         {"d": "d", "d/f": "f:base", "e": "d", "e/x": "f:x", "top": "f:top", "link": "l:top"}),
    Case("rename over a non-empty directory", (BASE, {"e": "d", "e/z": "f:z"}), (("rename", "d/sub", "e"),),
         None, errno=E.ENOTEMPTY),
    Case("rename a directory into itself", (BASE,), (("rename", "d", "d/sub/x2"),), None, errno=E.EINVAL),
    Case("RENAME_NOREPLACE refuses", (BASE,), (("rename", "top", "d/f", 1),), None, errno=E.EEXIST),
    Case("RENAME_EXCHANGE swaps a file and a directory", (BASE,), (("rename", "top", "d", 2),),
         {"top": "d", "top/f": "f:base", "top/sub": "d", "top/sub/x": "f:x", "d": "f:top", "link": "l:top"}),
    Case("symlink", ({},), (("symlink", "target", "s"),), {"s": "l:target"}),
    Case("hardlink of a lower file", ({"a": "f:1"},), (("link", "a", "b"),), {"a": "f:1", "b": "f:1"},
         same_ino=(("a", "b"),), nlink=(("a", 2), ("b", 2))),
    Case("lower hardlinks stay one inode after copy-up", ({"a": "f:1", "b": "h:a"},), (("append", "a", "2"),),
         {"a": "f:12", "b": "f:12"}, same_ino=(("a", "b"),), nlink=(("a", 2), ("b", 2))),
    Case("unlink one lower hardlink", ({"a": "f:1", "b": "h:a"},), (("append", "a", "2"), ("unlink", "b")),
         {"a": "f:12"}, nlink=(("a", 1),)),
    Case("unlink a lower hardlink before any copy-up", ({"h1": "f:1", "h2": "h:h1", "a": "d", "a/h3": "h:h1"},),
         (("unlink", "a/h3"), ("chmod", "h1", 0o600)), {"h1": "f:1", "h2": "f:1", "a": "d"},
         same_ino=(("h1", "h2"),), nlink=(("h1", 2), ("h2", 2))),
    Case("unlink two lower hardlinks (finding D1b)", ({"h1": "f:1", "h2": "h:h1", "a": "d", "a/h3": "h:h1"},),
         (("unlink", "h1"), ("unlink", "h2")), {"a": "d", "a/h3": "f:1"}, nlink=(("a/h3", 1),)),
    Case("chmod copies up", ({"a": "f:1"},), (("chmod", "a", 0o600),), {"a": "f:1"}),
    Case("truncate copies up", ({"a": "f:12345"},), (("truncate", "a", 2),), {"a": "f:12"}),
    Case("mkfifo", ({},), (("mkfifo", "p"),), {"p": "p"}),
    Case("setxattr copies up", ({"a": "f:1"},), (("setxattr", "a", "user.k", b"v"),), {"a": "f:1"}),
    Case("a too long name", ({},), (("write", "x" * 256, "1"),), None, errno=E.ENAMETOOLONG),
    Case("write under a file", ({"a": "f:1"},), (("write", "a/b", "1"),), None, errno=E.ENOTDIR),
]


# ---------------------------------------------------------------------- layers and trees
def layer_entries(spec: Spec) -> list[Entry]:
    """The ``support.layers`` entries of a layer spec (parents before children)."""
    out: list[Entry] = []
    for rel in sorted(spec, key=lambda p: p.count("/")):
        kind, _, arg = spec[rel].partition(":")
        if kind == "f":
            out.append(File(rel, arg.encode()))
        elif kind in ("d", "o"):
            out.append(Dir(rel, opaque=kind == "o"))
        elif kind == "l":
            out.append(Symlink(rel, arg))
        elif kind == "w":
            out.append(Whiteout(rel))
        elif kind == "wx":
            out.append(XattrWhiteout(rel))
        elif kind == "p":
            out.append(Fifo(rel))
        elif kind == "h":
            out.append(Hardlink(rel, arg))
        else:
            raise ValueError(f"{rel}: {spec[rel]!r}")
    return out


def build_case(root: Path | str, case: Case) -> tuple[list[Path], Path, Path]:
    """Make the case's lowers (``root/l0``, ``l1``, ... base first), upper and empty work directory."""
    root = Path(root)
    lowers = [build_layer(root / f"l{i}", layer_entries(spec)) for i, spec in enumerate(case.lowers)]
    upper, work = build_layer(root / "upper", layer_entries(case.upper)), root / "work"
    work.mkdir()
    return lowers, upper, work


def tree_of(root: Path | str) -> Spec:
    """The tree under a directory (a mount) in the expectation format, without the root."""
    return spec_of(tree_snapshot(root, contents=True))


def spec_of(snap: Snapshot) -> Spec:
    """A snapshot (taken with ``contents=True``) in the expectation format, without the root."""
    out: Spec = {}
    for path, node in snap.nodes.items():
        if path == ".":
            continue
        if node.type == "dir":
            out[path] = "d"
        elif node.type == "symlink":
            out[path] = f"l:{node.target}"
        elif node.type == "fifo":
            out[path] = "p"
        elif node.type == "file":
            out[path] = "f:" + (node.content or b"").decode()
        else:
            out[path] = "?"
    return out


def run_ops(case: Case, apply: Callable[[tuple[Any, ...]], None]) -> None:
    """Apply the case's operations in order; when the case names an errno, the last one must fail with it."""
    for i, op in enumerate(case.ops):
        if i < len(case.ops) - 1 or case.errno is None:
            apply(op)
            continue
        try:
            apply(op)
        except OSError as e:
            assert e.errno == case.errno, f"{op}: {e}"
        else:
            raise AssertionError(f"{op}: succeeded, expected {E.errorcode[case.errno]}")


def case_id(c: Case) -> str:
    return c.name.replace(" ", "-")
