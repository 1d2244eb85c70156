"""Real directories of the layers, addressed by parent and name, never by a long host path.

A :class:`Dir` is one directory of one layer: a layer's root (:class:`RootDir`, which knows its host path) or
``(parent Dir, name)``. Everything the union does to a real entry is relative to the directory holding it, so
no host path the union hands to the kernel is longer than one component plus a short prefix, however deep the
entry is inside the mount (pjdfstest's paths of PATH_MAX bytes below a directory of the mount; a tree deeper
than PATH_MAX).

Two ways to address a directory, chosen once per union (:class:`Dirs`):

* **descriptors** (a long-lived union: the mount daemon): each directory is reached through an ``O_PATH``
  descriptor opened relative to its parent's (``openat(parent, name, O_PATH|O_DIRECTORY|O_NOFOLLOW)``). A
  layer's root is held for the union's life; other directories are kept in a least-recently-used table of
  at most :data:`KEEP` descriptors *between operations*: :meth:`Dirs.trim` closes the surplus and is only
  ever called between two operations (the daemon calls it after each request), so a descriptor or a
  :meth:`Dir.where` path taken during an operation stays valid until it ends. An entry's path for calls that
  take no directory descriptor (xattrs, whiteout checks) is ``/proc/self/fd/N/NAME``.
* **host paths** (a short-lived union over store layers: ``ls``, ``find``, ``commit``, ``export``): no
  descriptor is held; :meth:`Dir.where` is the layer's path joined with the entry's union path.

A descriptor follows its directory's inode: after the writer renames an upper directory, it must stop using
the Dirs below the old name (the view's cache forgets the whole subtree: :meth:`unionfs.union.view.Union.forget`).
"""

from __future__ import annotations

import errno
import functools
import os
import resource
from typing import Callable

from unionfs.layer.ownership import Owners

