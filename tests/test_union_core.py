"""The core alone (unionfs.union.overlay without FUSE): inode numbers, copy-up, a read-only union, the path
cache. The union case table runs against the core in tests/test_union_suite.py."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest
from support.cases import Case, build_case, layer_entries
from support.layers import File, build_layer
from support.mount import skip_reason_root

from unionfs.union.overlay import Overlay

pytestmark = [pytest.mark.root, pytest.mark.skipif(skip_reason_root() is not None, reason=skip_reason_root() or "")]


def make(tmp_path: Any, case: Case) -> tuple[Overlay, list[str]]:
    lowers, upper, work = build_case(tmp_path, case)
    return Overlay([str(p) for p in lowers], str(upper), str(work)), [str(p) for p in lowers]


def test_inode_numbers_stable_across_copy_up_and_rename(tmp_path: Any) -> None:
    ov, _ = make(tmp_path, Case("x", ({"d": "d", "d/f": "f:1", "g": "f:2"},), ()))
    ino_f, ino_d, ino_g = (ov.view.lookup(p).ino for p in ("/d/f", "/d", "/g"))
    ov.chmod("/g", 0o600)
    assert ov.view.lookup("/g").ino == ino_g
    ov.rename("/d", "/e")
    assert ov.view.lookup("/e").ino == ino_d
    assert ov.view.lookup("/e/f").ino == ino_f
    inos = [n.ino for n in ov.view.walk()]
    assert len(inos) == len(set(inos))


def test_copy_up_keeps_holes_and_metadata(tmp_path: Any) -> None:
    ov, lowers = make(tmp_path, Case("x", ({},), ()))
    big = os.path.join(lowers[0], "sparse")
    with open(big, "wb") as f:
        f.seek(64 << 20)
        f.write(b"end")
    os.chown(big, 1234, 5678)
    os.chmod(big, 0o640)
    os.setxattr(big, "user.k", b"v")
    os.utime(big, ns=(1_000_000_000, 2_000_000_123))
    node = ov.copy_up("/sparse")
    st = os.lstat(node.real)
    assert node.layer == 0
    assert st.st_size == (64 << 20) + 3 and st.st_blocks * 512 < (1 << 20)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    assert st.st_mtime_ns == 2_000_000_123
    assert os.getxattr(node.real, "user.k") == b"v"
    assert ov.view.listxattr(node) == ["user.k"]
    assert not os.listdir(ov.tmp)


def test_read_only_union_refuses_writes(tmp_path: Any) -> None:
    build_layer(tmp_path / "l", [File("a", b"1")])
    ov = Overlay([str(tmp_path / "l")])
    with pytest.raises(OSError) as ei:
        ov.unlink("/a")
    assert ei.value.errno == 30  # EROFS
    assert ov.statfs()["f_namemax"] == 255


def test_path_cache_follows_every_change(tmp_path: Any) -> None:
    """The core's path cache never answers from before a change made through the Overlay: every lookup after a change equals an uncached Union's."""
    from unionfs.union.view import Union

    for i, spec in enumerate(({"d": "d", "d/a": "f:a", "d/s": "d", "d/s/x": "f:x"},
                              {"d": "d", "d/b": "f:b", "d/s": "d", "d/s/y": "f:y", "h": "f:h", "h2": "h:h"})):
        build_layer(tmp_path / f"l{i}", layer_entries(spec))
    lowers = [str(tmp_path / "l0"), str(tmp_path / "l1")]
    os.makedirs(tmp_path / "upper")
    os.makedirs(tmp_path / "work")
    ov = Overlay(lowers, str(tmp_path / "upper"), str(tmp_path / "work"))
    fresh = lambda: Union(lowers, str(tmp_path / "upper"), ov.index)  # noqa: E731

    def agree() -> None:
        want = {n.path: (n.layer, os.path.join(n.at.path, n.rname), n.ino, stat.S_IFMT(n.st.st_mode)) for n in fresh().walk()}
        got = {}
        for p in want:
            n = ov.view.lookup(p)
            got[p] = (n.layer, os.path.join(n.at.path, n.rname), n.ino, stat.S_IFMT(n.st.st_mode))
        assert got == want
        for p in ("/d/a", "/d/b", "/d/c", "/d/s/x", "/d/s/y", "/d/s/z", "/e", "/h", "/h2"):
            assert (ov.view.try_lookup(p) is None) == (fresh().try_lookup(p) is None), p

    agree()
    steps = [lambda: os.close(ov.create("/d/c", 0o644, os.O_WRONLY)), lambda: ov.unlink("/d/a"),
             lambda: ov.unlink("/d/s/x"), lambda: ov.rename("/d/s", "/e"), lambda: ov.mkdir("/d/s", 0o755),
             lambda: os.close(ov.create("/d/a", 0o644, os.O_WRONLY)), lambda: ov.chmod("/h", 0o600),
             lambda: ov.unlink("/h2"), lambda: ov.rename("/d/b", "/d/c"), lambda: ov.rmdir("/d/s")]
    for step in steps:
        step()
        agree()


def test_a_hint_skips_the_lowers_above_it_never_the_upper(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Union.child(parent, name, hint=K)`` (the daemon passes the layer a node was found at before) probes the
    upper and then layer K on down: a file in the base of 8 lowers costs 3 lstats instead of 17 (each layer above
    and its whiteout). The upper is always probed: a copy-up or an upper whiteout made since wins over the hint."""
    from unionfs.union import realdir
    from unionfs.union import view as view_mod

    monkeypatch.setattr(view_mod, "NAMES_AFTER", 10**9)  # no name map: the hint alone
    specs = [{"d": "d", "d/f": "f:base"}] + [{"d": "d", f"d/o{i}": "f:o"} for i in range(7)]
    for i, spec in enumerate(specs):
        build_layer(tmp_path / f"l{i}", layer_entries(spec))
    os.makedirs(tmp_path / "upper" / "d")  # the directory merges the upper too
    os.makedirs(tmp_path / "work")
    ov = Overlay([str(tmp_path / f"l{i}") for i in range(8)], str(tmp_path / "upper"), str(tmp_path / "work"))
    view = ov.view
    d = view.lookup("/d")
    base = view.child(d, "f")
    assert base is not None and base.layer == 8  # top-down: upper 0, l7 1, ..., l0 8

    calls: list[int] = []
    real_lstat = realdir.Dir.lstat

    def counting(self: realdir.Dir, name: str) -> os.stat_result:
        calls.append(self.layer)
        return real_lstat(self, name)

    monkeypatch.setattr(realdir.Dir, "lstat", counting)
    assert view.child(d, "f", hint=8).layer == 8  # type: ignore[union-attr]
    assert calls == [0, 0, 8]  # the upper (the name, its whiteout), then the base
    calls.clear()
    assert view.child(d, "f").layer == 8  # type: ignore[union-attr]
    assert len(calls) == 1 + 2 * 8  # without the hint: every layer and its whiteout, then the base
    monkeypatch.setattr(realdir.Dir, "lstat", real_lstat)

    ov.chmod("/d/f", 0o600)  # copied up: the upper's entry wins over the old hint
    assert view.child(d, "f", hint=8).layer == 0  # type: ignore[union-attr]
    ov.unlink("/d/f")  # an upper whiteout hides it, whatever the hint says
    assert view.child(d, "f", hint=8) is None
    assert view.try_lookup("/d/f") is None


def test_a_directory_looked_into_often_gets_a_map_of_its_lowers_names(tmp_path: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """From the NAMES_AFTER-th lookup in a merged directory on, a map of its lower layers' names (whiteouts
    included) says which layer to lstat: a name costs the upper's two probes and one lstat, a name no lower
    holds only the upper's probes; the answers stay those of a union without the map, also for names whited
    out above a lower copy, and after the upper changes (the map covers the read-only lowers alone)."""
    from unionfs.union import realdir
    from unionfs.union.view import NAMES_AFTER, Union

    specs = [{"d": "d", "d/base": "f:0", "d/hidden": "f:0", "d/sub": "d", "d/sub/x": "f:0"},
             {"d": "d", "d/mid": "f:1", "d/.wh.hidden": "f:"},
             {"d": "d", "d/top": "f:2", "d/sub": "d", "d/sub/y": "f:2"}]
    for i, spec in enumerate(specs):
        build_layer(tmp_path / f"l{i}", layer_entries(spec))
    lowers = [str(tmp_path / f"l{i}") for i in range(3)]
    os.makedirs(tmp_path / "upper" / "d")
    os.makedirs(tmp_path / "work")
    ov = Overlay(lowers, str(tmp_path / "upper"), str(tmp_path / "work"))
    view = ov.view
    names = ("base", "hidden", "mid", "top", "sub", "none", ".wh.hidden")

    def answers(u: Union) -> dict[str, tuple[int, str] | None]:
        d = u.lookup("/d")
        out: dict[str, tuple[int, str] | None] = {}
        for n in names:
            c = u.child(d, n)
            out[n] = None if c is None else (c.layer, os.path.join(c.at.path, c.rname))
        return out

    fresh = lambda: Union(lowers, str(tmp_path / "upper"), ov.index)  # noqa: E731
    for _ in range(NAMES_AFTER):
        assert answers(view) == answers(fresh())
    calls: list[tuple[int, str]] = []
    real_lstat = realdir.Dir.lstat

    def counting(self: realdir.Dir, name: str) -> os.stat_result:
        calls.append((self.layer, name))
        return real_lstat(self, name)

    monkeypatch.setattr(realdir.Dir, "lstat", counting)
    d = view.lookup("/d")
    calls.clear()
    assert view.child(d, "base").layer == 3  # type: ignore[union-attr]
    assert calls == [(0, "base"), (0, ".wh.base"), (3, "base")]
    calls.clear()
    assert view.child(d, "none") is None
    assert calls == [(0, "none"), (0, ".wh.none")]
    calls.clear()
    assert view.child(d, "hidden") is None  # whited out in the middle layer: one probe of it, not of the base
    assert calls == [(0, "hidden"), (0, ".wh.hidden"), (2, "hidden"), (2, ".wh.hidden")]
    monkeypatch.setattr(realdir.Dir, "lstat", real_lstat)
    assert answers(view) == answers(fresh())
    os.close(ov.create("/d/none", 0o644, os.O_WRONLY))  # the upper changes: still probed first
    ov.unlink("/d/top")
    assert answers(view) == answers(fresh())
