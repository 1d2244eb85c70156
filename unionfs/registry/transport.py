"""The HTTP level of the registry client: what ``RegistryClient`` (client.py), ``BlobReader`` (blob.py) and the
Docker Hub search (search.py) share on the wire. Credentials and the retry policy, the deadlines of slow
servers, ``WWW-Authenticate`` and ``Link`` parsing, hosts and origins, capped reading of bodies, and the mapping
of error answers to typed errors.

Contracts:

* **Slow servers** (``Deadlines``, from ``UNIONFS_HTTP_TIMEOUT``, ``UNIONFS_SPEED_LIMIT``,
  ``UNIONFS_SPEED_TIME``). Every request whose answer is small (``/v2/``, tokens, manifests, tag lists,
  catalog pages, upload answers, errors) ends within ``UNIONFS_HTTP_TIMEOUT`` seconds (default 60):
  connect, headers and body, retries and their waits included; a silent server fails within that time.
  A blob download's headers come under the same deadline; its body fails, and is not resumed, when fewer
  than ``UNIONFS_SPEED_LIMIT`` bytes per second (default 1024) arrived over a window of
  ``UNIONFS_SPEED_TIME`` seconds (default 30; curl's ``--speed-limit``/``--speed-time``), or nothing at
  all for that long. Uploads are bounded by the idle timeouts only (the registry reads at its pace).
* **Bodies other than blobs are capped**, read as they stream and never whole first: error bodies at
  ``MAX_ERROR_BODY`` (64 KiB, the rest is not read: the message is built from the prefix), token answers
  ``MAX_TOKEN_BYTES`` (1 MiB), manifests ``MAX_MANIFEST_BYTES`` (4 MiB), tag lists, catalog pages and search
  answers ``MAX_LIST_BYTES`` (8 MiB), anything else ``MAX_SMALL_BODY`` (1 MiB). The client asks for no
  content encoding; a gzip/deflate body is decoded within the same cap, any other encoding is refused.
* **Errors.** Registry JSON errors become one-line typed errors (``RegistryNotFoundError`` for
  ``MANIFEST_UNKNOWN``...), carrying ``code``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import zlib
from typing import IO, Callable, Iterable, Iterator, NamedTuple

from unionfs import __version__
from unionfs.errors import (
    RegistryAuthError,
    RegistryConnectionError,
    RegistryDeniedError,
    RegistryError,
    RegistryNotFoundError,
    RegistryRateLimitError,
    UsageError,
)
from unionfs.registry.curl import URL, Headers, Response, ResponseNotRead, Timeout, TransportError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
USER_AGENT = f"unionfs/{__version__}"
MAX_MANIFEST_BYTES = 4 << 20
MAX_ERROR_BODY = 64 << 10
MAX_TOKEN_BYTES = 1 << 20
MAX_LIST_BYTES = 8 << 20
MAX_SMALL_BODY = 1 << 20
DEFAULT_HTTP_TIMEOUT = 60.0
DEFAULT_SPEED_LIMIT = 1024.0
DEFAULT_SPEED_TIME = 30.0
_CONNECT_TIMEOUT = 15.0
READ_CHUNK = 1 << 20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CODE_ERRORS: dict[str, type[RegistryError]] = {
    "UNAUTHORIZED": RegistryAuthError,
    "DENIED": RegistryDeniedError,
    "MANIFEST_UNKNOWN": RegistryNotFoundError,
    "NAME_UNKNOWN": RegistryNotFoundError,
    "BLOB_UNKNOWN": RegistryNotFoundError,
    "BLOB_UPLOAD_UNKNOWN": RegistryNotFoundError,
    "MANIFEST_BLOB_UNKNOWN": RegistryNotFoundError,
    "TOOMANYREQUESTS": RegistryRateLimitError,
}
_STATUS_ERRORS: dict[int, tuple[type[RegistryError], str]] = {
    401: (RegistryAuthError, "authentication required"),
    403: (RegistryDeniedError, "access denied"),
    404: (RegistryNotFoundError, "not found"),
    429: (RegistryRateLimitError, "too many requests"),
}


# --- small values -------------------------------------------------------------------------------
class Credentials(NamedTuple):
    """A username and password (or an identity token, docker's OAuth refresh token)."""

    username: str
    password: str
    identity_token: str | None = None

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return f"Credentials(username={self.username!r}, password=***)"


class RetryPolicy(NamedTuple):
    """How often and how patiently to retry: ``attempts`` tries in all, the n-th wait ``backoff * 2**n``
    seconds (with jitter) capped at ``max_backoff``."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before try number ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_backoff)
        base = min(self.backoff * (2 ** attempt), self.max_backoff)
        import random  # here: only a retry waits (~1 ms of every registry command's start otherwise)

        return base * (0.75 + random.random() / 2)


class Deadlines(NamedTuple):
    """How long a slow or silent server may hold a request (see the module docstring).

    ``request``: seconds for a whole request with a small answer, retries included. ``speed_limit`` bytes per
    second over ``speed_time`` seconds: the least progress a blob download must make.
    """

    request: float = DEFAULT_HTTP_TIMEOUT
    speed_limit: float = DEFAULT_SPEED_LIMIT
    speed_time: float = DEFAULT_SPEED_TIME

    @classmethod
    def from_env(cls) -> "Deadlines":
        """The defaults, overridden by ``UNIONFS_HTTP_TIMEOUT``, ``UNIONFS_SPEED_LIMIT``, ``UNIONFS_SPEED_TIME``.

        Raises UsageError for a value that is not a positive number.
        """
        return cls(_env_seconds("UNIONFS_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT),
                   _env_seconds("UNIONFS_SPEED_LIMIT", DEFAULT_SPEED_LIMIT),
                   _env_seconds("UNIONFS_SPEED_TIME", DEFAULT_SPEED_TIME))

    def timeout(self, deadline: "Deadline | None", stream: bool = False) -> Timeout:
        """The timeouts of one attempt: within what is left of ``deadline``; a stream's waits (for a blob's
        headers and for every piece of its body) also within ``speed_time``. Without a deadline (uploads) the
        idle timeout only."""
        if deadline is None:
            idle = max(self.request, self.speed_time)
            return Timeout(min(_CONNECT_TIMEOUT, idle), idle)
        left = max(deadline.left(), 0.001)
        return Timeout(min(_CONNECT_TIMEOUT, left), min(left, self.speed_time) if stream else left)


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be a positive number, not {text!r}")
    return value


class Deadline(NamedTuple):
    """The monotonic time by which one request (all its attempts) must be done."""

    seconds: float
    end: float

    @classmethod
    def start(cls, seconds: float) -> "Deadline":
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, wait: float) -> bool:
        """True when waiting ``wait`` seconds still leaves time for another attempt."""
        return wait < self.left()

    def error(self, what: str, host: str, answered: bool) -> RegistryConnectionError:
        got = "no complete answer" if answered else "no answer"
        return RegistryConnectionError(f"{what}: {got} from {host} within {self.seconds:g} s (UNIONFS_HTTP_TIMEOUT)")


class Challenge(NamedTuple):
    """One ``WWW-Authenticate`` challenge: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]


