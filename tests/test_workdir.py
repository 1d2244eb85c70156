"""A mount's hold on its work directory, through real mounts: ``-o volatile`` (no syncs; the kernel's marker
while mounted, gone after a clean unmount, refusing the next mount after a killed daemon, for unionfs and for
the kernel overlayfs alike) and one mount per upper/work pair. Every mount is unmounted at the end
(tests/support/mount.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.cases import tree_of
from support.cli import run_cli
from support.layers import union_dirs
from support.mount import (
    daemon_pids,
    is_mounted,
    kernel_overlay,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
    unmounted_on_exit,
    wait_pids_gone,
)
from support.tree import Snapshot, assert_same_tree, tree_snapshot

SKIP = skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()
pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def dirty(work: str) -> str:
    return os.path.join(work, "work", "incompat", "volatile", "dirty")


def upper_state(u: str) -> Snapshot:
    """Every entry of the upper: metadata and the data of regular files."""
    return tree_snapshot(u)


def write_and_signal(mnt: str, data: str, sig: int) -> list[int]:
    """Write ``data`` to ``mnt``/new, then send ``sig`` to the mount's daemon; returns its pids."""
    with open(os.path.join(mnt, "new"), "w") as f:
        f.write(data)
    pids = daemon_pids(mnt)
    assert pids
    for pid in pids:
        os.kill(pid, sig)
    return pids


def test_volatile_marks_the_work_dir_until_a_clean_unmount(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt, ("-o", "volatile")) as m:
        assert os.path.exists(dirty(w))
        os.chmod(os.path.join(mnt, "d/f"), 0o600)  # a copy-up, not fsynced
        with open(os.path.join(mnt, "top"), "a") as f:
            f.write("+")
            f.flush()
            os.fsync(f.fileno())  # a no-op on a volatile mount, and no error
        os.sync()
        m.release_root()  # the harness' descriptor would make the mount busy
        run_cli("umount", mnt)
        assert not os.path.exists(os.path.dirname(dirty(w))), "a clean unmount removes the marker"
    with unionfs_mount(lowers, u, w, mnt):  # a plain mount of the same upper afterwards
        assert tree_of(mnt)["top"] == "f:top+"
        assert os.stat(os.path.join(mnt, "d/f")).st_mode & 0o777 == 0o600
        assert tree_of(mnt)["d/f"] == "f:base"


def test_a_killed_volatile_mount_is_refused_until_the_marker_goes(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt, ("-o", "volatile")):
        write_and_signal(mnt, "data", signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    assert os.path.exists(dirty(w)), "the marker outlives a killed daemon"
    before = upper_state(u)
    for extra in ((), ("-o", "volatile")):
        with unmounted_on_exit(mnt):
            res = run_cli("mount", "--lower", lowers[0], "--lower", lowers[1], "--upper", u, "--work", w,
                          *extra, mnt, check=False)
            assert res.returncode != 0, "a mount over a torn volatile upper must fail"
            assert "volatile mount that did not unmount cleanly" in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert not os.path.ismount(mnt)
    assert_same_tree(before, upper_state(u), ("before", "after"), "a refused mount changes nothing")
    shutil.rmtree(os.path.dirname(dirty(w)))  # the user's word that the upper is intact
    with unionfs_mount(lowers, u, w, mnt):
        assert tree_of(mnt)["new"] == "f:data"


@pytest.mark.skipif(skip_reason_kernel_overlay() is not None, reason=skip_reason_kernel_overlay() or "")
def test_the_kernel_overlay_honours_our_volatile_marker(tmp_path: Any) -> None:
    """The marker is the kernel's own: a torn volatile upper is refused by ``mount -t overlay`` as well."""
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt, ("-o", "volatile")):
        for pid in daemon_pids(mnt):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    opts = f"lowerdir={lowers[1]}:{lowers[0]},upperdir={u},workdir={w}"
    with unmounted_on_exit(mnt):
        res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt], capture_output=True, text=True)
        assert res.returncode != 0, "the kernel mounted an upper that a killed volatile mount left"
    shutil.rmtree(os.path.dirname(dirty(w)))
    with kernel_overlay([Path(p) for p in lowers], Path(u), Path(w), Path(mnt), options=()):  # the same opts
        assert tree_of(mnt)["d/g"] == "f:g"


def test_one_mount_per_work_dir(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    other = str(tmp_path / "mnt2")
    os.makedirs(other)
    with unionfs_mount(lowers, u, w, mnt):
        with unmounted_on_exit(other):
            res = run_cli("mount", "--lower", lowers[0], "--upper", u, "--work", w, other, check=False)
            assert res.returncode != 0 and "in use by another mount" in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert not os.path.ismount(other)
        assert tree_of(mnt)["top"] == "f:top"  # the first mount is untouched



@pytest.mark.parametrize("extra", [(), ("-o", "volatile")])
def test_sigterm_unmounts_and_ends_cleanly(tmp_path: Any, extra: tuple[str, ...]) -> None:
    """SIGTERM (as `kill` or a service manager sends it) unmounts instead of leaving a dead mount: the daemon
    ends as after `umount`, so a volatile upper is synced and unmarked."""
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt, extra) as m:
        m.release_root()  # the harness' descriptor would keep the daemon's own unmount from going through
        pids = write_and_signal(mnt, "kept", signal.SIGTERM)
        assert not wait_pids_gone(pids, 10), "the daemon still runs 10 s after SIGTERM"
        assert not is_mounted(mnt), "SIGTERM left the mount behind (a dead daemon gives ENOTCONN)"
        assert not os.path.exists(os.path.dirname(dirty(w)))
    with unionfs_mount(lowers, u, w, mnt):
        assert tree_of(mnt)["new"] == "f:kept"
