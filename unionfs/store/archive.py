"""Image archives in and out of the store: docker-save archives, OCI archives and OCI layout directories,
and plain rootfs tarballs (``import``).

Sources read:

* docker-save archives: ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``), the legacy layout of docker <= 24
  and skopeo (``<id>/layer.tar``, possibly symlinks to another layer's tar) and the docker >= 25 layout whose
  ``Layers`` point into an OCI layout inside the archive; layers may be plain or compressed tars;
* OCI image layouts (``oci-layout`` + ``index.json`` + ``blobs/``), as a directory or a tar (oci-archive).
  Tags come from ``io.containerd.image.name`` or ``org.opencontainers.image.ref.name``.

Sinks written: docker-save archives in the legacy layout (uncompressed ``layer.tar``) and oci-archives.
Every blob is verified against its digest on the way in; nothing is tagged until all of an image is stored.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Iterator

from unionfs.errors import ArchiveError, DigestError, ManifestError, ReferenceError_, UnionfsError, printable, shown
from unionfs.fsops import remove_tree
from unionfs.layer.compression import compress_stream, open_decompressed
from unionfs.layer.unpack import BoundedTarInfo, LayerReader, max_layer_size  # one bound for load and import
from unionfs.oci.digest import Digest, HashingReader
from unionfs.oci.manifest import (
    CONTAINERD_NAME_ANNOTATION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
    is_index,
    parse_docker_archive_manifest,
)
from unionfs.oci.reference import Reference
from unionfs.store.store import Image, Store, now_rfc3339

log = logging.getLogger(__name__)

_MAX_JSON = 16 << 20  # manifests, configs and indexes bigger than this are refused
_SPOOL_CHUNK = 1 << 20  # bytes read from a stream at a time (load from standard input)
#: Most members an outer archive (docker-save, oci-archive) may have; more is refused (a layout needs a handful
#: per image: a few hundred images of a few hundred layers stay far below).
MAX_ARCHIVE_MEMBERS = 100_000


# --- sources: a tar archive or a directory, read by relative path -------------------------------
class _Source:
    """Read-only access to files of an archive or directory by relative POSIX path."""

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def open(self, path: str) -> BinaryIO:
        raise NotImplementedError

    def read_json_bytes(self, path: str) -> bytes:
        """A small file's bytes; raise ArchiveError when missing or too big."""
        with self.open(path) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise ArchiveError(f"{path} in the archive is too large")
        return data

    def close(self) -> None:
        pass


def _clean(path: str) -> str:
    parts = [p for p in PurePosixPath(path).parts if p not in ("", ".", "/")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"archive path {path!r} escapes the archive")
    return "/".join(parts)


@dataclass(frozen=True)
class _Member:
    """What we keep of an outer archive's member: where its data is, or the link it is."""

    offset_data: int
    size: int
    link: str | None = None  #: a symlink's target (relative to the member's directory)
    hardlink: str | None = None  #: a hard link's target (an archive path)


