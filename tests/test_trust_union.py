"""The union under stress (docs/security.md): a listing is all or an error (never silently empty) under the daemon's
descriptor limit, a copy-up that fails leaves no staging file behind, and an opaque mark on a layer's root is
ignored by the mount, the tree tools and the kernel alike.

Real parts only: the unionfs mount through its CLI (both daemons), the kernel overlayfs as oracle, a small
tmpfs for the upper, the store's own layer unpacker, no mocks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
from pathlib import Path
from typing import Iterator

import pytest
from support.layers import Dir, File, build_layers
from support.mount import (
    DAEMONS,
    kernel_overlay,
    private_tmpdir,
    require,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_unionfs,
    tmpfs_mount,
    unionfs_mount,
)
from support.tar import build, directory, file, opaque
from support.tree import tree_snapshot

from unionfs.image.tree import ImageTree
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_CONFIG, OCI_LAYER, Descriptor, Manifest
from unionfs.oci.reference import Reference
from unionfs.store.store import Store
from unionfs.union.view import Union


def _require_mount() -> None:
    require(skip_reason_root(), skip_reason_fuse(), skip_reason_unionfs())


# ---------------------------------------------------------------------------
# item 10: listings under the daemon's descriptor limit
# ---------------------------------------------------------------------------

N = 300


def _spread(dirname: str, layer: int, layers: int = 3) -> list[File]:
    """The files of ``dirname`` that live in ``layer``: f0..f299 spread over the layers."""
    return [File(f"{dirname}/f{i}", b"") for i in range(N) if i % layers == layer]


def _set_nofile(pids: list[int], limit: int | None) -> None:
    """Set the soft RLIMIT_NOFILE of ``pids`` to ``limit`` (None: back to their hard limit)."""
    for pid in pids:
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard if limit is None else limit, hard))


@pytest.mark.parametrize("daemon", list(DAEMONS))
def test_listing_under_fd_exhaustion_is_whole_or_an_error(daemon: str) -> None:
    """The daemon at its RLIMIT_NOFILE (every descriptor taken by files open through the mount): a listing
    gives all 300 names (the spare descriptor) or, when even that cannot help, fails with EMFILE; it is never
    empty or partial, and a later listing (descriptors free again) is whole (nothing wrong was cached by the
    daemon nor by the kernel). Before the fix both listings came back empty, and stayed empty."""
    _require_mount()
    want = sorted(f"f{i}" for i in range(N))
    with private_tmpdir("fdlimit") as tmp:
        lowers = build_layers(tmp, [[Dir("a"), Dir("b"), *_spread("a", k), *_spread("b", k)] for k in range(3)])
        mnt = tmp / "mnt"
        with unionfs_mount(lowers, tmp / "up", tmp / "work", mnt, DAEMONS[daemon]) as m:
            assert m.pids, "no daemon pid found"
            held: list[int] = []
            try:
                _set_nofile(m.pids, 64)
                with m.watchdog(120, "opening files up to the daemon's limit"):
                    for i in range(N):
                        try:
                            held.append(os.open(mnt / "a" / f"f{i}", os.O_RDONLY))
                        except OSError as e:
                            assert e.errno in (errno.EMFILE, errno.ENFILE), e
                            break
                assert len(held) < N, "the daemon never ran out of descriptors"
                # at the limit: the spare descriptor lets the listing through
                with m.watchdog(120, "listing at the limit"):
                    assert sorted(os.listdir(mnt / "a")) == want
                # a limit below every descriptor number: even the spare cannot help; an error, never a short list
                _set_nofile(m.pids, 1)
                with m.watchdog(120, "listing over the limit"):
                    try:
                        got = sorted(os.listdir(mnt / "b"))
                    except OSError as e:
                        assert e.errno in (errno.EMFILE, errno.ENFILE), e
                    else:
                        assert got == want
            finally:
                for fd in held:
                    os.close(fd)
                _set_nofile(m.pids, None)
            with m.watchdog(120, "listing after the limit"):
                assert sorted(os.listdir(mnt / "b")) == want
                assert sorted(os.listdir(mnt / "a")) == want
                assert sorted(os.listdir(mnt)) == ["a", "b"]


@contextlib.contextmanager
def as_user(uid: int) -> Iterator[None]:
    """Run the body with effective uid ``uid`` (root's DAC override off), root again afterwards."""
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_layer_dir_fails_the_listing() -> None:
    """:meth:`Union.listdir` (the daemons, treeview and rmdir's emptiness check all read through it): a layer
    directory that cannot be read (here EACCES: mode 000, read as an unprivileged user) fails the listing
    with that errno; it used to be logged and skipped (a silently shorter listing, and
    an rmdir that took the directory for empty). A layer that merely lacks the directory is skipped."""
    require(skip_reason_root())
    with private_tmpdir("eacces") as tmp:
        os.chmod(tmp, 0o755)
        layers = build_layers(tmp, [[Dir("d"), File("d/x0", b"")], [Dir("d"), File("d/x1", b"")], [Dir("e")]])
        os.chmod(layers[0] / "d", 0)

        def probe() -> object:
            with as_user(65534):
                u = Union([str(p) for p in layers], cache=True)
                node = u.lookup("/d")
                try:
                    return sorted(n.path for n in u.listdir(node))
                except OSError as e:
                    return errno.errorcode[e.errno or 0]

        assert probe() == "EACCES"
        os.chmod(layers[0] / "d", 0o755)
        assert probe() == ["/d/x0", "/d/x1"]


# ---------------------------------------------------------------------------
# item 11: a failed copy-up gives its space back at once
# ---------------------------------------------------------------------------

def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("daemon", list(DAEMONS))
@pytest.mark.parametrize("op", ["append", "chmod", "rename-dir"])
def test_failed_copy_up_leaves_no_staging(daemon: str, op: str) -> None:
    """An upper on a 4 MiB tmpfs, a lower file of 8 MiB: its copy-up (append; chmod, which copies it up
    without its data, then append, which copies the data up; or the deep copy of a renamed lower directory,
    whose 5 MiB of files under the metadata-only size are copied with their data) fails with ENOSPC, the tmpfs
    is as empty as before (the staging copy was removed at once: it used to stay in WORK/unionfs/tmp until
    remount), and a small copy-up then works."""
    _require_mount()
    with private_tmpdir("enospc") as tmp:
        big = os.urandom(1 << 20) * 8
        smalls = [File(f"d/s{i}", os.urandom(60 << 10)) for i in range(85)]
        lowers = build_layers(tmp, [[File("small", b"small\n"), Dir("d"), File("d/big", big), *smalls]])
        with tmpfs_mount(tmp / "fs", "4m"):
            fs = tmp / "fs"
            mnt = tmp / "mnt"
            before = _used(fs)
            with unionfs_mount(lowers, fs / "up", fs / "work", mnt, DAEMONS[daemon]) as m:
                with m.watchdog(120, f"{op} of a big lower file"):
                    with pytest.raises(OSError) as err:
                        if op == "append":
                            with open(mnt / "d" / "big", "ab") as f:
                                f.write(b"+")
                        elif op == "chmod":
                            os.chmod(mnt / "d" / "big", 0o600)
                            with open(mnt / "d" / "big", "ab") as f:
                                f.write(b"+")
                        else:
                            os.rename(mnt / "d", mnt / "d2")
                    assert err.value.errno == errno.ENOSPC
                    staging = list((fs / "work" / "unionfs" / "tmp").iterdir())
                    assert staging == [], f"staging left behind: {staging}"
                    assert _used(fs) - before < 256 << 10, f"{_used(fs) - before} bytes not given back"
                    os.chmod(mnt / "small", 0o600)
                    with open(mnt / "small", "ab") as f:
                        f.write(b"more\n")
                    assert (mnt / "small").read_bytes() == b"small\nmore\n"
                    assert (mnt / "d" / "big").read_bytes() == big  # the lower file still shows, whole
                    assert sorted(os.listdir(mnt)) == ["d", "small"]


# ---------------------------------------------------------------------------
# item 21: an opaque marker at a layer's root
# ---------------------------------------------------------------------------

def _store_image(store: Store, layers: list[bytes], ref: str) -> ImageTree:
    """Store an image of the uncompressed layer tars ``layers`` (base first) under ``ref``: the store's own
    unpacker extracts them. Returns its tree."""
    descs = []
    for blob in layers:
        descs.append(Descriptor(OCI_LAYER, store.put_blob_bytes(blob), len(blob)))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [str(Digest.of_bytes(b)) for b in layers]}},
                        sort_keys=True).encode()
    manifest = Manifest.build(Descriptor(OCI_CONFIG, Digest.of_bytes(config), len(config)), descs)
    image = store.store_image(manifest, config, [Reference.parse(ref)])
    return ImageTree(store, image)


