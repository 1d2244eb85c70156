"""The Dockerfile instruction: one line's syntax, and its words and variables (pure: text in, values out).

Shared by a Dockerfile (``unionfs.build.dockerfile`` splits a file into these lines) and by the config
changes of ``commit --change`` and ``import --change`` (``unionfs.oci.mutate``). Syntax handled:

* instruction keywords in any case; ``--flag=value`` options at the start of FROM, RUN, COPY, ADD and
  HEALTHCHECK (only those each supports); the JSON ("exec") form of RUN, CMD, ENTRYPOINT, SHELL, COPY,
  ADD and VOLUME;
* ``ONBUILD INSTRUCTION`` (the trigger must itself parse and may not be ONBUILD, FROM or MAINTAINER).

Anything else (an unknown instruction, an unsupported flag such as ``RUN --mount``, a here-document) is a
``DockerfileError`` whose message starts with ``NAME:LINE:``.

``expand(word, env)`` substitutes ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:+alt}``, ``${VAR+alt}`` and ``${VAR:?message}`` and removes quotes and escapes as a POSIX shell
does (single quotes: literal; double quotes: expansion only). ``split_words`` splits on unquoted blanks,
keeping quotes for ``expand``. Which instruction expands what is the caller's business (docker's rules:
ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG and the flags).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping

from unionfs.errors import DockerfileError

#: every instruction we build, and the flags each accepts
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "FROM": ("platform",),
    "RUN": (),
    "CMD": (),
    "LABEL": (),
    "MAINTAINER": (),
    "EXPOSE": (),
    "ENV": (),
    "ADD": ("chown", "chmod"),
    "COPY": ("from", "chown", "chmod"),
    "ENTRYPOINT": (),
    "VOLUME": (),
    "USER": (),
    "WORKDIR": (),
    "ARG": (),
    "ONBUILD": (),
    "STOPSIGNAL": (),
    "HEALTHCHECK": ("interval", "timeout", "start-period", "start-interval", "retries"),
    "SHELL": (),
}
#: instructions whose arguments may be a JSON array of strings
JSON_FORMS = ("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME")
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Instruction:
    """One instruction as written.

    ``keyword`` is upper case; ``flags`` the ``--name=value`` options in order (value None for a bare
    ``--name``); ``args`` the text after the flags (continuations joined with nothing, as docker does);
    ``json`` the exec form's strings when the arguments are a JSON array, else None; ``line`` the 1-based
    line where the instruction starts; ``text`` the whole instruction on one line (for output and errors).
    """

    keyword: str
    args: str
    line: int
    text: str
    flags: tuple[tuple[str, str | None], ...] = ()
    json: tuple[str, ...] | None = None
    trigger: "Instruction | None" = None  # ONBUILD's instruction

    def flag(self, name: str) -> str | None:
        """The value of the last ``--name`` flag (``""`` for a bare flag), or None."""
        out = None
        for k, v in self.flags:
            if k == name:
                out = v if v is not None else ""
        return out


def syntax_error(name: str, line: int, message: str) -> DockerfileError:
    """The error for ``message`` at ``line`` of the file ``name``: ``NAME:LINE: message``."""
    return DockerfileError(f"{name}:{line}: {message}", line)


def _split_flags(rest: str) -> tuple[list[tuple[str, str | None]], str]:
    flags: list[tuple[str, str | None]] = []
    while rest.startswith("--"):
        m = re.match(r"--([^\s=]+)(?:=(\S*))?\s*", rest)
        if not m:
            break
        flags.append((m.group(1), m.group(2)))
        rest = rest[m.end():]
    return flags, rest


def json_array(args: str) -> tuple[str, ...] | None:
    """The strings of ``args`` when it is a JSON array of strings (the exec form), else None."""
    a = args.strip()
    if not a.startswith("["):
        return None
    try:
        val = json.loads(a)
    except ValueError:
        return None
    if isinstance(val, list) and all(isinstance(x, str) for x in val):
        return tuple(val)
    return None


def parse_instruction(text: str, line: int, name: str = "Dockerfile") -> Instruction:
    """Parse one logical line (continuations already joined). Raises DockerfileError."""
    keyword, _, rest = text.strip().partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    kw = keyword.upper()
    rest = rest.strip()
    if kw not in INSTRUCTIONS:
        raise syntax_error(name, line, f"unknown instruction: {keyword}")
    allowed = INSTRUCTIONS[kw]
    flags: list[tuple[str, str | None]] = []
    if kw in ("FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"):
        flags, rest = _split_flags(rest)
        for k, _v in flags:
            if k not in allowed:
                raise syntax_error(name, line, f"{kw} --{k} is not supported")
    trigger = None
    if kw == "ONBUILD":
        if not rest:
            raise syntax_error(name, line, "ONBUILD needs an instruction")
        trigger = parse_instruction(rest, line, name)
        if trigger.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise syntax_error(name, line, f"{trigger.keyword} is not allowed as an ONBUILD trigger")
    js = json_array(rest) if kw in JSON_FORMS else None
    if kw in ("RUN", "COPY", "ADD") and js is None and re.search(r"(^|\s)<<-?[\"']?[A-Za-z_]", rest) and kw != "RUN":
        raise syntax_error(name, line, f"here-documents in {kw} are not supported")
    if kw not in ("CMD", "ENTRYPOINT", "RUN") and not rest and kw != "HEALTHCHECK":
        raise syntax_error(name, line, f"{kw} requires at least one argument")
    if kw == "SHELL" and (js is None or not js):
        raise syntax_error(name, line, "SHELL requires the arguments to be in JSON form")
    return Instruction(kw, rest, line, text.strip(), tuple(flags), js, trigger)


# ---------------------------------------------------------------------------
# words and variables
# ---------------------------------------------------------------------------

def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split on blanks outside quotes; quotes and escapes are kept (``expand`` removes them)."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    i = 0
    in_word = False
    while i < len(text):
        c = text[i]
        if c == escape and quote != "'" and i + 1 < len(text):
            cur.append(c + text[i + 1])
            i += 2
            in_word = True
            continue
        if quote:
            if c == quote:
                quote = ""
            cur.append(c)
        elif c in "'\"":
            quote = c
            cur.append(c)
            in_word = True
        elif c in " \t":
            if in_word:
                words.append("".join(cur))
                cur = []
                in_word = False
        else:
            cur.append(c)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


class _Expander:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, quotes: bool, where: str) -> None:
        self.s, self.env, self.esc, self.quotes, self.where = text, env, escape, quotes, where
        self.i = 0

    def error(self, msg: str) -> DockerfileError:
        return DockerfileError(f"{self.where}{msg}")

    def run(self, stop: str = "") -> str:
        """Expand until the end or an unquoted, unescaped ``stop`` character (not consumed)."""
        out: list[str] = []
        quote = ""
        while self.i < len(self.s):
            c = self.s[self.i]
            if not quote and stop and c == stop:
                return "".join(out)
            if c == self.esc and self.quotes and quote != "'":
                nxt = self.s[self.i + 1] if self.i + 1 < len(self.s) else ""
                if quote == '"' and nxt not in ('"', "$", self.esc):
                    out.append(c)
                    self.i += 1
                    continue
                out.append(nxt)
                self.i += 2
                continue
            if c == "\\" and not self.quotes and self.s[self.i + 1:self.i + 2] == "$":
                out.append("$")
                self.i += 2
                continue
            if self.quotes and c in "'\"" and (not quote or quote == c):
                quote = "" if quote else c
                self.i += 1
                continue
            if c == "$" and quote != "'":
                out.append(self.variable())
                continue
            out.append(c)
            self.i += 1
        if quote:
            raise self.error(f"unmatched {quote} quote")
        return "".join(out)

    def variable(self) -> str:
        s = self.s
        self.i += 1  # the $
        if self.i >= len(s):
            return "$"
        if s[self.i] == "{":
            self.i += 1
            m = re.match(r"[a-zA-Z_][a-zA-Z0-9_]*", s[self.i:])
            if not m:
                raise self.error(f"bad substitution in {s!r}")
            name = m.group(0)
            self.i += len(name)
            if self.i >= len(s):
                raise self.error(f"missing }} in {s!r}")
            if s[self.i] == "}":
                self.i += 1
                return self.env.get(name, "")
            colon = s[self.i] == ":"
            if colon:
                self.i += 1
            op = s[self.i] if self.i < len(s) else ""
            if op not in "-+?" or not op:
                raise self.error(f"unsupported modifier in {s!r}")
            self.i += 1
            word = self.run(stop="}")
            if self.i >= len(s) or s[self.i] != "}":
                raise self.error(f"missing }} in {s!r}")
            self.i += 1
            val = self.env.get(name)
            is_set = val is not None and (val != "" or not colon)
            if op == "-":
                return val if is_set else word  # type: ignore[return-value]
            if op == "+":
                return word if is_set else ""
            if not is_set:
                raise self.error(f"{name}: {word or 'is not set'}")
            return val  # type: ignore[return-value]
        m = re.match(r"[a-zA-Z_][a-zA-Z0-9_]*", s[self.i:])
        if not m:
            return "$"
        self.i += len(m.group(0))
        return self.env.get(m.group(0), "")


def expand(word: str, env: Mapping[str, str], escape: str = "\\", *, quotes: bool = True,
           where: str = "") -> str:
    """Substitute variables in ``word`` from ``env``; with ``quotes`` also remove quotes and escapes.

    ``where`` prefixes error messages (``"Dockerfile:3: "``). Raises DockerfileError for a malformed
    substitution, an unmatched quote or a ``${VAR:?message}`` whose VAR is unset.
    """
    return _Expander(word, env, escape, quotes, where).run()


def key_values(text: str, env: Mapping[str, str], escape: str = "\\", *, where: str = "",
               keyword: str = "ENV") -> list[tuple[str, str]]:
    """ENV and LABEL arguments: ``K=V K2="v 2"`` pairs, or the legacy one-pair ``K value with blanks``."""
    words = split_words(text, escape)
    if not words:
        raise DockerfileError(f"{where}{keyword} requires at least one argument")
    if "=" not in words[0] or words[0].startswith("="):
        key = words[0]
        value = text.strip()[len(words[0]):].strip()
        if not value:
            raise DockerfileError(f"{where}{keyword} {key} needs a value (KEY=VALUE or KEY VALUE)")
        return [(expand(key, env, escape, where=where), expand(value, env, escape, where=where))]
    out = []
    for w in words:
        expanded = expand(w, env, escape, where=where)
        k, eq, v = expanded.partition("=")
        if not eq or not k:
            raise DockerfileError(f"{where}{keyword}: {w!r} is not KEY=VALUE")
        out.append((k, v))
    return out


def is_valid_arg_name(name: str) -> bool:
    """True for a name ARG and --build-arg accept."""
    return bool(_NAME.match(name))


__all__ = ["Instruction", "parse_instruction", "syntax_error", "expand", "split_words", "json_array", "key_values",
           "is_valid_arg_name", "INSTRUCTIONS", "JSON_FORMS"]
