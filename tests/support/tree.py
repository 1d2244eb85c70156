"""The one tree snapshot: :func:`tree_snapshot` records a whole tree, :func:`assert_same_tree` compares two.

A tree is read from a real directory (a mount, a layer, an unpacked rootfs, a store) or from anything else that
answers the calls of :class:`Source` (the union core's view, tests/support/impls.py). Options choose what is
recorded; :data:`ROOTFS` and :data:`LAYER` are the two sets most tests use.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

#: the overlay's private xattr namespaces, hidden through a mount and never copied up
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

#: how an unpacked root filesystem is compared (umoci's rootfs, a flattened image, an export, a mount of an
#: image): type, mode, owner, size, content, link target, device numbers, xattrs, hardlink groups and the
#: mtimes of non-directories; not the mtimes of directories (unpacking and whiteouts set them), not link
#: counts (a mount counts a lower's names hidden above), not the root directory itself, no d_ino check
ROOTFS: dict[str, Any] = {"times": True, "dir_times": False, "nlinks": False, "root_entry": False,
                          "check_dino": False}
#: everything about a layer directory (times, ctimes, inode numbers, private xattr values): what using it as a
#: lower layer must not change
LAYER: dict[str, Any] = {"times": True, "ctimes": True, "inodes": True, "private_values": True}


def _ftype(mode: int) -> str:
    """A short name for the file type in ``mode``."""
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "sock")):
        if test(mode):
            return name
    return "?"


@dataclasses.dataclass(frozen=True)
class Node:
    """What a snapshot records for one path (times only when asked for)."""

    type: str
    mode: int  #: permission bits incl. setuid/setgid/sticky, without the type
    uid: int
    gid: int
    size: int | None  #: None for directories (their size is the backing filesystem's business)
    nlink: int | None  #: None for directories (overlayfs reports 1 for merged ones)
    sha256: str | None  #: regular files only
    target: str | None  #: symlinks only
    rdev: tuple[int, int] | None  #: device nodes only
    xattrs: tuple[tuple[str, bytes], ...]  #: without the overlay's private ones
    private_xattrs: tuple[str, ...]  #: names of the overlay's private xattrs that were visible
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    ino: int | None = None  #: only with ``inodes=True``; hardlink groups are always recorded
    content: bytes | None = None  #: regular files, only with ``contents=True``

    def describe(self) -> str:
        """One readable line."""
        parts = [self.type, oct(self.mode), f"{self.uid}:{self.gid}"]
        if self.size is not None:
            parts.append(f"size={self.size}")
        if self.nlink is not None:
            parts.append(f"nlink={self.nlink}")
        if self.sha256:
            parts.append(f"sha={self.sha256[:10]}")
        if self.target is not None:
            parts.append(f"-> {self.target!r}")
        if self.rdev is not None:
            parts.append(f"rdev={self.rdev}")
        if self.xattrs:
            parts.append(f"xattrs={dict(self.xattrs)}")
        if self.private_xattrs:
            parts.append(f"PRIVATE={list(self.private_xattrs)}")
        if self.mtime_ns is not None:
            parts.append(f"mtime={self.mtime_ns}")
        if self.ctime_ns is not None:
            parts.append(f"ctime={self.ctime_ns}")
        if self.ino is not None:
            parts.append(f"ino={self.ino}")
        if self.content is not None:
            parts.append(f"content={self.content[:60]!r}" + ("..." if len(self.content) > 60 else ""))
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A whole tree: every path (relative, ``.`` for the root) and the hardlink groups."""

    nodes: Mapping[str, Node]
    hardlinks: tuple[tuple[str, ...], ...]  #: sorted groups of 2+ non-directory paths sharing an inode
    problems: tuple[str, ...] = ()  #: inconsistencies met while walking (e.g. d_ino != st_ino)

    def diff(self, other: "Snapshot", names: tuple[str, str] = ("a", "b"), limit: int = 40) -> list[str]:
        """Readable differences with ``other`` (empty when equal)."""
        out = []
        for p in sorted(set(self.nodes) | set(other.nodes)):
            a, b = self.nodes.get(p), other.nodes.get(p)
            if a == b:
                continue
            if a is None:
                out.append(f"{p}: only in {names[1]}: {b.describe()}")  # type: ignore[union-attr]
            elif b is None:
                out.append(f"{p}: only in {names[0]}: {a.describe()}")
            else:
                fields = [f.name for f in dataclasses.fields(Node) if getattr(a, f.name) != getattr(b, f.name)]
                out.append(f"{p}: differs in {', '.join(fields)}\n    {names[0]}: {a.describe()}\n"
                           f"    {names[1]}: {b.describe()}")
        if self.hardlinks != other.hardlinks:
            out.append(f"hardlink groups: {names[0]}: {list(self.hardlinks)}\n"
                       f"    {names[1]}: {list(other.hardlinks)}")
        if self.problems != other.problems:
            out.append(f"walk problems: {names[0]}: {list(self.problems)}\n    {names[1]}: {list(other.problems)}")
        if len(out) > limit:
            out = out[:limit] + [f"... and {len(out) - limit} more"]
        return out

    def without(self, *fields: str) -> "Snapshot":
        """This snapshot with the named :class:`Node` fields cleared (None) everywhere, e.g. ``"mtime_ns"``."""
        clear = dict.fromkeys(fields)
        return dataclasses.replace(self, nodes={p: dataclasses.replace(n, **clear) for p, n in self.nodes.items()})


