"""Smoke test of scripts/bench.py: ``--smoke`` (a tiny data set, one run) produces every JSON field for every
implementation and leaves no mount behind. It asserts no timing.

The benchmark mounts through the same harness as the tests (tests/support/mount.py), so it needs what the
harness's mount tests need; its cache is a private directory, out of reach of pytest's clean-up of old
temporary directories (which could move a live mount away under it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.mount import (
    leftover_mounts,
    private_tmpdir,
    require,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_tool,
    skip_reason_unionfs,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench.py"
IMPLS = ("unionfs", "fuse-overlayfs", "kernel")
TIME_METRICS = ("read_first", "read_again", "find_first", "find_second", "cat_small", "write_4k", "write_1m",
                "copyup_chmod", "copyup_append", "copyup_sparse", "mount_1", "ls_1", "mount_100", "ls_100")
DAEMON_METRICS = ("rss_tree_mb", "rss_max_mb", "cpu_total_s")


def test_bench_smoke_reports_every_field(tmp_path: Path) -> None:
    require(skip_reason_root(), skip_reason_fuse(), skip_reason_tool("fuse-overlayfs"), skip_reason_unionfs(),
            skip_reason_kernel_overlay())
    out = tmp_path / "bench.json"
    with private_tmpdir("bench-smoke") as cache:  # fails when a mount is left below it
        proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--cache", str(cache), "--json", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert leftover_mounts(cache) == [], "bench.py left a mount behind"
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
