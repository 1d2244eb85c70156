"""The FUSE daemon on the kernel's protocol: answers ``/dev/fuse`` requests with :class:`unionfs.union.overlay.Overlay`.

One kernel inode per union inode: the node id the kernel sees is the union's stable inode number, so every
name of a hardlinked file is the same kernel inode (one page cache, one attribute cache, the right st_nlink
after an unlink). Each node keeps the directory and name it was looked up by (and a hardlinked file its
further names), each directory the names in it the kernel knows, so a rename of a directory is one update,
never a walk of the subtree, and a node's path is a climb of object references.

Speed (docs/design.md, "Speed settings"):

- entry, attribute and negative timeouts of an hour, READDIRPLUS always, the kernel's readdir cache
  (FOPEN_CACHE_DIR), cached symlinks, 1 MiB WRITEs, one thread (plus :class:`Readers` for big READs), a
  30 us spin before sleeping;
- **FUSE passthrough** for files whose data is final: files in the upper (and, on a read-only mount, every
  file). The kernel then reads, writes and maps the real file itself and never asks us. A lower file opened
  read-only is served here instead (page cache kept across opens), because after a copy-up the kernel's
  overlayfs shows the new data to descriptors opened before it; a passthrough file cannot change its
  backing file. The kernel holds one backing file per inode, so a node's opens are either all passthrough
  (one backing id, dropped at the last release) or all served here;
- FUSE_HANDLE_KILLPRIV_V2: the kernel no longer asks for ``security.capability`` before every write; we
  clear set-id bits and capabilities ourselves when it says so.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import os
import queue
import select
import signal
import stat
import threading
import time
from sys import intern
from typing import Any, Callable

from unionfs import mountinfo
from unionfs.errors import FillPending
from unionfs.mount import protocol as fp
from unionfs.mount.dirahead import DirAhead
from unionfs.union.overlay import (
    UTIME_NOW,
    UTIME_OMIT,
    Overlay,
    fallocate,
    mtime_kept,
    reads_only,
    reopen_onto,
    utimensat,
)
from unionfs.union.view import Entry, Node

log = logging.getLogger(__name__)

TIMEOUT = 3600
#: LOOKUP's answer for a missing name: a negative entry the kernel may cache as long as a positive one
NEGATIVE_ENTRY = fp.ENTRY_OUT_HEAD.pack(0, 0, TIMEOUT, 0, 0, 0) + bytes(fp.ATTR.size)
#: a READDIRPLUS entry without a node (".", ".."): the kernel counts no lookup for it
NO_ENTRY = fp.ENTRY_OUT_HEAD.pack(0, 0, 0, 0, 0, 0) + bytes(fp.ATTR.size)
#: the mount's readahead window (the kernel's FUSE default is 128 KiB): with 1 MiB a first sequential read of a
#: file served by the daemon takes 1/4 of the time (1 GiB: 1.02 s -> 0.23 s, measured), as READs grow to 1 MiB
READ_AHEAD_KB = 1024
#: bytes of a file served here that an OPEN asks the disk for right away
PREFETCH = 1 << 20
#: the largest file served here (not by passthrough) whose data an OPEN puts into the kernel's cache
STORE_MAX = 64 << 10
#: the largest file the read-ahead across a directory's files asks the disk for (:mod:`unionfs.mount.dirahead`)
WARM_MAX = 256 << 10
#: the most pieces of that read-ahead waiting for the loop to be idle
IDLE_MAX = 256
CAP_XATTR = "security.capability"
CAP_FSETID = 4  #: capability(7) number
#: READs of at least this many bytes (the kernel's readahead of a big file served here) are answered by
#: :data:`READ_THREADS` helper threads, so that the disk works on one while another's reply crosses over
THREADED_READ = 128 << 10
READ_THREADS = 2
#: the most microseconds the loop keeps asking for the next request (non-blocking) after it ran out, before it
#: sleeps: a request from a process on the other CPU then finds the daemon awake (a GETXATTR round trip across
#: CPUs 53 us -> 21 us, measured; on the same CPU the woken client preempts the spin: 12.9 us either way). It
#: spins that long only while requests come within that time of each other (a client that reads a cold file
#: between two requests: ~70 us); after a longer gap, :data:`SPIN_SHORT_US` (see :func:`spin_budget`)
SPIN_US = 400
SPIN_SHORT_US = 30


class _Deferred(bytes):
    """The type of :data:`DEFERRED`."""


#: a handler's answer when a helper thread writes the reply itself (the loop then writes nothing)
DEFERRED = _Deferred()


class _Rare:
    """The parts of an :class:`Inode` few nodes have (further names, open files, orphan attributes): kept apart
    so that the million nodes of a big ``find`` cost four slots fewer each."""

    __slots__ = ("more", "handles", "backing", "orphan")

    def __init__(self) -> None:
        self.more: list[tuple[Inode, str]] | None = None
        self.handles: list[Handle] | None = None
        self.backing: int | None = None
        self.orphan: bytes | None = None


class _RareField:
    """An :class:`Inode` attribute kept in its :class:`_Rare` part: None while the node has none, and setting it
    gives the node one."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, inode: "Inode", owner: type | None = None) -> Any:
        rare = inode._rare
        return getattr(rare, self.name) if rare is not None else None

    def __set__(self, inode: "Inode", value: Any) -> None:
        if inode._rare is None:
            inode._rare = _Rare()
        setattr(inode._rare, self.name, value)


class Inode(Entry):
    """What the kernel holds of one union inode (docs/design.md, "Memory": where each byte goes), in the view's
    path cache as a pinned record (:class:`unionfs.union.view.Entry`): ``node`` is its resolution (None: not
    cached), ``kids`` the records of the names in it, those the kernel knows (Inodes) and those only the cache
    does.

    ``mode``: the file type bits (S_IFMT) as last looked up (one shared int object per type: :data:`_KINDS`);
    ``layer``: the layer its first name was last found at, the union's ``hint`` for resolving it again (a file
    past the path cache's bound then costs an lstat of the upper and of that layer, not a probe of every layer).
    ``parent``/``name``: the directory and name of the first name the kernel knows it by (None: no name left);
    ``more``: its further names (a hardlinked file). ``handles``: its open handles (None: none); while one is
    open they are all passthrough (sharing ``backing``) or all served here. ``orphan``: attributes (nlink 0) of
    a node whose last name was unlinked while the kernel still holds it (a special file has no open handle here
    to fstat).
    """

    __slots__ = ("nodeid", "ino", "mode", "layer", "nlookup", "parent", "name", "_rare")
    pinned = True

    #: see :class:`_Rare` for their types
    more = _RareField()
    handles = _RareField()
    backing = _RareField()
    orphan = _RareField()

    def __init__(self, nodeid: int, ino: int, *, nlookup: int = 0) -> None:
        self.nodeid = nodeid
        self.ino = ino
        self.mode = 0
        self.layer = 0
        self.nlookup = nlookup
        self.parent: Inode | None = None
        self.name: str | None = None
        self.node: Node | None = None
        self.kids: dict[str, Entry] | None = None
        self._rare: _Rare | None = None

    def names(self) -> list[tuple["Inode", str]]:
        """Every (directory, name) the kernel knows this node by."""
        if self.parent is None:
            return []
        first = (self.parent, self.name)
        more = self.more
        return [first] if more is None else [first, *more]  # type: ignore[list-item]

    def add_name(self, parent: "Inode", name: str) -> None:
        if self.parent is None:
            self.parent, self.name = parent, name
        elif (self.parent is not parent or self.name != name) and (parent, name) not in (self.more or ()):
            self.more = [*(self.more or ()), (parent, name)]

    def drop_name(self, parent: "Inode", name: str) -> None:
        more = self.more
        if self.parent is parent and self.name == name:
            self.layer = 0  # found by its first name: no hint for the next one (it may be in another layer)
            if more:
                (self.parent, self.name), self.more = more[0], more[1:] or None
            else:
                self.parent = self.name = None
        elif more and (parent, name) in more:
            self.more = [k for k in more if k != (parent, name)] or None


#: one int object per file type for :attr:`Inode.mode` (a new int per node would cost 28 bytes each)
_KINDS = {k: k for k in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO,
                         stat.S_IFSOCK)}


#: the id shown for, and stored for, an id no range of an :class:`IdMap` covers (the kernel's overflow id)
OVERFLOW_ID = 65534


