"""The command line of ``scripts/bench.py``: parse the arguments, check the machine, run the mount benchmark
or the scaling one, print the results (stdout) and write the files asked for; or hand the arguments to one
of the other benchmark scripts (``load``, ``pull``/``push``/``both``, ``build``).

Progress goes to stderr through :mod:`logging`. The exit status is 0 when every workload gave numbers (or was
not measured because an implementation cannot mount it so, which is printed), 1 when one failed twice, 2 for
bad arguments; a missing tool ends the run at once with a one-line reason. Every mount is unmounted before the
exit, also on an error, Ctrl-C, SIGTERM or SIGHUP (they unwind as KeyboardInterrupt through the harness's
context managers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

# the package's __init__ has put tests/ on sys.path
from support.mount import (
    leftover_mounts,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_tool,
    skip_reason_unionfs,
)

from benchlib import REPO, report, signals
from benchlib.data import FULL, SMOKE, ensure_data
from benchlib.impls import IMPLS, base_impl
from benchlib.mounts import clear
from benchlib.workloads import (
    ALL_WORKLOADS,
    MOUNT_KINDS,
    SCALE_GRID,
    SCALE_POINTS,
    Ctx,
    Failures,
    Workload,
    benchmark,
    scaling,
    select,
)

log = logging.getLogger("bench")

DESCRIPTION = "Benchmark unionfs side by side with fuse-overlayfs and the kernel overlayfs."
DEFAULT_CACHE = REPO / ".bench-cache" / "mount-v1"

#: first arguments that select another benchmark script: name -> (script, keep the word as its argument)
OTHER_BENCHMARKS = {"load": ("bench_unpack.py", False), "pull": ("bench_registry.py", True),
                    "push": ("bench_registry.py", True), "both": ("bench_registry.py", True),
                    "build": ("bench_build.py", False), "podman": ("bench_podman.py", False),
                    "lazy": ("bench_lazy.py", False)}


def check_environment(impls: Sequence[str]) -> None:
    """Fail early with a one-line reason when something needed is missing (the harness's checks)."""
    bases = set(map(base_impl, impls))
    reasons = [skip_reason_root()]
    if bases & {"unionfs", "fuse-overlayfs"}:
        reasons.append(skip_reason_fuse())
    if "fuse-overlayfs" in bases:
        reasons.append(skip_reason_tool("fuse-overlayfs"))
    if "unionfs" in bases:
        reasons.append(skip_reason_unionfs())
    if "kernel" in bases:
        reasons.append(skip_reason_kernel_overlay())
    for reason in reasons:
        if reason:
            raise SystemExit(f"bench.py: {reason}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of the mount benchmark (see scripts/bench.py's usage)."""
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per implementation (default 3)")
    p.add_argument("--quick", action="store_true", help="one run, 256 MiB writes (about two minutes, data cached)")
    p.add_argument("--smoke", action="store_true", help="tiny data set, one run (for the test suite)")
    p.add_argument("--scaling", action="store_true", help="find/read at 10k..1M files and 1..128 layers")
    p.add_argument("--grid", action="store_true", help="with --scaling: the full 3x3 grid instead of a cross")
    p.add_argument("--points", metavar="NxL,...", help="with --scaling: these points (files x layers) only")
    p.add_argument("--scaling-runs", type=int, default=1, help="runs per scaling point (default 1)")
    p.add_argument("--plot", metavar="PNG", help="with --scaling: plot the growth (if matplotlib is importable)")
    p.add_argument("--json", metavar="FILE", help="write every run and the summaries as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the results table as markdown")
    p.add_argument("--only", default=",".join(IMPLS),
                   help="comma-separated implementations (default: all three); unionfs+OPT[+OPT] is a variant "
                        "mounted with -o OPT, e.g. unionfs+writeback")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(ALL_WORKLOADS)} (a read workload "
                                       "without _ro runs on both kinds of mount that --mounts asks for)")
    p.add_argument("--mounts", default=",".join(MOUNT_KINDS), metavar="KIND[,KIND]",
                   help="the kinds of mount the workloads run on: writable (an empty upper: every workload), "
                        "read-only (the layers alone: the read workloads, rows marked '(read-only)'); "
                        "default both, --quick and --smoke included; not for --scaling")
    p.add_argument("--write-mib", type=int, help="size of the write workloads (default 1024; --quick 256)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache (default {DEFAULT_CACHE})")
    p.add_argument("--no-drop-caches", action="store_true", help="do not drop the kernel caches between sessions")
    p.add_argument("--unionfs-opt", action="append", default=[], metavar="OPT", help="pass -o OPT to unionfs")
    return p.parse_args(argv)


def _split(text: str) -> list[str]:
    """``"a, b,,c"`` -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def chosen_workloads(kinds: Sequence[str], names: str | None) -> dict[str, Workload]:
    """The workloads that ``--mounts`` and ``--workloads`` ask for, in their order; a bad name or kind, or
    nothing left to run, ends the program with status 2."""
    try:
        workloads = select(kinds, _split(names) if names else None)
    except ValueError as e:
        usage_error(str(e))
    if not workloads:
        usage_error(f"none of the workloads asked for runs on {' or '.join(kinds)} mounts "
                    "(read-only mounts run the read workloads only)")
    return workloads


def usage_error(message: str) -> NoReturn:
    """End the program with status 2 (bad arguments) and ``message`` on stderr."""
    print(f"bench.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"100000x128,10000x1"`` -> [(100000, 128), (10000, 1)] (files x layers)."""
    out = []
    for item in text.split(","):
        n, _, nl = item.strip().partition("x")
        out.append((int(n), int(nl)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The mount benchmark (or ``--scaling``); returns the exit status."""
    args = parse_args(argv)
    impls = [i.strip() for i in args.only.split(",") if i.strip()]
    if unknown := set(map(base_impl, impls)) - set(IMPLS):
        raise SystemExit(f"unknown implementations: {', '.join(sorted(unknown))}")
    workloads = chosen_workloads(_split(args.mounts), args.workloads)
    check_environment(impls)
    signals.raise_on_stop()
    cache = args.cache.resolve()
    scratch = cache / "scratch"
    if left := leftover_mounts(scratch):
        raise SystemExit(f"bench.py: mounts left under {scratch} by an earlier run: {', '.join(left)} "
                         "(detach them with umount -l, then run again)")
    drop = not args.no_drop_caches and not args.smoke
    failures = Failures()
    t0 = time.perf_counter()
    try:
        if args.scaling:
            return _main_scaling(args, impls, cache, scratch, drop, failures)
        return _main_bench(args, impls, workloads, cache, scratch, drop, failures)
    finally:
        try:
            clear(scratch)
        except RuntimeError as e:
            log.error("%s", e)
        log.info("total %.1f s", time.perf_counter() - t0)


def _main_bench(args: argparse.Namespace, impls: list[str], workloads: dict[str, Workload], cache: Path,
                scratch: Path, drop: bool, failures: Failures) -> int:
    spec = SMOKE if args.smoke else FULL
    runs = 1 if (args.quick or args.smoke) else args.runs
    write_mib = args.write_mib or (4 if args.smoke else 256 if args.quick else 1024)
    kinds = _split(args.mounts)
    ds = ensure_data(cache, spec)
    ctx = Ctx(ds, scratch, write_mib, drop, tuple(args.unionfs_opt))
    results = benchmark(ctx, impls, runs, workloads, failures)
    table = report.summary_table(results, report.METRICS)
    info = report.machine()
    text = report.markdown(table, impls, report.labels(write_mib))
    print(f"\n{report.heading(info, runs, write_mib, kinds)}\n")
    print(text)
    print("\n" + report.notes(results, impls))
    goals = ""
    if "unionfs" in impls and "fuse-overlayfs" in impls:
        goals = report.goals_markdown(table, results)
        print("\nSpeed goals (unionfs / fuse-overlayfs medians):\n")
        print(goals)
    if args.markdown:
        unmeasured = "".join(f"\nnot measured: {e}\n" for e in failures.unsupported)
        Path(args.markdown).write_text(text + "\n\n" + goals + "\n" + unmeasured)
    if args.json:
        doc = {"machine": info, "argv": sys.argv, "runs": runs, "write_mib": write_mib,
               "spec": dataclasses.asdict(spec), "implementations": impls, "mounts": kinds,
               "workloads": list(workloads), "summary": table, "ratios": report.ratios(table, impls),
               "results": results, "errors": failures.errors, "retried": failures.retried,
               "unsupported": failures.unsupported}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return report_failures(failures)


def _main_scaling(args: argparse.Namespace, impls: list[str], cache: Path, scratch: Path, drop: bool,
                  failures: Failures) -> int:
    points = parse_points(args.points) if args.points else SCALE_GRID if args.grid else SCALE_POINTS
    raw = scaling(cache, scratch, impls, args.scaling_runs, drop, points, args.unionfs_opt, failures)
    sc = report.scaling_doc(raw)
    print(report.scaling_markdown(sc, impls))
    if args.plot:
        report.plot(sc, impls, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": report.machine(), "argv": sys.argv, "scaling": sc,
                                               "errors": failures.errors}, indent=1))
    return report_failures(failures)


def report_failures(failures: Failures) -> int:
    """Print the workloads not measured (an implementation that cannot mount them) and the failed ones; the
    exit status is 1 when one failed twice."""
    if failures.unsupported or failures.retried or failures.errors:
        print()  # not part of the table above
    for e in failures.unsupported:
        print(f"not measured: {e}")
    for e in failures.retried:
        print(f"failed once, fine on retry: {e}")
    for e in failures.errors:
        print(f"FAILED: {e}")
    return 1 if failures.errors else 0


def dispatch(argv: Sequence[str]) -> int | None:
    """Run the other benchmark ``argv[0]`` names (see the usage), or None when it names none."""
    if not argv or argv[0] not in OTHER_BENCHMARKS:
        return None
    script, keep = OTHER_BENCHMARKS[argv[0]]
    args = list(argv) if keep else list(argv[1:])
    return subprocess.call([sys.executable, str(REPO / "scripts" / script), *args])


def entry(argv: Sequence[str]) -> int:
    """``scripts/bench.py ARGS``: another benchmark when ``argv[0]`` names one, else :func:`main`."""
    other = dispatch(argv)
    if other is not None:
        return other
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return main(argv)
