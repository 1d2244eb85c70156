"""Mount an image made by umoci from the store, by reference: the merged tree equals ``umoci unpack``'s rootfs,
writes land in the container's upper, and the container's life cycle (ps, umount, remount, rm) works."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from support.images import ImageSet
from support.mount import is_mounted, skip_reason_fuse, skip_reason_root, unmounted_on_exit
from support.tree import ROOTFS, assert_same_tree, tree_snapshot

from unionfs.store.store import Store

SKIP = skip_reason_root("FUSE mounts of images") or skip_reason_fuse()
pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint that is unmounted after the test whatever happens."""
    path = tmp_path / "mnt"
    path.mkdir()
    with unmounted_on_exit(path):
        yield path


def test_mounted_image_equals_umoci_unpack(test_images: ImageSet, cli, store_root: Path, mnt: Path) -> None:
    cli("load", "-i", test_images.oci_archive)
    cli("mount", "--name", "c1", "test:v3", mnt)
    try:
        assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), tree_snapshot(mnt, **ROOTFS), ("umoci", "mount"))
        ps = cli("ps").stdout
        assert "c1" in ps and str(mnt) in ps
        # a write lands in the container's upper, never in a layer
        (mnt / "etc" / "hostname").write_text("changed\n")
        os.unlink(mnt / "bin" / "ls")
    finally:
        cli("umount", mnt)
    assert not is_mounted(mnt)
    upper = store_root / "containers" / "c1" / "upper"
    assert (upper / "etc" / "hostname").read_text() == "changed\n"
    assert os.stat(upper / "bin" / "ls", follow_symlinks=False).st_rdev == 0  # a whiteout
    # the store's extracted layers are unchanged: a fresh container sees the image as it was
    img = Store(store_root).resolve("test:v3")
    assert all(Store(store_root).layer_path(d).is_dir() for d in img.config.diff_ids)
    cli("mount", "--name", "c1", "test:v3", mnt)  # the same container again: its upper persists
    try:
        assert (mnt / "etc" / "hostname").read_text() == "changed\n"
        assert not os.path.lexists(mnt / "bin" / "ls")
        p = cli("rm", "c1", check=False)
        assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1  # refused while mounted
    finally:
        cli("umount", mnt)
    cli("rm", "c1")
    assert not (store_root / "containers" / "c1").exists()
    cli("mount", "--name", "c2", "test:v3", mnt)
    try:
        assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), tree_snapshot(mnt, **ROOTFS), ("umoci", "mount"))
    finally:
        cli("umount", mnt)
    cli("rm", "c2")


def test_mount_missing_image_is_one_line(cli, mnt: Path) -> None:
    p = cli("mount", "nothing:here", mnt, check=False)
    assert p.returncode != 0
    assert p.stderr.strip() == "unionfs: no such image: nothing:here"
    assert not is_mounted(mnt)
