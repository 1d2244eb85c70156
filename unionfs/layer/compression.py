"""Layer (de)compression by media type, with magic-byte sniffing.

``open_decompressed(stream, media_type)`` returns a sequential reader of the uncompressed tar stream.
The algorithm comes from the bytes themselves (gzip ``1f 8b``, zstd ``28 b5 2f fd``, anything else is
taken as an uncompressed tar): blobs in the wild do not always match their media type (docker-save
archives carry plain tars under gzip media types), and since the caller verifies the blob's digest and
the layer's DiffID, the content is authoritative. A disagreement with the media type is logged. The media
type still decides what we refuse: unknown types, encrypted layers, and bzip2/xz are ``LayerError``.

Contracts of the returned reader:

* ``read(n)`` returns at most ``n`` bytes (``n < 0``: everything), ``b""`` only at the true end;
* one call decodes at most ``n`` bytes (a small input is never inflated into memory all at once, and
  nothing decoded is copied again: reading a long run of zeros is linear), so the caller's size bound is
  what stops a decompression bomb;
* a truncated or corrupt stream (bad gzip CRC/length, a zstd frame cut short, garbage after the data)
  raises ``LayerError`` with a one-line message; no zlib/zstd exception escapes.

Gzip streams may hold several members, and zero padding after the last member is accepted (as gzip(1)
does). zstd streams may hold several frames (and skippable frames); zstandard's stream reader decodes them
and ``_ZstdFrames`` follows the framing to tell a stream cut inside a frame from a complete one.
"""

from __future__ import annotations

import logging
import zlib
from typing import BinaryIO

import zstandard

try:  # ISA-L's inflate behind zlib's API, twice zlib's speed; a declared dependency, but an interpreter without
    from isal import isal_zlib as _inflate  # it (Debian's python3 running as another user) decodes with zlib
except ImportError:  # pragma: no cover
    _inflate = zlib  # type: ignore[assignment]

from unionfs.errors import LayerError

log = logging.getLogger(__name__)

GZIP = "gzip"
ZSTD = "zstd"
NONE = "none"

_OCI = "application/vnd.oci.image.layer.v1.tar"
_OCI_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
_DOCKER = "application/vnd.docker.image.rootfs.diff.tar"
_DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"

#: media type -> the compression it declares
MEDIA_TYPES: dict[str, str] = {
    _OCI: NONE,
    _OCI + "+gzip": GZIP,
    _OCI + "+zstd": ZSTD,
    _OCI_ND: NONE,
    _OCI_ND + "+gzip": GZIP,
    _OCI_ND + "+zstd": ZSTD,
    _DOCKER + ".gzip": GZIP,
    _DOCKER_FOREIGN + ".gzip": GZIP,
    # Not in the docker spec, but written by tools for the plain layer.tar of docker-save archives.
    _DOCKER: NONE,
}

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"

_IN_CHUNK = 256 * 1024      # compressed bytes read from the source at a time (gzip)
_ZSTD_IN_CHUNK = 128 * 1024  # compressed bytes the zstd stream reader asks for at a time
_DEFAULT_READ = 1 << 20


def compression_of(media_type: str | None) -> str | None:
    """The compression a media type declares (``"gzip"``, ``"zstd"``, ``"none"``); None for None/"".

    Raises LayerError for a media type that is not a layer type we can unpack (encrypted, bzip2, unknown).
    """
    if not media_type:
        return None
    try:
        return MEDIA_TYPES[media_type]
    except KeyError:
        if "encrypted" in media_type:
            raise LayerError(f"encrypted layers are not supported: media type {media_type!r}") from None
        raise LayerError(f"unsupported layer media type {media_type!r}") from None


def sniff(head: bytes) -> str:
    """The compression of a stream starting with ``head`` (at least 6 bytes when the stream has them).

    Raises LayerError for bzip2 and xz, which no layer media type allows.
    """
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"):
        return ZSTD
    if head.startswith(_XZ_MAGIC):
        raise LayerError("xz-compressed layers are not supported")
    if head.startswith(_BZIP2_MAGIC) and len(head) >= 4 and head[3:4].isdigit():
        raise LayerError("bzip2-compressed layers are not supported")
    return NONE