class _TarSource(_Source):
    """An outer archive, walked once with bounds (``_walk``); members are then read by their offsets.

    ``path`` names the archive in messages; the archive is read from ``fileobj`` (seekable) when given, else
    from the file at ``path``."""

    def __init__(self, path: str, fileobj: BinaryIO | None = None) -> None:
        try:
            if fileobj is not None:
                self.tar = tarfile.open(fileobj=fileobj, mode="r:*", tarinfo=BoundedTarInfo)
            else:
                self.tar = tarfile.open(path, "r:*", tarinfo=BoundedTarInfo)
        except tarfile.ReadError:  # every method failed: tarfile's message lists each, on several lines
            raise ArchiveError(f"{path} is not a tar archive (plain, gzip, bzip2 or xz)") from None
        except (tarfile.TarError, OSError, EOFError, UnionfsError) as e:
            raise ArchiveError(f"{path} is not a readable tar archive: {printable(str(e))}") from None
        try:
            self.members = self._walk(path)
        except BaseException:
            self.tar.close()
            raise

    def _walk(self, path: str) -> dict[str, _Member]:
        """Read every header once; refuse what would make tarfile loop or hoard memory.

        Python's tarfile without the CVE-2025-8194 fix (3.11.7 among them) follows a negative member size
        backwards and reads the same headers forever; it also keeps a TarInfo per member. Here each header
        must lie after the previous one, sizes must be sane, at most MAX_ARCHIVE_MEMBERS are read, and only
        regular files and links are remembered (a small record each).
        """
        tar = self.tar
        out: dict[str, _Member] = {}
        last = -1
        count = 0
        try:
            while True:
                ti = tar.next()
                tar.members = []  # tarfile appends every TarInfo; we keep our own small records
                if ti is None:
                    break
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ArchiveError(f"{path} has more than {MAX_ARCHIVE_MEMBERS} members (refused)")
                if ti.size < 0 or ti.offset <= last or ti.offset_data <= ti.offset or tar.offset < ti.offset_data:
                    raise ArchiveError(f"{path} is corrupt: member {ti.name[:100]!r} has an invalid size or "
                                       f"offset (size {ti.size})")
                last = ti.offset
                name = _clean(ti.name)
                if ti.isreg():
                    out[name] = _Member(ti.offset_data, ti.size)
                elif ti.issym():
                    out[name] = _Member(ti.offset_data, 0, link=ti.linkname)
                elif ti.islnk():
                    out[name] = _Member(ti.offset_data, 0, hardlink=ti.linkname)
        except (tarfile.TarError, OSError, EOFError, UnionfsError, ValueError, OverflowError) as e:
            if isinstance(e, ArchiveError):
                raise
            raise ArchiveError(f"{path} is not a readable tar archive: {printable(str(e))}") from None
        tar._loaded = True  # type: ignore[attr-defined]  # no further walks by tarfile itself
        return out

    def exists(self, path: str) -> bool:
        return _clean(path) in self.members

    def open(self, path: str) -> BinaryIO:
        member = self.members.get(_clean(path))
        seen = 0
        while member is not None and (member.link is not None or member.hardlink is not None) and seen < 32:
            if member.hardlink is not None:
                target = member.hardlink
            else:
                target = str(PurePosixPath(_clean(path)).parent / member.link)  # type: ignore[operator]
            path = os.path.normpath(target)
            member = self.members.get(_clean(path))
            seen += 1
        if member is None or member.link is not None or member.hardlink is not None:
            raise ArchiveError(f"{path} is missing from the archive")
        info = tarfile.TarInfo(path)
        info.type, info.size, info.offset_data = tarfile.REGTYPE, member.size, member.offset_data
        f = self.tar.extractfile(info)
        assert f is not None
        return f  # type: ignore[return-value]

    def close(self) -> None:
        self.tar.close()


class _DirSource(_Source):
    def __init__(self, path: str) -> None:
        self.root = Path(path)

    def _path(self, path: str) -> Path:
        p = (self.root / _clean(path)).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise ArchiveError(f"{path} escapes the layout directory")
        return p

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    def open(self, path: str) -> BinaryIO:
        try:
            return open(self._path(path), "rb")
        except OSError as e:
            raise ArchiveError(f"{path} is missing from the layout: {e.strerror}") from None


def _open_source(path: str) -> _Source:
    if os.path.isdir(path):
        return _DirSource(path)
    if not os.path.exists(path):
        raise ArchiveError(f"{path}: no such file or directory")
    return _TarSource(path)


# --- loading ----------------------------------------------------------------------------------
def _sniff_layer_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return OCI_LAYER_GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return OCI_LAYER


def _parse_tag(text: str) -> Reference | None:
    try:
        ref = Reference.parse(text)
    except ReferenceError_:
        log.warning("ignoring invalid tag %s in the archive", shown(text))
        return None
    return ref if ref.tag else None


#: what messages call an archive read from a stream (``load`` without ``-i``)
STDIN = "standard input"


