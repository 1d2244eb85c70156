"""Media types, descriptors, manifests, indexes, image configs and platform selection (pure).

Parsed objects keep the raw bytes they came from (``raw``); digests are computed over those bytes.
Docker schema2 and OCI forms are both read; we write OCI.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from .digest import Digest
from .errors import DigestError, ManifestError, PlatformError

# --- media types -------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_ND, OCI_LAYER_ND + "+gzip",
               OCI_LAYER_ND + "+zstd", DOCKER_LAYER, DOCKER_FOREIGN_LAYER)

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return obj


def canonical_json(obj: Any) -> bytes:
    """The bytes we write for JSON we produce: compact, keys sorted, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- platforms ---------------------------------------------------------------------------------
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
                 "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """Parse ``linux/arm64/v8``; raise PlatformError when malformed."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise PlatformError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], _ARCH_ALIASES.get(parts[1], parts[1]), parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> "Platform":
        """The platform of this machine."""
        machine = _platform.machine()
        arch = _ARCH_ALIASES.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
        return cls("linux", arch, variant)

    def matches(self, other: dict[str, Any]) -> bool:
        """True when a descriptor's ``platform`` object fits this platform."""
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        if self.variant and other.get("variant") and other["variant"] != self.variant:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


# --- descriptors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, digest, size, and the optional extras kept verbatim."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    platform: dict[str, Any] | None = field(default=None, compare=False)
    urls: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> "Descriptor":
        """Build from a JSON object; raise ManifestError when a field is missing or wrong."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} is not an object")
        try:
            digest = Digest.parse(obj["digest"])
            size = obj["size"]
            media_type = obj.get("mediaType", "")
        except KeyError as e:
            raise ManifestError(f"{what} lacks {e.args[0]!r}") from None
        except DigestError as e:
            raise ManifestError(f"{what}: {e}") from None
        if not isinstance(size, int) or size < 0:
            raise ManifestError(f"{what} has an invalid size {size!r}")
        return cls(media_type, digest, size, dict(obj.get("annotations") or {}), obj.get("platform"),
                   tuple(obj.get("urls") or ()))

    def to_json(self) -> dict[str, Any]:
        """The JSON object form (OCI field names)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out


# --- manifests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema2) with its raw bytes."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> "Manifest":
        """Parse manifest bytes; ``media_type`` (from a descriptor or header) wins over the body's."""
        obj = _loads(raw, "manifest")
        mt = obj.get("mediaType") or media_type or OCI_MANIFEST
        if obj.get("schemaVersion") == 1:
            raise ManifestError("Docker schema1 manifests are not supported")
        if mt in INDEX_TYPES or "manifests" in obj:
            raise ManifestError("expected an image manifest, got an index")
        if mt not in MANIFEST_TYPES:
            raise ManifestError(f"unsupported manifest media type {mt!r}")
        if obj.get("schemaVersion") != 2:
            raise ManifestError(f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}")
        config = Descriptor.from_json(obj.get("config"), "manifest config")
        layers_json = obj.get("layers")
        if not isinstance(layers_json, list):
            raise ManifestError("manifest has no layers list")
        layers = tuple(Descriptor.from_json(x, f"layer {i}") for i, x in enumerate(layers_json))
        for d in layers:
            if d.media_type not in LAYER_TYPES:
                raise ManifestError(f"unsupported layer media type {d.media_type!r}")
        return cls(raw, mt, config, layers, dict(obj.get("annotations") or {}))

    @property
    def digest(self) -> Digest:
        """The digest of the raw bytes."""
        return Digest.of_bytes(self.raw)

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        """A descriptor pointing at this manifest."""
        return Descriptor(self.media_type, self.digest, len(self.raw), dict(annotations or {}))

    @staticmethod
    def build(config: Descriptor, layers: list[Descriptor], annotations: dict[str, str] | None = None) -> "Manifest":
        """Write a new OCI manifest."""
        obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                               "layers": [d.to_json() for d in layers]}
        if annotations:
            obj["annotations"] = annotations
        return Manifest.parse(canonical_json(obj))


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker), with its raw bytes."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> "Index":
        """Parse index bytes."""
        obj = _loads(raw, "index")
        mt = obj.get("mediaType") or media_type or OCI_INDEX
        if mt not in INDEX_TYPES:
            raise ManifestError(f"unsupported index media type {mt!r}")
        items = obj.get("manifests")
        if not isinstance(items, list):
            raise ManifestError("index has no manifests list")
        return cls(raw, mt, tuple(Descriptor.from_json(x, f"index entry {i}") for i, x in enumerate(items)))

    def select(self, want: Platform) -> Descriptor:
        """The manifest for ``want``; raise PlatformError listing what the index offers."""
        candidates = [d for d in self.manifests if d.media_type not in INDEX_TYPES]
        for d in candidates:
            if d.platform and want.matches(d.platform):
                return d
        unplatformed = [d for d in candidates if not d.platform]
        if len(unplatformed) == 1 and len(candidates) == 1:
            return unplatformed[0]
        offered = ", ".join(sorted({str(Platform(p.get("os", "?"), p.get("architecture", "?"), p.get("variant")))
                                    for d in candidates if (p := d.platform)})) or "none"
        raise PlatformError(f"no manifest for platform {want} in the index (offered: {offered})")


def is_index(media_type: str, raw: bytes) -> bool:
    """True when the object is an index (by media type, or by shape when the type is unknown)."""
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    try:
        return "manifests" in json.loads(raw)
    except ValueError:
        return False


# --- image config ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageConfig:
    """An image configuration (OCI and Docker share the shape) with its raw bytes."""

    raw: bytes
    data: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> "ImageConfig":
        """Parse config bytes; raise ManifestError unless ``rootfs.diff_ids`` is a list of digests."""
        data = _loads(raw, "image config")
        rootfs = data.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise ManifestError("image config has no rootfs.diff_ids")
        try:
            [Digest.parse(x) for x in rootfs["diff_ids"]]
        except (DigestError, TypeError) as e:
            raise ManifestError(f"image config has an invalid diff_id: {e}") from None
        return cls(raw, data)

    @property
    def digest(self) -> Digest:
        """The image id: the digest of the raw config bytes."""
        return Digest.of_bytes(self.raw)

    @property
    def diff_ids(self) -> list[Digest]:
        """Uncompressed layer digests, base first."""
        return [Digest.parse(x) for x in self.data["rootfs"]["diff_ids"]]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The history entries, base first."""
        return list(self.data.get("history") or [])

    @property
    def created(self) -> str | None:
        """The creation time (RFC 3339) or None."""
        return self.data.get("created")

    @property
    def platform(self) -> Platform:
        """The platform the config declares."""
        return Platform(self.data.get("os", "linux"), self.data.get("architecture", "amd64"),
                        self.data.get("variant"))

    @staticmethod
    def build(data: dict[str, Any]) -> "ImageConfig":
        """Serialise a config we write."""
        return ImageConfig.parse(canonical_json(data))
