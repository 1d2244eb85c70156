#!/usr/bin/env python3
"""Benchmark unionfs side by side with fuse-overlayfs and the kernel overlayfs.

The data is built once and cached under ``.bench-cache/mount-v1/`` (gitignored): a base-first stack of layer
directories in the overlay format holding a 1 GiB file, a sparse 1 GiB file, a tree of 50,000 entries in 550
directories (with symlinks, overrides between layers, whiteouts and an opaque directory) and 10,000 files of
4 KiB, plus a 100-layer and a 1-layer "image" for the mount-time workloads.

Every implementation mounts the same directories with a fresh, empty upper for every session; the runs are
interleaved (run 1 of every workload for every implementation, then run 2, ...) with the implementation order
rotated, so the noise of a shared machine spreads evenly. Caches are dropped before each session (root).

Workloads (seconds unless said otherwise, lower is better):
  read_first / read_again   ``dd bs=1M`` of the 1 GiB lower file, first after mount and again
  find_first / find_second  ``find tree -printf '%s %m\\n'`` over the 50,000-entry tree
  cat_small                 ``cat`` of the 10,000 files of 4 KiB
  write_4k / write_1m       ``dd`` of 1 GiB into a new file in 4 KiB / 1 MiB blocks (dd's close included)
  copyup_chmod / _append    copy-up of the 1 GiB lower file by ``chmod`` / by appending one byte
  copyup_sparse             copy-up of the sparse 1 GiB file by ``chmod`` (and ``holes_kept``: the upper copy's
                            st_blocks is not more than the lower's)
  mount_1 / mount_100       the mount command until the mount is live, 1-layer and 100-layer image
  ls_1 / ls_100             ``ls -la`` of the root right after that mount
  rss_tree_mb / rss_max_mb  the daemon's peak RSS (VmHWM) on the find session / on any session
  cpu_total_s               the daemon's CPU seconds (utime+stime) summed over one run's sessions

Usage (as root):
  .venv/bin/python scripts/bench.py [--runs N] [--json FILE] [--only unionfs,fuse-overlayfs,kernel]
  .venv/bin/python scripts/bench.py --quick            # one run, 256 MiB writes: under two minutes (data cached)
  .venv/bin/python scripts/bench.py --smoke --json F   # tiny data, one run: checks the script still works
  .venv/bin/python scripts/bench.py --scaling [--plot out.png]   # find/read at 10k..1M files, 1..128 layers

The other benchmarks, against the tools of their field, are reached through the same script:
  .venv/bin/python scripts/bench.py load  [ARGS]   # layer unpacking against umoci unpack (scripts/bench_unpack.py)
  .venv/bin/python scripts/bench.py pull|push|both [ARGS]   # against skopeo copy (scripts/bench_registry.py)
  .venv/bin/python scripts/bench.py build [ARGS]   # cold and cached builds against buildah (scripts/bench_build.py)

Every mount the script makes is unmounted on exit, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from unionfs.layer import whiteout  # noqa: E402

DEFAULT_CACHE = REPO / ".bench-cache" / "mount-v1"
IMPLS = ("unionfs", "fuse-overlayfs", "kernel")
REFERENCES = ("fuse-overlayfs", "kernel")


def base_impl(impl: str) -> str:
    """``unionfs+writeback`` -> ``unionfs``: a variant is unionfs with ``-o`` options after ``+``."""
    return impl.partition("+")[0]


def variant_opts(impl: str) -> list[str]:
    """The ``-o`` options of a unionfs variant (``unionfs+writeback+volatile`` -> [writeback, volatile])."""
    return [o for o in impl.split("+")[1:] if o]


def ours(impls: Sequence[str]) -> list[str]:
    """The unionfs columns (the plain one and its variants)."""
    return [i for i in impls if base_impl(i) == "unionfs"]
MIB = 1 << 20
CMD_TIMEOUT = 1800.0


# ---------------------------------------------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------------------------------------------

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
    """Paths of a built data set. Layer lists are base first."""

    root: Path
    spec: DataSpec

    @property
    def lowers(self) -> list[Path]:
        return [self.root / "main" / f"l{i}" for i in range(self.spec.layers)]

    @property
    def many(self) -> list[Path]:
        return [self.root / "many" / f"l{i:03d}" for i in range(self.spec.many_layers)]

    @property
    def one(self) -> list[Path]:
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
    log(f"building the data set in {root} (once) ...")
    lowers = ds.lowers
    _build_big(lowers[0], spec)
    _build_tree(lowers, spec)
    _build_small(lowers, ds)
    _build_many(ds)
    os.sync()
    stamp.write_text(spec.key())
    log(f"built in {time.perf_counter() - t0:.1f} s")
    return ds


# ---------------------------------------------------------------------------------------------------------------
# mounting
# ---------------------------------------------------------------------------------------------------------------

_LIVE: dict[str, str] = {}   # mountpoint -> implementation, for the cleanup on exit


def log(msg: str) -> None:
    """Progress on stderr (the results go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def run(cmd: Sequence[str], cwd: Path | None = None, check: bool = True,
        stdout: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure raise with its stderr."""
    res = subprocess.run(list(cmd), cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, timeout=CMD_TIMEOUT)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {res.returncode}: "
                           f"{res.stderr.decode(errors='replace').strip()[-500:]}")
    return res


def timed(cmd: Sequence[str], cwd: Path | None = None) -> float:
    """Seconds that ``cmd`` took (it must succeed)."""
    t0 = time.perf_counter()
    run(cmd, cwd=cwd)
    return time.perf_counter() - t0


def mount_command(impl: str, lowers: list[Path], upper: Path, work: Path, mnt: Path,
                  unionfs_opts: Sequence[str]) -> list[str]:
    """The command that mounts ``lowers`` (base first) with ``upper``/``work`` at ``mnt``.

    Layer paths are given relative to their common parent (the command runs there) so that 100 and more
    layers fit the kernel's one-page limit on mount options.
    """
    rel = [p.name for p in lowers]
    if base_impl(impl) == "unionfs":
        cmd = [str(REPO / ".venv" / "bin" / "unionfs"), "mount"]
        for p in lowers:
            cmd += ["--lower", str(p)]
        cmd += ["--upper", str(upper), "--work", str(work)]
        for o in [*unionfs_opts, *variant_opts(impl)]:
            cmd += ["-o", o]
        return cmd + [str(mnt)]
    opts = f"lowerdir={':'.join(reversed(rel))},upperdir={upper},workdir={work}"
    if impl == "fuse-overlayfs":
        return ["fuse-overlayfs", "-o", opts, str(mnt)]
    if impl == "kernel":
        return ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)]
    raise ValueError(impl)


def is_mounted(mnt: Path) -> bool:
    """True when ``mnt`` is a mountpoint in /proc/self/mounts."""
    target = str(mnt)
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def mounts_under(path: Path) -> list[str]:
    """Mountpoints at or below ``path``."""
    top = str(path)
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        points = [line.split()[1] for line in f if len(line.split()) > 1]
    return [p for p in points if p == top or p.startswith(top + "/")]


def daemon_pid(mnt: Path) -> int | None:
    """The pid of the FUSE daemon serving ``mnt`` (found by its command line), or None."""
    target = str(mnt)
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if target in args or any(f'"mountpoint": "{target}"' in a for a in args):
            if any(a.endswith("fuse-overlayfs") or a == "unionfs.mount.daemon" for a in args):
                return int(entry)
    return None


def daemon_stats(pid: int | None) -> tuple[float | None, float | None]:
    """(peak RSS in MB, CPU seconds) of a live process, or (None, None)."""
    if pid is None:
        return None, None
    try:
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return hwm / 1024.0, (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, StopIteration, IndexError, ValueError):
        return None, None


def unmount(mnt: Path, impl: str) -> None:
    """Unmount politely, then lazily; wait for the daemon to exit, kill it when it does not."""
    pid = daemon_pid(mnt) if impl != "kernel" else None
    polite = {"unionfs": [str(REPO / ".venv" / "bin" / "unionfs"), "umount", str(mnt)],
              "fuse-overlayfs": ["fusermount3", "-u", str(mnt)],
              "kernel": ["umount", str(mnt)]}[base_impl(impl)]
    lazy = ["umount", "-l", str(mnt)] if impl == "kernel" else ["fusermount3", "-u", "-z", str(mnt)]
    for cmd in (polite, lazy, ["umount", "-l", str(mnt)]):
        if not is_mounted(mnt):
            break
        run(cmd, check=False)
        for _ in range(50):
            if not is_mounted(mnt):
                break
            time.sleep(0.05)
    if pid is not None:
        _wait_exit(pid)
    _LIVE.pop(str(mnt), None)


def _wait_exit(pid: int, grace: float = 10.0) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie that nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cleanup_all() -> None:
    """Unmount whatever this process still has mounted (atexit, signals)."""
    for mnt, impl in list(_LIVE.items()):
        with contextlib.suppress(Exception):
            unmount(Path(mnt), impl)


def drop_caches(enabled: bool) -> None:
    """Flush dirty data and drop the page, dentry and inode caches, so that "first" means cold."""
    os.sync()
    if enabled:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


@dataclasses.dataclass
class Session:
    """One live mount of one implementation."""

    impl: str
    mnt: Path
    upper: Path
    lowers: list[Path]
    mount_s: float
    pid: int | None = None

    def stats(self) -> tuple[float | None, float | None]:
        """The daemon's (peak RSS MB, CPU seconds) so far."""
        return daemon_stats(self.pid)


@contextlib.contextmanager
def mounted(impl: str, lowers: list[Path], scratch: Path, opts: Sequence[str]) -> Iterator[Session]:
    """A fresh mount of ``lowers`` with a new empty upper under ``scratch``; unmounted and removed on exit."""
    upper, work, mnt = scratch / "upper", scratch / "work", scratch / "mnt"
    _remove_scratch(scratch, mnt, impl)
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    cmd = mount_command(impl, lowers, upper, work, mnt, opts)
    _LIVE[str(mnt)] = impl
    try:
        t0 = time.perf_counter()
        run(cmd, cwd=lowers[0].parent)
        took = time.perf_counter() - t0
        if not is_mounted(mnt):
            raise RuntimeError(f"{impl}: {mnt} is not mounted after {cmd[0]} returned; "
                               f"mounts there: {mounts_under(mnt.parent)}")
        s = Session(impl, mnt, upper, lowers, took, daemon_pid(mnt) if impl != "kernel" else None)
        try:
            yield s
        except RuntimeError as e:  # say what became of the mount: gone, or its daemon dead
            alive = s.pid is not None and _alive(s.pid)
            raise RuntimeError(f"{e} [still mounted: {is_mounted(mnt)}; daemon pid {s.pid} alive: {alive}]") from e
    finally:
        unmount(mnt, impl)
        _remove_scratch(scratch, mnt, impl)


def _remove_scratch(scratch: Path, mnt: Path, impl: str) -> None:
    """Remove a session's directories, never through a mount that is still there (a stale one from a killed
    run is detached first)."""
    if is_mounted(mnt):
        unmount(mnt, impl)
    if is_mounted(mnt):
        raise RuntimeError(f"{mnt} is still mounted; not removing {scratch}")
    shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# workloads: each mounts what it needs and returns {metric: value}
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ctx:
    """What every workload gets."""

    ds: Dataset
    scratch: Path
    write_mib: int
    drop: bool
    opts: tuple[str, ...]

    def session(self, impl: str, lowers: list[Path] | None = None) -> contextlib.AbstractContextManager[Session]:
        drop_caches(self.drop)
        return mounted(impl, lowers or self.ds.lowers, self.scratch / impl, self.opts)


Result = dict[str, float | None]


def _with_stats(s: Session, out: Result, name: str) -> Result:
    rss, cpu = s.stats()
    out[f"rss_mb.{name}"] = rss
    out[f"cpu_s.{name}"] = cpu
    return out


def wl_read(ctx: Ctx, impl: str) -> Result:
    with ctx.session(impl) as s:
        cmd = ["dd", f"if={s.mnt}/big.bin", "of=/dev/null", "bs=1M"]
        out: Result = {"read_first": timed(cmd), "read_again": timed(cmd)}
        return _with_stats(s, out, "read")


def wl_find(ctx: Ctx, impl: str) -> Result:
    with ctx.session(impl) as s:
        cmd = ["find", f"{s.mnt}/tree", "-printf", "%s %m\n"]
        t0 = time.perf_counter()
        res = run(cmd, stdout=subprocess.PIPE)
        first = time.perf_counter() - t0
        out: Result = {"find_first": first, "find_second": timed(cmd),
                       "find_entries": float(res.stdout.count(b"\n"))}
        return _with_stats(s, out, "find")


def wl_cat(ctx: Ctx, impl: str) -> Result:
    with ctx.session(impl) as s:
        out: Result = {"cat_small": timed(["cat", *ctx.ds.small_names], cwd=s.mnt)}
        return _with_stats(s, out, "cat")


def _write_blocks(ctx: Ctx, impl: str, bs_kib: int) -> Result:
    with ctx.session(impl) as s:
        count = ctx.write_mib * 1024 // bs_kib
        name = f"write_{bs_kib}k" if bs_kib < 1024 else "write_1m"
        t = timed(["dd", "if=/dev/zero", f"of={s.mnt}/out.bin", f"bs={bs_kib}K", f"count={count}"])
        return _with_stats(s, {name: t}, name)


def wl_write_4k(ctx: Ctx, impl: str) -> Result:
    return _write_blocks(ctx, impl, 4)


def wl_write_1m(ctx: Ctx, impl: str) -> Result:
    return _write_blocks(ctx, impl, 1024)


def wl_copyup_chmod(ctx: Ctx, impl: str) -> Result:
    """chmod of the 1 GiB file, then of the sparse file; holes_kept compares the copies' st_blocks."""
    with ctx.session(impl) as s:
        out: Result = {"copyup_chmod": timed(["chmod", "600", f"{s.mnt}/big.bin"]),
                       "copyup_sparse": timed(["chmod", "600", f"{s.mnt}/sparse.bin"])}
        lower = os.stat(ctx.ds.lowers[0] / "sparse.bin")
        try:
            copy = os.stat(s.upper / "sparse.bin")
            out["holes_kept"] = 1.0 if copy.st_blocks <= lower.st_blocks else 0.0
            out["sparse_copy_blocks_ratio"] = copy.st_blocks / max(1, lower.st_blocks)
        except FileNotFoundError:  # a metadata-only copy-up keeps every hole
            out["holes_kept"] = 1.0
            out["sparse_copy_blocks_ratio"] = 0.0
        return _with_stats(s, out, "copyup_chmod")


def wl_copyup_append(ctx: Ctx, impl: str) -> Result:
    with ctx.session(impl) as s:
        t = timed(["sh", "-c", 'printf x >> "$1"', "sh", f"{s.mnt}/big.bin"])
        return _with_stats(s, {"copyup_append": t}, "copyup_append")


def _mount_time(ctx: Ctx, impl: str, lowers: list[Path], tag: str) -> Result:
    with ctx.session(impl, lowers) as s:
        out: Result = {f"mount_{tag}": s.mount_s, f"ls_{tag}": timed(["ls", "-la", str(s.mnt)])}
        return _with_stats(s, out, f"mount_{tag}")


def wl_mount_1(ctx: Ctx, impl: str) -> Result:
    return _mount_time(ctx, impl, ctx.ds.one, "1")


def wl_mount_100(ctx: Ctx, impl: str) -> Result:
    return _mount_time(ctx, impl, ctx.ds.many, "100")


WORKLOADS: dict[str, Callable[[Ctx, str], Result]] = {
    "read": wl_read, "find": wl_find, "cat": wl_cat, "write_4k": wl_write_4k, "write_1m": wl_write_1m,
    "copyup_chmod": wl_copyup_chmod, "copyup_append": wl_copyup_append,
    "mount_1": wl_mount_1, "mount_100": wl_mount_100,
}

#: (metric, label) in the order of the table; every one is "lower is better"
METRICS = [
    ("read_first", "read 1 GiB, first after mount (s)"),
    ("read_again", "read 1 GiB, again (s)"),
    ("find_first", "find -printf over 50k entries, first (s)"),
    ("find_second", "find -printf, second (s)"),
    ("cat_small", "cat 10,000 files of 4 KiB (s)"),
    ("write_4k", "write 1 GiB in 4 KiB blocks (s)"),
    ("write_1m", "write 1 GiB in 1 MiB blocks (s)"),
    ("copyup_chmod", "copy-up 1 GiB by chmod (s)"),
    ("copyup_append", "copy-up 1 GiB by appending a byte (s)"),
    ("copyup_sparse", "copy-up of a sparse 1 GiB file by chmod (s)"),
    ("mount_1", "mount a 1-layer image (s)"),
    ("ls_1", "ls -la of its root (s)"),
    ("mount_100", "mount a 100-layer image (s)"),
    ("ls_100", "ls -la of its root (s)"),
    ("rss_tree_mb", "daemon peak RSS, find session (MB)"),
    ("rss_max_mb", "daemon peak RSS, any session (MB)"),
    ("cpu_total_s", "daemon CPU seconds, all sessions of a run (s)"),
]


ERRORS: list[str] = []
RETRIED: list[str] = []


def guarded(fn: Callable[[], Result], what: str) -> Result:
    """Run one workload, once more when it fails (a fresh mount); a second failure is logged and kept in
    ERRORS, not fatal, so that one broken workload does not lose the others' numbers. First failures that a
    retry fixed are kept in RETRIED (they are reported too: a flaky mount is worth knowing about)."""
    for attempt in (1, 2):
        try:
            return fn()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            msg = f"{what}: {e}".replace("\n", " ")[:600]
            if attempt == 1:
                RETRIED.append(msg)
                log(f"failed, retrying once: {msg}")
            else:
                ERRORS.append(msg)
                log(f"FAILED {msg}")
    return {}


def derive(run_result: Result) -> Result:
    """Add the per-run daemon summaries (rss_tree_mb, rss_max_mb, cpu_total_s)."""
    rss = [v for k, v in run_result.items() if k.startswith("rss_mb.") and v is not None]
    cpu = [v for k, v in run_result.items() if k.startswith("cpu_s.") and v is not None]
    run_result["rss_tree_mb"] = run_result.get("rss_mb.find")
    run_result["rss_max_mb"] = max(rss) if rss else None
    run_result["cpu_total_s"] = sum(cpu) if cpu else None
    return run_result


def benchmark(ctx: Ctx, impls: Sequence[str], runs: int) -> dict[str, list[Result]]:
    """Every workload, ``runs`` times, interleaved: workload by workload, implementations in rotating order."""
    results: dict[str, list[Result]] = {i: [{} for _ in range(runs)] for i in impls}
    for r in range(runs):
        for name, fn in WORKLOADS.items():
            order = list(impls[r % len(impls):]) + list(impls[:r % len(impls)])
            for impl in order:
                t0 = time.perf_counter()
                results[impl][r].update(guarded(lambda: fn(ctx, impl), f"run {r + 1} {name} {impl}"))
                log(f"run {r + 1}/{runs} {name:<14} {impl:<15} {time.perf_counter() - t0:6.1f} s")
        for impl in impls:
            derive(results[impl][r])
    return results


# ---------------------------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------------------------

def summarize(values: list[float | None]) -> dict[str, float] | None:
    """median, min, max and n of the values that are not None."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def summary_table(results: dict[str, list[Result]], metrics: Sequence[tuple[str, str]]
                  ) -> dict[str, dict[str, dict[str, float] | None]]:
    """{metric: {impl: summary}} for every metric."""
    return {m: {impl: summarize([r.get(m) for r in runs]) for impl, runs in results.items()}
            for m, _ in metrics}


def ratio(table: dict, metric: str, a: str, b: str) -> float | None:
    """median(a) / median(b) of one metric, None when either is missing or b is 0."""
    sa, sb = table[metric].get(a), table[metric].get(b)
    if not sa or not sb or sb["median"] <= 0:
        return None
    return sa["median"] / sb["median"]


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    fmt = (lambda v: f"{v:.3g}") if s["median"] < 100 else (lambda v: f"{v:.0f}")
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def _r(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def markdown(table: dict, impls: Sequence[str], metrics: Sequence[tuple[str, str]]) -> str:
    """The results as a markdown table: medians (min–max) per implementation and the ratios of unionfs."""
    head = ["workload", *impls]
    others = [i for i in REFERENCES if i in impls]
    pairs = [(u, o) for u in ours(impls) for o in others]
    head += [f"{u} / {o}" for u, o in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, label in metrics:
        if all(table[m].get(i) is None for i in impls):
            continue
        row = [label, *(_cell(table[m].get(i)) for i in impls)]
        row += [_r(ratio(table, m, u, o)) for u, o in pairs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


#: the speed goals: (metric, "ratio" to fuse-overlayfs or "abs" value, bound); met when the median is <= bound
GOALS = [(m, "ratio", 1.0) for m in ("read_first", "read_again", "find_first", "find_second", "cat_small",
                                     "ls_1", "ls_100")] + [
    ("write_4k", "ratio", 0.1), ("write_1m", "ratio", 0.5),
    ("copyup_chmod", "ratio", 1.0), ("copyup_append", "ratio", 1.0), ("copyup_sparse", "ratio", 1.0),
    ("mount_100", "abs", 0.5), ("rss_tree_mb", "abs", 100.0),
]


def goals_markdown(table: dict, results: dict[str, list[Result]], impl: str = "unionfs") -> str:
    """The speed goals against this run's medians for ``impl`` (ratios to fuse-overlayfs)."""
    lines = ["| goal | value | met |", "|---|---|---|"]
    for m, kind, bound in GOALS:
        if m not in table or impl not in table[m]:
            continue
        if kind == "ratio":
            v = ratio(table, m, impl, "fuse-overlayfs")
            what = f"{m}: {impl} / fuse-overlayfs <= {bound:g}"
        else:
            s = table[m].get(impl)
            v = s["median"] if s else None
            what = f"{m} < {bound:g}" + (" s" if m.startswith("mount") else " MB")
        met = "-" if v is None else "yes" if v <= bound else "**no**"
        lines.append(f"| {what} | {_r(v) if kind == 'ratio' else '-' if v is None else f'{v:.3g}'} | {met} |")
    holes = [r.get("holes_kept") for r in results.get(impl, [])]
    if any(h is not None for h in holes):
        kept = all(h == 1.0 for h in holes if h is not None)
        lines.append(f"| the sparse copy-up keeps holes | {'yes' if kept else 'no'} | {'yes' if kept else '**no**'} |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """Where the numbers come from."""
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "nproc": str(os.cpu_count()),
            "kernel": platform.release(), "python": platform.python_version(),
            "fuse-overlayfs": _version(["fuse-overlayfs", "--version"])}


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return next((ln for ln in lines if cmd[0] in ln), lines[0])
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------------------------------------------------------
# scaling
# ---------------------------------------------------------------------------------------------------------------

SCALE_POINTS = [(10_000, 16), (100_000, 16), (1_000_000, 16), (100_000, 1), (100_000, 128)]
SCALE_GRID = [(n, nl) for n in (10_000, 100_000, 1_000_000) for nl in (1, 16, 128)]
SCALE_SAMPLE = 10_000


def scale_names(n: int) -> list[str]:
    """The files of a scaling data set, relative to the root: 100 per directory, 100 directories per top one."""
    return [f"t{k // 10_000:03d}/d{(k // 100) % 100:02d}/f{k % 100:02d}" for k in range(n)]


def ensure_scale_data(cache: Path, n: int, nl: int) -> list[Path]:
    """n files of 64 bytes over nl layers (file k in layer k % nl, so every directory merges layers)."""
    root = cache / f"scale-{n}-{nl}"
    lowers = [root / f"l{i:03d}" for i in range(nl)]
    stamp = root / "done"
    if stamp.exists():
        return lowers
    if root.exists():
        shutil.rmtree(root)
    log(f"building {n} files over {nl} layers in {root} (once) ...")
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
    log(f"built in {time.perf_counter() - t0:.1f} s")
    return lowers


def scale_once(impl: str, lowers: list[Path], n: int, scratch: Path, drop: bool, opts: Sequence[str]) -> Result:
    """Mount time, find first/second, cat of up to 10,000 evenly spread files, daemon memory and CPU."""
    names = scale_names(n)
    sample = names[:: max(1, n // SCALE_SAMPLE)][:SCALE_SAMPLE]
    drop_caches(drop)
    with mounted(impl, lowers, scratch / impl, opts) as s:
        find = ["find", str(s.mnt), "-printf", "%s %m\n"]
        out: Result = {"mount": s.mount_s, "find_first": timed(find), "find_second": timed(find)}
        rss, _ = s.stats()
        out["rss_after_find_mb"] = rss
        out["cat_sample"] = _cat_many(sample, s.mnt)
        out["rss_mb"], out["cpu_s"] = s.stats()
        return out


def _cat_many(names: list[str], cwd: Path) -> float:
    """Seconds to cat the files, in chunks that fit the argument limit."""
    t = 0.0
    for i in range(0, len(names), 2000):
        t += timed(["cat", *names[i:i + 2000]], cwd=cwd)
    return t


SCALE_METRICS = [("mount", "mount (s)"), ("find_first", "find first (s)"), ("find_second", "find second (s)"),
                 ("cat_sample", "cat 10k files (s)"), ("rss_after_find_mb", "RSS after find (MB)"),
                 ("rss_mb", "peak RSS (MB)"), ("cpu_s", "CPU (s)")]


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"100000x128,10000x1"`` -> [(100000, 128), (10000, 1)] (files x layers)."""
    out = []
    for item in text.split(","):
        n, _, nl = item.strip().partition("x")
        out.append((int(n), int(nl)))
    return out


def scaling(cache: Path, scratch: Path, impls: Sequence[str], runs: int, drop: bool,
            points: Sequence[tuple[int, int]], opts: Sequence[str]) -> dict:
    """Every scaling point for every implementation, interleaved; returns {point: {impl: summaries}}."""
    out: dict = {}
    for n, nl in points:
        lowers = ensure_scale_data(cache, n, nl)
        res: dict[str, list[Result]] = {i: [] for i in impls}
        for r in range(runs):
            order = list(impls[r % len(impls):]) + list(impls[:r % len(impls)])
            for impl in order:
                t0 = time.perf_counter()
                res[impl].append(guarded(lambda: scale_once(impl, lowers, n, scratch, drop, opts),
                                         f"scaling {n} files {nl} layers {impl}"))
                log(f"scaling {n} files {nl} layers run {r + 1}/{runs} {impl:<15} "
                    f"{time.perf_counter() - t0:6.1f} s")
        out[f"{n}x{nl}"] = {"files": n, "layers": nl, "summary": summary_table(res, SCALE_METRICS), "runs": res}
    return out


def scaling_markdown(sc: dict, impls: Sequence[str]) -> str:
    """One row per (point, implementation) with the medians of each scaling metric."""
    head = ["files", "layers", "impl", *(label for _, label in SCALE_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in sc.values():
        for impl in impls:
            cells = []
            for m, _ in SCALE_METRICS:
                s = point["summary"][m].get(impl)
                cells.append("-" if s is None else f"{s['median']:.3g}")
            lines.append(f"| {point['files']:,} | {point['layers']} | {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(sc: dict, impls: Sequence[str], path: str) -> None:
    """find time, cat time, mount time and daemon RSS against files and against layers (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("--plot: matplotlib is not importable; no plot written")
        return
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    pts = list(sc.values())
    for row, (axis, fixed) in enumerate((("files", "layers"), ("layers", "files"))):
        groups: dict[int, list[dict]] = {}
        for p in pts:
            groups.setdefault(p[fixed], []).append(p)
        for col, m in enumerate(("find_first", "cat_sample", "mount", "rss_mb")):
            ax = axes[row][col]
            for fv, ps in groups.items():
                if len(ps) < 2:
                    continue
                ps = sorted(ps, key=lambda p: p[axis])
                for impl in impls:
                    ys = [(p[axis], p["summary"][m].get(impl)) for p in ps]
                    ys = [(x, s["median"]) for x, s in ys if s]
                    if ys:
                        ax.plot(*zip(*ys), marker="o", label=f"{impl} ({fixed}={fv})")
            ax.set_xscale("log")
            ax.set_xlabel(axis)
            ax.set_title(m)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    log(f"plot written to {path}")


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------

def check_environment(impls: Sequence[str]) -> None:
    """Fail early with a one-line reason when something needed is missing."""
    if os.geteuid() != 0:
        raise SystemExit("bench.py needs root (kernel overlayfs, drop_caches, whiteout device nodes)")
    if not os.path.exists("/dev/fuse") and set(map(base_impl, impls)) & {"unionfs", "fuse-overlayfs"}:
        raise SystemExit("bench.py: /dev/fuse is missing")
    if "fuse-overlayfs" in impls and not shutil.which("fuse-overlayfs"):
        raise SystemExit("bench.py: fuse-overlayfs is not installed (apt-get install fuse-overlayfs)")
    if not (REPO / ".venv" / "bin" / "unionfs").exists() and ours(impls):
        raise SystemExit("bench.py: .venv/bin/unionfs is missing (run scripts/setup.sh)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per implementation (default 3)")
    p.add_argument("--quick", action="store_true", help="one run, 256 MiB writes (under two minutes, data cached)")
    p.add_argument("--smoke", action="store_true", help="tiny data set, one run (for the test suite)")
    p.add_argument("--scaling", action="store_true", help="find/read at 10k..1M files and 1..128 layers")
    p.add_argument("--grid", action="store_true", help="with --scaling: the full 3x3 grid instead of a cross")
    p.add_argument("--points", metavar="NxL,...", help="with --scaling: these points (files x layers) only")
    p.add_argument("--scaling-runs", type=int, default=1, help="runs per scaling point (default 1)")
    p.add_argument("--plot", metavar="PNG", help="with --scaling: plot the growth (if matplotlib is importable)")
    p.add_argument("--json", metavar="FILE", help="write every run and the summaries as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the results table as markdown")
    p.add_argument("--only", default=",".join(IMPLS),
                   help="comma-separated implementations (default: all three); unionfs+OPT[+OPT] is a variant "
                        "mounted with -o OPT, e.g. unionfs+writeback")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--write-mib", type=int, help="size of the write workloads (default 1024; --quick 256)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"data cache (default {DEFAULT_CACHE})")
    p.add_argument("--no-drop-caches", action="store_true", help="do not drop the kernel caches between sessions")
    p.add_argument("--unionfs-opt", action="append", default=[], metavar="OPT", help="pass -o OPT to unionfs")
    return p.parse_args(argv)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    impls = [i.strip() for i in args.only.split(",") if i.strip()]
    if unknown := set(map(base_impl, impls)) - set(IMPLS):
        raise SystemExit(f"unknown implementations: {', '.join(sorted(unknown))}")
    check_environment(impls)
    atexit.register(cleanup_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    cache = args.cache.resolve()
    scratch = cache / "scratch"
    drop = not args.no_drop_caches and not args.smoke
    t0 = time.perf_counter()
    try:
        if args.scaling:
            return _main_scaling(args, impls, cache, scratch, drop)
        return _main_bench(args, impls, cache, scratch, drop)
    finally:
        cleanup_all()
        left = mounts_under(scratch)
        if left:
            log(f"still mounted, left in place: {', '.join(left)}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        log(f"total {time.perf_counter() - t0:.1f} s")


def _main_bench(args: argparse.Namespace, impls: list[str], cache: Path, scratch: Path, drop: bool) -> int:
    spec = SMOKE if args.smoke else FULL
    runs = 1 if (args.quick or args.smoke) else args.runs
    write_mib = args.write_mib or (4 if args.smoke else 256 if args.quick else 1024)
    ds = ensure_data(cache, spec)
    ctx = Ctx(ds, scratch, write_mib, drop, tuple(args.unionfs_opt))
    if args.workloads:
        keep = set(args.workloads.split(","))
        for name in list(WORKLOADS):
            if name not in keep:
                del WORKLOADS[name]
    results = benchmark(ctx, impls, runs)
    table = summary_table(results, METRICS)
    info = machine()
    size = "1 GiB" if write_mib == 1024 else f"{write_mib} MiB"
    labels = [(m, label.replace("write 1 GiB", f"write {size}")) for m, label in METRICS]
    text = markdown(table, impls, labels)
    print(f"\n{info['date']}, {info['nproc']} cores, kernel {info['kernel']}, {info['fuse-overlayfs']}; "
          f"runs={runs}, writes of {write_mib} MiB; medians (min–max)\n")
    print(text)
    entries = {i: results[i][0].get("find_entries") for i in impls}
    holes = {i: summarize([r.get("holes_kept") for r in results[i]]) for i in impls}
    print(f"\nfind entries seen: {entries}")
    print("sparse copy keeps holes: " + ", ".join(f"{i}={'yes' if h and h['min'] == 1 else 'no'}"
                                                  for i, h in holes.items() if h))
    goals = ""
    if "unionfs" in impls and "fuse-overlayfs" in impls:
        goals = goals_markdown(table, results)
        print("\nSpeed goals (unionfs / fuse-overlayfs medians):\n")
        print(goals)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n\n" + goals + "\n")
    if args.json:
        ratios = {m: {f"{u}/{o}": ratio(table, m, u, o) for u in ours(impls) for o in impls if o not in ours(impls)}
                  for m, _ in METRICS}
        doc = {"machine": info, "argv": sys.argv, "runs": runs, "write_mib": write_mib,
               "spec": dataclasses.asdict(spec), "implementations": impls, "summary": table,
               "ratios": ratios, "results": results, "errors": ERRORS,
               "retried": RETRIED}
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return report_errors()


def report_errors() -> int:
    """Print the failed workloads; the exit status is 1 when there were any."""
    for e in RETRIED:
        print(f"failed once, fine on retry: {e}")
    for e in ERRORS:
        print(f"FAILED: {e}")
    return 1 if ERRORS else 0


def _main_scaling(args: argparse.Namespace, impls: list[str], cache: Path, scratch: Path, drop: bool) -> int:
    runs = args.scaling_runs
    points = parse_points(args.points) if args.points else SCALE_GRID if args.grid else SCALE_POINTS
    sc = scaling(cache, scratch, impls, runs, drop, points, args.unionfs_opt)
    print(scaling_markdown(sc, impls))
    if args.plot:
        plot(sc, impls, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "argv": sys.argv, "scaling": sc,
                                               "errors": ERRORS}, indent=1))
    return report_errors()


#: first arguments that select another benchmark script: name -> (script, keep the word as its argument)
OTHER_BENCHMARKS = {"load": ("bench_unpack.py", False), "pull": ("bench_registry.py", True),
                    "push": ("bench_registry.py", True), "both": ("bench_registry.py", True),
                    "build": ("bench_build.py", False)}


def dispatch(argv: Sequence[str]) -> int | None:
    """Run the other benchmark ``argv[0]`` names (see the usage), or None when it names none."""
    if not argv or argv[0] not in OTHER_BENCHMARKS:
        return None
    script, keep = OTHER_BENCHMARKS[argv[0]]
    args = list(argv) if keep else list(argv[1:])
    return subprocess.call([sys.executable, str(Path(__file__).with_name(script)), *args])


if __name__ == "__main__":
    _other = dispatch(sys.argv[1:])
    if _other is not None:
        sys.exit(_other)
    sys.exit(main())
