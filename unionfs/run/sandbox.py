"""Run one command in a rootfs directory (a union mount of an image), isolated as docker isolates a container.

``run(rootfs, process)`` starts ``python -m unionfs.run.sandbox`` (the *helper*) in a new session. The helper
makes new mount, PID, UTS, IPC and (unless ``network="host"``) network namespaces (``unshare(2)`` through
ctypes), brings the new namespace's loopback up (``SIOCSIFFLAGS``), makes every mount private and forks PID 1
of the new PID namespace, which, before anything of the image runs,

* makes itself non-dumpable and closes every fd but 0-2, the error pipe to the caller and (``tty``) the
  console socket;
* binds the rootfs onto itself and remounts that bind ``nodev`` and never ``nosuid`` (set-uid binaries of
  the image work as in docker, whatever the host-side mount's flags), then mounts a fresh ``/proc`` with
  docker's default masks (``MASKED_PATHS`` covered by an empty read-only tmpfs or ``/dev/null``,
  ``READONLY_PATHS`` bound read-only), a ``nodev`` tmpfs ``/dev`` holding ``null zero full random urandom
  tty`` bind-mounted from the host (plus ``fd``/``stdin``/``stdout``/``stderr`` links, a ``nodev`` tmpfs
  ``/dev/shm``, a new devpts instance with ``ptmx``), a generated ``/etc/hosts``, a copy of the host's
  ``/etc/resolv.conf``, the caller's bind mounts (``Bind``) and tmpfs mounts (``Tmpfs``; a missing mount
  point is created in the rootfs, as docker does), every target resolved inside the rootfs (``rootpath``),
  never through the host's ``/``; then remounts every other mount under the rootfs (volumes and their
  submounts) ``nodev`` too, and last, with ``read_only``, the rootfs bind read-only;
* ``pivot_root``s into the rootfs and unmounts the old root (``MNT_DETACH``; ``pivot_root(".", ".")``
  creates no directory in the rootfs): from here on no host path is reachable by PID 1 or its children;
* drops every capability but the command's (``capabilities``: docker's default set ``DEFAULT_CAPABILITIES``
  unless ``--cap-add``/``--cap-drop`` changed it, ``capability_mask``): from the bounding set, the ambient
  set (cleared), permitted and effective, where only CAP_SETUID and CAP_SETGID stay a little longer
  (``USER_SWITCH_CAPS``, permitted and effective, not bounding); the inheritable set is empty;
* forks the command, which resolves the user in the rootfs's ``/etc/passwd`` and ``/etc/group`` (name or
  uid, optional ``:group``/``:gid``; supplementary groups from ``/etc/group``), creates and enters the
  working directory; with ``tty`` opens a new pty of the container's devpts, hands its master to the caller
  (SCM_RIGHTS over the console socket; the caller sets the window size, then lets it go on), closes the
  master, ``setsid``s and makes the slave its controlling terminal and its 0-1-2 (``_take_console``, as
  runc); drops to the user (a non-root user keeps no capability; root keeps exactly ``capabilities``), sets
  no_new_privs when asked, closes every fd but 0-2 and execs the command with the given environment
  (``PATH``, ``HOME`` and ``HOSTNAME`` filled in when missing), searched in its ``PATH``;
* forwards the signals the helper forwards to it, reaps every orphan, and exits with the command's status.

``privileged`` skips the capability drops, the /proc masks and every ``nodev`` (the pivot, the namespaces
and the non-dumpable PID 1 stay).

Contracts:

* Isolation (docker's defaults; ``privileged``, ``network="host"``, capabilities added beyond the default
  set and a tmpfs with ``dev`` (only with ``privileged``) are explicit opt-ins): every process of the
  container has the rootfs as ``/`` and its cwd inside it, holds no fd to the host but the caller's
  stdin/stdout/stderr (with ``tty`` not even those: the command's 0-2 are the container's pty, whose master
  only the caller holds, and the helper and PID 1 have /dev/null as 0-2), and cannot open PID 1's ``/proc``
  entries (non-dumpable, no CAP_SYS_PTRACE unless added). Root in the container has exactly CapBnd =
  CapPrm = CapEff = ``capabilities`` (``DEFAULT_CAP_MASK``, 0xa80425fb, by default), no inheritable or
  ambient capability; PID 1 holds the same bounding set, and CAP_SETUID/CAP_SETGID permitted besides;
  no_new_privs is not set unless asked (as docker). A device node the container makes
  (CAP_MKNOD is kept) cannot be opened: every mount it can write to is ``nodev``; only the bound host nodes
  and devpts work. The network is a namespace of its own with only ``lo`` (up): ``none``; docker's
  ``bridge`` is not offered (``check_network`` refuses it).
* Not isolated: no cgroup limits (memory, CPU, pids, devices), no seccomp filter, no user namespace of its
  own (when the caller is the host's root, root in the container is root on the host, held back only by the
  above; a user other than root calls from a namespace of its own: :mod:`unionfs.run.userns`), no
  AppArmor/SELinux profile; volumes
  keep their host-side flags but ``nodev``; ``/sys`` is not mounted.
* Nothing outlives the call. When PID 1 exits the kernel kills what the command left running in its PID
  namespace; every mount made for the command lives only in the private mount namespace, which disappears
  with its last process, so nothing is mounted on (and nothing keeps busy) the caller's rootfs mount.
* Mount targets must exist in the rootfs: ``make_init_layer`` writes the missing ones as placeholders into a
  directory meant to be the topmost read-only lower of the union (docker's "init layer"), so that they are
  never written into the upper, i.e. never end up in a committed layer.
* The exit status is the command's, or 128+N when a signal N killed it. SIGHUP, SIGINT, SIGQUIT, SIGTERM,
  SIGUSR1, SIGUSR2 and SIGWINCH sent to the caller (while ``run`` waits, in the main thread) reach the
  command (with ``tty`` SIGWINCH resizes the pty instead, and the kernel signals its foreground job). A
  failure before the command runs raises ``SandboxError`` (exit 125), ``UnknownUserError`` (126: the user
  or group is not in the image) or ``ExecError`` (127 not found, 126 not executable); a non-zero status
  raises ``CommandFailedError`` when ``check`` is set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator, Sequence

from unionfs.errors import CommandFailedError, ExecError, SandboxError, UnionfsError, UnknownUserError, UsageError
from unionfs.fsops import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
    check,
    libc,
    remove_tree,
)
from unionfs.mountinfo import mounts
from unionfs.rootpath import resolve_in_root

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000


PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_FLAGS = struct.Struct("16sh22x")  # struct ifreq: the name, then ifr_flags in a 24-byte union

#: docker's default capabilities (moby's oci/caps/defaults.go), by number
DEFAULT_CAPABILITIES = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
                        "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
                        "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}
DEFAULT_CAP_MASK = sum(1 << n for n in DEFAULT_CAPABILITIES.values())  # 0xa80425fb
#: every capability by name and number (linux/capability.h), for ``--cap-add``/``--cap-drop``
CAPABILITIES = {name: n for n, name in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE"))}
#: docker's default masked paths (an empty read-only tmpfs on a directory, /dev/null on a file)
MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi")
#: docker's default read-only paths
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
#: ``none``: a new network namespace with only a loopback (up); ``host``: the host's network
NETWORK_MODES = ("none", "host")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"))
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGWINCH)
#: bytes of a command's output kept for an error message
OUTPUT_TAIL = 64 * 1024


# ---------------------------------------------------------------------------
# what to run
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Bind:
    """A host path bind-mounted at ``target`` inside the rootfs (read-only when ``read_only``)."""

    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> "Bind":
        """``HOST:CONTAINER[:ro|rw]`` (HOST made absolute); raises UsageError."""
        parts = text.split(":")
        ro = False
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            ro = parts[2] == "ro"
            parts = parts[:2]
        if len(parts) != 2 or not parts[0] or not parts[1].startswith("/"):
            raise UsageError(f"invalid volume {text!r}: expected HOST:/CONTAINER[:ro]")
        src = os.path.abspath(parts[0])
        if not os.path.exists(src):
            raise UsageError(f"volume source {parts[0]} does not exist")
        return cls(src, os.path.normpath(parts[1]), ro)


#: ``--tmpfs`` options that are mount flags: (set, clear) per word; docker's defaults are noexec,nosuid,nodev
_TMPFS_FLAGS = {"rw": (0, MS_RDONLY), "ro": (MS_RDONLY, 0), "exec": (0, MS_NOEXEC), "noexec": (MS_NOEXEC, 0),
                "suid": (0, MS_NOSUID), "nosuid": (MS_NOSUID, 0), "dev": (0, MS_NODEV), "nodev": (MS_NODEV, 0)}
#: ``--tmpfs`` options passed to tmpfs as data, with the values each takes
_TMPFS_DATA = {"size": r"[0-9]+[kKmMgG%]?", "nr_blocks": r"[0-9]+[kKmMgG]?", "nr_inodes": r"[0-9]+[kKmMgG]?",
               "mode": r"[0-7]{3,4}", "uid": r"[0-9]+", "gid": r"[0-9]+"}


@dataclass(frozen=True)
class Tmpfs:
    """A fresh tmpfs mounted at ``target`` inside the rootfs (``--tmpfs``), with mount ``flags`` (``MS_*``)
    and tmpfs ``data`` (``size=...,mode=...``)."""

    target: str
    flags: int = MS_NOEXEC | MS_NOSUID | MS_NODEV
    data: str = ""

    @classmethod
    def parse(cls, text: str) -> "Tmpfs":
        """docker's ``PATH[:OPTIONS]``: OPTIONS a comma list of ``rw ro exec noexec suid nosuid dev nodev``
        (docker's defaults ``noexec,nosuid,nodev``, later words win) and ``size= nr_blocks= nr_inodes= mode=
        uid= gid=``. Raises SandboxError for anything else."""
        path, _, opts = text.partition(":")
        if not path.startswith("/") or os.path.normpath(path) == "/":
            raise SandboxError(f"invalid tmpfs {text!r}: the mount point must be an absolute path other than /")
        flags = cls.flags
        data = []
        for word in filter(None, opts.split(",")):
            key, eq, value = word.partition("=")
            if not eq and key in _TMPFS_FLAGS:
                on, off = _TMPFS_FLAGS[key]
                flags = (flags | on) & ~off
            elif eq and key in _TMPFS_DATA and re.fullmatch(_TMPFS_DATA[key], value):
                data.append(word)
            else:
                raise SandboxError(f"invalid tmpfs option {word!r} in {text!r}: expected rw, ro, [no]exec, "
                                   "[no]suid, [no]dev, size=, nr_blocks=, nr_inodes=, mode=, uid= or gid=")
        return cls(os.path.normpath(path), flags, ",".join(data))


def capability_mask(add: Sequence[str] = (), drop: Sequence[str] = ()) -> int:
    """The capabilities of a command, as docker's ``--cap-add``/``--cap-drop`` make them from its default set:
    names with or without ``CAP_``, any case; ``ALL`` in ``add`` is every capability but those dropped, ``ALL``
    in ``drop`` leaves only those added, otherwise the default set minus ``drop`` plus ``add``. Capabilities
    the kernel lacks are left out. Raises SandboxError for an unknown name."""
    def numbers(names: Sequence[str]) -> set[int | str]:
        out: set[int | str] = set()
        for name in names:
            key = name.upper().removeprefix("CAP_")
            if key == "ALL":
                out.add("ALL")
            elif key in CAPABILITIES:
                out.add(CAPABILITIES[key])
            else:
                raise SandboxError(f"unknown capability {name!r}")
        return out

    adds, drops = numbers(add), numbers(drop)
    every = set(range(_last_cap() + 1))
    if "ALL" in adds:
        caps = every - drops
    elif "ALL" in drops:
        caps = adds - {"ALL"}
    else:
        caps = (set(n for n in DEFAULT_CAPABILITIES.values()) - drops) | adds
    return sum(1 << n for n in caps if isinstance(n, int) and n in every)


def _last_cap() -> int:
    """The kernel's highest capability number."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def check_hostname(name: str) -> None:
    """Raise SandboxError unless ``name`` can be a hostname: 1 to 64 bytes, no NUL, no blank, no ``/``."""
    if not name or len(name.encode()) > 64 or any(c in name for c in "\0/ \t\n"):
        raise SandboxError(f"invalid hostname {name!r}: 1 to 64 characters, no blanks and no /")


@dataclass(frozen=True)
class Process:
    """The command and its settings: ``argv`` (searched in the environment's PATH), ``env`` (``K=V``
    strings), ``user`` (``""`` root, ``name``, ``uid``, with ``:group``/``:gid``), ``workdir`` (created when
    missing), ``hostname``, bind mounts, and the opt-outs of the default isolation (see the module
    docstring): ``network``, ``privileged``, ``no_new_privileges``."""

    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = "/"
    hostname: str = "unionfs"
    binds: tuple[Bind, ...] = field(default=())
    #: one of NETWORK_MODES (``check_network``)
    network: str = "none"
    #: all capabilities, no masked or read-only /proc paths, device nodes usable everywhere
    privileged: bool = False
    #: set no_new_privs for the command (``--security-opt no-new-privileges``)
    no_new_privileges: bool = False
    #: the capabilities of root in the container unless ``privileged`` (``capability_mask``)
    capabilities: int = DEFAULT_CAP_MASK
    #: the rootfs mounted read-only (``/dev``, ``/dev/shm``, tmpfs mounts and volumes keep theirs)
    read_only: bool = False
    #: tmpfs mounts (``--tmpfs``); a missing mount point is created in the rootfs, as docker does
    tmpfs: tuple[Tmpfs, ...] = ()
    #: the command gets a new pty of the container's devpts as its 0-2 and controlling terminal; ``run``
    #: relays between the caller's terminal and the pty's master (``terminal.relay``)
    tty: bool = False

    def mount_targets(self) -> list[tuple[str, bool]]:
        """Paths inside the rootfs that get something mounted on them, with True for a directory."""
        out = [("/proc", True), ("/dev", True), ("/etc/hosts", False), ("/etc/resolv.conf", False)]
        out += [(b.target, os.path.isdir(b.source)) for b in self.binds]
        out += [(t.target, True) for t in self.tmpfs]
        return out


def check_network(mode: str) -> None:
    """Raise SandboxError unless ``mode`` is one of NETWORK_MODES (``bridge``, docker's default, is not
    offered: there is no bridge; ``none`` is the default here)."""
    if mode == "bridge":
        raise SandboxError("network mode bridge is not available (no bridge networking): use none (the default) "
                           "or host")
    if mode not in NETWORK_MODES:
        raise SandboxError(f"unknown network mode {mode!r}: expected none or host")


def no_new_privileges(options: Sequence[str]) -> bool:
    """Whether docker-style ``--security-opt`` ``options`` ask for no_new_privs. Only ``no-new-privileges``
    (alone, ``:true``/``=true``, ``:false``/``=false``) is offered; anything else raises SandboxError."""
    wanted = False
    for opt in options:
        key, sep, value = opt.replace("=", ":", 1).partition(":")
        if key != "no-new-privileges" or (sep and value not in ("true", "false")):
            raise SandboxError(f"unsupported security option {opt!r}: only no-new-privileges is offered "
                               "(no seccomp, AppArmor or SELinux)")
        wanted = not sep or value == "true"
    return wanted


@dataclass(frozen=True)
class Completed:
    """A finished command: its exit status (128+N for signal N) and the tail of its captured output."""

    status: int
    output: str = ""


# ---------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------

def _db(root: str, name: str) -> list[list[str]]:
    try:
        with open(resolve_in_root(root, f"/etc/{name}"), encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(root: str, spec: str) -> tuple[int, int, list[int], str]:
    """``(uid, gid, supplementary gids, home)`` for ``spec`` in the rootfs ``root``'s passwd and group files.

    ``""`` is root. A numeric uid missing from passwd gets gid 0 and home ``/``. Raises UnknownUserError (a
    SandboxError) for a name that is not in the files.
    """
    user, _, group = (spec or "0").partition(":")
    passwd = _db(root, "passwd")
    entry = None
    for e in passwd:
        if len(e) >= 6 and (e[0] == user or (user.isdigit() and e[2] == user)):
            entry = e
            break
    if entry is not None:
        uid, gid, home, name = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif user.isdigit():
        uid, gid, home, name = int(user), 0, "/", None
    else:
        raise UnknownUserError(f"unable to find user {user}: no matching entries in passwd file")
    groups_db = _db(root, "group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [e for e in groups_db if len(e) >= 3 and e[0] == group]
            if not found:
                raise UnknownUserError(f"unable to find group {group}: no matching entries in group file")
            gid = int(found[0][2])
    extra = [gid]
    if name is not None and not group:
        for e in groups_db:
            if len(e) >= 4 and name in e[3].split(",") and e[2].isdigit() and int(e[2]) not in extra:
                extra.append(int(e[2]))
    return uid, gid, extra, home


# ---------------------------------------------------------------------------
# the init layer: placeholders for mount targets
# ---------------------------------------------------------------------------

def make_init_layer(dest: str, lowers: Sequence[str], targets: Sequence[tuple[str, bool]]) -> None:
    """Write into ``dest`` (an empty directory) placeholders for the mount ``targets`` the union of
    ``lowers`` (base first) lacks, to be mounted as the topmost lower.

    A directory on the way that the lowers have is mirrored with their mode, owner and mtime, so the merged
    view is unchanged; a path that runs through a non-directory (a symlink) gets no placeholder (the
    sandbox resolves it inside the rootfs).
    """
    from unionfs.union.view import Union

    union = Union(list(lowers)) if lowers else None
    mirrored: dict[str, os.stat_result] = {}

    def lookup(path: str) -> os.stat_result | None:
        if union is None:
            return None
        node = union.try_lookup(path)
        return node.st if node is not None else None

    root_st = lookup("/")
    if root_st is not None:
        mirrored["/"] = root_st
    for target, is_dir in targets:
        parts = [p for p in target.split("/") if p]
        cur = ""
        for i, name in enumerate(parts):
            cur = cur + "/" + name
            last = i == len(parts) - 1
            st = lookup(cur)
            host = os.path.join(dest, cur.lstrip("/"))
            if st is not None:
                if not stat.S_ISDIR(st.st_mode):
                    break
                if not last and not os.path.isdir(host):
                    os.mkdir(host)
                    mirrored[cur] = st
                continue
            if last and not is_dir:
                if not os.path.lexists(host):
                    os.close(os.open(host, os.O_WRONLY | os.O_CREAT, 0o644))
            elif not os.path.isdir(host):
                os.mkdir(host, 0o755)
    for path in sorted(mirrored, key=len, reverse=True):
        host = os.path.join(dest, path.lstrip("/")) if path != "/" else dest
        st = mirrored[path]
        os.chown(host, st.st_uid, st.st_gid)
        os.chmod(host, stat.S_IMODE(st.st_mode))
        os.utime(host, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---------------------------------------------------------------------------
# the caller's side
# ---------------------------------------------------------------------------

def hosts_file(hostname: str) -> str:
    """The /etc/hosts given to a command."""
    return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n")


@contextlib.contextmanager
def _forwarding(target: list[int]) -> Iterator[None]:
    """While the block runs, forward FORWARDED_SIGNALS sent to this process to ``target[0]`` once it is set
    (main thread only; elsewhere signals keep their handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: Any) -> None:
        if target:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target[0], signum)

    old = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def helper_env() -> dict[str, str]:
    """The helper's environment: ``PATH``, and ``PYTHONPATH`` the directory holding this ``unionfs`` package,
    so that the helper runs this code whatever else is installed."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../unionfs
    return {"PATH": os.environ.get("PATH", DEFAULT_PATH), "PYTHONPATH": os.path.dirname(package)}


def check_process(process: Process, *, captured: bool = False) -> None:
    """Raise SandboxError for settings ``run`` cannot honour: no command, an unknown network mode, a bad
    hostname, a ``--tmpfs`` without ``nodev`` unless ``privileged`` (every mount the container can write is
    nodev), a ``tty`` whose output is to be ``captured``."""
    if not process.argv:
        raise SandboxError("no command to run")
    check_network(process.network)
    check_hostname(process.hostname)
    if not process.privileged:
        for t in process.tmpfs:
            if not t.flags & MS_NODEV:
                raise SandboxError(f"tmpfs {t.target}: option dev needs --privileged (every mount the container "
                                   "can write is nodev)")
    if process.tty and captured:
        raise SandboxError("the output of a command with a terminal (tty) cannot be captured")


def run(rootfs: str, process: Process, *, stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None,
        output: Callable[[bytes], None] | None = None, check: bool = True, timeout: float | None = None
        ) -> Completed:
    """Run ``process`` isolated in ``rootfs`` (see the module docstring) and wait for it; with ``timeout``, at
    most that many seconds: then the container is killed and ``subprocess.TimeoutExpired`` raised once it is
    gone (not with ``output``, whose pipe is read to its end).

    ``stdin``/``stdout``/``stderr`` are passed on as to ``subprocess.Popen`` (None: inherited). With
    ``output``, stdout and stderr go together through a pipe: every chunk goes to ``output`` and the tail is
    kept for the result and for errors. With ``process.tty`` the command's 0-2 are a pty of the container:
    what ``stdin`` gives (None: this process's fd 0; DEVNULL: nothing) is typed into it and what the command
    writes goes to ``stdout`` (None: fd 1) through ``terminal.relay`` (raw mode, window size, restored after);
    the pty's master never enters the container. Raises SandboxError (``check_process``, the sandbox),
    UnknownUserError (126), ExecError, and CommandFailedError when ``check`` is set and the status is not 0.
    """
    check_process(process, captured=output is not None)
    if timeout is not None and (output is not None or process.tty):
        raise ValueError("a timeout is for a command whose output is not relayed")
    rootfs = os.path.realpath(rootfs)  # as the mount table names it
    if not os.path.isdir(rootfs):
        raise SandboxError(f"rootfs {rootfs} is not a directory")
    if os.geteuid() != 0:
        raise SandboxError("running a command in a rootfs needs root (namespaces, chroot, mounts)")
    priv = tempfile.mkdtemp(prefix="unionfs-sandbox-")
    console = socket.socketpair() if process.tty else None  # the caller's end, the container's end
    try:
        hosts = os.path.join(priv, "hosts")
        with open(hosts, "w") as f:
            f.write(hosts_file(process.hostname))
        resolv = os.path.join(priv, "resolv.conf")
        try:
            shutil.copyfile("/etc/resolv.conf", resolv)
        except OSError:
            open(resolv, "w").close()
        os.chmod(priv, 0o755)
        for p in (hosts, resolv):
            os.chmod(p, 0o644)
        r, w = os.pipe()
        fds = (w,) if console is None else (w, console[1].fileno())
        spec = {"root": rootfs, "argv": list(process.argv), "env": list(process.env), "user": process.user,
                "workdir": process.workdir or "/", "hostname": process.hostname, "errfd": w,
                "consolefd": console[1].fileno() if console else -1,
                "hosts": hosts, "resolv": resolv,
                "binds": [[b.source, b.target, b.read_only] for b in process.binds],
                "tmpfs": [[t.target, t.flags, t.data] for t in process.tmpfs],
                "network": process.network, "privileged": process.privileged,
                "capabilities": process.capabilities, "read_only": process.read_only,
                "no_new_privileges": process.no_new_privileges, "setgroups_denied": setgroups_denied()}
        env = helper_env()
        if console is not None:  # the command's 0-2 are the pty: the helper and PID 1 hold no host terminal
            streams: dict[str, Any] = dict.fromkeys(("stdin", "stdout", "stderr"), subprocess.DEVNULL)
        else:
            streams = {"stdin": stdin, "stdout": subprocess.PIPE if output else stdout,
                       "stderr": subprocess.STDOUT if output else stderr}
        tail = bytearray()
        helper: list[int] = []
        try:
            with _forwarding(helper):
                # the helper starts with the forwarded signals blocked and unblocks them once its handlers
                # are in place: a signal sent meanwhile waits instead of killing it half-way
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "unionfs.run.sandbox", json.dumps(spec)],
                                            pass_fds=fds, start_new_session=True, env=env, cwd="/", **streams)
                    helper.append(proc.pid)
                except OSError as e:
                    raise SandboxError(f"cannot start the sandbox helper: {e.strerror}") from None
                finally:
                    os.close(w)
                    if console is not None:
                        console[1].close()
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                try:
                    if console is not None:
                        _attach(console[0], stdin, stdout)
                    elif output is not None:
                        assert proc.stdout is not None
                        fd = proc.stdout.fileno()
                        while chunk := os.read(fd, 65536):
                            output(chunk)
                            tail += chunk
                            if len(tail) > OUTPUT_TAIL:
                                del tail[:-OUTPUT_TAIL]
                        proc.stdout.close()
                    status = proc.wait(timeout)
                except BaseException:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()  # PID 1 of the namespace dies with the helper's kill below
                    proc.wait()
                    raise
            report = b""
            while chunk := os.read(r, 65536):
                report += chunk
        finally:
            os.close(r)
    finally:
        if console is not None:
            console[0].close()
        with contextlib.suppress(OSError, UnionfsError):
            remove_tree(priv)
    text = tail.decode(errors="replace")
    if report.startswith(b"error:"):
        _, code, kind, msg = report.decode(errors="replace").split(":", 3)
        msg = msg.strip().splitlines()[0] if msg.strip() else "failed"
        if kind == "user":
            raise UnknownUserError(msg)
        if int(code) in (126, 127):
            raise ExecError(msg, int(code))
        raise SandboxError(msg)
    if check and status != 0:
        shown = " ".join(process.argv)
        raise CommandFailedError(f"the command '{shown}' returned a non-zero code: {status}",
                                 list(process.argv), status, text)
    return Completed(status, text)


def _attach(sock: socket.socket, stdin: int | IO[Any] | None, stdout: int | IO[Any] | None) -> None:
    """Take the pty master the command sends over ``sock`` and relay between it and ``stdin``/``stdout``
    (``terminal.relay``) until the container's last process holding the pty is gone. Returns at once when the
    command failed before it had a pty (its error comes through the error pipe)."""
    from unionfs.run import terminal

    try:
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 4)
    except OSError:
        fds = []
    if not fds:
        return
    master = fds[0]
    for extra in fds[1:]:
        os.close(extra)
    try:
        source = None if stdin == subprocess.DEVNULL else _fileno(stdin, 0)
        terminal.relay(master, source, _fileno(stdout, 1), ready=lambda: sock.sendall(b"1"))
    finally:
        os.close(master)


def _fileno(stream: int | IO[Any] | None, default: int) -> int:
    """The fd of a ``run`` stream argument (None: ``default``)."""
    if stream is None:
        return default
    return stream if isinstance(stream, int) else stream.fileno()


# ---------------------------------------------------------------------------
# the helper (``python -m unionfs.run.sandbox SPEC``) and PID 1
# ---------------------------------------------------------------------------

def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (so a killed caller takes the namespace with it)."""
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:
        os._exit(125)


def _status(wstatus: int) -> int:
    if os.WIFSIGNALED(wstatus):
        return 128 + os.WTERMSIG(wstatus)
    return os.WEXITSTATUS(wstatus)


def _report(fd: int, code: int, message: str, kind: str = "") -> None:
    """Tell the caller, through the error pipe ``fd``, why the command does not run: ``code`` is the exit
    status, ``kind`` ``user`` for an UnknownUserError."""
    with contextlib.suppress(OSError):
        os.write(fd, f"error:{code}:{kind}:{message}\n".encode())


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _prctl(option: int, arg: int = 0, what: str = "prctl", ignore: tuple[int, ...] = ()) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0 and ctypes.get_errno() not in ignore:
        check(-1, what)


def _set_dumpable(on: bool) -> None:
    """A non-dumpable process's /proc entries (root, cwd, fd, exe, maps, mem, environ) and ptrace are closed
    to processes without CAP_SYS_PTRACE, i.e. to the container's commands (exec resets the flag)."""
    _prctl(PR_SET_DUMPABLE, int(on), "PR_SET_DUMPABLE")


#: capabilities PID 1 keeps (permitted, not bounding) beyond the command's for the command's switch to its user
#: (setgroups, setgid, setuid), dropped by the command itself right after (as runc: the user, then the caps)
USER_SWITCH_CAPS = (1 << DEFAULT_CAPABILITIES["SETGID"]) | (1 << DEFAULT_CAPABILITIES["SETUID"])


def _permitted() -> int:
    """This process's permitted capabilities (capget)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    check(libc.capget(ctypes.byref(header), data), "capget")
    return data[0].permitted | data[1].permitted << 32


def _set_capabilities(caps: int) -> None:
    """Permitted and effective become ``caps``, inheritable empty (capset)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = data[i].permitted = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = 0
    check(libc.capset(ctypes.byref(header), data), "capset")


def _drop_capabilities(keep: int, extra: int = 0) -> None:
    """Keep only the capabilities in the bit mask ``keep`` (those this process holds): the others leave the
    bounding set, the ambient set is cleared, permitted and effective become ``keep`` plus ``extra`` (held a
    little longer, see USER_SWITCH_CAPS), inheritable empty (as docker since 20.10.14)."""
    held = _permitted()
    keep &= held
    for cap in range(64):
        if not keep >> cap & 1:  # EINVAL: beyond the kernel's last capability
            _prctl(PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set", (errno.EINVAL,))
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient capabilities", (errno.EINVAL,))
    _set_capabilities(keep | (extra & held))


def _loopback_up() -> None:
    """Bring up ``lo`` of this process's network namespace (SIOCSIFFLAGS; no ``ip`` binary needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, _IFREQ_FLAGS.pack(b"lo", 0)))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))


def _remount(target: str, add: int = 0, remove: int = 0) -> None:
    """Set the per-mount flags of the (bind) mount at ``target``: its read-only, nosuid, nodev and noexec
    flags (as statvfs reports them) minus ``remove`` plus ``add``; the kernel keeps its atime flags."""
    have = os.statvfs(target).f_flag
    flags = 0
    for st, ms in ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                   (os.ST_NOEXEC, MS_NOEXEC)):
        if have & st:
            flags |= ms
    _mount(None, target, None, MS_REMOUNT | MS_BIND | ((flags | add) & ~remove))


def _mask_proc(proc: str) -> None:
    """docker's default on the container's /proc, mounted at the host path ``proc``: READONLY_PATHS bound
    read-only onto themselves, MASKED_PATHS covered (a read-only empty tmpfs or /dev/null); absent ones
    skipped."""
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    for path in READONLY_PATHS:
        t = os.path.join(proc, os.path.relpath(path, "/proc"))
        if os.path.lexists(t):
            _mount(t, t, None, MS_BIND | MS_REC)
            _mount(None, t, None, MS_BIND | MS_REMOUNT | ro)
    for path in MASKED_PATHS:
        t = os.path.join(proc, os.path.relpath(path, "/proc"))
        if os.path.isdir(t):
            _mount("tmpfs", t, "tmpfs", ro, "mode=0555")
        elif os.path.lexists(t):
            _mount("/dev/null", t, None, MS_BIND)


def _setup_mounts(spec: dict[str, Any]) -> None:
    """In PID 1's private mount namespace, before the pivot: the rootfs bound onto itself (nodev, never
    nosuid), /proc (masked), /dev, /etc/hosts, /etc/resolv.conf and the caller's binds, every target resolved
    inside the rootfs; then nodev on every other mount under the rootfs but the device nodes (unless
    privileged)."""
    root = spec["root"]
    privileged = bool(spec.get("privileged"))
    nodev = 0 if privileged else MS_NODEV
    _mount(root, root, None, MS_BIND | MS_REC)  # a mount point to pivot to, with flags of its own
    _remount(root, add=nodev, remove=MS_NOSUID)

    def target(path: str, want_dir: bool) -> str | None:
        t = resolve_in_root(root, path)
        try:
            st = os.stat(t)
        except OSError:
            return None
        return t if stat.S_ISDIR(st.st_mode) == want_dir else None

    proc = target("/proc", True)
    if proc is None:
        raise OSError(0, "the rootfs has no /proc directory to mount proc on")
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not privileged:
        _mask_proc(proc)
    dev = target("/dev", True)
    if dev is None:
        raise OSError(0, "the rootfs has no /dev directory")
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC | nodev, "mode=755,size=65536k")
    devices = set()  # bind mounts of the host's nodes keep the host /dev's flags (not nodev)
    for name in DEV_NODES:
        p = os.path.join(dev, name)
        if not os.path.exists(f"/dev/{name}"):
            continue
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o666))
        _mount(f"/dev/{name}", p, None, MS_BIND)
        devices.add(p)
    for name, to in DEV_LINKS:
        os.symlink(to, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    _mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    with contextlib.suppress(OSError):
        _mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620")
        os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
        devices.add(os.path.join(dev, "pts"))  # devpts makes no node on mknod
    for path, src in (("/etc/hosts", spec["hosts"]), ("/etc/resolv.conf", spec["resolv"])):
        t = target(path, False)
        if t is not None:  # an image may lack /etc or point these elsewhere: then it goes without
            _mount(src, t, None, MS_BIND)
    for source, path, ro in spec["binds"]:
        t = target(path, os.path.isdir(source))
        if t is None:
            raise OSError(0, f"cannot mount {source} on {path}: no such "
                             f"{'directory' if os.path.isdir(source) else 'file'} in the rootfs")
        _mount(source, t, None, MS_BIND | MS_REC)
        if ro:
            _mount(None, t, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for path, flags, data in spec.get("tmpfs", ()):
        host = resolve_in_root(root, path)
        if not os.path.lexists(host):
            os.makedirs(host, 0o755)  # as docker: in the container's upper (its parents resolved inside root)
        t = target(path, True)
        if t is None:
            raise OSError(0, f"cannot mount a tmpfs on {path}: not a directory in the rootfs")
        _mount("tmpfs", t, "tmpfs", flags, data or None)
    if not privileged:  # a volume, a submount: the container must not open a block device it makes there
        for m in mounts():
            mp = m.mountpoint
            if (mp.startswith(root + "/") and mp not in devices and mp != proc
                    and not mp.startswith(proc + "/") and "nodev" not in m.options):
                _remount(mp, add=MS_NODEV)
    if spec.get("read_only"):  # last: the mount points above may have been made in it
        _remount(root, add=MS_RDONLY)


def _pivot_root(root: str) -> None:
    """Make the mount point ``root`` this process's ``/`` and cwd; the old root (the host's) is unmounted
    (MNT_DETACH) from the namespace. ``pivot_root(".", ".")`` stacks the old root on the new one, so no
    put_old directory is made in the rootfs (nothing to remove afterwards)."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        new = os.open(root, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new)
            check(libc.pivot_root(b".", b"."), "pivot_root")
        finally:
            os.close(new)
        os.fchdir(old)
        _mount(None, ".", None, MS_SLAVE | MS_REC)  # the detach below must not propagate anywhere
        check(libc.umount2(b".", MNT_DETACH), "unmount the old root")
    finally:
        os.close(old)
    os.chdir("/")