def load(store: Store, path: str, platform: Platform | None = None, fileobj: BinaryIO | None = None) -> list[Image]:
    """Load every image of a docker-save archive, OCI archive or OCI layout directory into ``store``.

    With ``fileobj`` (a seekable file, e.g. from :func:`spool`) the archive is read from it and ``path`` only
    names it in messages. All or nothing: on any error, what this load added is removed and the error is
    raised.
    """
    src = _TarSource(path, fileobj) if fileobj is not None else _open_source(path)
    try:
        with store.lock():
            if src.exists("manifest.json"):
                return _load_docker(store, src)
            if src.exists("index.json"):
                return _load_oci(store, src, platform)
            raise ArchiveError(f"{path} is neither a docker-save archive (manifest.json) nor an OCI layout "
                               "(index.json)")
    finally:
        src.close()


def load_stream(store: Store, stream: BinaryIO, platform: Platform | None = None) -> list[Image]:
    """:func:`load` of an archive read from ``stream`` (a pipe: standard input), spooled first (:func:`spool`).

    The same all-or-nothing guarantee as for a file: a truncated or hostile stream stores nothing.
    """
    with spool(store, stream) as f:
        if not f.read(1):
            raise ArchiveError(f"{STDIN} is empty: no archive to load")
        f.seek(0)
        return load(store, STDIN, platform, fileobj=f)


@contextlib.contextmanager
def spool(store: Store, stream: IO[bytes]) -> Iterator[BinaryIO]:
    """``stream`` copied, 1 MiB at a time, into a nameless file in the store's ``tmp/`` (same filesystem,
    mode 0600), yielded rewound: an archive read from a pipe gets the random access its members' offsets
    need, and memory stays bounded whatever its size. Nothing is left behind, not even by a kill (the file
    has no name; ``prune`` cannot delete it from under a running load either)."""
    try:
        f = tempfile.TemporaryFile(dir=store.tmp_dir, prefix="spool-")
    except OSError as e:
        raise ArchiveError(f"cannot spool {STDIN} into {store.tmp_dir}: {e.strerror or e}") from None
    with f:
        try:
            while chunk := stream.read(_SPOOL_CHUNK):
                f.write(chunk)
            f.flush()
            f.seek(0)
        except OSError as e:
            raise ArchiveError(f"cannot read {STDIN} into {store.tmp_dir}: {e.strerror or e}") from None
        yield f  # type: ignore[misc]


def _load_docker(store: Store, src: _Source) -> list[Image]:
    images = []
    for i, entry in enumerate(parse_docker_archive_manifest(src.read_json_bytes("manifest.json"))):
        config_raw = src.read_json_bytes(entry.config)
        config = ImageConfig.parse(config_raw)
        if len(config.diff_ids) != len(entry.layers):
            raise ArchiveError(f"image {i}: {len(entry.layers)} layers but {len(config.diff_ids)} diff_ids")
        layers = []
        for layer_path in entry.layers:
            with src.open(layer_path) as f:
                head = f.read(4)
                media_type = _sniff_layer_type(head)
            with src.open(layer_path) as f:
                digest, size = store.put_blob(f)
            layers.append(Descriptor(media_type, digest, size))
        config_desc = Descriptor(OCI_CONFIG, Digest.of_bytes(config_raw), len(config_raw))
        manifest = Manifest.build(config_desc, layers)
        tags = [t for t in (_parse_tag(x) for x in entry.repo_tags) if t]
        images.append(store.store_image(manifest, config_raw, tags))
    return images


def _oci_tags(desc: Descriptor) -> list[Reference]:
    ann = desc.annotations
    for key in (CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION):
        if ann.get(key):
            ref = _parse_tag(ann[key])
            return [ref] if ref else []
    return []


def _copy_blob(store: Store, src: _Source, desc: Descriptor) -> None:
    if store.has_blob(desc.digest):
        return
    path = f"blobs/{desc.digest.algorithm}/{desc.digest.hex}"
    if not src.exists(path):
        raise ArchiveError(f"blob {desc.digest} is missing from the layout")
    with src.open(path) as f:
        store.put_blob(f, desc.digest, desc.size)


