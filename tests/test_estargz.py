"""eStargz (issue 18, point 1): ``write_estargz`` / ``verify_estargz`` on layers made in code, and ``unionfs convert
--estargz`` of the busybox image, unpacked by the store, run, pushed to a real registry, copied back with skopeo
and unpacked with umoci.

The spec's facts checked here: a gzip member per file's data (chunks of at most the chunk size, each starting a
member, each with a chunkDigest), the TOC ``stargz.index.json`` as the last tar entry in a member of its own, the
51-byte footer ``%016xSTARGZ``, the landmark, the manifest annotations; and that the uncompressed stream is the
layer's tar plus the landmark and the TOC.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from support import tar as T
from support.busybox import store_state
from support.cli import run_cli
from support.mount import require, skip_reason_root, skip_reason_tool
from support.registry import have_registry, running_registry
from support.tree import ROOTFS, assert_same_tree, tree_snapshot

from unionfs.errors import EstargzError, LayerTooLargeError, UnsafeLayerError
from unionfs.layer.estargz import (
    FOOTER_SIZE,
    LANDMARK_CONTENT,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    TOC_NAME,
    UNCOMPRESSED_SIZE_ANNOTATION,
    EstargzLayer,
    footer,
    parse_footer,
    read_toc,
    verify_estargz,
    write_estargz,
)
from unionfs.layer.unpack import unpack_layer
from unionfs.oci.digest import Digest
from unionfs.store.store import Store

CHUNK = 256 * 1024
BIG = os.urandom(3 * CHUNK + 12345)  # four chunks, the last one short
GZIP_MAGIC = b"\x1f\x8b"


def layer_entries() -> list[T.Entry]:
    return [
        T.directory("etc"),
        T.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", xattrs={"user.note": b"\xff\x00bin"}),
        T.file("big", BIG, mode=0o755, uid=1000, gid=1000),
        T.file("empty"),
        T.file("caf\u00e9", b"utf-8 name\n"),
        T.symlink("etc/link", "/etc/passwd"),
        T.hardlink("etc/hard", "etc/passwd"),
        T.fifo("pipe"),
        T.whiteout("gone"),
        T.opaque("etc"),
    ]


def convert(entries: list[T.Entry] | None = None, **kw) -> tuple[bytes, EstargzLayer]:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    layer = write_estargz(io.BytesIO(T.build(entries if entries is not None else layer_entries())), out,
                          chunk_size=CHUNK, **kw)
    return out.getvalue(), layer


def members_of(blob: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """The tar entries of the blob's uncompressed stream, by name, with their data."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:", encoding="utf-8") as tf:
        for ti in tf:
            f = tf.extractfile(ti) if ti.isreg() else None
            out[ti.name] = (ti, f.read() if f else b"")
    return out


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------- the writer


def test_a_written_layer_passes_the_checks_and_its_stream_is_the_layer() -> None:
    blob, layer = convert()
    source = T.build(layer_entries())
    assert layer.source_diff_id == Digest.of_bytes(source)
    assert verify_estargz(io.BytesIO(blob), toc_digest=layer.toc_digest, diff_id=layer.diff_id) == layer
    assert (layer.digest, layer.size) == (Digest.of_bytes(blob), len(blob))
    stream = gzip.decompress(blob)  # one gzip stream of many members: what eStargz-agnostic runtimes read
    assert Digest.of_bytes(stream) == layer.diff_id and len(stream) == layer.uncompressed_size
    assert layer.annotations() == {TOC_DIGEST_ANNOTATION: str(layer.toc_digest),
                                   UNCOMPRESSED_SIZE_ANNOTATION: str(len(stream))}
    got = members_of(blob)
    want = members_of(gzip.compress(source))
    assert list(got)[0] == NO_PREFETCH_LANDMARK and list(got)[-1] == TOC_NAME
    assert got.pop(NO_PREFETCH_LANDMARK)[1] == LANDMARK_CONTENT
    assert Digest.of_bytes(got.pop(TOC_NAME)[1]) == layer.toc_digest

    def fields(m: tuple[tarfile.TarInfo, bytes]) -> tuple[object, ...]:
        ti, data = m
        return (ti.type, ti.mode, ti.uid, ti.gid, ti.size, ti.mtime, ti.linkname, data,
                {k: v for k, v in ti.pax_headers.items() if k.startswith("SCHILY.")})

    assert {k: fields(v) for k, v in got.items()} == {k: fields(v) for k, v in want.items()}


