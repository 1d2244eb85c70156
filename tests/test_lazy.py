"""Lazy mounts of eStargz images (issue 18, points 2 and 3): ``unionfs mount --lazy REF MNT`` against a real
registry (Debian's docker-registry) behind a counting, lying proxy (``FaultProxy``), served by a real FUSE
mount.

What is checked: the tree is the one a normal pull mounts (every entry's content and metadata); before any
read only the footer and the TOC of an eStargz blob are fetched; a read fetches its file's chunks by range; a
chunk the registry alters gives EIO and never other bytes, and the next read retries; a registry that is down
gives EIO, and a read once it is back succeeds; filled files survive an unmount and are used by the next lazy
mount without a fetch; a layer that is not eStargz is pulled whole; a killed fill leaves the file a
placeholder. As root (tests/test_lazy_rootless.py: as a user).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import pytest
from support import tar as T
from support.cli import run_cli
from support.mount import daemon_pids, kill_pids, require, skip_reason_fuse, skip_reason_root, unmounted_on_exit
from support.registry import FaultProxy, have_registry, running_registry
from support.tree import ROOTFS, assert_same_tree, tree_snapshot

from unionfs.layer import placeholder
from unionfs.layer.estargz import FOOTER_SIZE, TOC_DIGEST_ANNOTATION
from unionfs.lazy.fetch import member_bound
from unionfs.oci.manifest import Descriptor
from unionfs.store.store import Store

CHUNK = "64K"
BIG = hashlib.sha256(b"seed").digest() * 8192  # 256 KiB: four chunks of 64 KiB
MEDIUM = os.urandom(100_000)
READONLY = "etc/readonly"  # a file its owner may not write (0444)
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # cap_net_bind_service


def base_layer() -> list[T.Entry]:
    return [
        T.directory("bin"), T.directory("etc"), T.directory("data", mode=0o750, uid=7, gid=8),
        T.file("bin/tool", BIG, mode=0o4755, xattrs={"security.capability": CAP}),
        T.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", xattrs={"user.note": b"\xff\x00bin"}),
        T.file(READONLY, b"read only\n", mode=0o444),
        T.file("data/medium", MEDIUM, mode=0o640, uid=1000, gid=1000),
        T.file("data/empty"),
        T.hardlink("data/medium-link", "data/medium"),
        T.symlink("etc/link", "/etc/passwd"),
        T.fifo("data/pipe"),
        T.chardev("data/null", 1, 3),
        T.file("gone", b"deleted above\n"),
        T.directory("old"), T.file("old/a", b"hidden by the opaque dir\n"),
    ]


def top_layer() -> list[T.Entry]:
    return [T.whiteout("gone"), T.directory("old"), T.opaque("old"), T.file("old/b", b"only this one\n"),
            T.file("etc/motd", b"hello from the top layer\n")]


@pytest.fixture(name="setup")
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:  # type: ignore[type-arg]
    """A registry behind a FaultProxy holding ``lz/img:esgz`` (two eStargz layers) and ``lz/img:plain`` (the
    same, plain gzip), pushed from a source store. Named, so that another module can import it under another
    name (``from test_lazy import setup as lazy_setup``) and still ask for ``setup``."""
    require(skip_reason_root(), skip_reason_fuse(), have_registry())
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    src = tmp_path / "src"
    base, top = T.build(base_layer()), T.build(top_layer())
    archive = T.docker_archive(tmp_path / "two.tar", [(base, T.gz(base)), (top, T.gz(top))])
    run_cli("load", "-i", archive, root=src)
    run_cli("convert", "--estargz", "--chunk-size", CHUNK, "--prioritize", "/etc/passwd", "trust:1", "trust:esgz",
            root=src)
    with running_registry(tmp_path / "registry") as reg:
        proxy = FaultProxy(reg.host)
        try:
            esgz, plain = f"{proxy.host}/lz/img:esgz", f"{proxy.host}/lz/img:plain"
            run_cli("push", "-q", "trust:esgz", esgz, root=src)
            run_cli("push", "-q", "trust:1", plain, root=src)
            layers = Store(src).resolve("trust:esgz").manifest.layers
            proxy.log.clear()
            yield {"proxy": proxy, "registry": reg, "esgz": esgz, "plain": plain, "layers": layers,
                   "tmp": tmp_path}
        finally:
            proxy.close()


def blob_requests(proxy: FaultProxy, digest: object) -> list[str | None]:
    """The Range headers of the GETs of blob ``digest`` the proxy saw (None: a whole-blob GET)."""
    return [rng for method, path, rng in proxy.log if method == "GET" and path.endswith(f"/blobs/{digest}")]


def lazy_mount(store: Path, ref: str, mnt: Path, *extra: str, prefetch: bool = False, log: Path | None = None) -> str:
    """``mount --lazy REF MNT``, by default with ``--no-prefetch`` (only what is read is fetched); ``log``: the
    daemon's log file."""
    mnt.mkdir(exist_ok=True)
    flags = () if prefetch else ("--no-prefetch",)
    env = {**os.environ, "UNIONFS_DAEMON_LOG": str(log)} if log is not None else None
    return run_cli("mount", "--lazy", *flags, ref, mnt, *extra, root=store, env=env).stdout.strip()


