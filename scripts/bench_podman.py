#!/usr/bin/env python3
"""Benchmark (not a test): ``podman run --rm IMAGE true`` with unionfs and with fuse-overlayfs as podman's overlay
``mount_program``, as root and rootless (a throw-away user with subuid/subgid ranges).

    .venv/bin/python scripts/bench_podman.py [--runs 7] [--only root|rootless]

The two engines of one kind run interleaved (the order alternates), each with its own storage holding the
busybox test image, after one warm-up run each. Prints the medians with (min-max) and the ratio
unionfs / fuse-overlayfs (goal: <= 1.0). Needs root, /dev/fuse and what ``scripts/setup.sh`` installs (podman,
runc, uidmap, fuse-overlayfs); the harness and its machine quirks: ``tests/support/podman.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, proc  # first: puts the repository and tests/ on sys.path
from support.podman import IMAGE, engine, missing_tools, save_busybox, throwaway_user, unionfs_program


def measure(runs: int, rootless: bool, tmp: Path, archive: Path) -> dict[str, list[float]]:
    """Seconds of each ``podman run --rm IMAGE true``, by mount program."""
    with contextlib.ExitStack() as stack:
        user = stack.enter_context(throwaway_user()) if rootless else None
        programs = {"unionfs": unionfs_program(rootless, tmp),
                    "fuse-overlayfs": shutil.which("fuse-overlayfs") or "fuse-overlayfs"}
        engines = {}
        for name, program in programs.items():
            e = engines[name] = stack.enter_context(engine(program, user))
            e("load", "-i", archive)
            e("run", "--rm", IMAGE, "true")  # warm-up: the first run sets up the storage (and a user's namespace)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for i in range(runs):
            for name in (list(engines) if i % 2 == 0 else list(reversed(engines))):
                start = time.perf_counter()
                engines[name]("run", "--rm", IMAGE, "true")
                times[name].append(time.perf_counter() - start)
        return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--only", choices=("root", "rootless"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_podman: needs root (podman's storage, a throw-away user)", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        print(f"bench_podman: {', '.join(missing)} not installed (scripts/setup.sh installs them)", file=sys.stderr)
        return 2
    proc.compile_package(REPO)  # the root mount program imports this checkout, as installed
    tmp = Path(tempfile.mkdtemp(prefix="upmb", dir="/tmp"))
    try:
        os.chmod(tmp, 0o755)
        archive = save_busybox(tmp)
        print("| podman run --rm IMAGE true (s) | unionfs | fuse-overlayfs | unionfs / fuse-overlayfs |")
        print("|---|---|---|---|")
        for kind in ("root", "rootless"):
            if args.only not in (None, kind):
                continue
            t = measure(args.runs, kind == "rootless", tmp, archive)
            med = {name: statistics.median(v) for name, v in t.items()}
            cells = [f"{med[n]:.3f} ({min(t[n]):.3f}-{max(t[n]):.3f})" for n in ("unionfs", "fuse-overlayfs")]
            print(f"| {kind} | {cells[0]} | {cells[1]} | {med['unionfs'] / med['fuse-overlayfs']:.2f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
