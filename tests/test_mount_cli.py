"""The mount commands end to end: mount/umount/ps, one-line errors, the mount(8) helper, inode numbers across
a remount, and kill -9 of the daemon. Every mount is unmounted at the end (tests/support/mount.py)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.cases import tree_of
from support.cli import run_cli
from support.layers import Dir, File, build_layers, union_dirs
from support.mount import (
    daemon_pids,
    skip_reason_fuse,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
    unmounted_on_exit,
)
from support.tree import tree_snapshot

SKIP = skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()
pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def inodes(mnt: str) -> dict[str, int]:
    """The inode number of every path under ``mnt`` (not the root)."""
    return {p: n.ino for p, n in tree_snapshot(mnt, inodes=True).nodes.items() if p != "." and n.ino is not None}


def test_mount_ps_umount(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt) as m:
        assert tree_of(mnt)["d/g"] == "f:g"
        st = os.statvfs(mnt)
        assert st.f_namemax == 255
        assert mnt in run_cli("ps").stdout
        res = run_cli("mount", "--lower", lowers[0], mnt, check=False)
        assert res.returncode != 0 and "busy" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        m.release_root()  # the harness' descriptor would make the mount busy
        run_cli("umount", mnt)
        assert mnt not in run_cli("ps").stdout
        res = run_cli("umount", mnt, check=False)
        assert res.returncode != 0 and "not a unionfs mount" in res.stderr


def test_one_line_errors(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    cases = [
        (["--lower", lowers[0], str(tmp_path / "nope")], "does not exist"),
        (["--lower", str(tmp_path / "missing"), mnt], "does not exist"),
        (["--lower", lowers[0], "--upper", u, mnt], "go together"),
    ]
    for args, text in cases:
        with unmounted_on_exit(mnt):
            res = run_cli("mount", *args, check=False)
            assert res.returncode != 0 and text in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_upper_without_xattrs(tmp_path: Any) -> None:
    lowers, _u, _w, mnt = union_dirs(tmp_path)
    fs = tmp_path / "vfat"
    os.makedirs(fs)
    # a tmpfs mounted without user/trusted xattr support is hard to get; /proc is a filesystem without xattrs
    # where we cannot write either: the error must still be one line
    with unmounted_on_exit(mnt):
        res = run_cli("mount", "--lower", lowers[0], "--upper", "/proc/sys", "--work", "/proc/sys", mnt, check=False)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_plain_umount_ends_the_daemon(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt) as m:
        pids = daemon_pids(mnt)
        assert pids
        m.release_root()  # the harness' descriptor would make the mount busy
        subprocess.run(["umount", mnt], check=True)
        for _ in range(100):
            if not any(os.path.exists(f"/proc/{p}") for p in pids):
                break
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                       for p in pids)


def test_remount_keeps_inode_numbers(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt):
        with open(os.path.join(mnt, "a"), "a") as f:
            f.write("+")
        os.rename(os.path.join(mnt, "d"), os.path.join(mnt, "e"))
        os.mkdir(os.path.join(mnt, "new"))
        inos = inodes(mnt)
        dinos = {e.name: e.inode() for e in os.scandir(mnt)}
    assert inos["a"] == inos["b"]
    assert len(set(inos.values())) == len(inos) - 1  # a and b are one inode
    assert all(dinos[n] == inos[n] for n in dinos)  # readdir's d_ino agrees with stat
    with unionfs_mount(lowers, u, w, mnt):
        assert inodes(mnt) == inos
        assert os.lstat(os.path.join(mnt, "a")).st_nlink == 2


def test_kill_9_leaves_no_partial_file(tmp_path: Any) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    big = os.path.join(lowers[1], "big")
    with open(big, "wb") as f:
        chunk = bytes(range(256)) * 4096
        for _ in range(64):
            f.write(chunk)
    size = os.path.getsize(big)
    with unionfs_mount(lowers, u, w, mnt):
        def writer() -> None:
            try:
                with open(os.path.join(mnt, "big"), "ab") as f:
                    f.write(b"!")
            except OSError:
                pass

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.05)
        for pid in daemon_pids(mnt):
            os.kill(pid, signal.SIGKILL)
        t.join(10)
        subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    with unionfs_mount(lowers, u, w, mnt):
        got = os.path.getsize(os.path.join(mnt, "big"))
        assert got in (size, size + 1)
        assert not os.listdir(os.path.join(w, "unionfs", "tmp"))


@pytest.mark.parametrize("extra", ["", ",volatile"])
def test_mount8_helper_form(tmp_path: Any, extra: str) -> None:
    lowers, u, w, mnt = union_dirs(tmp_path)
    helper = [sys.executable, "-m", "unionfs.mount.helper"]
    opts = f"rw,nofail,dev,suid,lowerdir={lowers[1]}:{lowers[0]},upperdir={u},workdir={w}{extra}"
    with unmounted_on_exit(mnt):
        subprocess.run(helper + ["unionfs", mnt, "-o", opts], check=True, timeout=60)
        assert tree_of(mnt)["d/f"] == "f:base" and tree_of(mnt)["top"] == "f:top"
        # volatile reaches the daemon, which marks the work directory (see tests/test_workdir.py)
        assert os.path.exists(os.path.join(w, "work", "incompat", "volatile")) == bool(extra)


def test_read_only_mount(tmp_path: Any) -> None:
    lowers, _u, _w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, None, None, mnt):
        with pytest.raises(OSError) as ei:
            open(os.path.join(mnt, "x"), "w")
        assert ei.value.errno == 30


@pytest.mark.parametrize("opts", [(), ("-o", "writeback")], ids=["default", "writeback"])
def test_mtime_through_mount_is_the_uppers(tmp_path: Any, opts: tuple[str, ...]) -> None:
    """With the writeback cache the kernel owns mtime: the upper must keep exactly the mtime the mount showed,
    after sync and after umount (the commit round trip depends on it)."""
    lowers, u, w, mnt = union_dirs(tmp_path)
    shown: dict[str, int] = {}
    with unionfs_mount(lowers, u, w, mnt, opts):
        for i in range(8):
            p = os.path.join(mnt, f"new{i}")
            with open(p, "w") as f:
                f.write("hello\n" * i * 500)
            shown[f"new{i}"] = os.stat(p).st_mtime_ns
        with open(os.path.join(mnt, "a"), "a") as f:  # copy-up and append
            f.write("more")
        shown["a"] = os.stat(os.path.join(mnt, "a")).st_mtime_ns
        fd = os.open(os.path.join(mnt, "top"), os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, 1 << 16)
            os.pwrite(fd, b"x", 100)
            os.ftruncate(fd, 50)
        finally:
            os.close(fd)
        shown["top"] = os.stat(os.path.join(mnt, "top")).st_mtime_ns
        os.sync()
        assert {n: os.stat(os.path.join(u, n)).st_mtime_ns for n in shown} == shown
    assert {n: os.stat(os.path.join(u, n)).st_mtime_ns for n in shown} == shown


def test_listings_follow_changes(tmp_path: Any) -> None:
    """The kernel caches directory listings (and the daemon its path resolutions): every change made through
    the mount shows in the next listing and lookup."""
    lowers, u, w, mnt = union_dirs(tmp_path)
    d = os.path.join(mnt, "d")
    with unionfs_mount(lowers, u, w, mnt):
        assert sorted(os.listdir(d)) == ["f", "g"]
        assert sorted(os.listdir(d)) == ["f", "g"]  # from the kernel's cache
        open(os.path.join(d, "h"), "w").close()
        assert sorted(os.listdir(d)) == ["f", "g", "h"]
        os.unlink(os.path.join(d, "f"))
        assert sorted(os.listdir(d)) == ["g", "h"]
        os.rename(os.path.join(d, "g"), os.path.join(mnt, "g2"))
        assert sorted(os.listdir(d)) == ["h"]
        assert "g2" in os.listdir(mnt)
        os.rename(d, os.path.join(mnt, "d2"))
        assert sorted(os.listdir(os.path.join(mnt, "d2"))) == ["h"]
        assert not os.path.exists(d)
        os.mkdir(d)
        assert os.listdir(d) == []
        with open(os.path.join(mnt, "d2", "h"), "w") as f:
            f.write("data")
        with open(os.path.join(mnt, "d2", "h")) as f:
            assert f.read() == "data"


@pytest.mark.parametrize("opts", [(), ("-o", "writeback")], ids=["default", "writeback"])
def test_mtime_after_truncates_is_the_uppers(tmp_path: Any, opts: tuple[str, ...]) -> None:
    """Finding D4: truncate twice (and O_TRUNC opens) must leave the upper with the mtime the mount shows."""
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt, opts):
        for name in ("top", "a"):
            p = os.path.join(mnt, name)
            os.truncate(p, 0)
            os.truncate(p, 0)
        p = os.path.join(mnt, "new")
        for _ in range(3):
            with open(p, "w") as f:
                f.write("12345")
        os.truncate(p, 2)
        os.truncate(p, 1)
        shown = {n: os.stat(os.path.join(mnt, n)).st_mtime_ns for n in ("top", "a", "new")}
    assert {n: os.stat(os.path.join(u, n)).st_mtime_ns for n in shown} == shown
    with unionfs_mount(lowers, u, w, mnt):
        assert {n: os.stat(os.path.join(mnt, n)).st_mtime_ns for n in shown} == shown


def test_hardlinked_names_follow_a_change(tmp_path: Any) -> None:
    """A lower hardlink changed through one name (fallocate, append) shows its new size under every name
    (found by the differential test; the reason the writeback cache is not the default)."""
    lowers, u, w, mnt = union_dirs(tmp_path)  # l0: a and b are one inode
    with unionfs_mount(lowers, u, w, mnt):
        assert os.stat(os.path.join(mnt, "b")).st_size == 1
        fd = os.open(os.path.join(mnt, "a"), os.O_RDWR)
        try:
            os.posix_fallocate(fd, 4, 2000)
        finally:
            os.close(fd)
        assert os.stat(os.path.join(mnt, "b")).st_size == 2004
        with open(os.path.join(mnt, "b"), "a") as f:
            f.write("z")
        assert os.stat(os.path.join(mnt, "a")).st_size == 2005


def test_hardlinked_names_follow_a_chmod_after_a_rename(tmp_path: Any) -> None:
    """Finding D6: a rename elsewhere must not make the daemon forget the other names of a hardlinked file."""
    lowers, u, w, mnt = union_dirs(tmp_path)  # l0: a and b are one inode
    with unionfs_mount(lowers, u, w, mnt):
        modes = [os.lstat(os.path.join(mnt, n)).st_mode for n in ("a", "b")]
        assert modes[0] == modes[1]
        os.mkdir(os.path.join(mnt, "n1"))
        os.rename(os.path.join(mnt, "n1"), os.path.join(mnt, "d", "n4"))
        os.chmod(os.path.join(mnt, "b"), 0o751)
        assert [os.lstat(os.path.join(mnt, n)).st_mode & 0o7777 for n in ("a", "b")] == [0o751, 0o751]
        os.rename(os.path.join(mnt, "a"), os.path.join(mnt, "d", "a2"))
        os.chmod(os.path.join(mnt, "b"), 0o700)
        assert os.lstat(os.path.join(mnt, "d", "a2")).st_mode & 0o7777 == 0o700


def test_the_daemon_raises_its_descriptor_limit(tmp_path: Any) -> None:
    """Started from a shell's usual soft RLIMIT_NOFILE of 1,024, the daemon raises its own to the hard limit: it
    keeps an eighth of it as open directories (unionfs.union.realdir.KEEP), 128 of which thrashed on a second
    ``find``."""
    import resource

    lowers, u, w, mnt = union_dirs(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard RLIMIT_NOFILE is {hard}: nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        with unionfs_mount(lowers, u, w, mnt):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            (pid,) = daemon_pids(mnt)
            assert resource.prlimit(pid, resource.RLIMIT_NOFILE)[0] == min(hard, 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_umount_returns_while_another_namespace_holds_the_mount(tmp_path: Any) -> None:
    """As umount(8): a copy of the mount in another mount namespace keeps the filesystem and its daemon alive, so
    ``unionfs umount`` returns once the mount is gone here, without waiting for the daemon (it used to wait 60 s
    and warn); the daemon ends when the copy does."""
    lowers, u, w, mnt = union_dirs(tmp_path)
    with unionfs_mount(lowers, u, w, mnt) as m:
        (pid,) = daemon_pids(mnt)
        ours = os.readlink("/proc/self/ns/mnt")
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "300"])
        try:
            for _ in range(200):
                if os.readlink(f"/proc/{holder.pid}/ns/mnt") != ours:
                    break
                time.sleep(0.01)
            m.release_root()
            run_cli("umount", mnt, timeout=30)  # a TimeoutExpired: it waited for the daemon
            assert not os.path.ismount(mnt)
            assert os.path.exists(f"/proc/{pid}")  # the copy keeps it serving
        finally:
            holder.kill()
            holder.wait()
        for _ in range(300):
            if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                break
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("how", ["user namespace", "-o userxattr"])
def test_user_xattrs_in_a_user_namespace_or_when_asked(tmp_path: Any, how: str) -> None:
    """The root of a user namespace (rootless podman's mount program, ``unshare --user --map-root-user``) may not
    set ``trusted.*`` xattrs: the mount used to fail ("does not support trusted.* xattrs"); it now writes
    ``user.overlay.*``, as the kernel's ``userxattr``; ``-o userxattr`` asks for that anywhere. A lower directory
    removed and made again is opaque by ``user.overlay.opaque``; a removed lower file is hidden."""
    from support.cli import cli_argv

    lowers, u, w, mnt = union_dirs(tmp_path)
    mount = cli_argv("mount", *[a for low in lowers for a in ("--lower", low)], "--upper", u, "--work", w,
                     *(["-o", "userxattr"] if how == "-o userxattr" else []), mnt)
    script = (f"{' '.join(map(shlex.quote, mount))} && rm -r {mnt}/d && mkdir {mnt}/d && rm {mnt}/a && "
              f"ls {mnt} && {' '.join(map(shlex.quote, cli_argv('umount', mnt)))}")
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"] if how == "user namespace" else \
        ["sh", "-c"]
    with unmounted_on_exit(mnt):
        r = subprocess.run([*wrap, script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["b", "d", "top"]
    assert os.getxattr(os.path.join(u, "d"), "user.overlay.opaque") == b"y"
    assert not [x for x in os.listxattr(os.path.join(u, "d")) if x.startswith("trusted.")]


def test_a_user_other_than_root_mounts_lowers_upper_and_work(tmp_path: Any) -> None:
    """(Issue 15, point 3.) A user other than root (nobody, 65534) mounts a lower it may read under an upper and
    work of its own, through fusermount3, and unmounts it: it reads, writes, hides a lower file with a whiteout
    and makes a lower directory opaque with ``user.overlay.opaque`` (the user may not set ``trusted.*``). The
    user's commands run on Debian's python3 from a compiled copy of the package; /dev/fuse gets the usual mode
    0666 meanwhile (0600 on these machines)."""
    from support.cli import AsUser, fuse_open_to_all

    base = Path(tempfile.mkdtemp(prefix="unionfs-user", dir="/tmp"))  # a path the user may walk
    os.chmod(base, 0o755)
    mnt = base / "m"
    try:
        nobody = AsUser(base)
        build_layers(base, [[Dir("mine", uid=65534, gid=65534), File("mine/f", b"f", uid=65534, gid=65534),
                             File("mine/g", b"g", uid=65534, gid=65534), File("top", b"top")]])
        for d in ("u", "w", "m"):
            (base / d).mkdir()
            os.chown(base / d, 65534, 65534)
        with fuse_open_to_all(), unmounted_on_exit(mnt):
            nobody.cli("mount", "--lower", base / "l0", "--upper", base / "u", "--work", base / "w", mnt)
            out = nobody.run("sh", "-c", f"cd {mnt} && cat top mine/f && echo && rm mine/g && echo new > mine/n && "
                                        f"rm -r mine && mkdir mine && echo again > mine/a && ls -A mine && ls").stdout
            assert out.split() == ["topf", "a", "mine", "top"]
            nobody.cli("umount", mnt)
            assert not os.path.ismount(mnt)
        assert os.getxattr(base / "u" / "mine", "user.overlay.opaque") == b"y"
        assert (base / "u" / "mine" / "a").read_bytes() == b"again\n"
        assert os.stat(base / "u" / "mine" / "a").st_uid == 65534
    finally:
        shutil.rmtree(base, ignore_errors=True)
