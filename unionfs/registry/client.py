"""A client for the registry HTTP API v2 (the OCI distribution spec): the protocol and nothing else.

One ``RegistryClient`` talks to one registry host. It knows no store and prints nothing; callers hand it
repositories, references, digests and streams.

The HTTP-level pieces it shares (credentials, retry policy, deadlines, capped bodies, error mapping) are in
transport.py, the blob download in blob.py, the Docker Hub search in search.py; each module's docstring states
the contracts it implements.

Contracts:

* **Transport.** HTTPS with certificate verification by default. ``insecure=True`` (or a registry on the
  loopback: ``localhost``, ``127.0.0.0/8``, ``::1``) allows plain HTTP: HTTPS is tried first, then HTTP, as
  docker does (on the loopback, a host that does not complete a bare TLS handshake, ``curl.speaks_tls``, is
  spoken to in HTTP without the HTTPS try, which would fail); ``insecure`` also skips certificate
  verification.
* **Authentication.** The first request learns the registry's challenge (``GET /v2/``). ``Bearer``
  challenges are answered with a token from the realm for the scopes the operation needs
  (``repository:NAME:pull``, ``repository:NAME:pull,push``, both repositories for a cross-repository mount,
  ``registry:catalog:*``), anonymously or with the credentials; ``Basic`` challenges with the credentials.
  Tokens are cached per scope set; a 401 drops the cached token and retries once.
* **Credentials go only where they belong.** They are bound to the registry host they were given for: sent
  as ``Basic`` only to the registry's own origin (scheme, host, port), or to the token realm that the
  registry's *own* ``401`` challenge names. Redirects are followed by hand: a redirect to another origin
  (e.g. pre-signed blob storage) carries no ``Authorization`` header, and a ``401`` from there is an error,
  never a challenge (its ``WWW-Authenticate`` is ignored). A token realm in plain HTTP is refused (nothing is
  sent to it) unless its host may be spoken to in plain HTTP: the registry's own host when that is loopback
  or ``insecure``, or any loopback host when the registry is on the loopback. Token servers' redirects are
  not followed. Foreign-layer ``urls`` are fetched only when the caller asks, and never with credentials.
  Credentials never appear in logs or error messages.
* **Retries.** Connection errors, 5xx answers and 429 are retried with exponential backoff (``Retry-After``
  honoured up to the policy's cap) when the request can be repeated and its deadline leaves time for the
  wait; a blob download broken in the middle resumes (blob.py).
* **Verification.** A manifest fetched by digest must hash to it; one fetched by tag must match the
  ``Docker-Content-Digest`` header when the registry sends one; blobs are verified as they stream (blob.py).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import time
from typing import IO, Callable, Iterable, Iterator, NamedTuple, Sequence
from urllib.parse import urlencode

from unionfs.errors import (
    DigestError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryError,
    RegistryNotFoundError,
)
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from unionfs.registry.blob import BlobReader
from unionfs.registry.curl import (
    URL,
    Client,
    InvalidURL,
    Request,
    Response,
    Timeout,
    TimeoutException,
    TransportError,
    host_name,
    is_loopback,
    speaks_tls,
)
from unionfs.registry.transport import (
    MAX_ERROR_BODY,
    MAX_LIST_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_SMALL_BODY,
    MAX_TOKEN_BYTES,
    RETRY_STATUSES,
    USER_AGENT,
    Challenge,
    Credentials,
    Deadline,
    Deadlines,
    RetryPolicy,
    api_host,
    describe,
    error_from_response,
    host_port,
    origin,
    parse_link_next,
    parse_www_authenticate,
    read_body,
    repository_scope,
    stream_file,
    with_body,
)

log = logging.getLogger(__name__)

#: Every manifest type we understand, most preferred first. distribution 2.8 answers 404 for an OCI
#: manifest unless its type is accepted, and rewrites schema2 into schema1 when nothing is.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
DEFAULT_CHUNK_THRESHOLD = 64 << 20
DEFAULT_CHUNK_SIZE = 16 << 20
_MAX_REDIRECTS = 5
CATALOG_SCOPE = "registry:catalog:*"


class FetchedManifest(NamedTuple):
    """A manifest or index as the registry sent it: raw bytes, media type, and the digest of the bytes."""

    raw: bytes
    media_type: str
    digest: Digest


# --- the client ---------------------------------------------------------------------------------
class RegistryClient:
    """The v2 API of one registry host. Thread-safe: parallel downloads share one client.

    ``registry`` is a reference's registry (``docker.io``, ``localhost:5000``). ``transport`` answers requests
    instead of the network (tests; see ``curl.Client``). ``deadlines`` default to ``Deadlines.from_env()``. Use
    as a context manager or call ``close()``.
    """

    def __init__(self, registry: str, *, credentials: Credentials | None = None, insecure: bool = False,
                 retry: RetryPolicy | None = None, transport: Callable[[Request], Response] | None = None,
                 deadlines: Deadlines | None = None) -> None:
        self.registry = registry
        self.host = api_host(registry)
        self.credentials = credentials
        self.insecure = insecure
        self.retry = retry or RetryPolicy()
        self.deadlines = deadlines or Deadlines.from_env()
        self._own_transport = transport is None
        self._http = Client(verify=not insecure, transport=transport, timeout=self.deadlines.timeout(None),
                            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        self._base: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], str] = {}
        self._lock = threading.Lock()
        self._ping_lock = threading.Lock()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- discovery and authentication ------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``https://host`` or ``http://host``, found by pinging ``/v2/`` once: parallel transfers that ask
        first wait for one ping instead of each sending their own (and each trying HTTPS first)."""
        if self._base is None:
            with self._ping_lock:
                if self._base is None:
                    self.ping()
        assert self._base is not None
        return self._base

    def _home(self) -> tuple[str, str, int | None]:
        """The registry's own origin: the only one that sees its credentials or may challenge for them."""
        return origin(URL.parse(self.base_url))

    def plain_http_allowed(self, host: str) -> bool:
        """True when ``host`` (``name[:port]``, or a bare name or address) may be spoken to in plain HTTP: the
        registry's own host (any port) when it is loopback or the client is ``insecure``; another loopback
        host only when the registry is on the loopback too."""
        if host_name(host) == host_name(self.host):
            return self.insecure or is_loopback(host)
        return is_loopback(host) and is_loopback(self.host)

    def _wait(self, attempt: int, deadline: Deadline | None, retry_after: str | None = None) -> bool:
        """Sleep before try ``attempt + 2`` when the policy and the deadline allow another; False when not."""
        if attempt + 1 >= self.retry.attempts:
            return False
        delay = self.retry.delay(attempt, retry_after)
        if deadline is not None and not deadline.allows(delay):
            return False
        time.sleep(delay)
        return True

    def ping(self, attempts: int | None = None) -> None:
        """``GET /v2/``: choose the scheme and learn the authentication challenge.

        ``attempts`` rounds at most (default: the retry policy's; a mirror, which has a fallback, is given
        one). Raises RegistryConnectionError when the host cannot be reached by any allowed scheme within the
        request deadline, RegistryError when what answers is no registry.
        """
        schemes = ["https"] + (["http"] if self.plain_http_allowed(self.host) else [])
        what = f"registry {self.registry}"
        deadline = Deadline.start(self.deadlines.request)
        if len(schemes) == 2 and is_loopback(self.host) and self._own_transport:
            # on the loopback a bare TLS handshake costs nothing: a host that answers it with something else
            # would fail the HTTPS try anyway, and skipping that try spares loading the trust store
            url = URL.parse(f"https://{self.host}/")
            if speaks_tls(url.host, url.port or 443, max(deadline.left(), 0.001) / 2) is False:
                log.debug("ping %s: no TLS spoken there; plain HTTP", self.host)
                schemes = ["http"]
        last: Exception | None = None
        rounds = min(attempts or self.retry.attempts, self.retry.attempts)
        for attempt in range(rounds):
            for i, scheme in enumerate(schemes):
                url = f"{scheme}://{self.host}/v2/"
                # HTTPS must leave time for the HTTP try: a plain-HTTP server may say nothing to a TLS hello
                share = Deadline.start(max(deadline.left(), 0) / (len(schemes) - i))
                try:
                    r = self._http.send("GET", url, timeout=self.deadlines.timeout(share))
                except TransportError as e:
                    log.debug("ping %s: %s", url, e)
                    last = e
                    if deadline.left() <= 0:
                        break
                    continue
                body = read_body(r, MAX_ERROR_BODY, what, deadline=deadline, host=self.registry, truncate=True)
                if r.status_code in RETRY_STATUSES:
                    last = error_from_response(r, what, body)
                    break
                if r.status_code not in (200, 401):
                    raise RegistryError(f"{self.registry} does not look like a registry "
                                        f"(HTTP {r.status_code} for {url})")
                self._base = f"{scheme}://{self.host}"
                if r.status_code == 401:
                    self._set_challenge(r)
                return
            if attempt + 1 >= rounds or deadline.left() <= 0 or not self._wait(attempt, deadline):
                break
        if isinstance(last, RegistryError):
            raise last
        if isinstance(last, TimeoutException) or deadline.left() <= 0:
            raise RegistryConnectionError(f"cannot reach registry {self.registry}: no answer within "
                                          f"{deadline.seconds:g} s (UNIONFS_HTTP_TIMEOUT)")
        hint = "" if "http" in schemes else " (use --insecure for a registry without TLS)"
        raise RegistryConnectionError(f"cannot reach registry {self.registry}: {describe(last)}{hint}")

    def _set_challenge(self, response: Response) -> None:
        """Learn the challenge of a 401 from the registry's own origin (any other origin decides nothing)."""
        if self._base is None or origin(response.request.url) != self._home():
            log.debug("ignoring a challenge from %s", response.request.url.host)
            return
        challenges = parse_www_authenticate(response.headers.get("www-authenticate", ""))
        for wanted in ("bearer", "basic"):
            for c in challenges:
                if c.scheme == wanted:
                    self._challenge = c
                    return

    def login(self) -> None:
        """Check the credentials: ping, then authenticate as the challenge asks (a token with no scope).

        Raises RegistryAuthError when the registry or its token server refuses them.
        """
        self.ping()
        ch = self._challenge
        if ch is None:
            return
        if ch.scheme == "bearer":
            self._fetch_token(frozenset(), force=True)
            return
        try:
            self.request("GET", "/v2/", what=f"login to {self.registry}")
        except RegistryAuthError:
            raise RegistryAuthError(f"login to {self.registry} failed: wrong username or password",
                                    "UNAUTHORIZED") from None

    def _auth_headers(self, scopes: frozenset[str]) -> dict[str, str]:
        ch = self._challenge
        if ch is None:
            return {}
        if ch.scheme == "bearer":
            return {"Authorization": f"Bearer {self._fetch_token(scopes)}"}
        if ch.scheme == "basic" and self.credentials:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _realm(self, ch: Challenge) -> URL:
        """The challenge's token realm, checked before anything is sent there (see the module docstring)."""
        realm = " ".join((ch.params.get("realm") or "").split())
        if not realm:
            raise RegistryAuthError(f"registry {self.registry} sent a Bearer challenge without a realm")
        try:
            url = URL.parse(realm)
        except InvalidURL:
            url = None
        if url is None or url.scheme not in ("https", "http") or not url.host:
            raise RegistryAuthError(f"registry {self.registry} names a token realm that is no HTTP(S) URL: {realm}")
        if url.scheme == "http" and not self.plain_http_allowed(url.host):
            raise RegistryAuthError(f"registry {self.registry} wants a token from {realm} over plain HTTP: refused "
                                    f"(a token realm must use HTTPS unless it is on the registry's own host with "
                                    f"--insecure, or both are on the loopback)")
        return url

    def _fetch_token(self, scopes: frozenset[str], force: bool = False) -> str:
        """A bearer token for ``scopes`` (cached) from the challenge's realm."""
        with self._lock:
            if not force and scopes in self._tokens:
                return self._tokens[scopes]
        ch = self._challenge
        assert ch is not None and ch.scheme == "bearer"
        realm_url = self._realm(ch)
        params: list[tuple[str, str]] = []
        if ch.params.get("service"):
            params.append(("service", ch.params["service"]))
        params.extend(("scope", s) for s in sorted(scopes))
        creds = self.credentials
        what = f"authentication with {self.registry}"
        deadline = Deadline.start(self.deadlines.request)
        timeout = self.deadlines.timeout
        for attempt in range(self.retry.attempts):
            try:
                if creds and creds.identity_token:
                    form = {k: v for k, v in params if k != "scope"}
                    form.update(grant_type="refresh_token", refresh_token=creds.identity_token,
                                client_id="unionfs", scope=" ".join(sorted(scopes)))
                    r = self._http.send("POST", realm_url, content=urlencode(form).encode(),
                                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                                        timeout=timeout(deadline))
                else:
                    headers: dict[str, str] = {}
                    params_acc = params
                    if creds:
                        raw = f"{creds.username}:{creds.password}".encode()
                        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
                        params_acc = params + [("account", creds.username)]
                    r = self._http.send("GET", realm_url.with_params(params_acc), headers=headers,
                                        timeout=timeout(deadline))
            except TransportError as e:
                if deadline.left() <= 0:
                    raise deadline.error(what, f"token server {realm_url.host}", False) from None
                if self._wait(attempt, deadline):
                    continue
                raise RegistryConnectionError(f"{what}: cannot reach token server {realm_url.host}: "
                                              f"{describe(e)}") from None
            if r.status_code != 200:
                body = read_body(r, MAX_ERROR_BODY, what, deadline=deadline, truncate=True)
                if r.status_code in RETRY_STATUSES and self._wait(attempt, deadline, r.headers.get("retry-after")):
                    continue
                if r.status_code in (401, 403):
                    if creds:
                        raise RegistryAuthError(f"{what} failed: wrong username or password", "UNAUTHORIZED")
                    raise RegistryAuthError(f"{what} failed: the token server requires credentials "
                                            f"(unionfs login {self.registry})", "UNAUTHORIZED")
                raise error_from_response(r, what, body)
            body = read_body(r, MAX_TOKEN_BYTES, f"{what}: token server {realm_url.host}", deadline=deadline)
            break
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not token or not isinstance(token, str):
            raise RegistryAuthError(f"{what}: the token server answered without a token")
        with self._lock:
            self._tokens[scopes] = token
        return token

    # -- the request loop ------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def request(self, method: str, path: str, *, scopes: Iterable[str] = (), what: str,
                headers: dict[str, str] | None = None, content: bytes | Callable[[], Iterable[bytes]] | None = None,
                params: dict[str, str] | None = None, ok: Sequence[int] = (200,), stream: bool = False,
                retry: bool = True, credentials: bool = True, max_body: int = MAX_SMALL_BODY) -> Response:
        """Send one API request with authentication, redirects, retries and error mapping.

        ``content`` is bytes or a callable returning a fresh iterable of bytes (so that a retry can send the
        body again). A response with a status outside ``ok`` raises a typed RegistryError (``what`` leads
        its message). Without ``stream`` the body is read (at most ``max_body`` bytes, else RegistryError) and
        the response returned closed, all within the request deadline; with ``stream`` only the headers come
        under the deadline and the caller reads and closes the body. ``retry=False`` sends once (requests that
        must not be repeated blindly). ``credentials=False`` sends no Authorization header at all (foreign
        URLs). A 401 is a challenge only from the registry's own origin; from anywhere else it is an error.
        """
        scope_set = frozenset(scopes)
        attempts = self.retry.attempts if retry else 1
        deadline = None if callable(content) else Deadline.start(self.deadlines.request)
        reauthed = False
        attempt = 0
        while True:
            auth = self._auth_headers(scope_set) if credentials else {}
            try:
                r = self._send(method, self._url(path), {**(headers or {})}, auth, content, params,
                               self.deadlines.timeout(deadline, stream))
            except TransportError as e:
                if deadline is not None and deadline.left() <= 0:
                    raise deadline.error(what, self.registry, False) from None
                if attempt + 1 < attempts and self._wait(attempt, deadline):
                    attempt += 1
                    log.debug("%s %s: %s; retrying", method, path, describe(e))
                    continue
                raise RegistryConnectionError(f"{what}: cannot reach {self.registry}: {describe(e)}") from None
            home = origin(r.request.url) == self._home()
            if r.status_code == 401 and credentials and home and not reauthed:
                read_body(r, MAX_ERROR_BODY, what, deadline=deadline, truncate=True)
                reauthed = True
                self._set_challenge(r)
                ch = self._challenge
                if ch is not None and (ch.scheme == "bearer" or self.credentials):
                    with self._lock:
                        self._tokens.pop(scope_set, None)
                    continue
                raise self._auth_error(r, what, b"")
            if r.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                body = read_body(r, MAX_ERROR_BODY, what, deadline=deadline, truncate=True)
                if self._wait(attempt, deadline, r.headers.get("retry-after")):
                    log.debug("%s %s: HTTP %s; retrying", method, path, r.status_code)
                    attempt += 1
                    continue
                raise error_from_response(r, what, body)
            if r.status_code not in ok:
                body = read_body(r, MAX_ERROR_BODY, what, deadline=deadline, truncate=True)
                if not home and r.status_code in (401, 403):
                    raise RegistryError(f"{what}: {host_port(r.request.url)}, outside {self.registry}, refused the "
                                        f"request (HTTP {r.status_code})", None, r.status_code)
                if r.status_code == 401:
                    raise self._auth_error(r, what, body)
                raise error_from_response(r, what, body)
            if stream:
                return r
            return with_body(r, read_body(r, max_body, what, deadline=deadline, host=self.registry))

    def _auth_error(self, r: Response, what: str, body: bytes) -> RegistryError:
        err = error_from_response(r, what, body)
        if self.credentials is None:
            return RegistryAuthError(f"{err} (log in with: unionfs login {self.registry})", err.code)
        return RegistryAuthError(f"{err} (check the credentials for {self.registry})", err.code)

    def _send(self, method: str, url: str, headers: dict[str, str], auth: dict[str, str],
              content: bytes | Callable[[], Iterable[bytes]] | None, params: dict[str, str] | None,
              timeout: Timeout) -> Response:
        """Send and follow redirects by hand; Authorization only while on the API's own origin."""
        target = URL.parse(url)
        if params:
            target = target.with_params(params)
        home = self._home()
        for _ in range(_MAX_REDIRECTS + 1):
            h = dict(headers)
            if origin(target) == home:
                h.update(auth)
            body = content() if callable(content) else content
            r = self._http.send(method, target, headers=h, content=body, timeout=timeout)
            if r.status_code in (301, 302, 303, 307, 308) and "location" in r.headers:
                r.close()
                nxt = target.join(r.headers["location"])
                if origin(nxt) != home:
                    log.debug("redirect to %s (no credentials sent there)", nxt.host)
                if nxt.scheme == "http" and target.scheme == "https" and not self.insecure:
                    raise RegistryError(f"{self.registry} redirected from HTTPS to plain HTTP ({nxt.host})")
                if r.status_code == 303 or (r.status_code in (301, 302) and method not in ("GET", "HEAD")):
                    method, content = "GET", None
                target = nxt
                continue
            return r
        raise RegistryError(f"{self.registry}: too many redirects")

    # -- manifests -------------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest; verified as the module docstring says.

        Raises RegistryNotFoundError (MANIFEST_UNKNOWN / NAME_UNKNOWN), DigestError.
        """
        what = f"{self.registry}/{repository}{'@' if ':' in reference else ':'}{reference}"
        r = self.request("GET", f"/v2/{repository}/manifests/{reference}", what=what,
                         scopes=[repository_scope(repository, "pull")], headers={"Accept": MANIFEST_ACCEPT},
                         max_body=MAX_MANIFEST_BYTES)
        raw = r.content
        media_type = r.headers.get("content-type", "").split(";")[0].strip()
        try:
            body_type = json.loads(raw).get("mediaType")
        except (ValueError, AttributeError, RecursionError):
            raise RegistryError(f"{what}: the registry sent a manifest that is not JSON") from None
        if body_type:
            media_type = body_type
        header = r.headers.get("docker-content-digest")
        expected: Digest | None = None
        if reference.startswith(("sha256:", "sha512:")):
            expected = Digest.parse(reference)
        elif header:
            try:
                expected = Digest.parse(header)
            except DigestError:
                expected = None
        digest = Digest.of_bytes(raw, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise DigestError(f"{what}: manifest digest mismatch, expected {expected}, got {digest}")
        if digest.algorithm != "sha256":
            digest = Digest.of_bytes(raw)
        return FetchedManifest(raw, media_type, digest)

    def head_manifest(self, repository: str, reference: str) -> Digest | None:
        """The digest the registry holds for a tag or digest, or None when it has none."""
        try:
            r = self.request("HEAD", f"/v2/{repository}/manifests/{reference}", what=f"{repository}:{reference}",
                             scopes=[repository_scope(repository, "pull")], headers={"Accept": MANIFEST_ACCEPT})
        except RegistryNotFoundError:
            return None
        header = r.headers.get("docker-content-digest")
        return Digest.parse(header) if header else None

    def put_manifest(self, repository: str, reference: str, raw: bytes, media_type: str) -> Digest:
        """Upload a manifest under a tag (or its digest) with its media type; returns its digest."""
        digest = Digest.of_bytes(raw)
        r = self.request("PUT", f"/v2/{repository}/manifests/{reference}", what=f"push {self.registry}/{repository}",
                         scopes=[repository_scope(repository, "pull", "push")], content=raw,
                         headers={"Content-Type": media_type}, ok=(200, 201, 202))
        header = r.headers.get("docker-content-digest")
        if header and header != str(digest):
            raise RegistryError(f"push {self.registry}/{repository}: the registry stored the manifest as {header}, "
                                f"not {digest}")
        return digest

    # -- blobs -----------------------------------------------------------------------------------
    def blob_size(self, repository: str, digest: Digest) -> int | None:
        """``HEAD`` a blob: its size when the repository has it, None when not."""
        try:
            r = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", what=f"blob {digest}",
                             scopes=[repository_scope(repository, "pull")])
        except RegistryNotFoundError:
            return None
        return int(r.headers.get("content-length") or -1)

    def open_blob(self, repository: str, digest: Digest, size: int | None = None, *, verify: bool = True,
                  urls: Sequence[str] = (), follow_urls: bool = False,
                  on_bytes: Callable[[int], None] | None = None, start: int = 0) -> "BlobReader":
        """A reader of a blob's bytes, hashed while streaming; resumes with Range after a broken connection.

        ``urls`` (a foreign layer's) are tried first, without credentials, only when ``follow_urls``.
        ``start``: the caller holds the first ``start`` bytes already (``verify=False``); see ``BlobReader``.
        Raises RegistryNotFoundError (BLOB_UNKNOWN); reading raises DigestError on wrong content.
        """
        sources: list[str] = []
        if follow_urls:
            sources = [u for u in urls if u.startswith(("https://", "http://"))]
        elif urls:
            log.debug("blob %s lists foreign urls; fetching it from %s instead", digest, self.registry)
        return BlobReader(self, repository, digest, size, verify=verify, urls=sources, on_bytes=on_bytes,
                          start=start)

    def fetch_blob(self, repository: str, digest: Digest, size: int | None = None, limit: int = 64 << 20) -> bytes:
        """A small blob (a config) in memory, verified."""
        with self.open_blob(repository, digest, size) as reader:
            data = reader.read(limit + 1)
            if len(data) > limit:
                raise RegistryError(f"blob {digest} is larger than {limit} bytes")
            while chunk := reader.read(limit + 1 - len(data)):
                data += chunk
                if len(data) > limit:
                    raise RegistryError(f"blob {digest} is larger than {limit} bytes")
        return data

    def fetch_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of a blob, by one ``Range`` request (lazy reads of eStargz
        layers). Nothing here is verified against the blob's digest (only the whole blob could be): the caller
        checks what it reads (a TOC's digest, a chunk's). Raises RegistryError unless the registry answers 206
        with exactly that range and that many bytes (a registry that ignores the range, answers another one,
        or sends more or fewer bytes)."""
        if not 0 <= start < end:
            raise ValueError(f"empty or negative range {start}-{end}")
        what = f"blob {digest} bytes {start}-{end - 1}"
        r = self.request("GET", f"/v2/{repository}/blobs/{digest}", what=what,
                         headers={"Range": f"bytes={start}-{end - 1}"}, scopes=[repository_scope(repository, "pull")],
                         ok=(206,), max_body=end - start)
        m = re.match(r"bytes (\d+)-(\d+)(?:/(\d+|\*))?$", r.headers.get("content-range", "").strip())
        if not m or (int(m.group(1)), int(m.group(2))) != (start, end - 1):
            raise RegistryError(f"{what}: the registry answered with another range "
                                f"({r.headers.get('content-range', 'none')!r})")
        if len(r.content) != end - start:
            raise RegistryError(f"{what}: the registry sent {len(r.content)} bytes, not {end - start}")
        return r.content

    def _start_upload(self, repository: str, mount: Digest | None = None, source: str | None = None
                      ) -> tuple[bool, str]:
        """POST an upload (or a cross-repository mount). Returns (mounted, upload location)."""
        scopes = [repository_scope(repository, "pull", "push")]
        params = None
        if mount is not None and source:
            scopes.append(repository_scope(source, "pull"))
            params = {"mount": str(mount), "from": source}
        r = self.request("POST", f"/v2/{repository}/blobs/uploads/", what=f"push {self.registry}/{repository}",
                         scopes=scopes, params=params, ok=(201, 202), content=b"")
        location = r.headers.get("location")
        if r.status_code == 201:
            return True, location or ""
        if not location:
            raise RegistryError(f"push {self.registry}/{repository}: upload started without a Location")
        return False, str(URL.parse(self.base_url + "/").join(location))

    def push_blob(self, repository: str, digest: Digest, size: int, opener: Callable[[], IO[bytes]], *,
                  mount_from: Sequence[str] = (), chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, on_bytes: Callable[[int], None] | None = None,
                  on_upload: Callable[[], None] | None = None) -> str:
        """Make the repository hold a blob; returns ``"exists"``, ``"mounted"`` or ``"uploaded"``.

        Skips a blob the repository has (HEAD); tries a cross-repository mount from each of ``mount_from``;
        otherwise uploads: one monolithic PUT after the POST, or PATCH chunks of ``chunk_size`` when the
        blob is larger than ``chunk_threshold``. ``opener`` returns a fresh stream of the content (called
        again when an upload is retried). ``on_upload`` is called once, when bytes are about to be sent.
        The registry verifies the digest.
        """
        if self.blob_size(repository, digest) is not None:
            return "exists"
        scopes = [repository_scope(repository, "pull", "push")]
        location: str | None = None
        for source in mount_from:
            if source == repository:
                continue
            mounted, loc = self._start_upload(repository, digest, source)
            if mounted:
                log.debug("mounted %s from %s", digest, source)
                return "mounted"
            location = loc
            break
        if on_upload:
            on_upload()
        for attempt in range(self.retry.attempts):
            if location is None:
                location = self._start_upload(repository)[1]
            try:
                if size > chunk_threshold:
                    self._upload_chunked(repository, location, digest, size, opener, chunk_size, scopes, on_bytes)
                else:
                    self._upload_monolithic(repository, location, digest, size, opener, scopes, on_bytes)
                return "uploaded"
            except RegistryError as e:
                retryable = isinstance(e, RegistryConnectionError) or e.status in RETRY_STATUSES
                if not retryable or attempt + 1 >= self.retry.attempts:
                    raise
                log.debug("upload of %s failed (%s); starting again", digest, e)
                time.sleep(self.retry.delay(attempt))
                location = None
        raise AssertionError("unreachable")

    def _upload_monolithic(self, repository: str, location: str, digest: Digest, size: int,
                           opener: Callable[[], IO[bytes]], scopes: list[str],
                           on_bytes: Callable[[int], None] | None) -> None:
        self._upload_request("PUT", location, scopes, {"digest": str(digest)},
                             lambda: stream_file(opener, 0, size, on_bytes), size, None, (201,),
                             f"push blob {digest.short}")

    def _upload_chunked(self, repository: str, location: str, digest: Digest, size: int,
                        opener: Callable[[], IO[bytes]], chunk_size: int, scopes: list[str],
                        on_bytes: Callable[[int], None] | None) -> None:
        offset = 0
        while offset < size:
            n = min(chunk_size, size - offset)
            body = functools.partial(stream_file, opener, offset, n, on_bytes)
            r = self._upload_request("PATCH", location, scopes, None, body, n, f"{offset}-{offset + n - 1}",
                                     (202,), f"push blob {digest.short}")
            location = str(URL.parse(location).join(r.headers.get("location") or location))
            offset += n
        self._upload_request("PUT", location, scopes, {"digest": str(digest)}, b"", 0, None, (201,),
                             f"push blob {digest.short}")

    def _upload_request(self, method: str, location: str, scopes: list[str], params: dict[str, str] | None,
                        content: bytes | Callable[[], Iterable[bytes]], length: int, content_range: str | None,
                        ok: tuple[int, ...], what: str) -> Response:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if content_range:
            headers["Content-Range"] = content_range
        return self.request(method, location, scopes=scopes, what=what, headers=headers, content=content,
                            params=params, ok=ok, retry=False)

    # -- listings --------------------------------------------------------------------------------
    def _paginate(self, path: str, key: str, scopes: list[str], what: str, page: int | None) -> Iterator[str]:
        params = {"n": str(page)} if page else None
        url: str | None = path
        while url:
            r = self.request("GET", url, scopes=scopes, what=what, params=params, max_body=MAX_LIST_BYTES)
            try:
                items = json.loads(r.content).get(key) or []
            except (ValueError, AttributeError, RecursionError):
                raise RegistryError(f"{what}: the registry's answer is not JSON") from None
            yield from (str(x) for x in items)
            nxt = parse_link_next(r.headers.get("link"))
            url = str(URL.parse(self.base_url + "/").join(nxt)) if nxt else None
            params = None

    def catalog(self, page: int | None = 100) -> Iterator[str]:
        """Every repository name, following ``Link: <...>; rel="next"`` pages."""
        return self._paginate("/v2/_catalog", "repositories", [CATALOG_SCOPE], f"catalog of {self.registry}", page)

    def tags(self, repository: str, page: int | None = None) -> list[str]:
        """Every tag of a repository (paginated like the catalog). Raises RegistryNotFoundError (NAME_UNKNOWN)."""
        return list(self._paginate(f"/v2/{repository}/tags/list", "tags", [repository_scope(repository, "pull")],
                                   f"tags of {self.registry}/{repository}", page))
