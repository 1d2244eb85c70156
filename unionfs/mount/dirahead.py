"""Read-ahead across the files of a directory: when files of one directory are opened one after the other in
the order of their names (``cat *``, ``cat dir/f00 dir/f01 ...``, a tool walking a sorted listing), the next
ones are asked of the disk before they are opened, as the kernel reads ahead within one file read in order.

A pure policy: :meth:`DirAhead.opened` is told of each open for reading and answers which names to warm (the
daemon loop warms them while it has no request to answer: :mod:`unionfs.mount.server`). Contracts:

* Nothing is warmed until the directory's names are known (:meth:`DirAhead.listed`, the daemon lists them once
  the first open asks) and :data:`STREAK` opens in a row were each of the name right after the one before
  (names that are not opened, such as subdirectories, may lie between: up to :data:`SKIP`).
* Then the next :data:`WINDOW` names after the one opened, and again when the opens come within half a window
  of the end of what was warmed; each name once. An open out of order stops it until a new streak.
* At most :data:`DIRS` directories are followed (the least recently opened one is dropped).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

#: names warmed ahead of the last one opened
WINDOW = 32
#: opens in name order that start the read-ahead
STREAK = 3
#: names between two opens that still count as the next one (subdirectories, files not opened)
SKIP = 3
#: directories followed at once
DIRS = 64


class _Seq:
    """What is known of the opens in one directory."""

    __slots__ = ("names", "last", "streak", "ahead")

    def __init__(self) -> None:
        self.names: list[str] | None = None  # sorted, once listed
        self.last = ""  # the name opened last
        self.streak = 1  # opens in order so far, that one included
        self.ahead = 0  # names before this index are warmed (or were not wanted)


class DirAhead:
    """The read-ahead policy of one mount (see the module docstring); ``key``s name directories (the daemon's
    node ids)."""

    def __init__(self, window: int = WINDOW, streak: int = STREAK, dirs: int = DIRS) -> None:
        self.window, self.streak, self.dirs = window, streak, dirs
        self._seqs: OrderedDict[int, _Seq] = OrderedDict()

    def opened(self, key: int, name: str) -> tuple[bool, list[str]]:
        """Note that ``name`` of directory ``key`` was opened for reading. Returns (whether the directory's
        names are wanted: :meth:`listed` then, once; the names to warm now, in order)."""
        seqs = self._seqs
        seq = seqs.get(key)
        if seq is None:
            seq = seqs[key] = _Seq()
            seq.last = name
            if len(seqs) > self.dirs:
                seqs.popitem(last=False)
            return False, []
        seqs.move_to_end(key)
        names = seq.names
        if names is None:  # the listing is on its way: keep count by name order alone
            seq.streak = seq.streak + 1 if name > seq.last else 1
            seq.last = name
            return seq.streak == self.streak, []
        i = bisect.bisect_left(names, name)
        prev = bisect.bisect_left(names, seq.last)
        seq.streak = seq.streak + 1 if prev < i <= prev + 1 + SKIP else 1
        seq.last = name
        if seq.streak < self.streak or i >= len(names) or names[i] != name:
            return False, []
        start = max(seq.ahead, i + 1)
        if start - i > self.window // 2:  # still well ahead
            return False, []
        end = min(len(names), i + 1 + self.window)
        seq.ahead = end
        return False, names[start:end]

    def listed(self, key: int, names: list[str]) -> list[str]:
        """The names of directory ``key`` (any order) are known: keep them sorted. Returns the names to warm
        now (when the streak is on already)."""
        seq = self._seqs.get(key)
        if seq is None:
            return []
        seq.names = sorted(names)
        if seq.streak < self.streak:
            return []
        i = bisect.bisect_left(seq.names, seq.last)
        if i >= len(seq.names) or seq.names[i] != seq.last:
            return []
        end = min(len(seq.names), i + 1 + self.window)
        seq.ahead = end
        return seq.names[i + 1:end]

    def forget(self, key: int) -> None:
        """The directory ``key`` changed or is gone: its names are no longer known."""
        self._seqs.pop(key, None)
