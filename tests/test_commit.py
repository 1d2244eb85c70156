"""Commit and diff: --change instructions, diff of built uppers, and the round trip through a real mount.

The round trip mounts an image of the store (the kernel overlayfs over the store's layers into the
container's upper, with redirect_dir=on,index=on; or unionfs' FUSE mount when ``UNIONFS_TEST_IMPL=unionfs``
and its ``mount`` command exists), makes a scripted set of changes, commits the LIVE mount (which pauses it),
and checks the new image with umoci, the kernel overlayfs and skopeo.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.images import run
from support.mount import (
    kernel_overlay,
    require,
    skip_reason_fuse,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_tool,
    skip_reason_unionfs,
    unionfs_mount,
)
from support.tree import ROOTFS, Snapshot, assert_same_tree, tree_snapshot

from unionfs.errors import UsageError
from unionfs.image.commit import apply_changes, diff_trees, diff_upper, mount_options, new_config
from unionfs.layer import whiteout
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import ImageConfig
from unionfs.store.store import Store

REF = "test:v2"


# ---------------------------------------------------------------------------
# --change and the config
# ---------------------------------------------------------------------------

def test_apply_changes_like_docker_commit() -> None:
    base = {"Env": ["PATH=/bin", "A=1"], "Cmd": ["/bin/sh"], "Labels": {"x": "1"}}
    out = apply_changes(base, ['CMD ["/bin/echo", "hi"]', "ENTRYPOINT /init --flag", "ENV A=2 B=\"two words\"",
                               "LABEL y=2", "EXPOSE 80 53/udp", "WORKDIR /srv", "USER 1000:1000",
                               "VOLUME /data", "STOPSIGNAL SIGTERM", "ENV LEGACY some value"])
    assert out["Cmd"] == ["/bin/echo", "hi"]
    assert out["Entrypoint"] == ["/bin/sh", "-c", "/init --flag"]
    assert out["Env"] == ["PATH=/bin", "A=2", "B=two words", "LEGACY=some value"]
    assert out["Labels"] == {"x": "1", "y": "2"}
    assert out["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert (out["WorkingDir"], out["User"]) == ("/srv", "1000:1000")
    assert out["Volumes"] == {"/data": {}}
    assert base["Env"] == ["PATH=/bin", "A=1"]  # the input is not changed
    for bad in ("RUN echo", "CMD", "FROM x"):
        with pytest.raises(UsageError):
            apply_changes({}, [bad])


def test_new_config_appends_layer_and_history() -> None:
    base = ImageConfig.build({"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"]},
                              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
                              "history": [{"created_by": "base"}, {"created_by": "ENV", "empty_layer": True}],
                              "container_config": {"Cmd": ["x"]}})
    d = Digest.parse("sha256:" + "2" * 64)
    cfg = new_config(base, d, created="2020-01-01T00:00:00Z", created_by="unionfs commit c", message="msg",
                     author="me", changes=["CMD true"])
    assert cfg.diff_ids == [Digest.parse("sha256:" + "1" * 64), d]
    assert cfg.history[-1] == {"created": "2020-01-01T00:00:00Z", "created_by": "unionfs commit c",
                               "author": "me", "comment": "msg"}
    assert cfg.data["config"] == {"Env": ["A=1"], "Cmd": ["/bin/sh", "-c", "true"]}
    assert cfg.data["architecture"] == "amd64" and "container_config" not in cfg.data


# ---------------------------------------------------------------------------
# diff of uppers built in code
# ---------------------------------------------------------------------------

def _built(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower = tmp_path / "lower"
    for d in ("etc", "var/lib/gone", "opt/keep", "opq/a"):
        (lower / d).mkdir(parents=True)
    (lower / "etc/passwd").write_text("root\n")
    (lower / "etc/hosts").write_text("hosts\n")
    (lower / "var/lib/gone/f").write_text("f\n")
    (lower / "opq/a/x").write_text("x\n")
    (lower / "opq/b").write_text("b\n")
    (lower / "opt/keep/k").write_text("k\n")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/passwd").write_text("root\nuser\n")                    # changed
    (upper / "etc/new").write_text("new\n")                               # added
    fd = os.open(upper / "etc", os.O_DIRECTORY)
    try:
        whiteout.make_whiteout_at(fd, "hosts")                            # deleted file
    finally:
        os.close(fd)
    (upper / "var/lib").mkdir(parents=True)
    fd = os.open(upper / "var/lib", os.O_DIRECTORY)
    try:
        whiteout.make_whiteout_at(fd, "gone")                             # deleted directory
    finally:
        os.close(fd)
    (upper / "opq").mkdir()
    whiteout.set_opaque(upper / "opq")                                    # opaque: a and b deleted
    (upper / "opq/b").write_text("b2\n")                                  # ...b added back
    (upper / "newdir/sub").mkdir(parents=True)
    (upper / "newdir/sub/f").write_text("f\n")
    return tmp_path / "lower", upper, tmp_path


def test_diff_upper_lists_exactly_the_changes(tmp_path: Path) -> None:
    lower, upper, _ = _built(tmp_path)
    assert diff_upper(str(upper), [str(lower)]) == [
        ("C", "/etc"), ("D", "/etc/hosts"), ("A", "/etc/new"), ("C", "/etc/passwd"),
        ("A", "/newdir"), ("A", "/newdir/sub"), ("A", "/newdir/sub/f"),
        ("C", "/opq"), ("D", "/opq/a"), ("C", "/opq/b"),
        ("C", "/var"), ("C", "/var/lib"), ("D", "/var/lib/gone"),
    ]


def test_diff_trees_between_layer_stacks(tmp_path: Path) -> None:
    lower, upper, _ = _built(tmp_path)
    os.utime(lower / "opt/keep/k", (1, 1))
    changes = diff_trees([str(lower)], [str(lower), str(upper)])
    paths = {p: k for k, p in changes}
    assert paths["/etc/hosts"] == "D" and paths["/var/lib/gone"] == "D" and paths["/opq/a"] == "D"
    assert "/var/lib/gone/f" not in paths and "/opq/a/x" not in paths  # only the topmost deleted path
    assert paths["/etc/passwd"] == "C" and paths["/opq/b"] == "C"
    assert paths["/etc/new"] == "A" and paths["/newdir/sub/f"] == "A" and paths["/newdir"] == "A"
    assert "/opt/keep/k" not in paths and "/opt" not in paths  # untouched
    assert diff_trees([str(lower)], [str(lower)]) == []


# ---------------------------------------------------------------------------
# the round trip through a real mount
# ---------------------------------------------------------------------------

def _change_everything(mnt: Path) -> None:
    """The scripted changes; returns nothing, the expected diff is EXPECTED_DIFF."""
    (mnt / "srv/new").mkdir(parents=True)                                   # create
    (mnt / "srv/new/file.txt").write_text("created\n")
    with open(mnt / "opt/app/config", "a") as f:                            # modify
        f.write("more\n")
    os.chmod(mnt / "bin/suid-tool", 0o700)                                  # chmod
    os.chown(mnt / "etc/group", 1000, 1000)                                 # chown
    os.setxattr(mnt / "etc/passwd", "user.note", b"set in the mount")      # xattr
    os.unlink(mnt / "var/lib/data/keep")                                    # delete a lower file
    shutil.rmtree(mnt / ("d" * 200))                                         # delete a lower directory
    shutil.rmtree(mnt / "tmp")                                              # replace a directory by a file
    (mnt / "tmp").write_text("a file now\n")
    os.rename(mnt / "usr/share/doc", mnt / "usr/share/documentation")       # rename a lower directory
    (mnt / "usr/share/documentation/added").write_text("inside the renamed dir\n")
    os.link(mnt / "etc/passwd", mnt / "etc/passwd.link")                    # hardlink to a lower file


EXPECTED_DIFF = [
    ("C", "/bin"), ("C", "/bin/suid-tool"),
    ("D", "/" + "d" * 200),
    ("C", "/etc"), ("C", "/etc/group"), ("C", "/etc/passwd"), ("A", "/etc/passwd.link"),
    ("C", "/opt"), ("C", "/opt/app"), ("C", "/opt/app/config"),
    ("A", "/srv"), ("A", "/srv/new"), ("A", "/srv/new/file.txt"),
    ("C", "/tmp"),
    ("C", "/usr"), ("C", "/usr/share"), ("D", "/usr/share/doc"),
    ("A", "/usr/share/documentation"), ("A", "/usr/share/documentation/README"),
    ("A", "/usr/share/documentation/added"), ("A", "/usr/share/documentation/hard-a"),
    ("A", "/usr/share/documentation/hard-b"),
    ("C", "/var"), ("C", "/var/lib"), ("C", "/var/lib/data"), ("D", "/var/lib/data/keep"),
]


def _load_v2(test_images: Any, cli, tmp_path: Path) -> None:
    """Load test:v2 (umoci repack layers only: whiteouts, a directory replaced by a file)."""
    archive = tmp_path / "v2.tar"
    run("skopeo", "copy", "-q", f"oci:{test_images.layout}:v2", f"oci-archive:{archive}:{REF}")
    cli("load", "-i", archive)


def _mount_container(store: Store, name: str, mnt: Path, impl: str = "kernel"):  # type: ignore[no-untyped-def]
    """Mount container ``name`` of REF with the kernel overlayfs (redirect_dir=on,index=on) or unionfs."""
    plan = store.prepare_container(REF, name)
    lowers = [Path(p) for p in plan.lowers]
    if impl == "unionfs":
        require(skip_reason_fuse(), skip_reason_unionfs())
        return unionfs_mount(lowers, Path(plan.upper), Path(plan.work), mnt)
    return kernel_overlay(lowers, Path(plan.upper), Path(plan.work), mnt)


def assert_same_snapshot(got: Snapshot, want: Snapshot, what: str, mtimes: list[str]) -> None:
    """Compare two rootfs snapshots (``support.tree.ROOTFS``), naming every differing path with both values.

    mtimes are compared separately: their differences are appended to ``mtimes`` (see the round trip).
    """
    assert_same_tree(want.without("mtime_ns"), got.without("mtime_ns"), ("mounted", what),
                     f"{what} differs from the mounted tree")
    mtimes.extend(f"{what}: {p!r} mtime {got.nodes[p].mtime_ns} != {want.nodes[p].mtime_ns}"
                  for p in sorted(got.nodes) if got.nodes[p].mtime_ns != want.nodes[p].mtime_ns)


@pytest.mark.parametrize("impl", ["kernel", "unionfs"])
def test_commit_round_trip(impl: str, test_images: Any, cli, store_root: Path, tmp_path: Path) -> None:
    require(skip_reason_root(), skip_reason_kernel_overlay(), skip_reason_tool("umoci"), skip_reason_tool("skopeo"))
    _load_v2(test_images, cli, tmp_path)
    store = Store(store_root)
    mnt = tmp_path / "mnt"
    mtimes: list[str] = []
    with _mount_container(store, "c1", mnt, impl):
        _change_everything(mnt)
        before = tree_snapshot(mnt, **ROOTFS)
        store.set_container_mount("c1", str(mnt))
        assert [tuple(line.split(" ", 1)) for line in cli("diff", "c1").stdout.splitlines()] == EXPECTED_DIFF
        # a writer holds the mount: the pause (read-only remount) is refused and nothing is committed
        with open(mnt / "srv/new/file.txt", "a"):
            r = cli("commit", "c1", "test:busy", check=False)
        assert r.returncode == 1 and "cannot pause" in r.stderr
        assert "rw" in (mount_options(str(mnt)) or [])[:1]
        # commit the live mount: paused, packed, resumed (with the same mount options as before)
        options = mount_options(str(mnt))
        new_id = cli("commit", "c1", "test:committed", "-m", "round trip", "-c", "CMD [\"/bin/sh\"]").stdout.strip()
        assert mount_options(str(mnt)) == options, "the mount must be writable again, options unchanged"
        (mnt / "srv/after-commit").write_text("writable\n")
        os.unlink(mnt / "srv/after-commit")
    store.set_container_mount("c1", None)
    image = store.resolve("test:committed")
    assert str(image.id) == new_id
    assert len(image.manifest.layers) == 3
    assert image.config.data["config"]["Cmd"] == ["/bin/sh"]
    assert image.config.history[-1]["comment"] == "round trip"
    assert image.config.history[-1]["created_by"] == "unionfs commit c1"

    # (a) umoci unpack of the new image equals the mounted tree before the commit
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{store_root}:docker.io/library/test:committed", bundle)
    assert_same_snapshot(tree_snapshot(bundle / "rootfs", **ROOTFS), before, "umoci unpack", mtimes)

    # (b) the kernel overlayfs over the new image's layers shows the same tree
    layers = [Path(p) for p in store.ensure_layers(image)]
    with kernel_overlay(layers, None, None, tmp_path / "ro"):
        assert_same_snapshot(tree_snapshot(tmp_path / "ro", **ROOTFS), before, "the kernel overlay", mtimes)

    # (c) `unionfs save` of it loads with skopeo (and back into a fresh store)
    archive = tmp_path / "saved.tar"
    cli("save", "test:committed", "-o", archive)
    info = json.loads(run("skopeo", "inspect", f"docker-archive:{archive}"))
    assert len(info["Layers"]) == 3
    run("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'copy'}:x")
    run("umoci", "unpack", "--image", f"{tmp_path / 'copy'}:x", tmp_path / "bundle2")
    assert_same_snapshot(tree_snapshot(tmp_path / "bundle2" / "rootfs", **ROOTFS), before, "skopeo copy of save",
                         mtimes)

    # the image diff between base and committed image tells the same story (but renames are not
    # redirects there: the old path is deleted, the new path added, nothing else)
    lines = cli("diff", REF, "test:committed").stdout.splitlines()
    image_diff = {tuple(line.split(" ", 1)) for line in lines}
    assert ("D", "/usr/share/doc") in image_diff and ("A", "/usr/share/documentation/added") in image_diff
    assert {p for _, p in image_diff} <= {p for _, p in EXPECTED_DIFF}

    assert not mtimes, "\n".join(mtimes)


def test_commit_after_unmount_is_reproducible(test_images: Any, cli, store_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    require(skip_reason_root(), skip_reason_kernel_overlay())
    _load_v2(test_images, cli, tmp_path)
    store = Store(store_root)
    for name in ("r1", "r2"):
        with _mount_container(store, name, tmp_path / name):
            _change_everything(tmp_path / name)
    a = cli("commit", "r1", "test:r1", "--reproducible").stdout.strip()
    b = cli("commit", "r2", "test:r2", "--reproducible").stdout.strip()
    ia, ib = store.resolve("test:r1"), store.resolve("test:r2")
    # the same changes made at different times give byte-identical layers (the configs differ in created_by)
    assert ia.manifest.layers[-1].digest == ib.manifest.layers[-1].digest
    assert ia.config.diff_ids == ib.config.diff_ids
    assert ia.config.created == "1970-01-01T00:00:00Z" and a != b
    c = cli("commit", "r1", "test:r1z", "--compression", "zstd").stdout.strip()
    iz = store.resolve(c)
    assert iz.manifest.layers[-1].media_type.endswith("+zstd")
    assert iz.config.diff_ids[-1] != ia.config.diff_ids[-1]  # mtimes kept without --reproducible
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")
    d1 = cli("commit", "r1", "test:e1").stdout.strip()
    d2 = cli("commit", "r2", "test:e2").stdout.strip()
    assert store.resolve(d1).config.diff_ids[-1] == store.resolve(d2).config.diff_ids[-1]
    assert store.resolve(d1).config.created == "2001-09-09T01:46:40Z"


def test_commit_errors_are_one_line(cli) -> None:
    r = cli("commit", "nosuch", "x:y", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "unionfs: no such container: nosuch"
    r = cli("commit", "nosuch", "-c", "RUN x", check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
