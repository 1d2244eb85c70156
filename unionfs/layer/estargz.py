"""eStargz layers: write one from a layer tar, and check one against the spec (pure: no store, no network).

eStargz (containerd/stargz-snapshotter, ``docs/estargz.md``) is a gzip layer that runtimes can also read
lazily, one file at a time, by HTTP range requests. A blob written by :func:`write_estargz` is the
concatenation of gzip members:

* the tar headers (and padding) of the entries, in the current member;
* the data of each non-empty regular file starting a member of its own, cut into *chunks* of at most
  ``chunk_size`` bytes (4 MiB by default), each chunk starting a new member;
* a landmark entry: ``.prefetch.landmark`` right after the prioritized entries when some of them are in the
  layer (its header starts a member of its own, so that the prefetch range ends at a member boundary), else
  ``.no.prefetch.landmark`` first; either holds the one byte ``0x0f``;
* the TOC: one member holding the tar entry ``stargz.index.json`` (JSON: ``version`` 1 and ``entries``, one
  per tar entry and one per further chunk, with the fields name, type, size, modtime, linkName, mode, uid,
  gid, userName, groupName, offset, devMajor, devMinor, xattrs (values base64), digest, chunkOffset,
  chunkSize, chunkDigest) and the tar end-of-archive blocks;
* the footer: an empty 51-byte gzip member whose extra field (``SG``, length 22) is ``%016xSTARGZ`` with the
  TOC member's offset.

The blob is still one valid gzip stream of one valid tar, so eStargz-agnostic runtimes unpack it (with the
TOC and the landmark as two more files at the layer's root, as for any eStargz image). Its DiffID is the
sha256 of that whole uncompressed stream; the layer's descriptor carries :data:`TOC_DIGEST_ANNOTATION` (the
sha256 of the TOC JSON) and :data:`UNCOMPRESSED_SIZE_ANNOTATION` (:meth:`EstargzLayer.annotations`).

Input is read with the unpacker's rules (:mod:`unionfs.layer.unpack`): bounded PAX and GNU headers, the
layer-size bound, no absolute names or ``..`` components (hardlink targets included): UnsafeLayerError,
LayerTooLargeError or LayerError, one line each. A later entry of the same name replaces an earlier one (tar
semantics; the TOC holds each name once). Entries named like the TOC or a landmark are dropped (converting
twice). Names, link targets and xattr names must be UTF-8 (the TOC is JSON): EstargzError otherwise.

:func:`verify_estargz` checks a blob as the spec asks: the footer, the TOC member (one gzip member, a tar
entry ``stargz.index.json``, the TOC digest), every entry's fields, that each data entry's offset is the start
of a gzip member, that the chunks of a file are contiguous and cover it, each chunk's digest, each file's
digest, and that the tar stream holds the TOC's entries in order with each file's data exactly where its
first chunk begins. Any failure is an :class:`~unionfs.errors.EstargzError` with a one-line message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import posixpath
import stat
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterable

from unionfs.errors import (
    EstargzError,
    LayerError,
    LayerTooLargeError,
    ManifestError,
    UnionfsError,
    UnsafeLayerError,
    printable,
    shown,
)
from unionfs.layer.compression import open_decompressed
from unionfs.layer.unpack import (
    MAX_LAYER_SIZE_ENV,
    BoundedTarInfo,
    LayerReader,
    max_layer_size,
    split_name,  # the unpacker's name rules, not a second copy of them
)
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import parse_json

log = logging.getLogger(__name__)

TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENT = b"\x0f"
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
FOOTER_SIZE = 51
DEFAULT_CHUNK_SIZE = 4 << 20
#: bound on the TOC member (compressed and uncompressed): a hostile footer cannot make us read more
MAX_TOC_SIZE = 256 << 20

_RESERVED = (TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
_XATTR = "SCHILY.xattr."
_READ = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
#: the order of a TOC entry's fields (the estargz package's)
_FIELDS = ("name", "type", "size", "modtime", "linkName", "mode", "uid", "gid", "userName", "groupName", "offset",
           "innerOffset", "devMajor", "devMinor", "xattrs", "digest", "chunkOffset", "chunkSize", "chunkDigest")
_INT_FIELDS = ("size", "mode", "uid", "gid", "offset", "innerOffset", "devMajor", "devMinor", "chunkOffset",
               "chunkSize")
_STR_FIELDS = ("name", "type", "modtime", "linkName", "userName", "groupName", "digest", "chunkDigest")
_TYPE_BITS = {"dir": stat.S_IFDIR, "reg": stat.S_IFREG, "symlink": stat.S_IFLNK, "hardlink": stat.S_IFREG,
              "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}
_TYPES = (*_TYPE_BITS, "chunk")


@dataclass(frozen=True)
class EstargzLayer:
    """An eStargz blob: its TOC digest, DiffID (digest of the whole uncompressed stream) and uncompressed size,
    blob digest and size, the number of TOC entries, and the names before the prefetch landmark.
    ``source_diff_id`` is the DiffID of the tar it was written from (None when it was only verified)."""

    toc_digest: Digest
    diff_id: Digest
    digest: Digest
    size: int
    uncompressed_size: int
    entries: int
    prefetch: tuple[str, ...] = ()
    source_diff_id: Digest | None = field(default=None, compare=False)

    def annotations(self) -> dict[str, str]:
        """The annotations of the layer's descriptor in a manifest."""
        return {TOC_DIGEST_ANNOTATION: str(self.toc_digest),
                UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size)}


