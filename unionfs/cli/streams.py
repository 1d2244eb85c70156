"""Standard input and output as archive streams, with docker's rules: an archive is written to standard output
only when it is not a terminal (``save``, ``export``), and read from standard input only when it is not one
(``load``, ``import -``); and docker's ``[y/N]`` confirmation (``system prune``, ``image prune``)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO, Iterator

from unionfs.errors import UsageError

#: docker's words when ``save`` or ``export`` has no ``-o`` and standard output is a terminal
TERMINAL_OUTPUT = "cowardly refusing to save to a terminal. Use the -o flag or redirect"


@contextlib.contextmanager
def archive_output(path: str | None) -> Iterator[IO[bytes]]:
    """Where an archive goes: the file ``path`` (replaced atomically when the block ends without an error), or
    standard output (UsageError when it is a terminal). A reader of standard output that goes away (``| head``)
    ends the block quietly: nothing more is written, and the command's status is still 0 (as ``_run`` makes
    of a BrokenPipeError)."""
    if path is not None:
        from unionfs.store.archive import atomic_output

        with atomic_output(path) as f:
            yield f
        return
    if sys.stdout.isatty():
        raise UsageError(TERMINAL_OUTPUT)
    sys.stdout.flush()
    try:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # nothing more can reach the reader; the interpreter's last flush must not fail on the pipe either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise


def archive_input(verb: str) -> IO[bytes]:
    """Standard input as a binary stream for ``verb``'s archive; UsageError (one line) when it is a terminal:
    an archive is never typed."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(f"{verb} reads the archive from standard input, which is a terminal: give a file "
                         "or redirect standard input")
    return sys.stdin.buffer


def confirm(warning: str) -> bool:
    """docker's confirmation: ``warning`` and ``Are you sure you want to continue? [y/N]`` on standard output,
    then one line of standard input; True only for ``y`` or ``yes`` (any case). End of input is no."""
    print(f"{warning}\nAre you sure you want to continue? [y/N] ", end="", flush=True)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer.endswith("\n"):
        print()
    return answer.strip().lower() in ("y", "yes")