def test_the_footer_points_at_the_toc_member() -> None:
    blob, layer = convert()
    tail = blob[-FOOTER_SIZE:]
    toc_offset = parse_footer(tail)
    assert tail[10:12] == b"\x1a\x00" and tail[12:16] == b"SG\x16\x00"  # XLEN 26, SI1 SI2, LEN 22
    assert tail[16:38] == f"{toc_offset:016x}STARGZ".encode()
    assert gzip.decompress(tail) == b"" and footer(toc_offset) == tail
    d = zlib.decompressobj(31)  # the TOC is exactly one member, from its offset to the footer
    toc_tar = d.decompress(blob[toc_offset:-FOOTER_SIZE])
    assert d.eof and not d.unused_data
    with tarfile.open(fileobj=io.BytesIO(toc_tar)) as tf:
        (ti,) = tf.getmembers()
        raw = tf.extractfile(ti).read()  # type: ignore[union-attr]
    assert ti.name == TOC_NAME and Digest.of_bytes(raw) == layer.toc_digest
    toc, digest, offset = read_toc(io.BytesIO(blob))
    assert (toc, digest, offset) == (json.loads(raw), layer.toc_digest, toc_offset) and toc["version"] == 1
    with pytest.raises(EstargzError) as e:
        parse_footer(tail.replace(b"STARGZ", b"STARGX"))
    assert "footer" in one_line(e)


def test_a_large_file_is_chunked_and_each_chunk_verifies() -> None:
    blob, _ = convert()
    toc, _, toc_offset = read_toc(io.BytesIO(blob))
    big = [e for e in toc["entries"] if e["name"] == "big"]
    assert [e["type"] for e in big] == ["reg", "chunk", "chunk", "chunk"]
    assert [e.get("chunkOffset", 0) for e in big] == [0, CHUNK, 2 * CHUNK, 3 * CHUNK]
    assert [e.get("chunkSize", 0) for e in big] == [CHUNK, CHUNK, CHUNK, 0]  # the last one: 0, to the end
    assert big[0]["size"] == len(BIG) and big[0]["digest"] == T.sha_of(BIG)
    for e in big:  # each chunk on its own: decompress from its offset, hash its bytes
        assert blob[e["offset"]:e["offset"] + 2] == GZIP_MAGIC and e["offset"] < toc_offset
        start = e.get("chunkOffset", 0)
        length = e.get("chunkSize") or len(BIG) - start
        data = zlib.decompressobj(31).decompress(blob[e["offset"]:], length)[:length]
        assert data == BIG[start:start + length]
        assert hashlib.sha256(data).hexdigest() == e["chunkDigest"].split(":")[1]
    small = next(e for e in toc["entries"] if e["name"] == "etc/passwd")
    assert "chunkSize" not in small and small["chunkDigest"] == small["digest"]
    assert small["xattrs"] == {"user.note": "/wBiaW4="}  # base64, as Go's []byte
    types = {e["name"]: e["type"] for e in toc["entries"]}
    assert types["etc/"] == "dir" and types["etc/link"] == "symlink" and types["etc/hard"] == "hardlink"
    assert types["pipe"] == "fifo" and types[".wh.gone"] == "reg"
    empty = next(e for e in toc["entries"] if e["name"] == ".wh.gone")
    assert "offset" not in empty and "size" not in empty and empty["digest"] == T.sha_of(b"")
    # every member starts where the TOC says data starts, or holds headers only: no data entry starts mid-member
    offsets = {e["offset"] for e in toc["entries"] if "offset" in e}
    assert offsets <= set(member_starts(blob))


def test_prioritized_files_come_first_with_the_prefetch_landmark() -> None:
    blob, layer = convert(prioritized=["/etc/hard", "/not/in/this/layer", "./big"])
    toc, _, _ = read_toc(io.BytesIO(blob))
    names = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    # the hardlink brings its parent and its target along, in the order asked
    assert names[:5] == ["etc/", "etc/passwd", "etc/hard", "big", PREFETCH_LANDMARK]
    assert NO_PREFETCH_LANDMARK not in names and layer.prefetch == ("etc", "etc/passwd", "etc/hard", "big")
    assert verify_estargz(io.BytesIO(blob)).prefetch == layer.prefetch
    # the landmark's header starts a member: the prefetch range ends at a member boundary
    heads = [zlib.decompressobj(31).decompress(blob[at:], 512)[:100].rstrip(b"\0") for at in member_starts(blob)]
    assert PREFETCH_LANDMARK.encode() in heads


def member_starts(blob: bytes) -> list[int]:
    """The offsets where the blob's gzip members start."""
    starts, at = [], 0
    while at < len(blob):
        starts.append(at)
        d = zlib.decompressobj(31)
        d.decompress(blob[at:])
        at = len(blob) - len(d.unused_data)
    return starts


def test_converting_an_estargz_layer_again_gives_the_same_blob() -> None:
    """Its TOC and landmark are dropped from the input and written anew: the same entries, the same bytes."""
    blob, layer = convert()
    again, layer2 = convert_stream(gzip.decompress(blob))
    assert again == blob and layer2 == layer and layer2.source_diff_id == layer.diff_id


def convert_stream(tar_bytes: bytes) -> tuple[bytes, EstargzLayer]:
    out = io.BytesIO()
    layer = write_estargz(io.BytesIO(tar_bytes), out, chunk_size=CHUNK)
    return out.getvalue(), layer


# ------------------------------------------------------------------------------------- the checks


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1:]


def test_one_corrupt_byte_of_a_chunk_is_caught() -> None:
    blob, layer = convert()
    toc, _, _ = read_toc(io.BytesIO(blob))
    second = next(e for e in toc["entries"] if e["type"] == "chunk")
    with pytest.raises(EstargzError) as e:
        verify_estargz(io.BytesIO(flip(blob, second["offset"] + 5000)), toc_digest=layer.toc_digest)
    assert f"offset {second['offset']}" in one_line(e)


def test_one_corrupt_byte_of_the_toc_is_caught() -> None:
    blob, layer = convert()
    _, _, toc_offset = read_toc(io.BytesIO(blob))
    for at in (toc_offset + 40, len(blob) - FOOTER_SIZE - 12):
        with pytest.raises(EstargzError) as e:
            verify_estargz(io.BytesIO(flip(blob, at)), toc_digest=layer.toc_digest)
        assert "TOC" in one_line(e)


def retoc(blob: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    """The blob with its TOC JSON changed by ``change`` and written back (a well-formed member, same offset)."""
    toc, _, toc_offset = read_toc(io.BytesIO(blob))
    change(toc)
    raw = json.dumps(toc).encode()
    ti = tarfile.TarInfo(TOC_NAME)
    ti.size = len(raw)
    member = gzip.compress(ti.tobuf() + raw + b"\0" * (-len(raw) % 512) + b"\0" * 1024)
    return blob[:toc_offset] + member + footer(toc_offset)


def test_a_changed_toc_fails_its_digest_and_a_wrong_chunk_digest_is_caught() -> None:
    blob, layer = convert()

    def wrong_chunk_digest(toc: dict) -> None:  # type: ignore[type-arg]
        next(e for e in toc["entries"] if e["type"] == "chunk")["chunkDigest"] = T.sha_of(b"other")

    forged = retoc(blob, wrong_chunk_digest)
    with pytest.raises(EstargzError) as e:
        verify_estargz(io.BytesIO(forged), toc_digest=layer.toc_digest)
    assert "TOC digest mismatch" in one_line(e)
    with pytest.raises(EstargzError) as e:
        verify_estargz(io.BytesIO(forged))
    assert "chunk at offset" in one_line(e) and "digest" in str(e.value)

    def shifted(toc: dict) -> None:  # type: ignore[type-arg]
        next(e for e in toc["entries"] if e["name"] == "etc/passwd")["offset"] += 1

    with pytest.raises(EstargzError) as e:
        verify_estargz(io.BytesIO(retoc(blob, shifted)))
    assert "is not the start of a gzip member" in one_line(e)

    def dropped(toc: dict) -> None:  # type: ignore[type-arg]
        toc["entries"] = [e for e in toc["entries"] if e["name"] != "pipe"]

    with pytest.raises(EstargzError) as e:
        verify_estargz(io.BytesIO(retoc(blob, dropped)))
    assert "pipe" in one_line(e)


@pytest.mark.parametrize("cut", [1, FOOTER_SIZE, 3000])
def test_a_truncated_or_footerless_blob_is_refused(cut: int) -> None:
    blob, _ = convert()
    with pytest.raises(EstargzError) as e:
        verify_estargz(io.BytesIO(blob[:-cut]))
    one_line(e)
    with pytest.raises(EstargzError):
        verify_estargz(io.BytesIO(gzip.compress(T.build(layer_entries()))))  # a plain gzip layer


@pytest.mark.parametrize("entries, error, text", [
    ([T.file("../evil", b"x")], UnsafeLayerError, "'..'"),
    ([T.file("/etc/evil", b"x")], UnsafeLayerError, "absolute"),
    ([T.file("a", b"x"), T.hardlink("b", "../../a")], UnsafeLayerError, "hardlink target"),
    ([T.file("caf\udce9", b"x")], EstargzError, "not UTF-8"),
    ([T.file("big", b"x" * 70_000)], LayerTooLargeError, "bound"),
])
def test_hostile_input_is_refused_with_one_line(entries: list[T.Entry], error: type, text: str) -> None:
    out = io.BytesIO()
    with pytest.raises(error) as e:
        write_estargz(io.BytesIO(T.build(entries)), out, max_size=65536)
    assert text in one_line(e)


def test_an_earlier_entry_of_the_same_name_is_replaced_and_old_tocs_dropped() -> None:
    blob, _ = convert([T.file("a", b"old"), T.file(TOC_NAME, b"{}"), T.file(NO_PREFETCH_LANDMARK, b"\x0f"),
                       T.file("a", b"new")])
    toc, _, _ = read_toc(io.BytesIO(blob))
    assert [e["name"] for e in toc["entries"]] == [NO_PREFETCH_LANDMARK, "a"]
    assert members_of(blob)["a"][1] == b"new"
    verify_estargz(io.BytesIO(blob))


# ------------------------------------------------------------------------ convert, registry, umoci


def unpacked(blob: Path, dest: Path, media_type: str) -> Path:
    dest.mkdir()
    with open(blob, "rb") as f:
        unpack_layer(f, str(dest), media_type=media_type)
    return dest


def without_estargz_files(root: Path) -> Path:
    """``root`` after checking and removing the two files eStargz adds at a layer's root."""
    assert (root / NO_PREFETCH_LANDMARK).read_bytes() == LANDMARK_CONTENT
    assert json.loads((root / TOC_NAME).read_bytes())["version"] == 1
    os.unlink(root / NO_PREFETCH_LANDMARK)
    os.unlink(root / TOC_NAME)
    return root


def test_convert_cli_stores_an_image_that_runs_and_survives_a_registry(store: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    r = run_cli("convert", "--estargz", "--chunk-size", "256K", "busybox:latest", "busybox:esgz", root=store)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("layer 0: sha256:") and " toc sha256:" in lines[0]
    s = Store(store)
    old, new = s.resolve("busybox:latest"), s.resolve("busybox:esgz")
    assert lines[-1] == str(new.id)
    assert len(new.manifest.layers) == len(old.manifest.layers) == 1
    (desc,) = new.manifest.layers
    assert desc.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    with s.open_blob(desc.digest) as f:
        layer = verify_estargz(f, toc_digest=Digest.parse(desc.annotations[TOC_DIGEST_ANNOTATION]),
                               diff_id=new.config.diff_ids[0])
        toc, _, _ = read_toc(f)
    assert desc.annotations[UNCOMPRESSED_SIZE_ANNOTATION] == str(layer.uncompressed_size)
    assert any(e["type"] == "chunk" and e["name"] in ("bin/busybox", "./bin/busybox") for e in toc["entries"])  # 2 MB, chunked
    # everything but the DiffIDs is the old config
    assert {k: v for k, v in new.config.data.items() if k != "rootfs"} == \
        {k: v for k, v in old.config.data.items() if k != "rootfs"}
    # the layer unpacks to the original tree (plus the landmark and the TOC)
    before = unpacked(s.blob_path(old.manifest.layers[0].digest), tmp_path / "old", old.manifest.layers[0].media_type)
    after = without_estargz_files(unpacked(s.blob_path(desc.digest), tmp_path / "new", desc.media_type))
    assert_same_tree(tree_snapshot(before, **ROOTFS), tree_snapshot(after, **ROOTFS))
    assert run_cli("run", "--rm", "busybox:esgz", "cat", "/etc/passwd", root=store).stdout.startswith("root:x:0:0:")

    require(have_registry(), skip_reason_tool("skopeo"), skip_reason_tool("umoci"), skip_reason_root())
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    with running_registry(tmp_path / "registry") as reg:
        ref = f"{reg.host}/bb:esgz"
        run_cli("push", "-q", "busybox:esgz", ref, root=store)
        layout = tmp_path / "oci"
        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:esgz"],
                       check=True, capture_output=True)
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    (pulled,) = manifest["layers"]
    assert pulled["digest"] == str(desc.digest) and pulled["annotations"] == desc.annotations
    with open(layout / "blobs/sha256" / pulled["digest"].split(":")[1], "rb") as f:
        assert verify_estargz(f, toc_digest=layer.toc_digest) == layer
    for name, image in (("orig", f"{store}:docker.io/library/busybox:latest"), ("esgz", f"{layout}:esgz")):
        subprocess.run(["umoci", "unpack", "--image", image, tmp_path / name], check=True, capture_output=True)
    assert_same_tree(tree_snapshot(tmp_path / "orig/rootfs", **ROOTFS),
                     tree_snapshot(without_estargz_files(tmp_path / "esgz/rootfs"), **ROOTFS), ("umoci original",
                                                                                                 "umoci eStargz"))


def test_convert_errors_leave_the_store_as_it_was(store: Path) -> None:
    before = store_state(store)
    r = run_cli("convert", "--estargz", "nosuch:image", "x:1", root=store, check=False)
    assert r.returncode == 1 and r.stderr.strip() == "unionfs: no such image: nosuch:image"
    r = run_cli("convert", "busybox:latest", "x:1", root=store, check=False)
    assert r.returncode == 2 and "--estargz" in r.stderr
    digest = "x@sha256:" + "0" * 64
    r = run_cli("convert", "--estargz", "busybox:latest", digest, root=store, check=False)
    assert r.returncode == 2 and "needs a tag" in r.stderr
    assert store_state(store) == before


def test_a_layer_that_cannot_be_converted_takes_the_others_back(store_root: Path, tmp_path: Path) -> None:
    """The second layer fails (a non-UTF-8 name, which a TOC cannot hold) after the first was stored: the
    store's transaction removes the first one's blob, and no tag is written."""
    good = T.build([T.file("ok", b"fine\n")])
    bad = T.build([T.file("caf\udce9", b"latin-1 name\n")])
    archive = T.docker_archive(tmp_path / "two.tar", [(good, T.gz(good)), (bad, T.gz(bad))])
    run_cli("load", "-i", archive, root=store_root)
    before = store_state(store_root)
    r = run_cli("convert", "--estargz", "trust:1", "trust:esgz", root=store_root, check=False)
    assert r.returncode == 1 and "not UTF-8" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert store_state(store_root) == before
    r = run_cli("convert", "--estargz", "--chunk-size", "0", "trust:1", "trust:esgz", root=store_root, check=False)
    assert r.returncode == 2 and "invalid size" in r.stderr
