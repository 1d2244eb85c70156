"""The marks of a lazy layer (:mod:`unionfs.lazy`): which layer directory is lazy, and which of its regular
files are still placeholders (pure: names and reads, no network).

A lazy layer's root directory carries :data:`MARK` with the value ``layer <diffid-hex>``. Each regular file
whose data is not there yet is a *placeholder*: an empty (sparse) file of the right size, mode, owner, times
and xattrs that carries :data:`MARK` with the value ``file <diffid-hex> <toc-entry-index>``. The mark goes
only once the file's data is written, verified and fsynced; a file without it holds its final data. The mark
is private: never shown through a mount, never copied up, never taken from a layer's tar
(:func:`unionfs.layer.whiteout.is_private_xattr`). The store that writes these is root's (``trusted.``):
lazy layers are root-only for now.
"""

from __future__ import annotations

import errno
import os

#: the xattr marking a lazy layer's root and its placeholder files
MARK = "trusted.unionfs.lazy"
#: every name the mark may have (one namespace for now: root's)
NAMES = (MARK,)


def _read(path: str | int) -> bytes | None:
    try:
        return os.getxattr(path, MARK, follow_symlinks=False) if isinstance(path, str) else os.getxattr(path, MARK)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT):
            return None
        raise


def lazy_layer_of(root: str) -> str | None:
    """The DiffID hex of the lazy layer whose root directory is ``root``, None when it is not one."""
    value = _read(root)
    if value is None or not value.startswith(b"layer "):
        return None
    return value[6:].decode("ascii", "replace")


def placeholder_of(path: str | int) -> tuple[str, int] | None:
    """(layer DiffID hex, TOC entry index) of the placeholder file at ``path`` (a host path, not followed, or a
    descriptor); None when it holds its data. ValueError for a mark that is not a placeholder's."""
    value = _read(path)
    if value is None:
        return None
    parts = value.split(b" ")
    if len(parts) != 3 or parts[0] != b"file" or not parts[2].isdigit():
        raise ValueError(f"malformed lazy mark {value[:80]!r}")
    return parts[1].decode("ascii", "replace"), int(parts[2])


def mark_layer(fd: int, layer: str) -> None:
    """Mark the directory open at ``fd`` as the root of lazy layer ``layer`` (DiffID hex)."""
    os.setxattr(fd, MARK, b"layer " + layer.encode("ascii"))


def mark_placeholder(fd: int, layer: str, index: int) -> None:
    """Mark the file open at ``fd`` as the placeholder of TOC entry ``index`` of lazy layer ``layer``."""
    os.setxattr(fd, MARK, b"file %s %d" % (layer.encode("ascii"), index))


def unmark(fd: int) -> None:
    """Drop the mark of the file open at ``fd`` (its data is final now)."""
    try:
        os.removexattr(fd, MARK)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
