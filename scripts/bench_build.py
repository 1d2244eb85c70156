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
from pathlib import Path

from benchlib.proc import CommandFailed, run, timed  # first: puts the repository and tests/ on sys.path
from support.busybox import busybox_tarball

DOCKERFILE = """\
FROM base
ENV GREETING=hello
RUN echo "$GREETING" > /greeting && mkdir -p /app
COPY src/ /app/
WORKDIR /app
RUN cat /greeting *.txt > all.txt
CMD ["cat", "/app/all.txt"]
"""


def main() -> int:
    """Run the benchmark; a failed command ends it with its name, exit status and stderr."""
    try:
        return _main()
    except CommandFailed as e:
        raise SystemExit(f"bench_build: {e}")


def _main() -> int:
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
            run(uf + ["--root", str(root), "import", str(tarball), "base:latest"])
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
                cid = run(base + ["from", "scratch"], env=env, stdout=subprocess.PIPE).stdout.decode().strip()
                run(base + ["add", cid, str(tarball), "/"], env=env)
                run(base + ["commit", "-q", cid, "base"], env=env)
                run(base + ["rm", cid], env=env)
                bud = base + ["bud", "--layers", "--isolation", "chroot", "-t", "b:1", str(ctx)]
                results["buildah"]["cold"].append(timed(bud, env=env))
                results["buildah"]["cached"].append(timed(bud, env=env))
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
