"""Go's text/template, as docker's and podman's ``--format`` and ``inspect -f`` use it: a pure module (no FUSE,
no HTTP, no store), so the formatting of every listing verb is one piece of code with its own tests.

No maintained Python library implements Go's templates (PyPI has one CGo wrapper, 0.0.x); this module covers
what scripts write for docker:

* actions ``{{.A.B}}``, ``{{.}}``, ``{{$}}``, ``{{$v := ...}}``, ``{{$v = ...}}``, ``{{$v.A}}``, pipelines
  ``{{.X | json}}``, parenthesised pipelines ``(index .A 0).B``, comments ``{{/* ... */}}``, trimming ``{{-``
  and ``-}}``, literals (Go strings, raw strings, chars, numbers, ``true``, ``false``, ``nil``);
* ``if``/``else if``/``else``, ``range`` (slices, maps in key order, integers; ``$i, $v :=``; ``else``;
  ``break``, ``continue``), ``with``/``else with``/``else``, each closed by ``end``;
* Go's functions ``and or not len index slice print printf println eq ne lt le gt ge html urlquery`` and
  docker's ``json split join title lower upper pad truncate``.

``define``, ``template``, ``block`` and ``js``/``call`` are refused at parse time (a :class:`TemplateError`).

**Data** is what JSON decodes to (dicts, lists, strings, numbers, booleans, None), with two Go notions:

* a :class:`Struct` is a Go struct: asking it for a field it lacks is an error ("can't evaluate field F in type
  T"), as with docker's typed data; a plain dict is a Go map: a missing key gives "no value", printed
  ``<no value>``;
* :data:`NIL_SLICE`, :data:`NIL_MAP`, :data:`NIL_POINTER` are Go's typed nils (printed ``[]``, ``map[]``,
  ``<nil>``; ``null`` in JSON); a bare None is a nil interface (``<no value>`` at the top, ``<nil>`` inside a
  list or map, ``null`` in JSON).

**Printing** follows Go's fmt ``%v``: lists ``[a b c]``, maps ``map[k:v]`` (keys sorted), structs
``{v1 v2}``, floats as Go's shortest ``%g``; ``json`` is Go's encoding/json without HTML escaping, as docker
sets it (compact; map keys sorted, struct fields in their order).

**Tables** (:func:`format_rows`): docker's ``table`` prefix prints a header row (the template run over the
header names, with the string functions passing the header through) and aligns columns as Go's tabwriter with
docker's settings (minimum width 10, padding 3); ``\\t`` and ``\\n`` typed as two characters are a tab and a
newline, as docker reads them.

Every error is a :class:`~unionfs.errors.TemplateError`, one line, in Go's shape: ``template parsing error:
template: :1: function "foo" not defined`` for a template that does not parse, ``template: :1:2: executing ""
at <.Foo>: can't evaluate field Foo in type image`` for one that fails on the data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from unionfs.errors import TemplateError

__all__ = ["Struct", "GoNil", "NIL_SLICE", "NIL_MAP", "NIL_POINTER", "Template", "parse", "render",
           "format_rows", "tabwrite", "go_string", "go_json"]


# --- Go values -------------------------------------------------------------------------------------------------
class Struct(dict):  # type: ignore[type-arg]
    """A Go struct: its fields (a dict, in declaration order) and its type's name (for messages). A field it does
    not have is an error, where a plain dict (a Go map) gives "no value"."""

    def __init__(self, type_name: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(fields or {})
        self.type_name = type_name


@dataclass(frozen=True)
class GoNil:
    """A typed Go nil: ``text`` is how fmt prints it (``[]``, ``map[]``, ``<nil>``); ``kind`` slice, map or
    pointer. JSON ``null``, length 0, false, nothing to range over."""

    text: str
    kind: str


NIL_SLICE = GoNil("[]", "slice")
NIL_MAP = GoNil("map[]", "map")
NIL_POINTER = GoNil("<nil>", "pointer")

#: what a missing map key or a nil interface evaluates to, and prints as at the top of an action
NO_VALUE = "<no value>"


def go_type(v: Any) -> str:
    """The Go type name a message gives for ``v``."""
    if isinstance(v, Struct):
        return v.type_name
    if isinstance(v, GoNil):
        return {"slice": "[]interface {}", "map": "map[string]interface {}"}.get(v.kind, "*struct")
    for t, name in ((bool, "bool"), (int, "int"), (float, "float64"), (str, "string"),
                    (list, "[]interface {}"), (tuple, "[]interface {}"), (dict, "map[string]interface {}")):
        if isinstance(v, t):
            return name
    return "interface {}" if v is None else type(v).__name__


def _go_float(f: float) -> str:
    """``f`` as Go's ``%v`` prints a float64 (the shortest ``%g`` that reads back the same)."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    for p in range(1, 18):
        s = f"{f:.{p}g}"
        if float(s) == f:
            break
    if "e" in s:  # Go: at least two exponent digits (Python gives the same: 1e+06)
        mant, exp = s.split("e")
        s = f"{mant}e{exp[0]}{int(exp[1:]):02d}"
    return s


