"""Build layer tars and docker-save archives in code (whiteouts, devices and hostile entries are never committed
as files).

Each helper returns an ``Entry``; ``build([...])`` turns a list of them into tar bytes. Names are str and
may carry surrogate escapes for non-UTF-8 bytes (``b"caf\\xe9".decode("utf-8", "surrogateescape")``).
Xattrs are given as raw bytes and written as PAX ``SCHILY.xattr.*`` records.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import zstandard

MTIME = 1_600_000_000


@dataclass
class Entry:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, type_: bytes, *, mode: int, uid: int = 0, gid: int = 0, mtime: float = MTIME,
          xattrs: dict[str, bytes] | None = None, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    headers: dict[str, str] = dict(pax or {})
    for k, v in (xattrs or {}).items():
        headers["SCHILY.xattr." + k] = v.decode("utf-8", "surrogateescape")
    ti.pax_headers = headers
    return ti


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw) -> Entry:  # type: ignore[no-untyped-def]
    ti = _info(name, tarfile.REGTYPE, mode=mode, **kw)
    ti.size = len(data)
    return Entry(ti, data)


def directory(name: str, mode: int = 0o755, **kw) -> Entry:  # type: ignore[no-untyped-def]
    return Entry(_info(name, tarfile.DIRTYPE, mode=mode, **kw))


def symlink(name: str, target: str, **kw) -> Entry:  # type: ignore[no-untyped-def]
    ti = _info(name, tarfile.SYMTYPE, mode=0o777, **kw)
    ti.linkname = target
    return Entry(ti)


def hardlink(name: str, target: str, **kw) -> Entry:  # type: ignore[no-untyped-def]
    ti = _info(name, tarfile.LNKTYPE, mode=0o644, **kw)
    ti.linkname = target
    return Entry(ti)


def fifo(name: str, mode: int = 0o644, **kw) -> Entry:  # type: ignore[no-untyped-def]
    return Entry(_info(name, tarfile.FIFOTYPE, mode=mode, **kw))


def chardev(name: str, major: int, minor: int, mode: int = 0o666, **kw) -> Entry:  # type: ignore[no-untyped-def]
    ti = _info(name, tarfile.CHRTYPE, mode=mode, **kw)
    ti.devmajor, ti.devminor = major, minor
    return Entry(ti)


def blockdev(name: str, major: int, minor: int, mode: int = 0o660, **kw) -> Entry:  # type: ignore[no-untyped-def]
    ti = _info(name, tarfile.BLKTYPE, mode=mode, **kw)
    ti.devmajor, ti.devminor = major, minor
    return Entry(ti)


def whiteout(name: str) -> Entry:
    """The OCI whiteout for ``name`` (``dir/.wh.base``)."""
    head, _, base = name.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirname: str) -> Entry:
    """The OCI opaque marker of ``dirname`` ("" for the root)."""
    return file(f"{dirname}/.wh..wh..opq" if dirname else ".wh..wh..opq")


def build(entries: list[Entry], format: int = tarfile.PAX_FORMAT) -> bytes:
    """The tar stream (with its end-of-archive marker) holding ``entries`` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format, encoding="utf-8", errors="surrogateescape") as tf:
        for e in entries:
            tf.addfile(e.info, io.BytesIO(e.data) if e.info.isreg() else None)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def header_block(name: str, *, size: int = 0, type_: bytes = tarfile.REGTYPE, mode: int = 0o644) -> bytes:
    """One raw ustar header block (512 bytes) with a correct checksum; data not included."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.mode, ti.mtime = size, type_, mode, MTIME
    return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def pax_block(records: bytes, name: str = "pax") -> bytes:
    """A PAX extended header (``x``) whose data is exactly ``records`` (padded), raw and unchecked."""
    hdr = header_block(name, size=len(records), type_=tarfile.XHDTYPE)
    pad = (-len(records)) % tarfile.BLOCKSIZE
    return hdr + records + b"\0" * pad


def pax_record(key: str, value: bytes) -> bytes:
    """One PAX record ``LEN KEY=VALUE\\n`` with its self-inclusive length."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


END = b"\0" * 1024


def sha_of(data: bytes) -> str:
    """The ``sha256:HEX`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(diff_ids: list[str], **extra: Any) -> dict[str, Any]:
    """A minimal linux/amd64 image config with these DiffIDs."""
    return {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}, **extra}


def docker_archive(path: Path, layers: Sequence[tuple[bytes, bytes]] = (), *, config: Any = None,
                   manifest: Any = None, repo_tags: Any = ("trust:1",)) -> Path:
    """A docker-save archive at ``path``. ``layers``: (uncompressed tar, blob as stored); ``config``/``manifest``:
    what to write instead of the consistent defaults (a dict is JSON-encoded, bytes are written as they are)."""
    members: dict[str, bytes] = {}
    for i, (_, blob) in enumerate(layers):
        members[f"l{i}/layer.tar"] = blob
    cfg = config if config is not None else image_config([sha_of(t) for t, _ in layers])
    members["config.json"] = cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode()
    if manifest is None:
        manifest = [{"Config": "config.json", "RepoTags": list(repo_tags) if isinstance(repo_tags, tuple)
                     else repo_tags, "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]
    members["manifest.json"] = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    path.write_bytes(build([file(name, data) for name, data in members.items()]))
    return path
