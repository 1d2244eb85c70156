"""The write side of the union, on real directories (no FUSE): copy-up, whiteouts, opaque directories,
rename, link, setattr, xattrs, statfs.

Every method takes union paths ("/a/b") and raises :class:`OSError` with the errno the kernel's overlayfs
would give. The lowers are never written. Work directory layout (same filesystem as the upper)::

    WORK/unionfs/tmp/     staging: every copy-up is built here, then renamed into the upper (atomic)
    WORK/unionfs/index/   copied-up lower hardlinks, named by overlay inode number (index=on)
    WORK/unionfs/keep/    empty directories that keep a retired upper inode number reserved

Renaming a directory that comes from a lower layer copies the merged tree up (files by copy or hardlink,
directories recreated, opaque) instead of writing a redirect: see docs/semantics.md, "Renaming directories from lower layers".

Metadata-only copy-up (the kernel's ``metacopy=on`` format; docs/semantics.md, "Metadata-only copy-up"): a metadata
change (chmod, chown, utimes, xattrs) or a rename copies a big lower regular file up without its data: a sparse
file of its size marked with ``overlay.metacopy``, whose data the view reads from the lower file. Its data is
copied up (atomically, fsynced) before anything may change it: an open for writing, a truncate, a link. A
metacopy file moved to another name (a rename, or the deep copy of a renamed directory) carries the kernel's
absolute ``overlay.redirect`` to its data's lower path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import logging
import os
import stat
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from unionfs.errors import UnionfsError
from unionfs.fsops import Timespec, libc, remove_tree
from unionfs.layer import ownership
from unionfs.layer import whiteout as wh
from unionfs.layer.ownership import NAMES as OWNER_XATTRS
from unionfs.layer.ownership import Owners
from unionfs.union.view import METACOPY_SUFFIX, Node, Union, ino_xattr, metacopy_xattr, nlink_xattr, redirect_xattr
from unionfs.union.workdir import syncfs

log = logging.getLogger(__name__)
_T = TypeVar("_T")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
FICLONE = 0x40049409
NAME_MAX = 255
CAP_XATTR = "security.capability"
#: the kernel's private xattr naming an upper file's lower origin (kept across a data copy-up, as the kernel does)
ORIGIN_SUFFIX = "overlay.origin"
#: a lower regular file smaller than this is copied up with its data even for a metadata change: the copy costs
#: no more than the metadata-only one, and its later writes need no second copy-up
METACOPY_MIN = 64 << 10
#: the longest redirect we write (bytes); a file whose data path is longer is copied up whole before a rename
REDIRECT_MAX = 1024


Times = tuple[tuple[int, int], tuple[int, int]]  # ((atime_sec, atime_nsec), (mtime_sec, mtime_nsec)); nsec may be UTIME_*


def _e(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


def _fs(p: str) -> bytes:
    return os.fsencode(p)


def renameat2(old: str, new: str, flags: int = 0) -> None:
    """rename(2) with flags (RENAME_NOREPLACE/EXCHANGE/WHITEOUT); raises OSError."""
    if libc.renameat2(AT_FDCWD, _fs(old), AT_FDCWD, _fs(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old)


def utimensat(path: str | None, times: Times | None, fd: int | None = None) -> None:
    """utimensat(2)/futimens(2) with UTIME_NOW/UTIME_OMIT support; never follows a symlink."""
    arr = None
    if times is not None:
        arr = (Timespec * 2)(Timespec(*times[0]), Timespec(*times[1]))
    if fd is not None:
        rc = libc.futimens(fd, arr)
    else:
        rc = libc.utimensat(AT_FDCWD, _fs(path or ""), arr, AT_SYMLINK_NOFOLLOW)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


@contextmanager
def mtime_kept(fd: int, keep: bool = True) -> Iterator[None]:
    """Change the data of ``fd`` inside the block without moving its mtime (when ``keep``): for a client that
    owns mtime itself, as the kernel under the FUSE writeback cache."""
    before = os.fstat(fd).st_mtime_ns if keep else None
    yield
    if before is not None:
        utimensat(None, ((0, UTIME_OMIT), divmod(before, 10**9)), fd=fd)


def reopen_onto(fd: int, real: str) -> None:
    """Make descriptor ``fd`` read ``real`` from now on, keeping its number (after a copy-up the kernel's
    overlayfs shows the upper copy to descriptors opened on the lower one)."""
    new = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.dup2(new, fd, inheritable=False)
    finally:
        os.close(new)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) on ``fd``."""
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes keeping holes: FICLONE when the filesystem shares extents, otherwise
    SEEK_DATA/SEEK_HOLE extents with copy_file_range (sendfile/read-write as fallbacks)."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return
    except OSError:
        pass
    try:  # a larger readahead window on the source (measured: cold 1 GiB copy 0.62 s -> 0.45 s)
        os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole up to EOF
                break
            if e.errno in (errno.EINVAL, errno.ENOTSUP):
                data = pos
            else:
                raise
        try:
            hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        except OSError:
            hole = size
        hole = min(hole, size)
        off = data
        while off < hole:
            n = _copy_range(src_fd, dst_fd, off, hole - off)
            if n == 0:
                break
            off += n
        pos = max(hole, off)
    os.ftruncate(dst_fd, size)


#: bytes per copy_file_range call (measured, cold 1 GiB: one call 0.62 s, 8 MiB calls 0.45 s)
COPY_CHUNK = 8 << 20


def _copy_range(src: int, dst: int, off: int, count: int) -> int:
    count = min(count, COPY_CHUNK)
    try:
        return os.copy_file_range(src, dst, count, off, off)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            raise
    buf = os.pread(src, min(count, 1 << 20), off)
    if buf:
        os.pwrite(dst, buf, off)
    return len(buf)


