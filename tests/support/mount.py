"""The one mount manager of the tests: unionfs (through its CLI), the kernel overlayfs, fuse-overlayfs, bind
mounts and tmpfs, and whatever a command under test mounted (:func:`unmounted_on_exit`).

Every mount helper is a context manager that *always* unmounts on exit, also when the body raised: it first
asks politely (``unionfs umount`` / ``fusermount3 -u`` / ``umount``), then lazily (``fusermount3 -u -z`` /
``umount -l``), and finally kills the FUSE daemon that still serves the mountpoint. While a mount made here is
live, the helper holds an ``O_PATH`` descriptor of its root (:attr:`Mount.root_fd`): a test that unmounts it
itself, other than lazily, calls :meth:`Mount.release_root` first.

Layers are given **base first** everywhere (docs/design.md, "Principles"); only the kernel and fuse-overlayfs option
strings are written top first, as their syntax demands.

Layer directories are built by ``support.layers``, trees compared by ``support.tree``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pytest

from unionfs import mountinfo as mountinfo_mod

REPO = Path(__file__).resolve().parent.parent

#: seconds we give a mount or an unmount command before we call it hung
COMMAND_TIMEOUT = 60.0
#: seconds we wait for a FUSE daemon to exit after its mount is gone, before we kill it
DAEMON_EXIT_GRACE = 10.0

#: kernel overlayfs options that match the semantics unionfs promises
KERNEL_OPTIONS = ("redirect_dir=on", "index=on")
#: the same with metadata-only copy-up, the format unionfs writes for chmod/chown/utimes/xattrs/rename of big
#: lower files (tests/test_metacopy.py; the other tests keep KERNEL_OPTIONS)
KERNEL_METACOPY_OPTIONS = KERNEL_OPTIONS + ("metacopy=on",)


# ---------------------------------------------------------------------------
# environment checks: skip with a clear reason
# ---------------------------------------------------------------------------

def unionfs_bin() -> Path | None:
    """The ``unionfs`` executable of this checkout's virtualenv (or the one on PATH), or None."""
    candidates = [Path(sys.executable).parent / "unionfs", REPO / ".venv" / "bin" / "unionfs"]
    found = shutil.which("unionfs")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