def go_string(v: Any, top: bool = True) -> str:
    """``v`` as Go's fmt ``%v`` prints it (see the module's docstring); ``top``: a nil interface is
    ``<no value>`` (what text/template prints for it), ``<nil>`` inside a list or map."""
    if v is None:
        return NO_VALUE if top else "<nil>"
    if isinstance(v, GoNil):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (str, int)):
        return str(v)
    if isinstance(v, Struct):
        return "{" + " ".join(go_string(x, False) for x in v.values()) + "}"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_string(k, False)}:{go_string(v[k], False)}" for k in _sorted_keys(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_string(x, False) for x in v) + "]"
    return str(v)


def _sorted_keys(m: Mapping[Any, Any]) -> list[Any]:
    """A map's keys in the order Go prints and ranges over them (sorted)."""
    try:
        return sorted(m)
    except TypeError:
        return sorted(m, key=str)


def go_json(v: Any) -> str:
    """``v`` as Go's encoding/json writes it with HTML escaping off (docker's ``json`` function): compact, map keys
    sorted, struct fields in order, non-ASCII as UTF-8 (U+2028 and U+2029 escaped), typed nils ``null``."""
    def plain(x: Any) -> Any:
        if isinstance(x, GoNil):
            return None
        if isinstance(x, Struct):
            return {k: plain(val) for k, val in x.items()}
        if isinstance(x, dict):
            return {str(k): plain(x[k]) for k in _sorted_keys(x)}
        if isinstance(x, (list, tuple)):
            return [plain(i) for i in x]
        if isinstance(x, float) and x.is_integer() and abs(x) < 1e21:
            return int(x)  # Go writes 3.0 as 3
        return x

    text = json.dumps(plain(v), separators=(",", ":"), ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def truth(v: Any) -> bool:
    """Go's truth of a value in ``if``, ``with``, ``and``, ``or``, ``not``: false, 0, "", nil and empty lists and
    maps are false; a struct is true."""
    if isinstance(v, Struct):
        return True
    if isinstance(v, GoNil):
        return False
    return bool(v)


# --- lexing ------------------------------------------------------------------------------------------------------
_SPACE = " \t\r\n"
_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<declare>:=)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.[^']*)')
  | (?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_]\w*)+)
  | (?P<variable>\$\w*)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<assign>=)
  | (?P<comma>,)
""", re.X)


@dataclass(frozen=True)
class Tok:
    """One token of an action: its kind (a group name of ``_TOKEN``), text and offset in the template."""

    kind: str
    text: str
    pos: int


def _line_col(text: str, pos: int) -> tuple[int, int]:
    """Go's position of byte ``pos``: the 1-based line and the 0-based offset in that line."""
    before = text[:pos]
    return before.count("\n") + 1, pos - (before.rfind("\n") + 1)


