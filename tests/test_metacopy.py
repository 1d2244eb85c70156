"""Metadata-only copy-up, the kernel overlayfs' ``metacopy=on`` format (docs/semantics.md, "Metadata-only copy-up").

chmod, chown, utimes, xattr changes and renames copy a big lower file up without its data: the upper file is
sparse, of the file's size, marked ``trusted.overlay.metacopy`` (a renamed one also carries an absolute
``trusted.overlay.redirect`` to its data); the data is read from the lower file until something may change it
(an open for writing, a truncate), which copies the data up first. Most tests run on unionfs' mount (default and
``-o passthrough=off``) and on the kernel overlayfs mounted with ``metacopy=on``, which must pass them too (the
kernel is the oracle of the format); the others exchange uppers between the two, pack an upper into a layer,
or check what only unionfs does (small and hardlinked files are copied whole). Every mount is unmounted, also
when a check fails.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import struct
import tarfile
from pathlib import Path
from typing import Iterator

import pytest
from support.layers import Dir, File, Hardlink, build_layers
from support.mount import (
    DAEMONS,
    KERNEL_METACOPY_OPTIONS,
    Mount,
    kernel_overlay,
    private_tmpdir,
    require,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
)
from support.tree import assert_same_tree, tree_snapshot

from unionfs.image.commit import diff_upper
from unionfs.image.pack import write_diff_tar, write_merged_tar
from unionfs.union.overlay import METACOPY_MIN, Overlay

pytestmark = [pytest.mark.root]

METACOPY = "trusted.overlay.metacopy"
REDIRECT = "trusted.overlay.redirect"
CAPS = "security.capability"
#: cap_net_raw=ep (struct vfs_cap_data, revision 2)
CAP_VALUE = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)
BIG = random.Random(1).randbytes(1 << 20)
BIG2 = random.Random(2).randbytes(3 << 18)
BIG3 = random.Random(3).randbytes(METACOPY_MIN)
#: the lowers, base first: the big files are in the base layer, under a second layer that holds other files of
#: the same directory (their data is two layers down from the upper)
LAYERS = [
    [Dir("d"), File("d/big", BIG), File("big2", BIG2), File("chown.bin", BIG2), File("utime.bin", BIG2),
     File("xattr.bin", BIG2, xattrs={"user.k": b"v"}), File("caps.bin", BIG3, mode=0o755, xattrs={CAPS: CAP_VALUE}),
     File("small", b"small file"), File("linked", BIG2), Hardlink("linked2", "linked"), File("trunc", BIG2),
     File("trunc0", BIG2), File("grow", BIG2)],
    [Dir("d"), File("d/top", b"top layer"), File("d/big3", BIG3)],
]
#: the implementations every format test runs on: unionfs' daemon (both ways of moving data), the kernel
IMPLS = ("daemon", "daemon-nopassthrough", "kernel")


def _skip_reason(impl: str) -> str | None:
    if impl == "kernel":
        return skip_reason_root() or skip_reason_kernel_overlay()
    return skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()


@contextlib.contextmanager
def mounted(impl: str, lowers: list[Path], upper: Path, work: Path, mnt: Path) -> Iterator[Mount]:
    """``impl`` mounted over ``lowers`` (base first): unionfs' daemon, or the kernel with ``metacopy=on``."""
    if impl == "kernel":
        with kernel_overlay(lowers, upper, work, mnt, options=KERNEL_METACOPY_OPTIONS) as m:
            yield m
    else:
        args = DAEMONS["served" if impl == "daemon-nopassthrough" else "default"]
        with unionfs_mount(lowers, upper, work, mnt, args) as m:
            yield m


class Layout:
    """The lowers, upper, work and mount directories of one test, and its mounts."""

    def __init__(self, tmp: Path) -> None:
        self.lowers = build_layers(tmp, LAYERS)
        self.base = self.lowers[0]
        self.upper, self.work, self.mnt = tmp / "upper", tmp / "work", tmp / "mnt"
        for d in (self.upper, self.work, self.mnt):
            d.mkdir()

    def mount(self, impl: str) -> contextlib.AbstractContextManager[Mount]:
        return mounted(impl, self.lowers, self.upper, self.work, self.mnt)

    def m(self, rel: str) -> Path:
        """The path ``rel`` in the mount."""
        return self.mnt / rel

    def u(self, rel: str) -> Path:
        """The path ``rel`` in the upper directory."""
        return self.upper / rel


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    """Each implementation in turn (skipped with its reason where it cannot run)."""
    require(_skip_reason(request.param))
    return str(request.param)


