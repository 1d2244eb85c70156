"""The registry protocol client (unionfs/registry/client.py) and docker-config credentials (unionfs/registry/credentials.py).

Against real ``docker-registry`` processes (no auth, htpasswd, token) on 127.0.0.1; scripted local HTTP servers
only where one code path needs a server that misbehaves on purpose (redirects, foreign URLs, Docker Hub search).
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest
from support.registry import USERS, FakeServer, FaultProxy, Registry, have_registry, running_registry, sha256

from unionfs.errors import (
    CredentialsError,
    DigestError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryNotFoundError,
)
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from unionfs.registry.client import RegistryClient
from unionfs.registry.credentials import DOCKER_HUB_KEY, DockerConfig, normalize_server
from unionfs.registry.curl import Request, Response, TransportError, is_loopback
from unionfs.registry.search import hub_search
from unionfs.registry.transport import (
    Credentials,
    RetryPolicy,
    error_from_response,
    parse_link_next,
    parse_www_authenticate,
)

FAST = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)

needs_registry = pytest.mark.skipif(have_registry() is not None, reason=have_registry() or "")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("reg-plain")) as reg:
        yield reg


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("reg-basic"), "htpasswd") as reg:
        yield reg


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("reg-token"), "token") as reg:
        yield reg


ALICE = Credentials("alice", USERS["alice"])


def _upload_image(client: RegistryClient, repo: str, tag: str, media: str = OCI_MANIFEST,
                  layer: bytes = b"layer-bytes" * 1000) -> tuple[bytes, bytes]:
    """Push a (not unpackable, protocol-only) image; returns (manifest raw, layer)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    for blob in (config, layer):
        client.push_blob(repo, Digest.parse(sha256(blob)), len(blob), lambda b=blob: io.BytesIO(b))
    cfg_type, layer_type = (OCI_CONFIG, OCI_LAYER_GZIP) if media == OCI_MANIFEST else (DOCKER_CONFIG, DOCKER_LAYER)
    raw = json.dumps({"schemaVersion": 2, "mediaType": media,
                      "config": {"mediaType": cfg_type, "digest": sha256(config), "size": len(config)},
                      "layers": [{"mediaType": layer_type, "digest": sha256(layer), "size": len(layer)}]},
                     indent=3).encode()  # unusual formatting: digests must be over these very bytes
    client.put_manifest(repo, tag, raw, media)
    return raw, layer


# --- pure parsing --------------------------------------------------------------------------------
def test_parse_www_authenticate() -> None:
    got = parse_www_authenticate('Bearer realm="https://auth.example/token",service="reg",'
                                 'scope="repository:a/b:pull,push", Basic realm="x y"')
    assert got[0].scheme == "bearer"
    assert got[0].params == {"realm": "https://auth.example/token", "service": "reg",
                             "scope": "repository:a/b:pull,push"}
    assert got[1].scheme == "basic" and got[1].params == {"realm": "x y"}
    assert parse_www_authenticate('Basic realm=unquoted')[0].params == {"realm": "unquoted"}


def test_parse_link_next() -> None:
    assert parse_link_next('</v2/_catalog?last=b&n=2>; rel="next"') == "/v2/_catalog?last=b&n=2"
    assert parse_link_next('<https://x/prev>; rel="prev", </n>; rel=next') == "/n"
    assert parse_link_next(None) is None


def test_loopback_detection() -> None:
    assert is_loopback("localhost:5000") and is_loopback("127.0.0.2") and is_loopback("[::1]:443")
    assert not is_loopback("registry.example.com") and not is_loopback("10.0.0.1:5000")


def test_error_mapping_is_one_line() -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest\nunknown", "detail": {"Tag": "x"}}]}
    r = Response(404, content=json.dumps(body).encode())
    err = error_from_response(r, "r/x:y")
    assert isinstance(err, RegistryNotFoundError)
    assert str(err) == "r/x:y: manifest unknown (MANIFEST_UNKNOWN)" and err.code == "MANIFEST_UNKNOWN"
    assert "\n" not in str(error_from_response(Response(502, content=b"<html>\nbad gateway</html>"), "w"))


