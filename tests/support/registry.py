"""Real registries for the tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

Everything listens on 127.0.0.1 with a free port and is stopped at teardown, also when a test fails:

* ``Registry``: one ``docker-registry serve`` process with a temporary storage directory and config YAML, with
  no auth, htpasswd Basic auth (bcrypt hashes made here), or token auth;
* ``TokenServer``: a small token service signing RS256 JWTs with a self-signed certificate (made here with
  ``cryptography``) that the registry trusts through ``rootcertbundle``; it logs every scope it was asked for;
* ``FaultProxy``: a forwarding HTTP proxy in front of a registry that can answer 503, cut a blob's body in the
  middle, corrupt a blob, or stall a blob until released (to kill a client mid-download);
* ``FakeServer``: a tiny scripted HTTP server for unit tests of one code path (redirects, Docker Hub search).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USERS = {"alice": "wonderland", "bob": "builder"}
SERVICE = "unionfs-test-registry"
ISSUER = "unionfs-test-issuer"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_address() -> str | None:
    """This machine's address on its default route (not loopback), or None: a registry bound there is not on
    the loopback (what ``--insecure`` and ``insecure = true`` are about)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def have_registry() -> str | None:
    """None when docker-registry can run here, else the reason to skip."""
    if not os.path.exists(REGISTRY_BIN):
        return "docker-registry is not installed (scripts/setup.sh installs it)"
    return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- token service ------------------------------------------------------------------------------
class TokenServer:
    """Issues registry tokens: anonymous callers get ``pull`` only, USERS get what they ask for."""

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unionfs test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[dict[str, object]] = []  # every token request: account, scopes, granted
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                q = urllib.parse.urlparse(self.path)
                params = urllib.parse.parse_qs(q.query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if USERS.get(u) != p:
                        server.requests.append({"account": u, "scopes": params.get("scope", []), "refused": True})
                        self._answer(401, {"details": "invalid username or password"})
                        return
                    user = u
                scopes = [s for item in params.get("scope", []) for s in item.split(" ") if s]
                access = []
                for s in scopes:
                    typ, _, rest = s.partition(":")
                    name, _, actions = rest.rpartition(":")
                    wanted = actions.split(",")
                    allowed = wanted if user else [a for a in wanted if a == "pull"]
                    if allowed:
                        access.append({"type": typ, "name": name, "actions": allowed})
                server.requests.append({"account": user, "scopes": scopes, "access": access})
                token = server.sign(user or "", params.get("service", [""])[0], access)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def sign(self, subject: str, audience: str, access: list[dict[str, object]]) -> str:
        """An RS256 JWT with an ``x5c`` header that chains to the registry's rootcertbundle."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": audience, "exp": now + 300, "nbf": now - 60,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def self_signed_certificate(workdir: Path, address: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed CA certificate for ``address`` and its key, as PEM files in ``workdir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = workdir / "cert.pem", workdir / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


# --- the registry -------------------------------------------------------------------------------
@dataclass
class Registry:
    """A running ``docker-registry``; ``host`` is ``127.0.0.1:PORT``."""

    workdir: Path
    auth: str = "none"  # none | htpasswd | token
    port: int = 0
    token_server: TokenServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default=Path("/dev/null"))
    proxy_remote: str | None = None  # a pull-through cache of this URL (distribution's ``proxy: remoteurl:``)
    tls: tuple[Path, Path] | None = None  # (certificate, key) PEM files: HTTPS instead of HTTP

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def blob_data_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob's bytes."""
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"

    def start(self) -> "Registry":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {self.storage}", "  delete:", "    enabled: true",
                 "http:", "  addr: 127.0.0.1:{port}", f"  secret: {secrets.token_hex(16)}"]
        if self.auth == "htpasswd":
            import bcrypt

            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                        for u, p in USERS.items()))
            lines += ["auth:", "  htpasswd:", "    realm: unionfs-test", f"    path: {htpasswd}"]
        elif self.auth == "token":
            self.token_server = TokenServer(self.workdir)
            lines += ["auth:", "  token:", f"    realm: {self.token_server.realm}", f"    service: {SERVICE}",
                      f"    issuer: {ISSUER}", f"    rootcertbundle: {self.token_server.cert_path}"]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.proxy_remote:
            lines += ["proxy:", f"  remoteurl: {self.proxy_remote}"]
        template = "\n".join(lines) + "\n"
        self.log_path = self.workdir / "registry.log"
        for _ in range(5):  # a port taken between free_port() and the bind: try another
            self.port = free_port()
            config = self.workdir / "config.yml"
            config.write_text(template.replace("{port}", str(self.port)))
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
            if "address already in use" not in self.log_path.read_text(errors="replace"):
                break
        raise RuntimeError(f"docker-registry did not start: {self.log_path.read_text(errors='replace')[-2000:]}")

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                if self.tls:
                    trusting = ssl.create_default_context(cafile=str(self.tls[0]))
                    urllib.request.urlopen(f"https://{self.host}/v2/", timeout=2, context=trusting)
                else:
                    urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2)
                return True
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.token_server is not None:
            self.token_server.close()
            self.token_server = None


