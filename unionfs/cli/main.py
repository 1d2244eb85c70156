"""The command-line interface: the only place that prints and sets the exit status.

Each area registers its subcommands from its own module in this package: a module exposes
``register(subparsers)``, and every subcommand sets ``func(args) -> int`` with ``set_defaults``. A command
imports and registers only its own module (:data:`COMMANDS`), so that ``unionfs mount`` does not load the
registry or build code; ``unionfs --help`` and a command that is not known build the whole parser.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
from typing import Sequence

from unionfs import __version__
from unionfs.errors import UnionfsError, printable

#: modules (of this package) that add subcommands, in the order they appear in --help
COMMAND_MODULES = ("store", "registry", "mount", "inspect", "build")
#: the module that registers each command and alias (tests/test_mount_startup.py checks it against the parser)
COMMANDS = {
    **dict.fromkeys(("load", "import", "images", "inspect", "history", "tag", "rmi", "prune", "save"), "store"),
    **dict.fromkeys(("pull", "push", "search", "tags", "login", "logout"), "registry"),
    **dict.fromkeys(("mount", "umount", "unmount", "ps", "rm"), "mount"),
    **dict.fromkeys(("commit", "diff", "ls", "cat", "find", "which", "layers", "export"), "inspect"),
    **dict.fromkeys(("build", "run"), "build"),
}


@functools.cache
def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it ($COLUMNS, then standard output's
    terminal, else 80), without importing shutil."""
    try:
        if int(os.environ.get("COLUMNS", "0")) > 0:
            return int(os.environ["COLUMNS"])
    except ValueError:
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout at the terminal's width: argparse makes one for every argument added, and its
    own asks ``shutil`` for the width (importing shutil and its compression modules at every start)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with :class:`_Formatter`; its subcommands' parsers are of this class too."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of ``modules`` (names in :data:`COMMAND_MODULES`; all of
    them by default)."""
    parser = _Parser(prog="unionfs", description="Union-filesystem mounter and image store.")
    parser.add_argument("--version", action="version", version=f"unionfs {__version__}")
    parser.add_argument("--root", help="store directory (default: $UNIONFS_ROOT, /var/lib/unionfs as root, "
                        "$XDG_DATA_HOME/unionfs otherwise)")
    parser.add_argument("--debug", action="store_true", help="log debugging information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"unionfs.cli.{name}").register(sub)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first argument that is neither an option nor ``--root``'s value,
    which argparse also takes abbreviated), or None."""
    it = iter(argv)
    for a in it:
        if a == "--":
            return next(it, None)
        if len(a) > 2 and "--root".startswith(a):
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status.

    Run as the program (``argv`` None: the ``unionfs`` script, ``python -m unionfs``), a command that leaves
    nothing to the interpreter's shutdown (its parser sets ``fast_exit``: ``mount``, ``umount``) ends the
    process here once its output is flushed (:func:`unionfs.mount.process.exit_now`).
    """
    args, parser = _parse(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    rc = _run(args)
    if argv is None and getattr(args, "fast_exit", False):
        from unionfs.mount.process import exit_now

        exit_now(rc)
    return rc


def _parse(argv: list[str]) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """``argv`` parsed by a parser of the command's module only (all modules for no or an unknown command),
    and that parser; logging set up as ``--debug`` says."""
    command = COMMANDS.get(command_of(argv) or "")
    parser = build_parser((command,) if command else COMMAND_MODULES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="unionfs: %(levelname)s: %(message)s")
    return args, parser


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit status (errors printed as one line)."""
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
