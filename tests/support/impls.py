"""The union implementations under test, from one factory (as containerd's snapshotter test suite runs one suite
against every snapshotter): :data:`IMPLS` maps a name to an :class:`Impl`.

* ``core``: the pure API, ``unionfs.union.overlay.Overlay`` and its view, no FUSE;
* ``daemon``: ``unionfs mount`` with its defaults (FUSE passthrough for final files);
* ``daemon-nopassthrough``: ``unionfs mount -o passthrough=off`` (every byte through the daemon);
* ``kernel``: ``mount -t overlay`` with ``redirect_dir=on,index=on``, the oracle.

Each one opens a union of lowers (base first), an upper and a work directory, applies the operations of the case
table (``support.cases``) and gives its tree as a ``support.tree`` snapshot, through the same calls. The mounts
go through ``support.mount`` and are always unmounted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import types
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import pytest

from support.mount import (
    DAEMONS,
    Mount,
    kernel_overlay,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
)
from support.tree import Snapshot, tree_snapshot
from unionfs.union.overlay import Overlay

Op = tuple[Any, ...]


class Opened:
    """An open union: apply table operations, take snapshots (inode numbers and file contents included)."""

    name: str

    def apply(self, op: Op) -> None:
        raise NotImplementedError

    def source(self) -> Any:
        """What :func:`support.tree.tree_snapshot` reads: a mountpoint or a ``support.tree.Source``."""
        raise NotImplementedError

    def snapshot(self) -> Snapshot:
        """The whole tree, with inode numbers and contents; a listed name that cannot be looked up is one of
        the snapshot's ``problems`` (like a d_ino that is not the st_ino, or two st_dev)."""
        return tree_snapshot(self.source(), inodes=True, contents=True, missing_ok=True)


class Impl:
    """One implementation: why it cannot run here (None: it can) and how to open a union with it."""

    name: str
    marks: tuple[str, ...] = ("root",)  #: the pytest markers of its tests

    def skip_reason(self) -> str | None:
        return skip_reason_root()

    def open(self, lowers: Sequence[Path], upper: Path, work: Path, where: Path) -> ContextManager[Opened]:
        """Open the union of ``lowers`` (base first) over ``upper``/``work``; a mount goes at ``where``."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- the core
class CoreSource:
    """The core's view as a ``support.tree.Source``: the attributes the daemon would answer for each node (its
    inode number and link count; a union has no device of its own, so st_dev is 0)."""

    def __init__(self, ov: Overlay) -> None:
        self.view = ov.view

    def _node(self, rel: str) -> Any:
        return self.view.lookup("/" if rel == "." else "/" + rel)

    def lstat(self, rel: str) -> Any:
        node = self._node(rel)
        st = node.st
        return types.SimpleNamespace(st_mode=st.st_mode, st_ino=node.ino, st_dev=0, st_nlink=self.view.nlink(node),
                                     st_uid=st.st_uid, st_gid=st.st_gid, st_size=st.st_size, st_rdev=st.st_rdev,
                                     st_mtime_ns=st.st_mtime_ns, st_ctime_ns=st.st_ctime_ns)

    def scandir(self, rel: str) -> Iterator[tuple[str, int]]:
        return iter([(c.path.rsplit("/", 1)[1], c.ino) for c in self.view.listdir(self._node(rel))])

    def readlink(self, rel: str) -> str:
        return self.view.readlink(self._node(rel))

    def read(self, rel: str) -> Iterator[bytes]:
        with os.fdopen(self._node(rel).open_data(os.O_RDONLY | os.O_CLOEXEC), "rb") as f:  # metacopy: the lower's data
            while chunk := f.read(1 << 20):
                yield chunk

    def listxattr(self, rel: str) -> list[str]:
        return self.view.listxattr(self._node(rel))

    def getxattr(self, rel: str, name: str) -> bytes:
        return self.view.getxattr(self._node(rel), name)


class OpenedCore(Opened):
    name = "core"

    def __init__(self, ov: Overlay) -> None:
        self.ov = ov

    def source(self) -> CoreSource:
        return CoreSource(self.ov)

    def apply(self, op: Op) -> None:
        """Run one table operation through the core's API."""
        ov = self.ov
        verb, *a = op
        p = lambda rel: "/" + rel  # noqa: E731
        if verb in ("write", "append"):
            path = p(a[0])
            node = ov.view.try_lookup(path)
            if node is None:
                fd = ov.create(path, 0o644, os.O_WRONLY)
            else:
                fd = ov.open(path, os.O_WRONLY | (os.O_TRUNC if verb == "write" else 0))
            try:
                off = os.fstat(fd).st_size if verb == "append" else 0
                os.pwrite(fd, a[1].encode(), off)
            finally:
                os.close(fd)
        elif verb == "unlink":
            ov.unlink(p(a[0]))
        elif verb == "rmdir":
            ov.rmdir(p(a[0]))
        elif verb == "mkdir":
            ov.mkdir(p(a[0]), 0o755)
        elif verb == "rename":
            ov.rename(p(a[0]), p(a[1]), a[2] if len(a) > 2 else 0)
        elif verb == "symlink":
            ov.symlink(a[0], p(a[1]))
        elif verb == "link":
            ov.link(p(a[0]), p(a[1]))
        elif verb == "chmod":
            ov.chmod(p(a[0]), a[1])
        elif verb == "truncate":
            ov.truncate(p(a[0]), a[1])
        elif verb == "mkfifo":
            ov.mknod(p(a[0]), stat.S_IFIFO | 0o644, 0)
        elif verb == "setxattr":
            ov.setxattr(p(a[0]), a[1], a[2])
        elif verb == "rmtree":
            for node in reversed(list(ov.view.walk(ov.view.lookup(p(a[0]))))):
                (ov.rmdir if node.is_dir else ov.unlink)(node.path)
        else:
            raise ValueError(verb)