@contextlib.contextmanager
def running_registry(workdir: Path, auth: str = "none", proxy_remote: str | None = None,
                     tls: tuple[Path, Path] | None = None) -> Iterator[Registry]:
    """A started Registry (a pull-through cache of ``proxy_remote`` when given, in HTTPS with ``tls``), stopped
    when the block ends (however it ends)."""
    reg = Registry(workdir, auth, proxy_remote=proxy_remote, tls=tls)
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


# --- a faulty network in front of a registry ----------------------------------------------------
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


class FaultProxy:
    """Forwards HTTP/1.1 to ``upstream`` (``host:port``) and injects faults into blob GETs.

    * ``fail_blob[digest] = n``: answer the next n GETs of that blob with 503;
    * ``cut_blob[digest] = k``: send the first k bytes of the next full GET of that blob, then drop the connection;
    * ``corrupt_blob.add(digest)``: flip one byte of that blob's body in every answer;
    * ``stall_blob[digest] = k``: send k bytes, set ``stalled`` and hold the connection until ``release`` is set;
    * ``stall_range[digest] = n``: the same, with no byte of the body sent, for the n-th range answer (206) of
      that blob from now;
    * ``hold_range[digest] = n``: the n-th range answer of that blob from now waits (``stalled`` set) until
      ``release`` is set, and is then sent whole (a slow registry);
    * ``rewrite_blob[digest] = f``: answer every GET of that blob (whole or range) with ``f(body)`` instead.
    ``log`` records (method, path, Range header) of every request; ``sent`` counts the body bytes answered.
    ``rate`` (bytes per second, None: unlimited) makes every answer's body share one link of that bandwidth
    (a slow network in front of the registry, for benchmarks).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_blob: dict[str, int] = {}
        self.cut_blob: dict[str, int] = {}
        self.corrupt_blob: set[str] = set()
        self.stall_blob: dict[str, int] = {}
        self.stall_range: dict[str, int] = {}
        self.hold_range: dict[str, int] = {}
        self.rewrite_blob: dict[str, Callable[[bytes], bytes]] = {}
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.log: list[tuple[str, str, str | None]] = []
        self.sent = 0
        self.rate: float | None = None
        self._link = threading.Lock()
        self._link_free = 0.0  # when the link has sent what it was given (time.monotonic())
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # the headers and the body are two writes: with Nagle's algorithm the body waits for the client's
            # delayed ACK (40 ms an answer); registries (Go's net/http) set TCP_NODELAY too
            disable_nagle_algorithm = True

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.log.append((self.command, self.path, self.headers.get("Range")))
                digest = None
                if self.command == "GET" and "/blobs/sha256:" in self.path:
                    digest = self.path.rsplit("/", 1)[-1]
                    if proxy.fail_blob.get(digest, 0) > 0:
                        proxy.fail_blob[digest] -= 1
                        self._send(503, {"Content-Type": "application/json"},
                                   b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}')
                        return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out_headers = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
                finally:
                    conn.close()
                if digest and resp.status in (200, 206):
                    if digest in proxy.corrupt_blob and data:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    if digest in proxy.rewrite_blob:
                        data = proxy.rewrite_blob[digest](data)
                    if resp.status == 206 and digest in proxy.hold_range:
                        proxy.hold_range[digest] -= 1
                        if not proxy.hold_range[digest]:
                            del proxy.hold_range[digest]
                            proxy.stalled.set()
                            proxy.release.wait(timeout=120)
                    if resp.status == 206 and digest in proxy.stall_range:
                        proxy.stall_range[digest] -= 1
                        if not proxy.stall_range[digest]:
                            del proxy.stall_range[digest]
                            self._send_partial(resp.status, out_headers, data, 0, stall=True)
                            return
                    if resp.status == 200 and digest in proxy.cut_blob:
                        k = proxy.cut_blob.pop(digest)
                        self._send_partial(resp.status, out_headers, data, k)
                        return
                    if resp.status == 200 and digest in proxy.stall_blob:
                        k = proxy.stall_blob.pop(digest)
                        self._send_partial(resp.status, out_headers, data, k, stall=True)
                        return
                self._send(resp.status, out_headers, data, head=self.command == "HEAD")

            def _send(self, status: int, headers: dict[str, str], data: bytes, head: bool = False) -> None:
                self.send_response_only(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(data))) if head
                                 else str(len(data)))
                self.end_headers()
                if not head:
                    proxy._write(self.wfile, data)

            def _send_partial(self, status: int, headers: dict[str, str], data: bytes, k: int,
                              stall: bool = False) -> None:
                self.send_response_only(status)
                for key, v in headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                proxy._write(self.wfile, data[:k])
                self.wfile.flush()
                if stall:
                    proxy.stalled.set()
                    proxy.release.wait(timeout=120)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)  # quiet when a client hangs up mid-answer
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _write(self, out: Any, data: bytes, piece: int = 65536) -> None:
        """Send ``data`` on ``out``, counted, at :attr:`rate` (each piece takes its turn on the one link)."""
        view = memoryview(data)
        for at in range(0, len(view), piece):
            chunk = view[at:at + piece]
            with self._link:
                self.sent += len(chunk)
                done = 0.0
                if self.rate:
                    self._link_free = max(time.monotonic(), self._link_free) + len(chunk) / self.rate
                    done = self._link_free
            time.sleep(max(0.0, done - time.monotonic()))
            out.write(chunk)

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


# --- a scripted server for unit tests -----------------------------------------------------------
@dataclass
class Seen:
    """One request a FakeServer received."""

    method: str
    path: str
    headers: dict[str, str]


Body = bytes | Iterable[bytes]


@dataclass
class Sent:
    """What a FakeServer wrote for one answer: body bytes written, and whether the whole body went out."""

    method: str
    path: str
    nbytes: int
    complete: bool


class _Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server that stays quiet when a client hangs up mid-answer (what the tests of capped
    bodies make the client do) and reports every other handler error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class FakeServer:
    """Answers each request with ``handler(method, path, headers) -> (status, headers, body)``; records them.

    ``body`` is bytes, or an iterable of byte pieces written (and flushed) one by one as it yields them (slow,
    huge or endless bodies); an iterable body needs a ``Content-Length`` in the handler's headers or is sent
    with ``Connection: close`` and no length. ``seen`` records every request as it arrives, ``sent`` every
    answer once its writing ended (a client that hangs up shows as ``complete=False``).
    """

    def __init__(self, handler: Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], Body]],
                 bind: str = "127.0.0.1") -> None:
        self.seen: list[Seen] = []
        self.sent: list[Sent] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.seen.append(Seen(self.command, self.path, headers))
                status, out, body = handler(self.command, self.path, headers)
                self.send_response(status)
                for k, v in out.items():
                    self.send_header(k, v)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    pieces: Iterable[bytes] = [body]
                else:
                    if not any(k.lower() == "content-length" for k in out):
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    pieces = body
                self.end_headers()
                nbytes, complete = 0, True
                if self.command != "HEAD":
                    try:
                        for piece in pieces:
                            self.wfile.write(piece)
                            self.wfile.flush()
                            nbytes += len(piece)
                    except OSError:  # the client hung up
                        complete = False
                        self.close_connection = True
                server.sent.append(Sent(self.command, self.path, nbytes, complete))

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = _Server((bind, 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- fixtures the registry tests share: a test module imports ``docker_config_fixture`` and
# ``registry_fixture``, and its tests ask for ``docker_config`` (autouse) and ``registry`` ---

@pytest.fixture(autouse=True, name="docker_config")
def docker_config_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own docker config directory: ~/.docker is never read or written."""
    d = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


@pytest.fixture(scope="module", name="registry")
def registry_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry on 127.0.0.1 for the test module (skipped, saying why, where there is none)."""
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg
