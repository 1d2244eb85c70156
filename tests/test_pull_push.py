"""Acceptance: ``unionfs pull/push/search/tags/login/logout`` against real ``docker-registry`` processes,
with skopeo and umoci as the independent clients.

* skopeo pushes the umoci test image -> ``unionfs pull`` -> its flattened layers equal umoci's rootfs;
  OCI and Docker schema2 manifests, gzip and zstd layers, a multi-platform index;
* ``unionfs push`` -> ``skopeo copy docker://... oci:DIR`` -> ``umoci unpack`` equals, and the manifest digest is
  kept from pull to push;
* faults: a missing tag, wrong credentials, a corrupted blob (nothing stored), a pull killed mid-blob then
  run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
from support.cli import cli_argv, run_cli
from support.images import flatten_layers, run
from support.registry import (  # noqa: F401 (fixtures)
    USERS,
    FaultProxy,
    Registry,
    docker_config_fixture,
    registry_fixture,
    running_registry,
)
from support.tree import ROOTFS, Snapshot, assert_same_tree, tree_snapshot

from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_CONFIG, Descriptor, Manifest, Platform
from unionfs.oci.reference import Reference
from unionfs.registry.client import RegistryClient
from unionfs.registry.transfer import pull, push
from unionfs.registry.transport import Credentials, RetryPolicy
from unionfs.store.store import Store

if TYPE_CHECKING:
    from support.images import TestImages

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module", name="pushed")  # named: test_pull_no_unpack imports it under another name
def pushed(registry: Registry, test_images: TestImages) -> str:
    """The umoci test image pushed by skopeo as ``HOST/test:v3`` (OCI manifest, gzip layers)."""
    ref = f"{registry.host}/test:v3"
    skopeo_push(f"oci:{test_images.layout}:v3", ref)
    return ref


def skopeo_push(src: str, ref: str, *extra: str) -> None:
    run("skopeo", "copy", "-q", "--dest-tls-verify=false", *extra, src, f"docker://{ref}")


def flattened(store_root: Path, ref: str, dest: Path, platform: Platform | None = None) -> Snapshot:
    """The snapshot of an image's layers from the store, applied in order."""
    store = Store(store_root)
    image = store.resolve(ref, platform)
    flatten_layers([store.layer_path(d) for d in image.config.diff_ids], dest)
    return tree_snapshot(dest, **ROOTFS)


def manifest_digest(ref: str) -> str:
    out = run("skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    return str(Digest.of_bytes(out.encode()))


def store_state(root: Path) -> tuple[bytes, list[str], list[str]]:
    return ((root / "index.json").read_bytes(), sorted(os.listdir(root / "blobs/sha256")),
            sorted(os.listdir(root / "layers")))


# --- pull ----------------------------------------------------------------------------------------
def test_pull_oci_gzip_equals_umoci_rootfs(cli: CLI, store_root: Path, pushed: str, test_images: TestImages,
                                           tmp_path: Path) -> None:
    p = cli("pull", pushed)
    assert p.stdout.strip() == pushed
    assert "Pull complete" in p.stderr and "Digest: sha256:" in p.stderr  # plain lines: stderr is no terminal
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), flattened(store_root, pushed, tmp_path / "flat"))
    again = cli("pull", pushed)
    assert "Image is up to date" in again.stderr and "Downloading" not in again.stderr


def test_pull_quiet_prints_only_the_reference(cli: CLI, pushed: str) -> None:
    p = cli("pull", "-q", pushed)
    assert p.stdout == pushed + "\n" and p.stderr == ""


def test_pull_by_digest(cli: CLI, store_root: Path, pushed: str) -> None:
    digest = manifest_digest(pushed)
    ref = pushed.rsplit(":", 1)[0] + "@" + digest
    cli("pull", "-q", ref)
    assert str(Store(store_root).resolve(ref).manifest_desc.digest) == digest


def test_pull_docker_schema2(cli: CLI, store_root: Path, registry: Registry, test_images: TestImages,
                             tmp_path: Path) -> None:
    ref = f"{registry.host}/test-docker:v3"
    skopeo_push(f"oci:{test_images.layout}:v3", ref, "--format", "v2s2")
    cli("pull", ref)
    image = Store(store_root).resolve(ref)
    assert image.manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert str(image.manifest_desc.digest) == manifest_digest(ref)
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), flattened(store_root, ref, tmp_path / "flat"))


