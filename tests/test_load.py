"""Loading images made by umoci and skopeo, and every store command, through the CLI.

The reference for every tree is ``umoci unpack``'s rootfs: our extracted layers, applied in order, must equal it
(paths, types, modes, owners, sizes, contents, link targets, xattrs, hardlink groups).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from support.images import ImageSet, flatten_layers, run
from support.tree import ROOTFS, assert_same_tree, tree_snapshot

from unionfs.store.store import Store

VARIANTS = {
    "docker_archive": "test:v3",
    "oci_archive": "test:v3",
    "zstd_layout": "test:v3",
    "plain_layout": "test:v3",
    "layout": "v3",
}


def assert_image_equals_rootfs(store_root: Path, ref: str, rootfs: Path, work: Path) -> None:
    store = Store(store_root)
    img = store.resolve(ref)
    layers = [store.layer_path(d) for d in img.config.diff_ids]
    assert all(p.is_dir() for p in layers)
    flat = work / "flat"
    shutil.rmtree(flat, ignore_errors=True)
    flatten_layers(layers, flat)
    assert_same_tree(tree_snapshot(rootfs, **ROOTFS), tree_snapshot(flat, **ROOTFS), ("umoci", "our layers"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_load_equals_umoci_unpack(variant: str, test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    out = cli("load", "-i", getattr(test_images, variant)).stdout
    assert f"Loaded image: {VARIANTS[variant]}" in out
    assert_image_equals_rootfs(store_root, VARIANTS[variant], test_images.rootfs, tmp_path)


def _docker_legacy_archive(test_images: ImageSet, dest: Path) -> Path:
    """Rearrange skopeo's docker-archive into docker <= 24's layout: ``<id>/layer.tar`` directories, a second
    image that shares the layers through ``layer.tar`` symlinks, ``json`` and ``VERSION`` files."""
    with tarfile.open(test_images.docker_archive) as src:
        manifest = json.load(src.extractfile("manifest.json"))[0]
        config = src.extractfile(manifest["Config"]).read()
        layers = [src.extractfile(p).read() for p in manifest["Layers"]]
    out = dest / "legacy.tar"
    with tarfile.open(out, "w") as t:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        def link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
        names = []
        for i, data in enumerate(layers):
            d = f"{i:064x}"
            add(f"{d}/VERSION", b"1.0")
            add(f"{d}/json", b"{}")
            add(f"{d}/layer.tar", data)
            names.append(d)
        alias = []
        for i, d in enumerate(names):
            a = f"{i + 100:064x}"
            link(f"{a}/layer.tar", f"../{d}/layer.tar")
            alias.append(f"{a}/layer.tar")
        cfg_name = "0" * 60 + "cfg0.json"
        add(cfg_name, config)
        add("manifest.json", json.dumps([
            {"Config": cfg_name, "RepoTags": ["legacy/img:one"], "Layers": [f"{d}/layer.tar" for d in names]},
            {"Config": cfg_name, "RepoTags": ["legacy/img:two"], "Layers": alias},
        ]).encode())
        add("repositories", b"{}")
    return out


def _docker25_archive(test_images: ImageSet, dest: Path) -> Path:
    """docker >= 25's layout: an OCI layout (from skopeo, uncompressed layers) plus a manifest.json whose Layers
    point into ``blobs/sha256``."""
    layout = test_images.plain_layout
    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads((layout / "blobs/sha256" / mdesc["digest"].split(":")[1]).read_text())
    out = dest / "docker25.tar"
    with tarfile.open(out, "w") as t:
        t.add(layout, arcname=".")
        data = json.dumps([{"Config": "blobs/sha256/" + manifest["config"]["digest"].split(":")[1],
                            "RepoTags": ["docker25:latest"],
                            "Layers": ["blobs/sha256/" + l["digest"].split(":")[1] for l in manifest["layers"]]}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return out


def test_load_docker_legacy_layout_with_layer_symlinks(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    out = cli("load", "-i", _docker_legacy_archive(test_images, tmp_path)).stdout
    assert "Loaded image: legacy/img:one" in out and "Loaded image: legacy/img:two" in out
    assert_image_equals_rootfs(store_root, "legacy/img:two", test_images.rootfs, tmp_path)


def test_load_docker25_layout(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    assert "Loaded image: docker25:latest" in cli("load", "-i", _docker25_archive(test_images, tmp_path)).stdout
    assert_image_equals_rootfs(store_root, "docker25", test_images.rootfs, tmp_path)


def test_third_party_tools_read_the_store(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    cli("load", "-i", test_images.oci_archive)
    ref = "docker.io/library/test:v3"
    info = json.loads(run("skopeo", "inspect", f"oci:{store_root}:{ref}"))
    assert len(info["Layers"]) == 4
    run("umoci", "unpack", "--image", f"{store_root}:{ref}", tmp_path / "bundle")
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS),
                     tree_snapshot(tmp_path / "bundle" / "rootfs", **ROOTFS))


@pytest.mark.parametrize("fmt,transport", [("docker-archive", "docker-archive"), ("oci-archive", "oci-archive")])
def test_save_is_read_by_skopeo(fmt: str, transport: str, test_images: ImageSet, cli, tmp_path: Path) -> None:
    cli("load", "-i", test_images.zstd_layout if fmt == "docker-archive" else test_images.oci_archive)
    archive = tmp_path / "saved.tar"
    cli("save", "test:v3", "-o", archive, "--format", fmt)
    run("skopeo", "copy", "-q", f"{transport}:{archive}", f"oci:{tmp_path / 'copy'}:x")
    run("umoci", "unpack", "--image", f"{tmp_path / 'copy'}:x", tmp_path / "bundle")
    assert_same_tree(tree_snapshot(test_images.rootfs, **ROOTFS),
                     tree_snapshot(tmp_path / "bundle" / "rootfs", **ROOTFS))
    # and it loads back into a fresh store with the same image id
    other = tmp_path / "other-store"
    from support.cli import run_cli
    assert "Loaded image: test:v3" in run_cli("load", "-i", archive, root=other).stdout
    assert Store(other).resolve("test:v3").id == Store(tmp_path / "store").resolve("test:v3").id


def test_images_inspect_history_tag(test_images: ImageSet, cli) -> None:
    cli("load", "-i", test_images.oci_archive)
    cli("tag", "test:v3", "localhost:5000/copy:latest")
    table = cli("images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert any(l.split()[:2] == ["test", "v3"] for l in table[1:])
    assert any(l.split()[:2] == ["localhost:5000/copy", "latest"] for l in table[1:])
    rows = [json.loads(l) for l in cli("images", "--format", "json").stdout.splitlines()]
    assert {r["ID"] for r in rows} == {rows[0]["ID"]} and len(rows) == 2
    assert cli("images", "-q").stdout.split() == [rows[0]["ID"]]
    data = json.loads(cli("inspect", "test:v3").stdout)[0]
    assert data["Id"] == rows[0]["FullID"]
    assert len(data["RootFS"]["Layers"]) == 4 and len(data["Layers"]) == 4
    assert sorted(data["RepoTags"]) == ["localhost:5000/copy:latest", "test:v3"]  # every tag, as docker
    assert cli("inspect", "-f", "{{.Id}}", rows[0]["ID"]).stdout.strip() == rows[0]["FullID"]
    hist = cli("history", "test:v3").stdout.splitlines()
    assert hist[0].split()[:3] == ["IMAGE", "CREATED", "CREATED"] and len(hist) >= 4
    assert "umoci insert" in cli("history", "--no-trunc", "test:v3").stdout


def test_rmi_gc_and_prune(test_images: ImageSet, cli, store_root: Path) -> None:
    cli("load", "-i", test_images.layout)  # base, v1, v2, v3a, v3 share their lower layers
    store = Store(store_root)
    v2, v3 = store.resolve("v2"), store.resolve("v3")
    shared = store.layer_path(v2.config.diff_ids[0])
    own = store.layer_path(v3.config.diff_ids[-1])
    assert shared.is_dir() and own.is_dir()
    out = cli("rmi", "v3").stdout
    assert "Untagged: v3:latest" in out and "Deleted:" in out
    assert shared.is_dir() and not store.has_blob(v3.manifest_desc.digest)
    assert not own.exists()  # the whiteout layer only v3 had
    assert store.layer_path(v3.config.diff_ids[-2]).is_dir()  # still v3a's
    p = cli("rmi", "v3", check=False)
    assert p.returncode == 1 and p.stderr.strip() == "unionfs: no such image: v3:latest"
    # an image a container uses is refused unless -f
    store.prepare_container("v2", "c1")
    p = cli("rmi", "v2", check=False)
    assert p.returncode == 1 and "used by container c1" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "Untagged: v2:latest" in cli("rmi", "-f", "v2").stdout
    assert shared.is_dir()  # the container keeps its layers
    store.remove_container("c1")
    cli("rmi", "v1", "v3a", "base")
    assert list((store_root / "layers").iterdir()) == []
    assert list((store_root / "blobs" / "sha256").iterdir()) == []
    # prune removes garbage a killed command could leave: unreferenced blobs, staging files
    stray = store.put_blob_bytes(b"orphan")
    (store_root / "tmp" / "blob-killed").write_bytes(b"partial")
    assert f"Deleted: {stray}" in cli("prune").stdout
    assert not store.has_blob(stray) and list((store_root / "tmp").iterdir()) == []
    assert cli("prune").stdout.strip() == "Nothing to prune"


def test_import_rootfs_tarball(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w:gz", format=tarfile.PAX_FORMAT) as t:
        for name in sorted(os.listdir(test_images.rootfs)):
            t.add(test_images.rootfs / name, arcname=name)
    image_id = cli("import", tarball, "imported:1", "-m", "from a test", "-c", "CMD [\"/bin/sh\"]").stdout.strip()
    data = json.loads(cli("inspect", "imported:1").stdout)[0]
    assert data["Id"] == image_id and data["Config"]["Cmd"] == ["/bin/sh"]
    assert data["History"][0]["comment"] == "from a test"
    assert_image_equals_rootfs(store_root, "imported:1", test_images.rootfs, tmp_path)


def test_hostile_layer_changes_nothing(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    cli("load", "-i", test_images.oci_archive)
    before = tree_snapshot(store_root)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    data = layer.getvalue()
    import hashlib
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(data).hexdigest()]}}).encode()
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as t:
        for name, blob in (("l/layer.tar", data), ("c.json", cfg),
                           ("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["evil:1"],
                                                          "Layers": ["l/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    p = cli("load", "-i", archive, check=False)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "escaped" in p.stderr
    assert not (tmp_path / "escaped").exists() and not (store_root / "escaped").exists()
    assert_same_tree(before, tree_snapshot(store_root))


def test_wrong_digest_changes_nothing(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    layout = tmp_path / "tampered"
    shutil.copytree(test_images.zstd_layout, layout)
    blobs = sorted((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1]  # the biggest blob is a layer
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    Store(store_root)
    before = tree_snapshot(store_root)
    p = cli("load", "-i", layout, check=False)
    assert p.returncode == 1 and "digest mismatch" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert_same_tree(before, tree_snapshot(store_root))


@pytest.mark.parametrize("args,message", [
    (("inspect", "missing:1"), "no such image: missing:1"),
    (("rmi", "missing"), "no such image: missing:latest"),
    (("load", "-i", "/nonexistent.tar"), "/nonexistent.tar: no such file or directory"),
    (("tag", "missing", "x:1"), "no such image: missing:latest"),
    (("images", "BAD"), "invalid reference format"),
])
def test_errors_are_one_line(args: tuple[str, ...], message: str, cli) -> None:
    p = cli(*args, check=False)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and message in p.stderr


@pytest.mark.parametrize("command", ["load", "import", "images", "inspect", "history", "tag", "rmi", "prune", "save"])
def test_every_command_has_help(command: str, cli) -> None:
    assert "usage: unionfs " + command in cli(command, "--help").stdout


def test_load_index_picks_platform(test_images: ImageSet, cli, store_root: Path, tmp_path: Path) -> None:
    """An OCI layout whose index.json names an image index with two platforms: the host's is picked by
    default, ``--platform`` picks the other."""
    layout = tmp_path / "multi"
    shutil.copytree(test_images.layout, layout)
    index = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    v3, v1 = dict(by_tag["v3"]), dict(by_tag["v1"])
    v3.pop("annotations"), v1.pop("annotations")
    v3["platform"] = {"os": "linux", "architecture": "amd64"}
    v1["platform"] = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [v1, v3]}).encode()
    import hashlib
    digest = hashlib.sha256(inner).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(inner)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(inner),
         "annotations": {"org.opencontainers.image.ref.name": "multi:1"}}]}))
    cli("load", "-i", layout, "--platform", "linux/arm64/v8")
    store = Store(store_root)
    assert store.resolve("multi:1").manifest_desc.digest.hex == v1["digest"].split(":")[1]
    cli("rmi", "multi:1")
    cli("load", "-i", layout, "--platform", "linux/amd64")
    assert store.resolve("multi:1").manifest_desc.digest.hex == v3["digest"].split(":")[1]
    p = cli("load", "-i", layout, "--platform", "linux/s390x", check=False)
    assert p.returncode == 1 and "no manifest for platform linux/s390x" in p.stderr


def test_a_new_blob_paired_with_a_stored_layer_is_checked(tmp_path: Path) -> None:
    """An archive whose config gives a new layer blob the DiffID of a layer the store already holds (extracted
    from another image) is refused, and leaves the store as it was: the store never keeps a blob under a DiffID
    its content does not have (before: the layer was not unpacked again, so nothing compared them)."""
    from support.busybox import store_state
    from support.cli import run_cli
    from support.tar import build, docker_archive, file, image_config, sha_of

    honest, other = build([file("a", b"honest")]), build([file("a", b"something else")])
    root = tmp_path / "store"
    run_cli("load", "-i", docker_archive(tmp_path / "honest.tar", [(honest, honest)], repo_tags=("honest:1",)),
            root=root)
    before = store_state(root)
    lying = docker_archive(tmp_path / "lying.tar", [(other, other)], repo_tags=("lying:1",),
                           config=image_config([sha_of(honest)]))
    r = run_cli("load", "-i", lying, root=root, check=False)
    assert r.returncode != 0 and "digest mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert store_state(root) == before


def test_a_stored_blob_paired_with_another_stored_layer_is_checked(tmp_path: Path) -> None:
    """The same with a blob the store holds already (another image's layer): its DiffID is noted when it is
    verified, and a pairing with another DiffID is checked (before: neither was new, so nothing was)."""
    from support.busybox import store_state
    from support.cli import run_cli
    from support.tar import build, docker_archive, file, image_config, sha_of

    first, second = build([file("a", b"first")]), build([file("a", b"second")])
    root = tmp_path / "store"
    for name, layer in (("first", first), ("second", second)):
        run_cli("load", "-i", docker_archive(tmp_path / f"{name}.tar", [(layer, layer)], repo_tags=(f"{name}:1",)),
                root=root)
    before = store_state(root)
    lying = docker_archive(tmp_path / "lying.tar", [(first, first)], repo_tags=("lying:1",),
                           config=image_config([sha_of(second)]))
    r = run_cli("load", "-i", lying, root=root, check=False)
    assert r.returncode != 0 and "digest mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert store_state(root) == before