class Core(Impl):
    """The pure API: a fresh ``Overlay`` over the directories (opening it again is what a remount does)."""

    name = "core"

    @contextlib.contextmanager
    def open(self, lowers: Sequence[Path], upper: Path, work: Path, where: Path) -> Iterator[Opened]:
        ov = Overlay([str(p) for p in lowers], str(upper), str(work))
        try:
            yield OpenedCore(ov)
        finally:
            ov.view.close()  # its directory descriptors


# ---------------------------------------------------------------------------------------------------- the mounts
_libc = ctypes.CDLL(None, use_errno=True)


class OpenedMount(Opened):
    def __init__(self, m: Mount) -> None:
        self.m = m
        self.name = m.kind

    def source(self) -> Path:
        return self.m.path

    def apply(self, op: Op) -> None:
        """Run one table operation with plain system calls on the mounted tree."""
        verb, *a = op
        p = lambda rel: os.path.join(self.m.path, rel)  # noqa: E731
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
                if _libc.renameat2(-100, os.fsencode(p(a[0])), -100, os.fsencode(p(a[1])), flags) != 0:
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
            shutil.rmtree(p(a[0]))
        else:
            raise ValueError(verb)


class Daemon(Impl):
    """``unionfs mount`` through the CLI, with ``args`` (one daemon process per mount)."""

    marks = ("root", "fuse")

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name, self.args = name, tuple(args)

    def skip_reason(self) -> str | None:
        return skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()

    @contextlib.contextmanager
    def open(self, lowers: Sequence[Path], upper: Path, work: Path, where: Path) -> Iterator[Opened]:
        with unionfs_mount(lowers, upper, work, where, self.args) as m:
            yield OpenedMount(m)


class Kernel(Impl):
    """The kernel's overlayfs (``redirect_dir=on,index=on``: the semantics unionfs promises)."""

    name = "kernel"

    def skip_reason(self) -> str | None:
        return skip_reason_root() or skip_reason_kernel_overlay()

    @contextlib.contextmanager
    def open(self, lowers: Sequence[Path], upper: Path, work: Path, where: Path) -> Iterator[Opened]:
        with kernel_overlay(lowers, upper, work, where) as m:
            yield OpenedMount(m)


#: every implementation, by name: the factory the suite is parametrised over
IMPLS: dict[str, Impl] = {
    "core": Core(),
    "daemon": Daemon("daemon", DAEMONS["default"]),
    "daemon-nopassthrough": Daemon("daemon-nopassthrough", DAEMONS["served"]),
    "kernel": Kernel(),
}
#: the ones that mount (a test that needs a real file system: descriptors, rewinddir, ...)
MOUNTED = ("daemon", "daemon-nopassthrough", "kernel")


def impl_param(name: str) -> Any:
    """A pytest parameter for the implementation ``name``, carrying its markers (``IMPLS[name].marks``)."""
    return pytest.param(name, id=name, marks=[getattr(pytest.mark, m) for m in IMPLS[name].marks])
