"""Snapshots of whole trees (:func:`tree_snapshot`) and their comparison (:func:`assert_same_tree`)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Mapping

#: the overlay's private xattr namespaces, hidden through a mount and never copied up
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


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


def _xattrs(path: str) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
    """(visible non-private xattrs with values, names of visible private ones) of ``path``, not following."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
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
            public.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError as e:
            public.append((n, f"<getxattr: {errno.errorcode.get(e.errno, e.errno)}>".encode()))
    return tuple(public), tuple(private)


def _hash(path: str) -> str:
    """sha256 of a regular file's content (opened without following a symlink)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def tree_snapshot(root: Path | str, *, times: bool = False, ctimes: bool = False, inodes: bool = False,
                  private_values: bool = False, check_dino: bool = True) -> Snapshot:
    """Record everything comparable about the tree under ``root``.

    For every path: type, mode, owner, size and link count (not for directories), content hash, symlink
    target, device numbers, xattrs (the overlay's private ``trusted.overlay.*``/``user.overlay.*`` are listed
    by name only, in ``private_xattrs``, unless ``private_values``), and the hardlink groups (non-directory
    paths of the tree that share an inode). ``times`` adds mtimes, ``ctimes`` ctimes, ``inodes`` the inode
    numbers. With ``check_dino``, readdir's d_ino must equal lstat's st_ino for every entry; and the tree
    must show one st_dev (both are recorded in ``problems`` when they do not hold).
    """
    root = os.fspath(root)
    nodes: dict[str, Node] = {}
    by_ino: dict[tuple[int, int], list[str]] = {}
    problems: list[str] = []
    devices: set[int] = set()

    def record(rel: str, full: str) -> os.stat_result:
        st = os.lstat(full)
        devices.add(st.st_dev)
        kind = _ftype(st.st_mode)
        public, private = _xattrs(full)
        if private_values:
            public = tuple(sorted(public + tuple((n, os.getxattr(full, n, follow_symlinks=False))
                                                 for n in private)))
            private = ()
        nodes[rel] = Node(
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if kind == "dir" else st.st_size,
            nlink=None if kind == "dir" else st.st_nlink,
            sha256=_hash(full) if kind == "file" else None,
            target=os.readlink(full) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
            xattrs=public,
            private_xattrs=private,
            mtime_ns=st.st_mtime_ns if times else None,
            ctime_ns=st.st_ctime_ns if ctimes else None,
            ino=st.st_ino if inodes else None,
        )
        if kind != "dir":
            by_ino.setdefault((st.st_dev, st.st_ino), []).append(rel)
        return st

    def walk(rel: str, full: str) -> None:
        with os.scandir(full) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            crel = e.name if rel == "." else f"{rel}/{e.name}"
            st = record(crel, e.path)
            if check_dino and e.inode() != st.st_ino:
                problems.append(f"{crel}: readdir d_ino {e.inode()} != st_ino {st.st_ino}")
            if stat.S_ISDIR(st.st_mode):
                walk(crel, e.path)

    record(".", root)
    walk(".", root)
    if len(devices) > 1:
        problems.append(f"{len(devices)} distinct st_dev values in one tree")
    groups = tuple(sorted(tuple(sorted(g)) for g in by_ino.values() if len(g) > 1))
    return Snapshot(nodes=nodes, hardlinks=groups, problems=tuple(problems))


def assert_same_tree(a: Snapshot, b: Snapshot, names: tuple[str, str] = ("expected", "actual"),
                     context: str = "") -> None:
    """Fail with a readable diff unless the snapshots are equal."""
    d = a.diff(b, names)
    if d:
        raise AssertionError((context + "\n" if context else "") + "trees differ:\n  " + "\n  ".join(d))