def test_pull_zstd(cli: CLI, store_root: Path, registry: Registry, test_images: TestImages, tmp_path: Path) -> None:
    ref = f"{registry.host}/test-zstd:v3"
    skopeo_push(f"oci:{test_images.zstd_layout}:test:v3", ref)
    cli("pull", ref)
    image = Store(store_root).resolve(ref)
    assert all(d.media_type.endswith("+zstd") for d in image.manifest.layers)
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), flattened(store_root, ref, tmp_path / "flat"))


def _make_index_layout(test_images: TestImages, dest: Path) -> None:
    """An OCI layout whose ``multi`` tag is an index: the test image as linux/amd64 and as linux/arm64 (the same
    layers, a config saying arm64)."""
    run("skopeo", "copy", "-q", f"oci:{test_images.layout}:v3", f"oci:{dest}:amd")
    index = json.loads((dest / "index.json").read_text())
    amd = index["manifests"][0]
    blobs = dest / "blobs/sha256"
    manifest = json.loads((blobs / amd["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())

    def put(data: bytes) -> str:
        d = Digest.of_bytes(data)
        (blobs / d.hex).write_bytes(data)
        return str(d)

    config["architecture"] = "arm64"
    config["variant"] = "v8"
    cfg_raw = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put(cfg_raw), "size": len(cfg_raw)}
    arm_raw = json.dumps(manifest).encode()
    entries = [{"mediaType": amd["mediaType"], "digest": amd["digest"], "size": amd["size"],
                "platform": {"os": "linux", "architecture": "amd64"}},
               {"mediaType": amd["mediaType"], "digest": put(arm_raw), "size": len(arm_raw),
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]
    idx_raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": entries}).encode()
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(idx_raw),
                               "size": len(idx_raw), "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    (dest / "index.json").write_text(json.dumps(index))


def test_pull_index_picks_platform(cli: CLI, store_root: Path, registry: Registry, test_images: TestImages,
                                   tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    _make_index_layout(test_images, layout)
    ref = f"{registry.host}/test-multi:v3"
    skopeo_push(f"oci:{layout}:multi", ref, "--all")
    cli("pull", "-q", "--platform", "linux/arm64", ref)
    store = Store(store_root)
    assert store.resolve(ref).config.platform == Platform("linux", "arm64", "v8")
    cli("pull", "-q", "--platform", "linux/amd64", ref)
    assert store.resolve(ref).config.platform.architecture == "amd64"
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), flattened(store_root, ref, tmp_path / "flat"))
    bad = cli("pull", "--platform", "linux/s390x", ref, check=False)
    assert bad.returncode == 1 and "no manifest for platform linux/s390x" in bad.stderr


# --- push ----------------------------------------------------------------------------------------
def test_push_to_another_registry_round_trips_through_skopeo_and_umoci(
        cli: CLI, pushed: str, test_images: TestImages, tmp_path: Path) -> None:
    cli("pull", "-q", pushed)
    with running_registry(tmp_path / "reg2") as other:
        dest = f"{other.host}/copied/test:v3"
        p = cli("push", pushed, dest)
        digest = manifest_digest(pushed)
        size = len(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{pushed}").encode())
        assert p.stdout.strip() == f"v3: digest: {digest} size: {size}"
        assert "Pushed" in p.stderr
        assert manifest_digest(dest) == digest  # pull then push keeps the manifest digest
        out = tmp_path / "out"
        run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{dest}", f"oci:{out}:x")
        run("umoci", "unpack", "--image", f"{out}:x", tmp_path / "bundle")
        assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS),
                         tree_snapshot(tmp_path / "bundle" / "rootfs", **ROOTFS))
        again = cli("push", pushed, dest)
        assert "Layer already exists" in again.stderr and "Pushed" not in again.stderr


def test_push_mounts_across_repositories(cli: CLI, pushed: str, registry: Registry) -> None:
    cli("pull", "-q", pushed)
    dest = f"{registry.host}/elsewhere/mounted:v1"
    p = cli("push", pushed, dest)
    assert p.stderr.count("Mounted from test") == 5  # config and four layers
    assert manifest_digest(dest) == manifest_digest(pushed)


def test_push_opens_only_the_images_it_may_mount_from(cli: CLI, pushed: str, registry: Registry,
                                                     store_root: Path) -> None:
    """A push reads the manifests of the store's images tagged on its registry only (to mount blobs from their
    repositories), not every image of the store: one elsewhere whose manifest is unreadable (a store a killed
    command left) changes nothing and is not reported."""
    cli("pull", "-q", pushed)
    store = Store(store_root)
    base = store.resolve(pushed)
    with store.lock():
        raw = json.dumps({**base.config.data, "created": "2020-01-01T00:00:00Z"}).encode()
        config = Descriptor(OCI_CONFIG, store.put_blob_bytes(raw), len(raw))
        other = store.store_image(Manifest.build(config, list(base.manifest.layers)), raw,
                                  [Reference.parse("other.example/app:v1")], unpack=False)
    os.unlink(store.blob_path(other.manifest_desc.digest))
    p = cli("push", pushed, f"{registry.host}/elsewhere/again:v1")
    assert p.stderr.count("Mounted from test") == 5
    assert "skipping" not in p.stderr and "WARNING" not in p.stderr


def test_push_chunked_uploads(store_root: Path, pushed: str, tmp_path: Path, test_images: TestImages) -> None:
    ref = Reference.parse(pushed)
    store = Store(store_root)
    with RegistryClient(ref.registry) as client:
        pull(store, ref, client)
    with running_registry(tmp_path / "reg3") as other:
        dest = Reference.parse(f"{other.host}/chunky:v3")
        proxy = FaultProxy(other.host)
        try:
            with RegistryClient(proxy.host) as client:
                result = push(store, pushed, Reference(proxy.host, dest.repository, "v3"), client,
                              chunk_threshold=1000, chunk_size=256 * 1024)
            assert result.uploaded == 5
            assert sum(1 for m, _, _ in proxy.log if m == "PATCH") >= 5  # the ~1 MB layer went in pieces
        finally:
            proxy.close()
        assert manifest_digest(f"{other.host}/chunky:v3") == manifest_digest(pushed)
        run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{other.host}/chunky:v3",
            f"oci:{tmp_path / 'out'}:x")
        run("umoci", "unpack", "--image", f"{tmp_path / 'out'}:x", tmp_path / "bundle")
        assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS),
                         tree_snapshot(tmp_path / "bundle" / "rootfs", **ROOTFS))


