"""What a hostile or broken registry can make the registry client do (docs/security.md).

Real HTTP servers on the loopback (``support.registry.FakeServer``: scripted, slow, huge or silent answers), a
second loopback address (127.0.0.2) standing for "another host", and the machine's own non-loopback address
where a test needs a host that is not allowed plain HTTP. One unit test uses a stand-in transport (the
``transport`` of ``curl.Client``) to name hosts that do not exist (no packet leaves the machine).

* credentials go only to the registry they were stored for and to the token realm *its own* challenge names:
  a redirect target (blob storage) that answers 401 with a challenge of its own gets nothing, nor does its realm;
* a token realm in plain HTTP is used only when its host may be spoken to in plain HTTP (the registry's own
  host when it is loopback or ``--insecure``, any loopback host for a loopback registry); otherwise nothing is
  sent and the error names the realm;
* slow servers: a blob download that makes too little progress fails (``UNIONFS_SPEED_LIMIT`` bytes/s over
  ``UNIONFS_SPEED_TIME`` s), every other request ends within ``UNIONFS_HTTP_TIMEOUT`` s, retries included;
* bodies other than blobs are read up to a cap, never whole: the server sees the client hang up.

Limits are made tiny through the environment; nothing here asserts a duration (a generous subprocess timeout
only guards against a hang).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from support.cli import run_cli
from support.registry import Body, FakeServer, Sent, local_address, sha256

from unionfs.errors import RegistryAuthError, RegistryConnectionError, RegistryError, RegistryNotFoundError
from unionfs.oci.digest import Digest
from unionfs.registry.client import RegistryClient
from unionfs.registry.curl import URL, Request, Response
from unionfs.registry.transport import Credentials, RetryPolicy

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)
SECRET = "s3cret-Pa55word"
CREDS = Credentials("alice", SECRET)
BASIC = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
OTHER_HOST = "127.0.0.2"  # another loopback address: another origin than 127.0.0.1
HUGE = 64 << 20
Handler = Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], Body]]


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    """``serve(handler, bind=...)`` starts a FakeServer that is closed when the test ends."""
    started: list[FakeServer] = []

    def start(handler: Handler, bind: str = "127.0.0.1") -> FakeServer:
        server = FakeServer(handler, bind)
        started.append(server)
        return server
    yield start
    for server in started:
        server.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No limit from the caller's environment; a docker config of the test's own."""
    for name in ("UNIONFS_HTTP_TIMEOUT", "UNIONFS_SPEED_LIMIT", "UNIONFS_SPEED_TIME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and BASIC.split()[1] not in text


def _unauthorized(challenge: str) -> tuple[int, dict[str, str], bytes]:
    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
    return 401, {"WWW-Authenticate": challenge}, body


def _wait_sent(server: FakeServer, path_prefix: str, timeout: float = 60.0) -> Sent:
    """The server's record of its answer to the first request for ``path_prefix`` (waits for the writer)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for s in server.sent:
            if s.path.startswith(path_prefix):
                return s
        time.sleep(0.05)
    raise AssertionError(f"the server never finished answering {path_prefix}: {server.sent}")


# --- item 4: a redirect target's challenge decides nothing -------------------------------------------------
@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_redirect_target_401_never_gets_the_registrys_credentials(
        scheme: str, serve: Callable[..., FakeServer], caplog: pytest.LogCaptureFixture) -> None:
    """Registry A (credentials stored) redirects a blob to storage S; S answers 401 naming its own token realm.
    Neither S nor that realm receives A's credentials; the download fails with one line naming S."""
    caplog.set_level(logging.DEBUG)
    blob = b"stored elsewhere" * 10
    digest = sha256(blob)
    trap = serve(lambda m, p, h: (200, {"Content-Type": "application/json"}, b'{"token": "stolen"}'), OTHER_HOST)
    storage = serve(lambda m, p, h: _unauthorized(f'Bearer realm="http://{OTHER_HOST}:{trap.port}/token",'
                                                  f'service="storage"'), OTHER_HOST)
    a_token = serve(lambda m, p, h: (200, {"Content-Type": "application/json"}, b'{"token": "good-token"}')
                    if h.get("authorization") == BASIC else (401, {}, b'{"details": "no"}'))

    def registry(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        wanted = BASIC if scheme == "basic" else "Bearer good-token"
        if headers.get("authorization") != wanted:
            return _unauthorized('Basic realm="A"' if scheme == "basic" else
                                 f'Bearer realm="http://127.0.0.1:{a_token.port}/token",service="A"')
        if path == "/v2/":
            return 200, {}, b"{}"
        if path == f"/v2/r/blobs/{digest}":
            return 307, {"Location": f"http://{OTHER_HOST}:{storage.port}/bucket/{digest}?X-Signature=abc"}, b""
        return 404, {}, b""
    reg = serve(registry)
    with RegistryClient(f"127.0.0.1:{reg.port}", credentials=CREDS, retry=FAST) as c:
        with pytest.raises(RegistryError) as err:
            c.fetch_blob("r", Digest.parse(digest), len(blob))
    message = str(err.value)
    assert "\n" not in message and f"{OTHER_HOST}:{storage.port}" in message and "401" in message
    assert trap.seen == []
    assert storage.seen and all("authorization" not in s.headers for s in storage.seen)
    assert any("authorization" in s.headers for s in reg.seen)  # A itself did get them
    _no_secret(message, caplog.text)


def test_token_realm_redirect_is_not_followed(serve: Callable[..., FakeServer]) -> None:
    """A token server that redirects elsewhere is an error: the credentials it was sent do not travel on."""
    trap = serve(lambda m, p, h: (200, {}, b'{"token": "t"}'), OTHER_HOST)
    realm = serve(lambda m, p, h: (307, {"Location": f"http://{OTHER_HOST}:{trap.port}/token"}, b""))
    reg = serve(lambda m, p, h: _unauthorized(f'Bearer realm="http://127.0.0.1:{realm.port}/token",service="A"'))
    with RegistryClient(f"127.0.0.1:{reg.port}", credentials=CREDS, retry=FAST) as c:
        with pytest.raises(RegistryError, match="307"):
            c.login()
    assert realm.seen and trap.seen == []


# --- item 5: plain-HTTP token realms -----------------------------------------------------------------------
@pytest.mark.parametrize(("registry", "insecure", "realm", "allowed"), [
    ("localhost:5000", False, "http://auth.example.net/token", False),  # loopback registry, realm elsewhere
    ("registry.lan:5000", True, "http://auth.example.net/token", False),  # --insecure names the registry only
    ("registry.lan:5000", True, "http://registry.lan:5001/token", True),  # the insecure host itself
    ("localhost:5000", False, "http://127.0.0.1:5001/token", True),  # loopback
    ("registry.example.com", False, "http://localhost:5001/token", False),  # a remote registry, a local realm
    ("registry.example.com", True, "http://127.0.0.1:5001/token", False),
    ("registry.example.com", False, "https://auth.example.net/token", True),  # TLS: as the challenge says
])
def test_plain_http_realm_only_on_a_host_allowed_plain_http(registry: str, insecure: bool, realm: str,
                                                            allowed: bool) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        if request.url.path == "/token":
            return Response(200, content=b'{"token": "t"}')
        return Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})

    realm_host = URL.parse(realm).host
    with RegistryClient(registry, credentials=CREDS, insecure=insecure, transport=handler,
                        retry=FAST) as c:
        if allowed:
            c.login()
            assert any(r.url.host == realm_host and r.url.path == "/token" for r in seen)
            return
        with pytest.raises(RegistryAuthError) as err:
            c.login()
    assert realm in str(err.value) and "\n" not in str(err.value)
    _no_secret(str(err.value))
    assert seen and not any(r.url.host == realm_host for r in seen)


