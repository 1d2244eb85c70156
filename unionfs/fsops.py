"""The C library, loaded once, with the prototype of every call unionfs makes through it.

Python's ``os`` module covers most system calls; the few it lacks (mount(2), umount2(2), pivot_root(2),
prctl(2), capset(2), renameat2(2), utimensat(2) on a symlink, futimens(2), fallocate(2), syncfs(2),
statfs(2)) go through :data:`libc`. Every module uses this one handle, so a prototype is declared once.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

#: mount(2) flags
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE, MS_SLAVE = 4096, 16384, 1 << 18, 1 << 19
#: umount2(2) flag: detach now, finish when no longer busy
MNT_DETACH = 2


class Timespec(ctypes.Structure):
    """``struct timespec`` (utimensat/futimens)."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


#: the C library of this process (its symbols are in the program's namespace: no library search needed)
libc: Any = ctypes.CDLL(None, use_errno=True)

_c_str, _int, _uint, _ulong, _long = ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_ulong, ctypes.c_long
for _name, _args in {
    "mount": [_c_str, _c_str, _c_str, _ulong, _c_str],
    "umount2": [_c_str, _int],
    "pivot_root": [_c_str, _c_str],
    "prctl": [_int, _ulong, _ulong, _ulong, _ulong],
    "renameat2": [_int, _c_str, _int, _c_str, _uint],
    "utimensat": [_int, _c_str, ctypes.POINTER(Timespec), _int],
    "futimens": [_int, ctypes.POINTER(Timespec)],
    "fallocate": [_int, _int, _long, _long],
    "syncfs": [_int],
    "statfs": [_c_str, ctypes.c_void_p],
}.items():
    getattr(libc, _name).argtypes = _args


def check(ret: int, what: str, path: str | None = None) -> None:
    """Raise OSError(errno) for a libc call that returned non-zero: ``what: strerror`` (with ``path``)."""
    if ret != 0:
        err = ctypes.get_errno()
        if path is None:
            raise OSError(err, f"{what}: {os.strerror(err)}")
        raise OSError(err, os.strerror(err), path)
