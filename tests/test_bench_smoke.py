"""Smoke test of scripts/bench.py: ``--smoke`` (a tiny data set, one run) produces every JSON field for every
implementation and leaves no mount behind. It asserts no timing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"
IMPLS = ("unionfs", "fuse-overlayfs", "kernel")
TIME_METRICS = ("read_first", "read_again", "find_first", "find_second", "cat_small", "write_4k", "write_1m",
                "copyup_chmod", "copyup_append", "copyup_sparse", "mount_1", "ls_1", "mount_100", "ls_100")
DAEMON_METRICS = ("rss_tree_mb", "rss_max_mb", "cpu_total_s")


def _skip_reason() -> str | None:
    """Why the benchmark cannot run here, or None."""
    if os.geteuid() != 0:
        return "bench.py needs root (kernel overlayfs, whiteout device nodes)"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "bench.py needs /dev/fuse and fusermount3 (Debian package fuse3)"
    if shutil.which("fuse-overlayfs") is None:
        return "bench.py needs fuse-overlayfs (Debian package fuse-overlayfs)"
    if not (REPO / ".venv" / "bin" / "unionfs").exists():
        return "bench.py needs .venv/bin/unionfs (run scripts/setup.sh)"
    with open("/proc/filesystems") as f:
        if not any(line.split()[-1] == "overlay" for line in f if line.strip()):
            return "the kernel has no overlay filesystem"
    return None


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line for line in f if len(line.split()) > 1 and line.split()[1].startswith(str(path))]


def test_bench_smoke_reports_every_field(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "bench.json"
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--cache", str(cache), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        doc = json.loads(out.read_text())
        assert doc["implementations"] == list(IMPLS)
        summary = doc["summary"]
        for metric in TIME_METRICS:
            for impl in IMPLS:
                assert summary[metric][impl] is not None, f"{metric} missing for {impl}"
                assert summary[metric][impl]["n"] == 1
        for metric in DAEMON_METRICS:
            for impl in ("unionfs", "fuse-overlayfs"):
                assert summary[metric][impl] is not None, f"{metric} missing for {impl}"
        for impl in IMPLS:
            run = doc["results"][impl][0]
            assert run["holes_kept"] in (0.0, 1.0)
            assert run["find_entries"] > 0
        assert "unionfs / fuse-overlayfs" in proc.stdout
        assert set(doc["ratios"]["find_first"]) == {"unionfs/fuse-overlayfs", "unionfs/kernel"}
    finally:
        assert _mounts_under(tmp_path) == [], "bench.py left a mount behind"