# ---------------------------------------------------------------------------
# the footer
# ---------------------------------------------------------------------------

def footer(toc_offset: int) -> bytes:
    """The 51-byte footer pointing at the TOC member at ``toc_offset``: an empty gzip member (stored block)
    whose extra field is subfield ``SG`` holding ``%016xSTARGZ``."""
    subfield = f"{toc_offset:016x}STARGZ".encode()
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = _GZIP_MAGIC + b"\x08\x04" + b"\0\0\0\0" + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    empty_stored_block = b"\x01\x00\x00\xff\xff"
    out = header + empty_stored_block + struct.pack("<II", 0, 0)  # CRC-32 and size of nothing
    assert len(out) == FOOTER_SIZE
    return out


def parse_footer(data: bytes) -> int:
    """The TOC offset the footer ``data`` (the blob's last 51 bytes) names; EstargzError when it is not an
    eStargz footer (the legacy 47-byte stargz footer is not accepted)."""
    if len(data) != FOOTER_SIZE:
        raise EstargzError(f"footer: {len(data)} bytes, not {FOOTER_SIZE}")
    if data[:3] != _GZIP_MAGIC + b"\x08" or not data[3] & 0x04:
        raise EstargzError("footer: not a gzip header with an extra field")
    xlen = struct.unpack("<H", data[10:12])[0]
    si, slen = data[12:14], struct.unpack("<H", data[14:16])[0]
    sub = data[16:38]
    if xlen != 26 or si != b"SG" or slen != 22 or sub[16:] != b"STARGZ":
        raise EstargzError(f"footer: extra field is not SG/22/%016xSTARGZ (got {shown(data[12:38])})")
    try:
        offset = int(sub[:16].decode("ascii"), 16)
    except (UnicodeDecodeError, ValueError):
        raise EstargzError(f"footer: TOC offset {shown(sub[:16])} is not hexadecimal") from None
    d = zlib.decompressobj(31)
    try:
        if d.decompress(data) or not d.eof or d.unused_data:
            raise EstargzError("footer: not one empty gzip member")
    except zlib.error as e:
        raise EstargzError(f"footer: corrupt gzip member: {e}") from None
    return offset


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

@dataclass
class _Entry:
    """One input entry: its header, its cleaned name (key), and where its data is (spool offset or bytes)."""

    ti: tarfile.TarInfo
    key: str
    data: int = 0
    content: bytes | None = None


def _clean(name: str) -> str:
    """A name as the TOC's readers clean it: relative to the root, no ``.``, ``..`` or double slashes."""
    return posixpath.normpath("/" + name).lstrip("/") if name else ""


def _written_name(ti: tarfile.TarInfo) -> str:
    """The name tarfile writes for ``ti`` (directories end with ``/``)."""
    return ti.name + "/" if ti.isdir() and not ti.name.endswith("/") else ti.name


def _utf8(text: str, what: str) -> str:
    """``text`` when it is valid UTF-8 (no surrogate-escaped bytes); EstargzError otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EstargzError(f"{what} is not UTF-8, which an eStargz TOC (JSON) cannot hold") from None
    return text


class _Members:
    """The output: gzip members written one after the other, with the compressed position, the blob's
    digest, and the DiffID and size of everything written through members."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        self.out = out
        self.level = level
        self.pos = 0
        self.usize = 0
        self.blob_hash = hashlib.sha256()
        self.diff_hash = hashlib.sha256()
        self._z: Any = None

    def write(self, data: bytes) -> None:
        """Write ``data`` (uncompressed) into the current member, starting one when none is open."""
        if self._z is None:
            self._z = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        self.diff_hash.update(data)
        self.usize += len(data)
        self._emit(self._z.compress(data))

    def end_member(self) -> None:
        """Close the current member, if one is open: the next write starts a member at ``pos``."""
        if self._z is not None:
            self._emit(self._z.flush())
            self._z = None

    def raw(self, data: bytes) -> None:
        """Write bytes that are already a gzip member (the footer)."""
        self.end_member()
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        if data:
            try:
                self.out.write(data)
            except OSError as e:
                raise LayerError(f"cannot write the eStargz layer: {e.strerror or e}") from None
            self.blob_hash.update(data)
            self.pos += len(data)


