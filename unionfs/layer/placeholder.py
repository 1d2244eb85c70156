"""The marks of a lazy layer (:mod:`unionfs.lazy`): which layer directory is lazy, and which of its regular
files are still placeholders (pure: names and reads, no network).

A lazy layer's root directory carries the mark (:func:`mark_name`) with the value ``layer <diffid-hex>``.
Each regular file whose data is not there yet is a *placeholder*: an empty (sparse) file of the right size,
mode, owner, times and xattrs that carries the mark with the value ``file <diffid-hex> <toc-entry-index>``.
The mark goes only once the file's data is written, verified and fsynced; a file without it holds its final
data. The mark is private: never shown through a mount, never copied up, never taken from a layer's tar
(:func:`unionfs.layer.whiteout.is_private_xattr`).

The mark's namespace is the process' (:func:`mark_name`): ``trusted.`` for root of the initial user namespace,
``user.`` for anyone else (a user's rootless store, a user namespace's root), both for what it writes and for
what it trusts. A root daemon never takes a ``user.`` mark for one: anyone may set those on files they own, and
a root daemon that trusted them would fetch and write where such a file says. A lazy layer made by the other
kind of process is refused (:func:`unionfs.lazy.layout.check_mark`), never served as zeros.
"""

from __future__ import annotations

import errno
import os

from unionfs.layer import ownership

#: the mark of root's lazy layers (root of the initial user namespace)
TRUSTED_MARK = "trusted.unionfs.lazy"
#: the mark of everyone else's: a user's rootless store, a user namespace's root (podman's rootless mounts)
USER_MARK = "user.unionfs.lazy"
#: every name the mark may have
NAMES = (TRUSTED_MARK, USER_MARK)


def mark_name() -> str:
    """The mark this process writes and trusts: :data:`TRUSTED_MARK` when it may set ``trusted.`` xattrs
    (:func:`unionfs.layer.ownership.privileged`), :data:`USER_MARK` otherwise."""
    return TRUSTED_MARK if ownership.privileged() else USER_MARK


def _read(path: str | int, name: str | None = None) -> bytes | None:
    name = name or mark_name()
    try:
        return os.getxattr(path, name, follow_symlinks=False) if isinstance(path, str) else os.getxattr(path, name)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return None
        raise


def lazy_layer_of(root: str, name: str | None = None) -> str | None:
    """The DiffID hex of the lazy layer whose root directory is ``root`` (its mark ``name``, by default this
    process' :func:`mark_name`), None when it is not one."""
    value = _read(root, name)
    if value is None or not value.startswith(b"layer "):
        return None
    return value[6:].decode("ascii", "replace")


def placeholder_of(path: str | int, name: str | None = None) -> tuple[str, int] | None:
    """(layer DiffID hex, TOC entry index) of the placeholder file at ``path`` (a host path, not followed, or a
    descriptor; its mark ``name``, by default this process' :func:`mark_name`); None when it holds its data.
    ValueError for a mark that is not a placeholder's."""
    value = _read(path, name)
    if value is None:
        return None
    parts = value.split(b" ")
    if len(parts) != 3 or parts[0] != b"file" or not parts[2].isdigit():
        raise ValueError(f"malformed lazy mark {value[:80]!r}")
    return parts[1].decode("ascii", "replace"), int(parts[2])


def mark_layer(fd: int, layer: str) -> None:
    """Mark the directory open at ``fd`` as the root of lazy layer ``layer`` (DiffID hex)."""
    os.setxattr(fd, mark_name(), b"layer " + layer.encode("ascii"))


def mark_placeholder(fd: int, layer: str, index: int) -> None:
    """Mark the file open at ``fd`` as the placeholder of TOC entry ``index`` of lazy layer ``layer``."""
    os.setxattr(fd, mark_name(), b"file %s %d" % (layer.encode("ascii"), index))


def unmark(fd: int, name: str | None = None) -> None:
    """Drop the mark ``name`` (by default this process' :func:`mark_name`) of the file open at ``fd`` (its data
    is final now)."""
    try:
        os.removexattr(fd, name or mark_name())
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
