#!/usr/bin/env python3
"""Benchmark: unpacking a real gzip image with ``unionfs.layer.unpack.unpack_layer`` against ``umoci unpack``.

Builds once and caches under ``.bench-cache/`` an OCI image made with umoci from real files: a
copy of /usr/lib/python3* (layer 1) and /usr/share/{perl,zoneinfo,i18n} (layer 2): about 140 MB of real
files, ~40-50 MB of gzip layers (debootstrap is not available offline here). Then times, for
``--runs`` runs each, ``umoci unpack`` of the image and ``unpack_layer`` of each of its layers in order
into fresh directories, and prints the medians and the ratio (ours / umoci; the goal is <= 1.0).

Usage: python scripts/bench_unpack.py [--runs N] [--profile] [--rebuild]
Needs root (umoci unpack without --rootless, ownership) and umoci on PATH.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    REPO,  # first: puts the repository on sys.path
    proc,
)

from unionfs.layer.unpack import unpack_layer
from unionfs.oci.digest import Digest

CACHE = REPO / ".bench-cache"
IMAGE = CACHE / "image"
TAG = "bench"
SOURCES = [  # (source directory, destination inside the rootfs, layer number)
    ("/usr/lib/python3.11", "usr/lib/python3.11", 0),
    ("/usr/lib/python3", "usr/lib/python3", 0),
    ("/usr/share/perl", "usr/share/perl", 1),
    ("/usr/share/zoneinfo", "usr/share/zoneinfo", 1),
    ("/usr/share/i18n", "usr/share/i18n", 1),
]


def run(*cmd: str) -> None:
    """Run ``cmd``; it must succeed."""
    proc.run(cmd)


def build_image() -> None:
    """Make the cached image with umoci: one repack per layer of SOURCES."""
    if IMAGE.exists():
        shutil.rmtree(IMAGE)
    CACHE.mkdir(exist_ok=True)
    run("umoci", "init", "--layout", str(IMAGE))
    run("umoci", "new", "--image", f"{IMAGE}:{TAG}")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        bundle = Path(tmp) / "bundle"
        run("umoci", "unpack", "--image", f"{IMAGE}:{TAG}", str(bundle))
        rootfs = bundle / "rootfs"
        for layer_no in sorted({n for _, _, n in SOURCES}):
            for src, dst, n in SOURCES:
                if n == layer_no and os.path.isdir(src):
                    target = rootfs / dst
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            run("umoci", "repack", "--refresh-bundle", "--image", f"{IMAGE}:{TAG}", str(bundle))
    run("umoci", "gc", "--layout", str(IMAGE))


def layers() -> list[tuple[Path, str, Digest, int]]:
    """(blob path, media type, diff_id, size) of each layer of the cached image, base first."""
    index = json.loads((IMAGE / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)

    def blob(d: str) -> Path:
        algo, hexpart = d.split(":")
        return IMAGE / "blobs" / algo / hexpart

    manifest = json.loads(blob(desc["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    return [(blob(l["digest"]), l["mediaType"], Digest.parse(d), l["size"])
            for l, d in zip(manifest["layers"], config["rootfs"]["diff_ids"])]


def settle() -> None:
    """Flush and let the filesystem finish earlier deletions (ext4 discard) so runs do not pay for each other."""
    os.sync()
    time.sleep(1.0)


def time_umoci(work: Path) -> float:
    out = work / "umoci-bundle"
    settle()
    t0 = time.perf_counter()
    run("umoci", "unpack", "--image", f"{IMAGE}:{TAG}", str(out))
    dt = time.perf_counter() - t0
    shutil.rmtree(out)
    return dt


def time_ours(work: Path, profile: cProfile.Profile | None = None) -> float:
    dirs = []
    settle()
    t0 = time.perf_counter()
    if profile:
        profile.enable()
    for i, (path, media_type, diff_id, _) in enumerate(layers()):
        d = work / f"layer{i}"
        d.mkdir()
        dirs.append(d)
        with open(path, "rb", buffering=0) as f:
            unpack_layer(f, str(d), media_type=media_type, diff_id=diff_id)
    if profile:
        profile.disable()
    dt = time.perf_counter() - t0
    for d in dirs:
        shutil.rmtree(d)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one of our runs")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached image")
    ap.add_argument("--work-dir", default=str(CACHE),
                    help="where to unpack (default .bench-cache/; /dev/shm takes the disk out of the numbers)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_unpack: needs root (umoci unpack, ownership)", file=sys.stderr)
        return 2
    if args.rebuild or not (IMAGE / "index.json").exists():
        print("building the benchmark image (cached in .bench-cache/)...", file=sys.stderr)
        build_image()
    info = layers()
    compressed = sum(s for *_, s in info)
    print(f"image: {len(info)} gzip layers, {compressed / 1e6:.1f} MB compressed")
    work = Path(tempfile.mkdtemp(dir=args.work_dir, prefix="bench-unpack-"))
    try:
        time_ours(work)  # warm the page cache
        ours, umoci = [], []
        for _ in range(args.runs):
            umoci.append(time_umoci(work))
            ours.append(time_ours(work))
        m_ours, m_umoci = statistics.median(ours), statistics.median(umoci)
        print(f"umoci unpack:  median {m_umoci:.3f} s  runs {' '.join(f'{t:.3f}' for t in umoci)}")
        print(f"unpack_layer:  median {m_ours:.3f} s  runs {' '.join(f'{t:.3f}' for t in ours)}")
        print(f"ratio (unionfs / umoci): {m_ours / m_umoci:.2f}x")
        if args.profile:
            prof = cProfile.Profile()
            time_ours(work, prof)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
