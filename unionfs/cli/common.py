"""What every verb group of the CLI shares: the store of ``--root``, ``--platform``, and the way sizes, ages and
tables are printed (as docker prints them). The store and the image formats are imported by the commands that
use them, so a command that needs neither (``mount --lower``, ``umount``) starts fast."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Sequence

from unionfs.errors import UsageError, printable

if TYPE_CHECKING:
    from datetime import datetime

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


def own_user_namespace() -> None:
    """For a user other than root: go on in a user namespace of one's own (:mod:`unionfs.run.userns`), as
    ``run``, ``build`` and ``convert --optimize`` do before they touch the store."""
    from unionfs.run import userns

    if userns.needed():
        userns.enter()


def human_size(n: float) -> str:
    """Sizes as docker prints them (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    raise AssertionError


def parse_time(created: object) -> datetime | None:
    """An RFC 3339 time as an aware datetime (UTC when it names no zone); None when it is not one."""
    if not created or not isinstance(created, str):
        return None
    from datetime import datetime, timezone  # here: the commands that show no time start faster

    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def docker_time(created: str | None) -> str:
    """A time as docker's ``CreatedAt`` prints it (Go's ``time.Time.String()``, in UTC:
    ``2024-01-02 15:04:05 +0000 UTC``); an unparseable one as it is, escaped; "" for none."""
    t = parse_time(created)
    if t is None:
        return printable(created[:40]) if isinstance(created, str) else ""
    from datetime import timezone

    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def human_age(created: str | None) -> str:
    """'3 days ago' from an RFC 3339 time (an unparseable one is shown as it is, escaped)."""
    if not created or not isinstance(created, str):
        return "N/A"
    t = parse_time(created)
    if t is None:
        return printable(created[:40])
    from datetime import datetime, timezone

    secs = (datetime.now(timezone.utc) - t).total_seconds()
    for limit, div, unit in ((60, 1, "second"), (3600, 60, "minute"), (86400, 3600, "hour"),
                             (86400 * 30, 86400, "day"), (86400 * 365, 86400 * 30, "month")):
        if secs < limit:
            n = max(int(secs // div), 1)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    n = int(secs // (86400 * 365))
    return f"{n} year{'s' if n != 1 else ''} ago"


def filters_of(args: argparse.Namespace, known: Sequence[str]) -> dict[str, list[str]]:
    """``--filter KEY=VALUE`` options (repeatable) grouped by key, as docker takes them; UsageError for one
    without ``=`` or with a key not in ``known`` ("invalid filter 'KEY'", docker's words)."""
    out: dict[str, list[str]] = {}
    for f in getattr(args, "filter", None) or ():
        key, eq, value = f.partition("=")
        key = key.strip().lower()
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {printable(f)}")
        if key not in known:
            raise UsageError(f"invalid filter '{printable(key)}' (known here: {', '.join(known)})")
        out.setdefault(key, []).append(value.strip())
    return out


def table(rows: Sequence[Sequence[str]], gap: int = 3) -> list[str]:
    """Rows as aligned columns, ``gap`` blanks apart, one line each; control characters from input (newlines,
    escapes) are shown escaped, so a row stays one line."""
    shown = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    return [(" " * gap).join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in shown]


def listing(fmt: str | None, default: str, rows: Sequence[object], header: dict[str, str]) -> str:
    """What a listing verb prints for ``--format fmt`` (see :func:`unionfs.cli.gotemplate.format_rows`): no
    format, or ``table`` alone, is the verb's ``default`` table."""
    from unionfs.cli.gotemplate import format_rows

    return format_rows(default if not fmt or fmt.strip(" ") == "table" else fmt, rows, header)


def glob_match(pattern: str, text: str) -> bool:
    """Go's ``path.Match`` (docker's ``reference`` filter): ``*`` and ``?`` match within one ``/``-separated
    part, ``[...]`` (``[^...]`` negated) one character, ``\\`` quotes; the whole text must match."""
    import re

    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                return False  # Go: ErrBadPattern, which matches nothing
            body = pattern[i + 1:end]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            out.append(f"[{'^/' if neg else ''}{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.fullmatch("".join(out), text) is not None
    except re.error:
        return False
