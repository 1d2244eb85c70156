"""Commit an upper directory into a new image, and list changes in docker's ``diff`` format.

``commit_upper(store, base, upper, ...)`` packs the upper's changes over the base image's layers into one new
layer (``pack.write_diff_tar``), stores the blob, and writes a new config (the base's, plus the layer's DiffID,
a history entry and the ``--change`` instructions) and an OCI manifest; ``store_image`` then unpacks and tags
it. ``commit_container`` does the same for a container of the store.

Consistency of a live mount
---------------------------
A container may be mounted while it is committed. Packing then must not see a half-written upper. We
*freeze* the mount by remounting it read-only (``mount -i -o remount,ro MNT``, i.e. ``mount(2)`` with
``MS_REMOUNT|MS_RDONLY`` on the mount's superblock) for the time of the packing, and remount it read-write
afterwards (also when packing failed). The kernel makes this a real barrier, for the kernel overlayfs and for
a FUSE mount alike:

* the remount fails with EBUSY while any file of the mount is open for writing, so a writer is never cut in
  the middle of its work (commit then fails with a clear message: close the writers or unmount);
* before it returns, the kernel writes back every dirty page of the mount (``sync_filesystem``; for FUSE
  that sends the writeback cache's pending WRITEs to the daemon and waits for the replies), so the upper
  holds all data written so far;
* until the read-only flag is lifted, every modifying call fails with EROFS, so nothing changes under the
  packer.

A pause must never outlive its commit. Before remounting, ``commit_container`` records a pause marker in the
container's ``state.json`` (written atomically): the commit's pid and start time and the mountpoint. SIGTERM
and SIGHUP during the pause raise SystemExit, so the mount is made writable again before the process ends.
A commit killed outright (SIGKILL) leaves the marker: the next ``commit``, ``ps``, ``mount`` or ``umount``
(``resume_orphaned_pauses``) sees that the pausing process is gone (pid and start time, with psutil),
remounts read-write and clears the marker. ``ps`` shows a container whose commit is running as ``paused``.

``fsfreeze`` would block writers instead of failing them, but FUSE and overlayfs do not implement it. The
freeze needs the privilege to remount (root); as non-root a mounted container is refused unless the caller
passes ``pause=False`` (docker's ``--pause=false``), accepting a possibly inconsistent layer. A container
that is not mounted, or mounted read-only, needs no freeze.

Diff format (``docker diff``): one line per change, ``A`` added, ``C`` changed, ``D`` deleted, with absolute
paths in sorted order. For a container: every entry of the upper is ``C`` when the lower layers have that path
and ``A`` otherwise (so directories that hold changes show as ``C``, as with docker); a whiteout is ``D``;
an opaque directory also deletes the lower entries it hides; a directory renamed from a lower layer is a
delete of its old path and an add of its new path with all its content. Between two images the merged trees
are compared: paths only in the second are ``A`` (with all their content), paths only in the first ``D``
(the topmost only, as docker reports deleted directories), and paths in both whose type, mode, owner,
size, mtime, link target, xattrs or content differ are ``C``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import stat
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from unionfs.errors import CommitError, ContainerError
from unionfs.fsops import remove_tree
from unionfs.image.pack import PackedLayer, TarOptions, pack_layer, public_xattrs, redirect_of, write_diff_tar
from unionfs.layer import whiteout as wh
from unionfs.layer.compression import GZIP
from unionfs.layer.ownership import Owners
from unionfs.mountinfo import mount_at
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_CONFIG, Descriptor, ImageConfig, Manifest
from unionfs.oci.mutate import CHANGE_INSTRUCTIONS, apply_changes
from unionfs.oci.reference import Reference
from unionfs.store.store import Container, Image, Store, now_rfc3339
from unionfs.union.view import Node, Union

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# freezing a live mount
# ---------------------------------------------------------------------------

def mount_options(path: str) -> list[str] | None:
    """The per-mount and superblock options of the mount exactly at ``path`` (topmost), or None."""
    m = mount_at(path)
    return list(m.options) if m else None


def _remount(path: str, mode: str) -> subprocess.CompletedProcess[str]:
    # -i: never run a /sbin/mount.<type> helper (a FUSE helper would try to mount anew)
    return subprocess.run(["mount", "-i", "-o", f"remount,{mode}", path], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


_PAUSE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_end_the_block() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise SystemExit (so ``finally`` clauses run); during the
    cleanup after it they are held back, then delivered to the previous handlers. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _PAUSE_SIGNALS)  # no second signal during the cleanup
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in _PAUSE_SIGNALS}
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _PAUSE_SIGNALS)
        for s, h in old.items():
            signal.signal(s, h)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PAUSE_SIGNALS)


@contextlib.contextmanager
def frozen(mountpoint: str, on_pause: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the mount at ``mountpoint`` read-only for the duration of the block (see the module docstring).

    Does nothing when the mount is already read-only. Raises CommitError when the mount cannot be frozen
    (not root, files open for writing). ``on_pause`` runs just before the read-only remount (the pause
    marker); SIGTERM/SIGHUP while paused end the process only after the mount is writable again.
    """
    opts = mount_options(mountpoint)
    if opts is None or "ro" in opts[:1]:
        yield
        return
    with _signals_end_the_block():
        with _frozen(mountpoint, on_pause):
            yield