class _Lexer:
    """Splits a template into text and actions, applying the trim markers."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template parsing error: template: :{_line_col(self.text, pos)[0]}: {msg}")

    def pieces(self) -> Iterator[tuple[str, Any, int]]:
        """("text", str, pos) and ("action", [Tok...], pos) in order; comments dropped."""
        text, i, n = self.text, 0, len(self.text)
        trim_next = False  # the action before ended with " -}}"
        while True:
            j = text.find("{{", i)
            chunk = text[i:] if j < 0 else text[i:j]
            if trim_next:
                chunk = chunk.lstrip(_SPACE)
            if j < 0:
                if chunk:
                    yield "text", chunk, i
                return
            start = j + 2
            if text.startswith("-", start) and start + 1 < n and text[start + 1] in _SPACE:
                chunk = chunk.rstrip(_SPACE)
                start += 2
            if chunk:
                yield "text", chunk, i
            end, trim_next = self._action_end(start, j)
            body = text[start:end]
            if body.strip(_SPACE).startswith("/*"):
                if not body.strip(_SPACE).endswith("*/"):
                    raise self.error(j, "unclosed comment")
            else:
                yield "action", self._tokens(body, start), j
            i = end + (3 if trim_next else 2)

    def _action_end(self, start: int, open_pos: int) -> tuple[int, bool]:
        """Where the action from ``start`` ends (the offset of its ``}}`` or `` -}}``'s ``-``), and whether it
        trims. Quoted strings may hold ``}}``."""
        text, k = self.text, start
        while k < len(text):
            c = text[k]
            if c in "\"'`":
                m = _TOKEN.match(text, k)
                if not m or m.lastgroup not in ("string", "raw", "char"):
                    raise self.error(k, "unterminated quoted string")
                k = m.end()
                continue
            if text.startswith("}}", k):
                if k - 2 >= start and text[k - 1] == "-" and text[k - 2] in _SPACE:
                    return k - 1, True
                return k, False
            k += 1
        raise self.error(open_pos, "unclosed action")

    def _tokens(self, body: str, offset: int) -> list[Tok]:
        toks, k = [], 0
        while k < len(body):
            m = _TOKEN.match(body, k)
            if not m:
                raise self.error(offset + k, f"unexpected {body[k]!r} in command")
            if m.lastgroup != "space":
                toks.append(Tok(str(m.lastgroup), m.group(), offset + k))
            k = m.end()
        return toks


# --- the parse tree ---------------------------------------------------------------------------------------------
@dataclass
class Node:
    """A node of the parse tree; ``pos``: its offset in the template (for messages)."""

    pos: int


@dataclass
class Text(Node):
    text: str


@dataclass
class Operand(Node):
    """One argument: a literal, ``.``, a field chain, a variable (with fields), an identifier (function),
    or a parenthesised pipeline (with fields). ``source``: its text, for messages."""

    kind: str
    value: Any
    fields: tuple[str, ...] = ()
    source: str = ""


@dataclass
class Command(Node):
    args: list[Operand]


@dataclass
class Pipeline(Node):
    decl: list[str]
    assign: bool
    cmds: list[Command]
    source: str = ""


@dataclass
class Action(Node):
    pipe: Pipeline


@dataclass
class Branch(Node):
    """``if``, ``range`` or ``with``: the pipeline, its body, and the ``else`` body (another Branch for an
    ``else if``/``else with``)."""

    kind: str
    pipe: Pipeline
    body: list[Node]
    orelse: list[Node] = field(default_factory=list)


@dataclass
class Jump(Node):
    """``break`` or ``continue`` inside a range."""

    kind: str


_KEYWORDS = ("if", "else", "end", "range", "with", "break", "continue", "define", "template", "block")
_UNSUPPORTED = ("define", "template", "block")


class _Parser:
    def __init__(self, text: str) -> None:
        self.lexer = _Lexer(text)
        self.pieces = list(self.lexer.pieces())
        self.i = 0
        self.range_depth = 0

    def error(self, pos: int, msg: str) -> TemplateError:
        return self.lexer.error(pos, msg)

    def parse(self) -> list[Node]:
        nodes, stop = self.list_until(())
        assert stop is None
        return nodes

    def list_until(self, stops: tuple[str, ...]) -> tuple[list[Node], tuple[str, list[Tok], int] | None]:
        """Nodes up to an action starting with one of ``stops`` (returned with its tokens), or the end."""
        nodes: list[Node] = []
        while self.i < len(self.pieces):
            kind, value, pos = self.pieces[self.i]
            self.i += 1
            if kind == "text":
                nodes.append(Text(pos, value))
                continue
            toks: list[Tok] = value
            if not toks:
                raise self.error(pos, "missing value for command")
            word = toks[0].text if toks[0].kind == "ident" else ""
            if word in stops:
                return nodes, (word, toks, pos)
            if word in ("else", "end"):
                raise self.error(pos, f"unexpected {{{{{word}}}}}")
            if word in _UNSUPPORTED:
                raise self.error(pos, f"{{{{{word}}}}} is not supported by unionfs")
            if word in ("if", "range", "with"):
                nodes.append(self.branch(word, toks[1:], pos))
            elif word in ("break", "continue"):
                if not self.range_depth:
                    raise self.error(pos, f"{{{{{word}}}}} outside {{{{range}}}}")
                if len(toks) > 1:
                    raise self.error(pos, f"unexpected {toks[1].text!r} in {{{{{word}}}}}")
                nodes.append(Jump(pos, word))
            else:
                nodes.append(Action(pos, self.pipeline(toks, pos, decl_ok=True)))
        if stops:
            raise self.error(len(self.lexer.text), "unexpected EOF")
        return nodes, None

    def branch(self, kind: str, toks: list[Tok], pos: int) -> Branch:
        pipe = self.pipeline(toks, pos, decl_ok=True, ranging=kind == "range")
        if kind == "range":
            self.range_depth += 1
        body, stop = self.list_until(("else", "end"))
        if kind == "range":
            self.range_depth -= 1
        node = Branch(pos, kind, pipe, body)
        assert stop is not None
        word, stoks, spos = stop
        if word == "else":
            rest = stoks[1:]
            if rest and rest[0].kind == "ident" and rest[0].text in ("if", "with") and kind != "range":
                # {{else if ...}} / {{else with ...}}: a nested branch that ends with this one's {{end}}
                node.orelse = [self.branch(rest[0].text, rest[1:], spos)]
                return node
            if rest:
                raise self.error(spos, f"unexpected {rest[0].text!r} in else")
            node.orelse, stop = self.list_until(("end",))
            assert stop is not None
            stoks = stop[1]
        if len(stoks) > 1:
            raise self.error(spos, f"unexpected {stoks[1].text!r} in end")
        return node

    def pipeline(self, toks: list[Tok], pos: int, decl_ok: bool, ranging: bool = False) -> Pipeline:
        decl: list[str] = []
        assign = False
        k = 0
        # $x := ... | $x = ... | range $i, $v := ...
        if decl_ok and toks and toks[0].kind == "variable":
            names = [toks[0].text]
            k = 1
            if ranging and len(toks) > 2 and toks[1].kind == "comma" and toks[2].kind == "variable":
                names.append(toks[2].text)
                k = 3
            if k < len(toks) and toks[k].kind in ("declare", "assign"):
                decl, assign = names, toks[k].kind == "assign"
                k += 1
            else:
                k = 0
        source = self.lexer.text[toks[0].pos:toks[-1].pos + len(toks[-1].text)] if toks else ""
        cmds: list[Command] = []
        args: list[Operand] = []
        rest = toks[k:]
        j = 0
        while j < len(rest):
            t = rest[j]
            if t.kind == "pipe":
                if not args:
                    raise self.error(t.pos, "missing command before |")
                cmds.append(Command(args[0].pos, args))
                args = []
                j += 1
                continue
            if t.kind == "ident" and t.text in _KEYWORDS:
                raise self.error(t.pos, f"unexpected {t.text!r} in command")
            operand, j = self.operand(rest, j)
            args.append(operand)
        if not args:
            raise self.error(pos, "missing value for command" if not cmds else "missing command after |")
        cmds.append(Command(args[0].pos, args))
        return Pipeline(pos, decl, assign, cmds, source)

    def operand(self, toks: list[Tok], j: int) -> tuple[Operand, int]:
        t = toks[j]
        if t.kind == "lparen":
            depth, k = 1, j + 1
            while k < len(toks) and depth:
                depth += {"lparen": 1, "rparen": -1}.get(toks[k].kind, 0)
                k += 1
            if depth:
                raise self.error(t.pos, "unclosed left paren")
            inner = self.pipeline(toks[j + 1:k - 1], t.pos, decl_ok=False)
            op = Operand(t.pos, "pipe", inner, source=f"({inner.source})")
            j = k
        elif t.kind in ("rparen", "declare", "assign", "comma"):
            raise self.error(t.pos, f"unexpected {t.text!r} in operand")
        else:
            op = Operand(t.pos, t.kind, self.literal(t), source=t.text)
            if t.kind == "ident" and t.text in ("true", "false", "nil"):
                op = Operand(t.pos, "nil" if t.text == "nil" else "bool", self.literal(t), source=t.text)
            elif t.kind == "field":
                op = Operand(t.pos, "dot", None, tuple(t.text[1:].split(".")), t.text)
            elif t.kind == "variable":
                op = Operand(t.pos, "variable", t.text, source=t.text)
            j += 1
            if t.kind == "ident" and t.text not in _FUNCS and t.text not in ("true", "false", "nil"):
                raise self.error(t.pos, f'function "{t.text}" not defined')
        # chained fields right after: (pipeline).A.B, $x.A
        if j < len(toks) and toks[j].kind == "field" and toks[j].pos == toks[j - 1].pos + len(toks[j - 1].text):
            if op.kind not in ("pipe", "variable", "dot"):
                raise self.error(toks[j].pos, f"unexpected {toks[j].text!r} in operand")
            op = Operand(op.pos, op.kind, op.value, op.fields + tuple(toks[j].text[1:].split(".")),
                         op.source + toks[j].text)
            j += 1
        return op, j

    def literal(self, t: Tok) -> Any:
        if t.kind == "string":
            return _unquote(t.text[1:-1], self.error, t.pos)
        if t.kind == "raw":
            return t.text[1:-1]
        if t.kind == "char":
            s = _unquote(t.text[1:-1], self.error, t.pos)
            if len(s) != 1:
                raise self.error(t.pos, f"malformed character constant: {t.text}")
            return ord(s)
        if t.kind == "number":
            text = t.text.replace("_", "")
            try:
                if re.fullmatch(r"[+-]?0[xXoObB].*", text):
                    return int(text, 0)
                if re.fullmatch(r"[+-]?\d+", text):
                    return int(text, 8) if len(text.lstrip("+-")) > 1 and text.lstrip("+-")[0] == "0" else int(text)
                return float(text)
            except ValueError:
                raise self.error(t.pos, f"bad number syntax: {t.text!r}") from None
        if t.kind == "ident" and t.text in ("true", "false", "nil"):
            return {"true": True, "false": False}.get(t.text)
        return t.text


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
            "'": "'"}


def _unquote(body: str, error: Callable[[int, str], TemplateError], pos: int) -> str:
    """A Go quoted string's (or char's) content with its escapes decoded."""
    def sub(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] in _ESCAPES:
            return _ESCAPES[e[0]]
        if e[0] in "xuU":
            return chr(int(e[1:], 16))
        return chr(int(e, 8))
    try:
        return re.sub(r"\\([abfnrtv\\\"']|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3})", sub, body)
    except (ValueError, OverflowError):
        raise error(pos, "invalid syntax in quoted string") from None


# --- functions ------------------------------------------------------------------------------------------------
class _ExecError(Exception):
    """An error while executing, before the position is added."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _want(name: str, v: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is int):
        raise _ExecError(f"error calling {name}: wrong type for value; expected {what}; got {go_type(v)}")
    return v


