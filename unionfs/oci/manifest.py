"""Media types, descriptors, manifests, indexes, image configs and platform selection (pure).

Parsed objects keep the raw bytes they came from (``raw``); digests are computed over those bytes.
Docker schema2 and OCI forms are both read; we write OCI.

Everything parsed here comes from outside (archives, layouts, registries) and is validated at the door:
JSON that does not parse or nests deeper than ``MAX_JSON_DEPTH``, and every field we read that has the wrong
type (a number where a string belongs, annotations that are not a string map, a ``Layers`` entry that is an
object, ``"created": 5``, ``"history": "x"``...), raise ``ManifestError`` (``ArchiveError`` for a docker-save
``manifest.json``) with a one-line message that names the field; whatever a message echoes of the input is
escaped and bounded (``errors.shown``, ``errors.listed``). Fields we do not read are kept verbatim, unchecked.
"""

from __future__ import annotations

import json
import logging
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

from unionfs.errors import ArchiveError, DigestError, ManifestError, PlatformError, listed, printable, shown
from unionfs.oci.canonical import canonical_json
from unionfs.oci.digest import Digest

log = logging.getLogger(__name__)

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


#: Deepest nesting of arrays and objects accepted in a manifest, index, config or manifest.json.
MAX_JSON_DEPTH = 64


