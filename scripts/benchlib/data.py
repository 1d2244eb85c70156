"""The layer directories the mount benchmark reads, built once and cached (a stamp file names what was built).

Layouts are in the overlay format, base first: whiteouts are character devices 0/0, an opaque directory
carries the overlay's opaque xattr (both made by :mod:`unionfs.layer.whiteout`, so this needs root).

- :func:`ensure_data`: the main data set of a :class:`DataSpec`: ``main/l0..`` (a big file, a sparse file, a
  tree with symlinks, overrides between layers, whiteouts and an opaque directory, many small files),
  ``many/l000..`` (the mount-time image) and ``one`` (a single layer with the union of ``many``);
- :func:`ensure_scale_data`: the scaling data sets, N files over L layers.

A data set whose stamp differs from what is asked for is removed and built again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from unionfs.layer import whiteout

log = logging.getLogger(__name__)

MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What one cached data set holds (its JSON form is the cache stamp: a change rebuilds it)."""

    big_mib: int = 1024
    sparse_mib: int = 1024
    tree_files: int = 50_000
    tree_top: int = 50          # top directories of the tree, each with tree_sub subdirectories
    tree_sub: int = 10
    small_files: int = 10_000
    small_kib: int = 4
    layers: int = 4             # layers of the main image
    many_layers: int = 100      # layers of the mount-time image

    def key(self) -> str:
        """The stamp that names a built data set."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


FULL = DataSpec()
SMOKE = DataSpec(big_mib=8, sparse_mib=8, tree_files=300, tree_top=2, tree_sub=4, small_files=50,
                 layers=3, many_layers=5)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Paths of a built data set. Layer lists are base first; each list's layers share one parent directory."""

    root: Path
    spec: DataSpec

    @property
    def lowers(self) -> list[Path]:
        """The main image's layers."""
        return [self.root / "main" / f"l{i}" for i in range(self.spec.layers)]

    @property
    def many(self) -> list[Path]:
        """The mount-time image of many small layers."""
        return [self.root / "many" / f"l{i:03d}" for i in range(self.spec.many_layers)]

    @property
    def one(self) -> list[Path]:
        """The one-layer image with the same content as :attr:`many`."""
        return [self.root / "one"]

    @property
    def small_names(self) -> list[str]:
        """The small files, relative to the mount's root."""
        per = 100
        return [f"small/s{i // per:03d}/f{i % per:02d}" for i in range(self.spec.small_files)]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        whiteout.make_whiteout_at(fd, path.name)
    finally:
        os.close(fd)


def _tree_dirs(spec: DataSpec) -> list[str]:
    """The tree's directories (top ones and their subdirectories), relative to the layer root."""
    dirs = []
    for a in range(spec.tree_top):
        dirs.append(f"tree/a{a:02d}")
        dirs.extend(f"tree/a{a:02d}/b{b:02d}" for b in range(spec.tree_sub))
    return dirs


