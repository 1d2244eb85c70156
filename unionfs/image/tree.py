"""Look inside an image without mounting it: list, read, find, locate a path's layer, layer statistics, export.

Everything works on the store's extracted layer directories through the read-only :class:`~unionfs.union.view.Union`
(no FUSE, no mount, no root needed). Paths are image paths (``/etc/passwd``); symbolic links are resolved
inside the image, never on the host: an absolute target restarts at the image's root, ``..`` stops at it.
Intermediate components are always followed; the last one only where the command says so (``cat`` follows it,
``ls -l`` and ``which`` do not). More than 40 links in one resolution is ELOOP, as in the kernel.

Layer numbers are 1-based and base first, as ``unionfs history`` shows them bottom-up.

Definitions used by ``layer_stats`` (in the spirit of the tool dive):

* *added*: an entry of the layer whose path no lower layer shows; *changed*: an entry (not a directory that
  only carries changes below it... a directory over a directory is counted only when its own metadata
  differs) whose path a lower layer shows; *deleted*: a path a lower layer shows that the layer whites out,
  including the lower children an opaque directory hides;
* *wasted*: bytes of the layer's regular files that the final image does not show, because a later layer
  overwrote or deleted them (hardlinked files count once). The total is the sum over the layers;
  *efficiency* is ``1 - wasted / content`` (content: bytes of all regular files of all layers).
"""

from __future__ import annotations

import atexit
import errno
import fnmatch
import functools
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from unionfs.errors import TreePathError
from unionfs.image.pack import write_merged_tar
from unionfs.layer import whiteout as wh
from unionfs.oci.digest import Digest
from unionfs.store.store import Image, Store
from unionfs.union.view import Node, Union

log = logging.getLogger(__name__)