def _modtime(mtime: float) -> str | None:
    """RFC 3339 (UTC, whole seconds, rounded) of a tar mtime; None for 0 or one a TOC cannot show."""
    sec = math.floor(mtime + 0.5)
    if sec == 0:
        return None
    try:
        return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        log.warning("mtime %s cannot be written in an eStargz TOC; left out", mtime)
        return None


def _toc_type(ti: tarfile.TarInfo) -> str:
    if ti.isreg():
        return "reg"
    if ti.isdir():
        return "dir"
    if ti.issym():
        return "symlink"
    if ti.islnk():
        return "hardlink"
    if ti.ischr():
        return "char"
    if ti.isblk():
        return "block"
    if ti.isfifo():
        return "fifo"
    raise LayerError(f"entry {shown(ti.name)}: unsupported tar entry type {ti.type!r}")


def _toc_entry(ti: tarfile.TarInfo) -> dict[str, Any]:
    """The TOC entry of ``ti`` (without the data fields, which the writer adds)."""
    kind = _toc_type(ti)
    name = _utf8(_written_name(ti), f"entry {shown(ti.name)}: the name")
    ent: dict[str, Any] = {"name": name, "type": kind}
    if kind == "reg" and ti.size:
        ent["size"] = ti.size
    mtime = _modtime(ti.mtime)
    if mtime:
        ent["modtime"] = mtime
    if kind in ("symlink", "hardlink"):
        ent["linkName"] = _utf8(ti.linkname, f"entry {shown(name)}: the link target")
    ent["mode"] = (ti.mode & 0o7777) | _TYPE_BITS[kind]
    ent["uid"], ent["gid"] = ti.uid, ti.gid
    if ti.uname:
        ent["userName"] = _utf8(ti.uname, f"entry {shown(name)}: the user name")
    if ti.gname:
        ent["groupName"] = _utf8(ti.gname, f"entry {shown(name)}: the group name")
    if kind in ("char", "block"):
        ent["devMajor"], ent["devMinor"] = ti.devmajor, ti.devminor
    xattrs = {_utf8(k[len(_XATTR):], f"entry {shown(name)}: an xattr name"):
              base64.b64encode(v.encode("utf-8", "surrogateescape")).decode("ascii")
              for k, v in sorted(ti.pax_headers.items()) if k.startswith(_XATTR)}
    if xattrs:
        ent["xattrs"] = xattrs
    return ent


def _landmark(name: str) -> _Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = tarfile.REGTYPE, len(LANDMARK_CONTENT), 0o644, 0, "", ""
    return _Entry(ti, name, content=LANDMARK_CONTENT)


def _read_entries(tar_stream: BinaryIO, media_type: str | None, spool: BinaryIO, limit: int,
                  ) -> tuple[dict[str, _Entry], Digest]:
    """Every entry of the layer tar (by cleaned name, in stream order, a later one replacing an earlier one),
    regular files' data copied to ``spool``; and the DiffID of the tar."""
    reader = LayerReader(open_decompressed(tar_stream, media_type), "sha256", limit)
    entries: dict[str, _Entry] = {}
    current = ""
    try:
        tf = tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape",  # type: ignore[call-overload]
                          tarinfo=BoundedTarInfo)
        for ti in tf:
            current = ti.name
            entry = _take(tf, ti, spool, limit)
            if entry is not None:
                entries.pop(entry.key, None)
                entries[entry.key] = entry
        current = ""
        while reader.read(_READ):
            pass
    except UnionfsError as e:
        msg = str(e)
        if current and not msg.startswith("entry "):
            msg = f"entry {shown(current)}: {msg}"
        raise type(e)(printable(msg)) from None
    except tarfile.TarError as e:
        raise LayerError(printable(f"corrupt tar stream: {e}")) from None
    except (OSError, ValueError, UnicodeError, OverflowError, EOFError) as e:
        where = f"entry {shown(current)}: " if current else ""
        raise LayerError(printable(f"{where}invalid tar data: {e}")) from None
    return entries, reader.digest()


