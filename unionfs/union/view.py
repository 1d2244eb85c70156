"""The read-only union view: resolve a path and list a directory over lowers + an optional upper.

Pure over real directories; imports no FUSE. Layers are given **base first** (docs/design.md, "Principles") and
only this module walks them top-down.

Rules (the kernel overlayfs' lookup):

* the upper hides the lowers, a higher lower hides a lower one;
* a whiteout in any format of :mod:`unionfs.layer.whiteout` ends the search for its name;
* a non-directory ends the search; directories merge down to (and including) the first opaque one; a
  layer's root is never opaque (the root merges every layer, as in the kernel: see :class:`Union`);
* a name starting with ``.wh.`` is never visible.

Errors: a layer directory missing (ENOENT/ENOTDIR) merely contributes nothing; any other error reading a layer
(EMFILE, EIO, EACCES...) fails the listing with that errno (a lookup: any lstat error but those two), never a
shorter answer.

Inode numbers: one namespace for the whole mount. An upper entry that carries the private xattr
:data:`INO_XATTR` (written at copy-up) keeps the number it had in the lower; otherwise the number is the real
``st_ino``, with the layer filesystem's index in the top bits when the layers span several filesystems (the
kernel's ``xino`` idea). Numbers are therefore stable across copy-up, rename and remount.

Path cache (``cache=True``, used by :class:`unionfs.union.overlay.Overlay`, the only writer of a mounted upper): the
resolution of every path looked up is kept in a tree of :class:`Entry` records (name -> record), so that a lookup
costs one dict step per component and one ``lstat`` of the final real entry instead of a walk of every layer per
component. The writer must call :meth:`Union.forget` for every path whose resolution it changes (and
:meth:`Union.forget_all` when the hardlink index changes); forgetting a directory forgets its subtree. The mount
daemon's node records are entries of this same tree (:meth:`Union.attach`): one record per kernel node holds
both its resolution and what the daemon knows of it, and a lookup is :meth:`Union.lookup_in` on the parent's
record, with no path built.

Lower hardlinks: once one alias of a lower hardlinked file has been copied up, its data lives in the index
(``WORK/unionfs/index/<ino>``) and every other lower alias resolves to that index file (index=on).

Metadata-only copies (the kernel's ``metacopy=on`` format, docs/semantics.md "Metadata-only copy-up"): an upper
regular file carrying the private xattr :func:`metacopy_xattr` holds the file's metadata and size but no data;
its data is the lower regular file at the same union path, or at the path its :func:`redirect_xattr` names
(absolute: from the lowers' root; relative: a name in the parent's lower directories), looked up in the lower
layers only. Such a node's :attr:`Node.data` says where the data is; its ``st`` is the upper's with the lower
data's ``st_blocks``, as the kernel shows it. Only the upper is checked for the mark: a metacopy file in a lower
layer reads as what it holds (its sparse zeros).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
from sys import intern  # one string per name for the path cache, the name maps and the node table
from typing import Iterator, Sequence

from unionfs.layer import whiteout as wh
from unionfs.layer.ownership import Owners
from unionfs.union.realdir import Dir, Dirs

log = logging.getLogger(__name__)

#: private xattr holding an upper entry's overlay inode number (decimal ASCII)
INO_SUFFIX = "overlay.unionfs.ino"
#: private xattr on an index file: how many lower aliases still resolve to it
NLINK_SUFFIX = "overlay.unionfs.lowerlinks"
#: the kernel's private xattrs of a metadata-only copy (see :func:`metacopy_xattr`, :func:`redirect_xattr`)
METACOPY_SUFFIX = "overlay.metacopy"
REDIRECT_SUFFIX = "overlay.redirect"


def ino_xattr() -> str:
    """The xattr name storing an upper entry's inode number (``trusted.`` as root, ``user.`` otherwise)."""
    return wh.xattr_namespace() + INO_SUFFIX


def nlink_xattr() -> str:
    """The xattr name storing an index file's count of pending lower aliases."""
    return wh.xattr_namespace() + NLINK_SUFFIX


def metacopy_xattr() -> str:
    """The kernel's mark of an upper file whose data is still in a lower layer (``trusted.overlay.metacopy`` as
    root, ``user.overlay.metacopy`` otherwise, as the kernel's ``userxattr``); its value is empty (a longer one
    carries an fs-verity digest, which we neither write nor check)."""
    return wh.xattr_namespace() + METACOPY_SUFFIX


def redirect_xattr() -> str:
    """The kernel's ``overlay.redirect`` xattr name (our namespace): where in the lowers an upper entry's lower
    part is when it is not at its own path."""
    return wh.xattr_namespace() + REDIRECT_SUFFIX


