"""The FUSE adapter: translates libfuse's high-level calls into :class:`unionfs.overlay.Overlay` calls.

Paths and stat dicts in, errno out; no union rule lives here. Uses mfusepy (fusepy-compatible), falling back to
fusepy. Against mfusepy 3.1.1 on libfuse 3 it also passes what mfusepy drops: rename flags
(RENAME_NOREPLACE/EXCHANGE), raw utimens timespecs (UTIME_NOW/UTIME_OMIT), readdir with full attributes
(readdirplus, in offset mode), and read_buf/write_buf with file-descriptor buffers so that file data never
enters Python.

Speed settings (DESIGN.md "Speed, by design"; the README's "Mounting" section says why and what each gained): entry/attr/negative
timeouts of an hour and kernel_cache (correct because every write goes through this daemon), readdirplus, the
kernel's readdir cache (set on the session's low-level opendir, see :func:`_enable_readdir_cache`), fd buffers
for read/write with 1 MiB - 4 KiB WRITEs, cached symlinks, no FLUSH, a single-threaded loop. The writeback cache
is opt-in (``-o writeback``): with it the kernel owns mtime (this adapter keeps the upper's mtime to the
kernel's: :meth:`UnionOperations.before_write`), but it also trusts its cached size and mtime of each *name* of
a hardlinked file, which libfuse's high-level API makes separate kernel inodes, so other names go stale.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from typing import Any, Callable

try:
    import mfusepy as fuse
except ImportError:  # pragma: no cover - the fusepy fallback
    import fuse  # type: ignore[no-redef]

from .overlay import UTIME_OMIT, Overlay, fallocate, reopen_onto, utimensat
from .union import Node, stat_dict

log = logging.getLogger(__name__)

TIMEOUT = 3600.0
#: bytes per WRITE request (the kernel's default is 128 KiB). Not a full 1 MiB: libfuse 3.14 then needs a
#: 1 MiB + 4 KiB pipe to splice requests in, which only CAP_SYS_RESOURCE may have above fs.pipe-max-size
#: (1 MiB); without the pipe WRITE data is copied through memory twice
MAX_WRITE = (1 << 20) - 4096
FUSE_READDIR_PLUS = 1
FUSE_FILL_DIR_PLUS = 2
FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_BUF_FD_RETRY = 1 << 3
CAP_SPLICE_WRITE = 1 << 7
CAP_SPLICE_MOVE = 1 << 8
CAP_SPLICE_READ = 1 << 9
CAP_WRITEBACK_CACHE = 1 << 16
CAP_CACHE_SYMLINKS = 1 << 23
CAP_POSIX_LOCKS = 1 << 1
CAP_FLOCK_LOCKS = 1 << 10

_MFUSEPY = hasattr(fuse, "fuse_version_major") and getattr(fuse, "fuse_version_major", 0) == 3


class _Buf(ctypes.Structure):
    """libfuse 3's struct fuse_buf."""
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class _BufVec(ctypes.Structure):
    """libfuse 3's struct fuse_bufvec with its one inline buffer (mfusepy declares a pointer here)."""
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", _Buf * 1)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


