"""podman and buildah with a private configuration and unionfs (or fuse-overlayfs) as their overlay
``mount_program``, as root or as a throw-away user: the one harness of tests/test_podman.py and
scripts/bench_podman.py.

The machine quirks it works around, not unionfs: runc (crun refuses these VMs' hybrid cgroups), cgroupfs,
podman's default ulimits off, no network (``netns = "none"``; ``build`` and buildah's ``run`` need
``--network=none``/``--network none``), short paths under /tmp (long graphroots made runs slower). A user's
mount program is run by Debian's ``/usr/bin/python3`` from a copy of the package (the virtualenv may live under
root's home), and ``/dev/fuse`` gets the usual mode 0666 while the user exists (0600 on these machines).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from support.busybox import busybox_tarball
from support.cli import USER_PYTHON, fuse_open_to_all, run_cli, user_package
from support.mount import leftover_mounts

#: what the harness runs
TOOLS = ("podman", "buildah", "runc", "newuidmap", "runuser", "fuse-overlayfs")
#: the image :func:`save_busybox` writes
IMAGE = "localhost/bb:1"
#: seconds any one podman or buildah command may take
TIMEOUT = 300


def missing_tools() -> list[str]:
    """The :data:`TOOLS` not installed here (``scripts/setup.sh`` installs them)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [t for t in TOOLS if shutil.which(t, path=path) is None]


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


def save_busybox(tmp: Path) -> Path:
    """A docker-save archive of the busybox test image (``localhost/bb:1``, :data:`IMAGE`) written by
    ``unionfs save`` under ``tmp``, readable by any user."""
    run_cli("import", busybox_tarball(tmp / "bb.tar.gz"), "bb:1", root=tmp / "store")
    run_cli("save", "bb:1", "-o", tmp / "bb.tar", root=tmp / "store")
    os.chmod(tmp / "bb.tar", 0o644)
    return tmp / "bb.tar"


@contextlib.contextmanager
def throwaway_user() -> Iterator[str]:
    """A throw-away user with subuid/subgid ranges, for whom /dev/fuse is usable (mode 0666) meanwhile; removed
    with its processes and ranges afterwards."""
    name = f"upm{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", name], check=True)
    try:
        start = 400000 + (os.getpid() % 1000) * 65536
        subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 65535}", "--add-subgids",
                        f"{start}-{start + 65535}", name], check=True)
        with fuse_open_to_all():
            yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False)
        for f in ("/etc/subuid", "/etc/subgid"):  # userdel may keep them
            lines = Path(f).read_text().splitlines(keepends=True)
            Path(f).write_text("".join(line for line in lines if not line.startswith(name + ":")))


def unionfs_program(rootless: bool, base: Path) -> str:
    """The mount program: the installed ``mount.fuse.unionfs`` as root; for a user, the same module run by an
    interpreter the user may run, from a compiled copy of the package (its arguments passed unchanged)."""
    if not rootless:
        installed = Path(sys.executable).parent / "mount.fuse.unionfs"
        return str(installed if installed.exists() else shutil.which("mount.fuse.unionfs"))
    pkg = user_package(base)
    prog = base / "mount.fuse.unionfs"
    prog.write_text(f'#!/bin/sh\nPYTHONPATH={pkg} exec {USER_PYTHON} -m unionfs.mount.helper "$@"\n')
    os.chmod(prog, 0o755)
    return str(prog)
