"""Dockerfile parsing (pure: text in, values out; no files, no store).

``parse(text)`` gives a ``Dockerfile``: the parser directives, the ``ARG``s before the first ``FROM`` and the
stages, each a ``FROM`` with its instructions. This module splits the file into instructions:

* parser directives at the very top (``# escape=``` ``, ``# syntax=...`` is accepted and ignored);
* comments (``#`` as the first non-blank character of a line, also inside a continued instruction), blank
  lines, line continuations with the escape character (default ``\\``) at the end of a line.

Each instruction's own syntax, and word splitting and variable expansion, are ``unionfs.oci.instruction``'s
(shared with ``commit --change``). Errors are ``DockerfileError`` whose message starts with ``NAME:LINE:``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from unionfs.oci.instruction import Instruction, parse_instruction, syntax_error

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9._-]*$")


@dataclass
class Stage:
    """``FROM base [AS name]`` and the instructions up to the next FROM. ``index`` counts from 0."""

    index: int
    base: str
    name: str | None
    platform: str | None
    from_instruction: Instruction
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    """A parsed Dockerfile: ``global_args`` (ARGs before the first FROM), ``stages``, the escape character."""

    global_args: list[Instruction]
    stages: list[Stage]
    escape: str = "\\"
    name: str = "Dockerfile"

    def stage(self, ref: str) -> Stage | None:
        """The stage named ``ref`` (case-insensitive), or with that index; None if there is none."""
        low = ref.lower()
        for s in self.stages:
            if s.name == low:
                return s
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


def _directives(lines: list[str], name: str) -> tuple[dict[str, str], int]:
    """Parser directives at the top; returns them and the index of the first line after them."""
    found: dict[str, str] = {}
    i = 0
    for i, raw in enumerate(lines):
        m = _DIRECTIVE.match(raw.strip()) if raw.strip().startswith("#") else None
        if not m:
            return found, i
        key = m.group(1).lower()
        if key in found:
            raise syntax_error(name, i + 1, f"parser directive {key!r} given twice")
        found[key] = m.group(2)
    return found, len(lines)


def _logical_lines(lines: list[str], start: int, escape: str) -> list[tuple[int, str]]:
    """Join continued lines; drop comments and blank lines. Returns (first line number, text) pairs."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    first = 0
    cont = re.compile(re.escape(escape) + r"[ \t]*$")
    for idx in range(start, len(lines)):
        raw = lines[idx].rstrip("\r")
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and (stripped.startswith("#") or not stripped):
            continue  # a comment or an empty line inside a continued instruction
        if not buf:
            first = idx + 1
            raw = raw.lstrip()
        m = cont.search(raw)
        if m:
            buf.append(raw[:m.start()])
            continue
        buf.append(raw)
        out.append((first, "".join(buf)))
        buf = []
    if buf:
        out.append((first, "".join(buf)))
    return out


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile; see the module docstring. Raises DockerfileError naming the line."""
    lines = text.split("\n")
    directives, start = _directives(lines, name)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise syntax_error(name, 1, f"invalid escape character {escape!r}: must be \\ or `")
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for line, logical in _logical_lines(lines, start, escape):
        ins = parse_instruction(logical, line, name)
        if ins.keyword == "FROM":
            stages.append(_stage(ins, len(stages), stages, name))
        elif not stages:
            if ins.keyword != "ARG":
                raise syntax_error(name, line, f"{ins.keyword} before the first FROM (only ARG may come first)")
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise syntax_error(name, 1, "no FROM instruction")
    return Dockerfile(global_args, stages, escape, name)


def _stage(ins: Instruction, index: int, earlier: list[Stage], name: str) -> Stage:
    words = ins.args.split()
    stage_name = None
    if len(words) == 3 and words[1].lower() == "as":
        stage_name = words[2].lower()
        if not _STAGE_NAME.match(stage_name):
            raise syntax_error(name, ins.line, f"invalid stage name {words[2]!r}")
        if any(s.name == stage_name for s in earlier):
            raise syntax_error(name, ins.line, f"duplicate stage name {words[2]!r}")
    elif len(words) != 1:
        raise syntax_error(name, ins.line, "FROM takes an image and an optional AS name")
    return Stage(index, words[0], stage_name, ins.flag("platform"), ins)


__all__ = ["Stage", "Dockerfile", "parse"]
