"""The mount daemon's life cycle: check a plan, start the FUSE daemon in the background, wait until the mount
is live, end it, list live mounts.

``mount()`` forks the daemon from the calling process (no second interpreter is started); a caller that has
work to do first (``unionfs mount IMAGE``: the store's part) forks it ahead with :func:`fork_early`, so that
the daemon loads the serving code meanwhile, and hands it the mount later. The first child leaves the
caller's session (``setsid``), forks the daemon and exits at once, so that the daemon is nobody's child to
reap. The daemon drops the caller's descriptors (standard input and output go to /dev/null, every other
descriptor but its two pipes to the caller is replaced by /dev/null; standard error stays the caller's until
the mount is live, then goes to /dev/null or ``$UNIONFS_DAEMON_LOG``) and signal handlers, works in ``/``,
reads the mount's spec from the caller (none: the caller let it go, and it ends), mounts and serves. It
answers on its other pipe ``pid N``, then ``ok`` from FUSE's ``init`` (the kernel is talking to it, the mount
is live) or ``error: <message>`` when it cannot start, which ``mount()`` raises as a one-line
:class:`MountError`. Every path of the forked processes ends in ``os._exit``. A caller that runs other
threads (forking such a process is unsafe) starts ``python -m unionfs.mount.daemon`` instead, which answers
on the same kind of pipe.

Each daemon records itself once its mount is live (:mod:`unionfs.mount.pidfile`): :func:`daemon_pids` finds
it from the record, checked against the live process and the mount table. Unmounting by ``umount``,
``fusermount3 -u`` or :func:`umount` ends the daemon; :func:`umount` waits for that through a pidfd.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NoReturn

from unionfs import mountinfo
from unionfs.errors import MountError
from unionfs.mount import pidfile
from unionfs.union.plan import MountPlan

if TYPE_CHECKING:
    import subprocess

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

    LIVE at once when a recorded daemon serves it (``daemons``: :func:`daemon_pids`, looked up when None),
    without touching the mount. Otherwise (a foreground or killed daemon) the mount is asked ``statfs``, which
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


def mount(plan: MountPlan, mountpoint: str, *, options: list[str] | None = None, foreground: bool = False,
          early: Early | None = None, meanwhile: Callable[[], None] | None = None) -> None:
    """Mount ``plan`` at ``mountpoint``; return once the mount is live (``foreground``: serve until unmounted).
    ``early``: a daemon forked ahead (:func:`fork_early`) that takes this mount (else one is forked now).
    ``meanwhile`` runs once the plan is checked and the daemon has the mount, while it mounts (a forked or
    spawned daemon; before serving in the foreground): what it does is done also when the mount then fails.

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
        if meanwhile is not None:
            meanwhile()
        _serve(spec, None)
        return
    if early is None:
        early = fork_early()
    if early is None:
        _spawn_daemon(spec, meanwhile)
    else:
        early.start(spec, meanwhile)


def _single_threaded() -> bool:
    """True when this process runs one thread (Python's or not): only such a process may be forked safely."""
    try:
        with open("/proc/self/status", "rb") as f:
            return any(line.split() == [b"Threads:", b"1"] for line in f)
    except OSError:
        return False


class Early:
    """A daemon forked before its mount is known (:func:`fork_early`): it loads the serving code while the
    caller works out the plan. :meth:`start` hands it the mount; :meth:`cancel` (also the end of a ``with``
    block) lets it go, and so does the end of the caller's process."""

    def __init__(self, spec_w: int, answer_r: int, first_child: int) -> None:
        self._spec_w, self._answer_r, self._first_child = spec_w, answer_r, first_child

    def __enter__(self) -> Early:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """End the daemon unless it was given a mount (it exits when its end of the spec pipe closes)."""
        for fd in (self._spec_w, self._answer_r):
            if fd >= 0:
                os.close(fd)
        self._spec_w = self._answer_r = -1
        self._reap()

    def _reap(self) -> None:
        """Reap the first child (it exited right after forking the daemon; not waited for at the fork, which
        would hold this process up while it does)."""
        if self._first_child > 0:
            try:
                os.waitpid(self._first_child, 0)
            except ChildProcessError:  # reaped by someone else (a SIGCHLD handler)
                pass
            self._first_child = 0

    def start(self, spec: dict, meanwhile: Callable[[], None] | None = None) -> None:
        """Give the daemon the mount ``spec``; run ``meanwhile`` while it mounts; return once the mount is live
        (MountError when it cannot be made). A daemon that gives no answer within :data:`START_TIMEOUT`
        seconds is killed."""
        import marshal

        if self._spec_w < 0:
            raise MountError("this daemon was already given a mount or let go")
        try:
            data = memoryview(marshal.dumps(spec))
            while data:
                data = data[os.write(self._spec_w, data):]
        except OSError:  # the daemon is gone: its own words (read below) say why
            pass
        os.close(self._spec_w)
        self._spec_w = -1
        self._reap()
        try:
            failed = _run_meanwhile(meanwhile)
            lines, ended = _read_answer(self._answer_r)
        finally:
            self.cancel()
        daemon = next((int(x[4:]) for x in lines if x.startswith("pid ") and x[4:].isdigit()), None)
        if not ended and daemon is not None:  # no answer in time, and it still holds the pipe: it is alive
            _kill(daemon)
        _raise_unless_ok(lines, ended, spec["mountpoint"], "")
        if failed is not None:
            raise failed