def copy_xattrs(src: str, dst: str, *, dst_fd: int | None = None, private: tuple[str, ...] = ()) -> None:
    """Copy every xattr but the overlay's private ones (except those named in ``private``, and the owners kept
    by :mod:`unionfs.layer.ownership`) from ``src`` to ``dst`` (symlinks not followed)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if wh.is_private_xattr(name) and name not in private and name not in OWNER_XATTRS:
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            if dst_fd is not None:
                os.setxattr(dst_fd, name, value)
            else:
                os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EPERM) and not name.startswith(("user.", "trusted.")):
                log.debug("xattr %s of %s not copied: %s", name, src, e)
                continue
            raise


def _forgetting(*which: int) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Decorate an :class:`Overlay` method whose positional arguments ``which`` are union paths it may change
    the resolution of: they are forgotten in the view's cache afterwards (also on failure)."""
    def deco(fn: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(fn)
        def wrapper(self: "Overlay", *args: Any, **kwargs: Any) -> _T:
            try:
                return fn(self, *args, **kwargs)
            finally:
                for i in which:
                    self.view.forget(args[i])
        return wrapper
    return deco


class Overlay:
    """The union of ``lowers`` (base first) under the writable ``upper`` (None: read-only) with ``work``
    (same filesystem as ``upper``). ``view`` is the read side (:class:`unionfs.union.view.Union`).

    ``cache``: the view keeps path resolutions (:class:`unionfs.union.view.Union` ``cache``); correct as long as
    this object is the only writer of the upper while it lives (a mount daemon). Every method that changes
    what a path resolves to forgets that path in the view, also when it fails half way.

    ``volatile``: never sync the upper (copy-ups are not fsynced before their rename; :meth:`sync` does
    nothing): the kernel's ``volatile`` option. The caller marks the work directory (:mod:`unionfs.union.workdir`).

    ``metacopy``: chmod, chown, utimes, xattr changes and rename copy a big lower regular file up without its
    data, in the kernel's ``metacopy=on`` format (see :meth:`copy_up`); False: always with its data. Uppers
    written either way are read alike.

    ``owners``: what the view shows as owners (:class:`unionfs.union.view.Union`); a mount's
    ``xattr_permissions=2``.

    ``filler``: called with the host path of a lower regular file before its data is first opened (a read, a
    copy-up, a metacopy file's data): a lazy layer's (:mod:`unionfs.layer.placeholder`) makes a placeholder
    whole there, or raises OSError (EIO), which the open or copy-up then fails with. None (the default): lower
    files hold their data.
    """

    #: see the class docstring; set by whoever serves a union with lazy layers (the mount daemon)
    filler: Callable[[str], None] | None = None

    def __init__(self, lowers: list[str] | tuple[str, ...], upper: str | None = None,
                 work: str | None = None, *, cache: bool = True, volatile: bool = False,
                 metacopy: bool = True, owners: Owners | None = None) -> None:
        if (upper is None) != (work is None):
            raise ValueError("upper and work go together")
        self.upper = upper
        self.volatile = volatile
        self.metacopy = metacopy
        self.read_only = upper is None
        if work is not None:
            base = os.path.join(work, "unionfs")
            self.tmp = os.path.join(base, "tmp")
            self.index = os.path.join(base, "index")
            self.keep = os.path.join(base, "keep")
            for d in (base, self.tmp, self.index, self.keep):
                os.makedirs(d, mode=0o700, exist_ok=True)
            self._clean_tmp()
        else:
            self.tmp = self.index = self.keep = ""
        self.view = Union(tuple(lowers), upper, self.index or None, cache=cache, owners=owners)
        self.owners = owners
        self._counter = itertools.count()
        self._ns = wh.xattr_namespace()

    # ------------------------------------------------------------------ helpers
    def _clean_tmp(self) -> None:
        """Remove what a killed daemon left in the staging directory (never visible in the union)."""
        for name in os.listdir(self.tmp):
            with contextlib.suppress(OSError, UnionfsError):
                remove_tree(os.path.join(self.tmp, name))

    def _tmpname(self) -> str:
        return os.path.join(self.tmp, f"t{os.getpid()}.{next(self._counter)}")

    @staticmethod
    def _discard(tmp: str) -> None:
        """Remove the staging entry ``tmp`` (a tree for a directory) after a failure, at once: its space must
        come back now (ENOSPC during a copy-up), not at the next mount. Errors here are logged only: the
        caller re-raises the original one."""
        try:
            remove_tree(tmp)
        except (OSError, UnionfsError) as e:
            log.warning("cannot remove the staging entry %s: %s", tmp, e)

    @contextmanager
    def _staged(self, tmp: str) -> Iterator[str]:
        """The body works on the staging entry ``tmp``; if it raises, ``tmp`` is removed (:meth:`_discard`)
        and the error goes on."""
        try:
            yield tmp
        except BaseException:
            self._discard(tmp)
            raise

    def _commit(self, tmp: str, dst: str) -> None:
        """Rename the staged ``tmp`` to ``dst``; on failure ``tmp`` is removed and the error raised."""
        with self._staged(tmp):
            os.rename(tmp, dst)

    def _up(self, path: str) -> str:
        """A host path of ``path``'s slot in the upper, relative to its parent's upper directory (short however
        deep ``path`` is: :mod:`unionfs.union.realdir`). The parent must be in the upper already."""
        assert self.upper is not None
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name:
            return self.view.root().at.where()
        top = self.view.resolve(parent or "/").dirs[0]
        if top.layer != 0:  # resolved before its copy-up: once more, afresh
            self.view.forget(parent or "/", keep_children=True)
            top = self.view.resolve(parent or "/").dirs[0]
            if top.layer != 0:
                raise AssertionError(f"{parent} is not in the upper")
        return top.where(name)

    def _writable(self) -> None:
        if self.read_only:
            raise _e(errno.EROFS)

    def lookup(self, path: str) -> Node:
        """Resolve ``path`` (raises ENOENT)."""
        return self.view.lookup(path)

    def _split(self, path: str) -> tuple[Node, str]:
        parent, _, name = path.rstrip("/").rpartition("/")
        parent = parent or "/"
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise _e(errno.ENAMETOOLONG, path)
        pnode = self.view.lookup(parent)
        if not pnode.is_dir:
            raise _e(errno.ENOTDIR, path)
        return pnode, name

    def _check_new_name(self, name: str) -> None:
        if wh.is_hidden_name(name):
            raise _e(errno.EINVAL, name)

    def _set_ino(self, real: str, ino: int, *, fd: int | None = None) -> None:
        try:
            if fd is not None:
                os.setxattr(fd, ino_xattr(), str(ino).encode())
            else:
                os.setxattr(real, ino_xattr(), str(ino).encode(), follow_symlinks=False)
        except OSError as e:
            log.debug("cannot keep inode number on %s: %s", real, e)

    @staticmethod
    def _set_times(real: str, st: os.stat_result) -> None:
        utimensat(real, ((st.st_atime_ns // 10**9, st.st_atime_ns % 10**9),
                         (st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9)))

    # ------------------------------------------------------------------ copy-up
    def copy_up(self, path: str, *, data: bool = True, meta: bool = False) -> Node:
        """Make ``path`` exist in the upper (parents first, with metadata) and return its node.

        ``data=False`` skips the file contents (the caller truncates to 0 next). ``meta=True``: the caller changes
        metadata only (chmod, chown, utimes, xattrs, rename), so a lower regular file with one link and at least
        :data:`METACOPY_MIN` bytes is copied up without its data (:meth:`_metacopy_ok`), and a metacopy upper file
        stays one. Otherwise the returned node's data is in the upper: a metacopy upper file gets its data now
        (:meth:`_copy_up_data`). Atomic: the copy is built in the work directory and renamed into place. Lower
        hardlinks go through the index so that all their names keep sharing one inode.
        """
        self._writable()
        node = self.view.lookup(path)
        if node.layer == 0 and not node.indexed:
            if node.data is not None and not meta:
                return self._copy_up_data(path, node, data=data)
            return node
        parent = path.rstrip("/").rpartition("/")[0] or "/"
        pnode = self.copy_up(parent)
        dst = self._up(path)
        pst = os.lstat(pnode.real)
        if node.indexed:
            self._link_from_index(node.real, dst)
        elif stat.S_ISREG(node.st.st_mode) and node.st.st_nlink > 1:
            ipath = self._make_index(node, data=True)
            self._link_from_index(ipath, dst)
        else:
            tmp = self._copy_one(node, data=data, metacopy=meta and self._metacopy_ok(node))
            try:
                self._commit(tmp, dst)
            finally:
                self.view.forget(path, keep_children=True)
        self.view.forget(path, keep_children=True)
        self._set_times(pnode.real, pst)
        log.debug("copied up %s", path)
        return self.view.lookup(path)

    def _metacopy_ok(self, node: Node) -> bool:
        """Whether the lower entry ``node`` may be copied up without its data: a regular file with one link (a
        hardlinked one goes through the index whole) of at least :data:`METACOPY_MIN` bytes, on an overlay made
        with ``metacopy``."""
        st = node.st
        return (self.metacopy and node.layer > 0 and not node.indexed and stat.S_ISREG(st.st_mode)
                and st.st_nlink == 1 and st.st_size >= METACOPY_MIN)

    def _copy_one(self, node: Node, *, data: bool = True, ino: int | None = None, metacopy: bool = False,
                  redirect: str | None = None) -> str:
        """Copy one entry (a directory without its children) into a fresh staging name; return it. On any
        failure (ENOSPC, EDQUOT, EIO, a read error...) nothing is left in the staging directory. ``metacopy``
        (a regular file only): without its data, marked as the kernel's metacopy, with ``redirect`` to its
        data's lower path when given (see :meth:`_write_file`)."""
        with self._staged(self._tmpname()) as tmp:
            self._copy_one_to(tmp, node, data=data, ino=ino, metacopy=metacopy, redirect=redirect)
        return tmp

    def _copy_one_to(self, tmp: str, node: Node, *, data: bool, ino: int | None, metacopy: bool = False,
                     redirect: str | None = None) -> None:
        src = node.real
        st = node.st if self.owners is None else os.lstat(src)  # as it is: its override is copied with it
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            self._write_file(tmp, st, src, ino=node.ino if ino is None else ino,
                             data=src if data and not metacopy else None, metacopy=metacopy, redirect=redirect)
            return
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(tmp, 0o700)
            copy_xattrs(src, tmp)
            self._set_ino(tmp, node.ino if ino is None else ino)
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, mode)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), tmp)
            copy_xattrs(src, tmp)
            self._set_ino(tmp, node.ino if ino is None else ino)
            os.lchown(tmp, st.st_uid, st.st_gid)
        else:
            os.mknod(tmp, st.st_mode, st.st_rdev)
            copy_xattrs(src, tmp)
            self._set_ino(tmp, node.ino if ino is None else ino)
            os.lchown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, mode)
        self._set_times(tmp, st)

    def _write_file(self, tmp: str, st: os.stat_result, meta_src: str, *, ino: int, data: str | None,
                    metacopy: bool = False, redirect: str | None = None, private: tuple[str, ...] = ()) -> None:
        """Create the regular file ``tmp`` (a fresh staging name) as a copy of one with the attributes ``st`` and
        the xattrs of ``meta_src`` (plus the private ones named in ``private``), shown as inode ``ino``: its data
        copied from the file at ``data`` (None: none), or, with ``metacopy``, only its size (a sparse file) and the
        kernel's metacopy xattr (and ``redirect``). Owner before xattrs (a chown drops ``security.capability``),
        mode after the owner (a chown drops set-id bits). Fsynced (unless volatile) when it holds data: a crash
        after its rename must not leave a torn copy hiding the lower one; a metadata-only copy is not, as the
        kernel does not fsync one."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if data is not None and st.st_size:
                if self.filler is not None:
                    self.filler(data)
                sfd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    copy_data(sfd, fd, st.st_size)
                finally:
                    os.close(sfd)
            elif metacopy:
                os.ftruncate(fd, st.st_size)
            os.fchown(fd, st.st_uid, st.st_gid)
            copy_xattrs(meta_src, tmp, dst_fd=fd, private=private)
            self._set_ino(tmp, ino, fd=fd)
            if metacopy:
                os.setxattr(fd, metacopy_xattr(), b"")
                if redirect is not None:
                    os.setxattr(fd, redirect_xattr(), os.fsencode(redirect))
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            if not self.volatile and not metacopy:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._set_times(tmp, st)

    def _copy_up_data(self, path: str, node: Node, *, data: bool = True) -> Node:
        """Give the metacopy upper file ``node`` (at ``path``) its data: the kernel's data copy-up, due before any
        write to it. A copy of its lower data (none when not ``data``: an O_TRUNC open or a truncate to 0 follows)
        with the upper file's metadata (mode, owner, times, xattrs, inode number) is built in the staging
        directory, fsynced, and renamed over it, so the file carries no ``overlay.metacopy`` (nor redirect)
        afterwards and the parent's times are kept. An upper file with several links (the kernel links metacopy
        files; we never do) gets its data in place instead, as the kernel does it. EIO when the data is missing.
        """
        assert node.data is not None
        dst = node.real
        ust = os.lstat(dst)
        try:
            if ust.st_nlink > 1:
                self._fill_in_place(dst, node, ust, data=data)
            else:
                preal = node.at.where()
                pst = os.lstat(preal)
                self._commit(self._full_copy(node, ust, data=data), dst)
                self._set_times(preal, pst)
        finally:
            self.view.forget(path)
        log.debug("copied up the data of %s", path)
        return self.view.lookup(path)

    def _full_copy(self, node: Node, ust: os.stat_result, *, data: bool = True) -> str:
        """A staged copy of the metacopy upper file ``node`` (lstat ``ust``) with its lower data (none when not
        ``data``) and no metacopy mark; the kernel's ``overlay.origin`` is kept. Returns its staging name."""
        assert node.data is not None
        with self._staged(self._tmpname()) as tmp:
            self._write_file(tmp, ust, node.real, ino=node.ino, data=node.data.real if data else None,
                             private=(self._ns + ORIGIN_SUFFIX,))
        return tmp

    def _fill_in_place(self, real: str, node: Node, ust: os.stat_result, *, data: bool) -> None:
        """Copy the lower data into the metacopy upper file at ``real`` itself (lstat ``ust``), keeping its
        ``security.capability`` (a write drops it), then drop its metacopy mark."""
        assert node.data is not None
        fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            try:
                cap: bytes | None = os.getxattr(fd, CAP_XATTR)
            except OSError:
                cap = None
            if data:
                if self.filler is not None:
                    self.filler(node.data.real)
                sfd = node.data.open(os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    copy_data(sfd, fd, ust.st_size)
                finally:
                    os.close(sfd)
            else:  # the caller truncates to 0 next; a kill before it must not leave zeros that look like data
                os.ftruncate(fd, 0)
            if cap is not None:
                os.setxattr(fd, CAP_XATTR, cap)
            if not self.volatile:
                os.fsync(fd)
            for ns in (wh.TRUSTED, wh.USER):  # the mark read is in either (view.has_metacopy_mark)
                try:
                    os.removexattr(fd, ns + METACOPY_SUFFIX)
                except OSError as e:
                    if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                        raise
        finally:
            os.close(fd)
        self._set_times(real, ust)

    def _set_redirect(self, node: Node, real: str) -> bool:
        """Before the metacopy upper file ``node`` (at the host path ``real``) moves to another name: record where
        its data is as the kernel's absolute ``overlay.redirect``. False when the value cannot be stored (too
        long for the file system): the caller copies the data up instead."""
        assert node.data is not None
        value = os.fsencode(node.data.path)
        if len(value) > REDIRECT_MAX:
            return False
        try:
            os.setxattr(real, redirect_xattr(), value, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                raise
            log.debug("no redirect for %s (%s): copying its data up", node.path, e)
            return False
        return True

    def _make_index(self, node: Node, *, data: bool = True) -> str:
        """Copy a lower hardlinked file into the index (once) and return the index path."""
        ipath = os.path.join(self.index, str(node.ino))
        if not os.path.lexists(ipath):
            with self._staged(self._copy_one(node, data=data)) as tmp:
                os.setxattr(tmp, nlink_xattr(), str(node.st.st_nlink).encode())
            self._commit(tmp, ipath)
            self.view.forget_all()  # every lower alias of this inode now resolves to the index
        return ipath

    def _link_from_index(self, ipath: str, dst: str) -> None:
        """Link the index file at ``dst`` and count one lower alias fewer."""
        self._adjust_pending(ipath, -1)
        st = os.lstat(ipath)
        os.link(ipath, dst)
        self._set_times(ipath, st)  # link changes ctime only; keep atime/mtime as they were

    def _adjust_pending(self, ipath: str, delta: int) -> None:
        try:
            n = int(os.getxattr(ipath, nlink_xattr()))
        except (OSError, ValueError):
            n = 0
        os.setxattr(ipath, nlink_xattr(), str(max(0, n + delta)).encode())

    def _drop_lower_alias(self, node: Node) -> None:
        """A lower hardlink alias disappears from the union (unlink, or renamed onto): index the file (as
        the kernel's index=on does) so that the other names show one link fewer."""
        if self.read_only or node.layer == 0 or not stat.S_ISREG(node.st.st_mode):
            return
        if not node.indexed and node.st.st_nlink <= 1:  # (an indexed alias' st is the index file's)
            return
        ipath = node.real if node.indexed else self._make_index(node)
        self._adjust_pending(ipath, -1)

    def _deep_copy(self, node: Node) -> str:
        """Copy the merged tree under directory ``node`` into a fresh opaque staging directory; on failure
        nothing of it is left in the staging directory."""
        with self._staged(self._copy_one(node, ino=node.ino)) as tmp:
            wh.set_opaque(tmp)
            for child in self.view.listdir(node):
                dst = os.path.join(tmp, child.path.rpartition("/")[2])
                if child.is_dir:
                    self._commit(self._deep_copy(child), dst)
                elif child.data is not None:
                    self._move_metacopy(child, dst)
                elif child.layer == 0 or child.indexed:
                    if child.indexed:
                        self._adjust_pending(child.real, -1)
                    os.link(child.real, dst, follow_symlinks=False)
                elif stat.S_ISREG(child.st.st_mode) and child.st.st_nlink > 1:
                    ipath = self._make_index(child)
                    self._link_from_index(ipath, dst)
                elif self._metacopy_ok(child) and len(os.fsencode(child.path)) <= REDIRECT_MAX:
                    self._commit(self._copy_one(child, metacopy=True, redirect=child.path), dst)
                else:
                    self._commit(self._copy_one(child), dst)
            self._set_times(tmp, node.st)
        return tmp

    def _move_metacopy(self, node: Node, dst: str) -> None:
        """Put the metacopy upper file ``node`` at the host path ``dst`` of a deep copy: a hard link carrying an
        absolute redirect to its data (the copy is opaque: no lower data at its new path), or, when no redirect
        can be stored, a copy with its data."""
        if self._set_redirect(node, node.real):
            os.link(node.real, dst, follow_symlinks=False)
        else:
            self._commit(self._full_copy(node, os.lstat(node.real)), dst)

    def _file_to_move(self, path: str, node: Node) -> str:
        """Before the non-directory ``node`` at ``path`` is renamed: copy it up (a big lower regular file without
        its data) and, for a metacopy file, record where its data is (an absolute redirect, as the kernel's
        rename with metacopy=on), or copy its data up when no redirect can be stored. Returns its upper host
        path."""
        if node.layer != 0 or node.indexed:
            node = self.copy_up(path, meta=True)
        if node.data is not None and not self._set_redirect(node, node.real):
            node = self.copy_up(path)
        return node.real

    def _retire(self, real: str, *, keep: bool = False) -> None:
        """Delete an upper tree that was moved out of the union.

        ``keep``: a deep copy now shows these directories under their old numbers, so directories
        without a persistent number are parked (empty) under WORK/unionfs/keep to keep their inode numbers
        from being reused by new upper entries.
        """
        if not (os.path.isdir(real) and not os.path.islink(real)):
            try:
                os.unlink(real)
            except FileNotFoundError:
                pass
            return
        # descriptor-relative, bottom-up: no path handed to the kernel grows with the tree's depth
        for _root, dirs, files, dfd in os.fwalk(real, topdown=False):
            for f in files:
                os.unlink(f, dir_fd=dfd)
            for d in dirs:
                try:
                    st = os.stat(d, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(d, dir_fd=dfd)
                else:
                    self._retire_dir(dfd, d, st, keep)
        parent, name = os.path.split(real)
        pfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._retire_dir(pfd, name, os.stat(name, dir_fd=pfd, follow_symlinks=False), keep)
        finally:
            os.close(pfd)

    def _retire_dir(self, dfd: int, name: str, st: os.stat_result, keep: bool) -> None:
        """Remove the empty directory ``name`` of ``dfd`` (lstat ``st``), or park it (see :meth:`_retire`)."""
        if keep:
            try:
                os.getxattr(f"/proc/self/fd/{dfd}/{name}", ino_xattr(), follow_symlinks=False)
            except OSError:
                try:
                    os.rename(name, os.path.join(self.keep, str(st.st_ino)), src_dir_fd=dfd)
                    return
                except OSError as e:
                    log.debug("cannot park %s: %s", name, e)
        os.rmdir(name, dir_fd=dfd)

    # ------------------------------------------------------------------ creating entries
    def _prepare_create(self, path: str) -> tuple[Node, str, str]:
        """Check ``path`` may be created; return (parent node in upper, name, real upper path)."""
        self._writable()
        pnode, name = self._split(path)
        self._check_new_name(name)
        if self.view.child(pnode, name) is not None:
            raise _e(errno.EEXIST, path)
        pnode = self.copy_up(pnode.path)
        return pnode, name, self._up(path)

    def _place(self, dst: str, make: Callable[[str], None], *, is_dir: bool = False) -> bool:
        """Create an entry at ``dst`` with ``make(real_path)``; over a whiteout, build it in the work
        directory and swap it in atomically. Returns True when a whiteout was replaced."""
        try:
            st = os.lstat(dst)
        except FileNotFoundError:
            make(dst)
            return False
        if not wh.is_whiteout(dst, st):
            raise _e(errno.EEXIST, dst)
        with self._staged(self._tmpname()) as tmp:
            make(tmp)
            if is_dir:
                wh.set_opaque(tmp)
                renameat2(tmp, dst, RENAME_EXCHANGE)
                os.unlink(tmp)
            else:
                os.rename(tmp, dst)
        return True

    def _owner(self, pnode: Node, uid: int, gid: int) -> tuple[int, int]:
        pst = self._shown(pnode.real)
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
        return uid, gid

    def _shown(self, real: str) -> os.stat_result:
        """The lstat of the real entry at ``real`` as the view shows it (its override applied, see ``owners``)."""
        st = os.lstat(real)
        return st if self.owners is None else self.owners.shown(st, real)

    def _give(self, real: str, uid: int, gid: int, mode: int, *, rdev: int = 0, fd: int | None = None) -> None:
        """Make the entry at ``real`` (open at ``fd``, if given), of type and permissions ``mode`` (a device:
        number ``rdev``), show owner ``uid``:``gid``: by chown; or, on an overlay that keeps owners in
        overrides (``owners``), in its override, unless these are the daemon's own ids and it is no device kept
        as a file (a symlink or fifo, which cannot hold one, keeps the daemon's). Only the daemon's own ids are
        then real owners: its user can read and remove everything."""
        if self.owners is None:
            if fd is not None:
                os.fchown(fd, uid, gid)
            else:
                os.chown(real, uid, gid, follow_symlinks=False)
            return
        if (uid, gid) == (os.geteuid(), os.getegid()) and not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            try:  # the real owner shows again
                if fd is not None:
                    os.removexattr(fd, ownership.XATTR)
                else:
                    os.removexattr(real, ownership.XATTR, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                    raise
            if not stat.S_ISLNK(mode):
                os.chmod(fd if fd is not None else real, stat.S_IMODE(mode))
            return
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            value = ownership.encode(uid, gid, mode, rdev)
            if fd is not None:
                os.setxattr(fd, ownership.XATTR, value)
            else:
                os.setxattr(real, ownership.XATTR, value, follow_symlinks=False)

    @_forgetting(0)
    def create(self, path: str, mode: int, flags: int, uid: int = 0, gid: int = 0) -> int:
        """Create and open a regular file; returns the real fd (in the upper)."""
        pnode, name, dst = self._prepare_create(path)
        uid, gid = self._owner(pnode, uid, gid)
        fds: list[int] = []

        def make(p: str) -> None:
            fd = os.open(p, _real_flags(flags) | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
            fds.append(fd)
            self._give(p, uid, gid, stat.S_IFREG | stat.S_IMODE(mode), fd=fd)
            if stat.S_IMODE(os.fstat(fd).st_mode) != stat.S_IMODE(mode):  # the daemon's own umask took bits
                os.fchmod(fd, stat.S_IMODE(mode))

        try:
            self._place(dst, make)
        except BaseException:
            for fd in fds:  # made, then the swap over a whiteout failed
                os.close(fd)
            raise
        return fds[0]

    @_forgetting(0)
    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        """mkdir; over a whiteout the new directory is opaque (and only then)."""
        pnode, name, dst = self._prepare_create(path)
        uid, gid = self._owner(pnode, uid, gid)
        psgid = self._shown(pnode.real).st_mode & stat.S_ISGID

        def make(p: str) -> None:
            os.mkdir(p, stat.S_IMODE(mode))
            m = stat.S_IMODE(mode) | (stat.S_ISGID if psgid else 0)
            self._give(p, uid, gid, stat.S_IFDIR | m)
            if stat.S_IMODE(os.lstat(p).st_mode) != m:
                os.chmod(p, m)

        self._place(dst, make, is_dir=True)

    @_forgetting(0)
    def mknod(self, path: str, mode: int, dev: int, uid: int = 0, gid: int = 0) -> None:
        """mknod/mkfifo (a char device 0/0 is refused: it would read as a whiteout)."""
        if stat.S_ISCHR(mode) and dev == 0:
            raise _e(errno.EPERM, path)
        pnode, name, dst = self._prepare_create(path)
        uid, gid = self._owner(pnode, uid, gid)

        device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)

        def make(p: str) -> None:
            if device and self.owners is not None:  # a device its override shows (ownership)
                os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            else:
                os.mknod(p, mode, dev)
            self._give(p, uid, gid, mode, rdev=dev)
            if stat.S_IMODE(os.lstat(p).st_mode) != stat.S_IMODE(mode):
                os.chmod(p, stat.S_IMODE(mode))

        self._place(dst, make)

    @_forgetting(1)
    def symlink(self, target: str, path: str, uid: int = 0, gid: int = 0) -> None:
        """Create the symlink ``path`` -> ``target``."""
        pnode, name, dst = self._prepare_create(path)
        uid, gid = self._owner(pnode, uid, gid)

        def make(p: str) -> None:
            os.symlink(target, p)
            self._give(p, uid, gid, stat.S_IFLNK | 0o777)

        self._place(dst, make)

    @_forgetting(0, 1)
    def link(self, src: str, dst: str) -> None:
        """Hard link: copies ``src`` up first; lower hardlinks stay one inode through the index."""
        self._writable()
        snode = self.view.lookup(src)
        if snode.is_dir:
            raise _e(errno.EPERM, src)
        pnode, name, real = self._prepare_create(dst)
        snode = self.copy_up(src)
        self._place(real, lambda p: os.link(snode.real, p, follow_symlinks=False))

    # ------------------------------------------------------------------ removing entries
    def _whiteout_in_tmp(self) -> str:
        tmp = self._tmpname()
        fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            wh.make_whiteout_at(fd, os.path.basename(tmp))
        finally:
            os.close(fd)
        return tmp

    def _remove_upper(self, real: str, *, whiteout: bool, is_dir: bool, keep: bool = False) -> None:
        """Take the upper entry at ``real`` out of the union, leaving a whiteout when asked (atomically)."""
        if whiteout:
            wt = self._whiteout_in_tmp()
            if is_dir:
                renameat2(wt, real, RENAME_EXCHANGE)
                self._retire(wt, keep=keep)
            else:
                os.rename(wt, real)
        elif is_dir:
            tmp = self._tmpname()
            os.rename(real, tmp)
            self._retire(tmp, keep=keep)
        else:
            os.unlink(real)

    @_forgetting(0)
    def unlink(self, path: str) -> None:
        """unlink: a lower name leaves a whiteout."""
        self._writable()
        pnode, name = self._split(path)
        node = self.view.child(pnode, name)
        if node is None:
            raise _e(errno.ENOENT, path)
        if node.is_dir:
            raise _e(errno.EISDIR, path)
        pnode = self.copy_up(pnode.path)
        real = self._up(path)
        if node.layer == 0 and not node.indexed:
            self._remove_upper(real, whiteout=self.view.lower_has(pnode, name), is_dir=False)
        else:
            self._drop_lower_alias(node)
            fd = os.open(pnode.real, os.O_RDONLY | os.O_DIRECTORY)
            try:
                wh.make_whiteout_at(fd, name)
            finally:
                os.close(fd)

    @_forgetting(0)
    def rmdir(self, path: str) -> None:
        """rmdir: works on a merged directory empty only because of whiteouts; a lower name leaves a
        whiteout."""
        self._writable()
        if path.strip("/") == "":
            raise _e(errno.EBUSY, path)
        pnode, name = self._split(path)
        node = self.view.child(pnode, name)
        if node is None:
            raise _e(errno.ENOENT, path)
        if not node.is_dir:
            raise _e(errno.ENOTDIR, path)
        if not self.view.is_empty_dir(node):
            raise _e(errno.ENOTEMPTY, path)
        pnode = self.copy_up(pnode.path)
        real = self._up(path)
        if node.layer == 0:
            self._remove_upper(real, whiteout=self.view.lower_has(pnode, name), is_dir=True)
        else:
            fd = os.open(pnode.real, os.O_RDONLY | os.O_DIRECTORY)
            try:
                wh.make_whiteout_at(fd, name)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ rename
    @_forgetting(0, 1)
    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """rename with RENAME_NOREPLACE / RENAME_EXCHANGE; directories from lower layers are copied up
        whole (never EXDEV)."""
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE):
            raise _e(errno.EINVAL)
        opar, oname = self._split(old)
        npar, nname = self._split(new)
        self._check_new_name(nname)
        src = self.view.child(opar, oname)
        if src is None:
            raise _e(errno.ENOENT, old)
        dst = self.view.child(npar, nname)
        oabs, nabs = opar.path.rstrip("/") + "/" + oname, npar.path.rstrip("/") + "/" + nname
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise _e(errno.ENOENT, new)
        elif dst is not None and flags & RENAME_NOREPLACE:
            raise _e(errno.EEXIST, new)
        if oabs == nabs:
            return
        if src.is_dir and (nabs + "/").startswith(oabs + "/"):
            raise _e(errno.EINVAL, new)
        if dst is not None and dst.is_dir and (oabs + "/").startswith(nabs + "/"):
            raise _e(errno.ENOTEMPTY if not flags & RENAME_EXCHANGE else errno.EINVAL, new)
        if dst is not None and not flags & RENAME_EXCHANGE:
            if not src.is_dir and not dst.is_dir and src.ino == dst.ino:
                return  # two names of one inode: rename does nothing (POSIX)
            if src.is_dir and not dst.is_dir:
                raise _e(errno.ENOTDIR, new)
            if not src.is_dir and dst.is_dir:
                raise _e(errno.EISDIR, new)
            if dst.is_dir and not self.view.is_empty_dir(dst):
                raise _e(errno.ENOTEMPTY, new)
        opar = self.copy_up(opar.path)
        npar = self.copy_up(npar.path)
        if flags & RENAME_EXCHANGE:
            assert dst is not None
            self._make_whole(src)
            self._make_whole(dst)
            renameat2(self._up(oabs), self._up(nabs), RENAME_EXCHANGE)
            for path, parent, name in ((nabs, npar, nname), (oabs, opar, oname)):
                real = self._up(path)
                if os.path.isdir(real) and not os.path.islink(real) and self.view.lower_has(parent, name):
                    wh.set_opaque(real)
            return
        src_real = self._up(oabs)
        dst_real = self._up(nabs)
        src_whole = src.layer == 0 and not src.indexed and not src.merged
        if src.is_dir and not src_whole:
            moving = self._deep_copy(src)
        elif not src.is_dir:
            moving = self._file_to_move(oabs, src)
            src_whole = True
        else:
            moving = src_real
        # a deep copy of the source sits in the staging directory until the last rename: removed on failure
        staged = moving if moving != src_real and not src_whole else None
        try:
            if dst is not None and not dst.is_dir:
                self._drop_lower_alias(dst)
            # clear the destination slot in the upper
            try:
                dst_st = os.lstat(dst_real)
            except FileNotFoundError:
                dst_st = None
            if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
                tmp = self._tmpname()
                os.rename(dst_real, tmp)
                self._retire(tmp)
            elif dst_st is not None and src.is_dir:
                os.unlink(dst_real)  # a whiteout or a non-directory cannot be replaced by a directory
            if src.is_dir and moving == src_real and self.view.lower_has(npar, nname):
                wh.set_opaque(moving)
            old_needs_wh = self.view.lower_has(opar, oname) if src_whole or src.layer == 0 else True
            if moving == src_real or src_whole:
                if old_needs_wh:
                    try:
                        renameat2(src_real, dst_real, RENAME_WHITEOUT)
                    except OSError as e:
                        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EPERM):
                            raise
                        os.rename(src_real, dst_real)
                        self._place_whiteout(src_real)
                else:
                    os.rename(src_real, dst_real)
            else:
                os.rename(moving, dst_real)
                if os.path.lexists(src_real):
                    self._remove_upper(src_real, whiteout=old_needs_wh, is_dir=True, keep=True)
                elif old_needs_wh:
                    self._place_whiteout(src_real)
        except BaseException:
            if staged is not None:
                self._discard(staged)  # gone already (FileNotFoundError, ignored) once renamed into place
            raise

    def _place_whiteout(self, real: str) -> None:
        parent, name = os.path.split(real)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            wh.make_whiteout_at(fd, name)
        finally:
            os.close(fd)

    def _make_whole(self, node: Node) -> None:
        """Make ``node`` live entirely in the upper (a directory: a deep copy, opaque)."""
        if node.is_dir:
            if node.layer == 0 and not node.merged:
                return
            tmp = self._deep_copy(node)
            real = self._up(node.path)
            if os.path.lexists(real):
                with self._staged(tmp):
                    renameat2(tmp, real, RENAME_EXCHANGE)
                self._retire(tmp, keep=True)
            else:
                self._commit(tmp, real)
        else:
            self.copy_up(node.path)

    # ------------------------------------------------------------------ attributes
    def open(self, path: str, flags: int) -> int:
        """Open for I/O; any write access copies up first (O_TRUNC without copying the data). Returns a
        real fd. A read-only open never copies up."""
        return self.open_node(path, flags)[0]

    def open_node(self, path: str, flags: int, *, keep_mtime: bool = False, hint: int = 0) -> tuple[int, Node]:
        """:meth:`open`, also returning the node the fd was opened on (its ``st`` may be stale).

        ``keep_mtime``: O_TRUNC does not change the file's mtime (a caller whose client keeps its own mtime,
        as the kernel with the FUSE writeback cache, sets it itself). ``hint``: the layer the entry was found at
        before (:meth:`Union.child`)."""
        if reads_only(flags):
            node = self.view.resolve(path, hint)
            try:
                return self.open_read(node, flags), node
            except FileNotFoundError:  # the cached resolution went stale: resolve afresh once
                self.view.forget(path)
                node = self.view.resolve(path)
                return self.open_read(node, flags), node
        self._writable()
        node = self.view.resolve(path)
        if node.is_dir:
            raise _e(errno.EISDIR, path)
        node = self.copy_up(path, data=not (flags & os.O_TRUNC))
        if not (keep_mtime and flags & os.O_TRUNC):
            return node.open(_real_flags(flags)), node
        fd = node.open(_real_flags(flags) & ~os.O_TRUNC)
        try:
            st = os.fstat(fd)
            if st.st_size:
                os.ftruncate(fd, 0)
                utimensat(None, ((0, UTIME_OMIT), divmod(st.st_mtime_ns, 10**9)), fd=fd)
        except BaseException:
            os.close(fd)
            raise
        return fd, node

    def open_read(self, node: Node, flags: int) -> int:
        """Open the data of the resolved ``node`` for a read-only open with ``flags`` (:func:`reads_only`): no
        copy-up; a lower file goes through :attr:`filler` first. FileNotFoundError when the resolution is
        stale."""
        if self.filler is not None and stat.S_ISREG(node.st.st_mode):
            if node.data is not None:
                self.filler(node.data.real)
            elif not node.indexed and (node.layer > 0 or self.read_only):
                self.filler(node.real)
        return node.open_data(_real_flags(flags) & ~os.O_ACCMODE | os.O_RDONLY)

    def chmod(self, path: str, mode: int) -> None:
        node = self.copy_up(path, meta=True)
        if stat.S_ISLNK(node.st.st_mode):
            raise _e(errno.EOPNOTSUPP, path)
        os.chmod(node.real, stat.S_IMODE(mode))
        if self.owners is not None and ownership.read(node.real) is not None:  # the override shows the mode
            shown = self._shown(node.real)
            self._give(node.real, shown.st_uid, shown.st_gid, stat.S_IFMT(shown.st_mode) | stat.S_IMODE(mode),
                       rdev=shown.st_rdev)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Change the owner (-1: unchanged), as chown(2); on an overlay that keeps owners in overrides, in the
        override, dropping set-user-ID (and set-group-ID with group execute) of a regular file as the kernel's
        chown does."""
        node = self.copy_up(path, meta=True)
        if self.owners is None or stat.S_ISLNK(node.st.st_mode):
            os.chown(node.real, uid, gid, follow_symlinks=False)
            return
        shown = self._shown(node.real)
        mode = shown.st_mode
        if stat.S_ISREG(mode):
            mode &= ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))
        self._give(node.real, shown.st_uid if uid < 0 else uid, shown.st_gid if gid < 0 else gid, mode,
                   rdev=shown.st_rdev)

    def utimens(self, path: str, times: Times | None) -> None:
        """Set atime/mtime; nanoseconds may be UTIME_NOW or UTIME_OMIT; None means now."""
        if times is not None and times[0][1] == UTIME_OMIT and times[1][1] == UTIME_OMIT:
            self.view.lookup(path)
            return
        node = self.copy_up(path, meta=True)
        utimensat(node.real, times)

    def truncate(self, path: str, length: int) -> None:
        node = self.view.lookup(path)
        if node.is_dir:
            raise _e(errno.EISDIR, path)
        node = self.copy_up(path, data=length > 0)
        os.truncate(node.real, length)

    @_forgetting(0)
    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        if wh.is_private_xattr(name):
            raise _e(errno.EPERM, name)
        node = self.copy_up(path, meta=True)
        os.setxattr(node.real, name, value, flags, follow_symlinks=False)
        if node.st.st_nlink > 1:
            self.view.forget_all()  # other names of this inode cache their xattr state too

    @_forgetting(0)
    def removexattr(self, path: str, name: str) -> None:
        if wh.is_private_xattr(name):
            raise _e(errno.ENODATA, name)
        node = self.view.lookup(path)
        if node.layer != 0 or node.indexed:
            self._writable()
            os.getxattr(node.real, name, follow_symlinks=False)  # ENODATA without a copy-up
        node = self.copy_up(path, meta=True)
        os.removexattr(node.real, name, follow_symlinks=False)
        if node.st.st_nlink > 1:
            self.view.forget_all()

    def sync(self) -> None:
        """syncfs(2) of the upper's filesystem (a user's ``sync -f``/syncfs on the mount); nothing when volatile
        or read-only."""
        if self.upper is not None and not self.volatile:
            syncfs(self.upper)

    def fsync(self, fd: int, datasync: bool) -> None:
        """fsync/fdatasync of an open upper file; nothing when volatile."""
        if not self.volatile:
            (os.fdatasync if datasync else os.fsync)(fd)

    def statfs(self) -> dict[str, int]:
        """statvfs of the upper's filesystem (the top lower's when read-only), f_namemax 255."""
        sv = os.statvfs(self.upper if self.upper is not None else self.view.layers[0])
        return {"f_bsize": sv.f_bsize, "f_frsize": sv.f_frsize, "f_blocks": sv.f_blocks, "f_bfree": sv.f_bfree,
                "f_bavail": sv.f_bavail, "f_files": sv.f_files, "f_ffree": sv.f_ffree, "f_favail": sv.f_favail,
                "f_namemax": NAME_MAX}


def reads_only(flags: int) -> bool:
    """Whether an open with ``flags`` neither writes nor truncates (it never copies up)."""
    return flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC


def _real_flags(flags: int) -> int:
    """Flags for opening the real file: never create here, never append (the kernel gives offsets),
    no O_DIRECT (the FUSE page cache sits above us anyway)."""
    drop = os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_DIRECT", 0) | os.O_NOCTTY
    f = flags & ~drop
    if f & os.O_ACCMODE == os.O_WRONLY:
        f = (f & ~os.O_ACCMODE) | os.O_RDWR
    return f | os.O_NOFOLLOW | os.O_CLOEXEC
