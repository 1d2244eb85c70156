"""Crash safety and bounds of the store (docs/security.md): kill -9 at controlled points, hostile archives.

The kill tests run real ``python -m unionfs`` subprocesses and kill them when the test sees them inside the
window (a layer directory changing, a mount turning read-only): no test hooks in the code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import tarfile
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator

import pytest
from support.cli import cli_argv, run_cli
from support.mount import (
    bind_mount,
    mount_fstype,
    require,
    skip_reason_fuse,
    skip_reason_root,
    skip_reason_unionfs,
    unionfs_mount,
)

from unionfs.errors import MountedTreeError
from unionfs.fsops import remove_tree
from unionfs.image.commit import mount_options
from unionfs.store.store import Store

TIMEOUT = 120  # generous bound for any single command (it detects hangs, it measures nothing)


# --- archives built in code ---------------------------------------------------------------------
def layer_tar(dirs: int, files: int, tag: str = "") -> bytes:
    """An uncompressed layer tar: ``dirs`` directories of ``files`` small files each."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in range(dirs):
            ti = tarfile.TarInfo(f"d{d:03}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
            t.addfile(ti)
            for f in range(files):
                data = f"{tag}{d}/{f}\n".encode()
                ti = tarfile.TarInfo(f"d{d:03}/f{f:04}")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def docker_archive(dest: Path, images: list[tuple[list[bytes], list[str], bool]]) -> Path:
    """A docker-save archive of ``images``: (layer tars, RepoTags, corrupt DiffID?) each."""
    manifest = []
    with tarfile.open(dest, "w") as t:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for n, (layers, tags, bad) in enumerate(images):
            names, diff_ids = [], []
            for i, data in enumerate(layers):
                h = hashlib.sha256(data).hexdigest()
                names.append(f"{h}/layer.tar")
                add(names[-1], data)
                diff_ids.append("sha256:" + (("0" * 64) if bad and i == len(layers) - 1 else h))
            config = json.dumps({"architecture": "amd64", "os": "linux", "created": f"2020-01-0{n + 1}T00:00:00Z",
                                 "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
            cname = hashlib.sha256(config).hexdigest() + ".json"
            add(cname, config)
            manifest.append({"Config": cname, "RepoTags": tags, "Layers": names})
        add("manifest.json", json.dumps(manifest).encode())
    return dest


def count_entries(root: Path) -> int:
    return sum(len(d) + len(f) for _, d, f in os.walk(root))


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m unionfs --root ROOT ARGS`` running in the background."""
    return subprocess.Popen(cli_argv(*args, root=root), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen[str], hit: Callable[[], bool], sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to ``proc`` as soon as ``hit()`` is true; False when ``proc`` ended first."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if hit():
                proc.send_signal(sig)
                return True
        return False
    finally:
        if proc.poll() is None and sig == signal.SIGKILL:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


# --- item 6: a half-deleted or half-extracted layer is never trusted ----------------------------
DIRS, FILES = 60, 100  # 6,060 entries: deleting them takes long enough to be caught in the middle


def test_rmi_killed_while_deleting_a_layer_never_leaves_a_partial_layer(store_root: Path, tmp_path: Path) -> None:
    layer = layer_tar(DIRS, FILES)
    diff_id = hashlib.sha256(layer).hexdigest()
    archive = docker_archive(tmp_path / "a.tar", [([layer], ["big:1"], False)])
    layer_dir = store_root / "layers" / diff_id
    hits = 0
    for _ in range(5):
        run_cli("load", "-i", archive, root=store_root)
        assert count_entries(layer_dir) == DIRS * (FILES + 1)
        full_links = os.stat(layer_dir).st_nlink
        proc = start(store_root, "rmi", "big:1")

        def deleting() -> bool:
            try:
                return os.stat(layer_dir).st_nlink < full_links
            except FileNotFoundError:
                return True
        hits += kill_when(proc, deleting)
        # whatever the kill left, loading the image again gives the whole layer (never "already there")
        run_cli("load", "-i", archive, root=store_root)
        assert count_entries(layer_dir) == DIRS * (FILES + 1), "a partially deleted layer was reused"
        run_cli("rmi", "big:1", root=store_root)
    assert hits, "the kill never came while rmi ran"
    run_cli("prune", root=store_root)
    assert list((store_root / "tmp").iterdir()) == []
    assert list((store_root / "layers").iterdir()) == []


def test_load_killed_while_extracting_never_leaves_a_partial_layer(store_root: Path, tmp_path: Path) -> None:
    layer = layer_tar(DIRS, FILES, tag="x")
    layer_dir = store_root / "layers" / hashlib.sha256(layer).hexdigest()
    archive = docker_archive(tmp_path / "a.tar", [([layer], ["big:2"], False)])
    run_cli("images", root=store_root)
    proc = start(store_root, "load", "-i", str(archive))

    def extracting() -> bool:
        return any(p.name.startswith("layer-") and any(p.iterdir()) for p in (store_root / "tmp").iterdir())
    assert kill_when(proc, extracting), "load ended before the test saw it extract"
    assert not layer_dir.exists()
    assert "big" not in run_cli("images", root=store_root).stdout
    run_cli("load", "-i", archive, root=store_root)
    assert count_entries(layer_dir) == DIRS * (FILES + 1)
    run_cli("prune", root=store_root)
    assert list((store_root / "tmp").iterdir()) == []


# --- item 7: all or nothing includes the tags ---------------------------------------------------
def test_failed_multi_image_load_leaves_the_tags_unchanged(store_root: Path, tmp_path: Path) -> None:
    old = docker_archive(tmp_path / "old.tar", [([layer_tar(1, 3, "old")], ["app:1"], False)])
    run_cli("load", "-i", old, root=store_root)
    index_before = (store_root / "index.json").read_bytes()
    old_id = run_cli("images", "-q", "--no-trunc", root=store_root).stdout.strip()
    bad = docker_archive(tmp_path / "bad.tar", [([layer_tar(1, 3, "new")], ["app:1"], False),
                                               ([layer_tar(1, 3, "bad")], ["other:1"], True)])
    r = run_cli("load", "-i", bad, root=store_root, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (store_root / "index.json").read_bytes() == index_before
    assert run_cli("images", "-q", "--no-trunc", root=store_root).stdout.strip() == old_id
    inspect = json.loads(run_cli("inspect", "app:1", root=store_root).stdout)[0]
    assert inspect["Id"] == old_id
    for d in inspect["Layers"]:  # every blob the tag needs is there
        assert (store_root / "blobs" / "sha256" / d["Digest"].split(":")[1]).is_file()


# --- item 9: nothing deletes through a mount ----------------------------------------------------
def test_remove_tree_refuses_a_tree_with_a_mount_inside(tmp_path: Path) -> None:
    require(skip_reason_root())
    src = tmp_path / "data"
    src.mkdir()
    (src / "precious").write_text("keep\n")
    tree = tmp_path / "tree"
    (tree / "a" / "mnt").mkdir(parents=True)
    (tree / "a" / "junk").write_text("x")
    # a bind mount of the same filesystem: same st_dev, so only the mount table tells
    with bind_mount(src, tree / "a" / "mnt"):
        with pytest.raises(MountedTreeError, match="mnt"):
            remove_tree(tree)
        assert (src / "precious").read_text() == "keep\n" and (tree / "a" / "junk").exists()
    remove_tree(tree)
    assert not tree.exists() and (src / "precious").exists()


def test_remove_tree_handles_deep_and_readonly_trees(tmp_path: Path) -> None:
    tree = tmp_path / "deep"
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("deep", dir_fd=fd)
    for _ in range(1500):  # deeper than the recursion limit and PATH_MAX
        nfd = os.open("deep" if _ == 0 else "d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
        os.mkdir("d", 0o555, dir_fd=fd)
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o400, dir_fd=fd), "w") as f:
            f.write("x")
        os.symlink("/", "s", dir_fd=fd)
        os.chmod(fd, 0o555)
    os.close(fd)
    remove_tree(tree)
    assert not tree.exists()


def test_prune_detaches_an_orphaned_build_mount_and_deletes_nothing_through_it(store_root: Path,
                                                                               tmp_path: Path) -> None:
    require(skip_reason_root(), skip_reason_fuse(), skip_reason_unionfs())
    lower = tmp_path / "lower"
    lower.mkdir()
    for i in range(20):
        (lower / f"file{i}").write_text(f"lower data {i}\n")
    run_cli("images", root=store_root)  # makes the store
    ws = store_root / "tmp" / "build-x"
    mnt = ws / "mnt"
    # what a build killed in the middle of a RUN step leaves: its workspace and a live mount in it
    with unionfs_mount([lower], ws / "upper", ws / "work", mnt, strict_unmount=False) as m:
        assert (mnt / "file0").read_text() == "lower data 0\n"
        m.release_root()  # the harness's descriptor would pin the mount past prune's (lazy) unmount
        r = run_cli("prune", root=store_root, check=False)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert f"Unmounted: {mnt}" in r.stdout, r.stdout
        assert mount_fstype(mnt) is None
    assert sorted(p.name for p in lower.iterdir()) == sorted(f"file{i}" for i in range(20))
    assert (lower / "file7").read_text() == "lower data 7\n"
    assert not ws.exists()


def test_prune_skips_a_foreign_mount_under_tmp(store_root: Path, tmp_path: Path) -> None:
    require(skip_reason_root())
    src = tmp_path / "data"
    src.mkdir()
    (src / "precious").write_text("keep\n")
    run_cli("images", root=store_root)
    mp = store_root / "tmp" / "odd" / "mnt"
    mp.mkdir(parents=True)
    with bind_mount(src, mp):
        r = run_cli("prune", root=store_root, check=False)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert f"Skipped: {mp}" in r.stdout
        assert (src / "precious").read_text() == "keep\n"
    run_cli("prune", root=store_root)
    assert list((store_root / "tmp").iterdir()) == []


# --- item 8: a commit killed while it pauses a mount never leaves it read-only -------------------
def _first_option(mnt: Path) -> str | None:
    opts = mount_options(str(mnt))
    return opts[0] if opts else None


@pytest.fixture
def mounted_container(store_root: Path, tmp_path: Path) -> Iterator[Path]:
    """Container c1 of app:1 mounted (unionfs) with a few thousand files in its upper (a commit takes a while)."""
    require(skip_reason_root(), skip_reason_fuse(), skip_reason_unionfs())
    run_cli("load", "-i", docker_archive(tmp_path / "a.tar", [([layer_tar(2, 5)], ["app:1"], False)]),
            root=store_root)
    store = Store(store_root)
    plan = store.prepare_container("app:1", "c1")
    mnt = tmp_path / "mnt"
    with unionfs_mount([Path(p) for p in plan.lowers], Path(plan.upper), Path(plan.work), mnt) as m:
        store.set_container_mount("c1", str(mnt))
        for d in range(30):
            (mnt / f"new{d}").mkdir()
            for f in range(100):
                (mnt / f"new{d}" / f"f{f}").write_bytes(os.urandom(512))
        yield mnt
        m.release_root()


def _ps_row(root: Path, name: str) -> list[str]:
    out = run_cli("ps", root=root).stdout.splitlines()
    assert out[0].split() == ["NAME", "IMAGE", "CREATED", "MOUNTPOINT", "STATUS"]
    return next(line.split() for line in out[1:] if line.split()[0] == name)


def test_commit_killed_while_paused_is_undone_by_the_next_command(mounted_container: Path,
                                                                   store_root: Path) -> None:
    mnt = mounted_container
    assert _first_option(mnt) == "rw"
    for _ in range(5):
        proc = start(store_root, "commit", "c1", "snap:1")
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and _first_option(mnt) != "ro" and time.monotonic() < deadline:
            pass
        if proc.poll() is None:
            break
        proc.communicate()
    else:
        pytest.fail("the commit never was seen pausing the mount")
    try:
        proc.send_signal(signal.SIGSTOP)  # hold it inside the pause: ps must say so
        assert _first_option(mnt) == "ro"
        assert _ps_row(store_root, "c1")[-1] == "paused"
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
    assert _first_option(mnt) == "ro", "the kill left the mount paused (what the next command must undo)"
    row = _ps_row(store_root, "c1")
    assert row[-1] == "mounted" and row[-2] == str(mnt)  # (CREATED, an age, is several words)
    assert _first_option(mnt) == "rw"
    (mnt / "after-kill").write_text("writable again\n")
    assert "paused" not in json.loads((store_root / "containers" / "c1" / "state.json").read_text())
    # and a commit afterwards resumes the mount as it should
    run_cli("commit", "c1", "snap:2", root=store_root)
    assert _first_option(mnt) == "rw"


def test_commit_terminated_while_paused_resumes_the_mount_itself(mounted_container: Path,
                                                                  store_root: Path) -> None:
    mnt = mounted_container
    for _ in range(5):
        proc = start(store_root, "commit", "c1", "snap:1")
        if kill_when(proc, lambda: _first_option(mnt) == "ro", signal.SIGTERM):
            break
    else:
        pytest.fail("the commit never was seen pausing the mount")
    assert proc.returncode != 0
    assert _first_option(mnt) == "rw", "SIGTERM left the mount read-only"
    assert "paused" not in json.loads((store_root / "containers" / "c1" / "state.json").read_text())
    assert "snap" not in run_cli("images", root=store_root).stdout


# --- item 14: the outer archive is walked with bounds ---------------------------------------------
def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _load_bounded(root: Path, archive: Path) -> subprocess.CompletedProcess[str]:
    """``load -i archive`` with 1 GiB of address space; a hang fails the test (TimeoutExpired)."""
    return run_cli("load", "-i", archive, root=root, check=False, timeout=60, preexec_fn=_limited)


def _header(name: str, size_field: bytes | None = None, size: int = 0) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 1_600_000_000
    buf = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    if size_field is not None:
        buf[124:136] = size_field
        buf[148:156] = b" " * 8
        buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf)


def test_load_refuses_a_negative_member_size(store_root: Path, tmp_path: Path) -> None:
    # x at 0, y at 1024, then "a" (header 2048, data 2560) whose size -1536 points back at y: tarfile
    # without the CVE-2025-8194 fix reads y, a, y, a... forever, keeping every TarInfo
    data = _header("x", size=1) + b"x".ljust(512, b"\0") + _header("y", size=1) + b"y".ljust(512, b"\0")
    data += _header("a", tarfile.itn(-1536, 12, tarfile.GNU_FORMAT)) + b"\0" * 1024
    archive = tmp_path / "negative.tar"
    archive.write_bytes(data)
    r = _load_bounded(store_root, archive)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "invalid size" in r.stderr and "Traceback" not in r.stderr


def test_load_refuses_an_archive_of_too_many_members(store_root: Path, tmp_path: Path) -> None:
    from unionfs.store.archive import MAX_ARCHIVE_MEMBERS

    raw = b"".join(_header(f"junk/{i:07}") for i in range(MAX_ARCHIVE_MEMBERS + 10)) + b"\0" * 1024
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(gzip.compress(raw, 1))
    r = _load_bounded(store_root, archive)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"more than {MAX_ARCHIVE_MEMBERS} members" in r.stderr


# --- item 15: import applies the bound while it streams -------------------------------------------
def test_import_stops_reading_a_bomb_at_the_bound(store_root: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "bomb.tar.gz"
    os.mkfifo(fifo)
    env = dict(os.environ, UNIONFS_MAX_LAYER_SIZE=str(1 << 20))
    proc = subprocess.Popen(cli_argv("import", fifo, "bomb:1", root=store_root), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fed = [0]
    cap = 512 << 20

    def feed() -> None:  # a gzip stream of one huge file of zeros, produced as fast as it is read
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)
        zero = bytes(1 << 20)
        try:
            with open(fifo, "wb") as f:
                f.write(comp.compress(_header("big", size=100 << 30)))
                while fed[0] < cap:
                    f.write(comp.compress(zero))
                    fed[0] += len(zero)
                f.write(comp.flush())
        except BrokenPipeError:
            pass
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    writer.join(TIMEOUT)
    assert proc.returncode == 1 and "1048576 bytes" in err and len(err.strip().splitlines()) == 1, err
    assert fed[0] < cap // 2, f"import read {fed[0]} bytes (uncompressed) of a bomb bounded at 1 MiB"
    assert list((store_root / "tmp").iterdir()) == []
