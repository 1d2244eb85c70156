"""Unpack a layer tar stream into a directory, safely, in the kernel overlayfs format.

``unpack_layer(blob, dest, media_type=..., diff_id=...)`` decompresses ``blob`` (see ``compression``),
hashes the whole uncompressed tar stream (to its very end, padding included) and creates every entry
under ``dest``, which must be an existing empty directory. ``unpack_entries(entries, dest)`` creates entries
given as headers (``TarInfo``) and data writers, with the same rules, for a caller that has no tar stream.

Safety contract: nothing is ever created, changed or followed outside ``dest``. Headers are read with
``tarfile`` (stream mode; its extraction is never used). Every entry is created by us relative to a
directory file descriptor: parents are walked one component at a time with ``O_DIRECTORY|O_NOFOLLOW``,
files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW``, links, nodes and metadata calls never follow a final
symlink. Hostile input raises a ``UnionfsError`` subclass with a one-line message naming the entry:
``UnsafeLayerError`` (escapes, symlink traversal, bad whiteouts, oversized headers), ``LayerTooLargeError``
(decompressed size over the bound), ``DigestError`` (DiffID mismatch), ``LayerError`` (truncated or corrupt
streams, unsupported entries). No OSError, tarfile, zlib or zstd exception escapes. On error ``dest`` may
hold a partial tree: the caller (the store's staging) deletes it. A stream that stops at an entry boundary
without the end-of-archive marker is accepted (umoci insert writes such layers; Go's archive/tar reads
them): a cut at exactly that point is caught by the DiffID, which covers every byte read.

Format (OCI image spec, "Whiteouts"; docs/design.md, "On-disk format"):

* ``.wh.NAME`` becomes a character device 0/0 named NAME (``whiteout.make_whiteout_at``), unless NAME
  exists in this layer: a whiteout hides lower layers only, so a same-layer file survives (if NAME is a
  directory it is made opaque instead, since the lower one is gone). A later entry NAME replaces a
  whiteout we made; a directory that does so is made opaque.
* ``.wh..wh..opq`` makes its directory opaque (``overlay.opaque=y`` in ``trusted.`` as root, ``user.``
  otherwise), wherever it sits in the stream; the directory is created if it does not exist yet.
* Modes (setuid/setgid/sticky included), uid/gid, mtimes (directories last), xattrs from PAX
  ``SCHILY.xattr.*`` (binary values kept; the overlay's own namespaces and the owner overrides dropped with a
  warning), hardlinks to earlier entries, symlinks as data, fifos, devices. Without privilege
  (:func:`unionfs.layer.ownership.privileged`), owners other than root and devices are kept in overrides
  (``user.containers.override_stat``; a device as an empty regular file), and symlinks and fifos are the
  unpacker's (they cannot hold one).
* Sparse members (old GNU, PAX 0.0, 0.1 and 1.0) are written with their holes (nothing allocated for them);
  their full size counts into the bound, which covers the whole layer: tar stream plus sparse holes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import stat
import sys
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, Callable, Iterable, Iterator

from unionfs.errors import DigestError, LayerError, LayerTooLargeError, UnionfsError, UnsafeLayerError, printable
from unionfs.fsops import remove_at
from unionfs.layer import ownership, whiteout
from unionfs.layer.compression import open_decompressed
from unionfs.oci.digest import Digest, HashingReader

log = logging.getLogger(__name__)

#: Default bound on a layer's decompressed size; ``UNIONFS_MAX_LAYER_SIZE`` (bytes) overrides it.
DEFAULT_MAX_LAYER_SIZE: int = 64 << 30
MAX_LAYER_SIZE_ENV = "UNIONFS_MAX_LAYER_SIZE"
#: Bound on one PAX extended header, one GNU long name, and the accumulated global PAX headers.
MAX_HEADER_SIZE = 1 << 20
#: Longest entry name (PATH_MAX): longer names cannot be used through a path anyway.
MAX_NAME = 4096

_DIRFLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILEFLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_TAR_BUFSIZE = 64 * 1024
_DIR_CACHE = 64
_OPQ = whiteout.OPAQUE_MARKER.encode()
_WH = whiteout.WH_PREFIX.encode()
_XATTR_PREFIX = "SCHILY.xattr."
# Python before 3.11.10 / 3.12.6 parses PAX headers with a regex that backtracks quadratically on long
# digit runs (CVE-2024-6232); there we refuse such runs before tarfile sees them.
_PAX_REDOS = sys.version_info < (3, 11, 10) or (3, 12) <= sys.version_info < (3, 12, 6)
_LONG_DIGITS = re.compile(rb"[0-9]{65}")

#: what writes a regular file's data for :func:`unpack_entries`: called with the new file's descriptor
Writer = Callable[[int], None]


@dataclass(frozen=True)
class UnpackResult:
    """What an unpack produced: the DiffID and size of the uncompressed tar, and its entry count."""

    diff_id: Digest
    size: int
    entries: int


def max_layer_size() -> int:
    """The bound on decompressed bytes: ``$UNIONFS_MAX_LAYER_SIZE`` if set, else DEFAULT_MAX_LAYER_SIZE."""
    text = os.environ.get(MAX_LAYER_SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_LAYER_SIZE
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise LayerError(f"{MAX_LAYER_SIZE_ENV} must be a positive number of bytes, not {text!r}")
    return value


def unpack_layer(blob: BinaryIO, dest: str, *, media_type: str | None, diff_id: Digest | None = None,
                 max_size: int | None = None, privileged: bool | None = None) -> UnpackResult:
    """Unpack the layer ``blob`` (compressed as ``media_type`` says or sniffing finds) into ``dest``.

    ``dest`` is an existing empty directory. When ``diff_id`` is given the uncompressed stream must match
    it (DigestError otherwise). ``max_size`` bounds the uncompressed bytes (default: ``max_layer_size()``).
    ``privileged``: give entries their owners and make devices (True) or keep overrides (False; see the
    module docstring); None: as this process may (:func:`unionfs.layer.ownership.privileged`).
    Raises only UnionfsError subclasses (see the module docstring).
    """
    limit = max_layer_size() if max_size is None else max_size
    algorithm = diff_id.algorithm if diff_id is not None else "sha256"
    unpacker = _unpacker(dest, limit, privileged)
    try:
        reader = LayerReader(open_decompressed(blob, media_type), algorithm, limit)
        unpacker.run(reader)
    finally:
        unpacker.close()
    got = reader.digest()
    if diff_id is not None and got != diff_id:
        raise DigestError(f"layer DiffID mismatch: expected {diff_id}, got {got}")
    return UnpackResult(got, reader.count, unpacker.entries)


def unpack_entries(entries: Iterable[tuple[tarfile.TarInfo, Writer | None]], dest: str, *,
                   max_size: int | None = None, privileged: bool | None = None) -> int:
    """Create ``entries`` in ``dest`` (an existing empty directory) exactly as :func:`unpack_layer` creates the
    entries of a tar stream holding these headers in this order: every rule of the module docstring holds
    (names, links, whiteouts and opaque directories, devices, owners, modes, xattrs from ``pax_headers``,
    times, directories' metadata last), and the same errors are raised. For a caller that has the headers
    but no tar stream (a lazy layer made from its TOC: :mod:`unionfs.lazy.materialize`); no DiffID (there is
    no stream to hash).

    Each entry is a ``TarInfo`` (its ``sparse`` and ``offset_data`` are not used) and, for a regular file, a
    writer (None: no data) called with the descriptor of the file just created (empty, open for writing),
    before its owner, mode, xattrs and times are set; the file must then hold ``ti.size`` bytes (LayerError
    otherwise). The regular files' sizes count into the bound ``max_size`` (default: ``max_layer_size()``).
    Returns the number of entries. Raises only UnionfsError subclasses.
    """
    unpacker = _unpacker(dest, max_layer_size() if max_size is None else max_size, privileged)
    try:
        unpacker.run_entries(entries)
    finally:
        unpacker.close()
    return unpacker.entries


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _unpacker(dest: str, limit: int, privileged: bool | None) -> _Unpacker:
    """An unpacker into the directory ``dest`` (LayerError when it cannot be opened); ``privileged`` as
    :func:`unpack_layer` takes it."""
    try:
        root_fd = os.open(dest, _DIRFLAGS)
    except OSError as e:
        raise LayerError(f"cannot open layer directory {dest}: {e.strerror}") from None
    return _Unpacker(root_fd, limit, ownership.privileged() if privileged is None else privileged)


def _no_data(fd: int) -> None:
    """The writer of an entry that has no data."""


def _show(name: bytes | str) -> str:
    """A one-line, quoted rendering of an entry name (non-UTF-8 bytes escaped)."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return repr(name)


class LayerReader(HashingReader):
    """The one hashing reader, bounding a layer's expanded size: the uncompressed tar stream (``count``)
    plus the holes of its sparse members (``holes``, which the stream does not hold); LayerTooLargeError
    once that total goes over ``limit``. Used by unpack, ``load`` and ``import`` alike."""

    def __init__(self, stream: BinaryIO, algorithm: str, limit: int) -> None:
        super().__init__(stream, algorithm)
        self.limit = limit
        self.holes = 0

    def _check_limit(self) -> None:
        self.check(self.count + self.holes)

    def check(self, expanded: int) -> None:
        """Raise LayerTooLargeError when ``expanded`` bytes are over the bound."""
        if expanded > self.limit:
            raise LayerTooLargeError(f"layer expands to more than {self.limit} bytes (sparse files count at "
                                     f"their full size; bound set by {MAX_LAYER_SIZE_ENV})")

    def add_holes(self, n: int) -> None:
        """Count ``n`` bytes of sparse holes into the layer's expanded size (and check the bound)."""
        self.holes += n
        self.check(self.count + self.holes)


def _check_pax_records(buf: bytes) -> None:
    """Raise UnsafeLayerError unless ``buf`` is a well-formed sequence of ``LEN KEY=VALUE\\n`` records."""
    pos, end = 0, len(buf.rstrip(b"\0"))
    while pos < end:
        sp = buf.find(b" ", pos, pos + 21)
        if sp <= pos or not buf[pos:sp].isdigit():
            raise UnsafeLayerError(f"malformed PAX header record at byte {pos}")
        length = int(buf[pos:sp])
        rec_end = pos + length
        if length <= sp - pos + 3 or rec_end > len(buf) or buf[rec_end - 1:rec_end] != b"\n" \
                or b"=" not in buf[sp + 1:rec_end]:
            raise UnsafeLayerError(f"malformed PAX header record at byte {pos}")
        pos = rec_end
    if _PAX_REDOS and _LONG_DIGITS.search(buf):
        raise UnsafeLayerError("PAX header holds a run of more than 64 digits (refused on this Python)")


class BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized or malformed extended headers before tarfile reads them."""

    def _proc_pax(self, tarfile_):  # type: ignore[no-untyped-def]
        if self.size > MAX_HEADER_SIZE:
            raise UnsafeLayerError(f"PAX header of {self.size} bytes (bound {MAX_HEADER_SIZE})")
        stream = tarfile_.fileobj
        if hasattr(stream, "buf") and hasattr(stream, "pos"):
            # Peek at the records (then push them back) so that tarfile never parses a malformed one.
            buf = stream.read(self._block(self.size))
            _check_pax_records(buf[: self.size])
            stream.buf = buf + stream.buf
            stream.pos -= len(buf)
        result = super()._proc_pax(tarfile_)
        if sum(len(k) + len(v) for k, v in tarfile_.pax_headers.items()) > MAX_HEADER_SIZE:
            raise UnsafeLayerError(f"global PAX headers exceed {MAX_HEADER_SIZE} bytes")
        return result

    def _proc_gnulong(self, tarfile_):  # type: ignore[no-untyped-def]
        if self.size > MAX_HEADER_SIZE:
            raise UnsafeLayerError(f"GNU long name header of {self.size} bytes (bound {MAX_HEADER_SIZE})")
        return super()._proc_gnulong(tarfile_)

    def _proc_gnusparse_10(self, next, pax_headers, tarfile_):  # type: ignore[no-untyped-def]
        """GNU sparse 1.0: the map (decimal numbers, one a line) leads the member's data. tarfile's own
        reader loops forever on a map that never ends; this one is bounded and checks every number."""
        fileobj = tarfile_.fileobj
        buf, total = b"", 0
        numbers: list[int] = []
        count: int | None = None
        while count is None or len(numbers) < 2 * count:
            if b"\n" not in buf:
                if total >= MAX_HEADER_SIZE:
                    raise UnsafeLayerError(f"GNU sparse map of more than {MAX_HEADER_SIZE} bytes")
                block = fileobj.read(tarfile.BLOCKSIZE)
                if len(block) < tarfile.BLOCKSIZE:
                    raise LayerError("truncated tar stream: it ends inside a GNU sparse map")
                buf += block
                total += len(block)
                continue
            line, buf = buf.split(b"\n", 1)
            if not line.isdigit() or len(line) > 20:
                raise UnsafeLayerError("malformed GNU sparse map")
            if count is None:
                count = int(line)
            else:
                numbers.append(int(line))
        next.offset_data = fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2]))

    def _proc_sparse(self, tarfile_):  # type: ignore[no-untyped-def]
        """Old GNU sparse (type ``S``): as tarfile's, with the extension headers bounded and checked."""
        structs, isextended, origsize = self._sparse_structs
        del self._sparse_structs
        total = 0
        while isextended:
            if total >= MAX_HEADER_SIZE:
                raise UnsafeLayerError(f"GNU sparse headers of more than {MAX_HEADER_SIZE} bytes")
            buf = tarfile_.fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise LayerError("truncated tar stream: it ends inside a GNU sparse header")
            total += len(buf)
            for pos in range(0, 21 * 24, 24):
                try:
                    offset, numbytes = tarfile.nti(buf[pos:pos + 12]), tarfile.nti(buf[pos + 12:pos + 24])
                except (ValueError, tarfile.HeaderError):
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tarfile_.fileobj.tell()
        tarfile_.offset = self.offset_data + self._block(self.size)
        self.size = origsize
        return self


def split_name(raw: bytes, what: str = "entry") -> list[bytes]:
    """The components of a tar name (``.`` and empty ones dropped); UnsafeLayerError for escapes."""
    if b"\0" in raw:
        raise UnsafeLayerError(f"{what} {_show(raw)}: NUL byte in name")
    if raw.startswith(b"/"):
        raise UnsafeLayerError(f"{what} {_show(raw)}: absolute name")
    if len(raw) > MAX_NAME:
        raise LayerError(f"{what} {_show(raw[:64])}...: name longer than {MAX_NAME} bytes")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UnsafeLayerError(f"{what} {_show(raw)}: '..' component")
    return parts


def _time_ns(ti: tarfile.TarInfo, key: str) -> int:
    """A timestamp in ns: the exact PAX value when there is one, else the header's ``mtime``."""
    text = ti.pax_headers.get(key)
    if text is not None:
        try:
            return int(Decimal(text) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    if key == "atime":
        return _time_ns(ti, "mtime")
    return int(ti.mtime) * 1_000_000_000


def _xattrs(ti: tarfile.TarInfo, entry: bytes) -> list[tuple[str, bytes]]:
    """The entry's xattrs from ``SCHILY.xattr.*`` as (name, raw bytes); overlay-private ones dropped."""
    out = []
    for key, value in ti.pax_headers.items():
        if not key.startswith(_XATTR_PREFIX):
            continue
        name = key[len(_XATTR_PREFIX):]
        if whiteout.is_private_xattr(name):
            log.warning("entry %s: dropping xattr %s (private to the overlay or the store)", _show(entry), name)
            continue
        out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


class _NotADirectory(LayerError):
    """A path component of an entry is a non-directory of this layer."""


class _Unpacker:
    """State of one unpack: the root fd, a small cache of directory fds, whiteouts made, deferred dir metadata."""

    def __init__(self, root_fd: int, limit: int, privileged: bool) -> None:
        self.root = root_fd
        self.limit = limit
        self.reader: LayerReader  # the stream being unpacked, set by run()
        #: may give entries their owners and make devices; otherwise overrides keep them (:mod:`..ownership`)
        self.privileged = privileged
        self.entries = 0
        self._dirs: OrderedDict[bytes, int] = OrderedDict()
        self._whiteouts: set[bytes] = set()
        self._dir_meta: dict[bytes, tuple[int, int, int]] = {}   # key -> (mode, atime_ns, mtime_ns)
        self._entry = b""
        self._opaque_name = whiteout.opaque_xattr()

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        os.close(self.root)

    # -- the main loop ---------------------------------------------------------------------------

    def run(self, reader: LayerReader) -> None:
        """Read every header and create its entry; then check the end marker and drain the stream."""
        self.reader = reader
        with self._errors():
            tf = tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape",  # type: ignore[call-overload]
                              tarinfo=BoundedTarInfo, bufsize=_TAR_BUFSIZE)
            ti = tf.firstmember
            tf.firstmember = None
            if ti is None:
                self._finish(tf)
            while ti is not None:
                self._one(ti, ti.offset_data + reader.holes, functools.partial(self._data, tf, ti))
                ti = self._next(tf)
            self._apply_dir_meta()

    def run_entries(self, entries: Iterable[tuple[tarfile.TarInfo, Writer | None]]) -> None:
        """Create each of ``entries`` as :meth:`run` creates a header's entry (see :func:`unpack_entries`)."""
        used = 0
        with self._errors():
            for ti, write in entries:
                if ti.isreg():
                    self._one(ti, used, functools.partial(self._written, ti, write))
                    used += ti.size
                else:
                    self._one(ti, used, _no_data)
            self._apply_dir_meta()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn what an entry raises into a one-line UnionfsError naming the entry (see the module docstring)."""
        try:
            yield
        except UnionfsError as e:
            msg = str(e)
            if self._entry and not msg.startswith("entry "):
                msg = f"entry {_show(self._entry)}: {msg}"
            cls = LayerError if isinstance(e, _NotADirectory) else type(e)
            raise cls(printable(msg)) from None
        except tarfile.TarError as e:
            raise LayerError(printable(f"corrupt tar stream: {e}")) from None
        except OSError as e:
            where = f"entry {_show(self._entry)}: " if self._entry else ""
            raise LayerError(printable(f"{where}{e.strerror or e}")) from None
        except (ValueError, UnicodeError, OverflowError, EOFError) as e:
            where = f"entry {_show(self._entry)}: " if self._entry else ""
            raise LayerError(printable(f"{where}invalid tar data: {e}")) from None

    def _next(self, tf: tarfile.TarFile) -> tarfile.TarInfo | None:
        self._entry = b""
        tf.fileobj.seek(tf.offset)  # type: ignore[union-attr]  # skips unread data and padding
        try:
            return tf.tarinfo.fromtarfile(tf)
        except tarfile.EOFHeaderError:
            self._finish(tf)
            return None
        except tarfile.EmptyHeaderError:
            # The stream ends at an entry boundary (or inside the last entry's padding) without the
            # end-of-archive marker: umoci insert writes such layers and Go's archive/tar accepts them.
            # Truncation at exactly this point is left to the DiffID check.
            log.debug("layer tar ends without an end-of-archive marker")
            return None
        except tarfile.TruncatedHeaderError:
            raise LayerError("truncated tar stream: it ends inside a header") from None
        except tarfile.HeaderError as e:
            raise LayerError(f"corrupt tar stream: bad header at offset {tf.offset}: {e}") from None

    def _finish(self, tf: tarfile.TarFile) -> None:
        """After the first zero block: the next block (if any) must be zero too; then read to the end."""
        block = tf.fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
        if block.count(0) != len(block):
            raise LayerError("corrupt tar stream: data after a zero block where the end marker belongs")
        while tf.fileobj.read(_CHUNK):  # type: ignore[union-attr]
            pass

    # -- one entry ------------------------------------------------------------------------------

    def _one(self, ti: tarfile.TarInfo, used: int, write: Writer) -> None:
        """Create the entry ``ti``; ``used``: the layer's bytes before it (its bound), ``write(fd)`` writes a
        regular file's data."""
        raw = ti.name.encode("utf-8", "surrogateescape")
        self._entry = raw
        self.entries += 1
        if not raw:  # tarfile strips the slashes of directories: this was "/" (or nothing at all)
            raise UnsafeLayerError("entry '/': absolute name")
        parts = split_name(raw)
        if not parts:
            if not ti.isdir():
                raise UnsafeLayerError(f"entry {_show(raw)}: the layer root can only be a directory")
            self._set_dir_meta(b"", self.root, ti, raw)
            return
        name = parts[-1]
        parent = parts[:-1]
        for comp in parent:
            if comp.startswith(_WH + _WH) and comp != _OPQ:
                log.debug("entry %s: AUFS metadata skipped", _show(raw))
                return
            if comp.startswith(_WH):
                raise UnsafeLayerError(f"entry {_show(raw)}: whiteout name {_show(comp)} used as a directory")
        if name.startswith(_WH):
            self._whiteout(parent, name, raw)
            return
        key = b"/".join(parts)
        if ti.isreg():
            if ti.size < 0:
                raise LayerError(f"entry {_show(raw)}: negative size")
            # Refused from the header alone: the layer would be over the bound once this member is written.
            if used + ti.size > self.limit:
                raise LayerTooLargeError(f"entry {_show(raw)}: member of {ti.size} bytes takes the layer over "
                                         f"the bound of {self.limit} bytes (sparse files count at their full "
                                         f"size; set by {MAX_LAYER_SIZE_ENV})")
            pfd = self._dir(parent)
            self._regular(ti, pfd, name, key, raw, write)
        elif ti.isdir():
            pfd = self._dir(parent)
            self._directory(ti, pfd, name, key, raw)
        elif ti.issym():
            pfd = self._dir(parent)
            target = ti.linkname.encode("utf-8", "surrogateescape")
            if not target or b"\0" in target:
                raise LayerError(f"entry {_show(raw)}: invalid symlink target")
            self._create(pfd, name, key, lambda: os.symlink(target, name, dir_fd=pfd))
            self._meta_at(pfd, name, ti, raw, symlink=True)
        elif ti.islnk():
            self._hardlink(ti, parent, name, key, raw)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            self._node(ti, parent, name, key, raw)
        else:
            raise LayerError(f"entry {_show(raw)}: unsupported tar entry type {ti.type!r}")

    def _regular(self, ti: tarfile.TarInfo, pfd: int, name: bytes, key: bytes, raw: bytes,
                 write: Writer) -> None:
        try:
            fd = os.open(name, _FILEFLAGS, 0o600, dir_fd=pfd)
        except FileExistsError:
            self._make_room(pfd, name, key)
            fd = os.open(name, _FILEFLAGS, 0o600, dir_fd=pfd)
        try:
            write(fd)
            self._owner(fd, ti, stat.S_IFREG)
            os.fchmod(fd, ti.mode & 0o7777)
            for xname, value in _xattrs(ti, raw):
                self._setxattr(fd, xname, value, raw)
            atime = _time_ns(ti, "atime")
            os.utime(fd, ns=(atime, _time_ns(ti, "mtime")))
        finally:
            os.close(fd)

    def _data(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, fd: int) -> None:
        """Write the data of the tar member ``ti`` (sparse or not) to the new file open at ``fd``."""
        raw = ti.name.encode("utf-8", "surrogateescape")
        if ti.sparse is not None:
            self._sparse(tf, ti, fd, raw)
        else:
            self._copy(tf, fd, ti.size, raw)

    @staticmethod
    def _written(ti: tarfile.TarInfo, write: Writer | None, fd: int) -> None:
        """Run the writer of a given entry (:func:`unpack_entries`) and check that it left ``ti.size`` bytes."""
        if write is not None:
            write(fd)
        size = os.fstat(fd).st_size
        if size != ti.size:
            raise LayerError(f"{size} bytes written, the entry has {ti.size}")

    @staticmethod
    def _copy(tf: tarfile.TarFile, fd: int, size: int, raw: bytes) -> None:
        """Copy the next ``size`` bytes of the tar stream to ``fd`` (at its current offset)."""
        read: Callable[[int], bytes] = tf.fileobj.read  # type: ignore[union-attr]
        remaining = size
        while remaining > 0:
            data = read(min(remaining, _CHUNK))
            if not data:
                raise LayerError(f"truncated tar stream: entry {_show(raw)} ends early")
            remaining -= len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

    def _sparse(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, fd: int, raw: bytes) -> None:
        """Write a sparse member (GNU old, PAX 0.0, 0.1 and 1.0): each data segment at its offset, the
        holes left as holes (nothing allocated), the size set by truncation. The holes count into the
        layer's bound. The map must be ordered, non-overlapping, inside the file and within the stored
        data; LayerError otherwise."""
        stored = tf.offset - ti.offset_data
        end = data = 0
        for offset, size in ti.sparse or ():
            if size == 0:  # empty segments (unused old-GNU slots, a 1.0 map's final entry) hold nothing
                continue
            if offset < end or size < 0 or offset + size > ti.size:
                raise LayerError(f"entry {_show(raw)}: invalid sparse map (segment {offset}+{size} in a file "
                                 f"of {ti.size} bytes)")
            end = offset + size
            data += size
        if data > stored:
            raise LayerError(f"entry {_show(raw)}: sparse map holds {data} bytes of data, the entry stores {stored}")
        self.reader.add_holes(ti.size - data)
        tf.fileobj.seek(ti.offset_data)  # type: ignore[union-attr]  # forward only (past a 1.0 map)
        for offset, size in ti.sparse or ():
            if size:
                os.lseek(fd, offset, os.SEEK_SET)
                self._copy(tf, fd, size, raw)
        os.ftruncate(fd, ti.size)

    def _directory(self, ti: tarfile.TarInfo, pfd: int, name: bytes, key: bytes, raw: bytes) -> None:
        opaque = False
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                opaque = self._make_room(pfd, name, key)
                os.mkdir(name, 0o700, dir_fd=pfd)
        fd = self._dir_child(pfd, name, key)
        if opaque:
            self._set_opaque(fd)
        self._set_dir_meta(key, fd, ti, raw)

    def _hardlink(self, ti: tarfile.TarInfo, parent: list[bytes], name: bytes, key: bytes, raw: bytes) -> None:
        link = ti.linkname.encode("utf-8", "surrogateescape")
        try:
            tparts = split_name(link, "hardlink target")
        except UnsafeLayerError as e:
            raise UnsafeLayerError(f"entry {_show(raw)}: {e}") from None
        tkey = b"/".join(tparts)
        if not tparts or any(p.startswith(_WH) for p in tparts) or tkey in self._whiteouts:
            raise LayerError(f"entry {_show(raw)}: hardlink target {_show(link)} is not an earlier entry")
        if tkey == key:
            return
        src_fd = os.dup(self._dir(tparts[:-1], create=False, what=f"hardlink target {_show(link)}"))
        try:
            pfd = self._dir(parent)
            try:
                st = os.stat(tparts[-1], dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerError(f"entry {_show(raw)}: hardlink target {_show(link)} "
                                 "is not an earlier entry") from None
            if stat.S_ISDIR(st.st_mode):
                raise LayerError(f"entry {_show(raw)}: hardlink target {_show(link)} is a directory")
            def link_it() -> None:
                os.link(tparts[-1], name, src_dir_fd=src_fd, dst_dir_fd=pfd, follow_symlinks=False)
            try:
                self._create(pfd, name, key, link_it)
            except FileNotFoundError:  # the target was the replaced entry itself, or inside it
                raise LayerError(f"entry {_show(raw)}: hardlink target {_show(link)} "
                                 "is not an earlier entry") from None
        finally:
            os.close(src_fd)

    def _node(self, ti: tarfile.TarInfo, parent: list[bytes], name: bytes, key: bytes, raw: bytes) -> None:
        if ti.isfifo():
            kind, dev = stat.S_IFIFO, 0
        else:
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
            dev = os.makedev(ti.devmajor, ti.devminor)
            if not self.privileged:
                self._device_file(ti, self._dir(parent), name, key, kind | (ti.mode & 0o7777), dev, raw)
                return
        pfd = self._dir(parent)
        try:
            self._create(pfd, name, key, lambda: os.mknod(name, kind | 0o600, dev, dir_fd=pfd))
        except PermissionError:
            if kind == stat.S_IFIFO:
                raise
            log.warning("entry %s: device node skipped (mknod not permitted)", _show(raw))
            return
        self._meta_at(pfd, name, ti, raw, symlink=False)

    def _device_file(self, ti: tarfile.TarInfo, pfd: int, name: bytes, key: bytes, mode: int, dev: int,
                     raw: bytes) -> None:
        """A device node an unprivileged unpack cannot make: an empty regular file whose override shows the
        device (:mod:`unionfs.layer.ownership`), as containers/storage keeps one."""
        def make() -> None:
            os.close(os.open(name, _FILEFLAGS, 0o600, dir_fd=pfd))
        self._create(pfd, name, key, make)
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.setxattr(fd, ownership.XATTR, ownership.encode(ti.uid, ti.gid, mode, dev))
            os.fchmod(fd, ti.mode & 0o7777)
            for xname, value in _xattrs(ti, raw):
                self._setxattr(fd, xname, value, raw)
            os.utime(fd, ns=(_time_ns(ti, "atime"), _time_ns(ti, "mtime")))
        finally:
            os.close(fd)

    def _owner(self, fd: int, ti: tarfile.TarInfo, kind: int) -> None:
        """Give the regular file or directory open at ``fd`` its owner: by chown when privileged, else in an
        override when it is not root's (before its mode: a user may set no xattr on a file it may not write)."""
        if self.privileged:
            os.fchown(fd, ti.uid, ti.gid)
        elif ownership.needed(ti.uid, ti.gid, kind):
            os.setxattr(fd, ownership.XATTR, ownership.encode(ti.uid, ti.gid, kind | (ti.mode & 0o7777)))

    def _whiteout(self, parent: list[bytes], name: bytes, raw: bytes) -> None:
        try:
            self._dir(parent)
        except _NotADirectory:
            # umoci writes whiteouts for the old children of a directory it replaced by a file in the same
            # layer: the file already hides everything below it, so the whiteout has nothing to do.
            log.debug("entry %s: whiteout below a non-directory of the same layer skipped", _show(raw))
            return
        if name == _OPQ:
            self._set_opaque(self._dir(parent))
            return
        if name.startswith(_WH + _WH):
            log.debug("entry %s: AUFS metadata skipped", _show(raw))
            return
        target = name[len(_WH):]
        if target in (b"", b".", b".."):
            raise UnsafeLayerError(f"entry {_show(raw)}: invalid whiteout name")
        pfd = self._dir(parent)
        tkey = b"/".join(parent + [target])
        if tkey in self._whiteouts:
            return
        try:
            st = os.stat(target, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            whiteout.make_whiteout_at(pfd, target)
            self._whiteouts.add(tkey)
            return
        if stat.S_ISDIR(st.st_mode):
            self._set_opaque(self._dir_child(pfd, target, tkey))
        else:
            log.debug("entry %s: %s of the same layer survives its whiteout", _show(raw), _show(target))

    # -- creation and metadata ------------------------------------------------------------------

    def _create(self, pfd: int, name: bytes, key: bytes, make: Callable[[], None]) -> None:
        """Run ``make``; when the name exists, remove the old entry (tar semantics) and run it again."""
        try:
            make()
        except FileExistsError:
            self._make_room(pfd, name, key)
            make()

    def _make_room(self, pfd: int, name: bytes, key: bytes) -> bool:
        """Remove the existing ``name`` (recursively); True when it was a whiteout this layer made."""
        was_whiteout = key in self._whiteouts
        self._whiteouts.discard(key)
        prefix = key + b"/"
        for k in [k for k in self._dirs if k == key or k.startswith(prefix)]:
            os.close(self._dirs.pop(k))
        for k in [k for k in self._dir_meta if k == key or k.startswith(prefix)]:
            del self._dir_meta[k]
        for k in [k for k in self._whiteouts if k.startswith(prefix)]:
            self._whiteouts.discard(k)
        remove_at(pfd, name)
        return was_whiteout

    def _meta_at(self, pfd: int, name: bytes, ti: tarfile.TarInfo, raw: bytes, *, symlink: bool) -> None:
        """Ownership, mode, xattrs and times of a non-regular, non-directory entry just created (a symlink or a
        fifo of an unprivileged unpack keeps the unpacker as owner: neither can hold an override)."""
        if self.privileged:
            os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        if not symlink:
            os.chmod(name, ti.mode & 0o7777, dir_fd=pfd)  # a node we just made, not a symlink
        xattrs = _xattrs(ti, raw)
        if xattrs:
            path = f"/proc/self/fd/{pfd}/".encode() + name
            for xname, value in xattrs:
                self._setxattr(path, xname, value, raw)
        atime = _time_ns(ti, "atime")
        os.utime(name, ns=(atime, _time_ns(ti, "mtime")), dir_fd=pfd, follow_symlinks=False)

    def _set_dir_meta(self, key: bytes, fd: int, ti: tarfile.TarInfo, raw: bytes) -> None:
        """Ownership and xattrs now; mode and times at the end (after the directory's children)."""
        self._owner(fd, ti, stat.S_IFDIR)
        for xname, value in _xattrs(ti, raw):
            self._setxattr(fd, xname, value, raw)
        self._dir_meta[key] = (ti.mode & 0o7777, _time_ns(ti, "atime"), _time_ns(ti, "mtime"))

    def _apply_dir_meta(self) -> None:
        for key in sorted(self._dir_meta, key=lambda k: -k.count(b"/") - (1 if k else 0)):
            mode, atime, mtime = self._dir_meta[key]
            self._entry = key
            fd = self._dir(key.split(b"/") if key else [], create=False, what="directory")
            os.fchmod(fd, mode)
            os.utime(fd, ns=(atime, mtime))
        self._entry = b""

    def _setxattr(self, target: int | bytes, name: str, value: bytes, raw: bytes) -> None:
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno in (1, 95):  # EPERM, EOPNOTSUPP: a namespace this filesystem or user cannot hold
                log.warning("entry %s: xattr %s not set: %s", _show(raw), name, e.strerror)
                return
            raise LayerError(f"entry {_show(raw)}: cannot set xattr {name}: {e.strerror}") from None

    def _set_opaque(self, fd: int) -> None:
        os.setxattr(fd, self._opaque_name, b"y")

    # -- directory walking ----------------------------------------------------------------------

    def _dir(self, parts: list[bytes], *, create: bool = True, what: str = "") -> int:
        """The fd of the directory ``parts`` below the root, walked without following symlinks.

        Missing directories are created (mode 0755) when ``create``; a whiteout this layer made there
        is replaced by an opaque directory. The fd belongs to the cache: do not close it.
        """
        if not parts:
            return self.root
        key = b"/".join(parts)
        fd = self._dirs.get(key)
        if fd is not None:
            self._dirs.move_to_end(key)
            return fd
        i = len(parts) - 1
        fd = self.root
        while i > 0:
            cached = self._dirs.get(b"/".join(parts[:i]))
            if cached is not None:
                fd = cached
                break
            i -= 1
        for j in range(i, len(parts)):
            fd = self._open_dir(fd, parts[j], b"/".join(parts[: j + 1]), create, what)
        return fd

    def _open_dir(self, pfd: int, name: bytes, key: bytes, create: bool, what: str) -> int:
        try:
            fd = os.open(name, _DIRFLAGS, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise LayerError(f"{what or 'entry'}: {_show(key)} does not exist") from None
            os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIRFLAGS, dir_fd=pfd)
            os.fchmod(fd, 0o755)
        except OSError as e:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise e
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayerError(f"{what + ': ' if what else ''}{_show(key)} is a symlink; "
                                       "entries below a symlink are refused") from None
            if not create or key not in self._whiteouts:
                raise _NotADirectory(f"{what + ': ' if what else ''}{_show(key)} is not a directory") from None
            self._make_room(pfd, name, key)
            os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIRFLAGS, dir_fd=pfd)
            os.fchmod(fd, 0o755)
            self._set_opaque(fd)
        self._remember(key, fd)
        return fd

    def _dir_child(self, pfd: int, name: bytes, key: bytes) -> int:
        """The fd of the directory ``name`` that exists in ``pfd`` (cached)."""
        fd = self._dirs.get(key)
        if fd is not None:
            self._dirs.move_to_end(key)
            return fd
        fd = os.open(name, _DIRFLAGS, dir_fd=pfd)
        self._remember(key, fd)
        return fd

    def _remember(self, key: bytes, fd: int) -> None:
        self._dirs[key] = fd
        if len(self._dirs) > _DIR_CACHE:
            _, old = self._dirs.popitem(last=False)
            os.close(old)
