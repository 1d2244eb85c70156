"""``mount.fuse.unionfs``: the mount(8) helper, and a drop-in for fuse-overlayfs as a container engine's
``mount_program``, so that the kernel overlay's syntax works::

    mount -t fuse.unionfs unionfs /mnt -o lowerdir=/l2:/l1,upperdir=/u,workdir=/w
    # /etc/fstab:
    unionfs  /mnt  fuse.unionfs  lowerdir=/l2:/l1,upperdir=/u,workdir=/w,nofail  0 0
    # containers-storage.conf(5), [storage.options.overlay]:
    mount_program = "/usr/local/bin/mount.fuse.unionfs"

mount(8) runs ``mount.fuse.unionfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]``; podman, buildah
and CRI-O run fuse-overlayfs' command line, ``[-f] [-d] [--version] [-h] -o OPTIONS MOUNTPOINT`` (no SOURCE,
sometimes empty options: ``workdir=W,,volatile``). Both are taken. ``lowerdir`` is **top first** and
colon-separated, as for overlayfs (``\\:`` escapes a colon); it is turned into unionfs' base-first order here.

Options: those of ``unionfs mount -o`` (:data:`unionfs.mount.process.OPTION_KEYS`); fuse-overlayfs' own where
they mean something here (``fsync=0`` is ``volatile``; ``static_nlink``, ``noacl``, ``squash_to_root``,
``squash_to_uid=``, ``squash_to_gid=``, ``uidmapping=``, ``gidmapping=``: :class:`unionfs.mount.server.Show`);
options that only mean something to mount(8), fstab or the kernel's overlayfs, or nothing on a FUSE mount
(``defaults``, ``nofail``, ``x-*``, ``private``, ``context=``, ``index=``...) are dropped.
``xattr_permissions=2`` shows the owners kept in ``user.containers.override_stat`` (:mod:`unionfs.layer.ownership`;
``1``, fuse-overlayfs' ``security.`` form, is refused by the daemon). Anything else is named on standard error
("unknown argument ignored", as fuse-overlayfs says) and dropped. The mount is ``nosuid,nodev`` unless
``suid``/``dev`` are given (libfuse's defaults, also under ``defaults``), and ``ro``, ``rw``, ``noexec``,
``exec`` are honoured. ``user``/``users`` imply ``nosuid,nodev,noexec`` and ``owner``/``group`` imply
``nosuid,nodev`` (as mount(8) says), unless later options override them.
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

from unionfs.errors import UnionfsError, UsageError
from unionfs.mount import daemon, process
from unionfs.mount.gcpace import collect_rarely, exit_now
from unionfs.union.plan import MountPlan

#: options that only mean something to mount(8), fstab or the kernel's overlayfs, or nothing on a FUSE mount
IGNORED = {"defaults", "auto", "noauto", "nofail", "nouser", "_netdev",
           "async", "sync", "relatime", "norelatime", "strictatime", "nodiratime",
           "diratime", "lazytime", "nolazytime", "loud", "silent", "nosymfollow", "atime", "noatime",
           "private", "shared", "slave", "unbindable", "rprivate", "rshared", "rslave", "runbindable",
           "fsync=1"}
#: fstab options that imply mount flags (mount(8)); later options override them
IMPLIES = {"user": ("nosuid", "nodev", "noexec"), "users": ("nosuid", "nodev", "noexec"),
           "owner": ("nosuid", "nodev"), "group": ("nosuid", "nodev")}
IGNORED_PREFIXES = ("x-", "comment=", "helper=", "index=", "redirect_dir=", "xino=", "metacopy=",
                    "uuid=", "nfs_export=", "context=", "fscontext=", "defcontext=", "rootcontext=")
#: fuse-overlayfs' options under other names here
RENAMED = {"fsync=0": "volatile"}
USAGE = ("usage: mount.fuse.unionfs [SOURCE] MOUNTPOINT -o lowerdir=L2:L1[,upperdir=U,workdir=W][,OPTION...]\n"
         "       mount.fuse.unionfs [-f] [-d] [--version] [-h] -o OPTIONS MOUNTPOINT  (fuse-overlayfs' form)")


class Request:
    """What a helper command line asks: the plan, the mountpoint, the ``-o`` items for the mount, whether to
    serve in the foreground (fuse-overlayfs' ``-f``; ``-d``: with debug logging) or only pretend (mount(8)'s
    ``-f``, "fake"), and the items it drops as unknown."""

    __slots__ = ("plan", "mountpoint", "options", "foreground", "debug", "fake", "unknown")

    def __init__(self, plan: MountPlan, mountpoint: str, options: list[str], *, foreground: bool = False,
                 debug: bool = False, fake: bool = False, unknown: list[str] | None = None) -> None:
        self.plan, self.mountpoint, self.options = plan, mountpoint, options
        self.foreground, self.debug, self.fake, self.unknown = foreground, debug, fake, unknown or []


def split_lowerdir(value: str) -> list[str]:
    """``L2:L1`` (top first, ``\\:`` escapes) -> ``[L1, L2]`` (base first)."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", value) if p]
    return list(reversed(parts))


