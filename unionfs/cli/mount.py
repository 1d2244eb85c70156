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

from unionfs.cli.common import docker_time, filters_of, human_age, listing, root_of, store_of
from unionfs.errors import ContainerError, UnionfsError, UsageError, printable
from unionfs.mount import daemon, process

if TYPE_CHECKING:
    from unionfs.cli.gotemplate import Struct
    from unionfs.lazy.prepare import LazyPlan
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
    p.add_argument("--lazy", action="store_true",
                   help="IMAGE is a registry reference: mount it without pulling it, its eStargz layers' files "
                   "fetched by range when first read (other layers are pulled whole), the rest pulled in the "
                   "background")
    p.add_argument("--no-prefetch", action="store_true",
                   help="with --lazy: fetch only what is read (no prefetch, no pull in the background)")
    p.add_argument("--foreground", "-f", action="store_true", help="serve in the foreground until unmounted")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT",
                   help="FUSE mount option (repeatable, comma-separated)")
    p.set_defaults(func=cmd_mount, fast_exit=True)

    p = sub.add_parser("umount", aliases=["unmount"], help="unmount a unionfs mount")
    p.add_argument("mountpoint")
    p.add_argument("--lazy", "-l", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(func=cmd_umount, fast_exit=True)

    p = sub.add_parser("ps", help="list mounted containers and live mounts (-a: every container)",
                       description="List the mounted containers and the live unionfs mounts of directories, "
                       "as `docker ps` lists running containers; -a also lists the containers not mounted.",
                       epilog="Format fields: .Names .ID (both the name) .Image .ImageID .CreatedAt .RunningFor "
                       ".Mountpoint .Status .State .Upper. Filters: name=, id=, status=, ancestor=, before=, "
                       "since=.")
    p.add_argument("-a", "--all", action="store_true", help="also the containers that are not mounted")
    p.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE",
                   help="only containers that match (repeatable): name=NAME (a regular expression), id=PREFIX, "
                   "status=running|paused|dead|hung|created|exited, ancestor=IMAGE, before=NAME, since=NAME")
    p.add_argument("--format", help="'table' (default), 'json' (one object per line), a Go template such as "
                   "'{{.Names}} {{.Mountpoint}}', or 'table TEMPLATE' (with a header row)")
    p.add_argument("--no-trunc", action="store_true", help="accepted for docker's scripts (nothing is truncated)")
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
    if args.lazy and args.lower:
        raise UsageError("--lazy mounts an image, not --lower directories")
    if args.no_prefetch and not args.lazy:
        raise UsageError("--no-prefetch goes with --lazy")
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
    lazy = _prepare_lazy(args, image) if args.lazy else None
    plan = lazy.plan if lazy is not None else _prepare(args, image)
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
    if lazy is not None and not args.no_prefetch:
        from unionfs.lazy.complete import start

        start(root, lazy.ref, lazy.manifest, mp)
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


def _prepare_lazy(args: argparse.Namespace, image: str) -> LazyPlan:
    """The plan of ``mount --lazy IMAGE``: the image's layers made lazy at its registry
    (:func:`unionfs.lazy.prepare.prepare_lazy_ref`; with the prefetch, the first files fetched while the trees
    are made)."""
    from unionfs.lazy.prepare import prepare_lazy_ref

    return prepare_lazy_ref(store_of(args), image, args.name, early=not args.no_prefetch)


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


#: how ``ps`` shows a mount's state (daemon.mount_state) in STATUS, and as docker's State
STATUS = {daemon.LIVE: "mounted", daemon.DEAD: "dead (daemon gone)", daemon.HUNG: "not responding"}
STATE = {daemon.LIVE: "running", daemon.DEAD: "dead", daemon.HUNG: "hung"}
#: ``ps``'s default table, and the column title of each field of a row
PS_TABLE = ("table {{.Names}}\t{{.Image}}\t{{.RunningFor}}\t{{if .Mountpoint}}{{.Mountpoint}}{{else}}-{{end}}"
            "\t{{.Status}}")
PS_HEADERS = {"CreatedAt": "CREATED AT", "ID": "CONTAINER ID", "Image": "IMAGE", "ImageID": "IMAGE ID",
              "Mountpoint": "MOUNTPOINT", "Names": "NAME", "RunningFor": "CREATED", "State": "STATE",
              "Status": "STATUS", "Upper": "UPPER"}
#: the ``--filter`` keys ``ps`` takes, and docker's that cannot apply to a container that is a directory
PS_FILTERS = ("name", "id", "status", "ancestor", "before", "since")
PS_REFUSED = ("label", "exited", "volume", "network", "publish", "expose", "health", "isolation", "is-task")
#: the values of ``status=`` and the states each stands for (docker's words and unionfs')
PS_STATUS = {"running": ("running",), "mounted": ("running",), "paused": ("paused",), "dead": ("dead",),
             "hung": ("hung",), "created": ("created",), "exited": ("created",), "unmounted": ("created",)}


