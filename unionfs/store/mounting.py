"""The store's part of ``unionfs mount IMAGE`` and ``umount``, light enough to load on every such command: the
store's root and lock, a container's state (``containers/<name>/state.json``), a new container, and the
record of what an image reference resolved to. It loads neither the image formats (manifests, configs,
references, digests and hashlib), nor pathlib, nor the :class:`~unionfs.store.store.Store` (which uses all of
this module too).

**The record of resolutions** (``ROOT/resolved.json``). ``Store.prepare_container`` resolves an image the full
way: it reads ``index.json``, parses the reference, reads the manifest and the config and verifies both
against their digests, and makes sure every layer is extracted. Then it records, for the text it was asked
(``hundred:1``, a digest, an id prefix), the manifest digest, the image id, the layers (DiffIDs, base first)
and the base of a new container's name, together with the whole content of the ``index.json`` it resolved
against and the machine (an index picks a manifest by platform). :func:`prepare` answers from the record, and
loads none of the above, while ``index.json`` holds exactly that content (every change of a tag rewrites it),
on the same machine, with every layer directory in place; otherwise it answers None and the caller takes the
full way, which records anew. The store writes the record itself, atomically (a temporary name, then a rename)
and only once the verification has passed: trusting it is trusting that verification, which the full way
repeats on every mount. It is not fsynced: a crash may lose it, never tear it, and a lost record only means
one full resolution. It is no garbage-collection root (it names content only while the index does).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from unionfs.errors import ContainerError, StoreLockedError
from unionfs.fsops import atomic_write, remove_tree, temp_dir
from unionfs.layer import ownership
from unionfs.oci.canonical import canonical_json

if TYPE_CHECKING:
    from unionfs.union.plan import MountPlan

log = logging.getLogger(__name__)

#: the mount options of a rootless store's containers: its overrides shown (:mod:`unionfs.layer.ownership`)
ROOTLESS_OPTIONS = ("xattr_permissions=2",)


def rootless_owner(root: str) -> tuple[int, int] | None:
    """The user (uid, gid) owning the store at ``root`` when that is not root of the initial user namespace: a
    *rootless* store, whose unpacks keep owners in overrides (``Store.owners``; in a user namespace of its own,
    :mod:`unionfs.run.userns`, the user is 0); None for a store the host's root owns."""
    st = os.stat(root)
    return None if st.st_uid == 0 and ownership.initial_user_namespace() else (st.st_uid, st.st_gid)


def mount_options(root: str) -> list[str]:
    """The ``-o`` items every mount of a container of the store at ``root`` needs (:data:`ROOTLESS_OPTIONS`
    for a rootless store, none otherwise)."""
    return list(ROOTLESS_OPTIONS) if rootless_owner(root) is not None else []

#: seconds a command waits for another one's lock (``$UNIONFS_LOCK_TIMEOUT``)
LOCK_TIMEOUT = float(os.environ.get("UNIONFS_LOCK_TIMEOUT", "300"))
#: the record of resolutions, in the store's root
RESOLVED = "resolved.json"
#: references the record keeps at most (the oldest go first)
RESOLVED_MAX = 64
#: the keys of a container's state, as ``state.json`` holds them (``paused`` only while paused)
STATE_KEYS = ("name", "ref", "image_id", "manifest", "created", "layers", "mountpoint", "paused")


def default_root() -> str:
    """``$UNIONFS_ROOT``, else ``/var/lib/unionfs`` as root, else ``$XDG_DATA_HOME/unionfs``."""
    env = os.environ.get("UNIONFS_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/unionfs"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "unionfs")


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with microseconds and a Z suffix (by :mod:`time`, not :mod:`datetime`)."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns // 1000 % 10**6:06d}Z"


