"""Where each mount daemon records itself, so that the daemon serving a mount can be found, waited for and
stopped (``umount``, ``ps``, ``prune``), and how a recorded process is checked and pinned.

A daemon writes one record once its mount is live (INIT answered) and removes it when it ends: the file
``RUN_DIR/PID-START`` (START: the process' start time in clock ticks since boot, from ``/proc/PID/stat``)
holding ``PID NUL START NUL BOOT NUL DEV NUL MOUNTPOINT`` (BOOT: the kernel's boot id; DEV: the mount's
device, ``MAJOR:MINOR`` as in the mount table). The record is written atomically
(:func:`unionfs.fsops.atomic_write`: a temporary dot-name, then a rename), so a killed writer leaves no half
record, only a dot-file that readers skip. It is not fsynced: it describes a process, which a crash ends
too (a record of an earlier boot is never trusted).

A record is trusted only while its process is alive (not a zombie), started at the recorded time, in this
boot: a pid that passed to another process does not match. :func:`unionfs.mount.daemon.daemon_pids` also
requires the mount table to hold a unionfs mount with the recorded device at the recorded mountpoint. The
record of a killed daemon stays until a reader sees that its process is gone and removes it; its name carries
the start time, so it can never be taken for the record of a live process.

``RUN_DIR`` is ``/run/unionfs/daemons`` for the host's root, else ``$XDG_RUNTIME_DIR/unionfs/daemons`` (or
``/tmp/unionfs-UID/daemons``, UID the host's id, also in a user namespace); a directory that is not ours alone (another owner, writable by others) is
neither read nor written.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import NamedTuple

from unionfs.layer import ownership

log = logging.getLogger(__name__)


class DaemonRecord(NamedTuple):
    """A daemon's record: its process (pid and start time), its mount's device and mountpoint."""

    pid: int
    start: int
    dev: str
    mountpoint: str

    @property
    def name(self) -> str:
        """The record's file name in :func:`run_dir`."""
        return f"{self.pid}-{self.start}"


def run_dir() -> str:
    """The directory of the daemons' records for this user (see the module's docstring)."""
    uid = ownership.host_uid(os.geteuid())
    if uid == 0:
        base = "/run/unionfs"
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = os.path.join(os.environ["XDG_RUNTIME_DIR"], "unionfs")
    else:
        base = f"/tmp/unionfs-{uid}"
    return os.path.join(base, "daemons")


def _private(path: str) -> bool:
    """True when ``path`` and its parent are directories (not symlinks) owned by us that nobody else may write
    (another user able to write the parent could swap ``path`` for a directory of theirs)."""
    for p in (path, os.path.dirname(path)):
        try:
            st = os.lstat(p)
        except OSError:
            return False
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022):
            return False
    return True


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``; empty when unreadable)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip().decode()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def write(mountpoint: str, dev: str) -> str:
    """Record this process as the daemon of the mount ``dev`` at ``mountpoint``; returns the record's path.

    OSError when the run directory cannot be made or is not private (see the module's docstring).
    """
    from unionfs.fsops import atomic_write  # here: the readers of records (umount, ps) need no C library

    pid = os.getpid()
    start = start_time(pid)
    if start is None:
        raise OSError(errno.ESRCH, "cannot read this process' start time")
    d = run_dir()
    if not _private(d):
        os.makedirs(d, mode=0o700, exist_ok=True)
        if not _private(d):
            raise OSError(errno.EPERM, f"{d} is not a private directory of this user")
    record = DaemonRecord(pid, start, dev, mountpoint)
    data = b"\0".join([str(pid).encode(), str(start).encode(), boot_id().encode(), dev.encode(),
                       os.fsencode(mountpoint)])
    path = os.path.join(d, record.name)
    atomic_write(path, data, 0o600, durable=False)
    return path


def remove(path: str) -> None:
    """Remove the record at ``path`` (written by :func:`write` in this process); gone already is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _read(path: str, boot: str) -> DaemonRecord | None:
    """The record at ``path`` if it was written in boot ``boot``; None when it is unreadable, malformed or of
    another boot."""
    try:
        with open(path, "rb") as f:
            pid, start, written_in, dev, mountpoint = f.read().split(b"\0", 4)
        if written_in.decode() != boot:
            return None
        return DaemonRecord(int(pid), int(start), dev.decode(), os.fsdecode(mountpoint))
    except (OSError, ValueError):
        return None


def _owner(name: str) -> tuple[int, int] | None:
    """(pid, start) from a record's file name ``PID-START`` (or a temporary ``.PID-START.XXXX``), or None."""
    pid, sep, start = name.lstrip(".").split(".", 1)[0].partition("-")
    if not (sep and pid.isdigit() and start.isdigit()):
        return None
    return int(pid), int(start)


def live() -> list[DaemonRecord]:
    """The records of this boot whose process is alive with its recorded start time. Records (and temporary
    files) of processes that are gone are removed on the way."""
    d = run_dir()
    if not _private(d):
        return []
    found = []
    boot = boot_id()
    for name in os.listdir(d):
        owner = _owner(name)
        if owner is None:
            continue
        if start_time(owner[0]) != owner[1]:
            try:  # its process has ended: no live process can have this name
                remove(os.path.join(d, name))
            except OSError as e:
                log.debug("cannot remove the stale record %s: %s", name, e)
            continue
        if name.startswith("."):
            continue  # being written
        record = _read(os.path.join(d, name), boot)
        if record is not None and (record.pid, record.start) == owner:
            found.append(record)
    return found


def pin(pid: int, start: int) -> int | None:
    """A pidfd of process ``pid`` if it is still the process that started at ``start`` (None when that has
    ended): signals sent and waits made through it can never reach another process."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if start_time(pid) != start:
        os.close(fd)
        return None
    return fd


def wait_ended(pidfd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process of ``pidfd`` to end (exited, a zombie or not);
    True when it has."""
    import select

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))