class UnionOperations(fuse.Operations):
    """fusepy Operations over an :class:`Overlay`. File handles are real file descriptors."""

    use_ns = True

    def __init__(self, overlay: Overlay, *, ready: Callable[[], None] | None = None,
                 writeback: bool = False) -> None:
        self.ov = overlay
        self.view = overlay.view
        self._ready = ready
        self.writeback = writeback
        self._fh_ino: dict[int, int] = {}
        self._fh_path: dict[int, str] = {}
        self._upper_fds: set[int] = set()
        self._aliases: dict[int, set[str]] = {}
        self.invalidate: Callable[[str], None] | None = None
        #: names libfuse gave to unlinked open files -> their inode number (the open handles hold the data)
        self._hidden: dict[str, int] = {}
        #: open directory handles: [path, entries (listed at a read from offset 0), namespace version then]
        self._dirs: dict[int, list[Any]] = {}
        #: bumped by every change of names made here: a listing older than that gives no attributes, so
        #: that the kernel instantiates no dentry for a name that is gone (see lowlevel.Listing)
        self._ns_version = 0

        self._next_dh = 1

    # ------------------------------------------------------------------ life cycle
    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = TIMEOUT
            config.attr_timeout = TIMEOUT
            config.negative_timeout = TIMEOUT
            config.use_ino = 1
            config.readdir_ino = 0
            config.hard_remove = 0  # open files unlinked: libfuse renames to .fuse_hidden*, see rename()
            config.nullpath_ok = 1
            config.kernel_cache = 1
        if conn is not None:
            want = CAP_CACHE_SYMLINKS | CAP_SPLICE_READ | CAP_SPLICE_WRITE | CAP_SPLICE_MOVE
            if self.writeback and not self.ov.read_only:
                want |= CAP_WRITEBACK_CACHE
            conn.want = (conn.want | (want & conn.capable)) & ~(CAP_POSIX_LOCKS | CAP_FLOCK_LOCKS)
            # libfuse 3.14 takes max_write from here only (fuse_main has no -o max_write) and derives the
            # kernel's max_pages from it; its receive buffer holds 1 MiB + header
            conn.max_write = MAX_WRITE
            log.debug("conn capable=%#x want=%#x", conn.capable, conn.want)
        if self._ready is not None:
            self._ready()

    def destroy(self, path: str) -> None:
        for fd in list(self._fh_ino):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fh_ino.clear()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _ctx() -> tuple[int, int]:
        uid, gid, _pid = fuse.fuse_get_context()
        return uid, gid

    def _stat(self, node: Node) -> dict[str, int]:
        if not node.is_dir and node.st.st_nlink > 1:
            self._aliases.setdefault(node.ino, set()).add(node.path)
        return self.view.stat_dict(node)

    def _changed(self, ino: int | None, but: str | None = None) -> None:
        """Data or attributes of inode ``ino`` changed: drop the kernel's cache of its other names
        (libfuse's high-level API gives each hardlink name its own kernel inode)."""
        if ino is None or self.invalidate is None:
            return
        paths = self._aliases.get(ino)
        if not paths:
            return
        for p in list(paths):
            if p != but:
                self.invalidate(p)

    def _path_of(self, path: str | None, fh: int | None) -> str:
        if path is not None:
            return path
        if fh is not None and fh in self._fh_path:
            return self._fh_path[fh]
        raise OSError(errno.EBADF, "no path nor handle")

    # ------------------------------------------------------------------ reads
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        if path is None:
            if fh is None:
                raise OSError(errno.EBADF, "no path nor handle")
            st = os.fstat(fh)
            return stat_dict(st, self._fh_ino.get(fh, st.st_ino))
        if path in self._hidden:
            fd = next((f for f, p in self._fh_path.items() if p == path), None)
            if fd is None:
                raise OSError(errno.ENOENT, path)
            return stat_dict(os.fstat(fd), self._hidden[path], nlink=0)
        return self._stat(self.view.lookup(path))

    def readlink(self, path: str) -> str:
        return self.view.readlink(self.view.resolve(path))

    def opendir(self, path: str) -> int:
        """Open a directory handle; the listing is made at the first readdir (the kernel answers repeated
        listings from its readdir cache and then sends no READDIR at all)."""
        node = self.view.resolve(path)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, path)
        dh = self._next_dh
        self._next_dh += 1
        self._dirs[dh] = [path, None, 0]
        return dh

    def _entries(self, fh: int, offset: int = 0) -> list[tuple[str, dict[str, int] | None]]:
        d = self._dirs.get(fh)
        if d is None:
            return []
        if d[1] is None or offset == 0:
            path = d[0]
            node = self.view.lookup(path)
            entries = [(".", self._stat(node)), ("..", None)]
            children = self.view.listdir(node)
            for child in children:
                entries.append((child.path.rpartition("/")[2], self._stat(child)))
            self.view.adopt(path, children)
            d[1], d[2] = entries, self._ns_version
        return d[1]

    def readdir_entries(self, fh: int, offset: int) -> tuple[list[tuple[str, dict[str, int] | None]], bool]:
        """The directory handle's entries from ``offset`` on (the next offset of entry i is i + 1), and whether
        their attributes may go to the kernel as nodes (the listing is no older than the last name change)."""
        entries = self._entries(fh, offset)[offset:]
        return entries, self._dirs[fh][2] == self._ns_version

    def readdir(self, path: str, fh: int) -> list[str]:  # fusepy fallback
        return [name for name, _ in self._entries(fh)]

    def releasedir(self, path: str | None, fh: int) -> int:
        self._dirs.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return self.ov.statfs()

    def listxattr(self, path: str) -> list[str]:
        return self.view.listxattr(self.view.resolve(path))

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.view.getxattr(self.view.resolve(path), name)

    # ------------------------------------------------------------------ files
    def open(self, path: str, flags: int) -> int:
        fd, node = self.ov.open_node(path, flags, keep_mtime=self.writeback)
        self._fh_ino[fd] = node.ino
        self._fh_path[fd] = path
        if node.layer == 0 and not node.indexed and not self.ov.read_only:
            self._upper_fds.add(fd)
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
                self._follow_copy_up(node)
        return fd

    def _follow_copy_up(self, node: Node) -> None:
        """Point read-only handles still open on the lower copy of ``node`` at its upper copy (dup2 keeps
        the handle number), as the kernel re-resolves the real file after a copy-up."""
        for fd, ino in self._fh_ino.items():
            if ino == node.ino and fd not in self._upper_fds:
                reopen_onto(fd, node.real)
                self._upper_fds.add(fd)

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        self._ns_version += 1
        uid, gid = self._ctx()
        fd = self.ov.create(path, mode, flags, uid, gid)
        self._fh_ino[fd] = self.view.resolve(path).ino
        self._fh_path[fd] = path
        self._upper_fds.add(fd)
        return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:  # fusepy fallback
        t = self.before_write(fh)
        n = os.pwrite(fh, data, offset)
        self.after_write(fh, t)
        return n

    def release(self, path: str | None, fh: int) -> int:
        if fh in self._upper_fds:
            self._changed(self._fh_ino.get(fh), self._fh_path.get(fh))
        self._fh_ino.pop(fh, None)
        self._fh_path.pop(fh, None)
        self._upper_fds.discard(fh)
        os.close(fh)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.ov.fsync(fh, bool(datasync))
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        t = self.before_write(fh)
        fallocate(fh, mode, offset, size)
        self.after_write(fh, t)
        return 0

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        """Truncate; with the writeback cache the mtime is kept (see :meth:`before_write`): the kernel sends
        its own mtime in the same SETATTR when its value changed, and libfuse applies it right after."""
        if fh is not None and fh in self._upper_fds:
            t = self.before_write(fh)
            os.ftruncate(fh, length)
            self.after_write(fh, t)
        elif path is None:
            raise OSError(errno.EBADF, "no path nor handle")
        else:
            p = self._path_of(path, fh)
            before = self.view.lookup(p)
            keep = before.st.st_mtime_ns if self.writeback and stat.S_ISREG(before.st.st_mode) else None
            self.ov.truncate(p, length)
            node = self.view.lookup(p)
            if keep is not None:
                utimensat(node.real, ((0, UTIME_OMIT), divmod(keep, 10**9)))
            self._changed(node.ino, p)
        return 0

    # ------------------------------------------------------------------ namespace
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._ns_version += 1
        uid, gid = self._ctx()
        self.ov.mknod(path, mode, dev, uid, gid)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._ns_version += 1
        uid, gid = self._ctx()
        self.ov.mkdir(path, mode | stat.S_IFDIR, uid, gid)
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._ns_version += 1
        # fusepy convention: symlink(link_path, target)
        uid, gid = self._ctx()
        self.ov.symlink(source, target, uid, gid)
        return 0

    def link(self, target: str, source: str) -> int:
        self._ns_version += 1
        # fusepy convention: link(new_path, existing_path)
        self.ov.link(source, target)
        node = self.view.lookup(target)
        self._aliases.setdefault(node.ino, set()).update((source, target))
        self._changed(node.ino, None)
        return 0

    def unlink(self, path: str) -> int:
        self._ns_version += 1
        if self._hidden.pop(path, None) is not None:
            return 0
        node = self.view.lookup(path)
        self.ov.unlink(path)
        if node.ino in self._aliases:
            self._aliases[node.ino].discard(path)
            self._changed(node.ino, path)
        return 0

    def rmdir(self, path: str) -> int:
        self._ns_version += 1
        self.ov.rmdir(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._ns_version += 1
        if new.rpartition("/")[2].startswith(".fuse_hidden") and not flags:
            # libfuse hides an unlinked file that is still open: keep its data for the open handles, show
            # nothing in the union (the kernel overlay's fstat then says nlink 0)
            node = self.view.lookup(old)
            self.unlink(old)
            self._hidden[new] = node.ino
            for fd, p in list(self._fh_path.items()):
                if p == old:
                    self._fh_path[fd] = new
            return 0
        self.ov.rename(old, new, flags)
        self._renamed(old, new, flags)
        return 0

    def _renamed(self, old: str, new: str, flags: int) -> None:
        """Keep the handles' paths and the hardlink names true after a rename (and an exchange): names under
        ``old`` move to ``new``; names under a replaced ``new`` are gone (finding D6: clearing them all lost
        the names whose kernel caches a later change must drop)."""
        def move(p: str, a: str, b: str) -> str | None:
            if p == a or p.startswith(a + "/"):
                return b + p[len(a):]
            return None
        exchange = bool(flags & 2)
        for fd, p in list(self._fh_path.items()):
            q = move(p, old, new)
            if q is None and exchange:
                q = move(p, new, old)
            if q is not None:
                self._fh_path[fd] = q
        for ino, paths in list(self._aliases.items()):
            kept: set[str] = set()
            for p in paths:
                q = move(p, old, new)
                if q is None:
                    if exchange:
                        q = move(p, new, old)
                    elif move(p, new, new) is not None:
                        continue  # replaced by the rename
                kept.add(p if q is None else q)
            if kept:
                self._aliases[ino] = kept
            else:
                del self._aliases[ino]

    # ------------------------------------------------------------------ attributes
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        p = self._path_of(path, fh)
        self.ov.chmod(p, mode)
        self._changed(self.view.lookup(p).ino, p)
        return 0

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        p = self._path_of(path, fh)
        self.ov.chown(p, uid, gid)
        self._changed(self.view.lookup(p).ino, p)
        return 0

    def utimens_raw(self, path: str | None, times: Any, fh: int | None) -> int:
        """utimens with the raw ((sec, nsec), (sec, nsec)) pairs (nsec may be UTIME_NOW/UTIME_OMIT)."""
        log.debug("utimens %s fh=%s %s", path, fh, times)
        if fh is not None and fh in self._upper_fds:
            utimensat(None, times, fd=fh)
        else:
            self.ov.utimens(self._path_of(path, fh), times)
        return 0

    def before_write(self, fh: int) -> int | None:
        """Call before changing the data of handle ``fh``; pass the result to :meth:`after_write`.

        With the writeback cache the kernel owns a file's mtime (and ctime): it changes them in its own
        inode when a write enters its page cache and tells us with a SETATTR (FATTR_MTIME) when its value
        changed; the WRITE requests come later, at writeback. So a data change made here must not move the
        upper's mtime: the mtime is read before and put back after. Otherwise the upper would keep a later
        mtime than the mount showed (and a remount or a commit would see it).
        """
        return os.fstat(fh).st_mtime_ns if self.writeback else None

    def after_write(self, fh: int, mtime_ns: int | None = None) -> None:
        """After data landed in the upper file of handle ``fh`` (``mtime_ns`` from :meth:`before_write`).

        Other names of a hardlinked file have their kernel caches dropped (there is no FLUSH request:
        close(2) waits for the writeback of dirty pages, which ends here).
        """
        if mtime_ns is not None:
            utimensat(None, ((0, UTIME_OMIT), divmod(mtime_ns, 10**9)), fd=fh)
        ino = self._fh_ino.get(fh, -1)
        if ino in self._aliases:
            self._changed(ino, self._fh_path.get(fh))

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:  # fusepy fallback
        t = None if times is None else tuple(divmod(int(x), 10**9) for x in times)
        return self.utimens_raw(path, t, None)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.ov.setxattr(path, name, value, options)
        self._changed(self.view.lookup(path).ino, path)
        return 0

    def removexattr(self, path: str, name: str) -> int:
        self.ov.removexattr(path, name)
        self._changed(self.view.lookup(path).ino, path)
        return 0


if _MFUSEPY:
    _libfuse = fuse._libfuse
    _libfuse.fuse_buf_copy.restype = ctypes.c_ssize_t
    _libfuse.fuse_buf_copy.argtypes = [ctypes.POINTER(_BufVec), ctypes.POINTER(_BufVec), ctypes.c_int]
    _libfuse.fuse_buf_size.restype = ctypes.c_size_t
    _libfuse.fuse_buf_size.argtypes = [ctypes.POINTER(_BufVec)]
    _libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _libfuse.fuse_invalidate_path.restype = ctypes.c_int

    class UnionFUSE(fuse.FUSE):
        """mfusepy's FUSE with the calls it drops or slows down passed through (see the module docstring)."""

        def _p(self, path: bytes | None) -> str | None:
            return None if path is None else path.decode(self.encoding, self.errors)

        def init_fuse_3(self, conn: Any, config: Any) -> None:
            fuse_ptr = ctypes.c_void_p(_libfuse.fuse_get_context().contents.fuse)
            table = _ll_ops_table(fuse_ptr.value)
            if table is None:
                log.warning("libfuse's low-level ops table not found: the kernel will not cache listings")
            else:
                _enable_readdir_cache(table)
                log.debug("readdir cache on (low-level opendir wrapped)")

            def invalidate(path: str) -> None:
                _libfuse.fuse_invalidate_path(fuse_ptr, path.encode(self.encoding, self.errors))

            self.operations.invalidate = invalidate
            super().init_fuse_3(conn, config)

        def opendir(self, path: bytes, fip: Any) -> int:
            fip.contents.fh = self.operations.opendir(self._p(path))
            return 0

        def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
            return self.operations.chmod(self._p(path), mode, fip.contents.fh if fip else None)

        def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
            if ctypes.c_uint32(uid + 1).value == 0:
                uid = -1
            if ctypes.c_uint32(gid + 1).value == 0:
                gid = -1
            return self.operations.chown(self._p(path), uid, gid, fip.contents.fh if fip else None)

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            return self.operations.truncate(self._p(path), length, fip.contents.fh if fip else None)

        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(self._p(old), self._p(new), flags)

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            times = None
            if buf:
                a, m = buf.contents.actime, buf.contents.modtime
                times = ((a.tv_sec, a.tv_nsec), (m.tv_sec, m.tv_nsec))
            fh = fip.contents.fh if fip else None
            return self.operations.utimens_raw(self._p(path), times, fh)

        def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any,
                           flags: int) -> int:
            st = fuse.c_stat()
            plus = bool(flags & FUSE_READDIR_PLUS)
            entries, fresh = self.operations.readdir_entries(fip.contents.fh, offset)
            fill_flags = FUSE_FILL_DIR_PLUS if plus and fresh else 0
            for i, (name, attrs) in enumerate(entries):
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                if attrs is not None:
                    fuse.set_st_attrs(st, attrs, use_ns=True)
                    stp = st
                    ff = fill_flags
                else:
                    st.st_mode = stat.S_IFDIR
                    stp, ff = st, 0
                if filler(buf, name.encode(self.encoding, self.errors), stp, offset + i + 1, ff) != 0:
                    break
            return 0

        def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
            fd = fip.contents.fh
            p = _libc.malloc(ctypes.sizeof(_BufVec))
            if not p:
                return -errno.ENOMEM
            bv = _BufVec.from_address(p)
            bv.count, bv.idx, bv.off = 1, 0, 0
            b = bv.buf[0]
            b.size, b.flags, b.mem, b.fd, b.pos = size, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, None, fd, offset
            bufpp[0] = ctypes.cast(p, type(bufpp[0]))
            return 0

        def write_buf(self, path: bytes | None, buf: Any, offset: int, fip: Any) -> int:
            src = ctypes.cast(buf, ctypes.POINTER(_BufVec))
            total = _libfuse.fuse_buf_size(src)
            dst = _BufVec(1, 0, 0)
            d = dst.buf[0]
            d.size, d.flags, d.mem, d.fd, d.pos = total, FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK, None, fip.contents.fh, offset
            t = self.operations.before_write(fip.contents.fh)
            res = _libfuse.fuse_buf_copy(ctypes.byref(dst), src, 0)
            if res > 0:
                self.operations.after_write(fip.contents.fh, t)
            return res

    _LL_OPS = 44          # function pointers in libfuse 3.14's struct fuse_lowlevel_ops
    _LL_OPENDIR = 20      # index of opendir in it
    _LL_OPENDIR_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(fuse.fuse_file_info))
    _ll_keep: list[Any] = []  # the installed callback must outlive the session

    def _libfuse_text() -> tuple[int, int] | None:
        """The address range of libfuse3's executable mapping."""
        lo = hi = None
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and "libfuse3" in parts[5] and "x" in parts[1]:
                    a, b = (int(x, 16) for x in parts[0].split("-"))
                    lo, hi = min(a, lo or a), max(b, hi or b)
        return None if lo is None else (lo, hi)

    def _ll_ops_table(fuse_addr: int | None) -> int | None:
        """The address of the session's ``struct fuse_lowlevel_ops`` (inside ``struct fuse_session``, found
        through ``struct fuse``'s first member), or None.

        libfuse does not export it; the table is recognised by its shape: 44 slots, each NULL or an address
        in libfuse's code, init/lookup/getattr/opendir/readdir/releasedir set, its neighbours not code.
        """
        if not fuse_addr:
            return None
        text = _libfuse_text()
        if text is None:
            return None
        se = ctypes.c_void_p.from_address(fuse_addr).value
        if not se:
            return None
        words = (ctypes.c_uint64 * 96).from_address(se)
        lo, hi = text

        def code(v: int) -> bool:
            return lo <= v < hi
        for start in range(1, 96 - _LL_OPS):
            slots = words[start:start + _LL_OPS]
            if not all(v == 0 or code(v) for v in slots):
                continue
            if not all(code(slots[i]) for i in (0, 2, 4, _LL_OPENDIR, _LL_OPENDIR + 1, _LL_OPENDIR + 2)):
                continue
            if code(words[start + _LL_OPS]) or code(words[start - 1]):
                continue
            return se + 8 * start
        return None

    def _wrap_ll(table: int, index: int, proto: Any, make: Callable[[Any], Callable[..., None]]) -> None:
        """Replace slot ``index`` of the low-level ops table by ``make(original)`` (kept alive here)."""
        slot = ctypes.c_void_p.from_address(table + 8 * index)
        orig = proto(slot.value)
        cb = proto(make(orig))
        _ll_keep.append((cb, orig))
        slot.value = ctypes.cast(cb, ctypes.c_void_p).value

    def _enable_readdir_cache(table: int) -> None:
        """Make every OPENDIR reply ask the kernel to cache the listing (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE).

        libfuse 3.14's high-level opendir does not pass those bits from the filesystem's fuse_file_info to
        the reply, but it replies with the low-level one it was given, untouched but for ``fh``: so the
        low-level opendir is wrapped to set the bits, then call libfuse's own. The kernel drops a directory's
        cached listing whenever it changes through this mount (its mtime/i_version moves).
        """
        def make(orig: Any) -> Callable[..., None]:
            def ll_opendir(req: int, ino: int, llfi: Any) -> None:
                fi = llfi.contents
                fi.cache_readdir = 1
                fi.keep_cache = 1
                orig(req, ino, llfi)
            return ll_opendir
        _wrap_ll(table, _LL_OPENDIR, _LL_OPENDIR_T, make)

    # mfusepy only wires a libfuse callback when the Operations object has an attribute of that name
    UnionOperations.read_buf = lambda self, *a: 0  # type: ignore[attr-defined]
    UnionOperations.write_buf = lambda self, *a: 0  # type: ignore[attr-defined]
else:  # pragma: no cover
    UnionFUSE = fuse.FUSE  # type: ignore[misc,assignment]


def serve(overlay: Overlay, mountpoint: str, *, options: dict[str, Any], ready: Callable[[], None] | None,
          threads: bool = False) -> None:
    """Run the FUSE loop in this process until the mount ends. ``ready`` runs once the kernel talks to us."""
    ops = UnionOperations(overlay, ready=ready, writeback=bool(options.pop("writeback", False)))
    UnionFUSE(ops, mountpoint, foreground=True, nothreads=not threads, raw_fi=False, **options)