def cmd_ps(args: argparse.Namespace) -> int:
    filters = filters_of(args, PS_FILTERS + PS_REFUSED)
    refused = sorted(set(filters) & set(PS_REFUSED))
    if refused:
        raise UsageError(f"filter '{refused[0]}' does not apply: a unionfs container is a directory mounted or "
                         "not, with no process, labels, network or volumes")
    for value in filters.get("status", []):
        if value not in PS_STATUS:
            raise UsageError(f"invalid filter 'status={printable(value)}': one of {', '.join(PS_STATUS)}")
    store = None
    containers: list[Container] = []
    try:
        store = store_of(args)
        _resume_pauses(store)
        containers = store.containers()
    except (UnionfsError, OSError):  # no store (yet): only the live mounts
        if {"ancestor", "before", "since"} & set(filters):
            raise
    rows = _select_rows(_ps_rows(containers), filters, store, containers, args.all or "status" in filters)
    if args.quiet:
        sys.stdout.write("".join(f"{r['Names']}\n" for r in rows if r["Upper"]))
        return 0
    sys.stdout.write(listing(args.format, PS_TABLE, rows, PS_HEADERS))
    return 0


def _ps_rows(containers: list[Container]) -> list[Struct]:
    """One row per container (mounted or not) and per live unionfs mount of directories (no container: name
    "-", image "(directories)", no upper)."""
    from unionfs.cli.gotemplate import Struct
    from unionfs.image.commit import is_paused

    mounts = daemon.live_mounts()
    daemons = daemon.daemon_pids() if mounts else {}
    state = {m.mountpoint: daemon.mount_state(m.mountpoint, daemons) for m in mounts}
    by_name = {m.name: m for m in mounts if m.name}
    by_mountpoint = {m.mountpoint: m for m in mounts}
    seen: set[str] = set()
    rows = []

    def row(name: str, image: str, image_id: str, created: str, mountpoint: str, status: str, st: str,
            upper: str) -> Struct:
        return Struct("container row", {
            "CreatedAt": docker_time(created) if created else "", "ID": printable(name), "Image": printable(image),
            "ImageID": image_id, "Mountpoint": printable(mountpoint), "Names": printable(name),
            "RunningFor": human_age(created) if created else "-", "State": st, "Status": status, "Upper": upper})

    for c in containers:
        m = by_name.get(c.name) or by_mountpoint.get(c.mountpoint or "")
        seen.add(c.name)
        if m is None:
            rows.append(row(c.name, c.ref, c.image_id, c.created, "", "unmounted", "created", c.upper))
            continue
        seen.add(m.mountpoint)
        paused = is_paused(c)
        rows.append(row(c.name, c.ref, c.image_id, c.created, m.mountpoint,
                        "paused" if paused else STATUS[state[m.mountpoint]],
                        "paused" if paused else STATE[state[m.mountpoint]], c.upper))
    for m in mounts:
        if m.name not in seen and m.mountpoint not in seen:
            rows.append(row(m.name or "-", "(directories)", "", "", m.mountpoint, STATUS[state[m.mountpoint]],
                            STATE[state[m.mountpoint]], ""))
    return rows


def _select_rows(rows: list[Struct], filters: dict[str, list[str]], store: Store | None,
                 containers: list[Container], all_: bool) -> list[Struct]:
    """The rows ``filters`` keep (docker's ``ps --filter``: values of one key OR-ed, keys AND-ed; ``name=`` a
    regular expression searched in the name, ``id=`` a prefix of it, ``ancestor=`` an image by reference or id,
    ``before=``/``since=`` a container, by creation time); without ``all_``, only the mounted ones."""
    import re

    from unionfs.cli.common import parse_time

    created = {c.name: parse_time(c.created) for c in containers}
    for v in filters.get("before", []) + filters.get("since", []):
        if v not in created:
            raise ContainerError(f"no such container: {printable(v)}")
    ancestors = {str(store.resolve(v).id) for v in filters.get("ancestor", [])} if store is not None else set()
    states = {s for v in filters.get("status", []) for s in PS_STATUS[v]}
    try:
        names = [re.compile(v) for v in filters.get("name", [])]
    except re.error as e:
        raise UsageError(f"invalid filter 'name': {e}") from None

    def keep(r: Struct) -> bool:
        when = created.get(r["Names"]) if r["Upper"] else None
        return ((all_ or r["State"] != "created")
                and (not names or any(n.search(r["Names"]) for n in names))
                and ("id" not in filters or any(r["ID"].startswith(v) for v in filters["id"]))
                and (not states or r["State"] in states)
                and ("ancestor" not in filters or r["ImageID"] in ancestors or r["Image"] in filters["ancestor"])
                and all(when is not None and b is not None and when < b
                        for b in (created[v] for v in filters.get("before", [])))
                and all(when is not None and b is not None and when > b
                        for b in (created[v] for v in filters.get("since", []))))

    return [r for r in rows if keep(r)]


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