def test_a_lazy_mount_fetches_the_tocs_only_and_shows_the_pulled_tree(setup: dict) -> None:  # type: ignore[type-arg]
    proxy, tmp = setup["proxy"], setup["tmp"]
    lazy_store, mnt = tmp / "lazy", tmp / "mnt"
    with unmounted_on_exit(mnt):
        name = lazy_mount(lazy_store, setup["esgz"], mnt)
        assert name.startswith("img-")
        assert all(TOC_DIGEST_ANNOTATION in d.annotations for d in setup["layers"])
        for desc in setup["layers"]:  # the footer, then the TOC member up to it: nothing else of the blob
            ranges = blob_requests(proxy, desc.digest)
            assert len(ranges) == 2 and ranges[0] == f"bytes={desc.size - FOOTER_SIZE}-{desc.size - 1}"
            assert ranges[1] is not None and ranges[1].endswith(f"-{desc.size - FOOTER_SIZE - 1}")
        assert not (lazy_store / "layers").exists() or not any((lazy_store / "layers").iterdir())
        # metadata is right before any read
        st = os.stat(mnt / "data/medium")
        assert (st.st_size, st.st_mode & 0o7777, st.st_uid) == (len(MEDIUM), 0o640, 1000)
        assert len(blob_requests(proxy, setup["layers"][0].digest)) == 2
        assert (mnt / "etc/passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
        assert len(blob_requests(proxy, setup["layers"][0].digest)) == 3  # one chunk
        # the whole tree, against a normal pull's mount
        plain_store, plain_mnt = tmp / "plain", tmp / "plain-mnt"
        plain_mnt.mkdir()
        run_cli("pull", "-q", setup["esgz"], root=plain_store)
        with unmounted_on_exit(plain_mnt):
            run_cli("mount", setup["esgz"], plain_mnt, root=plain_store)
            assert_same_tree(tree_snapshot(plain_mnt, contents=True, **ROOTFS),
                             tree_snapshot(mnt, contents=True, **ROOTFS), ("pulled", "lazy"))
            run_cli("umount", plain_mnt, root=plain_store)
        assert (mnt / "bin/tool").read_bytes() == BIG
        assert os.getxattr(mnt / "bin/tool", "security.capability") == CAP
        assert not set(placeholder.NAMES) & set(os.listxattr(mnt / "bin/tool"))
        run_cli("umount", mnt, root=lazy_store)
    # the filled files are whole in the lazy layer, the mark gone; the others still placeholders
    trees = {p.name: p / "tree" for p in (lazy_store / "lazy").iterdir()}
    assert len(trees) == 2
    filled = [t for t in trees.values() if (t / "bin/tool").exists()]
    assert len(filled) == 1 and placeholder.placeholder_of(str(filled[0] / "bin/tool")) is None
    assert (filled[0] / "bin/tool").read_bytes() == BIG


def test_copy_ups_of_lazy_files_carry_their_data(setup: dict) -> None:  # type: ignore[type-arg]
    """A chmod (a metadata-only copy-up of a big file: its data stays the lower placeholder's) and a write (a
    copy-up with data) of files not read yet: both fill the lower file first."""
    tmp = setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt)
        os.chmod(mnt / "bin/tool", 0o700)
        assert (mnt / "bin/tool").read_bytes() == BIG
        with open(mnt / "data/medium", "ab") as f:
            f.write(b"more")
        assert (mnt / "data/medium").read_bytes() == MEDIUM + b"more"
        assert (mnt / "data/medium-link").read_bytes() == MEDIUM + b"more"
        run_cli("umount", mnt, root=store)


