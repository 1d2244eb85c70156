"""The command-line interface: the only place that prints and sets the exit status.

Each area registers its subcommands from its own module in this package: a module exposes
``register(subparsers)``, and every subcommand sets ``func(args) -> int`` with ``set_defaults``. A command
imports and registers only its own module (:data:`COMMANDS`), so that ``unionfs mount`` does not load the
registry or build code; ``unionfs --help`` and a command that is not known build the whole parser.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Sequence

from unionfs.errors import UnionfsError, printable

if TYPE_CHECKING:
    import argparse

    from unionfs.mount.process import Early

#: modules (of this package) that add subcommands, in the order they appear in --help
COMMAND_MODULES = ("store", "registry", "mount", "inspect", "build", "system", "convert")
#: the module that registers each command and alias (tests/test_mount_startup.py checks it against the parser)
COMMANDS = {
    **dict.fromkeys(("load", "import", "images", "inspect", "history", "tag", "rmi", "prune", "save"), "store"),
    **dict.fromkeys(("pull", "push", "search", "tags", "login", "logout"), "registry"),
    **dict.fromkeys(("mount", "umount", "unmount", "ps", "rm"), "mount"),
    **dict.fromkeys(("commit", "diff", "ls", "cat", "find", "which", "layers", "export"), "inspect"),
    **dict.fromkeys(("build", "run"), "build"),
    **dict.fromkeys(("version", "info", "system", "image", "container"), "system"),
    "convert": "convert",
}
#: commands whose start is most of their time (a mount's, or a 50 MB pull's, is ~0.1 s): run as the program, they
#: collect garbage rarely (:mod:`unionfs.mount.gcpace`; a daemon they fork restores the pace once its mount is live)
QUICK_COMMANDS = ("mount", "umount", "unmount", "pull", "push")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of ``modules`` (names in :data:`COMMAND_MODULES`; all of
    them by default). argparse is loaded here, not before: ``mount`` forks its daemon first (:func:`main`)."""
    from unionfs.cli.parser import top_parser

    parser = top_parser()
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

    ``mount`` forks its daemon before the parser is built (:func:`_early_daemon`). Run as the program (``argv``
    None: the ``unionfs`` script, ``python -m unionfs``), :data:`QUICK_COMMANDS` start with the garbage
    collector's passes made rare (:func:`unionfs.mount.gcpace.collect_rarely`), and a command that leaves
    nothing to the interpreter's shutdown (its parser sets ``fast_exit``: ``mount``, ``umount``, ``pull``,
    ``push``) ends the process here once its output is flushed (:func:`unionfs.mount.gcpace.exit_now`).
    """
    args_in = sys.argv[1:] if argv is None else list(argv)
    if argv is None and command_of(args_in) in QUICK_COMMANDS:
        from unionfs.mount.gcpace import collect_rarely

        collect_rarely()  # before the imports: they are most of the command's time
    import logging

    logging.basicConfig(level=logging.DEBUG if _asks_debug(args_in) else logging.WARNING,
                        format="unionfs: %(levelname)s: %(message)s")
    early = _early_daemon(args_in)
    try:
        args, parser = _parse(args_in)
        args.early = early
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        rc = _run(args)
    finally:
        if early is not None:
            early.cancel()  # unless the command gave it its mount
    if argv is None and getattr(args, "fast_exit", False):
        from unionfs.mount.gcpace import exit_now

        exit_now(rc)
    return rc


def _asks_debug(argv: list[str]) -> bool:
    """True when ``--debug`` (argparse also takes it abbreviated) comes before the command word: logging is
    set up before parsing, so that a daemon forked then (:func:`_early_daemon`) logs as asked."""
    it = iter(argv)
    for a in it:
        if not a.startswith("-") or a == "--":
            return False
        if len(a) > 2 and "--debug".startswith(a):
            return True
        if len(a) > 2 and "--root".startswith(a):
            next(it, None)
    return False


def _early_daemon(argv: list[str]) -> Early | None:
    """For ``mount`` (unless it asks for the foreground or for help, as far as a glance at ``argv`` tells): its
    daemon, forked now (:func:`unionfs.mount.process.fork_early`), so that it loads the serving code while this
    process builds the parser, parses and checks the mount; None otherwise, or when the fork fails (the
    command then forks, or fails, itself). ``cmd_mount`` takes it from ``args.early``."""
    if command_of(argv) != "mount" or {"-f", "--foreground", "-h", "--help"} & set(argv):
        return None
    from unionfs.mount.process import fork_early

    try:
        return fork_early()
    except UnionfsError:
        return None


def _parse(argv: list[str]) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """``argv`` parsed by a parser of the command's module only (all modules for no or an unknown command),
    and that parser; the log level as ``--debug`` says."""
    command = COMMANDS.get(command_of(argv) or "")
    parser = build_parser((command,) if command else COMMAND_MODULES)
    import logging

    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.WARNING)
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