def fork_early() -> Early | None:
    """Fork the daemon of a mount to come (see the module's docstring), so that it loads the serving code
    while this process prepares the mount; None when this process runs other threads (it must not fork: the
    mount then spawns its daemon). MountError when the fork fails. Use it as a context manager, or
    :meth:`Early.cancel` it when no mount comes."""
    if not _single_threaded():
        return None
    spec_r, spec_w = os.pipe()
    answer_r, answer_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # nothing buffered here may be written again by the child
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        pid = os.fork()
    except OSError as e:
        for fd in (spec_r, spec_w, answer_r, answer_w):
            os.close(fd)
        raise MountError(f"cannot start the mount daemon: {e.strerror}") from None
    if pid == 0:
        _first_child(spec_r, answer_w, (spec_w, answer_r))
    os.close(spec_r)
    os.close(answer_w)
    return Early(spec_w, answer_r, pid)


def _first_child(spec_r: int, answer_w: int, parents: tuple[int, ...]) -> NoReturn:
    """The first forked child: a new session, the daemon forked from it, then ``os._exit`` (always)."""
    code = 1
    try:
        for fd in parents:
            os.close(fd)
        os.setsid()
        if os.fork() == 0:
            _daemon(spec_r, answer_w)
        code = 0
    except BaseException as e:  # noqa: B036 (this process must end here, whatever happened)
        _tell(answer_w, f"error: cannot start the mount daemon: {e}")
    finally:
        os._exit(code)


def _daemon(spec_r: int, w: int) -> NoReturn:
    """The forked daemon: drop the caller's descriptors and signal handlers, load the serving code, read the
    mount's spec from ``spec_r`` (none: the caller let it go, end quietly), serve it, answer on ``w`` (``pid
    N``, then ``ok`` or ``error: ...``), and end with ``os._exit`` on every path."""
    code = 1
    live = False
    spec: dict = {"mountpoint": "?"}

    def ready() -> None:
        nonlocal live
        live = True
        _stderr_to_log()
        _tell(w, "ok")
        os.close(w)

    try:
        stderr = _drop_inherited(keep=(spec_r, w))
        _tell(w, f"pid {os.getpid()}")
        _preload()
        spec = _read_spec(spec_r)
        if spec:
            if stderr >= 0:  # the caller's, until the mount is live
                os.dup2(stderr, 2)
                os.close(stderr)
            _serve(spec, ready)
        code = 0
    except BaseException as e:  # noqa: B036 (this process must end here, whatever happened)
        if live:
            log.exception("the daemon of %s failed", spec["mountpoint"])
        else:
            _tell(w, f"error: {_one_line(e, spec['mountpoint'])}")
    finally:
        os._exit(code)


def _preload() -> None:
    """Import the code that serves a mount (a forked-ahead daemon does it while its caller prepares the plan).
    A failure is left to the serving, which imports the same and reports it."""
    try:
        import unionfs.mount.server  # noqa: F401
        import unionfs.union.workdir  # noqa: F401
    except Exception:  # noqa: BLE001
        log.debug("preloading the daemon's modules failed", exc_info=True)


def _read_spec(r: int) -> dict:
    """The mount's spec, read from ``r`` to its end (marshal's format: this process is a fork of the writer);
    empty when the caller closed the pipe without one."""
    import marshal

    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    return marshal.loads(b"".join(chunks)) if chunks else {}