def _walk(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> file content (None for a directory)."""
    return {p: n.content for p, n in tree_snapshot(root, contents=True, root_entry=False).nodes.items()}


def _tree_walk(tree: ImageTree) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for node in tree.find("/"):
        if node.path == "/":
            continue
        if node.is_dir:
            out[node.path.lstrip("/")] = None
        else:
            with tree.open_file(node.path) as f:
                out[node.path.lstrip("/")] = f.read()
    return out


def test_root_opaque_marker_is_ignored_everywhere(tmp_path: Path) -> None:
    """A top layer with ``./.wh..wh..opq`` at its root over a base layer: the kernel overlayfs over the
    store's extracted layers shows the base layer's files (it never applies an opaque mark on a layer's
    root, and docker's overlay2 / containerd's overlayfs snapshotter mount exactly that); the unionfs mount
    (both daemons) and the tree tools (ls, find, cat) must show the same. Before the fix both hid the base
    layer entirely. A directory's own marker below the root still works (``etc``)."""
    require(skip_reason_root(), skip_reason_fuse(), skip_reason_unionfs(), skip_reason_kernel_overlay())
    base = build([directory("etc"), file("etc/passwd", b"root:x:0:0\n"), file("etc/old", b"old\n"),
                  file("base-only", b"base\n"), directory("usr"), file("usr/tool", b"tool\n")])
    top = build([opaque(""), file("top-only", b"top\n"), directory("etc"), opaque("etc"),
                 file("etc/passwd", b"root:x:0:0:new\n")])
    tree = _store_image(Store(tmp_path / "store"), [base, top], "rootopq:1")
    lowers = [Path(p) for p in tree.lowers]
    expect = {"base-only": b"base\n", "top-only": b"top\n", "etc": None, "etc/passwd": b"root:x:0:0:new\n",
              "usr": None, "usr/tool": b"tool\n"}
    with private_tmpdir("rootopq") as tmp:
        with kernel_overlay(lowers, None, None, tmp / "kernel"):
            kernel = _walk(tmp / "kernel")
        assert kernel == expect, "the kernel oracle changed its mind"
        for daemon, extra in DAEMONS.items():
            with unionfs_mount(lowers, None, None, tmp / f"u-{daemon}", extra):
                assert _walk(tmp / f"u-{daemon}") == kernel, daemon
            with unionfs_mount(lowers, tmp / f"up-{daemon}", tmp / f"wk-{daemon}", tmp / f"w-{daemon}", extra):
                assert _walk(tmp / f"w-{daemon}") == kernel, f"{daemon}, with an upper"
    assert _tree_walk(tree) == kernel
    (listing,) = list(tree.ls("/"))
    assert [n.path for n in listing[1]] == ["/base-only", "/etc", "/top-only", "/usr"]