def _take(tf: tarfile.TarFile, ti: tarfile.TarInfo, spool: BinaryIO, limit: int) -> _Entry | None:
    """The entry of ``ti`` checked and normalised, its data spooled; None for an entry that is dropped."""
    raw = ti.name.encode("utf-8", "surrogateescape")
    if not raw:  # tarfile strips the slashes of directories: this was "/"
        raise UnsafeLayerError("entry '/': absolute name")
    parts = split_name(raw)  # UnsafeLayerError for absolute names, '..', NUL
    key = b"/".join(parts).decode("utf-8", "surrogateescape")
    if key in _RESERVED:
        log.debug("dropping %s from the input layer (eStargz writes its own)", key)
        return None
    _toc_type(ti)
    if not parts and not ti.isdir():
        raise LayerError(f"entry {shown(ti.name)}: the layer root can only be a directory")
    if ti.islnk():
        split_name(ti.linkname.encode("utf-8", "surrogateescape"), "hardlink target")
    # tarfile rewrites these from the TarInfo; an old value (a sparse member's) would contradict it
    ti.pax_headers = {k: v for k, v in ti.pax_headers.items()
                      if k not in ("path", "linkpath", "size") and not k.startswith("GNU.sparse.")}
    entry = _Entry(ti, key)
    if not ti.isreg():
        ti.size = 0
        return entry
    if ti.size < 0:
        raise LayerError("negative size")
    if ti.offset_data + ti.size > limit:
        raise LayerTooLargeError(f"member of {ti.size} bytes takes the layer over the bound of {limit} bytes "
                                 f"(set by {MAX_LAYER_SIZE_ENV})")
    src = tf.extractfile(ti)
    assert src is not None
    entry.data = spool.seek(0, os.SEEK_END)
    left = ti.size
    while left:
        chunk = src.read(min(left, _READ))
        if not chunk:
            raise LayerError("truncated tar stream: the entry ends early")
        spool.write(chunk)
        left -= len(chunk)
    ti.type, ti.sparse = tarfile.REGTYPE, None
    return entry


def _order(entries: dict[str, _Entry], prioritized: Iterable[str]) -> tuple[list[_Entry], list[_Entry]]:
    """(the prioritized entries, with their parent directories and hardlink targets first, in the order
    asked; the others in stream order)."""
    first: dict[str, _Entry] = {}

    def move(key: str, depth: int = 0) -> None:
        parts = key.split("/") if key else []
        for i in range(len(parts) + 1):
            k = "/".join(parts[:i])
            e = entries.get(k)
            if e is None or k in first:
                continue
            if e.ti.islnk() and depth < 8:
                move(_clean(e.ti.linkname), depth + 1)
            first[k] = e

    for name in prioritized:
        key = _clean(name)
        if key in entries:
            move(key)
        else:
            log.debug("prioritized file %s is not in this layer", name)
    return list(first.values()), [e for k, e in entries.items() if k not in first]


def write_estargz(tar_stream: BinaryIO, out: BinaryIO, *, prioritized: Iterable[str] = (),
                  chunk_size: int = DEFAULT_CHUNK_SIZE, media_type: str | None = None, level: int = 6,
                  tmp_dir: str | None = None, max_size: int | None = None) -> EstargzLayer:
    """Write the layer ``tar_stream`` (plain or compressed: ``media_type``, else sniffed) to ``out`` as an
    eStargz blob (see the module docstring); return what it wrote.

    ``prioritized``: paths (absolute or relative to the root) put first, in this order, before the prefetch
    landmark; those not in the layer are skipped. ``chunk_size``: the most bytes of a file one gzip member
    holds. ``tmp_dir``: where the file data is spooled meanwhile (the input is read once, before anything is
    written). ``max_size``: the bound on the uncompressed input (default ``max_layer_size()``). Raises
    LayerError and its subclasses (one line each).
    """
    if chunk_size <= 0:
        raise LayerError(f"eStargz chunk size must be positive (got {chunk_size})")
    limit = max_layer_size() if max_size is None else max_size
    with tempfile.TemporaryFile(dir=tmp_dir, prefix="estargz-") as spool:
        entries, source_diff_id = _read_entries(tar_stream, media_type, spool, limit)
        first, rest = _order(entries, prioritized)
        if first:
            ordered = [*first, _landmark(PREFETCH_LANDMARK), *rest]
        else:
            ordered = [_landmark(NO_PREFETCH_LANDMARK), *rest]
        members = _Members(out, level)
        toc: list[dict[str, Any]] = []
        for e in ordered:
            _write_entry(members, e, spool, chunk_size, toc)
    members.end_member()
    toc_offset = members.pos
    toc_json = _toc_json(toc)
    ti = tarfile.TarInfo(TOC_NAME)
    ti.type, ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = tarfile.REGTYPE, len(toc_json), 0o644, 0, "", ""
    members.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    members.write(toc_json + b"\0" * (-len(toc_json) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE))
    members.raw(footer(toc_offset))
    return EstargzLayer(Digest.of_bytes(toc_json), Digest("sha256", members.diff_hash.hexdigest()),
                        Digest("sha256", members.blob_hash.hexdigest()), members.pos, members.usize, len(toc),
                        tuple(e.key for e in first), source_diff_id)


def _toc_json(toc: list[dict[str, Any]]) -> bytes:
    """The TOC's JSON bytes (fields in the estargz package's order, tab-indented as it writes them)."""
    ordered = [{k: e[k] for k in _FIELDS if k in e} for e in toc]
    return json.dumps({"version": 1, "entries": ordered}, indent="\t", ensure_ascii=False).encode("utf-8")


