"""The mount daemon's side of lazy layers: a placeholder made whole before its data is first opened.

:class:`Filler` is the :attr:`unionfs.union.overlay.Overlay.filler` of a union with lazy lowers
(``unionfs.mount.server`` installs it). Called with a lower regular file's host path, it reads the file's mark
(:mod:`unionfs.layer.placeholder`; none: the file is whole, nothing to do) and fills it in place:

1. each chunk is fetched by one range read through the registry client code (the docker config's credentials
   and registries.conf, as ``pull``), decompressed, and checked against its ``chunkDigest``; the whole file
   against the TOC's ``digest``;
2. the bytes are written into the placeholder, its mode, ``security.capability`` and times put back (a write
   drops them), and fsynced;
3. only then the mark goes.

A failure (a chunk that does not verify, a truncated or wrong answer, a registry that is down or too slow)
raises OSError EIO, which the open (or copy-up) that asked fails with; it is logged once per file until the
file is filled, and the mark stays: the next open tries again. A daemon killed at any point leaves the mark
on a file whose data is not known whole and fsynced: nothing half-written is ever trusted. The TOC is read
from the layer's ``toc.json`` and checked against its recorded digest (:func:`unionfs.lazy.layout.read_layer`)
when the first file of the layer is filled, or before, by :meth:`Filler.warm` (the mount daemon runs it in the
background once its mount is live, so that the first fill finds its layer loaded).

Where the daemon gives a ``resume`` callback (``unionfs.mount.server``), fills run in worker threads
(at most :data:`WORKERS` at once, one per file however many requests want it): the hook raises
:class:`~unionfs.errors.FillPending` with the file's :class:`FillJob`, the daemon sets the request aside on it
and answers others meanwhile, and once the fill ends ``resume`` gets the waiting requests back, to run again
(the file is whole now) or to answer with EIO. Without it (a direct caller) a fill runs in the calling thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from typing import Any, Callable, Iterable, Iterator

from unionfs.errors import FillPending, LazyLayerError, UnionfsError
from unionfs.layer import placeholder
from unionfs.lazy import layout
from unionfs.lazy.fetch import Chunk, LocalBlob, RangeSource, check_file, checked_toc, plan_chunks, read_chunk
from unionfs.lazy.materialize import CAPABILITY, read_capability
from unionfs.oci.digest import Digest
from unionfs.oci.reference import Reference

log = logging.getLogger(__name__)

#: how a lazy read retries: few and short tries (the mount waits meanwhile); the next open tries again
LAZY_ATTEMPTS = 2
#: seconds a range read may take at most, retries included (``UNIONFS_HTTP_TIMEOUT`` lowers it)
LAZY_TIMEOUT = 30.0
#: fills that run at once in the background mode (each fetches its file's chunks, one after the other)
WORKERS = 4


class _Layer:
    """One lazy layer as the daemon knows it: its source, its TOC's entries and chunks, and its client (made
    at the first fill)."""

    def __init__(self, tree: str, diff_hex: str) -> None:
        self.tree = tree
        self.hex = diff_hex
        self.dir = os.path.dirname(tree)
        self.loaded = False
        self.entries: list[dict[str, Any]] = []
        self.chunks: dict[int, list[Chunk]] = {}
        self.client: Any = None
        self.repository = ""
        self.digest: Digest | None = None

    def load(self) -> None:
        """Read the source and the TOC (checked against its digest) and make the client."""
        if self.loaded:
            return
        source, raw = layout.read_layer(self.dir)
        if os.path.basename(self.dir) != self.hex or Digest.parse(source.diff_id).hex != self.hex:
            raise LazyLayerError(f"lazy layer {self.dir}: its records are another layer's ({source.diff_id})")
        toc = checked_toc(raw, source.toc_offset)
        self.chunks = plan_chunks(toc)
        self.entries = toc.entries
        self.digest = Digest.parse(source.digest)
        ref = Reference.parse(source.ref)
        self.repository = ref.repository
        self.client = _client(ref, source.insecure)
        self.loaded = True


def _client(ref: Reference, insecure: bool) -> Any:
    """A registry client for lazy reads of ``ref``'s repository (the pull's code: mirrors, credentials)."""
    from unionfs.registry.mirrors import client_for
    from unionfs.registry.transport import Deadlines, RetryPolicy

    base = Deadlines.from_env()
    deadlines = Deadlines(min(base.request, LAZY_TIMEOUT), base.speed_limit, min(base.speed_time, LAZY_TIMEOUT))
    return client_for(ref, insecure=insecure, retry=RetryPolicy(attempts=LAZY_ATTEMPTS, backoff=0.2, max_backoff=1.0),
                      deadlines=deadlines)


class FillJob:
    """A placeholder being filled by a worker thread, and the requests waiting for it (opaque to this module:
    the daemon's raw FUSE requests)."""

    __slots__ = ("_lock", "_waiting", "_ended")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[bytes] = []
        self._ended = False

    def wait(self, request: bytes) -> bool:
        """Set ``request`` aside until the fill ends (then it goes to the filler's ``resume``); False when the
        fill has ended already: run it again now."""
        with self._lock:
            if self._ended:
                return False
            self._waiting.append(request)
            return True

    def end(self) -> list[bytes]:
        """Mark the fill ended; the requests that waited for it."""
        with self._lock:
            self._ended = True
            waiting, self._waiting = self._waiting, []
            return waiting


class Filler:
    """Fills the placeholders of the lazy layers ``layers`` ((tree path, DiffID hex) pairs); see the module
    docstring. ``resume(requests, ok)``: the background mode, called from a worker thread with the requests
    that waited for a fill and whether it succeeded. Thread-safe."""

    def __init__(self, layers: list[tuple[str, str]],
                 resume: Callable[[list[bytes], bool], None] | None = None) -> None:
        self.layers = {h: _Layer(tree, h) for tree, h in layers}
        self.resume = resume
        self._lock = threading.Lock()  # a layer's loading
        self._logged: set[tuple[str, int]] = set()
        self._jobs: dict[tuple[str, int], FillJob] = {}
        self._jobs_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(WORKERS)

    def warm(self) -> None:
        """Load each layer ahead of its first fill (its source and TOC read and checked, its chunks planned, its
        client made: no network), one at a time under the loading lock. A failure is only logged: the first fill
        of that layer loads it again, and reports."""
        for diff_hex, layer in self.layers.items():
            with self._lock:
                try:
                    layer.load()
                except (UnionfsError, OSError, ValueError) as e:
                    log.debug("lazy layer %s: not loaded ahead: %s", diff_hex[:12], e)

    def warm_in_background(self) -> threading.Thread:
        """Run :meth:`warm` in a daemon thread (started; returned)."""
        thread = threading.Thread(target=self.warm, name="unionfs-lazy-warm", daemon=True)
        thread.start()
        return thread

    def __call__(self, path: str) -> None:
        """Make the file at the host path ``path`` whole if it is a placeholder; OSError EIO when that fails. In
        the background mode, a placeholder's fill is started (or joined) in a worker thread instead, and
        FillPending raised with its job."""
        try:
            mark = placeholder.placeholder_of(path)
        except ValueError as e:
            log.error("%s: %s", path, e)
            raise OSError(errno.EIO, "malformed lazy mark") from None
        if mark is None:
            return
        if self.resume is None:
            self._fill(path, *mark)
            return
        with self._jobs_lock:
            job = self._jobs.get(mark)
            if job is None:
                job = self._jobs[mark] = FillJob()
                threading.Thread(target=self._work, args=(job, path, mark), name="unionfs-lazy-fill",
                                 daemon=True).start()
        raise FillPending(job)

    def _work(self, job: FillJob, path: str, mark: tuple[str, int]) -> None:
        """A worker: fill, then hand the waiting requests back (a new request for the file starts anew)."""
        ok = False
        try:
            with self._slots:
                self._fill(path, *mark)
            ok = True
        except OSError:
            pass  # logged by _fill
        finally:
            with self._jobs_lock:
                del self._jobs[mark]
            assert self.resume is not None
            self.resume(job.end(), ok)

    def _fill(self, path: str, diff_hex: str, index: int) -> None:
        layer = self.layers.get(diff_hex)
        name = "?"
        try:
            if layer is None:
                raise LazyLayerError(f"a placeholder of layer {diff_hex[:12]}, which this mount does not hold")
            with self._lock:
                layer.load()
            if not 0 <= index < len(layer.entries) or index not in layer.chunks:
                raise LazyLayerError(f"a placeholder naming TOC entry {index}, which holds no file data")
            ent = layer.entries[index]
            name = str(ent.get("name"))
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:  # not a placeholder any more: filled meanwhile (by another mount's daemon)
                fill_open(fd, (diff_hex, index), ent, lambda: _pieces(layer, layer.chunks[index]))
            finally:
                os.close(fd)
        except (UnionfsError, OSError, ValueError) as e:
            key = (diff_hex, index)
            if key not in self._logged:
                self._logged.add(key)
                log.error("lazy layer %s: %s: %s (the read gets EIO; the next one tries again)", diff_hex[:12],
                          name, e)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from None
        self._logged.discard((diff_hex, index))
        log.debug("lazy layer %s: %s filled", diff_hex[:12], name)


def _pieces(layer: _Layer, chunks: list[Chunk]) -> Iterator[tuple[int, bytes]]:
    """The file's chunks, each fetched (from the blob downloaded whole when it is there, else by a range read)
    and verified as it comes: the ``pieces`` of :func:`write_placeholder`."""
    assert layer.digest is not None
    local = layout.blob_file(os.path.dirname(os.path.dirname(layer.dir)), layer.digest)
    source: RangeSource = LocalBlob(local) if os.path.exists(local) else layer.client
    digest = layer.digest
    return ((c.file_offset, read_chunk(source, layer.repository, digest, c)) for c in chunks)


def fill_open(fd: int, expect: tuple[str, int], ent: dict[str, Any],
              pieces: Callable[[], Iterable[tuple[int, bytes]]]) -> bool:
    """Fill the regular file open at ``fd`` (any descriptor, ``O_PATH`` too: it is opened again for writing
    through ``/proc/self/fd``) with ``pieces()`` (:func:`write_placeholder`) if it is still the placeholder
    ``expect`` ((layer DiffID hex, TOC entry index), its mark this process'
    :func:`~unionfs.layer.placeholder.mark_name`); False when it is not (nothing written)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise LazyLayerError("the placeholder is not a regular file")
    wfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        if placeholder.placeholder_of(wfd) != expect:
            return False
        write_placeholder(wfd, ent, pieces())
        return True
    finally:
        os.close(wfd)


def write_placeholder(fd: int, ent: dict[str, Any], pieces: Iterable[tuple[int, bytes]]) -> None:
    """Write ``pieces`` ((file offset, verified chunk bytes), in file order, covering the file) into the
    placeholder of TOC entry ``ent`` open at ``fd``, check the whole file against the entry's ``digest``, put
    back what the write drops (mode, ``security.capability``, times), fsync, and only then drop the mark.
    LazyLayerError when the placeholder is not the entry's size or the file does not match."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != ent.get("size"):
        raise LazyLayerError(f"the placeholder is not a regular file of {ent.get('size')} bytes")
    cap = read_capability(fd)
    whole = Digest.parse(ent["digest"]).hasher() if "digest" in ent else None
    for at, data in pieces:
        if whole is not None:
            whole.update(data)
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, at)
            view, at = view[n:], at + n
    if whole is not None:
        check_file(ent, f"{Digest.parse(ent['digest']).algorithm}:{whole.hexdigest()}")
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    if cap is not None:
        os.setxattr(fd, CAPABILITY, cap)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.fsync(fd)
    placeholder.unmark(fd)
