"""Small files a writable mount serves from the daemon (lower files: not by passthrough) are put into the
kernel's cache at their OPEN when their data is in memory (FUSE_NOTIFY_STORE; docs/design.md): what a reader
gets must be the file's data, before and after changes made through the mount, and while a writer holds it."""

from __future__ import annotations

import os
from pathlib import Path

from support.mount import require, skip_reason_fuse, skip_reason_unionfs, unionfs_mount


def test_readers_get_the_data_before_and_after_changes_through_the_mount(tmp_path: Path) -> None:
    require(skip_reason_fuse(), skip_reason_unionfs())
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    files = {f"f{i}": os.urandom(100 + i * 997) for i in range(40)}
    for name, data in files.items():
        (lower / name).write_bytes(data)
        (lower / name).read_bytes()  # in memory here: the daemon stores it into the kernel's cache
    with unionfs_mount([lower], upper, work, mnt):
        assert sorted(os.listdir(mnt)) == sorted(files)  # a listing caches the nodes with partial attributes
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data
        # a copy-up by a write through the mount, then a new reader
        with open(mnt / "f1", "r+b") as w:
            w.write(b"NEW")
        assert (mnt / "f1").read_bytes() == b"NEW" + files["f1"][3:]
        # a writer holds the file open while another process opens it to read
        fd = os.open(mnt / "f2", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"tail")
            assert (mnt / "f2").read_bytes() == files["f2"] + b"tail"
            os.write(fd, b"more")
            assert (mnt / "f2").read_bytes() == files["f2"] + b"tailmore"
        finally:
            os.close(fd)
        # the lower file itself is never changed, and a truncation through the mount shows at once
        os.truncate(mnt / "f3", 10)
        assert (mnt / "f3").read_bytes() == files["f3"][:10]
    assert {n: (lower / n).read_bytes() for n in files} == files
