"""ls, cat, find, which, layers and export on an image made with umoci agree with a mount of it, and export
equals umoci unpack's rootfs. The "mount" is the kernel's overlayfs over the store's layers (read-only);
unionfs itself mounts nothing here."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.images import NON_UTF8, run
from support.mount import kernel_overlay, require, skip_reason_kernel_overlay, skip_reason_root
from support.tree import ROOTFS, assert_same_tree, tree_snapshot

from unionfs.errors import TreePathError
from unionfs.image.tree import ImageTree
from unionfs.store.store import Store

REF = "test:v2"


@pytest.fixture
def loaded(test_images: Any, cli, tmp_path: Path) -> ImageTree:
    """test:v2 (layers made by umoci repack) loaded into the test's store."""
    archive = tmp_path / "v2.tar"
    run("skopeo", "copy", "-q", f"oci:{test_images.layout}:v2", f"oci-archive:{archive}:{REF}")
    cli("load", "-i", archive)
    return ImageTree.open(Store(tmp_path / "store"), REF)


@pytest.fixture(params=["v2", "v3"])
def any_image(request: pytest.FixtureRequest, test_images: Any, cli, tmp_path: Path) -> ImageTree:
    """test:v2 or the full test:v3 (with umoci insert's opaque /etc and whiteout) loaded into the store."""
    if request.param == "v3":
        cli("load", "-i", test_images.oci_archive)
        return ImageTree.open(Store(tmp_path / "store"), "test:v3")
    return request.getfixturevalue("loaded")


