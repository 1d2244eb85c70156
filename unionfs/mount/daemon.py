"""The mount daemon's life cycle: check a plan, start the FUSE daemon in the background, wait until the mount
is live, end it, list live mounts.

``mount()`` starts ``python -m unionfs.mount.daemon`` in a new session with a pipe; the daemon answers ``ok`` on the
pipe from FUSE's ``init`` (the kernel is talking to it, the mount is live) or ``error: <message>`` when it
cannot start, and ``mount()`` raises that as a one-line :class:`MountError`. Unmounting by ``umount``,
``fusermount3 -u`` or :func:`umount` ends the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from unionfs import mountinfo
from unionfs.errors import MountError
from unionfs.union.plan import MountPlan

log = logging.getLogger(__name__)

FSTYPE = "fuse.unionfs"
START_TIMEOUT = 30.0
#: seconds ``umount`` waits for the daemon to end after the unmount
STOP_TIMEOUT = 60.0
#: seconds a mount (without a daemon process we know) gets to answer ``statfs`` before it counts as hung
PROBE_TIMEOUT = 2.0

#: a mount's state (:func:`mount_state`): served, its daemon gone (the kernel answers ENOTCONN), no answer
LIVE, DEAD, HUNG = "live", "dead", "hung"


@dataclass(frozen=True)
class LiveMount:
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

    LIVE at once when a daemon process serves it (``daemons``: :func:`daemon_pids`, looked up when None),
    without touching the mount. Otherwise (a foreground or killed daemon) the mount is asked ``statfs``, which
    always reaches the daemon (no cache answers it): ENOTCONN means the FUSE connection is gone (DEAD); no
    answer within ``timeout`` seconds is HUNG (the probing thread is left blocked, never the caller).
    """
    if daemons is None:
        daemons = daemon_pids()
    if mountpoint in daemons:
        return LIVE
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


def check_plan(plan: MountPlan, mountpoint: str) -> None:
    """Raise a one-line MountError for what would make the mount fail (before starting a daemon)."""
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
        _check_xattrs(plan.work)


def _check_xattrs(work: str) -> None:
    from unionfs.layer import whiteout as wh

    probe = os.path.join(work, f".unionfs-xattr-probe.{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise MountError(f"cannot write in work directory {work}: {e.strerror}") from None
    try:
        os.setxattr(fd, wh.xattr_namespace() + "overlay.unionfs.probe", b"y")
    except OSError as e:
        raise MountError(f"the upper filesystem at {work} does not support {wh.xattr_namespace()}* "
                         f"xattrs ({e.strerror})") from None
    finally:
        os.close(fd)
        os.unlink(probe)


#: mount flags: the option that sets each (a bool in the options) and its opposite, which clears it
FLAG_OPTIONS = {"suid": "nosuid", "dev": "nodev", "exec": "noexec", "ro": "rw"}


def _fuse_options(plan: MountPlan, options: list[str]) -> dict[str, object]:
    """The options a mount is served with: ``options`` (``-o`` items, later ones win) over the defaults.

    Defaults are libfuse's: ``nosuid``, ``nodev``, ``exec``, no ``allow_other``, ``rw`` (``ro`` without an
    upper, whatever is asked). ``suid``/``dev``/``exec``/``ro`` and their opposites set the flags (bools under
    those four keys). ``default_permissions`` (the kernel checks permissions) is always on: the daemon runs
    as root and checks none itself, so ``allow_other`` without it would open every file to every user.
    """
    opts: dict[str, object] = {
        "fsname": "unionfs" + (f":{plan.name}" if plan.name else ""),
        "subtype": "unionfs",
        "suid": False, "dev": False, "exec": True, "ro": False,
        "allow_other": False,
    }
    opposite = {v: k for k, v in FLAG_OPTIONS.items()}
    # the writeback cache stays opt-in (-o writeback): see docs/design.md, "Speed settings" (hardlinked names go stale under it)
    for o in options:
        for item in o.split(","):
            if not item:
                continue
            k, sep, v = item.partition("=")
            if k in ("writeback", "volatile", "allow_other"):
                opts[k] = v.lower() not in ("0", "no", "false", "off") if sep else True
            elif k in ("nowriteback",):
                opts["writeback"] = False
            elif k in FLAG_OPTIONS and not sep:
                opts[k] = True
            elif k in opposite and not sep:
                opts[opposite[k]] = False
            else:
                opts[k] = v if sep else True
    if plan.upper is None:
        opts["ro"] = True
    opts["default_permissions"] = True
    return opts


def mount(plan: MountPlan, mountpoint: str, *, options: list[str] | None = None, foreground: bool = False) -> None:
    """Mount ``plan`` at ``mountpoint``; return once the mount is live (``foreground``: serve until unmounted).

    Raises MountError with a one-line message when the mount cannot be made.
    """
    options = list(options or [])
    mountpoint = os.path.abspath(mountpoint)
    check_plan(plan, mountpoint)
    spec = {"lowers": [os.path.abspath(p) for p in plan.lowers],
            "upper": os.path.abspath(plan.upper) if plan.upper else None,
            "work": os.path.abspath(plan.work) if plan.work else None,
            "name": plan.name, "mountpoint": mountpoint, "options": options}
    if foreground:
        _serve(spec, None)
        return
    import tempfile

    errfile = tempfile.TemporaryFile()
    r, w = os.pipe()
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "unionfs.mount.daemon", json.dumps(spec), str(w)],
                                pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errfile, env=env, cwd="/")
    except OSError as e:
        os.close(r)
        os.close(w)
        raise MountError(f"cannot start the mount daemon: {e.strerror}") from None
    os.close(w)
    msg = b""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 4096)
            if not chunk:
                break
            msg += chunk
            if msg.endswith(b"\n"):
                break
    finally:
        os.close(r)
    text = msg.decode(errors="replace").strip()
    if text == "ok":
        errfile.close()
        return
    if proc.poll() is None and not text:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    errfile.seek(0)
    err = errfile.read().decode(errors="replace").strip()
    errfile.close()
    if text.startswith("error: "):
        raise MountError(text[len("error: "):])
    last = err.splitlines()[-1] if err else "no answer"
    raise MountError(f"mount daemon failed to start at {mountpoint}: {last}")