def _fn_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, GoNil):
        return 0
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    raise _ExecError(f"error calling len: len of type {go_type(v)}")


def _fn_index(v: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(v, GoNil) and v.kind == "map":
            return None
        if isinstance(v, (list, tuple, str, GoNil)) and not isinstance(v, Struct):
            seq = [] if isinstance(v, GoNil) else v
            if not isinstance(k, int) or isinstance(k, bool):
                raise _ExecError(f"error calling index: cannot index slice/array with type {go_type(k)}")
            if not 0 <= k < len(seq):
                raise _ExecError(f"error calling index: index out of range: {k}")
            v = seq[k] if not isinstance(seq, str) else seq.encode()[k]
        elif isinstance(v, dict) and not isinstance(v, Struct):
            v = v.get(k)
        elif v is None:
            raise _ExecError("error calling index: index of untyped nil")
        else:
            raise _ExecError(f"error calling index: can't index item of type {go_type(v)}")
    return v


def _fn_slice(v: Any, *idx: Any) -> Any:
    if not isinstance(v, (list, tuple, str)) or len(idx) > 2:
        raise _ExecError(f"error calling slice: can't slice item of type {go_type(v)}")
    for i in idx:
        _want("slice", i, int, "int")
    lo, hi = (list(idx) + [0, len(v)][len(idx):])[:2]
    if not 0 <= lo <= hi <= len(v):
        raise _ExecError(f"error calling slice: index out of range: {hi if hi > len(v) else lo}")
    return v[lo:hi]


def _fn_print(*args: Any) -> str:
    """fmt.Sprint: a blank between two operands when neither is a string."""
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_string(a, top=False)
    return out


_VERB = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d+)?)?([a-zA-Z%])")