def open_decompressed(stream: BinaryIO, media_type: str | None) -> BinaryIO:
    """A sequential reader of the uncompressed content of ``stream`` (see the module docstring)."""
    declared = compression_of(media_type)
    try:
        head = _read_exactly_up_to(stream, 6)
    except OSError as e:
        raise LayerError(f"cannot read layer: {e.strerror or e}") from None
    actual = sniff(head)
    if declared is not None and declared != actual:
        log.warning("layer of media type %s is %s-compressed; decompressing it as %s",
                    media_type, "not" if actual == NONE else actual, actual)
    src = _Prefixed(head, stream)
    if actual == GZIP:
        return _GzipReader(src)  # type: ignore[return-value]
    if actual == ZSTD:
        return _ZstdReader(src)  # type: ignore[return-value]
    return src  # type: ignore[return-value]


def compress_stream(src: BinaryIO, dst: BinaryIO, algorithm: str = GZIP) -> None:
    """Compress everything ``src`` holds into ``dst`` with ``algorithm`` (``"gzip"`` or ``"zstd"``).

    The gzip header carries no name and mtime 0, so the output depends only on the input.
    Raises LayerError for another algorithm or an I/O error.
    """
    if algorithm == GZIP:
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        write, finish = comp.compress, comp.flush
    elif algorithm == ZSTD:
        zcomp = zstandard.ZstdCompressor(level=3).compressobj()
        write, finish = zcomp.compress, zcomp.flush
    else:
        raise LayerError(f"unsupported compression {algorithm!r} (use gzip or zstd)")
    try:
        while True:
            chunk = src.read(_DEFAULT_READ)
            if not chunk:
                break
            out = write(chunk)
            if out:
                dst.write(out)
        dst.write(finish())
    except OSError as e:
        raise LayerError(f"cannot compress layer: {e.strerror or e}") from None
    except (zlib.error, zstandard.ZstdError) as e:
        raise LayerError(f"cannot compress layer: {e}") from None


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------

def _read_exactly_up_to(stream: BinaryIO, n: int) -> bytes:
    parts = []
    while n > 0:
        b = stream.read(n)
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


