"""podman and buildah on unionfs as their overlay ``mount_program`` (issue 15, point 2), as root and rootless.

Debian's podman, buildah, runc and uidmap (``scripts/setup.sh``) run with a private storage.conf and
containers.conf under a temporary directory whose ``mount_program`` is unionfs' mount helper, called with podman's
own argument shapes: ``load`` of a ``unionfs save`` archive, ``run --rm`` writing and reading, a 4-step
``build``, ``diff`` (the same changes as with fuse-overlayfs as the mount program), ``commit``, ``mount``, a ``:O``
volume, and a buildah ``from``/``run``/``commit``. Then the same as a throw-away user with subuid/subgid ranges.

Machine quirks handled here, not in unionfs: runc (crun refuses these VMs' hybrid cgroups), cgroupfs, podman's
default ulimits off, no network (``netns = "none"``, ``build --network=none``), short paths. Rootless: the user's
mount program is run by Debian's ``/usr/bin/python3`` from a copy of the package (the test's virtualenv lives
under root's home), and ``/dev/fuse`` gets the usual mode 0666 for the test (0600 on these machines).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from support.busybox import busybox_tarball
from support.cli import run_cli
from support.mount import leftover_mounts, skip_reason_fuse, skip_reason_root

import unionfs

TOOLS = ("podman", "buildah", "runc", "newuidmap", "runuser", "fuse-overlayfs")
MISSING = [t for t in TOOLS if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
SKIP = skip_reason_root("podman's storage, a throw-away user") or skip_reason_fuse() or (
    f"{', '.join(MISSING)} not installed (scripts/setup.sh installs them)" if MISSING else None)
pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

IMAGE = "localhost/bb:1"
CONTAINERFILE = """FROM localhost/bb:1
RUN mkdir /app && echo one > /app/a
RUN echo two > /app/b && rm /app/a
COPY Containerfile /app/c
RUN chmod 600 /app/b
"""
#: what the diff scenario changes in a container of the built image
CHANGES = "echo x > /new; rm /etc/group; mkdir /etc/d; rm -r /app; echo y >> /etc/passwd"
TIMEOUT = 300


class Engine:
    """podman and buildah with their own storage under ``base`` and ``mount_program``, run as ``user`` (None:
    root)."""

    def __init__(self, base: Path, mount_program: str, user: str | None = None) -> None:
        self.base, self.user = base, user
        (base / "xdg").mkdir(mode=0o700)
        (base / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{base}/g"\nrunroot = "{base}/r"\n'
            f'rootless_storage_path = "{base}/g"\n'
            f'[storage.options.overlay]\nmount_program = "{mount_program}"\n')
        (base / "containers.conf").write_text(
            '[containers]\ndefault_ulimits = []\nnetns = "none"\n'
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(base),
                    "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
                    "CONTAINERS_CONF": str(base / "containers.conf"), "XDG_RUNTIME_DIR": str(base / "xdg"),
                    "TMPDIR": str(base)}
        if "PYTHONPATH" in os.environ:  # a checkout under test: its code, also in the root mount program
            self.env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if user is not None:
            shutil.chown(base, user, user)
            for p in base.iterdir():
                shutil.chown(p, user, user)

    def __call__(self, *args: str | Path, tool: str = "podman") -> str:
        """Run ``tool ARGS`` and return its standard output; AssertionError with its output when it fails."""
        argv = [tool, *map(str, args)]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", "env", *(f"{k}={v}" for k, v in self.env.items()), *argv]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=self.env, cwd=self.base)
        assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def close(self) -> None:
        """Remove every container and image (their mounts with them)."""
        for args in (("rm", "-af"), ("rmi", "-af")):
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self(*args)


@contextlib.contextmanager
def engine(mount_program: str, user: str | None = None) -> Iterator[Engine]:
    base = Path(tempfile.mkdtemp(prefix="upm", dir="/tmp"))  # short: long graphroots made runs slower
    os.chmod(base, 0o755)
    e = Engine(base, mount_program, user)
    try:
        yield e
    finally:
        e.close()
        if user is not None:
            subprocess.run(["pkill", "-KILL", "-u", user], check=False)  # the rootless pause process
        for mp in reversed(leftover_mounts(base)):
            subprocess.run(["umount", "-l", mp], check=False)
        shutil.rmtree(base, ignore_errors=True)
        assert not leftover_mounts(base)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docker-save archive of the test's busybox image (``localhost/bb:1``), written by ``unionfs save``."""
    tmp = tmp_path_factory.mktemp("podman-image")
    run_cli("import", busybox_tarball(tmp / "bb.tar.gz"), "bb:1", root=tmp / "store")
    run_cli("save", "bb:1", "-o", tmp / "bb.tar", root=tmp / "store")
    os.chmod(tmp / "bb.tar", 0o644)
    return tmp / "bb.tar"


