"""TLS of the registry client (unionfs/registry/curl.py), against a real ``docker-registry`` in HTTPS
with a self-signed certificate: verification refuses it, ``$SSL_CERT_FILE`` trusts it, ``--insecure`` skips
the check; the TLS probe; a loopback plain-HTTP registry reached without an HTTPS try (no trust store read)."""

from __future__ import annotations

import io
import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator

import pytest
from support.registry import (  # noqa: F401 (fixtures)
    Registry,
    docker_config_fixture,
    free_port,
    have_registry,
    registry_fixture,
    running_registry,
    self_signed_certificate,
    sha256,
)

from unionfs.errors import RegistryError
from unionfs.oci.digest import Digest
from unionfs.registry import curl
from unionfs.registry.client import RegistryClient
from unionfs.registry.transport import RetryPolicy

FAST = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.02)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server on 127.0.0.1 with a self-signed certificate for 127.0.0.1 (its port and the certificate's
    PEM file): completes handshakes and closes."""
    cert_pem, key_pem = self_signed_certificate(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_pem, key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() wakes up to see ``stop``
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield listener.getsockname()[1], cert_pem
    finally:
        stop.set()
        listener.close()
        t.join(timeout=5)


@pytest.fixture
def https_registry(tmp_path: Path) -> Iterator[tuple[Registry, Path]]:
    """A docker-registry in HTTPS on 127.0.0.1 with a self-signed certificate, and the certificate's file."""
    if have_registry():
        pytest.skip(have_registry() or "")
    cert, key = self_signed_certificate(tmp_path)
    with running_registry(tmp_path / "reg", tls=(cert, key)) as reg:
        yield reg, cert


def test_https_registry_verified_trusted_or_insecure(https_registry: tuple[Registry, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reg, cert = https_registry
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with RegistryClient(reg.host, retry=FAST) as c:  # certifi's bundle does not know the certificate
        with pytest.raises(RegistryError):
            c.ping(attempts=1)
        assert c._base is None
    blob = b"over TLS" * 1000
    digest = Digest.parse(sha256(blob))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with RegistryClient(reg.host, retry=FAST) as c:
        assert c.base_url == f"https://{reg.host}"
        assert c.push_blob("tls/x", digest, len(blob), lambda: io.BytesIO(blob)) == "uploaded"
        assert c.fetch_blob("tls/x", digest, len(blob)) == blob
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(cert.parent / "nothing-here"))
    with RegistryClient(reg.host, retry=FAST) as c:  # a directory without the certificate: refused
        with pytest.raises(RegistryError):
            c.ping(attempts=1)
    with RegistryClient(reg.host, retry=FAST, insecure=True) as c:  # --insecure: TLS without the check
        assert c.base_url == f"https://{reg.host}"
        assert c.fetch_blob("tls/x", digest, len(blob)) == blob


def test_a_refused_certificate_is_named(https_registry: tuple[Registry, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport's error says what TLS refused (the registry client's message carries it)."""
    reg, _ = https_registry
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    client = curl.Client()
    with pytest.raises(curl.TransportError, match="(?i)certificate"):
        client.send("GET", f"https://{reg.host}/v2/", timeout=curl.Timeout(5, 5))
    client.close()


def test_speaks_tls(tls_server: tuple[int, Path], registry: Registry) -> None:
    assert curl.speaks_tls("127.0.0.1", tls_server[0], 10) is True
    assert curl.speaks_tls("127.0.0.1", registry.port, 10) is False  # docker-registry in plain HTTP
    assert curl.speaks_tls("127.0.0.1", free_port(), 10) is None  # nothing listens


def _count_trust_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loads: list[int] = []
    real = curl._trust_options

    def counted() -> list[tuple[int, str]]:
        loads.append(1)
        return real()
    monkeypatch.setattr(curl, "_trust_options", counted)
    return loads


def test_a_loopback_http_registry_loads_no_trust_store(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = _count_trust_loads(monkeypatch)
    with RegistryClient(registry.host) as client:
        assert client.base_url == f"http://{registry.host}"
    assert loads == []


def test_a_loopback_tls_server_is_still_tried_in_https(tls_server: tuple[int, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe skips HTTPS only for a host that does not speak TLS: here the verifying try happens (and fails
    on the self-signed certificate, then HTTP fails too: the TLS server speaks no HTTP)."""
    port, _ = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    loads = _count_trust_loads(monkeypatch)
    with RegistryClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(RegistryError):
            client.ping(attempts=1)
    assert loads
