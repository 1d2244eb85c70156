"""Layer directories built in code, base first (docs/design.md, "Principles").

Whiteouts are character devices 0/0 made with ``os.mknod``, opaque directories carry ``trusted.overlay.opaque=y``,
so no ``.wh.*`` file or device node is ever committed.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Iterable, Mapping, Sequence

#: the opaque marker we write into layers we build (as root: the kernel's trusted namespace)
OPAQUE_XATTR = "trusted.overlay.opaque"
#: the marker of an xattr whiteout (an empty regular file carrying it)
WHITEOUT_XATTR = "trusted.overlay.whiteout"

#: the mtime (and atime) every entry of a built layer gets: an old, fixed time (2001-09-09)
LAYER_TIME = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class File:
    """A regular file with ``content``."""

    path: str
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Dir:
    """A directory; ``opaque`` marks it with ``trusted.overlay.opaque=y``."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    opaque: bool = False
    xattrs: Mapping[str, bytes] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Symlink:
    """A symbolic link to ``target``."""

    path: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass(frozen=True)
class Hardlink:
    """A second name for the file at ``existing`` (in the same layer)."""

    path: str
    existing: str


@dataclasses.dataclass(frozen=True)
class Whiteout:
    """The kernel's whiteout: a character device 0/0 named ``path``."""

    path: str


@dataclasses.dataclass(frozen=True)
class XattrWhiteout:
    """The xattr whiteout: an empty regular file ``path`` carrying ``trusted.overlay.whiteout=y``."""

    path: str


@dataclasses.dataclass(frozen=True)
class Fifo:
    """A named pipe."""

    path: str
    mode: int = 0o644


Entry = File | Dir | Symlink | Hardlink | Whiteout | XattrWhiteout | Fifo


def build_layer(root: Path, entries: Iterable[Entry], mtime: int = LAYER_TIME) -> Path:
    """Create ``root`` and the ``entries`` in it (parents must come first); returns ``root``.

    Every entry and the root get ``mtime`` as atime and mtime, so two builds of the same entries are equal
    in everything a snapshot compares.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    made: list[Path] = [root]
    for e in entries:
        p = root / e.path
        if isinstance(e, File):
            p.write_bytes(e.content)
            os.lchown(p, e.uid, e.gid)  # before chmod: a chown clears setuid and setgid
            os.chmod(p, e.mode)
            for k, v in e.xattrs.items():
                os.setxattr(p, k, v, follow_symlinks=False)
        elif isinstance(e, Dir):
            p.mkdir()
            os.lchown(p, e.uid, e.gid)
            os.chmod(p, e.mode)
            if e.opaque:
                os.setxattr(p, OPAQUE_XATTR, b"y")
            for k, v in e.xattrs.items():
                os.setxattr(p, k, v, follow_symlinks=False)
        elif isinstance(e, Symlink):
            os.symlink(e.target, p)
            os.lchown(p, e.uid, e.gid)
        elif isinstance(e, Hardlink):
            os.link(root / e.existing, p)
        elif isinstance(e, Whiteout):
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        elif isinstance(e, XattrWhiteout):
            p.write_bytes(b"")
            os.setxattr(p, WHITEOUT_XATTR, b"y")
        elif isinstance(e, Fifo):
            os.mkfifo(p, e.mode)
            os.chmod(p, e.mode)
        else:  # pragma: no cover - a typo in a test
            raise TypeError(f"unknown layer entry {e!r}")
        made.append(p)
    for p in reversed(made):  # children before parents: setting a child's time never touches the parent's
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    return root


def build_layers(root: Path, layers: Sequence[Sequence[Entry]]) -> list[Path]:
    """Build ``layers`` (base first) as ``root/l0``, ``root/l1``...; returns their paths, base first."""
    return [build_layer(Path(root) / f"l{i}", entries) for i, entries in enumerate(layers)]


def union_dirs(tmp_path: Path) -> tuple[list[str], str, str, str]:
    """A small two-layer union's directories under ``tmp_path``: the lowers (l0: ``d/f``, ``a`` and its hardlink
    ``b``; l1: ``d/g``, ``top``), then the empty upper, work and mount directories."""
    lowers = build_layers(tmp_path, [[Dir("d"), File("d/f", b"base"), File("a", b"a"), Hardlink("b", "a")],
                                     [Dir("d"), File("d/g", b"g"), File("top", b"top")]])
    for d in ("u", "w", "mnt"):
        os.makedirs(tmp_path / d)
    return [str(p) for p in lowers], str(tmp_path / "u"), str(tmp_path / "w"), str(tmp_path / "mnt")
