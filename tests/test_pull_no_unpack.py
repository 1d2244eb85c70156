"""``pull --no-unpack``: the blobs are downloaded and verified and the image is recorded, its layers extracted
only when something needs them (``Store.ensure_layers``), against a real ``docker-registry``.

* what is stored: blobs, a tag, no layer directory; ``images`` and ``inspect`` show what a full pull shows;
* first use (``cat``, a container) extracts the layers, and the tree equals umoci's rootfs;
* ``save``, ``push``, ``rmi`` (with its garbage collection) work on an image never extracted;
* a registry whose config lies about a DiffID: the blobs verify (the pull succeeds), the first use fails with
  one line and leaves no layer behind, as a full pull of it fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from support.cli import run_cli
from support.images import flatten_layers, run
from support.registry import (  # noqa: F401 (fixtures)
    Registry,
    docker_config_fixture,
    registry_fixture,
    running_registry,
)
from support.tar import build, file, gz, image_config, sha_of
from support.tree import ROOTFS, assert_same_tree, tree_snapshot
from test_pull_push import pushed as umoci_image_pushed  # noqa: F401 (the fixture ``pushed``)

from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from unionfs.registry.client import RegistryClient
from unionfs.store.store import Store

if TYPE_CHECKING:
    from support.images import TestImages

CLI = Callable[..., subprocess.CompletedProcess[str]]


def layer_dirs(root: Path) -> list[str]:
    return sorted(os.listdir(root / "layers"))


def test_pull_no_unpack_stores_the_blobs_and_no_layer(cli: CLI, store_root: Path, pushed: str,
                                                       tmp_path: Path) -> None:
    p = cli("pull", "--no-unpack", pushed)
    assert p.stdout.strip() == pushed
    assert "Download complete" in p.stderr and "Extracting layers" not in p.stderr
    assert layer_dirs(store_root) == []
    image = Store(store_root).resolve(pushed)
    assert all(Store(store_root).has_blob(d.digest) for d in (image.manifest.config, *image.manifest.layers))
    assert [x for x in os.listdir(store_root / "tmp")] == []
    # images and inspect tell the same as after a full pull (sizes are the blobs', extracted or not)
    full = tmp_path / "full"
    run_cli("pull", "-q", pushed, root=full)
    for verb in (("images",), ("images", "--digests", "--no-trunc"), ("inspect", pushed)):
        assert _same_age(cli(*verb).stdout) == _same_age(run_cli(*verb, root=full).stdout)
    again = cli("pull", "--no-unpack", pushed)
    assert "Image is up to date" in again.stderr and "Downloading" not in again.stderr


def test_first_use_extracts_the_layers(cli: CLI, store_root: Path, pushed: str, test_images: TestImages,
                                       tmp_path: Path) -> None:
    cli("pull", "-q", "--no-unpack", pushed)
    assert layer_dirs(store_root) == []
    cli("cat", pushed, "/etc/passwd")  # needs the layers: extracted now
    image = Store(store_root).resolve(pushed)
    assert layer_dirs(store_root) == sorted({d.hex for d in image.config.diff_ids})
    flatten_layers([Store(store_root).layer_path(d) for d in image.config.diff_ids], tmp_path / "flat")
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS), tree_snapshot(tmp_path / "flat", **ROOTFS))
    assert os.listdir(store_root / "tmp") == []


def test_a_container_of_an_image_never_extracted(store_root: Path, pushed: str) -> None:
    run_cli("pull", "-q", "--no-unpack", pushed, root=store_root)
    plan = Store(store_root).prepare_container(pushed, "c1")  # what mount and run ask
    assert all(Path(p).is_dir() for p in plan.lowers)
    assert layer_dirs(store_root) != []


def test_save_push_and_rmi_without_extracting(cli: CLI, store_root: Path, pushed: str, tmp_path: Path) -> None:
    cli("pull", "-q", "--no-unpack", pushed)
    archive = tmp_path / "img.tar"
    cli("save", pushed, "-o", archive)
    assert layer_dirs(store_root) == []
    other = tmp_path / "other"
    run_cli("load", "-i", archive, root=other)
    assert run_cli("inspect", "-f", "{{.Id}}", pushed, root=other).stdout == cli("inspect", "-f", "{{.Id}}",
                                                                                  pushed).stdout
    with running_registry(tmp_path / "reg2") as dest_reg:
        dest = f"{dest_reg.host}/copied:v3"
        p = cli("push", pushed, dest)
        assert "Pushed" in p.stderr
        digest = run("skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{dest}")
        assert digest.strip() == str(Store(store_root).resolve(pushed).manifest_desc.digest)
    assert layer_dirs(store_root) == []
    cli("rmi", pushed)
    assert os.listdir(store_root / "blobs" / "sha256") == []
    assert json.loads((store_root / "index.json").read_text())["manifests"] == []


def _lying_image(client: RegistryClient, repository: str) -> str:
    """Push an image whose config gives its one layer the DiffID of another tar; returns its reference."""
    tar, other = build([file("hello", b"hi\n")]), build([file("hello", b"bye\n")])
    layer = gz(tar)
    config = json.dumps(image_config([sha_of(other)])).encode()
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": sha_of(config), "size": len(config)},
                      "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha_of(layer), "size": len(layer)}]}
                     ).encode()
    for data in (config, layer):
        client.push_blob(repository, Digest.parse(sha_of(data)), len(data), lambda d=data: io.BytesIO(d))
    client.put_manifest(repository, "v1", raw, OCI_MANIFEST)
    return f"{client.registry}/{repository}:v1"


def test_a_lying_diff_id_fails_at_first_use_and_leaves_no_layer(cli: CLI, store_root: Path,
                                                                registry: Registry, tmp_path: Path) -> None:
    with RegistryClient(registry.host) as client:
        ref = _lying_image(client, "liar")
    full = run_cli("pull", "-q", ref, root=tmp_path / "full", check=False)
    assert full.returncode != 0 and "DiffID mismatch" in full.stderr
    cli("pull", "-q", "--no-unpack", ref)  # the blobs are what their digests say: recorded
    p = cli("cat", ref, "/hello", check=False)
    assert p.returncode != 0
    assert [line for line in p.stderr.splitlines() if line.startswith("unionfs:")] == \
        [line for line in full.stderr.splitlines() if line.startswith("unionfs:")]
    assert layer_dirs(store_root) == [] and os.listdir(store_root / "tmp") == []


def _same_age(listing: str) -> str:
    """``images`` output with its relative ages ("1 minute ago") and the column widths they set made equal:
    two listings taken seconds apart may straddle a minute."""
    return re.sub(r" +", " ", re.sub(r"\b(About an?|an?|\d+) \w+ ago\b", "AGE ago", listing))
