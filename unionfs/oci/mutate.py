"""Image-config mutation by Dockerfile config instructions: the one path ``build`` and ``--change`` share.

``resolve(ins, config, ...)`` turns a parsed config instruction (``dockerfile.parse_instruction``) into a
``Mutation``: its canonical description (the build cache key and the history's ``created_by``) and a
function that applies it to a copy of an image config. The arguments are expanded and validated when
resolving, against the config the instruction applies to (its ``Env``, ``Shell`` and ``WorkingDir``), as
docker does:

* ENV, LABEL: ``K=V`` pairs or the legacy ``K value``; ENV replaces a variable in place of appending twice;
* EXPOSE: ``PORT``, ``PORT/PROTO`` and ranges ``LO-HI[/PROTO]``, one ``ExposedPorts`` key per port
  (protocol lower-cased, ``tcp`` by default; tcp, udp and sctp);
* VOLUME: JSON array or words; WORKDIR: joined to the current one and cleaned (``rootpath.clean``);
* CMD, ENTRYPOINT: exec form, or shell form run by the config's ``Shell`` (default ``/bin/sh -c``); an
  ENTRYPOINT clears ``Cmd`` unless a CMD came earlier in the same build stage or change list;
* USER, STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD, MAINTAINER (the latter sets the image's ``author``).

``apply_changes(config, changes)`` is ``docker commit --change`` / ``docker import --change``: each string
is parsed as a Dockerfile line and must be one of ``CHANGE_INSTRUCTIONS`` (docker's list); anything else, or
an argument that does not parse, is a one-line ``UsageError`` starting with ``--change``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from unionfs.errors import DockerfileError, UsageError
from unionfs.oci.instruction import Instruction, expand, json_array, key_values, parse_instruction, split_words
from unionfs.rootpath import clean

#: the shell of shell-form RUN, CMD and ENTRYPOINT when the config has no ``Shell``
DEFAULT_SHELL = ["/bin/sh", "-c"]
#: the instructions ``--change`` accepts: docker's ``validCommitCommands`` (moby builder/dockerfile)
CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "STOPSIGNAL",
                       "USER", "VOLUME", "WORKDIR")  # moby's validCommitCommands (stopsignal since docker 20.10)
_PROTOCOLS = ("tcp", "udp", "sctp")

#: ``apply(container_config, image_config)``: changes the ``config`` object (and, for MAINTAINER, the image
#: config holding it) in place
Apply = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class Mutation:
    """A resolved config instruction: ``desc`` (e.g. ``EXPOSE 8000/udp 8001/udp``, stable for equal
    effects), ``apply`` (see ``Apply``) and ``value``, the resolved argument where one is useful to the
    caller (the cleaned absolute path of a WORKDIR; else None)."""

    desc: str
    apply: Apply
    value: str | None = None


def expansion_env(config: Mapping[str, Any], args: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables instructions expand: ``args`` (build arguments in effect), overridden by the ``Env``
    of the container config ``config``."""
    env = dict(args or {})
    for e in config.get("Env") or []:
        k, _, v = e.partition("=")
        env[k] = v
    return env


def shell_of(config: Mapping[str, Any]) -> list[str]:
    """The shell that runs shell-form commands under the container config ``config``."""
    return list(config.get("Shell") or DEFAULT_SHELL)


def working_dir(config: Mapping[str, Any], path: str) -> str:
    """WORKDIR ``path`` (already expanded) joined to ``config``'s working directory, cleaned, absolute."""
    return clean(os.path.join(clean(config.get("WorkingDir") or "/"), path))


def go_duration(text: str, where: str = "") -> int:
    """Nanoseconds of a Go duration (``30s``, ``1m30s``, ``500ms``). Raises DockerfileError."""
    units = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise DockerfileError(f"{where}invalid duration {text!r}")
    return int(sum(float(a) * units[b] for a, b in parts))


