"""Image store subcommands: load, import, save, images, inspect, history, tag, rmi, prune."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from unionfs.cli.common import human_age, human_size, platform_of, store_of, table
from unionfs.errors import UsageError, printable
from unionfs.oci.reference import Reference

if TYPE_CHECKING:
    from unionfs.store.store import Image


# --- commands ---------------------------------------------------------------------------------
def cmd_load(args: argparse.Namespace) -> int:
    from unionfs.store.archive import load

    if not args.input:
        raise UsageError("load needs -i FILE (reading an archive from standard input is not supported)")
    images = load(store_of(args), args.input, platform_of(args))
    if not args.quiet:
        for img in images:
            if img.tags:
                for t in img.tags:
                    print(f"Loaded image: {t.familiar}")
            else:
                print(f"Loaded image ID: {img.id}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from unionfs.oci.mutate import apply_changes
    from unionfs.store.archive import import_rootfs

    ref = Reference.parse(args.reference) if args.reference else None
    changes = apply_changes({}, args.change or [])
    image = import_rootfs(store_of(args), args.file, ref, args.message or "", changes)
    print(image.id)
    return 0


def _image_rows(images: list[Image]) -> list[dict[str, Any]]:
    rows = []
    for img in images:
        tags = img.tags or ()
        for t in tags or [None]:
            rows.append({"Repository": t.familiar_name if t else "<none>", "Tag": (t.tag if t else None) or "<none>",
                         "ID": img.id.short, "FullID": str(img.id), "Digest": str(img.manifest_desc.digest),
                         "CreatedAt": printable(img.config.created or ""),
                         "CreatedSince": human_age(img.config.created),
                         "Size": human_size(img.size), "SizeBytes": img.size})
    return rows


def cmd_images(args: argparse.Namespace) -> int:
    images = store_of(args).images()
    if args.reference:
        want = Reference.parse(args.reference, default_tag=None)
        images = [i for i in images if any(t.name == want.name and (not want.tag or t.tag == want.tag)
                                           for t in i.tags)]
    rows = _image_rows(images)
    if args.quiet:
        seen = []
        for r in rows:
            ident = r["FullID"] if args.no_trunc else r["ID"]
            if ident not in seen:
                seen.append(ident)
        print("\n".join(seen)) if seen else None
    elif args.format == "json":
        for r in rows:
            print(json.dumps(r))
    elif args.format and args.format != "table":
        for r in rows:
            print(_go_template(args.format, r))
    else:
        shown = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]]
        shown += [[r["Repository"], r["Tag"], r["FullID"] if args.no_trunc else r["ID"], r["CreatedSince"], r["Size"]]
                  for r in rows]
        print("\n".join(table(shown)))
    return 0


def _go_template(fmt: str, row: dict[str, Any]) -> str:
    """A tiny subset of docker's Go templates: ``{{.Field}}`` and ``{{json .}}``."""
    import re

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr == "json .":
            return json.dumps(row)
        if expr.startswith(".") and expr[1:] in row:
            return str(row[expr[1:]])
        raise UsageError(f"unsupported format expression {{{{{expr}}}}}")
    return re.sub(r"\{\{(.*?)\}\}", sub, fmt).replace("\\t", "\t")


