"""The one CLI runner: ``python -m unionfs [--root ROOT] ARGS`` in a subprocess, as a user runs it.

:func:`run_cli` runs it to completion (text or bytes, optional stdin, environment and timeout; with ``check`` a
non-zero exit fails the test with the command's output); :func:`cli_argv` is its command line, for the tests
that start it in the background (``subprocess.Popen``) to signal or kill it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

#: seconds a command may take before the test calls it hung (a bound that detects hangs, it measures nothing)
TIMEOUT = 300.0


def cli_argv(*args: str | os.PathLike[str], root: Path | str | None = None) -> list[str]:
    """The command line ``python -m unionfs [--root ROOT] ARGS`` (this interpreter, so this checkout)."""
    cmd = [sys.executable, "-m", "unionfs"]
    if root is not None:
        cmd += ["--root", str(root)]
    return cmd + [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]


def run_cli(*args: str | os.PathLike[str], root: Path | str | None = None, check: bool = True,
            input: str | bytes | None = None, timeout: float = TIMEOUT, text: bool = True,
            env: Mapping[str, str] | None = None, preexec_fn: Callable[[], None] | None = None,
            ) -> subprocess.CompletedProcess[Any]:
    """Run the unionfs CLI to completion and return its result (stdout and stderr captured).

    ``text=False`` gives stdout and stderr as bytes (file names need not be UTF-8; ``input`` is bytes then).
    ``env`` replaces the environment (default: this process'). With ``check``, a non-zero exit raises an
    AssertionError naming the command, its exit code and its output. A hang raises TimeoutExpired after
    ``timeout`` seconds.
    """
    cmd = cli_argv(*args, root=root)
    p = subprocess.run(cmd, capture_output=True, text=text, input=input, timeout=timeout,
                       env=dict(env) if env is not None else None, preexec_fn=preexec_fn)
    if check and p.returncode != 0:
        out, err = (p.stdout, p.stderr) if text else (p.stdout.decode(errors="replace"),
                                                      p.stderr.decode(errors="replace"))
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{out}\n{err}")
    return p


#: an interpreter every user may run (the test's virtualenv may live under root's home, 0700)
USER_PYTHON = "/usr/bin/python3"


def user_package(base: Path) -> Path:
    """A copy of the ``unionfs`` package under ``base/pkg``, compiled (as an install is: a user could not write
    its ``__pycache__``) and readable by every user: ``PYTHONPATH`` for :data:`USER_PYTHON` in commands run as
    a user other than root. Returns ``base/pkg``."""
    import shutil

    import unionfs

    pkg = base / "pkg"
    shutil.copytree(Path(unionfs.__file__).parent, pkg / "unionfs", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([USER_PYTHON, "-m", "compileall", "-q", str(pkg)], check=True, capture_output=True)
    for d, _dirs, files in os.walk(pkg):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    return pkg


class AsUser:
    """Commands run as the user ``uid``:``gid`` (no supplementary groups; ``setpriv``, so the caller must be
    root), with a small fixed environment, in ``/``: the unionfs CLI (:meth:`cli`) on :data:`USER_PYTHON` and the
    compiled copy of the package :func:`user_package` makes under ``base`` (a directory the user may walk; ``python
    -m`` would put the current directory, a checkout, first on the path)."""

    def __init__(self, base: Path, uid: int = 65534, gid: int = 65534) -> None:
        self.uid, self.gid = uid, gid
        self.env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "PYTHONPATH": str(user_package(base))}

    def run(self, *argv: str | os.PathLike[str], check: bool = True, text: bool = True,
            input: str | bytes | None = None) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` as the user to completion (output captured); with ``check`` a failure fails the test."""
        cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *map(str, argv)]
        p = subprocess.run(cmd, capture_output=True, text=text, input=input, timeout=TIMEOUT, env=self.env, cwd="/")
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout!r}\n{p.stderr!r}")
        return p

    def cli(self, *args: str | os.PathLike[str], root: Path | str | None = None, check: bool = True,
            text: bool = True) -> subprocess.CompletedProcess[Any]:
        """``unionfs [--root ROOT] ARGS`` as the user."""
        return self.run(USER_PYTHON, "-m", "unionfs", *(["--root", str(root)] if root is not None else []), *args,
                        check=check, text=text)


@contextlib.contextmanager
def fuse_open_to_all() -> Iterator[None]:
    """/dev/fuse with the usual mode 0666 meanwhile (0600 on these machines), for mounts by users other than
    root; its mode is restored afterwards."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", mode | 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)