def test_parallel_uploads_ping_the_registry_once(store_root: Path, pushed: str, tmp_path: Path) -> None:
    """The first requests of parallel transfers wait for one ``GET /v2/`` instead of each sending theirs."""
    ref = Reference.parse(pushed)
    store = Store(store_root)
    with RegistryClient(ref.registry) as client:
        pull(store, ref, client)
    with running_registry(tmp_path / "reg4") as other:
        proxy = FaultProxy(other.host)
        try:
            with RegistryClient(proxy.host) as client:
                result = push(store, pushed, Reference(proxy.host, "once", "v3"), client, jobs=5)
            assert result.uploaded == 5
            assert [e for e in proxy.log if e[:2] == ("GET", "/v2/")] == [("GET", "/v2/", None)]
        finally:
            proxy.close()


def test_push_needs_a_destination_for_an_id(cli: CLI, pushed: str, store_root: Path) -> None:
    cli("pull", "-q", pushed)
    image_id = Store(store_root).resolve(pushed).id.hex[:12]
    p = cli("push", image_id, check=False)
    assert p.returncode != 0 and "unionfs:" in p.stderr


# --- listing -------------------------------------------------------------------------------------
def test_search_catalog_and_tags(cli: CLI, pushed: str, registry: Registry) -> None:
    p = cli("search", "--registry", registry.host, "test")
    lines = p.stdout.splitlines()
    assert lines[0] == "NAME" and f"{registry.host}/test" in lines
    assert cli("search", "--registry", registry.host, "--limit", "1", "test").stdout.count("\n") == 2
    assert cli("search", "--registry", registry.host, "zzz-nothing").stdout == "NAME\n"
    assert "v3" in cli("tags", pushed.rsplit(":", 1)[0]).stdout.split()


