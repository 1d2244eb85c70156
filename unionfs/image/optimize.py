"""``convert --optimize``: the files an image's command opens, in the order it first opens them, and the layer
that holds each: what an eStargz conversion puts first, before the prefetch landmark (as ``ctr-remote image
optimize`` and ``nerdctl image convert --estargz-record-in`` do), so that a lazy pull fetches them first.

:func:`unionfs.api.record_opens` runs the command once in a throw-away container of the image, isolated as
``run`` runs it (no network), on a mount whose daemon writes down every file opened (``-o record=FILE``:
:meth:`unionfs.mount.server.LowLevelFS._recording_open`), for at most a given time (a server is killed then),
and reads the record with :func:`read_record`. :func:`by_layer` splits such a list of union paths by the layer
each one is read from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from unionfs.union.view import Union

#: seconds the command runs at most (``ctr-remote image optimize``'s default period)
DEFAULT_TIMEOUT = 10.0


def read_record(path: Path) -> list[str]:
    """The paths a record file holds (a JSON string per line), each once, in order; a line that is not one
    (the daemon cannot write half a line, but a killed one may leave a last line cut) is skipped."""
    out: dict[str, None] = {}
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            p = json.loads(line)
        except ValueError:
            continue
        if isinstance(p, str):
            out.setdefault(p)
    return list(out)


def by_layer(layers: Sequence[str | os.PathLike[str]], paths: Sequence[str]) -> list[list[str]]:
    """Split ``paths`` (union paths, in order) by the layer of ``layers`` (extracted layer directories, base
    first) each is read from in their union: one list per layer, base first, each in the order of ``paths``.
    Directories and paths the union does not hold are left out."""
    union = Union([os.fspath(p) for p in layers])
    out: list[list[str]] = [[] for _ in layers]
    try:
        for p in paths:
            node = union.try_lookup("/" + p.strip("/"))
            if node is not None and not node.is_dir:
                out[len(layers) - 1 - node.layer].append(node.path)
    finally:
        union.close()
    return out


__all__ = ["DEFAULT_TIMEOUT", "by_layer", "read_record"]
