#!/usr/bin/env python3
"""Benchmark (not a test): pull and push of a ~50 MB image with unionfs against ``skopeo copy`` doing the same.

    .venv/bin/python scripts/bench_registry.py [pull|push|both] [--runs N] [--mb SIZE]

Starts its own ``docker-registry`` on 127.0.0.1 (tests/support/registry.py), builds the image with umoci
(half incompressible, half text, in two layers), then times N runs of each side and prints medians and the
ratio unionfs/skopeo. ``pull`` for unionfs includes verifying and unpacking the layers into the store: it is
compared with ``skopeo copy`` alone (which only writes the blobs into an OCI layout) and with ``skopeo copy``
followed by ``umoci unpack --rootless`` (the same work); ``pull --no-unpack`` (download and verify only) is
compared with ``skopeo copy`` alone; ``push`` sends to a fresh registry each run, so that every blob is
really uploaded. The runs of a row are interleaved with the others'.

The checkout's ``unionfs`` package is byte-compiled first (as an installed one is), so that a
``PYTHONDONTWRITEBYTECODE`` environment does not charge every run the compilation of its modules.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchlib import (
    REPO,  # first: puts the repository and tests/ on sys.path
    proc,
)
from support.registry import running_registry

UNIONFS = [sys.executable, "-m", "unionfs"]


def sh(*cmd: str | os.PathLike[str]) -> None:
    """Run ``cmd`` in the repository (so ``-m unionfs`` is this checkout's); it must succeed."""
    proc.run(cmd, cwd=REPO)


def timed(*cmd: str | os.PathLike[str]) -> float:
    """Seconds that :func:`sh` of ``cmd`` took."""
    return proc.timed(cmd, cwd=REPO)


def build_image(work: Path, mb: int) -> Path:
    layout = work / "layout"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:base")
    for i, kind in enumerate(("random", "text")):
        bundle = work / f"b{i}"
        sh("umoci", "unpack", "--rootless", "--image", f"{layout}:{'base' if i == 0 else 'l0'}", bundle)
        d = bundle / "rootfs" / f"data{i}"
        d.mkdir(parents=True)
        per_file = 1 << 20
        for n in range(mb // 2):
            data = os.urandom(per_file) if kind == "random" else (f"line {n} " * (per_file // 10))[:per_file].encode()
            (d / f"f{n}").write_bytes(data)
        sh("umoci", "repack", "--image", f"{layout}:l{i}", bundle)
        shutil.rmtree(bundle)
    return layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="both", choices=("pull", "push", "both"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=50)
    args = ap.parse_args()
    proc.compile_package(REPO)
    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    try:
        layout = build_image(work, args.mb)
        with running_registry(work / "reg") as reg:
            ref = f"{reg.host}/bench:v1"
            sh("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:l1", f"docker://{ref}")
            results: dict[str, tuple[float, float]] = {}
            if args.what in ("pull", "both"):
                ours, lazy, theirs, unpacked = [], [], [], []
                for i in range(args.runs):  # interleaved: unionfs (both ways), skopeo copy, then umoci unpack
                    ours.append(timed(*UNIONFS, "--root", work / f"store{i}", "pull", "-q", ref))
                    lazy.append(timed(*UNIONFS, "--root", work / f"lazy{i}", "pull", "-q", "--no-unpack", ref))
                    shutil.rmtree(work / f"lazy{i}")
                    theirs.append(timed("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                                        f"oci:{work / f'oci{i}'}:x"))
                    unpacked.append(theirs[-1] + timed("umoci", "unpack", "--rootless", "--image",
                                                       f"{work / f'oci{i}'}:x", work / f"bundle{i}"))
                    shutil.rmtree(work / f"oci{i}")
                    shutil.rmtree(work / f"bundle{i}")
                    shutil.rmtree(work / f"store{i}")
                results["pull"] = (statistics.median(ours), statistics.median(theirs))
                results["pull (theirs: skopeo copy + umoci unpack)"] = (statistics.median(ours),
                                                                       statistics.median(unpacked))
                results["pull --no-unpack (theirs: skopeo copy)"] = (statistics.median(lazy),
                                                                    statistics.median(theirs))
            if args.what in ("push", "both"):
                store = work / "store-push"
                sh(*UNIONFS, "--root", store, "pull", "-q", ref)
                ours, theirs = [], []
                for i in range(args.runs):
                    with running_registry(work / f"dst{i}") as dst:
                        ours.append(timed(*UNIONFS, "--root", store, "push", "-q", ref, f"{dst.host}/bench:v1"))
                    with running_registry(work / f"dsts{i}") as dst:
                        theirs.append(timed("skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:l1",
                                            f"docker://{dst.host}/bench:v1"))
                results["push"] = (statistics.median(ours), statistics.median(theirs))
        for name, (ours_m, theirs_m) in results.items():
            print(f"{name}: unionfs {ours_m:.3f}s  skopeo {theirs_m:.3f}s  ratio {ours_m / theirs_m:.2f}x "
                  f"(median of {args.runs}, {args.mb} MB image)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