@functools.cache
def unionfs_has_mount() -> bool:
    """True when the ``unionfs`` CLI offers the ``mount`` and ``umount`` commands."""
    exe = unionfs_bin()
    if exe is None:
        return False
    for cmd in ("mount", "umount"):
        try:
            r = subprocess.run([str(exe), cmd, "--help"], capture_output=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if r.returncode != 0:
            return False
    return True


def skip_reason_root(why: str = "mknod whiteouts, trusted.* xattrs, kernel overlay mounts") -> str | None:
    """Why a root-only test cannot run here (it needs root for ``why``), or None."""
    if os.geteuid() != 0:
        return f"needs root ({why})"
    return None


def skip_reason_fuse() -> str | None:
    """Why a FUSE test cannot run here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "needs fusermount3 (Debian package fuse3)"
    return None


def skip_reason_tool(tool: str, package: str | None = None) -> str | None:
    """Why a test needing the executable ``tool`` cannot run here, or None."""
    if shutil.which(tool) is None:
        return f"needs {tool} (Debian package {package or tool})"
    return None


def skip_reason_unionfs() -> str | None:
    """Why a test of the real unionfs mount cannot run here, or None."""
    if unionfs_bin() is None:
        return "the unionfs CLI is not installed (run scripts/setup.sh)"
    if not unionfs_has_mount():
        return "the unionfs CLI has no `mount`/`umount` commands yet"
    return None


def skip_reason_kernel_overlay() -> str | None:
    """Why the kernel overlayfs cannot be used as an oracle here, or None."""
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1] == "overlay" for line in f if line.strip()):
                return None
    except OSError:
        pass
    subprocess.run(["modprobe", "overlay"], capture_output=True)
    with open("/proc/filesystems") as f:
        if any(line.split()[-1] == "overlay" for line in f if line.strip()):
            return None
    return "the kernel has no overlay filesystem"


def require(*reasons: str | None) -> None:
    """Skip the calling test with the first reason that is not None."""
    for r in reasons:
        if r:
            pytest.skip(r)


# ---------------------------------------------------------------------------
# mount table and processes
# ---------------------------------------------------------------------------

#: one line of /proc/self/mountinfo (mountpoint, fstype, source, options, dev, mount_id): the package's parser
MountEntry = mountinfo_mod.Mount


def mountinfo() -> list[MountEntry]:
    """The current mount table of this process' namespace."""
    return mountinfo_mod.mounts()


def mount_entry(path: Path | str) -> MountEntry | None:
    """The topmost mount exactly at ``path``, or None."""
    return mountinfo_mod.mount_at(str(path))


def mount_fstype(path: Path | str) -> str | None:
    """The filesystem type mounted exactly at ``path`` (the topmost one), or None if nothing is."""
    e = mount_entry(path)
    return e.fstype if e is not None else None


def _fd_mount_id(fd: int) -> int | None:
    """The mount id of the file behind descriptor ``fd`` (from /proc/self/fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return None


def is_mounted(path: Path | str) -> bool:
    """True when something is mounted exactly at ``path``."""
    return mount_fstype(path) is not None


def unionfs_daemons() -> dict[int, str]:
    """The unionfs daemons alive now, pid -> the mountpoint they were started for, from the records each
    daemon writes once its mount is live (``unionfs.mount.pidfile``; a record counts only while its process
    lives with the recorded start time). A daemon is listed also after its mount is gone, while it lives.
    Never raises: a package that cannot read its records (broken, or older) must not stop the harness from
    unmounting; the command-line scan of :func:`daemon_pids` remains."""
    try:
        from unionfs.mount import pidfile

        return {r.pid: r.mountpoint for r in pidfile.live()}
    except Exception:  # noqa: BLE001
        return {}


def daemon_pids(mountpoint: Path | str) -> list[int]:
    """Pids of live processes serving ``mountpoint``: a unionfs daemon recorded for it (:func:`unionfs_daemons`),
    or any process whose command line names it (the FUSE daemon of fuse-overlayfs; the unionfs daemon is a fork
    of ``unionfs mount``, whose command line it keeps).

    The path may stand alone as an argument or inside one (``x=PATH``, a JSON string, a comma list), but
    only as a whole path. The test process itself and its ancestors are never returned.
    """
    targets = {os.fsencode(os.path.realpath(mountpoint)), os.fsencode(str(mountpoint))}
    pattern = re.compile(b"(?:^|[=\"',: ])(?:" + b"|".join(re.escape(t) for t in targets) + b")(?:$|[\"',: ])")
    exclude = {os.getpid()}
    pid = os.getppid()
    while pid > 1:
        exclude.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    pids = [p for p, mp in unionfs_daemons().items() if os.fsencode(mp) in targets and p not in exclude]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) in pids:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if _pid_alive(int(entry)) and any(pattern.search(a) for a in args):
            pids.append(int(entry))
    return pids


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def wait_pids_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to exit; returns those still alive."""
    pids = list(pids)
    end = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _pid_alive(p)]
        if not alive or time.monotonic() >= end:
            return alive
        time.sleep(0.05)


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` (each by its own id), ignoring those already gone."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT,
         cwd: Path | str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; a hang becomes a failed CompletedProcess, never an exception."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(list(argv), 124, e.stdout or "", f"timed out after {timeout}s")


# ---------------------------------------------------------------------------
# mounts
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Mount:
    """A live mount made by one of the helpers below."""

    kind: str  #: "unionfs", "kernel", "fuse-overlayfs", "bind", "tmpfs" (or the fstype of an adopted mount)
    path: Path  #: the mountpoint
    lowers: tuple[Path, ...]  #: base first
    upper: Path | None
    work: Path | None
    pids: list[int] = dataclasses.field(default_factory=list)  #: FUSE daemon pids seen after mounting
    entry: MountEntry | None = None  #: the mount table's line for it when it was made
    root_fd: int | None = None  #: an O_PATH descriptor of its root: pins the mount id while we look for it
    last_where: str | None = None  #: where it was last seen
    gone: bool = False  #: once seen gone, never looked for again (mount ids and devices get reused)
    log: list[str] = dataclasses.field(default_factory=list)  #: what the helper ran, for failure messages
    launch_s: float = 0.0  #: seconds the mount command itself took (the benchmark's mount time)

    def where(self) -> str | None:
        """Where this mount is now, or None once it is gone.

        While :attr:`root_fd` is open it pins the mount, so its id cannot pass to another mount and the
        descriptor's path follows a rename of a parent directory. After :meth:`release_root` (needed
        before an unmount, which the descriptor would make busy), only the exact last-seen path with the
        same mount id and device counts. Once seen gone, it is never looked for again: mount ids and
        anonymous device numbers are reused at once by other mounts, and those must never be touched.
        """
        if self.gone or self.entry is None:
            return None
        if self.root_fd is not None:
            mid = _fd_mount_id(self.root_fd)
            path = os.readlink(f"/proc/self/fd/{self.root_fd}")
            if any(e.mount_id == mid == self.entry.mount_id and e.mountpoint == path for e in mountinfo()):
                self.last_where = path
                return path
        elif self.last_where is not None:
            e = mount_entry(self.last_where)
            if e is not None and (e.mount_id, e.dev, e.fstype) == \
                    (self.entry.mount_id, self.entry.dev, self.entry.fstype):
                return self.last_where
        self.gone = True  # before release_root, whose where() then stops here instead of recursing
        self.release_root()
        return None

    def release_root(self) -> None:
        """Close :attr:`root_fd` (an unmount other than a lazy one fails while it is open)."""
        if self.root_fd is not None:
            self.where()  # remember where it is, while the descriptor still pins it
            fd, self.root_fd = self.root_fd, None
            os.close(fd)

    def check_live(self) -> None:
        """Fail unless this mount is still mounted at its path (not gone, not moved)."""
        now = self.where()
        if now != os.path.realpath(self.path):
            raise AssertionError(f"the {self.kind} mount made at {self.path} is "
                                 + (f"now at {now}: a parent directory was renamed" if now else "gone"))

    @property
    def is_fuse(self) -> bool:
        """True for the FUSE implementations."""
        return self.kind in ("unionfs", "fuse-overlayfs") or self.kind.startswith("fuse")

    def abort(self) -> None:
        """Stop the mount hard (kill the daemon, detach lazily): pending calls then fail with ENOTCONN."""
        where = self.where()
        self.release_root()
        if where is None:
            return
        if self.is_fuse:
            kill_pids(set(self.pids) | set(daemon_pids(self.path)))
            _run(["fusermount3", "-u", "-z", where])
        else:
            _run(["umount", "-l", where])

    @contextlib.contextmanager
    def watchdog(self, seconds: float, what: str = "") -> Iterator[None]:
        """Abort the mount if the body takes longer than ``seconds`` (a hung daemon must not hang the tests).

        This is no timing assertion: the limit is far above any sane duration and only turns a hang into a
        failure with a message.
        """
        fired: list[bool] = []

        def fire() -> None:
            fired.append(True)
            self.abort()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
        if fired:
            raise AssertionError(f"{self.kind} mount at {self.path} hung for {seconds}s on {what or 'a call'};"
                                 " the mount was aborted")


def _unmount(m: Mount, polite: Sequence[Sequence[str]]) -> list[str]:
    """Unmount ``m`` at all costs; returns the problems met (empty when the polite way worked).

    The mount is found by its id wherever it is now, so a renamed parent directory does not leak it. The
    polite commands name the mountpoint as their last argument.
    """
    problems: list[str] = []
    pids = set(m.pids) | (set(daemon_pids(m.path)) if m.is_fuse else set())
    where = m.where()
    m.release_root()
    if where is not None and where != os.path.realpath(m.path):
        problems.append(f"{m.path} moved to {where} while mounted")
    for argv in polite:
        where = m.where()
        if where is None:
            break
        argv = [*argv[:-1], where]
        r = _run(argv)
        m.log.append(f"$ {' '.join(argv)} -> {r.returncode} {r.stderr.strip()}")
        if r.returncode != 0:
            problems.append(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
    where = m.where()
    if where is not None:
        problems.append(f"{where} still mounted after a polite unmount; detaching lazily")
        if m.is_fuse:
            kill_pids(pids)
            _run(["fusermount3", "-u", "-z", where])
        if m.where() is not None:
            _run(["umount", "-l", where])
    if m.is_fuse and pids:
        alive = wait_pids_gone(pids, DAEMON_EXIT_GRACE)
        if alive:
            problems.append(f"daemon pids {alive} still alive {DAEMON_EXIT_GRACE}s after unmount; killed")
            kill_pids(alive)
            wait_pids_gone(alive, DAEMON_EXIT_GRACE)
    return problems


@contextlib.contextmanager
def _managed(m: Mount, polite: Sequence[Sequence[str]], strict: bool) -> Iterator[Mount]:
    """Yield ``m``; always unmount it afterwards. With ``strict``, a failed polite unmount fails the test."""
    ok = False
    try:
        yield m
        ok = True
    finally:
        problems = _unmount(m, polite)
        if strict and ok and problems:
            raise AssertionError(f"unmounting the {m.kind} mount at {m.path} went wrong: " + "; ".join(problems))


def _launch(m: Mount, argv: Sequence[str], fstype_prefix: str,
            cwd: Path | str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the mount command of ``m``: its duration goes to ``m.launch_s``, its line to ``m.log``. When the
    command is cut short (Ctrl-C, a signal turned into an exception), a mount it already made at ``m.path``
    is aborted before the exception goes on: no mount is left that nothing would unmount."""
    start = time.monotonic()
    try:
        r = _run(argv, cwd=cwd)
    except BaseException:
        entry = mount_entry(m.path)
        if entry is not None and entry.fstype.startswith(fstype_prefix):
            m.entry, m.last_where = entry, os.path.realpath(m.path)
            m.pids = daemon_pids(m.path) if m.is_fuse else []
            m.abort()
        raise
    m.launch_s = time.monotonic() - start
    m.log.append(f"$ {' '.join(argv)} -> {r.returncode} {r.stderr.strip()}")
    return r


def _check_dirs(lowers: Sequence[Path], upper: Path | None, work: Path | None, mnt: Path,
                cwd: Path | str | None = None) -> None:
    """Create the upper, work and mountpoint directories when missing; the lowers must exist."""
    for low in lowers:
        if not (Path(cwd or ".") / low).is_dir():
            raise FileNotFoundError(f"lower directory {low} does not exist")
    for d in (upper, work, mnt):
        if d is not None:
            Path(d).mkdir(parents=True, exist_ok=True)


def _wait_mounted(m: Mount, fstype_prefix: str, launched: subprocess.CompletedProcess[str]) -> None:
    """Fail with the command's output unless ``m.path`` carries a mount of the expected type."""
    fstype = mount_fstype(m.path)
    m.entry = mount_entry(m.path)
    if m.entry is not None:
        m.root_fd = os.open(m.path, os.O_PATH | os.O_DIRECTORY)
        if _fd_mount_id(m.root_fd) != m.entry.mount_id:  # raced with another mount on top: do not pin
            m.release_root()
            m.entry = None
        m.last_where = os.path.realpath(m.path)
    if launched.returncode != 0 or fstype is None or not fstype.startswith(fstype_prefix):
        m.abort()
        raise AssertionError(f"mounting {m.kind} at {m.path} failed: exit {launched.returncode}, "
                             f"mounted type {fstype!r}\nstdout: {launched.stdout}\nstderr: {launched.stderr}")


@contextlib.contextmanager
def unionfs_mount(lowers: Sequence[Path], upper: Path | None, work: Path | None, mnt: Path,
                  extra_args: Sequence[str] = (), strict_unmount: bool = True) -> Iterator[Mount]:
    """Mount unionfs through its CLI: ``unionfs mount --lower L1 --lower L2 ... --upper U --work W MNT``.

    ``lowers`` base first. The CLI returns once the mount is live with the daemon in the background; on exit
    ``unionfs umount MNT`` ends it (falling back to fusermount3, lazy detach and kill). With ``strict_unmount``
    a failing ``unionfs umount`` fails the test even when everything else went through.
    """
    exe = unionfs_bin()
    if exe is None:
        raise RuntimeError("the unionfs CLI is not installed")
    _check_dirs(lowers, upper, work, mnt)
    argv = [str(exe), "mount"]
    for low in lowers:
        argv += ["--lower", str(low)]
    if upper is not None:
        argv += ["--upper", str(upper)]
    if work is not None:
        argv += ["--work", str(work)]
    argv += [*extra_args, str(mnt)]
    m = Mount("unionfs", Path(mnt), tuple(Path(p) for p in lowers), upper, work)
    r = _launch(m, argv, "fuse")
    m.pids = daemon_pids(mnt)
    _wait_mounted(m, "fuse", r)
    with _managed(m, [[str(exe), "umount", str(mnt)], ["fusermount3", "-u", str(mnt)]], strict_unmount) as mm:
        yield mm


#: the daemon's ways of moving data, as ``unionfs mount`` arguments: the default (FUSE passthrough for final files)
#: and every byte through the daemon (``-o passthrough=off``)
DAEMONS: dict[str, tuple[str, ...]] = {"default": (), "served": ("-o", "passthrough=off")}


@contextlib.contextmanager
def kernel_overlay(lowers: Sequence[Path], upper: Path | None, work: Path | None, mnt: Path,
                   options: Sequence[str] = KERNEL_OPTIONS, cwd: Path | str | None = None) -> Iterator[Mount]:
    """Mount the kernel's overlayfs (``lowers`` base first; by default redirect_dir=on,index=on). Relative
    paths are resolved in ``cwd`` (short relative lowers fit more layers in the one-page option limit)."""
    _check_dirs(lowers, upper, work, mnt, cwd)
    opts = ["lowerdir=" + ":".join(str(p) for p in reversed(lowers))]
    if upper is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
    opts += list(options)
    argv = ["mount", "-t", "overlay", "overlay", "-o", ",".join(opts), str(mnt)]
    m = Mount("kernel", Path(mnt), tuple(Path(p) for p in lowers), upper, work)
    r = _launch(m, argv, "overlay", cwd)
    # EBUSY ("already mounted"): our previous mount of these directories can outlive its umount for a moment
    # when another process copied it into its own mount namespace (unshare) and has not exited yet
    end = time.monotonic() + 20
    while r.returncode != 0 and "already mounted" in r.stderr and time.monotonic() < end:
        time.sleep(0.2)
        r = _launch(m, argv, "overlay", cwd)
    _wait_mounted(m, "overlay", r)
    with _managed(m, [["umount", str(mnt)]], strict=True) as mm:
        yield mm


@contextlib.contextmanager
def fuse_overlayfs_mount(lowers: Sequence[Path], upper: Path | None, work: Path | None,
                         mnt: Path, cwd: Path | str | None = None) -> Iterator[Mount]:
    """Mount fuse-overlayfs (``lowers`` base first; relative paths resolved in ``cwd``), the stand-in used to
    validate this harness and the benchmark's peer."""
    _check_dirs(lowers, upper, work, mnt, cwd)
    opts = ["lowerdir=" + ":".join(str(p) for p in reversed(lowers))]
    if upper is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
    argv = ["fuse-overlayfs", "-o", ",".join(opts), str(mnt)]
    m = Mount("fuse-overlayfs", Path(mnt), tuple(Path(p) for p in lowers), upper, work)
    r = _launch(m, argv, "fuse", cwd)
    m.pids = daemon_pids(mnt)
    _wait_mounted(m, "fuse", r)
    with _managed(m, [["fusermount3", "-u", str(mnt)]], strict=True) as mm:
        yield mm


@contextlib.contextmanager
def bind_mount(src: Path | str, dst: Path | str) -> Iterator[Mount]:
    """``mount --bind SRC DST`` for the body (``dst`` must exist)."""
    argv = ["mount", "--bind", str(src), str(dst)]
    m = Mount("bind", Path(dst), (Path(src),), None, None)
    r = _run(argv)
    m.log.append(f"$ {' '.join(argv)} -> {r.returncode} {r.stderr.strip()}")
    _wait_mounted(m, "", r)
    with _managed(m, [["umount", str(dst)]], strict=True) as mm:
        yield mm


@contextlib.contextmanager
def tmpfs_mount(path: Path | str, size: str) -> Iterator[Mount]:
    """A tmpfs of ``size`` (``4m``) mounted at ``path`` (made when missing) for the body."""
    Path(path).mkdir(parents=True, exist_ok=True)
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
    m = Mount("tmpfs", Path(path), (), None, None)
    r = _run(argv)
    m.log.append(f"$ {' '.join(argv)} -> {r.returncode} {r.stderr.strip()}")
    _wait_mounted(m, "tmpfs", r)
    with _managed(m, [["umount", str(path)]], strict=True) as mm:
        yield mm


#: the kinds of :class:`Mount` by the mount table's fstype (for :func:`unmounted_on_exit`)
_KINDS = {"fuse.unionfs": "unionfs", "fuse.fuse-overlayfs": "fuse-overlayfs", "overlay": "kernel"}


def _adopt(path: Path | str) -> Mount | None:
    """A :class:`Mount` for what is mounted exactly at ``path`` now (by someone else), or None."""
    e = mount_entry(path)
    if e is None:
        return None
    m = Mount(_KINDS.get(e.fstype, e.fstype), Path(path), (), None, None, entry=e,
              last_where=os.path.realpath(path))
    if m.is_fuse:
        m.pids = daemon_pids(path)
    return m


@contextlib.contextmanager
def unmounted_on_exit(*paths: Path | str) -> Iterator[None]:
    """Run the body, then unmount whatever is mounted exactly at each of ``paths``: mounts the command under
    test made (``unionfs mount IMAGE``, the mount(8) helper, a mount that was meant to be refused), at all
    costs as every helper here does. How the unmount went is not checked: the body checks what it means to."""
    try:
        yield
    finally:
        for p in paths:
            m = _adopt(p)
            if m is None:
                continue
            exe = unionfs_bin()
            polite = [["umount", str(p)]]
            if m.kind == "unionfs" and exe is not None:
                polite = [[str(exe), "umount", str(p)], ["fusermount3", "-u", str(p)]]
            elif m.is_fuse:
                polite = [["fusermount3", "-u", str(p)]]
            _unmount(m, polite)


#: the implementations a test may run against, by name
IMPLEMENTATIONS: dict[str, Callable[..., contextlib.AbstractContextManager[Mount]]] = {
    "unionfs": unionfs_mount,
    "fuse-overlayfs": fuse_overlayfs_mount,
    "kernel": kernel_overlay,
}


def implementation_under_test() -> str:
    """The implementation the mount tests exercise: ``$UNIONFS_TEST_IMPL``, ``unionfs`` by default.

    ``UNIONFS_TEST_IMPL=fuse-overlayfs`` or ``=kernel`` run the same tests against fuse-overlayfs or the
    kernel's overlayfs, which validates the harness itself (the kernel against itself must always pass).
    """
    impl = os.environ.get("UNIONFS_TEST_IMPL", "unionfs")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"UNIONFS_TEST_IMPL={impl!r}: expected one of {sorted(IMPLEMENTATIONS)}")
    return impl


def require_implementation() -> Callable[..., contextlib.AbstractContextManager[Mount]]:
    """Skip unless the implementation under test can run here; return its mount helper.

    The helper takes ``(lowers, upper, work, mnt)`` with ``lowers`` base first.
    """
    impl = implementation_under_test()
    require(skip_reason_root())
    if impl == "unionfs":
        require(skip_reason_fuse(), skip_reason_unionfs())
    elif impl == "fuse-overlayfs":
        require(skip_reason_fuse(), skip_reason_tool("fuse-overlayfs"))
    else:
        require(skip_reason_kernel_overlay())
    return IMPLEMENTATIONS[impl]



@contextlib.contextmanager
def private_tmpdir(prefix: str) -> Iterator[Path]:
    """A fresh directory for mounts, outside pytest's numbered temporary directories.

    pytest renames and deletes old ``pytest-N`` directories of *other* sessions; with several sessions at
    once (root shares /tmp/pytest-of-root) that can move a live mount away under a test. This directory is
    in ``$UNIONFS_TEST_TMP`` (default: the system's temporary directory) and is removed afterwards, unless
    something is still mounted below it (it is never deleted through a mount).
    """
    d = Path(tempfile.mkdtemp(prefix=f"unionfs-{prefix}-", dir=os.environ.get("UNIONFS_TEST_TMP") or None))
    try:
        yield d
    finally:
        left = leftover_mounts(d)
        if left:
            raise AssertionError(f"mounts left behind under {d}: {left}")
        shutil.rmtree(d, ignore_errors=True)


def leftover_mounts(under: Path | str) -> list[str]:
    """Mountpoints (from /proc/self/mountinfo) at or below ``under``: what a test must not leave."""
    base = os.path.realpath(under)
    return [e.mountpoint for e in mountinfo() if e.mountpoint == base or e.mountpoint.startswith(base + "/")]
