"""Differential test: the same random operations on unionfs and on the kernel's overlayfs.

Hypothesis generates sequences of file-system operations (create, write, append, truncate, mkdir, rmdir,
unlink, rename with RENAME_NOREPLACE/RENAME_EXCHANGE, symlink, link, chmod, chown, utime, set/remove xattr,
mkfifo, fallocate (incl. punching holes), using a descriptor after unlinking its file,
``rm -rf d; mkdir d; mv d d2``, reads and listings, remounts) over a fixed pool of paths. Each operation runs on
both mounts, over identical copies of the same three lower layers (files, directories, symlinks, a hardlinked
trio, whiteouts, an opaque directory, a fifo, xattrs, other owners); then:

* the outcome (return value or errno) must be the same on both, and so must whether the inode number was kept
  across copy-up, rename and link, and whether a read-only operation left the upper directory untouched;
* after every step, the merged trees must be equal: names, types, modes, owners, sizes, link counts,
  contents, link targets, xattrs, hardlink groups, and mtimes where they are not "now" (set by utime or
  kept from a lower layer); every readdir d_ino must equal its st_ino, and the mount must show one st_dev;
* after the sequence, the lower directories are unchanged (contents, metadata, ctimes), and the mount under
  test is unmounted and mounted again: the tree, inode numbers included, must not change.

``UNIONFS_TEST_IMPL=fuse-overlayfs`` (or ``=kernel``) runs the same comparison against fuse-overlayfs (or the
kernel against itself), which validates the harness. ``UNIONFS_DIFF_EXAMPLES`` and ``UNIONFS_DIFF_STEPS``
change the budget. A failure prints the operation log with both outcomes of every step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import shutil
import stat
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from support.layers import LAYER_TIME, Dir, Fifo, File, Hardlink, Symlink, Whiteout, build_layers
from support.mount import (
    Mount,
    implementation_under_test,
    kernel_overlay,
    leftover_mounts,
    private_tmpdir,
    require,
    require_implementation,
    skip_reason_kernel_overlay,
    skip_reason_root,
)
from support.tree import LAYER, Snapshot, tree_snapshot

# ---------------------------------------------------------------------------
# the lower layers (base first) and the path pool
# ---------------------------------------------------------------------------

LAYERS = [
    [  # l0, the base
        Dir("a"),
        File("a/f", b"base a/f\n"),
        File("a/g", b"base a/g\n" * 50, mode=0o600),
        Dir("a/sub", mode=0o750),
        File("a/sub/deep", b"deep\n"),
        File("top.txt", b"base top\n"),
        File("h1", b"hardlinked\n", mode=0o640, uid=1000, gid=1000),
        Hardlink("h2", "h1"),
        Hardlink("a/h3", "h1"),
        Symlink("sym", "top.txt"),
        Symlink("dsym", "a"),
        File("gone", b"whited out above\n"),
        Dir("gonedir"),
        File("gonedir/x", b"x\n"),
        Dir("op"),
        File("op/old", b"hidden by the opaque dir above\n"),
        File("ro", b"read only\n", mode=0o444),
        File("exec", b"#!/bin/sh\n", mode=0o4755),
        File("owned", b"owned by 1000\n", uid=1000, gid=1001),
        File("xa", b"with xattrs\n", xattrs={"user.color": b"blue", "user.empty": b""}),
        Dir("xd", xattrs={"user.dirattr": b"1"}),
        Fifo("pipe"),
        Dir("empty", mode=0o700),
    ],
    [  # l1
        Dir("a"),
        File("a/f", b"middle a/f, overrides the base\n"),
        File("a/new1", b"middle new1\n"),
        Dir("a/sub", mode=0o755),
        File("a/sub/mid", b"mid\n"),
        Whiteout("gone"),
        Whiteout("gonedir"),
        Dir("op", opaque=True),
        File("op/new", b"in the opaque dir\n"),
        Dir("b", uid=1000, gid=1000),
        File("b/file", b"b/file\n"),
    ],
    [  # l2, the top
        Dir("a"),
        File("a/top", b"top layer\n"),
        Dir("a/sub", mode=0o755),
        Whiteout("a/sub/deep"),
        Dir("c"),
        File("c/x", b"c/x\n"),
        Symlink("sym2", "a/f"),
        File("top.txt", b"top overrides\n", mode=0o600),
    ],
]

EXISTING = ["a", "a/f", "a/g", "a/sub", "a/sub/deep", "a/sub/mid", "a/new1", "a/top", "a/h3", "top.txt",
            "h1", "h2", "sym", "dsym", "sym2", "gone", "gonedir", "gonedir/x", "op", "op/old", "op/new",
            "ro", "exec", "owned", "xa", "xd", "pipe", "empty", "b", "b/file", "c", "c/x", "dsym/f"]
NEW = ["n1", "n2", "a/n3", "b/n4", "nd", "nd/n5", "op/n6", "a/sub/n7", "empty/n8", "a/" + "N" * 255,
       "a/" + "L" * 256]
PATHS = st.sampled_from(EXISTING + NEW)
DIRS = st.sampled_from(["a", "a/sub", "b", "c", "op", "gonedir", "empty", "xd", "nd", "n1", "a/n3"])
#: symlink targets: relative and without "..", so nothing can lead out of the mount
TARGETS = st.sampled_from(["top.txt", "a/f", "a", "nowhere", "n1", "gone", "c/x"])
DATA = st.binary(min_size=0, max_size=300) | st.sampled_from([b"x" * 70000, b"\0" * 5000 + b"tail"])
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o4755, 0o2750, 0o1777, 0o000])
IDS = st.sampled_from([0, 1000, 1001, 65534])
TIMES = st.integers(min_value=100_000_000, max_value=900_000_000)
XATTR_NAMES = st.sampled_from(["user.color", "user.empty", "user.new", "user.dirattr"])

#: mtimes at or above this are "now" (the mounts differ there by design); below it they must agree
NOW_THRESHOLD_NS = (LAYER_TIME + 10_000_000) * 1_000_000_000

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)

#: No difference is tolerated: every result below is compared as it is.


def renameat2(src: str, dst: str, flags: int) -> None:
    """rename(2) with flags, through glibc's renameat2."""
    r = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), src, None, dst)


FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


def fallocate(path: str, mode: int, offset: int, length: int) -> None:
    """fallocate(2) on ``path`` opened for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        r = _libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_long(offset), ctypes.c_long(length))
        if r != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def unlink_open(path: str, data: bytes) -> tuple[Any, ...]:
    """Open ``path`` read-write, unlink it, then use the descriptor: fstat, write, read back.

    Returns (nlink and size after the unlink, size after the write, the content read back).
    """
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.unlink(path)
            st0 = os.fstat(fd)
            return ("special", st0.st_nlink, stat.S_IFMT(st0.st_mode))
        os.unlink(path)
        st_ = os.fstat(fd)
        os.pwrite(fd, data, 2)
        st2 = os.fstat(fd)
        return (st_.st_nlink, st_.st_size, st2.st_size, os.pread(fd, 1 << 20, 0))
    finally:
        os.close(fd)


def rm_rf(path: str) -> None:
    """``rm -rf``: depth first, sorted, raising on the first failure (a missing path is fine)."""
    try:
        st_ = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st_.st_mode):
        for name in sorted(os.listdir(path)):
            rm_rf(os.path.join(path, name))
        os.rmdir(path)
    else:
        os.unlink(path)


Outcome = tuple[str, Any]


def outcome(fn: Callable[[], Any]) -> Outcome:
    """("ok", value) or ("err", errno name) of ``fn()``."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno or 0, str(e.errno)))


