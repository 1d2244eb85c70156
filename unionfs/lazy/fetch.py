"""The range reads of a lazy layer, each checked before its bytes are used: the footer and the TOC (against the
TOC digest the manifest annotates), and a file's chunks (each against its ``chunkDigest``, the file against its
``digest``). No store; the registry client is the caller's (:class:`RangeSource`).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from unionfs.errors import EstargzError, LazyLayerError, shown
from unionfs.layer.estargz import (
    FOOTER_SIZE,
    MAX_TOC_SIZE,
    TocData,
    check_toc,
    parse_footer,
    parse_toc,
    toc_of_member,
)
from unionfs.oci.digest import Digest

#: the most bytes of one chunk a lazy read takes (a layer with a bigger chunk is pulled whole instead): the chunk
#: is held in memory, and the mount waits for it
MAX_CHUNK = 64 << 20
#: room for a gzip header's optional fields (a name, a comment, an extra field) in a chunk's range
_HEADER_SLACK = 4096


def member_bound(length: int) -> int:
    """The most bytes a gzip member holding ``length`` bytes can take (zlib's ``deflateBound`` with the gzip
    wrapper, plus room for optional header fields): the range a chunk's read asks for at most."""
    return length + (length >> 12) + (length >> 14) + (length >> 25) + 13 - 6 + 18 + _HEADER_SLACK


class RangeSource(Protocol):
    """What a lazy read needs of a registry client (``RegistryClient``, ``MirroredClient``)."""

    def fetch_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes: ...


class LocalBlob:
    """A :class:`RangeSource` reading a blob downloaded whole (``ROOT/lazy/blobs/<hex>``) instead of the registry;
    what it reads is checked all the same."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fetch_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), end - start, start)
        if len(data) != end - start:
            raise LazyLayerError(f"{self.path}: {len(data)} bytes at {start}, not {end - start}")
        return data


@dataclass(frozen=True)
class Chunk:
    """One chunk of a file: its bytes ``file_offset`` to ``file_offset + length`` of the file are the start of
    the gzip member at blob offset ``member``, read up to ``end`` (the next data's member, or the TOC, or the
    most such a member can take: :func:`member_bound`); ``digest`` is the TOC's ``chunkDigest``."""

    file_offset: int
    length: int
    member: int
    end: int
    digest: Digest


@dataclass(frozen=True)
class Toc:
    """A TOC checked against the spec (:func:`unionfs.layer.estargz.check_toc`) for a blob whose TOC member is
    at ``offset``: the parsed JSON ``toc``, its ``raw`` bytes, and what the check found: the file entries
    (``files``, no chunks, in order), the data entries in blob order (``data``) and the names before the
    prefetch landmark (``prefetch``). Made only by :func:`fetch_toc` and :func:`checked_toc`, so that one
    process checks a TOC once; nothing may change ``toc`` after."""

    toc: dict[str, Any]
    raw: bytes
    offset: int
    files: list[dict[str, Any]]
    data: list[TocData]
    prefetch: tuple[str, ...]

    @property
    def entries(self) -> list[dict[str, Any]]:
        """All the TOC's entries (chunks included): a placeholder's mark and a chunk plan index them."""
        return self.toc["entries"]  # type: ignore[no-any-return]


def checked_toc(raw: bytes, offset: int) -> Toc:
    """The TOC ``raw`` (bytes whose digest the caller checked) of a blob whose TOC member is at ``offset``,
    parsed and checked; EstargzError for one the spec does not allow."""
    return _checked(parse_toc(raw), raw, offset)


def _checked(toc: dict[str, Any], raw: bytes, offset: int) -> Toc:
    files, data, prefetch = check_toc(toc, offset)
    return Toc(toc, raw, offset, files, data, prefetch)


