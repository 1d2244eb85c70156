"""A small busybox-static base image made at test time, and checks for what a build or run leaves behind.

``busybox_tarball(path)`` writes a rootfs tarball (busybox with its applet links, /etc/passwd with root and
``user`` 1000, /etc/group, /tmp 1777, /home/user owned by 1000); ``import_busybox(store_root, ref)`` imports it
with ``unionfs import``. ``leftovers(store_root)`` lists live unionfs/overlay mounts under the store and the
unionfs daemon and sandbox processes that mention it: what a finished command must not leave.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from support.cli import run_cli
from support.mount import leftover_mounts, mount_fstype, skip_reason_fuse, skip_reason_root, unionfs_daemons

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "id", "mkdir", "rm", "touch", "chmod", "true", "false", "sleep", "wc",
           "env", "pwd", "test", "grep", "stat", "readlink", "hostname", "ps", "kill", "mount", "head")


def skip_reason() -> str | None:
    """Why builds and runs cannot be tested here (None: they can)."""
    reason = skip_reason_root("building and running: namespaces, chroot, FUSE allow_other") or skip_reason_fuse()
    if reason is None and not os.path.exists(BUSYBOX):
        reason = "busybox-static is not installed (scripts/setup.sh installs it)"
    return reason


def require() -> None:
    """Skip the calling test when builds cannot run here."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


def busybox_tarball(dest: Path) -> Path:
    """Write the base rootfs as a gzip tarball at ``dest``."""
    root = dest.parent / (dest.name + ".rootfs")
    for d in ("bin", "etc", "tmp", "home/user", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for a in APPLETS:
        if not os.path.lexists(root / "bin" / a):
            os.symlink("busybox", root / "bin" / a)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
    os.chmod(root / "tmp", 0o1777)
    os.chown(root / "home/user", 1000, 1000)
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(root, arcname=".")
    shutil.rmtree(root)
    return dest


def import_busybox(store_root: Path, tarball: Path, ref: str = "busybox:latest") -> None:
    """Import the base image into the store as ``ref``."""
    run_cli("import", tarball, ref, root=store_root)


def leftovers(store_root: Path, wait: float = 5.0) -> list[str]:
    """Mounts under ``store_root`` and unionfs processes naming it that are still there after ``wait`` s."""
    key = str(store_root)
    deadline = time.monotonic() + wait
    while True:
        found = [f"mount {p} ({mount_fstype(p)})" for p in leftover_mounts(store_root)]
        me = os.getpid()
        for pid, mp in unionfs_daemons().items():  # a daemon is a fork of the command that mounted
            if (mp + "/").startswith(key + "/"):
                found.append(f"daemon {pid} of {mp}")
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["pid"] != me and ("unionfs.mount.process" in cmd or "unionfs.run.sandbox" in cmd) and key in cmd:
                found.append(f"process {p.info['pid']}: {cmd}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def store_state(store_root: Path) -> dict[str, list[str]]:
    """What a failed command must leave unchanged: blobs, layers, containers, cache entries, tmp, index."""
    out = {}
    for d in ("blobs/sha256", "layers", "containers", "cache/build", "tmp"):
        p = store_root / d
        out[d] = sorted(os.listdir(p)) if p.is_dir() else []
    out["index"] = [(store_root / "index.json").read_text()]
    return out