@pytest.fixture(params=IMPLS[:2])
def daemon(request: pytest.FixtureRequest) -> str:
    """unionfs' daemon, both ways (skipped where it cannot run)."""
    require(_skip_reason(request.param))
    return str(request.param)


@pytest.fixture
def u() -> Iterator[Layout]:
    with private_tmpdir("metacopy") as tmp:
        yield Layout(tmp)


# ------------------------------------------------------------------------------------------------- helpers
def has_data(path: Path) -> bool:
    """True when the real file at ``path`` has a data extent (a metadata-only copy is a hole to its end)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
        return True
    except OSError as e:
        if e.errno == errno.ENXIO:
            return False
        raise
    finally:
        os.close(fd)


def assert_metacopy(path: Path, size: int) -> None:
    """The upper file at ``path`` is a metadata-only copy of a file of ``size`` bytes."""
    assert METACOPY in os.listxattr(path), f"{path} is not a metadata-only copy"
    assert os.getxattr(path, METACOPY) == b""
    assert os.stat(path).st_size == size
    assert not has_data(path), f"{path} holds data"


def assert_data_copy(path: Path, content: bytes) -> None:
    """The upper file at ``path`` holds its data, ``content``, and no metacopy mark."""
    assert METACOPY not in os.listxattr(path), f"{path} is still a metadata-only copy"
    assert path.read_bytes() == content


def redirect(path: Path) -> str | None:
    """The redirect of the upper file at ``path``, or None."""
    try:
        return os.getxattr(path, REDIRECT).decode()
    except OSError:
        return None


def tar_files(data: bytes) -> dict[str, tuple[int, bytes]]:
    """The regular files of a tar: name -> (mode, content)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            if m.isfile():
                f = t.extractfile(m)
                assert f is not None
                out[m.name] = (m.mode, f.read())
    return out


# ------------------------------------------------------------------------------------------------- the format
def test_metadata_changes_keep_the_data_in_the_lower(impl: str, u: Layout) -> None:
    """chmod, chown, utimes and setxattr copy a big file up without its data: the upper file is sparse and
    marked; through the mount it shows the new metadata, the lower's data and the lower data's st_blocks."""
    with u.mount(impl):
        os.chmod(u.m("d/big"), 0o600)
        os.chown(u.m("chown.bin"), 1000, 1001)
        os.utime(u.m("utime.bin"), (1_500_000_000, 1_600_000_000))
        os.setxattr(u.m("xattr.bin"), "user.new", b"value")
        os.chmod(u.m("d/big3"), 0o640)  # data in the layer under the top lower
        for rel, content in (("d/big", BIG), ("chown.bin", BIG2), ("utime.bin", BIG2), ("xattr.bin", BIG2),
                             ("d/big3", BIG3)):
            assert_metacopy(u.u(rel), len(content))
            assert u.m(rel).read_bytes() == content, rel
            lower = [p / rel for p in reversed(u.lowers) if (p / rel).exists()][0]
            assert os.stat(u.m(rel)).st_blocks == os.stat(lower).st_blocks, rel
        assert os.stat(u.m("d/big")).st_mode & 0o7777 == 0o600
        assert os.stat(u.m("d/big3")).st_mode & 0o7777 == 0o640
        st = os.stat(u.m("chown.bin"))
        assert (st.st_uid, st.st_gid) == (1000, 1001)
        assert os.stat(u.m("utime.bin")).st_mtime == 1_600_000_000
        assert os.getxattr(u.m("xattr.bin"), "user.new") == b"value"
        assert os.getxattr(u.m("xattr.bin"), "user.k") == b"v"
        assert METACOPY not in os.listxattr(u.m("d/big"))  # private: not shown through the mount


