"""The union case table (tests/support/cases.py) against the core: unionfs.union.overlay without FUSE."""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest
from support.cases import CASES, Case, build_case, build_layer, case_id, describe, run_ops, snapshot

from unionfs.union.overlay import Overlay


def _needs() -> str | None:
    if os.geteuid() != 0:
        return "the table builds char 0/0 whiteouts and trusted.* xattrs: needs root"
    return None


pytestmark = pytest.mark.skipif(_needs() is not None, reason=_needs() or "")


def apply_core(ov: Overlay, op: tuple[Any, ...]) -> None:
    """Run one table operation through the core's API."""
    verb, *a = op
    p = lambda rel: "/" + rel  # noqa: E731
    if verb in ("write", "append"):
        path = p(a[0])
        node = ov.view.try_lookup(path)
        if node is None:
            fd = ov.create(path, 0o644, os.O_WRONLY)
        else:
            fd = ov.open(path, os.O_WRONLY | (os.O_TRUNC if verb == "write" else 0))
        try:
            off = os.fstat(fd).st_size if verb == "append" else 0
            os.pwrite(fd, a[1].encode(), off)
        finally:
            os.close(fd)
    elif verb == "unlink":
        ov.unlink(p(a[0]))
    elif verb == "rmdir":
        ov.rmdir(p(a[0]))
    elif verb == "mkdir":
        ov.mkdir(p(a[0]), 0o755)
    elif verb == "rename":
        ov.rename(p(a[0]), p(a[1]), a[2] if len(a) > 2 else 0)
    elif verb == "symlink":
        ov.symlink(a[0], p(a[1]))
    elif verb == "link":
        ov.link(p(a[0]), p(a[1]))
    elif verb == "chmod":
        ov.chmod(p(a[0]), a[1])
    elif verb == "truncate":
        ov.truncate(p(a[0]), a[1])
    elif verb == "mkfifo":
        ov.mknod(p(a[0]), stat.S_IFIFO | 0o644, 0)
    elif verb == "setxattr":
        ov.setxattr(p(a[0]), a[1], a[2])
    elif verb == "rmtree":
        for node in reversed(list(ov.view.walk(ov.view.lookup(p(a[0]))))):
            (ov.rmdir if node.is_dir else ov.unlink)(node.path)
    else:
        raise ValueError(verb)


def core_tree(ov: Overlay) -> dict[str, str]:
    out = {}
    for node in ov.view.walk():
        if node.path == "/":
            continue

        def read(n=node) -> str:
            with open(n.real) as f:
                return f.read()

        out[node.path[1:]] = describe(node.st, lambda n=node: os.readlink(n.real), read)
    return out


def make(tmp_path: Any, case: Case) -> tuple[Overlay, list[str]]:
    lowers, upper, work = build_case(tmp_path, case)
    return Overlay(lowers, upper, work), lowers


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case_on_core(tmp_path: Any, case: Case) -> None:
    ov, lowers = make(tmp_path, case)
    before = [snapshot(d) for d in lowers]
    run_ops(case, lambda op: apply_core(ov, op))
    if case.expect is not None:
        assert core_tree(ov) == case.expect
    for group in case.same_ino:
        assert len({ov.view.lookup("/" + p).ino for p in group}) == 1, group
    for path, n in case.nlink:
        assert ov.view.nlink(ov.view.lookup("/" + path)) == n, path
    assert [snapshot(d) for d in lowers] == before, "a lower changed"
    # a fresh view over the same directories (a remount) sees the same tree
    ov2 = Overlay(lowers, str(tmp_path / "upper"), str(tmp_path / "work"))
    if case.expect is not None:
        assert core_tree(ov2) == case.expect
    assert {n.path: n.ino for n in ov.view.walk()} == {n.path: n.ino for n in ov2.view.walk()}


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
    build_layer(str(tmp_path / "l"), {"a": "f:1"})
    ov = Overlay([str(tmp_path / "l")])
    with pytest.raises(OSError) as ei:
        ov.unlink("/a")
    assert ei.value.errno == 30  # EROFS
    assert ov.statfs()["f_namemax"] == 255


def test_path_cache_follows_every_change(tmp_path: Any) -> None:
    """The core's path cache (and the per-layer name sets of merged directories) never answers from before a
    change made through the Overlay: every lookup after a change equals an uncached Union's."""
    from unionfs.union.view import Union

    for i, spec in enumerate(({"d": "d", "d/a": "f:a", "d/s": "d", "d/s/x": "f:x"},
                              {"d": "d", "d/b": "f:b", "d/s": "d", "d/s/y": "f:y", "h": "f:h", "h2": "h:h"})):
        build_layer(str(tmp_path / f"l{i}"), spec)
    lowers = [str(tmp_path / "l0"), str(tmp_path / "l1")]
    os.makedirs(tmp_path / "upper")
    os.makedirs(tmp_path / "work")
    ov = Overlay(lowers, str(tmp_path / "upper"), str(tmp_path / "work"))
    fresh = lambda: Union(lowers, str(tmp_path / "upper"), ov.index)  # noqa: E731

    def agree() -> None:
        want = {n.path: (n.layer, n.real, n.ino, stat.S_IFMT(n.st.st_mode)) for n in fresh().walk()}
        got = {}
        for p in want:
            n = ov.view.lookup(p)
            got[p] = (n.layer, n.real, n.ino, stat.S_IFMT(n.st.st_mode))
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
