"""The first files of a lazy layer fetched while its tree is made (``mount --lazy`` and ``run --lazy`` with their
prefetch): the network works while the disk does, and the command's first reads find their files whole.

:class:`EarlyFetch` starts a thread once the layer's TOC is checked: the files before the prefetch landmark, in
TOC order, each chunk fetched by range and checked against its ``chunkDigest``
(:func:`unionfs.lazy.fetch.read_chunk`), held in memory up to :data:`EARLY_BUDGET` bytes (the files past it are
left to the daemon). The preparing command does not touch the client meanwhile. Once the tree is made, in its
stage (not in place yet), :meth:`EarlyFetch.fill` waits for the thread and writes each fetched file into its
placeholder as the daemon would (:func:`unionfs.lazy.fill.write_placeholder`: the whole file checked against its
``digest``, fsynced, the mark dropped last). A file is opened below the tree one component at a time without
following a symlink, and written only when it is still the placeholder of that very TOC entry of that layer.
Any failure (a fetch, a check, a write) leaves its file a placeholder, which the daemon fills when it is read:
logged, never raised. A command killed meanwhile leaves a stage, which the next preparation removes.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from unionfs.errors import UnionfsError, shown
from unionfs.fsops import DIR_NOFOLLOW, open_file_beneath
from unionfs.layer.estargz import PREFETCH_LANDMARK, clean_name
from unionfs.lazy.fetch import Chunk, Toc, read_chunk
from unionfs.lazy.fill import fill_open
from unionfs.oci.digest import Digest

log = logging.getLogger(__name__)

#: the most bytes (uncompressed) of a layer's first files held in memory until its tree is made
EARLY_BUDGET = 64 << 20


def first_files(toc: Toc, chunks: dict[int, list[Chunk]]) -> list[int]:
    """The TOC indices of the files with data before the prefetch landmark, in order (none without one)."""
    if not toc.prefetch:
        return []
    out = []
    for i, ent in enumerate(toc.entries):
        if ent["type"] == "chunk":
            continue
        if clean_name(ent["name"]) == PREFETCH_LANDMARK:
            break
        if i in chunks:
            out.append(i)
    return out


class EarlyFetch:
    """The first files of one layer (blob ``digest`` of ``repository``, read through ``client``), fetched in a
    thread started at once (see the module docstring)."""

    def __init__(self, client: Any, repository: str, digest: Digest, toc: Toc, chunks: dict[int, list[Chunk]]
                 ) -> None:
        self.toc = toc
        self.fetched: dict[int, list[tuple[int, bytes]]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(client, repository, digest, chunks),
                                        name="unionfs-lazy-early", daemon=True)
        self._thread.start()

    def _run(self, client: Any, repository: str, digest: Digest, chunks: dict[int, list[Chunk]]) -> None:
        total = 0
        try:
            for i in first_files(self.toc, chunks):
                total += sum(c.length for c in chunks[i])
                if total > EARLY_BUDGET or self._stop:
                    return
                self.fetched[i] = [(c.file_offset, read_chunk(client, repository, digest, c)) for c in chunks[i]]
        except (UnionfsError, OSError, ValueError) as e:
            log.info("layer %s: the first files were not all fetched early: %s", digest.short, e)

    def cancel(self) -> None:
        """Stop after the file being fetched and wait for the thread (the client is the caller's again)."""
        self._stop = True
        self._thread.join()

    def fill(self, tree: str, layer: str) -> int:
        """Wait for the thread, then write each fetched file into its placeholder in ``tree`` (the tree of lazy
        layer ``layer``, DiffID hex); the number written."""
        self._thread.join()
        done = 0
        root = os.open(tree, DIR_NOFOLLOW)
        try:
            for i, pieces in self.fetched.items():
                ent = self.toc.entries[i]
                try:
                    fd = open_file_beneath(root, clean_name(ent["name"]), os.O_PATH)
                    try:
                        done += fill_open(fd, (layer, i), ent, lambda: pieces)
                    finally:
                        os.close(fd)
                except (UnionfsError, OSError, ValueError) as e:
                    log.info("TOC entry %s: not filled early: %s", shown(ent["name"]), e)
        finally:
            os.close(root)
        self.fetched.clear()
        return done
