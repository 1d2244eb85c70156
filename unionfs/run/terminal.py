"""The caller's side of ``run -t``: relay between the caller's terminal and the master of the container's pty.

``relay(master, stdin, stdout, ready)`` is what runc's and podman's console handling does on the host:

* the pty's window size is copied from the caller's terminal (``stdin``, else ``stdout``) before ``ready()``
  lets the command start, so that its first ``stty size`` is right, and again on every SIGWINCH the caller
  gets (TIOCGWINSZ -> TIOCSWINSZ on the master; the kernel then signals the pty's foreground process group);
* when ``stdin`` is a terminal it is put in raw mode for the relay and restored afterwards (also when the
  relay ends by an exception), so that Ctrl-C, Ctrl-Z and Ctrl-\\ reach the container's pty as bytes and its
  line discipline signals the container's foreground job, as on a local terminal;
* bytes from ``stdin`` go to the master (buffered, never blocking the output), bytes from the master go to
  ``stdout``; at the end of a ``stdin`` that is not a terminal (a pipe, a file) the pty's EOF character
  (Ctrl-D) is typed once;
* the relay ends when the master reads EOF or EIO: the last process of the container holding the pty is gone.

The master is the only end the caller holds; nothing here gives the container a descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import threading
from typing import Callable, Iterator

#: bytes read or buffered at once
CHUNK = 65536
#: the pty's end-of-file character (VEOF) as a line discipline in canonical mode reads it
EOF_CHAR = b"\x04"


def is_terminal(fd: int | None) -> bool:
    """True when ``fd`` is an open terminal."""
    return fd is not None and os.isatty(fd)


def copy_window_size(source: int, master: int) -> None:
    """Give the pty of ``master`` the window size of the terminal ``source`` (nothing when it has none)."""
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    except OSError:
        pass


@contextlib.contextmanager
def raw_mode(fd: int | None) -> Iterator[None]:
    """``fd``'s terminal in raw mode (as ``cfmakeraw``) for the block, its settings restored after; nothing
    when ``fd`` is not a terminal."""
    if not is_terminal(fd):
        yield
        return
    assert fd is not None
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag = 0, 1, 2, 3
    mode[iflag] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                     | termios.IGNCR | termios.ICRNL | termios.IXON)
    mode[oflag] &= ~termios.OPOST
    mode[lflag] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    mode[cflag] = (mode[cflag] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_window_change(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` on every SIGWINCH during the block (main thread only; elsewhere nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGWINCH, lambda _s, _f: action())
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def relay(master: int, stdin: int | None, stdout: int, ready: Callable[[], None]) -> None:
    """Relay between the caller's ``stdin`` (None: no input) and ``stdout`` and the pty ``master`` until the
    pty has no process left; see the module docstring. ``ready()`` is called once the window size is set."""
    sized_by = next((fd for fd in (stdin, stdout) if is_terminal(fd)), None)
    resize = (lambda: copy_window_size(sized_by, master)) if sized_by is not None else (lambda: None)
    resize()
    ready()
    with on_window_change(resize), raw_mode(stdin):
        _copy(master, stdin, stdout)


def _copy(master: int, stdin: int | None, stdout: int) -> None:
    """The relay's loop: ``stdin`` -> ``master`` (buffered) and ``master`` -> ``stdout``, until the master
    reads EOF or EIO."""
    os.set_blocking(master, False)
    pending = b""
    reading = stdin is not None
    output_open = True
    while True:
        rlist = [master] + ([stdin] if reading and len(pending) < CHUNK else [])  # type: ignore[list-item]
        wlist = [master] if pending else []
        readable, writable, _ = select.select(rlist, wlist, [])
        if master in readable:
            try:
                data = os.read(master, CHUNK)
            except BlockingIOError:
                data = None
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: no slave is open any more
                    raise
                return
            if data == b"":
                return
            if data and output_open:
                output_open = _write_all(stdout, data)
        if reading and stdin in readable:
            assert stdin is not None
            data = os.read(stdin, CHUNK)
            if data:
                pending += data
            else:
                reading = False
                if not is_terminal(stdin):
                    pending += EOF_CHAR
        if master in writable and pending:
            try:
                pending = pending[os.write(master, pending):]
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                pending = b""


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to ``fd``; False when the reader is gone (EPIPE), the output then dropped."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return False
        except BlockingIOError:
            select.select([], [fd], [])
    return True


__all__ = ["relay", "raw_mode", "copy_window_size", "on_window_change", "is_terminal"]
