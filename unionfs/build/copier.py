"""Copy files into a rootfs the way COPY and ADD do, and unpack ADD's local archives safely.

``copy_entry(src, dst, ...)`` copies one file, symlink, special file or directory tree from the host path
``src`` to the host path ``dst`` (already resolved inside the rootfs by the caller): data, mode, mtime,
xattrs (not the overlay's private ones), symlinks as symlinks below the top. The owner is ``owner`` when
given, else the source's. ``chmod`` replaces the permission bits of everything copied. Whiteouts (character
devices 0/0) are skipped: they have no meaning outside a layer. An existing non-directory at a destination is
replaced; an existing directory is merged into and keeps its metadata.

``is_archive(path)`` tells whether ADD should unpack a local file (a tar, plain or compressed with gzip,
bzip2, xz or zstd); ``unpack_archive(path, dest)`` unpacks it with the layer unpacker (``layer.unpack_layer``:
no entry can escape ``dest``), decompressing bzip2 and xz first.
"""

from __future__ import annotations

import bz2
import contextlib
import logging
import lzma
import os
import shutil
import stat
from typing import BinaryIO, Callable, Iterator

from unionfs.fsops import remove_tree
from unionfs.layer import whiteout as wh
from unionfs.layer.compression import open_decompressed
from unionfs.errors import LayerError

log = logging.getLogger(__name__)

Owner = tuple[int, int]


def makedirs(path: str, owner: Owner | None, mode: int = 0o755) -> None:
    """``mkdir -p`` where each directory created gets ``owner`` (root when None) and ``mode``."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        makedirs(parent, owner, mode)
    if os.path.lexists(path) and not os.path.isdir(path):
        os.unlink(path)
    os.mkdir(path, mode)
    uid, gid = owner if owner is not None else (0, 0)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if wh.is_private_xattr(name):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as e:
            log.debug("xattr %s not copied to %s: %s", name, dst, e.strerror)


def copy_entry(src: str, dst: str, *, owner: Owner | None, chmod: int | None,
               skip: Callable[[str], bool] | None = None, rel: str = "", follow: bool = True) -> int:
    """Copy ``src`` (followed when it is a symlink and ``follow``) to ``dst``; returns entries copied.

    ``skip(rel)`` (with ``rel`` the path below the source's own relative name ``rel``) leaves entries out.
    """
    st = os.stat(src) if follow else os.lstat(src)
    uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
    mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFDIR:
        created = not os.path.isdir(dst) or os.path.islink(dst)
        if created:
            if os.path.lexists(dst):
                remove_tree(dst)
            os.mkdir(dst, 0o700)
        count = 1
        for name in sorted(os.listdir(src)):
            crel = f"{rel}/{name}" if rel else name
            if skip and skip(crel):
                continue
            count += copy_entry(os.path.join(src, name), os.path.join(dst, name), owner=owner, chmod=chmod,
                                skip=skip, rel=crel, follow=False)
        if created:
            os.chown(dst, uid, gid)
            os.chmod(dst, mode)
            _copy_xattrs(src, dst)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        return count
    if fmt == stat.S_IFCHR and wh.is_whiteout_stat(st):
        log.warning("skipping whiteout %s", src)
        return 0
    if os.path.lexists(dst):
        remove_tree(dst)
    if fmt == stat.S_IFREG:
        with open(src, "rb") as fi:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
                os.fchown(fo.fileno(), uid, gid)
                os.fchmod(fo.fileno(), mode)
        _copy_xattrs(src, dst)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif fmt == stat.S_IFLNK:
        os.symlink(os.readlink(src), dst)
        os.chown(dst, uid, gid, follow_symlinks=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    elif fmt in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK):
        os.mknod(dst, fmt | mode, st.st_rdev)
        os.chown(dst, uid, gid)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        log.warning("skipping %s: sockets cannot be copied", src)
        return 0
    return 1


# ---------------------------------------------------------------------------
# ADD's archives
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _open_plain(path: str) -> Iterator[BinaryIO]:
    """The file's decompressed content (gzip, zstd, bzip2, xz or none)."""
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(0)
        if head.startswith(b"BZh"):
            with bz2.open(f, "rb") as d:
                yield d  # type: ignore[misc]
        elif head.startswith(b"\xfd7zXZ\x00"):
            with lzma.open(f, "rb") as d:
                yield d  # type: ignore[misc]
        else:
            yield open_decompressed(f, None)


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes of ``stream``, fewer only at its end (a decompressing reader may return short reads)."""
    data = b""
    while len(data) < n and (chunk := stream.read(n - len(data))):
        data += chunk
    return data


def is_archive(path: str) -> bool:
    """True when ``path`` is a regular file holding a tar archive (plain or compressed)."""
    if not os.path.isfile(path):
        return False
    try:
        with _open_plain(path) as f:
            block = _read_up_to(f, 512)
    except (OSError, LayerError, EOFError, lzma.LZMAError, ValueError):
        return False
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    try:  # a v7 tar: the header checksum (octal, over the header with its own field as blanks) must hold
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return stored in (unsigned, signed)


def unpack_archive(path: str, dest: str) -> None:
    """Unpack the tar archive ``path`` into the empty directory ``dest`` (safely; raises LayerError)."""
    from unionfs.layer.unpack import unpack_layer

    try:
        with _open_plain(path) as stream:
            unpack_layer(stream, dest, media_type=None)
    except OSError as e:  # opening, or bz2/lzma read errors
        raise LayerError(f"cannot unpack {os.path.basename(path)}: {e.strerror or e}") from None
    except (EOFError, lzma.LZMAError) as e:
        raise LayerError(f"cannot unpack {os.path.basename(path)}: {e}") from None


__all__ = ["copy_entry", "makedirs", "is_archive", "unpack_archive", "Owner"]