def _write_entry(members: _Members, e: _Entry, spool: BinaryIO, chunk_size: int, toc: list[dict[str, Any]]) -> None:
    """Write one entry: its header into the current member, its data (regular files) in chunks, each
    starting a member; append its TOC entries."""
    ti = e.ti
    if e.content is not None:
        members.end_member()  # a landmark starts a member: the prefetch range ends at a boundary
    ent = _toc_entry(ti)
    toc.append(ent)
    members.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    if not ti.isreg():
        return
    whole = hashlib.sha256()
    if ti.size:
        spool.seek(e.data)
        done = 0
        while done < ti.size:
            n = min(chunk_size, ti.size - done)
            members.end_member()
            chunk = ent if done == 0 else {"name": ent["name"], "type": "chunk", "chunkOffset": done}
            chunk["offset"] = members.pos
            if done + n < ti.size:
                chunk["chunkSize"] = n
            digest = hashlib.sha256()
            left = n
            while left:
                data = e.content if e.content is not None else spool.read(min(left, _READ))
                if not data:
                    raise LayerError(f"entry {shown(ti.name)}: spooled data ends early")
                members.write(data)
                digest.update(data)
                whole.update(data)
                left -= len(data)
            chunk["chunkDigest"] = f"sha256:{digest.hexdigest()}"
            if chunk is not ent:
                toc.append(chunk)
            done += n
        members.write(b"\0" * (-ti.size % tarfile.BLOCKSIZE))
    ent["digest"] = f"sha256:{whole.hexdigest()}"


# ---------------------------------------------------------------------------
# reading and verifying
# ---------------------------------------------------------------------------

@dataclass
class _Data:
    """A TOC entry holding file data: where its member starts, how many bytes, its digest."""

    name: str
    offset: int
    length: int
    digest: Digest
    ustart: int = -1  # where its data starts in the uncompressed stream (found by the member walk)


def read_toc(blob: BinaryIO) -> tuple[dict[str, Any], Digest, int]:
    """The TOC of the seekable eStargz ``blob`` (parsed JSON), its digest, and the TOC member's offset.

    Checks the footer, that the TOC is one gzip member up to the footer holding a tar entry
    ``stargz.index.json`` followed by zero blocks only, and that it is a JSON object. EstargzError otherwise.
    """
    try:
        size = blob.seek(0, os.SEEK_END)
        if size < FOOTER_SIZE:
            raise EstargzError(f"blob of {size} bytes is too small for an eStargz footer ({FOOTER_SIZE} bytes)")
        blob.seek(size - FOOTER_SIZE)
        toc_offset = parse_footer(blob.read(FOOTER_SIZE))
        end = size - FOOTER_SIZE
        if not 0 <= toc_offset < end:
            raise EstargzError(f"footer: TOC offset {toc_offset} is outside the blob ({end} bytes before the footer)")
        if end - toc_offset > MAX_TOC_SIZE:
            raise EstargzError(f"TOC member of {end - toc_offset} bytes (bound {MAX_TOC_SIZE})")
        blob.seek(toc_offset)
        packed = blob.read(end - toc_offset)
    except OSError as e:
        raise EstargzError(f"cannot read the blob: {e.strerror or e}") from None
    toc, digest, _ = toc_of_member(packed, toc_offset)
    return toc, digest, toc_offset


def toc_of_member(packed: bytes, toc_offset: int) -> tuple[dict[str, Any], Digest, bytes]:
    """The TOC held by ``packed``, the blob's bytes from the TOC member at ``toc_offset`` up to the footer
    (what a lazy reader fetches by range): the parsed JSON, its digest and its raw bytes. The same checks as
    :func:`read_toc` (one gzip member, the tar entry ``stargz.index.json``, zero blocks after it, a JSON
    object); EstargzError otherwise."""
    d = zlib.decompressobj(31)
    try:
        data = d.decompress(packed, MAX_TOC_SIZE + 1)
    except zlib.error as e:
        raise EstargzError(f"TOC member at offset {toc_offset}: corrupt gzip data: {e}") from None
    if len(data) > MAX_TOC_SIZE:
        raise EstargzError(f"TOC decompresses to more than {MAX_TOC_SIZE} bytes")
    if not d.eof or d.unused_data:
        raise EstargzError(f"TOC at offset {toc_offset} is not one gzip member ending at the footer")
    head = data[:tarfile.BLOCKSIZE]
    try:
        ti = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise EstargzError(f"TOC member holds no tar header: {e}") from None
    if ti.name != TOC_NAME or not ti.isreg():
        raise EstargzError(f"TOC tar entry is {shown(ti.name)}, not the regular file {TOC_NAME}")
    start = tarfile.BLOCKSIZE
    raw = data[start:start + ti.size]
    if len(raw) != ti.size:
        raise EstargzError("TOC tar entry is cut short")
    if data[start + ti.size:].count(0) != len(data) - start - ti.size:
        raise EstargzError("TOC member holds data after the TOC (only padding and the end of the archive belong there)")
    return parse_toc(raw), Digest.of_bytes(raw), bytes(raw)