@pytest.fixture
def user() -> Iterator[str]:
    """A throw-away user with subuid/subgid ranges, for whom /dev/fuse is usable (mode 0666) meanwhile."""
    name = f"upm{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", name], check=True)
    dev_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    try:
        start = 400000 + (os.getpid() % 1000) * 65536
        subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 65535}", "--add-subgids",
                        f"{start}-{start + 65535}", name], check=True)
        os.chmod("/dev/fuse", dev_mode | 0o666)
        yield name
    finally:
        os.chmod("/dev/fuse", dev_mode)
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False)
        for f in ("/etc/subuid", "/etc/subgid"):  # userdel may keep them
            lines = Path(f).read_text().splitlines(keepends=True)
            Path(f).write_text("".join(line for line in lines if not line.startswith(name + ":")))


def unionfs_program(rootless: bool, base: Path) -> str:
    """The mount program: the installed ``mount.fuse.unionfs`` as root; for a user, the same module run by an
    interpreter the user may run, from a copy of the package (its arguments passed unchanged)."""
    if not rootless:
        installed = Path(sys.executable).parent / "mount.fuse.unionfs"
        return str(installed if installed.exists() else shutil.which("mount.fuse.unionfs"))
    shutil.copytree(Path(unionfs.__file__).parent, base / "pkg" / "unionfs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    prog = base / "mount.fuse.unionfs"
    prog.write_text(f'#!/bin/sh\nPYTHONPATH={base}/pkg exec /usr/bin/python3 -m unionfs.mount.helper "$@"\n')
    os.chmod(prog, 0o755)
    for p in (base / "pkg", prog):
        os.chmod(p, os.stat(p).st_mode | 0o755)
    return str(prog)


def diff_of(e: Engine) -> list[str]:
    """``podman diff`` of a container of the loaded image after :data:`CHANGES`."""
    e("run", "--name", "dc", IMAGE, "sh", "-c", CHANGES.replace("rm -r /app; ", ""))
    out = sorted(e("diff", "dc").splitlines())
    e("rm", "dc")
    return out


@pytest.mark.parametrize("who", ["root", "rootless"])
def test_podman_and_buildah_on_unionfs(archive: Path, who: str, request: pytest.FixtureRequest) -> None:
    user = request.getfixturevalue("user") if who == "rootless" else None
    tools = Path(tempfile.mkdtemp(prefix="upmtools", dir="/tmp"))
    try:
        os.chmod(tools, 0o755)
        program = unionfs_program(user is not None, tools)
        shutil.copy(archive, tools / "bb.tar")
        os.chmod(tools / "bb.tar", 0o644)
        with engine(program, user) as e:
            e("load", "-i", tools / "bb.tar")
            assert e("run", "--rm", IMAGE, "sh", "-c", "echo hi > /f && cat /f").split() == ["hi"]
            ctx = e.base / "ctx"
            ctx.mkdir()
            (ctx / "Containerfile").write_text(CONTAINERFILE)
            if user is not None:
                shutil.chown(ctx, user, user)
            e("build", "--network=none", "-t", "localhost/bb:built", ctx)
            assert e("run", "--rm", "localhost/bb:built", "sh", "-c", "ls /app; cat /app/b").split() == \
                ["b", "c", "two"]
            assert "1000 1000" in " ".join(e("run", "--rm", IMAGE, "ls", "-nd", "/home/user").split())
            e("run", "--name", "c1", "localhost/bb:built", "sh", "-c", CHANGES)
            changes = sorted(e("diff", "c1").splitlines())
            assert changes == sorted(["A /new", "C /etc", "D /etc/group", "A /etc/d", "C /etc/passwd", "D /app"])
            e("commit", "-q", "c1", "localhost/bb:committed")
            e("rm", "c1")
            assert e("run", "--rm", "localhost/bb:committed", "sh", "-c",
                     "cat /new; test -e /etc/group || echo gone; test -e /app || echo nodir").split() == \
                ["x", "gone", "nodir"]
            cid = e("create", "localhost/bb:committed", "true").strip()
            show = f"m=$(podman mount {cid}) && cat $m/new && podman umount {cid} >/dev/null"
            assert e(*(["unshare", "sh", "-c", show] if user else ["sh", "-c", show]), tool="podman" if user
                     else "env").split() == ["x"]
            e("rm", cid)
            vol = e.base / "vol"
            vol.mkdir()
            (vol / "f").write_text("v\n")
            if user is not None:
                shutil.chown(vol, user, user)
                shutil.chown(vol / "f", user, user)
            assert e("run", "--rm", "-v", f"{vol}:/v:O", IMAGE, "sh", "-c", "echo w >> /v/f; cat /v/f").split() == \
                ["v", "w"]
            assert (vol / "f").read_text() == "v\n"  # the overlay volume left the host directory alone
            e("from", "--name", "bw", IMAGE, tool="buildah")
            e("run", "--network", "none", "bw", "--", "sh", "-c", "echo b > /bfile", tool="buildah")
            e("commit", "-q", "bw", "localhost/bb:buildah", tool="buildah")
            e("rm", "bw", tool="buildah")
            assert e("run", "--rm", "localhost/bb:buildah", "cat", "/bfile").split() == ["b"]
            ours = diff_of(e)
        with engine(shutil.which("fuse-overlayfs") or "fuse-overlayfs", user) as ref:
            ref("load", "-i", tools / "bb.tar")
            assert diff_of(ref) == ours  # the same changes as fuse-overlayfs shows
    finally:
        shutil.rmtree(tools, ignore_errors=True)