@contextlib.contextmanager
def _frozen(mountpoint: str, on_pause: Callable[[], None] | None) -> Iterator[None]:
    if os.geteuid() != 0:
        raise CommitError(f"the container is mounted at {mountpoint} and only root can pause it (remount it "
                          "read-only); unmount it first, or commit with --pause=false")
    if on_pause is not None:
        on_pause()
    paused = False
    try:
        # a signal that ends the process between the remount and ``paused = True`` leaves a read-only
        # mount: the undo below remounts whenever the mount is read-only now
        r = _remount(mountpoint, "ro")
        if r.returncode != 0:
            why = r.stderr.strip().splitlines()[0] if r.stderr.strip() else f"exit {r.returncode}"
            raise CommitError(f"cannot pause the mount at {mountpoint} (remount read-only: {why}); files are "
                              "probably open for writing: close them or unmount first")
        paused = True
        log.info("paused %s (read-only) for the commit", mountpoint)
        yield
    finally:
        if paused or "ro" in (mount_options(mountpoint) or [""])[:1]:
            r = _remount(mountpoint, "rw")
            if r.returncode != 0:
                log.error("cannot make %s writable again: %s", mountpoint, r.stderr.strip())


# ---------------------------------------------------------------------------
# commit
# ---------------------------------------------------------------------------

def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CommitResult:
    """What a commit made: the new image and its layer."""

    image: Image
    layer: PackedLayer


def new_config(base: ImageConfig, diff_id: Digest, *, created: str, created_by: str, message: str = "",
               author: str = "", changes: Sequence[str] = ()) -> ImageConfig:
    """The base config with one more layer, one more history entry and ``changes`` applied.

    Everything the base config holds that we do not change is kept (architecture, os, env, labels...).
    """
    data = copy.deepcopy(base.data)
    data["created"] = created
    if author:
        data["author"] = author
    data["config"] = apply_changes(data.get("config") or {}, changes)
    data.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    data["rootfs"]["type"] = "layers"
    data["rootfs"]["diff_ids"] = [*data["rootfs"].get("diff_ids", []), str(diff_id)]
    entry: dict[str, Any] = {"created": created, "created_by": created_by}
    if author:
        entry["author"] = author
    if message:
        entry["comment"] = message
    data["history"] = [*(data.get("history") or []), entry]
    for k in ("container", "container_config"):  # docker-specific leftovers that would now lie
        data.pop(k, None)
    return ImageConfig.build(data)


def commit_upper(store: Store, base: Image, upper: str, *, tags: Sequence[Reference] = (), message: str = "",
                 author: str = "", changes: Sequence[str] = (), compression: str = GZIP,
                 reproducible: bool = False, created_by: str | None = None,
                 index_dir: str | None = None) -> CommitResult:
    """Pack ``upper`` (an overlay-format upper over ``base``'s layers) into a new image and tag it.

    The caller makes sure nothing writes to ``upper`` meanwhile (``frozen``). Everything added to the store
    is removed again if any step fails (the store's transaction).
    """
    opts = TarOptions.make(reproducible)
    apply_changes({}, changes)  # refuse bad instructions before doing any work
    lowers = [str(p) for p in store.ensure_layers(base)]
    with store.lock():
        stage = Path(store.staging_dir("commit-"))
        try:
            blob_path = stage / "layer"
            with open(blob_path, "wb") as f:
                layer = pack_layer(lambda out: write_diff_tar(upper, out, lowers=lowers, epoch=opts.epoch,
                                                              index_dir=index_dir, owners=store.owners),
                                   f, compression=compression, tmp_dir=str(stage))
                f.flush()
                os.fsync(f.fileno())
            with open(blob_path, "rb") as f:
                store.put_blob(f, layer.digest, layer.size)
        finally:
            remove_tree(stage)
        created = _rfc3339(opts.epoch) if opts.epoch is not None else now_rfc3339()
        config = new_config(base.config, layer.diff_id, created=created,
                            created_by=created_by or "unionfs commit", message=message, author=author,
                            changes=changes)
        config_desc = Descriptor(OCI_CONFIG, config.digest, len(config.raw))
        manifest = Manifest.build(config_desc, [*base.manifest.layers,
                                                Descriptor(layer.media_type, layer.digest, layer.size)])
        image = store.store_image(manifest, config.raw, list(tags))
    log.info("committed %s (%d entries) as %s", upper, layer.entries, image.id)
    return CommitResult(image, layer)


