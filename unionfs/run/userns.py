"""A user namespace of one's own, as rootless podman makes one, so that a user other than root runs containers.

:func:`enter` forks. The child makes a new user namespace and a new mount namespace and goes on with the
command, as root of that namespace: it may mount (the container's FUSE mount, ``/proc``, binds), make the
other namespaces a container needs, and change owners within its map. The parent stays outside, maps the
child's ids, waits for it, passes it the signals sent to the parent alone, and exits with its status.

The map is podman's: namespace id 0 is the user (and the user's group), and ids 1..N are the first range of
subordinate ids ``/etc/subuid`` and ``/etc/subgid`` give the user (written by the setuid helpers ``newuidmap`` and
``newgidmap``, package uidmap). A user without ranges, or without the helpers, gets 0 alone: then an image's other
users cannot be switched to (``-u 33`` fails), and files owned by them show as the overflow id.

Contracts:

* Nothing of the host changes: the mounts the child makes live in its own mount namespace (every mount
  private), and disappear with its last process; a killed parent takes the child with it (PDEATHSIG).
* The user's own files stay the user's: a store used in the namespace keeps owners in overrides
  (:mod:`unionfs.layer.ownership`), never as subordinate owners the user could not remove outside it.
* A failure before the child goes on (no user namespaces, a map refused) raises :class:`SandboxError` in the
  calling process, which is then still the only one.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
from typing import NoReturn

from unionfs.errors import SandboxError
from unionfs.fsops import MS_PRIVATE, MS_REC, check, libc
from unionfs.layer import ownership

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
#: signals the parent passes on to the child (sent to the parent by kill(1), a service manager...)
FORWARDED = (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
#: signals the parent ignores: a terminal sends them to its whole foreground process group, the child included
TERMINAL = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH)


def needed() -> bool:
    """True when this process must enter a namespace of its own to run containers: it is not root (root of
    any user namespace already may)."""
    return os.geteuid() != 0


def subordinate_range(path: str, uid: int) -> tuple[int, int] | None:
    """The first (start, count) ``path`` (``/etc/subuid`` or ``/etc/subgid``) gives the user ``uid`` (by name or
    number); None when it gives none (or cannot be read)."""
    try:
        names = {str(uid), pwd.getpwuid(uid).pw_name}
    except KeyError:
        names = {str(uid)}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2].isdigit():
                    if int(fields[2]) > 0:
                        return int(fields[1]), int(fields[2])
    except OSError:
        pass
    return None


def id_maps(uid: int, gid: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The (inside, outside, count) lines of the uid and gid maps for the user ``uid``:``gid`` (see the module
    docstring)."""
    maps = []
    for path, own in (("/etc/subuid", uid), ("/etc/subgid", gid)):
        lines = [(0, own, 1)]
        sub = subordinate_range(path, uid)
        if sub is not None and shutil.which("newuidmap") and shutil.which("newgidmap"):
            lines.append((1, sub[0], sub[1]))
        maps.append(lines)
    return maps[0], maps[1]


def enter() -> None:
    """Go on in a new user and mount namespace as its root (see the module docstring). Returns in the child
    only; the parent exits with the child's status."""
    uid, gid = os.geteuid(), os.getegid()
    uids, gids = id_maps(uid, gid)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _child(ready_w, go_r)
        return
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 64) != b"u":
            _wait_and_exit(pid)  # the child could not make its namespace: it reported and exits
        _write_maps(pid, uids, gids)
        os.write(go_w, b"go")
    except (OSError, SandboxError) as e:
        os.write(go_w, f"cannot map ids: {e}".encode()[:500])
        _wait_and_exit(pid)
    finally:
        os.close(ready_r)
        os.close(go_w)
    _wait_and_exit(pid)


def _child(ready_w: int, go_r: int) -> None:
    check(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0), "prctl")
    try:
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    except OSError as e:
        os.write(ready_w, b"x")
        raise SandboxError(f"cannot make a user namespace ({e.strerror}): user namespaces may be off "
                           "(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)") from None
    os.write(ready_w, b"u")
    os.close(ready_w)
    answer = os.read(go_r, 512)
    os.close(go_r)
    if answer != b"go":
        raise SandboxError(answer.decode(errors="replace") or "the parent went away")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    ownership.uid_map.cache_clear()  # read before: the host's map
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")


def _write_maps(pid: int, uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]]) -> None:
    """Map the ids of the namespace of ``pid``: through newuidmap/newgidmap for more than one line, else by
    writing the maps (a user may map its own ids, once setgroups is denied)."""
    if len(uids) > 1 or len(gids) > 1:
        for prog, lines in (("newuidmap", uids), ("newgidmap", gids)):
            args = [str(x) for line in lines for x in line]
            r = subprocess.run([prog, str(pid), *args], capture_output=True, text=True)
            if r.returncode != 0:
                raise SandboxError(f"{prog}: {r.stderr.strip() or f'exit status {r.returncode}'}")
        return
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write("".join(f"{a} {b} {c}\n" for a, b, c in uids))
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write("".join(f"{a} {b} {c}\n" for a, b, c in gids))


def _wait_and_exit(pid: int) -> NoReturn:
    """Wait for the child (passing it :data:`FORWARDED` signals, ignoring :data:`TERMINAL` ones) and exit with
    its status (128+N when killed by signal N)."""
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    for sig in TERMINAL:
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 1 << 8
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)
