"""Hostile image input (docs/security.md): decompression bounds, sparse members, zstd zero runs, typed
manifests/indexes/configs, reference grammar, bounded one-line messages.

Archives and layouts are crafted here and fed through ``python -m unionfs load -i`` as a user would; the
parsers get unit tests of their own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from support.cli import run_cli
from support.tar import END, build, docker_archive, file, header_block, image_config, pax_block, pax_record, sha_of
from support.tree import Snapshot, assert_same_tree, tree_snapshot

from unionfs.errors import (
    ArchiveError,
    DigestError,
    LayerError,
    ManifestError,
    PlatformError,
    ReferenceError_,
    UnsafeLayerError,
)
from unionfs.layer.unpack import MAX_LAYER_SIZE_ENV, unpack_layer
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_docker_archive_manifest,
)
from unionfs.oci.reference import Reference
from unionfs.store.store import Store

MiB = 1 << 20


# ---------------------------------------------------------------------------
# crafting inputs
# ---------------------------------------------------------------------------

class Layout:
    """An OCI layout directory being written: blobs first, then ``index.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs/sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes | dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        (self.root / "blobs/sha256" / sha_of(raw)[7:]).write_bytes(raw)
        return {"mediaType": media_type, "digest": sha_of(raw), "size": len(raw), **extra}

    def image(self, *, manifest_extra: dict[str, Any] | None = None, layer: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """A one-layer image; returns its manifest descriptor (for index.json)."""
        tar = build([file("hello", b"hi")])
        layer_desc = layer if layer is not None else self.blob(tar, OCI_LAYER)
        config = self.blob(image_config([sha_of(tar)]), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer_desc],
                    **(manifest_extra or {})}
        return self.blob(manifest, OCI_MANIFEST)

    def index(self, obj: Any) -> Path:
        (self.root / "index.json").write_bytes(obj if isinstance(obj, bytes) else json.dumps(obj).encode())
        return self.root


