"""The timed operations of the mount benchmark, and the interleaved loops that run them.

A workload takes a :class:`Ctx` and an implementation name, mounts what it needs (a fresh session, caches
dropped first when asked) and returns ``{metric: value}``: seconds unless the name says otherwise, plus the
daemon's ``rss_mb.NAME`` and ``cpu_s.NAME`` read just before unmounting. A command that fails raises; the loops
(:func:`benchmark`, :func:`scaling`) run a failed workload once more on a fresh mount and, when it fails again,
record it in :class:`Failures` and go on without its numbers. A workload that an implementation cannot mount
at all (:class:`~benchlib.mounts.Unsupported`) is not retried: it is recorded as ``unsupported``.

Read-only mounts: the read-type workloads (:data:`READ_WORKLOADS`) also run on a mount of the layers alone
(no upper) as ``NAME_ro`` (:func:`read_only`), whose every metric is named with the suffix :data:`RO`
(``read_first_ro``, ``rss_mb.read_ro``). :func:`select` picks the workloads for the kinds of mount asked for.

Interleaving: run 1 of every workload for every implementation, then run 2, ...; within a run, the
implementations' order is rotated by the run's number, so the noise of a shared machine spreads evenly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from benchlib.data import Dataset, ensure_scale_data, scale_names
from benchlib.mounts import Session, Unsupported, mounted
from benchlib.proc import run, timed

log = logging.getLogger(__name__)

#: one session's or one run's numbers: metric -> value (None: not measured)
Result = dict[str, float | None]


def drop_caches(enabled: bool) -> None:
    """Flush dirty data and (when ``enabled``) drop the page, dentry and inode caches: "first" means cold."""
    os.sync()
    if enabled:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


@dataclasses.dataclass
class Ctx:
    """What every workload gets."""

    ds: Dataset
    scratch: Path  #: each implementation's sessions live in scratch/IMPL
    write_mib: int  #: size of the write workloads
    drop: bool  #: drop the kernel caches before each session
    opts: tuple[str, ...]  #: ``-o`` options for every unionfs mount
    writable: bool = True  #: sessions get an empty upper (else they mount the layers alone, read-only)

    def session(self, impl: str, lowers: list[Path] | None = None) -> contextlib.AbstractContextManager[Session]:
        """A fresh mount of ``lowers`` (default: the main image) for ``impl``, writable or read-only as
        :attr:`writable` says, caches dropped first; raises :class:`Unsupported` before dropping them when
        ``impl`` cannot mount it so."""
        cm = mounted(impl, lowers or self.ds.lowers, self.scratch / impl, self.opts, self.writable)
        drop_caches(self.drop)
        return cm


@dataclasses.dataclass
class Failures:
    """Workloads that failed: ``errors`` twice (their numbers are missing), ``retried`` once (fine on retry)."""

    errors: list[str] = dataclasses.field(default_factory=list)
    retried: list[str] = dataclasses.field(default_factory=list)
    #: "WORKLOAD IMPL: reason" of workloads an implementation cannot mount (once each, not an error)
    unsupported: list[str] = dataclasses.field(default_factory=list)


def _with_stats(s: Session, out: Result, name: str) -> Result:
    rss, cpu = s.stats()
    out[f"rss_mb.{name}"] = rss
    out[f"cpu_s.{name}"] = cpu
    return out


def wl_read(ctx: Ctx, impl: str) -> Result:
    """``dd bs=1M`` of the big lower file, first after mount and again."""
    with ctx.session(impl) as s:
        cmd = ["dd", f"if={s.mnt}/big.bin", "of=/dev/null", "bs=1M"]
        out: Result = {"read_first": timed(cmd), "read_again": timed(cmd)}
        return _with_stats(s, out, "read")


def wl_find(ctx: Ctx, impl: str) -> Result:
    """``find tree -printf '%s %m\\n'``, twice; ``find_entries`` counts what the first one saw."""
    with ctx.session(impl) as s:
        cmd = ["find", f"{s.mnt}/tree", "-printf", "%s %m\n"]
        t0 = time.perf_counter()
        res = run(cmd, stdout=subprocess.PIPE)
        first = time.perf_counter() - t0
        out: Result = {"find_first": first, "find_second": timed(cmd),
                       "find_entries": float(res.stdout.count(b"\n"))}
        return _with_stats(s, out, "find")


def wl_cat(ctx: Ctx, impl: str) -> Result:
    """``cat`` of the small files in one command."""
    with ctx.session(impl) as s:
        out: Result = {"cat_small": timed(["cat", *ctx.ds.small_names], cwd=s.mnt)}
        return _with_stats(s, out, "cat")


def _write_blocks(ctx: Ctx, impl: str, bs_kib: int) -> Result:
    with ctx.session(impl) as s:
        count = ctx.write_mib * 1024 // bs_kib
        name = f"write_{bs_kib}k" if bs_kib < 1024 else "write_1m"
        t = timed(["dd", "if=/dev/zero", f"of={s.mnt}/out.bin", f"bs={bs_kib}K", f"count={count}"])
        return _with_stats(s, {name: t}, name)


def wl_write_4k(ctx: Ctx, impl: str) -> Result:
    """``dd`` of write_mib MiB into a new file in 4 KiB blocks (close included)."""
    return _write_blocks(ctx, impl, 4)


def wl_write_1m(ctx: Ctx, impl: str) -> Result:
    """``dd`` of write_mib MiB into a new file in 1 MiB blocks (close included)."""
    return _write_blocks(ctx, impl, 1024)


def wl_copyup_chmod(ctx: Ctx, impl: str) -> Result:
    """chmod of the 1 GiB file, then of the sparse file; holes_kept compares the copies' st_blocks."""
    with ctx.session(impl) as s:
        out: Result = {"copyup_chmod": timed(["chmod", "600", f"{s.mnt}/big.bin"]),
                       "copyup_sparse": timed(["chmod", "600", f"{s.mnt}/sparse.bin"])}
        lower = os.stat(ctx.ds.lowers[0] / "sparse.bin")
        try:
            copy = os.stat(s.upper / "sparse.bin")
            out["holes_kept"] = 1.0 if copy.st_blocks <= lower.st_blocks else 0.0
            out["sparse_copy_blocks_ratio"] = copy.st_blocks / max(1, lower.st_blocks)
        except FileNotFoundError:  # a metadata-only copy-up keeps every hole
            out["holes_kept"] = 1.0
            out["sparse_copy_blocks_ratio"] = 0.0
        return _with_stats(s, out, "copyup_chmod")