def parse_toc(raw: bytes) -> dict[str, Any]:
    """The TOC JSON ``raw`` parsed (as the registry code parses JSON: duplicate keys refused...); EstargzError
    when it is not a JSON object. Its entries are checked by :func:`check_toc`."""
    try:
        toc = parse_json(raw, "eStargz TOC")
    except ManifestError as e:
        raise EstargzError(str(e)) from None
    if not isinstance(toc, dict):
        raise EstargzError("eStargz TOC is not a JSON object")
    return toc


#: a TOC entry holding file data (see :func:`check_toc`)
TocData = _Data


def check_toc(toc: dict[str, Any], toc_offset: int) -> tuple[list[dict[str, Any]], list[_Data], tuple[str, ...]]:
    """The entries of ``toc`` (the TOC of a blob whose TOC member is at ``toc_offset``) checked as
    :func:`verify_estargz` checks them without the blob: the file entries (no chunks) in order, the data
    entries (:data:`TocData`: each chunk's member offset, length and digest) in blob order, and the names
    before the prefetch landmark. EstargzError for a TOC the spec does not allow."""
    return _check_toc(toc, toc_offset)


def clean_name(name: str) -> str:
    """A TOC name as its readers clean it: relative to the root, no ``.``, ``..`` or double slashes."""
    return _clean(name)


def _int(ent: dict[str, Any], key: str, what: str) -> int:
    value = ent.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EstargzError(f"{what}: {key} must be a non-negative integer, not {shown(value)}")
    return value


def _check_toc(toc: dict[str, Any], toc_offset: int) -> tuple[list[dict[str, Any]], list[_Data], tuple[str, ...]]:
    """The TOC's file entries (no chunks), its data entries in blob order, and the names before the
    prefetch landmark; EstargzError for a TOC the spec does not allow."""
    version = toc.get("version")
    if version != 1 or isinstance(version, bool):
        raise EstargzError(f"TOC version must be 1, not {shown(version)}")
    entries = toc.get("entries")
    if not isinstance(entries, list):
        raise EstargzError("TOC has no entries array")
    files: list[dict[str, Any]] = []
    data: list[_Data] = []
    cur: dict[str, Any] | None = None  # the regular file whose chunks may follow
    covered = 0
    last_offset = -1

    def close_file() -> None:
        if cur is not None and covered != cur.get("size", 0):
            raise EstargzError(f"TOC entry {shown(cur['name'])}: its chunks cover {covered} of its "
                               f"{cur.get('size', 0)} bytes")

    for i, ent in enumerate(entries):
        what = f"TOC entry {i}"
        if not isinstance(ent, dict):
            raise EstargzError(f"{what} is not an object")
        for key in _STR_FIELDS:
            if key in ent and not isinstance(ent[key], str):
                raise EstargzError(f"{what}: {key} must be a string, not {shown(ent[key])}")
        for key in _INT_FIELDS:
            _int(ent, key, what)
        name, kind = ent.get("name"), ent.get("type")
        if not name or kind not in _TYPES:
            raise EstargzError(f"{what}: needs a name and a type of {', '.join(_TYPES)} (got {shown(kind)})")
        what = f"TOC entry {shown(name)}"
        if _int(ent, "innerOffset", what):
            raise EstargzError(f"{what}: innerOffset (several payloads in one gzip member) is not supported")
        if "xattrs" in ent and not isinstance(ent["xattrs"], dict):
            raise EstargzError(f"{what}: xattrs must be an object")
        if kind in ("symlink", "hardlink") and not ent.get("linkName"):
            raise EstargzError(f"{what}: a {kind} needs linkName")
        if kind == "chunk":
            if cur is None or _clean(name) != _clean(cur["name"]):
                raise EstargzError(f"{what}: a chunk that does not follow its regular file")
            if ent.get("chunkOffset", 0) != covered or covered >= cur.get("size", 0):
                raise EstargzError(f"{what}: chunk at file offset {ent.get('chunkOffset', 0)}, expected {covered}")
        else:
            close_file()
            cur, covered = None, 0
            files.append(ent)
            if kind != "reg" or not ent.get("size"):
                continue
            if ent.get("chunkOffset", 0):
                raise EstargzError(f"{what}: the first chunk of a file must be at file offset 0")
            cur = ent
        size = cur.get("size", 0)
        length = ent.get("chunkSize") or size - covered
        if covered + length > size:
            raise EstargzError(f"{what}: chunk of {length} bytes at file offset {covered} runs past the file's "
                               f"{size} bytes")
        offset = ent.get("offset", 0)
        if not ent.get("chunkDigest") or not offset:
            raise EstargzError(f"{what}: a non-empty file or chunk needs offset and chunkDigest")
        if offset <= last_offset or offset >= toc_offset:
            raise EstargzError(f"{what}: offset {offset} is not after the previous data ({last_offset}) and "
                               f"before the TOC ({toc_offset})")
        try:
            digest = Digest.parse(ent["chunkDigest"])
        except UnionfsError as e:
            raise EstargzError(f"{what}: chunkDigest: {e}") from None
        data.append(_Data(name, offset, length, digest))
        last_offset = offset
        covered += length
    close_file()
    names = [_clean(e["name"]) for e in files]
    prefetch = tuple(names[:names.index(PREFETCH_LANDMARK)]) if PREFETCH_LANDMARK in names else ()
    if PREFETCH_LANDMARK not in names and NO_PREFETCH_LANDMARK not in names:
        raise EstargzError(f"TOC has neither {PREFETCH_LANDMARK} nor {NO_PREFETCH_LANDMARK}")
    return files, data, prefetch


