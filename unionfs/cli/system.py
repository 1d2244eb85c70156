"""System verbs and docker's management groups: version, info, system df/prune/info, and the ``image`` and
``container`` groups (``image ls``, ``container rm``...).

The groups hold no argument definitions of their own: each registers the verbs it offers by calling the
owning module's ``register`` through :class:`_Picked`, which keeps the verbs the group offers (under docker's
names) and drops the rest, so ``image ls`` takes exactly what ``images`` takes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
from typing import TYPE_CHECKING, Any, Callable

from unionfs import __version__
from unionfs.cli.common import human_size, store_of, table
from unionfs.errors import UsageError

if TYPE_CHECKING:
    from unionfs.store.store import Store

Command = Callable[[argparse.Namespace], int]
SubParsers = argparse._SubParsersAction  # type: ignore[type-arg]  # what register(sub) adds verbs to

# --- version ------------------------------------------------------------------------------------


def _machine_arch() -> str:
    """The host's architecture as OCI names it (amd64, arm64...)."""
    from unionfs.oci.manifest import Platform

    host = Platform.host()
    return f"{host.architecture}/{host.variant}" if host.variant else host.architecture


def _kernel_config(option: str) -> str | None:
    """The value of ``option`` (``CONFIG_...``) in the running kernel's config (``/proc/config.gz``, else
    ``/boot/config-RELEASE``): ``y``, ``m``, ``n`` when it is not set; None when no config can be read."""
    import gzip

    text = None
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{os.uname().release}", open)):
        try:
            with opener(path, "rt") as f:  # type: ignore[operator]
                text = f.read()
            break
        except OSError:
            continue
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(option + "="):
            return line.split("=", 1)[1]
    return "n"


def _kernel_at_least(major: int, minor: int) -> bool:
    """True when the running kernel's release is at least ``major.minor``."""
    try:
        got = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return got >= (major, minor)


def _cap_sys_admin() -> bool:
    """True when this process has CAP_SYS_ADMIN in the initial user namespace (what FUSE passthrough needs)."""
    from unionfs.layer.ownership import initial_user_namespace

    try:
        with open("/proc/self/status") as f:
            cap = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return False
    return initial_user_namespace() and bool(cap & (1 << 21))


def passthrough_status() -> str:
    """Whether a mount made now can use FUSE passthrough, and why not: the kernel must be 6.9 or later, built
    with CONFIG_FUSE_PASSTHROUGH, and the daemon needs CAP_SYS_ADMIN (root outside a user namespace). A mount
    also turns it off with ``-o passthrough=off`` or ``-o writeback``."""
    if not _kernel_at_least(6, 9):
        return f"not available (kernel {os.uname().release} < 6.9)"
    config = _kernel_config("CONFIG_FUSE_PASSTHROUGH")
    if config == "n":
        return "not available (the kernel is built without CONFIG_FUSE_PASSTHROUGH)"
    if not _cap_sys_admin():
        return "not available to this user (needs CAP_SYS_ADMIN outside a user namespace: root)"
    if config is None:
        return "probably available (kernel >= 6.9, running as root; no kernel config to confirm it)"
    return "available (kernel >= 6.9, CONFIG_FUSE_PASSTHROUGH, root); used by default, -o passthrough=off"


def _fuse_device() -> str:
    """``/dev/fuse``: present, and whether this user may open it."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing (modprobe fuse)"
    return "/dev/fuse" + ("" if os.access("/dev/fuse", os.R_OK | os.W_OK) else " (not open to this user)")


def _fuse_protocol() -> str:
    """The FUSE protocol version the daemon speaks (the kernel agrees on the lower minor at mount time)."""
    from unionfs.mount import protocol

    return f"{protocol.KERNEL_VERSION}.{protocol.KERNEL_MINOR} (the kernel agrees on its own minor, if lower)"


def _block(title: str, rows: list[tuple[str, str]], width: int = 19) -> list[str]:
    """docker version's layout: ``Title:`` then `` Key:   value`` lines with the values aligned."""
    return [f"{title}:"] + [f" {k + ':':<{width}}{v}" for k, v in rows]


def cmd_version(args: argparse.Namespace) -> int:
    client = [("Version", __version__),
              ("Python version", f"{platform.python_version()} ({platform.python_implementation()})"),
              ("OS/Arch", f"{sys.platform}/{_machine_arch()}"),
              ("Kernel version", os.uname().release)]
    fuse = [("Device", _fuse_device()), ("Protocol", _fuse_protocol()), ("Passthrough", passthrough_status())]
    print("\n".join(_block("Client", client) + [""] + _block("FUSE", fuse)))
    return 0