def exposed_ports(word: str, where: str = "", line: int | None = None) -> list[str]:
    """The ``ExposedPorts`` keys of one expanded EXPOSE word: ``80`` -> ``80/tcp``, ``8000-8002/udp`` ->
    three keys. Raises DockerfileError for anything but ``PORT[-PORT][/tcp|udp|sctp]``."""
    num, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    lo, _, hi = num.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()) or proto not in _PROTOCOLS:
        raise DockerfileError(f"{where}invalid port {word!r}", line)
    return [f"{n}/{proto}" for n in range(int(lo), int(hi or lo) + 1)]


def healthcheck(ins: Instruction, where: str = "") -> dict[str, Any]:
    """The ``Healthcheck`` object of a HEALTHCHECK instruction. Raises DockerfileError."""
    args = ins.args.strip()
    if args.upper() == "NONE":
        if ins.flags:
            raise DockerfileError(f"{where}HEALTHCHECK NONE takes no options", ins.line)
        return {"Test": ["NONE"]}
    kw, _, rest = args.partition(" ")
    if kw.upper() != "CMD" or not rest.strip():
        raise DockerfileError(f"{where}HEALTHCHECK needs NONE or CMD COMMAND", ins.line)
    js = json_array(rest)
    hc: dict[str, Any] = {"Test": ["CMD", *js] if js is not None else ["CMD-SHELL", rest.strip()]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                      ("start-interval", "StartInterval")):
        v = ins.flag(flag)
        if v:
            hc[key] = go_duration(v, where)
    r = ins.flag("retries")
    if r:
        if not r.isdigit():
            raise DockerfileError(f"{where}invalid --retries {r!r}", ins.line)
        hc["Retries"] = int(r)
    return hc


def _setter(key: str, value: Any) -> Apply:
    """An Apply that sets the container config's ``key`` to (a copy of) ``value``."""
    def apply(c: dict[str, Any], _d: dict[str, Any]) -> None:
        c[key] = copy.deepcopy(value)
    return apply


def _merger(key: str, entries: Mapping[str, Any]) -> Apply:
    """An Apply that adds ``entries`` to the container config's mapping ``key`` (Labels, ExposedPorts...)."""
    def apply(c: dict[str, Any], _d: dict[str, Any]) -> None:
        c[key] = {**(c.get(key) or {}), **copy.deepcopy(dict(entries))}
    return apply


