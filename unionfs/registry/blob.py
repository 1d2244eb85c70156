"""The download of one blob: ``BlobReader``, a file-like reader that hashes what it returns and resumes a
broken transfer. ``RegistryClient.open_blob`` (client.py) makes one.

Contracts:

* **Resuming.** A blob download broken in the middle resumes with ``Range: bytes=N-`` (a registry that
  ignores the range is read again from the start, the first N bytes discarded), up to the retry policy's
  attempts. Its body is held to the minimum progress of ``Deadlines`` (transport.py); a transfer too slow is
  not resumed.
* **Verification.** A blob reader hashes while it streams and raises ``DigestError`` at the end instead of a
  clean EOF when the content is wrong (``verify=False`` leaves that to a caller who hashes anyway).
* **Starting in the middle.** ``start=N`` (a caller holding the first N bytes from an earlier run, with
  ``verify=False``: only the caller can hash from byte 0) asks for ``Range: bytes=N-``. After construction
  ``reader.start`` says where the body that ``read`` returns begins: N when the registry answered 206 with
  that range, 0 when it ignored the range (200) or refused it (416, asked again without a range): then the
  caller starts over. A 206 for another range is a RegistryError.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from unionfs.errors import DigestError, RegistryConnectionError, RegistryError
from unionfs.oci.digest import Digest
from unionfs.registry.curl import Response, TimeoutException, TransportError
from unionfs.registry.transport import READ_CHUNK, Deadlines, RetryPolicy, describe, repository_scope

log = logging.getLogger(__name__)


class BlobSource(Protocol):
    """What a ``BlobReader`` needs of its client (a ``RegistryClient``, which this module does not import)."""

    deadlines: Deadlines
    retry: RetryPolicy

    def request(self, method: str, path: str, *, scopes: Iterable[str] = (), what: str,
                headers: dict[str, str] | None = None, ok: Sequence[int] = (200,), stream: bool = False,
                credentials: bool = True) -> Response: ...


class BlobReader:
    """A file-like reader of one blob: hashes what it returns, resumes broken transfers with Range.

    ``read(n)`` returns at most ``n`` bytes, ``b""`` only at the verified end. Close it (or use ``with``).
    """

    def __init__(self, client: BlobSource, repository: str, digest: Digest, size: int | None, *,
                 verify: bool = True, urls: Sequence[str] = (), on_bytes: Callable[[int], None] | None = None,
                 start: int = 0) -> None:
        if start < 0 or (start and verify):
            raise ValueError("a blob reader starting at byte N > 0 needs verify=False (the caller hashes)")
        self._client = client
        self._repo = repository
        self.digest = digest
        self.size = size if size is not None and size >= 0 else None
        self._verify = verify
        self._urls = list(urls)
        self._on_bytes = on_bytes
        self._hash = digest.hasher() if verify else None
        self.offset = start
        self.start = start
        self.resumes = 0
        self._buf = b""
        self._resp: Response | None = None
        self._iter: Iterator[bytes] | None = None
        self._range_ok = False
        self._done = False
        self._window_start = 0.0
        self._window_bytes = 0
        self._open(first=True)

    # the first request, and each resume
    def _open(self, first: bool = False) -> None:
        headers = {}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
        what = f"blob {self.digest}"
        ok = (200, 206, 416) if first and self.offset else (200, 206)
        resp = None
        for url in list(self._urls):
            try:
                resp = self._client.request("GET", url, what=what, headers=headers, ok=ok, stream=True,
                                            credentials=False)
                break
            except RegistryError as e:
                log.warning("foreign URL %s for %s failed (%s); trying the registry", url, self.digest.short, e)
                self._urls.remove(url)
        if resp is None:
            resp = self._client.request("GET", f"/v2/{self._repo}/blobs/{self.digest}", what=what, headers=headers,
                                        scopes=[repository_scope(self._repo, "pull")], ok=ok, stream=True)
        skip = 0
        if self.offset and resp.status_code == 416:  # only asked for on the first request (``ok``)
            resp.close()
            log.warning("blob %s: the registry refused the range from byte %d (HTTP 416); downloading it from "
                        "the start", self.digest.short, self.offset)
            self.offset = self.start = 0
            self._open(first=True)
            return
        if self.offset and resp.status_code != 206 and first:
            log.info("blob %s: the registry ignored the range from byte %d (HTTP %d); downloading it from the "
                     "start", self.digest.short, self.offset, resp.status_code)
            self.offset = self.start = 0
        if self.offset:
            if resp.status_code == 206:
                m = re.match(r"bytes (\d+)-\d*(?:/(\d+))?", resp.headers.get("content-range", ""))
                if not m or int(m.group(1)) != self.offset:
                    resp.close()
                    raise RegistryError(f"{what}: the registry answered a range request with the wrong range")
                if self.size is None and m.group(2):
                    self.size = int(m.group(2))
            else:
                skip = self.offset  # the range was ignored: read from the start, drop what we have
        else:
            self._range_ok = resp.headers.get("accept-ranges", "").lower() == "bytes"
            length = resp.headers.get("content-length")
            if self.size is None and length and length.isdigit():
                self.size = int(length)
        self._resp = resp
        self._iter = resp.iter_raw()  # pieces as they arrive: a broken transfer keeps what came
        self._window_start, self._window_bytes = time.monotonic(), 0
        while skip:
            chunk = self._next()
            if not chunk:
                raise RegistryError(f"{what}: the registry sent less than before")
            if len(chunk) > skip:
                self._buf = chunk[skip:]
                skip = 0
            else:
                skip -= len(chunk)

    def _next(self) -> bytes:
        """The next piece of the open response (b"" at its end), held to the minimum-progress rule: raises
        RegistryConnectionError (the transfer is not resumed) when too little arrived in a window."""
        assert self._iter is not None
        limits = self._client.deadlines
        try:
            chunk = next(self._iter, b"")
        except TimeoutException:
            self._close_response()
            raise RegistryConnectionError(
                f"blob {self.digest}: transfer too slow: the server stopped sending at byte {self.offset} "
                f"(UNIONFS_SPEED_LIMIT={limits.speed_limit:g} bytes/s, UNIONFS_SPEED_TIME={limits.speed_time:g})"
            ) from None
        self._window_bytes += len(chunk)
        elapsed = time.monotonic() - self._window_start
        if chunk and elapsed >= limits.speed_time:
            if self._window_bytes < limits.speed_limit * elapsed:
                self._close_response()
                raise RegistryConnectionError(
                    f"blob {self.digest}: transfer too slow: {self._window_bytes} bytes in {elapsed:.1f} s "
                    f"(UNIONFS_SPEED_LIMIT={limits.speed_limit:g} bytes/s, UNIONFS_SPEED_TIME={limits.speed_time:g})")
            self._window_start, self._window_bytes = time.monotonic(), 0
        return chunk

    def _fill(self) -> bytes:
        """The next piece of the body, resuming on a broken connection; b"" at the end."""
        while True:
            try:
                return self._next()
            except TransportError as e:
                self._close_response()
                if self.size is not None and self.offset >= self.size:
                    return b""
                self.resumes += 1
                if self.resumes >= self._client.retry.attempts:
                    raise RegistryConnectionError(f"blob {self.digest}: connection lost at byte {self.offset}: "
                                                  f"{describe(e)}") from None
                log.info("blob %s: connection lost at byte %d (%s); resuming", self.digest.short, self.offset,
                         describe(e))
                time.sleep(self._client.retry.delay(self.resumes - 1))
                self._open()
                if self._buf:
                    data, self._buf = self._buf, b""
                    return data

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n < 0``)."""
        if self._done:
            return b""
        if n is None or n < 0:
            parts = []
            while chunk := self.read(READ_CHUNK):
                parts.append(chunk)
            return b"".join(parts)
        if not self._buf:
            self._buf = self._fill()
            if not self._buf:
                self._finish()
                return b""
        data, self._buf = self._buf[:n], self._buf[n:]
        self.offset += len(data)
        if self.size is not None and self.offset > self.size:
            raise DigestError(f"blob {self.digest}: more than the expected {self.size} bytes")
        if self._hash is not None:
            self._hash.update(data)
        if self._on_bytes:
            self._on_bytes(len(data))
        return data

    def _finish(self) -> None:
        self._close_response()
        if self.size is not None and self.offset != self.size:
            raise DigestError(f"blob {self.digest}: got {self.offset} bytes, expected {self.size}")
        if self._hash is not None:
            got = Digest(self.digest.algorithm, self._hash.hexdigest())
            if got != self.digest:
                raise DigestError(f"blob {self.digest}: digest mismatch, got {got}")
        self._done = True

    def readable(self) -> bool:
        return True

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def close(self) -> None:
        """Drop the connection (an unfinished download is simply abandoned)."""
        self._close_response()
        self._done = True

    def __enter__(self) -> "BlobReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
