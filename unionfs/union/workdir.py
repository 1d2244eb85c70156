"""Who owns a work directory, and whether its upper can be trusted after the last mount.

A writable mount claims its work directory for as long as the daemon lives (:func:`claim`):

- **in use**: an exclusive ``flock`` on ``WORK/unionfs/lock``. A second mount of the same upper/work pair
  fails with a one-line :class:`MountError` instead of two daemons writing one upper (the kernel overlayfs
  refuses an upper or work directory in use the same way). The lock goes with the daemon's process, also
  when it is killed; a new mount waits :data:`LOCK_WAIT` seconds for it (the daemon of a mount just
  unmounted may still be ending).
- **volatile**: a ``-o volatile`` mount skips every sync to the upper (copy-ups are not fsynced, fsync and
  syncfs return at once), as the kernel's ``volatile`` option does. It writes the kernel's marker
  ``WORK/work/incompat/volatile/dirty`` (durably) before the first write, so that after a crash or a killed
  daemon both unionfs and the kernel overlayfs refuse to mount the upper, whose content may be torn. Unlike
  the kernel, a volatile mount that ends by unmounting syncs the upper's filesystem and removes the marker:
  the upper is then as good as after a normal mount.

A mount of either kind refuses a work directory that still holds the marker. Removing the marker by hand
(``rm -r WORK/work/incompat/volatile``) is the user's statement that the upper is intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

from unionfs.errors import MountError, UnionfsError
from unionfs.fsops import check, fsync_dir, libc, remove_tree

log = logging.getLogger(__name__)

#: seconds a mount waits for the work directory: the daemon of a mount just unmounted may still be ending
#: (a volatile one syncs the upper first)
LOCK_WAIT = 5.0


def marker(work: str) -> str:
    """The kernel overlayfs' volatile marker directory under ``work``."""
    return os.path.join(work, "work", "incompat", "volatile")


def syncfs(path: str) -> None:
    """Flush the whole filesystem holding ``path`` to stable storage (syncfs(2)); OSError when it fails."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check(libc.syncfs(fd), "syncfs", path)
    finally:
        os.close(fd)


class WorkClaim:
    """A live mount's hold on its work directory; :meth:`release` at a clean end."""

    def __init__(self, work: str, upper: str, lock_fd: int, volatile: bool) -> None:
        self.work, self.upper, self.volatile = work, upper, volatile
        self._fd: int | None = lock_fd

    def release(self) -> None:
        """The mount ended by unmounting: a volatile mount syncs the upper's filesystem and drops its marker
        (kept when the sync fails: the upper may then be torn). The lock is let go in every case."""
        try:
            if self.volatile:
                try:
                    syncfs(self.upper)
                except OSError as e:
                    log.error("syncing the upper %s failed (%s): keeping the volatile marker", self.upper, e)
                else:
                    with contextlib.suppress(OSError, UnionfsError):
                        remove_tree(marker(self.work))
                    fsync_dir(os.path.dirname(marker(self.work)))
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def claim(work: str, upper: str, *, volatile: bool) -> WorkClaim:
    """Take ``work`` for one mount of ``upper`` (see the module docstring); MountError when it is in use or a
    volatile mount did not end cleanly. ``volatile``: write the marker (and sync it) before returning."""
    base = os.path.join(work, "unionfs")
    os.makedirs(base, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(base, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise MountError(f"work directory {work} is in use by another mount") from None
            time.sleep(0.05)
    try:
        mark = marker(work)
        if os.path.lexists(mark):
            raise MountError(f"work directory {work} was left by a volatile mount that did not unmount cleanly: "
                             f"upper {upper} may have lost writes (remove {mark} to mount it anyway)")
        if volatile:
            os.makedirs(mark, mode=0o700)
            os.close(os.open(os.path.join(mark, "dirty"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            for d in (mark, os.path.dirname(mark), os.path.dirname(os.path.dirname(mark)), work):
                fsync_dir(d)
    except BaseException:
        os.close(fd)
        raise
    return WorkClaim(work, upper, fd, volatile)


__all__ = ["WorkClaim", "claim", "marker", "syncfs"]
