"""unionfs/registry/curl.py, the registry client's HTTP on libcurl, against real HTTP servers on the loopback
(``support.registry.FakeServer``): bodies as sent, streamed answers, errors, timeouts, connections kept."""

from __future__ import annotations

import http.server
import threading
import time
from typing import Iterator

import pytest
from support.registry import FakeServer, local_address

from unionfs.registry import curl

QUICK = curl.Timeout(5, 5)


@pytest.fixture
def echo() -> Iterator[FakeServer]:
    """Answers every request 200 with a body naming its method and path."""
    server = FakeServer(lambda m, p, h: (200, {"X-Seen": m}, f"{m} {p}".encode()))
    yield server
    server.close()


def _read(r: curl.Response) -> bytes:
    try:
        return b"".join(r.iter_raw())
    finally:
        r.close()


def test_bodies_are_sent_with_their_length(echo: FakeServer) -> None:
    """A request without content sends an empty body with ``Content-Length: 0`` (never a chunked one, which a
    registry's POST may not take), bytes and iterables with the length they are given."""
    with curl.Client() as client:
        base = f"http://127.0.0.1:{echo.port}"
        assert _read(client.send("POST", f"{base}/start", timeout=QUICK)) == b"POST /start"
        assert _read(client.send("PUT", f"{base}/bytes", content=b"abc", timeout=QUICK)) == b"PUT /bytes"
        r = client.send("PATCH", f"{base}/pieces", content=iter([b"ab", b"", b"cd"]),
                        headers={"Content-Length": "4"}, timeout=QUICK)
        assert r.status_code == 200 and r.headers["x-seen"] == "PATCH"
        _read(r)
        r = client.send("HEAD", f"{base}/head", timeout=QUICK)
        assert r.status_code == 200 and _read(r) == b"" and r.headers.get("content-length") == "10"
    seen = {s.method: s.headers for s in echo.seen}
    assert seen["POST"].get("content-length") == "0" and "transfer-encoding" not in seen["POST"]
    assert seen["PUT"].get("content-length") == "3"
    assert seen["PATCH"].get("content-length") == "4"
    assert all("expect" not in h for h in seen.values())


def test_an_error_from_the_body_propagates_and_the_client_goes_on(echo: FakeServer) -> None:
    class Boom(Exception):
        pass

    def pieces() -> Iterator[bytes]:
        yield b"x" * 1000
        raise Boom("the local file went away")

    with curl.Client() as client:
        base = f"http://127.0.0.1:{echo.port}"
        with pytest.raises(Boom, match="went away"):
            client.send("PUT", f"{base}/up", content=pieces(), headers={"Content-Length": "5000"}, timeout=QUICK)
        assert _read(client.send("GET", f"{base}/after", timeout=QUICK)) == b"GET /after"


def test_connections_are_kept_across_requests() -> None:
    ports: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with curl.Client() as client:
            for i in range(5):
                assert _read(client.send("GET", f"http://127.0.0.1:{server.server_address[1]}/{i}",
                                         timeout=QUICK)) == b"ok"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert len(ports) == 5 and len(set(ports)) == 1


def test_a_silent_server_times_out_and_a_refused_one_is_a_transport_error() -> None:
    def silent(m: str, p: str, h: dict[str, str]) -> tuple[int, dict[str, str], Iterator[bytes]]:
        def body() -> Iterator[bytes]:
            yield b"a"
            time.sleep(3)
            yield b"b"
        return 200, {"Content-Length": "2"}, body()

    server = FakeServer(silent)
    try:
        with curl.Client() as client:
            r = client.send("GET", f"http://127.0.0.1:{server.port}/", timeout=curl.Timeout(5, 0.5))
            start = time.monotonic()
            with pytest.raises(curl.TimeoutException):
                _read(r)
            assert time.monotonic() - start < 2.5
    finally:
        server.close()
    port = server.port  # closed now: nothing listens
    with curl.Client() as client, pytest.raises(curl.TransportError) as err:
        client.send("GET", f"http://127.0.0.1:{port}/", timeout=QUICK)
    assert "\n" not in str(err.value) and not isinstance(err.value, curl.TimeoutException)


def test_proxies_from_the_environment_but_never_for_this_machine(echo: FakeServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``http_proxy`` set, a loopback registry is still reached directly (as docker and skopeo do: a
    proxy elsewhere could not reach it), another host through the proxy."""
    proxy = FakeServer(lambda m, p, h: (200, {}, b"via proxy"))
    try:
        for name in ("http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with curl.Client() as client:
            for host in ("127.0.0.1", "localhost"):
                assert _read(client.send("GET", f"http://{host}:{echo.port}/x", timeout=QUICK)) == b"GET /x"
            assert proxy.seen == []
            addr = local_address()
            if addr is None:
                pytest.skip("no non-loopback address on this machine: the proxied half is not tried")
            remote = f"http://{addr}:{echo.port}/y"
            assert _read(client.send("GET", remote, timeout=QUICK)) == b"via proxy"
            assert [s.path for s in proxy.seen] == [remote]
    finally:
        proxy.close()


@pytest.mark.parametrize("text", ["/relative", "ftp://host/x", "http://host/a b", "http://host/a\r\nX: y",
                                  "http://host:99999/"])
def test_urls_that_are_refused(text: str) -> None:
    with curl.Client() as client, pytest.raises(curl.InvalidURL):
        client.send("GET", text, timeout=QUICK)


def test_url_parts_and_joins() -> None:
    u = curl.URL.parse("HTTPS://Registry.Example:443/v2/?a=1")
    assert (u.scheme, u.host, u.port, u.path) == ("https", "registry.example", None, "/v2/")
    assert curl.URL.parse("http://[::1]:5000/").host == "::1"
    assert str(u.join("/v2/x/blobs/uploads/1?_state=s")) == "https://Registry.Example:443/v2/x/blobs/uploads/1?_state=s"
    assert str(u.with_params({"n": "2"})) == "HTTPS://Registry.Example:443/v2/?a=1&n=2"
    assert str(curl.URL.parse("http://h/p").with_params([("scope", "a b"), ("scope", "c")])) == \
        "http://h/p?scope=a+b&scope=c"
