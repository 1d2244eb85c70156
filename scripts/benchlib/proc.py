"""Running and timing the commands a benchmark measures.

Contract: a command's stdout is discarded unless ``stdout`` says otherwise and its stderr is captured; a
non-zero exit raises :class:`CommandFailed` (a RuntimeError) naming the command, its exit status and the tail
of its stderr (unless ``check`` is false); a command still running after :data:`CMD_TIMEOUT` seconds raises
``subprocess.TimeoutExpired``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Mapping, Sequence

#: seconds before a benchmarked command counts as hung
CMD_TIMEOUT = 1800.0

Command = Sequence[str | os.PathLike[str]]


class CommandFailed(RuntimeError):
    """A command exited non-zero."""


def run(cmd: Command, *, cwd: Path | None = None, check: bool = True, stdout: int | None = subprocess.DEVNULL,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd``; with ``check``, raise :class:`CommandFailed` (with its stderr) when it fails."""
    argv = [os.fspath(c) for c in cmd]
    res = subprocess.run(argv, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=CMD_TIMEOUT)
    if check and res.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: exit {res.returncode}: "
                            f"{res.stderr.decode(errors='replace').strip()[-500:]}")
    return res


def timed(cmd: Command, *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> float:
    """Seconds that ``cmd`` took; it must succeed (see :func:`run`)."""
    t0 = time.perf_counter()
    run(cmd, cwd=cwd, env=env)
    return time.perf_counter() - t0


def compile_package(tree: Path) -> None:
    """Byte-compile checkout ``tree``'s ``unionfs`` package, as an installed one is: where the environment
    says ``PYTHONDONTWRITEBYTECODE`` (as on these machines), every command would otherwise compile the modules
    it imports, ~40 ms each time."""
    import sys

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "unionfs")], check=True,
                   capture_output=True)

