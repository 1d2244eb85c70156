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
* Memory is bounded: at most :data:`DIRS` directories are followed (the least recently opened one is dropped),
  their names kept only while there is something left to warm, at most :data:`NAMES` of them in all; a
  directory of more than :data:`MAX_NAMES` names is not read ahead.
* Nothing is warmed after an open whose file was in memory already (the daemon tells, :meth:`DirAhead.opened`'s
  ``cold``): a directory read again while its files are still in memory costs no read-ahead.
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
DIRS = 256
#: names kept for all of them (each ~60-80 bytes)
NAMES = 50_000
#: a directory with more names is not read ahead
MAX_NAMES = 10_000


class _Seq:
    """What is known of the opens in one directory."""

    __slots__ = ("names", "last", "streak", "ahead", "cold")

    def __init__(self) -> None:
        self.names: list[str] | None = None  # sorted, once listed
        self.last = ""  # the name opened last
        self.streak = 1  # opens in order so far, that one included
        self.ahead = 0  # names before this index are warmed (or were not wanted)
        self.cold = True  # the last file opened was not in memory


class DirAhead:
    """The read-ahead policy of one mount (see the module docstring); ``key``s name directories (the daemon's
    node ids)."""

    def __init__(self, window: int = WINDOW, streak: int = STREAK, dirs: int = DIRS) -> None:
        self.window, self.streak, self.dirs = window, streak, dirs
        self._seqs: OrderedDict[int, _Seq] = OrderedDict()
        self._kept = 0  # names held by all of them

    def _set_names(self, seq: _Seq, names: list[str] | None) -> None:
        self._kept += len(names or ()) - len(seq.names or ())
        seq.names = names

    def opened(self, key: int, name: str, cold: bool = True) -> tuple[bool, list[str]]:
        """Note that ``name`` of directory ``key`` was opened for reading; ``cold``: its data was not in memory
        (a directory whose files are in memory already needs no read-ahead: nothing is warmed after such an
        open). Returns (whether the directory's names are wanted: :meth:`listed` then, once; the names to warm
        now, in order)."""
        seqs = self._seqs
        seq = seqs.get(key)
        if seq is None:
            seq = seqs[key] = _Seq()
            seq.last = name
            if len(seqs) > self.dirs:
                self._set_names(seqs.popitem(last=False)[1], None)
            return False, []
        seqs.move_to_end(key)
        seq.cold = cold
        names = seq.names
        if names is None:  # the listing is on its way: keep count by name order alone
            seq.streak = seq.streak + 1 if name > seq.last else 1
            seq.last = name
            return seq.streak == self.streak, []
        i = bisect.bisect_left(names, name)
        prev = bisect.bisect_left(names, seq.last)
        seq.streak = seq.streak + 1 if prev < i <= prev + 1 + SKIP else 1
        seq.last = name
        if max(seq.ahead, i + 1) - i > self.window // 2:  # still well ahead
            return False, []
        return False, self._next(key, seq, i)

    def listed(self, key: int, names: list[str]) -> list[str]:
        """The names of directory ``key`` (any order) are known: keep them sorted. Returns the names to warm
        now (when the streak is on already)."""
        seq = self._seqs.get(key)
        if seq is None:
            return []
        self._set_names(seq, sorted(names) if len(names) <= MAX_NAMES else [])
        for other in list(self._seqs):  # the least recently opened go first
            if self._kept <= NAMES:
                break
            if other != key:
                self._set_names(self._seqs.pop(other), None)
        return self._next(key, seq, bisect.bisect_left(seq.names, seq.last))  # type: ignore[arg-type]

    def _next(self, key: int, seq: _Seq, i: int) -> list[str]:
        """The names to warm after the one at index ``i`` of the names of directory ``key`` (the last opened),
        if the streak is on: up to a window past it, from where the last warm-up stopped. A directory warmed
        to its end is forgotten: the next streak in it starts afresh (its files may have left memory by then)."""
        names: list[str] = seq.names  # type: ignore[assignment]
        if not seq.cold or seq.streak < self.streak or i >= len(names) or names[i] != seq.last:
            return []
        end = min(len(names), i + 1 + self.window)
        out = names[max(seq.ahead, i + 1):end]
        seq.ahead = end
        if end == len(names):
            self.forget(key)
        return out

    def forget(self, key: int) -> None:
        """The directory ``key`` changed or is gone: its names are no longer known."""
        seq = self._seqs.pop(key, None)
        if seq is not None:
            self._set_names(seq, None)