# --- faults --------------------------------------------------------------------------------------
def test_missing_tag_is_one_clear_line(cli: CLI, pushed: str, store_root: Path) -> None:
    p = cli("pull", pushed.rsplit(":", 1)[0] + ":nope", check=False)
    assert p.returncode == 1
    err = [line for line in p.stderr.splitlines() if line.startswith("unionfs:")]
    assert err == [f"unionfs: {pushed.rsplit(':', 1)[0]}:nope: manifest unknown (MANIFEST_UNKNOWN)"]
    p = cli("tags", f"{Reference.parse(pushed).registry}/never/was", check=False)
    assert p.returncode == 1 and "NAME_UNKNOWN" in p.stderr


@pytest.mark.parametrize("where", ["proxy", "storage"])
def test_corrupted_blob_fails_and_stores_nothing(where: str, cli: CLI, store_root: Path, registry: Registry,
                                                test_images: TestImages, tmp_path: Path) -> None:
    ref = f"{registry.host}/corrupt-{where}:v3"
    skopeo_push(f"oci:{test_images.layout}:v3", ref)
    Store(store_root)  # an empty store, created
    before = store_state(store_root)
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    big = max(raw["layers"], key=lambda d: d["size"])["digest"]
    if where == "storage":
        # a private copy of the registry, so that the shared one stays intact
        with running_registry(tmp_path / "reg-corrupt") as reg:
            skopeo_push(f"oci:{test_images.layout}:v3", f"{reg.host}/c:v3")
            data = reg.blob_data_path(big)
            blob = bytearray(data.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            data.write_bytes(bytes(blob))
            p = cli("pull", f"{reg.host}/c:v3", check=False)
    else:
        proxy = FaultProxy(registry.host)
        try:
            proxy.corrupt_blob.add(big)
            p = cli("pull", f"{proxy.host}/corrupt-{where}:v3", check=False)
        finally:
            proxy.close()
    assert p.returncode == 1
    assert "digest mismatch" in p.stderr and big in p.stderr
    assert store_state(store_root) == before
    assert os.listdir(store_root / "tmp") == []


def test_killed_pull_then_second_pull_completes(store_root: Path, registry: Registry, test_images: TestImages,
                                                tmp_path: Path) -> None:
    ref = f"{registry.host}/killed:v3"
    skopeo_push(f"oci:{test_images.layout}:v3", ref)
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    big = max(raw["layers"], key=lambda d: d["size"])["digest"]
    proxy = FaultProxy(registry.host)
    proc = None
    try:
        proxy.stall_blob[big] = 200_000
        proc = subprocess.Popen(cli_argv("pull", "-q", "-j", "1", f"{proxy.host}/killed:v3", root=store_root),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proxy.stalled.wait(timeout=120), "the pull never reached the big blob"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
    store = Store(store_root)
    assert not store.has_blob(Digest.parse(big))  # no partial blob under its digest
    assert all(store.read_blob(d) is not None for d in store.blob_digests())  # every stored blob verifies
    assert b"killed" not in (store_root / "index.json").read_bytes()
    run_cli("pull", "-q", ref, root=store_root)
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), flattened(store_root, ref, tmp_path / "flat"))


# --- authentication ------------------------------------------------------------------------------
def test_htpasswd_login_pull_push_logout(cli: CLI, store_root: Path, pushed: str, test_images: TestImages,
                                         docker_config: Path, tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg-basic", "htpasswd") as reg:
        ref = f"{reg.host}/private:v3"
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", f"alice:{USERS['alice']}",
            f"oci:{test_images.layout}:v3", f"docker://{ref}")
        p = cli("pull", ref, check=False)
        assert p.returncode == 1 and f"unionfs login {reg.host}" in p.stderr
        p = cli("login", reg.host, "-u", "alice", "-p", "wrong", check=False)
        assert p.returncode == 1 and "wrong username or password" in p.stderr
        assert not (docker_config / "config.json").exists()
        p = run_cli("login", reg.host, "-u", "alice", "--password-stdin", input=USERS["alice"] + "\n", timeout=120,
                    check=False)
        assert p.returncode == 0 and "Login Succeeded" in p.stdout, p.stderr
        cfg = docker_config / "config.json"
        assert oct(cfg.stat().st_mode & 0o777) == "0o600"
        assert reg.host in json.loads(cfg.read_text())["auths"]
        cli("pull", "-q", ref)
        cli("push", ref, f"{reg.host}/private-copy:v3")
        assert manifest_digest_creds(f"{reg.host}/private-copy:v3") == manifest_digest_creds(ref)
        assert "Removing login credentials" in cli("logout", reg.host).stdout
        assert reg.host not in json.loads(cfg.read_text())["auths"]
        assert "Not logged in" in cli("logout", reg.host).stdout


