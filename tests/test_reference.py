"""Image references follow docker's rules."""

import pytest

from unionfs.errors import ReferenceError_
from unionfs.oci.reference import Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text,registry,repo,tag,digest,familiar", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
    ("user/app", "docker.io", "user/app", "latest", None, "user/app:latest"),
    ("docker.io/library/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "ubuntu:22.04"),
    ("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/a/b:c", "localhost:5000", "a/b", "c", None, "localhost:5000/a/b:c"),
    ("127.0.0.1:5000/x@" + D, "127.0.0.1:5000", "x", None, D, "127.0.0.1:5000/x@" + D),
    ("ghcr.io/o/r:t@" + D, "ghcr.io", "o/r", "t", D, "ghcr.io/o/r:t@" + D),
    ("a.b/c__d/e-f.g", "a.b", "c__d/e-f.g", "latest", None, "a.b/c__d/e-f.g:latest"),
])
def test_parse(text, registry, repo, tag, digest, familiar):
    r = Reference.parse(text)
    assert (r.registry, r.repository, r.tag) == (registry, repo, tag)
    assert (str(r.digest) if r.digest else None) == digest
    assert r.familiar == familiar
    assert Reference.parse(str(r)) == r


@pytest.mark.parametrize("text", ["", "Busybox", "a:b:c", "x@sha256:123", "-a", "a//b", "a/", "x:-tag",
                                  "a b", "busybox:" + "t" * 129, "x@md5:" + "0" * 32])
def test_invalid(text):
    with pytest.raises(ReferenceError_) as e:
        Reference.parse(text)
    assert "\n" not in str(e.value)


def test_with_tag_drops_digest():
    r = Reference.parse("ghcr.io/o/r@" + D).with_tag("v2")
    assert str(r) == "ghcr.io/o/r:v2"