class _MemberWalk:
    """Walks the blob's gzip members in order: their start offsets, every uncompressed byte (the DiffID),
    and the digest of each data entry's bytes from the member that starts at its offset."""

    def __init__(self, data: list[_Data], limit: int) -> None:
        self.data = data
        self.limit = limit
        self.next = 0               # index of the next data entry to meet
        self.active: _Data | None = None
        self.left = 0
        self.hash: Any = None
        self.upos = 0
        self.starts: set[int] = set()
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()

    def member(self, offset: int) -> None:
        self.starts.add(offset)
        nxt = self.data[self.next] if self.next < len(self.data) else None
        if nxt is not None and nxt.offset < offset:
            raise EstargzError(f"TOC entry {shown(nxt.name)}: offset {nxt.offset} is not the start of a gzip member")
        if nxt is not None and nxt.offset == offset:
            if self.active is not None:
                raise EstargzError(f"TOC entry {shown(self.active.name)}: its data at offset {self.active.offset} "
                                   f"ends {self.left} bytes after the next chunk begins")
            nxt.ustart = self.upos
            self.active, self.left, self.hash = nxt, nxt.length, hashlib.sha256()
            self.next += 1
            if not self.left:
                self._done()

    def feed(self, out: bytes) -> None:
        self.diff.update(out)
        self.upos += len(out)
        if self.upos > self.limit:
            raise LayerTooLargeError(f"layer expands to more than {self.limit} bytes (bound set by {MAX_LAYER_SIZE_ENV})")
        if self.active is not None:
            take = out[:self.left]
            self.hash.update(take)
            self.left -= len(take)
            if not self.left:
                self._done()

    def _done(self) -> None:
        assert self.active is not None
        got = Digest("sha256", self.hash.hexdigest())
        if got != self.active.digest:
            raise EstargzError(f"TOC entry {shown(self.active.name)}: chunk at offset {self.active.offset} has digest "
                               f"{got}, the TOC says {self.active.digest}")
        self.active = None

    def run(self, blob: BinaryIO) -> int:
        """Walk the whole blob; returns its size."""
        blob.seek(0)
        buf, base, d = b"", 0, None
        while True:
            if d is None:
                while len(buf) < 2:
                    more = blob.read(_READ)
                    if not more:
                        break
                    self.blob.update(more)
                    buf += more
                if not buf:
                    break
                if not buf.startswith(_GZIP_MAGIC):
                    raise EstargzError(f"no gzip member starts at offset {base} (garbage between members)")
                self.member(base)
                d, start = zlib.decompressobj(31), base
            if not buf:
                buf = blob.read(_READ)
                if not buf:
                    raise EstargzError(f"truncated blob: it ends inside the gzip member at offset {start}")
                self.blob.update(buf)
            try:
                out = d.decompress(buf, _READ)
            except zlib.error as e:
                raise EstargzError(f"corrupt gzip member at offset {start}: {e}") from None
            self.feed(out)
            rest = d.unused_data if d.eof else d.unconsumed_tail
            base += len(buf) - len(rest)
            buf = rest
            if d.eof:
                d = None
        if self.active is not None or self.next < len(self.data):
            missing = self.active or self.data[self.next]
            raise EstargzError(f"TOC entry {shown(missing.name)}: no complete chunk at offset {missing.offset}")
        return base