def test_a_remount_uses_the_filled_files(setup: dict) -> None:  # type: ignore[type-arg]
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = setup["layers"][0].digest
    with unmounted_on_exit(mnt):
        name = lazy_mount(store, setup["esgz"], mnt)
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        run_cli("umount", mnt, root=store)
        fetched = len(blob_requests(proxy, base))
        lazy_mount(store, setup["esgz"], mnt, "--name", name)
        assert len(blob_requests(proxy, base)) == fetched  # the layer was there: not even its TOC again
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        assert (mnt / "data/medium-link").read_bytes() == MEDIUM
        assert len(blob_requests(proxy, base)) == fetched
        assert (mnt / "bin/tool").read_bytes() == BIG  # not read before: fetched now
        assert len(blob_requests(proxy, base)) == fetched + 4
        run_cli("umount", mnt, root=store)


def test_warming_loads_the_layers_without_the_network_and_a_failure_waits_for_the_fill(setup: dict,  # type: ignore[type-arg]
                                                                                      caplog) -> None:
    """``Filler.warm`` (which the daemon runs once its mount is live): each layer loaded, nothing fetched; a
    layer that cannot be loaded is only logged, and its first fill fails with EIO as without warming."""
    from unionfs.lazy.fill import Filler

    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt)
        run_cli("umount", mnt, root=store)
    layers = [(str(d / "tree"), d.name) for d in (store / "lazy").iterdir() if (d / "tree").is_dir()]
    requests = len(proxy.log)
    filler = Filler(layers)
    filler.warm_in_background().join()
    assert all(layer.loaded and layer.client is not None for layer in filler.layers.values())
    assert len(proxy.log) == requests
    broken_tree, broken = layers[0]
    toc = Path(broken_tree).parent / "toc.json"
    toc.write_bytes(toc.read_bytes() + b" ")  # no longer the recorded digest
    filler = Filler(layers)
    filler.warm()
    assert not filler.layers[broken].loaded and all(layer.loaded for h, layer in filler.layers.items() if h != broken)
    tool = next(p for p in Path(broken_tree).rglob("*") if p.is_file() and placeholder.placeholder_of(str(p)))
    with pytest.raises(OSError) as e:
        filler(str(tool))
    assert e.value.errno == errno.EIO and "does not match the digest" in caplog.text
    assert len(proxy.log) == requests


def read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as e:
        return e.errno
    return None


def test_a_corrupt_chunk_gives_eio_and_the_next_read_retries(setup: dict) -> None:  # type: ignore[type-arg]
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = str(setup["layers"][0].digest)
    log = tmp / "daemon.log"
    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt, log=log)
        proxy.corrupt_blob.add(base)  # every answer with its first byte flipped
        assert read_errno(mnt / "bin/tool") == errno.EIO
        assert read_errno(mnt / "bin/tool") == errno.EIO  # retried, and refused again
        assert (mnt / "etc/motd").read_bytes() == b"hello from the top layer\n"  # the mount is up
        errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "bin/tool" in errors[0] and "lazy layer " in errors[0]
        proxy.corrupt_blob.discard(base)
        assert (mnt / "bin/tool").read_bytes() == BIG
        run_cli("umount", mnt, root=store)