def _open_write(path: str, flags: int, data: bytes, offset: int | None = None) -> int:
    """Open ``path`` with ``flags`` (mode 0644 when creating), write ``data``; returns bytes written."""
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)  # O_NONBLOCK: a fifo must not block the test
    try:
        if offset is None:
            return os.write(fd, data)
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    """The content of ``path`` (following a symlink), opened read-only (a fifo must not block the test)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _normalized(a: Snapshot, b: Snapshot) -> tuple[Snapshot, Snapshot]:
    """Drop the mtimes that are "now" on both sides (they differ by design); keep every other one."""
    na, nb = dict(a.nodes), dict(b.nodes)
    for p in set(na) & set(nb):
        ma, mb = na[p].mtime_ns, nb[p].mtime_ns
        if ma is not None and mb is not None and ma >= NOW_THRESHOLD_NS and mb >= NOW_THRESHOLD_NS:
            na[p] = dataclasses.replace(na[p], mtime_ns=None)
            nb[p] = dataclasses.replace(nb[p], mtime_ns=None)
    return dataclasses.replace(a, nodes=na), dataclasses.replace(b, nodes=nb)


# ---------------------------------------------------------------------------
# the state machine
# ---------------------------------------------------------------------------

class Differential(RuleBasedStateMachine):
    """Applies each operation to the oracle (kernel) and to the implementation under test, and compares."""

    base: Path
    mount_impl: Callable[..., Any]
    impl_name: str
    counter = 0

    def __init__(self) -> None:
        super().__init__()
        Differential.counter += 1
        self.dir = self.base / f"ex{Differential.counter}-{self.base.name[-8:]}"  # unique path tails
        self.stack = ExitStack()  # the oracle's mount
        self.ustack = ExitStack()  # the mount under test, remounted on its own
        self.log: list[str] = []
        self.step = 0
        self.failed = False  #: set once a difference was reported: teardown then only cleans up
        # identical copies of the same lowers, one set per mount (the kernel needs exclusive upper/work)
        self.k_lowers = build_layers(self.dir / "k", LAYERS)
        self.u_lowers = build_layers(self.dir / "u", LAYERS)
        self.k_lower_snaps = [self._lower_snapshot(p) for p in self.k_lowers]
        self.u_lower_snaps = [self._lower_snapshot(p) for p in self.u_lowers]
        for k, u in zip(self.k_lowers, self.u_lowers):  # the two copies are equal (but for inodes and ctimes)
            assert not tree_snapshot(k, times=True, private_values=True).diff(
                tree_snapshot(u, times=True, private_values=True)), "the two copies of the lowers differ"
        try:
            self.kernel: Mount = self.stack.enter_context(kernel_overlay(
                self.k_lowers, self.dir / "k" / "upper", self.dir / "k" / "work", self.dir / "k" / "mnt"))
            self.under_test: Mount = self._mount_under_test()
        except BaseException:
            self.ustack.close()
            self.stack.close()
            raise
        self._compare_trees("after mounting")

    # -- plumbing ---------------------------------------------------------------------------------------

    @staticmethod
    def _lower_snapshot(path: Path) -> Snapshot:
        """Everything about a lower directory, ctimes and private xattr values included."""
        return tree_snapshot(path, **LAYER)

    def _mount_under_test(self) -> Mount:
        """Mount the implementation under test over its copy of the lowers."""
        d = self.dir / "u"
        return self.ustack.enter_context(self.mount_impl(self.u_lowers, d / "upper", d / "work", d / "mnt"))

    def _log_text(self) -> str:
        return "operation log (oracle = kernel overlayfs, impl = " + self.impl_name + "):\n  " + \
            "\n  ".join(self.log)

    def _both(self, what: str, fn: Callable[[str], Any], keeps: tuple[tuple[str, str], ...] = (),
              readonly: bool = False) -> None:
        """Run ``fn(mountpoint)`` on both mounts, log the outcomes, fail when they differ.

        ``keeps`` lists (path before, path after) pairs whose inode number is compared across the operation:
        whether it was kept becomes part of the outcome (the kernel keeps st_ino across copy-up and rename).
        With ``readonly``, whether the upper directory stayed unchanged becomes part of the outcome too.
        """
        self.step += 1

        def ino(p: str) -> int | None:
            try:
                return os.lstat(p).st_ino
            except OSError:
                return None

        def run(m: Mount) -> tuple[Any, ...]:
            root = str(m.path)
            before = [ino(f"{root}/{a}") for a, _ in keeps]
            upper = tree_snapshot(m.upper, private_values=True, check_dino=False) if readonly else None
            o = outcome(lambda: fn(root))
            after = [ino(f"{root}/{b}") for _, b in keeps]
            kept = tuple(None if x is None or y is None else x == y for x, y in zip(before, after))
            extra: tuple[Any, ...] = (f"inode kept: {kept}",) if keeps else ()
            if upper is not None:
                changed = upper.diff(tree_snapshot(m.upper, private_values=True, check_dino=False))
                extra += (f"upper changed: {changed[:3]}" if changed else "upper unchanged",)
            return o + extra

        k = run(self.kernel)
        with self.under_test.watchdog(120, what):
            u = run(self.under_test)
        same = k == u
        show = (lambda o: " ".join(repr(x) for x in o)[:200])
        line = f"#{self.step} {what}: kernel={show(k)}" + ("" if same else f"  {self.impl_name}={show(u)}  <-- DIFFERS")
        self.log.append(line)
        if not same:
            self.failed = True
            raise AssertionError(f"outcome differs on {what}\n{self._log_text()}")

    def _compare_trees(self, when: str) -> None:
        self.kernel.check_live()
        self.under_test.check_live()
        with self.under_test.watchdog(120, "tree snapshot"):
            u = tree_snapshot(self.under_test.path, times=True)
        k = tree_snapshot(self.kernel.path, times=True)
        k, u = _normalized(k, u)
        d = k.diff(u, ("kernel", self.impl_name))
        if d:
            self.failed = True
            raise AssertionError(f"merged trees differ {when}:\n  " + "\n  ".join(d) + "\n" + self._log_text())

    def teardown(self) -> None:
        if os.environ.get("UNIONFS_DIFF_VERBOSE"):
            print(self._log_text())
        try:
            if not self.failed:
                self._final_checks()
        finally:
            try:
                self.ustack.close()
            finally:
                self.stack.close()
            if not leftover_mounts(self.dir):
                shutil.rmtree(self.dir, ignore_errors=True)

    def _final_checks(self) -> None:
        """Lowers unchanged; the tree survives a remount of the implementation under test, inodes included."""
        with self.under_test.watchdog(120, "tree snapshot"):
            before = tree_snapshot(self.under_test.path, times=True, inodes=True)
        self.under_test_stack_remount()
        with self.under_test.watchdog(120, "tree snapshot after remount"):
            after = tree_snapshot(self.under_test.path, times=True, inodes=True)
        d = before.diff(after, ("before remount", "after remount"))
        if d:
            raise AssertionError(f"{self.impl_name}: the tree changed across a remount:\n  " + "\n  ".join(d)
                                 + "\n" + self._log_text())
        self._compare_trees("after remounting " + self.impl_name)
        for name, lowers, snaps in (("kernel", self.k_lowers, self.k_lower_snaps),
                                    (self.impl_name, self.u_lowers, self.u_lower_snaps)):
            for i, (p, s) in enumerate(zip(lowers, snaps)):
                d = s.diff(self._lower_snapshot(p), ("before", "after"))
                if d:
                    raise AssertionError(f"{name} changed lower layer l{i}:\n  " + "\n  ".join(d) + "\n"
                                         + self._log_text())

    def under_test_stack_remount(self) -> None:
        """Unmount the implementation under test and mount it again over the same directories."""
        self.ustack.close()
        self.ustack = ExitStack()
        self.under_test = self._mount_under_test()
        self.log.append(f"#{self.step} -- {self.impl_name} unmounted and mounted again --")

    # -- checks after every step ------------------------------------------------------------------------

    @invariant()
    def trees_agree(self) -> None:
        if self.step:
            self._compare_trees(f"after step #{self.step}")

    # -- operations -------------------------------------------------------------------------------------

    @rule(path=PATHS, data=DATA, excl=st.booleans())
    def create(self, path: str, data: bytes, excl: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_EXCL if excl else 0)
        self._both(f"create({path!r}, {len(data)} bytes, excl={excl})",
                   lambda m: _open_write(f"{m}/{path}", flags, data))

    @rule(path=PATHS, data=DATA, offset=st.sampled_from([0, 3, 4096, 100000]))
    def write(self, path: str, data: bytes, offset: int) -> None:
        self._both(f"pwrite({path!r}, {len(data)} bytes at {offset})",
                   lambda m: _open_write(f"{m}/{path}", os.O_WRONLY, data, offset), keeps=((path, path),))

    @rule(path=PATHS, data=DATA)
    def append(self, path: str, data: bytes) -> None:
        self._both(f"append({path!r}, {len(data)} bytes)",
                   lambda m: _open_write(f"{m}/{path}", os.O_WRONLY | os.O_APPEND, data), keeps=((path, path),))

    @rule(path=PATHS, size=st.sampled_from([0, 1, 5, 8192, 1 << 20]))
    def truncate(self, path: str, size: int) -> None:
        self._both(f"truncate({path!r}, {size})", lambda m: os.truncate(f"{m}/{path}", size),
                   keeps=((path, path),))

    @rule(path=PATHS, mode=st.sampled_from([0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE]),
          offset=st.sampled_from([0, 4, 4096]), length=st.sampled_from([1, 4096, 20000]))
    def fallocate(self, path: str, mode: int, offset: int, length: int) -> None:
        self._both(f"fallocate({path!r}, mode={mode}, {offset}, {length})",
                   lambda m: fallocate(f"{m}/{path}", mode, offset, length))

    @rule(path=PATHS, data=st.binary(min_size=1, max_size=20))
    def unlink_while_open(self, path: str, data: bytes) -> None:
        self._both(f"open+unlink+fstat+write+read({path!r}, {data!r})",
                   lambda m: unlink_open(f"{m}/{path}", data))

    @rule(path=PATHS)
    def read(self, path: str) -> None:
        self._both(f"read({path!r})", lambda m: _read(f"{m}/{path}"), readonly=True)

    @rule(path=PATHS)
    def listdir(self, path: str) -> None:
        self._both(f"listdir({path!r})", lambda m: sorted(os.listdir(f"{m}/{path}")), readonly=True)

    @rule(path=PATHS, mode=st.sampled_from([0o755, 0o700, 0o2775]))
    def mkdir(self, path: str, mode: int) -> None:
        self._both(f"mkdir({path!r}, {oct(mode)})", lambda m: os.mkdir(f"{m}/{path}", mode))

    @rule(path=PATHS | DIRS)
    def rmdir(self, path: str) -> None:
        self._both(f"rmdir({path!r})", lambda m: os.rmdir(f"{m}/{path}"))

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        self._both(f"unlink({path!r})", lambda m: os.unlink(f"{m}/{path}"))

    @rule(src=PATHS | DIRS, dst=PATHS | DIRS,
          flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, src: str, dst: str, flags: int) -> None:
        name = {0: "", RENAME_NOREPLACE: ", NOREPLACE", RENAME_EXCHANGE: ", EXCHANGE"}[flags]
        keeps = ((src, dst), (dst, src)) if flags == RENAME_EXCHANGE else ((src, dst),)
        self._both(f"rename({src!r}, {dst!r}{name})", lambda m: renameat2(f"{m}/{src}", f"{m}/{dst}", flags),
                   keeps=keeps)

    @rule(dest=TARGETS, path=PATHS)
    def symlink(self, dest: str, path: str) -> None:
        self._both(f"symlink({dest!r}, {path!r})", lambda m: os.symlink(dest, f"{m}/{path}"))

    @rule(src=PATHS, dst=PATHS)
    def link(self, src: str, dst: str) -> None:
        self._both(f"link({src!r}, {dst!r})", lambda m: os.link(f"{m}/{src}", f"{m}/{dst}",
                                                                  follow_symlinks=False), keeps=((src, dst),))

    @rule(path=PATHS)
    def mkfifo(self, path: str) -> None:
        self._both(f"mkfifo({path!r})", lambda m: os.mkfifo(f"{m}/{path}", 0o640))

    @rule(path=PATHS, mode=MODES)
    def chmod(self, path: str, mode: int) -> None:
        self._both(f"chmod({path!r}, {oct(mode)})", lambda m: os.chmod(f"{m}/{path}", mode), keeps=((path, path),))

    @rule(path=PATHS, uid=IDS, gid=IDS)
    def chown(self, path: str, uid: int, gid: int) -> None:
        self._both(f"lchown({path!r}, {uid}, {gid})", lambda m: os.lchown(f"{m}/{path}", uid, gid),
                   keeps=((path, path),))

    @rule(path=PATHS, atime=TIMES, mtime=TIMES, follow=st.booleans())
    def utime(self, path: str, atime: int, mtime: int, follow: bool) -> None:
        self._both(f"utime({path!r}, mtime={mtime}, follow={follow})",
                   lambda m: os.utime(f"{m}/{path}", (atime, mtime), follow_symlinks=follow),
                   keeps=((path, path),))

    @rule(path=PATHS, name=XATTR_NAMES, value=st.binary(max_size=40))
    def setxattr(self, path: str, name: str, value: bytes) -> None:
        self._both(f"lsetxattr({path!r}, {name!r}, {value!r})",
                   lambda m: os.setxattr(f"{m}/{path}", name, value, follow_symlinks=False), keeps=((path, path),))

    @rule(path=PATHS, name=XATTR_NAMES)
    def removexattr(self, path: str, name: str) -> None:
        self._both(f"lremovexattr({path!r}, {name!r})",
                   lambda m: os.removexattr(f"{m}/{path}", name, follow_symlinks=False))

    @rule(path=PATHS, name=XATTR_NAMES)
    def getxattr(self, path: str, name: str) -> None:
        self._both(f"lgetxattr({path!r}, {name!r})",
                   lambda m: os.getxattr(f"{m}/{path}", name, follow_symlinks=False), readonly=True)

    @rule(d=DIRS, d2=PATHS)
    def rm_rf_mkdir_mv(self, d: str, d2: str) -> None:
        def run(m: str) -> list[Outcome]:
            return [outcome(lambda: rm_rf(f"{m}/{d}")), outcome(lambda: os.mkdir(f"{m}/{d}")),
                    outcome(lambda: os.rename(f"{m}/{d}", f"{m}/{d2}"))]
        self._both(f"rm -rf {d}; mkdir {d}; mv {d} {d2}", run)

    @rule()
    def remount(self) -> None:
        self.under_test_stack_remount()
        self.step += 1


# ---------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------

def test_differential_against_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random operation sequences agree with the kernel's overlayfs, step by step and after a remount."""
    require(skip_reason_root(), skip_reason_kernel_overlay())
    mount_impl = require_implementation()
    try:  # bound shrinking (an internal knob; without it hypothesis may shrink for 5 minutes)
        from hypothesis.internal.conjecture import engine

        monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", 90)
    except (ImportError, AttributeError):
        pass
    with private_tmpdir("differential") as base:
        run_differential(base, mount_impl)


def run_differential(base: Path, mount_impl: Callable[..., Any]) -> None:
    """Run the state machine with its mounts below ``base``."""

    class Machine(Differential):
        pass

    Machine.base = base
    Machine.mount_impl = staticmethod(mount_impl)  # type: ignore[assignment]
    Machine.impl_name = implementation_under_test()
    started = time.monotonic()
    try:
        run_state_machine_as_test(Machine, settings=settings(
            max_examples=int(os.environ.get("UNIONFS_DIFF_EXAMPLES", "30")),
            stateful_step_count=int(os.environ.get("UNIONFS_DIFF_STEPS", "20")),
            deadline=None,
            # CI runs a fixed, reproducible set of sequences; UNIONFS_DIFF_RANDOM=1 explores new ones
            derandomize=not os.environ.get("UNIONFS_DIFF_RANDOM"),
            database=None if not os.environ.get("UNIONFS_DIFF_RANDOM") else settings.default.database,
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        ))
    finally:
        print(f"differential run took {time.monotonic() - started:.1f}s")
        assert not leftover_mounts(base), f"mounts left behind: {leftover_mounts(base)}"