def wl_copyup_append(ctx: Ctx, impl: str) -> Result:
    """Copy-up of the 1 GiB file by appending one byte."""
    with ctx.session(impl) as s:
        t = timed(["sh", "-c", 'printf x >> "$1"', "sh", f"{s.mnt}/big.bin"])
        return _with_stats(s, {"copyup_append": t}, "copyup_append")


def _mount_time(ctx: Ctx, impl: str, lowers: list[Path], tag: str) -> Result:
    with ctx.session(impl, lowers) as s:
        out: Result = {f"mount_{tag}": s.mount_s, f"ls_{tag}": timed(["ls", "-la", str(s.mnt)])}
        return _with_stats(s, out, f"mount_{tag}")


def wl_mount_1(ctx: Ctx, impl: str) -> Result:
    """Mount of the 1-layer image until live, then ``ls -la`` of its root."""
    return _mount_time(ctx, impl, ctx.ds.one, "1")


def wl_mount_100(ctx: Ctx, impl: str) -> Result:
    """Mount of the many-layer image until live, then ``ls -la`` of its root."""
    return _mount_time(ctx, impl, ctx.ds.many, "100")


Workload = Callable[[Ctx, str], Result]

#: the suffix of a read-only workload's name and of each of its metrics
RO = "_ro"


def read_only(fn: Workload) -> Workload:
    """``fn`` on read-only mounts (the layers alone), every metric it returns renamed ``METRIC`` + :data:`RO`."""
    def workload(ctx: Ctx, impl: str) -> Result:
        out = fn(dataclasses.replace(ctx, writable=False), impl)
        return {k + RO: v for k, v in out.items()}
    workload.__doc__ = f"{fn.__doc__} On a read-only mount."
    return workload