def parse_json(raw: bytes, what: str) -> Any:
    """Parse JSON input; ManifestError (one line) when it is not valid JSON or UTF-8, or nests deeper than
    MAX_JSON_DEPTH (Python's parser would raise RecursionError, and deep values break later copies)."""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ManifestError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from None
    level, depth = [obj], 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise ManifestError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
        level = [v for x in level if isinstance(x, (dict, list))
                 for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
    return obj


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    obj = parse_json(raw, what)
    if not isinstance(obj, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return obj


def _kind(value: Any) -> str:
    """The JSON kind of a value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _wrong(what: str, want: str, value: Any) -> str:
    text = shown(value) if isinstance(value, (str, int, float)) else _kind(value)
    return f"{what} must be {want}, not {text}"


def _opt_str(obj: dict[str, Any], key: str, what: str) -> str | None:
    """``obj[key]`` when it is a string, None when absent or null; ManifestError otherwise."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(_wrong(f"{what} {key!r}", "a string", value))
    return value


def _str_list(value: Any, what: str) -> list[str]:
    """A JSON array of strings (null: empty); ManifestError otherwise."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        bad = value if not isinstance(value, list) else next(x for x in value if not isinstance(x, str))
        raise ManifestError(_wrong(what, "an array of strings", bad))
    return value


def _str_map(value: Any, what: str) -> dict[str, str]:
    """A JSON object of strings (null: empty); ManifestError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(_wrong(what, "an object of strings", value))
    for k, v in value.items():
        if not isinstance(v, str):
            raise ManifestError(_wrong(f"{what} {shown(k)}", "a string", v))
    return dict(value)


# --- platforms ---------------------------------------------------------------------------------
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
                 "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


class Platform(NamedTuple):
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
        import platform  # here: only a pull or load that picks from an index needs it

        machine = platform.machine()
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


def _platform_json(value: Any, what: str) -> dict[str, Any] | None:
    """A descriptor's ``platform`` object, its string fields checked; None when absent or null."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(_wrong(f"{what} platform", "an object", value))
    for key in ("os", "architecture", "variant", "os.version"):
        _opt_str(value, key, f"{what} platform")
    for key in ("os.features", "features"):
        _str_list(value.get(key), f"{what} platform {key!r}")
    return value


# --- descriptors -------------------------------------------------------------------------------
#: a descriptor's annotations when it has none: empty, and read-only (the one object all such descriptors share)
_NONE: Mapping[str, str] = MappingProxyType({})


class Descriptor(NamedTuple):
    """A content descriptor: media type, digest, size, and the optional extras kept verbatim.

    Equal (and hashed) by media type, digest and size only: the extras do not tell two contents apart.
    """

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = _NONE
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Descriptor):
            return NotImplemented
        return self[:3] == other[:3]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:3])

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> "Descriptor":
        """Build from a JSON object; raise ManifestError when a field is missing or wrong."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{what} is not an object")
        try:
            digest = Digest.parse(obj["digest"])
            size = obj["size"]
        except KeyError as e:
            raise ManifestError(f"{what} lacks {e.args[0]!r}") from None
        except DigestError as e:
            raise ManifestError(f"{what}: {e}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            shown_size = shown(size) if isinstance(size, (int, float, str)) else _kind(size)
            raise ManifestError(f"{what} has an invalid size {shown_size}")
        media_type = _opt_str(obj, "mediaType", what) or ""
        annotations = _str_map(obj.get("annotations"), f"{what} annotations")
        urls = _str_list(obj.get("urls"), f"{what} urls")
        return cls(media_type, digest, size, annotations, _platform_json(obj.get("platform"), what), tuple(urls))

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
class Manifest(NamedTuple):
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
        mt = _opt_str(obj, "mediaType", "manifest") or media_type or OCI_MANIFEST
        if obj.get("schemaVersion") == 1:
            raise ManifestError("Docker schema1 manifests are not supported")
        if mt in INDEX_TYPES or "manifests" in obj:
            raise ManifestError("expected an image manifest, got an index")
        if mt not in MANIFEST_TYPES:
            raise ManifestError(f"unsupported manifest media type {shown(mt)}")
        if obj.get("schemaVersion") != 2:
            raise ManifestError(f"unsupported manifest schemaVersion {shown(obj.get('schemaVersion'))}")
        config = Descriptor.from_json(obj.get("config"), "manifest config")
        layers_json = obj.get("layers")
        if not isinstance(layers_json, list):
            raise ManifestError("manifest has no layers list")
        layers = tuple(Descriptor.from_json(x, f"layer {i}") for i, x in enumerate(layers_json))
        for d in layers:
            if d.media_type not in LAYER_TYPES:
                raise ManifestError(f"unsupported layer media type {shown(d.media_type)}")
        return cls(raw, mt, config, layers, _str_map(obj.get("annotations"), "manifest annotations"))

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


class Index(NamedTuple):
    """An image index (OCI) or manifest list (Docker), with its raw bytes."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> "Index":
        """Parse index bytes."""
        obj = _loads(raw, "index")
        mt = _opt_str(obj, "mediaType", "index") or media_type or OCI_INDEX
        if mt not in INDEX_TYPES:
            raise ManifestError(f"unsupported index media type {shown(mt)}")
        _str_map(obj.get("annotations"), "index annotations")
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
        offered = listed(sorted({printable(str(Platform(p.get("os") or "?", p.get("architecture") or "?",
                                                         p.get("variant"))))
                                 for d in candidates if (p := d.platform)})) or "none"
        raise PlatformError(f"no manifest for platform {want} in the index (offered: {offered})")


def is_index(media_type: str, raw: bytes) -> bool:
    """True when the object is an index (by media type, or by shape when the type is unknown)."""
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    try:
        obj = parse_json(raw, "manifest")
    except ManifestError:
        return False
    return isinstance(obj, dict) and "manifests" in obj


# --- image config ------------------------------------------------------------------------------
_STR, _STRS, _STRMAP, _OBJ, _BOOL = "a string", "an array of strings", "an object of strings", "an object", \
    "a boolean"
#: The config fields we (or docker) read, with the JSON type they must have (null is always allowed);
#: ``history`` must be an array of objects with ``_HISTORY_FIELDS``.
_CONFIG_FIELDS = {"created": _STR, "author": _STR, "architecture": _STR, "os": _STR, "variant": _STR,
                  "os.version": _STR, "os.features": _STRS, "config": _OBJ}
_RUN_CONFIG_FIELDS = {"User": _STR, "WorkingDir": _STR, "StopSignal": _STR, "Env": _STRS, "Entrypoint": _STRS,
                      "Cmd": _STRS, "Shell": _STRS, "OnBuild": _STRS, "Labels": _STRMAP, "ExposedPorts": _OBJ,
                      "Volumes": _OBJ, "Healthcheck": _OBJ, "ArgsEscaped": _BOOL}
#: Fields docker reads as a "string slice": a lone string stands for a one-element array (normalized in ``data``).
_STR_SLICES = ("Entrypoint", "Cmd", "Shell")
_HISTORY_FIELDS = {"created": _STR, "author": _STR, "created_by": _STR, "comment": _STR, "empty_layer": _BOOL}


def _has_type(value: Any, want: str) -> bool:
    if value is None:
        return True
    if want == _STR:
        return isinstance(value, str)
    if want == _BOOL:
        return isinstance(value, bool)
    if want == _STRS:
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if want == _STRMAP:
        return isinstance(value, dict) and all(isinstance(x, str) for x in value.values())
    assert want == _OBJ, want
    return isinstance(value, dict)


def _check_config(data: dict[str, Any], strict: bool) -> list[str]:
    """The problems of a parsed config's typed fields (see ``_CONFIG_FIELDS``). ``strict``: raise
    ManifestError at the first one; otherwise drop each bad field from ``data`` (a history entry that is
    not an object becomes ``{}``, so that entries stay aligned with layers) and return the problems."""
    problems: list[str] = []

    def bad(container: dict[str, Any] | list[Any], key: Any, what: str, want: str, value: Any) -> None:
        msg = _wrong(f"image config {what}", want, value)
        if strict:
            raise ManifestError(msg)
        problems.append(msg)
        if isinstance(container, list):
            container[key] = {}
        else:
            del container[key]

    for key, want in _CONFIG_FIELDS.items():
        if not _has_type(data.get(key), want):
            bad(data, key, repr(key), want, data[key])
    run = data.get("config")
    for key in _STR_SLICES:
        if isinstance(run, dict) and isinstance(run.get(key), str):
            run[key] = [run[key]]
    for key, want in _RUN_CONFIG_FIELDS.items():
        if isinstance(run, dict) and not _has_type(run.get(key), want):
            bad(run, key, f"config.{key}", want, run[key])
    history = data.get("history")
    if history is not None and not isinstance(history, list):
        bad(data, "history", "'history'", "an array of objects", history)
    elif history:
        for i in range(len(history)):
            entry = history[i]
            if not isinstance(entry, dict):
                bad(history, i, f"history[{i}]", _OBJ, entry)
                continue
            for key, want in _HISTORY_FIELDS.items():
                if not _has_type(entry.get(key), want):
                    bad(entry, key, f"history[{i}].{key}", want, entry[key])
    return problems


class ImageConfig(NamedTuple):
    """An image configuration (OCI and Docker share the shape) with its raw bytes.

    ``data`` is well typed (see ``_check_config``): the fields we read have the JSON type they must have,
    or are absent/null.
    """

    raw: bytes
    data: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes, strict: bool = True) -> "ImageConfig":
        """Parse config bytes; raise ManifestError unless ``rootfs.diff_ids`` is a list of digests and (when
        ``strict``, as at the door: load, pull, commit) every field we read has the right type. Without
        ``strict`` (a config already in the store) wrongly typed fields are dropped from ``data`` with a
        warning, so that one bad image still shows what it can and does not break commands about others."""
        data = _loads(raw, "image config")
        rootfs = data.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise ManifestError("image config has no rootfs.diff_ids")
        try:
            [Digest.parse(x) for x in rootfs["diff_ids"]]
        except DigestError as e:
            raise ManifestError(f"image config has an invalid diff_id: {e}") from None
        problems = _check_config(data, strict)
        if problems:
            log.warning("image config %s: ignoring fields of the wrong type: %s", Digest.of_bytes(raw).short,
                        listed(problems, 3))
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
        """The history entries (objects), base first."""
        return list(self.data.get("history") or [])

    @property
    def created(self) -> str | None:
        """The creation time (RFC 3339) or None."""
        return self.data.get("created")

    @property
    def platform(self) -> Platform:
        """The platform the config declares."""
        return Platform(self.data.get("os") or "linux", self.data.get("architecture") or "amd64",
                        self.data.get("variant"))

    @staticmethod
    def build(data: dict[str, Any]) -> "ImageConfig":
        """Serialise a config we write."""
        return ImageConfig.parse(canonical_json(data))


# --- docker-save manifest.json ----------------------------------------------------------------
#: Longest path accepted in a docker-save manifest.json (PATH_MAX).
MAX_ARCHIVE_PATH = 4096


class ArchiveEntry(NamedTuple):
    """One image of a docker-save ``manifest.json``: the config's path, the tags, the layers' paths."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def _archive_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ARCHIVE_PATH or printable(value) != value:
        raise ArchiveError(_wrong(what, "a path", value) if not isinstance(value, str)
                           else f"{what} is not a usable path: {shown(value)}")
    return value


def parse_docker_archive_manifest(raw: bytes) -> list[ArchiveEntry]:
    """The images a docker-save ``manifest.json`` lists (at least one); ArchiveError with a one-line message
    when it is not JSON, not an array of objects, or a ``Config``, ``RepoTags`` or ``Layers`` field has the
    wrong type (``RepoTags`` must be an array of strings: a lone string is not read letter by letter).
    Paths must be non-empty, at most MAX_ARCHIVE_PATH long, and free of control characters. Tags are not
    parsed here (an invalid one is skipped with a warning by the loader)."""
    try:
        entries = parse_json(raw, "manifest.json")
    except ManifestError as e:
        raise ArchiveError(str(e)) from None
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("manifest.json lists no images")
    out = []
    for i, entry in enumerate(entries):
        what = f"manifest.json entry {i}"
        if not isinstance(entry, dict) or "Config" not in entry or not isinstance(entry.get("Layers"), list):
            raise ArchiveError(f"{what} lacks Config or Layers")
        config = _archive_path(entry["Config"], f"{what} Config")
        layers = tuple(_archive_path(x, f"{what} Layers[{n}]") for n, x in enumerate(entry["Layers"]))
        try:
            tags = _str_list(entry.get("RepoTags"), f"{what} RepoTags")
        except ManifestError as e:
            raise ArchiveError(str(e)) from None
        out.append(ArchiveEntry(config, tuple(tags), layers))
    return out


def container_command(config: dict[str, Any], command: Sequence[str] = (), entrypoint: str | None = None
                      ) -> list[str]:
    """The argv a container of an image with the config ``config`` (its ``config`` object) runs, as docker
    makes it: ENTRYPOINT (``entrypoint`` replaces it; ``""`` clears it) followed by ``command``, or by CMD when
    no command is given and the entrypoint is the image's."""
    if entrypoint is not None:
        return ([entrypoint] if entrypoint else []) + list(command)
    return list(config.get("Entrypoint") or []) + (list(command) or list(config.get("Cmd") or []))
