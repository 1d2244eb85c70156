"""The daemon's node records are the view's path cache (issue 14, point 1): one record per kernel node, and a
LOOKUP, GETATTR, read-only OPEN, READDIRPLUS, READLINK or GETXATTR of a node the daemon knows works on records,
with no union path built.

The handlers of :class:`unionfs.mount.server.LowLevelFS` are called directly with the request bodies the kernel
sends (no ``/dev/fuse``: this is the node table's unit test; the same handlers run under real mounts in
test_union_suite, test_differential and test_stress)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from support.layers import Dir, File, Symlink, build_layers

from unionfs.mount import protocol as fp
from unionfs.mount.server import Inode, LowLevelFS
from unionfs.union import view
from unionfs.union.overlay import Overlay
from unionfs.union.view import Entry


class Daemon:
    """A :class:`LowLevelFS` over two lowers and an upper, spoken to as the kernel does."""

    def __init__(self, tmp: Path) -> None:
        lowers = build_layers(tmp, [[Dir("d"), Dir("d/a"), File("d/a/f", b"base"), File("d/g", b"g"),
                                     Symlink("d/s", "g")],
                                    [Dir("d"), Dir("d/a"), File("d/a/f", b"top")]])
        for n in ("upper", "work"):
            (tmp / n).mkdir()
        self.fs = LowLevelFS(Overlay([str(p) for p in lowers], str(tmp / "upper"), str(tmp / "work")),
                             passthrough=False)

    def lookup(self, parent: int, name: str) -> int:
        """The node id of ``name`` in ``parent`` (0: a negative entry)."""
        return fp.ENTRY_OUT_HEAD.unpack_from(self.fs.lookup(parent, memoryview(name.encode() + b"\0")))[0]

    def walk(self, path: str) -> int:
        nid = fp.ROOT_ID
        for name in path.strip("/").split("/"):
            nid = self.lookup(nid, name)
        return nid

    def attr(self, nid: int) -> tuple[int, int, int]:
        """(ino, size, mode) of a GETATTR."""
        a = fp.ATTR.unpack_from(self.fs.getattr(nid, memoryview(fp.GETATTR_IN.pack(0, 0, 0))), fp.ATTR_OUT_HEAD.size)
        return a[0], a[1], a[9]

    def read(self, nid: int) -> bytes:
        fh = fp.OPEN_OUT.unpack(self.fs.open(nid, memoryview(fp.OPEN_IN.pack(os.O_RDONLY, 0))))[0]
        try:
            return os.pread(self.fs.handles[fh].fd, 100, 0)
        finally:
            self.fs.release(nid, memoryview(fp.RELEASE_IN.pack(fh, 0, 0, 0)))

    def names(self, nid: int) -> list[bytes]:
        """The names a READDIRPLUS of directory ``nid`` gives."""
        fh = fp.OPEN_OUT.unpack(self.fs.opendir(nid, memoryview(fp.OPEN_IN.pack(os.O_RDONLY, 0))))[0]
        try:
            out = self.fs.readdirplus(nid, memoryview(fp.READ_IN.pack(fh, 0, 65536, 0, 0, 0, 0)))
        finally:
            self.fs.releasedir(nid, memoryview(fp.RELEASE_IN.pack(fh, 0, 0, 0)))
        names, at = [], 0
        while at < len(out):
            at += fp.ENTRY_OUT_HEAD.size + fp.ATTR.size
            _, _, namelen, _ = fp.DIRENT.unpack_from(out, at)
            names.append(bytes(out[at + fp.DIRENT.size:at + fp.DIRENT.size + namelen]))
            at += (fp.DIRENT.size + namelen + 7) & ~7
        return names

    def rename(self, parent: int, old: str, newdir: int, new: str) -> None:
        self.fs.rename(parent, memoryview(fp.RENAME_IN.pack(newdir) + old.encode() + b"\0" + new.encode() + b"\0"))

    def link(self, nid: int, parent: int, name: str) -> int:
        out = self.fs.link(parent, memoryview(fp.LINK_IN.pack(nid) + name.encode() + b"\0"))
        return fp.ENTRY_OUT_HEAD.unpack_from(out)[0]

    def unlink(self, parent: int, name: str) -> None:
        self.fs.unlink(parent, memoryview(name.encode() + b"\0"))


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(tmp_path)


def no_paths(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(nid: int) -> str:
        raise AssertionError(f"a union path was built for node {nid}")
    monkeypatch.setattr(daemon.fs, "path", refuse)


def test_one_record_per_node_is_the_path_cache(daemon: Daemon) -> None:
    f = daemon.walk("/d/a/f")
    nodes = daemon.fs.nodes
    d = nodes[fp.ROOT_ID].kids["d"]  # type: ignore[index]
    assert daemon.fs.view._tree is nodes[fp.ROOT_ID]
    assert isinstance(d, Inode) and d.kids["a"] is nodes[daemon.walk("/d/a")]  # type: ignore[index]
    record = nodes[f]
    assert record.node is not None and record.node.path == "/d/a/f" and record.node.layer == 1
    # what the cache alone resolved (the overlay's own lookups) is a plain record the cache may drop
    daemon.fs.view.lookup("/d/g")
    assert type(d.kids["g"]) is Entry and not d.kids["g"].pinned  # type: ignore[index]
    g = daemon.lookup(daemon.walk("/d"), "g")
    assert d.kids["g"] is nodes[g] and nodes[g].node is not None  # type: ignore[index]  # the record became the node's


def test_lookup_getattr_and_open_of_known_nodes_build_no_path(daemon: Daemon,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    d, f = daemon.walk("/d"), daemon.walk("/d/a/f")
    no_paths(daemon, monkeypatch)
    g = daemon.lookup(d, "g")  # a name never looked up, in a known directory
    assert daemon.read(g) == b"g" and daemon.read(f) == b"top"
    assert daemon.attr(f)[1] == 3 and stat.S_ISREG(daemon.attr(f)[2])
    assert daemon.lookup(d, "missing") == 0  # a negative entry
    assert sorted(daemon.names(d)) == [b".", b"..", b"a", b"g", b"s"]
    assert daemon.fs.readlink(daemon.lookup(d, "s"), memoryview(b"")) == b"g"
    with pytest.raises(OSError) as e:
        daemon.fs.getxattr(g, memoryview(fp.GETXATTR_IN.pack(100, 0) + b"user.none\0"))
    assert e.value.errno == errno.ENODATA


def test_records_follow_renames_links_and_unlinks(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    d, a, f = daemon.walk("/d"), daemon.walk("/d/a"), daemon.walk("/d/a/f")
    ino = daemon.attr(f)[0]
    daemon.rename(d, "a", d, "b")  # a lower directory: copied up, redirected
    assert daemon.walk("/d/b/f") == f and daemon.read(f) == b"top" and daemon.attr(f)[0] == ino
    assert daemon.fs.nodes[f].node.path == "/d/b/f"  # type: ignore[union-attr]
    assert daemon.lookup(d, "a") == 0
    h = daemon.link(f, d, "h")  # a second name: the same node
    assert h == f and daemon.read(daemon.lookup(d, "h")) == b"top"
    daemon.unlink(a, "f")  # the first name goes: the other still reads, by its own path
    assert daemon.read(f) == b"top" and daemon.fs.path(f) == "/d/h"
    no_paths(daemon, monkeypatch)
    assert daemon.attr(f)[0] == ino and daemon.read(f) == b"top"


def test_records_taken_out_of_the_tree_give_their_room_in_the_cache_back(daemon: Daemon, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The path cache holds at most CACHE_MAX nodes. The nodes of records that leave the tree (a node the kernel
    forgets, as after `echo 2 > /proc/sys/vm/drop_caches`; a cached name unlinked, or replaced by a rename) leave
    the count: before, the cache stayed "full" of nothing, and every later OPEN resolved its path from the root."""
    monkeypatch.setattr(view, "CACHE_MAX", 12)
    monkeypatch.setattr(view, "CACHE_MAX_DIRS", 12)
    many = tmp_path / "upper" / "many"
    many.mkdir()
    for i in range(40):
        (many / f"f{i}").write_bytes(b"x")
    fs = daemon.fs
    m = daemon.lookup(fp.ROOT_ID, "many")
    cached = lambda nid: fs.view.cached(fs.nodes[nid]) is not None  # noqa: E731
    for round_ in range(3):  # each round fills the cache, then the kernel forgets those nodes
        nids = [daemon.lookup(m, f"f{round_ * 10 + i}") for i in range(10)]
        assert all(cached(n) for n in nids), round_
        for n in nids:
            fs._forget(n, 1)
    # names the cache resolved on its own (the overlay's lookups), then unlinked and renamed over
    for i in range(30, 38):
        fs.view.lookup(f"/many/f{i}")
    for i in range(30, 34):
        daemon.unlink(m, f"f{i}")
    for i in range(34, 38):
        daemon.rename(m, f"f{i - 30}", m, f"f{i}")
    late = [daemon.lookup(m, f"f{i}") for i in range(34, 40)]
    assert all(cached(n) for n in late)
