"""Smoke test of scripts/bench.py: ``--smoke`` (a tiny data set, one run) produces every JSON field for every
implementation, on writable and on read-only mounts, and leaves no mount behind. It asserts no timing.

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
#: the metrics of the read-only sessions (the read workloads on the layers alone)
RO_TIME_METRICS = ("read_first_ro", "read_again_ro", "find_first_ro", "find_second_ro", "cat_small_ro",
                   "mount_1_ro", "ls_1_ro", "mount_100_ro", "ls_100_ro")
RO_DAEMON_METRICS = ("rss_tree_mb_ro", "rss_max_mb_ro", "cpu_total_s_ro")
#: the read-only rows of the 1-layer image, which some kernels' overlayfs cannot mount (reported, not failed)
ONE_LAYER_RO = ("mount_1_ro", "ls_1_ro")


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
    assert doc["mounts"] == ["writable", "read-only"]
    _check_read_only(doc, proc.stdout)



def _rows(stdout: str, label: str) -> list[list[str]]:
    """The cells (without the label) of the results table's rows labelled ``label``, in their order."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            rows.append(cells[1:])
    assert rows, f"no row {label!r} in the output:\n{stdout}"
    return rows


def _kernel_refuses_one_layer(doc: dict) -> bool:
    """Whether the bench reported that this kernel's overlayfs cannot mount the 1-layer image read-only."""
    return any(e.startswith("mount_1_ro kernel:") and "single layer" in e for e in doc["unsupported"])


def _check_read_only(doc: dict, stdout: str) -> None:
    """The read-only sessions gave numbers for every implementation (but the kernel's 1-layer one when it
    said why), saw the tree as the writable ones did, and have their rows, ratios and goals."""
    summary = doc["summary"]
    refused = _kernel_refuses_one_layer(doc)
    for metric in RO_TIME_METRICS:
        for impl in IMPLS:
            if impl == "kernel" and metric in ONE_LAYER_RO and refused:
                assert summary[metric][impl] is None
                continue
            assert summary[metric][impl] is not None, f"{metric} missing for {impl}"
            assert summary[metric][impl]["n"] == 1
    for metric in RO_DAEMON_METRICS:
        for impl in ("unionfs", "fuse-overlayfs"):
            assert summary[metric][impl] is not None, f"{metric} missing for {impl}"
    for impl in IMPLS:
        run = doc["results"][impl][0]
        assert run["find_entries_ro"] == run["find_entries"], f"{impl}: read-only find saw another tree"
    n = len(IMPLS)  # then the ratio columns, unionfs / fuse-overlayfs first
    for label in ("read 1 GiB, first after mount (s) (read-only)", "find -printf, second (s) (read-only)",
                  "cat 10,000 files of 4 KiB (s) (read-only)"):
        [cells] = _rows(stdout, label)
        assert "-" not in cells[:n + 1], (label, cells)
    ls_1, ls_100 = _rows(stdout, "ls -la of its root (s) (read-only)")
    assert "-" not in ls_100[:n + 1], ls_100
    assert "-" not in ls_1[:n - 1], ls_1  # the 1-layer image: the kernel's "-" exactly when it said why
    assert (ls_1[n - 1] == "-") == refused, ls_1
    assert set(doc["ratios"]["cat_small_ro"]) == {"unionfs/fuse-overlayfs", "unionfs/kernel"}
    assert doc["ratios"]["cat_small_ro"]["unionfs/kernel"] is not None
    assert "| read_first_ro: unionfs / fuse-overlayfs <= 1 |" in stdout
    if refused:
        assert "not measured: mount_1_ro kernel:" in stdout


def test_bench_mount_runs_trees_with_their_own_executables() -> None:
    """scripts/bench_mount.py: one run of two trees, one of them with an ``--exe`` of its own (as a venv
    installed otherwise would be), prints every workload for both trees and a ``python -c pass`` row per
    interpreter; an ``--exe`` for no tree is refused. It asserts no timing."""
    require(skip_reason_root(), skip_reason_fuse(), skip_reason_unionfs())
    script = REPO / "scripts" / "bench_mount.py"
    exe = str(Path(sys.executable).parent / "unionfs")
    proc = subprocess.run([sys.executable, str(script), "--runs", "1", "--tree", f"a={REPO}", "--tree", f"b={REPO}",
                           "--exe", f"b={exe}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for workload in ("mount_lower", "mount_image1", "mount_image100", "umount", "umount_image100"):
        assert len(_rows(proc.stdout, f"{workload} (s)")[0]) == 2
    assert len(_rows(proc.stdout, "python -c pass (s)")) == 1  # both trees run the same interpreter
    bad = subprocess.run([sys.executable, str(script), "--tree", f"a={REPO}", "--exe", f"c={exe}"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no --tree named c" in bad.stderr
