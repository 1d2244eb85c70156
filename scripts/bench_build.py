#!/usr/bin/env python3
"""Benchmark (not a test): a 6-step Dockerfile built cold and then fully cached, by ``unionfs build`` and,
when installed, by ``buildah bud --layers`` (vfs storage, chroot isolation) on the same files.

    .venv/bin/python scripts/bench_build.py [--rounds 5]

Prints the median seconds of each and the ratio unionfs/buildah (goal: <= 1.0 for both). Needs root,
/dev/fuse and busybox-static; buildah is the Debian package of that name.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.busybox import busybox_tarball  # noqa: E402

DOCKERFILE = """\
FROM base
ENV GREETING=hello
RUN echo "$GREETING" > /greeting && mkdir -p /app
COPY src/ /app/
WORKDIR /app
RUN cat /greeting *.txt > all.txt
CMD ["cat", "/app/all.txt"]
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        tarball = busybox_tarball(work / "rootfs.tgz")
        ctx = work / "ctx"
        (ctx / "src").mkdir(parents=True)
        for i in range(20):
            (ctx / "src" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        uf = [sys.executable, "-m", "unionfs"]
        results: dict[str, dict[str, list[float]]] = {"unionfs": {"cold": [], "cached": []}}
        for r in range(args.rounds):
            root = work / f"store{r}"
            subprocess.run(uf + ["--root", str(root), "import", str(tarball), "base:latest"], check=True,
                           stdout=subprocess.DEVNULL)
            results["unionfs"]["cold"].append(timed(uf + ["--root", str(root), "build", "-t", "b:1", str(ctx)]))
            results["unionfs"]["cached"].append(timed(uf + ["--root", str(root), "build", "-t", "b:1", str(ctx)]))
            shutil.rmtree(root)
        if shutil.which("buildah"):
            results["buildah"] = {"cold": [], "cached": []}
            for r in range(args.rounds):
                storage = work / f"buildah{r}"
                env = dict(os.environ, STORAGE_DRIVER="vfs", BUILDAH_ISOLATION="chroot")
                base = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                        "--storage-driver", "vfs"]
                cid = subprocess.run(base + ["from", "scratch"], check=True, env=env, capture_output=True,
                                     text=True).stdout.strip()
                subprocess.run(base + ["add", cid, str(tarball), "/"], check=True, env=env, capture_output=True)
                subprocess.run(base + ["commit", "-q", cid, "base"], check=True, env=env, capture_output=True)
                subprocess.run(base + ["rm", cid], check=True, env=env, capture_output=True)
                bud = base + ["bud", "--layers", "--isolation", "chroot", "-t", "b:1", str(ctx)]
                results["buildah"]["cold"].append(timed(bud, env))
                results["buildah"]["cached"].append(timed(bud, env))
                shutil.rmtree(storage, ignore_errors=True)
        for tool, runs in results.items():
            print(f"{tool:8s} cold {statistics.median(runs['cold']):.3f}s  "
                  f"cached {statistics.median(runs['cached']):.3f}s")
        if "buildah" in results:
            for kind in ("cold", "cached"):
                ratio = statistics.median(results["unionfs"][kind]) / statistics.median(results["buildah"][kind])
                print(f"ratio unionfs/buildah {kind}: {ratio:.2f}")
        else:
            print("buildah is not installed: no comparison (apt-get install buildah)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
