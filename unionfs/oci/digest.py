"""Content digests (``algorithm:hex``) and a reader that hashes and counts as it reads.

Digests are always computed over raw bytes; nothing here re-serializes anything.
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO, NamedTuple

from unionfs.errors import DigestError, shown

_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-f0-9]+)", re.ASCII)  # used with fullmatch


class Digest(NamedTuple):
    """A validated ``algorithm:hex`` digest; ``str()`` gives it back unchanged."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Parse ``sha256:<64 hex>`` (or sha512); raise DigestError otherwise (a non-string included)."""
        m = _DIGEST_RE.fullmatch(text) if isinstance(text, str) else None
        if not m:
            raise DigestError(f"invalid digest {shown(text)}")
        algo, hexpart = m.group(1), m.group(2)
        if algo not in _ALGORITHMS:
            raise DigestError(f"unsupported digest algorithm {shown(algo)} in {shown(text)}")
        if len(hexpart) != _ALGORITHMS[algo]:
            raise DigestError(f"invalid digest {shown(text)}: wrong length for {algo}")
        return cls(algo, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> "hashlib._Hash":
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        """The first 12 hex digits, as docker shows image ids."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class HashingReader:
    """Wraps a binary stream; hashes and counts every byte read through it.

    ``verify(expected, size)`` raises DigestError when what was read does not
    match. Callers must read the stream to its end before verifying.
    """

    def __init__(self, stream: BinaryIO, algorithm: str = "sha256", limit: int | None = None) -> None:
        self._stream = stream
        self._hash = hashlib.new(algorithm)
        self.algorithm = algorithm
        self.count = 0
        self._limit = limit

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        if data:
            self._hash.update(data)
            self.count += len(data)
            self._check_limit()
        return data

    def _check_limit(self) -> None:
        """Raise when what was read is over the bound (subclasses bound something else)."""
        if self._limit is not None and self.count > self._limit:
            raise DigestError(f"content longer than the expected {self._limit} bytes")

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def then(self, stream: BinaryIO) -> "HashingReader":
        """Go on reading (and hashing, and counting) from ``stream``: the digest covers what was read before
        and what is read from it. Returns this reader."""
        self._stream = stream
        return self

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read (and hash) whatever is left in the stream."""
        while self.read(chunk):
            pass

    def digest(self) -> Digest:
        """The digest of everything read so far."""
        return Digest(self.algorithm, self._hash.hexdigest())

    def verify(self, expected: Digest | str, size: int | None = None, what: str = "content") -> Digest:
        """Raise DigestError unless the bytes read match ``expected`` (and ``size``)."""
        exp = expected if isinstance(expected, Digest) else Digest.parse(expected)
        if size is not None and size >= 0 and self.count != size:
            raise DigestError(f"{what} {exp}: size {self.count} does not match the expected {size}")
        got = self.digest()
        if got != exp:
            raise DigestError(f"{what}: digest mismatch, expected {exp}, got {got}")
        return got
