"""Image references with docker's rules (pure).

``busybox`` is ``docker.io/library/busybox:latest``; ``localhost:5000/a/b@sha256:...`` has a registry,
a repository and a digest. A first component is a registry when it holds a ``.`` or ``:`` or is
``localhost``. ``str(ref)`` gives the fully qualified form; ``ref.familiar`` the short one docker shows.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from unionfs.errors import DigestError, ReferenceError_, shown
from unionfs.oci.digest import Digest

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}

# docker's grammar (distribution/reference), ASCII only; always applied with fullmatch (``$`` would also
# match before a final newline).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DOMAIN = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                     r"(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?", re.ASCII)
#: Longest reference text looked at (a name is at most 255 characters, a tag 128, a digest ~135).
MAX_REFERENCE = 1024


class Reference(NamedTuple):
    """A parsed image reference. ``tag`` and ``digest`` may both be set; at least one is."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, default_tag: str | None = DEFAULT_TAG) -> "Reference":
        """Parse ``text`` with docker's defaults; raise ReferenceError_ with a one-line reason (any input,
        a non-string included; what it echoes of ``text`` is escaped and bounded)."""
        if not isinstance(text, str):
            raise ReferenceError_(f"invalid reference format: expected a string, got {shown(text)}")
        if not text or text != text.strip() or len(text) > MAX_REFERENCE:
            raise ReferenceError_(f"invalid reference format: {shown(text)}")
        rest, digest = text, None
        if "@" in rest:
            rest, _, dig = rest.partition("@")
            try:
                digest = Digest.parse(dig)
            except DigestError as e:
                raise ReferenceError_(f"invalid reference format: {shown(text)}: {e}") from None
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1:]
            if not _TAG.fullmatch(tag):
                raise ReferenceError_(f"invalid reference format: {shown(text)}: bad tag {shown(tag)}")
        parts = rest.split("/")
        if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
            registry, path = parts[0], parts[1:]
            if not _DOMAIN.fullmatch(registry):
                raise ReferenceError_(f"invalid reference format: {shown(text)}: bad registry {shown(registry)}")
        else:
            registry, path = DEFAULT_REGISTRY, parts
        if registry in _LEGACY_REGISTRIES:
            registry = DEFAULT_REGISTRY
        if not path or not all(_COMPONENT.fullmatch(p) for p in path):
            if any(p != p.lower() for p in path):
                raise ReferenceError_(f"invalid reference format: repository name must be lowercase: {shown(text)}")
            raise ReferenceError_(f"invalid reference format: {shown(text)}")
        if registry == DEFAULT_REGISTRY and len(path) == 1:
            path = ["library", *path]
        repository = "/".join(path)
        if len(registry) + 1 + len(repository) > 255:
            raise ReferenceError_(f"invalid reference format: repository name too long: {shown(text)}")
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``, fully qualified."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The repository as docker shows it (``busybox``, ``user/app``, ``localhost:5000/app``)."""
        if self.registry == DEFAULT_REGISTRY:
            repo = self.repository
            return repo[len("library/"):] if repo.startswith("library/") and repo.count("/") == 1 else repo
        return self.name

    @property
    def familiar(self) -> str:
        """The short form docker prints, with tag and/or digest."""
        return self._suffix(self.familiar_name)

    def with_tag(self, tag: str) -> "Reference":
        """The same repository with another tag and no digest."""
        return self._replace(tag=tag, digest=None)

    def _suffix(self, base: str) -> str:
        out = base
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self._suffix(self.name)


def looks_like_reference(text: str) -> bool:
    """True when ``text`` parses as a reference (used to tell references from ids and paths)."""
    try:
        Reference.parse(text)
    except ReferenceError_:
        return False
    return True
