#!/usr/bin/env python3
"""Benchmark (not a test): lazy pulling. Time from the command to the first line of ``python3 -c 'print(1)'`` in a
Debian image at a registry behind a slow link, with ``run --lazy`` against ``pull`` then ``run``, and the bytes
fetched by then (issue 18, point 4).

    .venv/bin/python scripts/bench_lazy.py [--runs 3] [--mbit 100] [--cache /var/tmp/unionfs-bench]

The image: a Debian bookworm rootfs made once with ``debootstrap --variant=minbase --include=python3`` (root
and the Debian mirror needed; kept in ``CACHE/debroot``), imported, and converted with ``convert --estargz
--optimize ... python3 -c 'print(1)'`` (the files Python opens go first, before the prefetch landmark). It is
pushed to a ``docker-registry`` of its own on 127.0.0.1 (tests/support/registry.py) and read through a proxy
that shares ``--mbit`` Mbit/s among all its answers and counts their bytes (``FaultProxy.rate``). Each run
starts from an empty store; the modes run interleaved, the order alternating:

  pull+run             ``unionfs pull REF`` then ``unionfs run --rm REF python3 -c 'print(1)'``
  run --lazy           ``unionfs run --lazy --rm REF ...`` (landmark files prefetched, the rest in the background)
  run --lazy --no-prefetch   only what is read is fetched

After each run a lazy run's background completion is stopped (it is crash-safe) and what the run left mounted
unmounted; each run has a store of its own, all deleted at the end: deleting one between runs made the next run
pay for it (on ext4 without a journal, creating inodes right after thousands were deleted scans those: ``perf``
showed 72% of a lazy run's preparation in ``find_inode_bit``/``recently_deleted``, 0.4 s becoming 2.5 s).
Prints medians with (min-max), the speed-up against pull+run and the share of the image's blob bytes fetched
before the first line. Goal: at least 5x faster, under 20% of the bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    REPO,  # first: puts the repository and tests/ on sys.path
    proc,
)
from support.mount import leftover_mounts
from support.registry import FaultProxy, running_registry

UNIONFS = [sys.executable, "-m", "unionfs"]
COMMAND = ["python3", "-c", "print(1)"]
MODES = {"pull+run": [], "run --lazy": ["--lazy"], "run --lazy --no-prefetch": ["--lazy", "--no-prefetch"]}
MIRROR = "http://deb.debian.org/debian"


def rootfs(cache: Path) -> Path:
    """The Debian rootfs with python3, made by debootstrap once (a half-made one is made again)."""
    root = cache / "debroot"
    done = cache / "debroot.done"
    if not done.exists():
        if shutil.which("debootstrap") is None:
            raise SystemExit("bench_lazy: debootstrap is not installed (scripts/setup.sh installs it)")
        shutil.rmtree(root, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        print(f"making the image's rootfs with debootstrap in {root} (once)...", file=sys.stderr)
        proc.run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", root, MIRROR])
        done.touch()
    return root


def unionfs(root: Path, *args: str | os.PathLike[str]) -> None:
    proc.run([*UNIONFS, "--root", root, *args], cwd=REPO)


def first_line(root: Path, ref: str, mode: str, proxy: FaultProxy) -> tuple[float, int]:
    """Seconds from the start of ``mode`` to the command's first line of output, and the bytes the proxy sent
    meanwhile."""
    sent = proxy.sent
    start = time.perf_counter()
    if mode == "pull+run":
        unionfs(root, "pull", "-q", ref)
    p = subprocess.Popen([*UNIONFS, "--root", root, "run", *MODES[mode], "--rm", ref, *COMMAND], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    elapsed, fetched = time.perf_counter() - start, proxy.sent - sent
    _, err = p.communicate(timeout=600)
    if line.strip() != "1" or p.returncode:
        raise SystemExit(f"bench_lazy: {mode} printed {line!r}, exit {p.returncode}: {err.strip()}")
    return elapsed, fetched


def stop_completions(root: Path) -> None:
    """Kill the background completions (``unionfs.lazy.complete``) working on the store ``root`` and wait for
    them to end."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"unionfs.lazy.complete" in argv and os.fsencode(root) in argv:
                pids.append(int(entry))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid):
            time.sleep(0.05)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b"Z"


def blob_bytes(root: Path, ref: str) -> int:
    """Bytes of the image's blobs (config and layers), from its manifest in the store ``root``."""
    from unionfs.store.store import Store

    return Store(root).resolve(ref).size


def unmount_leftovers(root: Path) -> None:
    """Unmount what a run left mounted in its store ``root``."""
    for mp in reversed(leftover_mounts(root)):
        subprocess.run(["umount", "-l", mp], check=False)


def remove_store(root: Path) -> None:
    """Delete a run's store, after unmounting what a failed run left mounted in it (never through a mount)."""
    unmount_leftovers(root)
    if leftover_mounts(root):
        raise SystemExit(f"bench_lazy: {root} still holds mounts; not deleting it")
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--mbit", type=float, default=100.0, help="the link's bandwidth (default 100 Mbit/s)")
    p.add_argument("--cache", type=Path, default=Path("/var/tmp/unionfs-bench"))
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench_lazy: needs root (debootstrap, run --lazy)", file=sys.stderr)
        return 2
    tree = rootfs(args.cache)
    proc.compile_package(REPO)
    work = Path(tempfile.mkdtemp(prefix="bench-lazy-"))
    try:
        archive = work / "debian.tar.gz"
        proc.run(["tar", "-C", tree, "--numeric-owner", "-czf", archive, "."])
        src = work / "src"
        unionfs(src, "import", archive, "deb:1")
        unionfs(src, "convert", "--estargz", "--optimize", "deb:1", "deb:esgz", *COMMAND)
        with running_registry(work / "registry") as reg:
            unionfs(src, "push", "-q", "deb:esgz", f"{reg.host}/deb:esgz")
            total = blob_bytes(src, "deb:esgz")
            proxy = FaultProxy(reg.host)
            proxy.rate = args.mbit * 1e6 / 8
            ref = f"{proxy.host}/deb:esgz"
            times: dict[str, list[float]] = {m: [] for m in MODES}
            fetched: dict[str, list[int]] = {m: [] for m in MODES}
            stores: list[Path] = []
            try:
                for i in range(args.runs):
                    for mode in (list(MODES) if i % 2 == 0 else list(reversed(MODES))):
                        root = work / f"store-{len(stores)}"
                        stores.append(root)
                        try:
                            t, n = first_line(root, ref, mode, proxy)
                        finally:
                            stop_completions(root)
                            unmount_leftovers(root)
                        times[mode].append(t)
                        fetched[mode].append(n)
                    print(f"run {i + 1}/{args.runs} done", file=sys.stderr)
            finally:
                proxy.close()
                for root in stores:
                    remove_store(root)
        base = statistics.median(times["pull+run"])
        print(f"| to the first line of `{' '.join(COMMAND)}`, {args.mbit:g} Mbit/s, image blobs "
              f"{total / 1e6:.1f} MB | seconds | speed-up | MB fetched by then | share of the blobs |")
        print("|---|---|---|---|---|")
        for mode in MODES:
            ts, mb = times[mode], statistics.median(fetched[mode])
            med = statistics.median(ts)
            print(f"| {mode} | {med:.2f} ({min(ts):.2f}-{max(ts):.2f}) | {base / med:.1f}x | {mb / 1e6:.1f} | "
                  f"{100 * mb / total:.0f}% |" if total else f"| {mode} | {med:.2f} | {base / med:.1f}x | - | - |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
