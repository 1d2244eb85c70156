"""Owners, modes and device numbers that a store without root cannot give its files, kept in an xattr.

A process without CAP_CHOWN in the initial user namespace (a rootless store; a user namespace's root) cannot
chown a file to the owner its layer says, nor make a device node. It keeps what the file should show in the
``user.containers.override_stat`` xattr instead, the form containers/storage and fuse-overlayfs
(``xattr_permissions=2``) use::

    UID:GID:MODE[:TYPE]

``UID`` and ``GID`` in decimal, ``MODE`` in octal with a leading 0 (the permission bits, and the file type bits
where the type differs from the real file's: ``0:0:020666`` is a character device kept as a regular file),
and, for a device, ``TYPE`` ``char-MAJOR-MINOR`` or ``block-MAJOR-MINOR`` (fuse-overlayfs 1.15's extended form,
which also names ``file``, ``dir``, ``symlink``, ``pipe``, ``socket``). fuse-overlayfs' older name
``user.fuseoverlayfs.override_stat`` is read too.

Contracts:

* :func:`encode` and :func:`decode` round-trip; :func:`decode` raises :class:`ValueError` on anything else
  (a hostile value is never half applied).
* An override changes what a stat shows (owner, permission bits, device number) and, only for a real regular
  file, its type (a device, fifo or socket kept as a file): a directory stays a directory, a symlink a
  symlink, whatever the value says, so no code that walks the tree is misled.
* :class:`Owners` also shows the store's owner (the user who unpacked it) as ``0:0`` for entries with no
  override (symlinks and fifos, which cannot hold ``user.`` xattrs; files the layer gave to root).
* Layers never carry these xattrs in from a tar (:func:`unionfs.layer.whiteout.is_private_xattr`), and a mount
  neither shows nor lets a process set them.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from typing import NamedTuple

#: the xattr written (and read first)
XATTR = "user.containers.override_stat"
#: fuse-overlayfs' own name, read when :data:`XATTR` is absent
LEGACY_XATTR = "user.fuseoverlayfs.override_stat"
NAMES = (XATTR, LEGACY_XATTR)

_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "pipe": stat.S_IFIFO,
          "socket": stat.S_IFSOCK, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown(2): never an owner
#: the fields of a stat result beyond its ten sequence items (kept when an override makes a new one)
_EXTRA = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize",
          "st_blocks", "st_rdev")


def privileged() -> bool:
    """True when this process may give files any owner, make device nodes and set ``trusted.`` xattrs: root
    of the initial user namespace. Otherwise (a user; a user namespace's root) a store keeps overrides."""
    return os.geteuid() == 0 and initial_user_namespace()


@functools.cache
def uid_map() -> tuple[tuple[int, int, int], ...]:
    """This process' uid map, (inside, outside, count) lines; () when it cannot be read. Read once: a process
    that enters a user namespace of its own (:func:`unionfs.run.userns.enter`) clears the cache."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return tuple((int(a), int(b), int(c)) for a, b, c in (line.split() for line in f))
    except (OSError, ValueError):
        return ()


def initial_user_namespace() -> bool:
    """True when this process runs in the initial user namespace (its uid map is the whole identity map)."""
    m = uid_map()
    return not m or m == ((0, 0, 4294967295),)


def host_uid(uid: int) -> int:
    """The host's id of this process' user ``uid``: itself in the initial user namespace; in a user namespace
    (:mod:`unionfs.run.userns`: its root is the user who made it), what its uid map says (-1 when unmapped)."""
    m = uid_map()
    if not m:
        return uid
    return next((outside + uid - inside for inside, outside, count in m if inside <= uid < inside + count), -1)


class Override(NamedTuple):
    """What one entry shows: owner, mode (type bits 0: the real file's type) and device number."""

    uid: int
    gid: int
    mode: int
    rdev: int = 0


def needed(uid: int, gid: int, mode: int) -> bool:
    """True when an unprivileged unpack must keep an override for an entry the layer gives ``uid:gid`` and
    ``mode`` (full, with type): an owner other than root (root's entries show as the store's owner does, 0:0),
    or a device node (which it cannot make)."""
    return (uid, gid) != (0, 0) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def encode(uid: int, gid: int, mode: int, rdev: int = 0) -> bytes:
    """The xattr value for an entry shown as ``uid:gid`` with ``mode`` (full, with type) and, for a device,
    ``rdev``."""
    text = f"{uid}:{gid}:0{mode:o}"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char" if stat.S_ISCHR(mode) else "block"
        text += f":{kind}-{os.major(rdev)}-{os.minor(rdev)}"
    return text.encode()


def decode(value: bytes) -> Override:
    """Parse an xattr value (either form, see the module docstring); ValueError when it is not one."""
    fields = value.decode("ascii").strip("\0\n").split(":")
    if len(fields) not in (3, 4) or not all(fields[:3]):
        raise ValueError(f"override_stat {value[:64]!r}: expected UID:GID:MODE[:TYPE]")
    uid, gid, mode = int(fields[0], 10), int(fields[1], 10), int(fields[2], 8)
    if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID and 0 <= mode <= 0o177777):
        raise ValueError(f"override_stat {value[:64]!r}: out of range")
    rdev = 0
    if len(fields) == 4:
        kind, _, dev = fields[3].partition("-")
        if kind not in _TYPES:
            raise ValueError(f"override_stat {value[:64]!r}: unknown type {kind!r}")
        if stat.S_IFMT(mode) and stat.S_IFMT(mode) != _TYPES[kind]:
            raise ValueError(f"override_stat {value[:64]!r}: the mode's type and the type differ")
        mode = stat.S_IMODE(mode) | _TYPES[kind]
        if kind in ("char", "block"):
            major, _, minor = dev.partition("-")
            rdev = os.makedev(int(major, 10), int(minor, 10))
    return Override(uid, gid, mode, rdev)


def read(path: str) -> Override | None:
    """The override of the entry at host ``path`` (not followed): None when it has none, or none that parses,
    or cannot hold xattrs. One listxattr when it has none (most entries), then one getxattr."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
        name = next((n for n in NAMES if n in names), None)
        return None if name is None else decode(os.getxattr(path, name, follow_symlinks=False))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise
    except ValueError:
        return None


def apply(st: os.stat_result, ov: Override | None, uid: int = -1, gid: int = -1) -> os.stat_result:
    """``st`` as shown with override ``ov`` (None: owner ``uid``/``gid`` shown as 0:0, -1: no such owner).
    The type changes only for a real regular file (see the module docstring)."""
    if ov is None:
        if st.st_uid != uid and st.st_gid != gid:
            return st
        return _replace(st, st.st_mode, 0 if st.st_uid == uid else st.st_uid,
                        0 if st.st_gid == gid else st.st_gid, st.st_rdev)
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG and stat.S_IFMT(ov.mode):
        kind = stat.S_IFMT(ov.mode)
    rdev = ov.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else st.st_rdev
    return _replace(st, kind | stat.S_IMODE(ov.mode), ov.uid, ov.gid, rdev)


def _replace(st: os.stat_result, mode: int, uid: int, gid: int, rdev: int) -> os.stat_result:
    items = list(st)
    items[0], items[4], items[5] = mode, uid, gid
    extra = {f: getattr(st, f) for f in _EXTRA}
    extra["st_rdev"] = rdev
    return os.stat_result(items, extra)


class Owners:
    """How a union over a store's layers shows owners: every override (:func:`read`), and the store's owner
    ``uid:gid`` (-1: none) as 0:0 where there is no override. A union without an :class:`Owners` shows real
    owners (a store root unpacked)."""

    __slots__ = ("uid", "gid")

    def __init__(self, uid: int = -1, gid: int = -1) -> None:
        self.uid, self.gid = uid, gid

    def shown(self, st: os.stat_result, path: str) -> os.stat_result:
        """``st``, the lstat of the entry at host ``path``, as shown."""
        if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            ov = None  # only regular files and directories hold user. xattrs
        else:
            ov = read(path)
        return apply(st, ov, self.uid, self.gid)

    def __repr__(self) -> str:
        return f"Owners({self.uid}, {self.gid})"
