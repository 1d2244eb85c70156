"""Mount subcommands: mount, umount, ps, rm.

``unionfs mount --lower DIR ... [--upper DIR --work DIR] MOUNTPOINT``: ``--lower`` is repeated **base first**
(the first ``--lower`` is the bottom layer, as in a manifest and everywhere else in unionfs; the kernel's
``lowerdir=`` string is top first, which the mount(8) helper converts).
``unionfs mount IMAGE MOUNTPOINT [--name NAME]`` mounts a container of an image from the store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from unionfs.cli.common import root_of, store_of, table
from unionfs.errors import UnionfsError, UsageError
from unionfs.mount import daemon, process

if TYPE_CHECKING:
    from unionfs.store.store import Container, Store
    from unionfs.union.plan import MountPlan


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add mount, umount, ps and rm."""
    p = sub.add_parser("mount", help="mount layer directories or an image's container",
                       description="Mount a union: `mount --lower DIR... [--upper DIR --work DIR] MOUNTPOINT` "
                                   "(--lower repeated base first), or `mount IMAGE MOUNTPOINT [--name NAME]`.")
    p.add_argument("target", nargs="+", metavar="[IMAGE] MOUNTPOINT")
    p.add_argument("--lower", action="append", default=[], metavar="DIR",
                   help="a read-only layer; repeat, base (bottom) layer first")
    p.add_argument("--upper", metavar="DIR", help="the writable upper directory")
    p.add_argument("--work", metavar="DIR", help="work directory on the upper's filesystem")
    p.add_argument("--name", help="container name (image form; default: generated)")
    p.add_argument("--read-only", action="store_true", help="mount without an upper")
    p.add_argument("--foreground", "-f", action="store_true", help="serve in the foreground until unmounted")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT",
                   help="FUSE mount option (repeatable, comma-separated)")
    p.set_defaults(func=cmd_mount, fast_exit=True)

    p = sub.add_parser("umount", aliases=["unmount"], help="unmount a unionfs mount")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", "-l", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(func=cmd_umount, fast_exit=True)

    p = sub.add_parser("ps", help="list containers and live mounts")
    p.add_argument("--quiet", "-q", action="store_true", help="only names")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("rm", help="remove a container and its upper")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_rm)


def cmd_mount(args: argparse.Namespace) -> int:
    args.fast_exit = not args.foreground  # a foreground daemon's threads end with the interpreter
    if args.lower:
        if len(args.target) != 1:
            raise UsageError("with --lower, give only the MOUNTPOINT")
        if (args.upper is None) != (args.work is None):
            raise UsageError("--upper and --work go together")
        if args.read_only and args.upper:
            raise UsageError("--read-only takes no --upper/--work")
    elif len(args.target) != 2:
        raise UsageError("usage: unionfs mount IMAGE MOUNTPOINT [--name NAME] | "
                         "unionfs mount --lower DIR... [--upper DIR --work DIR] MOUNTPOINT")
    elif args.upper or args.work:
        raise UsageError("--upper/--work only go with --lower")
    if args.foreground:
        return _mount(args, None)
    # the daemon loads its code while this process works out the mount (the store's part): forked by main()
    # before the parser was built, else now
    early = getattr(args, "early", None) or process.fork_early()
    try:
        return _mount(args, early)
    finally:
        if early is not None:
            early.cancel()


def _mount(args: argparse.Namespace, early: process.Early | None) -> int:
    """``mount`` once its arguments are checked; ``early``: the daemon forked ahead, if any."""
    from unionfs.union.plan import MountPlan  # here: umount, ps and rm need no dataclasses

    if args.lower:
        plan = MountPlan(tuple(args.lower), args.upper, args.work, None)
        daemon.mount(plan, args.target[0], options=args.options, foreground=args.foreground, early=early)
        return 0
    from unionfs.store import mounting  # here: mount --lower needs no store (nor json)

    image, mountpoint = args.target
    plan = _prepare(args, image)
    if args.read_only:
        plan = MountPlan(plan.lowers, None, None, plan.name)
    mp = os.path.abspath(mountpoint)
    name = str(plan.name)  # prepare_container names every plan
    root = root_of(args)
    recorded = []

    def record() -> None:  # while the daemon mounts (its fsync then costs no time)
        mounting.set_mountpoint(root, name, mp)
        recorded.append(mp)

    try:
        daemon.mount(plan, mp, options=[*mounting.mount_options(root), *args.options], foreground=args.foreground,
                     early=early, meanwhile=record)
    except BaseException:
        if recorded:  # the mount failed after all (or the daemon ended in the foreground)
            with contextlib.suppress(UnionfsError, OSError):
                mounting.set_mountpoint(root, name, None)
        raise
    if args.foreground:
        mounting.set_mountpoint(root, name, None)
        return 0
    print(name)
    return 0


