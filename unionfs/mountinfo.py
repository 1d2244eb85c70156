"""The mount table of this process (``/proc/self/mountinfo``), parsed once per call (pure parsing + one read).

Paths in the table escape space, tab, newline and backslash as ``\\NNN`` octal; ``mounts()`` undoes that.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

#: an escaped character (compiled on first use, by :mod:`re`'s cache: few mount tables have one)
_OCTAL = r"\\([0-7]{3})"


class Mount(NamedTuple):
    """One mount: where, what type, from which source, with which options (per-mount then superblock).
    A named tuple, not a dataclass: ``umount`` and ``ps`` read the table without loading :mod:`dataclasses`."""

    mountpoint: str
    fstype: str
    source: str
    options: tuple[str, ...]
    #: the filesystem's device, "MAJOR:MINOR" (also its backing-device name under /sys/class/bdi)
    dev: str = ""
    #: the mount's id (unique while it exists)
    mount_id: int = 0


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes in a mount-table field."""
    if "\\" not in field:
        return field
    return re.sub(_OCTAL, lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    """Parse mountinfo text (see proc(5)); malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        options = tuple(fields[5].split(",")) + (tuple(tail[2].split(",")) if len(tail) > 2 else ())
        out.append(Mount(unescape(fields[4]), tail[0], unescape(tail[1]), options, fields[2], int(fields[0])))
    return out


def mounts() -> list[Mount]:
    """The current mounts, in mount order (later entries stack over earlier ones); [] if unreadable."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return parse(f.read())
    except OSError:
        return []


def mount_at(path: str) -> Mount | None:
    """The topmost mount exactly at ``path`` (symlinks resolved), or None."""
    target = os.path.realpath(path)
    found = None
    for m in mounts():
        if m.mountpoint == target:
            found = m
    return found


def held_elsewhere(dev: str) -> int | None:
    """A process in another mount namespace than this one whose mount table holds a mount of the filesystem
    ``dev`` ("MAJOR:MINOR"), or None: such a copy keeps the filesystem (and a FUSE daemon) alive after it is
    unmounted here. Each namespace's table is read once; processes that cannot be read are skipped."""
    try:
        seen = {os.readlink("/proc/self/ns/mnt")}
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{name}/ns/mnt")
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{name}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            continue
        if any(m.dev == dev for m in parse(text)):
            return int(name)
    return None
