"""The build context: ``.dockerignore`` rules, COPY/ADD source patterns, and a digest of sources.

* ``IgnoreRules.parse(text)`` reads ``.dockerignore`` as docker (moby's ``patternmatcher``) does: one pattern
  a line, ``#`` comments, ``!`` re-includes, ``*`` and ``?`` within one path component, ``[...]`` classes,
  ``**`` for any number of components (``**/`` and an inner ``**`` match zero or more whole directories, a
  final ``**`` anything), a leading ``/`` ignored; the last matching rule decides, and a rule that matches
  a directory also covers everything below it. ``rules.excludes(context)`` is what COPY and ADD leave out:
  an excluded directory below which a ``!`` exception re-includes something is walked into, and kept with
  what is re-included (as docker). The Dockerfile and ``.dockerignore`` are read by the build whatever the
  rules say; the rules only decide whether COPY sees them.
* ``match_sources(root, pattern, ignored)`` expands one source (``*``, ``?``, ``[...]`` per component, as
  Go's ``filepath.Match``) to the sorted paths, relative to ``root``, that exist and are not ignored.
* ``digest_sources(root, rels, ignored)`` hashes the contents and metadata (type, mode, owner, size,
  mtime, link target, relative name) of those paths and everything below them: the cache key of a COPY.

Paths are always resolved inside ``root`` (``rootpath``): ``..`` and symlinks never leave the context.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Callable, Iterable

from unionfs.rootpath import resolve_in_root

GLOB_CHARS = "*?["
Ignored = Callable[[str], bool]


def _translate(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":
                    i += 1
                out.append(".*" if i >= len(pattern) else "(?:.*/)?")  # moby: "**" at the end, else "(.*/)?"
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class IgnoreRules:
    """Parsed ``.dockerignore`` rules: (regex, is an exception (``!``), the cleaned pattern) in file order."""

    rules: tuple[tuple[re.Pattern[str], bool, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "IgnoreRules":
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            if include:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            rules.append((_translate(line), include, line))
        return cls(tuple(rules))

    @classmethod
    def load(cls, context: str) -> "IgnoreRules":
        """The context's ``.dockerignore`` (no rules when it has none)."""
        try:
            with open(os.path.join(context, ".dockerignore"), encoding="utf-8") as f:
                return cls.parse(f.read())
        except FileNotFoundError:
            return cls()

    def ignored(self, rel: str) -> bool:
        """True when the context path ``rel`` ("a/b", no leading slash) is excluded."""
        if not self.rules:
            return False
        rel = rel.strip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for rx, include, _ in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not include
        return result

    def _may_reinclude_below(self, rel: str) -> bool:
        """Whether a ``!`` exception may match something below the directory ``rel``: its literal beginning
        (up to the first wildcard) and ``rel/`` agree (docker checks the exception's text begins with ``rel/``;
        this also walks in for exceptions such as ``!**/keep``)."""
        below = rel.strip("/") + "/"
        for _, include, pattern in self.rules:
            if include:
                literal = re.split(r"[*?\[\\]", pattern, maxsplit=1)[0]
                if below.startswith(literal) or literal.startswith(below):
                    return True
        return False

    def excludes(self, context: str) -> Ignored:
        """What COPY and ADD leave out of the context directory ``context``: a path ``ignored``, unless it is a
        directory with something below it that a ``!`` exception re-includes (then the directory is walked
        into and kept, with only what is not left out below it)."""
        if not any(include for _, include, _ in self.rules):
            return self.ignored
        seen: dict[str, bool] = {}

        def left_out(rel: str) -> bool:
            if rel not in seen:
                seen[rel] = self.ignored(rel) and not (self._may_reinclude_below(rel)
                                                       and _keeps_below(context, rel, left_out))
            return seen[rel]
        return left_out


def _keeps_below(context: str, rel: str, left_out: Ignored) -> bool:
    """Whether ``rel`` is a directory of ``context`` (not followed when a symlink) with an entry below it that
    is not ``left_out``."""
    host = resolve_in_root(context, rel, follow_last=False)
    try:
        if not stat.S_ISDIR(os.lstat(host).st_mode):
            return False
        names = os.listdir(host)
    except OSError:
        return False
    return any(not left_out(f"{rel}/{name}") for name in names)


def has_glob(pattern: str) -> bool:
    """True when a source uses wildcard characters."""
    return any(c in pattern for c in GLOB_CHARS)


def clean_source(src: str) -> str | None:
    """A source path made relative to its root ("" for the root itself); None when it leaves the root."""
    norm = os.path.normpath("/" + src).lstrip("/")
    parts = [p for p in src.replace("\\", "/").split("/") if p]
    depth = 0
    for p in parts:
        depth = depth - 1 if p == ".." else depth + (p != ".")
        if depth < 0:
            return None
    return "" if norm == "." else norm


def match_sources(root: str, pattern: str, ignored: Ignored | None = None) -> list[str]:
    """The existing, not ignored paths (relative to ``root``) a source pattern names, sorted."""
    rel = clean_source(pattern)
    if rel is None:
        return []
    if not has_glob(rel):
        if rel and ignored and ignored(rel):
            return []
        return [rel] if os.path.lexists(resolve_in_root(root, rel)) else []
    found: list[str] = []

    def walk(done: str, rest: list[str]) -> None:
        if not rest:
            if not (ignored and ignored(done)):
                found.append(done)
            return
        head, tail = rest[0], rest[1:]
        base = resolve_in_root(root, done) if done else root
        if not has_glob(head):
            cand = f"{done}/{head}" if done else head
            if os.path.lexists(resolve_in_root(root, cand)):
                walk(cand, tail)
            return
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return
        for name in names:
            if fnmatch.fnmatchcase(name, head):
                walk(f"{done}/{name}" if done else name, tail)

    walk("", rel.split("/"))
    return sorted(found)


def _walk(host: str, rel: str, ignored: Ignored | None, top: bool) -> Iterable[tuple[str, str, os.stat_result]]:
    st = os.stat(host) if top else os.lstat(host)
    yield rel, host, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(host)):
            crel = f"{rel}/{name}" if rel else name
            if ignored and ignored(crel):
                continue
            yield from _walk(os.path.join(host, name), crel, ignored, False)


def digest_sources(root: str, rels: Iterable[str], ignored: Ignored | None = None) -> str:
    """A sha256 over every named path and everything below it (names, metadata and contents)."""
    h = hashlib.sha256()
    for top in rels:
        host = resolve_in_root(root, top)
        h.update(b"\0source\0" + top.encode("utf-8", "surrogateescape"))
        for rel, path, st in _walk(host, top, ignored, True):
            meta = (f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0{st.st_uid}\0{st.st_gid}\0"
                    f"{st.st_size}\0{st.st_mtime_ns}\0")
            h.update(meta.encode("utf-8", "surrogateescape"))
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            h.update(b"\n")
    return "sha256:" + h.hexdigest()


__all__ = ["IgnoreRules", "match_sources", "digest_sources", "has_glob", "clean_source"]
