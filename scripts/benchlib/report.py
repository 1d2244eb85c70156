"""Summaries, ratios and the texts the benchmark prints or writes: markdown tables, the speed goals, the JSON
documents and the scaling plot.

Nothing here prints; every function returns what the command line shows or writes. A summary is
``{"median", "min", "max", "n"}`` over the runs that measured a metric, or None when none did; a ratio is
``median(a) / median(b)`` of one metric (below 1: ``a`` is faster), None when either is missing.

A read-only session's metric is its writable twin's name followed by :data:`~benchlib.workloads.RO`; its row
comes right after the twin's, labelled the same followed by :data:`RO_LABEL`, with the same ratio columns and
the same speed goal.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Mapping, Sequence

from benchlib.impls import REFERENCES, ours
from benchlib.workloads import RO

log = logging.getLogger(__name__)

Summary = dict[str, float]
#: {metric: {impl: summary or None}}
Table = dict[str, dict[str, Summary | None]]
#: {impl: [one {metric: value} per run]}
Results = Mapping[str, Sequence[Mapping[str, float | None]]]

#: the label of a read-only session's row is its writable twin's followed by this
RO_LABEL = " (read-only)"

#: (metric, label) of the writable sessions, in the order of the table; every one is "lower is better"
WRITABLE_METRICS = [
    ("read_first", "read 1 GiB, first after mount (s)"),
    ("read_again", "read 1 GiB, again (s)"),
    ("find_first", "find -printf over 50k entries, first (s)"),
    ("find_second", "find -printf, second (s)"),
    ("cat_small", "cat 10,000 files of 4 KiB (s)"),
    ("write_4k", "write 1 GiB in 4 KiB blocks (s)"),
    ("write_1m", "write 1 GiB in 1 MiB blocks (s)"),
    ("copyup_chmod", "copy-up 1 GiB by chmod (s)"),
    ("copyup_append", "copy-up 1 GiB by appending a byte (s)"),
    ("copyup_sparse", "copy-up of a sparse 1 GiB file by chmod (s)"),
    ("mount_1", "mount a 1-layer image (s)"),
    ("ls_1", "ls -la of its root (s)"),
    ("mount_100", "mount a 100-layer image (s)"),
    ("ls_100", "ls -la of its root (s)"),
    ("rss_tree_mb", "daemon peak RSS, find session (MB)"),
    ("rss_max_mb", "daemon peak RSS, any session (MB)"),
    ("cpu_total_s", "daemon CPU seconds, all sessions of a run (s)"),
]
#: the metrics that read-only sessions measure too (as ``METRIC`` + :data:`RO`)
READ_ONLY_TWINS = ("read_first", "read_again", "find_first", "find_second", "cat_small", "mount_1", "ls_1",
                   "mount_100", "ls_100", "rss_tree_mb", "rss_max_mb", "cpu_total_s")


def _with_read_only(metrics: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``metrics`` with the read-only twin of each of :data:`READ_ONLY_TWINS` right after it."""
    out = []
    for m, label in metrics:
        out.append((m, label))
        if m in READ_ONLY_TWINS:
            out.append((m + RO, label + RO_LABEL))
    return out


#: (metric, label) of every row, each read-only one right after its writable twin
METRICS = _with_read_only(WRITABLE_METRICS)

#: (metric, label) of the scaling table
SCALE_METRICS = [("mount", "mount (s)"), ("find_first", "find first (s)"), ("find_second", "find second (s)"),
                 ("cat_sample", "cat 10k files (s)"), ("rss_after_find_mb", "RSS after find (MB)"),
                 ("rss_mb", "peak RSS (MB)"), ("cpu_s", "CPU (s)")]

#: the speed goals of the writable sessions: (metric, "ratio" to fuse-overlayfs or "abs" value, bound); met when
#: the median is <= bound
WRITABLE_GOALS = [(m, "ratio", 1.0) for m in ("read_first", "read_again", "find_first", "find_second",
                                              "cat_small", "ls_1", "ls_100")] + [
    ("write_4k", "ratio", 0.1), ("write_1m", "ratio", 0.5),
    ("copyup_chmod", "ratio", 1.0), ("copyup_append", "ratio", 1.0), ("copyup_sparse", "ratio", 1.0),
    ("mount_100", "abs", 0.5), ("rss_tree_mb", "abs", 100.0),
]