class _Prefixed:
    """``head`` followed by the rest of ``stream``: undoes the peek of the sniffer."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data = self._head + self._stream.read()
                self._head = b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        try:
            return self._stream.read(n)
        except OSError as e:
            raise LayerError(f"cannot read layer: {e.strerror or e}") from None


class _Decoder:
    """The one reader shape of every compression: subclasses implement ``_fill(n)``, which returns between 1
    and ``n`` decompressed bytes, or b"" at the true end. Nothing is buffered here, so a read never copies
    more than it returns (no re-slicing of a big decoded block: that made long zero runs quadratic)."""

    def __init__(self, src: _Prefixed) -> None:
        self._src = src
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while True:
                b = self.read(_DEFAULT_READ)
                if not b:
                    return b"".join(parts)
                parts.append(b)
        if self._done or n == 0:
            return b""
        out = self._fill(n)
        if not out:
            self._done = True
        return out

    def _fill(self, n: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


class _GzipReader(_Decoder):
    """Multi-member gzip with CRC and length checks (zlib's gzip mode), bounded output per call."""

    def __init__(self, src: _Prefixed) -> None:
        super().__init__(src)
        self._d: "zlib._Decompress | None" = None
        self._pending = b""
        self._members = 0

    def _start_member(self) -> bool:
        """Skip zero padding; start the next member. False at the clean end of the stream."""
        buf = self._pending
        while True:
            buf = buf.lstrip(b"\0")
            if len(buf) >= 2:
                break
            more = self._src.read(_IN_CHUNK)
            if not more:
                if buf:
                    raise LayerError("corrupt gzip stream: garbage after the compressed data")
                if self._members == 0:
                    raise LayerError("corrupt gzip stream: no data")
                return False
            buf += more
        if not buf.startswith(_GZIP_MAGIC):
            raise LayerError("corrupt gzip stream: garbage after the compressed data")
        self._d = _inflate.decompressobj(31)
        self._pending = buf
        self._members += 1
        return True

    def _fill(self, n: int) -> bytes:
        try:
            while True:
                if self._d is None and not self._start_member():
                    return b""
                d = self._d
                assert d is not None
                data = d.unconsumed_tail or self._pending
                self._pending = b""
                if not data:
                    data = self._src.read(_IN_CHUNK)
                    if not data:
                        raise LayerError("truncated gzip stream: it ends inside compressed data")
                out = d.decompress(data, n)
                if d.eof:
                    self._pending = d.unused_data
                    self._d = None
                if out:
                    return out
        except (zlib.error, _inflate.error) as e:
            raise LayerError(f"corrupt gzip stream: {e}") from None


class _ZstdFrames:
    """A pass-through source that follows the frame structure of a zstd stream (RFC 8878, section 3.1) as
    its bytes go by: zstandard's stream reader takes a stream that stops inside a frame for a clean end, so
    this is what tells a truncated stream (LayerError when the source ends inside a frame) from a complete
    one. Only framing is followed (frame and block headers, block and checksum lengths, skippable frames);
    the decoder checks everything else. Bytes that are not a frame are passed on for the decoder to refuse.
    """

    def __init__(self, src: _Prefixed) -> None:
        self._src = src
        self._hdr = bytearray()   # a header being collected
        self._want = 4            # its length
        self._state = "magic"     # what the header is: magic, skipsize, fhd, block; or "garbage"
        self._skip = 0            # payload bytes to pass before the next header
        self._checksum = False    # the current frame ends with a 4-byte checksum
        self._then = "magic"      # the header that follows the skipped bytes

    def read(self, n: int) -> bytes:
        data = self._src.read(n)
        if not data:
            if self._state != "garbage" and (self._hdr or self._skip or self._state != "magic"):
                raise LayerError("truncated zstd stream: it ends inside a frame")
            return data
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self._state != "garbage":
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._expect(self._then)
                continue
            take = min(self._want - len(self._hdr), end - pos)
            self._hdr += data[pos:pos + take]
            pos += take
            if len(self._hdr) == self._want:
                hdr, self._hdr = bytes(self._hdr), bytearray()
                self._header(hdr)

    def _expect(self, state: str) -> None:
        self._state = state
        self._want = {"magic": 4, "skipsize": 4, "fhd": 1, "block": 3}[state]

    def _skip_then(self, count: int, state: str) -> None:
        if count:
            self._skip, self._then = count, state
            self._state = "payload"
        else:
            self._expect(state)

    def _header(self, hdr: bytes) -> None:
        if self._state == "magic":
            if hdr == _ZSTD_MAGIC:
                self._expect("fhd")
            elif hdr[0] & 0xF0 == 0x50 and hdr[1:4] == b"\x2a\x4d\x18":
                self._expect("skipsize")
            else:
                self._state = "garbage"
        elif self._state == "skipsize":
            self._skip_then(int.from_bytes(hdr, "little"), "magic")
        elif self._state == "fhd":
            d = hdr[0]
            single = bool(d & 0x20)
            self._checksum = bool(d & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
            self._skip_then((0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs, "block")
        else:  # a block header: last flag, type, size
            v = int.from_bytes(hdr, "little")
            last, btype, size = v & 1, (v >> 1) & 3, v >> 3
            if btype == 3:
                self._state = "garbage"  # reserved: the decoder refuses it
                return
            after = "magic" if last else "block"
            payload = 1 if btype == 1 else size
            if last and self._checksum:
                payload += 4
            self._skip_then(payload, after)


class _ZstdReader(_Decoder):
    """Multi-frame zstd through zstandard's stream reader: ``read(n)`` decodes at most ``n`` bytes."""

    def __init__(self, src: _Prefixed) -> None:
        super().__init__(src)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _ZstdFrames(src), read_size=_ZSTD_IN_CHUNK, read_across_frames=True)

    def _fill(self, n: int) -> bytes:
        try:
            return self._reader.read(n)
        except zstandard.ZstdError as e:
            raise LayerError(f"corrupt zstd stream: {e}") from None
