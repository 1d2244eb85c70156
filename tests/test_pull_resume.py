"""A pull resumes across runs (issue 17, point 3), against a real ``docker-registry`` behind a counting proxy.

* ``unionfs pull`` killed with SIGKILL in the middle of a blob, then run again: the second run asks for
  ``Range: bytes=N-`` from the kept partial file and the registry serves only the missing bytes (counted at
  the proxy); the image is whole and every blob verifies;
* a registry that ignores the range (200) or refuses it (416): the blob is fetched whole, started over;
* a partial file longer than the blob, or whose bytes are wrong: discarded with a warning, fetched again;
* a complete partial file is not fetched at all (it is hashed and becomes the blob);
* partial files older than a week go when a pull starts, all of them with ``prune``.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
from support.cli import cli_argv, run_cli
from support.images import run
from support.registry import Registry, docker_config_fixture, registry_fixture, running_registry  # noqa: F401 (fixtures)
from support.tree import ROOTFS, assert_same_tree, tree_snapshot
from test_pull_push import flattened, skopeo_push

from unionfs.oci.digest import Digest
from unionfs.store.store import PARTIAL_MAX_AGE, Store

if TYPE_CHECKING:
    from support.images import TestImages


@dataclass(frozen=True)
class Pushed:
    """The test image in the registry: its repository, tag, config and layers (digest -> size), the biggest
    layer and that layer's bytes."""

    repository: str
    tag: str
    config: tuple[str, int]
    layers: dict[str, int]
    big: str
    big_bytes: bytes


@pytest.fixture(scope="module")
def pushed(registry: Registry, test_images: TestImages) -> Pushed:
    ref = f"{registry.host}/resume:v3"
    skopeo_push(f"oci:{test_images.layout}:v3", ref)
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    layers = {d["digest"]: d["size"] for d in raw["layers"]}
    big = max(layers, key=lambda d: layers[d])
    return Pushed("resume", "v3", (raw["config"]["digest"], raw["config"]["size"]), layers, big,
                  registry.blob_data_path(big).read_bytes())


# --- a counting, misbehaving proxy ---------------------------------------------------------------
@dataclass(frozen=True)
class BlobGet:
    """One blob GET the proxy answered: the blob, the Range asked, the status and the body bytes sent."""

    digest: str
    range: str | None
    status: int
    sent: int


