"""Filesystem operations every part shares: the C library loaded once, and the durable write and delete.

Python's ``os`` module covers most system calls; the few it lacks (mount(2), umount2(2), pivot_root(2),
prctl(2), capset(2), renameat2(2), utimensat(2) on a symlink, futimens(2), fallocate(2), syncfs(2),
statfs(2), sync_file_range(2)) go through :data:`libc`. Every module uses this one handle, so a prototype is declared once.

``atomic_write`` (temporary name, fsync, rename, fsync of the directory), ``remove_tree`` (the one recursive
delete: never through a mount) and ``discard_tree`` (rename into a trash directory first, so a kill leaves a
tree whole or gone) are the only ways unionfs writes a file durably or deletes a tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TYPE_CHECKING, Any

from unionfs.errors import MountedTreeError, StoreError
from unionfs.mountinfo import mounts

if TYPE_CHECKING:
    from pathlib import Path

#: mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE, MS_SLAVE = 4096, 16384, 1 << 18, 1 << 19
#: umount2(2) flag: detach now, finish when no longer busy
MNT_DETACH = 2


#: the C library of this process (its symbols are in the program's namespace: no library search needed), and
#: ``struct timespec`` (utimensat/futimens): made at their first use (:func:`__getattr__`)
libc: Any
Timespec: Any


def __getattr__(name: str) -> Any:
    """``libc`` and ``Timespec`` are made when first asked for (PEP 562), so that a process that only writes
    and deletes files (the store's part of ``unionfs mount IMAGE``) does not load ctypes and libffi."""
    if name in ("libc", "Timespec"):
        _load_c()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_c() -> None:
    """Load the C library and declare the prototype of every call made through it (once)."""
    import ctypes

    class Timespec(ctypes.Structure):
        """``struct timespec`` (utimensat/futimens)."""

        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    lib = ctypes.CDLL(None, use_errno=True)
    c_str, c_int, c_uint, c_ulong, c_long = ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_ulong, ctypes.c_long
    for name, args in {
        "mount": [c_str, c_str, c_str, c_ulong, c_str],
        "umount2": [c_str, c_int],
        "pivot_root": [c_str, c_str],
        "prctl": [c_int, c_ulong, c_ulong, c_ulong, c_ulong],
        "renameat2": [c_int, c_str, c_int, c_str, c_uint],
        "utimensat": [c_int, c_str, ctypes.POINTER(Timespec), c_int],
        "futimens": [c_int, ctypes.POINTER(Timespec)],
        "fallocate": [c_int, c_int, c_long, c_long],
        "syncfs": [c_int],
        "statfs": [c_str, ctypes.c_void_p],
        "sync_file_range": [c_int, ctypes.c_int64, ctypes.c_int64, c_uint],
    }.items():
        getattr(lib, name).argtypes = args
    Timespec.__qualname__ = "Timespec"
    globals().update(libc=lib, Timespec=Timespec)


def check(ret: int, what: str, path: str | None = None) -> None:
    """Raise OSError(errno) for a libc call that returned non-zero: ``what: strerror`` (with ``path``)."""
    if ret != 0:
        import ctypes  # loaded already: ``ret`` came from libc

        err = ctypes.get_errno()
        if path is None:
            raise OSError(err, f"{what}: {os.strerror(err)}")
        raise OSError(err, os.strerror(err), path)


#: sync_file_range(2): start writing the range back, do not wait
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to disk, without waiting
    (sync_file_range(2) ``SYNC_FILE_RANGE_WRITE``), so that the fsync that makes the file durable later has
    less left to wait for: the disk works while the writer goes on (a download, its hash). No promise of
    durability (only fsync gives one) and best effort: a filesystem that does not support it is ignored."""
    if "libc" not in globals():
        _load_c()
    globals()["libc"].sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


#: open(2) flags of a directory on a way below a root: never through a symlink
DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_file_beneath(root: int, name: str, flags: int) -> int:
    """The regular file ``name`` (relative, ``/``-separated, no ``..``: a cleaned path) below the directory
    open at ``root``, opened with ``flags``: every directory on the way opened without following a symlink,
    the file itself too, and only when it is a regular file (OSError ELOOP/ENOTDIR for a symlink on the way,
    EINVAL for anything but a regular file: never a fifo or a device, whose mere open may block or act).
    Opened ``O_NONBLOCK`` and checked again once open, for a tree someone else may change meanwhile: nothing
    outside ``root`` is ever opened."""
    parts = name.split("/")
    if not name or ".." in parts or "" in parts:
        raise OSError(errno.EINVAL, f"not a cleaned relative path: {name!r}")
    at, fds = root, []
    try:
        for part in parts[:-1]:
            at = os.open(part, DIR_NOFOLLOW, dir_fd=at)
            fds.append(at)
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=at, follow_symlinks=False).st_mode):
            raise OSError(errno.EINVAL, f"{name!r} is not a regular file")
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=at)
    finally:
        for d in fds:
            os.close(d)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name!r} is not a regular file")
    return fd


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same directory, fsync, rename (readers see
    the old file or the whole new one, also after a crash). Without ``durable``, no fsync: a kill still
    leaves no partial file, a crash may lose the write (for files that describe running processes)."""
    parent, name = os.path.split(os.fspath(path))
    parent = parent or "."
    fd, tmp = temp_file(parent, f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(parent)


def temp_file(parent: str | Path, prefix: str) -> tuple[int, str]:
    """A new file ``PREFIX<random>`` in ``parent``, open for reading and writing (mode 0600, never through a
    symlink): its descriptor and path, as ``tempfile.mkstemp`` gives them. Here so that the store and the
    mount daemon need not import :mod:`tempfile` (and shutil, random, hashlib behind it) on every start."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name in {parent}")


def temp_dir(parent: str | Path, prefix: str) -> str:
    """A new empty directory ``PREFIX<random>`` in ``parent`` (mode 0700), as ``tempfile.mkdtemp`` makes one."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name in {parent}")


_RM_DIRFLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str | Path) -> None:
    """Remove ``path``: a file, a symlink (never followed) or a whole directory tree, whatever its modes.

    Never deletes through a mount: when the mount table lists a mount at or below ``path``, MountedTreeError
    is raised before anything is removed; a directory met on another device during the walk (a mount made
    meanwhile) raises it too. The walk is iterative and descriptor-based (two directories open at most, no
    recursion or path-length limit, no symlink followed). A missing ``path`` is no error. This is the one
    recursive delete of the store: everything under ``tmp/``, ``layers/`` and ``containers/`` goes through it.
    """
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    real = os.path.realpath(path)
    for m in mounts():
        if m.mountpoint == real or m.mountpoint.startswith(real.rstrip("/") + "/"):
            raise MountedTreeError(f"refusing to delete {path}: {m.mountpoint} is mounted ({m.fstype}) inside it")
    parent_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_dir_at(parent_fd, os.path.basename(path), st.st_dev, path)
    finally:
        os.close(parent_fd)