def manifest_digest_creds(ref: str) -> str:
    out = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"alice:{USERS['alice']}",
              f"docker://{ref}")
    return str(Digest.of_bytes(out.encode()))


def test_token_auth_pull_anonymously_push_after_login(cli: CLI, store_root: Path, test_images: TestImages,
                                                      tmp_path: Path) -> None:
    with running_registry(tmp_path / "reg-token", "token") as reg:
        assert reg.token_server is not None
        ref = f"{reg.host}/team/app:v3"
        run("skopeo", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", f"alice:{USERS['alice']}",
            f"oci:{test_images.layout}:v3", f"docker://{ref}")
        cli("pull", "-q", ref)  # anonymous token, pull scope
        dest = f"{reg.host}/team/copy:v3"
        p = cli("push", ref, dest, check=False)
        assert p.returncode == 1 and "UNAUTHORIZED" in p.stderr and "unionfs login" in p.stderr
        p = cli("login", reg.host, "-u", "bob", "-p", "nope", check=False)
        assert p.returncode == 1 and "wrong username or password" in p.stderr
        cli("login", reg.host, "-u", "bob", "-p", USERS["bob"])
        reg.token_server.requests.clear()
        p = cli("push", ref, dest)
        assert p.stderr.count("Mounted from team/app") == 5
        assert any({"repository:team/copy:pull,push", "repository:team/app:pull"} <= set(r["scopes"])
                   and r["account"] == "bob" for r in reg.token_server.requests)
        with RegistryClient(reg.host, credentials=Credentials("bob", USERS["bob"]),
                            retry=RetryPolicy(attempts=2, backoff=0.01)) as c:
            assert c.get_manifest("team/copy", "v3").digest == c.get_manifest("team/app", "v3").digest


def test_pull_all_tags(cli: CLI, store_root: Path, registry: Registry, test_images: TestImages) -> None:
    for tag in ("a1", "a2"):
        skopeo_push(f"oci:{test_images.layout}:v3", f"{registry.host}/alltags:{tag}")
    p = cli("pull", "-q", "-a", f"{registry.host}/alltags")
    assert p.stdout.split() == [f"{registry.host}/alltags:a1", f"{registry.host}/alltags:a2"]
    store = Store(store_root)
    assert store.resolve(f"{registry.host}/alltags:a1").id == store.resolve(f"{registry.host}/alltags:a2").id
    bad = cli("pull", "-a", f"{registry.host}/alltags:a1", check=False)
    assert bad.returncode == 2 and "without a tag" in bad.stderr


def test_parallel_transfers_stop_at_the_first_failure() -> None:
    """``_run_parallel``: the transfers run on ``jobs`` threads; the first failure cancels the others (a
    running one sees the cancellation, one not started never starts) and is raised once all have stopped,
    a UnionfsError before any other error."""
    import threading
    import time

    from unionfs.errors import RegistryError
    from unionfs.registry.transfer import _Cancelled, _run_parallel

    started: list[str] = []
    stopped: list[str] = []

    def task(name: str, error: BaseException | None = None) -> Callable[[threading.Event], None]:
        def run(cancel: threading.Event) -> None:
            started.append(f"{name} on {threading.current_thread().name}")
            if error is not None:
                time.sleep(0.05)
                raise error
            if not cancel.wait(10):
                raise AssertionError("not cancelled")
            stopped.append(name)
            raise _Cancelled()
        return run

    with pytest.raises(RegistryError, match="gone"):
        _run_parallel([task("a"), task("b", ValueError("bad")), task("c", RegistryError("gone")), task("d")], 3)
    assert sorted(started) == ["a on xfer_0", "b on xfer_1", "c on xfer_2"]
    assert stopped == ["a"]
    ran: list[int] = []
    _run_parallel([lambda cancel, i=i: ran.append(i) for i in range(5)], 2)
    assert sorted(ran) == list(range(5))
