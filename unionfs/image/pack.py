"""Pack an overlay-format upper directory (or a whole merged tree) into an OCI layer tar stream.

Two walks share one tar writer:

* ``write_diff_tar(upper, lowers, out)`` — the *changes* an upper holds over its lowers, as an OCI layer:

  - a whiteout (character device 0/0, or a file with the ``overlay.whiteout`` xattr) becomes ``.wh.NAME``;
  - an opaque directory (``overlay.opaque=y``) is written as the directory entry immediately followed by
    ``DIR/.wh..wh..opq``, before any other entry of that directory;
  - a directory renamed from a lower layer (the kernel's ``overlay.redirect`` xattr, written by
    ``redirect_dir=on``) is written as an opaque directory holding its full merged content (the lower
    directory it came from, resolved in ``lowers``, with the upper's changes on top). The old name carries
    a whiteout in the upper, which becomes ``.wh.OLD``. Any OCI consumer then rebuilds the same tree
    without knowing about redirects. unionfs' own FUSE mount never writes redirects (it copies the merged
    tree up, see docs/semantics.md, "Renaming directories from lower layers"), so this only matters for uppers made by the kernel.
  - a metadata-only copy (the kernel's ``overlay.metacopy`` xattr, written by unionfs' chmod/chown/utimes/xattr
    changes and renames of big lower files, and by the kernel with ``metacopy=on``) is written with its data,
    read from the lower file it names: at its own path, or at its ``overlay.redirect`` (absolute, or a name
    relative to the parent's origin), resolved in ``lowers``;
  - regular files sharing an inode become one file and tar hardlinks to it (first name in sorted order);
  - every xattr but the overlay's private ones goes into PAX ``SCHILY.xattr.NAME`` records;
  - the upper's root directory itself is not written (docker does not write it either).

* ``write_merged_tar(lowers, out, upper=None)`` — the whole merged tree (``docker export``): no whiteouts,
  every visible entry.

Order: depth first, parents before children, the entries of each directory sorted by their bytes.
Headers are PAX; uid/gid are numeric with empty uname/gname; atime and ctime are never written. mtimes
keep nanoseconds (PAX ``mtime``) unless the output is reproducible.

Reproducibility: with ``reproducible=True``, or when ``SOURCE_DATE_EPOCH`` is set, every mtime is clamped
to the epoch (``$SOURCE_DATE_EPOCH``, else 0) and written in whole seconds, so identical trees give
byte-identical tars; ``compress_stream`` writes no time or name into a gzip header, so compressed layers
are byte-identical too.

Files are read while the tree may change only if the caller allows it: see ``commit`` for how a live mount
is frozen first. Unix sockets cannot go into a tar and are skipped with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Sequence

from unionfs.errors import LayerError
from unionfs.layer import whiteout as wh
from unionfs.layer.compression import GZIP, NONE, ZSTD, compress_stream
from unionfs.layer.ownership import Owners
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from unionfs.union.view import Union, has_metacopy_mark, read_redirect

log = logging.getLogger(__name__)

EPOCH_ENV = "SOURCE_DATE_EPOCH"
REDIRECT_XATTRS = (wh.TRUSTED + "overlay.redirect", wh.USER + "overlay.redirect")
XATTR_PAX_PREFIX = "SCHILY.xattr."
MEDIA_TYPES = {GZIP: OCI_LAYER_GZIP, ZSTD: OCI_LAYER_ZSTD, NONE: OCI_LAYER}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TarOptions:
    """How entries are written. ``epoch`` not None means reproducible output (mtimes clamped to it).
    ``owners``: the owners, modes and devices written are as these show them (a rootless store's:
    :class:`unionfs.layer.ownership.Owners`); None: as the files are."""

    epoch: int | None = None
    owners: Owners | None = None

    @classmethod
    def make(cls, reproducible: bool = False, epoch: int | None = None,
             owners: Owners | None = None) -> "TarOptions":
        """Options from the caller's wish and the environment.

        ``epoch`` wins; else ``$SOURCE_DATE_EPOCH`` (which alone turns reproducible output on); else 0 when
        ``reproducible``; else None (mtimes kept as they are). Raises LayerError for a malformed epoch.
        """
        if epoch is None:
            env = os.environ.get(EPOCH_ENV, "").strip()
            if env:
                try:
                    epoch = int(env)
                except ValueError:
                    raise LayerError(f"{EPOCH_ENV}={env!r} is not a number of seconds") from None
            elif reproducible:
                epoch = 0
        if epoch is not None and epoch < 0:
            raise LayerError(f"the reproducible epoch must not be negative (got {epoch})")
        return cls(epoch, owners)

    @property
    def reproducible(self) -> bool:
        return self.epoch is not None


@dataclass(frozen=True)
class PackedLayer:
    """A packed, compressed layer: its DiffID (uncompressed digest), blob digest, blob size, media type."""

    diff_id: Digest
    digest: Digest
    size: int
    media_type: str
    entries: int


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def _getxattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def redirect_of(path: str) -> str | None:
    """The kernel's ``overlay.redirect`` of an upper directory (a lower path, absolute or relative to the
    parent's origin), or None."""
    for x in REDIRECT_XATTRS:
        v = _getxattr(path, x)
        if v:
            return os.fsdecode(v.rstrip(b"\0"))
    return None