MAX_SYMLINKS = 40


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image: number (1-based, base first), DiffID, blob size, directory, history line."""

    number: int
    diff_id: Digest
    blob_size: int
    path: str
    created_by: str
    comment: str = ""


@dataclass(frozen=True)
class WhichHit:
    """What one layer holds at a path. ``role``: ``provides`` (the visible entry), ``merged`` (a lower part
    of a visible directory), ``shadowed`` (hidden by a higher layer), ``deletes`` (a whiteout or opaque
    directory here removes the path of lower layers)."""

    layer: LayerInfo
    role: str
    kind: str


@dataclass
class LayerStats:
    """Per-layer figures (see the module docstring)."""

    layer: LayerInfo
    content_size: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    wasted: int = 0
    wasted_paths: list[tuple[str, int]] = field(default_factory=list)


def kind_of(mode: int) -> str:
    """A one-word file type."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char-device"), (stat.S_ISBLK, "block-device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


def _join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


@functools.cache
def _empty_dir() -> str:
    """A read-only empty directory (the tree of an image with no layers), removed when the process ends."""
    path = tempfile.mkdtemp(prefix="unionfs-empty-")
    os.chmod(path, 0o555)
    atexit.register(os.rmdir, path)
    return path


class ImageTree:
    """The merged tree of one stored image (its layers are extracted on first use)."""

    def __init__(self, store: Store, image: Image) -> None:
        self.store = store
        self.image = image
        self.lowers = [str(p) for p in store.ensure_layers(image)]
        #: what the merged tree is made of: the layers, or one empty directory for an image without any
        self.tree_dirs = self.lowers or [_empty_dir()]
        self.union = Union(self.tree_dirs, owners=store.owners)
        history = [h for h in image.config.history if not h.get("empty_layer")]
        self.layers: list[LayerInfo] = []
        for i, (desc, diff_id, path) in enumerate(zip(image.manifest.layers, image.config.diff_ids, self.lowers)):
            h = history[i] if i < len(history) else {}
            self.layers.append(LayerInfo(i + 1, diff_id, desc.size, path, str(h.get("created_by") or ""),
                                         str(h.get("comment") or "")))

    @classmethod
    def open(cls, store: Store, ref: str) -> "ImageTree":
        """The tree of the image ``ref`` names (ImageNotFoundError when none)."""
        return cls(store, store.resolve(ref))

    def layer_of(self, node: Node) -> LayerInfo:
        """The layer a node's (top) entry comes from."""
        return self.layers[len(self.layers) - 1 - node.layer]

    # ------------------------------------------------------------------ resolution
    def resolve(self, path: str, follow: bool = True) -> Node:
        """The node at image path ``path``; links resolved inside the image (the last one if ``follow``).

        Raises TreePathError when the path does not exist, a component is not a directory, or links loop.
        """
        hops = 0
        todo = _components(path)
        stack: list[Node] = [self.union.root()]
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            if not cur.is_dir:
                raise TreePathError(f"{path}: not a directory")
            child = self.union.child(cur, name)
            if child is None:
                raise TreePathError(f"{path}: no such file or directory in {self._name()}")
            if stat.S_ISLNK(child.st.st_mode) and (todo or follow):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise TreePathError(f"{path}: too many levels of symbolic links")
                target = self.union.readlink(child)
                if target.startswith("/"):
                    stack = stack[:1]
                todo = _components(target) + todo
                continue
            stack.append(child)
        return stack[-1]

    def _name(self) -> str:
        return self.image.tags[0].familiar if self.image.tags else self.image.id.short

    # ------------------------------------------------------------------ ls, cat, find
    def listdir(self, node: Node) -> list[Node]:
        """A directory's entries sorted by name (all of them, as ``ls -A``)."""
        return sorted(self.union.listdir(node), key=lambda n: os.fsencode(n.path))

    def ls(self, path: str = "/", recursive: bool = False, long: bool = False) -> Iterator[tuple[str, list[Node]]]:
        """Yield (directory path, its entries) blocks like ``ls``: a file gives ("", [file]).

        A symlink to a directory is listed as the directory unless ``long`` (as ``ls`` does).
        """
        node = self.resolve(path, follow=False)
        if stat.S_ISLNK(node.st.st_mode) and not long:
            try:
                target = self.resolve(path, follow=True)
                if target.is_dir:
                    node = target
            except TreePathError:
                pass
        if not node.is_dir:
            yield "", [node]
            return
        shown = "/" + "/".join(_components(path)) if _components(path) else "/"
        yield from self._ls_dir(node, shown, recursive)

    def _ls_dir(self, node: Node, shown: str, recursive: bool) -> Iterator[tuple[str, list[Node]]]:
        entries = self.listdir(node)
        yield shown, entries
        if recursive:
            for e in entries:
                if e.is_dir:
                    yield from self._ls_dir(e, _join(shown, e.path.rsplit("/", 1)[-1]), True)

    def open_file(self, path: str) -> BinaryIO:
        """The content of the regular file at ``path`` (links followed inside the image)."""
        node = self.resolve(path, follow=True)
        if node.is_dir:
            raise TreePathError(f"{path}: is a directory")
        if not stat.S_ISREG(node.st.st_mode):
            raise TreePathError(f"{path}: not a regular file ({kind_of(node.st.st_mode)})")
        return open(node.real, "rb")

    def find(self, path: str = "/", name: str | None = None, type_: str | None = None) -> Iterator[Node]:
        """Every node under ``path`` (itself included), parents first, names sorted; filtered by a
        basename glob ``name`` and a type letter ``type_`` (f, d, l, p, c, b, s) as find(1)."""
        start = self.resolve(path, follow=True)
        want = {"f": stat.S_ISREG, "d": stat.S_ISDIR, "l": stat.S_ISLNK, "p": stat.S_ISFIFO, "c": stat.S_ISCHR,
                "b": stat.S_ISBLK, "s": stat.S_ISSOCK}
        if type_ is not None and type_ not in want:
            raise TreePathError(f"find: unknown type {type_!r} (one of {''.join(want)})")
        base = "/" + "/".join(_components(path)) if _components(path) else "/"

        def walk(node: Node, shown: str) -> Iterator[Node]:
            base_name = shown.rsplit("/", 1)[-1] or "/"
            if (name is None or fnmatch.fnmatchcase(base_name, name)) and \
                    (type_ is None or want[type_](node.st.st_mode)):
                node.path = shown
                yield node
            if node.is_dir:
                for c in self.listdir(node):
                    yield from walk(c, _join(shown, c.path.rsplit("/", 1)[-1]))

        yield from walk(start, base)

    # ------------------------------------------------------------------ which
    def which(self, path: str) -> tuple[Node | None, list[WhichHit]]:
        """The visible node at ``path`` (None when absent) and, per layer top-down, what the layer holds there.

        Intermediate links are followed; the last component is not (``which /bin/sh`` names the link).
        """
        comps = _components(path)
        if not comps:
            node = self.union.root()
            return node, [WhichHit(self.layers[len(self.layers) - 1 - i], "provides" if i == 0 else "merged",
                                   "directory") for i, _ in enumerate(node.dirs)]
        parent_path = "/" + "/".join(comps[:-1])
        try:
            parent = self.resolve(parent_path, follow=True)
        except TreePathError:
            parent = None
        real_parent = parent.path if parent is not None else None
        node = self.union.child(parent, comps[-1]) if parent is not None and parent.is_dir else None
        target = _join(real_parent or parent_path, comps[-1])
        hits: list[WhichHit] = []
        visible_layers: dict[int, str] = {}
        if node is not None:
            top = len(self.layers) - 1 - node.layer
            visible_layers[top] = "provides"
            for d in node.dirs[1:]:
                visible_layers[len(self.layers) - 1 - d.layer] = "merged"
        for info in reversed(self.layers):
            state, kind = _layer_entry(info.path, target)
            if state is None:
                continue
            idx = info.number - 1
            if state == "whiteout":
                hits.append(WhichHit(info, "deletes", kind))
            elif idx in visible_layers:
                hits.append(WhichHit(info, visible_layers[idx], kind))
            else:
                hits.append(WhichHit(info, "shadowed", kind))
        # an opaque parent "deletes" only what some lower layer holds
        while hits and hits[-1].role == "deletes" and hits[-1].kind == "opaque directory":
            hits.pop()
        return node, hits

    # ------------------------------------------------------------------ layers
    def layer_stats(self) -> list[LayerStats]:
        """Per-layer statistics, base first (see the module docstring)."""
        out = []
        n = len(self.layers)
        for i, info in enumerate(self.layers):
            below = Union(self.lowers[:i]) if i else None
            st = LayerStats(info)
            seen: set[tuple[int, int]] = set()
            self._scan_layer(info.path, "/", below, st, seen, n - 1 - i)
            out.append(st)
        return out

    def _scan_layer(self, real: str, path: str, below: Union | None, st: LayerStats, seen: set[tuple[int, int]],
                    top_index: int) -> None:
        try:
            names = sorted(os.listdir(real), key=os.fsencode)
        except OSError as e:
            log.warning("cannot list %s: %s", real, e)
            return
        for name in names:
            p = os.path.join(real, name)
            try:
                lst = os.lstat(p)
            except OSError:
                continue
            cpath = _join(path, name)
            if name == wh.OPAQUE_MARKER:
                continue
            target = None
            if wh.is_hidden_name(name):
                try:
                    target = wh.whiteout_target(name)
                except ValueError:
                    continue
            elif wh.is_whiteout(p, lst):
                target = name
            if target is not None:
                if below is not None and below.try_lookup(_join(path, target)) is not None:
                    st.deleted += 1
                continue
            before = below.try_lookup(cpath) if below is not None else None
            if before is None:
                st.added += 1
            elif not (stat.S_ISDIR(lst.st_mode) and before.is_dir) or _meta_differs(lst, before.st):
                st.changed += 1
            if stat.S_ISREG(lst.st_mode):
                key = (lst.st_dev, lst.st_ino)
                if key not in seen:
                    seen.add(key)
                    st.content_size += lst.st_size
                    final = self.union.try_lookup(cpath)
                    if final is None or final.layer != top_index or final.real != p:
                        st.wasted += lst.st_size
                        st.wasted_paths.append((cpath, lst.st_size))
            if stat.S_ISDIR(lst.st_mode):
                if before is not None and before.is_dir and wh.is_opaque_dir(p):
                    present = set(os.listdir(p))
                    st.deleted += sum(1 for c in below.listdir(before)  # type: ignore[union-attr]
                                      if c.path.rsplit("/", 1)[-1] not in present)
                self._scan_layer(p, cpath, below, st, seen, top_index)

    # ------------------------------------------------------------------ export
    def export(self, out: BinaryIO) -> int:
        """Write the flattened root filesystem as a tar (``docker export``); returns the number of entries."""
        return write_merged_tar(self.tree_dirs, out, owners=self.store.owners)


def _meta_differs(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid)


def _layer_entry(layer: str, path: str) -> tuple[str | None, str]:
    """What the single layer directory ``layer`` holds at ``path`` (no links followed, components must be
    real directories of this layer): ("present", kind), ("whiteout", kind) or (None, "")."""
    comps = _components(path)
    cur = layer
    for i, name in enumerate(comps):
        p = os.path.join(cur, name)
        try:
            st = os.lstat(p)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                if os.path.lexists(os.path.join(cur, wh.WH_PREFIX + name)):
                    return "whiteout", "whiteout"
                if wh.is_opaque_dir(cur) and i > 0:
                    return "whiteout", "opaque directory"
                return None, ""
            raise
        if wh.is_whiteout(p, st):
            return "whiteout", "whiteout"
        if i == len(comps) - 1:
            return "present", kind_of(st.st_mode)
        if not stat.S_ISDIR(st.st_mode):
            return None, ""
        cur = p
    return "present", "directory"


__all__ = ["ImageTree", "LayerInfo", "LayerStats", "WhichHit", "kind_of"]
