"""What every verb group of the CLI shares: the store of ``--root``, ``--platform``, and the way sizes, ages and
tables are printed (as docker prints them). The store and the image formats are imported by the commands that
use them, so a command that needs neither (``mount --lower``, ``umount``) starts fast."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Sequence

from unionfs.errors import printable

if TYPE_CHECKING:
    from unionfs.oci.manifest import Platform
    from unionfs.store.store import Store


def store_of(args: argparse.Namespace) -> Store:
    """The store at ``--root`` (else the default root)."""
    from unionfs.store.store import Store

    return Store(args.root)


def root_of(args: argparse.Namespace) -> str:
    """The store's directory, absolute: ``--root``, else the default root (for :mod:`unionfs.store.mounting`,
    which ``mount IMAGE`` and ``umount`` use without loading the :class:`Store`)."""
    from unionfs.store.mounting import default_root

    return os.path.abspath(args.root if args.root is not None else default_root())


def platform_of(args: argparse.Namespace) -> Platform | None:
    """The ``--platform`` asked for, or None (the host's)."""
    from unionfs.oci.manifest import Platform

    return Platform.parse(args.platform) if getattr(args, "platform", None) else None


def human_size(n: float) -> str:
    """Sizes as docker prints them (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    raise AssertionError


def human_age(created: str | None) -> str:
    """'3 days ago' from an RFC 3339 time (an unparseable one is shown as it is, escaped)."""
    if not created or not isinstance(created, str):
        return "N/A"
    from datetime import datetime, timezone  # here: the commands that show no age start faster

    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return printable(created[:40])
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    secs = (datetime.now(timezone.utc) - t).total_seconds()
    for limit, div, unit in ((60, 1, "second"), (3600, 60, "minute"), (86400, 3600, "hour"),
                             (86400 * 30, 86400, "day"), (86400 * 365, 86400 * 30, "month")):
        if secs < limit:
            n = max(int(secs // div), 1)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    n = int(secs // (86400 * 365))
    return f"{n} year{'s' if n != 1 else ''} ago"


def table(rows: Sequence[Sequence[str]], gap: int = 3) -> list[str]:
    """Rows as aligned columns, ``gap`` blanks apart, one line each; control characters from input (newlines,
    escapes) are shown escaped, so a row stays one line."""
    shown = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    return [(" " * gap).join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown]
