"""The kernel's FUSE protocol spoken directly over ``/dev/fuse`` (``include/uapi/linux/fuse.h``, 7.x).

This module owns the wire format and the session's file descriptor: opcodes, INIT flags, the structures
as :mod:`struct` formats, getting a connected ``/dev/fuse`` descriptor for a mountpoint (``mount(2)`` as
root, ``fusermount3`` otherwise), and the passthrough ioctls that register a backing file. It knows nothing
of unions: :mod:`unionfs.mount.server` answers the requests.

Why not libfuse: its high-level API gives every *name* its own kernel inode (hardlinked names then keep
separate caches), and libfuse 3.14 exposes neither FUSE passthrough nor FUSE_HANDLE_KILLPRIV_V2.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import os
import stat
import struct

from unionfs.fsops import MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, libc

# ---------------------------------------------------------------------------------------------- opcodes
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE, STATFS, RELEASE = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 20, 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, GETLK, SETLK, SETLKW, ACCESS, CREATE = 27, 28, 29, 30, 31, 32, 33, 34, 35
INTERRUPT, BMAP, DESTROY, IOCTL, POLL, NOTIFY_REPLY, BATCH_FORGET, FALLOCATE = 36, 37, 38, 39, 40, 41, 42, 43
READDIRPLUS, RENAME2, LSEEK, COPY_FILE_RANGE, SYNCFS, TMPFILE, STATX = 44, 45, 46, 47, 50, 51, 52

ROOT_ID = 1
KERNEL_VERSION = 7
KERNEL_MINOR = 41

# ---------------------------------------------------------------------------------------------- INIT flags
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
FLOCK_LOCKS = 1 << 10
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37

# open reply flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5
FOPEN_PASSTHROUGH = 1 << 7
# open request flags (fuse_open_in.open_flags), write flags, getattr flags
OPEN_KILL_SUIDGID = 1 << 0
WRITE_KILL_SUIDGID = 1 << 2
GETATTR_FH = 1 << 0

# setattr valid bits
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 16, 32, 64, 128, 256
FATTR_CTIME, FATTR_KILL_SUIDGID = 1024, 2048

#: the deepest stack of filesystems under a passthrough backing file the kernel allows (FILESYSTEM_MAX_STACK_DEPTH)
MAX_STACK_DEPTH = 2

# ---------------------------------------------------------------------------------------------- structures
IN_HEADER = struct.Struct("<IIQQIIIHH")            # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")                 # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")          # ino size blocks atime mtime ctime *nsec mode nlink uid gid rdev blksize flags
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")          # nodeid generation entry_valid attr_valid entry_nsec attr_nsec
ATTR_OUT_HEAD = struct.Struct("<QII")              # attr_valid attr_valid_nsec dummy
GETATTR_IN = struct.Struct("<IIQ")                 # getattr_flags dummy fh
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")    # valid pad fh size lock_owner atime mtime ctime *nsec mode u4 uid gid u5
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
MKNOD_IN = struct.Struct("<IIII")                  # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")                    # mode umask
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")                 # newdir flags padding
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")                     # flags open_flags
OPEN_OUT = struct.Struct("<QIi")                   # fh open_flags backing_id
CREATE_IN = struct.Struct("<IIII")                 # flags mode umask open_flags
READ_IN = struct.Struct("<QQIIQII")                # fh offset size read_flags lock_owner flags padding
WRITE_IN = struct.Struct("<QQIIQII")               # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")                # fh flags release_flags lock_owner
FSYNC_IN = struct.Struct("<QII")                   # fh fsync_flags padding
SETXATTR_IN = struct.Struct("<II")                 # size flags (without FUSE_SETXATTR_EXT)
GETXATTR_IN = struct.Struct("<II")                 # size padding
GETXATTR_OUT = struct.Struct("<II")
INIT_IN = struct.Struct("<IIIII")                  # major minor max_readahead flags flags2 (then unused)
INIT_OUT = struct.Struct("<IIIIHHIIHHII" + "H" * 12)
STATFS_OUT = struct.Struct("<QQQQQIIII" + "I" * 6)  # blocks bfree bavail files ffree bsize namelen frsize pad spare[6]
FALLOCATE_IN = struct.Struct("<QQQII")             # fh offset length mode padding
LSEEK_IN = struct.Struct("<QQII")                  # fh offset whence padding
LSEEK_OUT = struct.Struct("<Q")
NOTIFY_STORE = 4                                   # fuse_notify_code: data into the kernel's page cache
NOTIFY_STORE_OUT = struct.Struct("<QQII")           # nodeid offset size padding
DIRENT = struct.Struct("<QQII")                    # ino off namelen type
BACKING_MAP = struct.Struct("<iIQ")                # fd flags padding

# ioctls on /dev/fuse (FUSE_DEV_IOC_MAGIC 229)
_IOC_WRITE = 1
DEV_IOC_BACKING_OPEN = (_IOC_WRITE << 30) | (BACKING_MAP.size << 16) | (229 << 8) | 1
DEV_IOC_BACKING_CLOSE = (_IOC_WRITE << 30) | (4 << 16) | (229 << 8) | 2

#: request buffer: the largest WRITE (max_write) plus its headers, as the kernel demands of read(2)
MAX_WRITE = 1 << 20
BUFFER_SIZE = MAX_WRITE + 8192


def pack_attr(st: os.stat_result | object, ino: int, nlink: int, uid: int = -1, gid: int = -1) -> bytes:
    """A ``struct fuse_attr`` for a stat result shown as inode ``ino`` with ``nlink`` links, owned by ``uid`` and
    ``gid`` (-1: the stat result's)."""
    a, m, c = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns  # type: ignore[attr-defined]
    return ATTR.pack(ino, st.st_size, st.st_blocks, a // 10**9, m // 10**9, c // 10**9,  # type: ignore[attr-defined]
                     a % 10**9, m % 10**9, c % 10**9, st.st_mode, nlink,  # type: ignore[attr-defined]
                     st.st_uid if uid < 0 else uid, st.st_gid if gid < 0 else gid,  # type: ignore[attr-defined]
                     st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0)  # type: ignore[attr-defined]


def dirent_type(mode: int) -> int:
    """The d_type of a mode (DT_* equals S_IFMT >> 12)."""
    return stat.S_IFMT(mode) >> 12


def pack_dirent(ino: int, off: int, name: bytes, mode: int) -> bytes:
    """One ``struct fuse_dirent`` with its name padded to 8 bytes."""
    pad = (-(DIRENT.size + len(name))) % 8
    return DIRENT.pack(ino, off, len(name), dirent_type(mode)) + name + b"\0" * pad


def cstrings(data: bytes | memoryview, count: int) -> list[bytes]:
    """The first ``count`` NUL-terminated strings of a request body."""
    out: list[bytes] = []
    raw = bytes(data)
    pos = 0
    for _ in range(count):
        end = raw.index(b"\0", pos)
        out.append(raw[pos:end])
        pos = end + 1
    return out


# ---------------------------------------------------------------------------------------------- the session fd


class MountOptions:
    """What the session mounts with (the kernel's fuse options plus the mount flags; the defaults are
    libfuse's: nosuid, nodev, only the mounting user). A plain class: the daemon loads no ``dataclasses``."""

    __slots__ = ("fsname", "subtype", "read_only", "allow_other", "default_permissions", "dev", "suid", "noexec")

    def __init__(self, *, fsname: str = "unionfs", subtype: str = "unionfs", read_only: bool = False,
                 allow_other: bool = False, default_permissions: bool = True, dev: bool = False, suid: bool = False,
                 noexec: bool = False) -> None:
        self.fsname, self.subtype, self.read_only, self.allow_other = fsname, subtype, read_only, allow_other
        self.default_permissions, self.dev, self.suid, self.noexec = default_permissions, dev, suid, noexec


def open_session(mountpoint: str, opts: MountOptions) -> int:
    """Mount a FUSE filesystem at ``mountpoint`` and return the connected ``/dev/fuse`` descriptor.

    As root this is ``mount(2)`` itself; otherwise ``fusermount3`` mounts and hands the descriptor over a
    socket (``_FUSE_COMMFD``). Raises OSError with the failing step in its message.
    """
    st = os.stat(mountpoint)
    if os.geteuid() != 0:
        return _fusermount(mountpoint, opts)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = [f"fd={fd}", f"rootmode={stat.S_IFMT(st.st_mode):o}", f"user_id={os.geteuid()}",
            f"group_id={os.getegid()}"]
    if opts.default_permissions:
        data.append("default_permissions")
    if opts.allow_other:
        data.append("allow_other")
    flags = ((MS_RDONLY if opts.read_only else 0) | (0 if opts.dev else MS_NODEV) | (0 if opts.suid else MS_NOSUID)
             | (MS_NOEXEC if opts.noexec else 0))
    fstype = f"fuse.{opts.subtype}" if opts.subtype else "fuse"
    if libc.mount(opts.fsname.encode(), os.fsencode(mountpoint), fstype.encode(), flags,
                   ",".join(data).encode()) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount(2) of {mountpoint}: {os.strerror(err)}")
    return fd


def _fusermount(mountpoint: str, opts: MountOptions) -> int:
    """Mount through ``fusermount3`` (not root) and return the ``/dev/fuse`` descriptor it hands over. The
    modules for that are imported here: the daemon of a root mount never needs them."""
    import shutil
    import socket
    import subprocess

    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OSError(2, "fusermount3 not found (needed to mount FUSE without root)")
    o = [f"fsname={opts.fsname}", f"subtype={opts.subtype}", "ro" if opts.read_only else "rw",
         "nodev", "nosuid", "noexec" if opts.noexec else "exec"]
    if opts.default_permissions:
        o.append("default_permissions")
    if opts.allow_other:
        o.append("allow_other")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.run([tool, "-o", ",".join(o), "--", mountpoint], env=env, pass_fds=(theirs.fileno(),),
                              capture_output=True, text=True)
        theirs.close()
        if proc.returncode != 0:
            raise OSError(1, f"fusermount3: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
        fds = array.array("i")
        _msg, anc, _flags, _addr = ours.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(data[:fds.itemsize])
        if not fds:
            raise OSError(5, "fusermount3 handed over no /dev/fuse descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        if theirs.fileno() >= 0:
            theirs.close()




def detach(mountpoint: str) -> None:
    """Lazily unmount the FUSE mount at ``mountpoint`` (``umount2(MNT_DETACH)`` as root, ``fusermount3 -u -z``
    otherwise): it leaves the namespace now and ends once nothing uses it. OSError when that fails."""
    if os.geteuid() == 0:
        if libc.umount2(os.fsencode(mountpoint), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"umount2 of {mountpoint}: {os.strerror(err)}")
        return
    import shutil
    import subprocess

    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OSError(2, "fusermount3 not found (needed to unmount FUSE without root)")
    proc = subprocess.run([tool, "-u", "-z", "--", mountpoint], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(1, f"fusermount3 -u: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")


#: filesystems that stack on others (overlayfs, FUSE, ecryptfs), by statfs f_type
_STACKED_MAGIC = {0x794C7630, 0x65735546, 0xF15F}


def stack_depth(paths: list[str] | tuple[str, ...]) -> int:
    """The kernel stacking depth a passthrough mount over ``paths`` must declare: 2 when a layer sits on a
    stacked filesystem (e.g. overlayfs itself), else 1 (the mount then stays usable as an overlayfs lower)."""
    buf = ctypes.create_string_buffer(128)
    for p in paths:
        if libc.statfs(os.fsencode(p), buf) == 0 and struct.unpack_from("<q", buf)[0] in _STACKED_MAGIC:
            return 2
    return 1


def backing_open(devfd: int, fd: int) -> int:
    """Register ``fd`` as a passthrough backing file; returns its backing id (OSError when refused)."""
    buf = bytearray(BACKING_MAP.pack(fd, 0, 0))
    return fcntl.ioctl(devfd, DEV_IOC_BACKING_OPEN, buf, True)


def backing_close(devfd: int, backing_id: int) -> None:
    """Drop a backing id (open files keep their backing file)."""
    fcntl.ioctl(devfd, DEV_IOC_BACKING_CLOSE, struct.pack("<i", backing_id))
