"""``build -`` and ``build -f -``: a build context or a Dockerfile read from stdin, as docker reads them.

``read_context(stream, dest, spool)`` copies ``stream`` to the file ``spool`` and looks at it: a tar archive
(plain, gzip, bzip2, xz or zstd: ``copier.is_archive``) is unpacked into the new directory ``dest`` with the
layer unpacker (no entry lands outside ``dest``; the size bound of layers applies) and None is returned;
anything else is a Dockerfile, returned as text, and ``dest`` is an empty context. ``read_dockerfile(stream)``
reads ``-f -``.
"""

from __future__ import annotations

import os
import shutil
from typing import BinaryIO

from unionfs.build.copier import is_archive, unpack_archive
from unionfs.errors import UsageError

#: the longest Dockerfile read from stdin (docker's own parser stops far below)
MAX_DOCKERFILE = 16 << 20


def read_dockerfile(stream: BinaryIO) -> str:
    """A Dockerfile from ``stream`` (UTF-8); UsageError when it is empty, not text or too long."""
    data = stream.read(MAX_DOCKERFILE + 1)
    return _dockerfile_text(data)


def _dockerfile_text(data: bytes) -> str:
    if len(data) > MAX_DOCKERFILE:
        raise UsageError(f"the Dockerfile from stdin is longer than {MAX_DOCKERFILE} bytes")
    if not data.strip():
        raise UsageError("the Dockerfile from stdin is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("stdin is neither a tar archive nor a UTF-8 Dockerfile") from None


def read_context(stream: BinaryIO, dest: str, spool: str) -> str | None:
    """See the module docstring. ``dest`` must not exist; ``spool`` is left for the caller to remove (both lie
    in the caller's staging directory). Raises UsageError and LayerError."""
    with open(spool, "wb") as f:
        shutil.copyfileobj(stream, f, 1 << 20)
    os.mkdir(dest, 0o755)
    if is_archive(spool):
        unpack_archive(spool, dest)
        return None
    if os.path.getsize(spool) > MAX_DOCKERFILE:
        raise UsageError("stdin is neither a tar archive nor a Dockerfile (too long)")
    with open(spool, "rb") as f:
        return _dockerfile_text(f.read())


__all__ = ["read_context", "read_dockerfile", "MAX_DOCKERFILE"]