def _fn_printf(fmt: Any, *args: Any) -> str:
    """fmt.Sprintf for the verbs scripts use: %v %s %d %q %x %X %t %f %e %g %c %%, with flags, width and
    precision; a missing operand prints ``%!v(MISSING)``, extra ones ``%!(EXTRA type=value)``."""
    _want("printf", fmt, str, "string")
    it = iter(args)
    used = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal used
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            return "%"
        try:
            v = next(it)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        used += 1
        text = _verb(verb, v, flags, prec)
        if width and width != "*":
            text = text.ljust(int(width)) if "-" in flags else (
                text.rjust(int(width), "0") if "0" in flags and verb in "dfeEgGxX" else text.rjust(int(width)))
        return text

    out = _VERB.sub(sub, fmt)
    if used < len(args):
        out += "%!(EXTRA " + ", ".join(f"{go_type(a)}={go_string(a, False)}" for a in args[used:]) + ")"
    return out


def _verb(verb: str, v: Any, flags: str, prec: str | None) -> str:
    """One operand of printf by its verb (Go's text for a wrong one: ``%!d(string=x)``)."""
    p = int(prec) if prec and prec != "*" else None
    if verb in "vs" and not (verb == "s" and isinstance(v, (int, float)) and not isinstance(v, bool)):
        s = go_string(v, top=False)
        return s[:p] if p is not None and isinstance(v, str) else s
    if verb == "q" and isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if verb == "t" and isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and not isinstance(v, bool):
        if verb == "d":
            return f"{v:+d}" if "+" in flags else str(v)
        if verb in "xXob":
            return format(v, verb)
        if verb == "c":
            return chr(v)
        if verb == "q":
            return "'" + chr(v) + "'"
    if isinstance(v, str) and verb in "xX":
        return v.encode().hex() if verb == "x" else v.encode().hex().upper()
    if isinstance(v, (int, float)) and not isinstance(v, bool) and verb in "feEgG":
        if verb in "gG" and p is None:
            s = _go_float(float(v))
            return s.upper() if verb == "G" else s
        return format(float(v), f".{6 if p is None else p}{verb}")
    return f"%!{verb}({go_type(v)}={go_string(v, False)})"


