"""The implementations the mount benchmark compares, by the names used on the command line and in the output.

``unionfs``, ``fuse-overlayfs`` and ``kernel`` (the kernel's overlayfs); a unionfs *variant* is ``unionfs``
followed by ``+OPT`` items, each mounted as ``-o OPT`` (``unionfs+writeback+volatile``).
"""

from __future__ import annotations

from typing import Sequence

#: the implementations, in their default column order
IMPLS = ("unionfs", "fuse-overlayfs", "kernel")
#: the ones unionfs is compared with (the ratio columns)
REFERENCES = ("fuse-overlayfs", "kernel")


def base_impl(impl: str) -> str:
    """``unionfs+writeback`` -> ``unionfs``: a variant is unionfs with ``-o`` options after ``+``."""
    return impl.partition("+")[0]


def variant_opts(impl: str) -> list[str]:
    """The ``-o`` options of a unionfs variant (``unionfs+writeback+volatile`` -> [writeback, volatile])."""
    return [o for o in impl.split("+")[1:] if o]


def ours(impls: Sequence[str]) -> list[str]:
    """The unionfs columns (the plain one and its variants), in their order in ``impls``."""
    return [i for i in impls if base_impl(i) == "unionfs"]
