#!/usr/bin/env python3
"""Benchmark unionfs side by side with fuse-overlayfs and the kernel overlayfs.

The data is built once and cached under ``.bench-cache/mount-v1/`` (gitignored): a base-first stack of layer
directories in the overlay format holding a 1 GiB file, a sparse 1 GiB file, a tree of 50,000 entries in 550
directories (with symlinks, overrides between layers, whiteouts and an opaque directory) and 10,000 files of
4 KiB, plus a 100-layer and a 1-layer "image" for the mount-time workloads.

Every implementation mounts the same directories with a fresh, empty upper for every session; the runs are
interleaved (run 1 of every workload for every implementation, then run 2, ...) with the implementation order
rotated, so the noise of a shared machine spreads evenly. Caches are dropped before each session (root).

Read-only mounts: the read workloads (read, find, cat, mount_1, mount_100) run a second time on a mount of the
layers alone, no upper (``unionfs mount --lower ...`` without --upper, ``lowerdir=`` only for fuse-overlayfs
and the kernel), right after their writable twin: workload ``NAME_ro``, metrics ``METRIC_ro``, rows marked
"(read-only)" with the same ratio columns and speed goals. They are not the same case for unionfs: a
read-only mount serves every file by FUSE passthrough, a writable one serves the lower files from the daemon.
The kernel overlayfs may refuse a read-only mount of one layer ("at least 2 lowerdir are needed while upperdir
nonexistent": 6.18 still does); the script asks the kernel once, and then the kernel's 1-layer read-only cells
are "-" with a "not measured" line saying why (not a failure).
``--mounts writable`` or ``--mounts read-only`` runs one kind only (default: both, also with --quick/--smoke).

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
  (these three over the writable sessions; their _ro twins over the read-only ones)

Usage (as root):
  .venv/bin/python scripts/bench.py [--runs N] [--json FILE] [--only unionfs,fuse-overlayfs,kernel]
                                   [--mounts writable,read-only] [--workloads read,find_ro,...]
  .venv/bin/python scripts/bench.py --quick            # one run, 256 MiB writes: about two minutes (data cached)
  .venv/bin/python scripts/bench.py --quick --mounts read-only   # the read-only rows alone
  .venv/bin/python scripts/bench.py --smoke --json F   # tiny data, one run: checks the script still works
  .venv/bin/python scripts/bench.py --scaling [--plot out.png]   # find/read at 10k..1M files, 1..128 layers

The other benchmarks, against the tools of their field, are reached through the same script:
  .venv/bin/python scripts/bench.py load  [ARGS]   # layer unpacking against umoci unpack (scripts/bench_unpack.py)
  .venv/bin/python scripts/bench.py pull|push|both [ARGS]   # against skopeo copy (scripts/bench_registry.py)
  .venv/bin/python scripts/bench.py build [ARGS]   # cold and cached builds against buildah (scripts/bench_build.py)
  .venv/bin/python scripts/bench.py podman [ARGS]  # podman run with unionfs vs fuse-overlayfs as mount_program
  .venv/bin/python scripts/bench.py lazy [ARGS]    # run --lazy against pull + run over a slow link

Every mount the script makes is unmounted on exit, also on an error or Ctrl-C.

The code is the package scripts/benchlib/ (data, mounts over the tests' harness tests/support/mount.py,
workloads, report, cli); this file is its entry point.
"""

from __future__ import annotations

import sys

from benchlib.cli import entry

if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
