"""One timed mount session of one implementation, through the tests' mount harness.

The harness (``tests/support/mount.py``) makes and checks every mount, unmounts it at all costs and finds the
FUSE daemon; this module only picks its helper and arguments, times the mount, reads the daemon's memory and
CPU, and clears the session's directories.

Contract of :func:`mounted`:

- the session lives in ``scratch/{upper,work,mnt}``; ``scratch`` is emptied before the mount, so every
  session starts with a fresh, empty upper;
- a read-only session (``writable=False``) has the layers only, no upper and no work directory: unionfs gets
  no ``--upper``, fuse-overlayfs and the kernel only ``lowerdir=``. The kernel's overlayfs refuses a
  read-only mount of one layer on some kernels ("at least 2 lowerdir are needed while upperdir
  nonexistent"); :func:`kernel_takes_one_lower` asks this kernel once, and when it refuses, such a session
  raises :class:`Unsupported` before mounting anything;
- the layers are given base first. For fuse-overlayfs and the kernel they are named relative to their common
  parent (the mount command runs there), so that 100 and more layers fit the kernel's one-page limit on mount
  options; the kernel overlay gets no options beyond the directories (not the harness's default
  ``redirect_dir=on,index=on``), like fuse-overlayfs; unionfs gets ``-o OPT`` for each option asked for;
- :attr:`Session.mount_s` is the time the mount command took until it returned (the harness's own checks
  of the mount table and /proc after it are not counted): ``Mount.launch_s``;
- on leaving, also on an error or Ctrl-C, the harness unmounts (politely, then lazily, killing a daemon that
  outlives its mount); a failed polite unmount raises AssertionError, as a failed mount does. Then ``scratch``
  is removed, never through a mount that is still there (RuntimeError instead, or a logged error when another
  exception is on its way out);
- SIGINT, SIGTERM and SIGHUP stop the body at once (KeyboardInterrupt) but wait while the harness mounts or
  unmounts: a mount command cut short would leave a mount that the harness has not taken charge of yet;
- a RuntimeError from the body is raised again with what became of the mount (still mounted? daemon alive?).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

# the package's __init__ has put tests/ on sys.path
from support.mount import (
    Mount,
    fuse_overlayfs_mount,
    is_mounted,
    kernel_overlay,
    leftover_mounts,
    unionfs_mount,
    wait_pids_gone,
)

from benchlib.impls import base_impl, variant_opts
from benchlib.signals import held

log = logging.getLogger(__name__)


class Unsupported(Exception):
    """This implementation cannot mount what was asked for (a fact about it, not a failure of the run)."""


@dataclasses.dataclass
class Session:
    """One live mount of one implementation."""

    impl: str
    mount: Mount
    mount_s: float  #: seconds until the mount was live (see the module's contract)

    @property
    def mnt(self) -> Path:
        """The mountpoint."""
        return self.mount.path

    @property
    def upper(self) -> Path:
        """The upper directory (fresh and empty when the session began); a writable session's only."""
        assert self.mount.upper is not None, "a read-only session has no upper"
        return Path(self.mount.upper)

    def stats(self) -> tuple[float | None, float | None]:
        """The daemon's (peak RSS MB, CPU seconds) so far; (None, None) for the kernel."""
        return daemon_stats(self.mount.pids)


def daemon_stats(pids: Sequence[int]) -> tuple[float | None, float | None]:
    """(peak RSS in MB, CPU seconds) of the live processes ``pids``: the largest VmHWM and the summed
    utime+stime; (None, None) when none of them can be read."""
    rss: list[float] = []
    cpu: list[float] = []
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu.append((int(fields[11]) + int(fields[12])) / ticks)
            rss.append(hwm / 1024.0)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not rss:
        return None, None
    return max(rss), sum(cpu)


