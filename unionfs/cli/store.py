"""Image store subcommands: load, import, save, images, inspect, history, tag, rmi, prune."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Collection

from unionfs.cli.common import (
    docker_time,
    filters_of,
    glob_match,
    human_age,
    human_size,
    listing,
    platform_of,
    store_of,
    table,
)
from unionfs.errors import TemplateError, UsageError, printable
from unionfs.oci.reference import Reference

if TYPE_CHECKING:
    from unionfs.cli.gotemplate import Struct
    from unionfs.oci.manifest import Descriptor
    from unionfs.store.store import Image, Store


# --- commands ---------------------------------------------------------------------------------
def cmd_load(args: argparse.Namespace) -> int:
    from unionfs.store.archive import load, load_stream

    if args.input:
        images = load(store_of(args), args.input, platform_of(args))
    else:  # docker's: the archive on standard input, spooled into the store's tmp/ and loaded all or nothing
        from unionfs.cli.streams import archive_input

        images = load_stream(store_of(args), archive_input("load"), platform_of(args))
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

    if "://" in args.file:
        raise UsageError(f"import from a URL is not supported: download it first (curl -fsSL URL | "
                         f"unionfs import - REF): {printable(args.file)}")
    ref = Reference.parse(args.reference) if args.reference else None
    changes = apply_changes({}, args.change or [])
    stream = None
    if args.file == "-":
        from unionfs.cli.streams import archive_input

        stream = archive_input("import -")
    image = import_rootfs(store_of(args), args.file, ref, args.message or "", changes, fileobj=stream)
    print(image.id)
    return 0


#: what the default tables add to a partial image's SIZE cell (`` (partial)``): true in an image's row only,
#: where ``.Partial`` is a bool (in the header row it is the column's title, which ``json`` passes through)
_PARTIAL_NOTE = '{{if eq (json .Partial) "true"}} (partial){{end}}'
#: docker's default ``images`` table, and the one with ``--digests`` (a partial image's size marked so)
IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}" + _PARTIAL_NOTE
IMAGES_DIGESTS_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
                        + _PARTIAL_NOTE)
#: the column title of each field of an ``images`` row (a ``table`` format's header)
IMAGE_HEADERS = {"Containers": "CONTAINERS", "CreatedAt": "CREATED AT", "CreatedSince": "CREATED",
                 "Digest": "DIGEST", "FullID": "IMAGE ID", "ID": "IMAGE ID", "Partial": "PARTIAL",
                 "Repository": "REPOSITORY",
                 "SharedSize": "SHARED SIZE", "Size": "SIZE", "SizeBytes": "SIZE", "Tag": "TAG",
                 "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE"}
#: the ``--filter`` keys ``images`` takes
IMAGE_FILTERS = ("dangling", "reference", "before", "since", "label")


def _image_rows(images: list[Image], no_trunc: bool = False, users: dict[str, int] | None = None,
                tags: dict[str, list[Reference]] | None = None, partial: Collection[str] = ()) -> list[Struct]:
    """One row (docker's image context, its fields in name order, and unionfs' ``Partial``) per tag of each
    image; for an image with no tag, one row per repository of its digest references (``name@sha256:...``: the
    repository with the tag ``<none>``, as docker shows an image pulled by digest), else one ``<none>`` row.
    ``tags``: the tags to list per manifest digest (default: all of the image's); ``users``: containers per
    image id; ``partial``: the manifest digests of the images only partly in the store
    (``Store.missing_layers``)."""
    from unionfs.cli.gotemplate import Struct

    rows = []
    for img in images:
        chosen = (tags or {}).get(str(img.manifest_desc.digest), list(img.tags))
        names = [(t.familiar_name, t.tag or "<none>") for t in chosen] or \
            [(name, "<none>") for name in dict.fromkeys(d.familiar_name for d in img.digests)] or [("<none>", "<none>")]
        for repository, tag in names:
            rows.append(Struct("image row", {
                "Containers": str((users or {}).get(str(img.id), 0)),
                "CreatedAt": docker_time(img.config.created), "CreatedSince": human_age(img.config.created),
                "Digest": str(img.manifest_desc.digest), "FullID": str(img.id),
                "ID": str(img.id) if no_trunc else img.id.short,
                "Partial": str(img.manifest_desc.digest) in partial, "Repository": repository,
                "SharedSize": "N/A", "Size": human_size(img.size), "SizeBytes": img.size, "Tag": tag,
                "UniqueSize": "N/A", "VirtualSize": human_size(img.size)}))
    return rows


def _reference_matches(pattern: str, ref: Reference, named: Reference | None) -> bool:
    """docker's ``reference=`` filter: ``pattern`` (Go's path.Match) against the tag as docker shows it, then
    against its repository; a pattern with no wildcard is a reference (``named``, parsed once) and also matches
    by its full name (``docker.io/library/busybox`` matches ``busybox:latest``)."""
    if glob_match(pattern, ref.familiar) or glob_match(pattern, ref.familiar_name):
        return True
    return named is not None and ref.name == named.name and (not named.tag or ref.tag == named.tag)


def _named_patterns(patterns: list[str]) -> dict[str, Reference | None]:
    """Each ``reference=`` pattern with the reference it names when it has no wildcard (ReferenceError_,
    "invalid reference format", for one that is not a reference), else None."""
    return {p: None if any(c in p for c in "*?[\\") else Reference.parse(p, default_tag=None) for p in patterns}


def _select_images(store: Store, images: list[Image], filters: dict[str, list[str]]
                   ) -> tuple[list[Image], dict[str, list[Reference]]]:
    """The images ``filters`` keep (docker's ``images --filter``: values of one key OR-ed, except ``label``'s,
    which must all hold; keys AND-ed), and the tags to show per manifest digest (``reference`` drops the others)."""
    from unionfs.cli.common import parse_time

    dangling = {v.lower() for v in filters.get("dangling", [])}
    if not dangling <= {"true", "false", "1", "0"} or len(dangling) > 1:
        raise UsageError(f"invalid filter 'dangling={printable(','.join(sorted(dangling)))}': true or false")
    bounds = {k: [parse_time(store.resolve(v).config.created) for v in filters.get(k, [])]
              for k in ("before", "since")}
    named = _named_patterns(filters.get("reference", []))
    kept, shown = [], {}
    for img in images:
        tags = list(img.tags)
        if dangling and (not tags) != (dangling <= {"true", "1"}):
            continue
        if named:
            tags = [t for t in tags if any(_reference_matches(p, t, ref) for p, ref in named.items())]
            if not tags:
                continue
        labels = (img.config.data.get("config") or {}).get("Labels") or {}
        if not all(_label_holds(want, labels) for want in filters.get("label", [])):
            continue
        created = parse_time(img.config.created)
        if any(b is None or created is None or not created < b for b in bounds["before"]):
            continue
        if any(b is None or created is None or not created > b for b in bounds["since"]):
            continue
        kept.append(img)
        shown[str(img.manifest_desc.digest)] = tags
    return kept, shown


def _label_holds(want: str, labels: dict[str, str]) -> bool:
    """docker's ``label=KEY`` (the label is set) and ``label=KEY=VALUE`` (set to VALUE)."""
    key, eq, value = want.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _newest_first(images: list[Image]) -> list[Image]:
    """Images by creation time, newest first, as docker lists them (no or a bad time: last; ties in index
    order)."""
    from unionfs.cli.common import parse_time

    def key(img: Image) -> float:
        t = parse_time(img.config.created)
        return -t.timestamp() if t is not None else float("inf")
    return sorted(images, key=key)


