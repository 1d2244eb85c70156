#!/usr/bin/env python3
"""Benchmark: how long ``unionfs mount`` takes until the mount is live, and ``unionfs umount``.

Times, as a user runs them (the ``unionfs`` command of this interpreter's virtualenv, compiled bytecode as
an install has it), each command from its start until it exits:

  mount_lower   ``unionfs mount --lower DIR MNT`` (one read-only lower directory)
  mount_image1  ``unionfs --root STORE mount IMAGE MNT`` of a 1-layer image (a container with an upper)
  mount_image100  the same for a 100-layer image (every layer a file and a whiteout)
  umount        ``unionfs umount MNT`` of the ``--lower`` mount (until the daemon has ended)
  umount_image100  ``unionfs --root STORE umount MNT`` of the 100-layer container (the store records it)

The images are docker-save archives built in code (``tests/support/tar.py``) and loaded into a fresh store
under a temporary directory. Several checkouts can be compared (``--tree NAME=PATH``: that checkout's
``unionfs`` package comes first on ``PYTHONPATH``); the runs are interleaved (run 1 of every tree, then run
2, ...) with the tree order rotated, so the noise of a shared machine spreads evenly. For scale, two more
rows: the start of this interpreter that does nothing (``python -c pass``: the floor of any command of a
Python CLI, with this virtualenv's site setup) and fuse-overlayfs' mount of the same lower directory (when it
is installed). Medians with (min-max).

A tree can also run with another virtualenv's ``unionfs`` (``--exe NAME=PATH``: the venv as an older
``scripts/setup.sh`` installed it, say); the ``python -c pass`` row then has one line per interpreter.

Usage (as root, from the repository root):
  .venv/bin/python scripts/bench_mount.py [--runs 7] [--tree before=/tmp/old-checkout] [--tree after=.]
                                          [--exe before=/tmp/old-checkout/.venv/bin/unionfs]

Every mount is unmounted on exit, also on an error or Ctrl-C (``tests/support/mount.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from benchlib import REPO, proc  # first: puts the repository and tests/ on sys.path
from support.mount import unmounted_on_exit
from support.tar import build, directory, docker_archive, file, whiteout

WORKLOADS = ("mount_lower", "mount_image1", "mount_image100", "umount", "umount_image100")


def layer(i: int) -> bytes:
    """Layer ``i`` of the test images: a file of its own, and (above the base) a whiteout of the layer below's."""
    entries = [directory("etc"), file(f"etc/layer{i}", f"layer {i}\n".encode())]
    if i:
        entries.append(whiteout(f"etc/layer{i - 1}"))
    return build(entries)


def make_store(work: Path, python: str, env: dict[str, str]) -> Path:
    """A store under ``work`` holding ``one:1`` (1 layer) and ``hundred:1`` (100 layers)."""
    store = work / "store"
    for ref, count in (("one:1", 1), ("hundred:1", 100)):
        tars = [layer(i) for i in range(count)]
        archive = docker_archive(work / f"{ref.split(':')[0]}.tar", [(t, t) for t in tars], repo_tags=(ref,))
        subprocess.run([python, "-m", "unionfs", "--root", str(store), "load", "-i", str(archive)],
                       check=True, env=env, capture_output=True)
    return store


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that runs checkout ``tree``'s package, with bytecode (compiled once here)."""
    proc.compile_package(tree)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tree)
    return env


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``argv`` took; it must succeed."""
    t0 = time.perf_counter()
    res = subprocess.run(list(argv), env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()[-500:]}")
    return took


def one_run(exe: str, env: dict[str, str], store: Path, lower: Path, mnt: Path) -> dict[str, float]:
    """Every workload once with one tree's ``unionfs``."""
    out: dict[str, float] = {}
    with unmounted_on_exit(mnt):
        out["mount_lower"] = timed([exe, "mount", "--lower", str(lower), str(mnt)], env)
        out["umount"] = timed([exe, "umount", str(mnt)], env)
    for key, ref in (("mount_image1", "one:1"), ("mount_image100", "hundred:1")):
        with unmounted_on_exit(mnt):
            out[key] = timed([exe, "--root", str(store), "mount", ref, str(mnt), "--name", "bench"], env)
            took = timed([exe, "--root", str(store), "umount", str(mnt)], env)
            if key == "mount_image100":
                out["umount_image100"] = took
        timed([exe, "--root", str(store), "rm", "bench"], env)
    return out


def fuse_overlayfs_run(lower: Path, mnt: Path) -> float:
    """fuse-overlayfs' mount of ``lower`` (read-only), for scale."""
    with unmounted_on_exit(mnt):
        took = timed(["fuse-overlayfs", "-o", f"lowerdir={lower}", str(mnt)])
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    return took


def summary(values: list[float]) -> str:
    """``median (min-max)`` in seconds."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print one table row per workload and tree."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                   help="a checkout to time (repeatable; default: this one)")
    p.add_argument("--exe", action="append", default=[], metavar="NAME=PATH",
                   help="the unionfs executable tree NAME runs with (default: this interpreter's venv's)")
    args = p.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree) or {"unionfs": str(REPO)}
    exes = {name: str(Path(sys.executable).parent / "unionfs") for name in trees}
    for item in args.exe:
        name, _, path = item.partition("=")
        if name not in trees:
            p.error(f"--exe {item}: no --tree named {name}")
        exes[name] = path
    pythons = sorted({str(Path(e).parent / "python") for e in exes.values()})
    envs = {name: tree_env(Path(path).resolve()) for name, path in trees.items()}
    results: dict[str, dict[str, list[float]]] = {n: {w: [] for w in WORKLOADS} for n in trees}
    peer: list[float] = []
    floor: dict[str, list[float]] = {py: [] for py in pythons}
    work = Path(tempfile.mkdtemp(prefix="unionfs-bench-mount-"))
    try:
        lower, mnt = work / "lower", work / "mnt"
        (lower / "etc").mkdir(parents=True)
        (lower / "etc/hostname").write_text("bench\n")
        mnt.mkdir()
        store = make_store(work, sys.executable, next(iter(envs.values())))
        names = list(trees)
        for run in range(args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                for w, v in one_run(exes[name], envs[name], store, lower, mnt).items():
                    results[name][w].append(v)
            for py in pythons:
                floor[py].append(timed([py, "-c", "pass"], next(iter(envs.values()))))
            if shutil.which("fuse-overlayfs"):
                peer.append(fuse_overlayfs_run(lower, mnt))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        with unmounted_on_exit(work / "mnt"):
            pass
        shutil.rmtree(work, ignore_errors=True)
    print(f"| workload | {' | '.join(trees)} |")
    print(f"|---|{'---|' * len(trees)}")
    for w in WORKLOADS:
        print(f"| {w} (s) | {' | '.join(summary(results[n][w]) for n in trees)} |")
    for py, values in floor.items():
        print(f"| python -c pass (s){'' if len(floor) == 1 else f' ({py})'} | {summary(values)} |")
    if peer:
        print(f"| fuse-overlayfs mount of the lower (s) | {summary(peer)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
