"""Manifests, indexes, configs and platform selection."""

import json

import pytest

from unionfs.errors import DigestError, ManifestError, PlatformError
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _manifest(**over):
    obj = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D1, "size": 10},
           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D2, "size": 5}]}
    obj.update(over)
    return json.dumps(obj, indent=3).encode()


def test_manifest_keeps_raw_bytes_and_digest():
    raw = _manifest()
    m = Manifest.parse(raw)
    assert m.raw == raw
    assert m.digest == Digest.of_bytes(raw)
    assert m.media_type == DOCKER_MANIFEST
    assert [str(d.digest) for d in m.layers] == [D2]


@pytest.mark.parametrize("raw,msg", [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (_manifest(schemaVersion=1), "schema1"),
    (_manifest(layers=[{"mediaType": "application/x-bzip", "digest": D2, "size": 1}]), "unsupported layer"),
    (_manifest(config={"digest": "sha256:zz", "size": 1}), "invalid digest"),
    (_manifest(config={"digest": D1, "size": -1}), "invalid size"),
])
def test_manifest_errors(raw, msg):
    with pytest.raises(ManifestError, match=msg):
        Manifest.parse(raw)


def _index():
    return json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": D1, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": DOCKER_MANIFEST, "digest": D2, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}).encode()


def test_index_selects_platform():
    idx = Index.parse(_index())
    assert str(idx.select(Platform.parse("linux/amd64")).digest) == D2
    assert str(idx.select(Platform.parse("linux/aarch64")).digest) == D1
    assert str(idx.select(Platform.parse("linux/arm64/v8")).digest) == D1
    with pytest.raises(PlatformError, match="offered: linux/amd64, linux/arm64/v8"):
        idx.select(Platform.parse("linux/s390x"))


def test_platform_parse_errors():
    with pytest.raises(PlatformError):
        Platform.parse("linux")


def test_config_diff_ids_and_build():
    cfg = ImageConfig.build({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D1]}})
    assert cfg.diff_ids == [Digest.parse(D1)]
    assert cfg.digest == Digest.of_bytes(cfg.raw)
    with pytest.raises(ManifestError, match="diff_ids"):
        ImageConfig.parse(b'{"rootfs": {}}')
    m = Manifest.build(Descriptor(OCI_CONFIG, cfg.digest, len(cfg.raw)), [Descriptor(OCI_LAYER_GZIP, Digest.parse(D2), 5)])
    assert Manifest.parse(m.raw).config.digest == cfg.digest


def test_digest_parse():
    assert str(Digest.parse(D1)) == D1
    for bad in ("sha256:abc", "md5:" + "0" * 32, "nope", "sha256:" + "G" * 64):
        with pytest.raises(DigestError):
            Digest.parse(bad)