def _overlay_xattr(path: str, suffix: str) -> bytes | None:
    """The value of ``trusted.SUFFIX`` or else ``user.SUFFIX`` on the entry at the host path ``path`` (not
    followed), None when it has neither. Both are read, as for whiteouts and opaque marks: an upper written by
    an unprivileged daemon (``user.``) is read right by root's tools too (a ``commit`` as root)."""
    for ns in (wh.TRUSTED, wh.USER):
        try:
            return os.getxattr(path, ns + suffix, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return None


def has_metacopy_mark(path: str) -> bool:
    """True when the entry at the host path ``path`` carries the kernel's metacopy mark (``overlay.metacopy`` in
    either namespace, not followed)."""
    return _overlay_xattr(path, METACOPY_SUFFIX) is not None


def read_redirect(path: str) -> str | None:
    """The ``overlay.redirect`` of the entry at the host path ``path`` (either namespace): an absolute lower
    path ("/a/b") or one name (relative to the parent's lower directories); None when it has none. A value the
    kernel would refuse (empty, or a relative one with a "/") raises ValueError."""
    raw = _overlay_xattr(path, REDIRECT_SUFFIX)
    if raw is None:
        return None
    value = os.fsdecode(raw.rstrip(b"\0"))
    if not value or (not value.startswith("/") and "/" in value):
        raise ValueError(f"invalid redirect {value!r}")
    return value


def _err(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


class Data:
    """Where the data of a metacopy upper file is: the lower regular file ``name`` of the real directory ``at``
    (None: not found, so reading fails with EIO, as the kernel's lookup does), found at the union path ``path``
    of the lower layers (what an absolute redirect to it says), with the lower file's ``st_blocks``. (Plain
    slotted classes here and below, not dataclasses: the daemon's start would load ``dataclasses`` and
    ``inspect``, ~12 ms of every mount.)"""

    __slots__ = ("path", "at", "name", "blocks")

    def __init__(self, path: str, at: Dir | None = None, name: str = "", blocks: int = 0) -> None:
        self.path, self.at, self.name, self.blocks = path, at, name, blocks

    def __repr__(self) -> str:
        return f"Data({self.path!r}, {self.at!r}, {self.name!r}, {self.blocks})"

    @property
    def real(self) -> str:
        """A host path of the lower data file (see :attr:`Node.real`); EIO when it was not found."""
        if self.at is None:
            raise _err(errno.EIO, self.path)
        return self.at.where(self.name)

    def open(self, flags: int) -> int:
        """Open the lower data file (read-only flags); EIO when it was not found."""
        if self.at is None:
            raise _err(errno.EIO, self.path)
        return self.at.open(self.name, flags)


class Node:
    """One resolved union entry.

    ``layer`` indexes :attr:`Union.layers` (top-down; 0 is the upper when there is one). The real entry holding
    the data and attributes is ``rname`` in the real directory ``at`` (for an indexed hardlink alias: the index
    file; for the root: ``"."`` of the top layer's root), ``st`` its lstat. ``dirs`` is, for a directory, the
    stack of real directories to merge, top-down. ``indexed`` marks a lower hardlink alias whose data already
    lives in the index. ``data`` is set for a metacopy upper file only: its attributes are the upper entry's,
    its data is there (see :meth:`open_data`).
    """

    __slots__ = ("path", "layer", "at", "rname", "st", "ino", "dirs", "indexed", "merged", "nocap", "deep",
                 "names", "data", "epoch")

    def __init__(self, path: str, layer: int, at: Dir, rname: str, st: os.stat_result, ino: int,
                 dirs: tuple[Dir, ...] = (), *, indexed: bool = False, merged: bool = False) -> None:
        self.path, self.layer, self.at, self.rname, self.st, self.ino = path, layer, at, rname, st, ino
        self.dirs = dirs
        self.indexed = indexed
        self.merged = merged
        #: known to carry no ``security.capability`` xattr (the kernel asks before every write(2)); only ever
        #: set True after a real ENODATA, and a node is forgotten whenever its xattrs may change
        self.nocap = False
        #: a directory from a lazy listing (:meth:`Union.listdir`): ``dirs`` below its top layer are not yet
        #: cut at an opaque one (:meth:`Union._cut`, before any use of them)
        self.deep = False
        #: a directory's lookups so far without a :meth:`Union._lower_top` map (an int: one is made at the
        #: :data:`NAMES_AFTER`-th), then that map (name -> the first of its lower layers holding the name or its
        #: whiteout; the node's stack never changes, so neither does the map)
        self.names: int | dict[str, int] = 0
        #: for a metacopy upper file: where its data is (None: the data is the real entry's)
        self.data: Data | None = None
        #: the union's :meth:`Union.forget_all` count when the node was put in the path cache (an older one
        #: is stale)
        self.epoch = 0

    def __repr__(self) -> str:
        return f"Node({self.path!r}, layer={self.layer}, real={self.at!r}/{self.rname!r}, ino={self.ino})"

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def name(self) -> str:
        """The entry's name in its union directory ("" for the root)."""
        return self.path.rpartition("/")[2]

    @property
    def real(self) -> str:
        """A host path of the real entry, valid until the union's next :meth:`Dirs.trim` (see
        :mod:`unionfs.union.realdir`): short in descriptor mode however deep the entry is."""
        return self.at.where(self.rname)

    def lstat(self) -> os.stat_result:
        """A fresh lstat of the real entry."""
        return self.at.lstat(self.rname)

    def open(self, flags: int, mode: int = 0o777) -> int:
        """Open the real entry (relative to its directory)."""
        return self.at.open(self.rname, flags, mode)

    def open_data(self, flags: int) -> int:
        """Open the file holding the node's data for reading (read-only ``flags``): the lower data of a metacopy
        file (EIO when it is missing), else the real entry."""
        if self.data is not None:
            return self.data.open(flags)
        return self.open(flags)


class SlimStat:
    """The part of a stat result a cached node keeps (type, identity, link count): a fraction of the memory
    of an ``os.stat_result``. :meth:`Union.lookup` always puts a fresh full one back."""

    __slots__ = ("st_mode", "st_ino", "st_dev", "st_nlink")

    def __init__(self, st: os.stat_result) -> None:
        self.st_mode, self.st_ino, self.st_dev, self.st_nlink = st.st_mode, st.st_ino, st.st_dev, st.st_nlink


class Entry:
    """One record of the path cache: the resolved node of one name (None: resolve it again, its children's
    records kept) and the records of the names below it, name -> record (None: none).

    A caller may put records of its own in the tree (the mount daemon's node records, a subclass: see
    :meth:`Union.attach`); such a record is :attr:`pinned`: the cache never removes it, only clears its
    node, and the caller adds and removes it by name itself."""

    __slots__ = ("node", "kids")
    #: whether the record belongs to the cache's user (see the class docstring)
    pinned = False

    def __init__(self, node: Node | None = None) -> None:
        self.node = node
        self.kids: dict[str, Entry] | None = None


#: errors of a layer's directory that only mean "this layer has no such directory" (skipped while merging);
#: every other error (EMFILE, ENFILE, EIO, EACCES, ENOMEM...) fails the listing: a partial listing would be
#: taken for the truth (and cached, by us and by the kernel)
ABSENT = (errno.ENOENT, errno.ENOTDIR)


class _SpareFd:
    """One descriptor held in reserve so that a directory can still be read when every other descriptor the
    process may have (RLIMIT_NOFILE) is taken, typically by files open through the mount.

    Reading a directory needs exactly one descriptor (``scandir`` closes it before the next layer is read);
    when even that one fails with EMFILE, :meth:`scan` gives the reserve back, reads, and takes it again. A
    listing then fails (with EMFILE, never silently) only when another thread takes the freed slot first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = self._take()

    @staticmethod
    def _take() -> int | None:
        try:
            return os.open("/", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None

    def scan(self, d: Dir) -> list[tuple[str, bool]]:
        """The entries of the directory ``d`` (one descriptor, closed on return); raises OSError."""
        try:
            return _read_dir(d)
        except OSError as e:
            if e.errno != errno.EMFILE:
                raise
            log.debug("EMFILE listing %s: using the spare descriptor", d)
        with self._lock:
            if self._fd is None:
                self._fd = self._take()
                if self._fd is None:
                    raise _err(errno.EMFILE, d.path)
            os.close(self._fd)
            self._fd = None
            try:
                return _read_dir(d)
            finally:
                self._fd = self._take()


@functools.cache
def _spare_fd() -> _SpareFd:
    """The process' one :class:`_SpareFd` (made by the first :class:`Union`, while descriptors are free)."""
    return _SpareFd()


def _read_dir(d: Dir) -> list[tuple[str, bool]]:
    """(name, is a directory) of each entry of ``d`` (the type read while the directory is open: an entry
    without a d_type is stat-ed relative to it)."""
    with os.scandir(d.where()) as it:  # one descriptor (scandir of a descriptor would take two)
        out = []
        for e in it:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile
                continue
            out.append((e.name, is_dir))
        return out


def _scan(d: Dir) -> list[tuple[str, bool]]:
    """The entries of the directory ``d``, read with one descriptor (the spare one at EMFILE). Raises
    OSError."""
    return _spare_fd().scan(d)


#: the path cache takes no new entries beyond this many (bounds the daemon's memory: ~650 bytes each)
CACHE_MAX = 10_000
#: ... but directories up to this many
CACHE_MAX_DIRS = 400_000
#: a merged directory gets its lowers' name map (:meth:`Union._lower_top`) at this many lookups in it: a
#: directory looked into once (a ``cat`` of one file per directory) costs lstats, not a listing of every layer
NAMES_AFTER = 3
#: at most this many directories keep a name map (~5 KB each for 100 names)
NAME_MAPS = 256
CAP_XATTR = "security.capability"


class Union:
    """A read-only union over ``lowers`` (base first) and ``upper`` (None: read-only union).

    ``index_dir`` is where copied-up lower hardlinks live (None: no index). ``cache``: keep path resolutions
    (see the module docstring); only correct when every change of the layers goes through a writer that calls
    :meth:`forget`. A caching union is long-lived: it reaches real directories through descriptors
    (:mod:`unionfs.union.realdir`), and its user calls :meth:`trim` between two operations.

    ``lower_root``: the union of the whole lower layers, in which a metacopy file's absolute redirect is looked
    up, for a union whose lowers are one directory's stack rather than the layers' roots (the packer's unions
    of a redirected directory); None: this union's own lowers.

    ``owners``: how every lstat of the layers shows owners (:class:`unionfs.layer.ownership.Owners`: a rootless
    store's overrides); None: as they are.
    """

    def __init__(self, lowers: Sequence[str], upper: str | None = None, index_dir: str | None = None,
                 cache: bool = False, lower_root: "Union | None" = None, owners: Owners | None = None) -> None:
        self.lowers = lowers
        self.upper = upper
        self.index_dir = index_dir
        self.cache = cache
        self.lower_root = lower_root
        self._ino_cache: dict[tuple[int, int, int], int] = {}
        self.layers = ([self.upper] if self.upper is not None else []) + [os.fspath(p) for p in
                                                                          reversed(self.lowers)]
        if not self.layers:
            raise ValueError("a union needs at least one layer")
        self._fsidx: dict[int, int] = {}
        for p in self.layers:
            dev = os.stat(p).st_dev
            self._fsidx.setdefault(dev, len(self._fsidx))
        n = len(self._fsidx)
        self._shift = 64 - max(1, n.bit_length()) if n > 1 else 0
        self._ino_xattr = ino_xattr()
        #: (st_dev, st_ino, st_ctime_ns) of an upper regular file -> its metacopy mark (see :meth:`_mark`)
        self._mark_cache: dict[tuple[int, int, int], str | None] = {}
        #: per layer: union path of a lower directory -> opaque (lowers never change while mounted)
        self._opaque_cache: list[dict[str, bool]] = [{} for _ in self.layers]
        self._opaque_count = 0
        #: the directories holding a name map (:attr:`Node.names`) by id, most recently used last
        self._name_maps: dict[int, Node] = {}
        # The root merges every layer: an opaque mark (xattr or ``.wh..wh..opq``) on a layer's root is
        # ignored. The OCI image spec defines opaque whiteouts for directories below the root and says nothing
        # of the root itself; docker's overlay2 driver and containerd's overlayfs snapshotter (the default
        # runtimes) hand the extracted layer directories to the kernel overlayfs, which never looks the root
        # up and so never applies an opaque mark there (fs/overlayfs/super.c: the root's stack is every
        # layer). What docker and containerd show is therefore "root opaque ignored"; so do we (the mount,
        # treeview's ls/find/cat and export all go through this), and the store keeps the mark as unpacked.
        self.dirs = Dirs(fds=self.cache, owners=owners)
        self._root_dirs: tuple[Dir, ...] = tuple(self.dirs.root(i, p) for i, p in enumerate(self.layers))
        self._index = self.dirs.root(0, self.index_dir) if self.index_dir is not None else None
        self._tree = Entry()
        self._cached = 0
        #: how many times the whole cache was forgotten (see :attr:`Node.epoch`)
        self._epoch = 0
        _spare_fd()  # set the spare descriptor aside now, while descriptors are free

    def trim(self) -> None:
        """Between two operations: close the directory descriptors beyond the union's budget."""
        self.dirs.trim()

    def close(self) -> None:
        """Close every descriptor the union holds (it is not used afterwards)."""
        self.dirs.close()
        for d in self._root_dirs + ((self._index,) if self._index is not None else ()):
            d.close()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ inode numbers
    def real_ino(self, st: os.stat_result) -> int:
        """The overlay inode number of a real entry that carries no persistent number."""
        if not self._shift:
            return st.st_ino
        idx = self._fsidx.get(st.st_dev, len(self._fsidx) - 1)
        return st.st_ino ^ (idx << self._shift)

    def ino_of(self, layer: int, at: Dir, name: str, st: os.stat_result) -> int:
        """The overlay inode number of the entry ``name`` of the real directory ``at`` in ``layer``."""
        if self.upper is not None and layer == 0:
            key = (st.st_dev, st.st_ino, st.st_ctime_ns)
            v = self._ino_cache.get(key)
            if v is not None:
                return v
            try:
                raw = os.getxattr(at.where(name), self._ino_xattr, follow_symlinks=False)
                v = int(raw)
            except (OSError, ValueError):
                v = self.real_ino(st)
            if len(self._ino_cache) > 65536:
                self._ino_cache.clear()
            self._ino_cache[key] = v
            return v
        return self.real_ino(st)

    # ------------------------------------------------------------------ metadata-only copies
    def _finish(self, node: Node, parent: Node) -> None:
        """Complete ``node``, just found in the directory ``parent``: its inode number, its index file (a lower
        hardlink alias already copied up) and, for a metacopy upper file, where its data is."""
        node.ino = self.ino_of(node.layer, node.at, node.rname, node.st)
        self._indexed(node)
        if node.layer == 0 and self.upper is not None and stat.S_ISREG(node.st.st_mode):
            mark = self._mark(node)
            if mark is not None:
                node.data = self._find_data(parent, node, mark)
                node.st = _with_blocks(node.st, node.data.blocks)

    def _mark(self, node: Node) -> str | None:
        """None when the upper regular file ``node`` is not a metacopy file; else its redirect ("" when it has
        none, "/" when it has one we cannot follow, which makes its data missing). Remembered by the file's
        identity and ctime (any xattr change moves the ctime)."""
        st = node.st
        key = (st.st_dev, st.st_ino, st.st_ctime_ns)
        if key in self._mark_cache:
            return self._mark_cache[key]
        real = node.real
        if not has_metacopy_mark(real):
            mark = None
        else:
            try:
                mark = read_redirect(real) or ""
            except ValueError as e:
                log.warning("metacopy file %s: %s", node.path, e)
                mark = "/"
        if len(self._mark_cache) > 65536:
            self._mark_cache.clear()
        self._mark_cache[key] = mark
        return mark

    def _find_data(self, parent: Node, node: Node, redirect: str) -> Data:
        """Where the data of the metacopy file ``node`` (in ``parent``) is: the lower regular file at its own
        name (``redirect`` ""), at the name ``redirect`` in the parent's lower directories, or at the absolute
        lower path ``redirect``; a :class:`Data` without a file when there is none (as the kernel: EIO)."""
        if not redirect:
            path, found = node.path, self.child(parent, node.name, start=1)
        elif not redirect.startswith("/"):
            path, found = _join(parent.path, redirect), self.child(parent, redirect, start=1)
        else:
            path = "/" + "/".join(_components(redirect))
            found = self._lower_walk(path) if path != "/" else None
        if found is None or not stat.S_ISREG(found.st.st_mode):
            log.warning("metacopy file %s: no lower data at %s", node.path, path)
            return Data(path)
        return Data(path, found.at, found.rname, found.st.st_blocks)

    def _lower_walk(self, path: str) -> Node | None:
        """The entry at the union path ``path`` of the lower layers alone (below the upper), or None."""
        if self.lower_root is not None:
            try:
                return self.lower_root.try_lookup(path)
            except OSError:
                return None
        node: Node | None = self.root()
        try:
            for name in _components(path):
                if node is None or not node.is_dir:
                    return None
                node = self.child(node, name, start=1 if self.upper is not None else 0)
        except OSError:  # ENAMETOOLONG, or a layer that cannot be read
            return None
        return node

    # ------------------------------------------------------------------ lookup
    def root(self) -> Node:
        """The root directory: every layer's root merges, down to an opaque one."""
        dirs = self._root_dirs
        top = dirs[0]
        st = top.lstat(".")
        return Node("/", 0, top, ".", st, self.ino_of(0, top, ".", st), dirs, merged=len(dirs) > 1)

    def _is_opaque(self, d: Dir, path: str) -> bool:
        """Opaque check of the directory ``d`` shown at the union path ``path``; memoized for lower layers
        (read-only, never change while mounted; a lower directory only ever shows at its own path)."""
        if self.upper is not None and d.layer == 0:
            return wh.is_opaque_dir(d.where())
        memo = self._opaque_cache[d.layer]
        v = memo.get(path)
        if v is None:
            if self._opaque_count > 200000:
                for m in self._opaque_cache:
                    m.clear()
                self._opaque_count = 0
            v = memo[path] = wh.is_opaque_dir(d.where())
            self._opaque_count += 1
        return v

    def _indexed(self, node: Node) -> None:
        """Point a lower hardlink alias at its index file, once one of its names was copied up."""
        if (self._index is not None and self.upper is not None and node.layer > 0
                and stat.S_ISREG(node.st.st_mode) and node.st.st_nlink > 1):
            name = str(node.ino)
            try:
                ist = self._index.lstat(name)
            except FileNotFoundError:
                return
            node.at, node.rname, node.st, node.indexed = self._index, name, ist, True

    def lookup(self, path: str, hint: int = 0) -> Node:
        """Resolve the union path ``path`` ("/a/b") with fresh attributes (``st``); raises OSError
        ENOENT/ENOTDIR/ENAMETOOLONG. ``hint``: the layer the entry was found at before (see :meth:`child`)."""
        if not self.cache:
            return self._walk(path)
        node, fresh = self._resolve(path, hint)
        if fresh or self._refresh(node):
            return node
        # changed behind the cache's back: resolve again from scratch
        self.forget(path)
        return self.resolve(path)

    def resolve(self, path: str, hint: int = 0) -> Node:
        """Like :meth:`lookup`, but with the cache the node's ``st`` may be older than the last write: for
        callers that need the resolution only (the real path, layer, type, inode number)."""
        if not self.cache:
            return self._walk(path)
        return self._resolve(path, hint)[0]

    def _refresh(self, node: Node) -> bool:
        """Put a fresh lstat of a cached node's real entry in its ``st``; False (nothing changed) when the real
        entry is gone or is another file now."""
        try:
            st = node.lstat()
        except FileNotFoundError:
            return False
        if st.st_ino != node.st.st_ino or st.st_dev != node.st.st_dev:
            return False
        node.st = st if node.data is None else _with_blocks(st, node.data.blocks)
        return True

    def _resolve(self, path: str, hint: int = 0) -> tuple[Node, bool]:
        """:meth:`resolve` with the cache, and whether the node was resolved just now (its ``st`` is new)."""
        ent: Entry | None = self._tree
        node = self.cached(ent)  # type: ignore[arg-type]
        fresh = node is None
        if node is None:
            node = self._keep(self._tree, self.root(), always=True)
        comps = _components(path)
        last = len(comps) - 1
        for i, name in enumerate(comps):
            ent, node, fresh = self._step(ent, node, name, hint if i == last else 0)
        self._cut(node)
        return node, fresh

    def _step(self, ent: Entry | None, parent: Node, name: str, hint: int) -> tuple[Entry | None, Node, bool]:
        """One step of a resolution: the entry ``name`` of the directory ``parent`` (whose record is ``ent``;
        None: not cached), its record (None: not cached) and whether it was resolved just now. Raises ENOTDIR,
        ENOENT."""
        if not parent.is_dir:
            raise _err(errno.ENOTDIR, _join(parent.path, name))
        kids = ent.kids if ent is not None else None
        kid = kids.get(name) if kids else None
        if kid is not None:
            node = kid.node
            # a file's record may hold the resolution of another of its names (a hardlink the daemon knows)
            if (node is not None and node.epoch == self._epoch
                    and (stat.S_ISDIR(node.st.st_mode) or node.path == _join(parent.path, name))):
                return kid, node, False
        found = self.child(parent, name, hint=hint)
        if found is None:
            raise _err(errno.ENOENT, _join(parent.path, name))
        if kid is None and ent is not None and self._room(found):
            kid = Entry()
            if kids is None:
                kids = ent.kids = {}
            kids[intern(name)] = kid
        if kid is not None:
            self._keep(kid, found)
        # a full cache keeps what it has (dropping it all made a walk of a big tree thrash): the rest of this
        # path resolves uncached
        return kid, found, True

    def _keep(self, ent: Entry, node: Node, *, always: bool = False) -> Node:
        """Put ``node`` in the record ``ent`` if the cache has room, the record held a node already or
        ``always``."""
        if self.cached(ent) is None:
            if not always and not self._room(node):
                return node
            self._cached += 1
        node.epoch = self._epoch
        ent.node = node
        return node

    def cached(self, ent: Entry) -> Node | None:
        """The node the record ``ent`` holds, None when it holds none or a stale one; its ``st`` may be old."""
        node = ent.node
        return node if node is not None and node.epoch == self._epoch else None

    def attach(self, root: Entry) -> None:
        """Make ``root`` (an empty record) the cache's root record, in place of the cache so far: its user's
        records (the mount daemon's nodes) are then the cache's, see :class:`Entry`."""
        self._tree = root
        self._cached = 0

    def lookup_in(self, ent: Entry, parent: Node, name: str, hint: int = 0) -> Node:
        """:meth:`lookup` of the entry ``name`` of the directory ``parent`` whose record is ``ent`` (no path is
        built or walked): with fresh attributes; raises OSError ENOENT/ENOTDIR/ENAMETOOLONG."""
        kid, node, fresh = self._step(ent, parent, name, hint)
        if not fresh and not self._refresh(node):
            self._forget_kid(ent, name, keep_children=False)
            kid, node, fresh = self._step(ent, parent, name, 0)
        self._cut(node)
        return node

    def refresh(self, ent: Entry) -> Node | None:
        """The node of the record ``ent`` with fresh attributes; None when it holds none (or a stale one, or its
        real entry changed): then resolve it by path."""
        node = self.cached(ent)
        if node is None or not self._refresh(node):
            return None
        self._cut(node)
        return node

    def forget(self, path: str, *, keep_children: bool = False) -> None:
        """The resolution of ``path`` may have changed: drop it (and, unless ``keep_children``, everything
        cached under it). ``keep_children`` is for a directory copied up: its children resolve as before."""
        if not self.cache:
            return
        comps = _components(path)
        if not comps:
            self.forget_all()
            return
        ent = self._tree
        for name in comps[:-1]:
            nxt = ent.kids.get(name) if ent.kids else None
            if nxt is None:
                return
            ent = nxt
        self._forget_kid(ent, comps[-1], keep_children=keep_children)

    def _forget_kid(self, ent: Entry, name: str, *, keep_children: bool) -> None:
        """:meth:`forget` of the name ``name`` of the record ``ent``: a record of the cache's own goes (with
        its subtree); a pinned one stays, its node cleared, and unless ``keep_children`` those of its subtree
        too."""
        kid = ent.kids.get(name) if ent.kids else None
        if kid is None:
            return
        if not keep_children and not kid.pinned:
            del ent.kids[name]  # type: ignore[union-attr]
            self.uncache(kid)
            return
        stack = [kid]
        while stack:
            e = stack.pop()
            self._clear(e)
            if keep_children or not e.kids:
                continue
            for n, k in list(e.kids.items()):
                if k.pinned:
                    stack.append(k)
                else:
                    del e.kids[n]
                    self.uncache(k)

    def uncache(self, ent: Entry) -> None:
        """Clear the node of the record ``ent`` and of every record below it: for a record taken out of the
        tree (by the cache, or by its user: a node the kernel forgot). The count of the nodes the cache holds
        follows; a record dropped without this would keep its place in :data:`CACHE_MAX` for good, until the
        cache, full of nothing, cached no node at all."""
        stack = [ent]
        while stack:
            e = stack.pop()
            self._clear(e)
            if e.kids:
                stack.extend(e.kids.values())

    def _clear(self, ent: Entry) -> None:
        """Drop the node the record ``ent`` holds, and its place in the count of cached nodes."""
        if self.cached(ent) is not None:
            self._cached -= 1
        ent.node = None

    def adopt(self, ent: Entry, children: Sequence[Node]) -> None:
        """Cache the just listed ``children`` of the directory whose record is ``ent`` (a readdir answers every
        later lookup of them). Names already cached are left alone. The caller gives the nodes up: their ``st``
        becomes a :class:`SlimStat`."""
        if not self.cache:
            return
        kids = ent.kids
        for c in children:
            name = intern(c.path.rpartition("/")[2])
            kid = kids.get(name) if kids else None
            if (kid is None or self.cached(kid) is None) and self._room(c):
                c.st = SlimStat(c.st)  # type: ignore[assignment]
                if kid is None:
                    if kids is None:
                        kids = ent.kids = {}
                    kid = kids[name] = Entry()
                self._keep(kid, c)

    def _room(self, node: Node) -> bool:
        """Whether the cache takes ``node``: anything below :data:`CACHE_MAX` entries, directories up to
        :data:`CACHE_MAX_DIRS` (a lookup of an uncached file in a cached directory still costs one lstat or
        two, not a probe of every layer's stack from the root)."""
        return self._cached < CACHE_MAX or (self._cached < CACHE_MAX_DIRS and stat.S_ISDIR(node.st.st_mode))

    def forget_all(self) -> None:
        """Drop the whole path cache (the hardlink index changed): every node it holds is stale from now on
        (:attr:`Node.epoch`); the records stay."""
        self._epoch += 1
        self._cached = 0

    def _walk(self, path: str) -> Node:
        node = self.root()
        for name in _components(path):
            if not node.is_dir:
                raise _err(errno.ENOTDIR, path)
            found = self.child(node, name)
            if found is None:
                raise _err(errno.ENOENT, path)
            node = found
        return node

    def try_lookup(self, path: str) -> Node | None:
        """Like :meth:`lookup` but None when the path does not exist."""
        try:
            return self.lookup(path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def child(self, parent: Node, name: str, *, start: int = 0, hint: int = 0) -> Node | None:
        """The entry ``name`` in directory ``parent``; None when absent or hidden.

        ``start`` skips the first ``start`` layers of the parent's stack (``start=1`` on a writable union
        asks "what would show if the upper entry were gone?"). ``hint``: the layer ``name`` was found at before
        in this same directory (a node's :attr:`Node.layer`); the lower layers above it are not probed, as they
        are read-only while the union lives: what they lacked then (the name, its whiteout) they lack now. The
        upper is always probed. A wrong hint can only hide entries of the skipped lowers, so only a caller that
        got it from this union's own answer for ``(parent, name)`` may give one.
        """
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            raise _err(errno.ENAMETOOLONG, name)
        if wh.is_hidden_name(name) or name in (".", ".."):
            return None
        self._cut(parent)
        top: Node | None = None
        whname = wh.WH_PREFIX + name
        dirs: list[Dir] = []
        skip = max(start, hint, self._lower_top(parent, name))
        first = 0 if self.upper is not None and start == 0 else 1 << 30  # the upper, never skipped
        for d in parent.dirs:
            if d.layer < skip and d.layer != first:
                continue
            try:
                st = d.lstat(name)
            except FileNotFoundError:
                if _lexists(d, whname):
                    break
                continue
            except NotADirectoryError:
                continue
            if wh.may_be_whiteout(st) and wh.is_whiteout(d.where(name), st):
                break
            if top is None:
                top = Node(_join(parent.path, name), d.layer, d, name, st, 0)
                if not stat.S_ISDIR(st.st_mode):
                    break
            elif not stat.S_ISDIR(st.st_mode):
                break
            sub = d.child(name)
            dirs.append(sub)
            if self._is_opaque(sub, top.path):
                break
        if top is None:
            return None
        top.dirs = tuple(dirs)
        top.merged = len(dirs) > 1
        self._finish(top, parent)
        return top

    def _lower_top(self, parent: Node, name: str) -> int:
        """The first of the lower layers of directory ``parent`` that holds ``name`` or its whiteout (a layer
        past every layer when none does), from a map of the names in those layers; 0 (nothing to skip) for a
        directory without one. Lower layers never change while the union lives, and a node's stack never changes,
        so a map kept on the node stays true; only the :data:`NAME_MAPS` most recently used are kept,
        and a directory gets one only at its :data:`NAMES_AFTER`-th lookup (a ``cat`` of files named on the
        command line: one listing per layer instead of an lstat and a whiteout lstat per layer and file)."""
        names = parent.names
        maps = self._name_maps
        if type(names) is dict:
            maps[id(parent)] = maps.pop(id(parent))  # most recently used
            return names.get(name, 1 << 30)
        if not self.cache:
            return 0
        lowers = parent.dirs[1:] if self.upper is not None and parent.dirs and parent.dirs[0].layer == 0 else \
            parent.dirs
        if len(lowers) < 2 or names + 1 < NAMES_AFTER:  # type: ignore[operator]
            parent.names = names + 1  # type: ignore[operator]
            return 0
        made: dict[str, int] = {}
        for d in reversed(lowers):  # bottom up: the top-most layer writes last
            try:
                entries = _scan(d)
            except OSError:
                return 0  # lookups probe the layers one by one instead
            for n, _ in entries:
                if n.startswith(wh.WH_PREFIX):
                    try:
                        t = wh.whiteout_target(n)
                    except ValueError:
                        t = None
                    if t is None:
                        continue
                    n = t
                made[intern(n)] = d.layer
        if len(maps) >= NAME_MAPS:
            maps.pop(next(iter(maps))).names = 0
        parent.names = made
        maps[id(parent)] = parent
        return made.get(name, 1 << 30)

    def _cut(self, node: Node) -> None:
        """Cut the stack of a directory from a lazy listing (:attr:`Node.deep`) after its first opaque layer.
        Its top layer was checked by the listing (so ``merged`` holds either way), and the last one needs no
        check."""
        if not node.deep:
            return
        dirs = node.dirs
        last = len(dirs) - 1
        for i in range(1, last):
            if self._is_opaque(dirs[i], node.path):
                node.dirs = dirs[:i + 1]
                break
        node.deep = False

    def lower_has(self, parent: Node, name: str) -> bool:
        """True when some layer under the upper shows ``name`` in ``parent`` (a delete needs a whiteout)."""
        if self.upper is None:
            return True
        return self.child(parent, name, start=1) is not None

    # ------------------------------------------------------------------ listing
    def names_of(self, node: Node) -> list[str]:
        """The names in the layers of the directory ``node``, each once, whiteouts left out but not applied: a
        name here may be hidden (whited out, under an opaque layer). For guesses only (the mount's read-ahead
        across a directory's files), never for answers (:meth:`listdir` gives the entries). Raises OSError."""
        self._cut(node)
        out: set[str] = set()
        for d in node.dirs:
            out.update(n for n, _ in _scan(d) if not wh.is_hidden_name(n))
        return list(out)

    def listdir(self, node: Node, *, lazy: bool = False) -> list[Node]:
        """The visible entries of directory ``node`` (no ``.``/``..``, no whiteouts, never a ``.wh.`` name).

        All or nothing: a layer directory that cannot be read for any reason but ENOENT/ENOTDIR (EMFILE,
        EIO, EACCES...) raises that OSError; a partial listing is never returned (nor cached).

        ``lazy`` (the daemon's listings, handed to :meth:`adopt`): a child directory's stack is cut at an opaque
        layer only when it is first looked into (:attr:`Node.deep`), so that listing a directory that merges many
        layers reads the opaque marks of its children's top layers alone (the root of a 100-layer image: 2
        marks instead of 200, each a getxattr or two and an lstat of a cold inode)."""
        if not node.is_dir:
            raise _err(errno.ENOTDIR, node.path)
        self._cut(node)
        hidden: set[str] = set()
        out: dict[str, Node] = {}
        below: dict[str, list[Dir]] = {}
        stopped: set[str] = set()
        base = node.path if node.path != "/" else ""
        for d in node.dirs:
            layer = d.layer
            try:
                entries = _scan(d)
            except OSError as e:
                if e.errno not in ABSENT:
                    log.warning("cannot list %s: %s", d.path, e)
                    raise
                continue
            layer_hidden: set[str] = set()
            lstat = d.lstat_fn()
            for name, lower_dir in entries:
                if name.startswith(wh.WH_PREFIX):
                    if name != wh.OPAQUE_MARKER:
                        try:
                            t = wh.whiteout_target(name)
                        except ValueError:
                            t = None
                        if t is not None:
                            layer_hidden.add(t)
                    continue
                if name in hidden or name in stopped:
                    continue
                if name in out:
                    # a lower layer under a visible directory: merges only while directories continue (the
                    # entry's d_type tells, no lstat)
                    if lower_dir:
                        sub = d.child(name)
                        below.setdefault(name, []).append(sub)
                        if not lazy and self._is_opaque(sub, out[name].path):
                            stopped.add(name)
                    else:
                        stopped.add(name)
                    continue
                try:
                    st = lstat(name)
                except OSError as e:
                    if e.errno in ABSENT:  # removed meanwhile
                        continue
                    raise
                if wh.may_be_whiteout(st) and wh.is_whiteout(d.where(name), st):
                    layer_hidden.add(name)
                    continue
                n = Node(base + "/" + name, layer, d, name, st, 0)
                out[name] = n
                if stat.S_ISDIR(st.st_mode):
                    sub = d.child(name)
                    below[name] = [sub]
                    if self._is_opaque(sub, n.path):
                        stopped.add(name)
                else:
                    stopped.add(name)
            hidden |= layer_hidden
        result = []
        for name, n in out.items():
            if n.is_dir:
                n.dirs = tuple(below.get(name, ()))
                n.merged = len(n.dirs) > 1
                n.deep = lazy and len(n.dirs) > 2
            self._finish(n, node)
            result.append(n)
        return result

    def is_empty_dir(self, node: Node) -> bool:
        """True when the directory shows no entries (it may still hold whiteouts)."""
        return not self.listdir(node)

    # ------------------------------------------------------------------ attributes
    def nlink(self, node: Node) -> int:
        """The visible link count (merged directories say 1, as the kernel; index aliases count lowers)."""
        if node.is_dir:
            return 1 if node.merged else node.st.st_nlink
        if node.indexed or (node.layer == 0 and self.upper is not None and node.st.st_nlink > 1
                            and stat.S_ISREG(node.st.st_mode) and self._in_index(node)):
            return node.st.st_nlink - 1 + self.pending_lower_links(node.real)
        return node.st.st_nlink

    def _in_index(self, node: Node) -> bool:
        if node.indexed:
            return True
        if self._index is None:
            return False
        try:
            ist = self._index.lstat(str(node.ino))
        except FileNotFoundError:
            return False
        return ist.st_ino == node.st.st_ino and ist.st_dev == node.st.st_dev

    def pending_lower_links(self, real: str) -> int:
        """How many lower aliases of the indexed hardlink at the host path ``real`` still resolve to the index."""
        try:
            return max(0, int(os.getxattr(real, nlink_xattr(), follow_symlinks=False)))
        except (OSError, ValueError):
            return 0

    def readlink(self, node: Node) -> str:
        """The target of a symlink node."""
        if not stat.S_ISLNK(node.st.st_mode):
            raise _err(errno.EINVAL, node.path)
        return os.readlink(node.real)

    def listxattr(self, node: Node) -> list[str]:
        """Visible xattr names (the overlay's private ones hidden)."""
        try:
            names = os.listxattr(node.real, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EPERM):
                return []
            raise
        return [n for n in names if not wh.is_private_xattr(n)]

    def getxattr(self, node: Node, name: str) -> bytes:
        """One visible xattr's value (private ones answer ENODATA). A missing ``security.capability`` is
        remembered on the node (see :attr:`Node.nocap`)."""
        if name == CAP_XATTR:
            if node.nocap:
                raise _err(errno.ENODATA)
            try:
                return os.getxattr(node.real, name, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    node.nocap = True
                raise
        if wh.is_private_xattr(name):
            raise _err(errno.ENODATA)
        return os.getxattr(node.real, name, follow_symlinks=False)

    def walk(self, node: Node | None = None) -> Iterator[Node]:
        """Every node under ``node`` (default: the root), parents before children."""
        node = node or self.root()
        yield node
        if node.is_dir:
            for c in sorted(self.listdir(node), key=lambda n: n.path):
                yield from self.walk(c)


def _with_blocks(st: os.stat_result, blocks: int) -> os.stat_result:
    """``st`` with ``st_blocks`` replaced (a metacopy file shows its lower data's blocks, as the kernel's)."""
    extra = {f: getattr(st, f) for f in _STAT_EXTRA}
    extra["st_blocks"] = blocks
    return os.stat_result(tuple(st), extra)


#: the fields of a stat result beyond its ten sequence items that the union uses
_STAT_EXTRA = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blksize",
               "st_blocks", "st_rdev")


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


def _join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else parent + "/" + name


def _lexists(d: Dir, name: str) -> bool:
    try:
        d.lstat(name)
        return True
    except OSError:
        return False