def parse(argv: Sequence[str]) -> Request:
    """Parse the helper's arguments (mount(8)'s form or fuse-overlayfs'; not ``--version``/``-h``, which
    :func:`main` answers). UsageError for a command line that asks no mount or an option that is refused."""
    positional: list[str] = []
    opts: list[str] = []
    flags = ""
    it = iter(argv)
    for a in it:
        if a == "-o":
            opts.append(next(it, ""))
        elif a.startswith("-o") and len(a) > 2:
            opts.append(a[2:])
        elif a in ("-t", "-N"):
            next(it, None)
        elif a.startswith("-") and len(a) > 1 and set(a[1:]) <= set("sfnvid"):
            flags += a[1:]
        elif a.startswith("-") and len(a) > 1:
            raise UsageError(f"unknown argument {a}\n{USAGE}")
        else:
            positional.append(a)
    if len(positional) not in (1, 2):
        raise UsageError(USAGE)
    lowers: list[str] = []
    upper = work = None
    fuse_opts: list[str] = []
    unknown: list[str] = []
    for item in ",".join(opts).split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        item = RENAMED.get(item, item)
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
        elif not process.unknown_options([item]):
            fuse_opts.append(item)
        else:
            unknown.append(item)
    if not lowers:
        raise UsageError("mount.fuse.unionfs needs -o lowerdir=DIR[:DIR...] (top first)")
    if (upper is None) != (work is None):
        raise UsageError("upperdir and workdir go together")
    fuse_overlayfs = len(positional) == 1  # mount(8) always gives a SOURCE
    return Request(MountPlan(tuple(lowers), upper, work, None), positional[-1], fuse_opts,
                   foreground=fuse_overlayfs and ("f" in flags or "d" in flags), debug=fuse_overlayfs and "d" in flags,
                   fake=not fuse_overlayfs and "f" in flags, unknown=unknown)


def version() -> str:
    """What ``--version`` prints (as fuse-overlayfs: the program's version, then the FUSE interface's)."""
    from unionfs import __version__
    from unionfs.mount import protocol

    return (f"mount.fuse.unionfs: version {__version__} (unionfs)\n"
            f"using FUSE kernel interface version {protocol.KERNEL_VERSION}.{protocol.KERNEL_MINOR}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns once the mount is live (exit 0; with ``-f``/``-d`` once it has ended), or prints one
    line and exits non-zero. Run as the program (``argv`` None), it ends the process itself
    (:func:`unionfs.mount.gcpace.exit_now`)."""
    if argv is None:
        collect_rarely()  # as ``unionfs mount`` does (unionfs.mount.gcpace)
    rc = _mount(sys.argv[1:] if argv is None else argv)
    if argv is None:
        exit_now(rc)
    return rc


def _mount(argv: Sequence[str]) -> int:
    """Mount as ``argv`` says; the exit status for mount(8)."""
    if "--version" in argv or "-V" in argv:
        print(version())
        return 0
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    try:
        req = parse(argv)
        for item in req.unknown:
            print(f"mount.fuse.unionfs: unknown argument ignored: {item}", file=sys.stderr)
        if req.debug:
            import logging

            logging.basicConfig(level=logging.DEBUG, format="mount.fuse.unionfs: %(levelname)s: %(message)s")
        if not req.fake:
            # as ``unionfs mount``: the daemon is forked first and loads the serving code while this process
            # checks the plan (unionfs.mount.process)
            early = None if req.foreground else process.fork_early()
            try:
                daemon.mount(req.plan, req.mountpoint, options=req.options, foreground=req.foreground, early=early)
            finally:
                if early is not None:
                    early.cancel()  # unless the mount took it
    except UnionfsError as e:
        print(f"mount.fuse.unionfs: {e}", file=sys.stderr)
        return 32 if not isinstance(e, UsageError) else 1  # mount(8): 32 = mount failure, 1 = usage
    except ValueError as e:
        print(f"mount.fuse.unionfs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
