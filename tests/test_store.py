"""The store's own contracts: layout, modes, blobs, tags, locking, rollback."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unionfs.errors import DigestError, ImageNotFoundError, StoreLockedError
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_MANIFEST, Descriptor
from unionfs.oci.reference import Reference
from unionfs.store.store import Store


def test_layout_is_an_oci_layout_with_mode_0700(store_root: Path) -> None:
    Store(store_root)
    assert stat.S_IMODE(store_root.stat().st_mode) == 0o700
    assert json.loads((store_root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store_root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    for d in ("blobs/sha256", "layers", "containers", "tmp"):
        assert (store_root / d).is_dir()


def test_unionfs_root_env_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIONFS_ROOT", str(tmp_path / "env-root"))
    assert Store().root == tmp_path / "env-root"
    assert Store(tmp_path / "flag").root == tmp_path / "flag"


def test_put_blob_verifies_and_is_idempotent(store_root: Path) -> None:
    s = Store(store_root)
    data = b"hello blob"
    d = Digest.of_bytes(data)
    assert s.put_blob(io.BytesIO(data), d, len(data)) == (d, len(data))
    assert s.put_blob(io.BytesIO(data), d, len(data)) == (d, len(data))
    assert s.read_blob(d) == data
    wrong = Digest.of_bytes(b"other")
    with pytest.raises(DigestError, match="digest mismatch"):
        s.put_blob(io.BytesIO(data), wrong)
    with pytest.raises(DigestError, match="size"):
        s.put_blob(io.BytesIO(data), d, len(data) + 1)
    assert not s.has_blob(wrong)
    assert list((store_root / "tmp").iterdir()) == []  # no temporary left behind


def test_corrupt_stored_blob_is_detected(store_root: Path) -> None:
    s = Store(store_root)
    d = s.put_blob_bytes(b"{}")
    s.blob_path(d).write_bytes(b"{} ")
    with pytest.raises(DigestError, match="corrupt"):
        s.read_blob(d)


def test_lock_rolls_back_what_a_failed_command_added(store_root: Path) -> None:
    s = Store(store_root)
    with pytest.raises(RuntimeError):
        with s.lock():
            d = s.put_blob_bytes(b"partial work")
            assert s.has_blob(d)
            raise RuntimeError("boom")
    assert not s.has_blob(d)


def _hold_lock(root: str, seconds: float, ready: "multiprocessing.synchronize.Event") -> None:
    with Store(root).lock():
        ready.set()
        time.sleep(seconds)


def test_lock_serialises_processes(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(store_root)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(store_root), 3.0, ready))
    p.start()
    try:
        assert ready.wait(10)
        import unionfs.store.store as store_mod
        monkeypatch.setattr(store_mod, "_LOCK_TIMEOUT", 0.3)
        with pytest.raises(StoreLockedError, match="locked"):
            with Store(store_root).lock():
                pass
    finally:
        p.join(10)
    with Store(store_root).lock():  # free again once the holder exits
        pass


def test_tag_untag_and_resolve(store_root: Path) -> None:
    s = Store(store_root)
    d = s.put_blob_bytes(b'{"not": "a manifest"}')
    desc = Descriptor(OCI_MANIFEST, d, 20)
    ref = Reference.parse("example.com/a/b:v1")
    s.tag(ref, desc)
    s.tag(ref, desc)  # re-tagging replaces, never duplicates
    entries = json.loads((store_root / "index.json").read_text())["manifests"]
    assert [e["annotations"]["org.opencontainers.image.ref.name"] for e in entries] == ["example.com/a/b:v1"]
    assert s.untag(ref).digest == d
    with pytest.raises(ImageNotFoundError, match="no such image: example.com/a/b:v1"):
        s.untag(ref)
    with pytest.raises(ImageNotFoundError, match="no such image: nothing:latest"):
        s.resolve("nothing")


def test_store_on_unwritable_path_is_a_one_line_error(tmp_path: Path) -> None:
    from unionfs.errors import StoreError
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError) as e:
        Store(f / "store")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ the record of resolutions


def _load_image(store_root: Path, tmp_path: Path, ref: str, content: bytes) -> None:
    """Load a 1-layer image tagged ``ref`` (a file ``hello`` holding ``content``) into the store."""
    from support.tar import build, docker_archive, file

    from unionfs.store.archive import load

    layer = build([file("hello", content)])
    archive = docker_archive(tmp_path / f"{ref.replace(':', '-')}.tar", [(layer, layer)], repo_tags=(ref,))
    load(Store(store_root), str(archive))


def test_a_recorded_resolution_answers_without_the_image_formats(store_root: Path, tmp_path: Path) -> None:
    """Once ``prepare_container`` resolved a reference the full way, ``mounting.prepare`` answers for it from
    the store's record: the same layers, a container made as the full way makes it, and no manifest, digest,
    reference, hashlib or Store loaded."""
    _load_image(store_root, tmp_path, "one:1", b"hi\n")
    full = Store(store_root).prepare_container("one:1", "a")
    code = ("import sys\nfrom unionfs.store import mounting\n"
            f"plan = mounting.prepare({str(store_root)!r}, 'one:1', None)\n"
            "print(repr((plan.lowers, plan.upper, plan.work, plan.name)))\n"
            "print(sorted(m for m in ('unionfs.oci.manifest', 'unionfs.oci.digest', 'unionfs.oci.reference', "
            "'unionfs.store.store', 'hashlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    (lowers, upper, work, name), loaded = [eval(line) for line in out.splitlines()]  # noqa: S307 (our own repr)
    assert loaded == []
    assert lowers == full.lowers and name.startswith("one-") and upper == str(store_root / "containers" / name / "upper")
    a, b = Store(store_root).container("a"), Store(store_root).container(name)
    assert (b.ref, b.image_id, b.manifest, b.layers, b.mountpoint) == (a.ref, a.image_id, a.manifest, a.layers, None)
    assert os.path.isdir(work) and os.listdir(upper) == []


def test_the_record_is_not_trusted_once_the_index_changed(store_root: Path, tmp_path: Path) -> None:
    """A tag moved to another image changes ``index.json``: the record no longer answers (the full way
    resolves the new image, and records it); a missing layer is not answered for either (the full way
    extracts it again)."""
    from unionfs.store import mounting

    _load_image(store_root, tmp_path, "one:1", b"first\n")
    first = Store(store_root).prepare_container("one:1", "a")
    _load_image(store_root, tmp_path, "one:1", b"second\n")  # the tag moves
    assert mounting.prepare(str(store_root), "one:1", "b") is None
    second = Store(store_root).prepare_container("one:1", "b")
    assert second.lowers != first.lowers
    assert mounting.prepare(str(store_root), "one:1", "c").lowers == second.lowers
    shutil.rmtree(second.lowers[0])
    assert mounting.prepare(str(store_root), "one:1", "d") is None
    assert Store(store_root).prepare_container("one:1", "d").lowers == second.lowers
    assert open(os.path.join(second.lowers[0], "hello")).read() == "second\n"


def test_a_resolution_against_an_uncommitted_index_is_not_recorded(store_root: Path, tmp_path: Path) -> None:
    """A container prepared while the caller's own tag change is pending (the index on disk is still the old
    one) records nothing: a rollback would leave the record answering for a tag that never was."""
    from unionfs.store import mounting

    _load_image(store_root, tmp_path, "one:1", b"first\n")
    _load_image(store_root, tmp_path, "two:1", b"second\n")
    store = Store(store_root)
    two = store.resolve("two:1")
    with pytest.raises(RuntimeError):
        with store.lock():
            store.tag(Reference.parse("one:1"), two.manifest_desc)
            assert store.prepare_container("one:1", "a").name == "a"
            raise RuntimeError("rolled back")
    assert mounting.prepare(str(store_root), "one:1", "b") is None
    assert Store(store_root).resolve("one:1").id != two.id


def test_a_download_starts_its_writeback_as_it_goes(store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``append_hashed`` asks the kernel to write back each 8 MiB as written (the final fsync then has little
    left to wait for); the file and its hash are the stream's, also when resuming from a kept prefix."""
    import unionfs.store.store as store_mod
    from unionfs.fsops import start_writeback

    calls: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int) -> None:
        calls.append((offset, length))
        start_writeback(fd, offset, length)  # the real call, on a real file: no error

    monkeypatch.setattr(store_mod, "start_writeback", record)
    s = Store(store_root)
    data = os.urandom(3 << 20) * 7  # 21 MiB
    d = Digest.of_bytes(data)
    s.partial_path(d).write_bytes(data[:1000])  # a kept prefix: resumed from byte 1000
    hashed = store_mod.append_hashed(s.partial_path(d), 1000, io.BytesIO(data[1000:]), d.algorithm)
    mib8 = 8 << 20
    assert calls == [(1000, mib8), (1000 + mib8, mib8)]  # the last 5 MiB are left to the fsync
    with s.lock():
        s.commit_partial(d, len(data), hashed)
    assert s.blob_path(d).read_bytes() == data
    with open(os.devnull, "wb") as null:
        start_writeback(null.fileno(), 0, 1)  # not a regular file: ignored, as on a filesystem without it