def _prepare(args: argparse.Namespace, image: str) -> MountPlan:
    """The plan of the container ``mount IMAGE`` mounts: from the store's record of resolutions when it
    answers (:func:`unionfs.store.mounting.prepare`: nothing of the image formats or the :class:`Store` is
    loaded then), else by the store the full way (``Store.prepare_container``, which records it)."""
    from unionfs.store import mounting

    root = root_of(args)
    if not mounting.any_paused(root):
        plan = mounting.prepare(root, image, args.name)
        if plan is not None:
            return plan
    store = store_of(args)
    _resume_pauses(store)
    return store.prepare_container(image, args.name)


def _resume_pauses(store: Store) -> None:
    """Make mounts left paused by a killed ``commit`` writable again (see ``commit.resume_orphaned_pauses``).
    The commit code is imported only when a container carries a pause marker (rarely: it is cleared when the
    commit ends), so that ``mount IMAGE`` and ``ps`` start fast."""
    if not any(c.paused is not None for c in store.containers()):
        return
    from unionfs.image.commit import resume_orphaned_pauses

    resume_orphaned_pauses(store)


def cmd_umount(args: argparse.Namespace) -> int:
    mp = os.path.realpath(args.mountpoint)
    name = next((m.name for m in daemon.live_mounts() if m.mountpoint == mp), None)
    if name:
        from unionfs.store import mounting  # here: the umount of a directory mount needs no store

        root = root_of(args)
        with contextlib.suppress(UnionfsError, OSError):  # the store may be elsewhere
            if mounting.any_paused(root):  # (the Store is loaded only then)
                _resume_pauses(store_of(args))
    if daemon.umount(mp, lazy=args.lazy):
        print(f"unionfs: {args.mountpoint}: the daemon was gone and files were still open there: detached "
              "(they fail with ENOTCONN until closed)", file=sys.stderr)
    if name:
        try:
            mounting.set_mountpoint(root, name, None)
        except Exception:  # the store may be elsewhere; the mount is gone either way
            pass
    return 0


#: how ``ps`` shows a mount's state (daemon.mount_state)
STATUS = {daemon.LIVE: "mounted", daemon.DEAD: "dead (daemon gone)", daemon.HUNG: "not responding"}


def cmd_ps(args: argparse.Namespace) -> int:
    mounts = daemon.live_mounts()
    by_name = {m.name: m for m in mounts if m.name}
    containers: list[Container] = []
    try:
        from unionfs.image.commit import is_paused

        store = store_of(args)
        _resume_pauses(store)
        containers = store.containers()
    except (UnionfsError, OSError):  # no store (yet): only the live mounts
        containers = []
    if args.quiet:
        for c in containers:
            print(c.name)
        return 0
    daemons = daemon.daemon_pids() if mounts else {}
    status = {m.mountpoint: STATUS[daemon.mount_state(m.mountpoint, daemons)] for m in mounts}
    rows = [("NAME", "IMAGE", "CREATED", "MOUNTPOINT", "STATUS")]
    seen = set()
    by_mountpoint = {m.mountpoint: m for m in mounts}
    for c in containers:
        m = by_name.get(c.name) or by_mountpoint.get(c.mountpoint or "")
        seen.add(c.name)
        if m:
            seen.add(m.mountpoint)
        state = "-" if not m else "paused" if is_paused(c) else status[m.mountpoint]
        rows.append((c.name, c.ref, c.created, m.mountpoint if m else "-", state))
    for m in mounts:
        if m.name in seen or m.mountpoint in seen:
            continue
        rows.append((m.name or "-", "(directories)", "-", m.mountpoint, status[m.mountpoint]))
    sys.stdout.write("".join(line + "\n" for line in table(rows, gap=2)))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:

    store = store_of(args)
    live = {m.name for m in daemon.live_mounts() if m.name}
    rc = 0
    for name in args.names:
        if name in live:
            print(f"unionfs: container {name} is mounted; unmount it first", file=sys.stderr)
            rc = 1
            continue
        store.remove_container(name)
    return rc
