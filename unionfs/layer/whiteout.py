"""Whiteouts and opaque directories: every format we read, the kernel's format we write.

Formats recognised (docs/design.md, "On-disk format": one on-disk format, the kernel's):

* a character device 0/0 named NAME hides NAME in lower layers (the kernel's format; what we write);
* a zero-size regular file carrying the xattr ``trusted.overlay.whiteout`` or ``user.overlay.whiteout``
  (the kernel's "xattr whiteouts", used where mknod is not allowed);
* a file named ``.wh.NAME`` (the OCI/AUFS tar format) hides NAME;
* a directory is opaque when it carries ``trusted.overlay.opaque`` or ``user.overlay.opaque`` = ``y``
  (``x`` marks a directory that merely *contains* xattr whiteouts and is not opaque), or when it contains
  an entry named ``.wh..wh..opq``.

The pure functions classify names and stats; the small I/O helpers create and read the markers.
No visible name ever starts with ``.wh.``: callers use ``is_hidden_name`` to drop them from listings.
"""

from __future__ import annotations

import errno
import os
import stat

from unionfs.layer import ownership, placeholder

WH_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

TRUSTED = "trusted."
USER = "user."
OVERLAY_PREFIXES = (TRUSTED + "overlay.", USER + "overlay.")
OPAQUE_XATTRS = (TRUSTED + "overlay.opaque", USER + "overlay.opaque")
WHITEOUT_XATTRS = (TRUSTED + "overlay.whiteout", USER + "overlay.whiteout")


#: the namespace :func:`use_namespace` chose for this process (empty: decided by what the process may do)
_CHOSEN: list[str] = []


def xattr_namespace() -> str:
    """The namespace of the overlay xattrs this process writes: ``trusted.`` when it may set trusted xattrs
    (root of the initial user namespace: the kernel wants CAP_SYS_ADMIN there), ``user.`` otherwise, as the
    kernel's ``userxattr`` (a user namespace's root, such as a rootless podman's mount program, may not set
    them); unless :func:`use_namespace` chose one (``-o userxattr``)."""
    if _CHOSEN:
        return _CHOSEN[0]
    return TRUSTED if ownership.privileged() else USER


def use_namespace(ns: str) -> None:
    """Make :data:`USER` or :data:`TRUSTED` this process' namespace for what it writes from now on (a mount
    daemon's ``-o userxattr``)."""
    if ns not in (TRUSTED, USER):
        raise ValueError(f"not an overlay xattr namespace: {ns!r}")
    _CHOSEN[:] = [ns]


def opaque_xattr() -> str:
    """The opaque xattr name we write."""
    return xattr_namespace() + "overlay.opaque"


def is_private_xattr(name: str) -> bool:
    """True for the overlay's own xattrs, which are never shown through a mount nor copied up, and for the
    owners a rootless store keeps (:mod:`unionfs.layer.ownership`: never shown, never taken from a layer's tar,
    copied up with their file), and for the marks of a lazy layer (:mod:`unionfs.layer.placeholder`)."""
    return name.startswith(OVERLAY_PREFIXES) or name in ownership.NAMES or name in placeholder.NAMES


# ---------------------------------------------------------------------------
# pure rules
# ---------------------------------------------------------------------------

def is_hidden_name(name: str | bytes) -> bool:
    """True for names never shown in a listing (anything starting with ``.wh.``)."""
    if isinstance(name, bytes):
        return name.startswith(b".wh.")
    return name.startswith(WH_PREFIX)


def whiteout_target(name: str) -> str | None:
    """For ``.wh.NAME`` return NAME; None when ``name`` is not a whiteout name or is the opaque marker.

    Raises ValueError for names no valid layer holds: a bare ``.wh.``, or a target of ``.``/``..`` or
    containing ``/``.
    """
    if not name.startswith(WH_PREFIX) or name == OPAQUE_MARKER:
        return None
    target = name[len(WH_PREFIX):]
    if target in ("", ".", "..") or "/" in target:
        raise ValueError(f"invalid whiteout name {name!r}")
    return target


def is_whiteout_stat(st: os.stat_result) -> bool:
    """True when ``st`` describes the kernel's whiteout: a character device 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# ---------------------------------------------------------------------------
# small I/O helpers (paths are trusted: our own layer and upper directories)
# ---------------------------------------------------------------------------

def _getxattr(path: str | bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT, errno.E2BIG):
            return None
        raise


def may_be_whiteout(st: os.stat_result) -> bool:
    """Whether an entry with lstat ``st`` may be a whiteout: the kernel's char 0/0, or an empty regular file
    (which is one when it carries a whiteout xattr). Every other entry is known not to be one without a system
    call, so a caller may skip computing the path :func:`is_whiteout` needs."""
    return is_whiteout_stat(st) or (stat.S_ISREG(st.st_mode) and st.st_size == 0)


def is_whiteout(path: str | bytes, st: os.stat_result | None = None) -> bool:
    """True when the entry at ``path`` (not followed) is a whiteout in the device or xattr format."""
    if st is None:
        st = os.lstat(path)
    if is_whiteout_stat(st):
        return True
    if may_be_whiteout(st):
        return any(_getxattr(path, x) is not None for x in WHITEOUT_XATTRS)
    return False


def is_opaque_dir(path: str | bytes) -> bool:
    """True when the directory at ``path`` is opaque (xattr ``y`` or an ``.wh..wh..opq`` entry)."""
    for x in OPAQUE_XATTRS:
        if _getxattr(path, x) == b"y":
            return True
    marker = os.path.join(path, OPAQUE_MARKER.encode() if isinstance(path, bytes) else OPAQUE_MARKER)
    return os.path.lexists(marker)


def make_whiteout_at(dir_fd: int, name: str | bytes) -> None:
    """Create a whiteout called ``name`` in the directory open at ``dir_fd``.

    Writes the kernel's char 0/0 device; where mknod is not permitted (unprivileged), an empty file with
    the ``user.overlay.whiteout`` xattr instead. The name must not exist.
    """
    try:
        os.mknod(name, 0o600 | stat.S_IFCHR, os.makedev(0, 0), dir_fd=dir_fd)
        return
    except PermissionError:
        pass
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.setxattr(fd, USER + "overlay.whiteout", b"y")
    finally:
        os.close(fd)


def set_opaque(path: str | bytes) -> None:
    """Mark the directory at ``path`` opaque with the xattr of our namespace."""
    os.setxattr(path, opaque_xattr(), b"y", follow_symlinks=False)


def clear_opaque(path: str | bytes) -> None:
    """Remove every opaque xattr from the directory at ``path`` (absent ones are fine)."""
    for x in OPAQUE_XATTRS:
        try:
            os.removexattr(path, x, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