def test_a_write_copies_the_data_up_first(impl: str, u: Layout) -> None:
    """An append to a metadata-only copy copies the data up first (then no mark is left); mode, owner and
    inode number stay."""
    with u.mount(impl):
        os.chown(u.m("d/big"), 1000, 1000)
        os.chmod(u.m("d/big"), 0o600)
        ino = os.stat(u.m("d/big")).st_ino
        assert_metacopy(u.u("d/big"), len(BIG))
        with open(u.m("d/big"), "ab") as f:
            f.write(b"appended")
        assert u.m("d/big").read_bytes() == BIG + b"appended"
        st = os.stat(u.m("d/big"))
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_ino) == (0o600, 1000, 1000, ino)
        assert_data_copy(u.u("d/big"), BIG + b"appended")
        os.chmod(u.m("big2"), 0o600)
        fd = os.open(u.m("big2"), os.O_RDWR)  # opened for writing, nothing written: the data is up already
        os.close(fd)
        assert_data_copy(u.u("big2"), BIG2)
    assert (u.base / "d/big").read_bytes() == BIG  # the lower is never written


def test_a_metadata_only_copy_survives_a_remount(impl: str, u: Layout) -> None:
    with u.mount(impl):
        os.chmod(u.m("d/big"), 0o600)
        ino = os.stat(u.m("d/big")).st_ino
    assert_metacopy(u.u("d/big"), len(BIG))
    with u.mount(impl):
        st = os.stat(u.m("d/big"))
        assert (st.st_mode & 0o7777, st.st_size, st.st_ino) == (0o600, len(BIG), ino)
        assert u.m("d/big").read_bytes() == BIG
        with open(u.m("d/big"), "r+b") as f:
            f.write(b"X")
        assert u.m("d/big").read_bytes() == b"X" + BIG[1:]
    assert_data_copy(u.u("d/big"), b"X" + BIG[1:])


def test_truncate_copies_the_data_up(impl: str, u: Layout) -> None:
    """Truncating a metadata-only copy (shorter, to 0, longer, or by an O_TRUNC open) copies its data up."""
    with u.mount(impl):
        for rel in ("trunc", "trunc0", "grow", "big2"):
            os.chmod(u.m(rel), 0o600)
            assert_metacopy(u.u(rel), len(BIG2))
        os.truncate(u.m("trunc"), 1000)
        os.truncate(u.m("trunc0"), 0)
        os.truncate(u.m("grow"), len(BIG2) + 5000)
        with open(u.m("big2"), "wb") as f:
            f.write(b"new")
        for rel, content in (("trunc", BIG2[:1000]), ("trunc0", b""), ("grow", BIG2 + bytes(5000)), ("big2", b"new")):
            assert u.m(rel).read_bytes() == content, rel
            assert os.stat(u.m(rel)).st_mode & 0o7777 == 0o600, rel
            assert_data_copy(u.u(rel), content)


def test_a_reader_follows_the_data_copy_up(impl: str, u: Layout) -> None:
    """A descriptor opened read-only on a metadata-only copy (reading the lower data) sees the data written
    after it was opened: by an append through another descriptor, and by a truncate by path."""
    with u.mount(impl):
        os.chmod(u.m("d/big"), 0o600)
        os.chmod(u.m("grow"), 0o600)
        assert_metacopy(u.u("d/big"), len(BIG))
        assert_metacopy(u.u("grow"), len(BIG2))
        with open(u.m("d/big"), "rb") as reader, open(u.m("grow"), "rb") as reader2:
            assert reader.read(100) == BIG[:100]
            assert reader2.read(100) == BIG2[:100]
            with open(u.m("d/big"), "ab") as writer:
                writer.write(b"tail")
            assert os.pread(reader.fileno(), 4, len(BIG)) == b"tail"
            os.truncate(u.m("grow"), len(BIG2) + 8192)
            assert os.pread(reader2.fileno(), 8192, len(BIG2)) == bytes(8192)
            assert os.pread(reader2.fileno(), 100, 1000) == BIG2[1000:1100]
        assert_data_copy(u.u("d/big"), BIG + b"tail")