# --- info ---------------------------------------------------------------------------------------


def _os_name() -> str:
    """PRETTY_NAME of /etc/os-release (else the kernel's name)."""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return os.uname().sysname


def _backing_fs(path: str) -> str:
    """The type of the filesystem holding ``path`` (the longest mountpoint above it in the mount table)."""
    from unionfs.mountinfo import mounts

    real = os.path.realpath(path)
    best = max((m for m in mounts() if real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")),
               key=lambda m: len(m.mountpoint), default=None)
    return best.fstype if best else "unknown"


def _memory() -> str:
    """Total memory as docker shows it (GiB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "unknown"
    return f"{total / (1 << 30):.2f}GiB"


def _mounted_names(store: Store) -> set[str]:
    """Containers that are mounted: their recorded mountpoint holds a mount, or a live unionfs mount names
    them (what ``rm`` refuses to remove)."""
    from unionfs.mount import daemon
    from unionfs.store.usage import is_mounted

    live = {m.name for m in daemon.live_mounts() if m.name}
    return {c.name for c in store.containers() if is_mounted(c) or c.name in live}


def info_data(args: argparse.Namespace) -> dict[str, Any]:
    """What ``info`` shows, as one JSON-able dict (``--format json`` prints it)."""
    from unionfs.mount import daemon
    from unionfs.store.usage import disk_usage

    store = store_of(args)
    containers = store.containers()
    mounted = _mounted_names(store)
    usage = disk_usage(store, mounted)
    return {
        "ClientVersion": __version__, "PythonVersion": platform.python_version(),
        "RootDir": str(store.root), "BackingFilesystem": _backing_fs(str(store.root)),
        "Images": usage.row("Images").total, "Layers": usage.layers, "Blobs": usage.blobs,
        "Containers": len(containers), "ContainersMounted": len(mounted),
        "ContainersPaused": sum(1 for c in containers if c.paused),
        "ContainersNotMounted": len(containers) - len(mounted),
        "BuildCacheEntries": usage.row("Build Cache").total, "DiskUsed": usage.size,
        "FuseDevice": _fuse_device(), "FuseProtocol": _fuse_protocol(), "Passthrough": passthrough_status(),
        "LiveMounts": len(daemon.live_mounts()),
        "KernelVersion": os.uname().release, "OperatingSystem": _os_name(), "OSType": sys.platform,
        "Architecture": os.uname().machine, "CPUs": os.cpu_count() or 0, "TotalMemory": _memory(),
    }


def cmd_info(args: argparse.Namespace) -> int:
    d = info_data(args)
    if args.format == "json":
        print(json.dumps(d))
        return 0
    if args.format:
        raise UsageError(f"info --format takes json only, not {args.format!r}")
    lines = [
        "Client:", f" Version: {d['ClientVersion']}", f" Python Version: {d['PythonVersion']}", "",
        "Store:", f" Root Dir: {d['RootDir']}", f" Backing Filesystem: {d['BackingFilesystem']}",
        f" Containers: {d['Containers']}", f"  Mounted: {d['ContainersMounted']}",
        f"  Paused: {d['ContainersPaused']}", f"  Not Mounted: {d['ContainersNotMounted']}",
        f" Images: {d['Images']}", f" Layers: {d['Layers']}", f" Blobs: {d['Blobs']}",
        f" Build Cache: {d['BuildCacheEntries']} entries", f" Disk Used: {human_size(d['DiskUsed'])}", "",
        "FUSE:", f" Device: {d['FuseDevice']}", f" Protocol: {d['FuseProtocol']}",
        f" Passthrough: {d['Passthrough']}", f" Live Mounts: {d['LiveMounts']}", "",
        "Host:", f" Kernel Version: {d['KernelVersion']}", f" Operating System: {d['OperatingSystem']}",
        f" OSType: {d['OSType']}", f" Architecture: {d['Architecture']}", f" CPUs: {d['CPUs']}",
        f" Total Memory: {d['TotalMemory']}",
    ]
    print("\n".join(lines))
    return 0


# --- system df, system prune --------------------------------------------------------------------


def _reclaimable(n: int, of: int) -> str:
    """docker's RECLAIMABLE cell: the size, and its share of the row's size when that is not zero."""
    return f"{human_size(n)} ({100 * n // of}%)" if of else human_size(n)


def cmd_df(args: argparse.Namespace) -> int:
    from unionfs.store.usage import disk_usage

    store = store_of(args)
    usage = disk_usage(store, _mounted_names(store))
    if args.format == "json":
        for r in usage.rows:
            print(json.dumps({"Type": r.kind, "TotalCount": r.total, "Active": r.active, "Size": r.size,
                              "Reclaimable": r.reclaimable}))
        return 0
    if args.format:
        raise UsageError(f"system df --format takes json only, not {args.format!r}")
    rows = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
    rows += [[r.kind, str(r.total), str(r.active), human_size(r.size), _reclaimable(r.reclaimable, r.size)]
             for r in usage.rows]
    print("\n".join(table(rows)))
    return 0


def _prune_warning(all_unused: bool, containers: bool) -> str:
    """docker's ``WARNING! This will remove:`` list for what this prune removes."""
    items = (["all containers that are not mounted, with their upper directories"] if containers else []) + [
        "all images without at least one container associated to them" if all_unused else "all dangling images",
        "all build cache",
        "blobs and extracted layers nothing references, and temporary files"]
    return "WARNING! This will remove:\n" + "\n".join(f"  - {i}" for i in items)


def _prune(args: argparse.Namespace, containers: bool) -> int:
    """``system prune`` (``containers``: also the containers that are not mounted) and ``image prune``: ask
    unless ``-f``, then remove, print what went and the space reclaimed (the store's disk usage before and
    after, so garbage and temporary files count too)."""
    from unionfs.cli.streams import confirm
    from unionfs.mount.daemon import detach_orphan
    from unionfs.store.usage import disk_usage

    if not getattr(args, "force", False) and not confirm(_prune_warning(args.all, containers)):
        return 0
    store = store_of(args)
    before = disk_usage(store).size
    removed: list[str] = []
    with store.lock():
        if containers:
            mounted = _mounted_names(store)
            for c in store.containers():
                if c.name not in mounted:
                    store.remove_container(c.name)
                    removed.append(c.name)
        lines = store.prune(all_unused=args.all, detach=detach_orphan)
        from unionfs.lazy.prune import prune_lazy

        lines += prune_lazy(store)
    if removed:
        print("Deleted Containers:\n" + "\n".join(removed) + "\n")
    if lines:
        print("\n".join(lines) + "\n")
    print(f"Total reclaimed space: {human_size(max(before - disk_usage(store).size, 0))}")
    return 0


def cmd_system_prune(args: argparse.Namespace) -> int:
    return _prune(args, containers=True)


def cmd_image_prune(args: argparse.Namespace) -> int:
    return _prune(args, containers=False)


# --- the image and container groups -------------------------------------------------------------


class _Picked:
    """What a module's ``register(sub)`` adds to, standing in for a subparsers action: a verb named in
    ``names`` is added to ``sub`` under docker's name (``{"images": ("ls", ["list"])}``), every other verb to
    a parser that is dropped. ``parsers`` holds the added parsers by their new name."""

    def __init__(self, sub: SubParsers, names: dict[str, tuple[str, list[str]]]) -> None:
        self.sub, self.names = sub, names
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name not in self.names:
            return argparse.ArgumentParser(add_help=False)  # a verb this group does not offer
        new, aliases = self.names[name]
        kwargs["aliases"] = aliases
        self.parsers[new] = p = self.sub.add_parser(new, **kwargs)
        return p


def _same(*names: str) -> dict[str, tuple[str, list[str]]]:
    """Verbs a group offers under their own names."""
    return {n: (n, []) for n in names}


#: per group: (module, {verb there: (name in the group, aliases)}), as docker names the verbs
GROUPS: dict[str, list[tuple[str, dict[str, tuple[str, list[str]]]]]] = {
    "image": [
        ("store", {"images": ("ls", ["list"]), "rmi": ("rm", ["remove"]),
                   **_same("inspect", "prune", "tag", "save", "load", "history", "import")}),
        ("registry", _same("pull", "push")),
        ("build", _same("build")),
    ],
    "container": [
        ("mount", {"ps": ("ls", ["list", "ps"]), "rm": ("rm", ["remove"])}),
        ("build", _same("run")),
        ("inspect", _same("commit", "diff", "export")),
    ],
}


def _group(sub: SubParsers, name: str, help_: str) -> dict[str, argparse.ArgumentParser]:
    """Add the group ``name`` (``GROUPS``) to ``sub``; its verbs' parsers by their name in the group."""
    p = sub.add_parser(name, help=help_, description=f"{help_[0].upper()}{help_[1:]} (docker's `{name}` verbs).")
    p.set_defaults(func=_usage(p))
    verbs = p.add_subparsers(dest="verb", metavar="COMMAND")
    parsers: dict[str, argparse.ArgumentParser] = {}
    for module, names in GROUPS[name]:
        picked = _Picked(verbs, names)
        importlib.import_module(f"unionfs.cli.{module}").register(picked)
        parsers.update(picked.parsers)
    return parsers


def _usage(parser: argparse.ArgumentParser) -> Command:
    """A command that prints ``parser``'s help and fails (a group given without a verb), as docker does."""
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2
    return show


def register(sub: SubParsers) -> None:
    """Add version, info, system and the image and container groups."""
    p = sub.add_parser("version", help="show the versions of unionfs, Python, the kernel and FUSE",
                       description="Show unionfs' version, Python's, the OS, architecture and kernel, and the "
                       "FUSE device, protocol and whether passthrough is available (docker version's layout).")
    p.set_defaults(func=cmd_version)
    _add_info(sub)
    _add_system(sub)
    _add_groups(sub)


def _add_info(sub: SubParsers) -> None:
    """``info`` (also ``system info``)."""
    p = sub.add_parser("info", help="show the store, its counts and disk use, FUSE features and the host",
                       description="Show the store (root, backing filesystem, containers, images, layers, blobs, "
                       "build cache, disk used), the FUSE features (device, protocol, passthrough, live mounts) "
                       "and the host (kernel, OS, architecture, CPUs, memory).")
    p.add_argument("-f", "--format", help="'json': one JSON object")
    p.set_defaults(func=cmd_info)


def _add_system(sub: SubParsers) -> None:
    """The ``system`` group: df, prune, info."""
    p = sub.add_parser("system", help="manage the store: df, prune, info",
                       description="Manage the store (docker's `system` verbs): df, prune, info.")
    p.set_defaults(func=_usage(p))
    verbs = p.add_subparsers(dest="verb", metavar="COMMAND")
    q = verbs.add_parser("df", help="show disk usage by images, containers, build cache and garbage",
                         description="Show the store's disk usage as docker system df: per type the count, how "
                         "many are in use (images a container uses, containers mounted), their size and what "
                         "system prune -a would reclaim. Each blob and layer counts once; 'Unreferenced' is "
                         "garbage and temporary files that prune removes.")
    q.add_argument("--format", help="'json': one JSON object per type")
    q.set_defaults(func=cmd_df)
    q = verbs.add_parser("prune", help="remove unmounted containers, dangling images, build cache and garbage",
                         description="Remove every container that is not mounted (and its upper), dangling "
                         "images (with -a: every image no container uses), the build cache, unreferenced blobs "
                         "and layers, and temporary files. Asks first unless -f.")
    q.add_argument("-a", "--all", action="store_true", help="remove every image no container uses")
    q.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    q.set_defaults(func=cmd_system_prune)
    _add_info(verbs)


def _add_groups(sub: SubParsers) -> None:
    """The ``image`` and ``container`` groups (:data:`GROUPS`), with what docker's verbs add to ours: ``image
    prune`` asks unless ``-f``; ``container ls -a`` is accepted (when ``ps`` has no ``-a`` of its own);
    ``container export`` takes containers only."""
    image = _group(sub, "image", "manage images")
    prune = image["prune"]
    with contextlib.suppress(argparse.ArgumentError):  # unless prune takes -f itself
        prune.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    prune.description = ("Remove dangling images (with -a: every image no container uses), the build cache, "
                         "unreferenced blobs and layers, and temporary files. Asks first unless -f (as docker).")
    prune.set_defaults(func=cmd_image_prune)

    container = _group(sub, "container", "manage containers")
    with contextlib.suppress(argparse.ArgumentError):  # unless ps takes -a itself
        container["ls"].add_argument("-a", "--all", action="store_true",
                                     help="accepted for docker's sake: every container is listed, mounted or not")
    container["export"].set_defaults(containers_only=True)
    container["export"].description = ("Write a container's merged root filesystem (its image's layers and its "
                                        "upper) as a tar archive, to -o FILE or to standard output (refused when "
                                        "it is a terminal), as docker container export.")
