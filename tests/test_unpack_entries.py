"""``unpack_entries``: headers given without a tar stream are created exactly as ``unpack_layer`` creates the same
headers read from one (the same tree, or the same error), the data written by the caller's writers.

Each case is a list of entries (tests/support/tar.py) unpacked both ways into two empty directories; the trees
(times, owners, modes, xattrs private ones included, hardlink groups, contents) or the errors (class and
message) must be equal. A lazy layer's tree is made this way (:mod:`unionfs.lazy.materialize`).
"""

from __future__ import annotations

import io
import os
import stat
from typing import Callable

import pytest
from support.tar import (
    Entry,
    blockdev,
    build,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
)
from support.tree import assert_same_tree, tree_snapshot

from unionfs.errors import LayerError, LayerTooLargeError, UnionfsError, UnsafeLayerError
from unionfs.layer.unpack import unpack_entries, unpack_layer

ROOT = os.geteuid() == 0
# cap_net_bind_service=ep in the VFS_CAP_REVISION_2 format (20 bytes)
CAP = b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + b"\0" * 12

CASES: dict[str, Callable[[], list[Entry]]] = {
    "modes, owners, times, xattrs": lambda: [
        directory("bin", mode=0o755, mtime=1_500_000_000, uid=1, gid=2),
        file("bin/suid", b"x" * 70000, mode=0o4755, mtime=1_400_000_000, uid=1000, gid=1001),
        file("bin/cap", b"y", mode=0o755, xattrs={"security.capability": CAP, "user.k": b"\xff\x00v"}),
        file("bin/private", b"", xattrs={"trusted.overlay.opaque": b"y", "trusted.unionfs.lazy": b"file x 1",
                                         "user.containers.override_stat": b"0:0:0755"}),
        directory("tmp", mode=0o1777, pax={"mtime": "1300000000.5"}),
        file("tmp/ro", b"", mode=0o400, pax={"mtime": "1234567890.123456789"}),
        symlink("bin/sh", "dash", uid=7, gid=8),
        fifo("tmp/fifo", mode=0o600),
        directory("dev", mtime=1_200_000_000),
        chardev("dev/null", 1, 3),
        blockdev("dev/sda", 8, 0),
        file("bin/late", b"z"),
    ],
    "links and replaced entries": lambda: [
        file("a", b"first"),
        hardlink("b", "a"),
        file("a", b"second"),  # b keeps the first inode
        directory("d"),
        file("d/f", b"1"),
        file("d", b"now a file"),  # the directory and its child go
        symlink("s", "a"),
        directory("s"),  # replaces the symlink
        hardlink("c", "b"),
    ],
    "whiteouts and opaque directories": lambda: [
        directory("keep"),
        whiteout("gone"),
        file("here", b"x"),
        whiteout("here"),  # a same-layer file survives its whiteout
        directory("o"),
        opaque("o"),
        directory("w"),
        whiteout("w/deep"),
        directory("x"),
        whiteout("x"),  # a same-layer directory is made opaque
        file(".wh..wh.aufs", b""),
    ],
    "the root's metadata": lambda: [directory(".", mode=0o700, mtime=1_000_000_000), file("f", b"1")],
}
#: cases a layer may not hold: both ways must refuse them (the same error)
HOSTILE: dict[str, Callable[[], list[Entry]]] = {
    "an absolute name": lambda: [file("/etc/passwd", b"x")],
    "a dot-dot component": lambda: [directory("a"), file("a/../../escape", b"x")],
    "an entry below a symlink": lambda: [symlink("l", "/etc"), file("l/passwd", b"x")],
    "a hardlink to no earlier entry": lambda: [hardlink("h", "later"), file("later", b"x")],
    "a hardlink that escapes": lambda: [hardlink("h", "../../etc/shadow")],
    "a hardlink to a directory": lambda: [directory("d"), hardlink("h", "d")],
    "a whiteout used as a directory": lambda: [file(".wh.x/f", b"1")],
    "an invalid whiteout": lambda: [file("d/.wh..", b"")],
    "a root that is not a directory": lambda: [file(".", b"x")],
    "a symlink without a target": lambda: [symlink("l", "")],
    "a file below a file": lambda: [file("f", b"1"), file("f/g", b"2")],
}
CASES.update(HOSTILE)


def _tar(entries: list[Entry], dest: str, privileged: bool) -> None:
    unpack_layer(io.BytesIO(build(entries)), dest, media_type=None, privileged=privileged)


def _given(entries: list[Entry], dest: str, privileged: bool) -> None:
    def writer(data: bytes) -> Callable[[int], None]:
        return lambda fd: None if not data else os.write(fd, data) and None
    unpack_entries([(e.info, writer(e.data) if e.info.isreg() else None) for e in entries], dest,
                   privileged=privileged)


def _outcome(how: Callable[[list[Entry], str, bool], None], case: str, dest: str, privileged: bool) -> object:
    os.mkdir(dest)
    try:
        how([*CASES[case](), directory(".", mtime=1_100_000_000)], dest, privileged)  # every directory's time set
    except UnionfsError as e:
        return type(e), str(e)
    for top, _, names in os.walk(dest):  # a whiteout's time is when it was made: not compared
        for name in names:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                os.utime(path, ns=(0, 0), follow_symlinks=False)
    return tree_snapshot(dest, times=True, contents=True, private_values=True)


@pytest.mark.parametrize("privileged", [pytest.param(True, marks=pytest.mark.skipif(not ROOT, reason="needs root")),
                                        False], ids=["privileged", "unprivileged"])
@pytest.mark.parametrize("case", list(CASES))
def test_given_entries_make_the_tree_or_the_error_a_tar_of_them_makes(tmp_path, case: str, privileged: bool) -> None:
    want = _outcome(_tar, case, str(tmp_path / "tar"), privileged)
    got = _outcome(_given, case, str(tmp_path / "given"), privileged)
    assert isinstance(want, tuple) == (case in HOSTILE), want  # the rules refuse what they must, nothing else
    if isinstance(want, tuple) or isinstance(got, tuple):
        assert got == want
    else:
        assert_same_tree(want, got, ("tar", "entries"), context=case)


def test_a_nul_in_a_name_is_refused(tmp_path) -> None:
    """A name a tar header cannot even hold (it would end at the NUL)."""
    with pytest.raises(UnsafeLayerError, match="NUL byte in name"):
        unpack_entries([(file("a\0b", b"").info, None)], str(tmp_path), privileged=False)


def test_a_writer_must_leave_the_entrys_size(tmp_path) -> None:
    info = file("f", b"12345").info
    with pytest.raises(LayerError, match=r"entry 'f': 3 bytes written, the entry has 5"):
        unpack_entries([(info, lambda fd: os.write(fd, b"123") and None)], str(tmp_path), privileged=False)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(LayerError, match=r"0 bytes written, the entry has 5"):
        unpack_entries([(file("f", b"12345").info, None)], str(other), privileged=False)


def test_the_sizes_count_into_the_bound(tmp_path) -> None:
    big = file("big", b"").info
    big.size = 1 << 40
    calls: list[int] = []
    with pytest.raises(LayerTooLargeError, match="entry 'big'"):
        unpack_entries([(file("small", b"1234").info, lambda fd: os.write(fd, b"1234") and None),
                        (big, lambda fd: calls.append(fd))], str(tmp_path), max_size=1 << 30, privileged=False)
    assert not calls and not (tmp_path / "big").exists()  # refused before it was made