def test_a_registry_that_sends_other_valid_data_gives_eio(setup: dict) -> None:  # type: ignore[type-arg]
    """The registry answers each range with a well-formed gzip member of other bytes (of the asked length): only
    the chunk's digest can tell; the read gets EIO, the layer's file stays a placeholder."""
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = str(setup["layers"][0].digest)

    def lie(data: bytes) -> bytes:
        member = gzip.compress(b"A" * len(BIG))
        assert len(member) < len(data)
        return member + b"\0" * (len(data) - len(member))

    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt)
        proxy.rewrite_blob[base] = lie
        assert read_errno(mnt / "data/medium") == errno.EIO
        assert read_errno(mnt / "bin/tool") == errno.EIO
        (tree,) = [p / "tree" for p in (store / "lazy").iterdir() if (p / "tree/data/medium").exists()]
        assert placeholder.placeholder_of(str(tree / "data/medium")) is not None
        proxy.rewrite_blob[base] = lambda data: data[:len(data) // 2]  # a truncated answer
        assert read_errno(mnt / "data/medium") == errno.EIO
        assert placeholder.placeholder_of(str(tree / "data/medium")) is not None
        del proxy.rewrite_blob[base]
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        assert placeholder.placeholder_of(str(tree / "data/medium")) is None
        run_cli("umount", mnt, root=store)


def test_a_killed_daemon_leaves_a_placeholder_that_the_next_mount_fills(setup: dict) -> None:  # type: ignore[type-arg]
    """The daemon is killed while it fills a file of four chunks, two of them written: the file keeps its mark
    (its half data is never trusted), and the next mount fills it whole."""
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = str(setup["layers"][0].digest)
    with unmounted_on_exit(mnt):
        name = lazy_mount(store, setup["esgz"], mnt)
        proxy.stall_range[base] = 3
        failed: list[int | None] = []
        reader = threading.Thread(target=lambda: failed.append(read_errno(mnt / "bin/tool")))
        reader.start()
        try:
            assert proxy.stalled.wait(60)
            pids = daemon_pids(mnt)
            assert pids
            kill_pids(pids)
        finally:
            proxy.release.set()
            reader.join(60)
        assert failed and failed[0] is not None
        (tree,) = [p / "tree" for p in (store / "lazy").iterdir() if (p / "tree/bin/tool").exists()]
        tool = tree / "bin/tool"
        assert placeholder.placeholder_of(str(tool)) is not None
        assert tool.read_bytes()[:2 * 65536] == BIG[:2 * 65536]  # half written, and still marked
        run_cli("umount", mnt, root=store)
        proxy.release.clear()
        lazy_mount(store, setup["esgz"], mnt, "--name", name)
        assert (mnt / "bin/tool").read_bytes() == BIG
        assert placeholder.placeholder_of(str(tool)) is None
        run_cli("umount", mnt, root=store)


def test_a_registry_that_goes_away_gives_eio_then_the_read_succeeds(setup: dict) -> None:  # type: ignore[type-arg]
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = str(setup["layers"][0].digest)
    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt)
        proxy.fail_blob[base] = 1000  # 503 for every read of the blob
        assert read_errno(mnt / "data/medium") == errno.EIO
        setup["registry"].stop()  # and the registry itself gone
        proxy.fail_blob.clear()
        assert read_errno(mnt / "data/medium") == errno.EIO
        assert os.stat(mnt / "data/medium").st_size == len(MEDIUM)
        setup["registry"].start()  # on another port: the proxy forwards there
        proxy.upstream = setup["registry"].host
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        run_cli("umount", mnt, root=store)