#: directory descriptors a union keeps open between operations (its layers' roots not counted), at most an eighth
#: of the soft RLIMIT_NOFILE (the daemon raises it to the hard limit first): a second ``find`` over a tree of 552
#: merged directories in 4 layers reopened ~15 us of descriptors per directory at 1,024 (the first ``find`` had
#: filled the table with its listings' 2,208 directories), and reopens none at 4,096
KEEP = 4096
_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Dirs:
    """The directory descriptors of one union (``fds=True``), or none (``fds=False``: host paths).

    Two tables, least recently used first: the descriptors used by the current operation (never closed before
    it ends) and the ones kept from earlier operations (closed first when the process runs out: EMFILE).
    """

    __slots__ = ("fds", "_now", "_kept", "keep", "owners")

    def __init__(self, *, fds: bool, keep: int = KEEP, owners: Owners | None = None) -> None:
        self.fds = fds
        #: how entries' owners are shown (:class:`unionfs.layer.ownership.Owners`; None: as they are)
        self.owners = owners
        self._now: dict[Dir, int] = {}
        self._kept: dict[Dir, int] = {}
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.keep = min(keep, max(16, soft // 8)) if soft != resource.RLIM_INFINITY else keep

    def _get(self, d: "Dir") -> int | None:
        fd = self._now.get(d)
        if fd is None:
            fd = self._kept.pop(d, None)
            if fd is not None:
                self._now[d] = fd
        return fd

    def _open(self, d: "Dir", pfd: int) -> int:
        """Open ``d`` relative to its parent's descriptor; at EMFILE, close the kept ones and try again."""
        try:
            fd = os.open(d.name, _FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno != errno.EMFILE or not self._kept:
                raise
            self._close(self._kept)
            fd = os.open(d.name, _FLAGS, dir_fd=pfd)
        self._now[d] = fd
        return fd

    @staticmethod
    def _close(table: dict["Dir", int]) -> None:
        for fd in table.values():
            os.close(fd)
        table.clear()

    def root(self, layer: int, path: str) -> "RootDir":
        """The root directory of ``layer`` at the host path ``path`` (opened now when descriptors are used)."""
        return RootDir(self, layer, os.fspath(path))

    def trim(self) -> None:
        """Close the least recently used descriptors beyond :attr:`keep`. Only between two operations: a
        descriptor (or a ``where`` path) taken during an operation is valid until then."""
        kept = self._kept
        kept.update(self._now)
        self._now = {}
        while len(kept) > self.keep:
            os.close(kept.pop(next(iter(kept))))

    def close(self) -> None:
        """Close every descriptor but the roots' (they close with their :class:`RootDir`)."""
        self._close(self._now)
        self._close(self._kept)


class Dir:
    """A directory of layer ``layer``: the entry ``name`` of the directory ``parent``."""

    __slots__ = ("dirs", "layer", "parent", "name")

    def __init__(self, parent: "Dir", name: str) -> None:
        self.dirs = parent.dirs
        self.layer = parent.layer
        self.parent = parent
        self.name = name

    def child(self, name: str) -> "Dir":
        """The subdirectory ``name`` (not checked: the caller has seen it is a directory)."""
        return Dir(self, name)

    # ------------------------------------------------------------------ addressing
    def fd(self) -> int:
        """An ``O_PATH`` descriptor of this directory (descriptor mode only), valid until the next
        :meth:`Dirs.trim`. Opens the missing ones down from the nearest open ancestor (no recursion)."""
        dirs = self.dirs
        fd = dirs._get(self)
        if fd is not None:
            return fd
        chain: list[Dir] = [self]
        d = self.parent
        while not isinstance(d, RootDir):
            fd = dirs._get(d)
            if fd is not None:
                break
            chain.append(d)
            d = d.parent
        else:
            fd = d.fd()
        for d in reversed(chain):
            fd = dirs._open(d, fd)
        return fd

    @property
    def path(self) -> str:
        """The host path of this directory (for messages and the path-based tools; may exceed PATH_MAX)."""
        names: list[str] = []
        d: Dir = self
        while not isinstance(d, RootDir):
            names.append(d.name)
            d = d.parent
        return os.path.join(d.top, *reversed(names)) if names else d.top

    def where(self, name: str = ".") -> str:
        """A host path of the entry ``name`` of this directory (``"."``: the directory itself) that the kernel
        resolves without PATH_MAX trouble in descriptor mode (``/proc/self/fd/N/NAME``)."""
        if self.dirs.fds:  # "/proc/self/fd/N/." for the directory itself: the l*xattr calls must not stop at
            return f"/proc/self/fd/{self.fd()}/{name}"  # the magic link
        return self.path if name == "." else self.path + "/" + name

    def lstat(self, name: str) -> os.stat_result:
        """lstat(2) of the entry ``name`` (``fstatat`` with ``AT_SYMLINK_NOFOLLOW`` in descriptor mode), as the
        union's :class:`Owners` show it."""
        if self.dirs.fds:
            st = os.stat(name, dir_fd=self.fd(), follow_symlinks=False)
        else:
            st = os.lstat(self.where(name))
        owners = self.dirs.owners
        return st if owners is None else owners.shown(st, self.where(name))

    def lstat_fn(self) -> Callable[[str], os.stat_result]:
        """:meth:`lstat` for many names in a row (the directory is reached once), valid until the next trim."""
        if self.dirs.owners is not None:
            return self.lstat
        if self.dirs.fds:
            return functools.partial(os.stat, dir_fd=self.fd(), follow_symlinks=False)
        base = self.path
        return lambda name: os.lstat(base + "/" + name)

    def open(self, name: str, flags: int, mode: int = 0o777) -> int:
        """open(2) of the entry ``name`` (``openat`` in descriptor mode)."""
        if self.dirs.fds:
            return os.open(name, flags, mode, dir_fd=self.fd())
        return os.open(self.where(name), flags, mode)

    def __repr__(self) -> str:
        return f"Dir({self.layer}, {self.path!r})"


class RootDir(Dir):
    """A layer's root (or another directory the union knows by host path: the hardlink index)."""

    __slots__ = ("top", "_fd")

    def __init__(self, dirs: Dirs, layer: int, top: str) -> None:  # noqa: D107 (no parent)
        self.dirs = dirs
        self.layer = layer
        self.parent = self
        self.name = "."
        self.top = top
        self._fd = os.open(top, _FLAGS & ~os.O_NOFOLLOW) if dirs.fds else -1

    def fd(self) -> int:
        return self._fd

    @property
    def path(self) -> str:
        return self.top

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
