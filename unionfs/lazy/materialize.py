"""The tree of a lazy layer, made from its TOC alone (no network, no store).

The TOC's entries become tar headers, created by the store's own unpacker
(:func:`unionfs.layer.unpack.unpack_entries`, which runs the rules of a tar stream's unpack on headers given
without a stream): every rule of a normal unpack holds (names that leave the layer, entries below symlinks,
hardlinks, whiteouts and opaque directories, owners, modes, devices, xattrs and their private names, mtimes,
directories last, the layer-size bound). Each regular file with data is made a placeholder as it is created:
truncated (sparse) to its size and marked with its TOC entry (:mod:`unionfs.layer.placeholder`) before the
unpacker gives it its owner, mode, xattrs and times; a file that a later entry replaces goes with its mark.
Without privilege (a user's store), a placeholder of a read-only file is left writable by its owner, its mode
kept in its override (a fill must write it, and drop its ``user.`` mark). The layer's root gets the layer's
mark last. The TOC itself is written as ``stargz.index.json`` at the root, as an eStargz-agnostic unpack of the
blob has it (with its header's metadata as :func:`write_estargz` writes it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
import stat
import tarfile
from datetime import datetime
from typing import Any

from unionfs.errors import EstargzError, shown
from unionfs.fsops import DIR_NOFOLLOW, open_file_beneath
from unionfs.layer import ownership, placeholder
from unionfs.layer.estargz import TOC_NAME, clean_name
from unionfs.layer.unpack import Writer, unpack_entries
from unionfs.lazy.fetch import Toc

log = logging.getLogger(__name__)

_TYPES = {"dir": tarfile.DIRTYPE, "reg": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
CAPABILITY = "security.capability"


def _mtime(ent: dict[str, Any]) -> int:
    text = ent.get("modtime")
    if not text:
        return 0
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError):
        raise EstargzError(f"TOC entry {shown(ent.get('name'))}: modtime {shown(text)} is not RFC 3339") from None


def _tarinfo(ent: dict[str, Any]) -> tarfile.TarInfo:
    """The data-less tar header of the TOC entry ``ent`` (of a checked :class:`~unionfs.lazy.fetch.Toc`)."""
    ti = tarfile.TarInfo(ent["name"])
    ti.type = _TYPES[ent["type"]]
    ti.mode = ent.get("mode", 0) & 0o7777
    ti.uid, ti.gid = ent.get("uid", 0), ent.get("gid", 0)
    ti.uname, ti.gname = ent.get("userName", ""), ent.get("groupName", "")
    ti.mtime = _mtime(ent)
    ti.linkname = ent.get("linkName", "")
    ti.devmajor, ti.devminor = ent.get("devMajor", 0), ent.get("devMinor", 0)
    ti.size = 0
    for name, value in (ent.get("xattrs") or {}).items():
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise EstargzError(f"TOC entry {shown(ent['name'])}: xattr {shown(name)} is not base64") from None
        ti.pax_headers["SCHILY.xattr." + name] = raw.decode("utf-8", "surrogateescape")
    return ti


def materialize(toc: Toc, dest: str, layer: str, *, privileged: bool | None = None) -> int:
    """Make the tree of lazy layer ``layer`` (DiffID hex) in the existing empty directory ``dest`` from its
    checked TOC, with owners and devices given (``privileged``) or kept in overrides, as
    :func:`unionfs.layer.unpack.unpack_entries` takes it. Returns the number of placeholders. EstargzError for a
    TOC entry whose fields cannot be made a header (a modtime, an xattr value); the unpacker's LayerError
    subclasses for entries a layer may not hold (LayerTooLargeError for files over the layer-size bound, which
    counts the placeholders at their full size)."""
    index = {id(ent): i for i, ent in enumerate(toc.entries)}
    entries: list[tuple[tarfile.TarInfo, Writer | None]] = []
    last: dict[str, int] = {}  # the last entry of a name is the one in the tree (tar semantics)
    for ent in toc.files:  # every header made (and its fields checked) before anything is created
        ti = _tarinfo(ent)
        name = clean_name(ent["name"])
        if ent["type"] == "reg" and ent.get("size"):
            ti.size = ent["size"]
            entries.append((ti, functools.partial(_placeholder, layer, index[id(ent)], ti.size)))
            last[name] = index[id(ent)]
        else:
            entries.append((ti, None))
            last.pop(name, None)
    ti = tarfile.TarInfo(TOC_NAME)
    ti.type, ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = tarfile.REGTYPE, len(toc.raw), 0o644, 0, "", ""
    entries.append((ti, functools.partial(_write_all, toc.raw)))
    last.pop(TOC_NAME, None)
    unpack_entries(entries, dest, privileged=privileged)
    root = os.open(dest, DIR_NOFOLLOW)
    try:
        if not (ownership.privileged() if privileged is None else privileged):
            _writable_placeholders(root, {name: toc.entries[i] for name, i in last.items()})
        placeholder.mark_layer(root, layer)
    finally:
        os.close(root)
    return len(last)


def _writable_placeholders(root: int, placeholders: dict[str, dict[str, Any]]) -> None:
    """Without privilege (a user's store): make each placeholder (name below the tree open at ``root`` -> its TOC
    entry) that its owner may not write (a read-only file) writable, its mode kept in its override
    (:mod:`unionfs.layer.ownership`, as a rootless store keeps owners; a mount shows that mode). Its fill must
    write its data and then drop its ``user.`` mark, which only who may write the file can."""
    for name, ent in placeholders.items():
        mode = ent.get("mode", 0) & 0o7777
        if mode & stat.S_IWUSR:
            continue
        fd = open_file_beneath(root, name, os.O_PATH)
        try:
            proc = f"/proc/self/fd/{fd}"
            os.chmod(proc, mode | stat.S_IWUSR)
            if ownership.XATTR not in os.listxattr(proc):  # one with its owner has its mode already
                os.setxattr(proc, ownership.XATTR, ownership.encode(0, 0, stat.S_IFREG | mode))
        finally:
            os.close(fd)


def _placeholder(layer: str, index: int, size: int, fd: int) -> None:
    """The data of a placeholder (the writer :func:`unionfs.layer.unpack.unpack_entries` calls on the new empty
    file): truncated (sparse) to ``size`` and marked as the placeholder of TOC entry ``index``. The unpacker
    sets the owner, mode, xattrs (``security.capability`` included) and times after it; it drops the TOC's
    xattrs that would be the mark's."""
    os.ftruncate(fd, size)
    placeholder.mark_placeholder(fd, layer, index)


def _write_all(data: bytes, fd: int) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_capability(fd: int) -> bytes | None:
    """The ``security.capability`` of the file open at ``fd`` (None: none), which a write or truncate drops."""
    try:
        return os.getxattr(fd, CAPABILITY)
    except OSError:
        return None