def test_login_refuses_a_plain_http_realm_on_another_host(serve: Callable[..., FakeServer]) -> None:
    """A loopback registry (plain HTTP allowed) names a plain-HTTP token realm on a real, non-loopback address:
    ``unionfs login`` fails naming the realm, and the realm received nothing."""
    addr = local_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    trap = serve(lambda m, p, h: (200, {}, b'{"token": "t"}'), addr)
    realm = f"http://{addr}:{trap.port}/token"
    reg = serve(lambda m, p, h: _unauthorized(f'Bearer realm="{realm}",service="A"'))
    p = run_cli("login", f"127.0.0.1:{reg.port}", "-u", "alice", "--password-stdin", input=SECRET + "\n",
                timeout=120, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unionfs: ") and realm in lines[0]
    _no_secret(p.stdout, p.stderr)
    assert trap.seen == []


# --- item 16: slow, silent and verbose servers -------------------------------------------------------------
def _trickle(data: bytes, every: float, slow_part: int) -> Iterator[bytes]:
    """``slow_part`` bytes one at a time, ``every`` seconds apart, then the rest at once."""
    for i in range(min(slow_part, len(data))):
        yield data[i:i + 1]
        time.sleep(every)
    yield data[slow_part:]


def test_trickling_blob_fails_by_the_speed_rule(serve: Callable[..., FakeServer],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob arriving at 10 bytes/s fails under a 1000 bytes/s over 1 s rule (it would end after ~20 s)."""
    monkeypatch.setenv("UNIONFS_SPEED_LIMIT", "1000")
    monkeypatch.setenv("UNIONFS_SPEED_TIME", "1")
    blob = os.urandom(4000)
    digest = sha256(blob)

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Body]:
        if path == f"/v2/r/blobs/{digest}":
            return 200, {"Content-Length": str(len(blob))}, _trickle(blob, 0.1, 200)
        return 200, {}, b"{}"
    reg = serve(handler)
    with RegistryClient(f"127.0.0.1:{reg.port}", retry=FAST) as c:
        with pytest.raises(RegistryConnectionError) as err:
            c.fetch_blob("r", Digest.parse(digest), len(blob))
    message = str(err.value)
    assert "too slow" in message and "UNIONFS_SPEED_LIMIT" in message and "\n" not in message
    assert len([s for s in reg.seen if "/blobs/" in s.path]) == 1  # a slow transfer is not resumed


def test_blob_at_a_fine_speed_is_not_cut(serve: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed rule measures windows: a blob that keeps coming faster than the limit completes."""
    monkeypatch.setenv("UNIONFS_SPEED_LIMIT", "1000")
    monkeypatch.setenv("UNIONFS_SPEED_TIME", "0.5")
    blob = os.urandom(300_000)
    digest = sha256(blob)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(blob), 10_000):
            yield blob[i:i + 10_000]
            time.sleep(0.05)  # 200 kB/s: far above the limit, over several windows

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Body]:
        if path == f"/v2/r/blobs/{digest}":
            return 200, {"Content-Length": str(len(blob))}, pieces()
        return 200, {}, b"{}"
    reg = serve(handler)
    with RegistryClient(f"127.0.0.1:{reg.port}", retry=FAST) as c:
        assert c.fetch_blob("r", Digest.parse(digest), len(blob)) == blob