def _close_fds(*keep: int) -> None:
    """Close every fd but 0-2 and ``keep`` (those of them that are not negative)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 0):
        os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _take_console(sock_fd: int, uid: int, gid: int) -> None:
    """Make a new pty of the container's devpts (``/dev/ptmx``, after the pivot) this process's terminal, as
    runc does for ``-t``: send its master to the caller over the socket ``sock_fd`` (SCM_RIGHTS) and wait
    until the caller has set the window size, close the master, then ``setsid`` and take the slave as
    controlling terminal (TIOCSCTTY) and as 0-1-2, owned by the command's user. The master is held by the
    caller only: no process of the container keeps it. (Runs after the pivot: nothing here may import.)"""
    master, slave = os.openpty()
    try:
        try:
            os.fchown(slave, uid, gid)
        except OSError as e:  # EINVAL: not mapped in a user's namespace; the user switch then says so
            if e.errno != errno.EINVAL:
                raise
        with socket.socket(fileno=os.dup(sock_fd)) as sock:
            socket.send_fds(sock, [b"pty"], [master])
            sock.recv(1)  # the caller's go-ahead (or EOF: it is gone, and so are we soon)
    finally:
        os.close(master)
        os.close(sock_fd)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def _exec_command(spec: dict[str, Any]) -> None:
    """In the command's process (already in the rootfs): user, working directory, exec. Never returns."""
    errfd = spec["errfd"]
    try:
        os.chdir("/")
        uid, gid, groups, home = resolve_user("/", spec["user"])
        env = list(spec["env"])
        keys = {e.split("=", 1)[0] for e in env}
        if "PATH" not in keys:
            env.insert(0, f"PATH={DEFAULT_PATH}")
        if "HOME" not in keys:
            env.append(f"HOME={home}")
        if "HOSTNAME" not in keys:
            env.append(f"HOSTNAME={spec['hostname']}")
        workdir = spec["workdir"] if spec["workdir"].startswith("/") else "/" + spec["workdir"]
        if not os.path.isdir(workdir):
            os.makedirs(workdir, 0o755, exist_ok=True)
        os.chdir(workdir)
        if spec.get("consolefd", -1) >= 0:
            _take_console(spec["consolefd"], uid, gid)
        _set_groups(groups, spec.get("setgroups_denied", False))
        try:
            os.setgid(gid)
            os.setuid(uid)  # a user other than root loses every capability here
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            raise SandboxError(f"user {uid}:{gid} is not mapped in this user namespace (a user other than root "
                               "maps ids other than its own from its ranges in /etc/subuid and /etc/subgid)") from None
        if uid == 0 and not spec.get("privileged"):
            _set_capabilities(spec.get("capabilities", DEFAULT_CAP_MASK) & _permitted())
        os.umask(0o022)
        for s in (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if spec.get("no_new_privileges"):
            _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
        _close_fds(errfd)
        os.set_inheritable(errfd, False)
        envmap = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    except UnknownUserError as e:  # 126, as podman
        _report(errfd, e.exit_code, str(e), "user")
        os._exit(e.exit_code)
    except SandboxError as e:
        _report(errfd, 125, str(e))
        os._exit(125)
    except OSError as e:
        _report(errfd, 125, f"cannot prepare the command: {e.strerror or e}")
        os._exit(125)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, envmap)
    except FileNotFoundError:
        _report(errfd, 127, f"exec {argv[0]}: no such file or directory in the image's PATH")
        os._exit(127)
    except OSError as e:
        _report(errfd, 126, f"exec {argv[0]}: {e.strerror}")
        os._exit(126)


