"""The value the store hands to whoever mounts: which directories make up a rootfs.

The store never mounts anything itself (containerd's ``Prepare``); it answers with a MountPlan.
"""

from __future__ import annotations


class MountPlan:
    """Directories for one union mount.

    ``lowers`` are read-only layer directories, **base first** (``lowers[0]`` is the bottom layer, as in a
    manifest). ``upper`` and ``work`` are both set (a writable mount, on one filesystem) or both None (a
    read-only mount). ``name`` is the store's container name when the plan comes from the store.

    A frozen value (equal, hashed and shown by its fields), written out rather than a dataclass: the command
    that mounts then loads no :mod:`dataclasses` (and the inspect, ast and dis modules behind it).
    """

    __slots__ = ("lowers", "upper", "work", "name")

    lowers: tuple[str, ...]
    upper: str | None
    work: str | None
    name: str | None

    def __init__(self, lowers: tuple[str, ...], upper: str | None = None, work: str | None = None,
                 name: str | None = None) -> None:
        if (upper is None) != (work is None):
            raise ValueError("upper and work must be given together")
        if not lowers and upper is None:
            raise ValueError("a mount needs at least one lower or an upper")
        for field, value in (("lowers", lowers), ("upper", upper), ("work", work), ("name", name)):
            object.__setattr__(self, field, value)

    def __setattr__(self, field: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {field!r}: a MountPlan is frozen")

    def __delattr__(self, field: str) -> None:
        raise AttributeError(f"cannot delete field {field!r}: a MountPlan is frozen")

    def _fields(self) -> tuple[tuple[str, ...], str | None, str | None, str | None]:
        return (self.lowers, self.upper, self.work, self.name)

    def __reduce__(self) -> tuple[type[MountPlan], tuple[tuple[str, ...], str | None, str | None, str | None]]:
        return (MountPlan, self._fields())  # copy and pickle through __init__

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"MountPlan(lowers={self.lowers!r}, upper={self.upper!r}, work={self.work!r}, name={self.name!r})"

    @property
    def read_only(self) -> bool:
        """True when there is no upper directory."""
        return self.upper is None