def public_xattrs(path: str) -> list[tuple[str, bytes]]:
    """The entry's xattrs (not followed), sorted by name, without the overlay's private ones."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        if wh.is_private_xattr(n):
            continue
        v = _getxattr(path, n)
        if v is not None:
            out.append((n, v))
    return out


def _join(parent: str, name: str) -> str:
    return name if not parent else parent + "/" + name


def _origin_join(origin: str, name: str) -> str:
    return "/" + name if origin == "/" else origin + "/" + name


def _sort_key(name: str) -> bytes:
    return os.fsencode(name)


# ---------------------------------------------------------------------------
# the tar writer
# ---------------------------------------------------------------------------

class TarEmitter:
    """Writes entries of real files into a PAX tar stream (``out`` needs only ``write``)."""

    def __init__(self, out: BinaryIO, opts: TarOptions) -> None:
        self.opts = opts
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                errors="surrogateescape")
        self._links: dict[tuple[int, int], str] = {}
        self.entries = 0

    def _info(self, name: str, st: os.stat_result | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.uname = ti.gname = ""
        pax: dict[str, str] = {}
        if st is None:
            ti.mode, ti.uid, ti.gid, ti.mtime = 0, 0, 0, self.opts.epoch or 0
        else:
            ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            sec, ns = divmod(st.st_mtime_ns, 1_000_000_000)
            if self.opts.epoch is not None:
                ti.mtime = max(0, min(sec, self.opts.epoch))
            else:
                ti.mtime = max(0, sec)
                if ns and sec >= 0:
                    pax["mtime"] = f"{sec}.{ns:09d}".rstrip("0")
        ti.pax_headers = pax
        return ti

    def _add_xattrs(self, ti: tarfile.TarInfo, real: str) -> None:
        for n, v in public_xattrs(real):
            ti.pax_headers[XATTR_PAX_PREFIX + n] = v.decode("utf-8", "surrogateescape")

    def add(self, name: str, real: str, st: os.stat_result, data: str | None = None) -> None:
        """Write the entry at ``real`` (lstat ``st``) under the tar name ``name`` (relative, no leading /); a
        regular file's content is read from ``data`` when given (the lower data of a metacopy file)."""
        if self.opts.owners is not None:
            st = self.opts.owners.shown(st, real)
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            log.warning("skipping %s: a socket cannot be stored in a layer", name)
            return
        ti = self._info(name, st)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key in self._links:
            ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, self._links[key], 0
            self.tar.addfile(ti)
            self.entries += 1
            return
        self._add_xattrs(ti, real)
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            self.tar.addfile(ti)
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(real)
            self.tar.addfile(ti)
        elif stat.S_ISREG(mode):
            ti.type = tarfile.REGTYPE
            try:
                fd = os.open(data or real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise LayerError(f"cannot read {name}: {e.strerror}") from None
            with os.fdopen(fd, "rb") as f:
                ti.size = os.fstat(fd).st_size
                try:
                    self.tar.addfile(ti, f)
                except OSError as e:  # tarfile says "unexpected end of data" when the file shrank
                    raise LayerError(f"cannot read {name} (did it change while packing?): {e}") from None
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            self.tar.addfile(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.tar.addfile(ti)
        else:
            log.warning("skipping %s: unsupported file type %o", name, stat.S_IFMT(mode))
            return
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            self._links[key] = name
        self.entries += 1

    def marker(self, name: str, st: os.stat_result | None = None) -> None:
        """Write an empty regular file ``name`` (a ``.wh.`` whiteout or the opaque marker)."""
        ti = self._info(name, None)
        if st is not None and self.opts.epoch is None:
            ti.mtime = max(0, st.st_mtime_ns // 1_000_000_000)
        ti.type, ti.size = tarfile.REGTYPE, 0
        self.tar.addfile(ti)
        self.entries += 1

    def close(self) -> None:
        """Write the end-of-archive blocks (``out`` itself stays open)."""
        self.tar.close()

    def abort(self) -> None:
        """Give up without writing anything more (after a write error: no end blocks, no flush at exit)."""
        stream = self.tar.fileobj
        self.tar.closed = True
        if hasattr(stream, "closed"):
            stream.closed = True  # tarfile's _Stream would otherwise flush again when collected


# ---------------------------------------------------------------------------
# walks
# ---------------------------------------------------------------------------

class _Packer:
    def __init__(self, emitter: TarEmitter, lowers: Sequence[str], index_dir: str | None) -> None:
        self.em = emitter
        self.lowers = [os.fspath(p) for p in lowers]
        self.index_dir = index_dir
        self._lower_union = Union(self.lowers) if self.lowers else None

    def lower_stack(self, origin: str) -> list[str]:
        """The real directories (top-down) that make up the lower path ``origin``; [] when it is absent."""
        if self._lower_union is None:
            return []
        node = self._lower_union.try_lookup(origin)
        if node is None or not node.is_dir:
            log.warning("redirect target %s is not a directory in the lower layers", origin)
            return []
        return [d.path for d in node.dirs]

    def diff(self, rel: str, udir: str, origin: str, below_opaque: bool) -> None:
        """Write the changes the upper directory ``udir`` (tar name ``rel``) holds."""
        try:
            names = os.listdir(udir)
        except OSError as e:
            raise LayerError(f"cannot list {udir}: {e.strerror}") from None
        todo: list[tuple[bytes, Callable[[], None]]] = []
        for name in names:
            p = os.path.join(udir, name)
            st = os.lstat(p)
            crel = _join(rel, name)
            if name == wh.OPAQUE_MARKER:
                continue  # handled with its directory (is_opaque_dir sees it)
            if wh.is_hidden_name(name):
                target = wh.whiteout_target(name)  # a layer-format whiteout left in an upper
                if target is not None and not below_opaque:
                    todo.append((_sort_key(crel), lambda c=crel, s=st: self.em.marker(c, s)))
                continue
            if wh.is_whiteout(p, st):
                if not below_opaque:
                    wname = _join(rel, wh.WH_PREFIX + name)
                    todo.append((_sort_key(wname), lambda c=wname, s=st: self.em.marker(c, s)))
                continue
            todo.append((_sort_key(crel), lambda n=name, p=p, st=st, c=crel: self._diff_entry(n, p, st, c, origin,
                                                                                           below_opaque)))
        for _, action in sorted(todo, key=lambda t: t[0]):
            action()

    def _diff_entry(self, name: str, p: str, st: os.stat_result, crel: str, origin: str, below_opaque: bool) -> None:
        self.em.add(crel, p, st, self._metacopy_data(name, p, st, crel, origin))
        if not stat.S_ISDIR(st.st_mode):
            return
        redirect = redirect_of(p)
        if redirect is not None:
            corigin = redirect if redirect.startswith("/") else _origin_join(origin, redirect)
            self.em.marker(crel + "/" + wh.OPAQUE_MARKER)
            self.merged(crel, p, self.lower_stack(corigin), corigin)
            return
        opaque = wh.is_opaque_dir(p)
        if opaque:
            self.em.marker(crel + "/" + wh.OPAQUE_MARKER)
        self.diff(crel, p, _origin_join(origin, name), below_opaque or opaque)

    def _metacopy_data(self, name: str, p: str, st: os.stat_result, crel: str, origin: str) -> str | None:
        """For a metacopy upper file at ``p`` (its parent's origin is the lower path ``origin``): the host path of
        its data in the lowers; None for any other entry. LayerError when the data cannot be found."""
        if not stat.S_ISREG(st.st_mode) or not has_metacopy_mark(p):
            return None
        try:
            redirect = read_redirect(p)
        except ValueError as e:
            raise LayerError(f"cannot pack {crel}: {e}") from None
        where = redirect if redirect is not None and redirect.startswith("/") else _origin_join(origin,
                                                                                             redirect or name)
        node = self._lower_union.try_lookup(where) if self._lower_union is not None else None
        if node is None or not stat.S_ISREG(node.st.st_mode):
            raise LayerError(f"cannot pack {crel}: its data (a metadata-only copy of {where}) is not in the lower "
                             "layers")
        return node.real

    def merged(self, rel: str, udir: str | None, stack: list[str], origin: str) -> None:
        """Write every visible entry under a directory made of the upper ``udir`` over ``stack`` (top-down)."""
        if udir is None and not stack:
            return
        union = Union(list(reversed(stack)), udir, self.index_dir if udir is not None else None,
                      lower_root=self._lower_union)
        root = union.root()
        for node in sorted(union.listdir(root), key=lambda n: _sort_key(n.path)):
            name = node.path.rsplit("/", 1)[-1]
            crel = _join(rel, name)
            self.em.add(crel, node.real, node.st, node.data.real if node.data is not None else None)
            if not node.is_dir:
                continue
            cupper = None
            if udir is not None and node.dirs and node.dirs[0].layer == 0:
                cupper = node.dirs[0].path
            redirect = redirect_of(cupper) if cupper is not None else None
            if redirect is not None:
                corigin = redirect if redirect.startswith("/") else _origin_join(origin, redirect)
                cstack = self.lower_stack(corigin)
            else:
                corigin = _origin_join(origin, name)
                cstack = [d.path for d in node.dirs if not (udir is not None and d.layer == 0)]
            self.merged(crel, cupper, cstack, corigin)


def write_diff_tar(upper: str, out: BinaryIO, *, lowers: Sequence[str] = (), reproducible: bool = False,
                   epoch: int | None = None, index_dir: str | None = None, owners: Owners | None = None) -> int:
    """Write the OCI layer tar of the changes in ``upper`` over ``lowers`` (base first) to ``out``.

    ``lowers`` are needed only to resolve redirected directories. Returns the number of entries written.
    ``owners``: see :class:`TarOptions`. Raises LayerError when a file cannot be read.
    """
    em = TarEmitter(out, TarOptions.make(reproducible, epoch, owners))
    packer = _Packer(em, lowers, index_dir)
    with _emitting(em, f"cannot pack {upper}"):
        packer.diff("", os.fspath(upper), "/", wh.is_opaque_dir(os.fspath(upper)))
    return em.entries


def write_merged_tar(lowers: Sequence[str], out: BinaryIO, *, upper: str | None = None,
                     reproducible: bool = False, epoch: int | None = None, index_dir: str | None = None,
                     owners: Owners | None = None) -> int:
    """Write the whole merged tree of ``lowers`` (base first) and ``upper`` as a plain tar (docker export).

    ``owners``: see :class:`TarOptions`. Returns the number of entries written. Raises LayerError when a
    file cannot be read.
    """
    em = TarEmitter(out, TarOptions.make(reproducible, epoch, owners))
    packer = _Packer(em, lowers, index_dir)
    with _emitting(em, "cannot export"):
        packer.merged("", os.fspath(upper) if upper is not None else None,
                      [os.fspath(p) for p in reversed(lowers)], "/")
    return em.entries


@contextmanager
def _emitting(em: "TarEmitter", what: str) -> Iterator[None]:
    """Close the tar when the block succeeds; abort it on any failure, a read error becoming
    ``LayerError("WHAT: reason")`` (a closed pipe is the reader's business and passes through)."""
    try:
        yield
        em.close()
    except BaseException as e:
        em.abort()
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            raise LayerError(f"{what}: {e.strerror or e}") from None
        raise


# ---------------------------------------------------------------------------
# compressed layer blobs
# ---------------------------------------------------------------------------

class _HashingWriter:
    """A write-only stream that hashes and counts what passes through to ``dst``."""

    def __init__(self, dst: BinaryIO) -> None:
        self.dst = dst
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.count += len(data)
        self.dst.write(data)
        return len(data)

    def flush(self) -> None:
        self.dst.flush()

    def digest(self) -> Digest:
        return Digest("sha256", self.hash.hexdigest())


def pack_layer(write_tar: Callable[[BinaryIO], int], dst: BinaryIO, *, compression: str = GZIP,
               tmp_dir: str | None = None) -> PackedLayer:
    """Run ``write_tar(stream)`` and write the compressed result to ``dst``; returns its digests.

    The tar goes to an unlinked temporary file in ``tmp_dir`` (hashed on the way: the DiffID), then is
    compressed into ``dst`` (hashed on the way: the blob digest). Raises LayerError for an unknown
    compression.
    """
    if compression not in MEDIA_TYPES:
        raise LayerError(f"unsupported compression {compression!r} (use gzip, zstd or none)")
    with tempfile.TemporaryFile(dir=tmp_dir) as tmp:
        raw = _HashingWriter(tmp)  # type: ignore[arg-type]
        entries = write_tar(raw)  # type: ignore[arg-type]
        tmp.flush()
        tmp.seek(0)
        blob = _HashingWriter(dst)
        if compression == NONE:
            while chunk := tmp.read(_CHUNK):
                blob.write(chunk)
        else:
            compress_stream(tmp, blob, compression)  # type: ignore[arg-type]
        blob.flush()
    return PackedLayer(raw.digest(), blob.digest(), blob.count, MEDIA_TYPES[compression], entries)


__all__ = ["TarOptions", "PackedLayer", "TarEmitter", "write_diff_tar", "write_merged_tar", "pack_layer",
           "redirect_of", "public_xattrs", "EPOCH_ENV", "MEDIA_TYPES"]