def _load_oci(store: Store, src: _Source, platform: Platform | None) -> list[Image]:
    try:
        index = Index.parse(src.read_json_bytes("index.json"), OCI_INDEX)
    except ManifestError as e:
        raise ArchiveError(f"index.json: {e}") from None
    if not index.manifests:
        raise ArchiveError("index.json lists no images")
    images = []
    for top in index.manifests:
        tags = _oci_tags(top)
        desc = top
        raw = _read_verified(src, desc)
        if is_index(desc.media_type, raw):
            desc = Index.parse(raw, desc.media_type).select(platform or Platform.host())
            raw = _read_verified(src, desc)
        manifest = Manifest.parse(raw, desc.media_type or None)
        config_raw = _read_verified(src, manifest.config)
        for layer in manifest.layers:
            _copy_blob(store, src, layer)
        images.append(store.store_image(manifest, config_raw, tags))
    return images


def _read_verified(src: _Source, desc: Descriptor) -> bytes:
    path = f"blobs/{desc.digest.algorithm}/{desc.digest.hex}"
    if not src.exists(path):
        raise ArchiveError(f"blob {desc.digest} is missing from the layout")
    raw = src.read_json_bytes(path)
    got = Digest.of_bytes(raw, desc.digest.algorithm)
    if got != desc.digest or (desc.size >= 0 and len(raw) != desc.size):
        raise DigestError(f"blob {desc.digest}: content does not match its descriptor (got {got})")
    return raw


# --- import -----------------------------------------------------------------------------------
def import_rootfs(store: Store, path: str, ref: Reference | None, message: str = "",
                  changes: dict[str, object] | None = None, fileobj: BinaryIO | None = None) -> Image:
    """Make a one-layer image from a plain rootfs tarball (plain, gzip or zstd), like ``docker import``.

    The tarball is the file ``path``, or ``fileobj`` when given (read once, front to back: a pipe will do;
    ``path`` then names it, ``-`` for standard input as docker writes it). The layer is stored
    gzip-compressed; its DiffID is the digest of the uncompressed tar.
    """
    with store.lock():
        stage = Path(store.staging_dir("import-"))
        try:
            try:
                src = open(path, "rb") if fileobj is None else contextlib.nullcontext(fileobj)
            except OSError as e:
                raise ArchiveError(f"{path}: {e.strerror}") from None
            with src as tarball, open(stage / "layer", "wb") as out:
                raw = open_decompressed(tarball, None)
                # the same streaming bound as ``load`` (the unpacker's): a bomb stops at the bound
                hashing = LayerReader(raw, "sha256", max_layer_size())
                compress_stream(hashing, out, "gzip")  # type: ignore[arg-type]
                out.flush()
                os.fsync(out.fileno())
            _check_tar(stage / "layer")
            diff_id = hashing.digest()
            with open(stage / "layer", "rb") as f:
                digest, size = store.put_blob(f)
        finally:
            remove_tree(stage)
        host = Platform.host()
        created = now_rfc3339()
        config_data: dict[str, object] = {
            "created": created, "architecture": host.architecture, "os": host.os,
            "config": dict(changes or {}),
            "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
            "history": [{"created": created, "created_by": f"unionfs import {os.path.basename(path)}",
                         **({"comment": message} if message else {})}],
        }
        config = ImageConfig.build(config_data)
        manifest = Manifest.build(Descriptor(OCI_CONFIG, config.digest, len(config.raw)),
                                  [Descriptor(OCI_LAYER_GZIP, digest, size)])
        return store.store_image(manifest, config.raw, [ref] if ref else [])


def _check_tar(gz_path: Path) -> None:
    """Refuse a file that is not a tar archive (the unpacker checks every entry later)."""
    try:
        with tarfile.open(gz_path, "r:gz") as t:
            t.next()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"not a tar archive: {e}") from None