class Source(Protocol):
    """A tree :func:`tree_snapshot` can read: paths are relative to its root (``.`` is the root itself).

    The results are those of the system calls of the same names on a real directory, not following symlinks.
    """

    def lstat(self, rel: str) -> os.stat_result: ...

    def scandir(self, rel: str) -> Iterator[tuple[str, int]]:
        """The names in the directory ``rel`` with the inode number readdir gives for each (``d_ino``)."""
        ...

    def readlink(self, rel: str) -> str: ...

    def read(self, rel: str) -> Iterator[bytes]:
        """The content of the regular file ``rel``, in chunks."""
        ...

    def listxattr(self, rel: str) -> list[str]: ...

    def getxattr(self, rel: str, name: str) -> bytes: ...


class DirSource:
    """A real directory (or a mount) as a :class:`Source`."""

    def __init__(self, root: Path | str) -> None:
        self.root = os.fspath(root)

    def path(self, rel: str) -> str:
        return self.root if rel == "." else os.path.join(self.root, rel)

    def lstat(self, rel: str) -> os.stat_result:
        return os.lstat(self.path(rel))

    def scandir(self, rel: str) -> Iterator[tuple[str, int]]:
        with os.scandir(self.path(rel)) as it:
            return iter([(e.name, e.inode()) for e in it])

    def readlink(self, rel: str) -> str:
        return os.readlink(self.path(rel))

    def read(self, rel: str) -> Iterator[bytes]:
        fd = os.open(self.path(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a fifo must not block
        try:
            while chunk := os.read(fd, 1 << 20):
                yield chunk
        finally:
            os.close(fd)

    def listxattr(self, rel: str) -> list[str]:
        return os.listxattr(self.path(rel), follow_symlinks=False)

    def getxattr(self, rel: str, name: str) -> bytes:
        return os.getxattr(self.path(rel), name, follow_symlinks=False)


def _xattrs(src: Source, rel: str) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
    """(visible non-private xattrs with values, names of visible private ones) of ``rel``."""
    try:
        names = src.listxattr(rel)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return (), ()
        raise
    public, private = [], []
    for n in sorted(names):
        if n.startswith(PRIVATE_XATTR_PREFIXES):
            private.append(n)
            continue
        try:
            public.append((n, src.getxattr(rel, n)))
        except OSError as e:
            public.append((n, f"<getxattr: {errno.errorcode.get(e.errno or 0, e.errno)}>".encode()))
    return tuple(public), tuple(private)


def tree_snapshot(root: Path | str | Source, *, times: bool = False, dir_times: bool = True, ctimes: bool = False,
                  inodes: bool = False, nlinks: bool = True, contents: bool = False, private_values: bool = False,
                  check_dino: bool = True, root_entry: bool = True, missing_ok: bool = False) -> Snapshot:
    """Record everything comparable about the tree under ``root`` (a directory, or any :class:`Source`).

    For every path: type, mode, owner, size and link count (not for directories), content hash, symlink
    target, device numbers, xattrs (the overlay's private ``trusted.overlay.*``/``user.overlay.*`` are listed
    by name only, in ``private_xattrs``, unless ``private_values``), and the hardlink groups (non-directory
    paths of the tree that share an inode). ``times`` adds mtimes (of non-directories only without
    ``dir_times``), ``ctimes`` ctimes, ``inodes`` the inode numbers, ``contents`` the bytes of regular files;
    ``nlinks=False`` leaves link counts out, ``root_entry=False`` the root directory itself. With
    ``check_dino``, readdir's d_ino must equal lstat's st_ino for every entry, and the tree must show one
    st_dev (both are recorded in ``problems`` when they do not hold). With ``missing_ok``, a name readdir
    lists but lstat cannot find is recorded in ``problems`` too (else its error is raised).
    """
    src: Source = DirSource(root) if isinstance(root, (str, os.PathLike)) else root
    nodes: dict[str, Node] = {}
    by_ino: dict[tuple[int, int], list[str]] = {}
    problems: list[str] = []
    devices: set[int] = set()

    def record(rel: str) -> os.stat_result:
        st = src.lstat(rel)
        devices.add(st.st_dev)
        kind = _ftype(st.st_mode)
        public, private = _xattrs(src, rel)
        if private_values:
            public = tuple(sorted(public + tuple((n, src.getxattr(rel, n)) for n in private)))
            private = ()
        sha256 = data = None
        if kind == "file":
            h, chunks = hashlib.sha256(), []
            for chunk in src.read(rel):
                h.update(chunk)
                if contents:
                    chunks.append(chunk)
            sha256, data = h.hexdigest(), (b"".join(chunks) if contents else None)
        if rel != "." or root_entry:
            nodes[rel] = Node(
                type=kind,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=None if kind == "dir" else st.st_size,
                nlink=None if kind == "dir" or not nlinks else st.st_nlink,
                sha256=sha256,
                target=src.readlink(rel) if kind == "symlink" else None,
                rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
                xattrs=public,
                private_xattrs=private,
                mtime_ns=st.st_mtime_ns if times and (dir_times or kind != "dir") else None,
                ctime_ns=st.st_ctime_ns if ctimes else None,
                ino=st.st_ino if inodes else None,
                content=data,
            )
        if kind != "dir":
            by_ino.setdefault((st.st_dev, st.st_ino), []).append(rel)
        return st

    def walk(rel: str) -> None:
        for name, d_ino in sorted(src.scandir(rel)):
            crel = name if rel == "." else f"{rel}/{name}"
            try:
                st = record(crel)
            except FileNotFoundError as e:
                if not missing_ok:
                    raise
                problems.append(f"{crel}: listed by readdir, but lstat fails: {errno.errorcode[e.errno]}")
                continue
            if check_dino and d_ino != st.st_ino:
                problems.append(f"{crel}: readdir d_ino {d_ino} != st_ino {st.st_ino}")
            if stat.S_ISDIR(st.st_mode):
                walk(crel)

    record(".")
    walk(".")
    if check_dino and len(devices) > 1:
        problems.append(f"{len(devices)} distinct st_dev values in one tree")
    groups = tuple(sorted(tuple(sorted(g)) for g in by_ino.values() if len(g) > 1))
    return Snapshot(nodes=nodes, hardlinks=groups, problems=tuple(problems))


def assert_same_tree(a: Snapshot, b: Snapshot, names: tuple[str, str] = ("expected", "actual"),
                     context: str = "") -> None:
    """Fail with a readable diff unless the snapshots are equal."""
    d = a.diff(b, names)
    if d:
        raise AssertionError((context + "\n" if context else "") + "trees differ:\n  " + "\n  ".join(d))