def test_trickling_manifest_hits_the_request_deadline(serve: Callable[..., FakeServer],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIONFS_HTTP_TIMEOUT", "1")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(b"{}"), "size": 2}, "layers": []}).encode()

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Body]:
        if "/manifests/" in path:
            return 200, {"Content-Length": str(len(manifest)),
                         "Content-Type": "application/vnd.oci.image.manifest.v1+json"}, _trickle(manifest, 0.1, 200)
        return 200, {}, b"{}"
    reg = serve(handler)
    with RegistryClient(f"127.0.0.1:{reg.port}", retry=FAST) as c:
        with pytest.raises(RegistryConnectionError) as err:
            c.get_manifest("r", "latest")
    message = str(err.value)
    assert "within 1 s" in message and "UNIONFS_HTTP_TIMEOUT" in message and "\n" not in message


def _silent(seconds: float) -> Handler:
    """A server that says nothing for ``seconds`` (then answers like an empty registry)."""
    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        time.sleep(seconds)
        return 200, {"Content-Type": "application/json"}, b'{"tags": ["late"]}'
    return handler


def test_silent_server_fails_within_the_deadline(serve: Callable[..., FakeServer],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIONFS_HTTP_TIMEOUT", "1")
    reg = serve(_silent(8))
    with RegistryClient(f"127.0.0.1:{reg.port}", retry=FAST) as c:
        with pytest.raises(RegistryConnectionError) as err:
            c.ping()
    message = str(err.value)
    assert "no answer" in message and "within 1 s" in message and "\n" not in message


def test_cli_silent_server_is_one_line(serve: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """``unionfs tags`` against a silent server: exit 1 and one line, in a bounded time (subprocess timeout)."""
    monkeypatch.setenv("UNIONFS_HTTP_TIMEOUT", "1")
    reg = serve(_silent(8))
    p = run_cli("tags", f"127.0.0.1:{reg.port}/r", input="", timeout=60, check=False)
    assert p.returncode == 1 and p.stdout == "", p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no answer" in lines[0] and "UNIONFS_HTTP_TIMEOUT" in lines[0], p.stderr


def test_bad_limit_in_the_environment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIONFS_SPEED_TIME", "soon")
    p = run_cli("tags", "127.0.0.1:9/r", input="", timeout=60, check=False)
    assert p.returncode != 0 and "UNIONFS_SPEED_TIME" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def _huge() -> Iterator[bytes]:
    piece = b'{"errors":[' + b" " * ((1 << 16) - 11)
    for _ in range(HUGE // len(piece)):
        yield piece


@pytest.mark.parametrize("where", ["error", "retried-error", "ping", "token", "tags"])
def test_huge_bodies_are_not_read_whole(where: str, serve: Callable[..., FakeServer]) -> None:
    """A 64 MiB answer where a small one belongs: the client reads a capped prefix and hangs up (the server
    sees its writing fail long before the end); an error body only shortens the message."""
    big = {"Content-Length": str(HUGE), "Content-Type": "application/json"}
    state = {"manifest_gets": 0}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha256(b"{}"), "size": 2}, "layers": []}).encode()

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Body]:
        if path == "/token" or path.startswith("/token?"):
            return (200, big, _huge()) if where == "token" else (200, {}, b'{"token": "t"}')
        if where == "token" and headers.get("authorization") != "Bearer t":
            return _unauthorized(f'Bearer realm="http://127.0.0.1:{reg_port[0]}/token",service="A"')
        if path == "/v2/":
            return (200, big, _huge()) if where == "ping" else (200, {}, b"{}")
        if "/manifests/" in path:
            state["manifest_gets"] += 1
            if where == "error":
                return 404, big, _huge()
            if where == "retried-error" and state["manifest_gets"] == 1:
                return 503, big, _huge()
            return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, manifest
        if "/tags/list" in path:
            return 200, big, _huge()
        return 404, {}, b""
    reg_port = [0]
    reg = serve(handler)
    reg_port[0] = reg.port
    with RegistryClient(f"127.0.0.1:{reg.port}", retry=FAST) as c:
        if where == "error":
            with pytest.raises(RegistryNotFoundError) as err:
                c.get_manifest("r", "latest")
            prefix = "/v2/r/manifests/"
        elif where == "retried-error":
            assert c.get_manifest("r", "latest").raw == manifest
            prefix = "/v2/r/manifests/"
        elif where == "ping":
            c.ping()  # the body of /v2/ means nothing: its first 64 KiB are read and dropped
            prefix = "/v2/"
        elif where == "token":
            with pytest.raises(RegistryError) as err:
                c.get_manifest("r", "latest")
            prefix = "/token"
        else:
            with pytest.raises(RegistryError) as err:
                c.tags("r")
            prefix = "/v2/r/tags/list"
    if where not in ("retried-error", "ping"):
        assert "\n" not in str(err.value) and len(str(err.value)) < 300, str(err.value)
    sent = _wait_sent(reg, prefix)
    assert not sent.complete and sent.nbytes < HUGE // 2, sent


