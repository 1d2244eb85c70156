"""Mount flags and dead mounts (docs/security.md, docs/semantics.md and docs/cli.md, "Mounting"), on real mounts as root.

Item 3: a set-uid-root program in a layer (a tiny C program printing its effective uid, compiled here) is run
by ``nobody`` through the mount: the mount must be ``nosuid,nodev`` and private to root unless asked
(``-o allow_other``, ``-o suid``...), through ``unionfs mount --lower``, ``unionfs mount IMAGE`` and the
mount(8) helper; a container rootfs gets ``allow_other`` with ``default_permissions`` and stays nosuid.
The flags are read back from /proc/self/mountinfo.

Item 20: a daemon killed with ``kill -9`` while a file is open leaves a dead mount: ``ps`` says so, ``umount``
detaches it; a busy live mount makes ``umount`` point at ``--lazy``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator

import pytest
from support.cli import run_cli
from support.layers import Dir, File, build_layer
from support.mount import (
    bind_mount,
    daemon_pids,
    is_mounted,
    private_tmpdir,
    skip_reason_fuse,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
    unmounted_on_exit,
    wait_pids_gone,
)

from unionfs import mountinfo

SKIP = skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()
pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

NOBODY = 65534
EUID_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("%d\\n", (int)geteuid()); return 0; }\n'


@pytest.fixture(scope="module")
def euid_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program printing its effective uid (compiled with the system's C compiler)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or shutil.which("setpriv") is None:
        pytest.skip("needs a C compiler and setpriv (util-linux)")
    d = tmp_path_factory.mktemp("euid")
    (d / "euid.c").write_text(EUID_C)
    subprocess.run([cc, "-O1", "-o", str(d / "euid"), str(d / "euid.c")], check=True, capture_output=True)
    return d / "euid"


@pytest.fixture
def suid_layer(tmp_path: Path, euid_program: Path) -> str:
    """A layer directory holding ``bin/euid``, set-uid root."""
    layer = build_layer(tmp_path / "layer", [Dir("bin"), File("bin/euid", euid_program.read_bytes(), mode=0o4755)])
    os.chmod(layer, 0o755)
    return str(layer)


@pytest.fixture
def mnt() -> Iterator[str]:
    """A mountpoint every user can reach (pytest's own temporary directories are root's only)."""
    with private_tmpdir("trust") as d:
        os.chmod(d, 0o755)
        (d / "mnt").mkdir(mode=0o755)
        yield str(d / "mnt")


def as_nobody(program: str) -> subprocess.CompletedProcess[str]:
    """Run ``program`` as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", program],
                          capture_output=True, text=True, timeout=60)


def flags(mountpoint: str) -> tuple[set[str], set[str]]:
    """The per-mount flags and the superblock (FUSE) options of the mount at ``mountpoint``."""
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        fields = left.split()
        if mountinfo.unescape(fields[4]) == mountpoint:
            return set(fields[5].split(",")), set(right.split()[2].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


def test_default_mount_is_nosuid_nodev_and_roots_only(suid_layer: str, mnt: str) -> None:
    """Before the fix, root's mounts had allow_other, suid and dev: nobody ran bin/euid and printed 0."""
    with unionfs_mount([suid_layer], None, None, mnt):
        per_mount, fuse = flags(mnt)
        assert {"nosuid", "nodev"} <= per_mount and "noexec" not in per_mount
        assert "allow_other" not in fuse and "default_permissions" in fuse
        res = as_nobody(f"{mnt}/bin/euid")
        assert res.returncode != 0 and "Permission denied" in res.stderr, (res.stdout, res.stderr)
        assert subprocess.run([f"{mnt}/bin/euid"], capture_output=True, text=True).stdout == "0\n"  # root: own mount


def check_shared_mount(mnt: str, expect: set[str], euid: str | None, names: tuple[str, ...]) -> None:
    """``mnt`` (an allow_other mount) carries exactly the flags of ``expect`` among ``names``, the kernel checks
    permissions, and the layer's set-uid ``bin/euid`` run by nobody prints ``euid`` (None: cannot run)."""
    per_mount, fuse = flags(mnt)
    for f in names:
        assert (f in per_mount) == (f in expect), (f, per_mount)
    assert {"allow_other", "default_permissions"} <= fuse
    res = as_nobody(f"{mnt}/bin/euid")
    if euid is None:
        assert res.returncode != 0 and "Permission denied" in res.stderr, (res.stdout, res.stderr)
    else:
        assert res.returncode == 0 and res.stdout == euid + "\n", (res.stdout, res.stderr)


@pytest.mark.parametrize("opts,euid,expect", [
    ("allow_other", str(NOBODY), {"nosuid", "nodev"}),
    ("allow_other,nosuid,nodev,noexec", None, {"nosuid", "nodev", "noexec"}),
    ("allow_other,suid,dev", "0", set()),                    # asked for explicitly: honoured
    ("allow_other,suid,nosuid", str(NOBODY), {"nosuid", "nodev"}),  # the last one wins
    ("allow_other,noexec,exec,ro", str(NOBODY), {"ro", "nosuid", "nodev"}),
])
def test_mount_flags_are_honoured(suid_layer: str, mnt: str, tmp_path: Path, opts: str, euid: str | None,
                                  expect: set[str]) -> None:
    up, work = tmp_path / "u", tmp_path / "w"
    up.mkdir()
    work.mkdir()
    with unionfs_mount([suid_layer], str(up), str(work), mnt, ("-o", opts)):
        check_shared_mount(mnt, expect, euid, ("nosuid", "nodev", "noexec", "ro"))


@pytest.mark.parametrize("opts,euid,expect", [
    ("rw,defaults,allow_other", str(NOBODY), {"nosuid", "nodev"}),
    ("allow_other,noexec", None, {"nosuid", "nodev", "noexec"}),
    ("allow_other,suid,dev,exec", "0", set()),
    ("allow_other,user", None, {"nosuid", "nodev", "noexec"}),  # fstab's user implies nosuid,nodev,noexec
])
def test_mount8_helper_honours_flags(suid_layer: str, mnt: str, opts: str, euid: str | None,
                                     expect: set[str]) -> None:
    helper = [sys.executable, "-m", "unionfs.mount.helper"]
    with unmounted_on_exit(mnt):
        subprocess.run(helper + ["unionfs", mnt, "-o", f"{opts},lowerdir={suid_layer}"], check=True, timeout=60)
        check_shared_mount(mnt, expect, euid, ("nosuid", "nodev", "noexec"))


def _suid_image(store: Path, euid_program: Path, tmp_path: Path) -> str:
    tar = tmp_path / "suid.tar"
    with tarfile.open(tar, "w") as tf:
        ti = tarfile.TarInfo("bin")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(ti)
        ti = tf.gettarinfo(str(euid_program), "bin/euid")
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mode = 0o4755
        with open(euid_program, "rb") as f:
            tf.addfile(ti, f)
    run_cli("import", tar, "suid:1", root=store)
    return "suid:1"


def test_image_mount_is_nosuid_and_private_unless_asked(euid_program: Path, mnt: str, tmp_path: Path) -> None:
    """The case of the issue: ``unionfs mount IMAGE DIR`` as root, then nobody runs the image's set-uid-root
    program through the mount."""
    store = tmp_path / "store"
    image = _suid_image(store, euid_program, tmp_path)
    with unmounted_on_exit(mnt):
        run_cli("mount", image, mnt, root=store)
        per_mount, fuse = flags(mnt)
        assert {"nosuid", "nodev"} <= per_mount and "allow_other" not in fuse
        res = as_nobody(f"{mnt}/bin/euid")
        assert res.returncode != 0 and "Permission denied" in res.stderr, (res.stdout, res.stderr)
        run_cli("umount", mnt)
        run_cli("mount", "-o", "allow_other", image, mnt, root=store)
        assert {"allow_other", "default_permissions"} <= flags(mnt)[1]
        assert as_nobody(f"{mnt}/bin/euid").stdout == f"{NOBODY}\n"


def test_container_rootfs_is_shared_but_nosuid(euid_program: Path, tmp_path: Path) -> None:
    """A container's rootfs (``run``, build ``RUN``) must be usable by the image's USER (allow_other, with the
    kernel checking permissions) and must not make set-uid programs a way to root for whoever reaches it."""
    from unionfs.api import container
    from unionfs.store.store import Store

    store = tmp_path / "store"
    image = _suid_image(store, euid_program, tmp_path)
    with container(Store(store), image, keep=False) as m:
        per_mount, fuse = flags(str(m.rootfs))
        assert {"nosuid", "nodev"} <= per_mount
        assert {"allow_other", "default_permissions"} <= fuse
        # nobody reaches it only through a path it may walk: bind the rootfs somewhere public for the check
        with private_tmpdir("trust-bind") as d:
            os.chmod(d, 0o755)
            with bind_mount(m.rootfs, d):
                assert as_nobody(f"{d}/bin/euid").stdout == f"{NOBODY}\n"


# ------------------------------------------------------------------------------------------- dead mounts (item 20)
def _layers(tmp_path: Path) -> tuple[list[str], str, str]:
    lower = build_layer(tmp_path / "l0", [File("f", b"data\n")])
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    return [str(lower)], str(tmp_path / "u"), str(tmp_path / "w")


def _kill_daemon(mountpoint: str) -> None:
    pids = daemon_pids(mountpoint)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_pids_gone(pids, 30) == []


def _ps_status(mountpoint: str) -> str:
    out = run_cli("ps").stdout
    lines = [line for line in out.splitlines() if f" {mountpoint} " in line + " "]
    assert len(lines) == 1, out
    return lines[0].split(mountpoint, 1)[1].strip()


@contextlib.contextmanager
def _held_open(path: str) -> Iterator[int]:
    """A descriptor of ``path``, closed at the end (a dead mount may answer the flush ENOTCONN)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_dead_mount_with_an_open_file_is_shown_dead_and_umount_detaches_it(tmp_path: Path, mnt: str) -> None:
    lowers, up, work = _layers(tmp_path)
    with unionfs_mount(lowers, up, work, mnt):
        assert _ps_status(mnt) == "mounted"
        with _held_open(os.path.join(mnt, "f")) as fd:
            _kill_daemon(mnt)
            assert _ps_status(mnt) == "dead (daemon gone)"
            res = run_cli("mount", "--lower", lowers[0], mnt, check=False)  # mounting over it: told what to do
            assert res.returncode != 0 and "dead" in res.stderr and "umount" in res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            res = run_cli("umount", mnt, check=False)
            assert res.returncode == 0, res.stderr
            assert "detached" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert not is_mounted(mnt) and mnt not in run_cli("ps").stdout
            # what the kernel holds of the file is dropped first (the OPEN stored this small file's data in its
            # cache, as a first read would have): the read must ask the daemon, which is gone
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            with pytest.raises(OSError) as ei:
                os.read(fd, 10)
            assert ei.value.errno == errno.ENOTCONN


def test_busy_live_mount_points_at_lazy_and_lazy_cleans_dead_ones(tmp_path: Path, mnt: str) -> None:
    lowers, up, work = _layers(tmp_path)
    with unionfs_mount(lowers, up, work, mnt):
        with _held_open(os.path.join(mnt, "f")) as fd:
            res = run_cli("umount", mnt, check=False)
            assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert "busy" in res.stderr and f"unionfs umount --lazy {mnt}" in res.stderr
            assert _ps_status(mnt) == "mounted" and os.read(fd, 5) == b"data\n"  # left alone
            _kill_daemon(mnt)
            assert _ps_status(mnt) == "dead (daemon gone)"
            run_cli("umount", "--lazy", mnt)
            assert not is_mounted(mnt)


def test_dead_idle_mount_unmounts_plainly(tmp_path: Path, mnt: str) -> None:
    lowers, up, work = _layers(tmp_path)
    with unionfs_mount(lowers, up, work, mnt) as m:
        m.release_root()  # the harness' descriptor would make the dead mount busy
        _kill_daemon(mnt)
        assert _ps_status(mnt) == "dead (daemon gone)"
        res = run_cli("umount", mnt, check=False)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert not is_mounted(mnt)


def test_harness_forgets_a_mount_detached_under_its_descriptor(tmp_path: Path) -> None:
    """The suite's one mount harness: a mount lazily detached while the harness pins it is seen gone (it
    recursed between where() and release_root() until RecursionError)."""
    lowers, up, work = _layers(tmp_path)
    mnt = tmp_path / "m"
    mnt.mkdir()
    with unionfs_mount([Path(p) for p in lowers], Path(up), Path(work), mnt, strict_unmount=False) as m:
        assert m.root_fd is not None
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        assert m.where() is None and m.root_fd is None
