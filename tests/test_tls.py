"""unionfs/registry/tls.py: the trust store loaded on the first TLS connection (and verification unchanged),
the TLS probe, and a loopback plain-HTTP registry reached without loading the trust store at all."""

from __future__ import annotations

import datetime
import ipaddress
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
    registry_fixture,
)

from unionfs.errors import RegistryError
from unionfs.registry.client import RegistryClient
from unionfs.registry.tls import LazyTrustContext, speaks_tls


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS server on 127.0.0.1 with a self-signed certificate for 127.0.0.1 (its port and the certificate's
    PEM file): completes handshakes and closes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
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


def _handshake(ctx: ssl.SSLContext, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
            pass


def test_trust_is_loaded_on_the_first_handshake_and_still_verifies(tls_server: tuple[int, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    port, cert = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ctx = LazyTrustContext.create()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 0  # nothing loaded yet
    with pytest.raises(ssl.SSLCertVerificationError):  # a self-signed certificate: refused, as httpx's default
        _handshake(ctx, port)
    assert ctx.cert_store_stats()["x509_ca"] > 0  # certifi's bundle
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted through the variable httpx reads
    _handshake(LazyTrustContext.create(), port)


def test_the_context_checks_what_the_default_context_checks() -> None:
    """The same verification as ``ssl.create_default_context()`` on this interpreter (httpx's): from Python 3.13
    on that includes VERIFY_X509_STRICT and VERIFY_X509_PARTIAL_CHAIN, which a bare PROTOCOL_TLS_CLIENT context
    lacks."""
    ours, default = LazyTrustContext.create(), ssl.create_default_context()
    for attr in ("verify_flags", "options", "verify_mode", "check_hostname", "minimum_version", "maximum_version",
                 "post_handshake_auth"):
        assert getattr(ours, attr) == getattr(default, attr), attr


def test_speaks_tls(tls_server: tuple[int, Path], registry: Registry) -> None:
    assert speaks_tls("127.0.0.1", tls_server[0], 10) is True
    assert speaks_tls("127.0.0.1", registry.port, 10) is False  # docker-registry in plain HTTP
    assert speaks_tls("127.0.0.1", free_port(), 10) is None  # nothing listens


def test_a_loopback_http_registry_loads_no_trust_store(registry: Registry) -> None:
    with RegistryClient(registry.host) as client:
        assert client.base_url == f"http://{registry.host}"
        ctx = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert isinstance(ctx, LazyTrustContext) and ctx.cert_store_stats()["x509_ca"] == 0


def test_a_loopback_tls_server_is_still_tried_in_https(tls_server: tuple[int, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe skips HTTPS only for a host that does not speak TLS: here the verifying try happens (and fails
    on the self-signed certificate, then HTTP fails too: the TLS server speaks no HTTP)."""
    port, _ = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with RegistryClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(RegistryError):
            client.ping(attempts=1)
        ctx = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert ctx.cert_store_stats()["x509_ca"] > 0