def container_image(store: Store, state: Container) -> Image:
    """The image a container was made from (by its manifest digest, so a moved tag does not matter)."""
    return store.image_from_descriptor(Descriptor("", Digest.parse(state.manifest), -1))


def container_index_dir(state: Container) -> str | None:
    """unionfs' hardlink index of the container (WORK/unionfs/index), when it has one."""
    index = os.path.join(state.work, "unionfs", "index")
    return index if os.path.isdir(index) else None


def live_mountpoint(state: Container) -> str | None:
    """Where the container is mounted now, or None."""
    mp = state.mountpoint
    return mp if mp and mount_options(mp) is not None else None


def commit_container(store: Store, name: str, tags: Sequence[Reference] = (), *, pause: bool = True,
                     **kwargs: Any) -> CommitResult:
    """Commit container ``name`` (mounted or not); see ``commit_upper`` for the keyword arguments.

    A mounted container is frozen for the time of the packing unless ``pause`` is False.
    """
    resume_orphaned_pauses(store)
    state = store.container(name)
    base = container_image(store, state)
    mp = live_mountpoint(state)
    kwargs.setdefault("created_by", f"unionfs commit {name}")
    kwargs.setdefault("index_dir", container_index_dir(state))
    if mp and not pause:
        log.warning("committing the live mount at %s without pausing it: the layer may be inconsistent", mp)
    if not (mp and pause):
        return commit_upper(store, base, state.upper, tags=tags, **kwargs)
    marker = _pause_marker(mp)
    try:
        with frozen(mp, on_pause=lambda: store.set_container_paused(name, marker)):
            return commit_upper(store, base, state.upper, tags=tags, **kwargs)
    finally:
        with contextlib.suppress(ContainerError):
            store.set_container_paused(name, None, if_current=marker)


def _pause_marker(mountpoint: str) -> dict[str, Any]:
    """Who pauses the mount at ``mountpoint``: this process (pid and start time) and when."""
    import psutil

    return {"pid": os.getpid(), "started": psutil.Process().create_time(), "mountpoint": mountpoint,
            "since": now_rfc3339()}


def _pauser_alive(marker: dict[str, Any]) -> bool:
    """True while the process that wrote the pause ``marker`` runs (same pid and start time)."""
    import psutil

    try:
        proc = psutil.Process(int(marker["pid"]))
        return abs(proc.create_time() - float(marker["started"])) < 0.5 and \
            proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def is_paused(state: Container) -> bool:
    """True when a running commit holds the container's mount paused (read-only)."""
    return state.paused is not None and _pauser_alive(state.paused)


def resume_orphaned_pauses(store: Store) -> list[str]:
    """Undo the pauses of commits that died (SIGKILL) while pausing a mount: remount read-write, clear the
    marker. Returns the names of the containers resumed. A remount that fails leaves the marker (and a
    warning) for the next command."""
    resumed = []
    for state in store.containers():
        marker = state.paused
        if marker is None or _pauser_alive(marker):
            continue
        mp = marker.get("mountpoint")
        opts = mount_options(mp) if isinstance(mp, str) else None
        if opts is not None and "ro" in opts[:1]:
            r = _remount(mp, "rw")  # type: ignore[arg-type]
            if r.returncode != 0:
                log.warning("container %s: cannot make %s writable again: %s", state.name, mp, r.stderr.strip())
                continue
        with contextlib.suppress(ContainerError):
            store.set_container_paused(state.name, None, if_current=marker)
        log.warning("container %s: resumed the mount at %s, paused by a commit that was killed", state.name, mp)
        resumed.append(state.name)
    return resumed


# ---------------------------------------------------------------------------
# diff
# ---------------------------------------------------------------------------

