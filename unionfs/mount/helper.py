"""``mount.fuse.unionfs``: the mount(8) helper, so that the kernel overlay's syntax works::

    mount -t fuse.unionfs unionfs /mnt -o lowerdir=/l2:/l1,upperdir=/u,workdir=/w
    # /etc/fstab:
    unionfs  /mnt  fuse.unionfs  lowerdir=/l2:/l1,upperdir=/u,workdir=/w,nofail  0 0

mount(8) runs ``mount.fuse.unionfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]``. ``lowerdir`` is
**top first** and colon-separated, as for overlayfs (``\\:`` escapes a colon); it is turned into unionfs'
base-first order here. Options mount(8) adds for itself (defaults, nofail, auto, _netdev, x-*, ...) are
dropped; the rest go to FUSE, the mount flags too: the mount is ``nosuid,nodev`` unless ``suid``/``dev`` are
given (libfuse's defaults, also under ``defaults``), and ``ro``, ``rw``, ``noexec``, ``exec`` are honoured.
``user``/``users`` imply ``nosuid,nodev,noexec`` and ``owner``/``group`` imply ``nosuid,nodev`` (as mount(8)
says), unless later options override them.
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

from unionfs.errors import UnionfsError, UsageError
from unionfs.mount import daemon, process
from unionfs.mount.gcpace import collect_rarely
from unionfs.union.plan import MountPlan

#: options that only mean something to mount(8) or fstab
IGNORED = {"defaults", "auto", "noauto", "nofail", "nouser", "_netdev",
           "async", "sync", "relatime", "norelatime", "strictatime", "nodiratime",
           "diratime", "lazytime", "nolazytime", "loud", "silent", "nosymfollow", "atime"}
#: fstab options that imply mount flags (mount(8)); later options override them
IMPLIES = {"user": ("nosuid", "nodev", "noexec"), "users": ("nosuid", "nodev", "noexec"),
           "owner": ("nosuid", "nodev"), "group": ("nosuid", "nodev")}
IGNORED_PREFIXES = ("x-", "comment=", "helper=", "index=", "redirect_dir=", "xino=", "metacopy=",
                    "userxattr", "uuid=", "nfs_export=")


def split_lowerdir(value: str) -> list[str]:
    """``L2:L1`` (top first, ``\\:`` escapes) -> ``[L1, L2]`` (base first)."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", value) if p]
    return list(reversed(parts))


def parse(argv: Sequence[str]) -> tuple[MountPlan, str, list[str]]:
    """Parse mount(8)'s helper arguments into a plan, the mountpoint and FUSE options."""
    positional: list[str] = []
    opts: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "-o":
            opts.append(next(it, ""))
        elif a.startswith("-o") and len(a) > 2:
            opts.append(a[2:])
        elif a in ("-t", "-N"):
            next(it, None)
        elif a.startswith("-") and len(a) > 1 and set(a[1:]) <= set("sfnvi"):
            continue
        else:
            positional.append(a)
    if len(positional) != 2:
        raise UsageError("usage: mount.fuse.unionfs SOURCE MOUNTPOINT -o lowerdir=L2:L1[,upperdir=U,workdir=W]")
    lowers: list[str] = []
    upper = work = None
    fuse_opts: list[str] = []
    for item in ",".join(opts).split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key == "lowerdir":
            lowers = split_lowerdir(value)
        elif key == "upperdir":
            upper = value
        elif key == "workdir":
            work = value
        elif key in IMPLIES:
            fuse_opts.extend(IMPLIES[key])
        elif item in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        else:
            fuse_opts.append(item)
    if not lowers:
        raise UsageError("mount.fuse.unionfs needs -o lowerdir=DIR[:DIR...] (top first)")
    if (upper is None) != (work is None):
        raise UsageError("upperdir and workdir go together")
    return MountPlan(tuple(lowers), upper, work, None), positional[1], fuse_opts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns once the mount is live (exit 0), or prints one line and exits non-zero. Run as the
    program (``argv`` None), it ends the process itself (:func:`unionfs.mount.process.exit_now`)."""
    if argv is None:
        collect_rarely()  # as ``unionfs mount`` does (unionfs.mount.gcpace)
    rc = _mount(sys.argv[1:] if argv is None else argv)
    if argv is None:
        process.exit_now(rc)
    return rc


def _mount(argv: Sequence[str]) -> int:
    """Mount as ``argv`` says; the exit status for mount(8)."""
    try:
        plan, mountpoint, fuse_opts = parse(argv)
        daemon.mount(plan, mountpoint, options=fuse_opts)
    except UnionfsError as e:
        print(f"mount.fuse.unionfs: {e}", file=sys.stderr)
        return 32 if not isinstance(e, UsageError) else 1  # mount(8): 32 = mount failure, 1 = usage
    except ValueError as e:
        print(f"mount.fuse.unionfs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