#: the writable workloads, in the order they run
WORKLOADS: dict[str, Workload] = {
    "read": wl_read, "find": wl_find, "cat": wl_cat, "write_4k": wl_write_4k, "write_1m": wl_write_1m,
    "copyup_chmod": wl_copyup_chmod, "copyup_append": wl_copyup_append,
    "mount_1": wl_mount_1, "mount_100": wl_mount_100,
}
#: the workloads that only read, and so run on read-only mounts too
READ_WORKLOADS = ("read", "find", "cat", "mount_1", "mount_100")


def _with_read_only(workloads: Mapping[str, Workload]) -> dict[str, Workload]:
    """``workloads`` with the read-only twin of each of :data:`READ_WORKLOADS` right after it."""
    out: dict[str, Workload] = {}
    for name, fn in workloads.items():
        out[name] = fn
        if name in READ_WORKLOADS:
            out[name + RO] = read_only(fn)
    return out


#: every workload, writable and read-only, in the order they run: each read-only one after its writable twin
ALL_WORKLOADS = _with_read_only(WORKLOADS)
#: the kinds of mount ``--mounts`` takes
MOUNT_KINDS = ("writable", "read-only")


def select(kinds: Sequence[str], names: Sequence[str] | None = None) -> dict[str, Workload]:
    """The workloads of :data:`ALL_WORKLOADS` for the kinds of mount ``kinds`` (of :data:`MOUNT_KINDS`), in
    their order; with ``names``, only those (a name without :data:`RO` picks its read-only twin too, a name
    with it picks the read-only one alone). Raises ValueError for an unknown kind or name."""
    if bad := set(kinds) - set(MOUNT_KINDS):
        raise ValueError(f"unknown kinds of mount: {', '.join(sorted(bad))} (known: {', '.join(MOUNT_KINDS)})")
    if names is not None and (bad := set(names) - set(ALL_WORKLOADS)):
        raise ValueError(f"unknown workloads: {', '.join(sorted(bad))} (known: {', '.join(ALL_WORKLOADS)})")
    keep = set(ALL_WORKLOADS) if names is None else {n for n in ALL_WORKLOADS
                                                     if n in names or n.removesuffix(RO) in names}
    kind = {n: "read-only" if n.endswith(RO) else "writable" for n in ALL_WORKLOADS}
    return {n: fn for n, fn in ALL_WORKLOADS.items() if n in keep and kind[n] in kinds}


def guarded(fn: Callable[[], Result], what: str, failures: Failures) -> Result:
    """Run one workload, once more when it fails (a fresh mount); a second failure is logged and kept in
    ``failures.errors``, not fatal, so that one broken workload does not lose the others' numbers. First
    failures that a retry fixed are kept in ``failures.retried`` (a flaky mount is worth knowing about).
    :class:`Unsupported` is neither: it is kept once in ``failures.unsupported`` and not retried."""
    for attempt in (1, 2):
        try:
            return fn()
        except Unsupported as e:
            msg = f"{re.sub(r'^run [0-9]+ ', '', what)}: {e}"  # once for all runs
            if msg not in failures.unsupported:
                failures.unsupported.append(msg)
                log.info("not measured: %s", msg)
            return {}
        except (RuntimeError, AssertionError, OSError, subprocess.TimeoutExpired) as e:
            msg = f"{what}: {e}".replace("\n", " ")[:600]
            if attempt == 1:
                failures.retried.append(msg)
                log.warning("failed, retrying once: %s", msg)
            else:
                failures.errors.append(msg)
                log.error("FAILED %s", msg)
    return {}


def _session_values(run_result: Result, prefix: str, read_only: bool) -> list[float]:
    """The measured values of the per-session metrics ``PREFIX.NAME`` of the read-only or writable sessions."""
    return [v for k, v in run_result.items()
            if k.startswith(prefix) and k.endswith(RO) == read_only and v is not None]


def derive(run_result: Result) -> Result:
    """Add the per-run daemon summaries of the writable sessions (rss_tree_mb, rss_max_mb, cpu_total_s) and,
    named with the suffix :data:`RO`, of the read-only ones; None where no such session was measured."""
    for suffix in ("", RO):
        rss = _session_values(run_result, "rss_mb.", bool(suffix))
        cpu = _session_values(run_result, "cpu_s.", bool(suffix))
        run_result["rss_tree_mb" + suffix] = run_result.get("rss_mb.find" + suffix)
        run_result["rss_max_mb" + suffix] = max(rss) if rss else None
        run_result["cpu_total_s" + suffix] = sum(cpu) if cpu else None
    return run_result