class IdMap:
    """fuse-overlayfs' ``uidmapping=``/``gidmapping=``: ``INSIDE:OUTSIDE:LEN[:INSIDE:OUTSIDE:LEN...]`` (a leading
    colon too, as podman's storage writes it). An id on
    disk (INSIDE: as the image has it) is shown as its OUTSIDE id (a container's user namespace on the host), and
    the ids of callers and of a chown are stored back as INSIDE ids, so that the layers need no chown for a
    container with its own id range. An id no range covers is :data:`OVERFLOW_ID`, either way. ValueError for
    a malformed mapping."""

    __slots__ = ("ranges",)

    def __init__(self, spec: str) -> None:
        parts = spec.strip(":").split(":")  # containers/storage writes ":0:100000:65536"
        if len(parts) % 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not INSIDE:OUTSIDE:LEN[:...]: {spec!r}")
        nums = [int(p) for p in parts]
        self.ranges = [(nums[i], nums[i + 1], nums[i + 2]) for i in range(0, len(nums), 3)]

    def shown(self, inside: int) -> int:
        """The id shown for the id ``inside`` on disk."""
        for start, out, n in self.ranges:
            if start <= inside < start + n:
                return out + inside - start
        return OVERFLOW_ID

    def stored(self, outside: int) -> int:
        """The id stored for the caller's (or a chown's) id ``outside``."""
        for start, out, n in self.ranges:
            if out <= outside < out + n:
                return start + outside - out
        return OVERFLOW_ID


class Show:
    """How the mount shows what it serves, as fuse-overlayfs' options of the same names say: every owner as
    ``uid``/``gid`` (-1: the real one; ``squash_to_root``, ``squash_to_uid=``, ``squash_to_gid=``: shown only,
    a chown still changes the real owner), owners mapped by ``uids``/``gids`` (``uidmapping=``,
    ``gidmapping=``: :class:`IdMap`), every directory with one link (``static_nlink``), POSIX ACLs refused
    (``noacl``: their xattrs answer EOPNOTSUPP and are not listed)."""

    __slots__ = ("uid", "gid", "uids", "gids", "static_nlink", "noacl", "owners")

    def __init__(self, *, uid: int = -1, gid: int = -1, uids: IdMap | None = None, gids: IdMap | None = None,
                 static_nlink: bool = False, noacl: bool = False) -> None:
        self.uid, self.gid, self.uids, self.gids = uid, gid, uids, gids
        self.static_nlink, self.noacl = static_nlink, noacl
        #: whether any owner is shown other than it is stored (False: nothing to compute per attribute)
        self.owners = uid >= 0 or gid >= 0 or uids is not None or gids is not None

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        """(uid, gid) shown for ``st`` (-1: its own)."""
        uid = self.uid if self.uid >= 0 or self.uids is None else self.uids.shown(st.st_uid)
        gid = self.gid if self.gid >= 0 or self.gids is None else self.gids.shown(st.st_gid)
        return uid, gid

    def stored(self, uid: int, gid: int) -> tuple[int, int]:
        """(uid, gid) as the files store a caller's or a chown's ids (-1, "unchanged", stays -1)."""
        return (uid if self.uids is None or uid < 0 else self.uids.stored(uid),
                gid if self.gids is None or gid < 0 else self.gids.stored(gid))


#: the xattrs of POSIX ACLs (refused under ``noacl``: :class:`Show`)
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


class Handle:  # compared by identity in Inode.handles
    """An open file: our descriptor on the real file, and how the kernel does its I/O. ``final``: the
    descriptor is on the file's final copy (upper, index, or any file of a read-only mount)."""

    __slots__ = ("fd", "nodeid", "passthrough", "final")

    def __init__(self, fd: int, nodeid: int, passthrough: bool, final: bool) -> None:
        self.fd, self.nodeid, self.passthrough, self.final = fd, nodeid, passthrough, final


class Listing:
    """An open directory: its entries (name, ino, mode, layer, packed attributes or None for "." and ".."), listed
    at the first READDIR from offset 0 (a rewind lists again), and the directory's version then.

    Once the directory has changed, later reads of the same listing still give names and inode numbers (POSIX
    lets a listing show a removed name) but no nodes: a READDIRPLUS entry makes the kernel instantiate a
    dentry, which would bring a removed name back (found by stress-ng's filename stressor)."""

    __slots__ = ("nid", "entries", "version")

    def __init__(self, nid: int) -> None:
        self.nid = nid
        self.entries: list[tuple[str, int, int, int, bytes | None]] | None = None
        self.version = 0


class Readers:
    """Helper threads that answer big READs: each does the ``pread`` and writes the whole reply itself.

    Safe without locks: the loop hands over a descriptor, never a handle, and the kernel sends no RELEASE for a
    file while a READ of it is in flight (the request holds the file). pread and writev run without the GIL.
    """

    def __init__(self, dev: int, count: int) -> None:
        self.dev = dev
        self.jobs: queue.SimpleQueue[tuple[int, int, int, int] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=f"unionfs-read-{i}", daemon=True)
                        for i in range(count)]
        for t in self.threads:
            t.start()

    def submit(self, unique: int, fd: int, offset: int, size: int) -> None:
        self.jobs.put((unique, fd, offset, size))

    def _run(self) -> None:
        out = fp.OUT_HEADER
        while True:
            job = self.jobs.get()
            if job is None:
                return
            unique, fd, offset, size = job
            try:
                data = os.pread(fd, size, offset)
                reply = [out.pack(out.size + len(data), 0, unique), data]
            except OSError as e:
                reply = [out.pack(out.size, -(e.errno or errno.EIO), unique)]
            try:
                os.writev(self.dev, reply)
            except OSError as e:  # ENOENT: interrupted meanwhile; ENODEV: unmounted
                log.debug("READ reply %d not delivered: %s", unique, e)

    def close(self) -> None:
        """Let the threads finish what they have and end."""
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()