def resolve(ins: Instruction, config: Mapping[str, Any], *, args: Mapping[str, str] | None = None,
            escape: str = "\\", where: str = "", cmd_set: bool = False) -> Mutation:
    """The Mutation of config instruction ``ins`` (ENV, LABEL, MAINTAINER, EXPOSE, VOLUME, USER, STOPSIGNAL,
    WORKDIR, CMD, ENTRYPOINT, SHELL, HEALTHCHECK or ONBUILD; the builder adds a layer for a WORKDIR whose
    directory is missing) applied to the container config ``config`` (read, not changed): arguments expanded with ``expansion_env(config, args)`` and
    ``escape``, shell forms completed with ``shell_of(config)``. ``cmd_set``: a CMD came earlier in this
    stage or change list (else ENTRYPOINT clears Cmd, as docker). ``where`` prefixes error messages.
    Raises DockerfileError for arguments that do not resolve or an instruction that is not config-only."""
    kw = ins.keyword
    env = expansion_env(config, args)

    def ex(word: str, quotes: bool = True) -> str:
        return expand(word, env, escape, quotes=quotes, where=where)

    if kw in ("ENV", "LABEL"):
        pairs = key_values(ins.args, env, escape, where=where, keyword=kw)
        desc = f"{kw} " + " ".join(f"{k}={json.dumps(v)}" for k, v in pairs)
        if kw == "LABEL":
            return Mutation(desc, _merger("Labels", dict(pairs)))

        def set_env(c: dict[str, Any], _d: dict[str, Any]) -> None:
            cur = list(c.get("Env") or [])
            for k, v in pairs:
                cur = [e for e in cur if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            c["Env"] = cur
        return Mutation(desc, set_env)
    if kw == "MAINTAINER":
        author = ex(ins.args.strip())

        def set_author(_c: dict[str, Any], d: dict[str, Any]) -> None:
            d["author"] = author
        return Mutation(f"MAINTAINER {author}", set_author)
    if kw == "EXPOSE":
        ports = [p for w in split_words(ins.args, escape) for p in exposed_ports(ex(w), where, ins.line)]
        return Mutation("EXPOSE " + " ".join(ports), _merger("ExposedPorts", {p: {} for p in ports}))
    if kw == "VOLUME":
        vols = ([ex(v, quotes=False) for v in ins.json] if ins.json is not None
                else [ex(w) for w in split_words(ins.args, escape)])
        if not vols or any(not v for v in vols):
            raise DockerfileError(f"{where}VOLUME specified can not be an empty string", ins.line)
        return Mutation("VOLUME " + json.dumps(vols), _merger("Volumes", {v: {} for v in vols}))
    if kw in ("USER", "STOPSIGNAL"):
        value = ex(ins.args.strip())
        return Mutation(f"{kw} {value}", _setter("User" if kw == "USER" else "StopSignal", value))
    if kw == "WORKDIR":
        path = working_dir(config, ex(ins.args.strip()))
        return Mutation(f"WORKDIR {path}", _setter("WorkingDir", path), path)
    if kw in ("CMD", "ENTRYPOINT"):
        argv = (list(ins.json) if ins.json is not None
                else shell_of(config) + [ins.args] if ins.args.strip() else [])
        field_name = "Cmd" if kw == "CMD" else "Entrypoint"
        reset_cmd = kw == "ENTRYPOINT" and not cmd_set

        def set_command(c: dict[str, Any], _d: dict[str, Any]) -> None:
            c[field_name] = list(argv) or None
            if reset_cmd:  # docker: an ENTRYPOINT drops a CMD inherited from the base image
                c["Cmd"] = None
        return Mutation(f"{kw} {json.dumps(argv)}", set_command)
    if kw == "SHELL":
        shell = list(ins.json or ())
        return Mutation(f"SHELL {json.dumps(shell)}", _setter("Shell", shell))
    if kw == "HEALTHCHECK":
        hc = healthcheck(ins, where)
        return Mutation(f"HEALTHCHECK {json.dumps(hc, sort_keys=True)}", _setter("Healthcheck", hc))
    if kw == "ONBUILD":
        assert ins.trigger is not None  # the parser makes one for every ONBUILD
        trigger = ins.trigger.text

        def add_trigger(c: dict[str, Any], _d: dict[str, Any]) -> None:
            c["OnBuild"] = list(c.get("OnBuild") or []) + [trigger]
        return Mutation(f"ONBUILD {trigger}", add_trigger)
    raise DockerfileError(f"{where}{kw} is not supported", ins.line)


def apply_changes(config: Mapping[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """A copy of the container config ``config`` (the ``config`` object of an image config) with the
    Dockerfile instructions ``changes`` applied in order, as ``docker commit --change`` and ``docker import
    --change``: each is resolved against the config the earlier ones made. ``config`` is not changed.

    Raises UsageError (one line, starting with ``--change``) for an instruction not in CHANGE_INSTRUCTIONS,
    one without arguments, or arguments that do not parse."""
    out = copy.deepcopy(dict(config))
    cmd_set = False
    for n, text in enumerate(changes, 1):
        try:
            ins = parse_instruction(text, n, "--change")
        except DockerfileError as e:
            raise UsageError(str(e)) from None
        if ins.keyword not in CHANGE_INSTRUCTIONS:
            raise UsageError(f"--change {ins.keyword} is not a valid change command "
                             f"(one of {', '.join(CHANGE_INSTRUCTIONS)})")
        if not ins.args:
            raise UsageError(f"--change {ins.keyword} needs an argument")
        try:
            resolve(ins, out, where=f"--change:{n}: ", cmd_set=cmd_set).apply(out, {})
        except DockerfileError as e:
            raise UsageError(str(e)) from None
        cmd_set = cmd_set or ins.keyword == "CMD"
    return out


__all__ = ["Mutation", "Apply", "resolve", "apply_changes", "expansion_env", "shell_of", "working_dir",
           "go_duration", "exposed_ports", "healthcheck", "DEFAULT_SHELL", "CHANGE_INSTRUCTIONS"]
