"""The top-level argument parser of the CLI (``--version``, ``--root``, ``--debug``), with a help layout that
needs no :mod:`shutil`. Imported by :func:`unionfs.cli.main.build_parser` only, so that ``unionfs mount`` loads
argparse after it has forked its daemon."""

from __future__ import annotations

import argparse
import functools
import os
import sys

from unionfs import __version__


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


def top_parser() -> argparse.ArgumentParser:
    """The parser of ``unionfs`` itself, without subcommands."""
    parser = _Parser(prog="unionfs", description="Union-filesystem mounter and image store.")
    parser.add_argument("--version", action="version", version=f"unionfs {__version__}")
    parser.add_argument("--root", help="store directory (default: $UNIONFS_ROOT, /var/lib/unionfs as root, "
                        "$XDG_DATA_HOME/unionfs otherwise)")
    parser.add_argument("--debug", action="store_true", help="log debugging information")
    return parser
