"""The registry client's HTTP on libcurl (pycurl): URLs, requests, streamed responses, and a client that reuses
connections across requests and threads. What is asked on the wire, and the policy around it (credentials,
redirects, retries, deadlines, capped bodies), is the callers' (client.py, blob.py, search.py, transport.py).

Contracts:

* **One request, as asked.** ``Client.send`` sends exactly the method, URL and headers it is given (plus the
  client's default headers): no redirect is followed unless the client was made with ``follow_redirects``, no
  body is decoded (the caller asks for ``identity`` and decodes what it accepts), no ``Expect: 100-continue``
  round trip. Only ``http`` and ``https`` are spoken. Proxies come from the environment as libcurl reads it
  (``http_proxy`` in lower case only, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), never for a loopback host
  (``localhost``, ``127.0.0.0/8``, ``::1``: as Go's clients, docker and skopeo, decide).
* **TLS** is verified unless ``verify=False``: against ``$SSL_CERT_FILE``, else ``$SSL_CERT_DIR``, else
  certifi's bundle, read when a TLS connection is made (a plain-HTTP request loads no trust store).
* **Streaming.** ``send`` returns once the final response's headers are in; the body is read as it arrives
  (``Response.iter_raw``), nothing is buffered beyond what one turn of libcurl receives. ``close`` drops an
  unfinished transfer (and its connection). Timeouts: connecting within ``Timeout.connect``; after that, no
  progress (no byte received or sent) for ``Timeout.idle`` seconds raises ``TimeoutException``.
* **Errors.** A failure below HTTP (refused, reset, TLS, a body cut short) raises ``TransportError``, a timeout
  ``TimeoutException`` (a ``TransportError``), both with libcurl's one-line message; an exception raised by a
  body iterable while it is sent propagates unchanged.
* **Threads.** A ``Client`` may be shared: each transfer takes a free connection cache ("lane": a libcurl multi
  handle and its easy handle) and gives it back when its response is closed.
* **The TLS probe.** ``speaks_tls`` answers whether a TLS handshake with ``host:port`` completes, checking no
  certificate and loading no trust store (it only learns whether TLS is spoken; nothing is sent after the
  handshake): True when it completes, False when the server answered something that is not TLS (or a TLS
  libcurl cannot speak), None when nothing could be learned (refused, reset, timed out). A verifying handshake
  with a host for which it gives False would fail too.
* **Tests** may pass ``transport``, a function from ``Request`` to a buffered ``Response``, instead of the
  network.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import threading
import time
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

import pycurl

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_FREE_LANES = 16
_BUFFER = 256 << 10  # bytes per receive from the socket: fewer calls into Python than libcurl's 16 KiB


class TransportError(Exception):
    """A request failed below HTTP (no answer, or an answer cut short)."""


class TimeoutException(TransportError):
    """A connection was not made, or made no progress, within its timeout."""


class InvalidURL(ValueError):
    """Text that is no absolute http(s) URL."""


class ResponseNotRead(Exception):
    """``content`` of a streamed response that was not read."""


# --- URLs ----------------------------------------------------------------------------------------
class URL(NamedTuple):
    """An absolute URL: its text and its origin's parts (``port`` None for the scheme's default port)."""

    text: str
    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def parse(cls, text: str | "URL") -> "URL":
        """Raises InvalidURL for text that has no scheme and host, or a bad port."""
        if isinstance(text, URL):
            return text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as e:
            raise InvalidURL(f"invalid URL {text!r}: {e}") from None
        scheme = parts.scheme.lower()
        if not scheme or not parts.hostname or any(c in text for c in "\r\n\t "):
            raise InvalidURL(f"invalid URL {text!r}")
        if port == _DEFAULT_PORTS.get(scheme):
            port = None
        return cls(text, scheme, parts.hostname.lower(), port, parts.path or "/")

    def join(self, reference: str) -> "URL":
        """``reference`` (a Location or Link target) resolved against this URL."""
        return URL.parse(urljoin(self.text, reference))

    def with_params(self, params: dict[str, str] | Sequence[tuple[str, str]]) -> "URL":
        """This URL with ``params`` added to its query."""
        query = urlencode(list(params.items()) if isinstance(params, dict) else list(params))
        if not query:
            return self
        base, _, fragment = self.text.partition("#")
        sep = "&" if "?" in base else "?"
        return URL.parse(base + sep + query + ("#" + fragment if fragment else ""))

    def __str__(self) -> str:
        return self.text


def host_name(host: str) -> str:
    """The name or address in ``host[:port]`` (``[::1]:5000`` -> ``::1``), lower case."""
    name = host
    if name.startswith("["):
        name = name[1:name.index("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    return name.lower()


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback addresses, with or without a port."""
    name = host_name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --- requests and responses ----------------------------------------------------------------------
