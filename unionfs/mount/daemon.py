"""The mount daemon's life cycle, from the mounting side: check a plan, start the daemon in the background
(:mod:`unionfs.mount.process`: forked from this process) and wait until the mount is live, end it, list live
mounts and find, wait for and stop their daemons.

Each daemon records itself once its mount is live (:mod:`unionfs.mount.pidfile`): :func:`daemon_pids` finds
it from the record, checked against the live process and the mount table. Unmounting by ``umount``,
``fusermount3 -u`` or :func:`umount` ends the daemon; :func:`umount` waits for that through a pidfd.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

from unionfs import mountinfo
from unionfs.errors import MountError
from unionfs.mount import pidfile, process
from unionfs.mount.process import FSTYPE

if TYPE_CHECKING:
    from unionfs.mount.process import Early
    from unionfs.union.plan import MountPlan

log = logging.getLogger(__name__)

#: seconds ``umount`` waits for the daemon to end after the unmount
STOP_TIMEOUT = 60.0
#: ... but first only this long: a daemon still running then is looked for a copy of its mount in another mount
#: namespace, which keeps it alive for as long as that copy lives (``umount`` then returns, as umount(8) does)
HELD_CHECK = 0.5
#: seconds a mount (without a daemon process we know) gets to answer ``statfs`` before it counts as hung
PROBE_TIMEOUT = 2.0

#: a mount's state (:func:`mount_state`): served, its daemon gone (the kernel answers ENOTCONN), no answer
LIVE, DEAD, HUNG = "live", "dead", "hung"


class LiveMount(NamedTuple):
    """One live mount of type fuse.unionfs."""

    source: str
    mountpoint: str
    options: tuple[str, ...]

    @property
    def name(self) -> str | None:
        """The container name encoded in the source (``unionfs:NAME``), if any."""
        return self.source.split(":", 1)[1] if ":" in self.source else None


def live_mounts() -> list[LiveMount]:
    """The unionfs mounts currently live, from the mount table."""
    return [LiveMount(m.source, m.mountpoint, m.options) for m in mountinfo.mounts() if m.fstype == FSTYPE]


def is_mounted(mountpoint: str) -> bool:
    """True when ``mountpoint`` is a live unionfs mount."""
    mp = os.path.realpath(mountpoint)
    return any(m.mountpoint == mp for m in live_mounts())


def mount_state(mountpoint: str, daemons: dict[str, int] | None = None, timeout: float = PROBE_TIMEOUT) -> str:
    """LIVE, DEAD or HUNG for the FUSE mount at ``mountpoint`` (realpath'd as in the mount table).

    LIVE at once when a recorded daemon serves it (``daemons``: :func:`daemon_pids`, looked up when None),
    without touching the mount. Otherwise (no live record: its daemon was killed, or could not record itself)
    the mount is asked ``statfs``, which
    always reaches the daemon (no cache answers it): ENOTCONN means the FUSE connection is gone (DEAD); no
    answer within ``timeout`` seconds is HUNG (the probing thread is left blocked, never the caller).
    """
    if daemons is None:
        daemons = daemon_pids()
    if mountpoint in daemons:
        return LIVE
    import threading

    result: list[str] = []

    def probe() -> None:
        try:
            os.statvfs(mountpoint)
            result.append(LIVE)
        except OSError as e:
            result.append(DEAD if e.errno == errno.ENOTCONN else LIVE)

    t = threading.Thread(target=probe, name="unionfs-probe", daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else HUNG


def check_plan(plan: MountPlan, mountpoint: str, *, userxattr: bool = False) -> None:
    """Raise a one-line MountError for what would make the mount fail (before starting a daemon); ``userxattr``:
    the daemon will write ``user.`` xattrs whatever the process may do (``-o userxattr``)."""
    check_fuse_device()
    if any(m.mountpoint == os.path.realpath(mountpoint) for m in live_mounts()) and \
            mount_state(os.path.realpath(mountpoint)) == DEAD:
        raise MountError(f"mountpoint {mountpoint} holds a dead unionfs mount (its daemon is gone): "
                         f"`unionfs umount {mountpoint}` first")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist or is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy (something is already mounted there)")
    for d in plan.lowers:
        if not os.path.isdir(d):
            raise MountError(f"lower directory {d} does not exist")
    if plan.upper is not None and plan.work is not None:
        for what, d in (("upper", plan.upper), ("work", plan.work)):
            if not os.path.isdir(d):
                raise MountError(f"{what} directory {d} does not exist")
        up, wk = os.path.realpath(plan.upper), os.path.realpath(plan.work)
        if os.stat(up).st_dev != os.stat(wk).st_dev:
            raise MountError(f"upper {plan.upper} and work {plan.work} must be on the same filesystem")
        if up == wk or (up + "/").startswith(wk + "/") or (wk + "/").startswith(up + "/"):
            raise MountError("upper and work directories must not contain each other")
        mp = os.path.realpath(mountpoint)
        for d in (up, wk):
            if (d + "/").startswith(mp + "/"):
                raise MountError(f"{d} is inside the mountpoint {mountpoint}")
        from unionfs.layer import whiteout as wh

        _check_xattrs(plan.work, wh.USER if userxattr else wh.xattr_namespace())


def check_fuse_device(device: str = "/dev/fuse") -> None:
    """MountError saying how to fix it when this process cannot mount because ``/dev/fuse`` is missing or not
    open to it (a user other than root, whose fusermount3 opens it with the user's rights; or the root of a user
    namespace, such as rootless podman's mount program, for whom the host's root owns it)."""
    if not os.path.exists(device):
        raise MountError(f"{device} does not exist: load the fuse module (`modprobe fuse`), or in a container "
                         f"pass the device in (`--device {device}`)")
    if not os.access(device, os.R_OK | os.W_OK):
        st = os.stat(device)
        raise MountError(f"{device} is not open to you (mode {stat.S_IMODE(st.st_mode):04o}, group "
                         f"{_group_name(st.st_gid)}): give it the usual mode 0666 (`chmod 0666 {device}`, as root), "
                         f"join its group, or mount as root")


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _check_xattrs(work: str, ns: str) -> None:
    """MountError when an xattr of the namespace ``ns`` cannot be set in the work directory ``work``."""
    probe = os.path.join(work, f".unionfs-xattr-probe.{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise MountError(f"cannot write in work directory {work}: {e.strerror}") from None
    try:
        os.setxattr(fd, ns + "overlay.unionfs.probe", b"y")
    except OSError as e:
        raise MountError(f"the upper filesystem at {work} does not support {ns}* xattrs ({e.strerror})") from None
    finally:
        os.close(fd)
        os.unlink(probe)


def mount(plan: MountPlan, mountpoint: str, *, options: list[str] | None = None, foreground: bool = False,
          early: Early | None = None, meanwhile: Callable[[], None] | None = None) -> None:
    """Mount ``plan`` at ``mountpoint``; return once the mount is live (``foreground``: serve until unmounted).
    ``early``: a daemon forked ahead (:func:`unionfs.mount.process.fork_early`) that takes this mount (else
    one is forked now).
    ``meanwhile`` runs once the plan is checked and the daemon has the mount, while it mounts (a forked or
    spawned daemon; before serving in the foreground): what it does is done also when the mount then fails.

    Raises MountError with a one-line message when the mount cannot be made, UsageError for an option no mount
    takes (:func:`unionfs.mount.process.check_options`).
    """
    options = list(options or [])
    process.check_options(options)
    mountpoint = os.path.abspath(mountpoint)
    check_plan(plan, mountpoint, userxattr=bool(process.fuse_options(plan, options).get("userxattr")))
    spec = {"lowers": [os.path.abspath(p) for p in plan.lowers],
            "upper": os.path.abspath(plan.upper) if plan.upper else None,
            "work": os.path.abspath(plan.work) if plan.work else None,
            "name": plan.name, "mountpoint": mountpoint, "options": options}
    if foreground:
        if meanwhile is not None:
            meanwhile()
        process.serve(spec, None)
        return
    if early is None:
        early = process.fork_early()
    if early is None:
        process.spawn(spec, meanwhile)
    else:
        early.start(spec, meanwhile)


def umount(mountpoint: str, *, lazy: bool = False) -> bool:
    """End the unionfs mount at ``mountpoint`` (the daemon then exits). MountError when that fails.

    A busy live mount is left alone (MountError saying to close the files or use ``lazy``). A dead mount
    (its daemon gone: nothing can be lost) that is busy is detached lazily; returns True when that happened
    (processes holding files there get ENOTCONN until they close them), False otherwise. Without ``lazy``,
    returns once the daemon has ended (the last words of a volatile mount, the sync of its upper, included),
    unless another mount namespace still holds a copy of the mount: then at once, as umount(8) (the daemon ends
    with that copy).
    """
    mp = os.path.realpath(mountpoint)
    if not is_mounted(mp):
        raise MountError(f"{mountpoint} is not a unionfs mount")
    records = {} if lazy else _daemon_records()  # a lazy unmount waits for no daemon
    daemon = None if mp not in records else pidfile.pin(records[mp].pid, records[mp].start)
    mount = mountinfo.mount_at(mp)
    try:
        return _unmount(mountpoint, mp, lazy, {p: r.pid for p, r in records.items()}, daemon,
                        mount.dev if mount is not None else "")
    finally:
        if daemon is not None:
            os.close(daemon)


def _unmount(mountpoint: str, mp: str, lazy: bool, daemons: dict[str, int], daemon: int | None,
             dev: str = "") -> bool:
    """:func:`umount` once the daemon is known: ``daemon`` a pidfd of it (None: nothing to wait for), ``dev``
    the mount's device ("MAJOR:MINOR")."""
    code, stderr = _unmount_cmd(mp, lazy)
    if code != 0:
        detail = _last_line(stderr)
        busy = "busy" in detail.lower()
        if busy and not lazy and mount_state(mp, daemons) == DEAD:
            log.info("%s: dead mount busy, detaching it lazily", mp)
            code, stderr = _unmount_cmd(mp, True)
            if code == 0:
                _wait_unmounted(mp)
                return True
            detail = _last_line(stderr)
        if busy:
            raise MountError(f"{mountpoint} is busy (a process has a file or its working directory there): "
                             f"close them, or detach it now with `unionfs umount --lazy {mountpoint}`")
        raise MountError(f"cannot unmount {mountpoint}: {detail}")
    _wait_unmounted(mp)
    if daemon is None or pidfile.wait_ended(daemon, HELD_CHECK):
        return False
    holder = mountinfo.held_elsewhere(dev) if dev else None
    if holder is not None:  # as umount(8): the filesystem, and its daemon, live on while that copy does
        log.info("%s is still mounted in another mount namespace (process %d): its daemon ends with that mount",
                 mp, holder)
    elif not pidfile.wait_ended(daemon, STOP_TIMEOUT):
        log.warning("the daemon of %s is still running %.0f s after its unmount", mp, STOP_TIMEOUT)
    return False


def umount_busy(mountpoint: str) -> None:
    """Unmount the unionfs mount at ``mountpoint`` (none there: nothing to do), retrying for 5 s while it is
    busy, then lazily as the last resort (the mount of a container or build step whose processes may linger)."""
    for _ in range(50):
        if not is_mounted(mountpoint):
            return
        try:
            umount(mountpoint)
            return
        except MountError as e:
            log.debug("unmount %s: %s", mountpoint, e)
            time.sleep(0.1)
    if is_mounted(mountpoint):
        log.warning("%s stays busy: detaching it lazily", mountpoint)
        umount(mountpoint, lazy=True)


def detach_orphan(mount: mountinfo.Mount) -> bool:
    """Detach lazily a unionfs mount whose owner was killed and stop its daemon; False (nothing done) for a
    mount of another type. This is ``Store.prune``'s ``detach``. MountError when the unmount fails."""
    if mount.fstype != FSTYPE:
        return False
    record = _daemon_records().get(mount.mountpoint)
    daemon = pidfile.pin(record.pid, record.start) if record is not None else None
    try:
        umount(mount.mountpoint, lazy=True)
        if daemon is not None:
            _stop(daemon)
    finally:
        if daemon is not None:
            os.close(daemon)
    return True


def _unmount_cmd(mp: str, lazy: bool) -> tuple[int, str]:
    """Unmount ``mp`` with ``fusermount3 -u`` (``-z``: lazily), else umount(8): its exit status and stderr."""
    tool = _which("fusermount3") or _which("fusermount")
    if tool:
        return _run_tool([tool, "-u"] + (["-z"] if lazy else []) + [mp])
    return _run_tool(["umount"] + (["-l"] if lazy else []) + [mp])


def _run_tool(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` (looked up on $PATH; standard input and output on /dev/null): its exit status and what it
    wrote on standard error. ``os.posix_spawnp``: ``umount`` then starts without importing subprocess."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, w, 2)])
    except OSError as e:
        os.close(r)
        raise MountError(f"cannot run {argv[0]}: {e.strerror}") from None
    finally:
        os.close(w)
    with open(r, "rb") as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err.decode(errors="replace")


def _which(name: str) -> str | None:
    """The executable ``name`` on ``$PATH`` (``shutil.which`` without importing shutil), or None."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _last_line(stderr: str) -> str:
    """What a failed unmount command said last (its reason)."""
    return (stderr.strip().splitlines() or ["failed"])[-1]


def _wait_unmounted(mp: str) -> None:
    for _ in range(100):
        if not is_mounted(mp):
            break
        time.sleep(0.05)


def _daemon_records() -> dict[str, pidfile.DaemonRecord]:
    """The daemons alive now by the mountpoint they serve: a record (:mod:`unionfs.mount.pidfile`) whose
    process lives with its recorded start time, and whose mount is in the mount table as recorded (a unionfs
    mount with the recorded device at the recorded mountpoint)."""
    records = pidfile.live()
    if not records:
        return {}
    table = {(m.mountpoint, m.dev) for m in mountinfo.mounts() if m.fstype == FSTYPE}
    return {r.mountpoint: r for r in records if (r.mountpoint, r.dev) in table}


def daemon_pids() -> dict[str, int]:
    """The daemons alive now (in the background or the foreground), by the mountpoint they serve (see
    :func:`_daemon_records`; zombies are not alive)."""
    return {mp: r.pid for mp, r in _daemon_records().items()}


def daemon_pid(mountpoint: str) -> int | None:
    """The pid of the daemon serving ``mountpoint`` (None when there is none)."""
    return daemon_pids().get(os.path.realpath(mountpoint))


def _stop(daemon: int, grace: float = 10.0) -> None:
    """End the daemon of pidfd ``daemon`` whose mount is already detached: wait ``grace`` seconds for it, then
    SIGTERM it, then SIGKILL it (each given ``grace`` seconds)."""
    import signal

    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                signal.pidfd_send_signal(daemon, sig)
            except ProcessLookupError:
                return
        if pidfile.wait_ended(daemon, grace):
            return