class CountingProxy:
    """Forwards HTTP/1.1 to ``upstream`` and records every blob GET (``gets``), with the body bytes it sent.

    * ``ignore_range``: the Range header is dropped on the way (a registry that ignores it: 200, whole blob);
    * ``refuse_range``: a ranged blob GET is answered 416;
    * ``stall_blob[digest] = k``: send the first k bytes of that blob, set ``stalled``, then hold the
      connection until ``release`` is set (so that the client can be killed mid-blob).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.ignore_range = False
        self.refuse_range = False
        self.stall_blob: dict[str, int] = {}
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.gets: list[BlobGet] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                digest = self.path.rsplit("/", 1)[-1] if self.command == "GET" and "/blobs/" in self.path else None
                asked = self.headers.get("Range")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                if digest and asked and proxy.refuse_range:
                    proxy.gets.append(BlobGet(digest, asked, 416, 0))
                    self._answer(416, {"Content-Range": "bytes */0"}, b"")
                    return
                if digest and proxy.ignore_range:
                    headers = {k: v for k, v in headers.items() if k.lower() != "range"}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {k: v for k, v in resp.getheaders()
                           if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
                finally:
                    conn.close()
                stall = proxy.stall_blob.pop(digest, None) if digest and resp.status in (200, 206) else None
                if digest:
                    sent = len(data) if stall is None else min(stall, len(data))
                    proxy.gets.append(BlobGet(digest, asked, resp.status, sent))
                self._answer(resp.status, out, data, stall)

            def _answer(self, status: int, headers: dict[str, str], data: bytes, stall: int | None = None) -> None:
                self.send_response_only(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if stall is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[:stall])
                self.wfile.flush()
                proxy.stalled.set()
                proxy.release.wait(timeout=120)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def served(self, digest: str) -> int:
        """Body bytes of blob ``digest`` sent, over all GETs."""
        return sum(g.sent for g in self.gets if g.digest == digest)

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


# --- helpers -------------------------------------------------------------------------------------
def partial_of(store_root: Path, digest: str) -> Path:
    return Store(store_root).partial_path(Digest.parse(digest))


def plant(store_root: Path, digest: str, data: bytes) -> Path:
    """A partial file for ``digest`` holding ``data``, as an earlier run would have left it."""
    path = partial_of(store_root, digest)
    path.write_bytes(data)
    return path


def pull_through(proxy: CountingProxy, store_root: Path, pushed: Pushed) -> subprocess.CompletedProcess[str]:
    return run_cli("pull", "-j", "1", f"{proxy.host}/{pushed.repository}:{pushed.tag}", root=store_root)


def assert_whole(store_root: Path, pushed: Pushed, proxy: CountingProxy, test_images: TestImages,
                 dest: Path) -> None:
    """The image is stored and equals the test image, every blob verifies, no partial file is left."""
    store = Store(store_root)
    assert all(store.has_blob(Digest.parse(d)) for d in pushed.layers)
    assert all(store.read_blob(d) is not None for d in store.blob_digests())
    assert not list((store_root / "tmp").glob("partial-*"))
    ref = f"{proxy.host}/{pushed.repository}:{pushed.tag}"
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), flattened(store_root, ref, dest))


# --- the tests -----------------------------------------------------------------------------------
def kill_mid_blob(registry: Registry, store_root: Path, digest: str, k: int) -> list[BlobGet]:
    """``unionfs pull -j 1`` of the test image through a proxy that stalls blob ``digest`` after ``k`` bytes of
    its body, killed with SIGKILL once the partial file holds them (but for what a buffered writer may hold,
    8 KiB); returns the blob GETs the proxy answered. Every process is stopped, also on failure."""
    partial = partial_of(store_root, digest)
    before = partial.stat().st_size if partial.exists() else 0
    proc = None
    with counting_proxy(registry.host) as proxy:
        try:
            proxy.stall_blob[digest] = k
            proc = subprocess.Popen(cli_argv("pull", "-q", "-j", "1", f"{proxy.host}/resume:v3", root=store_root),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert proxy.stalled.wait(timeout=120), "the pull never reached the blob"
            deadline = time.monotonic() + 60  # a bound against a hang, not a measurement
            while not (partial.exists() and partial.stat().st_size >= before + k - 8192):
                assert time.monotonic() < deadline and proc.poll() is None, "the partial file did not grow"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        return list(proxy.gets)


@pytest.mark.parametrize("kills", [1, 2])
def test_killed_pull_resumes_with_only_the_missing_bytes(kills: int, store_root: Path, registry: Registry,
                                                         pushed: Pushed, test_images: TestImages,
                                                         tmp_path: Path) -> None:
    size = pushed.layers[pushed.big]
    partial = partial_of(store_root, pushed.big)
    kept = 0
    for n in range(kills):  # killed at a quarter (or at half), then killed again half-way through the rest
        gets = kill_mid_blob(registry, store_root, pushed.big, (size - kept) // (2 if n or kills == 1 else 4))
        assert [g.range for g in gets if g.digest == pushed.big] == [f"bytes={kept}-" if kept else None]
        now = partial.stat().st_size
        assert kept < now < size and pushed.big_bytes.startswith(partial.read_bytes())
        kept = now
    store = Store(store_root)
    assert not store.has_blob(Digest.parse(pushed.big))
    missing = [d for d in pushed.layers if not store.has_blob(Digest.parse(d))]
    assert pushed.big in missing

    with counting_proxy(registry.host) as proxy:
        pull_through(proxy, store_root, pushed)
        big_gets = [g for g in proxy.gets if g.digest == pushed.big]
        assert big_gets == [BlobGet(pushed.big, f"bytes={kept}-", 206, size - kept)]
        # nothing else came twice: the config (never stored before the image is) and the layers not yet stored
        assert sorted(g.digest for g in proxy.gets) == sorted([pushed.config[0], *missing])
        assert sum(g.sent for g in proxy.gets) == pushed.config[1] + sum(pushed.layers[d] for d in missing) - kept
        assert_whole(store_root, pushed, proxy, test_images, tmp_path / "flat")


def test_a_registry_ignoring_the_range_sends_it_all_again(store_root: Path, registry: Registry, pushed: Pushed,
                                                          test_images: TestImages, tmp_path: Path) -> None:
    size = pushed.layers[pushed.big]
    plant(store_root, pushed.big, pushed.big_bytes[: size // 3])
    with counting_proxy(registry.host) as proxy:
        proxy.ignore_range = True
        pull_through(proxy, store_root, pushed)
        assert [(g.range, g.status, g.sent) for g in proxy.gets if g.digest == pushed.big] == [
            (f"bytes={size // 3}-", 200, size)]
        assert_whole(store_root, pushed, proxy, test_images, tmp_path / "flat")


def test_a_registry_refusing_the_range_is_asked_again_without(store_root: Path, registry: Registry,
                                                              pushed: Pushed, test_images: TestImages,
                                                              tmp_path: Path) -> None:
    size = pushed.layers[pushed.big]
    plant(store_root, pushed.big, pushed.big_bytes[:1000])
    with counting_proxy(registry.host) as proxy:
        proxy.refuse_range = True
        p = pull_through(proxy, store_root, pushed)
        assert [(g.range, g.status, g.sent) for g in proxy.gets if g.digest == pushed.big] == [
            ("bytes=1000-", 416, 0), (None, 200, size)]
        assert "HTTP 416" in p.stderr and Digest.parse(pushed.big).short in p.stderr
        assert_whole(store_root, pushed, proxy, test_images, tmp_path / "flat")


def test_a_partial_longer_than_the_blob_is_discarded(store_root: Path, registry: Registry, pushed: Pushed,
                                                     test_images: TestImages, tmp_path: Path) -> None:
    size = pushed.layers[pushed.big]
    plant(store_root, pushed.big, pushed.big_bytes + b"trailing garbage")
    with counting_proxy(registry.host) as proxy:
        p = pull_through(proxy, store_root, pushed)
        assert [(g.range, g.status, g.sent) for g in proxy.gets if g.digest == pushed.big] == [(None, 200, size)]
        warnings = [line for line in p.stderr.splitlines() if "partial download" in line]
        assert len(warnings) == 1 and f"more than the blob's {size}" in warnings[0] and "discarded" in warnings[0]
        assert_whole(store_root, pushed, proxy, test_images, tmp_path / "flat")


def test_a_partial_with_wrong_bytes_is_discarded_and_fetched_again(store_root: Path, registry: Registry,
                                                                   pushed: Pushed, test_images: TestImages,
                                                                   tmp_path: Path) -> None:
    size = pushed.layers[pushed.big]
    half = size // 2
    bad = bytearray(pushed.big_bytes[:half])
    bad[half // 2] ^= 0xFF
    plant(store_root, pushed.big, bytes(bad))
    with counting_proxy(registry.host) as proxy:
        p = pull_through(proxy, store_root, pushed)
        assert [(g.range, g.status, g.sent) for g in proxy.gets if g.digest == pushed.big] == [
            (f"bytes={half}-", 206, size - half), (None, 200, size)]
        warnings = [line for line in p.stderr.splitlines() if "did not verify" in line]
        assert len(warnings) == 1 and "digest mismatch" in warnings[0] and "fetching the blob again" in warnings[0]
        assert_whole(store_root, pushed, proxy, test_images, tmp_path / "flat")


def test_a_complete_partial_is_not_fetched_again(store_root: Path, registry: Registry, pushed: Pushed,
                                                 test_images: TestImages, tmp_path: Path) -> None:
    plant(store_root, pushed.big, pushed.big_bytes)
    with counting_proxy(registry.host) as proxy:
        pull_through(proxy, store_root, pushed)
        assert proxy.served(pushed.big) == 0 and pushed.big not in {g.digest for g in proxy.gets}
        assert_whole(store_root, pushed, proxy, test_images, tmp_path / "flat")


def test_old_partials_expire_and_prune_removes_all(store_root: Path, registry: Registry, pushed: Pushed) -> None:
    old = plant(store_root, str(Digest.of_bytes(b"old")), b"stale bytes")
    fresh = plant(store_root, str(Digest.of_bytes(b"fresh")), b"recent bytes")
    week_ago = time.time() - PARTIAL_MAX_AGE - 3600
    os.utime(old, (week_ago, week_ago))
    with counting_proxy(registry.host) as proxy:
        pull_through(proxy, store_root, pushed)
    assert not old.exists() and fresh.exists()
    run_cli("prune", root=store_root)
    assert not fresh.exists()
    assert Store(store_root).resolve(f"{proxy.host}/resume:v3") is not None  # prune keeps the tagged image


def test_a_blob_with_wrong_content_leaves_no_partial(store_root: Path, registry: Registry, pushed: Pushed,
                                                     tmp_path: Path, test_images: TestImages) -> None:
    with running_registry(tmp_path / "reg-bad") as reg:
        skopeo_push(f"oci:{test_images.layout}:v3", f"{reg.host}/bad:v3")
        data = reg.blob_data_path(pushed.big)
        blob = bytearray(data.read_bytes())
        blob[-1] ^= 0xFF
        data.write_bytes(bytes(blob))
        p = run_cli("pull", f"{reg.host}/bad:v3", root=store_root, check=False)
    assert p.returncode == 1 and "digest mismatch" in p.stderr
    assert list((store_root / "tmp").iterdir()) == []
