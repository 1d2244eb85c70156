"""``convert``: rewrite a stored image's layers in another layer format (eStargz, as ``nerdctl image convert
--estargz``)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from unionfs.cli.common import own_user_namespace, store_of
from unionfs.errors import UsageError
from unionfs.oci.reference import Reference


def _size(text: str) -> int:
    """A byte count: ``4194304``, ``512K``, ``4M``, ``1G``."""
    m = re.fullmatch(r"([0-9]+)([KMG]?)", text.strip(), re.IGNORECASE)
    if not m or int(m[1]) == 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (a positive number of bytes, or with K, M, G)")
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


def _seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid time {text!r} (a positive number of seconds)")
    return value


def cmd_convert(args: argparse.Namespace) -> int:
    if not args.estargz:
        raise UsageError("convert needs a target format: --estargz")
    from unionfs.image.convert import convert_estargz

    if args.command and not args.optimize:
        raise UsageError("a command after TARGET is for --optimize")
    if args.optimize_timeout is not None and not args.optimize:
        raise UsageError("--optimize-timeout is for --optimize")
    target = Reference.parse(args.target)
    if args.optimize:
        own_user_namespace()  # the command runs as run runs it
    store = store_of(args)
    options: dict[str, Any] = {"chunk_size": args.chunk_size} if args.chunk_size else {}
    if args.prioritize:
        options["prioritized"] = list(args.prioritize)
    if args.optimize:
        from unionfs.api import record_opens

        recorded = record_opens(store, args.source, args.command, timeout=args.optimize_timeout)
        options["prioritized"] = [*args.prioritize, *recorded]
        if not args.quiet:
            print(f"optimize: {len(recorded)} files opened by the command go first")
    result = convert_estargz(store, args.source, target, **options)
    if not args.quiet:
        for n, layer in enumerate(result.layers):
            print(f"layer {n}: {layer.digest} toc {layer.toc_digest} ({layer.entries} entries)")
    print(result.image.id)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add convert."""
    p = sub.add_parser("convert", help="convert an image's layers to eStargz (lazy pulling)",
                       description="Write SOURCE (reference or id) as a new image TARGET whose layers are eStargz "
                                   "(a gzip member per file, large files chunked, the TOC stargz.index.json, "
                                   "the footer; manifest annotations with the TOC digest and uncompressed "
                                   "size), as nerdctl image convert --estargz. With --optimize, the files the "
                                   "image's command opens in one run go first, before the prefetch landmark "
                                   "(needs root, as run). Prints each layer and the new image id.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--estargz", action="store_true", help="convert to eStargz (the only format)")
    p.add_argument("--chunk-size", type=_size, metavar="BYTES",
                   help="most bytes of a file in one gzip member (default 4M)")
    p.add_argument("--optimize", action="store_true",
                   help="run the image's command once (COMMAND replaces its CMD) and put the files it opens "
                        "first in each layer, with the prefetch landmark (as ctr-remote image optimize)")
    p.add_argument("--optimize-timeout", type=_seconds, metavar="SECONDS",
                   help="how long the command of --optimize runs at most before it is killed (default 10)")
    p.add_argument("--prioritize", action="append", default=[], metavar="PATH",
                   help="a file put first in each layer holding it, before the prefetch landmark (repeatable, "
                   "in this order): what a lazy mount fetches first")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new image id")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="with --optimize: the command to run instead of the image's CMD")
    p.set_defaults(func=cmd_convert)