def cmd_images(args: argparse.Namespace) -> int:
    filters = filters_of(args, IMAGE_FILTERS)
    if args.reference:
        filters.setdefault("reference", []).append(args.reference)
    store = store_of(args)
    images = store.images()
    if args.all:
        images += store.intermediate_images()
    images, tags = _select_images(store, _newest_first(images), filters)
    users: dict[str, int] = {}
    for c in store.containers():
        users[c.image_id] = users.get(c.image_id, 0) + 1
    partial = {str(i.manifest_desc.digest) for i in images if store.missing_layers(i)}
    rows = _image_rows(images, args.no_trunc, users, tags, partial)
    if args.quiet:
        ids = list(dict.fromkeys(r["ID"] for r in rows))  # one line per image, as docker
        sys.stdout.write("".join(i + "\n" for i in ids))
        return 0
    default = IMAGES_DIGESTS_TABLE if args.digests else IMAGES_TABLE
    sys.stdout.write(listing(args.format, default, rows, IMAGE_HEADERS))
    return 0


def repo_digests(img: Image) -> list[str]:
    """``inspect``'s RepoDigests, as docker's: ``name@sha256:<index>`` for each kept index the image was pulled
    through, then ``name@<manifest digest>`` for each tag's name no such index names; each once."""
    out = [d.familiar for d in img.digests]
    names = {d.familiar_name for d in img.digests}
    out += [f"{t.familiar_name}@{img.manifest_desc.digest}" for t in img.tags if t.familiar_name not in names]
    return list(dict.fromkeys(out))