def _drop_inherited(keep: tuple[int, ...]) -> int:
    """What a fresh daemon process would have: standard input, output and error on /dev/null, every other
    descriptor of the caller but those in ``keep`` replaced by /dev/null (not closed: an object of the caller
    that closes it later then cannot close one of ours), ``/`` as working directory, no signal handler of the
    caller, and logging to ``$UNIONFS_DAEMON_LOG`` when it is set (at debug level). Returns a copy of the
    caller's standard error (-1: none), for the time from the spec to the live mount: a daemon that is let go
    keeps nothing of its caller's (whoever reads the caller's output to its end need not wait for it)."""
    try:
        stderr = os.dup(2)
    except OSError:  # the caller has none
        stderr = -1
    keep = (*keep, stderr)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != null and fd not in keep:
            try:
                os.dup2(null, fd, inheritable=False)
            except OSError:  # the directory's own descriptor, closed by now
                pass
    os.close(null)
    os.chdir("/")
    _default_signals()
    log_to = os.environ.get("UNIONFS_DAEMON_LOG")
    if log_to:
        logging.basicConfig(level=logging.DEBUG, filename=log_to, force=True,
                            format="unionfs-daemon: %(levelname)s: %(name)s: %(message)s")
    return stderr


def _default_signals() -> None:
    """Signals the caller handled in Python go back to their defaults (as across an exec): SIGINT to Python's
    KeyboardInterrupt, the others to the kernel's. Ignored signals stay ignored."""
    import signal

    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGALRM, signal.SIGCHLD):
        handler = signal.getsignal(sig)
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)


def _stderr_to_log() -> None:
    """Once the mount is live, standard error leaves the caller's: to ``$UNIONFS_DAEMON_LOG`` when it is set
    (what Python prints there lands in the log), else to /dev/null."""
    log_to = os.environ.get("UNIONFS_DAEMON_LOG")
    try:
        fd = os.open(log_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if log_to else -1
    except OSError:
        fd = -1
    if fd < 0:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 2)
    os.close(fd)


def _tell(w: int, line: str) -> None:
    """Write one line to the caller on ``w`` (one write: lines never interleave); a caller gone is fine."""
    try:
        os.write(w, line.encode(errors="replace") + b"\n")
    except OSError:
        pass


def _one_line(e: BaseException, mountpoint: str) -> str:
    """What a daemon that could not start says about ``e``: its message for the errors that explain
    themselves, else the exception type too (a bug: its traceback goes to the debug log)."""
    if isinstance(e, (MountError, OSError, ValueError)):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    log.debug("the daemon of %s failed to start", mountpoint, exc_info=True)
    return f"mount daemon failed to start at {mountpoint}: {type(e).__name__}: {e}".splitlines()[0]


def _read_answer(r: int) -> tuple[list[str], bool]:
    """The daemon's lines on ``r`` until ``ok`` or ``error: ...``, the end of the pipe or :data:`START_TIMEOUT`
    seconds; and True when the daemon answered or closed the pipe (False: no answer in time)."""
    import select

    buf = b""
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            return lines, False
        chunk = os.read(r, 4096)
        if not chunk:
            return lines, True
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += [x.decode(errors="replace").strip() for x in done]
        if lines and (lines[-1] == "ok" or lines[-1].startswith("error: ")):
            return lines, True