class Headers:
    """Response headers in order; names compared without case; ``get`` joins repeated ones with ``, ``."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = list(items)

    @classmethod
    def of(cls, headers: "dict[str, str] | Headers | None") -> "Headers":
        if isinstance(headers, Headers):
            return headers
        return cls((headers or {}).items())

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        values = [v for k, v in self._items if k.lower() == key]
        return ", ".join(values) if values else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


class Request(NamedTuple):
    """What was sent: ``content`` is the body when it was bytes (None for a streamed one)."""

    method: str
    url: URL
    headers: dict[str, str]
    content: bytes | None = None


class Timeout(NamedTuple):
    """Seconds to connect, and seconds without progress after that (see the module docstring)."""

    connect: float
    idle: float


class Response:
    """A status, headers, and a body read as it streams (or given whole: ``content``)."""

    def __init__(self, status_code: int, *, headers: "dict[str, str] | Headers | None" = None,
                 content: bytes | None = b"", request: Request | None = None, reason_phrase: str = "",
                 stream: "_Transfer | None" = None) -> None:
        self.status_code = status_code
        self.headers = Headers.of(headers)
        self.request = request if request is not None else Request("GET", URL.parse("http://unset/"), {})
        self.reason_phrase = reason_phrase
        self._content = None if stream is not None else content
        self._stream = stream

    @property
    def content(self) -> bytes:
        """The whole body; raises ResponseNotRead for a streamed response."""
        if self._content is None:
            raise ResponseNotRead("the response is streamed")
        return self._content

    def iter_raw(self) -> Iterator[bytes]:
        """The body's pieces as they arrive (not decoded); raises TransportError when it is cut short."""
        if self._stream is None:
            if self._content:
                yield self._content
            return
        yield from self._stream.chunks()

    def close(self) -> None:
        """End the transfer (an unread body is dropped with its connection)."""
        if self._stream is not None:
            self._stream.close()


# --- the client ----------------------------------------------------------------------------------
def speaks_tls(host: str, port: int, timeout: float) -> bool | None:
    """Whether ``host:port`` completes a TLS handshake within ``timeout`` seconds (see the module docstring)."""
    easy = pycurl.Curl()
    try:
        easy.setopt(pycurl.URL, f"https://[{host}]:{port}/" if ":" in host else f"https://{host}:{port}/")
        easy.setopt(pycurl.CONNECT_ONLY, 1)
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.NOPROXY, "*")
        easy.setopt(pycurl.SSL_VERIFYPEER, 0)
        easy.setopt(pycurl.SSL_VERIFYHOST, 0)
        easy.unsetopt(pycurl.CAINFO)  # no trust store read (a GnuTLS libcurl reads its default one: ~20 ms)
        easy.unsetopt(pycurl.CAPATH)
        easy.setopt(pycurl.TIMEOUT_MS, max(1, int(timeout * 1000)))
        easy.perform()
        return True
    except pycurl.error as e:
        return False if e.args[0] == pycurl.E_SSL_CONNECT_ERROR else None
    finally:
        easy.close()


def _body_of(method: str, content: bytes | Iterable[bytes] | None) -> tuple[Iterator[bytes] | None, int | None]:
    """The body as pieces for libcurl's reads, and its length when known here: no body for GET and HEAD without
    content; any other method sends one (empty when it has no content: ``Content-Length: 0``, never chunked)."""
    if content is None:
        if method in ("GET", "HEAD"):
            return None, None
        content = b""
    if isinstance(content, bytes):
        return iter((content,)), len(content)
    return iter(content), None


