"""``mount.fuse.unionfs`` as a container engine's ``mount_program`` (issue 15, point 1): fuse-overlayfs' command
line (no SOURCE, ``--version``, empty options, podman's shapes), fuse-overlayfs' options that mean something here,
unknown options named; and the one-line errors for an unknown ``unionfs mount -o`` option and an unusable
``/dev/fuse`` (point 5)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support.cli import USER_PYTHON, run_cli, user_package
from support.layers import Dir, File, build_layers
from support.mount import skip_reason_fuse, skip_reason_root, skip_reason_unionfs, unmounted_on_exit

from unionfs.errors import UsageError
from unionfs.mount import helper
from unionfs.mount.server import OVERFLOW_ID, IdMap

SKIP = skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()


def mounting(test: Any) -> Any:
    """Mark a test that mounts (root and /dev/fuse; skipped with the reason elsewhere)."""
    for mark in (pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")):
        test = mark(test)
    return test


HELPER = [sys.executable, "-m", "unionfs.mount.helper"]


# ---------------------------------------------------------------- the command line, parsed
def test_podmans_shapes() -> None:
    """The four argument shapes podman 4.3 passes (lowerdir top first; empty items; no SOURCE)."""
    g = "/g/overlay"
    req = helper.parse(["-o", f"lowerdir={g}/l/A:{g}/l/B,upperdir={g}/ID/diff,workdir={g}/ID/work,,volatile",
                        f"{g}/ID/merged"])
    assert req.plan.lowers == (f"{g}/l/B", f"{g}/l/A") and req.plan.upper == f"{g}/ID/diff"
    assert req.plan.work == f"{g}/ID/work" and req.mountpoint == f"{g}/ID/merged" and req.options == ["volatile"]
    req = helper.parse(["-o", f"lowerdir={g}/l/A,upperdir={g}/ID/diff,workdir={g}/ID/work,", f"{g}/ID/merged"])
    assert req.options == [] and not req.unknown
    req = helper.parse(["-o", f"lowerdir={g}/ID/diff:{g}/l/A", f"{g}/ID/merged"])
    assert req.plan.lowers == (f"{g}/l/A", f"{g}/ID/diff") and req.plan.upper is None
    req = helper.parse(["-o", "lowerdir=/host/dir,upperdir=/u,workdir=/w,private", "/merge"])
    assert req.options == [] and not req.unknown  # private: nothing on a FUSE mount
    # mount(8)'s form still works (its -f is "fake": nothing is mounted), and fuse-overlayfs' -f/-d (foreground)
    assert helper.parse(["unionfs", "/m", "-o", "lowerdir=/l"]).mountpoint == "/m"
    req = helper.parse(["unionfs", "/m", "-f", "-o", "lowerdir=/l"])
    assert req.fake and not req.foreground
    req = helper.parse(["-f", "-o", "lowerdir=/l", "/m"])
    assert req.foreground and not req.debug
    req = helper.parse(["-d", "-o", "lowerdir=/l", "/m"])
    assert req.foreground and req.debug


def test_fuse_overlayfs_options() -> None:
    req = helper.parse(["-o", "lowerdir=/l,upperdir=/u,workdir=/w,fsync=0,static_nlink,noacl,squash_to_uid=7,"
                              "squash_to_gid=8,squash_to_root,fsync=1,xattr_permissions=2,context=\"x\",typo,"
                              "noatime,frobnicate=3", "/m"])
    assert req.options == ["volatile", "static_nlink", "noacl", "squash_to_uid=7", "squash_to_gid=8",
                           "squash_to_root", "xattr_permissions=2"]
    assert req.unknown == ["typo", "frobnicate=3"]
    req = helper.parse(["-o", "lowerdir=/l,uidmapping=0:100000:65536,gidmapping=0:100000:65536", "/m"])
    assert req.options == ["uidmapping=0:100000:65536", "gidmapping=0:100000:65536"]
    for bad in ([], ["-o", "lowerdir=/l"], ["-o", "lowerdir=/l", "a", "b", "c"], ["--frob", "-o", "lowerdir=/l", "/m"]):
        with pytest.raises(UsageError):
            helper.parse(bad)


def test_version_and_help() -> None:
    out = subprocess.run([*HELPER, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("mount.fuse.unionfs: version ") and "FUSE kernel interface version 7." in out
    out = subprocess.run([*HELPER, "-h"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "usage: mount.fuse.unionfs" in out


# ---------------------------------------------------------------- mounted
def layers(tmp: Path) -> tuple[list[str], str, str, str]:
    """One lower: ``d/`` with two subdirectories, ``d/f`` owned by 1000:1000; and upper, work, mountpoint."""
    (lower,) = build_layers(tmp, [[Dir("d"), Dir("d/a"), Dir("d/b"), File("d/f", b"f", uid=1000, gid=1000)]])
    for n in ("u", "w", "mnt"):
        (tmp / n).mkdir()
    return [str(lower)], str(tmp / "u"), str(tmp / "w"), str(tmp / "mnt")


@mounting
def test_the_drop_in_form_mounts(tmp_path: Path) -> None:
    """fuse-overlayfs' command line mounts (exit 0 once live); an unknown option is named and dropped."""
    (lower,), u, w, mnt = layers(tmp_path)
    with unmounted_on_exit(mnt):
        r = subprocess.run([*HELPER, "-o", f"lowerdir={lower},upperdir={u},workdir={w},,bogus_option", mnt],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "unknown argument ignored: bogus_option" in r.stderr
        assert open(os.path.join(mnt, "d", "f")).read() == "f"
        st = os.stat(os.path.join(mnt, "d"))
        assert st.st_nlink == 4 and os.stat(os.path.join(mnt, "d", "f")).st_uid == 1000  # as the lower shows


@mounting
def test_squash_static_nlink_and_noacl(tmp_path: Path) -> None:
    (lower,), u, w, mnt = layers(tmp_path)
    opts = f"lowerdir={lower},upperdir={u},workdir={w},squash_to_uid=7,squash_to_gid=8,static_nlink,noacl"
    with unmounted_on_exit(mnt):
        subprocess.run([*HELPER, "-o", opts, mnt], check=True, timeout=60)
        f = os.path.join(mnt, "d", "f")
        assert (os.stat(f).st_uid, os.stat(f).st_gid) == (7, 8)
        assert os.stat(os.path.join(mnt, "d")).st_nlink == 1
        with pytest.raises(OSError) as e:
            os.setxattr(f, "system.posix_acl_access", b"\x02\x00\x00\x00")
        assert e.value.errno == errno.EOPNOTSUPP
        assert open(f).read() == "f"
        os.chown(f, 5, 5)  # a chown still changes the real owner; the mount still shows the squashed one
        assert os.stat(os.path.join(u, "d", "f")).st_uid == 5 and os.stat(f).st_uid == 7


def test_id_maps() -> None:
    m = IdMap(":0:100000:1000:1000:5000:10")  # with the leading colon podman's storage writes
    assert [m.shown(i) for i in (0, 999, 1000, 1009, 1010)] == [100000, 100999, 5000, 5009, OVERFLOW_ID]
    assert [m.stored(i) for i in (100000, 100999, 5000, 5009, 0)] == [0, 999, 1000, 1009, OVERFLOW_ID]
    for bad in ("", "0:1", "0:1:2:3", "a:b:c", "0:-1:5"):
        with pytest.raises(ValueError):
            IdMap(bad)


@mounting
def test_uid_and_gid_mapping(tmp_path: Path) -> None:
    """fuse-overlayfs' uidmapping/gidmapping (``INSIDE:OUTSIDE:LEN``): the files' ids are shown shifted into the
    container's range, and what a caller of that range creates or chowns is stored unshifted, so the layers
    need no chown."""
    base = Path(tempfile.mkdtemp(prefix="unionfs-idmap", dir="/tmp"))  # a path the range's users may walk
    os.chmod(base, 0o755)
    (lower,), u, w, mnt = layers(base)
    opts = (f"lowerdir={lower},upperdir={u},workdir={w},allow_other,uidmapping=0:100000:65536,"
            "gidmapping=0:100000:65536")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        stack.enter_context(unmounted_on_exit(mnt))
        subprocess.run([*HELPER, "-o", opts, mnt], check=True, timeout=60)
        f = os.path.join(mnt, "d", "f")
        assert (os.stat(f).st_uid, os.stat(f).st_gid) == (101000, 101000)
        assert os.stat(os.path.join(mnt, "d")).st_uid == 100000
        # a process of the container's root (host uid 100000) creates a file: stored as 0:0
        subprocess.run(["setpriv", "--reuid=100000", "--regid=100000", "--clear-groups", "touch",
                        os.path.join(mnt, "d", "new")], check=True, timeout=60)
        assert os.stat(os.path.join(mnt, "d", "new")).st_uid == 100000
        st = os.lstat(os.path.join(u, "d", "new"))
        assert (st.st_uid, st.st_gid) == (0, 0)
        os.chown(f, 100005, 100006)  # a chown into the range is stored unshifted
        st = os.lstat(os.path.join(u, "d", "f"))
        assert (st.st_uid, st.st_gid) == (5, 6) and os.stat(f).st_uid == 100005
        with pytest.raises(subprocess.CalledProcessError):  # the range's root does not own what it did not make
            subprocess.run(["setpriv", "--reuid=100000", "--regid=100000", "--clear-groups", "chmod", "777",
                            os.path.join(mnt, "d", "f")], check=True, timeout=60, capture_output=True)


@mounting
def test_squash_to_root(tmp_path: Path) -> None:
    (lower,), u, w, mnt = layers(tmp_path)
    with unmounted_on_exit(mnt):
        subprocess.run([*HELPER, "-o", f"lowerdir={lower},upperdir={u},workdir={w},squash_to_root", mnt],
                       check=True, timeout=60)
        st = os.stat(os.path.join(mnt, "d", "f"))
        assert (st.st_uid, st.st_gid) == (0, 0)


@mounting
def test_an_unknown_unionfs_mount_option_is_an_error(tmp_path: Path) -> None:
    (lower,), u, w, mnt = layers(tmp_path)
    with unmounted_on_exit(mnt):
        r = run_cli("mount", "--lower", lower, "--upper", u, "--work", w, "-o", "volatile,typo", mnt, check=False)
        assert r.returncode == 2 and "unknown mount option: typo" in r.stderr
        r = run_cli("mount", "--lower", lower, "--upper", u, "--work", w, "-o", "squash_to_uid=x", mnt, check=False)
        assert r.returncode == 1 and r.stderr.strip() == "unionfs: squash_to_uid takes a number, not 'x'"
        assert not os.path.ismount(mnt)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
def test_an_unusable_fuse_device_says_how_to_fix_it() -> None:
    """A user other than root for whom /dev/fuse is not open (mode 0600, as on these machines) is told so, with
    the fixes, instead of fusermount3's "Permission denied"."""
    d = tempfile.mkdtemp(prefix="unionfs-fusedev")
    try:
        os.chmod(d, 0o755)
        dev = os.path.join(d, "fuse")
        Path(dev).touch(mode=0o600)
        code = ("from unionfs.errors import MountError\n"
                "from unionfs.mount.daemon import check_fuse_device\n"
                "for dev in (%r, %r):\n"
                "    try:\n        check_fuse_device(dev)\n"
                "    except MountError as e:\n        print(e)\n") % (dev, dev + "-missing")
        env = {**os.environ, "PYTHONPATH": str(user_package(Path(d)))}
        r = subprocess.run([USER_PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                           preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
        lines = r.stdout.splitlines()
        assert len(lines) == 2, r.stderr
        assert "is not open to you (mode 0600, group root)" in lines[0] and "chmod 0666" in lines[0]
        assert "does not exist" in lines[1] and "modprobe fuse" in lines[1]
    finally:
        shutil.rmtree(d)
