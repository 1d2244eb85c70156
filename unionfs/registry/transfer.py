"""Pull and push: the flows between a registry (``registry.py``) and the store (``store.py``).

Neither HTTP nor the on-disk layout is spoken here; this module decides what to fetch or send and in which
order, runs blob transfers in parallel, and reports progress through a ``Progress`` object (the CLI's,
which is the only place that prints).

Contracts:

* **pull** resolves a reference to a manifest (an index picks ``platform``, the host's by default), fetches
  the config and every layer blob the store lacks (``jobs`` at a time, the config among them, each verified
  while it streams and written by ``Store.put_blob`` under a temporary name), then ``Store.store_image``
  unpacks the layers and tags the image (with ``unpack=False`` it records the image only: the layers are
  extracted, and checked against the config's DiffIDs, when first needed; ``Store.ensure_layers``). The
  registry's raw manifest bytes are what is stored, so the stored image keeps the
  registry's manifest digest. All of it runs under the store lock: when anything fails, every blob and
  layer this pull added is removed and the tag is not written (the store is as before, but for the partial
  downloads below). A pull killed with SIGKILL leaves only temporary files in ``tmp/`` and verified,
  complete blobs; the next pull skips those blobs and completes.
* **Resume across runs.** A layer blob is downloaded into the store's partial file for its digest
  (``Store.partial_path``), which outlives the run: the next pull asks for ``Range: bytes=N-`` from its
  length N and appends (a registry that ignores the range or answers 416 sends it all again: the file is
  started over). The complete file is hashed from byte 0 before it becomes the blob (the kept bytes read back
  from disk, the new ones as they are written: ``fetch_partial``, then ``Store.commit_partial``); when a resumed
  file does not verify, it is discarded and the blob fetched once more from the
  start, with a warning. A pull that fails on wrong content (DigestError) removes its partial files; one
  that is interrupted (kill, lost connection, Ctrl-C) keeps them. Partial files older than a week are
  removed when a pull starts, all of them by ``prune``.
* Through an index, the platform manifest is stored and the tag points at it (pushing the image back
  pushes that manifest, byte for byte); the index is kept too, as a verified blob named by the digest
  reference ``name@sha256:<index>`` that the tag's entry (or, pulled by digest, an entry of its own)
  records (``Store.store_image``): that reference resolves afterwards, offline, and ``inspect`` lists it.
* **push** sends the config and layer blobs the destination lacks (HEAD first; a cross-repository mount
  from another repository of the same registry that the store knows holds the blob; else an upload),
  then PUTs the stored raw manifest with its media type: the pushed image has the stored manifest digest.
  Foreign (non-distributable) layers are not pushed, as docker does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import IO, Callable, NamedTuple, Protocol, cast

from unionfs.errors import BlobNotFoundError, DigestError, ImageNotFoundError, RegistryError, UnionfsError
from unionfs.oci.digest import Digest, HashingReader
from unionfs.oci.manifest import DOCKER_FOREIGN_LAYER, OCI_LAYER_ND, Descriptor, Index, Manifest, Platform, is_index
from unionfs.oci.reference import Reference
from unionfs.registry.client import DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_THRESHOLD, FetchedManifest, RegistryClient
from unionfs.store.store import Image, Store, append_hashed, kept_length

log = logging.getLogger(__name__)

DEFAULT_JOBS = 3
MAX_CONFIG_BYTES = 16 << 20


class Progress(Protocol):
    """What a pull or push reports. Called from worker threads: implementations must be thread-safe."""

    def line(self, text: str) -> None:
        """A status line (``Pulling from ...``)."""

    def begin(self, key: str, total: int | None, action: str) -> None:
        """A transfer starts: ``key`` is a short blob id, ``action`` ``Downloading``/``Pushing``."""

    def advance(self, key: str, n: int) -> None:
        """``n`` more bytes of ``key`` moved."""

    def end(self, key: str, status: str) -> None:
        """``key`` is done: ``Pull complete``, ``Already exists``, ``Mounted from x``, ``Pushed``..."""


class NoProgress:
    """Reports nothing (``-q``)."""

    def line(self, text: str) -> None:
        pass

    def begin(self, key: str, total: int | None, action: str) -> None:
        pass

    def advance(self, key: str, n: int) -> None:
        pass

    def end(self, key: str, status: str) -> None:
        pass


class _Cancelled(Exception):
    """Raised inside a worker when another transfer failed (or the user interrupted)."""


class PullResult(NamedTuple):
    """What a pull did: the digest the reference resolved to (the index's when the registry answered with one,
    as docker prints it; else the manifest's), the image stored, and how many blobs came over the network or
    were present."""

    reference: Reference
    digest: Digest
    image: Image
    fetched: int
    present: int


class PushResult(NamedTuple):
    """What a push did: the manifest digest and size at the destination, and what happened to the blobs."""

    reference: Reference
    digest: Digest
    size: int
    uploaded: int
    mounted: int
    existed: int


def _run_parallel(tasks: list[Callable[[threading.Event], None]], jobs: int) -> None:
    """Run tasks on ``jobs`` threads; the first failure cancels the rest and is raised (after all stopped).
    A single task runs on the calling thread. The threads are plain ones taking tasks in order: a pool of
    :mod:`concurrent.futures` would add ~1.5 ms of imports to every pull and push."""
    cancel = threading.Event()
    errors: list[BaseException] = []
    if not tasks:
        return
    if len(tasks) == 1:
        try:
            tasks[0](cancel)
        except _Cancelled:
            pass
        return
    pending = iter(tasks)
    lock = threading.Lock()

    def worker() -> None:
        while not cancel.is_set():
            with lock:
                task = next(pending, None)
            if task is None:
                return
            try:
                task(cancel)
            except _Cancelled:
                pass
            except BaseException as e:  # noqa: BLE001 - collected and re-raised below
                errors.append(e)
                cancel.set()

    threads = [threading.Thread(target=worker, name=f"xfer_{i}") for i in range(min(max(1, jobs), len(tasks)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # interrupted: the running tasks stop at their next piece of data
        cancel.set()
        for t in threads:
            t.join()
        raise
    if errors:
        first = next((e for e in errors if isinstance(e, UnionfsError)), errors[0])
        raise first


# --- pull ---------------------------------------------------------------------------------------
def fetch_manifest(client: RegistryClient, ref: Reference, platform: Platform | None = None
                   ) -> tuple[Manifest, FetchedManifest | None]:
    """The image manifest ``ref`` names (through an index for ``platform``), and the index as fetched (raw
    bytes verified against its digest by the client) if there was one."""
    fetched = client.get_manifest(ref.repository, str(ref.digest) if ref.digest else str(ref.tag))
    index_fetched = None
    if is_index(fetched.media_type, fetched.raw):
        index = Index.parse(fetched.raw, fetched.media_type)
        chosen = index.select(platform or Platform.host())
        log.debug("index %s: platform %s is %s", fetched.digest, platform or Platform.host(), chosen.digest)
        index_fetched = fetched
        fetched = client.get_manifest(ref.repository, str(chosen.digest))
        if is_index(fetched.media_type, fetched.raw):
            raise RegistryError(f"{ref}: an index entry for {platform or Platform.host()} is another index")
    return Manifest.parse(fetched.raw, fetched.media_type), index_fetched


def index_entries(ref: Reference, index: FetchedManifest | None
                  ) -> tuple[list[Reference], tuple[Reference, bytes] | None]:
    """What a pull of ``ref`` records in the store's index (``Store.store_image``'s ``tags`` and ``index``):
    the tag when ``ref`` has one and no digest; the index it came through (``fetch_manifest``'s), as its
    digest reference and raw bytes, when there was one."""
    tags = [ref] if ref.tag and not ref.digest else []
    kept = (Reference(ref.registry, ref.repository, None, index.digest), index.raw) if index else None
    return tags, kept


def _start(cancel: threading.Event, progress: Progress, desc: Descriptor) -> tuple[str, Callable[[int], None]]:
    """Begin one blob transfer in a worker: raise _Cancelled when the run was cancelled; returns the blob's
    progress key and a byte callback that reports progress and stops the transfer on cancellation."""
    if cancel.is_set():
        raise _Cancelled()
    key = desc.digest.short

    def on_bytes(n: int) -> None:
        if cancel.is_set():
            raise _Cancelled()
        progress.advance(key, n)
    return key, on_bytes


def fetch_partial(client: RegistryClient, repository: str, desc: Descriptor, path: str | os.PathLike[str],
                  commit: Callable[[HashingReader | None], object], *, on_bytes: Callable[[int], None] | None = None,
                  follow_foreign_urls: bool = False) -> None:
    """Download the blob ``desc`` of ``repository`` into the partial file at ``path``, resuming from what an
    earlier run left there (see "Resume across runs"), then ``commit(hashed)`` it: verify it and put it in place
    (``hashed``: the hash of the whole file; None when the file held every byte already: hash it from disk).
    ``on_bytes`` is told of the bytes held already and of each piece that arrives. Raises DigestError when the
    blob's content is wrong (the partial file is gone then), RegistryError when the transfer fails (it is
    kept). The caller keeps other writers of ``path`` away (the store's lock, a blob's flock)."""
    have = kept_length(path, desc.size, desc.digest)
    while True:
        kept = have > 0  # bytes from an earlier run are in play (not when the registry sends it all again)
        hashed = None
        try:
            if have == 0 or have != desc.size:
                with client.open_blob(repository, desc.digest, desc.size, verify=False, urls=desc.urls,
                                      follow_urls=follow_foreign_urls, on_bytes=on_bytes, start=have) as reader:
                    kept = reader.start > 0
                    if kept:
                        log.info("blob %s: resuming at byte %d of %d", desc.digest.short, reader.start, desc.size)
                        if on_bytes:
                            on_bytes(reader.start)
                    hashed = append_hashed(path, reader.start, cast(IO[bytes], reader), desc.digest.algorithm)
            commit(hashed)
            return
        except DigestError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if not kept:
                raise
            log.warning("blob %s: the partial download kept from an earlier run did not verify (%s): discarded, "
                        "fetching the blob again from the start", desc.digest.short, e)
            have = 0


def download_blob(store: Store, client: RegistryClient, repository: str, desc: Descriptor, *,
                  on_bytes: Callable[[int], None], follow_foreign_urls: bool = False) -> None:
    """Download the blob ``desc`` of ``repository`` into ``store`` through its partial file (``fetch_partial``,
    then ``Store.commit_partial``). Needs the store lock."""
    fetch_partial(client, repository, desc, store.partial_path(desc.digest),
                  lambda hashed: store.commit_partial(desc.digest, desc.size, hashed), on_bytes=on_bytes,
                  follow_foreign_urls=follow_foreign_urls)


def pull(store: Store, ref: Reference, client: RegistryClient, *, platform: Platform | None = None,
         jobs: int = DEFAULT_JOBS, progress: Progress | None = None, follow_foreign_urls: bool = False,
         unpack: bool = True) -> PullResult:
    """Pull ``ref`` into ``store`` (see the module docstring); ``unpack=False`` leaves the layers to be
    extracted on first use. Raises RegistryError, DigestError, ManifestError/PlatformError, LayerError; the
    store is unchanged then."""
    progress = progress or NoProgress()
    progress.line(f"{ref.tag or ref.digest}: Pulling from {ref.familiar_name}")
    manifest, index = fetch_manifest(client, ref, platform)
    with store.lock():
        store.expire_partials()
        config: list[bytes] = []

        def fetch_config(cancel: threading.Event) -> None:  # alongside the layers: one round trip less first
            if cancel.is_set():
                raise _Cancelled()
            config.append(client.fetch_blob(ref.repository, manifest.config.digest, manifest.config.size,
                                            limit=MAX_CONFIG_BYTES))

        wanted: dict[Digest, Descriptor] = {}
        for d in manifest.layers:
            wanted.setdefault(d.digest, d)
        missing = [d for d in wanted.values() if not store.has_blob(d.digest)]
        for d in wanted.values():
            if d not in missing:
                progress.end(d.digest.short, "Already exists")

        def task(desc: Descriptor) -> Callable[[threading.Event], None]:
            def run(cancel: threading.Event) -> None:
                key, on_bytes = _start(cancel, progress, desc)

                progress.begin(key, desc.size, "Downloading")
                download_blob(store, client, ref.repository, desc, on_bytes=on_bytes,
                              follow_foreign_urls=follow_foreign_urls)
                progress.end(key, "Download complete")
            return run

        try:
            _run_parallel([fetch_config] + [task(d) for d in missing], jobs)
        except DigestError:  # wrong content: what the other downloads kept goes too (the store is as before)
            for d in missing:
                store.discard_partial(d.digest)
            raise
        tags, kept = index_entries(ref, index)
        if missing and unpack:
            progress.line("Extracting layers")
        image = store.store_image(manifest, config[0], tags, kept, unpack=unpack)
    for d in missing:
        progress.end(d.digest.short, "Pull complete")
    return PullResult(ref, index.digest if index else manifest.digest, image, len(missing), len(wanted) - len(missing))


# --- push ---------------------------------------------------------------------------------------
def mount_sources(store: Store, dest: Reference) -> dict[Digest, list[str]]:
    """For each blob the store's images hold, the repositories on ``dest``'s registry that hold it too
    (other than ``dest``'s own), as known from the store's tags. Reads the manifests of those images only: a
    push does not open every image of the store."""
    out: dict[Digest, list[str]] = {}
    for desc, tags in store.tagged():
        repos = sorted({t.repository for t in tags if t.registry == dest.registry and t.repository != dest.repository})
        if not repos:
            continue
        try:
            manifest = store.load_manifest(desc)[1]
        except UnionfsError as e:  # an unreadable image offers nothing to mount; the push goes on
            log.debug("no mounts from %s: %s", desc.digest, e)
            continue
        for d in (manifest.config, *manifest.layers):
            have = out.setdefault(d.digest, [])
            have.extend(r for r in repos if r not in have)
    return out


def _is_foreign(desc: Descriptor) -> bool:
    return desc.media_type == DOCKER_FOREIGN_LAYER or desc.media_type.startswith(OCI_LAYER_ND)


def push(store: Store, source: str, dest: Reference, client: RegistryClient, *, jobs: int = DEFAULT_JOBS,
         progress: Progress | None = None, chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD,
         chunk_size: int = DEFAULT_CHUNK_SIZE) -> PushResult:
    """Push the stored image ``source`` (reference or id) to ``dest`` (see the module docstring)."""
    progress = progress or NoProgress()
    image = store.resolve(source)
    store.check_whole(image)  # a partial image (a lazy mount's): refused before anything is sent
    progress.line(f"The push refers to repository [{dest.name}]")
    blobs: dict[Digest, Descriptor] = {}
    for d in (image.manifest.config, *image.manifest.layers):
        if _is_foreign(d) and d.urls and not store.has_blob(d.digest):
            progress.end(d.digest.short, "Skipped foreign layer")
            continue
        blobs.setdefault(d.digest, d)
    lacking = [d for d in blobs.values() if not store.has_blob(d.digest)]
    if lacking:  # fail before sending anything
        raise BlobNotFoundError(f"cannot push {source}: blob {lacking[0].digest} is not in the store")
    sources = mount_sources(store, dest)
    counts = {"uploaded": 0, "mounted": 0, "exists": 0}
    lock = threading.Lock()

    def task(desc: Descriptor) -> Callable[[threading.Event], None]:
        def run(cancel: threading.Event) -> None:
            key, on_bytes = _start(cancel, progress, desc)

            candidates = sources.get(desc.digest, [])[:3]
            how = client.push_blob(dest.repository, desc.digest, desc.size, lambda: store.open_blob(desc.digest),
                                   mount_from=candidates, chunk_threshold=chunk_threshold, chunk_size=chunk_size,
                                   on_bytes=on_bytes, on_upload=lambda: progress.begin(key, desc.size, "Pushing"))
            with lock:
                counts[how] += 1
            progress.end(key, {"uploaded": "Pushed", "exists": "Layer already exists",
                               "mounted": f"Mounted from {candidates[0] if candidates else '?'}"}[how])
        return run

    _run_parallel([task(d) for d in blobs.values()], jobs)
    raw, media_type = image.manifest.raw, image.manifest.media_type
    target = dest.tag if dest.tag and not dest.digest else str(dest.digest or image.manifest_desc.digest)
    if dest.digest and dest.digest != image.manifest.digest:
        raise RegistryError(f"cannot push {source} as {dest}: its manifest digest is {image.manifest.digest}")
    digest = client.put_manifest(dest.repository, target, raw, media_type)
    return PushResult(dest, digest, len(raw), counts["uploaded"], counts["mounted"], counts["exists"])


def images_of_repository(store: Store, name: Reference) -> list[Reference]:
    """Every tag in the store of the repository ``name`` (``push --all-tags``)."""
    seen: list[Reference] = []
    for img in store.images():
        seen.extend(t for t in img.tags if t.name == name.name and t not in seen)
    return sorted(seen, key=lambda r: r.tag or "")


def obtain(store: Store, ref: str, platform: Platform | None = None, *,
           announce: Callable[[Reference], None] | None = None) -> Image:
    """The image ``ref`` (a reference or an image id) from ``store``, pulled when the store does not have it
    or has it only partly (``Store.missing_layers``: a lazy mount's image), as ``pull`` does: from the mirrors
    and the location registries.conf and docker's daemon.json give it (:func:`unionfs.registry.mirrors.client_for`),
    with each endpoint's credentials of the docker config; ``announce`` is told before a pull. A partial image
    is pulled by its manifest digest (under the name ``ref`` gives, else one of its own), so that the pull
    completes that very image; one with no name at all is answered as it is (``ensure_layers`` then says what
    it lacks). ImageNotFoundError when ``ref`` is neither stored nor a valid reference; the pull's errors
    otherwise."""
    from unionfs.registry.mirrors import client_for

    try:
        image = store.resolve(ref, platform)
    except ImageNotFoundError:
        r = Reference.parse(ref)
    else:
        if not store.missing_layers(image):
            return image
        named = _named_by(image, ref)
        if named is None:
            return image
        r = Reference(named.registry, named.repository, None, image.manifest_desc.digest)
    if announce is not None:
        announce(r)
    with client_for(r) as client:
        return pull(store, r, client, platform=platform).image


def _named_by(image: Image, text: str) -> Reference | None:
    """A reference naming ``image`` whose repository a pull of it takes: ``text`` when it is one of the
    image's tags or digest references (or its manifest digest under a name), else the image's first tag or
    digest reference (``text`` is an id); None when the image has no name."""
    names = (*image.tags, *image.digests)
    try:
        asked = Reference.parse(text)
    except UnionfsError:
        asked = None
    if asked is not None and (asked in image.tags or asked.digest in (image.manifest_desc.digest,
                                                                         *(d.digest for d in image.digests))):
        return asked
    return names[0] if names else None