def _rotated(impls: Sequence[str], r: int) -> list[str]:
    """``impls`` rotated left by ``r``."""
    k = r % len(impls)
    return list(impls[k:]) + list(impls[:k])


def benchmark(ctx: Ctx, impls: Sequence[str], runs: int, workloads: Mapping[str, Workload],
              failures: Failures) -> dict[str, list[Result]]:
    """Every workload, ``runs`` times, interleaved: workload by workload, implementations in rotating order.
    Returns {impl: [one Result per run]}."""
    results: dict[str, list[Result]] = {i: [{} for _ in range(runs)] for i in impls}
    for r in range(runs):
        for name, fn in workloads.items():
            for impl in _rotated(impls, r):
                t0 = time.perf_counter()
                results[impl][r].update(guarded(lambda: fn(ctx, impl), f"run {r + 1} {name} {impl}", failures))
                log.info("run %d/%d %-14s %-15s %6.1f s", r + 1, runs, name, impl, time.perf_counter() - t0)
        for impl in impls:
            derive(results[impl][r])
    return results


# ---------------------------------------------------------------------------------------------------------------
# scaling: find/cat/mount time and daemon memory against the number of files and of layers
# ---------------------------------------------------------------------------------------------------------------

#: (files, layers) of ``--scaling``: a cross through 100k files at 16 layers
SCALE_POINTS = [(10_000, 16), (100_000, 16), (1_000_000, 16), (100_000, 1), (100_000, 128)]
#: (files, layers) of ``--scaling --grid``
SCALE_GRID = [(n, nl) for n in (10_000, 100_000, 1_000_000) for nl in (1, 16, 128)]
#: files read by the scaling ``cat``, spread evenly over the data set
SCALE_SAMPLE = 10_000


def _cat_many(names: list[str], cwd: Path) -> float:
    """Seconds to cat the files, in chunks that fit the argument limit."""
    t = 0.0
    for i in range(0, len(names), 2000):
        t += timed(["cat", *names[i:i + 2000]], cwd=cwd)
    return t


def scale_once(impl: str, lowers: list[Path], n: int, scratch: Path, drop: bool, opts: Sequence[str]) -> Result:
    """Mount time, find first/second, cat of up to 10,000 evenly spread files, daemon memory and CPU."""
    names = scale_names(n)
    sample = names[:: max(1, n // SCALE_SAMPLE)][:SCALE_SAMPLE]
    drop_caches(drop)
    with mounted(impl, lowers, scratch / impl, opts) as s:
        find = ["find", str(s.mnt), "-printf", "%s %m\n"]
        out: Result = {"mount": s.mount_s, "find_first": timed(find), "find_second": timed(find)}
        rss, _ = s.stats()
        out["rss_after_find_mb"] = rss
        out["cat_sample"] = _cat_many(sample, s.mnt)
        out["rss_mb"], out["cpu_s"] = s.stats()
        return out


def scaling(cache: Path, scratch: Path, impls: Sequence[str], runs: int, drop: bool,
            points: Sequence[tuple[int, int]], opts: Sequence[str],
            failures: Failures) -> list[tuple[int, int, dict[str, list[Result]]]]:
    """Every scaling point for every implementation, interleaved; returns [(files, layers, {impl: runs})]."""
    out = []
    for n, nl in points:
        lowers = ensure_scale_data(cache, n, nl)
        res: dict[str, list[Result]] = {i: [] for i in impls}
        for r in range(runs):
            for impl in _rotated(impls, r):
                t0 = time.perf_counter()
                res[impl].append(guarded(lambda: scale_once(impl, lowers, n, scratch, drop, opts),
                                         f"scaling {n} files {nl} layers {impl}", failures))
                log.info("scaling %d files %d layers run %d/%d %-15s %6.1f s", n, nl, r + 1, runs, impl,
                         time.perf_counter() - t0)
        out.append((n, nl, res))
    return out
