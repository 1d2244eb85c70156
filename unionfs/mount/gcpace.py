"""How a quick command runs: the pace of Python's cyclic garbage collector while it starts, and its end.

Such a command (``unionfs mount``, ``umount``, ``mount.fuse.unionfs``, ``pull``, ``push``) and the daemon a
mount forks spend most of their time importing: tens of thousands of new objects (modules, classes, functions),
none of them garbage, which the collector's default pace (a pass over the young objects every 700 new ones, and
over more of them every tenth pass) scans again and again, about a tenth of the start-up. :func:`collect_rarely`
makes the passes rare, :func:`collect_as_usual` restores the pace the process had; a daemon restores it once
its mount is live (:func:`unionfs.mount.process.serve`). Cycles are still collected meanwhile, only less often.
:func:`exit_now` ends such a command without the interpreter's shutdown. Imports nothing but :mod:`gc` (and
:mod:`typing`, which the CLI has loaded before it), so that it can be set before the command's imports."""

from __future__ import annotations

import gc
from typing import NoReturn

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


def exit_now(rc: int) -> NoReturn:
    """End the process with status ``rc`` after flushing standard output, standard error and the log handlers,
    without the interpreter's shutdown (tearing down every loaded module takes longer than the mount itself).
    For the commands whose start is most of their time (``unionfs mount``, ``umount``, ``mount.fuse.unionfs``,
    ``pull``, ``push``): only a process that runs no other thread that must finish and leaves nothing to
    ``atexit`` or finalizers."""
    import logging  # loaded by then, as os and sys are: this module is imported before them
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            rc = rc or 120  # output lost: the status Python's own shutdown gives then
    logging.shutdown()
    os._exit(rc)
