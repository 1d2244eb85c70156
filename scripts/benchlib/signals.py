"""The signals that stop the benchmark, SIGINT, SIGTERM and SIGHUP, as KeyboardInterrupt: so that every
context manager on the way out (the harness's unmounts above all) runs, as on Ctrl-C.

:func:`raise_on_stop` sets that up for the whole run. :func:`held` makes a section where a stop signal waits
(a mount or unmount command cut short would leave a mount that nothing takes charge of) with a
:meth:`Gate.opened` part inside that stays interruptible. Python's signal handlers run in the main thread only:
so must these.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

#: the signals that stop the benchmark
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def raise_on_stop() -> None:
    """From now on, SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does."""
    for s in STOP_SIGNALS:
        signal.signal(s, _stop)


class Gate:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt at once while the gate is open; while it is closed
    they are held and raised when it opens or when :func:`held` ends. Main thread only."""

    def __init__(self) -> None:
        self.is_open = False
        self.held: list[int] = []

    def handle(self, signum: int, frame: object) -> None:
        if self.is_open:
            raise KeyboardInterrupt(f"signal {signum}")
        self.held.append(signum)

    def raise_held(self) -> None:
        if self.held:
            signum, self.held = self.held[0], []
            raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        """Interruptible inside (a signal held so far is raised on entry); closed again on leaving."""
        self.is_open = True
        try:
            self.raise_held()
            yield
        finally:
            self.is_open = False


@contextlib.contextmanager
def held() -> Iterator[Gate]:
    """A closed :class:`Gate` for the signals that stop the benchmark; the previous handlers come back
    on leaving, and a signal still held is raised then."""
    gate = Gate()
    previous = {s: signal.signal(s, gate.handle) for s in STOP_SIGNALS}
    try:
        yield gate
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        gate.raise_held()