def sparse10(name: str, realsize: int, segments: list[tuple[int, bytes]]) -> bytes:
    """A GNU sparse 1.0 member in PAX form (raw bytes; tarfile cannot write sparse members): the PAX header
    names the file and its real size, the member's data is the map (padded to a block) then the segments."""
    smap = f"{len(segments)}\n" + "".join(f"{off}\n{len(d)}\n" for off, d in segments)
    stored = smap.encode().ljust(-(-len(smap) // 512) * 512, b"\0") + b"".join(d for _, d in segments)
    records = (pax_record("GNU.sparse.major", b"1") + pax_record("GNU.sparse.minor", b"0")
               + pax_record("GNU.sparse.name", name.encode())
               + pax_record("GNU.sparse.realsize", str(realsize).encode()))
    return (pax_block(records) + header_block(f"GNUSparseFile.0/{name}", size=len(stored))
            + stored.ljust(-(-len(stored) // 512) * 512, b"\0"))


def allocated(path: Path) -> int:
    """Bytes allocated on disk below ``path`` (``du``)."""
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    """Assert a failed command printed exactly one line, ours, and no traceback; return it."""
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr[-3000:])
    lines = p.stderr.strip().splitlines()
    errors = [x for x in lines if not x.startswith("unionfs: WARNING")]
    assert len(errors) == 1 and errors[0].startswith("unionfs: ") and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(errors[0]) < 1000, len(errors[0])
    return errors[0]


@pytest.fixture
def empty_store(store_root: Path) -> Snapshot:
    """Create the store and return its tree (to show that a refused load changed nothing)."""
    Store(store_root)
    return tree_snapshot(store_root)


# ---------------------------------------------------------------------------
# item 12: sparse members, per-layer bound on the expanded size
# ---------------------------------------------------------------------------

def _sparse_layer(count: int, realsize: int) -> bytes:
    return b"".join(sparse10(f"f{i:02}", realsize, [(4096, b"data%02d" % i), (realsize - 4, b"tail")])
                    for i in range(count)) + END


def test_sparse_members_keep_their_holes(tmp_path: Path, cli, store_root: Path) -> None:
    tar = _sparse_layer(20, 8 * MiB)  # 160 MiB of files, 20 kB stored
    cli("load", "-i", docker_archive(tmp_path / "a.tar", [(tar, tar)]))
    layer = Store(store_root).layer_path(Digest.parse(sha_of(tar)))
    f = layer / "f07"
    assert f.stat().st_size == 8 * MiB
    with open(f, "rb") as fh:
        assert fh.read(4096) == b"\0" * 4096 and fh.read(6) == b"data07"
        fh.seek(8 * MiB - 4)
        assert fh.read() == b"tail"
    assert allocated(store_root) < 4 * MiB


def test_sparse_expansion_counts_against_the_layer_bound(tmp_path: Path, store_root: Path, empty_store,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 20 members of 8 MiB each: every one under the 64 MiB bound, the layer (160 MiB) over it.
    tar = _sparse_layer(20, 8 * MiB)
    monkeypatch.setenv(MAX_LAYER_SIZE_ENV, str(64 * MiB))
    p = run_cli("load", "-i", docker_archive(tmp_path / "a.tar", [(tar, tar)]), root=store_root, check=False)
    line = one_line_error(p)
    assert str(64 * MiB) in line and MAX_LAYER_SIZE_ENV in line
    assert_same_tree(empty_store, tree_snapshot(store_root))
    assert allocated(store_root) < 4 * MiB


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is needed to write sparse archives")
@pytest.mark.parametrize("fmt", ["pax-0.0", "pax-0.1", "pax-1.0", "gnu"])
def test_gnu_tar_sparse_formats(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(10 * MiB)
        f.seek(4096)
        f.write(b"hello")
        f.seek(8 * MiB)
        f.write(b"tail")
    opts = ["--format=gnu"] if fmt == "gnu" else ["--format=pax", f"--sparse-version={fmt[4:]}"]
    subprocess.run(["tar", *opts, "--sparse", "-cf", str(tmp_path / "s.tar"), "-C", str(src), "sparse"], check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(tmp_path / "s.tar", "rb") as blob:
        unpack_layer(blob, str(dest), media_type=None)
    assert (dest / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert allocated(dest / "sparse") <= 64 * 1024


def _unpack(data: bytes, dest: Path, **kw: Any) -> None:
    dest.mkdir(exist_ok=True)
    unpack_layer(io.BytesIO(data), str(dest), media_type=None, **kw)


def _old_gnu_sparse(extended_blocks: bytes) -> bytes:
    """An old-GNU sparse header (type S) announcing extension blocks, followed by ``extended_blocks``."""
    ti = tarfile.TarInfo("s")
    ti.type, ti.size = tarfile.GNUTYPE_SPARSE, 0
    buf = bytearray(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    buf[482] = 1  # isextended
    buf[148:156] = b" " * 8  # the checksum counts its own field as spaces
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf) + extended_blocks


@pytest.mark.parametrize("case", ["overlap", "past-the-end", "more-data-than-stored", "endless-map",
                                  "bad-number", "truncated-map", "old-gnu-truncated"])
def test_hostile_sparse_maps(tmp_path: Path, case: str) -> None:
    if case == "overlap":
        data = sparse10("f", 8192, [(0, b"a" * 100), (50, b"b" * 100)]) + END
    elif case == "past-the-end":
        data = sparse10("f", 100, [(90, b"x" * 20)]) + END
    elif case == "more-data-than-stored":
        member = sparse10("f", 1 << 20, [(0, b"x" * 10)])
        data = member.replace(b"1\n0\n10\n", b"1\n0\n9999\n", 1) + END
    elif case == "endless-map":
        records = pax_record("GNU.sparse.major", b"1") + pax_record("GNU.sparse.minor", b"0")
        body = b"1" * (3 * MiB)
        data = pax_block(records) + header_block("f", size=len(body)) + body + END
    elif case == "bad-number":
        records = pax_record("GNU.sparse.major", b"1") + pax_record("GNU.sparse.minor", b"0")
        body = b"1\n-5\n10\n".ljust(512, b"\0")
        data = pax_block(records) + header_block("f", size=len(body)) + body + END
    elif case == "truncated-map":
        records = pax_record("GNU.sparse.major", b"1") + pax_record("GNU.sparse.minor", b"0")
        data = pax_block(records) + header_block("f", size=4096) + b"3\n1".ljust(512, b"\0")
    else:
        data = _old_gnu_sparse(b"")
    with pytest.raises(LayerError) as info:
        _unpack(data, tmp_path / "d")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    if case == "endless-map":
        assert type(info.value) is UnsafeLayerError and "sparse map" in str(info.value)


def test_endless_sparse_map_through_load(tmp_path: Path, store_root: Path, empty_store) -> None:
    """tarfile's own sparse 1.0 reader loops forever on a map that never ends."""
    records = pax_record("GNU.sparse.major", b"1") + pax_record("GNU.sparse.minor", b"0")
    body = b"7" * (2 * MiB)
    tar = pax_block(records) + header_block("f", size=len(body)) + body + END
    p = run_cli("load", "-i", docker_archive(tmp_path / "a.tar", [(tar, tar)]), root=store_root, check=False,
                timeout=120)
    assert "sparse map" in one_line_error(p)
    assert_same_tree(empty_store, tree_snapshot(store_root))


# ---------------------------------------------------------------------------
# item 13: zstd zero runs unpack in linear time
# ---------------------------------------------------------------------------

def test_zstd_zero_run_unpacks_in_linear_time(tmp_path: Path, cli, store_root: Path) -> None:
    # 256 MiB of zeros: a 16 MiB file of zeros, then zero padding after the end marker (read and hashed to
    # the end; docker accepts it). zstd makes ~8 kB of it. Before the fix: 64 MiB took 25 s, this one minutes.
    tar = build([file("zeros", b"\0" * (16 * MiB))])
    tar += b"\0" * (256 * MiB - len(tar))
    blob = zstandard.ZstdCompressor(level=19).compress(tar)
    assert len(blob) < 64 * 1024
    archive = docker_archive(tmp_path / "z.tar", [(tar, blob)])
    del tar
    p = run_cli("load", "-i", archive, root=store_root, timeout=60)
    assert "Loaded image: trust:1" in p.stdout
    img = Store(store_root).resolve("trust:1")
    assert img.manifest.layers[0].media_type == OCI_LAYER_ZSTD
    assert (Store(store_root).layer_path(img.config.diff_ids[0]) / "zeros").stat().st_size == 16 * MiB


def test_zstd_frames_truncation_and_skippable_frames(tmp_path: Path) -> None:
    from unionfs.layer.compression import open_decompressed

    tar = build([file("a", os.urandom(300_000)), file("b", b"\0" * 400_000)])
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"xyz"
    blob = cctx.compress(tar[:200_000]) + skippable + cctx.compress(tar[200_000:])
    r = open_decompressed(io.BytesIO(blob), OCI_LAYER_ZSTD)
    out = []
    while chunk := r.read(65536):
        assert len(chunk) <= 65536
        out.append(chunk)
    assert b"".join(out) == tar
    first = len(cctx.compress(tar[:200_000]))
    for cut in (first // 2, first + 5, first + len(skippable) + 3, len(blob) - 2):
        r = open_decompressed(io.BytesIO(blob[:cut]), OCI_LAYER_ZSTD)
        with pytest.raises(LayerError, match="truncated zstd stream"):
            while r.read(65536):
                pass


# ---------------------------------------------------------------------------
# item 17: typed fields, deep JSON, one-line errors through `load`
# ---------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
HELLO = build([file("hello", b"hi")])

DOCKER_CASES: dict[str, dict[str, Any]] = {
    "manifest-deep": {"manifest": DEEP},
    "manifest-not-json": {"manifest": b"{nope"},
    "repotags-number": {"repo_tags": [5]},
    "repotags-string": {"repo_tags": "busybox"},
    "repotags-object": {"repo_tags": {"a": "b"}},
    "layers-object": {"manifest": [{"Config": "config.json", "RepoTags": [], "Layers": [{"a": 1}]}]},
    "layers-string": {"manifest": [{"Config": "config.json", "RepoTags": [], "Layers": "l0/layer.tar"}]},
    "config-number": {"manifest": [{"Config": 5, "Layers": ["l0/layer.tar"]}]},
    "config-newline": {"manifest": [{"Config": "config.json\nINJECTED", "Layers": ["l0/layer.tar"]}]},
    "config-deep": {"config": json.dumps(image_config([sha_of(HELLO)])).encode()[:-1] + b', "x": ' + DEEP + b"}"},
    "config-nested-70": {"config": json.dumps(image_config([sha_of(HELLO)])).encode()[:-1] + b', "x": ' + b"[" * 70
                         + b"]" * 70 + b"}"},
    "created-number": {"config": image_config([sha_of(HELLO)], created=5)},
    "history-string": {"config": image_config([sha_of(HELLO)], history="x")},
    "history-entry-number": {"config": image_config([sha_of(HELLO)], history=[5])},
    "history-created-by-list": {"config": image_config([sha_of(HELLO)], history=[{"created_by": ["x"]}])},
    "config-string": {"config": image_config([sha_of(HELLO)], config="x")},
    "env-string": {"config": image_config([sha_of(HELLO)], config={"Env": "PATH=/bin"})},
    "labels-numbers": {"config": image_config([sha_of(HELLO)], config={"Labels": {"a": 1}})},
    "diff-id-number": {"config": image_config([5])},
}


@pytest.mark.parametrize("case", sorted(DOCKER_CASES))
def test_bad_docker_archive_is_one_line_error(case: str, tmp_path: Path, store_root: Path, empty_store) -> None:
    archive = docker_archive(tmp_path / "a.tar", [(HELLO, HELLO)], **DOCKER_CASES[case])
    line = one_line_error(run_cli("load", "-i", archive, root=store_root, check=False))
    assert "INJECTED" not in line or "\\n" in line
    assert_same_tree(empty_store, tree_snapshot(store_root))


def _oci_case(layout: Layout, case: str) -> Any:
    good = layout.image()
    entry = dict(good, annotations={"org.opencontainers.image.ref.name": "1"})
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX}
    if case == "index-deep":
        return DEEP
    if case == "annotations-list":
        return dict(top, manifests=[dict(good, annotations=["a", "b"])])
    if case == "annotations-string":
        return dict(top, manifests=[dict(good, annotations="ab")])
    if case == "ref-name-number":
        return dict(top, manifests=[dict(good, annotations={"org.opencontainers.image.ref.name": 5})])
    if case == "urls-number":
        return dict(top, manifests=[dict(entry, urls=5)])
    if case == "urls-numbers":
        return dict(top, manifests=[dict(entry, urls=[5])])
    if case == "digest-number":
        return dict(top, manifests=[dict(entry, digest=5)])
    if case == "digest-newline":
        return dict(top, manifests=[dict(entry, digest=entry["digest"] + "\n")])
    if case == "media-type-number":
        return dict(top, manifests=[dict(entry, mediaType=5)])
    if case == "size-bool":
        return dict(top, manifests=[dict(entry, size=True)])
    if case == "platform-string":
        return dict(top, manifests=[dict(entry, platform="linux/amd64")])
    if case == "platform-os-number":
        return dict(top, manifests=[dict(entry, platform={"os": 5, "architecture": "amd64"})])
    if case == "manifests-object":
        return dict(top, manifests={"a": entry})
    if case == "layer-object-in-manifest":
        return dict(top, manifests=[dict(layout.image(layer={"mediaType": OCI_LAYER, "digest": {"a": 1},
                                                              "size": 1}), annotations=entry["annotations"])])
    if case == "manifest-annotations-list":
        return dict(top, manifests=[dict(layout.image(manifest_extra={"annotations": [1]}),
                                         annotations=entry["annotations"])])
    if case == "nested-index-deep":
        inner = layout.blob(DEEP, OCI_INDEX)
        return dict(top, manifests=[dict(inner, annotations=entry["annotations"])])
    raise AssertionError(case)


OCI_CASES = ["index-deep", "annotations-list", "annotations-string", "ref-name-number", "urls-number",
             "urls-numbers", "digest-number", "digest-newline", "media-type-number", "size-bool", "platform-string",
             "platform-os-number", "manifests-object", "layer-object-in-manifest", "manifest-annotations-list",
             "nested-index-deep"]


@pytest.mark.parametrize("case", OCI_CASES)
def test_bad_oci_layout_is_one_line_error(case: str, tmp_path: Path, store_root: Path, empty_store) -> None:
    layout = Layout(tmp_path / "layout")
    layout.index(_oci_case(layout, case))
    one_line_error(run_cli("load", "-i", layout.root, root=store_root, check=False))
    assert_same_tree(empty_store, tree_snapshot(store_root))


def _store_unchecked(store: Store, config: dict[str, Any], tag: str) -> None:
    """Put an image whose config was never validated into the store, as an older unionfs could have; its
    one layer is HELLO (already stored and extracted)."""
    raw = json.dumps(dict(config, rootfs={"type": "layers", "diff_ids": [sha_of(HELLO)]})).encode()
    cdesc = Descriptor(OCI_CONFIG, store.put_blob_bytes(raw), len(raw))
    manifest = Manifest.build(cdesc, [Descriptor(OCI_LAYER, Digest.parse(sha_of(HELLO)), len(HELLO))])
    store.put_blob_bytes(manifest.raw)
    store.tag(Reference.parse(tag), manifest.descriptor())


def test_an_image_without_layers_has_an_empty_tree(tmp_path: Path, cli) -> None:
    """A valid image may have no layer at all: the tree tools show an empty root (they raised ValueError)."""
    cli("load", "-i", docker_archive(tmp_path / "zero.tar", [], repo_tags=("zero:1",)))
    assert cli("ls", "zero:1", "/").stdout == ""
    assert cli("find", "zero:1").stdout.split() == ["/"]
    cli("layers", "zero:1")
    cli("export", "zero:1", "-o", tmp_path / "zero-rootfs.tar")
    with tarfile.open(tmp_path / "zero-rootfs.tar") as t:
        assert [m.name for m in t.getmembers() if m.name not in (".", "./")] == []
    assert one_line_error(cli("cat", "zero:1", "/etc/passwd", check=False)).endswith("no such file or directory in zero:1")


def test_a_bad_config_in_the_store_breaks_no_command(tmp_path: Path, cli, store_root: Path) -> None:
    cli("load", "-i", docker_archive(tmp_path / "good.tar", [(HELLO, HELLO)], repo_tags=("good:1",)))
    _store_unchecked(Store(store_root), image_config([], created=5, history="x", config={"Env": 7}), "bad:1")
    _store_unchecked(Store(store_root), image_config([], created="2020-01-01T00:00:00Z\nINJECTED   row",
                                                history=[5, {"created_by": "a\nb", "comment": 3}]), "ugly:1")
    p = cli("images")
    rows = p.stdout.splitlines()
    assert len(rows) == 4 and {r.split()[0] for r in rows[1:]} == {"good", "bad", "ugly"}, rows
    assert "WARNING" in p.stderr and "created" in p.stderr
    assert cli("images", "--format", "{{.CreatedAt}}").stdout.count("\n") == 3
    for ref in ("bad:1", "ugly:1"):
        for args in (("history", ref), ("inspect", ref), ("ls", ref, "/"), ("layers", ref)):
            p = cli(*args)
            assert "Traceback" not in p.stderr
    history = cli("history", "ugly:1").stdout.splitlines()
    assert len(history) == 3 and "a\\nb" in history[1]
    assert json.loads(cli("inspect", "bad:1").stdout)[0]["Created"] is None
    assert cli("ls", "bad:1", "/").stdout.split() == ["hello"]


# ---------------------------------------------------------------------------
# item 18: reference grammar; RepoTags strings
# ---------------------------------------------------------------------------

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text", ["x/evil\n:1", "evil\n/x:1", "x:1\n@" + D, "localhost\n:5000/x", "busybox:tåg",
                                  "busybox:１", "busybox:ｔag", "ｂusybox", "x@" + D + "\n:1", "ex\u0430mple.com/x",
                                  "é.com/x"])
def test_reference_grammar_is_ascii_and_whole_string(text: str) -> None:
    with pytest.raises(ReferenceError_) as info:
        Reference.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [5, None, ["busybox"], b"busybox", "x" * 5000])
def test_reference_parse_refuses_non_strings_in_one_bounded_line(value: Any) -> None:
    with pytest.raises(ReferenceError_) as info:
        Reference.parse(value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("text", [D + "\n", 5, None, "sha256:" + "AB" * 32, "sha256:" + "٣" * 64])
def test_digest_parse_whole_string(text: Any) -> None:
    with pytest.raises(DigestError):
        Digest.parse(text)


def test_repotags_string_is_not_read_letter_by_letter() -> None:
    raw = json.dumps([{"Config": "c.json", "RepoTags": "busybox", "Layers": []}]).encode()
    with pytest.raises(ArchiveError, match="RepoTags must be an array of strings, not 'busybox'"):
        parse_docker_archive_manifest(raw)
    entry, = parse_docker_archive_manifest(json.dumps([{"Config": "c.json", "RepoTags": None,
                                                        "Layers": ["a/layer.tar"]}]).encode())
    assert entry.repo_tags == () and entry.layers == ("a/layer.tar",)


def test_newline_in_a_tag_does_not_inject_a_line(tmp_path: Path, cli) -> None:
    archive = docker_archive(tmp_path / "a.tar", [(HELLO, HELLO)], repo_tags=["x/evil\n:1", "fine:1"])
    p = cli("load", "-i", archive)
    assert "invalid tag" in p.stderr and "'x/evil\\n:1'" in p.stderr
    out = cli("images").stdout.splitlines()
    assert len(out) == 2 and out[1].startswith("fine ")


# ---------------------------------------------------------------------------
# item 19: bounded single-line messages
# ---------------------------------------------------------------------------

def _foreign_index(n: int) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D, "size": 1,
         "platform": {"os": "plan9", "architecture": f"arch{i:05}\nX"}} for i in range(n)]}).encode()


def test_platform_error_lists_a_few_platforms() -> None:
    with pytest.raises(PlatformError) as info:
        Index.parse(_foreign_index(15_000)).select(Platform.parse("linux/amd64"))
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 500 and msg.endswith("and 14995 more)"), msg


def test_index_with_15000_foreign_platforms_through_load(tmp_path: Path, store_root: Path, empty_store) -> None:
    layout = Layout(tmp_path / "layout")
    inner = layout.blob(_foreign_index(15_000), OCI_INDEX)
    layout.index({"schemaVersion": 2, "manifests": [dict(inner, annotations={
        "org.opencontainers.image.ref.name": "1"})]})
    line = one_line_error(run_cli("load", "-i", layout.root, root=store_root, check=False))
    assert "no manifest for platform" in line and "and 14995 more" in line
    assert_same_tree(empty_store, tree_snapshot(store_root))


@pytest.mark.parametrize("raw", [
    json.dumps({"schemaVersion": 2, "mediaType": "x\n" * 100_000}).encode(),
    json.dumps({"schemaVersion": "2\n" * 100_000, "mediaType": OCI_MANIFEST}).encode(),
    json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": "sha256:" + "x\n" * 10_000,
                                                                         "size": 1}, "layers": []}).encode(),
    json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": D, "size": 1},
                "layers": [{"mediaType": "y\n" * 100_000, "digest": D, "size": 1}]}).encode(),
    json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": D, "size": 1},
                "layers": [], "annotations": {"k\n" * 50_000: 5}}).encode(),
])
def test_manifest_messages_are_bounded(raw: bytes) -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.parse(raw)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)[:500]


def test_config_strict_at_the_door_lenient_in_the_store(caplog: pytest.LogCaptureFixture) -> None:
    raw = json.dumps(image_config([D], created=5, history=[{"created_by": 1}, "x"], config={"Cmd": "sh",
                                                                                      "Env": [1]})).encode()
    with pytest.raises(ManifestError, match="'created' must be a string, not 5"):
        ImageConfig.parse(raw)
    cfg = ImageConfig.parse(raw, strict=False)
    assert cfg.created is None and cfg.history == [{}, {}] and cfg.data["config"] == {"Cmd": ["sh"]}
    assert "wrong type" in caplog.text
    # docker reads Cmd, Entrypoint and Shell as a string slice: a lone string is a one-element array
    ok = ImageConfig.parse(json.dumps(image_config([D], config={"Entrypoint": "/bin/sh"})).encode())
    assert ok.data["config"]["Entrypoint"] == ["/bin/sh"]
