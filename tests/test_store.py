"""The store's own contracts: layout, modes, blobs, tags, locking, rollback."""

from __future__ import annotations

import io
import json
import multiprocessing
import stat
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