# --- saving -----------------------------------------------------------------------------------
class _TarWriter:
    """Writes a tar archive with deterministic headers, front to back (``fileobj`` may be a pipe)."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)
        self.dirs: set[str] = set()

    def _dir(self, name: str) -> None:
        parent = os.path.dirname(name)
        if parent and parent not in self.dirs:
            self._dir(parent)
            info = tarfile.TarInfo(parent)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self.tar.addfile(info)
            self.dirs.add(parent)

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, io.BytesIO(data), len(data))

    def add_stream(self, name: str, f: IO[bytes], size: int) -> None:
        self._dir(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        self.tar.addfile(info, f)

    def close(self) -> None:
        self.tar.close()


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[IO[bytes]]:
    """A new file in ``path``'s directory that replaces ``path`` (fsynced, mode 0644) only when the block ends
    without an error; on an error it is removed and ``path`` stays as it was."""
    out_dir = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".unionfs-save-", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save(store: Store, refs: list[str], output: str | IO[bytes], fmt: str = "docker-archive") -> None:
    """Write images to ``output`` as a docker-save archive (legacy layout) or an oci-archive.

    ``output`` is a path (written atomically: :func:`atomic_output`) or a stream written front to back (a
    pipe will do: standard output). Every reference is resolved, and refused when its image is only partly in
    the store (PartialImageError: a lazy mount's), before a byte is written.
    """
    images: list[tuple[Image, list[Reference]]] = []
    for text in refs:
        image = store.resolve(text)
        store.check_whole(image)
        try:
            tags = [Reference.parse(text)] if not text.startswith("sha256:") and Reference.parse(text).tag else []
        except ReferenceError_:
            tags = []
        images.append((image, tags or list(image.tags)))
    writers = {"docker-archive": _save_docker, "oci-archive": _save_oci}
    if fmt not in writers:
        raise UnionfsError(f"unknown archive format {fmt!r} (docker-archive or oci-archive)")
    with atomic_output(output) if isinstance(output, str) else contextlib.nullcontext(output) as f:
        writers[fmt](store, images, f)


def _save_docker(store: Store, images: list[tuple[Image, list[Reference]]], f: IO[bytes]) -> None:
    w = _TarWriter(f)
    manifest_json = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for image, tags in images:
        config_name = f"{image.id.hex}.json"
        if config_name not in written:
            w.add_bytes(config_name, image.config.raw)
            written.add(config_name)
        layer_paths = []
        for desc, diff_id in zip(image.manifest.layers, image.config.diff_ids):
            name = f"{diff_id.hex}/layer.tar"
            layer_paths.append(name)
            if name in written:
                continue
            with tempfile.TemporaryFile(dir=store.tmp_dir) as tmp:
                with store.open_blob(desc.digest) as blob:
                    hashing = HashingReader(open_decompressed(blob, desc.media_type))
                    while chunk := hashing.read(1 << 20):
                        tmp.write(chunk)
                hashing.verify(diff_id, None, "layer")
                size = tmp.tell()
                tmp.seek(0)
                w.add_stream(name, tmp, size)
            written.add(name)
        manifest_json.append({"Config": config_name, "RepoTags": [t.familiar for t in tags if t.tag],
                              "Layers": layer_paths})
        for t in tags:
            if t.tag:
                repositories.setdefault(t.familiar_name, {})[t.tag] = image.config.diff_ids[-1].hex \
                    if image.config.diff_ids else image.id.hex
    w.add_bytes("manifest.json", json.dumps(manifest_json).encode())
    w.add_bytes("repositories", json.dumps(repositories).encode())
    w.close()


def _save_oci(store: Store, images: list[tuple[Image, list[Reference]]], f: IO[bytes]) -> None:
    w = _TarWriter(f)
    w.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    entries = []
    written: set[str] = set()
    for image, tags in images:
        blobs = [image.manifest_desc.digest, image.manifest.config.digest, *(d.digest for d in image.manifest.layers)]
        for d in blobs:
            if str(d) in written:
                continue
            path = store.blob_path(d)
            with store.open_blob(d) as blob:
                w.add_stream(f"blobs/{d.algorithm}/{d.hex}", blob, path.stat().st_size)
            written.add(str(d))
        md = image.manifest_desc
        for t in tags or [None]:
            ann = {REF_NAME_ANNOTATION: str(t), CONTAINERD_NAME_ANNOTATION: str(t)} if t else {}
            entries.append(Descriptor(md.media_type, md.digest, md.size, ann).to_json())
    w.add_bytes("index.json", canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
    w.close()