def setgroups_denied() -> bool:
    """True in a user namespace that denies setgroups(2) (a user's own namespace mapping one id:
    :mod:`unionfs.run.userns`). Read by the caller: the command's processes are not dumpable, so their
    ``/proc/self`` is closed to them."""
    try:
        with open("/proc/self/setgroups", encoding="ascii") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def _set_groups(groups: list[int], denied: bool) -> None:
    """setgroups(2), unless the user namespace denies it (``denied``): the process then keeps the groups it has."""
    if not denied:
        os.setgroups(groups)


def _close_console(spec: dict[str, Any]) -> None:
    """Close this process's copy of the console socket: the caller then sees EOF when the command fails
    before it sends a pty."""
    if spec.get("consolefd", -1) >= 0:
        os.close(spec["consolefd"])


def _init(spec: dict[str, Any]) -> None:
    """PID 1 of the new PID namespace: mounts, pivot into the rootfs, drop capabilities, then run the
    command, forward signals, reap. Never returns."""
    errfd = spec["errfd"]
    _die_with_parent()
    try:
        _set_dumpable(False)
        _close_fds(errfd, spec.get("consolefd", -1))
        name = spec["hostname"].encode()
        check(libc.sethostname(name, len(name)), "sethostname")
        _setup_mounts(spec)
        _pivot_root(spec["root"])
        if not spec.get("privileged"):
            _drop_capabilities(spec.get("capabilities", DEFAULT_CAP_MASK), USER_SWITCH_CAPS)
    except OSError as e:
        _report(errfd, 125, f"cannot set up the sandbox: {e.strerror or e}")
        os._exit(125)
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        else:
            pending.append(signum)

    for s in FORWARDED_SIGNALS:
        signal.signal(s, forward)
    pid = os.fork()
    if pid == 0:
        _exec_command(spec)
    child.append(pid)
    os.close(errfd)  # only the command reports from here on (its copy closes on exec)
    _close_console(spec)
    for signum in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    status = 1
    while True:
        try:
            wpid, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if wpid == pid:
            status = _status(wstatus)
            break
    os._exit(status)  # the kernel kills whatever is left in the namespace