def _compare(name: str, a: Any, b: Any) -> int:
    """-1, 0, 1 for two basic values of one kind (Go's ``lt`` and friends); an error otherwise."""
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        if name in ("eq", "ne") and isinstance(a, bool) and isinstance(b, bool):
            return 0 if a == b else 1
        raise _ExecError(f"error calling {name}: invalid type for comparison" if isinstance(a, bool) and
                         isinstance(b, bool) else f"error calling {name}: incompatible types for comparison")
    if isinstance(a, num) and isinstance(b, num) or isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    if name in ("eq", "ne") and (a is None or isinstance(a, GoNil) or b is None or isinstance(b, GoNil)):
        # a missing key (no value) or a nil equals only another: ``eq .Labels.x "y"`` is false, not an error,
        # as with docker's typed data (a string map gives "")
        return 0 if (a is None or isinstance(a, GoNil)) and (b is None or isinstance(b, GoNil)) else 1
    if not isinstance(a, (str, int, float)) or not isinstance(b, (str, int, float)):
        bad = a if not isinstance(a, (str, int, float)) else b
        raise _ExecError(f"error calling {name}: non-comparable type {go_type(bad)}" if not
                         isinstance(bad, (type(None), GoNil)) else f"error calling {name}: invalid type for comparison")
    raise _ExecError(f"error calling {name}: incompatible types for comparison")


def _fn_eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise _ExecError("error calling eq: missing argument for comparison")
    return any(_compare("eq", a, b) == 0 for b in bs)


def _str_fn(name: str, f: Callable[..., Any], nstr: int = 1, nint: int = 0) -> Callable[..., Any]:
    """Docker's string functions: ``nstr`` strings, then ``nint`` ints; types checked as Go's call checks them."""
    def call(*args: Any) -> Any:
        if len(args) != nstr + nint:
            raise _ExecError(f"wrong number of args for {name}: want {nstr + nint} got {len(args)}")
        for a in args[:nstr]:
            _want(name, a, str, "string")
        for a in args[nstr:]:
            _want(name, a, int, "int")
        return f(*args)
    return call


def _join(items: Any, sep: Any) -> str:
    if isinstance(items, GoNil):
        items = []
    _want("join", items, (list, tuple), "[]string")
    _want("join", sep, str, "string")
    return sep.join(x if isinstance(x, str) else go_string(x, False) for x in items)


def _split(s: str, sep: str) -> list[str]:
    return list(s) if sep == "" else s.split(sep)


def _title(s: str) -> str:
    """Docker's ``title`` (Unicode title case, the rest of each word left as it is)."""
    return re.sub(r"(?<![\w'])(\w)", lambda m: m.group(1).upper(), s)


def _pad(s: str, prefix: int, suffix: int) -> str:
    return s if s == "" else " " * prefix + s + " " * suffix


def _truncate(s: str, n: int) -> str:
    return s if len(s) < n else s[:max(n, 0)]


def _html(*args: Any) -> str:
    s = _fn_print(*args)
    return (s.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("\0", "\uFFFD"))


def _urlquery(*args: Any) -> str:
    from urllib.parse import quote_plus

    return quote_plus(_fn_print(*args))


