"""The tree of a lazy layer, made from its TOC alone (no network, no store).

The TOC's entries are written as a tar stream with no file data and unpacked by the store's own unpacker
(:func:`unionfs.layer.unpack.unpack_layer`): every rule of a normal unpack holds (names that leave the layer,
entries below symlinks, hardlinks, whiteouts and opaque directories, owners, modes, devices, xattrs and their
private names, mtimes, directories last). Then each regular file with data becomes a placeholder: truncated
(sparse) to its size, its mtime put back, marked with its TOC entry (:mod:`unionfs.layer.placeholder`); the
layer's root gets the layer's mark. The TOC itself is written as ``stargz.index.json`` at the root, as an
eStargz-agnostic unpack of the blob has it (with its header's metadata as :func:`write_estargz` writes it).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import stat
import tarfile
import tempfile
from datetime import datetime
from typing import Any

from unionfs.errors import EstargzError, LayerTooLargeError, LazyLayerError, shown
from unionfs.layer import placeholder
from unionfs.layer.estargz import TOC_NAME, check_toc, clean_name
from unionfs.layer.unpack import MAX_LAYER_SIZE_ENV, max_layer_size, unpack_layer

log = logging.getLogger(__name__)

_TYPES = {"dir": tarfile.DIRTYPE, "reg": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
CAPABILITY = "security.capability"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _mtime(ent: dict[str, Any]) -> int:
    text = ent.get("modtime")
    if not text:
        return 0
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError):
        raise EstargzError(f"TOC entry {shown(ent.get('name'))}: modtime {shown(text)} is not RFC 3339") from None


def _tarinfo(ent: dict[str, Any]) -> tarfile.TarInfo:
    """The data-less tar header of the TOC entry ``ent`` (checked by :func:`check_toc`)."""
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


def materialize(toc: dict[str, Any], raw_toc: bytes, toc_offset: int, dest: str, layer: str) -> int:
    """Make the tree of lazy layer ``layer`` (DiffID hex) in the existing empty directory ``dest`` from its TOC
    (parsed ``toc``, its ``raw_toc`` bytes, the TOC member's ``toc_offset``). Returns the number of
    placeholders. EstargzError for a TOC the spec does not allow; the unpacker's LayerError subclasses for
    entries a layer may not hold."""
    files, _, _ = check_toc(toc, toc_offset)
    total = sum(ent.get("size", 0) for ent in files if ent["type"] == "reg")
    if total > max_layer_size():
        raise LayerTooLargeError(f"the TOC's files hold {total} bytes, more than the bound of {max_layer_size()} "
                                 f"(set by {MAX_LAYER_SIZE_ENV})")
    index = {id(ent): i for i, ent in enumerate(toc["entries"])}
    with tempfile.TemporaryFile(prefix="lazy-tar-") as spool:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as tf:
            for ent in files:
                tf.addfile(_tarinfo(ent))
            ti = tarfile.TarInfo(TOC_NAME)
            ti.type, ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = tarfile.REGTYPE, len(raw_toc), 0o644, 0, "", ""
            tf.addfile(ti, io.BytesIO(raw_toc))
        spool.seek(0)
        unpack_layer(spool, dest, media_type="application/vnd.oci.image.layer.v1.tar")
    # the last entry of a name is the one in the tree (tar semantics)
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for ent in files:
        if ent["type"] == "reg" and ent.get("size"):
            last[clean_name(ent["name"])] = (index[id(ent)], ent)
        else:
            last.pop(clean_name(ent["name"]), None)
    last.pop(TOC_NAME, None)
    root = os.open(dest, _DIR_FLAGS)
    try:
        for name, (i, ent) in last.items():
            _make_placeholder(root, name, ent["size"], layer, i)
        placeholder.mark_layer(root, layer)
    finally:
        os.close(root)
    return len(last)


def read_capability(fd: int) -> bytes | None:
    """The ``security.capability`` of the file open at ``fd`` (None: none), which a write or truncate drops."""
    try:
        return os.getxattr(fd, CAPABILITY)
    except OSError:
        return None


def _make_placeholder(root: int, name: str, size: int, layer: str, index: int) -> None:
    """Truncate the empty regular file ``name`` (relative to ``root``, no symlink followed) to ``size`` and mark
    it as the placeholder of TOC entry ``index``, its times kept."""
    parts = name.split("/")
    fds: list[int] = []
    try:
        at = root
        for part in parts[:-1]:
            at = os.open(part, _DIR_FLAGS, dir_fd=at)
            fds.append(at)
        fd = os.open(parts[-1], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
    except OSError as e:
        raise LazyLayerError(f"TOC entry {shown(name)}: cannot make its placeholder: {e.strerror or e}") from None
    finally:
        for f in fds:
            os.close(f)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size:
            raise LazyLayerError(f"TOC entry {shown(name)}: not the empty regular file its placeholder starts as")
        cap = read_capability(fd)
        os.ftruncate(fd, size)  # drops security.capability, even for root
        if cap is not None:
            os.setxattr(fd, CAPABILITY, cap)
        placeholder.mark_placeholder(fd, layer, index)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)
