"""Resolve a path inside a root directory as a chrooted process would see it (pure path logic + lstat).

``resolve_in_root(root, path)`` walks ``path`` component by component, keeping a *virtual* path below
``root`` that never goes above it (``..`` at the root stays at the root), and follows every symlink it meets
with absolute link targets and ``..`` interpreted relative to ``root``: the result is always ``root`` or a
path below it, and none of its components below ``root`` is a symlink when the walk was made (the last one
only when ``follow_last=False``). A missing component (or one below a non-directory) is kept lexically and
the walk goes on, so a later ``..`` removes it again and the components after that are resolved (and
followed) as usual: ``/missing/../link`` is ``link`` followed. That is where the path would end up after the
missing directories were created: the semantics of ``openat2(RESOLVE_IN_ROOT)`` and of Go's
``filepath-securejoin`` (``SecureJoin``), which is the reference. Used for every host-side access to an
image's rootfs (COPY destinations, ``COPY --from`` sources, mount targets of RUN), where following a link
with the host's view of ``/`` would reach outside the rootfs.

``clean(path)`` is the lexical normalisation Docker applies to WORKDIR and COPY destinations (Go's
``path.Clean("/" + path)``): absolute, no ``.``, ``..`` or empty components, never above ``/``.

The result is a path string: a symlink swapped into it *after* the call is followed by whoever uses the
path. Callers that write must only do so where nothing else changes the tree concurrently (a build's own
mount), or re-check (see ``builder``).
"""

from __future__ import annotations

import errno
import os
import stat

from unionfs.errors import SymlinkLoopError

#: Linux's bound on symlinks followed in one lookup
MAX_SYMLINKS = 40


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def clean(path: str) -> str:
    """``path`` made absolute and cleaned lexically (no ``.``, ``..``, empty or trailing components; ``..``
    never above ``/``), as Docker cleans WORKDIR and COPY destinations. Pure string logic."""
    out: list[str] = []
    for p in _parts(path):
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return "/" + "/".join(out)


def resolve_in_root(root: str | os.PathLike[str], path: str, *, follow_last: bool = True) -> str:
    """The host path of ``path`` (absolute or relative to ``/``) inside ``root``; see the module docstring.

    Raises SymlinkLoopError (an OSError with ELOOP) after MAX_SYMLINKS links, and the OSError of an
    ``lstat`` that fails other than with ENOENT/ENOTDIR (e.g. EACCES).
    """
    root = os.path.abspath(os.fspath(root))
    todo = _parts(path)
    todo.reverse()  # a stack: the next component is todo[-1]
    done: list[str] = []  # the virtual path below root, each component a non-symlink or missing
    links = 0
    while todo:
        name = todo.pop()
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, name)
        try:
            st = os.lstat(candidate)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            done.append(name)  # missing: kept lexically, a later ".." removes it again
            continue
        if stat.S_ISLNK(st.st_mode) and (todo or follow_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise SymlinkLoopError(path, MAX_SYMLINKS)
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo.extend(reversed(_parts(target)))
            continue
        done.append(name)
    return os.path.join(root, *done) if done else root


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is ``root`` or below it (lexically, both made absolute)."""
    r = os.path.abspath(os.fspath(root))
    p = os.path.abspath(os.fspath(path))
    return p == r or p.startswith(r.rstrip("/") + "/")


__all__ = ["resolve_in_root", "clean", "inside", "MAX_SYMLINKS"]
