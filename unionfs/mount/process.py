"""The mount daemon's process: how it is started from the mounting process, what it keeps of its caller, how
it serves a mount and answers, and how a mounting command ends.

The daemon is forked from the calling process (no second interpreter is started); a caller that has work to
do first (``unionfs mount IMAGE``: the store's part) forks it ahead with :func:`fork_early`, so that the
daemon loads the serving code meanwhile, and hands it the mount later (:meth:`Early.start`). The first child
leaves the caller's session (``setsid``), forks the daemon and exits at once, so that the daemon is nobody's
child to reap. The daemon drops the caller's descriptors (standard input and output go to /dev/null, every
other descriptor but its two pipes to the caller is replaced by /dev/null; standard error is the caller's
only from the spec to the live mount, then /dev/null or ``$UNIONFS_DAEMON_LOG``) and signal handlers, works
in ``/``, reads the mount's spec from the caller (none: the caller let it go, and it ends), mounts and
serves (:func:`serve`). It answers on its other pipe ``pid N``, then ``ok`` from FUSE's ``init`` (the kernel
is talking to it, the mount is live) or ``error: <message>`` when it cannot start, which the caller raises as
a one-line :class:`MountError`. Every path of the forked processes ends in ``os._exit``. A caller that runs
other threads (forking such a process is unsafe) starts ``python -m unionfs.mount.process`` instead
(:func:`spawn`), which answers on the same kind of pipe.

Once its mount is live a daemon records itself (:mod:`unionfs.mount.pidfile`); the record goes when it ends.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Callable, NoReturn

from unionfs import mountinfo
from unionfs.errors import MountError, UsageError
from unionfs.mount import pidfile
from unionfs.mount.gcpace import collect_as_usual
from unionfs.union.plan import MountPlan  # a plain class, nothing more loaded

if TYPE_CHECKING:
    import subprocess

    from unionfs.layer.ownership import Owners
    from unionfs.mount.server import IdMap

log = logging.getLogger(__name__)

#: the mount table's type of a unionfs mount
FSTYPE = "fuse.unionfs"
#: seconds a daemon gets to answer (``ok`` or an error) once it has its mount
START_TIMEOUT = 30.0

#: mount flags: the option that sets each (a bool in the options) and its opposite, which clears it
FLAG_OPTIONS = {"suid": "nosuid", "dev": "nodev", "exec": "noexec", "ro": "rw"}
#: the ``-o`` keys a mount takes (docs/cli.md, "Mount options"): the mount flags and their opposites, the FUSE
#: session's, the daemon's settings, and fuse-overlayfs' options that mean something here
#: (:class:`unionfs.mount.server.Show`)
OPTION_KEYS = frozenset({"fsname", "subtype", "allow_other", "default_permissions", "writeback", "nowriteback",
                         "volatile", "passthrough", "spin_us", "kernel_cache", "auto_cache", "static_nlink", "noacl",
                         "squash_to_root", "squash_to_uid", "squash_to_gid", "uidmapping", "gidmapping",
                         "userxattr", "xattr_permissions", "record", *FLAG_OPTIONS, *FLAG_OPTIONS.values()})


def unknown_options(options: list[str]) -> list[str]:
    """The ``-o`` items (comma-separated in each of ``options``) that no mount takes, in order."""
    return [item for o in options for item in o.split(",") if item and item.partition("=")[0] not in OPTION_KEYS]


def check_options(options: list[str]) -> None:
    """Raise UsageError for the first ``-o`` item no mount takes (before anything is mounted: the kernel refuses
    an unknown option too). Values are read by the daemon (:func:`_number`)."""
    unknown = unknown_options(options)
    if unknown:
        raise UsageError(f"unknown mount option: {unknown[0]}")


def fuse_options(plan: MountPlan, options: list[str]) -> dict[str, object]:
    """The options a mount is served with: ``options`` (``-o`` items, later ones win) over the defaults.

    Defaults are libfuse's: ``nosuid``, ``nodev``, ``exec``, no ``allow_other`` (but with ``uidmapping=`` or
    ``gidmapping=``), ``rw`` (``ro`` without an upper, whatever is asked). ``suid``/``dev``/``exec``/``ro`` and
    their opposites set the flags (bools under those four keys). ``default_permissions`` (the kernel checks
    permissions) is always on: the daemon runs as root and checks none itself, so ``allow_other`` without it would
    open every file to every user.
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
            if k in ("writeback", "volatile", "allow_other", "userxattr"):
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
    if "uidmapping" in opts or "gidmapping" in opts:
        # the mapped range's processes (a container's user namespace) are other users: as fuse-overlayfs, the
        # mount lets them in, and the kernel checks their rights on the shown owners (default_permissions)
        opts["allow_other"] = True
    opts["default_permissions"] = True
    return opts


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


