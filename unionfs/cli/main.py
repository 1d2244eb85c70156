"""The command-line interface: the only place that prints and sets the exit status.

Each area registers its subcommands from its own module in this package: a module exposes
``register(subparsers)``, and every subcommand sets ``func(args) -> int`` with ``set_defaults``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from unionfs import __version__
from unionfs.cli import build, inspect, mount, registry, store
from unionfs.errors import UnionfsError, printable

#: modules that add subcommands, in the order they appear in --help
COMMAND_MODULES = (store, registry, mount, inspect, build)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's subcommands."""
    parser = argparse.ArgumentParser(prog="unionfs", description="Union-filesystem mounter and image store.")
    parser.add_argument("--version", action="version", version=f"unionfs {__version__}")
    parser.add_argument("--root", help="store directory (default: $UNIONFS_ROOT, /var/lib/unionfs as root, "
                        "$XDG_DATA_HOME/unionfs otherwise)")
    parser.add_argument("--debug", action="store_true", help="log debugging information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="unionfs: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UnionfsError as e:
        print(f"unionfs: {printable(str(e))}", file=sys.stderr)  # one line, whatever the message echoes
        return e.exit_code
    except KeyboardInterrupt:
        print("unionfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