def test_remote_host_is_https_only_by_default() -> None:
    """Without --insecure a non-loopback registry is never spoken to in plain HTTP (checked with a stand-in
    transport: no packet leaves the machine)."""
    seen: list[str] = []

    def handler(request: Request) -> Response:
        seen.append(str(request.url))
        raise TransportError("refused")

    with RegistryClient("registry.example.com", transport=handler, retry=FAST) as c:
        with pytest.raises(RegistryConnectionError, match="--insecure"):
            c.ping()
    assert seen and all(u.startswith("https://") for u in seen)
    seen.clear()
    with RegistryClient("registry.example.com", transport=handler, retry=FAST,
                        insecure=True) as c:
        with pytest.raises(RegistryConnectionError):
            c.ping()
    assert any(u.startswith("http://") for u in seen)


# --- against real registries ---------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["plain", "basic", "token"])
def test_blob_and_manifest_round_trip(variant: str, request: pytest.FixtureRequest) -> None:
    reg: Registry = request.getfixturevalue(variant)
    creds = None if variant == "plain" else ALICE
    with RegistryClient(reg.host, credentials=creds, retry=FAST) as c:
        for media in (OCI_MANIFEST, DOCKER_MANIFEST):
            repo = f"rt/{variant}-{'oci' if media == OCI_MANIFEST else 'docker'}"
            raw, layer = _upload_image(c, repo, "v1", media)
            got = c.get_manifest(repo, "v1")
            assert got.raw == raw and got.media_type == media and str(got.digest) == sha256(raw)
            assert c.get_manifest(repo, str(got.digest)).raw == raw
            assert c.head_manifest(repo, "v1") == got.digest
            assert c.fetch_blob(repo, Digest.parse(sha256(layer)), len(layer)) == layer
            assert c.tags(repo) == ["v1"]
        # HEAD says it exists: nothing is sent again
        layer = b"layer-bytes" * 1000
        assert c.push_blob(repo, Digest.parse(sha256(layer)), len(layer), lambda: io.BytesIO(layer)) == "exists"


def test_chunked_upload(plain: Registry) -> None:
    data = os.urandom(300_000)
    d = Digest.parse(sha256(data))
    with RegistryClient(plain.host, retry=FAST) as c:
        assert c.push_blob("chunked/a", d, len(data), lambda: io.BytesIO(data), chunk_threshold=1000,
                           chunk_size=64 * 1024) == "uploaded"
        assert c.blob_size("chunked/a", d) == len(data)
        assert c.fetch_blob("chunked/a", d, len(data)) == data


def test_cross_repository_mount_asks_both_scopes(token: Registry) -> None:
    data = os.urandom(5000)
    d = Digest.parse(sha256(data))
    with RegistryClient(token.host, credentials=ALICE, retry=FAST) as c:
        assert c.push_blob("mnt/src", d, len(data), lambda: io.BytesIO(data)) == "uploaded"
        assert token.token_server is not None
        token.token_server.requests.clear()
        assert c.push_blob("mnt/dst", d, len(data), lambda: io.BytesIO(data), mount_from=["mnt/src"]) == "mounted"
        scopes = [set(r["scopes"]) for r in token.token_server.requests]
        assert {"repository:mnt/src:pull", "repository:mnt/dst:pull,push"} in scopes
        assert c.blob_size("mnt/dst", d) == len(data)


def test_missing_manifest_and_repository(plain: Registry) -> None:
    with RegistryClient(plain.host, retry=FAST) as c:
        _upload_image(c, "miss/repo", "v1")
        with pytest.raises(RegistryNotFoundError, match=r"miss/repo:nope: manifest unknown \(MANIFEST_UNKNOWN\)$"):
            c.get_manifest("miss/repo", "nope")
        with pytest.raises(RegistryNotFoundError) as ei:
            c.tags("never/pushed")
        assert ei.value.code == "NAME_UNKNOWN"
        with pytest.raises(RegistryNotFoundError) as ei:
            c.fetch_blob("miss/repo", Digest.parse(sha256(b"absent")))
        assert ei.value.code == "BLOB_UNKNOWN"


def test_catalog_follows_link_pages(plain: Registry) -> None:
    proxy = FaultProxy(plain.host)
    try:
        with RegistryClient(plain.host, retry=FAST) as c:
            for i in range(5):
                _upload_image(c, f"cat/r{i}", "v1")
        with RegistryClient(proxy.host, retry=FAST) as c:
            names = list(c.catalog(page=2))
        assert {f"cat/r{i}" for i in range(5)} <= set(names)
        assert len(names) == len(set(names))
        assert sum(1 for m, p, _ in proxy.log if p.startswith("/v2/_catalog")) >= 3
    finally:
        proxy.close()


