"""The union case table (tests/support/cases.py) as ONE suite, run against every implementation of
tests/support/impls.py: the core (no FUSE), the daemon (default and ``-o passthrough=off``) and the kernel
overlayfs, the oracle, which runs the same table (where it legitimately differs, the case says what it shows
and why).

Every case: build the lowers and the upper, open the union, apply the operations (the last one must fail with
the case's errno when it names one), then check the tree, the hardlinks, the link counts and the tree's
consistency (d_ino, st_dev, every listed name found); the lowers must be unchanged, and opened again (a remount;
for the core a fresh Overlay) the union must show the same tree, inode numbers included. Every mount is
unmounted, also when a check fails.
"""

from __future__ import annotations

import os

import pytest
from support.cases import CASES, Case, build_case, case_id, run_ops, spec_of
from support.impls import IMPLS, MOUNTED, Impl, impl_param
from support.mount import private_tmpdir, require
from support.tree import LAYER, assert_same_tree, tree_snapshot


@pytest.fixture(params=[impl_param(name) for name in IMPLS])
def union_impl(request: pytest.FixtureRequest) -> Impl:
    """Each implementation in turn (skipped with its reason where it cannot run)."""
    impl = IMPLS[request.param]
    require(impl.skip_reason())
    return impl


@pytest.fixture(params=[impl_param(name) for name in MOUNTED])
def mounted_impl(request: pytest.FixtureRequest) -> Impl:
    """Each implementation that mounts, in turn."""
    impl = IMPLS[request.param]
    require(impl.skip_reason())
    return impl


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case(union_impl: Impl, case: Case) -> None:
    expect, problems = case.expected(union_impl.name)
    with private_tmpdir("case") as tmp:
        lowers, upper, work = build_case(tmp, case)
        before = [tree_snapshot(d, **LAYER) for d in lowers]
        with union_impl.open(lowers, upper, work, tmp / "mnt") as u:
            run_ops(case, u.apply)
            snap = u.snapshot()
        if expect is not None:
            assert spec_of(snap) == expect
        assert snap.problems == problems
        for group in case.same_ino:
            assert len({snap.nodes[p].ino for p in group}) == 1, group
        for path, n in case.nlink:
            assert snap.nodes[path].nlink == n, path
        for i, (d, b) in enumerate(zip(lowers, before)):
            assert_same_tree(b, tree_snapshot(d, **LAYER), ("before", "after"), f"lower l{i} changed")
        with union_impl.open(lowers, upper, work, tmp / "mnt") as u:
            again = u.snapshot()
        assert_same_tree(snap, again, ("before", "opened again"), "the tree changed when opened again")


def test_rewound_listing_does_not_bring_back_a_removed_name(mounted_impl: Impl) -> None:
    """A directory read again from its start on the same descriptor (rewinddir) after a name was removed:
    the name must stay gone, for the listing and for stat (stress-ng's filename stressor found the second
    read served from the first one's listing, whose READDIRPLUS entries put the removed name back)."""
    with private_tmpdir("rewind") as tmp:
        lowers, upper, work = build_case(tmp, Case("empty", ({},), ()))
        with mounted_impl.open(lowers, upper, work, tmp / "mnt"):
            d = os.path.join(tmp / "mnt", "d")
            os.mkdir(d)
            for i in range(5):
                f = os.path.join(d, f"f{i}")
                open(f, "w").close()
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    assert f"f{i}" in [e.name for e in os.scandir(fd)]
                    os.unlink(f)
                    os.lseek(fd, 0, os.SEEK_SET)
                    again = [e.name for e in os.scandir(fd)]
                finally:
                    os.close(fd)
                assert f"f{i}" not in again
                assert not os.path.lexists(f), f"{f} is back after its unlink"


def test_a_hardlink_across_lower_layers_keeps_its_other_name(mounted_impl: Impl) -> None:
    """One file with a name in each of two lower layers (hardlinked across layer directories, as a store that
    shares files between layers may do): one node for the kernel. Once its first name is removed, the other
    still opens (the daemon resolved it with the layer of the first name as a hint: ENOENT)."""
    with private_tmpdir("xlink") as tmp:
        lowers, upper, work = build_case(tmp, Case("two layers", ({}, {}), ()))
        (lowers[0] / "x").write_bytes(b"data")
        os.link(lowers[0] / "x", lowers[1] / "y")
        with mounted_impl.open(lowers, upper, work, tmp / "mnt"):
            x, y = tmp / "mnt" / "x", tmp / "mnt" / "y"
            assert os.stat(x).st_ino == os.stat(y).st_ino
            os.unlink(x)
            assert y.read_bytes() == b"data"