def umount(mountpoint: str, *, lazy: bool = False) -> bool:
    """End the unionfs mount at ``mountpoint`` (the daemon then exits). MountError when that fails.

    A busy live mount is left alone (MountError saying to close the files or use ``lazy``). A dead mount
    (its daemon gone: nothing can be lost) that is busy is detached lazily; returns True when that happened
    (processes holding files there get ENOTCONN until they close them), False otherwise.
    """
    mp = os.path.realpath(mountpoint)
    if not is_mounted(mp):
        raise MountError(f"{mountpoint} is not a unionfs mount")
    daemons = daemon_pids()
    pid = None if lazy else daemons.get(mp)
    res = _unmount_cmd(mp, lazy)
    if res.returncode != 0:
        detail = _last_line(res)
        busy = "busy" in detail.lower()
        if busy and not lazy and mount_state(mp, daemons) == DEAD:
            log.info("%s: dead mount busy, detaching it lazily", mp)
            res = _unmount_cmd(mp, True)
            if res.returncode == 0:
                _wait_unmounted(mp)
                return True
            detail = _last_line(res)
        if busy:
            raise MountError(f"{mountpoint} is busy (a process has a file or its working directory there): "
                             f"close them, or detach it now with `unionfs umount --lazy {mountpoint}`")
        raise MountError(f"cannot unmount {mountpoint}: {detail}")
    _wait_unmounted(mp)
    if pid is not None:  # the daemon's last words (a volatile mount syncs its upper) end before we return
        _wait_exit(pid, STOP_TIMEOUT)
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
    pid = daemon_pid(mount.mountpoint)
    umount(mount.mountpoint, lazy=True)
    if pid is not None:
        stop(pid)
    return True


def _unmount_cmd(mp: str, lazy: bool) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u"] + (["-z"] if lazy else []) + [mp]
    else:
        cmd = ["umount"] + (["-l"] if lazy else []) + [mp]
    return subprocess.run(cmd, capture_output=True, text=True)


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    """What a failed unmount command said last (its reason)."""
    return (res.stderr.strip().splitlines() or ["failed"])[-1]


def _wait_unmounted(mp: str) -> None:
    for _ in range(100):
        if not is_mounted(mp):
            break
        time.sleep(0.05)


def daemon_pids() -> dict[str, int]:
    """The background daemons alive now, by the mountpoint they serve (zombies are not alive)."""
    import psutil

    found: dict[str, int] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) >= 5 and cmd[1:3] == ["-m", "unionfs.mount.daemon"]:
            try:
                found[json.loads(cmd[3])["mountpoint"]] = proc.pid
            except (ValueError, TypeError, KeyError):
                continue
    return found


def daemon_pid(mountpoint: str) -> int | None:
    """The pid of the background daemon serving ``mountpoint`` (None when there is none)."""
    return daemon_pids().get(os.path.realpath(mountpoint))