class _Answer:
    """What a daemon tells its command on the descriptor ``fd``: ``ok`` once its mount is live (then its
    standard error goes to the log, and the descriptor is closed: its number may be reused, nothing is
    written to it again), or, before that, one ``error: ...`` line. A failure once live goes to the log: the
    command is gone."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.live = False

    def ready(self) -> None:
        self.live = True
        _stderr_to_log()
        _tell(self.fd, "ok")
        os.close(self.fd)

    def failed(self, e: BaseException, mountpoint: str) -> None:
        if self.live:
            log.error("the daemon of %s failed: %s", mountpoint, _one_line(e, mountpoint), exc_info=e)
        else:
            _tell(self.fd, f"error: {_one_line(e, mountpoint)}")


def _daemon(spec_r: int, w: int) -> NoReturn:
    """The forked daemon: drop the caller's descriptors and signal handlers, load the serving code, read the
    mount's spec from ``spec_r`` (none: the caller let it go, end quietly), serve it, answer on ``w`` (``pid
    N``, then ``ok`` or ``error: ...``), and end with ``os._exit`` on every path."""
    code = 1
    answer = _Answer(w)
    spec: dict = {"mountpoint": "?"}
    try:
        stderr = _drop_inherited(keep=(spec_r, w))
        _tell(w, f"pid {os.getpid()}")
        _preload()
        spec = _read_spec(spec_r)
        if spec:
            if stderr >= 0:  # the caller's, until the mount is live
                os.dup2(stderr, 2)
                os.close(stderr)
            serve(spec, answer.ready)
        code = 0
    except BaseException as e:  # noqa: B036 (this process must end here, whatever happened)
        answer.failed(e, spec["mountpoint"])
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


def spawn(spec: dict, meanwhile: Callable[[], None] | None) -> None:
    """Start the daemon for ``spec`` as ``python -m unionfs.mount.process`` (for a caller running threads,
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
        proc = subprocess.Popen([sys.executable, "-m", "unionfs.mount.process", json.dumps(spec), str(w)],
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


def serve(spec: dict, on_ready: Callable[[], None] | None) -> None:
    """Run the daemon (this process serves the mount until it ends) on the kernel's protocol
    (:mod:`unionfs.mount.server`). Once the mount is live this process records itself
    (:mod:`unionfs.mount.pidfile`), ``on_ready`` runs, and then it collects garbage at the pace the process had
    before its command started (:func:`unionfs.mount.gcpace.collect_as_usual`); the record goes when serving
    ends.
    A writable mount holds its work directory (:mod:`unionfs.union.workdir`) while it lives."""
    from unionfs.union.workdir import WorkClaim, claim

    mountpoint = os.path.realpath(spec["mountpoint"])  # now: once mounted, a stat of it would ask this daemon
    records: list[str] = []

    def ready() -> None:
        records.extend(_record(mountpoint))
        if on_ready is not None:
            on_ready()
        collect_as_usual()  # a forked daemon started at its command's pace (gcpace); after the answer: see there

    plan = MountPlan(tuple(spec["lowers"]), spec["upper"], spec["work"], spec.get("name"))
    opts = fuse_options(plan, spec.get("options", []))
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


def _raise_nofile() -> None:
    """Raise the daemon's soft RLIMIT_NOFILE to its hard limit (at most 2**20): it polls, never selects, and
    keeps a share of the soft limit as open directories (:data:`unionfs.union.realdir.KEEP`); a shell's usual
    1,024 would leave it 128."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as e:
            log.debug("RLIMIT_NOFILE stays %d: %s", soft, e)


def _run(spec: dict, opts: dict[str, object], volatile: bool, ready: Callable[[], None]) -> None:
    """Open the layers and serve the mount ``spec`` describes, with the daemon and settings ``opts`` choose."""
    from unionfs.union.overlay import Overlay

    _raise_nofile()
    if opts.pop("userxattr", False):
        from unionfs.layer import whiteout

        whiteout.use_namespace(whiteout.USER)
    owners = _owners(opts)
    try:
        ov = Overlay(spec["lowers"], spec["upper"], spec["work"], volatile=volatile, owners=owners)
    except OSError as e:
        raise MountError(f"cannot open the layers: {e}") from None
    from unionfs.mount import server as lowlevel
    from unionfs.mount.protocol import MountOptions

    writeback = bool(opts.pop("writeback", False))
    passthrough = opts.pop("passthrough", True) not in (False, "0", "no", "off", "false")
    spin_us = _number(opts, "spin_us", lowlevel.SPIN_US, "a number of microseconds")
    mo = MountOptions(fsname=str(opts.pop("fsname")), subtype=str(opts.pop("subtype")),
                      read_only=bool(opts.pop("ro")), allow_other=bool(opts.pop("allow_other")),
                      default_permissions=bool(opts.pop("default_permissions")),
                      dev=bool(opts.pop("dev")), suid=bool(opts.pop("suid")), noexec=not opts.pop("exec"))
    squash = 0 if opts.pop("squash_to_root", False) else -1
    show = lowlevel.Show(uid=_number(opts, "squash_to_uid", squash), gid=_number(opts, "squash_to_gid", squash),
                         uids=_idmap(opts, "uidmapping"), gids=_idmap(opts, "gidmapping"),
                         static_nlink=bool(opts.pop("static_nlink", False)), noacl=bool(opts.pop("noacl", False)))
    for k in ("kernel_cache", "auto_cache"):
        opts.pop(k, None)
    record = _record_file(opts.pop("record", None))
    if opts:
        log.warning("mount options ignored: %s", ", ".join(sorted(opts)))
    try:
        lowlevel.serve(ov, spec["mountpoint"], opts=mo, ready=ready, writeback=writeback, passthrough=passthrough,
                       spin_us=spin_us, show=show, record=record)
    except OSError as e:
        raise MountError(f"cannot mount {spec['mountpoint']}: {e.strerror or e}") from None
    finally:
        if record >= 0:
            os.close(record)


def _record_file(path: object) -> int:
    """The descriptor ``-o record=FILE`` appends opened paths to (created 0600, never through a symlink); -1
    without the option. MountError when it cannot be opened."""
    if path is None:
        return -1
    if not isinstance(path, str) or not os.path.isabs(path):
        raise MountError("-o record needs an absolute path: record=/FILE")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise MountError(f"cannot open the record file {path}: {e.strerror}") from None


def _number(opts: dict[str, object], key: str, default: int, what: str = "a number") -> int:
    """The option ``key`` taken out of ``opts`` as a number (``default`` when absent); MountError otherwise."""
    value = opts.pop(key, None)
    if value is None:
        return default
    try:
        return int(str(value))
    except ValueError:
        raise MountError(f"{key} takes {what}, not {value!r}") from None


def _owners(opts: dict[str, object]) -> "Owners | None":
    """fuse-overlayfs' ``xattr_permissions=`` taken out of ``opts``: ``2`` shows the owners, modes and devices
    kept in ``user.containers.override_stat`` (:mod:`unionfs.layer.ownership`), ``0`` (the default) the files'
    own; MountError for ``1`` (fuse-overlayfs' ``security.`` form) or anything else."""
    value = str(opts.pop("xattr_permissions", "0"))
    if value == "0":
        return None
    if value != "2":
        raise MountError(f"xattr_permissions={value} is not supported: 0 (owners as stored) or 2 (owners kept in "
                         "user.containers.override_stat)")
    from unionfs.layer.ownership import Owners

    return Owners()


def _idmap(opts: dict[str, object], key: str) -> "IdMap | None":
    """The id mapping ``key`` (``uidmapping``/``gidmapping``) taken out of ``opts``; MountError when malformed."""
    from unionfs.mount.server import IdMap

    value = opts.pop(key, None)
    if value is None:
        return None
    try:
        return IdMap(str(value))
    except ValueError as e:
        raise MountError(f"{key}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of a spawned daemon (see :func:`spawn`): ``python -m unionfs.mount.process SPEC_JSON
    READY_FD``. Answers ``ok`` or ``error: ...`` on READY_FD."""
    import json

    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    fd = int(argv[1])
    log_to = os.environ.get("UNIONFS_DAEMON_LOG")
    logging.basicConfig(level=logging.DEBUG if log_to else logging.WARNING, filename=log_to or None,
                        format="unionfs-daemon: %(levelname)s: %(name)s: %(message)s")

    answer = _Answer(fd)
    try:
        serve(spec, answer.ready)
    except (MountError, OSError, ValueError) as e:  # report a startup failure as one line on the pipe
        answer.failed(e, spec["mountpoint"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