def _trust_options() -> list[tuple[int, str]]:
    """The trust store a verified TLS connection uses (see the module docstring)."""
    if os.environ.get("SSL_CERT_FILE"):
        return [(pycurl.CAINFO, os.environ["SSL_CERT_FILE"])]
    if os.environ.get("SSL_CERT_DIR"):
        return [(pycurl.CAPATH, os.environ["SSL_CERT_DIR"])]
    import certifi  # only for TLS: a plain-HTTP command does not load it

    return [(pycurl.CAINFO, certifi.where())]


class _Lane:
    """A libcurl multi handle (which keeps the connections) and one easy handle: one transfer at a time."""

    def __init__(self) -> None:
        self.multi = pycurl.CurlMulti()
        self.easy = pycurl.Curl()

    def close(self) -> None:
        self.easy.close()
        self.multi.close()


class Client:
    """HTTP(S) requests on libcurl (see the module docstring)."""

    def __init__(self, *, verify: bool = True, headers: dict[str, str] | None = None,
                 follow_redirects: bool = False, transport: Callable[[Request], Response] | None = None,
                 timeout: Timeout = Timeout(15.0, 60.0)) -> None:
        self.verify = verify
        self.headers = dict(headers or {})
        self.follow_redirects = follow_redirects
        self.transport = transport
        self.timeout = timeout
        self._free: list[_Lane] = []
        self._lock = threading.Lock()
        self._closed = False

    def send(self, method: str, url: str | URL, *, headers: dict[str, str] | None = None,
             content: bytes | Iterable[bytes] | None = None, timeout: Timeout | None = None) -> Response:
        """Send one request; the response's headers are in, its body is to be read (see the module docstring).

        Raises InvalidURL, TransportError (TimeoutException).
        """
        target = URL.parse(url)
        if target.scheme not in _DEFAULT_PORTS:
            raise InvalidURL(f"not an http(s) URL: {target}")
        sent = {**self.headers, **(headers or {})}
        for _ in range(6 if self.follow_redirects else 1):
            request = Request(method, target, sent, content if isinstance(content, bytes) else None)
            if self.transport is not None:
                response = self.transport(request)
                response.request = request
            else:
                response = _Transfer(self, request, content, timeout or self.timeout).start()
            location = response.headers.get("location")
            if not (self.follow_redirects and location and response.status_code in (301, 302, 303, 307, 308)):
                return response
            response.close()
            target = target.join(location)
            if response.status_code == 303 or method not in ("GET", "HEAD"):
                method, content = "GET", None
        raise TransportError(f"too many redirects from {url}")

    def _take(self) -> _Lane:
        with self._lock:
            if self._free:
                return self._free.pop()
        return _Lane()

    def _give(self, lane: _Lane) -> None:
        with self._lock:
            if not self._closed and len(self._free) < _MAX_FREE_LANES:
                self._free.append(lane)
                return
        lane.close()

    def close(self) -> None:
        """Close the kept connections (transfers still open close theirs when their response is closed)."""
        with self._lock:
            self._closed = True
            lanes, self._free = self._free, []
        for lane in lanes:
            lane.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transfer:
    """One request on a lane, driven by the reader: ``start`` until the headers are in, ``chunks`` for the body."""

    def __init__(self, client: Client, request: Request, content: bytes | Iterable[bytes] | None,
                 timeout: Timeout) -> None:
        self._client = client
        self._request = request
        self._timeout = timeout
        self._lane: _Lane | None = client._take()
        self._added = False
        self._status = 0
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._headers_done = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._finished = False
        self._error: BaseException | None = None
        self._callback_error: BaseException | None = None
        self._progress = time.monotonic()
        self._body, self._length = _body_of(request.method, content)
        self._pending = memoryview(b"")  # what libcurl has not yet taken of the body's current piece
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # -- libcurl's side
    def _setup(self) -> None:
        assert self._lane is not None
        easy, req = self._lane.easy, self._request
        easy.reset()
        easy.setopt(pycurl.URL, req.url.text)
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.BUFFERSIZE, _BUFFER)
        easy.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(self._timeout.connect * 1000)))
        if is_loopback(req.url.host):
            easy.setopt(pycurl.NOPROXY, "*")  # this machine: never through a proxy, as docker and skopeo
        if req.url.scheme == "https":
            if self._client.verify:
                for option, value in _trust_options():
                    easy.setopt(option, value)
            else:
                easy.setopt(pycurl.SSL_VERIFYPEER, 0)
                easy.setopt(pycurl.SSL_VERIFYHOST, 0)
        headers = [f"{k}: {v}" for k, v in req.headers.items()] + ["Expect:"]
        if req.method == "HEAD":
            easy.setopt(pycurl.NOBODY, 1)
        elif self._body is not None:
            easy.setopt(pycurl.UPLOAD, 1)
            easy.setopt(pycurl.READFUNCTION, self._on_read)
            length = self._length
            if length is None:  # a body in pieces: the length the caller gives, else chunked
                given = next((v for k, v in req.headers.items() if k.lower() == "content-length"), "")
                length = int(given) if given.isdigit() else None
            if length is not None:
                easy.setopt(pycurl.INFILESIZE_LARGE, length)
        if req.method not in ("GET", "HEAD") and not (req.method == "PUT" and self._body is not None):
            easy.setopt(pycurl.CUSTOMREQUEST, req.method)
        easy.setopt(pycurl.HTTPHEADER, headers)
        easy.setopt(pycurl.HEADERFUNCTION, self._on_header)
        easy.setopt(pycurl.WRITEFUNCTION, self._on_write)

    def _on_read(self, size: int) -> bytes | int:
        try:
            while not self._pending:
                assert self._body is not None
                piece = next(self._body, None)
                if piece is None:
                    return b""
                self._pending = memoryview(piece)
            out, self._pending = self._pending[:size], self._pending[size:]
            self._progress = time.monotonic()
            return bytes(out)
        except BaseException as e:  # raised again by the reader; libcurl only learns to stop
            self._callback_error = e
            return pycurl.READFUNC_ABORT

    def _on_header(self, line: bytes) -> None:
        self._progress = time.monotonic()
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            parts = text.split(" ", 2)
            self._status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self._reason = parts[2] if len(parts) > 2 else ""
            self._headers = []
        elif not text:
            if self._status >= 200:
                self._headers_done = True
        elif ":" in text and not text[0].isspace():
            name, _, value = text.partition(":")
            self._headers.append((name.strip(), value.strip()))

    def _on_write(self, data: bytes) -> None:
        self._progress = time.monotonic()
        self._chunks.append(data)

    # -- the reader's side
    def start(self) -> Response:
        assert self._lane is not None
        self._lane.multi.add_handle(self._lane.easy)
        self._added = True
        try:
            self._pump(lambda: self._headers_done)
            if not self._headers_done:
                self._raise()
                raise TransportError(f"{self._request.url.host}: the answer ended before its headers")
        except BaseException:
            self.close()
            raise
        return Response(self._status, headers=Headers(self._headers), request=self._request,
                        reason_phrase=self._reason, stream=self)

    def chunks(self) -> Iterator[bytes]:
        while True:
            if self._chunks:
                yield self._chunks.popleft()
                continue
            if self._finished:
                self._raise()
                return
            try:
                self._pump(lambda: bool(self._chunks))
            except BaseException:
                self.close()
                raise

    def _pump(self, ready: Callable[[], bool]) -> None:
        """Let libcurl work until ``ready()`` or the transfer's end; raises TimeoutException after ``idle``
        seconds without progress."""
        assert self._lane is not None
        multi = self._lane.multi
        while True:
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            _, done, failed = multi.info_read()
            if failed:
                _, code, message = failed[0]
                self._error = (TimeoutException if code == pycurl.E_OPERATION_TIMEDOUT
                               else TransportError)(message or f"libcurl error {code}")
            if done or failed:
                self._finished = True
            if ready() or self._finished:
                return
            left = self._timeout.idle - (time.monotonic() - self._progress)
            if left <= 0:
                raise TimeoutException(f"no progress from {self._request.url.host} within "
                                       f"{self._timeout.idle:g} s")
            wait = multi.timeout()
            multi.select(min(left, 1.0) if wait < 0 else min(left, wait / 1000))

    def _raise(self) -> None:
        if self._callback_error is not None:
            raise self._callback_error
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        lane, self._lane = self._lane, None
        if lane is None:
            return
        if self._added:
            lane.multi.remove_handle(lane.easy)
        self._finished = True
        self._client._give(lane)
