"""Long paths and long names through a union mount, as pjdfstest exercises them, with the kernel overlayfs as the
oracle.

pjdfstest's ``*/03`` tests (chmod chown ftruncate link mkdir mkfifo mknod open rmdir symlink truncate unlink) work
on a path of exactly PATH_MAX - 1 = 4095 bytes relative to their test directory (components of NAME_MAX / 2 = 127
characters): the operation must succeed, and the same path with one more byte must fail with ENAMETOOLONG.
``rename/02`` renames to and from such paths, ``open/02`` (and its peers) create names of exactly NAME_MAX = 255
bytes, where 256 bytes are ENAMETOOLONG. The test directory is itself inside the mount, so the path from the mount
root, and more so the path of the file in the upper layer, is longer than PATH_MAX: an implementation that works
on host paths made of its layer directory and the union path cannot do these operations. Here every case works
from a directory of the mount (``os.chdir``, or descriptors and ``dir_fd=`` for trees deeper than PATH_MAX), as
pjdfstest does.

Each case is a scenario of steps written like pjdfstest's ``expect``: an expected outcome (0, a value, or an
errno name), a label and a call. It runs on each mounted implementation of ``support.impls`` (the kernel
overlayfs, the daemon's defaults and ``-o passthrough=off``), over one lower directory with a little content
(some of it with 255-byte names or 4095-byte paths) and a fresh upper. The test fails on every step whose outcome
is not the expected one, and for a daemon on every step whose outcome is not the kernel's (the same scenario run
on the kernel overlayfs). Scenarios end by removing what they made and listing the test directory; the
temporary directories go with ``support.mount.private_tmpdir`` and every mount is unmounted, also on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import os
import random
import stat
import string
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from support.impls import IMPLS, MOUNTED, Impl, impl_param
from support.layers import Dir, File, build_layer
from support.mount import private_tmpdir, require

PATH_MAX = 4096  #: with its terminating NUL: the longest path a system call takes is 4095 bytes
NAME_MAX = 255
DEPTH, DEEP_NAME = 40, 200  #: the deep tree: 40 levels of 200-byte names, 8040 bytes from the test directory
NOBODY, NOGROUP = 65534, 65533
#: pjdfstest's file types (``create_file``), made with open, mkdir, mkfifo and mknod
KINDS = ("regular", "dir", "fifo", "block", "char", "socket")


# ---------------------------------------------------------------------------------------------------- names
def name(rng: random.Random, n: int) -> str:
    """``n`` random letters and digits (pjdfstest's ``namegen_len``)."""
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def long_path(seed: str, length: int = PATH_MAX - 1, component: int = NAME_MAX // 2) -> str:
    """pjdfstest's ``dirgen_max``: components of ``component`` random characters joined by '/', cut at ``length``
    bytes, a trailing '/' made an 'x'. The same ``seed`` gives the same path on every implementation."""
    rng = random.Random(seed)
    path = name(rng, component)
    while len(path) < length:
        path += "/" + name(rng, component)
    path = path[:length]
    return path[:-1] + "x" if path.endswith("/") else path


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


def sibling(path: str) -> str:
    """Another name of the same length in the same directory."""
    head, last = path.rsplit("/", 1)
    return f"{head}/{'s' * len(last)}"


def short(n: str) -> str:
    """A readable stand-in for a long name in listings and messages."""
    return n if len(n) <= 16 else f"{n[:6]}..({len(n)})"


_RNG = random.Random("names")
F255, D255, N255 = (name(_RNG, NAME_MAX) for _ in range(3))
LOWER_LONG = long_path("lower")  #: a file of the lower, 4095 bytes below its test directory


# ---------------------------------------------------------------------------------------------------- the union
#: the lower's test directory ``t``: a little content, two 255-byte names, the top of LOWER_LONG
LOWER_ENTRIES = [Dir("t"), File("t/lowfile", b"lower"), Dir("t/sub"), File("t/sub/f", b"sub"),
                 File(f"t/{F255}", b"name255"), Dir(f"t/{D255}"), File(f"t/{D255}/f", b"in a long-named dir")]
#: the listing of the test directory when a scenario has removed what it made
BASE_LISTING = sorted(short(n) for n in ("lowfile", "sub", F255, D255, LOWER_LONG.split("/", 1)[0]))


@contextlib.contextmanager
def working_in(d: Path | str) -> Iterator[None]:
    """The body runs with ``d`` as its working directory and umask 0; both are restored after."""
    cwd, mask = os.getcwd(), os.umask(0)
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.umask(mask)


def build_lower(lower: Path) -> Path:
    """The lower directory: LOWER_ENTRIES and the file LOWER_LONG (content ``lower``) below ``t``."""
    build_layer(lower, LOWER_ENTRIES)
    with working_in(lower / "t"):
        os.makedirs(parent(LOWER_LONG))
        Path(LOWER_LONG).write_bytes(b"lower")
        os.chmod(LOWER_LONG, 0o644)
    return lower


@dataclasses.dataclass
class Union:
    """One implementation over the lower, an upper and a work directory of ``tmp``."""

    impl: Impl
    tmp: Path

    @contextlib.contextmanager
    def mounted(self) -> Iterator[int]:
        """Mount the union (again, on the same upper) and work in its directory ``t``; yields a descriptor of it.
        The working directory is restored and the descriptor closed before the unmount."""
        t = self.tmp / "mnt" / "t"
        with self.impl.open([self.tmp / "lower"], self.tmp / "upper", self.tmp / "work", self.tmp / "mnt"):
            with working_in(t):
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    yield fd
                finally:
                    os.close(fd)


# ---------------------------------------------------------------------------------------------------- the log
def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What ``call`` gives: 0 for None, its value, or the name of the errno it raised."""
    try:
        value = call(*args, **kwargs)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return 0 if value is None else value


@dataclasses.dataclass
class Log:
    """pjdfstest's ``expect``: every step's label, outcome and expected outcome, in order."""

    steps: list[tuple[str, Any, Any]] = dataclasses.field(default_factory=list)

    def expect(self, want: Any, label: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        got = outcome(call, *args, **kwargs)
        self.steps.append((label, got, want))
        return got

    def outcomes(self) -> list[tuple[str, Any]]:
        return [(label, got) for label, got, _ in self.steps]

    def unexpected(self) -> list[tuple[str, Any, Any]]:
        """(label, outcome, expected) of every step that went otherwise."""
        return [(label, got, want) for label, got, want in self.steps if got != want]


Scenario = Callable[[Log, Union], None]


def run(impl: Impl, scenario: Scenario) -> Log:
    """Run ``scenario`` on ``impl`` over a fresh lower and upper; everything is removed after."""
    log = Log()
    with private_tmpdir("longpaths") as tmp:
        build_lower(tmp / "lower")
        scenario(log, Union(impl, tmp))
    return log


@functools.cache
def kernel_outcomes(scenario: Scenario) -> list[tuple[str, Any]] | None:
    """The outcomes of ``scenario`` on the kernel overlayfs (once per session), or None where it cannot run."""
    kernel = IMPLS["kernel"]
    if kernel.skip_reason():
        return None
    return run(kernel, scenario).outcomes()


def clip(value: Any, width: int = 240) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def check(impl: Impl, scenario: Scenario) -> None:
    """Every step of ``scenario`` on ``impl`` gives its expected outcome, and the kernel overlayfs's outcome."""
    log = run(impl, scenario)
    bad = [f"{label}: {clip(got)}, expected {clip(want)}" for label, got, want in log.unexpected()]
    if bad:
        pytest.fail(f"{impl.name}: {len(bad)} of {len(log.steps)} steps went otherwise:\n" + "\n".join(bad),
                    pytrace=False)
    kernel = None if impl.name == "kernel" else kernel_outcomes(scenario)
    if kernel is not None:
        differ = [f"{clip(mine)} / kernel: {clip(theirs)}"
                  for mine, theirs in itertools.zip_longest(log.outcomes(), kernel) if mine != theirs]
        if differ:
            pytest.fail(f"{impl.name}: steps whose outcome is not the kernel's:\n" + "\n".join(differ),
                        pytrace=False)


@pytest.fixture(params=[impl_param(n) for n in MOUNTED])
def impl(request: pytest.FixtureRequest) -> Impl:
    """Each mounted implementation in turn: the kernel overlayfs and both daemon setups."""
    i = IMPLS[request.param]
    require(i.skip_reason())
    return i


# ---------------------------------------------------------------------------------------------------- file calls
def ftype(mode: int) -> str:
    for test, n in ((stat.S_ISREG, "regular"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                    (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
                    (stat.S_ISSOCK, "socket")):
        if test(mode):
            return n
    return "?"


def kind(path: str, dir_fd: int | None = None, follow: bool = False) -> str:
    """``TYPE MODE`` of ``path`` (``TYPE MODE MAJOR,MINOR`` for a device), by lstat (stat with ``follow``)."""
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow)
    text = f"{ftype(st.st_mode)} {stat.S_IMODE(st.st_mode):04o}"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        text += f" {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    return text


def owner(path: str) -> str:
    st = os.lstat(path)
    return f"{st.st_uid}:{st.st_gid}"


def nlink(path: str, dir_fd: int | None = None) -> int:
    return os.lstat(path, dir_fd=dir_fd).st_nlink


def same_file(a: str, b: str) -> bool:
    return os.path.samestat(os.lstat(a), os.lstat(b))


def make(k: str, path: str, mode: int = 0o644) -> None:
    """pjdfstest's ``create_file``: a ``k`` (one of KINDS) at ``path``; devices are 1,2."""
    if k == "regular":
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
    elif k == "dir":
        os.mkdir(path, mode)
    elif k == "fifo":
        os.mkfifo(path, mode)
    else:
        fmt = {"block": stat.S_IFBLK, "char": stat.S_IFCHR, "socket": stat.S_IFSOCK}[k]
        os.mknod(path, fmt | mode, os.makedev(1, 2))


def remove(k: str, path: str) -> None:
    (os.rmdir if k == "dir" else os.unlink)(path)


def write(path: str, data: bytes, flags: int = os.O_TRUNC, dir_fd: int | None = None, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def ftruncate(path: str, size: int) -> int:
    """Open ``path`` read-write, ftruncate it to ``size``; its fstat size."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def listing(d: str | int = ".") -> list[str]:
    return sorted(short(n) for n in os.listdir(d))


def rmdir_chain(path: str) -> int:
    """rmdir the relative ``path``, then each of its parents up to the working directory; how many."""
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        os.rmdir("/".join(parts[:i]))
    return len(parts)


# ---------------------------------------------------------------------------------------------------- */03
def chmod_chown_03(log: Log, u: Union) -> None:
    p = long_path("chmod")
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        for k in KINDS:
            log.expect(0, f"{k}: create", make, k, p)
            log.expect(0, f"{k}: chmod 0642", os.chmod, p, 0o642, follow_symlinks=False)
            log.expect(f"{k} 0642" + (" 1,2" if k in ("block", "char") else ""), f"{k}: stat", kind, p)
            log.expect(0, f"{k}: chown", os.chown, p, NOBODY, NOGROUP)
            log.expect(f"{NOBODY}:{NOGROUP}", f"{k}: stat owner", owner, p)
            log.expect(0, f"{k}: remove", remove, k, p)
            log.expect("ENOENT", f"{k}: gone", kind, p)
            log.expect("ENAMETOOLONG", f"{k}: create +1 byte", make, k, p + "x")
        log.expect("ENAMETOOLONG", "chmod +1 byte", os.chmod, p + "x", 0o642)
        log.expect("ENAMETOOLONG", "chown +1 byte", os.chown, p + "x", NOBODY, NOGROUP)
        log.expect("ENAMETOOLONG", "stat +1 byte", kind, p + "x")
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_chmod_chown(impl: Impl) -> None:
    """pjdfstest chmod/03, chown/03: each file type made at a 4095-byte path can be chmod-ed (stat shows 0642),
    chown-ed and removed; at 4096 bytes each call is ENAMETOOLONG."""
    check(impl, chmod_chown_03)


def open_truncate_unlink_03(log: Log, u: Union) -> None:
    p, x = long_path("open"), long_path("open") + "x"
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "open O_CREAT 0642", lambda: os.close(os.open(p, os.O_CREAT | os.O_RDONLY, 0o642)))
        log.expect("regular 0642", "stat", kind, p)
        log.expect(0, "write", write, p, b"0123456789")
        log.expect(b"0123456789", "read", read, p)
        log.expect(0, "truncate to 4", os.truncate, p, 4)
        log.expect(b"0123", "read after truncate", read, p)
        log.expect(1234, "ftruncate to 1234 (fstat size)", ftruncate, p, 1234)
        log.expect(1234, "stat size", lambda: os.stat(p).st_size)
        log.expect(0, "unlink", os.unlink, p)
        log.expect("ENOENT", "gone", kind, p)
        log.expect("ENAMETOOLONG", "open O_CREAT +1 byte", os.open, x, os.O_CREAT | os.O_RDONLY, 0o642)
        log.expect("ENAMETOOLONG", "truncate +1 byte", os.truncate, x, 0)
        log.expect("ENAMETOOLONG", "open O_RDWR (for ftruncate) +1 byte", os.open, x, os.O_RDWR)
        log.expect("ENAMETOOLONG", "unlink +1 byte", os.unlink, x)
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_open_truncate_unlink(impl: Impl) -> None:
    """pjdfstest open/03, truncate/03, ftruncate/03, unlink/03: a file at a 4095-byte path is created with mode
    0642, written, read, truncated both ways and unlinked; at 4096 bytes each call is ENAMETOOLONG."""
    check(impl, open_truncate_unlink_03)


def mkdir_rmdir_03(log: Log, u: Union) -> None:
    p = long_path("mkdir")
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "mkdir 0755", os.mkdir, p, 0o755)
        log.expect("dir 0755", "stat", kind, p)
        log.expect([], "readdir", listing, p)
        log.expect(0, "rmdir", os.rmdir, p)
        log.expect("ENOENT", "gone", kind, p)
        log.expect("ENAMETOOLONG", "mkdir +1 byte", os.mkdir, p + "x", 0o755)
        log.expect("ENAMETOOLONG", "rmdir +1 byte", os.rmdir, p + "x")
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_mkdir_rmdir(impl: Impl) -> None:
    """pjdfstest mkdir/03, rmdir/03: a directory at a 4095-byte path is made (stat: 0755), read and removed; at
    4096 bytes mkdir and rmdir are ENAMETOOLONG."""
    check(impl, mkdir_rmdir_03)


def mkfifo_mknod_03(log: Log, u: Union) -> None:
    p, x = long_path("mknod"), long_path("mknod") + "x"
    nodes = {"fifo": stat.S_IFIFO, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "mkfifo 0644", os.mkfifo, p, 0o644)
        log.expect("fifo 0644", "mkfifo: stat", kind, p)
        log.expect(0, "mkfifo: unlink", os.unlink, p)
        log.expect("ENAMETOOLONG", "mkfifo +1 byte", os.mkfifo, x, 0o644)
        for k, fmt in nodes.items():
            log.expect(0, f"mknod {k} 1,2", os.mknod, p, fmt | 0o644, os.makedev(1, 2))
            log.expect(f"{k} 0644" + ("" if k == "fifo" else " 1,2"), f"mknod {k}: stat", kind, p)
            log.expect(0, f"mknod {k}: unlink", os.unlink, p)
            log.expect("ENAMETOOLONG", f"mknod {k} +1 byte", os.mknod, x, fmt | 0o644, os.makedev(1, 2))
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_mkfifo_mknod(impl: Impl) -> None:
    """pjdfstest mkfifo/03, mknod/03: a fifo, a character and a block device (1,2) at a 4095-byte path, each
    made, stat-ed (type, mode, device numbers) and unlinked; at 4096 bytes ENAMETOOLONG."""
    check(impl, mkfifo_mknod_03)


def link_03(log: Log, u: Union) -> None:
    p, x = long_path("link"), long_path("link") + "x"
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "create n0", make, "regular", "n0")
        log.expect(0, "link n0 to the long path", os.link, "n0", p)
        log.expect(2, "nlink", nlink, "n0")
        log.expect(True, "one inode", same_file, "n0", p)
        log.expect(0, "unlink n0", os.unlink, "n0")
        log.expect(0, "link the long path to n0", os.link, p, "n0")
        log.expect(0, "link the long path to a long sibling", os.link, p, sibling(p))
        log.expect(3, "nlink of the sibling", nlink, sibling(p))
        log.expect(0, "unlink the long path", os.unlink, p)
        log.expect(0, "unlink the long sibling", os.unlink, sibling(p))
        log.expect(1, "nlink of n0", nlink, "n0")
        log.expect("ENAMETOOLONG", "link n0 to +1 byte", os.link, "n0", x)
        log.expect("ENAMETOOLONG", "link +1 byte to n1", os.link, x, "n1")
        log.expect(0, "unlink n0", os.unlink, "n0")
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_link(impl: Impl) -> None:
    """pjdfstest link/03: hard links to and from a 4095-byte path (and between two of them) share the inode and
    count; at 4096 bytes, either side, ENAMETOOLONG."""
    check(impl, link_03)


def symlink_03(log: Log, u: Union) -> None:
    p, x = long_path("symlink"), long_path("symlink") + "x"
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "symlink n0 -> the long path", os.symlink, p, "n0")
        log.expect(True, "readlink n0 gives the 4095 bytes", lambda: os.readlink("n0") == p)
        log.expect("ENOENT", "stat through n0 (dangling)", kind, "n0", follow=True)
        log.expect(0, "create the long path", write, p, b"target")
        log.expect(b"target", "read through n0", read, "n0")
        log.expect(0, "unlink n0", os.unlink, "n0")
        log.expect(0, "unlink the long path", os.unlink, p)
        log.expect(0, "symlink the long path -> n0", os.symlink, "n0", p)
        log.expect("symlink 0777", "lstat the long path", kind, p)
        log.expect("n0", "readlink the long path", os.readlink, p)
        log.expect(0, "unlink the long path", os.unlink, p)
        log.expect("ENAMETOOLONG", "symlink n0 -> 4096 bytes", os.symlink, x, "n0")
        log.expect("ENAMETOOLONG", "symlink +1 byte -> n0", os.symlink, "n0", x)
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_symlink(impl: Impl) -> None:
    """pjdfstest symlink/03: a symlink whose target is 4095 bytes (read back whole, followed once the target
    exists), a symlink at a 4095-byte path; a 4096-byte target or path is ENAMETOOLONG."""
    check(impl, symlink_03)


def rename_02(log: Log, u: Union) -> None:
    p, x = long_path("rename"), long_path("rename") + "x"
    with u.mounted():
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "create n0", write, "n0", b"n0")
        log.expect(0, "rename n0 to the long path", os.rename, "n0", p)
        log.expect("ENOENT", "n0 is gone", kind, "n0")
        log.expect(b"n0", "read the long path", read, p)
        log.expect(0, "rename the long path to a long sibling", os.rename, p, sibling(p))
        log.expect(0, "rename the long sibling to n0", os.rename, sibling(p), "n0")
        log.expect(b"n0", "read n0", read, "n0")
        log.expect("ENAMETOOLONG", "rename n0 to +1 byte", os.rename, "n0", x)
        log.expect("ENAMETOOLONG", "rename +1 byte to n0", os.rename, x, "n0")
        log.expect(0, "unlink n0", os.unlink, "n0")
        log.expect(0, "mkdir n1", os.mkdir, "n1", 0o755)
        log.expect(0, "rename directory n1 to the long path", os.rename, "n1", p)
        log.expect("dir 0755", "stat the long path", kind, p)
        log.expect(0, "rename it back", os.rename, p, "n1")
        log.expect(0, "rmdir n1", os.rmdir, "n1")
        log.expect(0, "rename the lower's lowfile to the long path", os.rename, "lowfile", p)
        log.expect(b"lower", "read it there", read, p)
        log.expect("ENOENT", "lowfile is gone", kind, "lowfile")
        log.expect(0, "rename it back", os.rename, p, "lowfile")
        log.expect(b"lower", "read lowfile", read, "lowfile")
        log.expect(31, "rmdir the parents", rmdir_chain, parent(p))
        log.expect(BASE_LISTING, "the test directory at the end", listing)


def test_path_max_rename(impl: Impl) -> None:
    """pjdfstest rename/02: a file, a directory and a lower file renamed to a 4095-byte path and back (and
    between two of them); to or from 4096 bytes ENAMETOOLONG."""
    check(impl, rename_02)


def lower_path_max(log: Log, u: Union) -> None:
    p = LOWER_LONG
    with u.mounted():
        log.expect("regular 0644", "stat the lower's 4095-byte path", kind, p)
        log.expect(b"lower", "read it", read, p)
        log.expect(0, "append (copy-up under 31 directories)", write, p, b"+", os.O_APPEND)
        log.expect(b"lower+", "read after the copy-up", read, p)
        log.expect(0, "chmod 0600", os.chmod, p, 0o600)
        log.expect("regular 0600", "stat", kind, p)
        log.expect(0, "link to a long sibling", os.link, p, sibling(p))
        log.expect(2, "nlink", nlink, sibling(p))
        log.expect(0, "unlink the sibling", os.unlink, sibling(p))
        log.expect(0, "unlink the lower's file", os.unlink, p)
        log.expect("ENOENT", "gone", kind, p)
        log.expect(31, "rmdir the lower's parents", rmdir_chain, parent(p))
        log.expect(sorted(set(BASE_LISTING) - {short(p.split("/")[0])}), "the test directory at the end", listing)


def test_path_max_in_the_lower(impl: Impl) -> None:
    """A file of the lower 4095 bytes below the test directory: read, copied up by a write (with its 31
    parents), chmod-ed, linked, unlinked and its parents removed (whiteouts 4095 bytes deep)."""
    check(impl, lower_path_max)


# ---------------------------------------------------------------------------------------------------- NAME_MAX
def name_max_02(log: Log, u: Union) -> None:
    n256 = N255 + "x"
    with u.mounted():
        log.expect(0, "open O_CREAT|O_RDONLY 0620 a short name", lambda: os.close(
            os.open("n0", os.O_CREAT | os.O_RDONLY, 0o620)))
        log.expect("regular 0620", "stat the short name (the mode, apart from the name's length)", kind, "n0")
        log.expect(0, "unlink the short name", os.unlink, "n0")
        log.expect(0, "open O_CREAT|O_RDONLY 0620 a 255-byte name", lambda: os.close(
            os.open(N255, os.O_CREAT | os.O_RDONLY, 0o620)))
        log.expect("regular 0620", "stat", kind, N255)
        log.expect(0, "unlink", os.unlink, N255)
        log.expect("ENOENT", "gone", kind, N255)
        log.expect("ENAMETOOLONG", "open O_CREAT 256 bytes", os.open, n256, os.O_CREAT | os.O_RDONLY, 0o620)
        log.expect(0, "mkdir 255", os.mkdir, N255, 0o755)
        log.expect("dir 0755", "mkdir 255: stat", kind, N255)
        log.expect(0, "rmdir 255", os.rmdir, N255)
        log.expect("ENAMETOOLONG", "mkdir 256", os.mkdir, n256, 0o755)
        log.expect("ENAMETOOLONG", "rmdir 256", os.rmdir, n256)
        log.expect(0, "create n0", write, "n0", b"n0")
        log.expect(0, "rename n0 to 255", os.rename, "n0", N255)
        log.expect(b"n0", "read 255", read, N255)
        log.expect(0, "rename 255 to n0", os.rename, N255, "n0")
        log.expect("ENAMETOOLONG", "rename n0 to 256", os.rename, "n0", n256)
        log.expect("ENAMETOOLONG", "rename 256 to n0", os.rename, n256, "n0")
        log.expect(0, "link n0 to 255", os.link, "n0", N255)
        log.expect(2, "link 255: nlink", nlink, N255)
        log.expect(0, "unlink 255", os.unlink, N255)
        log.expect("ENAMETOOLONG", "link n0 to 256", os.link, "n0", n256)
        log.expect("ENAMETOOLONG", "link 256 to n1", os.link, n256, "n1")
        log.expect(0, "unlink n0", os.unlink, "n0")
        log.expect(0, "symlink 255 -> t", os.symlink, "t", N255)
        log.expect("t", "readlink 255", os.readlink, N255)
        log.expect(0, "unlink the symlink 255", os.unlink, N255)
        log.expect("ENAMETOOLONG", "symlink 256 -> t", os.symlink, "t", n256)
        log.expect(0, "symlink n0 -> 256 (a target is not looked up)", os.symlink, n256, "n0")
        log.expect("ENAMETOOLONG", "stat through it", kind, "n0", follow=True)
        log.expect(0, "unlink n0", os.unlink, "n0")
        # the lower's 255-byte names: copy-up, redirect and whiteout carry them
        log.expect(b"name255", "read the lower's 255-byte file", read, F255)
        log.expect(0, "chmod it 0600 (copy-up)", os.chmod, F255, 0o600)
        log.expect("regular 0600", "stat it", kind, F255)
        log.expect(0, "rename it to n2", os.rename, F255, "n2")
        log.expect(0, "rename n2 back", os.rename, "n2", F255)
        log.expect(0, "rename the lower's 255-byte directory to d2", os.rename, D255, "d2")
        log.expect(["f"], "readdir d2", listing, "d2")
        log.expect(b"in a long-named dir", "read d2/f", read, "d2/f")
        log.expect(0, "rename d2 back", os.rename, "d2", D255)
        log.expect(0, "unlink the lower's 255-byte file (whiteout)", os.unlink, F255)
        log.expect("ENOENT", "gone", kind, F255)
        log.expect(sorted(set(BASE_LISTING) - {short(F255)}), "the test directory at the end", listing)


def test_name_max(impl: Impl) -> None:
    """pjdfstest open/02 (and mkdir, rename, link, symlink /02): a 255-byte name is created with
    open(O_CREAT|O_RDONLY, 0620) under umask 0 (stat: regular 0620), made a directory, renamed to, linked to and
    made a symlink; 256 bytes are ENAMETOOLONG. The lower's 255-byte file and directory are copied up, renamed
    and whited out."""
    check(impl, name_max_02)


# ------------------------------------------------------------------------------------------- deeper than PATH_MAX
def deep_names(seed: str, depth: int = DEPTH) -> list[str]:
    rng = random.Random(seed)
    return [name(rng, DEEP_NAME) for _ in range(depth)]


def descend(fds: list[int], names: list[str], create: bool) -> int | str:
    """From ``fds[-1]``, (mkdir and) open each of ``names`` in the previous one, appending the descriptors to
    ``fds``: how many levels were reached, or where and how it stopped."""
    for i, n in enumerate(names):
        step = "mkdir"
        try:
            if create:
                os.mkdir(n, 0o755, dir_fd=fds[-1])
            step = "openat"
            fds.append(os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        except OSError as e:
            return f"{i} levels, then {step}: {errno.errorcode.get(e.errno or 0, e.errno)}"
    return len(names)


def chdir_down(names: list[str], top: int) -> bytes:
    """chdir into each of ``names`` in turn, then read ``f`` there; back to ``top`` after."""
    try:
        for n in names:
            os.chdir(n)
        return read("f")
    finally:
        os.fchdir(top)


def tree(dir_fd: int, top: str, labels: dict[str, str]) -> list[tuple[int, str, str]]:
    """(depth, label, type) of ``top`` and everything below it, walked by descriptors."""
    out: list[tuple[int, str, str]] = []

    def walk(fd: int, n: str, depth: int) -> None:
        st = os.lstat(n, dir_fd=fd)
        out.append((depth, labels.get(n, short(n)), ftype(st.st_mode)))
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                for child in os.listdir(sub):
                    walk(sub, child, depth + 1)
            finally:
                os.close(sub)

    walk(dir_fd, top, 0)
    return sorted(out)


def remove_tree(dir_fd: int, top: str) -> int:
    """Remove ``top`` and everything below it bottom-up (unlink, rmdir) by descriptors; how many entries."""
    if not stat.S_ISDIR(os.lstat(top, dir_fd=dir_fd).st_mode):
        os.unlink(top, dir_fd=dir_fd)
        return 1
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        removed = sum(remove_tree(fd, child) for child in os.listdir(fd))
    finally:
        os.close(fd)
    os.rmdir(top, dir_fd=dir_fd)
    return removed + 1


def deep_tree(log: Log, u: Union) -> None:
    names = deep_names("deep")
    labels = {n: f"L{i}" for i, n in enumerate(names)}
    with u.mounted() as top:
        fds = [top]
        try:
            if log.expect(DEPTH, "levels made (mkdir, openat)", descend, fds, names, True) != DEPTH:
                return
            log.expect(0, "create f at the bottom", write, "f", b"deep", dir_fd=fds[-1])
            log.expect("regular 0644", "stat f", kind, "f", dir_fd=fds[-1])
            log.expect("dir 0755", "stat the bottom directory", kind, names[-1], dir_fd=fds[-2])
            log.expect(DEPTH, "levels whose readdir is right", lambda: sum(
                os.listdir(fds[i]) == ([names[i]] if i < DEPTH else ["f"]) for i in range(1, DEPTH + 1)))
            log.expect(b"deep", "chdir down level by level, read f", chdir_down, names, top)
            log.expect(0, "rename the bottom directory in its parent", os.rename, names[-1], "renamed",
                       src_dir_fd=fds[-2], dst_dir_fd=fds[-2])
            log.expect("ENOENT", "its old name is gone", kind, names[-1], dir_fd=fds[-2])
            log.expect(0, "rename it 29 levels up", os.rename, "renamed", "moved", src_dir_fd=fds[-2],
                       dst_dir_fd=fds[10])
            log.expect(b"deep", "read moved/f", read, "moved/f", dir_fd=fds[10])
            log.expect(b"deep", "read f by the descriptor kept", read, "f", dir_fd=fds[-1])
            log.expect(0, "link moved/f into the test directory", os.link, "moved/f", "f-link",
                       src_dir_fd=fds[10], dst_dir_fd=top)
            log.expect(0, "link f-link into the deepest level", os.link, "f-link", "g", src_dir_fd=top,
                       dst_dir_fd=fds[-2])
            log.expect(3, "nlink of g", nlink, "g", dir_fd=fds[-2])
            want = sorted([(i, f"L{i}", "dir") for i in range(DEPTH - 1)]
                          + [(10, "moved", "dir"), (11, "f", "regular"), (DEPTH - 1, "g", "regular")])
            log.expect(want, "the tree (depth, name, type)", tree, top, names[0], labels)
            log.expect(len(want), "remove the tree bottom-up", remove_tree, top, names[0])
            log.expect("ENOENT", "its top is gone", kind, names[0], dir_fd=top)
            log.expect(1, "nlink of f-link", nlink, "f-link")
            log.expect(b"deep", "read f-link", read, "f-link")
            log.expect(0, "unlink f-link", os.unlink, "f-link")
            log.expect(BASE_LISTING, "the test directory at the end", listing)
        finally:
            for fd in fds[1:]:
                os.close(fd)


def test_deeper_than_path_max(impl: Impl) -> None:
    """A tree 40 levels of 200-byte names deep (8040 bytes below the test directory), reached step by step with
    openat and chdir: made, stat-ed, listed at every level, its bottom directory renamed in place and 29 levels
    up (found by its new path and its old descriptor), its file linked across it, the whole listed and removed
    bottom-up."""
    check(impl, deep_tree)


# ---------------------------------------------------------------------------------------------------- remount
def survives_remount(log: Log, u: Union) -> None:
    p = long_path("remount")
    names = deep_names("remount", 25)
    labels = {n: f"L{i}" for i, n in enumerate(names)}
    want = sorted([(i, f"L{i}", "dir") for i in range(len(names))] + [(len(names), "f", "regular")])
    with u.mounted() as top:
        log.expect(0, "mkdir -p the parents", os.makedirs, parent(p))
        log.expect(0, "write the 4095-byte path", write, p, b"long")
        log.expect(0, "symlink n0 -> it", os.symlink, p, "n0")
        fds = [top]
        try:
            if log.expect(len(names), "deep levels made", descend, fds, names, True) == len(names):
                log.expect(0, "create f at the bottom", write, "f", b"deep", dir_fd=fds[-1])
        finally:
            for fd in fds[1:]:
                os.close(fd)
    with u.mounted() as top:
        log.expect("regular 0644", "mounted again: stat the 4095-byte path", kind, p)
        log.expect(b"long", "read it", read, p)
        log.expect(b"long", "read it through n0", read, "n0")
        log.expect(want, "the deep tree", tree, top, names[0], labels)
        log.expect(b"deep", "read the deep f", chdir_down, names, top)
        log.expect(len(want), "remove the deep tree", remove_tree, top, names[0])
        log.expect(0, "unlink n0", os.unlink, "n0")
        log.expect(0, "unlink the 4095-byte path", os.unlink, p)
        log.expect(31, "rmdir its parents", rmdir_chain, parent(p))
    with u.mounted():
        log.expect(BASE_LISTING, "mounted a third time: the test directory", listing)


def test_long_paths_survive_remount(impl: Impl) -> None:
    """A file at a 4095-byte path, a symlink to it and a 25-level tree of 200-byte names are still there, with
    their contents, after an unmount and a mount on the same upper; removed, they stay gone at the next mount."""
    check(impl, survives_remount)