def test_basic_auth_errors(basic: Registry) -> None:
    with RegistryClient(basic.host, retry=FAST) as c:
        with pytest.raises(RegistryAuthError, match="unionfs login"):
            c.tags("any/thing")
    with RegistryClient(basic.host, credentials=Credentials("alice", "wrong"), retry=FAST) as c:
        with pytest.raises(RegistryAuthError, match="wrong username or password"):
            c.login()
        with pytest.raises(RegistryAuthError, match="credentials"):
            c.tags("any/thing")
    with RegistryClient(basic.host, credentials=ALICE, retry=FAST) as c:
        c.login()


def test_token_auth_anonymous_pull_but_no_push(token: Registry) -> None:
    with RegistryClient(token.host, credentials=ALICE, retry=FAST) as c:
        raw, _ = _upload_image(c, "tok/pub", "v1")
    with RegistryClient(token.host, retry=FAST) as anon:
        assert anon.get_manifest("tok/pub", "v1").raw == raw
        data = b"new"
        with pytest.raises(RegistryAuthError, match="unionfs login"):
            anon.push_blob("tok/pub", Digest.parse(sha256(data)), 3, lambda: io.BytesIO(data))
    with RegistryClient(token.host, credentials=Credentials("alice", "nope"), retry=FAST) as bad:
        with pytest.raises(RegistryAuthError, match="wrong username or password"):
            bad.get_manifest("tok/pub", "v1")
        with pytest.raises(RegistryAuthError):
            bad.login()


def test_retries_on_5xx_and_resumes_with_range(plain: Registry) -> None:
    data = os.urandom(400_000)
    d = sha256(data)
    with RegistryClient(plain.host, retry=FAST) as c:
        c.push_blob("flaky/r", Digest.parse(d), len(data), lambda: io.BytesIO(data))
    proxy = FaultProxy(plain.host)
    try:
        proxy.fail_blob[d] = 2
        proxy.cut_blob[d] = 150_000
        with RegistryClient(proxy.host, retry=FAST) as c:
            reader = c.open_blob("flaky/r", Digest.parse(d), len(data))
            assert reader.read() == data
            assert reader.resumes == 1
        gets = [(p, rng) for m, p, rng in proxy.log if m == "GET" and d in p]
        assert len(gets) == 4  # two 503s, the cut one, the resumed one
        assert gets[-1][1] == "bytes=150000-"
    finally:
        proxy.close()


def test_corrupt_blob_fails_verification(plain: Registry) -> None:
    data = os.urandom(50_000)
    d = sha256(data)
    with RegistryClient(plain.host, retry=FAST) as c:
        c.push_blob("corrupt/r", Digest.parse(d), len(data), lambda: io.BytesIO(data))
    proxy = FaultProxy(plain.host)
    try:
        proxy.corrupt_blob.add(d)
        with RegistryClient(proxy.host, retry=FAST) as c:
            with pytest.raises(DigestError, match="digest mismatch"):
                c.fetch_blob("corrupt/r", Digest.parse(d), len(data))
    finally:
        proxy.close()


def test_manifest_digest_is_checked(plain: Registry) -> None:
    with RegistryClient(plain.host, retry=FAST) as c:
        raw, _ = _upload_image(c, "mdig/r", "v1")
    proxy = FaultProxy(plain.host)
    try:
        with RegistryClient(proxy.host, retry=FAST) as c:
            with pytest.raises(RegistryNotFoundError):  # a digest the registry does not have
                c.get_manifest("mdig/r", sha256(raw + b" "))
    finally:
        proxy.close()


# --- scripted servers: redirects and foreign URLs ------------------------------------------------
def _fake_registry(blob: bytes, storage_port: int) -> FakeServer:
    digest = sha256(blob)

    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if headers.get("authorization") != "Basic " + base64.b64encode(b"alice:wonderland").decode():
            return 401, {"WWW-Authenticate": 'Basic realm="fake"'}, b""
        if path == "/v2/":
            return 200, {}, b"{}"
        if path == f"/v2/r/blobs/{digest}":
            return 307, {"Location": f"http://localhost:{storage_port}/bucket/{digest}"}, b""
        return 404, {}, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'
    return FakeServer(handler)


def test_redirect_to_another_host_carries_no_authorization() -> None:
    blob = b"stored elsewhere" * 100
    storage = FakeServer(lambda m, p, h: (200, {}, blob))
    reg = _fake_registry(blob, storage.port)
    try:
        with RegistryClient(f"127.0.0.1:{reg.port}", credentials=ALICE, retry=FAST) as c:
            assert c.fetch_blob("r", Digest.parse(sha256(blob)), len(blob)) == blob
        assert any("authorization" in s.headers for s in reg.seen)
        assert storage.seen and all("authorization" not in s.headers for s in storage.seen)
    finally:
        reg.close()
        storage.close()