def inspect_data(img: Image, missing: Collection[Descriptor]) -> dict[str, Any]:
    """The JSON ``inspect`` prints for one image; ``missing``: its layers the store holds neither extracted nor
    as a blob (``Store.missing_layers``): then it is ``Partial`` and those layers are not ``Present``."""
    cfg = img.config.data
    absent = {d.digest for d in missing}
    return {
        "Id": str(img.id),
        "RepoTags": [t.familiar for t in img.tags],
        "RepoDigests": repo_digests(img),
        "ManifestDigest": str(img.manifest_desc.digest),
        "ManifestMediaType": img.manifest.media_type,
        "Created": cfg.get("created"),
        "Author": cfg.get("author", ""),
        "Architecture": cfg.get("architecture"),
        "Variant": cfg.get("variant"),
        "Os": cfg.get("os"),
        "Size": img.size,
        "Partial": bool(absent),
        "Config": cfg.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": [str(d) for d in img.config.diff_ids]},
        "Layers": [{"MediaType": d.media_type, "Digest": str(d.digest), "Size": d.size, "DiffID": str(diff),
                    "Present": d.digest not in absent}
                   for d, diff in zip(img.manifest.layers, img.config.diff_ids)],
        "History": img.config.history,
    }


#: docker's container.Config: each field and its zero value (``S``: a nil slice, ``M``: a nil map, ``P``: a nil
#: pointer), in docker's order, for ``inspect -f``
_CONFIG_FIELDS = (("Hostname", ""), ("Domainname", ""), ("User", ""), ("AttachStdin", False),
                  ("AttachStdout", False), ("AttachStderr", False), ("ExposedPorts", "M"), ("Tty", False),
                  ("OpenStdin", False), ("StdinOnce", False), ("Env", "S"), ("Cmd", "S"), ("Healthcheck", "P"),
                  ("ArgsEscaped", False), ("Image", ""), ("Volumes", "M"), ("WorkingDir", ""),
                  ("Entrypoint", "S"), ("OnBuild", "S"), ("Labels", "M"), ("StopSignal", ""), ("Shell", "S"))


def template_data(data: dict[str, Any]) -> Struct:
    """``inspect``'s JSON for one image (:func:`inspect_data`) as docker's typed data for ``-f``: the image and
    its ``Config``, ``RootFS`` and ``Layers`` entries are structs (a field they lack is an error), with
    docker's fields at their zero values where the image sets none (``{{.Config.Cmd}}`` prints ``[]``,
    ``{{.Parent}}`` nothing); labels, ports, volumes and history entries are maps."""
    from unionfs.cli.gotemplate import NIL_MAP, NIL_POINTER, NIL_SLICE, Struct

    nils = {"S": NIL_SLICE, "M": NIL_MAP, "P": NIL_POINTER}
    raw = data["Config"]
    config = {k: raw.get(k) if raw.get(k) is not None else nils.get(zero, zero) if isinstance(zero, str) else zero
              for k, zero in _CONFIG_FIELDS}
    config.update({k: v for k, v in raw.items() if k not in config})
    for k in ("ExposedPorts", "Volumes"):  # map[string]struct{}: {} prints as {}
        if isinstance(config[k], dict):
            config[k] = {p: Struct("struct {}") for p in config[k]}
    top = {k: data[k] for k in ("Id", "RepoTags", "RepoDigests")}
    top.update(Parent="", Comment="", Created=data["Created"] or "", DockerVersion="", Author=data["Author"] or "",
               Config=Struct("container.Config", config), Architecture=data["Architecture"] or "",
               Variant=data["Variant"] or "", Os=data["Os"] or "", OsVersion="", Size=data["Size"],
               Partial=data["Partial"],
               RootFS=Struct("image.RootFS", data["RootFS"]),
               ManifestDigest=data["ManifestDigest"], ManifestMediaType=data["ManifestMediaType"],
               Layers=[Struct("layer", layer) for layer in data["Layers"]], History=data["History"])
    return Struct("image.InspectResponse", top)