def test_compressed_answer_is_decoded_within_the_cap(serve: Callable[..., FakeServer]) -> None:
    """A body the registry compressed although we asked for none: decoded, but never past the cap (a gzip
    bomb of 1 GiB fails as too large instead of filling memory)."""
    import zlib

    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = bomb.compress(b"\0" * (1 << 20))
    data = b"".join([data] + [bomb.compress(b"\0" * (1 << 20)) for _ in range(1023)]) + bomb.flush()

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Body]:
        assert headers.get("accept-encoding") == "identity"
        if "/tags/list" in path:
            return 200, {"Content-Encoding": "gzip", "Content-Type": "application/json"}, data
        return 200, {}, b"{}"
    reg = serve(handler)
    with RegistryClient(f"127.0.0.1:{reg.port}", retry=FAST) as c:
        with pytest.raises(RegistryError, match="larger than"):
            c.tags("r")


def test_credentials_never_in_logs_or_errors(serve: Callable[..., FakeServer],
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A full Basic flow and a refused one, logged at DEBUG."""
    caplog.set_level(logging.DEBUG)

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if headers.get("authorization") != BASIC:
            return _unauthorized('Basic realm="A"')
        return (200, {}, b'{"tags": ["a"]}') if "/tags/" in path else (200, {}, b"{}")
    reg = serve(handler)
    with RegistryClient(f"127.0.0.1:{reg.port}", credentials=CREDS, retry=FAST) as c:
        assert c.tags("r") == ["a"]
        assert "alice" in repr(c.credentials) and SECRET not in repr(c.credentials)
    with RegistryClient(f"127.0.0.1:{reg.port}", credentials=Credentials("alice", SECRET + "x"), retry=FAST) as c:
        with pytest.raises(RegistryAuthError) as err:
            c.tags("r")
    _no_secret(caplog.text, str(err.value))
    assert base64.b64encode(f"alice:{SECRET}x".encode()).decode() not in caplog.text
