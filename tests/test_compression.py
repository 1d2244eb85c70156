"""Layer decompression by media type and magic bytes; compression round trips; corrupt streams."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os

import pytest
import zstandard

from unionfs.errors import LayerError
from unionfs.layer.compression import MEDIA_TYPES, compress_stream, compression_of, open_decompressed, sniff

DATA = os.urandom(50_000) + b"a" * 300_000
OCI = "application/vnd.oci.image.layer.v1.tar"


def read_all(r, n: int = 65536) -> bytes:
    parts = []
    while True:
        b = r.read(n)
        assert len(b) <= n
        if not b:
            return b"".join(parts)
        parts.append(b)


def gz(b: bytes) -> bytes:
    return gzip.compress(b, mtime=0)


def zst(b: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(b)


@pytest.mark.parametrize("media_type,expected", [
    (OCI, "none"), (OCI + "+gzip", "gzip"), (OCI + "+zstd", "zstd"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar", "none"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"),
    (None, None), ("", None),
])
def test_media_types(media_type, expected):
    assert compression_of(media_type) == expected


@pytest.mark.parametrize("media_type", [
    OCI + "+bzip2", OCI + "+gzip+encrypted", OCI + "+encrypted", "application/json", "text/plain",
])
def test_unsupported_media_types(media_type):
    with pytest.raises(LayerError) as info:
        open_decompressed(io.BytesIO(gz(DATA)), media_type)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("media_type,wrap", [
    (OCI, lambda b: b), (OCI + "+gzip", gz), (OCI + "+zstd", zst), (None, gz), (None, zst), (None, lambda b: b),
    ("", gz), ("application/vnd.docker.image.rootfs.diff.tar.gzip", gz),
])
def test_decompress(media_type, wrap):
    assert read_all(open_decompressed(io.BytesIO(wrap(DATA)), media_type)) == DATA


def test_read_all_at_once():
    assert open_decompressed(io.BytesIO(gz(DATA)), None).read() == DATA
    assert open_decompressed(io.BytesIO(zst(DATA)), None).read(-1) == DATA


def test_content_wins_over_a_wrong_media_type(caplog):
    # docker-save archives carry plain tars under the gzip media type
    assert read_all(open_decompressed(io.BytesIO(DATA), "application/vnd.docker.image.rootfs.diff.tar.gzip")) == DATA
    assert read_all(open_decompressed(io.BytesIO(zst(DATA)), OCI + "+gzip")) == DATA
    assert "compressed" in caplog.text


def test_multi_member_gzip_and_zero_padding():
    blob = gz(DATA[:1000]) + gz(DATA[1000:]) + b"\0" * 3000
    assert read_all(open_decompressed(io.BytesIO(blob), None)) == DATA


def test_multi_frame_zstd():
    blob = zst(DATA[:1000]) + zst(DATA[1000:])
    assert read_all(open_decompressed(io.BytesIO(blob), None)) == DATA


def test_tiny_streams():
    assert open_decompressed(io.BytesIO(b""), None).read() == b""
    assert open_decompressed(io.BytesIO(b"ab"), None).read() == b"ab"
    assert open_decompressed(io.BytesIO(gz(b"")), None).read() == b""


def test_bomb_output_is_bounded_per_read():
    for blob in (gz(b"\0" * (64 << 20)), zst(b"\0" * (64 << 20))):
        r = open_decompressed(io.BytesIO(blob), None)
        for _ in range(10):
            assert len(r.read(4096)) == 4096


@pytest.mark.parametrize("blob,word", [
    (gz(DATA)[:-5], "truncated"),
    (gz(DATA)[: len(gz(DATA)) // 2], "truncated"),
    (gz(DATA) + b"garbage", "garbage"),
    (gz(DATA)[:-8] + b"\0\0\0\0" + gz(DATA)[-4:], "corrupt"),   # CRC
    (gz(DATA)[:-4] + b"\1\2\3\4", "corrupt"),                   # length
    (b"\x1f\x8b" + b"\xff" * 100, "corrupt"),
    (zst(DATA)[:-3], "truncated"),
    (zst(DATA) + b"garbage!", "corrupt"),
    (bz2.compress(DATA), "bzip2"),
    (lzma.compress(DATA), "xz"),
])
def test_corrupt_streams(blob, word):
    with pytest.raises(LayerError) as info:
        read_all(open_decompressed(io.BytesIO(blob), None))
    msg = str(info.value)
    assert word in msg and "\n" not in msg


def test_read_error_is_translated():
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n=-1):  # type: ignore[no-untyped-def]
            raise OSError(5, "Input/output error")

    with pytest.raises(LayerError, match="Input/output error"):
        open_decompressed(Broken(), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
def test_compress_round_trip(algorithm):
    out = io.BytesIO()
    compress_stream(io.BytesIO(DATA), out, algorithm)
    blob = out.getvalue()
    assert sniff(blob[:6]) == algorithm
    assert len(blob) < len(DATA)
    mt = OCI + ("+gzip" if algorithm == "gzip" else "+zstd")
    assert read_all(open_decompressed(io.BytesIO(blob), mt)) == DATA
    again = io.BytesIO()
    compress_stream(io.BytesIO(DATA), again, algorithm)
    assert again.getvalue() == blob  # deterministic


def test_gzip_output_is_standard():
    out = io.BytesIO()
    compress_stream(io.BytesIO(DATA), out, "gzip")
    assert gzip.decompress(out.getvalue()) == DATA


def test_compress_unknown_algorithm():
    with pytest.raises(LayerError):
        compress_stream(io.BytesIO(DATA), io.BytesIO(), "bzip2")


def test_every_media_type_listed_decompresses():
    for mt, algo in MEDIA_TYPES.items():
        blob = {"gzip": gz, "zstd": zst, "none": lambda b: b}[algo](DATA)
        assert read_all(open_decompressed(io.BytesIO(blob), mt)) == DATA
