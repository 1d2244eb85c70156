"""Resolve a path inside a root directory as a chrooted process would see it (pure path logic + lstat).

``resolve_in_root(root, path)`` follows symlinks component by component, interpreting absolute link targets
and ``..`` relative to ``root``, never above it: the result is always ``root`` or a path below it. The final
component is followed too unless ``follow_last=False``. A missing component ends the walk: the rest of the
path is appended literally (so a caller can create it). Used for every host-side access to an image's
rootfs (COPY destinations, ``COPY --from`` sources, mount targets of RUN), where following a link with the
host's view of ``/`` would reach outside the rootfs.
"""

from __future__ import annotations

import errno
import os
import stat

#: Linux's bound on symlinks followed in one lookup
MAX_SYMLINKS = 40


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root: str | os.PathLike[str], path: str, *, follow_last: bool = True) -> str:
    """The host path of ``path`` (absolute or relative to ``/``) inside ``root``; see the module docstring.

    Raises OSError(ELOOP) after MAX_SYMLINKS links.
    """
    root = os.path.abspath(os.fspath(root))
    todo = _parts(path)
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, name)
        try:
            st = os.lstat(candidate)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                rest = [name]
                for p in todo:
                    if p != "..":
                        rest.append(p)
                    elif rest:
                        rest.pop()
                    elif done:
                        done.pop()
                return os.path.join(root, *done, *rest)
            raise
        if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = _parts(target) + todo
            continue
        done.append(name)
    return os.path.join(root, *done) if done else root


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is ``root`` or below it (lexically, both made absolute)."""
    r = os.path.abspath(os.fspath(root))
    p = os.path.abspath(os.fspath(path))
    return p == r or p.startswith(r.rstrip("/") + "/")


__all__ = ["resolve_in_root", "inside", "MAX_SYMLINKS"]