def test_rename_of_a_metadata_only_copy(impl: str, u: Layout) -> None:
    """A metadata-only copy renamed (in its directory, to another one, with its directory) keeps reading its
    data from the lower, before and after a remount, and a write then copies the right data up. Renaming an
    untouched big lower file copies it up without its data too (as the kernel with metacopy=on)."""
    with u.mount(impl):
        os.chmod(u.m("d/big"), 0o600)
        os.rename(u.m("d/big"), u.m("d/renamed"))
        assert u.m("d/renamed").read_bytes() == BIG
        os.mkdir(u.m("new"))
        os.rename(u.m("d/renamed"), u.m("new/moved"))
        os.rename(u.m("big2"), u.m("d/big2"))  # never copied up before
        os.rename(u.m("d"), u.m("d2"))  # a merged directory with a metadata-only copy in it
        for rel, content in (("new/moved", BIG), ("d2/big2", BIG2), ("d2/big3", BIG3), ("d2/top", b"top layer")):
            assert u.m(rel).read_bytes() == content, rel
        assert os.stat(u.m("new/moved")).st_mode & 0o7777 == 0o600
        assert not u.m("d").exists() and not u.m("big2").exists()
    assert_metacopy(u.u("new/moved"), len(BIG))
    assert redirect(u.u("new/moved")) == "/d/big"  # the kernel: absolute once it left its directory
    assert_metacopy(u.u("d2/big2"), len(BIG2))
    with u.mount(impl):
        for rel, content in (("new/moved", BIG), ("d2/big2", BIG2), ("d2/big3", BIG3)):
            assert u.m(rel).read_bytes() == content, rel
        with open(u.m("new/moved"), "ab") as f:
            f.write(b"!")
        assert u.m("new/moved").read_bytes() == BIG + b"!"
    assert_data_copy(u.u("new/moved"), BIG + b"!")


def test_capabilities_survive_both_copy_ups(impl: str, u: Layout) -> None:
    """security.capability is kept by the metadata-only copy and by the data copy-up of an open for writing
    (a chown or a write would drop it)."""
    with u.mount(impl):
        os.chmod(u.m("caps.bin"), 0o750)
        assert_metacopy(u.u("caps.bin"), len(BIG3))
        assert os.getxattr(u.m("caps.bin"), CAPS) == CAP_VALUE
        os.close(os.open(u.m("caps.bin"), os.O_RDWR))
        assert_data_copy(u.u("caps.bin"), BIG3)
        assert os.getxattr(u.m("caps.bin"), CAPS) == CAP_VALUE
        assert os.getxattr(u.u("caps.bin"), CAPS) == CAP_VALUE


def test_the_same_tree_as_the_kernel(daemon: str) -> None:
    """One sequence of metadata changes, renames and writes on unionfs and on the kernel (metacopy=on), each
    over its own copy of the lowers: the two trees are the same, contents and xattrs included."""
    require(skip_reason_kernel_overlay())
    with private_tmpdir("metacopy-same") as tmp:
        ours, kernel = Layout(tmp / "ours"), Layout(tmp / "kernel")
        snaps = []
        for impl, x in ((daemon, ours), ("kernel", kernel)):
            with x.mount(impl):
                os.chmod(x.m("d/big"), 0o600)
                os.chown(x.m("chown.bin"), 7, 8)
                os.setxattr(x.m("xattr.bin"), "user.more", b"1")
                os.rename(x.m("xattr.bin"), x.m("d/xattr.bin"))
                os.rename(x.m("d"), x.m("e"))
                for rel, size in (("e/big", len(BIG)), ("chown.bin", len(BIG2)), ("e/xattr.bin", len(BIG2))):
                    assert_metacopy(x.u(rel), size)
                with open(x.m("chown.bin"), "ab") as f:
                    f.write(b"more")
                os.truncate(x.m("utime.bin"), 10)
                os.utime(x.m("trunc"), (1, 2))
                snaps.append(tree_snapshot(x.mnt, contents=True, nlinks=False, check_dino=False))
        assert_same_tree(snaps[1], snaps[0], ("kernel", daemon))