# -- the lock ------------------------------------------------------------------------------------------------
def acquire_lock(root: str, timeout: float = LOCK_TIMEOUT) -> int:
    """A descriptor of ``ROOT/lock`` holding the store's exclusive lock (flock(2); closing it releases the
    lock). Waits up to ``timeout`` seconds for another command (saying so once), then raises
    StoreLockedError."""
    path = os.path.join(root, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not waited:
                log.warning("waiting for another unionfs command to release %s", path)
                waited = True
            if time.monotonic() > deadline:
                os.close(fd)
                raise StoreLockedError(f"store {root} is locked by another command") from None
            time.sleep(0.05)


@contextlib.contextmanager
def locked(root: str) -> Iterator[None]:
    """Hold the store's lock for the block (not re-entrant: a ``Store`` holding it uses its own ``lock()``)."""
    fd = acquire_lock(root)
    try:
        yield
    finally:
        os.close(fd)


# -- a container's state ----------------------------------------------------------------------------------
def container_dir(root: str, name: str) -> str:
    """``ROOT/containers/NAME``; ContainerError for a name that is not a container's."""
    if not name or "/" in name or name.startswith(".") or len(name) > 128:
        raise ContainerError(f"invalid container name {name!r}")
    return os.path.join(root, "containers", name)


def new_name(base: str) -> str:
    """A fresh container name: ``base`` (the last part of the image's repository; ``c`` when untagged) and 8
    hex digits."""
    return f"{base}-{os.urandom(4).hex()}"


def state_fields(data: Any, path: str) -> dict[str, Any]:
    """The fields of the state read from ``path``, as kept: strings, a tuple of layers, a mountpoint or None, a
    pause marker (a dict) or None. ContainerError for one that is not a container's."""
    try:
        if not isinstance(data, dict):
            raise TypeError
        paused = data.get("paused")
        return {"name": str(data["name"]), "ref": str(data.get("ref", "")), "image_id": str(data["image_id"]),
                "manifest": str(data.get("manifest", "")), "created": str(data.get("created", "")),
                "layers": tuple(str(x) for x in data.get("layers") or ()),
                "mountpoint": data.get("mountpoint") or None, "paused": paused if isinstance(paused, dict) else None}
    except (KeyError, TypeError, AttributeError):
        raise ContainerError(f"{path} is not a container's state") from None


def state_json(fields: dict[str, Any]) -> dict[str, Any]:
    """What ``state.json`` holds for ``fields`` (:data:`STATE_KEYS`; no ``paused`` key when not paused)."""
    out = {k: fields.get(k) for k in STATE_KEYS}
    out["layers"] = list(out["layers"] or ())
    if out["paused"] is None:
        del out["paused"]
    return out


def read_state(cdir: str, name: str) -> dict[str, Any]:
    """The fields (:func:`state_fields`) of container ``name``'s state in ``cdir``; ContainerError when there is
    no such container or its state is not one."""
    path = os.path.join(cdir, "state.json")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise ContainerError(f"no such container: {name}") from None
    except ValueError:
        raise ContainerError(f"{path} is not a container's state") from None
    return state_fields(data, path)


def write_state(cdir: str, fields: dict[str, Any]) -> None:
    """Replace the state in ``cdir`` by ``fields`` (atomically, fsynced)."""
    atomic_write(os.path.join(cdir, "state.json"), canonical_json(state_json(fields)))


def containers(root: str) -> list[dict[str, Any]]:
    """The fields of every container's state, by name (unreadable states are skipped)."""
    base = os.path.join(root, "containers")
    out = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    for name in names:
        with contextlib.suppress(ContainerError, OSError):
            out.append(read_state(os.path.join(base, name), name))
    return out


def any_paused(root: str) -> bool:
    """True when a container's state carries a pause marker (``commit``: the mount may need resuming, which
    the commit code does)."""
    return any(c["paused"] is not None for c in containers(root))


def set_mountpoint(root: str, name: str, mountpoint: str | None) -> None:
    """Record, under the store's lock, where container ``name`` is mounted (None: not mounted); ContainerError
    when there is no such container. ``Store.set_container_mount`` is the same for a caller holding a
    ``Store``."""
    cdir = container_dir(root, name)
    with locked(root):
        fields = read_state(cdir, name)
        fields["mountpoint"] = mountpoint
        write_state(cdir, fields)


def new_container(root: str, name: str, fields: dict[str, Any]) -> str:
    """Make container ``name`` (an empty upper and work directory, and its state ``fields``) in one rename of
    a staged directory; its directory. ContainerError when it exists already. Needs the store's lock."""
    cdir = container_dir(root, name)
    stage = temp_dir(os.path.join(root, "tmp"), "container-")
    os.mkdir(os.path.join(stage, "upper"), 0o755)
    os.mkdir(os.path.join(stage, "work"), 0o700)
    write_state(stage, fields)
    try:
        os.rename(stage, cdir)
    except OSError as e:
        remove_tree(stage)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ContainerError(f"container {name} already exists") from None
        raise
    return cdir


def container_plan(root: str, text: str, name: str | None, image: dict[str, Any],
                   lowers: Sequence[str] | None = None) -> MountPlan:
    """The mount plan of container ``name`` (None: a new name) of the image resolved from ``text`` as
    ``image`` says (``image_id``, ``manifest``, ``layers``: DiffID hexes base first, ``base``: of a new name),
    creating the container if it is new; an existing one must belong to that image. Needs the store's lock,
    and every layer extracted; ``lowers``: the layers' directories when they are not the store's extracted
    layers (a lazy mount's: :mod:`unionfs.lazy.prepare`)."""
    from unionfs.union.plan import MountPlan

    name = name or new_name(image["base"])
    cdir = container_dir(root, name)
    if os.path.exists(os.path.join(cdir, "state.json")):
        old = read_state(cdir, name)
        if old["image_id"] != image["image_id"]:
            raise ContainerError(f"container {name} exists for another image ({old['ref']})")
    else:
        new_container(root, name, {"name": name, "ref": text, "image_id": image["image_id"],
                                   "manifest": image["manifest"], "created": now_rfc3339(),
                                   "layers": tuple(image["layers"]), "mountpoint": None, "paused": None})
    if lowers is None:
        lowers = [os.path.join(root, "layers", h) for h in image["layers"]]
    return MountPlan(tuple(lowers), os.path.join(cdir, "upper"), os.path.join(cdir, "work"), name)


# -- the record of resolutions ----------------------------------------------------------------------------
def _read_index(root: str) -> str | None:
    """``index.json``'s content (None: unreadable)."""
    try:
        with open(os.path.join(root, "index.json"), "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None


def _read_record(root: str, index: str) -> dict[str, Any]:
    """The resolutions recorded against ``index`` (an index of another content, or none: empty)."""
    try:
        with open(os.path.join(root, RESOLVED), "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("index") != index or record.get("machine") != os.uname().machine:
        return {}
    images = record.get("images")
    return images if isinstance(images, dict) else {}


def remember(root: str, text: str, image: dict[str, Any]) -> None:
    """Record that ``text`` resolves to ``image`` (see :func:`container_plan`) against the ``index.json`` on
    disk now: called under the store's lock, with no change of the index pending, once the image was
    resolved and verified the full way. A record that cannot be written is only logged."""
    index = _read_index(root)
    if index is None:
        return
    images = {k: v for k, v in _read_record(root, index).items() if k != text}
    images[text] = {k: image[k] for k in ("image_id", "manifest", "layers", "base")}
    while len(images) > RESOLVED_MAX:
        del images[next(iter(images))]
    try:
        atomic_write(os.path.join(root, RESOLVED), canonical_json(
            {"index": index, "machine": os.uname().machine, "images": images}), 0o600, durable=False)
    except OSError as e:
        log.debug("cannot record the resolution of %s: %s", text, e)


def _recall(root: str, text: str) -> dict[str, Any] | None:
    """What ``text`` was recorded to resolve to, if the record still holds (see the module's docstring)."""
    index = _read_index(root)
    image = _read_record(root, index).get(text) if index is not None else None
    if not isinstance(image, dict):
        return None
    try:
        if not (isinstance(image["image_id"], str) and isinstance(image["manifest"], str)
                and isinstance(image["base"], str) and isinstance(image["layers"], list)
                and all(isinstance(h, str) and h and "/" not in h and not h.startswith(".")
                        for h in image["layers"])):
            return None
    except KeyError:
        return None
    return image


def prepare(root: str, text: str, name: str | None) -> MountPlan | None:
    """The mount plan of container ``name`` of image ``text`` (``Store.prepare_container``) from the record of
    resolutions; None when the record does not answer (no record of ``text``, the index changed since, a
    layer is missing, no store at ``root``): then the full way must."""
    try:
        if not os.path.isdir(os.path.join(root, "containers")):
            return None
        os.chmod(root, 0o700)  # as Store() does on every use
    except OSError:  # not a store of ours: Store() says so
        return None
    with locked(root):
        image = _recall(root, text)
        if image is None or not all(os.path.isdir(os.path.join(root, "layers", h)) for h in image["layers"]):
            return None
        return container_plan(root, text, name, image)