def _build_big(layer: Path, spec: DataSpec) -> None:
    """A 1 GiB file of (non-zero) data and a sparse file with three 1 MiB extents."""
    block = os.urandom(MIB)
    layer.mkdir(parents=True, exist_ok=True)
    with open(layer / "big.bin", "wb") as f:
        for i in range(spec.big_mib):
            f.write(block[:8] + i.to_bytes(8, "little") + block[16:])
    size = spec.sparse_mib * MIB
    with open(layer / "sparse.bin", "wb") as f:
        f.truncate(size)
        for off in (0, size // 4, size - MIB):
            f.seek(off)
            f.write(block)


def _build_tree(lowers: list[Path], spec: DataSpec) -> None:
    """tree_files entries over the layers: file k lives in layer k % L, every 10th one is overridden one layer
    up, every 100th is a symlink, every 25th has a sibling that the top layer whites out; plus an opaque dir."""
    nl = len(lowers)
    dirs = _tree_dirs(spec)
    for layer in lowers:
        for d in dirs:
            (layer / d).mkdir(parents=True, exist_ok=True)
    top = lowers[-1]
    for k in range(spec.tree_files):
        d = dirs[k % len(dirs)]
        li = k % nl
        name = f"f{k:06d}"
        if k % 100 == 7:
            os.symlink(f"f{k - 1:06d}", lowers[li] / d / name)
            continue
        _write(lowers[li] / d / name, b"x" * ((k * 37) % 2048))
        if k % 10 == 3 and li + 1 < nl:
            _write(lowers[li + 1] / d / name, b"y" * ((k * 53) % 3000))
        if k % 25 == 0 and nl > 1:
            _write(lowers[0] / d / f"gone{k:06d}", b"old")
            _whiteout(top / d / f"gone{k:06d}")
    # an opaque directory: the base's 40 files are hidden by the middle layer's 10
    for i in range(40):
        _write(lowers[0] / "tree" / "opq" / f"old{i:02d}", b"old")
    mid = lowers[min(2, nl - 1)]
    for i in range(10):
        _write(mid / "tree" / "opq" / f"new{i:02d}", b"new")
    if mid != lowers[0]:
        whiteout.set_opaque(str(mid / "tree" / "opq"))


def _build_small(lowers: list[Path], ds: Dataset) -> None:
    data = b"s" * (ds.spec.small_kib * 1024)
    for i, name in enumerate(ds.small_names):
        _write(lowers[i % len(lowers)] / name, data)


def _build_many(ds: Dataset) -> None:
    """The mount-time images: many_layers small layers (some whiteouts), and one layer with their union."""
    one = ds.one[0]
    for i, layer in enumerate(ds.many):
        for j in range(10):
            data = f"layer {i} file {j}\n".encode()
            _write(layer / "usr" / "lib" / f"mod{i:03d}" / f"f{j}", data)
            _write(one / "usr" / "lib" / f"mod{i:03d}" / f"f{j}", data)
        _write(layer / "etc" / f"conf{i:03d}", b"conf\n")
        _write(one / "etc" / f"conf{i:03d}", b"conf\n")
        if i % 10 == 0:
            _write(layer / f"file{i:03d}", b"top\n")
            _write(one / f"file{i:03d}", b"top\n")
        if i % 5 == 4:  # white out the previous layer's conf
            _whiteout(layer / "etc" / f"conf{i - 1:03d}")
            (one / "etc" / f"conf{i - 1:03d}").unlink()


def ensure_data(cache: Path, spec: DataSpec) -> Dataset:
    """Build the data set described by ``spec`` under ``cache`` unless it is there already."""
    root = cache / ("full" if spec == FULL else "smoke" if spec == SMOKE else "custom")
    ds = Dataset(root, spec)
    stamp = root / "spec.json"
    if stamp.exists() and stamp.read_text() == spec.key():
        return ds
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    log.info("building the data set in %s (once) ...", root)
    lowers = ds.lowers
    _build_big(lowers[0], spec)
    _build_tree(lowers, spec)
    _build_small(lowers, ds)
    _build_many(ds)
    os.sync()
    stamp.write_text(spec.key())
    log.info("built in %.1f s", time.perf_counter() - t0)
    return ds


def scale_names(n: int) -> list[str]:
    """The files of a scaling data set, relative to the root: 100 per directory, 100 directories per top one."""
    return [f"t{k // 10_000:03d}/d{(k // 100) % 100:02d}/f{k % 100:02d}" for k in range(n)]


def ensure_scale_data(cache: Path, n: int, nl: int) -> list[Path]:
    """n files of 64 bytes over nl layers (file k in layer k % nl, so every directory merges layers);
    returns the layers, base first."""
    root = cache / f"scale-{n}-{nl}"
    lowers = [root / f"l{i:03d}" for i in range(nl)]
    stamp = root / "done"
    if stamp.exists():
        return lowers
    if root.exists():
        shutil.rmtree(root)
    log.info("building %d files over %d layers in %s (once) ...", n, nl, root)
    t0 = time.perf_counter()
    made: set[Path] = set()
    data = b"z" * 64
    for k, name in enumerate(scale_names(n)):
        path = lowers[k % nl] / name
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
    for layer in lowers:
        layer.mkdir(parents=True, exist_ok=True)
    os.sync()
    stamp.write_text("ok")
    log.info("built in %.1f s", time.perf_counter() - t0)
    return lowers
