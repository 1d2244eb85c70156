"""Third-party stress against a unionfs mount: fio with data verification and stress-ng's file-system stressors.

Bounded to about two minutes together. Each tool runs in the mount and must report zero errors; afterwards
the mount must still answer and unmount cleanly, and the lower layer must be unchanged.

``UNIONFS_TEST_IMPL=kernel`` or ``=fuse-overlayfs`` runs the same against the kernel overlayfs or fuse-overlayfs
(harness validation).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from support.layers import Dir, File, build_layers
from support.mount import (
    Mount,
    leftover_mounts,
    private_tmpdir,
    require,
    require_implementation,
    skip_reason_root,
    skip_reason_tool,
)
from support.tree import LAYER, tree_snapshot

#: how long a tool may run before we call it hung (far above its own --runtime/--timeout)
HANG_LIMIT = 300

#: fio options shared by every fio run here: crc32c checksums in every block, a mismatch is fatal
FIO_VERIFY = ["--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--ioengine=psync", "--group_reporting=0",
              "--verify_state_save=0"]
#: the lower file fio writes before the mount exists, read back and verified through the mount
LOWER_FIO = ["--name=lowerdata", "--rw=write", "--bs=64k", "--size=32M", "--verify=crc32c", "--verify_state_save=0"]


def run_tool(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a stress tool to completion (stdout and stderr merged); a hang fails the test.

    The tool runs in ``cwd`` (default: a fresh temporary directory), never in the repository: fio and
    stress-ng may leave state files in their working directory.
    """
    if cwd is None:
        with tempfile.TemporaryDirectory(prefix="stress-cwd-") as tmp:
            return run_tool(argv, Path(tmp))
    try:
        return subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=HANG_LIMIT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{argv[0]} still running after {HANG_LIMIT}s (hung mount?):\n{e.stdout}")


def fio_errors(out: str) -> list[str]:
    """Lines of fio's report that show a failure: a job with err != 0, a verify complaint, an I/O error."""
    bad = []
    for line in out.splitlines():
        m = re.search(r"\berr=\s*(\d+)", line)
        if m and m.group(1) != "0":
            bad.append(line)
        elif re.search(r"verify:|bad magic|crc32c: verify|fio: io_u error|fio: pid=\d+, err=", line):
            bad.append(line)
    return bad


def fio_job_count(out: str) -> int:
    """How many job reports (``NAME: (groupid=...): err= N``) fio printed."""
    return len(re.findall(r"\(groupid=\d+, jobs=\d+\): err=", out))


@pytest.fixture(scope="module")
def stress_mount() -> Iterator[tuple[Mount, Path]]:
    """One mount of the implementation under test over a lower layer that holds a fio-written file."""
    require(skip_reason_root())
    mount_impl = require_implementation()
    with private_tmpdir("stress") as base:
        yield from _stress_mount(mount_impl, base)


def _stress_mount(mount_impl: Callable[..., Any], base: Path) -> Iterator[tuple[Mount, Path]]:
    """The body of :func:`stress_mount`, below ``base``."""
    (lower,) = build_layers(base, [[Dir("fio"), Dir("stress"), File("fio/readme", b"lower layer\n")]])
    if skip_reason_tool("fio") is None:
        r = run_tool(["fio", f"--filename={lower}/fio/lower.dat", *LOWER_FIO, "--do_verify=0"])
        assert r.returncode == 0 and not fio_errors(r.stdout), r.stdout
    before = tree_snapshot(lower, **LAYER)
    try:
        with mount_impl([lower], base / "upper", base / "work", base / "mnt") as m:
            yield m, lower
            os.statvfs(m.path)  # the mount still answers after the stress
    finally:
        assert not leftover_mounts(base), f"mounts left behind: {leftover_mounts(base)}"
    after = tree_snapshot(lower, **LAYER)
    d = before.diff(after, ("before", "after"))
    assert not d, "the stress changed the lower layer:\n  " + "\n  ".join(d)


def test_fio_verify_detects_corruption(tmp_path: Path) -> None:
    """Harness self-check: the fio verification used below does fail on a corrupted file."""
    require(skip_reason_tool("fio"))
    f = tmp_path / "data"
    r = run_tool(["fio", f"--filename={f}", *LOWER_FIO, "--do_verify=0"])
    assert r.returncode == 0, r.stdout
    with open(f, "r+b") as fh:  # flip one byte in the middle of a block
        fh.seek(5 * 65536 + 1000)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    r = run_tool(["fio", f"--filename={f}", *LOWER_FIO, "--verify_only", "--verify_fatal=1"])
    assert r.returncode != 0 or fio_errors(r.stdout), "fio did not notice a flipped byte:\n" + r.stdout