def inspect_data(img: Image) -> dict[str, Any]:
    """The JSON ``inspect`` prints for one image."""
    cfg = img.config.data
    return {
        "Id": str(img.id),
        "RepoTags": [t.familiar for t in img.tags],
        "RepoDigests": [f"{t.familiar_name}@{img.manifest_desc.digest}" for t in img.tags],
        "ManifestDigest": str(img.manifest_desc.digest),
        "ManifestMediaType": img.manifest.media_type,
        "Created": cfg.get("created"),
        "Author": cfg.get("author", ""),
        "Architecture": cfg.get("architecture"),
        "Variant": cfg.get("variant"),
        "Os": cfg.get("os"),
        "Size": img.size,
        "Config": cfg.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": [str(d) for d in img.config.diff_ids]},
        "Layers": [{"MediaType": d.media_type, "Digest": str(d.digest), "Size": d.size, "DiffID": str(diff)}
                   for d, diff in zip(img.manifest.layers, img.config.diff_ids)],
        "History": img.config.history,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    store = store_of(args)
    out = [inspect_data(store.resolve(r, platform_of(args))) for r in args.references]
    if args.format:
        for d in out:
            print(_go_template(args.format, d))
    else:
        print(json.dumps(out, indent=4))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    img = store_of(args).resolve(args.reference)
    layer_sizes = [d.size for d in img.manifest.layers]
    rows = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    history = img.config.history or [{"created_by": ""} for _ in layer_sizes]
    entries = []
    li = 0
    for h in history:
        size = 0
        if not h.get("empty_layer") and li < len(layer_sizes):
            size = layer_sizes[li]
            li += 1
        entries.append((h, size))
    for n, (h, size) in enumerate(reversed(entries)):
        created_by = h.get("created_by", "")
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        rows.append([img.id.short if n == 0 else "<missing>", human_age(h.get("created")), created_by,
                     human_size(size), h.get("comment", "")])
    if args.quiet:
        print(img.id.short)
    else:
        print("\n".join(table(rows)))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    store = store_of(args)
    img = store.resolve(args.source)
    dst = Reference.parse(args.target)
    if dst.digest:
        raise UsageError(f"cannot tag with a digest: {args.target}")
    store.tag(dst, img.manifest_desc)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    store = store_of(args)
    status = 0
    for ref in args.references:
        for line in store.rmi(ref, force=args.force):
            print(line)
    return status


def cmd_prune(args: argparse.Namespace) -> int:
    from unionfs.mount.daemon import detach_orphan

    lines = store_of(args).prune(all_unused=args.all, detach=detach_orphan)
    for line in lines:
        print(line)
    if not lines:
        print("Nothing to prune")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from unionfs.store.archive import save

    if not args.output:
        if sys.stdout.isatty():
            raise UsageError("save needs -o FILE (refusing to write an archive to a terminal)")
        raise UsageError("save needs -o FILE")
    save(store_of(args), args.references, args.output, args.format)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the store's subcommands."""
    p = sub.add_parser("load", help="load images from a docker-save archive, OCI archive or OCI layout",
                       description="Load images from a docker-save archive (any docker or skopeo layout), an "
                       "OCI archive, or an OCI layout directory.")
    p.add_argument("-i", "--input", required=True, help="archive file or OCI layout directory")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.add_argument("--platform", help="os/arch[/variant] to pick from an index (default: this host)")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("import", help="make a one-layer image from a rootfs tarball",
                       description="Make a one-layer image from a plain rootfs tarball (tar, tar.gz or tar.zst).")
    p.add_argument("file", help="rootfs tarball")
    p.add_argument("reference", nargs="?", help="name:tag for the new image")
    p.add_argument("-m", "--message", help="commit message for the history")
    p.add_argument("-c", "--change", action="append", metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, "
                   "LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("images", help="list images", description="List images in the store.")
    p.add_argument("reference", nargs="?", help="only images of this repository[:tag]")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.add_argument("--format", help="'json', 'table', or a Go-style template such as '{{.Repository}}'")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("inspect", help="show an image's config, layers and history as JSON",
                       description="Show images as JSON: config, layers, diff_ids and history.")
    p.add_argument("references", nargs="+", metavar="REF")
    p.add_argument("-f", "--format", help="Go-style template, e.g. '{{.Id}}'")
    p.add_argument("--platform", help="os/arch[/variant] when the reference names an index")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("history", help="show an image's history", description="Show the history of an image.")
    p.add_argument("reference", metavar="REF")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only the image id")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("tag", help="create a tag TARGET that refers to SOURCE",
                       description="Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE.")
    p.add_argument("source", metavar="SOURCE_IMAGE")
    p.add_argument("target", metavar="TARGET_IMAGE")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi", help="remove images", description="Remove images: untag, then delete the blobs "
                       "and extracted layers no other image or container references.")
    p.add_argument("references", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true", help="remove even if a container uses it (untag only)")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("prune", help="remove dangling images and unreferenced data",
                       description="Remove untagged images, unreferenced blobs and layers, and temporary files.")
    p.add_argument("-a", "--all", action="store_true", help="remove every image no container uses")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("save", help="save images to an archive",
                       description="Save images to a docker-save archive (default) or an OCI archive.")
    p.add_argument("references", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="the archive file to write")
    p.add_argument("--format", default="docker-archive", choices=["docker-archive", "oci-archive"])
    p.set_defaults(func=cmd_save)