def _ended(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to end: gone or a zombie (a daemon whose parent exited is
    reparented to pid 1, which in a container may never reap it). True when it has ended."""
    import psutil

    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
        while proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
    except psutil.NoSuchProcess:
        pass
    return True


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait until ``pid`` has ended (see :func:`_ended`); a warning when it is still running after ``timeout``."""
    if not _ended(pid, timeout):
        log.warning("the daemon %d is still running %.0f s after its unmount", pid, timeout)


def stop(pid: int, grace: float = 10.0) -> None:
    """End daemon ``pid`` whose mount is already detached: wait ``grace`` seconds for it, then SIGTERM it, then
    SIGKILL it (each given ``grace`` seconds)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        for action in (None, proc.terminate, proc.kill):
            if action is not None:
                action()
            if _ended(pid, grace):
                return
    except psutil.NoSuchProcess:
        pass


def _serve(spec: dict, ready_fd: int | None) -> None:
    """Run the daemon (this process serves the mount until it ends) on the kernel's protocol
    (:mod:`unionfs.mount.server`).
    A writable mount holds its work directory (:mod:`unionfs.union.workdir`) while it lives."""
    from unionfs.union.workdir import WorkClaim, claim

    def ready() -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"ok\n")
                os.close(ready_fd)
            except OSError:
                pass
            if not os.environ.get("UNIONFS_DAEMON_LOG"):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)

    plan = MountPlan(tuple(spec["lowers"]), spec["upper"], spec["work"], spec.get("name"))
    opts = _fuse_options(plan, spec.get("options", []))
    volatile = bool(opts.pop("volatile", False))
    held: WorkClaim | None = None
    if plan.upper is not None and plan.work is not None:
        try:
            held = claim(plan.work, plan.upper, volatile=volatile)
        except OSError as e:
            raise MountError(f"cannot use work directory {plan.work}: {e.strerror or e}") from None
    try:
        _run(spec, opts, volatile, ready)
    finally:  # whatever ended the mount, this process is alive: sync a volatile upper, drop the marker
        if held is not None:
            held.release()


def _run(spec: dict, opts: dict[str, object], volatile: bool, ready: Callable[[], None]) -> None:
    """Open the layers and serve the mount ``spec`` describes, with the daemon and settings ``opts`` choose."""
    from unionfs.union.overlay import Overlay

    try:
        ov = Overlay(spec["lowers"], spec["upper"], spec["work"], volatile=volatile)
    except OSError as e:
        raise MountError(f"cannot open the layers: {e}") from None
    from unionfs.mount import server as lowlevel
    from unionfs.mount.protocol import MountOptions

    writeback = bool(opts.pop("writeback", False))
    passthrough = opts.pop("passthrough", True) not in (False, "0", "no", "off", "false")
    spin = opts.pop("spin_us", None)
    try:
        spin_us = lowlevel.SPIN_US if spin is None else int(str(spin))
    except ValueError:
        raise MountError(f"spin_us takes a number of microseconds, not {spin!r}") from None
    mo = MountOptions(fsname=str(opts.pop("fsname")), subtype=str(opts.pop("subtype")),
                      read_only=bool(opts.pop("ro")), allow_other=bool(opts.pop("allow_other")),
                      default_permissions=bool(opts.pop("default_permissions")),
                      dev=bool(opts.pop("dev")), suid=bool(opts.pop("suid")), noexec=not opts.pop("exec"))
    for k in ("kernel_cache", "auto_cache"):
        opts.pop(k, None)
    if opts:
        log.warning("mount options ignored: %s", ", ".join(sorted(opts)))
    try:
        lowlevel.serve(ov, spec["mountpoint"], opts=mo, ready=ready, writeback=writeback, passthrough=passthrough,
                       spin_us=spin_us)
    except OSError as e:
        raise MountError(f"cannot mount {spec['mountpoint']}: {e.strerror or e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the background daemon: ``python -m unionfs.mount.daemon SPEC_JSON READY_FD``."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    fd = int(argv[1])
    log_to = os.environ.get("UNIONFS_DAEMON_LOG")
    logging.basicConfig(level=logging.DEBUG if log_to else logging.WARNING, filename=log_to or None,
                        format="unionfs-daemon: %(levelname)s: %(name)s: %(message)s")
    try:
        _serve(spec, fd)
    except (MountError, OSError, ValueError) as e:  # report a startup failure as one line on the pipe
        try:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            os.write(fd, f"error: {msg}\n".encode())
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
