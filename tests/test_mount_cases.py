"""The union case table (tests/support/cases.py), unchanged, through a real FUSE mount made by the CLI.

Each mount runs in its own daemon process (``unionfs mount`` returns once it is live) and is unmounted in a
``finally`` even when the test fails (``fusermount3 -u -z`` as the last resort).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Any, Iterator

import pytest
from support.cases import CASES, Case, apply_os, build_case, case_id, run_ops, snapshot, tree_of
from support.cli import run_cli


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (whiteout device nodes, trusted.* xattrs, allow_other)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    if not shutil.which("fusermount3"):
        return "needs fusermount3 (Debian package fuse3)"
    return None


pytestmark = [pytest.mark.root, pytest.mark.fuse,
              pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

def force_unmount(mnt: str) -> None:
    """Unmount whatever is at ``mnt``, politely then lazily."""
    with open("/proc/self/mounts") as f:
        mounted = any(line.split()[1] == mnt for line in f)
    if not mounted:
        return
    if run_cli("umount", mnt, check=False).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)


@contextlib.contextmanager
def mounted(lowers: list[str], upper: str | None, work: str | None, mnt: str,
            extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Mount through the CLI (``--lower`` base first) and always unmount."""
    os.makedirs(mnt, exist_ok=True)
    args = ["mount"]
    for d in lowers:
        args += ["--lower", d]
    if upper is not None:
        args += ["--upper", upper, "--work", work or ""]
    args += list(extra) + [mnt]
    try:
        run_cli(*args)
        yield mnt
    finally:
        force_unmount(mnt)


#: the daemon's ways of moving data: the default (FUSE passthrough for final files) and every byte through the
#: daemon (-o passthrough=off)
DAEMONS = {"default": (), "served": ("-o", "passthrough=off")}


@pytest.mark.parametrize("daemon", list(DAEMONS))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_through_mount(tmp_path: Any, case: Case, daemon: str) -> None:
    lowers, upper, work = build_case(tmp_path, case)
    before = [snapshot(d) for d in lowers]
    mnt = str(tmp_path / "mnt")
    with mounted(lowers, upper, work, mnt, DAEMONS[daemon]):
        run_ops(case, lambda op: apply_os(mnt, op))
        if case.expect is not None:
            assert tree_of(mnt) == case.expect
        for group in case.same_ino:
            assert len({os.lstat(os.path.join(mnt, p)).st_ino for p in group}) == 1, group
        for path, n in case.nlink:
            assert os.lstat(os.path.join(mnt, path)).st_nlink == n, path
        inos = {p: os.lstat(os.path.join(mnt, p)).st_ino for p in tree_of(mnt)}
    assert [snapshot(d) for d in lowers] == before, "a lower changed"
    with mounted(lowers, upper, work, mnt, DAEMONS[daemon]):
        if case.expect is not None:
            assert tree_of(mnt) == case.expect
        assert {p: os.lstat(os.path.join(mnt, p)).st_ino for p in tree_of(mnt)} == inos


@pytest.mark.parametrize("daemon", list(DAEMONS))
def test_rewound_listing_does_not_bring_back_a_removed_name(tmp_path: Any, daemon: str) -> None:
    """A directory read again from its start on the same descriptor (rewinddir) after a name was removed:
    the name must stay gone, for the listing and for stat (stress-ng's filename stressor found the second
    read served from the first one's listing, whose READDIRPLUS entries put the removed name back)."""
    lowers, upper, work = build_case(tmp_path, Case("empty", ({},), ()))
    mnt = str(tmp_path / "mnt")
    with mounted(lowers, upper, work, mnt, DAEMONS[daemon]):
        d = os.path.join(mnt, "d")
        os.mkdir(d)
        for i in range(5):
            f = os.path.join(d, f"f{i}")
            open(f, "w").close()
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                assert f"f{i}" in [e.name for e in os.scandir(fd)]
                os.unlink(f)
                os.lseek(fd, 0, os.SEEK_SET)
                again = [e.name for e in os.scandir(fd)]
            finally:
                os.close(fd)
            assert f"f{i}" not in again
            assert not os.path.lexists(f), f"{f} is back after its unlink"
