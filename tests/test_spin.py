"""The daemon loop's spin before it sleeps (unionfs.mount.server.spin_budget; docs/design.md): the whole
``spin_us`` only while requests come within it of each other, the short spin after a longer gap, never more
than ``spin_us``, and nothing when it is 0. (How long it takes is the benchmark's business, not a test's.)"""

from __future__ import annotations

from unionfs.mount.server import SPIN_SHORT_US, SPIN_US, spin_budget

LONG = SPIN_US * 1000
SHORT = SPIN_SHORT_US * 1000


def test_a_burst_keeps_the_long_spin() -> None:
    assert spin_budget(70_000, LONG) == LONG  # a client reading a cold file between two requests
    assert spin_budget(LONG, LONG) == LONG


def test_a_longer_gap_falls_back_to_the_short_spin() -> None:
    assert spin_budget(LONG + 1, LONG) == SHORT
    assert spin_budget(5_000_000_000, LONG) == SHORT


def test_never_more_than_asked() -> None:
    assert spin_budget(5_000_000, 10_000) == 10_000  # spin_us=10: below the short spin
    assert spin_budget(0, 0) == 0 and spin_budget(5_000_000, 0) == 0  # spin_us=0: no spin at all
    assert SHORT < LONG