def _goals_with_read_only(goals: Sequence[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """``goals`` with the same goal for the read-only twin of each of :data:`READ_ONLY_TWINS` right after it."""
    out = []
    for m, kind, bound in goals:
        out.append((m, kind, bound))
        if m in READ_ONLY_TWINS:
            out.append((m + RO, kind, bound))
    return out


#: every goal: those of the writable sessions, and the same ones for the read-only sessions
GOALS = _goals_with_read_only(WRITABLE_GOALS)


def summarize(values: Sequence[float | None]) -> Summary | None:
    """median, min, max and n of the values that are not None."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def summary_table(results: Results, metrics: Sequence[tuple[str, str]]) -> Table:
    """{metric: {impl: summary}} for every metric."""
    return {m: {impl: summarize([r.get(m) for r in runs]) for impl, runs in results.items()}
            for m, _ in metrics}


def ratio(table: Table, metric: str, a: str, b: str) -> float | None:
    """median(a) / median(b) of one metric, None when either is missing or b is 0."""
    sa, sb = table[metric].get(a), table[metric].get(b)
    if not sa or not sb or sb["median"] <= 0:
        return None
    return sa["median"] / sb["median"]


def ratios(table: Table, impls: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """{metric: {"OURS/OTHER": ratio}} for every unionfs column against every other column."""
    mine = ours(impls)
    return {m: {f"{u}/{o}": ratio(table, m, u, o) for u in mine for o in impls if o not in mine}
            for m, _ in METRICS}


def _cell(s: Summary | None) -> str:
    if s is None:
        return "-"
    fmt = (lambda v: f"{v:.3g}") if s["median"] < 100 else (lambda v: f"{v:.0f}")
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def _r(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def labels(write_mib: int) -> list[tuple[str, str]]:
    """:data:`METRICS` with the write rows' size set to ``write_mib``."""
    size = "1 GiB" if write_mib == 1024 else f"{write_mib} MiB"
    return [(m, label.replace("write 1 GiB", f"write {size}")) for m, label in METRICS]


def markdown(table: Table, impls: Sequence[str], metrics: Sequence[tuple[str, str]]) -> str:
    """The results as a markdown table: medians (min–max) per implementation and the ratios of unionfs."""
    head = ["workload", *impls]
    others = [i for i in REFERENCES if i in impls]
    pairs = [(u, o) for u in ours(impls) for o in others]
    head += [f"{u} / {o}" for u, o in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, label in metrics:
        if all(table[m].get(i) is None for i in impls):
            continue
        row = [label, *(_cell(table[m].get(i)) for i in impls)]
        row += [_r(ratio(table, m, u, o)) for u, o in pairs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def goals_markdown(table: Table, results: Results, impl: str = "unionfs") -> str:
    """The speed goals against this run's medians for ``impl`` (ratios to fuse-overlayfs)."""
    lines = ["| goal | value | met |", "|---|---|---|"]
    for m, kind, bound in GOALS:
        if m not in table or impl not in table[m] or all(s is None for s in table[m].values()):
            continue  # a workload not run (--workloads, --mounts)
        if kind == "ratio":
            v = ratio(table, m, impl, "fuse-overlayfs")
            what = f"{m}: {impl} / fuse-overlayfs <= {bound:g}"
        else:
            s = table[m].get(impl)
            v = s["median"] if s else None
            what = f"{m} < {bound:g}" + (" s" if m.startswith("mount") else " MB")
        met = "-" if v is None else "yes" if v <= bound else "**no**"
        lines.append(f"| {what} | {_r(v) if kind == 'ratio' else '-' if v is None else f'{v:.3g}'} | {met} |")
    holes = [r.get("holes_kept") for r in results.get(impl, [])]
    if any(h is not None for h in holes):
        kept = all(h == 1.0 for h in holes if h is not None)
        lines.append(f"| the sparse copy-up keeps holes | {'yes' if kept else 'no'} | {'yes' if kept else '**no**'} |")
    return "\n".join(lines)


def notes(results: Results, impls: Sequence[str]) -> str:
    """The lines after the table: the ``find`` entries each saw (on a writable and, when measured, on a
    read-only mount), and which sparse copy-ups kept the holes."""
    entries = {i: results[i][0].get("find_entries") for i in impls}
    entries_ro = {i: results[i][0].get("find_entries" + RO) for i in impls}
    holes = {i: summarize([r.get("holes_kept") for r in results[i]]) for i in impls}
    lines = [f"find entries seen: {entries}"]
    if any(v is not None for v in entries_ro.values()):
        lines.append(f"find entries seen{RO_LABEL}: {entries_ro}")
    lines.append("sparse copy keeps holes: " + ", ".join(f"{i}={'yes' if h and h['min'] == 1 else 'no'}"
                                                         for i, h in holes.items() if h))
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """Where the numbers come from."""
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "nproc": str(os.cpu_count()),
            "kernel": platform.release(), "python": platform.python_version(),
            "fuse-overlayfs": _version(["fuse-overlayfs", "--version"])}


def heading(info: Mapping[str, str], runs: int, write_mib: int, kinds: Sequence[str] = ("writable",)) -> str:
    """The line above the table; ``kinds`` are the kinds of mount measured (``--mounts``)."""
    return (f"{info['date']}, {info['nproc']} cores, kernel {info['kernel']}, {info['fuse-overlayfs']}; "
            f"runs={runs}, writes of {write_mib} MiB, {' and '.join(kinds)} mounts; medians (min–max)")


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return next((ln for ln in lines if cmd[0] in ln), lines[0])
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------------------------------------------------------
# scaling
# ---------------------------------------------------------------------------------------------------------------

def scaling_doc(points: Sequence[tuple[int, int, Results]]) -> dict[str, dict[str, Any]]:
    """{"NxL": {"files", "layers", "summary", "runs"}} of the scaling points."""
    return {f"{n}x{nl}": {"files": n, "layers": nl, "summary": summary_table(res, SCALE_METRICS), "runs": res}
            for n, nl, res in points}


def scaling_markdown(sc: Mapping[str, Mapping[str, Any]], impls: Sequence[str]) -> str:
    """One row per (point, implementation) with the medians of each scaling metric."""
    head = ["files", "layers", "impl", *(label for _, label in SCALE_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in sc.values():
        for impl in impls:
            cells = []
            for m, _ in SCALE_METRICS:
                s = point["summary"][m].get(impl)
                cells.append("-" if s is None else f"{s['median']:.3g}")
            lines.append(f"| {point['files']:,} | {point['layers']} | {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(sc: Mapping[str, Mapping[str, Any]], impls: Sequence[str], path: str) -> bool:
    """find time, cat time, mount time and daemon RSS against files and against layers, written to ``path``;
    False (and nothing written) when matplotlib is not importable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("--plot: matplotlib is not importable; no plot written")
        return False
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    pts = list(sc.values())
    for row, (axis, fixed) in enumerate((("files", "layers"), ("layers", "files"))):
        groups: dict[int, list[Mapping[str, Any]]] = {}
        for p in pts:
            groups.setdefault(p[fixed], []).append(p)
        for col, m in enumerate(("find_first", "cat_sample", "mount", "rss_mb")):
            ax = axes[row][col]
            for fv, ps in groups.items():
                if len(ps) < 2:
                    continue
                ps = sorted(ps, key=lambda p: p[axis])
                for impl in impls:
                    ys = [(p[axis], p["summary"][m].get(impl)) for p in ps]
                    ys = [(x, s["median"]) for x, s in ys if s]
                    if ys:
                        ax.plot(*zip(*ys), marker="o", label=f"{impl} ({fixed}={fv})")
            ax.set_xscale("log")
            ax.set_xlabel(axis)
            ax.set_title(m)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    log.info("plot written to %s", path)
    return True