def fetch_toc(client: RangeSource, repository: str, digest: Digest, size: int, toc_digest: Digest) -> Toc:
    """The TOC of the eStargz blob ``digest`` (``size`` bytes) of ``repository``, by two range reads (the
    footer, then the TOC member up to it). The TOC's digest must be ``toc_digest`` (the manifest's annotation)
    and its entries must follow the spec (:func:`unionfs.layer.estargz.check_toc`): EstargzError otherwise;
    RegistryError when the reads fail."""
    if size <= FOOTER_SIZE:
        raise EstargzError(f"blob {digest.short}: {size} bytes is too small for an eStargz layer")
    toc_offset = parse_footer(client.fetch_range(repository, digest, size - FOOTER_SIZE, size))
    end = size - FOOTER_SIZE
    if not 0 <= toc_offset < end:
        raise EstargzError(f"footer: TOC offset {toc_offset} is outside the blob ({end} bytes before the footer)")
    if end - toc_offset > MAX_TOC_SIZE:
        raise EstargzError(f"TOC member of {end - toc_offset} bytes (bound {MAX_TOC_SIZE})")
    toc, got, raw = toc_of_member(client.fetch_range(repository, digest, toc_offset, end), toc_offset)
    if got != toc_digest:
        raise EstargzError(f"TOC digest mismatch: the annotation says {toc_digest}, the TOC is {got}")
    return _checked(toc, raw, toc_offset)


def plan_chunks(toc: Toc) -> dict[int, list[Chunk]]:
    """For each regular file with data, by its index in the TOC's entries, its chunks in file order."""
    data = toc.data
    bounds = [d.offset for d in data[1:]] + [toc.offset]  # data are in blob order: a member ends before the next
    out: dict[int, list[Chunk]] = {}
    k = 0
    current = -1
    for i, ent in enumerate(toc.entries):
        kind = ent.get("type")
        if kind == "reg" and ent.get("size"):
            current = i
            out[i] = []
        elif kind != "chunk":
            continue
        d = data[k]
        end = min(bounds[k], d.offset + member_bound(d.length))
        out[current].append(Chunk(ent.get("chunkOffset", 0), d.length, d.offset, end, d.digest))
        k += 1
    assert k == len(data)
    return out


def oversized(chunks: dict[int, list[Chunk]]) -> Chunk | None:
    """A chunk bigger than :data:`MAX_CHUNK` (its layer is not read lazily), or None."""
    return next((c for cs in chunks.values() for c in cs if c.length > MAX_CHUNK), None)


def read_chunk(client: RangeSource, repository: str, digest: Digest, chunk: Chunk) -> bytes:
    """The bytes of ``chunk`` of the blob ``digest``: its gzip member fetched by range, decompressed, and
    checked against the chunk's digest. LazyLayerError for bytes that do not decompress to a member holding
    the chunk whole or do not match (a corrupt or truncated answer); RegistryError when the read fails."""
    if chunk.length > MAX_CHUNK:
        raise LazyLayerError(f"chunk at offset {chunk.member}: {chunk.length} bytes, more than a lazy read takes")
    packed = client.fetch_range(repository, digest, chunk.member, chunk.end)
    d = zlib.decompressobj(31)
    try:
        data = d.decompress(packed, chunk.length)
    except zlib.error as e:
        raise LazyLayerError(f"chunk at offset {chunk.member}: corrupt gzip data: {e}") from None
    if len(data) != chunk.length:
        raise LazyLayerError(f"chunk at offset {chunk.member}: {len(data)} bytes, the TOC says {chunk.length}")
    h = chunk.digest.hasher()
    h.update(data)
    got = Digest(chunk.digest.algorithm, h.hexdigest())
    if got != chunk.digest:
        raise LazyLayerError(f"chunk at offset {chunk.member}: digest {got}, the TOC says {chunk.digest}")
    return data


def check_file(ent: dict[str, Any], data_digest: str) -> None:
    """LazyLayerError unless the file entry ``ent``'s ``digest`` (when it has one) is ``data_digest``."""
    want = ent.get("digest")
    if want is not None and want != data_digest:
        raise LazyLayerError(f"{shown(ent.get('name'))}: content digest {data_digest}, the TOC says {shown(want)}")
