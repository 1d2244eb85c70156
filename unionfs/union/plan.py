"""The value the store hands to whoever mounts: which directories make up a rootfs.

The store never mounts anything itself (containerd's ``Prepare``); it answers with a MountPlan.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MountPlan:
    """Directories for one union mount.

    ``lowers`` are read-only layer directories, **base first** (``lowers[0]`` is the bottom layer, as in a
    manifest). ``upper`` and ``work`` are both set (a writable mount, on one filesystem) or both None (a
    read-only mount). ``name`` is the store's container name when the plan comes from the store.
    """

    lowers: tuple[str, ...]
    upper: str | None = None
    work: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.upper is None) != (self.work is None):
            raise ValueError("upper and work must be given together")
        if not self.lowers and self.upper is None:
            raise ValueError("a mount needs at least one lower or an upper")

    @property
    def read_only(self) -> bool:
        """True when there is no upper directory."""
        return self.upper is None
