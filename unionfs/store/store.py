"""The image store: content-addressed blobs, tags, extracted layers and containers.

On disk (docs/design.md, "On-disk format")::

    ROOT/oci-layout, ROOT/index.json, ROOT/blobs/sha256/<hex>   a valid OCI image layout (skopeo, umoci read it)
    ROOT/layers/<diffid-hex>/                                    one extracted layer, overlay format, read-only
    ROOT/containers/<name>/{upper,work,state.json}               one writable upper per container
    ROOT/cache/<kind>/<key>.json                                 cache entries naming a manifest (GC roots)
    ROOT/resolved.json                                           what references resolved to (unionfs.store.mounting)
    ROOT/tmp/                                                    staging on the same filesystem
    ROOT/tmp/partial-<algo>-<hex>                                a blob download in progress (``partial_path``)
    ROOT/lock                                                    flock(2) serialising commands that change the store

Contracts:

* A blob is visible under ``blobs/`` only once its full content is written, fsynced and verified against its
  digest (and size); ``put_blob`` is idempotent: a nil error means the content is stored at that digest.
* An extracted layer is unpacked into ``tmp/`` and renamed into ``layers/`` only once its DiffID matched.
* ``index.json`` is rewritten under a temporary name and renamed: a reader never sees a partial index.
* Each entry of ``index.json`` is one tag: a manifest descriptor whose ``org.opencontainers.image.ref.name``
  annotation holds the fully qualified reference (``docker.io/library/busybox:latest``). Entries without that
  annotation are untagged ("dangling") images.
* **Kept indexes.** An image pulled through an index keeps the index: its raw bytes are a verified blob, and
  the entry the pull wrote (a tag, or for a pull by digest an entry without a tag) carries the digest
  reference ``name@sha256:<index>`` in the ``io.unionfs.index.ref`` annotation (``INDEX_REF_ANNOTATION``).
  That annotation is what roots the index blob for garbage collection (the index's other platforms are not
  stored and are not followed); ``resolve`` answers that reference with the entry's manifest, and the
  image's ``digests`` list it. An entry with that annotation and no tag is a *digest reference*, not a
  dangling image: ``prune`` keeps it, ``tag`` does not absorb it; removing the image's last tag (or the
  image by id) removes it, and then the index goes with the image.
* **Partial images.** ``mount --lazy`` records the image it mounts (``store_image(..., lazy=True)``: the same
  entries a pull writes) while some of its layers are neither extracted nor stored as blobs (they are read
  lazily, :mod:`unionfs.lazy`): such an image is *partial* (``missing_layers``). ``images`` and ``inspect``
  say so; ``ensure_layers`` (so a plain mount, ``run``, ``commit``, ``export``...), ``save`` and ``push``
  refuse it (PartialImageError) before changing anything; a pull of it, or the lazy mount's background
  completion, stores what it lacks and so makes it whole. ``rmi``, ``gc`` and ``prune`` take it as any image
  (a blob it lacks is nothing to keep).
* Commands that change the store hold ``lock()``; a failed command removes what it added (``Transaction``),
  and its tag changes are never written: ``index.json`` is written once, when the outermost locked block ends
  without an error (``gc`` writes it before deleting anything).
* Crash safety: a layer or container is deleted by renaming it into ``tmp/`` first (``discard_tree``), so a
  kill -9 at any point leaves it whole or gone; ``tmp/`` holds only garbage, which ``prune`` removes.
* **Partial downloads** (``partial_path``): a blob being downloaded is written to ``tmp/partial-<algo>-<hex>``,
  kept when the download stops (a kill, a lost connection) so that the next run asks only for the missing
  bytes. Its name is no promise: the whole file is hashed from byte 0 (the kept bytes as they are on disk,
  while :func:`append_hashed` adds the rest) and ``commit_partial`` renames it into ``blobs/`` only when digest
  and size match; a mismatch discards it. One longer than the blob is discarded
  when found; ``expire_partials`` removes those older than ``PARTIAL_MAX_AGE`` (a week), ``prune`` all of
  them. Only a holder of ``lock()`` writes one (a pull downloads under the lock).
* Nothing is deleted through a mount: ``remove_tree`` is the one recursive delete and refuses trees with a
  mount inside. ``prune`` detaches, through the caller's ``detach``, mounts a killed ``build`` left under
  ``tmp/``.
* Garbage collection keeps what a root names: a tag or untagged entry of ``index.json``, a container, or a
  cache entry. Caches (the build cache is one) are kept by kind under ``cache/``, through ``put_cached`` and
  ``cached``; the store knows no cache's meaning, and ``prune`` empties them all.

The store never mounts anything: ``prepare_container`` answers with a MountPlan.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, NamedTuple

from unionfs.errors import (
    BlobNotFoundError,
    ContainerError,
    DigestError,
    ImageInUseError,
    ImageNotFoundError,
    ManifestError,
    MountedTreeError,
    PartialImageError,
    ReferenceError_,
    StoreError,
    UnionfsError,
)
from unionfs.fsops import atomic_write, discard_tree, fsync_dir, remove_tree, start_writeback, temp_dir, temp_file
from unionfs.layer.ownership import Owners
from unionfs.mountinfo import Mount, mount_at, mounts
from unionfs.oci.digest import Digest, HashingReader
from unionfs.oci.manifest import (
    CONTAINERD_NAME_ANNOTATION,
    OCI_INDEX,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
    is_index,
)
from unionfs.oci.reference import Reference
from unionfs.store import mounting
from unionfs.store.mounting import default_root, now_rfc3339  # noqa: F401 (the store's API: also from here)

if TYPE_CHECKING:  # the store only hands plans on: a pull or push need not load them
    from unionfs.union.plan import MountPlan

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: bytes of a download written between two requests to start their writeback (``fsops.start_writeback``)
_WRITEBACK = 8 << 20
#: seconds a partial download is kept for a later run to resume (``expire_partials``): a week
PARTIAL_MAX_AGE = 7 * 24 * 3600
_PARTIAL_PREFIX = "partial-"
#: the annotation of an ``index.json`` entry that came through an index: the digest reference
#: ``name@sha256:<index>`` (see "Kept indexes" above)
INDEX_REF_ANNOTATION = "io.unionfs.index.ref"
_LOCK_TIMEOUT = float(os.environ.get("UNIONFS_LOCK_TIMEOUT", "300"))


class Container(NamedTuple):
    """A container's state (``containers/<name>/state.json``): the image it was made from and where it is mounted.

    ``paused`` is the marker a ``commit`` records while it holds the mount read-only (its pid, start time and
    the mountpoint), None otherwise. ``upper`` and ``work`` are its directories (not stored: derived).
    """

    name: str
    ref: str
    image_id: str
    manifest: str
    created: str
    layers: tuple[str, ...]
    upper: str
    work: str
    mountpoint: str | None = None
    paused: dict[str, Any] | None = None

    _STORED = ("name", "ref", "image_id", "manifest", "created", "layers", "mountpoint", "paused")

    @classmethod
    def from_json(cls, data: dict[str, Any], cdir: Path) -> Container:
        """The state read from ``cdir/state.json`` (ContainerError for one that is not a container's)."""
        return cls.of(mounting.state_fields(data, str(cdir / "state.json")), cdir)

    @classmethod
    def of(cls, fields: dict[str, Any], cdir: Path) -> Container:
        """The state of ``fields`` (:func:`unionfs.store.mounting.state_fields`) of the container in ``cdir``."""
        return cls(upper=str(cdir / "upper"), work=str(cdir / "work"), **fields)

    def to_json(self) -> dict[str, Any]:
        """What ``state.json`` holds (no ``paused`` key when not paused)."""
        return mounting.state_json({k: getattr(self, k) for k in self._STORED})


def container_name(image: Image) -> str:
    """A fresh container name: the image's repository's last part (``c`` when untagged) and 8 hex digits."""
    return mounting.new_name(_name_base(image))


def _name_base(image: Image) -> str:
    """The first part of a new container's name: the last part of the image's repository, ``c`` untagged."""
    return image.tags[0].repository.rsplit("/", 1)[-1] if image.tags else "c"


class Image(NamedTuple):
    """A resolved image: the manifest and config, with the index entries (tags) that name it, and the digest
    references of the kept indexes it was pulled through (``name@sha256:<index>``, see "Kept indexes")."""

    manifest_desc: Descriptor
    manifest: Manifest
    config: ImageConfig
    tags: tuple[Reference, ...] = ()
    digests: tuple[Reference, ...] = ()

    @property
    def id(self) -> Digest:
        """The image id: the config digest, as docker shows it."""
        return self.config.digest

    @property
    def size(self) -> int:
        """Bytes of the image's blobs (config and layers as stored)."""
        return self.manifest.config.size + sum(d.size for d in self.manifest.layers)


#: the xattr on a blob that notes the DiffID its content was verified to decompress to (only the store writes
#: blobs, so only the store writes it)
DIFF_ID_XATTR = "user.unionfs.diff_id"


class Transaction:
    """What one command added to the store, so that a failure can take it all back.

    ``index`` holds the tag index as the command changed it; it is written (once, atomically) only when the
    outermost ``lock()`` block ends without an error, so a failed command never leaves a changed tag behind.
    """

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.blobs: list[Path] = []
        self.layers: list[Path] = []
        self.index: list[dict[str, Any]] | None = None

    def rollback(self) -> None:
        """Remove every object this transaction created; forget its index changes."""
        self.index = None
        for p in self.layers:
            with contextlib.suppress(OSError, UnionfsError):
                discard_tree(p, self.tmp_dir)
        for p in self.blobs:
            with contextlib.suppress(OSError):
                os.unlink(p)


def kept_length(path: str | os.PathLike[str], size: int | None, digest: Digest) -> int:
    """Bytes held by the partial download of blob ``digest`` at ``path`` (0: none), to resume from. One longer
    than the blob's ``size`` (or not a regular file) is removed, with a warning, and counts as none. The bytes
    are not trusted here: whoever resumes hashes them all (:func:`append_hashed`)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode) or (size is not None and size >= 0 and st.st_size > size):
        log.warning("blob %s: the partial download %s holds %d bytes, more than the blob's %s: discarded, "
                    "fetching the blob again", digest.short, path, st.st_size, size)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return 0
    return st.st_size


def append_hashed(path: str | os.PathLike[str], start: int, stream: IO[bytes], algorithm: str) -> HashingReader:
    """Write ``stream`` to its end into the partial download at ``path`` (made, mode 0600, when missing) from
    byte ``start`` on: what the file held from ``start`` on is dropped, what it held before is kept. Returns
    the hash of the whole file: its first ``start`` bytes as they are on disk, then what was written (a
    download is read once). Written as it comes, not fsynced (the caller does, before it renames the file into
    place): a kill leaves a prefix to resume from; the writeback of every ``_WRITEBACK`` bytes is started as
    they are written, so that the fsync finds little left to write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+b") as f:
        os.ftruncate(fd, start)
        hashing = HashingReader(f, algorithm)  # the kept prefix, from disk
        hashing.drain(_CHUNK)
        hashing.then(stream)
        written = kicked = start
        while chunk := hashing.read(_CHUNK):
            f.write(chunk)
            written += len(chunk)
            if written - kicked >= _WRITEBACK:  # the disk works while the download goes on
                f.flush()
                start_writeback(fd, kicked, written - kicked)
                kicked = written
    return hashing


class Store:
    """A store rooted at one directory (created, mode 0700, on first use)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root if root is not None else default_root()).absolute()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.containers_dir = self.root / "containers"
        self.tmp_dir = self.root / "tmp"
        self.index_path = self.root / "index.json"
        self._txn: Transaction | None = None
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._init_layout()

    @functools.cached_property
    def owners(self) -> Owners | None:
        """How this store's layers show owners. None for a store root owns: its unpacks give every entry its
        owner. A store a user owns is *rootless*: its unpacks keep owners other than root's, and devices, in
        overrides, and whatever shows no override shows the user as root (:mod:`unionfs.layer.ownership`)."""
        owner = mounting.rootless_owner(str(self.root))
        return None if owner is None else Owners(*owner)

    # -- layout and locking ----------------------------------------------------------------------
    def _init_layout(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            for d in (self.blobs_dir, self.layers_dir, self.containers_dir, self.tmp_dir):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.root / "lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            layout = self.root / "oci-layout"
            if not layout.exists():
                atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
            if not self.index_path.exists():
                self._write_index([])
        except OSError as e:
            raise StoreError(f"cannot use store {self.root}: {e.strerror or e}") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[Transaction]:
        """Hold the store's exclusive lock; yields a Transaction that is rolled back if the block raises.

        Re-entrant within one Store object. Waits up to ``$UNIONFS_LOCK_TIMEOUT`` seconds (300) for another
        command, then raises StoreLockedError.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                assert self._txn is not None
                yield self._txn
            finally:
                self._lock_depth -= 1
            return
        fd = mounting.acquire_lock(str(self.root), _LOCK_TIMEOUT)
        self._lock_fd, self._lock_depth, self._txn = fd, 1, Transaction(self.tmp_dir)
        try:
            yield self._txn
            self._flush_index()
        except BaseException:
            self._txn.rollback()
            raise
        finally:
            self._lock_depth, self._txn, self._lock_fd = 0, None, None
            os.close(fd)

    def _track(self) -> Transaction:
        return self._txn if self._txn is not None else Transaction(self.tmp_dir)

    def staging_dir(self, prefix: str) -> str:
        """A new empty directory under ``tmp/`` (same filesystem as the store), mode 0700."""
        return temp_dir(self.tmp_dir, prefix)

    # -- blobs -----------------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        """Where a blob with this digest lives (whether or not it exists)."""
        if digest.algorithm != "sha256":
            return self.root / "blobs" / digest.algorithm / digest.hex
        return self.blobs_dir / digest.hex

    def has_blob(self, digest: Digest) -> bool:
        """True when the blob is stored."""
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: Digest) -> BinaryIO:
        """Open a stored blob for reading; raise BlobNotFoundError."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} is not in the store") from None

    def read_blob(self, digest: Digest, verify: bool = True) -> bytes:
        """A small blob's bytes (manifests, configs), verified against its digest."""
        with self.open_blob(digest) as f:
            data = f.read()
        if verify and Digest(digest.algorithm, Digest.of_bytes(data, digest.algorithm).hex) != digest:
            raise DigestError(f"stored blob {digest} is corrupt (digest mismatch); remove it and load again")
        return data

    def put_blob(self, stream: IO[bytes], expected: Digest | None = None, size: int | None = None) -> tuple[Digest, int]:
        """Store the stream's bytes; verify ``expected``/``size`` when given. Idempotent.

        Raises DigestError (and stores nothing) when the content does not match.
        """
        algo = expected.algorithm if expected else "sha256"
        (self.root / "blobs" / algo).mkdir(mode=0o700, exist_ok=True)
        fd, tmp = temp_file(self.tmp_dir, "blob-")
        try:
            reader = HashingReader(stream, algo, limit=size if size is not None and size >= 0 else None)
            with os.fdopen(fd, "wb") as f:
                while chunk := reader.read(_CHUNK):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = reader.verify(expected, size, "blob") if expected else reader.digest()
            dest = self.blob_path(digest)
            if dest.exists():
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o644)
                os.rename(tmp, dest)
                fsync_dir(dest.parent)
                self._track().blobs.append(dest)
            return digest, reader.count
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def put_blob_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store bytes held in memory; see ``put_blob``."""
        import io
        return self.put_blob(io.BytesIO(data), expected, len(data) if expected else None)[0]

    # -- partial downloads (see "Partial downloads" above) ---------------------------------------
    def partial_path(self, digest: Digest) -> Path:
        """Where the partial download of blob ``digest`` is kept: ``tmp/partial-<algo>-<hex>``."""
        return self.tmp_dir / f"{_PARTIAL_PREFIX}{digest.algorithm}-{digest.hex}"

    def commit_partial(self, digest: Digest, size: int | None, hashed: HashingReader | None = None) -> Digest:
        """Verify the partial download of ``digest`` against ``digest`` and ``size``: by ``hashed``, what
        :func:`append_hashed` returned for it, else by hashing the whole file from byte 0 as it is on disk; then
        fsync it and rename it into ``blobs/`` (recorded in the transaction, as ``put_blob`` does). DigestError
        when it does not match: the partial is discarded (the next try starts over) and nothing is stored.
        BlobNotFoundError when there is no partial."""

        path = self.partial_path(digest)
        (self.root / "blobs" / digest.algorithm).mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest}: no partial download to commit") from None
        with os.fdopen(fd, "rb") as f:
            reader = hashed
            if reader is None:
                reader = HashingReader(f, digest.algorithm)
                reader.drain(_CHUNK)
            try:
                reader.verify(digest, size, "blob")
            except DigestError:
                self.discard_partial(digest)
                raise
            os.fsync(fd)
        dest = self.blob_path(digest)
        if dest.exists():
            self.discard_partial(digest)
            return digest
        os.chmod(path, 0o644)
        os.rename(path, dest)
        fsync_dir(dest.parent)
        self._track().blobs.append(dest)
        return digest

    def discard_partial(self, digest: Digest) -> None:
        """Remove the partial download of ``digest`` (none: nothing to do)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial_path(digest))

    def expire_partials(self, max_age: float = PARTIAL_MAX_AGE) -> list[str]:
        """Remove partial downloads not written to for ``max_age`` seconds (a week); needs the lock. Returns
        the paths removed."""
        removed = []
        cutoff = time.time() - max_age
        for p in self.tmp_dir.glob(_PARTIAL_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(p).st_mtime < cutoff:
                    os.unlink(p)
                    removed.append(str(p))
                    log.info("removed the partial download %s (older than %d days)", p, max_age // 86400)
        return removed

    def blob_digests(self) -> list[Digest]:
        """Every stored blob."""
        out = []
        blobs = self.root / "blobs"
        for algo_dir in blobs.iterdir():
            for p in algo_dir.iterdir():
                with contextlib.suppress(Exception):
                    out.append(Digest.parse(f"{algo_dir.name}:{p.name}"))
        return out

    # -- the tag index ---------------------------------------------------------------------------
    def _read_index(self) -> list[dict[str, Any]]:
        if self._txn is not None and self._txn.index is not None:
            return list(self._txn.index)
        try:
            data = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise StoreError(f"{self.index_path} is corrupt: {e}") from None
        return list(data.get("manifests") or [])

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        """Set the tag index: kept in the transaction while the lock is held (see ``_flush_index``)."""
        if self._txn is not None:
            self._txn.index = list(entries)
        else:
            self._save_index(entries)

    def _save_index(self, entries: list[dict[str, Any]]) -> None:
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        atomic_write(self.index_path, json.dumps(body, indent=2).encode() + b"\n")

    def _flush_index(self) -> None:
        """Write the transaction's tag index now (atomically), if it changed. The end of a successful
        ``lock()`` block does this; ``gc`` does it before deleting anything, so that a kill while deleting
        never leaves the index naming deleted content."""
        txn = self._txn
        if txn is not None and txn.index is not None:
            self._save_index(txn.index)
            txn.index = None

    @staticmethod
    def _entry_ref(entry: dict[str, Any]) -> Reference | None:
        name = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)
        if not name:
            return None
        try:
            return Reference.parse(name)
        except ReferenceError_:
            return None

    def tags_of(self, digest: Digest) -> tuple[Reference, ...]:
        """Every tag of the manifest ``digest``, in index order (``inspect``'s RepoTags, as docker lists them
        whichever name the image was asked by)."""
        refs = (self._entry_ref(e) for e in self._read_index() if e.get("digest") == str(digest))
        return tuple(r for r in refs if r is not None and r.tag)

    @staticmethod
    def _index_ref(entry: dict[str, Any]) -> Reference | None:
        """The digest reference ``name@sha256:<index>`` of the kept index ``entry`` came through (None: none,
        or not a digest reference)."""
        text = (entry.get("annotations") or {}).get(INDEX_REF_ANNOTATION)
        if not text:
            return None
        try:
            ref = Reference.parse(text)
        except ReferenceError_:
            return None
        return ref if ref.digest is not None and not ref.tag else None

    def _digest_refs(self, entries: list[dict[str, Any]], manifest: Digest) -> tuple[Reference, ...]:
        """The digest references of kept indexes that ``entries`` record for ``manifest``, each once."""
        refs = (self._index_ref(e) for e in entries if e.get("digest") == str(manifest))
        return tuple(dict.fromkeys(r for r in refs if r is not None))

    def tag(self, ref: Reference, manifest_desc: Descriptor, index: Reference | None = None) -> None:
        """Point ``ref`` (a tagged reference) at a stored manifest, replacing any previous target. ``index``:
        the digest reference of the kept index the manifest came through (its blob must be stored)."""
        if not ref.tag:
            raise ReferenceError_(f"cannot tag with a digest reference: {ref}")
        ref = Reference(ref.registry, ref.repository, ref.tag)
        with self.lock():
            entries = [e for e in self._read_index() if self._entry_ref(e) != ref]
            # an untagged entry for the same manifest becomes this tag (a digest reference stays one)
            entries = [e for e in entries if self._entry_ref(e) is not None or self._index_ref(e) is not None
                       or e.get("digest") != str(manifest_desc.digest)]
            annotations = {REF_NAME_ANNOTATION: str(ref), CONTAINERD_NAME_ANNOTATION: str(ref)}
            if index is not None:
                annotations[INDEX_REF_ANNOTATION] = str(index)
            desc = Descriptor(manifest_desc.media_type, manifest_desc.digest, manifest_desc.size, annotations,
                              manifest_desc.platform)
            entries.append(desc.to_json())
            self._write_index(entries)

    def add_untagged(self, manifest_desc: Descriptor) -> None:
        """Record a manifest with no tag (a dangling image), unless some entry already names it."""
        with self.lock():
            entries = self._read_index()
            if any(e.get("digest") == str(manifest_desc.digest) for e in entries):
                return
            entries.append(Descriptor(manifest_desc.media_type, manifest_desc.digest, manifest_desc.size).to_json())
            self._write_index(entries)

    def add_index_ref(self, index: Reference, manifest_desc: Descriptor) -> None:
        """Record the digest reference ``index`` (``name@sha256:<index>``, its blob stored) as naming the
        stored manifest ``manifest_desc``: an entry without a tag (a pull by index digest), unless an entry
        already records it for that manifest. It replaces a plain untagged entry for that manifest and an
        entry without a tag that recorded ``index`` for another manifest (another platform pulled last: the
        reference now names that one, as a tag moved by a pull does)."""
        with self.lock():
            entries = self._read_index()
            if any(self._index_ref(e) == index and e.get("digest") == str(manifest_desc.digest) for e in entries):
                return
            entries = [e for e in entries if self._entry_ref(e) is not None or not (
                self._index_ref(e) == index
                or (self._index_ref(e) is None and e.get("digest") == str(manifest_desc.digest)))]
            entries.append(Descriptor(manifest_desc.media_type, manifest_desc.digest, manifest_desc.size,
                                      {INDEX_REF_ANNOTATION: str(index)}).to_json())
            self._write_index(entries)

    def untag(self, ref: Reference) -> Descriptor:
        """Remove one tag; returns the descriptor it pointed at. Raises ImageNotFoundError."""
        with self.lock():
            entries = self._read_index()
            keep, gone = [], None
            for e in entries:
                if gone is None and self._entry_ref(e) == ref:
                    gone = e
                else:
                    keep.append(e)
            if gone is None:
                raise ImageNotFoundError(f"no such image: {ref.familiar}")
            self._write_index(keep)
            return Descriptor.from_json(gone)

    # -- images ----------------------------------------------------------------------------------
    def load_manifest(self, desc: Descriptor, platform: Platform | None = None) -> tuple[Descriptor, Manifest]:
        """Read a stored manifest; an index is resolved to the manifest for ``platform`` (host by default)."""
        raw = self.read_blob(desc.digest)
        if is_index(desc.media_type, raw):
            chosen = Index.parse(raw, desc.media_type).select(platform or Platform.host())
            return self.load_manifest(chosen, platform)
        return desc, Manifest.parse(raw, desc.media_type or None)

    def image_from_descriptor(self, desc: Descriptor, tags: tuple[Reference, ...] = (),
                              platform: Platform | None = None) -> Image:
        """Build an Image from a stored manifest (or index) descriptor."""
        mdesc, manifest = self.load_manifest(desc, platform)
        config = ImageConfig.parse(self.read_blob(manifest.config.digest), strict=False)
        return Image(mdesc, manifest, config, tags)

    def tagged(self) -> list[tuple[Descriptor, tuple[Reference, ...]]]:
        """Every manifest (or index) descriptor in the index with the references naming it, in index order,
        read from the index alone: no blob is opened (what :meth:`images` loads, for the ones asked for)."""
        grouped: dict[str, tuple[Descriptor, list[Reference]]] = {}
        for e in self._read_index():
            try:
                desc = Descriptor.from_json(e)
            except ManifestError:
                continue
            slot = grouped.setdefault(str(desc.digest), (desc, []))
            ref = self._entry_ref(e)
            if ref:
                slot[1].append(ref)
        return [(desc, tuple(refs)) for desc, refs in grouped.values()]

    def images(self) -> list[Image]:
        """Every image in the index, tags grouped per manifest, in index order."""
        out = []
        entries = self._read_index()
        for desc, refs in self.tagged():
            try:
                image = self.image_from_descriptor(desc, refs)
            except UnionfsError as err:
                log.warning("skipping image %s: %s", desc.digest, err)
                continue
            out.append(image._replace(digests=self._digest_refs(entries, desc.digest)))
        return out

    def intermediate_images(self) -> list[Image]:
        """The images only a cache entry names (a build's cached steps: docker's intermediate images, which
        ``images -a`` lists), untagged, each once; unreadable ones are skipped."""
        seen = {e.get("digest") for e in self._read_index()}
        out = []
        for desc in self._cached_roots():
            if str(desc.digest) in seen:
                continue
            seen.add(str(desc.digest))
            try:
                out.append(self.image_from_descriptor(desc))
            except UnionfsError as err:
                log.warning("skipping cached image %s: %s", desc.digest, err)
        return out

    def resolve(self, text: str, platform: Platform | None = None) -> Image:
        """Find an image by reference (tag or digest, a kept index's digest too), by image id, or by a unique
        id prefix (>= 4 hex digits)."""
        image = self._resolve(text, platform)
        return image._replace(digests=self._digest_refs(self._read_index(), image.manifest_desc.digest))

    def _resolve(self, text: str, platform: Platform | None = None) -> Image:
        entries = self._read_index()
        hexpart = text[len("sha256:"):] if text.startswith("sha256:") else text
        if 4 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart):
            matches = {img.id: img for img in self.images()
                       if img.id.hex.startswith(hexpart) or img.manifest_desc.digest.hex.startswith(hexpart)
                       or any(d.digest is not None and d.digest.hex.startswith(hexpart) for d in img.digests)}
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(matches) > 1:
                raise ImageNotFoundError(f"image id prefix {text!r} is ambiguous")
        try:
            ref = Reference.parse(text)
        except ReferenceError_:
            raise ImageNotFoundError(f"no such image: {text}") from None
        if ref.digest is not None:  # a kept index's digest reference: the manifest its entry names
            kept = [e for e in entries if (i := self._index_ref(e)) is not None and i.digest == ref.digest]
            # the same name first, then the entry written last (the platform pulled last)
            for e in sorted(reversed(kept), key=lambda e: self._index_ref(e) != Reference(
                    ref.registry, ref.repository, None, ref.digest)):
                eref = self._entry_ref(e)
                return self.image_from_descriptor(Descriptor.from_json(e), (eref,) if eref else (), platform)
        for e in entries:
            eref = self._entry_ref(e)
            if eref is None:
                continue
            if ref.digest is not None:
                if eref.name == ref.name and e.get("digest") == str(ref.digest):
                    return self.image_from_descriptor(Descriptor.from_json(e), (eref,), platform)
            elif eref == ref:
                return self.image_from_descriptor(Descriptor.from_json(e), (eref,), platform)
        if ref.digest is not None:  # a digest reference to a manifest stored under another name
            for e in entries:
                if e.get("digest") == str(ref.digest):
                    return self.image_from_descriptor(Descriptor.from_json(e), (), platform)
        raise ImageNotFoundError(f"no such image: {ref.familiar}")

    def store_image(self, manifest: Manifest, config_raw: bytes, tags: list[Reference],
                    index: tuple[Reference, bytes] | None = None, *, unpack: bool = True,
                    lazy: bool = False) -> Image:
        """Store a manifest whose config and layers are already stored, unpack its layers, then tag it.

        Verifies that the config digest matches the manifest and that the layers count matches the diff_ids.
        Tags are written last: an image is visible only when everything it needs is in place. ``index``: the
        index the manifest was chosen from, as its digest reference (``name@sha256:<index>``) and raw bytes;
        they are stored as a blob (verified against that digest, DigestError otherwise) and the entries
        written carry the reference (see "Kept indexes"); without tags, the reference is recorded alone.

        ``unpack=False`` (``pull --no-unpack``) records the image without extracting its layers: the first
        command that needs them extracts them (``ensure_layers``), with the same checks; until then the blobs'
        content is verified against their digests only, not yet against the config's DiffIDs.

        ``lazy=True`` (``mount --lazy``, :mod:`unionfs.lazy.prepare`) records a *partial* image: its layers may
        be neither extracted nor stored (``missing_layers``), and nothing is unpacked. The same entries are
        written as for a whole image; ``ensure_layers`` refuses it (PartialImageError) until a pull (or the
        lazy mount's background completion) has stored what it lacks.
        """
        with self.lock():
            config = ImageConfig.parse(config_raw)
            self.put_blob_bytes(config_raw, manifest.config.digest)
            if len(config.diff_ids) != len(manifest.layers):
                raise ManifestError(f"image has {len(manifest.layers)} layers but its config lists "
                                    f"{len(config.diff_ids)} diff_ids")
            for d in manifest.layers:
                if not lazy and not self.has_blob(d.digest):
                    raise BlobNotFoundError(f"layer blob {d.digest} is not in the store")
            desc = manifest.descriptor()
            self.put_blob_bytes(manifest.raw, desc.digest)
            index_ref = None
            if index is not None:
                ref, raw = index
                if ref.digest is None:
                    raise ReferenceError_(f"an index needs its digest reference, not {ref}")
                index_ref = Reference(ref.registry, ref.repository, None, ref.digest)
                self.put_blob_bytes(raw, ref.digest)
            image = Image(desc, manifest, config, tuple(tags), (index_ref,) if index_ref else ())
            if unpack and not lazy:
                self.ensure_layers(image)
            for ref in tags:
                self.tag(ref, desc, index_ref)
            if not tags:
                if index_ref is not None:
                    self.add_index_ref(index_ref, desc)
                else:
                    self.add_untagged(desc)
            return image

    # -- extracted layers ------------------------------------------------------------------------
    def layer_path(self, diff_id: Digest) -> Path:
        """The directory of the extracted layer with this DiffID."""
        return self.layers_dir / diff_id.hex

    def missing_layers(self, image: Image) -> list[Descriptor]:
        """The layers of ``image`` (base first) that are neither extracted in ``layers/`` nor stored as a blob:
        none for an image the store holds whole, some for a *partial* one (``store_image(..., lazy=True)``).
        Stats only."""
        return [desc for desc, diff_id in zip(image.manifest.layers, image.config.diff_ids)
                if not self.layer_path(diff_id).is_dir() and not self.has_blob(desc.digest)]

    def check_whole(self, image: Image) -> None:
        """Raise PartialImageError when ``image`` is partial (:meth:`missing_layers`), naming it and the pull
        that completes it."""
        if not self.missing_layers(image):
            return
        name = next((r.familiar for r in (*image.tags, *image.digests)), None)
        pull = f"'unionfs pull {name}'" if name is not None else "a pull of its reference"
        raise PartialImageError(f"image {name or image.id.short} is only partly in the store (a lazy mount's "
                                f"image not yet pulled whole): {pull} completes it, --lazy mounts it as it is")

    def ensure_layers(self, image: Image) -> list[Path]:
        """Unpack every layer of ``image`` not yet extracted; returns the layer directories, base first.

        The one way to an image's layer directories: whatever needs them (mount, run, build, commit, diff,
        ``ls``/``cat``/``export``...) asks here, so an image recorded without its layers (``store_image(...,
        unpack=False)``, ``pull --no-unpack``) has them extracted on first use, under the lock, exactly as a
        pull that unpacks would have (and fails the same way when a blob does not decompress to its DiffID).
        Each is unpacked into ``tmp/`` with its DiffID verified, then renamed into ``layers/``. A layer already
        extracted (maybe from another blob) is not unpacked again, but the blob is checked against the DiffID
        the image gives it all the same, unless the blob is noted to have it (:meth:`_check_diff_id`): the store
        never keeps an image whose blob's content is not its DiffID (a hostile archive or registry pairing a
        blob with a layer the store holds).

        A partial image (:meth:`missing_layers`) is refused with PartialImageError before anything is touched:
        the directories answered are only ever ``layers/``'s, never a lazy mount's tree (``ROOT/lazy``), whose
        files are placeholders only a mount's daemon fills.
        """
        paths = [self.layer_path(d) for d in image.config.diff_ids]
        with self.lock() as txn:
            extracted = [p.is_dir() for p in paths]
            if not all(extracted):  # only an image with a layer to extract can be partial
                self.check_whole(image)
            for desc, diff_id, dest, there in zip(image.manifest.layers, image.config.diff_ids, paths, extracted):
                if there:
                    if self._noted_diff_id(desc.digest) != diff_id:
                        self._check_diff_id(desc, diff_id)
                    continue
                # the only place the store needs the unpacker: not imported when every layer is there (mount)
                from unionfs.layer.unpack import unpack_layer

                stage = self.staging_dir("layer-")
                try:
                    with self.open_blob(desc.digest) as blob:
                        unpack_layer(blob, stage, media_type=desc.media_type, diff_id=diff_id,
                                     privileged=None if self.owners is None else False)
                    self._note_diff_id(desc.digest, diff_id)
                    os.rename(stage, dest)
                    fsync_dir(self.layers_dir)
                    txn.layers.append(dest)
                except BaseException:
                    remove_tree(stage)
                    raise
        return paths

    def _check_diff_id(self, desc: Descriptor, diff_id: Digest) -> None:
        """Raise DigestError unless the stored blob ``desc`` decompresses to content with digest ``diff_id``;
        note it on the blob when it does."""
        from unionfs.layer.compression import open_decompressed

        with self.open_blob(desc.digest) as blob:
            reader = HashingReader(open_decompressed(blob, desc.media_type), diff_id.algorithm)
            while reader.read(1 << 20):
                pass
        reader.verify(diff_id, None, f"layer {desc.digest}")
        self._note_diff_id(desc.digest, diff_id)

    def _noted_diff_id(self, digest: Digest) -> Digest | None:
        """The DiffID the blob ``digest`` was verified to have (:data:`DIFF_ID_XATTR`), or None."""
        try:
            return Digest.parse(os.getxattr(self.blob_path(digest), DIFF_ID_XATTR).decode("ascii"))
        except (OSError, ValueError, UnionfsError):
            return None

    def _note_diff_id(self, digest: Digest, diff_id: Digest) -> None:
        """Note on the blob ``digest`` that its content decompresses to ``diff_id`` (a fact of its bytes, true
        as long as the blob exists; a filesystem without user xattrs keeps no note: the check is redone)."""
        try:
            os.setxattr(self.blob_path(digest), DIFF_ID_XATTR, str(diff_id).encode("ascii"))
        except OSError as e:
            log.debug("blob %s: DiffID not noted: %s", digest.short, e.strerror)

    # -- containers ------------------------------------------------------------------------------
    def _container_dir(self, name: str) -> Path:
        return Path(mounting.container_dir(str(self.root), name))

    def prepare_container(self, image_ref: str, name: str | None = None) -> MountPlan:
        """A mount plan for container ``name`` of ``image_ref``, creating the container if it is new.

        An existing container keeps its upper; it must belong to the same image. What ``image_ref`` resolved to
        is recorded (:mod:`unionfs.store.mounting`), so that the next ``mount`` of it need not load the image
        formats while the index stays as it is.
        """
        with self.lock() as txn:
            image = self.resolve(image_ref)
            lowers = self.ensure_layers(image)
            resolved = {"image_id": str(image.id), "manifest": str(image.manifest_desc.digest),
                        "layers": [p.name for p in lowers], "base": _name_base(image)}
            plan = mounting.container_plan(str(self.root), image_ref, name, resolved)
            if txn.index is None:  # resolved against the index on disk (not one a caller is changing)
                mounting.remember(str(self.root), image_ref, resolved)
            return plan

    def container(self, name: str) -> Container:
        """Container ``name``'s state; ContainerError when there is no such container."""
        cdir = self._container_dir(name)
        return Container.of(mounting.read_state(str(cdir), name), cdir)

    def containers(self) -> list[Container]:
        """Every container's state, by name (unreadable states are skipped)."""
        out = []
        for d in sorted(self.containers_dir.iterdir()):
            with contextlib.suppress(ContainerError, OSError):
                out.append(self.container(d.name))
        return out

    def set_container_mount(self, name: str, mountpoint: str | None) -> None:
        """Record where container ``name`` is mounted (None: not mounted)."""
        self._update_container(name, lambda c: c._replace(mountpoint=mountpoint))

    def _update_container(self, name: str, change: Callable[[Container], Container]) -> None:
        """Under the lock: read container ``name``'s state, let ``change`` make the new one, and write it back
        atomically (ContainerError when there is no such container)."""
        with self.lock():
            new = change(self.container(name))
            mounting.write_state(str(self._container_dir(name)), new.to_json())

    def set_container_paused(self, name: str, marker: dict[str, Any] | None, *,
                             if_current: dict[str, Any] | None = None) -> None:
        """Record (``marker``: who paused it, where) or clear (None) the pause of container ``name``'s mount
        (``commit``); written atomically, so a command killed while pausing leaves a marker to undo. With
        ``if_current``, only when the recorded marker is that one."""
        def change(c: Container) -> Container:
            if if_current is not None and c.paused != if_current:
                return c
            return c._replace(paused=marker)

        self._update_container(name, change)

    def remove_container(self, name: str) -> None:
        """Delete container ``name`` and its upper. Raises ContainerError when missing or mounted."""
        with self.lock():
            cdir = self._container_dir(name)
            if not cdir.exists():
                raise ContainerError(f"no such container: {name}")
            try:
                mp = self.container(name).mountpoint
            except ContainerError:
                mp = None  # a half-made container (no readable state) can go
            if mp and mount_at(mp) is not None:
                raise ContainerError(f"container {name} is mounted at {mp}; unmount it first")
            discard_tree(cdir, self.tmp_dir)

    # -- removal and garbage collection ----------------------------------------------------------
    def rmi(self, text: str, force: bool = False) -> list[str]:
        """Remove an image by reference or id, like ``docker rmi``; returns lines describing what went.

        A tag reference removes that tag; the image's content goes once nothing names it. An id removes every
        tag of that image (with ``force``, or when it has one tag). An image a container uses is refused unless
        ``force`` (then only its tags go; the container keeps its layers). A kept index's digest reference
        (``name@sha256:<index>``) removes that reference (and the index blob with it). When the image's last
        tag goes, its digest references go too (as docker's do), and so does the image.
        """
        out: list[str] = []
        with self.lock():
            image = self.resolve(text)
            users = [c.name for c in self.containers() if c.image_id == str(image.id)]
            by_ref = not _is_id_like(text)
            all_tags = [t for img in self.images() if img.id == image.id for t in img.tags]
            ref = Reference.parse(text) if by_ref else None
            index_digest = ref.digest if ref is not None and ref.digest is not None and any(
                d.digest == ref.digest for d in image.digests) else None
            if index_digest is not None:
                targets = []
            elif by_ref:
                targets = [Reference.parse(text)] if image.tags else []
            else:
                if len(all_tags) > 1 and not force:
                    raise ImageInUseError(f"image {image.id.short} is referenced in multiple repositories; "
                                          "use -f or remove tags by name")
                targets = all_tags
            remaining = [t for t in all_tags if t not in targets]
            if users and not remaining and not force:
                raise ImageInUseError(f"image {image.id.short} is used by container {users[0]}; "
                                      "remove the container or use -f")
            for t in targets:
                self.untag(t)
                out.append(f"Untagged: {t.familiar}")
            if index_digest is not None:
                out.extend(self._drop_index_refs(image.manifest_desc.digest, lambda i: i.digest == index_digest))
            others = [d for d in image.digests if d.digest != index_digest] if index_digest is not None else []
            if not remaining and not others:  # what still names the image has no tag: digest refs, a dangling entry
                out.extend(self._drop_index_refs(image.manifest_desc.digest, lambda i: True))
                entries = [e for e in self._read_index() if e.get("digest") != str(image.manifest_desc.digest)]
                self._write_index(entries)
            refs_left = self._digest_refs(self._read_index(), image.manifest_desc.digest)
            if (not remaining and not others) or set(refs_left) != set(image.digests):  # a kept index may go
                out.extend(f"Deleted: {d}" for d in self.gc())
        return out

    def _drop_index_refs(self, manifest: Digest, which: Callable[[Reference], bool]) -> list[str]:
        """Remove the digest references of kept indexes that entries of ``manifest`` record and ``which``
        selects: an entry without a tag goes, a tag's entry keeps its tag. Returns ``Untagged:`` lines."""
        out: list[str] = []
        entries: list[dict[str, Any]] = []
        for e in self._read_index():
            i = self._index_ref(e)
            if i is None or e.get("digest") != str(manifest) or not which(i):
                entries.append(e)
                continue
            line = f"Untagged: {i.familiar}"
            if line not in out:
                out.append(line)
            if self._entry_ref(e) is not None:
                entries.append({**e, "annotations": {k: v for k, v in e["annotations"].items()
                                                     if k != INDEX_REF_ANNOTATION}})
        self._write_index(entries)
        return out

    def gc(self) -> list[str]:
        """Delete blobs and extracted layers that no image and no container reference; returns what went."""
        removed: list[str] = []
        with self.lock():
            keep_blobs: set[str] = set()
            keep_layers: set[str] = set()
            self._flush_index()
            entries = self._read_index()
            roots = [Descriptor.from_json(e) for e in entries] + self._cached_roots()
            # a kept index: its blob only (its other platforms are not stored, the one stored is a root)
            keep_blobs.update(str(i.digest) for i in map(self._index_ref, entries) if i is not None)
            for c in self.containers():
                keep_layers.update(c.layers)
                if c.manifest:
                    roots.append(Descriptor("", Digest.parse(c.manifest), -1))
            for desc in roots:
                self._mark(desc, keep_blobs, keep_layers)
            for d in self.blob_digests():
                if str(d) not in keep_blobs:
                    os.unlink(self.blob_path(d))
                    removed.append(str(d))
            gone = [p for p in self.layers_dir.iterdir() if p.name not in keep_layers]
            if gone:
                # out of layers/ first (atomic renames), then deleted: a kill never leaves a partial layer
                trash = Path(self.staging_dir("rm-"))
                for p in gone:
                    os.rename(p, trash / p.name)
                    removed.append(f"layer {p.name[:12]}")
                fsync_dir(self.layers_dir)
                remove_tree(trash)
        return removed

    def _mark(self, desc: Descriptor, blobs: set[str], layers: set[str]) -> None:
        blobs.add(str(desc.digest))
        try:
            raw = self.read_blob(desc.digest, verify=False)
        except BlobNotFoundError:
            return
        try:
            if is_index(desc.media_type, raw):
                for child in Index.parse(raw, desc.media_type or None).manifests:
                    self._mark(child, blobs, layers)
                return
            manifest = Manifest.parse(raw, desc.media_type or None)
        except ManifestError:
            return
        blobs.add(str(manifest.config.digest))
        blobs.update(str(d.digest) for d in manifest.layers)
        with contextlib.suppress(UnionfsError, OSError):
            layers.update(d.hex for d in ImageConfig.parse(self.read_blob(manifest.config.digest, False),
                                                           strict=False).diff_ids)

    def prune(self, all_unused: bool = False, detach: Detach | None = None) -> list[str]:
        """Remove dangling images (all images no container uses, with ``all_unused``) and every cache, then
        collect garbage and empty ``tmp/`` (mounts found there go through ``detach``, see ``_clean_tmp``).
        Returns lines describing what went."""
        out: list[str] = []
        with self.lock():
            used = {c.manifest for c in self.containers()}
            entries = self._read_index()
            keep = [e for e in entries if e.get("digest") in used
                    or ((self._entry_ref(e) or self._index_ref(e)) is not None and not all_unused)]
            for e in entries:
                if e not in keep:
                    ref = self._entry_ref(e) or self._index_ref(e)
                    out.append(f"Untagged: {ref.familiar}" if ref else f"Deleted: {e.get('digest')}")
            self._write_index(keep)
            out.extend(self._drop_caches())
            out.extend(f"Deleted: {d}" for d in self.gc())
            out.extend(self._clean_tmp(detach))
        return out

    def _clean_tmp(self, detach: Detach | None) -> list[str]:
        """Empty ``tmp/``: staging left by killed commands. Needs the lock.

        Every command that mounts under ``tmp/`` (``build``) holds the store lock while its mounts live, so a
        mount found here while we hold the lock lost its owner. The store never mounts or unmounts: each such
        mount goes to ``detach``, which detaches it (True) or declines a mount it did not make (False, or no
        ``detach``): that one is left alone with a note, and so is the tree holding it (``remove_tree`` never
        deletes through a mount). Returns lines describing what was done or skipped.
        """
        out: list[str] = []
        tmp = os.path.realpath(self.tmp_dir)
        for m in reversed([m for m in mounts() if m.mountpoint.startswith(tmp + "/")]):  # topmost first
            try:
                detached = detach is not None and detach(m)
            except UnionfsError as e:
                out.append(f"Skipped: {m.mountpoint}: {e}")
                continue
            if not detached:
                out.append(f"Skipped: {m.mountpoint} is a {m.fstype} mount unionfs did not make")
                continue
            out.append(f"Unmounted: {m.mountpoint} (left behind by a killed command)")
        for p in self.tmp_dir.iterdir():
            try:
                remove_tree(p)
            except MountedTreeError as e:
                out.append(f"Skipped: {e}")
        return out


    # -- caches: entries that name a manifest, kept as garbage-collection roots until ``prune`` -----------
    def cache_dir(self, kind: str) -> Path:
        """``ROOT/cache/<kind>`` (not created)."""
        if not kind.isidentifier():
            raise StoreError(f"invalid cache kind {kind!r}")
        return self.root / "cache" / kind

    def put_cached(self, kind: str, key: str, manifest: Descriptor, **extra: Any) -> Path:
        """Record, atomically, the cache entry ``key`` of ``kind`` naming ``manifest`` (a garbage-collection
        root from now on) with ``extra`` JSON values; returns the entry's path (for a rollback)."""
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise StoreError(f"invalid cache key {key!r}")
        d = self.cache_dir(kind)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / f"{key}.json"
        atomic_write(path, canonical_json({"manifest": manifest.to_json(), **extra}))
        return path

    def cached(self, kind: str, key: str) -> tuple[Descriptor, dict[str, Any]] | None:
        """The manifest descriptor and the whole entry of cache entry ``key`` of ``kind`` (None: none, or
        unreadable)."""
        try:
            entry = json.loads((self.cache_dir(kind) / f"{key}.json").read_bytes())
            return Descriptor.from_json(entry["manifest"]), entry
        except (OSError, ValueError, KeyError, TypeError, UnionfsError):
            return None

    def _cache_kinds(self) -> list[Path]:
        """The directories ``ROOT/cache/<kind>`` that exist."""
        base = self.root / "cache"
        return sorted(d for d in base.iterdir() if d.is_dir()) if base.is_dir() else []

    def cache_entries(self) -> list[tuple[str, Descriptor]]:
        """The kind and the manifest of every readable cache entry (unreadable ones are skipped)."""
        hits = ((d.name, self.cached(d.name, p.stem)) for d in self._cache_kinds() for p in d.glob("*.json"))
        return [(kind, hit[0]) for kind, hit in hits if hit is not None]

    def _cached_roots(self) -> list[Descriptor]:
        return [desc for _, desc in self.cache_entries()]

    def _drop_caches(self) -> list[str]:
        """Delete every cache entry; one line per kind that had entries ("Deleted build cache: 3 entries")."""
        counts: dict[str, int] = {}
        for d in self._cache_kinds():
            for p in d.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)  # entries and the temporary names of entries a kill interrupted
                    if p.suffix == ".json":
                        counts[d.name] = counts.get(d.name, 0) + 1
        return [f"Deleted {kind} cache: {n} entries" for kind, n in counts.items()]


#: ``prune``'s way to detach a mount a killed command left under ``tmp/``: True when it detached it (and
#: stopped its daemon), False for a mount it did not make; UnionfsError when it could not
Detach = Callable[[Mount], bool]


def _is_id_like(text: str) -> bool:
    hexpart = text[len("sha256:"):] if text.startswith("sha256:") else text
    return 4 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart) and (
        text.startswith("sha256:") or len(hexpart) >= 12 or not hexpart.isalpha())