def _raise_unless_ok(lines: list[str], ended: bool, mountpoint: str, stderr: str) -> None:
    """Return when the daemon answered ``ok``; else raise its error as MountError (with the last line of its
    ``stderr``, or why there was no answer)."""
    last = lines[-1] if lines else ""
    if last == "ok":
        return
    if last.startswith("error: "):
        raise MountError(last[len("error: "):])
    why = stderr.strip().splitlines()[-1] if stderr.strip() else \
        "it ended without an answer" if ended else f"no answer within {START_TIMEOUT:.0f} s"
    raise MountError(f"mount daemon failed to start at {mountpoint}: {why}")


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` (a daemon that never answered), ignoring one that is gone."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _spawn_daemon(spec: dict, meanwhile: Callable[[], None] | None) -> None:
    """Start the daemon for ``spec`` as ``python -m unionfs.mount.daemon`` (for a caller running threads,
    which must not fork); run ``meanwhile``; return once its mount is live (MountError when it cannot start)."""
    import json
    import subprocess
    import tempfile

    errfile = tempfile.TemporaryFile()
    r, w = os.pipe()
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "unionfs.mount.daemon", json.dumps(spec), str(w)],
                                pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errfile, env=env, cwd="/")
    except OSError as e:
        os.close(r)
        os.close(w)
        errfile.close()
        raise MountError(f"cannot start the mount daemon: {e.strerror}") from None
    os.close(w)
    try:
        failed = _run_meanwhile(meanwhile)
        lines, ended = _read_answer(r)
    finally:
        os.close(r)
    with errfile:
        if not lines or lines[-1] != "ok":
            _stop_spawned(proc, lines)
            errfile.seek(0)
            _raise_unless_ok(lines, ended, spec["mountpoint"], errfile.read().decode(errors="replace"))
    if failed is not None:
        raise failed


def _run_meanwhile(meanwhile: Callable[[], None] | None) -> BaseException | None:
    """Run ``meanwhile`` (see :func:`mount`) while the daemon mounts; what it raised, to be raised once the
    daemon has answered (a mount that is made must not be left unreported)."""
    if meanwhile is None:
        return None
    try:
        meanwhile()
    except BaseException as e:  # noqa: B036 (raised again by the caller)
        return e
    return None


def _stop_spawned(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    """A spawned daemon that did not start: killed when it gave no answer at all, then reaped."""
    import subprocess

    if proc.poll() is None and not lines:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def umount(mountpoint: str, *, lazy: bool = False) -> bool:
    """End the unionfs mount at ``mountpoint`` (the daemon then exits). MountError when that fails.

    A busy live mount is left alone (MountError saying to close the files or use ``lazy``). A dead mount
    (its daemon gone: nothing can be lost) that is busy is detached lazily; returns True when that happened
    (processes holding files there get ENOTCONN until they close them), False otherwise. Without ``lazy``,
    returns once the daemon has ended (the last words of a volatile mount, the sync of its upper, included).
    """
    mp = os.path.realpath(mountpoint)
    if not is_mounted(mp):
        raise MountError(f"{mountpoint} is not a unionfs mount")
    records = _daemon_records()
    daemon = None if lazy or mp not in records else pidfile.pin(records[mp].pid, records[mp].start)
    try:
        return _unmount(mountpoint, mp, lazy, {p: r.pid for p, r in records.items()}, daemon)
    finally:
        if daemon is not None:
            os.close(daemon)


def _unmount(mountpoint: str, mp: str, lazy: bool, daemons: dict[str, int], daemon: int | None) -> bool:
    """:func:`umount` once the daemon is known: ``daemon`` a pidfd of it (None: nothing to wait for)."""
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
    if daemon is not None and not pidfile.wait_ended(daemon, STOP_TIMEOUT):
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


def _serve(spec: dict, on_ready: Callable[[], None] | None) -> None:
    """Run the daemon (this process serves the mount until it ends) on the kernel's protocol
    (:mod:`unionfs.mount.server`). Once the mount is live this process records itself
    (:mod:`unionfs.mount.pidfile`), then ``on_ready`` runs; the record goes when serving ends.
    A writable mount holds its work directory (:mod:`unionfs.union.workdir`) while it lives."""
    from unionfs.union.workdir import WorkClaim, claim

    mountpoint = os.path.realpath(spec["mountpoint"])  # now: once mounted, a stat of it would ask this daemon
    records: list[str] = []

    def ready() -> None:
        records.extend(_record(mountpoint))
        if on_ready is not None:
            on_ready()

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
        for path in records:
            pidfile.remove(path)
        if held is not None:
            held.release()


def _record(mountpoint: str) -> list[str]:
    """Record this process as the daemon of the unionfs mount just made at ``mountpoint`` (realpath'd); the
    record's path, or nothing when it cannot be written (the mount is served all the same, but
    :func:`daemon_pids` will not find it)."""
    dev = next((m.dev for m in reversed(mountinfo.mounts()) if m.mountpoint == mountpoint and m.fstype == FSTYPE),
               None)
    if dev is None:
        log.warning("cannot record the daemon of %s: its mount is not in the mount table", mountpoint)
        return []
    try:
        return [pidfile.write(mountpoint, dev)]
    except OSError as e:
        log.warning("cannot record the daemon of %s in %s: %s", mountpoint, pidfile.run_dir(), e)
        return []


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


def exit_now(rc: int) -> NoReturn:
    """End the process with status ``rc`` after flushing standard output, standard error and the log handlers,
    without the interpreter's shutdown (tearing down every loaded module takes longer than the mount itself).
    For the commands that mount or unmount (``unionfs mount``, ``umount``, ``mount.fuse.unionfs``): only a
    process that runs no other thread that must finish and leaves nothing to ``atexit`` or finalizers."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            rc = rc or 120  # output lost: the status Python's own shutdown gives then
    logging.shutdown()
    os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a spawned daemon (see :func:`_spawn_daemon`): ``python -m unionfs.mount.daemon SPEC_JSON
    READY_FD``. Answers ``ok`` or ``error: ...`` on READY_FD."""
    import json

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    fd = int(argv[1])
    log_to = os.environ.get("UNIONFS_DAEMON_LOG")
    logging.basicConfig(level=logging.DEBUG if log_to else logging.WARNING, filename=log_to or None,
                        format="unionfs-daemon: %(levelname)s: %(name)s: %(message)s")

    def ready() -> None:
        _tell(fd, "ok")
        os.close(fd)
        _stderr_to_log()

    try:
        _serve(spec, ready)
    except (MountError, OSError, ValueError) as e:  # report a startup failure as one line on the pipe
        _tell(fd, f"error: {_one_line(e, spec['mountpoint'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