def cmd_inspect(args: argparse.Namespace) -> int:
    from unionfs.cli.gotemplate import parse

    store = store_of(args)
    # "json" (as docker takes it) or none: the JSON; a template that does not parse fails before any lookup
    template = parse(args.format) if args.format and args.format.strip() != "json" else None
    images = [store.resolve(r, platform_of(args)) for r in args.references]
    out = [inspect_data(i._replace(tags=store.tags_of(i.manifest_desc.digest)), store.missing_layers(i))
           for i in images]
    if template is None:
        print(json.dumps(out, indent=4))
        return 0
    try:
        sys.stdout.write("".join(template.execute(template_data(d)) + "\n" for d in out))
    except TemplateError as e:  # docker's inspect words every template error so
        raise TemplateError(f"template parsing error: {e}") from None
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
    from unionfs.lazy.prune import prune_lazy
    from unionfs.mount.daemon import detach_orphan

    store = store_of(args)
    lines = store.prune(all_unused=args.all, detach=detach_orphan)
    lines += prune_lazy(store)
    for line in lines:
        print(line)
    if not lines:
        print("Nothing to prune")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from unionfs.cli.streams import archive_output
    from unionfs.store.archive import save

    store = store_of(args)
    with archive_output(args.output) as out:
        save(store, args.references, out, args.format)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the store's subcommands."""
    p = sub.add_parser("load", help="load images from a docker-save archive, OCI archive or OCI layout",
                       description="Load images from a docker-save archive (any docker or skopeo layout), an "
                       "OCI archive, or an OCI layout directory; without -i, an archive read from standard "
                       "input (as docker load; refused when it is a terminal). All or nothing: an archive "
                       "that is truncated or does not verify changes nothing in the store.")
    p.add_argument("-i", "--input", help="archive file or OCI layout directory (default: standard input)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.add_argument("--platform", help="os/arch[/variant] to pick from an index (default: this host)")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("import", help="make a one-layer image from a rootfs tarball",
                       description="Make a one-layer image from a plain rootfs tarball (tar, tar.gz or tar.zst); "
                       "FILE - reads it from standard input (as docker import -). URLs are not fetched.")
    p.add_argument("file", metavar="FILE|-", help="rootfs tarball, or - for standard input")
    p.add_argument("reference", nargs="?", help="name:tag for the new image")
    p.add_argument("-m", "--message", help="commit message for the history")
    p.add_argument("-c", "--change", action="append", metavar="INSTRUCTION",
                   help="apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, "
                   "LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("images", help="list images",
                       description="List images in the store, newest first, as `docker images` does.",
                       epilog="Format fields: .Repository .Tag .ID .Digest .CreatedSince .CreatedAt .Size "
                       ".Containers .SharedSize .UniqueSize .VirtualSize, and unionfs' .FullID .SizeBytes "
                       ".Partial (true: a lazy mount's image, not pulled whole; the default table marks its "
                       "size '(partial)'). "
                       "Filters: dangling=true|false, reference=PATTERN (path glob), before=IMAGE, since=IMAGE, "
                       "label=KEY[=VALUE].")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]",
                   help="only images of this repository[:tag] (glob patterns as --filter reference=)")
    p.add_argument("-a", "--all", action="store_true",
                   help="also intermediate images (the steps a build cached), as <none>")
    p.add_argument("-f", "--filter", action="append", metavar="KEY=VALUE",
                   help="only images that match (repeatable): dangling=, reference=, before=, since=, label=")
    p.add_argument("--digests", action="store_true", help="show the manifest digest (a DIGEST column)")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.add_argument("--format", help="'table' (default), 'json' (one object per line), a Go template such as "
                   "'{{.Repository}}:{{.Tag}}', or 'table TEMPLATE' (with a header row)")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("inspect", help="show an image's config, layers and history as JSON",
                       description="Show images as JSON: config, layers, diff_ids and history.",
                       epilog="-f takes Go templates as docker does: nested fields ({{.Config.Cmd}}, "
                       "{{.RootFS.Layers}}), functions (json, index, join, printf, upper, len...), range, if, "
                       "with, variables.")
    p.add_argument("references", nargs="+", metavar="REF")
    p.add_argument("-f", "--format", help="a Go template run over each image, e.g. '{{.Id}}', "
                   "'{{json .Config}}', '{{index .RepoTags 0}}' ('json': the JSON, as without -f)")
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
                       description="Save images to a docker-save archive (default) or an OCI archive, written "
                       "to -o FILE or, as docker save, to standard output (refused when it is a terminal).")
    p.add_argument("references", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="the archive file to write (default: standard output)")
    p.add_argument("--format", default="docker-archive", choices=["docker-archive", "oci-archive"])
    p.set_defaults(func=cmd_save)
