"""The mount benchmark behind ``scripts/bench.py``, and the helpers the other benchmarks share.

Modules, bottom up (each imports only those above it):

- :mod:`benchlib.proc`: running and timing a command (also used by ``scripts/bench_build.py``,
  ``bench_registry.py`` and ``bench_unpack.py``);
- :mod:`benchlib.impls`: the names of the implementations compared (and unionfs variants such as
  ``unionfs+volatile``);
- :mod:`benchlib.signals`: SIGINT, SIGTERM and SIGHUP as KeyboardInterrupt, held while a mount is made or undone;
- :mod:`benchlib.data`: the cached layer directories the mount benchmark reads;
- :mod:`benchlib.mounts`: one timed mount session (writable or read-only), a thin adapter over the tests' mount
  harness (``tests/support/mount.py``), which owns every mount, unmount and daemon lookup;
- :mod:`benchlib.workloads`: the timed operations, run interleaved;
- :mod:`benchlib.report`: summaries, ratios, tables, goals, the JSON document and the plot;
- :mod:`benchlib.cli`: the command line, the only layer that prints.

Importing the package puts the repository (for ``unionfs``) and ``tests/`` (for ``support``, the harness)
first on ``sys.path``, so the benchmarks measure this checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the repository's root
REPO = Path(__file__).resolve().parents[2]

for _path in (REPO / "tests", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
