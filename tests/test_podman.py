"""podman and buildah on unionfs as their overlay ``mount_program`` (issue 15, point 2), as root and rootless.

Debian's podman, buildah, runc and uidmap (``scripts/setup.sh``) run with a private storage.conf and
containers.conf under a temporary directory whose ``mount_program`` is unionfs' mount helper, called with podman's
own argument shapes: ``load`` of a ``unionfs save`` archive, ``run --rm`` writing and reading, a 4-step
``build``, ``diff`` (the same changes as with fuse-overlayfs as the mount program), ``commit``, ``mount``, a ``:O``
volume, and a buildah ``from``/``run``/``commit``. Then the same as a throw-away user with subuid/subgid ranges.

The machine quirks worked around (not in unionfs) are in ``tests/support/podman.py``, the harness this test
shares with ``scripts/bench_podman.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from support.mount import skip_reason_fuse, skip_reason_root
from support.podman import IMAGE, Engine, engine, missing_tools, save_busybox, throwaway_user, unionfs_program

MISSING = missing_tools()
SKIP = skip_reason_root("podman's storage, a throw-away user") or skip_reason_fuse() or (
    f"{', '.join(MISSING)} not installed (scripts/setup.sh installs them)" if MISSING else None)
pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

CONTAINERFILE = """FROM localhost/bb:1
RUN mkdir /app && echo one > /app/a
RUN echo two > /app/b && rm /app/a
COPY Containerfile /app/c
RUN chmod 600 /app/b
"""
#: what the diff scenario changes in a container of the built image
CHANGES = "echo x > /new; rm /etc/group; mkdir /etc/d; rm -r /app; echo y >> /etc/passwd"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docker-save archive of the busybox test image, written by ``unionfs save``."""
    return save_busybox(tmp_path_factory.mktemp("podman-image"))


@pytest.fixture
def user() -> Iterator[str]:
    with throwaway_user() as name:
        yield name


def diff_of(e: Engine) -> list[str]:
    """``podman diff`` of a container of the loaded image after :data:`CHANGES`."""
    e("run", "--name", "diffed", IMAGE, "sh", "-c", CHANGES.replace("rm -r /app; ", ""))
    out = sorted(e("container", "diff", "diffed").splitlines())
    e("rm", "diffed")
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
            e("run", "--name", "changed", "localhost/bb:built", "sh", "-c", CHANGES)
            # `container diff`, and names that are no hex prefix: `diff c1` took an image whose id began "c1"
            changes = sorted(e("container", "diff", "changed").splitlines())
            assert changes == sorted(["A /new", "C /etc", "D /etc/group", "A /etc/d", "C /etc/passwd", "D /app"])
            e("commit", "-q", "changed", "localhost/bb:committed")
            e("rm", "changed")
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