@contextlib.contextmanager
def _harness_mount(impl: str, lowers: Sequence[Path], upper: Path | None, work: Path | None, mnt: Path,
                   opts: Sequence[str]) -> Iterator[Mount]:
    """The harness's mount of ``impl`` (see the module's contract for the arguments it gets); read-only when
    ``upper`` and ``work`` are None."""
    if base_impl(impl) == "unionfs":
        args = [arg for o in [*opts, *variant_opts(impl)] for arg in ("-o", o)]
        with unionfs_mount(lowers, upper, work, mnt, extra_args=args) as m:
            yield m
        return
    parent = lowers[0].parent
    if any(p.parent != parent for p in lowers):
        raise ValueError(f"the layers of one mount must share a parent directory: {lowers}")
    rel = [Path(p.name) for p in lowers]
    if impl == "fuse-overlayfs":
        with fuse_overlayfs_mount(rel, upper, work, mnt, cwd=parent) as m:
            yield m
    elif impl == "kernel":
        with kernel_overlay(rel, upper, work, mnt, options=(), cwd=parent) as m:
            yield m
    else:
        raise ValueError(f"unknown implementation {impl!r}")


def clear(scratch: Path) -> None:
    """Remove ``scratch``, unless something is mounted at or below it (then RuntimeError)."""
    left = leftover_mounts(scratch)
    if left:
        raise RuntimeError(f"still mounted under {scratch}: {', '.join(left)}; not removing it")
    shutil.rmtree(scratch, ignore_errors=True)


#: whether this kernel's overlayfs mounts one lower layer without an upper (asked once, by the first need)
_ONE_LOWER: list[bool] = []


def kernel_takes_one_lower(scratch: Path) -> bool:
    """Whether the kernel overlayfs mounts a single lower layer without an upper: tried once, on an empty
    layer under ``scratch`` (emptied before and removed after, as a session's), and remembered."""
    if not _ONE_LOWER:
        layer = scratch / "probe-layer"
        clear(scratch)
        layer.mkdir(parents=True)
        try:
            with _mounted("kernel", [layer], scratch / "probe", (), writable=False):
                pass
            _ONE_LOWER.append(True)
        except AssertionError:  # the harness's "mounting kernel at ... failed"
            _ONE_LOWER.append(False)
        log.info("the kernel overlayfs %s a read-only mount of one layer",
                 "takes" if _ONE_LOWER[0] else "refuses")
        clear(scratch)
    return _ONE_LOWER[0]


def check_supported(impl: str, lowers: Sequence[Path], writable: bool, scratch: Path) -> None:
    """Raise :class:`Unsupported` when ``impl`` cannot mount ``lowers`` so (see the module's contract)."""
    if impl == "kernel" and not writable and len(lowers) < 2 and not kernel_takes_one_lower(scratch):
        raise Unsupported("the kernel overlayfs refuses a read-only mount of a single layer on this kernel "
                          f"({os.uname().release}): it needs at least 2 lower layers without an upper")


def mounted(impl: str, lowers: Sequence[Path], scratch: Path, opts: Sequence[str],
            writable: bool = True) -> contextlib.AbstractContextManager[Session]:
    """A fresh mount of ``lowers`` (base first) under ``scratch``: with a new empty upper, or read-only (the
    layers only) when not ``writable``; see the module's contract. :class:`Unsupported` is raised here, before
    anything is mounted."""
    check_supported(impl, lowers, writable, scratch)
    return _mounted(impl, lowers, scratch, opts, writable)


@contextlib.contextmanager
def _mounted(impl: str, lowers: Sequence[Path], scratch: Path, opts: Sequence[str],
             writable: bool) -> Iterator[Session]:
    """:func:`mounted` without its check."""
    clear(scratch)
    mnt = scratch / "mnt"
    upper, work = (scratch / "upper", scratch / "work") if writable else (None, None)
    ok = False
    try:
        with held() as gate:  # a stop signal waits while the harness mounts or unmounts
            with _harness_mount(impl, lowers, upper, work, mnt, opts) as m:
                session = Session(impl, m, m.launch_s)
                with gate.opened():
                    try:
                        yield session
                    except RuntimeError as e:
                        alive = wait_pids_gone(m.pids, 0)
                        raise RuntimeError(f"{e} [still mounted: {is_mounted(m.path)}; "
                                           f"daemon pids alive: {alive}]") from e
        ok = True
    finally:
        left = leftover_mounts(scratch)
        if not left:
            shutil.rmtree(scratch, ignore_errors=True)
        elif ok:
            raise RuntimeError(f"still mounted under {scratch}: {', '.join(left)}; not removing it")
        else:  # do not hide the error on its way out
            log.error("still mounted, left in place: %s", ", ".join(left))
