"""The pace of Python's cyclic garbage collector while a quick command starts.

Such a command (``unionfs mount``, ``umount``, ``mount.fuse.unionfs``, ``pull``, ``push``) and the daemon a
mount forks spend most of their time importing: tens of thousands of new objects (modules, classes, functions),
none of them garbage, which the collector's default pace (a pass over the young objects every 700 new ones, and
over more of them every tenth pass) scans again and again, about a tenth of the start-up. :func:`collect_rarely`
makes the passes rare, :func:`collect_as_usual` restores the pace the process had; a daemon restores it once
its mount is live (:func:`unionfs.mount.process.serve`). Cycles are still collected meanwhile, only less often.
Imports nothing but :mod:`gc`, so that it can be set before the command's imports."""

from __future__ import annotations

import gc

#: the young objects between two collector passes while a command starts (Python's default is 700)
START_THRESHOLD = 100_000

_saved: tuple[int, int, int] | None = None


def collect_rarely() -> None:
    """Let the collector run rarely (every :data:`START_THRESHOLD` new objects) until
    :func:`collect_as_usual`."""
    global _saved
    if _saved is None:
        _saved = gc.get_threshold()
        gc.set_threshold(START_THRESHOLD, *_saved[1:])


def collect_as_usual() -> None:
    """Restore the collector's pace from before :func:`collect_rarely` (nothing to do when it was not
    called: a daemon spawned as ``python -m unionfs.mount.process`` or a test's).

    The objects made until then are frozen first (:func:`gc.freeze`): a daemon's start-up objects (modules,
    classes, functions) live as long as it does, and no pass need scan them again; without that, the first
    pass after the restore scans them all (~4 ms here), which is why a daemon restores the pace only once it
    has told its command that the mount is live."""
    global _saved
    if _saved is not None:
        gc.freeze()
        gc.set_threshold(*_saved)
        _saved = None