def verify_estargz(blob: BinaryIO, *, toc_digest: Digest | None = None, diff_id: Digest | None = None,
                   max_size: int | None = None) -> EstargzLayer:
    """Check the seekable ``blob`` against the eStargz spec (see the module docstring) and, when given, the
    TOC digest of its descriptor's annotation and its DiffID. Returns what it found; raises EstargzError (or
    LayerTooLargeError past ``max_size``, default ``max_layer_size()``) with a one-line message."""
    limit = max_layer_size() if max_size is None else max_size
    toc, got_toc, toc_offset = read_toc(blob)
    if toc_digest is not None and got_toc != toc_digest:
        raise EstargzError(f"TOC digest mismatch: the annotation says {toc_digest}, the TOC is {got_toc}")
    files, data, prefetch = _check_toc(toc, toc_offset)
    walk = _MemberWalk(data, limit)
    try:
        size = walk.run(blob)
    except OSError as e:
        raise EstargzError(f"cannot read the blob: {e.strerror or e}") from None
    for offset, what in ((toc_offset, "the TOC"), (size - FOOTER_SIZE, "the footer")):
        if offset not in walk.starts:
            raise EstargzError(f"{what} at offset {offset} does not start a gzip member")
    got_diff = Digest("sha256", walk.diff.hexdigest())
    if diff_id is not None and got_diff != diff_id:
        raise EstargzError(f"DiffID mismatch: expected {diff_id}, the blob's uncompressed stream is {got_diff}")
    _check_tar(blob, files, {_clean(d.name): d for d in reversed(data)}, limit)
    return EstargzLayer(got_toc, got_diff, Digest("sha256", walk.blob.hexdigest()), size, walk.upos,
                        len(toc["entries"]), prefetch)


def _check_tar(blob: BinaryIO, files: list[dict[str, Any]], first_chunks: dict[str, _Data], limit: int) -> None:
    """The tar stream holds the TOC's entries, in order, then the TOC; each file's data begins where its first
    chunk's member begins and has the TOC's digest."""
    blob.seek(0)
    reader = LayerReader(open_decompressed(blob, None), "sha256", limit)
    i = 0
    seen_toc = False
    try:
        tf = tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape",  # type: ignore[call-overload]
                          tarinfo=BoundedTarInfo)
        for ti in tf:
            if seen_toc:
                raise EstargzError(f"tar entry {shown(ti.name)} after {TOC_NAME}")
            if ti.name == TOC_NAME and i == len(files):
                seen_toc = True
                continue
            if i >= len(files):
                raise EstargzError(f"tar entry {shown(ti.name)} is not in the TOC")
            ent = files[i]
            i += 1
            _same_entry(tf, ti, ent, first_chunks)
    except UnionfsError:
        raise
    except tarfile.TarError as e:
        raise EstargzError(printable(f"corrupt tar stream: {e}")) from None
    except (OSError, ValueError, UnicodeError, OverflowError, EOFError) as e:
        raise EstargzError(printable(f"invalid tar data: {e}")) from None
    if i < len(files):
        raise EstargzError(f"TOC entry {shown(files[i]['name'])} is not in the tar stream")
    if not seen_toc:
        raise EstargzError(f"the tar stream does not end with {TOC_NAME}")


def _same_entry(tf: tarfile.TarFile, ti: tarfile.TarInfo, ent: dict[str, Any], first_chunks: dict[str, _Data]) -> None:
    name = ent["name"]
    what = f"tar entry {shown(ti.name)}"
    if _clean(ti.name) != _clean(name):
        raise EstargzError(f"{what}: the TOC names {shown(name)} at its place")
    kind = _toc_type(ti)
    if kind != ent["type"]:
        raise EstargzError(f"{what}: a {kind}, the TOC says {ent['type']}")
    if kind in ("symlink", "hardlink") and ti.linkname != ent.get("linkName"):
        raise EstargzError(f"{what}: links to {shown(ti.linkname)}, the TOC says {shown(ent.get('linkName'))}")
    if (ti.mode & 0o7777, ti.uid, ti.gid) != (ent.get("mode", 0) & 0o7777, ent.get("uid", 0), ent.get("gid", 0)):
        raise EstargzError(f"{what}: mode or owner differ from the TOC's")
    if kind != "reg":
        return
    if ti.size != ent.get("size", 0):
        raise EstargzError(f"{what}: {ti.size} bytes, the TOC says {ent.get('size', 0)}")
    if ti.size:
        chunk = first_chunks[_clean(name)]
        if chunk.ustart != ti.offset_data:
            raise EstargzError(f"{what}: its data is at uncompressed offset {ti.offset_data}, but its first chunk's "
                               f"gzip member (offset {chunk.offset}) begins at {chunk.ustart}")
    if "digest" in ent:
        src = tf.extractfile(ti)
        assert src is not None
        h = hashlib.sha256()
        while data := src.read(_READ):
            h.update(data)
        got = f"sha256:{h.hexdigest()}"
        if got != ent["digest"]:
            raise EstargzError(f"{what}: content digest {got}, the TOC says {ent['digest']}")


__all__ = ["EstargzLayer", "write_estargz", "verify_estargz", "read_toc", "toc_of_member", "check_toc", "clean_name",
           "TocData", "footer", "parse_footer", "TOC_NAME",
           "PREFETCH_LANDMARK", "NO_PREFETCH_LANDMARK", "LANDMARK_CONTENT", "TOC_DIGEST_ANNOTATION",
           "UNCOMPRESSED_SIZE_ANNOTATION", "FOOTER_SIZE", "DEFAULT_CHUNK_SIZE", "MAX_TOC_SIZE"]