def test_a_fill_that_waits_for_the_registry_holds_up_no_other_request(setup: dict) -> None:  # type: ignore[type-arg]
    """A file whose fill hangs (the registry holds its range answer): the mount meanwhile lists, stats and reads
    other files (another file of another layer filled too); a second reader of the hanging file waits for the
    same fill (its chunks fetched once); both get the file once the registry answers. Before, a fill ran in the
    daemon's one request loop and everything waited for it."""
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = str(setup["layers"][0].digest)
    got: dict[str, bytes] = {}

    def read(name: str, key: str) -> None:
        got[key] = (mnt / name).read_bytes()

    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt)
        before = len(blob_requests(proxy, base))
        proxy.hold_range[base] = 1  # the next range answer of the base layer's blob: held until released
        readers = [threading.Thread(target=read, args=("data/medium", k), daemon=True) for k in ("a", "b")]
        try:
            readers[0].start()
            assert proxy.stalled.wait(60)
            readers[1].start()
            others = threading.Thread(target=lambda: got.update(
                names=str(sorted(os.listdir(mnt))).encode(), motd=(mnt / "etc/motd").read_bytes(),
                size=str(os.stat(mnt / "bin/tool").st_size).encode()), daemon=True)
            others.start()
            others.join(20)  # a bound on a hang (below the 30 s a range read may take), not a timing
            assert not others.is_alive() and not proxy.release.is_set()
            assert got["motd"] == b"hello from the top layer\n" and got["size"] == str(len(BIG)).encode()
            assert "data" in got["names"].decode() and "a" not in got
        finally:
            proxy.release.set()
            for t in readers:
                t.join(60)
        assert got["a"] == got["b"] == MEDIUM
        assert len(blob_requests(proxy, base)) - before == len(range(0, len(MEDIUM), 1 << 16))  # fetched once
        run_cli("umount", mnt, root=store)


