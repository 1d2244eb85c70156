"""Paths inside an image's rootfs (docs/security.md): ``rootpath.resolve_in_root`` against the kernel's own
``openat2(RESOLVE_IN_ROOT)`` on random trees of links, its corner cases, and a build over a hostile base image
(a symlink to a host directory reached through ``/missing/..`` in WorkingDir) that must write only into the
image."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest
from support.tar import docker_archive, image_config, sha_of

from unionfs.errors import SymlinkLoopError
from unionfs.rootpath import MAX_SYMLINKS, clean, resolve_in_root

# ------------------------------------------------------------------------------------------- the kernel oracle
_libc = ctypes.CDLL(None, use_errno=True)
SYS_openat2 = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine)
RESOLVE_IN_ROOT = 0x10
O_PATH = 0o10000000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def kernel_resolve(root_fd: int, path: str) -> str:
    """The path the kernel opens for ``path`` chrooted at ``root_fd`` (openat2 RESOLVE_IN_ROOT, following the
    last link); OSError as the kernel reports it."""
    how = _OpenHow(O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT)
    fd = _libc.syscall(SYS_openat2, root_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _have_openat2() -> bool:
    if SYS_openat2 is None:
        return False
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        kernel_resolve(fd, ".")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- corner cases
def test_absolute_link_to_a_host_path_stays_inside(tmp_path: Path) -> None:
    host = tmp_path / "hostdir"
    host.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(host), root / "evil")
    r = str(root)
    assert resolve_in_root(r, "/evil/hello.txt") == r + str(host) + "/hello.txt"


def test_dotdot_after_a_missing_component_is_resolved_again(tmp_path: Path) -> None:
    """The attack: ``/nonexistent/../evil`` must follow evil inside the root (before the fix the
    rest after a missing component was appended literally, leaving ``evil`` for the host to follow)."""
    host = tmp_path / "hostdir"
    host.mkdir()
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    os.symlink(str(host), root / "evil")
    os.symlink("/real", root / "rel")
    r = str(root)
    inside_host = r + str(host)
    assert resolve_in_root(r, "/nonexistent/../evil") == inside_host
    assert resolve_in_root(r, "/nonexistent/../evil/hello.txt") == inside_host + "/hello.txt"
    assert resolve_in_root(r, "/a/b/c/../../../evil/x") == inside_host + "/x"
    assert resolve_in_root(r, "/nonexistent/../rel/x") == f"{r}/real/x"
    assert resolve_in_root(r, "/missing/../../../..") == r
    assert resolve_in_root(r, "/missing/sub") == f"{r}/missing/sub"  # still a place a caller can create
    (root / "file").write_text("x")
    assert resolve_in_root(r, "/file/x/../../evil") == inside_host  # below a non-directory: lexical too


def test_chains_of_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d/e").mkdir(parents=True)
    os.symlink("b", root / "a")                # relative
    os.symlink("/c", root / "b")               # absolute, to another link
    os.symlink("../../../d/e", root / "c")     # relative, climbing above the root
    os.symlink("/d/e/../../a", root / "d/e/back")
    r = str(root)
    assert resolve_in_root(r, "/a/f") == f"{r}/d/e/f"
    assert resolve_in_root(r, "a") == f"{r}/d/e"
    assert resolve_in_root(r, "/a", follow_last=False) == f"{r}/a"
    assert resolve_in_root(r, "/d/e/back/g") == f"{r}/d/e/g"


def test_link_loops_are_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("loop", root / "loop")
    os.symlink("/ping", root / "pong")
    os.symlink("pong/x", root / "ping")
    for path in ("/loop/x", "/ping", "/missing/../pong"):
        with pytest.raises(SymlinkLoopError) as ei:
            resolve_in_root(str(root), path)
        assert ei.value.errno == errno.ELOOP and isinstance(ei.value, OSError)
        msg = str(ei.value)
        assert path in msg and "symbolic links" in msg and "\n" not in msg


def test_many_links_in_a_row_within_the_bound(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "end").mkdir(parents=True)
    os.symlink("end", root / f"l{MAX_SYMLINKS}")
    for i in range(MAX_SYMLINKS - 1, 0, -1):
        os.symlink(f"l{i + 1}", root / f"l{i}")
    assert resolve_in_root(str(root), "/l1/x") == f"{root}/end/x"  # exactly 40 links: allowed, as in Linux
    os.symlink("l1", root / "l0")
    with pytest.raises(SymlinkLoopError):
        resolve_in_root(str(root), "/l0/x")


def test_clean_is_dockers_lexical_clean() -> None:
    assert clean("/nonexistent/../evil") == "/evil"
    assert clean("rel/./x/") == "/rel/x"
    assert clean("../../..") == "/"
    assert clean("//a//b/.") == "/a/b"
    assert clean("") == "/"


# ------------------------------------------------------------------------------------------- against the kernel
NAMES = ("a", "b", "c", "d")


def _random_tree(root: Path, rng: random.Random) -> None:
    """Directories and symlinks (absolute, relative, climbing, dangling) two levels deep."""
    def fill(d: Path, depth: int) -> None:
        for name in NAMES:
            roll = rng.random()
            if roll < 0.35 and depth < 2:
                (d / name).mkdir()
                fill(d / name, depth + 1)
            elif roll < 0.75:
                parts = [rng.choice(NAMES + ("..", "..", ".", "missing")) for _ in range(rng.randint(1, 4))]
                target = ("/" if rng.random() < 0.4 else "") + "/".join(parts)
                os.symlink(target, d / name)
            elif roll < 0.85:
                (d / name).write_text("file")
    root.mkdir()
    fill(root, 0)


def _mkdirs_below(root: str, path: str) -> list[str] | None:
    """Create the missing directories of ``path`` (below ``root``); the ones created, or None when a
    non-directory is in the way."""
    made: list[str] = []
    rel = os.path.relpath(path, root)
    cur = root
    for part in ([] if rel == "." else rel.split("/")):
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            made.append(cur)
            continue
        if not stat.S_ISDIR(st.st_mode):
            return None if cur != path else made
    return made


@pytest.mark.skipif(not _have_openat2(), reason="needs openat2(2) (Linux 5.6) on x86_64/aarch64")
def test_resolve_in_root_agrees_with_openat2_resolve_in_root(tmp_path: Path) -> None:
    """On random trees of links: where the kernel resolves a path, we resolve it to the same place; where
    a directory is missing, we name the place the kernel resolves to once the missing directories exist
    (filepath-securejoin's contract); where the kernel finds a loop, we raise SymlinkLoopError."""
    rng = random.Random(12)
    compared = created = loops = 0
    for t in range(40):
        root = tmp_path / f"t{t}"
        _random_tree(root, rng)
        r = str(root)
        rfd = os.open(r, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(60):
                parts = [rng.choice(NAMES + ("..", ".", "missing")) for _ in range(rng.randint(1, 6))]
                path = ("/" if rng.random() < 0.5 else "") + "/".join(parts)
                try:
                    ours: str | None = resolve_in_root(r, path)
                except SymlinkLoopError:
                    ours = None
                try:
                    theirs = kernel_resolve(rfd, path)
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        assert ours is None, (path, ours)
                        loops += 1
                        continue
                    if ours is None:  # a loop reached through a missing directory or a file (``missing/..``):
                        assert e.errno in (errno.ENOENT, errno.ENOTDIR), (path, e)  # the kernel stops there
                        continue
                    if e.errno != errno.ENOENT:
                        continue  # ENOTDIR: a file in the middle; we stay lexical (and inside), nothing to check
                    made = _mkdirs_below(r, ours)
                    if made is None:
                        continue
                    try:
                        theirs = kernel_resolve(rfd, path)
                    except OSError as e2:
                        # the missing part may itself contain a name the kernel now resolves differently
                        assert e2.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP), (path, e2)
                        theirs = None
                    finally:
                        for d in reversed(made):
                            os.rmdir(d)
                    if theirs is None:
                        continue
                    assert theirs == ours, (path, theirs, ours)
                    created += 1
                    continue
                assert ours == theirs, (path, theirs, ours)
                compared += 1
        finally:
            os.close(rfd)
    assert compared > 200 and created > 50 and loops > 0, (compared, created, loops)


# ------------------------------------------------------------------------------------------- a hostile base image
def _hostile_rootfs_tar(dest: Path, host_dir: Path) -> Path:
    """A rootfs tarball whose /evil is a symlink to ``host_dir`` (an absolute host path)."""
    with tarfile.open(dest, "w") as tf:
        for name in ("etc", "tmp"):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        ti = tarfile.TarInfo("evil")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(host_dir)
        tf.addfile(ti)
    return dest


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.parametrize("dest", [".", "./", "hello.txt", "sub/", "../evil/x/"])
def test_copy_over_a_hostile_base_writes_only_into_the_image(tmp_path: Path, store_root: Path,
                                                             dest: str) -> None:
    from support.busybox import leftovers, require
    from support.cli import run_cli

    from unionfs.store.store import Store
    from unionfs.union.view import Union

    require()
    host = tmp_path / "hostdir"
    host.mkdir()
    tar = _hostile_rootfs_tar(tmp_path / "hostile.tar", host).read_bytes()
    config = image_config([sha_of(tar)], config={"WorkingDir": "/nonexistent/../evil"})  # as an attacker writes it
    run_cli("load", "-i", docker_archive(tmp_path / "hostile-image.tar", [(tar, tar)], config=config,
                                         repo_tags=("hostile:1",)), root=store_root)
    assert Store(store_root).resolve("hostile:1").config.data["config"]["WorkingDir"] == "/nonexistent/../evil"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text(f"FROM hostile:1\nCOPY hello.txt {dest}\n")
    try:
        run_cli("build", "-t", "out:1", ctx, root=store_root)
        assert os.listdir(host) == []
        store = Store(store_root)
        layers = Union([str(p) for p in store.ensure_layers(store.resolve("out:1"))])
        where = {".": "hello.txt", "./": "hello.txt", "hello.txt": "hello.txt", "sub/": "sub/hello.txt",
                 "../evil/x/": "x/hello.txt"}[dest]
        node = layers.try_lookup(f"{host}/{where}")  # evil followed inside the image
        assert node is not None and stat.S_ISREG(node.st.st_mode), where
    finally:
        assert leftovers(store_root) == []
    assert os.listdir(host) == []