def test_foreign_urls_only_when_asked() -> None:
    blob = b"foreign layer" * 10
    foreign = FakeServer(lambda m, p, h: (200, {}, blob))
    reg = _fake_registry(blob, foreign.port)
    url = f"http://127.0.0.1:{foreign.port}/layer.tar.gz"
    try:
        with RegistryClient(f"127.0.0.1:{reg.port}", credentials=ALICE, retry=FAST) as c:
            with c.open_blob("r", Digest.parse(sha256(blob)), len(blob), urls=[url]) as r:
                assert r.read() == blob
            assert not any(s.path == "/layer.tar.gz" for s in foreign.seen)  # came via the registry's redirect
            with c.open_blob("r", Digest.parse(sha256(blob)), len(blob), urls=[url], follow_urls=True) as r:
                assert r.read() == blob
        hits = [s for s in foreign.seen if s.path == "/layer.tar.gz"]
        assert hits and all("authorization" not in s.headers for s in hits)
    finally:
        reg.close()
        foreign.close()


def test_hub_search_parses_results() -> None:
    body = json.dumps({"num_results": 2, "results": [
        {"name": "busybox", "description": "Busybox base image.", "star_count": 3000, "is_official": True},
        {"name": "someone/busybox", "description": "", "star_count": 2, "is_official": False}]}).encode()
    server = FakeServer(lambda m, p, h: (200, {"Content-Type": "application/json"}, body))
    try:
        got = hub_search("busybox", 10, url=f"http://127.0.0.1:{server.port}/v1/search", retry=FAST)
        assert [r.name for r in got] == ["busybox", "someone/busybox"]
        assert got[0].official and got[0].stars == 3000
        assert server.seen[0].path == "/v1/search?q=busybox&n=10"
    finally:
        server.close()


def test_hub_search_survives_junk_counts() -> None:
    body = json.dumps({"results": [{"name": "a", "star_count": "many"}, {"name": "b", "star_count": [1]},
                                   {"name": "c", "star_count": -5}, {"name": "d", "star_count": 7}]}).encode()
    server = FakeServer(lambda m, p, h: (200, {"Content-Type": "application/json"}, body))
    try:
        got = hub_search("x", 10, url=f"http://127.0.0.1:{server.port}/v1/search", retry=FAST)
        assert [(r.name, r.stars) for r in got] == [("a", 0), ("b", 0), ("c", 0), ("d", 7)]
    finally:
        server.close()


# --- docker config ---------------------------------------------------------------------------------
def test_docker_config_save_get_erase(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {"https://other.example/v2/": {"auth": base64.b64encode(b"u:p").decode()}},
                                "psFormat": "table"}))
    cfg = DockerConfig(path)
    cfg.save("localhost:5000", ALICE)
    cfg.save("docker.io", Credentials("hubuser", "secret:with:colons"))
    data = json.loads(path.read_text())
    assert data["psFormat"] == "table"
    assert base64.b64decode(data["auths"]["localhost:5000"]["auth"]) == b"alice:wonderland"
    assert DOCKER_HUB_KEY in data["auths"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cfg.get("localhost:5000") == ALICE
    assert cfg.get("index.docker.io").password == "secret:with:colons"
    assert cfg.get("other.example").username == "u"
    assert cfg.get("nowhere.example") is None
    assert cfg.erase("localhost:5000") and not cfg.erase("localhost:5000")
    assert cfg.get("localhost:5000") is None
    assert normalize_server("https://index.docker.io/v1/") == "docker.io"


def test_docker_config_new_file_and_errors(tmp_path: Path) -> None:
    cfg = DockerConfig(tmp_path / "new" / "config.json")
    assert cfg.get("x.example") is None
    cfg.save("x.example", ALICE)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE(cfg.path.stat().st_mode) == 0o600
    cfg.path.write_text("{not json")
    with pytest.raises(CredentialsError):
        cfg.get("x.example")


def test_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n[ "$server" = "helped.example" ] || { echo "credentials not found";'
                      ' exit 1; }\necho \'{"Username":"h","Secret":"s3"}\'\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credHelpers": {"helped.example": "fake"}, "credsStore": "fake"}))
    cfg = DockerConfig(path)
    assert cfg.get("helped.example") == Credentials("h", "s3")
    assert cfg.get("other.example") is None