#: the functions a template may call; ``and`` and ``or`` are evaluated lazily by the executor
_FUNCS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: a, "or": lambda *a: a,
    "not": lambda v: not truth(v),
    "len": _fn_len, "index": _fn_index, "slice": _fn_slice,
    "print": _fn_print, "printf": _fn_printf,
    "println": lambda *a: " ".join(go_string(x, False) for x in a) + "\n",
    "eq": _fn_eq, "ne": lambda a, b: _compare("ne", a, b) != 0,
    "lt": lambda a, b: _compare("lt", a, b) < 0, "le": lambda a, b: _compare("le", a, b) <= 0,
    "gt": lambda a, b: _compare("gt", a, b) > 0, "ge": lambda a, b: _compare("ge", a, b) >= 0,
    "html": _html, "urlquery": _urlquery,
    "json": go_json,
    "split": _str_fn("split", _split, 2), "join": _join,
    "title": _str_fn("title", _title), "lower": _str_fn("lower", str.lower), "upper": _str_fn("upper", str.upper),
    "pad": _str_fn("pad", _pad, 1, 2), "truncate": _str_fn("truncate", _truncate, 1, 1),
}
#: docker's header functions: in a table's header row these pass the header name through
HEADER_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda v: v, "split": lambda v, _s: v, "join": lambda v, _s: v, "title": lambda v: v,
    "lower": lambda v: v, "upper": lambda v: v, "truncate": lambda v, _n: v,
}
_ARITY = {"not": 1, "len": 1, "json": 1, "ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2}


def _source(fn: Operand, args: list[Operand]) -> str:
    """A call's text, as Go's messages show it (``<index .RepoTags 5>``)."""
    return " ".join([fn.source] + [a.source for a in args])


# --- execution ---------------------------------------------------------------------------------------------------
class _Exec:
    def __init__(self, text: str, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.text = text
        self.funcs = funcs
        self.out: list[str] = []

    def error(self, node: Node, source: str, msg: str) -> TemplateError:
        line, col = _line_col(self.text, node.pos)
        return TemplateError(f'template: :{line}:{col}: executing "" at <{source}>: {msg}')

    def walk(self, nodes: list[Node], dot: Any, scope: list[dict[str, Any]]) -> None:
        scope.append({})
        try:
            for n in nodes:
                self.node(n, dot, scope)
        finally:
            scope.pop()

    def node(self, n: Node, dot: Any, scope: list[dict[str, Any]]) -> None:
        if isinstance(n, Text):
            self.out.append(n.text)
        elif isinstance(n, Action):
            v = self.pipeline(n.pipe, dot, scope)
            if not n.pipe.decl:
                self.out.append(go_string(v))
        elif isinstance(n, Jump):
            raise _Break() if n.kind == "break" else _Continue()
        elif isinstance(n, Branch):
            self.branch(n, dot, scope)

    def branch(self, n: Branch, dot: Any, scope: list[dict[str, Any]]) -> None:
        scope.append({})
        try:
            if n.kind == "range":
                self.range(n, dot, scope)
                return
            v = self.pipeline(n.pipe, dot, scope)
            if truth(v):
                self.walk(n.body, v if n.kind == "with" else dot, scope)
            else:
                self.walk(n.orelse, dot, scope)
        finally:
            scope.pop()

    def range(self, n: Branch, dot: Any, scope: list[dict[str, Any]]) -> None:
        v = self.pipeline(Pipeline(n.pipe.pos, [], False, n.pipe.cmds, n.pipe.source), dot, scope)
        if isinstance(v, GoNil) or v is None:
            items: list[tuple[Any, Any]] = []
        elif isinstance(v, Struct):
            raise self.error(n, n.pipe.source, f"range can't iterate over {go_string(v)}")
        elif isinstance(v, dict):
            items = [(k, v[k]) for k in _sorted_keys(v)]
        elif isinstance(v, (list, tuple)):
            items = list(enumerate(v))
        elif isinstance(v, int) and not isinstance(v, bool):
            items = [(i, i) for i in range(v)]
        else:
            raise self.error(n, n.pipe.source, f"range can't iterate over {go_string(v)}")
        if not items:
            self.walk(n.orelse, dot, scope)
            return
        for k, elem in items:
            names = n.pipe.decl
            if len(names) == 1:
                scope[-1][names[0]] = elem
            elif len(names) == 2:
                scope[-1][names[0]], scope[-1][names[1]] = k, elem
            try:
                self.walk(n.body, elem, scope)
            except _Continue:
                continue
            except _Break:
                break

    def pipeline(self, p: Pipeline, dot: Any, scope: list[dict[str, Any]]) -> Any:
        v: Any = None
        for i, cmd in enumerate(p.cmds):
            v = self.command(cmd, dot, scope, (v,) if i else ())
        if p.decl:
            if p.assign:
                for frame in reversed(scope):
                    if p.decl[0] in frame:
                        frame[p.decl[0]] = v
                        break
                else:
                    raise self.error(p, p.source, f"undefined variable: {p.decl[0]}")
            else:
                scope[-1][p.decl[0]] = v
        return v

    def command(self, cmd: Command, dot: Any, scope: list[dict[str, Any]], piped: tuple[Any, ...]) -> Any:
        first = cmd.args[0]
        if first.kind == "ident":
            return self.call(first, cmd.args[1:], dot, scope, piped)
        if len(cmd.args) > 1 or piped:
            what = first.source if first.kind != "dot" or first.fields else "."
            raise self.error(first, first.source, f"can't give argument to non-function {what}")
        if first.kind == "nil":
            raise self.error(first, "nil", "nil is not a command")
        return self.operand(first, dot, scope)

    def call(self, fn: Operand, args: list[Operand], dot: Any, scope: list[dict[str, Any]],
             piped: tuple[Any, ...]) -> Any:
        name = fn.value
        f = self.funcs.get(name) or _FUNCS[name]
        try:
            if name in ("and", "or"):
                thunks = [lambda a=a: self.operand(a, dot, scope) for a in args] + [lambda: v for v in piped]
                if not thunks:
                    raise _ExecError(f"wrong number of args for {name}: want at least 1 got 0")
                for t in thunks:
                    v = t()
                    if truth(v) != (name == "and"):
                        return v
                return v
            values = [self.operand(a, dot, scope) for a in args] + list(piped)
            want = _ARITY.get(name)
            if want is not None and len(values) != want:
                raise _ExecError(f"wrong number of args for {name}: want {want} got {len(values)}")
            return f(*values)
        except _ExecError as e:
            raise self.error(fn, _source(fn, args), str(e)) from None
        except TypeError:
            raise self.error(fn, _source(fn, args), f"wrong number of args for {name}") from None

    def operand(self, op: Operand, dot: Any, scope: list[dict[str, Any]]) -> Any:
        if op.kind == "dot":
            v = dot
        elif op.kind == "variable":
            for frame in reversed(scope):
                if op.value in frame:
                    v = frame[op.value]
                    break
            else:
                raise self.error(op, op.source, f"undefined variable: {op.value}")
        elif op.kind == "pipe":
            v = self.pipeline(op.value, dot, scope)
        elif op.kind == "ident":
            return self.call(op, [], dot, scope, ())
        elif op.kind == "nil":
            return None
        else:
            return op.value
        for name in op.fields:
            v = self.field(op, v, name)
        return v

    def field(self, op: Operand, v: Any, name: str) -> Any:
        if isinstance(v, Struct):
            if name not in v:
                raise self.error(op, op.source, f"can't evaluate field {name} in type {v.type_name}")
            return v[name]
        if isinstance(v, dict):
            return v.get(name)
        if v is None or isinstance(v, GoNil) and v.kind == "map":
            return None
        if isinstance(v, GoNil) and v.kind == "pointer":
            raise self.error(op, op.source, f"nil pointer evaluating {go_type(v)}.{name}")
        raise self.error(op, op.source, f"can't evaluate field {name} in type {go_type(v)}")


# --- the API ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A parsed template: :meth:`execute` renders it over data."""

    text: str
    nodes: tuple[Node, ...]

    def execute(self, data: Any, funcs: Mapping[str, Callable[..., Any]] | None = None) -> str:
        """The template rendered with ``data`` as ``.`` and ``$``; ``funcs`` replace functions of the same
        name (docker's header functions). TemplateError when it fails on the data."""
        ex = _Exec(self.text, funcs or {})
        try:
            ex.walk(list(self.nodes), data, [{"$": data}])
        except RecursionError:
            raise TemplateError("template: :1: template too deeply nested") from None
        return "".join(ex.out)


def parse(text: str) -> Template:
    """``text`` parsed as a Go template; TemplateError (``template parsing error: ...``) when it does not."""
    try:
        return Template(text, tuple(_Parser(text).parse()))
    except RecursionError:
        raise TemplateError("template parsing error: template: :1: too deeply nested") from None


def render(template: str, data: Any) -> str:
    """``template`` rendered over ``data`` (see the module's docstring for the data and what prints how)."""
    return parse(template).execute(data)


def _docker_format(fmt: str) -> str:
    """A ``--format`` value as docker reads it: blanks around it trimmed, ``\\t`` and ``\\n`` as a tab and a
    newline."""
    return fmt.strip(" ").replace("\\t", "\t").replace("\\n", "\n")


def format_rows(fmt: str, rows: Sequence[Any], header: Mapping[str, str]) -> str:
    """The listing of ``rows`` as docker prints a ``--format`` (each line ending in a newline):

    * ``json``: each row as ``{{json .}}``;
    * ``table TEMPLATE``: a header row (TEMPLATE over ``header``, a map of field name to column title, with
      :data:`HEADER_FUNCS`), then each row, aligned by :func:`tabwrite` (the header even with no rows);
    * any other TEMPLATE: TEMPLATE over each row.

    ``table`` alone is the caller's business (its default table). TemplateError when the template does not
    parse or fails on a row.
    """
    if fmt.strip(" ") == "json":
        return "".join(go_json(r) + "\n" for r in rows)
    is_table = fmt.startswith("table")
    tmpl = parse(_docker_format(fmt[len("table"):] if is_table else fmt))
    body = "".join(tmpl.execute(r) + "\n" for r in rows)
    if not is_table:
        return body
    try:
        head = tmpl.execute(dict(header), HEADER_FUNCS)
    except TemplateError:
        head = ""  # as docker: a header the template cannot render is left empty
    return tabwrite(head + "\n" + body)


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """``text`` aligned as Go's text/tabwriter aligns it with docker's settings (``NewWriter(out, 10, 1, 3, ' ',
    0)``): a tab ends a cell, the tab-ended cells of consecutive lines form a column, whose cells are padded
    with blanks to the column's widest cell plus ``padding`` (at least ``minwidth``); a line's last cell is
    left as it is."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []

    def write(lo: int, hi: int, widths: list[int]) -> None:
        for cells in lines[lo:hi]:
            out.append("".join(c.ljust(widths[j]) if j < len(widths) else c for j, c in enumerate(cells[:-1]))
                       + cells[-1])

    def fmt(lo: int, hi: int, widths: list[int]) -> None:
        col = len(widths)
        this = lo
        while this < hi:
            if col >= len(lines[this]) - 1:
                this += 1
                continue
            write(lo, this, widths)
            lo = this
            width = minwidth
            while this < hi and col < len(lines[this]) - 1:
                width = max(width, len(lines[this][col]) + padding)
                this += 1
            fmt(lo, this, widths + [width])
            lo = this
        write(lo, hi, widths)

    fmt(0, len(lines), [])
    return "\n".join(out)