# ------------------------------------------------------------------------------------------------- exchanging uppers
def test_the_kernel_reads_our_upper(daemon: str, u: Layout) -> None:
    """An upper with metadata-only copies made by unionfs (in place, renamed, in a renamed directory) reads
    the same through the kernel overlayfs mounted with metacopy=on."""
    require(skip_reason_kernel_overlay())
    with u.mount(daemon):
        os.chmod(u.m("d/big"), 0o600)
        os.rename(u.m("big2"), u.m("d/moved"))
        os.rename(u.m("d"), u.m("e"))
        os.chmod(u.m("chown.bin"), 0o444)
        ours = tree_snapshot(u.mnt, contents=True, nlinks=False, check_dino=False)
    for rel, content in (("e/big", BIG), ("e/moved", BIG2), ("e/big3", BIG3), ("chown.bin", BIG2)):
        assert_metacopy(u.u(rel), len(content))
    with u.mount("kernel"):
        theirs = tree_snapshot(u.mnt, contents=True, nlinks=False, check_dino=False)
    assert_same_tree(ours, theirs, ("unionfs", "kernel"))
    assert theirs.nodes["e/big"].mode == 0o600 and theirs.nodes["chown.bin"].mode == 0o444


def test_we_read_the_kernels_upper(daemon: str, u: Layout) -> None:
    """An upper with metadata-only copies made by the kernel (metacopy=on; renamed ones carry relative and
    absolute redirects) reads the same through unionfs, whose writes then copy the right data up, which the
    kernel reads back."""
    require(skip_reason_kernel_overlay())
    with u.mount("kernel"):
        os.chmod(u.m("d/big"), 0o600)
        os.rename(u.m("chown.bin"), u.m("chown2.bin"))  # same directory: a relative redirect
        os.rename(u.m("big2"), u.m("d/moved"))  # another directory: an absolute one
        theirs = tree_snapshot(u.mnt, contents=True, nlinks=False, check_dino=False)
    assert_metacopy(u.u("d/big"), len(BIG))
    assert redirect(u.u("chown2.bin")) == "chown.bin" and redirect(u.u("d/moved")) == "/big2"
    with u.mount(daemon):
        ours = tree_snapshot(u.mnt, contents=True, nlinks=False, check_dino=False)
        assert os.stat(u.m("d/big")).st_blocks == os.stat(u.base / "d/big").st_blocks
        for rel in ("d/moved", "chown2.bin"):
            with open(u.m(rel), "ab") as f:
                f.write(b"+")
    assert_same_tree(theirs, ours, ("kernel", "unionfs"))
    assert_data_copy(u.u("d/moved"), BIG2 + b"+")
    assert_data_copy(u.u("chown2.bin"), BIG2 + b"+")
    with u.mount("kernel"):
        assert u.m("d/moved").read_bytes() == BIG2 + b"+"
        assert u.m("chown2.bin").read_bytes() == BIG2 + b"+"
        assert u.m("d/big").read_bytes() == BIG


# ------------------------------------------------------------------------------------------------- commit, diff, export
def test_commit_packs_the_data_of_metadata_only_copies(impl: str, u: Layout) -> None:
    """The layer tar of an upper holding metadata-only copies (unionfs' or the kernel's, renamed ones and ones
    in a renamed directory included) has their full data and new modes, as has the export of the union."""
    with u.mount(impl):
        os.chmod(u.m("d/big"), 0o600)
        os.rename(u.m("big2"), u.m("d/moved"))
        os.rename(u.m("d"), u.m("e"))  # the kernel: a directory redirect; unionfs: an opaque copy
        os.chmod(u.m("chown.bin"), 0o700)
    assert_metacopy(u.u("chown.bin"), len(BIG2))
    lowers = [str(p) for p in u.lowers]
    out = io.BytesIO()
    write_diff_tar(str(u.upper), out, lowers=lowers)
    layer = tar_files(out.getvalue())
    expect = {"e/big": (0o600, BIG), "e/moved": (0o644, BIG2), "chown.bin": (0o700, BIG2)}
    for name, want in expect.items():
        assert layer[name] == want, name
    out = io.BytesIO()
    write_merged_tar(lowers, out, upper=str(u.upper))
    export = tar_files(out.getvalue())
    for name, want in {**expect, "e/big3": (0o644, BIG3), "utime.bin": (0o644, BIG2)}.items():
        assert export[name] == want, name
    changes = dict((p, k) for k, p in diff_upper(str(u.upper), lowers))
    assert changes["/chown.bin"] == "C" and changes["/e/big"] == "A" and changes["/big2"] == "D"