def wait_for(what: str, check, bound: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it is true; fail after ``bound`` seconds (a bound on a hang, not a timing)."""
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound} s")
        time.sleep(0.1)


def test_the_rest_is_pulled_in_the_background_and_the_image_is_complete(setup: dict) -> None:  # type: ignore[type-arg]
    """Without --no-prefetch: the prioritized files are filled first, the blobs are downloaded whole (verified)
    and the image, listed as partial from the start, is made whole as a pull stores it: ``images`` no longer
    marks it partial, its layers are extracted, a plain mount uses them; the live lazy mount then reads its
    chunks from the downloaded blob, not the registry."""
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    base = setup["layers"][0].digest
    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["esgz"], mnt, prefetch=True)
        wait_for("the image whole in the store", lambda: run_cli("images", "--format", "{{.Partial}}",
                                                                 root=store).stdout == "false\n")
        listed = run_cli("images", "--format", "{{.Repository}}:{{.Tag}}", root=store).stdout.split()
        assert listed == [setup["esgz"]]
        assert sorted(p.name for p in (store / "layers").iterdir()) == \
            sorted(d.hex for d in Store(store).resolve(setup["esgz"]).config.diff_ids)
        (tree,) = [p / "tree" for p in (store / "lazy").iterdir() if (p / "tree/etc/passwd").exists()]
        assert placeholder.placeholder_of(str(tree / "etc/passwd")) is None  # prefetched (prioritized)
        assert placeholder.placeholder_of(str(tree / "data/medium")) is not None  # not read: still a placeholder
        ranges = [r for r in blob_requests(proxy, base) if r is not None]
        assert None in blob_requests(proxy, base)  # the whole blob, once
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        assert [r for r in blob_requests(proxy, base) if r is not None] == ranges  # from the local blob
        run_cli("umount", mnt, root=store)
    assert "failed" not in (store / "lazy/complete.log").read_text()
    plain = tmp / "plain-mnt"
    plain.mkdir()
    with unmounted_on_exit(plain):
        run_cli("mount", setup["esgz"], plain, root=store)
        assert (plain / "data/medium").read_bytes() == MEDIUM
        assert (plain / "bin/tool").read_bytes() == BIG
        run_cli("umount", plain, root=store)


def test_a_layer_that_is_not_estargz_is_pulled_whole(setup: dict) -> None:  # type: ignore[type-arg]
    proxy, tmp = setup["proxy"], setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    with unmounted_on_exit(mnt):
        lazy_mount(store, setup["plain"], mnt)
        gets = [(path, rng) for method, path, rng in proxy.log if method == "GET" and "/blobs/" in path]
        assert gets and all(rng is None for _, rng in gets)  # whole blobs only
        assert not (store / "lazy").exists() or not [p for p in (store / "lazy").iterdir()
                                                       if not p.name.startswith(".")]
        assert len(list((store / "layers").iterdir())) == 2
        assert (mnt / "bin/tool").read_bytes() == BIG
        run_cli("umount", mnt, root=store)


def test_lazy_needs_an_image_reference_and_refuses_lower_dirs(tmp_path: Path) -> None:
    r = run_cli("mount", "--lazy", "--lower", tmp_path, tmp_path, root=tmp_path / "s", check=False)
    assert r.returncode == 2 and "--lazy" in r.stderr


@pytest.mark.parametrize("size", [0, 1, 1000, 65536, 1 << 20, (4 << 20) + 3])
def test_a_chunk_read_asks_for_no_less_than_its_member_takes(size: int) -> None:
    """The range of a chunk read (:func:`member_bound`) holds the whole gzip member of incompressible data of
    any size (what the writer makes: zlib with the gzip wrapper, any level)."""
    data = os.urandom(size)
    for level in (1, 6, 9):
        z = zlib.compressobj(level, zlib.DEFLATED, 31)
        assert len(z.compress(data) + z.flush()) <= member_bound(size)


def test_a_layer_with_chunks_too_big_for_a_lazy_read_is_pulled_whole(setup: dict,  # type: ignore[type-arg]
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk over MAX_CHUNK (here lowered below the base layer's 64 KiB chunks): that layer is pulled whole, the
    other one stays lazy."""
    from unionfs.lazy import fetch, prepare
    from unionfs.oci.reference import Reference
    from unionfs.registry.mirrors import client_for

    monkeypatch.setattr(fetch, "MAX_CHUNK", 1000)
    monkeypatch.setattr(prepare, "MAX_CHUNK", 1000)
    ref = Reference.parse(setup["esgz"])
    store = Store(setup["tmp"] / "lazy")
    with client_for(ref) as client:
        result = prepare.prepare_lazy(store, ref, client)
    assert result.layers == ("pulled", "lazy")
    assert Path(result.plan.lowers[0]).parent.name == "layers" and Path(result.plan.lowers[1]).name == "tree"
    assert None in blob_requests(setup["proxy"], setup["layers"][0].digest)
    assert None not in blob_requests(setup["proxy"], setup["layers"][1].digest)


def push_busybox_esgz(setup: dict, store: Path) -> tuple[str, Descriptor]:  # type: ignore[type-arg]
    """busybox (of the ``store`` fixture) converted to eStargz and pushed behind ``setup``'s proxy (its log
    cleared then): the reference, and the descriptor of its one layer."""
    proxy = setup["proxy"]
    run_cli("convert", "--estargz", "--chunk-size", "256K", "busybox:latest", "busybox:esgz", root=store)
    ref = f"{proxy.host}/lz/busybox:esgz"
    run_cli("push", "-q", "busybox:esgz", ref, root=store)
    (desc,) = Store(store).resolve("busybox:esgz").manifest.layers
    proxy.log.clear()
    return ref, desc


def test_run_lazy_runs_an_image_at_its_registry(setup: dict, store: Path) -> None:  # type: ignore[type-arg]
    """``run --lazy --no-prefetch``: busybox converted to eStargz and pushed; run from a store that never had it,
    only the files the command opens fetched (by range: never the whole blob)."""
    proxy, tmp = setup["proxy"], setup["tmp"]
    ref, desc = push_busybox_esgz(setup, store)
    fresh = tmp / "fresh"
    r = run_cli("run", "--lazy", "--no-prefetch", "--rm", ref, "cat", "/etc/passwd", root=fresh)
    assert r.stdout.startswith("root:x:0:0:")
    ranges = blob_requests(proxy, desc.digest)
    assert ranges and None not in ranges  # ranges only: the footer, the TOC, busybox's chunks, /etc/passwd
    assert Store(fresh).containers() == []  # --rm
    # the image stays listed (as docker keeps an image after run --rm), partial: only its TOC was fetched
    assert run_cli("images", "--format", "{{.Repository}}:{{.Tag}} {{.Partial}}", root=fresh).stdout == \
        f"{ref} true\n"


def test_the_daemon_reads_with_the_credentials_of_the_docker_config(tmp_path: Path, store: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that wants a login (htpasswd): after ``unionfs login``, the mount's daemon fetches the
    chunks with the same credentials (the docker config, as ``pull``)."""
    require(skip_reason_root(), skip_reason_fuse(), have_registry())
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    run_cli("convert", "--estargz", "busybox:latest", "busybox:esgz", root=store)
    mnt = tmp_path / "mnt"
    with running_registry(tmp_path / "registry", auth="htpasswd") as reg:
        run_cli("login", reg.host, "-u", "alice", "--password-stdin", input="wonderland\n")
        ref = f"{reg.host}/auth/busybox:esgz"
        run_cli("push", "-q", "busybox:esgz", ref, root=store)
        with unmounted_on_exit(mnt):
            lazy_mount(tmp_path / "lazy", ref, mnt)
            assert (mnt / "etc/passwd").read_text().startswith("root:x:0:0:")
            run_cli("umount", mnt, root=tmp_path / "lazy")
        with unmounted_on_exit(mnt):  # logged out while mounted: the next fetch has no credentials, EIO
            lazy_mount(tmp_path / "lazy2", ref, mnt)
            run_cli("logout", reg.host)
            assert read_errno(mnt / "etc/passwd") == errno.EIO
            run_cli("umount", mnt, root=tmp_path / "lazy2")


def test_prune_removes_the_lazy_layers_no_container_needs(setup: dict) -> None:  # type: ignore[type-arg]
    tmp = setup["tmp"]
    store, mnt = tmp / "lazy", tmp / "mnt"
    with unmounted_on_exit(mnt):
        name = lazy_mount(store, setup["esgz"], mnt)
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        assert "lazy" not in run_cli("prune", root=store).stdout  # mounted: its container keeps them
        run_cli("umount", mnt, root=store)
    (store / "lazy/.stage-left-by-a-kill").mkdir()
    out = run_cli("prune", root=store).stdout
    assert "lazy" not in out and len([p for p in (store / "lazy").iterdir() if not p.name.startswith(".")]) == 2
    assert not (store / "lazy/.stage-left-by-a-kill").exists()
    run_cli("rm", name, root=store)
    run_cli("rmi", setup["esgz"], root=store)  # the partial image lists them too (tests/test_lazy_images.py)
    out = run_cli("prune", root=store).stdout
    assert out.count("Deleted: lazy layer ") == 2
    assert [p.name for p in (store / "lazy").iterdir()] == []
    assert list((store / "tmp").iterdir()) == []


class _LyingChunks:
    """A client whose range reads of file data (every read of a blob after its footer and TOC) come back with
    their first byte flipped when the blob is in ``lie``."""

    def __init__(self, client, lie: set[str]) -> None:  # type: ignore[no-untyped-def]
        self.client, self.lie, self.seen = client, lie, {}  # type: dict[str, int]

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.client, name)

    def fetch_range(self, repository: str, digest, start: int, end: int) -> bytes:  # type: ignore[no-untyped-def]
        data = self.client.fetch_range(repository, digest, start, end)
        self.seen[str(digest)] = n = self.seen.get(str(digest), 0) + 1
        return bytes([data[0] ^ 1]) + data[1:] if n > 2 and str(digest) in self.lie else data


@pytest.mark.parametrize("lie", [False, True], ids=["verified", "altered"])
def test_the_first_files_are_filled_while_the_tree_is_made(setup: dict, lie: bool) -> None:  # type: ignore[type-arg]
    """``early`` (mount and run --lazy with their prefetch): the files before a layer's prefetch landmark are
    fetched while its tree is made and written whole, verified, without their mark; the others stay
    placeholders. A chunk that does not verify leaves its file a placeholder: the preparation goes on."""
    from unionfs.lazy.prepare import prepare_lazy
    from unionfs.oci.reference import Reference
    from unionfs.registry.mirrors import client_for

    proxy, base = setup["proxy"], setup["layers"][0].digest
    ref = Reference.parse(setup["esgz"])
    with client_for(ref) as client:
        result = prepare_lazy(Store(setup["tmp"] / "lazy"), ref, _LyingChunks(client, {str(base)} if lie else set()),
                              early=True)
    assert result.layers == ("lazy", "lazy")
    tree = Path(result.plan.lowers[0])
    passwd = tree / "etc/passwd"
    assert len(blob_requests(proxy, base)) == 3  # the footer, the TOC, the one chunk of etc/passwd
    assert placeholder.placeholder_of(str(tree / "data/medium")) is not None
    assert os.getxattr(passwd, "user.note") == b"\xff\x00bin"
    if lie:
        assert placeholder.placeholder_of(str(passwd)) is not None and passwd.read_bytes() == bytes(30)  # nothing written
    else:
        assert placeholder.placeholder_of(str(passwd)) is None
        assert passwd.read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"


def test_the_prefetch_opens_nothing_outside_the_mount_nor_a_fifo(tmp_path: Path) -> None:
    """The background completion reads the landmark files through the mount as the host's root, while the
    container's processes may plant symlinks and fifos in it: a name through a symlink (on the way or last)
    or naming a fifo is not opened (before: the host's fifo was opened, and the prefetch blocked on it)."""
    from unionfs.lazy.complete import prefetch

    outside, mnt = tmp_path / "outside", tmp_path / "mnt"
    outside.mkdir()
    (mnt / "etc").mkdir(parents=True)
    os.mkfifo(outside / "fifo")
    os.mkfifo(mnt / "etc/fifo")
    os.symlink(outside / "fifo", mnt / "etc/pipe")
    os.symlink(outside, mnt / "lib")
    (mnt / "etc/ok").write_text("x")
    done = threading.Thread(target=prefetch, args=(str(mnt), ["etc/pipe", "lib/fifo", "etc/fifo", "etc/ok"]),
                            daemon=True)
    done.start()
    opened = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (done.is_alive() or not opened):
        for fifo in (outside / "fifo", mnt / "etc/fifo"):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
            except OSError as e:
                assert e.errno == errno.ENXIO
                continue
            opened.append(fifo.name)
            os.write(fd, b"x")  # let the reader go on
            os.close(fd)
        if not done.is_alive():
            break
        time.sleep(0.01)
    done.join(timeout=5)
    assert not opened and not done.is_alive()


def test_a_fill_that_ends_after_the_loop_answers_nothing(tmp_path: Path) -> None:
    """A worker whose fill ends once the daemon's loop has ended (unmounted) writes no reply: the device's
    descriptor may be closed by then, its number another file's. While the loop serves, a failed fill's waiting
    request is answered EIO on the device (here a pipe standing for it)."""
    from unionfs.mount import protocol as fp
    from unionfs.mount.server import LowLevelFS
    from unionfs.union.overlay import Overlay

    for n in ("lower", "upper", "work"):
        (tmp_path / n).mkdir()
    fs = LowLevelFS(Overlay([str(tmp_path / "lower")], str(tmp_path / "upper"), str(tmp_path / "work")),
                    passthrough=False)
    r, w = os.pipe()
    os.set_blocking(r, False)
    fs.dev = w
    request = fp.IN_HEADER.pack(fp.IN_HEADER.size, fp.OPEN, 77, 1, 0, 0, 0, 0, 0)
    try:
        fs.resume([request], False)  # not serving (ended, or not begun): nothing written
        with pytest.raises(BlockingIOError):
            os.read(r, 100)
        fs._serving = True
        fs.resume([request], False)
        assert os.read(r, 100) == fp.OUT_HEADER.pack(fp.OUT_HEADER.size, -errno.EIO, 77)
    finally:
        os.close(r)
        os.close(w)