def test_fio_lower_file_then_copy_up(stress_mount: tuple[Mount, Path]) -> None:
    """A file fio wrote into the lower layer verifies through the mount, then is rewritten (copied up)."""
    require(skip_reason_tool("fio"))
    m, _ = stress_mount
    target = f"--filename={m.path}/fio/lower.dat"
    r = run_tool(["fio", target, *LOWER_FIO, "--verify_only", "--verify_fatal=1"])
    assert r.returncode == 0 and not fio_errors(r.stdout) and fio_job_count(r.stdout) == 1, \
        f"verifying the lower file through the {m.kind} mount failed:\n{r.stdout}"
    # rewrite it in place through the mount (copy-up), random 4k blocks, verified after writing
    r = run_tool(["fio", target, "--name=rewrite", "--rw=randwrite", "--bs=4k", "--size=32M", "--io_size=8M",
                  "--norandommap", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                  "--verify_state_save=0"])
    assert r.returncode == 0 and not fio_errors(r.stdout) and fio_job_count(r.stdout) == 1, \
        f"rewriting the lower file through the {m.kind} mount failed:\n{r.stdout}"


def test_fio_verified_workloads(stress_mount: tuple[Mount, Path]) -> None:
    """fio: a sequential writer, two random readers/writers and an mmap writer at once, all verified."""
    require(skip_reason_tool("fio"))
    m, _ = stress_mount
    d = m.path / "fio" / "jobs"
    d.mkdir()
    r = run_tool(["fio", f"--directory={d}", *FIO_VERIFY, "--runtime=45",
                  "--name=seqwrite", "--rw=write", "--bs=128k", "--size=96M", "--end_fsync=1",
                  "--name=randrw", "--rw=randrw", "--bs=4k", "--size=32M", "--numjobs=2", "--fsync=64",
                  "--name=mmap", "--ioengine=mmap", "--rw=randwrite", "--bs=16k", "--size=32M"])
    assert r.returncode == 0, f"fio exited {r.returncode} on the {m.kind} mount:\n{r.stdout}"
    assert not fio_errors(r.stdout), "fio reported errors:\n" + "\n".join(fio_errors(r.stdout))
    assert fio_job_count(r.stdout) == 4, f"expected 4 job reports:\n{r.stdout}"
    # the data is really there: each job's file has its full size through the mount
    sizes = sorted(p.stat().st_size for p in d.iterdir())
    assert sizes == sorted([96 << 20, 32 << 20, 32 << 20, 32 << 20]), sizes


#: stress-ng stressors that exercise a file system (each with one instance), with their size options
STRESSORS = [
    "--dir", "1", "--dentry", "1", "--link", "1", "--symlink", "1", "--rename", "1",
    "--hdd", "1", "--hdd-bytes", "16m",
    "--fallocate", "1", "--fallocate-bytes", "16m",
    "--lockf", "1", "--flock", "1", "--fcntl", "1",
    "--mmap", "1", "--mmap-file", "--mmap-bytes", "4m",
    "--seek", "1", "--seek-size", "16m",
    "--chmod", "1", "--chown", "1", "--utime", "1", "--filename", "1", "--xattr", "1",
    "--open", "1", "--getdent", "1", "--fpunch", "1", "--iomix", "1", "--iomix-bytes", "16m",
]
STRESSOR_NAMES = [a[2:] for a in STRESSORS if a.startswith("--") and a[2:] not in
                  ("hdd-bytes", "fallocate-bytes", "mmap-file", "mmap-bytes", "seek-size", "iomix-bytes")]


def stress_ng_failures(out: str) -> list[str]:
    """Lines in which stress-ng reports a failure (its "failed: 0" summary does not count)."""
    bad = []
    for line in out.splitlines():
        low = line.lower()
        if re.search(r"\bfail", low) and not re.search(r"\bfailed: 0\b", low):
            bad.append(line)
        elif re.search(r"\b(error|unexpected|corrupt|mismatch)", low) and "metrc" not in low:
            bad.append(line)
    return bad


def test_stress_ng_filesystem(stress_mount: tuple[Mount, Path]) -> None:
    """stress-ng's file-system stressors, all at once with --verify, in the mount: zero failures."""
    require(skip_reason_tool("stress-ng"))
    m, _ = stress_mount
    d = m.path / "stress"
    r = run_tool(["stress-ng", "--temp-path", str(d), *STRESSORS, "--timeout", "20s", "--verify",
                  "--metrics-brief"], cwd=d)
    assert r.returncode == 0, f"stress-ng exited {r.returncode} on the {m.kind} mount:\n{r.stdout}"
    bad = stress_ng_failures(r.stdout)
    assert not bad, "stress-ng reported failures:\n" + "\n".join(bad) + "\n\nfull output:\n" + r.stdout
    ran = set(re.findall(r"metrc: \[\d+\] (\S+)\s+\d+\s", r.stdout))
    missing = set(STRESSOR_NAMES) - ran
    assert not missing, f"stressors that did not report metrics (skipped?): {sorted(missing)}\n{r.stdout}"
    # the stressors clean up after themselves: nothing they made is left in the directory
    assert sorted(os.listdir(d)) == [], f"stress-ng left {sorted(os.listdir(d))} in {d}"