def _abs(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


def diff_upper(upper: str, lowers: Sequence[str]) -> list[tuple[str, str]]:
    """The changes an upper holds over ``lowers`` (base first), as sorted (kind, path) pairs (kind A/C/D)."""
    lower = Union(list(lowers)) if lowers else None
    out: dict[str, str] = {}

    def in_lower(path: str) -> Node | None:
        return lower.try_lookup(path) if lower is not None else None

    def walk(udir: str, path: str) -> None:
        for name in os.listdir(udir):
            p = os.path.join(udir, name)
            cpath = _abs(path, name)
            st = os.lstat(p)
            if name == wh.OPAQUE_MARKER:
                continue
            target = wh.whiteout_target(name) if wh.is_hidden_name(name) else None
            if target is not None or wh.is_whiteout(p, st):
                dpath = _abs(path, target) if target is not None else cpath
                if in_lower(dpath) is not None:
                    out[dpath] = "D"
                continue
            before = in_lower(cpath)
            out[cpath] = "C" if before is not None else "A"
            if not stat.S_ISDIR(st.st_mode):
                if before is not None and before.is_dir:
                    pass  # a directory replaced by a file: the directory's content went with it
                continue
            redirect = redirect_of(p)
            if redirect is not None:
                # renamed from a lower directory: everything under the new name is new
                origin = redirect if redirect.startswith("/") else _abs(path, redirect)
                onode = in_lower(origin)
                stack = [d.path for d in onode.dirs] if onode is not None and onode.is_dir else []
                u = Union(list(reversed(stack)), p)
                for node in u.walk():
                    if node.path != "/":
                        out[cpath + node.path] = "A"
                continue
            if before is not None and before.is_dir and wh.is_opaque_dir(p):
                present = set(os.listdir(p))
                for child in lower.listdir(before):  # type: ignore[union-attr]
                    cname = child.path.rsplit("/", 1)[-1]
                    if cname not in present:
                        out[_abs(cpath, cname)] = "D"
            if before is None or not before.is_dir:
                for node in Union([], p).walk():
                    if node.path != "/":
                        out[cpath + node.path] = "A"
                continue
            walk(p, cpath)

    walk(os.fspath(upper), "/")
    return sorted(((k, p) for p, k in out.items()), key=lambda t: os.fsencode(t[1]))


def _same_content(a: Node, b: Node) -> bool:
    if (a.st.st_dev, a.st.st_ino) == (b.st.st_dev, b.st.st_ino):
        return True
    with open(a.real, "rb") as fa, open(b.real, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _node_differs(ua: Union, a: Node, ub: Union, b: Node) -> bool:
    sa, sb = a.st, b.st
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or sa.st_mode != sb.st_mode:
        return True
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return True
    if public_xattrs(a.real) != public_xattrs(b.real):
        return True
    if a.is_dir:
        return sa.st_mtime_ns != sb.st_mtime_ns
    if sa.st_mtime_ns != sb.st_mtime_ns or sa.st_size != sb.st_size:
        return True
    if stat.S_ISLNK(sa.st_mode):
        return ua.readlink(a) != ub.readlink(b)
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev != sb.st_rdev
    if stat.S_ISREG(sa.st_mode):
        return not _same_content(a, b)
    return False


def diff_trees(lowers_a: Sequence[str], lowers_b: Sequence[str], owners: Owners | None = None) -> list[tuple[str, str]]:
    """The changes from the merged tree of ``lowers_a`` to that of ``lowers_b`` (base first), sorted; owners
    compared as ``owners`` show them (:class:`unionfs.layer.ownership.Owners`; None: as they are)."""
    ua, ub = Union(list(lowers_a), owners=owners), Union(list(lowers_b), owners=owners)
    out: list[tuple[str, str]] = []

    def walk(na: Node, nb: Node) -> None:
        ca = {n.path: n for n in ua.listdir(na)}
        cb = {n.path: n for n in ub.listdir(nb)}
        for path in sorted(set(ca) | set(cb), key=os.fsencode):
            a, b = ca.get(path), cb.get(path)
            if b is None:
                out.append(("D", path))
            elif a is None:
                out.extend(("A", n.path) for n in ub.walk(b))
            else:
                if _node_differs(ua, a, ub, b):
                    out.append(("C", path))
                if a.is_dir and b.is_dir:
                    walk(a, b)
                elif b.is_dir:
                    out.extend(("A", n.path) for n in ub.walk(b) if n.path != path)

    walk(ua.root(), ub.root())
    return sorted(out, key=lambda t: os.fsencode(t[1]))


def diff_container(store: Store, name: str) -> list[tuple[str, str]]:
    """``docker diff CONTAINER``: the changes in the container's upper over its image."""
    state = store.container(name)
    lowers = [str(p) for p in store.ensure_layers(container_image(store, state))]
    return diff_upper(state.upper, lowers)


def diff_images(store: Store, first: str, second: str) -> list[tuple[str, str]]:
    """The changes from image ``first`` to image ``second``."""
    a = store.resolve(first)
    b = store.resolve(second)
    return diff_trees([str(p) for p in store.ensure_layers(a)], [str(p) for p in store.ensure_layers(b)],
                      store.owners)


__all__ = ["is_paused", "resume_orphaned_pauses", "apply_changes", "new_config", "commit_upper", "commit_container", "CommitResult", "frozen",
           "diff_upper", "diff_trees", "diff_container", "diff_images", "CHANGE_INSTRUCTIONS"]