def remove_at(parent_fd: int, name: str | bytes) -> None:
    """Remove the entry ``name`` of the directory ``parent_fd``: a file or symlink is unlinked, a directory
    tree removed as ``remove_tree`` removes it (descriptor-based, no symlink followed, never onto another
    device). A missing entry is no error. For callers that hold the parent open (the layer unpacker)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    _remove_dir_at(parent_fd, name, st.st_dev, os.fsdecode(name))


def _enter_dir(parent_fd: int, name: str | bytes, dev: int, where: str) -> int:
    """Open the subdirectory ``name`` (no symlink followed) and make it writable; refuse another device."""
    try:
        fd = os.open(name, _RM_DIRFLAGS, dir_fd=parent_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent_fd)  # a directory (lstat-ed by the caller's listing) with mode 0
        fd = os.open(name, _RM_DIRFLAGS, dir_fd=parent_fd)
    st = os.fstat(fd)
    if st.st_dev != dev:
        os.close(fd)
        raise MountedTreeError(f"refusing to delete through {where}: it is another filesystem (a mount)")
    if st.st_mode & 0o700 != 0o700:
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
    return fd


def _clear_dir(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; returns the names of its subdirectories."""
    with os.scandir(fd) as it:
        listing = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    subdirs = []
    for name, is_dir in listing:
        if is_dir:
            subdirs.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            subdirs.append(name)
    return subdirs


def _remove_dir_at(parent_fd: int, name: str | bytes, dev: int, where: str) -> None:
    """Remove the directory tree ``name`` of ``parent_fd``, staying on device ``dev`` (see ``remove_tree``)."""
    fd = _enter_dir(parent_fd, name, dev, where)
    try:
        # one (name, inode, subdirectories still to remove) per level; only ``fd`` (the deepest) is open
        stack = [(name, os.fstat(fd).st_ino, _clear_dir(fd))]
        while stack:
            pending = stack[-1][2]
            if pending:
                sub = pending.pop()
                child = _enter_dir(fd, sub, dev, os.path.join(where, *(s[0] for s in stack[1:]), sub))
                os.close(fd)
                fd = child
                stack.append((sub, os.fstat(fd).st_ino, _clear_dir(fd)))
                continue
            done = stack.pop()[0]
            if not stack:
                break
            up = os.open("..", _RM_DIRFLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if os.fstat(fd).st_ino != stack[-1][1]:
                raise StoreError(f"{where} changed while it was being deleted")
            os.rmdir(done, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def discard_tree(path: str | Path, tmp_dir: str | Path) -> None:
    """Delete ``path`` crash-safely: rename it into a fresh directory under ``tmp_dir`` (same filesystem),
    then remove it there. A kill at any point leaves ``path`` either whole or gone, never half deleted; what
    is left under ``tmp_dir`` is garbage that ``prune`` removes."""
    if not os.path.lexists(path):
        return
    trash = temp_dir(tmp_dir, "rm-")
    os.rename(path, os.path.join(trash, os.path.basename(path)))
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    remove_tree(trash)
