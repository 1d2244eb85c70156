"""A write by a user without CAP_FSETID clears set-user-ID (and set-group-ID on a group-executable file), through
a unionfs mount as through the kernel's overlayfs (pjdfstest ``chmod/12``; docs/security.md).

Before the fix the bits stayed on files whose data the daemon hands to the kernel by FUSE passthrough (files in
the upper, every file of a read-only mount): the kernel writes the backing file with the daemon's credentials,
which keep them. On a shared mount that let any user who may write a set-uid-root file turn it into a root
shell. Each case runs on the kernel overlayfs (the oracle), the daemon's defaults and ``-o passthrough=off``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from support.layers import Dir, File, build_layer
from support.mount import (
    DAEMONS,
    kernel_overlay,
    private_tmpdir,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
)

SKIP = skip_reason_root("a write as another user, set-id files owned by root")
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

NOBODY = 65534
IMPLS = ["kernel", *(f"daemon-{d}" for d in DAEMONS)]


@contextlib.contextmanager
def mounted(impl: str) -> Iterator[Path]:
    """A writable mount of one lower holding ``lower-suid`` (mode 04777) and ``dir`` (0777), reachable by all."""
    if impl == "kernel":
        reason = skip_reason_kernel_overlay()
    else:
        reason = skip_reason_fuse() or skip_reason_unionfs()
    if reason:
        pytest.skip(reason)
    with private_tmpdir("setid") as d:
        os.chmod(d, 0o755)
        lower = build_layer(d / "lower", [File("lower-suid", b"x", mode=0o4777), Dir("dir", mode=0o777)])
        mnt = d / "mnt"
        if impl == "kernel":
            cm = kernel_overlay([lower], d / "upper", d / "work", mnt)
        else:
            args = ["-o", "allow_other", *DAEMONS[impl[len("daemon-"):]]]
            cm = unionfs_mount([lower], d / "upper", d / "work", mnt, extra_args=args)
        with cm:
            os.chmod(mnt, 0o755)
            yield mnt


def write_as_nobody(path: Path) -> None:
    """Append a byte to ``path`` as uid/gid 65534 (no capabilities)."""
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                    "sh", "-c", f"printf y >> '{path}'"], check=True, timeout=60)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode, gid, after", [
    (0o4777, 0, 0o777),            # set-uid goes
    (0o2777, 0, 0o777),            # set-gid on a group-executable file goes
    (0o6777, 0, 0o777),
    (0o2767, 0, 0o767),            # not group-executable: goes too, the writer is not in the file's group
    (0o2767, NOBODY, 0o2767),      # ... and stays when the writer is in it
    (0o2777, NOBODY, 0o777),       # group-executable: goes even then
])
def test_write_by_another_user_clears_set_id(impl: str, mode: int, gid: int, after: int) -> None:
    with mounted(impl) as mnt:
        f = mnt / "dir" / "file"
        f.write_bytes(b"data")  # created through the mount: it lives in the upper
        os.chown(f, 0, gid)
        os.chmod(f, mode)
        assert mode_of(f) == mode
        write_as_nobody(f)
        assert f.read_bytes() == b"datay"
        assert mode_of(f) == after


@pytest.mark.parametrize("impl", IMPLS)
def test_write_clears_set_uid_while_a_reader_holds_the_file(impl: str) -> None:
    """A reader opened the file first (the daemon then serves the file by passthrough to every opener)."""
    with mounted(impl) as mnt:
        f = mnt / "dir" / "held"
        f.write_bytes(b"data")
        os.chmod(f, 0o4777)
        with open(f, "rb") as reader:
            write_as_nobody(f)
            assert reader.read() == b"datay"
        assert mode_of(f) == 0o777


@pytest.mark.parametrize("impl", IMPLS)
def test_write_to_a_lower_set_uid_file_clears_it_in_the_copy(impl: str) -> None:
    with mounted(impl) as mnt:
        write_as_nobody(mnt / "lower-suid")
        assert mode_of(mnt / "lower-suid") == 0o777
        assert (mnt / "lower-suid").read_bytes() == b"xy"


@pytest.mark.parametrize("impl", IMPLS)
def test_write_by_root_keeps_set_uid(impl: str) -> None:
    """CAP_FSETID keeps the bits, as in the kernel."""
    with mounted(impl) as mnt:
        f = mnt / "dir" / "rootfile"
        f.write_bytes(b"data")
        os.chmod(f, 0o4777)
        with open(f, "ab") as out:
            out.write(b"z")
        assert mode_of(f) == 0o4777
