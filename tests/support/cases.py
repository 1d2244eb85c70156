"""ONE table of union cases: lowers + upper + operations -> expected tree and errno.

Declared as data; the fixtures are built in code (no committed ``.wh.*`` files or device nodes).
``tests/test_union_core.py`` runs the table against the core (no FUSE) and ``tests/test_mount_cases.py``,
unchanged, through a real mount.

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
"""

from __future__ import annotations

import errno as E
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

Spec = dict[str, str]


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


BASE = {"d": "d", "d/f": "f:base", "d/sub": "d", "d/sub/x": "f:x", "top": "f:top", "link": "l:top"}

CASES: list[Case] = [
    Case("lookup merges and hides by whiteout",
         ({"a": "f:1", "d": "d", "d/x": "f:x", "d/y": "f:y"}, {"b": "f:2", "d": "d", "d/y": "w", "d/z": "f:z"}),
         (), {"a": "f:1", "b": "f:2", "d": "d", "d/x": "f:x", "d/z": "f:z"}),
    Case("upper hides lower and a file stops the search",
         ({"d": "d", "d/x": "f:x"},), (), {"d": "f:file"}, upper={"d": "f:file"}),
    Case("opaque directory stops merging",
         ({"d": "d", "d/x": "f:x"}, {"d": "o", "d/y": "f:y"}), (), {"d": "d", "d/y": "f:y"}),
    Case("OCI whiteout and opaque marker formats",
         ({"a": "f:1", "b": "f:2", "d": "d", "d/x": "f:x"}, {".wh.a": "f:", "d": "d", "d/.wh..wh..opq": "f:",
                                                             "d/n": "f:n"}),
         (), {"b": "f:2", "d": "d", "d/n": "f:n"}),
    Case("xattr whiteout", ({"a": "f:1", "b": "f:2"}, {"a": "wx"}), (), {"b": "f:2"}),
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


# ---------------------------------------------------------------------- fixtures
def build_layer(root: str, spec: Spec) -> None:
    """Create the layer directory ``root`` from ``spec`` (whiteouts and markers made here, never committed)."""
    os.makedirs(root, exist_ok=True)
    for rel in sorted(spec, key=lambda p: p.count("/")):
        what, p = spec[rel], os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        kind, _, arg = what.partition(":")
        if kind == "f":
            with open(p, "w") as f:
                f.write(arg)
        elif kind in ("d", "o"):
            os.makedirs(p, exist_ok=True)
            if kind == "o":
                os.setxattr(p, _ns() + "overlay.opaque", b"y")
        elif kind == "l":
            os.symlink(arg, p)
        elif kind == "w":
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif kind == "wx":
            open(p, "w").close()
            os.setxattr(p, _ns() + "overlay.whiteout", b"y")
        elif kind == "p":
            os.mkfifo(p)
        elif kind == "h":
            os.link(os.path.join(root, arg), p)
        else:
            raise ValueError(what)


def _ns() -> str:
    return "trusted." if os.geteuid() == 0 else "user."


def tree_of(root: str) -> Spec:
    """The visible tree under a real directory (a mount) in the expectation format."""
    out: Spec = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            out[rel] = describe(os.lstat(p), lambda: os.readlink(p), lambda: open(p).read())
    return out


def describe(st: os.stat_result, readlink: Callable[[], str], read: Callable[[], str]) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "d"
    if stat.S_ISLNK(st.st_mode):
        return "l:" + readlink()
    if stat.S_ISFIFO(st.st_mode):
        return "p"
    if stat.S_ISREG(st.st_mode):
        return "f:" + read()
    return "?"


def snapshot(root: str) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Mode, size and content of everything under a real directory (to prove lowers are untouched)."""
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, data)
    return out


def build_case(root: Any, case: Case) -> tuple[list[str], str, str]:
    """Make the case's lowers (``root/l0``, ``l1``, ... base first), upper and empty work directory."""
    lowers = []
    for i, spec in enumerate(case.lowers):
        d = os.path.join(root, f"l{i}")
        build_layer(d, spec)
        lowers.append(d)
    upper, work = os.path.join(root, "upper"), os.path.join(root, "work")
    build_layer(upper, case.upper)
    os.makedirs(work)
    return lowers, upper, work


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


def apply_os(mnt: str, op: tuple[Any, ...]) -> None:
    """Run one table operation with plain system calls on a mounted tree."""
    import ctypes

    verb, *a = op
    p = lambda rel: os.path.join(mnt, rel)  # noqa: E731
    if verb in ("write", "append"):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if verb == "write" else os.O_APPEND)
        fd = os.open(p(a[0]), flags, 0o644)
        try:
            os.write(fd, a[1].encode())
        finally:
            os.close(fd)
    elif verb == "unlink":
        os.unlink(p(a[0]))
    elif verb == "rmdir":
        os.rmdir(p(a[0]))
    elif verb == "mkdir":
        os.mkdir(p(a[0]), 0o755)
    elif verb == "rename":
        flags = a[2] if len(a) > 2 else 0
        if flags:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.renameat2(-100, os.fsencode(p(a[0])), -100, os.fsencode(p(a[1])), flags) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        else:
            os.rename(p(a[0]), p(a[1]))
    elif verb == "symlink":
        os.symlink(a[0], p(a[1]))
    elif verb == "link":
        os.link(p(a[0]), p(a[1]))
    elif verb == "chmod":
        os.chmod(p(a[0]), a[1])
    elif verb == "truncate":
        os.truncate(p(a[0]), a[1])
    elif verb == "mkfifo":
        os.mkfifo(p(a[0]))
    elif verb == "setxattr":
        os.setxattr(p(a[0]), a[1], a[2])
    elif verb == "rmtree":
        import shutil

        shutil.rmtree(p(a[0]))
    else:
        raise ValueError(verb)