def main(argv: list[str] | None = None) -> int:
    """The helper: ``python -m unionfs.run.sandbox SPEC_JSON``; exits with the command's status."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    errfd = spec["errfd"]
    _die_with_parent()
    new_net = spec.get("network", "none") != "host"
    try:
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
                            | (CLONE_NEWNET if new_net else 0)), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        _report(errfd, 125, f"cannot create namespaces: {e.strerror or e}")
        return 125
    if new_net:
        try:
            _loopback_up()
        except OSError as e:
            _report(errfd, 125, f"cannot bring up the loopback interface: {e.strerror or e}")
            return 125
    pid1: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1[0], signum)

    for s in FORWARDED_SIGNALS:
        signal.signal(s, forward)
    pid = os.fork()
    if pid == 0:
        try:
            _init(spec)
        finally:
            os._exit(125)
    pid1.append(pid)
    os.close(errfd)
    _close_console(spec)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    _, wstatus = os.waitpid(pid, 0)
    return _status(wstatus)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Bind", "Process", "Tmpfs", "Completed", "run", "resolve_user", "make_init_layer", "hosts_file",
           "check_network", "check_hostname", "check_process", "capability_mask", "helper_env", "no_new_privileges",
           "DEFAULT_PATH", "DEFAULT_CAP_MASK", "CAPABILITIES", "NETWORK_MODES"]