@pytest.fixture
def mounted(any_image: ImageTree, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The image mounted read-only by the kernel overlayfs: (tree, mountpoint)."""
    require(skip_reason_root(), skip_reason_kernel_overlay())
    mnt = tmp_path / "mnt"
    with kernel_overlay([Path(p) for p in any_image.lowers], None, None, mnt):
        yield any_image, mnt


def _mount_paths(mnt: Path) -> list[bytes]:
    """Every path of the mounted tree, ``/`` first, as bytes (names need not be UTF-8)."""
    out = [b"/" if p == "." else b"/" + os.fsencode(p) for p in tree_snapshot(mnt, check_dino=False).nodes]
    return sorted(out, key=lambda p: p.split(b"/"))


def test_ls_agrees_with_the_mount(mounted, cli, store_root: Path) -> None:  # type: ignore[no-untyped-def]
    tree, mnt = mounted
    for path in _mount_paths(mnt):
        real = os.fsencode(mnt) + path
        if not os.path.isdir(real) or os.path.islink(real):
            continue
        shown = [os.fsencode(n.path.rsplit("/", 1)[-1]) for _, entries in tree.ls(os.fsdecode(path))
                 for n in entries]
        assert shown == sorted(os.listdir(real)), path
    if tree.image.tags[0].tag != "v2":
        return  # the CLI checks below are about test:v2
    # the CLI: plain, long (mode, links, uid, gid, size as lstat says), recursive
    assert cli("ls", REF, "/opt/app").stdout.splitlines() == ["config"]
    for line in cli("ls", REF, "/etc", "-l").stdout.splitlines():
        mode, nlink, uid, gid, size, _date, _time, name, *rest = line.split()
        st = os.lstat(mnt / "etc" / name)
        assert (mode, int(nlink), int(uid), int(gid), int(size)) == \
            (stat.filemode(st.st_mode), st.st_nlink, st.st_uid, st.st_gid, st.st_size), line
        if rest:
            assert rest == ["->", os.readlink(mnt / "etc" / name)]
    recursive = run_cli("ls", REF, "/var", "-R", root=store_root, text=False).stdout.splitlines()
    assert recursive[0] == b"/var:" and b"/var/lib/data:" in recursive and b"keep" in recursive
    assert NON_UTF8 in recursive  # names are written as the bytes they are
    home = cli("ls", REF, "/home/user", "-l").stdout.split()
    assert home[0] == "-rw-r--r--" and home[-1] == "/home/user"  # a directory replaced by a file in layer 2


def test_cat_agrees_with_the_mount(mounted, cli) -> None:  # type: ignore[no-untyped-def]
    tree, mnt = mounted
    files = 0
    for path in _mount_paths(mnt):
        real = os.fsencode(mnt) + path
        if os.path.isfile(real) and not os.path.islink(real):
            with tree.open_file(os.fsdecode(path)) as f, open(real, "rb") as g:
                assert f.read() == g.read(), path
            files += 1
    assert files > 10
    if tree.image.tags[0].tag != "v2":
        assert cli("cat", "test:v3", "/etc/hostname").stdout == "opaque\n"
        return
    assert cli("cat", REF, "/etc/hostname").stdout == "layer2\n"
    assert cli("cat", REF, "/etc/abs-link").stdout == "layer2\n"  # resolved inside the image, not on the host
    r = cli("cat", REF, "/etc/escaping-link", check=False)  # ../../../../outside stops at the image root
    assert r.returncode == 1 and r.stderr.startswith("unionfs: /etc/escaping-link: no such file")
    assert cli("cat", REF, "/var/lib/data/" + NON_UTF8.decode("utf-8", "surrogateescape")).stdout == "latin1 name\n"
    for bad in ("/usr/share/doc/old.txt", "/opt/app/sub/x", "/etc"):
        r = cli("cat", REF, bad, check=False)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    with pytest.raises(TreePathError):
        tree.open_file("/home/user/.profile")  # /home/user is a file now


def test_find_agrees_with_the_mount(mounted, cli, store_root: Path) -> None:  # type: ignore[no-untyped-def]
    tree, mnt = mounted
    ref = str(tree.image.tags[0])
    out = run_cli("find", ref, root=store_root, text=False).stdout.splitlines()
    assert sorted(out, key=lambda p: p.split(b"/")) == _mount_paths(mnt)
    if tree.image.tags[0].tag != "v2":
        return
    links = cli("find", REF, "/bin", "-type", "l").stdout.split()
    assert sorted(links) == sorted("/bin/" + n for n in os.listdir(mnt / "bin") if os.path.islink(mnt / "bin" / n))
    assert cli("find", REF, "/usr", "-name", "hard-*").stdout.split() == ["/usr/share/doc/hard-a",
                                                                         "/usr/share/doc/hard-b"]
    assert cli("find", REF, "/var", "-name", "gone").stdout == ""  # deleted in layer 2


def test_which_names_provider_and_shadowed_layers(mounted, cli) -> None:  # type: ignore[no-untyped-def]
    tree, mnt = mounted
    # every visible regular file: the providing layer holds exactly what the mount shows
    for path in _mount_paths(mnt):
        real = os.fsencode(mnt) + path
        if os.path.isfile(real) and not os.path.islink(real):
            node, hits = tree.which(os.fsdecode(path))
            assert node is not None and hits[0].role == "provides"
            provider = os.fsencode(hits[0].layer.path) + path
            with open(provider, "rb") as f, open(real, "rb") as g:
                assert f.read() == g.read(), path
    if tree.image.tags[0].tag != "v2":
        node, hits = tree.which("/etc/hostname")  # umoci insert --opaque made /etc opaque in a later layer
        assert hits[0].role == "provides" and hits[0].layer.number >= 3
        assert [(h.layer.number, h.role) for h in hits[1:]] == [(2, "shadowed"), (1, "shadowed")]
        node, hits = tree.which("/etc/group")  # hidden by the opaque /etc
        assert node is None and (hits[0].role, hits[0].kind) == ("deletes", "opaque directory")
        assert [(h.layer.number, h.role) for h in hits[1:]] == [(1, "shadowed")]
        return
    node, hits = tree.which("/etc/hostname")
    assert [(h.layer.number, h.role) for h in hits] == [(2, "provides"), (1, "shadowed")]
    node, hits = tree.which("/usr/share/doc/old.txt")
    assert node is None and [(h.layer.number, h.role) for h in hits] == [(2, "deletes"), (1, "shadowed")]
    node, hits = tree.which("/etc")
    assert [(h.layer.number, h.role) for h in hits] == [(2, "provides"), (1, "merged")]
    out = cli("which", REF, "/etc/hostname").stdout.splitlines()
    assert out[0] == "/etc/hostname: file from layer 2"
    assert out[1].split()[:4] == ["layer", "2", "provides", "file"] and "umoci repack" in out[1]
    assert out[2].split()[:3] == ["layer", "1", "shadowed"]
    r = cli("which", REF, "/opt/app/sub/x", check=False)
    assert r.returncode == 1 and r.stdout.splitlines()[0] == "/opt/app/sub/x: not in test:v2"
    assert "deletes" in r.stdout.splitlines()[1]


def test_layers_counts_and_wasted_bytes(loaded: ImageTree, cli) -> None:
    stats = loaded.layer_stats()
    assert [s.layer.number for s in stats] == [1, 2]
    base, top = stats
    assert base.added > 40 and base.changed == 0 and base.deleted == 0
    # layer 2: hostname, config, /home/user (dir -> file), /bin/true (symlink -> file) changed;
    # old.txt, gone, /opt/app/sub deleted
    assert (top.added, top.changed, top.deleted) == (0, 4, 3)
    # bytes of layer 1 the final image no longer shows: hostname 5, .profile 11, config 10, sub/x 2,
    # old.txt 4, gone 5
    assert sorted(base.wasted_paths) == [("/etc/hostname", 5), ("/home/user/.profile", 11),
                                         ("/opt/app/config", 10), ("/opt/app/sub/x", 2),
                                         ("/usr/share/doc/old.txt", 4), ("/var/lib/data/gone", 5)]
    assert base.wasted == 37 and top.wasted == 0
    out = cli("layers", REF).stdout
    assert "Wasted: 37B (37 bytes)" in out and "umoci repack" in out


def test_export_equals_umoci_unpack(any_image: ImageTree, test_images: Any, cli, tmp_path: Path) -> None:
    require(skip_reason_root())
    tag = any_image.image.tags[0].tag
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{test_images.layout}:{tag}", bundle)
    tar = tmp_path / "rootfs.tar"
    cli("export", f"test:{tag}", "-o", tar)
    dest = tmp_path / "exported"
    dest.mkdir()
    subprocess.run(["tar", "-xpf", str(tar), "-C", str(dest), "--xattrs", "--xattrs-include=*", "--numeric-owner"],
                   check=True, capture_output=True)
    assert_same_tree(tree_snapshot(bundle / "rootfs", **ROOTFS), tree_snapshot(dest, **ROOTFS), ("umoci", "export"))