# ------------------------------------------------------------------------------------------------- unionfs only
def test_small_and_hardlinked_files_are_copied_whole(daemon: str, u: Layout) -> None:
    """A file under METACOPY_MIN bytes is copied with its data (it costs no more), a lower hardlinked file goes
    through the index with its data (its names keep sharing one inode)."""
    with u.mount(daemon):
        os.chmod(u.m("small"), 0o600)
        os.chmod(u.m("linked"), 0o600)
        assert os.stat(u.m("linked2")).st_mode & 0o7777 == 0o600
        assert u.m("linked2").read_bytes() == BIG2
    assert_data_copy(u.u("small"), b"small file")
    assert_data_copy(u.u("linked"), BIG2)
    assert os.stat(u.u("linked")).st_nlink == 2  # the name and the index file


def test_core_metacopy_off_and_missing_data(tmp_path: Path) -> None:
    """The core: ``Overlay(metacopy=False)`` copies the data; a metadata-only copy whose lower data is gone
    shows its attributes but reads (and copies up) with EIO, as the kernel."""
    require(skip_reason_root())
    lowers = [str(p) for p in build_layers(tmp_path / "l", LAYERS)]
    (tmp_path / "u").mkdir()
    ov = Overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"), metacopy=False)
    ov.chmod("/big2", 0o600)
    assert_data_copy(tmp_path / "u/big2", BIG2)
    ov = Overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"))
    ov.chmod("/d/big", 0o600)
    assert_metacopy(tmp_path / "u/d/big", len(BIG))
    os.rename(tmp_path / "l/l0/d/big", tmp_path / "l/l0/d/gone")
    ov = Overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"))
    assert ov.lookup("/d/big").st.st_size == len(BIG)
    for flags in (os.O_RDONLY, os.O_WRONLY):
        with pytest.raises(OSError) as e:
            ov.open("/d/big", flags)
        assert e.value.errno == errno.EIO


def test_marks_an_unprivileged_daemon_wrote_are_read_as_root(tmp_path: Path) -> None:
    """An unprivileged daemon writes its metacopy mark and redirect as ``user.overlay.*`` (the kernel's
    ``userxattr``); a commit or a mount as root read them too (they read only ``trusted.`` before: the layer
    tar held the metadata-only copy's zeros), and a data copy-up removes the mark it read."""
    require(skip_reason_root())
    lowers = [str(p) for p in build_layers(tmp_path / "l", LAYERS)]
    (tmp_path / "u").mkdir()
    ov = Overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"))
    ov.chmod("/d/big", 0o600)
    ov.rename("/big2", "/moved")  # a redirect to /big2
    for rel in ("d/big", "moved"):  # as a daemon without root would have written them
        p = tmp_path / "u" / rel
        for name in os.listxattr(p):
            if name.startswith("trusted.overlay."):
                os.setxattr(p, "user." + name[len("trusted."):], os.getxattr(p, name))
                os.removexattr(p, name)
    assert "user.overlay.metacopy" in os.listxattr(tmp_path / "u/moved")
    out = io.BytesIO()
    write_diff_tar(str(tmp_path / "u"), out, lowers=lowers)
    layer = tar_files(out.getvalue())
    assert layer["d/big"] == (0o600, BIG) and layer["moved"] == (0o644, BIG2)
    ov = Overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"))
    fd = ov.open("/moved", os.O_RDONLY)
    try:
        assert os.pread(fd, len(BIG2), 0) == BIG2
    finally:
        os.close(fd)
    os.close(ov.open("/moved", os.O_WRONLY))  # the data comes up; the user. mark goes with it
    assert (tmp_path / "u/moved").read_bytes() == BIG2
    assert not [n for n in os.listxattr(tmp_path / "u/moved") if n.endswith("overlay.metacopy")]
