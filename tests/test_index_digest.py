"""A pulled index is kept (issue 17, point 2), against a real ``docker-registry``.

* ``pull name@sha256:<index>``: the index's bytes are a verified blob; that reference resolves to the host's
  image afterwards, also with the registry gone; ``inspect`` lists it in RepoDigests, as docker does;
* ``pull name:tag`` through an index keeps it too, on the tag's entry;
* garbage collection: ``rmi`` of the reference, of the last tag or of the image id removes the index with the
  image, and only when nothing else names it; ``prune`` keeps a digest reference (it is no dangling image),
  ``prune -a`` removes it;
* an index whose bytes do not match its digest is refused and changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
from support.images import run
from support.registry import Registry, docker_config_fixture, registry_fixture, running_registry  # noqa: F401 (fixtures)
from test_pull_push import _make_index_layout, manifest_digest, skopeo_push

from unionfs.errors import DigestError
from unionfs.oci.digest import Digest
from unionfs.oci.reference import Reference
from unionfs.store.store import INDEX_REF_ANNOTATION, Store

if TYPE_CHECKING:
    from support.images import TestImages

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def multi(registry: Registry, test_images: TestImages, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[str, str, str]:
    """``HOST/multi:v3``, an index (linux/amd64 and linux/arm64/v8 of the test image): the tagged reference,
    the index digest and the digest of the amd64 manifest."""
    layout = tmp_path_factory.mktemp("layout") / "multi"
    _make_index_layout(test_images, layout)
    ref = f"{registry.host}/multi:v3"
    skopeo_push(f"oci:{layout}:multi", ref, "--all")
    index = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    amd = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    return ref, manifest_digest(ref), amd


def _by_digest(tagged: str, digest: str) -> str:
    return tagged.rsplit(":", 1)[0] + "@" + digest


def _blobs(root: Path) -> set[str]:
    return {"sha256:" + n for n in os.listdir(root / "blobs/sha256")}


def _inspect(cli: CLI, ref: str) -> dict[str, object]:
    return json.loads(cli("inspect", ref).stdout)[0]


def test_pull_by_index_digest_keeps_and_resolves_it(cli: CLI, store_root: Path, multi: tuple[str, str, str],
                                                    test_images: TestImages, tmp_path: Path) -> None:
    tagged, index, amd = multi
    by_index = _by_digest(tagged, index)
    assert cli("pull", "-q", by_index).stdout == by_index + "\n"
    store = Store(store_root)
    assert Digest.of_bytes(store.read_blob(Digest.parse(index))) == Digest.parse(index)  # raw bytes, verified
    image = store.resolve(by_index)
    assert str(image.manifest_desc.digest) == amd and image.config.platform.architecture == "amd64"
    assert [str(d) for d in image.digests] == [by_index]
    data = _inspect(cli, by_index)
    assert data["RepoDigests"] == [by_index] and data["RepoTags"] == []
    assert data["ManifestDigest"] == amd
    # as docker lists an image pulled by digest: its repository, the tag <none>
    assert cli("images", "--format", "{{.Repository}} {{.Tag}}").stdout == f"{by_index.split('@')[0]} <none>\n"
    assert "Downloading" not in cli("pull", by_index).stderr  # pulling it again fetches no blob
    entries = json.loads((store_root / "index.json").read_text())["manifests"]
    assert [e["annotations"][INDEX_REF_ANNOTATION] for e in entries] == [by_index]
    from unionfs.store.usage import disk_usage  # the kept index is the image's, not unreferenced data

    assert disk_usage(store).row("Unreferenced").total == 0


def test_index_digest_resolves_offline(cli: CLI, store_root: Path, test_images: TestImages,
                                       tmp_path: Path) -> None:
    layout = tmp_path / "multi"
    _make_index_layout(test_images, layout)
    with running_registry(tmp_path / "reg-offline") as reg:
        tagged = f"{reg.host}/gone:v3"
        skopeo_push(f"oci:{layout}:multi", tagged, "--all")
        index = manifest_digest(tagged)
        by_index = _by_digest(tagged, index)
        cli("pull", "-q", by_index)
    # the registry is stopped: what follows is the store alone
    assert _inspect(cli, by_index)["RepoDigests"] == [by_index]
    assert "Downloading" not in cli("pull", by_index, check=False).stderr
    image = Store(store_root).resolve(by_index)
    assert image.config.platform.architecture == "amd64"
    assert str(Store(store_root).resolve(index).manifest_desc.digest) == str(image.manifest_desc.digest)


def test_pull_by_tag_through_index_records_it(cli: CLI, store_root: Path, multi: tuple[str, str, str]) -> None:
    tagged, index, amd = multi
    by_index = _by_digest(tagged, index)
    # as docker: the digest printed is what the tag names, the index (not the platform's manifest)
    assert f"Digest: {index}\n" in cli("pull", tagged).stderr
    data = _inspect(cli, tagged)
    assert data["RepoTags"] == [Reference.parse(tagged).familiar] and data["RepoDigests"] == [by_index]
    assert str(Store(store_root).resolve(by_index).manifest_desc.digest) == amd
    assert index in _blobs(store_root)


def test_rmi_of_the_index_reference_removes_the_index_and_the_image(cli: CLI, store_root: Path,
                                                                    multi: tuple[str, str, str]) -> None:
    tagged, index, amd = multi
    by_index = _by_digest(tagged, index)
    cli("pull", "-q", by_index)
    assert {index, amd} <= _blobs(store_root)
    out = cli("rmi", by_index).stdout.splitlines()
    assert out[0] == f"Untagged: {Reference.parse(by_index).familiar}"
    assert f"Deleted: {index}" in out and f"Deleted: {amd}" in out
    assert _blobs(store_root) == set() and os.listdir(store_root / "layers") == []
    assert json.loads((store_root / "index.json").read_text())["manifests"] == []
    p = cli("inspect", by_index, check=False)
    assert p.returncode == 1 and "no such image" in p.stderr


def test_rmi_keeps_the_index_while_something_names_it(cli: CLI, store_root: Path,
                                                      multi: tuple[str, str, str]) -> None:
    tagged, index, amd = multi
    by_index = _by_digest(tagged, index)
    cli("pull", "-q", tagged)
    other = tagged.rsplit(":", 1)[0] + ":other"
    cli("tag", tagged, other)
    cli("rmi", tagged)  # the index ref lives on the removed tag's entry only: the index goes, the image stays
    assert index not in _blobs(store_root) and amd in _blobs(store_root)
    cli("pull", "-q", by_index)  # the index again, as a digest reference of the image still tagged :other
    assert index in _blobs(store_root)
    assert _inspect(cli, other)["RepoDigests"] == [by_index]
    out = cli("rmi", other).stdout.splitlines()  # the last tag: its digest references go with it
    assert out[:2] == [f"Untagged: {Reference.parse(other).familiar}",
                       f"Untagged: {Reference.parse(by_index).familiar}"]
    assert _blobs(store_root) == set()


def test_rmi_by_id_removes_index_references(cli: CLI, store_root: Path, multi: tuple[str, str, str]) -> None:
    tagged, index, _ = multi
    cli("pull", "-q", _by_digest(tagged, index))
    image_id = Store(store_root).resolve(_by_digest(tagged, index)).id
    cli("rmi", image_id.short)
    assert _blobs(store_root) == set()


def test_prune_keeps_a_digest_reference_and_prune_all_removes_it(cli: CLI, store_root: Path,
                                                                 multi: tuple[str, str, str]) -> None:
    tagged, index, _ = multi
    by_index = _by_digest(tagged, index)
    cli("pull", "-q", by_index)
    before = _blobs(store_root)
    cli("prune")
    assert _blobs(store_root) == before  # a digest reference is no dangling image
    assert _inspect(cli, by_index)["RepoDigests"] == [by_index]
    out = cli("prune", "-a").stdout
    assert f"Untagged: {Reference.parse(by_index).familiar}" in out
    assert _blobs(store_root) == set()


def test_an_index_whose_bytes_do_not_match_changes_nothing(cli: CLI, store_root: Path,
                                                           multi: tuple[str, str, str]) -> None:
    tagged, index, _ = multi
    cli("pull", "-q", tagged)
    store = Store(store_root)
    image = store.resolve(tagged)
    before = ((store_root / "index.json").read_bytes(), _blobs(store_root))
    wrong = Reference.parse(_by_digest(tagged, str(Digest.of_bytes(b"another index"))))
    with pytest.raises(DigestError):
        store.store_image(image.manifest, store.read_blob(image.id), [], (wrong, b'{"schemaVersion":2}'))
    assert ((store_root / "index.json").read_bytes(), _blobs(store_root)) == before


def test_the_platform_pulled_last_is_what_the_index_digest_names(cli: CLI, store_root: Path,
                                                                 multi: tuple[str, str, str]) -> None:
    tagged, index, amd = multi
    by_index = _by_digest(tagged, index)
    cli("pull", "-q", by_index)
    cli("pull", "-q", "--platform", "linux/arm64/v8", by_index)
    store = Store(store_root)
    image = store.resolve(by_index)
    assert image.config.platform.architecture == "arm64" and str(image.manifest_desc.digest) != amd
    entries = json.loads((store_root / "index.json").read_text())["manifests"]
    assert [e["digest"] for e in entries] == [str(image.manifest_desc.digest)]
    cli("rmi", by_index)
    assert _blobs(store_root) == set()
