"""Inspect and commit subcommands: commit, diff, ls, cat, find, which, layers, export."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from typing import TYPE_CHECKING, Any

from unionfs.cli.common import human_size, store_of, table
from unionfs.errors import UsageError, printable
from unionfs.oci.reference import Reference

if TYPE_CHECKING:
    from unionfs.store.store import Container, Store
    from unionfs.union.view import Node


def _out(text: str) -> None:
    """Print a line that may carry surrogate-escaped (non-UTF-8) bytes from file names."""
    sys.stdout.buffer.write(os.fsencode(text) + b"\n")


# --- commit and diff --------------------------------------------------------------------------
def cmd_commit(args: argparse.Namespace) -> int:
    from unionfs.image.commit import commit_container

    tags = [Reference.parse(args.reference)] if args.reference else []
    if tags and not tags[0].tag:
        raise UsageError(f"commit needs a tag, not a digest: {args.reference}")
    result = commit_container(store_of(args), args.container, tags, pause=args.pause == "true",
                              message=args.message or "", author=args.author or "", changes=args.change or [],
                              compression=args.compression, reproducible=args.reproducible)
    print(result.image.id)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from unionfs.image.commit import diff_container, diff_images

    store = store_of(args)
    if args.other:
        changes = diff_images(store, args.target, args.other)
    else:
        changes = diff_container(store, args.target)
    for kind, path in changes:
        _out(f"{kind} {path}")
    return 0


# --- looking inside images --------------------------------------------------------------------
def _tree(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from unionfs.image.tree import ImageTree

    return ImageTree.open(store_of(args), args.image)


def _long_line(tree: Any, node: Node, name: str) -> str:
    st = node.st
    size = f"{os.major(st.st_rdev)}, {os.minor(st.st_rdev)}" if stat.S_ISCHR(st.st_mode) or \
        stat.S_ISBLK(st.st_mode) else str(st.st_size)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
    line = f"{stat.filemode(st.st_mode)} {tree.union.nlink(node):>3} {st.st_uid:>5} {st.st_gid:>5} {size:>9} {when} {name}"
    if stat.S_ISLNK(st.st_mode):
        line += f" -> {tree.union.readlink(node)}"
    return line


def cmd_ls(args: argparse.Namespace) -> int:
    tree = _tree(args)
    first = True
    blocks = list(tree.ls(args.path, recursive=args.recursive, long=args.long))
    for shown, entries in blocks:
        if args.recursive or (shown and len(blocks) > 1):
            if not first:
                _out("")
            _out(f"{shown}:")
        first = False
        for node in entries:
            name = node.path.rsplit("/", 1)[-1] if shown else args.path
            _out(_long_line(tree, node, name) if args.long else name)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    tree = _tree(args)
    for path in args.paths:
        with tree.open_file(path) as f:
            while chunk := f.read(1 << 20):
                sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    tree = _tree(args)
    for node in tree.find(args.path, name=args.name, type_=args.type):
        _out(node.path)
    return 0


def cmd_which(args: argparse.Namespace) -> int:
    from unionfs.image.tree import kind_of

    tree = _tree(args)
    node, hits = tree.which(args.path)
    if node is None:
        _out(f"{args.path}: not in {args.image}")
    else:
        _out(f"{args.path}: {kind_of(node.st.st_mode)} from layer {tree.layer_of(node).number}")
    for h in hits:
        instr = printable(h.layer.created_by or "-")
        _out(f"  layer {h.layer.number:<3} {h.role:<9} {h.kind:<12} {h.layer.diff_id.short}  {instr}")
    return 0 if node is not None else 1


def cmd_layers(args: argparse.Namespace) -> int:
    tree = _tree(args)
    stats = tree.layer_stats()
    rows = [["LAYER", "DIFF ID", "BLOB", "CONTENT", "ADDED", "CHANGED", "DELETED", "WASTED", "CREATED BY"]]
    for s in stats:
        by = printable(s.layer.created_by or "-")
        if not args.no_trunc and len(by) > 60:
            by = by[:57] + "..."
        rows.append([str(s.layer.number), s.layer.diff_id.short, human_size(s.layer.blob_size),
                     human_size(s.content_size), str(s.added), str(s.changed), str(s.deleted),
                     human_size(s.wasted), by])
    for line in table(rows, gap=2):
        _out(line)
    total = sum(s.content_size for s in stats)
    wasted = sum(s.wasted for s in stats)
    efficiency = 100.0 * (1 - wasted / total) if total else 100.0
    _out("")
    _out(f"Total content: {human_size(total)}   Wasted: {human_size(wasted)} ({wasted} bytes)   "
         f"Efficiency: {efficiency:.2f}%")
    if args.verbose:
        for s in stats:
            for path, size in s.wasted_paths:
                _out(f"  layer {s.layer.number}: {path} {human_size(size)} (later overwritten or deleted)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """docker export: a container's merged tree (its image's layers and its upper); unionfs also takes an
    image where no container has the name (``container export`` takes containers only)."""
    import functools

    from unionfs.cli.streams import archive_output
    from unionfs.image.pack import write_merged_tar
    from unionfs.image.tree import ImageTree

    store = store_of(args)
    container = _export_container(store, args.image, containers_only=getattr(args, "containers_only", False))
    if container is None:
        write = ImageTree.open(store, args.image).export
    else:
        lowers = [str(store.layers_dir / name) for name in container.layers]
        write = functools.partial(write_merged_tar, lowers, upper=container.upper, owners=store.owners)
    with archive_output(args.output) as out:  # opened once the source is known to exist
        write(out)
    return 0


def _export_container(store: Store, name: str, containers_only: bool) -> Container | None:
    """The container ``name`` (its layers checked), or None when there is none and an image may be meant."""
    from unionfs.errors import ContainerError

    try:
        container = store.container(name)
    except ContainerError:
        if containers_only:
            raise
        return None
    missing = [n for n in container.layers if not (store.layers_dir / n).is_dir()]
    if missing:
        raise ContainerError(f"container {name}: layer {missing[0][:12]} is missing from the store")
    return container


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the inspect subcommands."""
    p = sub.add_parser("commit", help="create a new image from a container's changes",
                       description="Pack the container's upper directory into a new layer on top of its image, "
                       "like docker commit. A mounted container is paused (remounted read-only) while its "
                       "changes are packed.")
    p.add_argument("container", help="container name")
    p.add_argument("reference", nargs="?", help="tag for the new image (REPOSITORY[:TAG])")
    p.add_argument("-m", "--message", help="commit message (the history entry's comment)")
    p.add_argument("-a", "--author", help="author (e.g. 'Jane <jane@example.com>')")
    p.add_argument("-c", "--change", action="append", metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the image config: CMD, ENTRYPOINT, ENV, EXPOSE, "
                   "HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)")
    p.add_argument("-p", "--pause", nargs="?", const="true", default="true", choices=("true", "false"),
                   help="pause a mounted container during the commit (default true; --pause=false skips it)")
    p.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip",
                   help="layer compression (default gzip)")
    p.add_argument("--reproducible", action="store_true",
                   help="byte-identical layers for identical trees: mtimes clamped to $SOURCE_DATE_EPOCH "
                   "(0 when unset); setting SOURCE_DATE_EPOCH alone has the same effect")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("diff", help="list changes of a container, or between two images",
                       description="With one argument, list the changes in a container's upper directory "
                       "(docker diff). With two images, list the changes from the first to the second. "
                       "A = added, C = changed, D = deleted.")
    p.add_argument("target", help="container name, or the first image")
    p.add_argument("other", nargs="?", help="the second image")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("ls", help="list a directory of an image without mounting it",
                       description="List a directory (or a file) of an image's merged tree; all entries are "
                       "shown, as ls -A.")
    p.add_argument("image")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("-l", dest="long", action="store_true", help="long listing (mode, links, uid, gid, size, mtime)")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories recursively")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="print files of an image without mounting it",
                       description="Write the content of files of an image's merged tree to standard output.")
    p.add_argument("image")
    p.add_argument("paths", nargs="+", metavar="path")
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("find", help="find files in an image without mounting it",
                       description="Print the paths under PATH (default /) of an image's merged tree.")
    p.add_argument("image")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("-name", "--name", dest="name", metavar="GLOB", help="basename matches the shell pattern")
    p.add_argument("-type", "--type", dest="type", choices=tuple("fdlpcbs"), help="file type, as find(1)")
    p.set_defaults(func=cmd_find)

    p = sub.add_parser("which", help="show which layer provides a path and which layers it shadows",
                       description="Show the layer that provides PATH in the image and, per layer, what each "
                       "holds there (provides, merged, shadowed, deletes). Exit status 1 when the path is "
                       "not in the image.")
    p.add_argument("image")
    p.add_argument("path")
    p.set_defaults(func=cmd_which)

    p = sub.add_parser("layers", help="per-layer sizes, changes and wasted space",
                       description="For each layer (base first): the instruction that made it, blob and content "
                       "size, entries added/changed/deleted, and the bytes later layers overwrite or delete "
                       "(wasted), with totals, as the tool dive shows.")
    p.add_argument("image")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate the instructions")
    p.add_argument("-v", "--verbose", action="store_true", help="list the wasted files")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("export", help="write a container's or an image's flattened root filesystem as a tar",
                       description="Write the merged root filesystem of a container (its image's layers and its "
                       "upper, as docker export) or, when no container has the name, of an image, as a tar "
                       "archive: to -o FILE or to standard output (refused when it is a terminal).")
    p.add_argument("image", metavar="CONTAINER|IMAGE")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func=cmd_export)