class LowLevelFS:
    """The request handlers and the serving loop of one mount."""

    def __init__(self, overlay: Overlay, *, writeback: bool = False, passthrough: bool = True,
                 mountpoint: str = "", spin_us: int = SPIN_US, show: Show | None = None, record: int = -1) -> None:
        self.ov = overlay
        self.show = show or Show()
        self.spin_us = spin_us
        self.mountpoint = mountpoint
        #: the mount's device ("0:123") once INIT is answered: a signal unmounts only that mount
        self.mount_dev: str | None = None
        self.view = overlay.view
        self.writeback = writeback and not overlay.read_only
        self.passthrough = passthrough and not self.writeback
        self.dev = -1
        root = self.view.root()
        self.root_ino = root.ino
        self.nodes: dict[int, Inode] = {fp.ROOT_ID: Inode(fp.ROOT_ID, root.ino, nlookup=1)}
        self.view.attach(self.nodes[fp.ROOT_ID])  # the node records are the path cache's
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, Listing] = {}
        #: per directory node: bumped by every change of its names made here (see :class:`Listing`)
        self.dir_version: dict[int, int] = {}
        self._next_dh = 1
        #: a descriptor just opened for reading, whose head the loop asks the disk for once the reply is out
        self._prefetch = -1
        #: the read-ahead across a directory's files (:mod:`unionfs.mount.dirahead`) and what it asks for, done
        #: while the loop has no request (so only when it spins: it then reads the device without blocking);
        #: none on lazy layers, where a warm-up would open placeholders. Set by :meth:`serve`, once the overlay
        #: has its filler (:func:`serve` gives it after this daemon is made)
        self.ahead: DirAhead | None = None
        self._idle: collections.deque[Callable[[], None]] = collections.deque()
        #: the directory and name of the file :attr:`_prefetch` holds, for the read-ahead, and whether its data
        #: was found out of memory at the OPEN (None: not looked at yet; it is after the reply)
        self._opened_in: tuple[Inode, str, bool | None] | None = None
        self._uid = self._gid = self._pid = self._unique = 0
        self.readers: Readers | None = None
        #: requests set aside while a lazy file was filled, to run again before the next read of the device
        #: (:meth:`resume`), and the pipe that wakes the loop for them (-1: none, no lazy layer)
        self._pending: collections.deque[bytes] = collections.deque()
        self._wake = -1
        #: held while :meth:`resume` writes (from a worker): once the loop has ended it writes nothing (the
        #: descriptors may be closed, their numbers another file's)
        self._resume_lock = threading.Lock()
        self._serving = False
        self.ready: Callable[[], None] | None = None
        self.ops: dict[int, Callable[[int, memoryview], bytes | None]] = {
            fp.LOOKUP: self.lookup, fp.GETATTR: self.getattr, fp.SETATTR: self.setattr,
            fp.READLINK: self.readlink, fp.SYMLINK: self.symlink, fp.MKNOD: self.mknod, fp.MKDIR: self.mkdir,
            fp.UNLINK: self.unlink, fp.RMDIR: self.rmdir, fp.RENAME: self.rename, fp.RENAME2: self.rename2,
            fp.LINK: self.link, fp.OPEN: self.open, fp.READ: self.read, fp.WRITE: self.write,
            fp.STATFS: self.statfs, fp.RELEASE: self.release, fp.FSYNC: self.fsync, fp.SETXATTR: self.setxattr,
            fp.GETXATTR: self.getxattr, fp.LISTXATTR: self.listxattr, fp.REMOVEXATTR: self.removexattr,
            fp.INIT: self.init, fp.OPENDIR: self.opendir, fp.READDIR: self.readdir,
            fp.READDIRPLUS: self.readdirplus, fp.RELEASEDIR: self.releasedir, fp.FSYNCDIR: self.fsyncdir,
            fp.CREATE: self.create, fp.FALLOCATE: self.fallocate, fp.LSEEK: self.lseek,
            fp.SYNCFS: self.syncfs, fp.DESTROY: self.destroy,
        }
        if record >= 0:
            self.ops[fp.OPEN] = self._recording_open(record)

    # ================================================================== node table
    def _nodeid(self, ino: int) -> int:
        if ino == self.root_ino:
            return fp.ROOT_ID
        return ino if ino != fp.ROOT_ID else (1 << 63) | 1

    def path(self, nodeid: int) -> str:
        """A union path of node ``nodeid`` (any of its names); ENOENT when it has none left."""
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ENOENT, "no name left")
        parts: list[str] = []
        while node.nodeid != fp.ROOT_ID:
            if node.parent is None:
                raise OSError(errno.ENOENT, "no name left")
            parts.append(node.name)  # type: ignore[arg-type]
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def _join(self, parent: int, name: str) -> str:
        p = self.path(parent)
        return (p if p != "/" else "") + "/" + name

    def _count(self, parent: int, name: str, ino: int, mode: int, layer: int) -> Inode:
        """Count one lookup of the union inode ``ino`` (of type ``mode``, found at ``layer``) as ``name`` in
        ``parent``."""
        nid = self._nodeid(ino)
        inode = self.nodes.get(nid)
        if inode is None:
            inode = self.nodes[nid] = Inode(nid, ino)
        fmt = stat.S_IFMT(mode)
        inode.mode = _KINDS.get(fmt, fmt)
        inode.nlookup += 1
        if inode.parent is None or (inode.parent.nodeid == parent and inode.name == name):
            inode.layer = layer
        self._link(parent, name, inode)
        return inode

    def _resolved(self, nid: int) -> Node:
        """The union node of ``nid``, its attributes maybe stale (see :meth:`Union.resolve`): its record's, else
        resolved by path."""
        inode = self.nodes.get(nid)
        node = self.view.cached(inode) if inode is not None else None
        return node if node is not None else self.view.resolve(self.path(nid), self._hint(nid))

    def _looked_up(self, nid: int) -> Node:
        """The union node of ``nid`` with fresh attributes: its record's, else looked up by path (ENOENT when it
        has no name left)."""
        inode = self.nodes.get(nid)
        node = self.view.refresh(inode) if inode is not None else None
        return node if node is not None else self.view.lookup(self.path(nid), self._hint(nid))

    def _child(self, parent: int, name: str, hint: int = 0) -> Node:
        """Look up ``name`` in the directory ``parent`` on its record (fresh attributes); ENOENT, ENOTDIR."""
        pinode = self.nodes.get(parent)
        if pinode is None:
            raise OSError(errno.ENOENT, "stale node")
        return self.view.lookup_in(pinode, self._resolved(parent), name, hint)

    def _hint(self, nid: int) -> int:
        """The layer node ``nid`` was last found at by its first name (:meth:`Union.child`'s ``hint``)."""
        node = self.nodes.get(nid)
        return node.layer if node is not None else 0

    def _link(self, parent: int, name: str, inode: Inode) -> None:
        """Record that ``name`` in directory ``parent`` is ``inode`` (replacing what it was)."""
        pnode = self.nodes.get(parent)
        if pnode is None:  # the kernel never names a child of a node it forgot; be safe anyway
            return
        kids = pnode.kids
        if kids is None:
            kids = pnode.kids = {}
        old = kids.get(name)
        if old is inode:
            return
        if isinstance(old, Inode):
            old.drop_name(pnode, name)
        elif old is not None:
            if inode.node is None and inode.kids is None and (old.node is None or old.node.ino == inode.ino):
                inode.node, inode.kids = old.node, old.kids  # the cache's record of this name becomes the node's
            else:
                self.view.uncache(old)
        kids[name] = inode
        inode.add_name(pnode, name)

    def _unlink_entry(self, parent: int, name: str) -> Inode | None:
        """Forget that ``name`` in directory ``parent`` names a node; that node (None: none known)."""
        pnode = self.nodes.get(parent)
        inode = pnode.kids.pop(name, None) if pnode is not None and pnode.kids else None
        if not isinstance(inode, Inode):
            if inode is not None:  # the cache's own record of the name
                self.view.uncache(inode)
            return None
        inode.drop_name(pnode, name)  # type: ignore[arg-type]
        return inode

    def _known(self, parent: int, name: str) -> Inode | None:
        """The node the kernel knows as ``name`` in directory ``parent`` (None: none)."""
        pnode = self.nodes.get(parent)
        inode = pnode.kids.get(name) if pnode is not None and pnode.kids else None
        return inode if isinstance(inode, Inode) else None

    def _forget(self, nid: int, count: int) -> None:
        node = self.nodes.get(nid)
        if node is None or nid == fp.ROOT_ID:
            return
        node.nlookup -= count
        if node.nlookup <= 0 and not node.handles:
            for pnode, name in node.names():
                if pnode.kids is not None and pnode.kids.get(name) is node:
                    del pnode.kids[name]
            self.view.uncache(node)  # its node and what is cached below it leave the cache's count
            del self.nodes[nid]
            self.dir_version.pop(nid, None)

    # ================================================================== replies
    def _attr(self, node: Node) -> bytes:
        nlink = 1 if self.show.static_nlink and node.is_dir else self.view.nlink(node)
        return self._pack(node.st, node.ino, nlink)

    def _pack(self, st: os.stat_result, ino: int, nlink: int) -> bytes:
        """The attributes shown for ``st`` as node ``ino`` with ``nlink`` links (see :class:`Show`)."""
        if not self.show.owners:
            return fp.pack_attr(st, ino, nlink)
        return fp.pack_attr(st, ino, nlink, *self.show.owner(st))

    def _attr_out(self, node: Node) -> bytes:
        return fp.ATTR_OUT_HEAD.pack(TIMEOUT, 0, 0) + self._attr(node)

    def _entry(self, parent: int, name: str, node: Node) -> bytes:
        inode = self._count(parent, name, node.ino, node.st.st_mode, node.layer)
        return fp.ENTRY_OUT_HEAD.pack(inode.nodeid, 0, TIMEOUT, TIMEOUT, 0, 0) + self._attr(node)

    def _fresh(self, parent: int, name: str) -> bytes:
        """The entry reply for a name just made in ``parent``."""
        self._dir_changed(parent)
        return self._entry(parent, name, self._child(parent, name))

    # ================================================================== life cycle
    def init(self, nid: int, body: memoryview) -> bytes:
        major, minor, readahead, flags, flags2 = fp.INIT_IN.unpack_from(body)
        if major != fp.KERNEL_VERSION:
            raise OSError(errno.EPROTO, f"FUSE protocol {major}.{minor} not supported")
        kernel = flags | (flags2 << 32 if flags & fp.INIT_EXT else 0)
        want = (fp.ASYNC_READ | fp.ATOMIC_O_TRUNC | fp.BIG_WRITES | fp.DO_READDIRPLUS | fp.PARALLEL_DIROPS
                | fp.MAX_PAGES | fp.CACHE_SYMLINKS | fp.HANDLE_KILLPRIV_V2 | fp.INIT_EXT)
        if self.writeback:
            want |= fp.WRITEBACK_CACHE
        depth = 0
        if self.passthrough and kernel & fp.PASSTHROUGH:
            want |= fp.PASSTHROUGH
            depth = fp.stack_depth(self.view.layers)
        else:
            self.passthrough = False
        got = want & kernel
        log.debug("INIT %d.%d kernel flags %#x, ours %#x", major, minor, kernel, got)
        return fp.INIT_OUT.pack(fp.KERNEL_VERSION, fp.KERNEL_MINOR, readahead, got & 0xFFFFFFFF, 16, 12,
                                fp.MAX_WRITE, 1, fp.MAX_WRITE // 4096, 0, got >> 32, depth, *([0] * 12))

    def destroy(self, nid: int, body: memoryview) -> bytes:
        for h in list(self.handles.values()):
            try:
                os.close(h.fd)
            except OSError:
                pass
        self.handles.clear()
        return b""

    def syncfs(self, nid: int, body: memoryview) -> bytes:
        self.ov.sync()
        return b""

    # ================================================================== lookups and attributes
    def lookup(self, parent: int, body: memoryview) -> bytes:
        name = intern(os.fsdecode(fp.cstrings(body, 1)[0]))
        try:
            known = self._known(parent, name)
            first = known is not None and known.parent is self.nodes.get(parent) and known.name == name
            node = self._child(parent, name, known.layer if first else 0)  # type: ignore[union-attr]
        except FileNotFoundError:
            return NEGATIVE_ENTRY
        return self._entry(parent, name, node)

    def _handle_of(self, nid: int, fh: int | None) -> Handle:
        h = self.handles.get(fh) if fh is not None else None
        if h is not None and h.nodeid == nid:
            return h
        inode = self.nodes.get(nid)
        if inode is None or not inode.handles:
            raise OSError(errno.ENOENT, "stale node")
        return next(iter(inode.handles))

    def _attr_reply(self, nid: int, fh: int | None) -> bytes:
        """attr_out for ``nid``: by its name, or through an open handle once every name is gone (unlinked
        while open)."""
        try:
            return self._attr_out(self._looked_up(nid))
        except FileNotFoundError:
            try:
                self.path(nid)
            except FileNotFoundError:
                pass  # no name left (unlinked while open): through an open handle
            else:
                raise
        inode = self.nodes.get(nid)
        try:
            h = self._handle_of(nid, fh)
        except FileNotFoundError:
            if inode is None or inode.orphan is None:
                raise
            return fp.ATTR_OUT_HEAD.pack(TIMEOUT, 0, 0) + inode.orphan
        st = os.fstat(h.fd)
        ino = inode.ino if inode is not None else st.st_ino
        return fp.ATTR_OUT_HEAD.pack(TIMEOUT, 0, 0) + self._pack(st, ino, self._orphan_nlink(st, ino, h))

    def getattr(self, nid: int, body: memoryview) -> bytes:
        flags, _, fh = fp.GETATTR_IN.unpack_from(body)
        return self._attr_reply(nid, fh if flags & fp.GETATTR_FH else None)

    def _orphan_nlink(self, st: os.stat_result, ino: int, h: Handle) -> int:
        """Links left of an open file whose every known name is gone: an indexed hardlink counts its upper
        names and the lower names still pending (as :meth:`Union.nlink`), an upper file its real links, a
        file still on a lower layer none (the kernel's overlayfs says 0)."""
        if not h.final or not stat.S_ISREG(st.st_mode) or self.ov.upper is None:
            return 0
        if self.ov.index:
            ipath = os.path.join(self.ov.index, str(ino))
            try:
                ist = os.lstat(ipath)
            except OSError:
                ist = None
            if ist is not None and (ist.st_ino, ist.st_dev) == (st.st_ino, st.st_dev):
                return max(0, st.st_nlink - 1 + self.view.pending_lower_links(ipath))
        return st.st_nlink

    def readlink(self, nid: int, body: memoryview) -> bytes:
        return os.fsencode(self.view.readlink(self._resolved(nid)))

    def setattr(self, nid: int, body: memoryview) -> bytes:
        (valid, _, fh, size, _lo, atime, mtime, _ct, atimens, mtimens, _ctn, mode, _u4, uid, gid,
         _u5) = fp.SETATTR_IN.unpack_from(body)
        h = self.handles.get(fh) if valid & fp.FATTR_FH else None
        owner = self.show.stored(uid if valid & fp.FATTR_UID else -1, gid if valid & fp.FATTR_GID else -1)
        times = (_times(valid, atime, atimens, mtime, mtimens)
                 if valid & (fp.FATTR_ATIME | fp.FATTR_MTIME | fp.FATTR_ATIME_NOW | fp.FATTR_MTIME_NOW) else None)
        try:
            path = self.path(nid)
        except FileNotFoundError:  # unlinked while open: change the file through its descriptor
            h = self._handle_of(nid, fh if h is not None else None)
            if not h.final:
                raise OSError(errno.EROFS, "a lower file without a name") from None
            if valid & fp.FATTR_MODE:
                os.fchmod(h.fd, stat.S_IMODE(mode))
            if valid & (fp.FATTR_UID | fp.FATTR_GID):
                os.fchown(h.fd, *owner)
            if valid & fp.FATTR_SIZE:
                os.ftruncate(h.fd, size)
            if times is not None:
                utimensat(None, times, fd=h.fd)
            return self._attr_reply(nid, h.fd)
        if valid & fp.FATTR_MODE:
            self.ov.chmod(path, mode)
        if valid & (fp.FATTR_UID | fp.FATTR_GID):
            self.ov.chown(path, *owner)
        if valid & fp.FATTR_SIZE:
            self._truncate(path, h, size, kill=bool(valid & fp.FATTR_KILL_SUIDGID))
            if nid in self.nodes:  # the truncate copied the data up: readers of the lower copy follow
                self._follow_copy_up(self.nodes[nid], self.view.resolve(path))
        if times is not None:
            if h is not None and h.final:
                utimensat(None, times, fd=h.fd)
            else:
                self.ov.utimens(path, times)
        return self._attr_reply(nid, fh if h is not None else None)

    def _truncate(self, path: str, h: Handle | None, size: int, *, kill: bool) -> None:
        if h is not None and h.final:
            with mtime_kept(h.fd, self.writeback):
                os.ftruncate(h.fd, size)
            if kill:
                self._kill_priv(h.fd)
            return
        keep_ns = None
        if self.writeback:
            before = self.view.lookup(path)
            keep_ns = before.st.st_mtime_ns if stat.S_ISREG(before.st.st_mode) else None
        self.ov.truncate(path, size)
        node = self.view.lookup(path)
        if keep_ns is not None:
            utimensat(node.real, ((0, UTIME_OMIT), divmod(keep_ns, 10**9)))
        if kill:
            fd = node.open(os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self._kill_priv(fd)
            finally:
                os.close(fd)

    def statfs(self, nid: int, body: memoryview) -> bytes:
        s = self.ov.statfs()
        return fp.STATFS_OUT.pack(s["f_blocks"], s["f_bfree"], s["f_bavail"], s["f_files"], s["f_ffree"],
                                  s["f_bsize"], s["f_namemax"], s["f_frsize"], 0, *([0] * 6))

    # ================================================================== xattrs
    def getxattr(self, nid: int, body: memoryview) -> bytes:
        size, _ = fp.GETXATTR_IN.unpack_from(body)
        name = os.fsdecode(fp.cstrings(body[fp.GETXATTR_IN.size:], 1)[0])
        self._acl_check(name)
        value = self.view.getxattr(self._resolved(nid), name)
        return _sized(value, size)

    def _acl_check(self, name: str) -> None:
        """EOPNOTSUPP for a POSIX ACL's xattr under ``noacl`` (:class:`Show`)."""
        if self.show.noacl and name in ACL_XATTRS:
            raise OSError(errno.EOPNOTSUPP, "noacl")

    def listxattr(self, nid: int, body: memoryview) -> bytes:
        size, _ = fp.GETXATTR_IN.unpack_from(body)
        names = self.view.listxattr(self._resolved(nid))
        if self.show.noacl:
            names = [n for n in names if n not in ACL_XATTRS]
        return _sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    def setxattr(self, nid: int, body: memoryview) -> bytes:
        size, flags = fp.SETXATTR_IN.unpack_from(body)
        rest = bytes(body[fp.SETXATTR_IN.size:])
        end = rest.index(b"\0")
        name = os.fsdecode(rest[:end])
        self._acl_check(name)
        self.ov.setxattr(self.path(nid), name, rest[end + 1:end + 1 + size], flags)
        return b""

    def removexattr(self, nid: int, body: memoryview) -> bytes:
        name = os.fsdecode(fp.cstrings(body, 1)[0])
        self._acl_check(name)
        self.ov.removexattr(self.path(nid), name)
        return b""

    # ================================================================== namespace
    def mknod(self, parent: int, body: memoryview) -> bytes:
        mode, rdev, _umask, _ = fp.MKNOD_IN.unpack_from(body)
        name = os.fsdecode(fp.cstrings(body[fp.MKNOD_IN.size:], 1)[0])
        self.ov.mknod(self._join(parent, name), mode, rdev, self._uid, self._gid)
        return self._fresh(parent, name)

    def mkdir(self, parent: int, body: memoryview) -> bytes:
        mode, _umask = fp.MKDIR_IN.unpack_from(body)
        name = os.fsdecode(fp.cstrings(body[fp.MKDIR_IN.size:], 1)[0])
        self.ov.mkdir(self._join(parent, name), mode | stat.S_IFDIR, self._uid, self._gid)
        return self._fresh(parent, name)

    def symlink(self, parent: int, body: memoryview) -> bytes:
        name, target = fp.cstrings(body, 2)
        self.ov.symlink(os.fsdecode(target), self._join(parent, os.fsdecode(name)), self._uid, self._gid)
        return self._fresh(parent, os.fsdecode(name))

    def link(self, parent: int, body: memoryview) -> bytes:
        (old,) = fp.LINK_IN.unpack_from(body)
        name = os.fsdecode(fp.cstrings(body[fp.LINK_IN.size:], 1)[0])
        self.ov.link(self.path(old), self._join(parent, name))
        return self._fresh(parent, name)

    def unlink(self, parent: int, body: memoryview) -> bytes:
        name = os.fsdecode(fp.cstrings(body, 1)[0])
        path = self._join(parent, name)
        inode = self._known(parent, name)
        # the last known name of a special file: keep its attributes for fstat on descriptors the kernel
        # opened itself (as the kernel's overlayfs: a lower one is never copied up, keeps its link count)
        last = (inode is not None and inode.more is None and inode.name == name
                and inode.parent is self.nodes.get(parent) and inode.mode not in (0, stat.S_IFREG))
        node = self.view.lookup(path) if last else None
        self.ov.unlink(path)
        self._dir_changed(parent)
        self._unlink_entry(parent, name)
        if inode is not None and node is not None:
            inode.orphan = self._pack(node.st, node.ino, 0 if node.layer == 0 else node.st.st_nlink)
        return b""

    def rmdir(self, parent: int, body: memoryview) -> bytes:
        name = os.fsdecode(fp.cstrings(body, 1)[0])
        self.ov.rmdir(self._join(parent, name))
        self._dir_changed(parent)
        self._unlink_entry(parent, name)
        return b""

    def rename(self, parent: int, body: memoryview) -> bytes:
        (newdir,) = fp.RENAME_IN.unpack_from(body)
        return self._rename(parent, newdir, 0, body[fp.RENAME_IN.size:])

    def rename2(self, parent: int, body: memoryview) -> bytes:
        newdir, flags, _ = fp.RENAME2_IN.unpack_from(body)
        return self._rename(parent, newdir, flags, body[fp.RENAME2_IN.size:])

    def _rename(self, parent: int, newdir: int, flags: int, names: memoryview) -> bytes:
        old, new = (os.fsdecode(n) for n in fp.cstrings(names, 2))
        self.ov.rename(self._join(parent, old), self._join(newdir, new), flags)
        self._dir_changed(parent, newdir)
        a = self._unlink_entry(parent, old)
        b = self._unlink_entry(newdir, new)
        if a is not None and self.nodes.get(a.nodeid) is a:
            self._link(newdir, new, a)
        if flags & 2 and b is not None and self.nodes.get(b.nodeid) is b:  # RENAME_EXCHANGE
            self._link(parent, old, b)
        return b""

    # ================================================================== files
    def open(self, nid: int, body: memoryview) -> bytes:
        flags, open_flags = fp.OPEN_IN.unpack_from(body)
        inode = self.nodes.get(nid)
        node = self.view.cached(inode) if inode is not None and reads_only(flags) else None
        try:
            fd = self.ov.open_read(node, flags) if node is not None else -1
        except FileNotFoundError:  # the record's resolution went stale: by path, afresh
            fd = -1
        if fd < 0:
            fd, node = self.ov.open_node(self.path(nid), flags, keep_mtime=self.writeback, hint=self._hint(nid))
        if open_flags & fp.OPEN_KILL_SUIDGID and flags & os.O_TRUNC:
            self._kill_priv(fd)
        return fp.OPEN_OUT.pack(*self._opened(nid, fd, node, flags))

    def _recording_open(self, fd: int) -> Callable[[int, memoryview], bytes]:
        """:meth:`open` that also appends to ``fd`` the union path of each node opened for the first time, as a
        JSON string per line, in the order of first opens (``-o record=FILE``, for ``convert --optimize``:
        :mod:`unionfs.image.optimize`). A path is written before the reply: once the opener has its file, the
        record holds it."""
        import json

        seen: set[int] = set()

        def op(nid: int, body: memoryview) -> bytes:
            reply = self.open(nid, body)
            if nid not in seen:
                seen.add(nid)
                try:
                    os.write(fd, json.dumps(self.path(nid)).encode() + b"\n")
                except OSError as e:
                    log.warning("cannot record an open: %s", e)
            return reply
        return op

    def create(self, parent: int, body: memoryview) -> bytes:
        flags, mode, _umask, _oflags = fp.CREATE_IN.unpack_from(body)
        name = os.fsdecode(fp.cstrings(body[fp.CREATE_IN.size:], 1)[0])
        path = self._join(parent, name)
        fd = self.ov.create(path, mode, flags, self._uid, self._gid)
        try:
            self._dir_changed(parent)
            node = self._child(parent, name)
            entry = self._entry(parent, name, node)
        except BaseException:
            os.close(fd)
            raise
        return entry + fp.OPEN_OUT.pack(*self._opened(self._nodeid(node.ino), fd, node, flags))

    def _opened(self, nid: int, fd: int, node: Node, flags: int) -> tuple[int, int, int]:
        """Register a new handle; (fh, open flags, backing id) for the reply."""
        inode = self.nodes.get(nid)
        if inode is None:  # cannot happen for a looked-up node; keep the handle usable anyway
            inode = self.nodes[nid] = Inode(nid, node.ino)
        final = self.ov.read_only or (node.layer == 0 and node.data is None) or node.indexed
        writing = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            self._follow_copy_up(inode, node)
        served = any(not x.passthrough for x in inode.handles or ())
        use_pt = self.passthrough and final and not served and stat.S_ISREG(node.st.st_mode)
        if use_pt and writing and _privileged_file(fd):
            # a write by a caller without CAP_FSETID must drop set-id bits and capabilities, and only writes
            # the daemon serves tell it so (WRITE_KILL_SUIDGID): the kernel writes a passthrough file with
            # the daemon's credentials, which keep them. Serve the file, unless readers hold it by passthrough
            # already (the kernel allows no mix): then drop them now, if this opener could not keep them
            if not inode.handles:
                use_pt = False
            elif not _has_fsetid(self._pid):
                self._kill_priv(fd)
        if use_pt and inode.backing is None:
            try:
                inode.backing = fp.backing_open(self.dev, fd)
            except OSError as e:
                log.warning("passthrough refused (%s): serving file data from the daemon", e)
                self.passthrough = use_pt = False
        h = self.handles[fd] = Handle(fd, nid, use_pt, final)
        if inode.handles is None:
            inode.handles = [h]
        else:
            inode.handles.append(h)
        if not writing and stat.S_ISREG(node.st.st_mode):
            # have the disk read the head of the file (also for the kernel's own reads by passthrough) right
            # after the reply is sent: the I/O then runs while the caller gets the reply and asks for its first
            # read, and its submission (~25 us) is not part of the OPEN's round trip (docs/performance.md)
            self._prefetch = fd
            if self.ahead is not None and inode.parent is not None and inode.name is not None:
                self._opened_in = (inode.parent, inode.name, None)  # told to the read-ahead after the reply
        if use_pt:
            return fd, fp.FOPEN_PASSTHROUGH, inode.backing or 0  # the kernel allows no other flags with it
        if not writing and len(inode.handles) == 1 and not self.writeback:  # (writeback: the kernel may hold
            in_memory = self._store(nid, fd)                                 # newer data than the disk)
            if in_memory is not None and self._opened_in is not None:  # its read started the disk: looked at
                self._opened_in = (*self._opened_in[:2], not in_memory)  # now, the data would be in memory then
        return fd, fp.FOPEN_KEEP_CACHE, 0

    def _after_open(self) -> None:
        """After an OPEN's reply is out: tell the read-ahead of it, and ask the disk for the head of the file (it
        stays open until a later request, its RELEASE, closes it)."""
        if self._opened_in is not None:  # (whether it is in memory: before the prefetch asks for it)
            parent, name, cold = self._opened_in
            self._read_ahead(parent, name, _cold(self._prefetch) if cold is None else cold)
            self._opened_in = None
        _willneed(self._prefetch)
        self._prefetch = -1

    def _store(self, nid: int, fd: int) -> bool | None:
        """Put the small file open at ``fd`` into the kernel's cache of node ``nid`` when its data is in memory
        here, before the OPEN's reply (FUSE_NOTIFY_STORE): the caller's first read then needs no READ. Only for
        the one handle of the node (no writer can change the file meanwhile: it would need a handle), and
        never waiting for the disk (a read that may not wait, which starts the disk on what it lacks). Whether
        the data was in memory; None when it was not read (no small regular file)."""
        try:
            st = os.fstat(fd)  # (a cached node's attributes may lack the size)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode) or not 0 < size <= STORE_MAX:
                return None
            buf = bytearray(size)
            try:
                if os.preadv(fd, [buf], 0, os.RWF_NOWAIT) != size:
                    return None
            except BlockingIOError:
                return False
            os.writev(self.dev, [fp.OUT_HEADER.pack(fp.OUT_HEADER.size + fp.NOTIFY_STORE_OUT.size + size,
                                                    fp.NOTIFY_STORE, 0),
                                 fp.NOTIFY_STORE_OUT.pack(nid, 0, size, 0), buf])
        except OSError as e:  # ENOENT: the kernel has no such node
            log.debug("no store of node %d: %s", nid, e)
            return None
        return True

    def _idle_step(self) -> None:
        """Do the next piece of work kept for the loop's idle time. A bug in it is logged: it must not take
        the mount down."""
        try:
            self._idle.popleft()()
        except Exception:
            log.exception("read-ahead")

    def _read_ahead(self, parent: Inode, name: str, cold: bool) -> None:
        """Tell the directory read-ahead of a read-only open of ``name`` in ``parent`` (``cold``: its data was
        not in memory); queue what it asks for (at most :data:`IDLE_MAX` items wait). A guess: a bug here is
        logged, never the open's failure."""
        try:
            listing, names = self.ahead.opened(parent.nodeid, name, cold)  # type: ignore[union-attr]
        except Exception:
            log.exception("read-ahead")
            return
        if listing:
            self._idle.append(functools.partial(self._list_ahead, parent))
        self._queue_warm(parent, names)

    def _list_ahead(self, parent: Inode) -> None:
        """Give the read-ahead the names of the directory ``parent`` (a guess: errors leave it without)."""
        if self.nodes.get(parent.nodeid) is not parent:
            return
        try:
            names = self.view.names_of(self._resolved(parent.nodeid))
        except OSError:
            return
        self._queue_warm(parent, self.ahead.listed(parent.nodeid, names))  # type: ignore[union-attr]

    def _queue_warm(self, parent: Inode, names: list[str]) -> None:
        """Queue a warm-up of each of ``names`` of ``parent`` for the loop's idle time, up to :data:`IDLE_MAX`
        waiting items in all (the rest are dropped: a guess)."""
        idle = self._idle
        for n in names[:max(0, IDLE_MAX - len(idle))]:
            idle.append(functools.partial(self._warm, parent, n))

    def _warm(self, parent: Inode, name: str) -> None:
        """Ask the disk for the file ``name`` of the directory ``parent`` when it is a regular file of at most
        :data:`WARM_MAX` bytes (a guess: every error is ignored, nothing is held)."""
        if self.nodes.get(parent.nodeid) is not parent:
            return
        try:  # resolved as a LOOKUP resolves it, so that the LOOKUP to come finds it in the path cache
            node = self.view.lookup_in(parent, self._resolved(parent.nodeid), name)
            if not stat.S_ISREG(node.st.st_mode) or node.st.st_size > WARM_MAX:
                return
            fd = node.open_data(os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, node.st.st_size, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    @staticmethod
    def _follow_copy_up(inode: Inode, node: Node) -> None:
        """Point read-only handles still open on the lower copy of the node (or on the lower data of a metacopy
        file) at its upper copy, as the kernel's overlayfs re-opens the real file after a (data) copy-up. The
        node's data must be in the upper by now."""
        for h in inode.handles or ():
            if not h.final:
                reopen_onto(h.fd, node.real)
                h.final = True

    def _kill_priv(self, fd: int) -> None:
        """What a write (or a truncating open) by a caller without CAP_FSETID does to a file, as the kernel's
        ``file_remove_privs`` (FUSE_HANDLE_KILLPRIV_V2 leaves it to us): drop set-user-ID; drop set-group-ID
        when the file is group-executable or the caller is not in the file's group; drop file capabilities."""
        st = os.fstat(fd)
        mode = st.st_mode & ~stat.S_ISUID
        if st.st_mode & stat.S_ISGID and (st.st_mode & stat.S_IXGRP or not self._in_group(st.st_gid)):
            mode &= ~stat.S_ISGID
        if mode != st.st_mode:
            os.fchmod(fd, stat.S_IMODE(mode))
        try:
            os.removexattr(fd, CAP_XATTR)
        except OSError:
            pass

    def _in_group(self, gid: int) -> bool:
        """True when the caller of the request being answered has ``gid`` as its group or a supplementary one."""
        groups = [self.show.stored(-1, int(g))[1] for g in _status_field(self._pid, b"Groups:") or []]
        return gid == self._gid or gid in groups

    def release(self, nid: int, body: memoryview) -> bytes:
        fh = fp.RELEASE_IN.unpack_from(body)[0]
        h = self.handles.pop(fh, None)
        if h is None:
            return b""
        os.close(h.fd)
        inode = self.nodes.get(h.nodeid)
        if inode is not None:
            if inode.handles is not None and h in inode.handles:
                inode.handles.remove(h)
                if not inode.handles:
                    inode.handles = None
            if h.passthrough and inode.backing is not None and not inode.handles:
                try:
                    fp.backing_close(self.dev, inode.backing)
                except OSError as e:
                    log.debug("backing close: %s", e)
                inode.backing = None
            if inode.nlookup <= 0:
                self._forget(h.nodeid, 0)
        return b""

    def read(self, nid: int, body: memoryview) -> bytes:
        fh, offset, size = fp.READ_IN.unpack_from(body)[:3]
        fd = self.handles[fh].fd
        if size >= THREADED_READ and self.readers is not None:
            self.readers.submit(self._unique, fd, offset, size)
            return DEFERRED
        return os.pread(fd, size, offset)

    def write(self, nid: int, body: memoryview) -> bytes:
        fh, offset, size, wflags = fp.WRITE_IN.unpack_from(body)[:4]
        fd = self.handles[fh].fd
        with mtime_kept(fd, self.writeback):
            n = os.pwrite(fd, body[fp.WRITE_IN.size:fp.WRITE_IN.size + size], offset)
        if wflags & fp.WRITE_KILL_SUIDGID:
            self._kill_priv(fd)
        return fp.WRITE_OUT.pack(n, 0)

    def fsync(self, nid: int, body: memoryview) -> bytes:
        fh, fsync_flags, _ = fp.FSYNC_IN.unpack_from(body)
        h = self.handles.get(fh)
        if h is not None:
            self.ov.fsync(h.fd, bool(fsync_flags & 1))
        return b""

    def fallocate(self, nid: int, body: memoryview) -> bytes:
        fh, offset, length, mode, _ = fp.FALLOCATE_IN.unpack_from(body)
        fd = self.handles[fh].fd
        with mtime_kept(fd, self.writeback):
            fallocate(fd, mode, offset, length)
        return b""

    def lseek(self, nid: int, body: memoryview) -> bytes:
        fh, offset, whence, _ = fp.LSEEK_IN.unpack_from(body)
        return fp.LSEEK_OUT.pack(os.lseek(self.handles[fh].fd, offset, whence))

    # ================================================================== directories
    def opendir(self, nid: int, body: memoryview) -> bytes:
        inode = self.nodes.get(nid)
        # a node looked up as a directory needs no resolution here: the listing resolves it at its first read
        # (a second `find` sends an OPENDIR per directory and nothing else); the root's type is never counted
        if (inode is None or inode.mode != stat.S_IFDIR) and not self._resolved(nid).is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        dh = self._next_dh
        self._next_dh += 1
        self.dirs[dh] = Listing(nid)
        return fp.OPEN_OUT.pack(dh, fp.FOPEN_CACHE_DIR | fp.FOPEN_KEEP_CACHE, 0)

    def _listing(self, dh: int, offset: int) -> Listing:
        """The directory handle's listing, made afresh when a read starts at offset 0."""
        ls = self.dirs[dh]
        if ls.entries is None or offset == 0:
            node = self._looked_up(ls.nid)
            children = self.view.listdir(node, lazy=True)
            entries: list[tuple[str, int, int, int, bytes | None]] = [
                (".", node.ino, node.st.st_mode, 0, None), ("..", self._parent_ino(ls.nid), stat.S_IFDIR, 0, None)]
            entries += [(intern(c.path.rpartition("/")[2]), c.ino, c.st.st_mode, c.layer, self._attr(c))
                        for c in children]
            inode = self.nodes.get(ls.nid)
            if inode is not None:
                self.view.adopt(inode, children)  # takes the children's full stat results away
            ls.entries, ls.version = entries, self.dir_version.get(ls.nid, 0)
        return ls

    def _dir_changed(self, *nids: int) -> None:
        for nid in nids:
            self.dir_version[nid] = self.dir_version.get(nid, 0) + 1
            if self.ahead is not None:
                self.ahead.forget(nid)

    def _parent_ino(self, nid: int) -> int:
        node = self.nodes.get(nid)
        if node is None or node.parent is None:
            return self.root_ino
        return node.parent.ino

    def readdir(self, nid: int, body: memoryview) -> bytes:
        return self._readdir(body, plus=False)

    def readdirplus(self, nid: int, body: memoryview) -> bytes:
        return self._readdir(body, plus=True)

    def _readdir(self, body: memoryview, *, plus: bool) -> bytes:
        fh, offset, size = fp.READ_IN.unpack_from(body)[:3]
        ls = self._listing(fh, offset)
        nid, entries = ls.nid, ls.entries
        assert entries is not None
        fresh = self.dir_version.get(nid, 0) == ls.version
        out: list[bytes] = []
        used = 0
        for i in range(offset, len(entries)):
            name, ino, mode, layer, attr = entries[i]
            dirent = fp.pack_dirent(ino, i + 1, os.fsencode(name), mode)
            if plus:
                if used + len(NO_ENTRY) + len(dirent) > size:
                    break
                if attr is None or not fresh:
                    dirent = NO_ENTRY + dirent
                else:
                    inode = self._count(nid, name, ino, mode, layer)
                    dirent = fp.ENTRY_OUT_HEAD.pack(inode.nodeid, 0, TIMEOUT, TIMEOUT, 0, 0) + attr + dirent
            elif used + len(dirent) > size:
                break
            out.append(dirent)
            used += len(dirent)
        return b"".join(out)

    def releasedir(self, nid: int, body: memoryview) -> bytes:
        self.dirs.pop(fp.RELEASE_IN.unpack_from(body)[0], None)
        return b""

    def fsyncdir(self, nid: int, body: memoryview) -> bytes:
        return b""

    # ================================================================== the loop
    def serve(self, dev: int) -> None:
        """Answer requests on the connected ``/dev/fuse`` descriptor ``dev`` until the mount ends."""
        self.dev = dev
        spin = self.spin_us * 1000
        poller = select.poll()
        poller.register(dev, select.POLLIN)
        woken = -1
        if self.ov.filler is not None:  # lazy layers: fills end in worker threads, which wake the loop
            woken, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            poller.register(woken, select.POLLIN)
        self.readers = Readers(dev, READ_THREADS) if READ_THREADS else None
        self.ahead = DirAhead() if self.spin_us and self.ov.filler is None else None
        restore = self._catch_signals()
        self._serving = True
        try:
            self._loop(dev, spin, poller, woken)
        finally:
            with self._resume_lock:
                self._serving = False
            for sig, old in restore.items():
                signal.signal(sig, old)
            if self.readers is not None:
                self.readers.close()
                self.readers = None
            if woken >= 0:
                os.close(woken)
                os.close(self._wake)
                self._wake = -1

    def resume(self, requests: list[bytes], ok: bool) -> None:
        """The lazy filler's callback (:class:`unionfs.lazy.fill.Filler`, from a worker thread): ``requests``
        (raw, as read from the device) waited for a fill that ended. When it succeeded they run again (the loop
        takes them before its next read of the device; the file is whole now), else each is answered EIO here,
        as a failed fill is answered in the loop. Nothing once the loop has ended."""
        with self._resume_lock:
            if not self._serving:
                return
            if ok:
                self._pending.extend(requests)
                try:
                    os.write(self._wake, b"\0")
                except BlockingIOError:  # a full pipe: the loop is woken already
                    pass
                return
            out = fp.OUT_HEADER
            for raw in requests:
                unique = fp.IN_HEADER.unpack_from(raw)[2]
                try:
                    os.writev(self.dev, [out.pack(out.size, -errno.EIO, unique)])
                except OSError as e:  # ENOENT: interrupted meanwhile; ENODEV: unmounted
                    log.debug("reply %d not delivered: %s", unique, e)

    def _catch_signals(self) -> dict[int, Any]:
        """SIGTERM, SIGINT and SIGHUP unmount the mount lazily (as libfuse's daemons do) instead of killing the
        daemon under it: the loop then ends as soon as nothing uses the mount, and the daemon's normal end
        follows (a volatile upper is synced and unmarked). Only the main thread can take signals."""
        if threading.current_thread() is not threading.main_thread() or not self.mountpoint:
            return {}

        def stop(signum: int, _frame: object) -> None:
            if self.mount_dev is None or not any(
                    m.mountpoint == self.mountpoint and m.dev == self.mount_dev for m in mountinfo.mounts()):
                return  # not (or no longer) ours to unmount
            log.info("signal %d: unmounting %s", signum, self.mountpoint)
            try:
                fp.detach(self.mountpoint)
            except OSError as e:
                log.error("cannot unmount %s on signal %d: %s", self.mountpoint, signum, e)

        return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

    def _loop(self, dev: int, spin: int, poller: select.poll, woken: int) -> None:
        """Read and answer requests until the mount ends. ``woken``: the read end of the pipe :meth:`resume`
        writes to (-1: none): the device is then read without blocking, so that the loop waits in ``poll``."""
        buf = bytearray(fp.BUFFER_SIZE)
        view = memoryview(buf)
        hdr = fp.IN_HEADER
        out = fp.OUT_HEADER
        ops = self.ops
        write = os.writev
        readv = os.readv
        pending = self._pending
        idle_work = self._idle
        if spin or woken >= 0:
            os.set_blocking(dev, False)
        idle = 0  # when the loop last ran out of requests (ns), 0 while it has some
        budget = spin
        clock = time.perf_counter_ns
        mapped = self.show.uids is not None or self.show.gids is not None
        while True:
            if pending:  # a request set aside while its lazy file was filled: the file is whole now
                raw = pending.popleft()
                n = len(raw)
                buf[:n] = raw
            else:
                try:
                    n = readv(dev, [buf])
                except BlockingIOError:
                    if idle_work:  # no request: a piece of the read-ahead meanwhile
                        self._idle_step()
                        continue
                    now = clock()
                    if not idle:
                        idle = now
                    elif now - idle > budget:
                        poller.poll()
                        if woken >= 0:
                            _drain(woken)
                    continue
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        continue
                    if e.errno == errno.ENODEV:
                        return
                    raise
            if idle:  # the loop had run out of requests: the gap sets how long it spins the next time
                budget = spin_budget(clock() - idle, spin)
                idle = 0
            if n < hdr.size:
                continue
            _len, opcode, unique, nid, uid, gid, pid, _ext, _ = hdr.unpack_from(buf)
            if opcode == fp.FORGET:
                self._forget(nid, fp.FORGET_IN.unpack_from(buf, hdr.size)[0])
                continue
            if opcode == fp.BATCH_FORGET:
                count = fp.BATCH_FORGET_IN.unpack_from(buf, hdr.size)[0]
                base = hdr.size + fp.BATCH_FORGET_IN.size
                for k in range(count):
                    self._forget(*fp.FORGET_ONE.unpack_from(buf, base + k * fp.FORGET_ONE.size))
                continue
            if opcode == fp.INTERRUPT:
                continue
            handler = ops.get(opcode)
            err = 0
            data = b""
            if handler is None:
                err = errno.ENOSYS
            else:
                self._uid, self._gid, self._pid, self._unique = uid, gid, pid, unique
                if mapped:  # the caller's ids as the files store them (IdMap)
                    self._uid, self._gid = self.show.stored(uid, gid)
                try:
                    answer = handler(nid, view[hdr.size:n])
                    if answer is DEFERRED:  # a reader thread replies
                        continue
                    data = answer or b""
                except FillPending as e:  # its lazy file is being filled: run it again after (resume)
                    raw = bytes(view[:n])
                    if not e.job.wait(raw):  # filled meanwhile
                        pending.append(raw)
                    continue
                except OSError as e:
                    err = e.errno or errno.EIO
                except Exception:  # a bug here must not take the mount down
                    log.exception("opcode %d on node %d", opcode, nid)
                    err = errno.EIO
            try:
                if err:
                    write(dev, [out.pack(out.size, -err, unique)])
                else:
                    write(dev, [out.pack(out.size + len(data), 0, unique), data])
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                    raise
            if self._prefetch >= 0:
                self._after_open()
            self.view.trim()  # between two requests: directory descriptors beyond the budget close
            if opcode == fp.DESTROY:
                return
            if opcode == fp.INIT and not err:  # the mount is whole once INIT is answered and tuned
                self._after_init()
                if self.ready is not None:
                    self.ready()

    def _after_init(self) -> None:
        """Note the mount's device (from the mount table) and widen its readahead (only possible once INIT is
        answered: the reply caps it). Never stats the mountpoint: that would ask this very loop."""
        if not self.mountpoint:
            return
        dev = next((m.dev for m in reversed(mountinfo.mounts())
                    if m.mountpoint == self.mountpoint and m.fstype.startswith("fuse")), "")
        self.mount_dev = dev or None
        try:
            with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
                f.write(str(READ_AHEAD_KB))
        except OSError as e:  # not root, or no sysfs: the kernel's default stays
            log.debug("readahead of %s (bdi %s) unchanged: %s", self.mountpoint, dev, e)


def _times(valid: int, atime: int, atimens: int, mtime: int, mtimens: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """SETATTR's times as utimensat(2) pairs (UTIME_NOW / UTIME_OMIT where the request says so)."""
    def one(set_: int, now: int, sec: int, nsec: int) -> tuple[int, int]:
        if valid & now:
            return (0, UTIME_NOW)
        return (sec, nsec) if valid & set_ else (0, UTIME_OMIT)
    return (one(fp.FATTR_ATIME, fp.FATTR_ATIME_NOW, atime, atimens),
            one(fp.FATTR_MTIME, fp.FATTR_MTIME_NOW, mtime, mtimens))


def spin_budget(gap: int, spin: int) -> int:
    """Nanoseconds to spin the next time the loop runs out of requests, after a gap of ``gap`` ns between the
    last time it ran out and the request that came: all of ``spin`` when the request came within it (a burst: the
    next one will too), else :data:`SPIN_SHORT_US` (at most ``spin``), so that sparse requests cost little CPU."""
    return spin if gap <= spin else min(spin, SPIN_SHORT_US * 1000)


def _drain(fd: int) -> None:
    """Empty the non-blocking pipe open at ``fd`` (its bytes only wake a ``poll``)."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _willneed(fd: int) -> None:
    """Ask the disk for the first :data:`PREFETCH` bytes of the file open at ``fd`` (a hint: errors ignored)."""
    try:
        os.posix_fadvise(fd, 0, PREFETCH, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


_PROBE = bytearray(1)


def _cold(fd: int) -> bool:
    """True when the first byte of the file open at ``fd`` is not in memory: a read of it that may not wait
    fails (and starts the disk on it, as the open's prefetch would). A filesystem that cannot tell counts as
    cold."""
    try:
        os.preadv(fd, [_PROBE], 0, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not in memory
        return True
    return False


def _sized(value: bytes, size: int) -> bytes:
    """A getxattr/listxattr answer: the size alone when asked with size 0, ERANGE when it does not fit."""
    if size == 0:
        return fp.GETXATTR_OUT.pack(len(value), 0)
    if len(value) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return value


def _privileged_file(fd: int) -> bool:
    """True for a regular file a write by an unprivileged caller changes: set-user-ID, set-group-ID, or file
    capabilities."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        return True
    try:
        os.getxattr(fd, CAP_XATTR)
        return True
    except OSError:
        return False


def _status_field(pid: int, key: bytes) -> list[bytes] | None:
    """The words after ``key`` (``b"CapEff:"``) in ``/proc/PID/status``; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return line.split()[1:]
    except OSError:
        pass
    return None


def _has_fsetid(pid: int) -> bool:
    """True when process ``pid`` holds CAP_FSETID in its effective set (False when it cannot be read)."""
    words = _status_field(pid, b"CapEff:")
    try:
        return bool(words) and bool(int(words[0], 16) >> CAP_FSETID & 1)
    except ValueError:
        return False


def serve(overlay: Overlay, mountpoint: str, *, opts: fp.MountOptions, ready: Callable[[], None] | None,
          writeback: bool = False, passthrough: bool = True, spin_us: int = SPIN_US, show: Show | None = None,
          record: int = -1) -> None:
    """Mount ``overlay`` at ``mountpoint`` and serve it in this process until it is unmounted. ``ready`` runs
    once the kernel has spoken to us (INIT). ``record``: a descriptor the paths of opened files are appended
    to (:meth:`LowLevelFS._recording_open`; -1: none)."""
    mountpoint = os.path.realpath(mountpoint)
    fs = LowLevelFS(overlay, writeback=writeback, passthrough=passthrough, mountpoint=mountpoint, spin_us=spin_us,
                    show=show, record=record)
    warm = _fill_lazy_layers(overlay, fs.resume)

    def live() -> None:
        if ready is not None:
            ready()
        if warm is not None:
            warm()  # after the answer: the command goes on meanwhile

    fs.ready = live
    dev = fp.open_session(mountpoint, opts)
    try:
        fs.serve(dev)
    finally:
        os.close(dev)


def _fill_lazy_layers(overlay: Overlay, resume: Callable[[list[bytes], bool], None]) -> Callable[[], object] | None:
    """Give ``overlay`` the filler of its lazy layers (:mod:`unionfs.lazy.fill`, filling in worker threads that
    hand the waiting requests to ``resume``) when a lower directory is one (its root carries the mark of
    :mod:`unionfs.layer.placeholder`); the lazy code, which speaks to registries, is loaded only then. Returns
    what loads those layers in the background (:meth:`~unionfs.lazy.fill.Filler.warm_in_background`), to start
    once the mount is live; None without lazy layers."""
    from unionfs.layer.placeholder import lazy_layer_of

    lazy = [(path, layer) for path in overlay.view.lowers if (layer := lazy_layer_of(path)) is not None]
    if lazy:
        from unionfs.lazy.fill import Filler

        overlay.filler = filler = Filler(lazy, resume)
        return filler.warm_in_background
    return None