def api_host(registry: str) -> str:
    """The host that serves the API for a reference's registry (``docker.io`` -> ``registry-1.docker.io``)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges (``Bearer realm="...",service="...",scope="..."``)."""
    out: list[Challenge] = []
    pos, n = 0, len(header)
    token = re.compile(r'\s*([A-Za-z][A-Za-z0-9_.-]*)\s*')
    param = re.compile(r'\s*([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')
    while pos < n:
        m = token.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < n:
            pm = param.match(header, pos)
            if not pm:  # the next scheme (a word not followed by "=") or garbage
                break
            params[pm.group(1).lower()] = (re.sub(r"\\(.)", r"\1", pm.group(2)) if pm.group(2) is not None
                                           else pm.group(3))
            pos = pm.end()
        out.append(Challenge(scheme, params))
        while pos < n and header[pos] in " ,":
            pos += 1
    return out


def parse_link_next(header: str | None) -> str | None:
    """The target of ``rel="next"`` in a ``Link`` header, or None."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;(.*)', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            return m.group(1)
    return None


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:NAME:pull,push``."""
    return f"repository:{repository}:{','.join(actions)}"


def error_from_response(response: Response, what: str, body: bytes | None = None) -> RegistryError:
    """A typed one-line error from a failed response: from ``body`` (a capped prefix, see ``read_body``), else
    from the response's content (which must have been read then)."""
    code = message = None
    try:
        body = json.loads((response.content if body is None else body) or b"{}")
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "") or None
            message = str(errors[0].get("message") or "") or None
        elif isinstance(body, dict) and body.get("details"):  # token servers
            message = str(body["details"])
    except (ValueError, UnicodeDecodeError, RecursionError, ResponseNotRead):
        pass
    cls, fallback = _STATUS_ERRORS.get(response.status_code, (RegistryError, f"HTTP {response.status_code}"))
    if code in _CODE_ERRORS:
        cls = _CODE_ERRORS[code]
    text = " ".join((message or fallback).split())
    if len(text) > 300:
        text = text[:300] + "..."
    if code:
        text += f" ({code})"
    elif message is None and response.status_code not in _STATUS_ERRORS:
        text = f"unexpected HTTP {response.status_code} {response.reason_phrase}".strip()
    return cls(f"{what}: {text}", code, response.status_code)


def origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def host_port(url: URL) -> str:
    return f"{url.host}:{url.port}" if url.port else url.host


def _decoder(encoding: str) -> Callable[[bytes, int], bytes] | None:
    """A decoder of one Content-Encoding that returns at most ``room`` bytes per call, or None when the
    encoding is not one we decode (identity, gzip, deflate)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return lambda data, room: data
    if enc not in ("gzip", "x-gzip", "deflate"):
        return None
    z = zlib.decompressobj(47)  # a gzip or zlib header
    # At most ``room`` bytes out: when that is reached the caller stops (the body is over its cap), so input
    # zlib keeps in unconsumed_tail is never needed.
    return lambda data, room: z.decompress(data, max(room, 1))


def read_body(response: Response, cap: int, what: str, *, deadline: Deadline | None = None,
              host: str = "", truncate: bool = False) -> bytes:
    """Read a streamed response's body as it arrives, at most ``cap`` bytes (after decoding), and close it.

    A longer body raises RegistryError, or with ``truncate`` gives its first ``cap`` bytes (the rest is never
    read: the connection is dropped). Past ``deadline`` raises RegistryConnectionError (naming ``host``), as
    does a broken connection. An encoding other than identity/gzip/deflate raises RegistryError (``truncate``:
    gives b"").
    """
    try:
        if response.request.method == "HEAD":  # its Content-Length describes a body that is not sent
            return b""
        length = response.headers.get("content-length", "")
        if not truncate and length.isdigit() and int(length) > cap:
            raise RegistryError(f"{what}: the answer ({int(length)} bytes) is larger than {cap} bytes")
        decode = _decoder(response.headers.get("content-encoding", ""))
        if decode is None:
            if truncate:
                return b""
            raise RegistryError(f"{what}: the answer has an unsupported Content-Encoding "
                                f"{response.headers.get('content-encoding')!r}")
        out = bytearray()
        try:
            pieces: Iterable[bytes] = [response.content]  # already read (a transport that buffers)
            decode = _decoder("")
        except ResponseNotRead:
            pieces = response.iter_raw()
        for chunk in pieces:
            try:
                out += decode(chunk, cap + 1 - len(out))
            except zlib.error:
                if truncate:
                    return bytes(out)
                raise RegistryError(f"{what}: the answer's compressed body is corrupt") from None
            if len(out) > cap:
                if truncate:
                    return bytes(out[:cap])
                raise RegistryError(f"{what}: the answer is larger than {cap} bytes")
            if deadline is not None and deadline.left() < 0:
                raise deadline.error(what, host or response.request.url.host, True)
        return bytes(out)
    except TransportError as e:
        if deadline is not None and deadline.left() < 0:
            raise deadline.error(what, host or response.request.url.host, True) from None
        raise RegistryConnectionError(f"{what}: connection lost: {describe(e)}") from None
    finally:
        response.close()


def with_body(response: Response, body: bytes) -> Response:
    """A closed response carrying ``body`` as its (decoded) content, with the original status and headers."""
    headers = [(k, v) for k, v in response.headers.items()
               if k.lower() not in ("content-encoding", "transfer-encoding")]
    return Response(response.status_code, headers=Headers(headers), content=body, request=response.request,
                    reason_phrase=response.reason_phrase)


def describe(e: BaseException | None) -> str:
    if e is None:
        return "no answer"
    text = str(e) or type(e).__name__
    return " ".join(text.split())


def stream_file(opener: Callable[[], IO[bytes]], offset: int, length: int,
                 on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    """Yield ``length`` bytes of a fresh stream from ``offset``."""
    with opener() as f:
        if offset:
            f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(READ_CHUNK, left))
            if not chunk:
                raise RegistryError(f"local content ended {left} bytes early")
            left -= len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            yield chunk
