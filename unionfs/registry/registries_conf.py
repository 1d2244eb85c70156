"""Where to pull an image from: containers-registries.conf(5) and docker's ``registry-mirrors``, read into a plan.

Pure apart from :func:`load` (which reads the files) and :func:`config_files` (which lists them): the parsing
and the planning take text and references and give values, so that every rule has a unit test.

Files (the first rule that applies):

* ``$CONTAINERS_REGISTRIES_CONF`` set: that one file, and nothing else (an empty value: no file at all);
* else the user's ``$XDG_CONFIG_HOME/containers/registries.conf`` (default ``~/.config/containers/...``) when
  it exists, then the drop-ins of ``$XDG_CONFIG_HOME/containers/registries.conf.d/*.conf``;
* else ``/etc/containers/registries.conf``, its drop-ins ``/etc/containers/registries.conf.d/*.conf``, then the
  user's drop-ins. Drop-ins load in name order; what a later file sets replaces what an earlier one set
  (``[[registry]]`` tables with the same prefix replace each other, aliases merge, an alias set to ``""`` is
  erased), as containers-registries.conf.d(5) says.
* Docker's daemon config, ``/etc/docker/daemon.json`` (``$UNIONFS_DAEMON_JSON`` names another file; empty: none;
  one this user may not read is skipped): its ``registry-mirrors`` (``http(s)://host[:port]`` URLs) mirror
  docker.io and nothing else, as in docker.

Semantics (containers-registries.conf(5)):

* **Matching.** A reference (fully qualified: ``docker.io/library/busybox:latest``) is matched against every
  ``[[registry]]`` ``prefix`` (default: its ``location``); the longest match wins. A prefix matches when the
  reference starts with it and continues with ``/``, ``:`` or ``@`` (or ends); ``*.example.com`` matches any
  subdomain of example.com. docker.io's implied ``library/`` is part of the reference: a prefix for busybox is
  ``docker.io/library/busybox``.
* **Rewriting.** The matched prefix is replaced by ``location`` (a wildcard prefix may have none: the
  reference is used as it is), and by each mirror's ``location`` for that mirror. The image is always stored
  under the name the user gave.
* **Order.** Mirrors first, in their order, then the location. ``mirror-by-digest-only = true`` on the
  registry uses mirrors only for references by digest; a mirror's ``pull-from-mirror`` (``all``, the default;
  ``digest-only``; ``tag-only``) restricts that mirror, and may not be combined with ``mirror-by-digest-only``.
  docker's ``registry-mirrors`` come after the registries.conf mirrors of docker.io and serve tags and digests.
* ``insecure = true`` allows plain HTTP and unverified TLS for that location (or that mirror) only;
  ``blocked = true`` refuses every pull the table matches.
* **Short names** (no registry: ``busybox``, ``team/app:1``): an ``[aliases]`` entry for the name (tag and
  digest stripped, then put back) is the one candidate; else each of ``unqualified-search-registries`` in order
  (docker.io when the list is unset or empty). ``short-name-mode = "enforcing"`` with more than one search
  registry and no alias is an error (unionfs never prompts); ``permissive`` (the default) and ``disabled`` try
  them all.
* The deprecated version 1 tables (``[registries.search]``, ``[registries.insecure]``, ``[registries.block]``)
  are read as their version 2 meaning, in a file that uses no version 2 key.
* ``credential-helpers`` and keys this module does not know are ignored. Every malformed file or value raises
  ``RegistriesConfError`` with one line naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from unionfs.errors import ReferenceError_, RegistriesConfError, listed, shown
from unionfs.oci.reference import DEFAULT_REGISTRY, Reference

log = logging.getLogger(__name__)

SYSTEM_CONF = Path("/etc/containers/registries.conf")
DAEMON_JSON = Path("/etc/docker/daemon.json")
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
_V2_KEYS = {"registry", "unqualified-search-registries", "short-name-mode", "aliases"}


# --- values -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mirror:
    """One mirror of a registry table: ``location`` (``host[:port][/path]``), its own ``insecure``, and which
    pulls it serves (``pull_from_mirror``)."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class RegistryRule:
    """One ``[[registry]]`` table, as read from ``source``."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class Endpoint:
    """Where to try a pull: ``reference`` is the physical one (rewritten registry and repository), ``insecure``
    allows plain HTTP and unverified TLS for it, ``mirror`` is False only for the location (the origin)."""

    reference: Reference
    insecure: bool = False
    mirror: bool = False

    @property
    def host(self) -> str:
        return self.reference.registry


@dataclass(frozen=True)
class PullPlan:
    """How to pull ``reference`` (the logical name, which the image is stored under): ``endpoints`` in order,
    the origin last; or ``blocked`` (then ``rule`` is the table that blocks it)."""

    reference: Reference
    endpoints: tuple[Endpoint, ...]
    blocked: bool = False
    rule: RegistryRule | None = None

    @property
    def origin(self) -> Endpoint:
        return self.endpoints[-1]


@dataclass(frozen=True)
class RegistriesConf:
    """The merged configuration (see the module docstring). ``search`` is None when no file sets it."""

    rules: tuple[RegistryRule, ...] = ()
    search: tuple[str, ...] | None = None
    short_name_mode: str = "permissive"
    aliases: Mapping[str, str] = field(default_factory=dict)
    docker_mirrors: tuple[Mirror, ...] = ()
    sources: tuple[str, ...] = ()

    # -- short names --------------------------------------------------------------------------------
    def candidates(self, text: str) -> list[Reference]:
        """The references a user's image name may mean, in the order to try them: the name itself when it names
        a registry; an alias; else one per search registry. Raises ReferenceError_ for a malformed name,
        RegistriesConfError for an ambiguous short name under ``short-name-mode = "enforcing"``."""
        ref = Reference.parse(text)
        short = short_name(text)
        if short is None:
            return [ref]
        name, suffix = short
        alias = self.aliases.get(name)
        if alias:
            return [_parse(alias + suffix, f"alias {name!r}", self.sources)]
        search = list(self.search or ()) or [DEFAULT_REGISTRY]
        found = [_parse(f"{reg}/{name}{suffix}", f"search registry {reg!r}", self.sources) for reg in search]
        if self.short_name_mode == "enforcing" and len(found) > 1:
            raise RegistriesConfError(f"short name {shown(text)} is ambiguous (short-name-mode is enforcing and "
                                      f"there are {len(found)} search registries): give the full name, one of "
                                      f"{listed([str(r) for r in found])}, or an alias in registries.conf")
        return found

    # -- pulls ----------------------------------------------------------------------------------------
    def rule_for(self, ref: Reference) -> RegistryRule | None:
        """The ``[[registry]]`` table with the longest prefix matching ``ref``, or None."""
        text = str(ref)
        best: tuple[int, RegistryRule] | None = None
        for rule in self.rules:
            n = prefix_match(text, rule.prefix)
            if n >= 0 and (best is None or n > best[0]):
                best = (n, rule)
        return best[1] if best else None

    def plan(self, ref: Reference, insecure: bool = False) -> PullPlan:
        """The endpoints to pull ``ref`` from (``insecure``: the caller's ``--insecure``, for the origin).

        Raises RegistriesConfError when a rewritten reference is not a valid one.
        """
        rule = self.rule_for(ref)
        if rule is None:
            endpoints: list[Endpoint] = []
            origin = Endpoint(ref, insecure)
        elif rule.blocked:
            return PullPlan(ref, (Endpoint(ref, insecure),), True, rule)
        else:
            endpoints = [Endpoint(rewrite(ref, rule.prefix, m.location, rule.source), m.insecure, True)
                         for m in rule.mirrors if _serves(rule, m, ref.digest is not None)]
            origin = Endpoint(rewrite(ref, rule.prefix, rule.location, rule.source), insecure or rule.insecure)
        if ref.registry == DEFAULT_REGISTRY:
            endpoints += [Endpoint(ref._replace(registry=m.location), m.insecure, True) for m in self.docker_mirrors]
        return PullPlan(ref, (*endpoints, origin), False, rule)


def _serves(rule: RegistryRule, mirror: Mirror, by_digest: bool) -> bool:
    """True when ``mirror`` of ``rule`` may serve a pull by digest (``by_digest``) or by tag."""
    if rule.mirror_by_digest_only or mirror.pull_from_mirror == "digest-only":
        return by_digest
    return not by_digest if mirror.pull_from_mirror == "tag-only" else True


# --- matching and rewriting ---------------------------------------------------------------------
def short_name(text: str) -> tuple[str, str] | None:
    """``(name, tag-and-digest suffix)`` of a name without a registry (``team/app:1`` -> ``("team/app", ":1")``),
    None when its first component names one (holds ``.`` or ``:``, or is ``localhost``), as docker decides."""
    rest, at, digest = text.partition("@")
    suffix = at + digest
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, suffix = rest[:colon], rest[colon:] + suffix
    first, sep, _ = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return None
    return rest, suffix


def prefix_match(ref: str, prefix: str) -> int:
    """How many characters of ``ref`` the prefix matches (-1: none), as containers/image decides."""
    if prefix.startswith("*."):
        i = ref.find(prefix[1:])
        if i < 0 or "/" in ref[:i]:
            return -1
        end = i + len(prefix) - 1
    elif ref.startswith(prefix):
        end = len(prefix)
    else:
        return -1
    return end if end == len(ref) or ref[end] in "/:@" else -1


def rewrite(ref: Reference, prefix: str, location: str, source: str = "") -> Reference:
    """``ref`` with the part ``prefix`` matches replaced by ``location`` (a wildcard prefix with no location:
    ``ref`` as it is). Raises RegistriesConfError when the result is no valid reference."""
    if not location:
        return ref
    text = str(ref)
    n = prefix_match(text, prefix)
    if n < 0:  # a caller's error: the rule was chosen for this reference
        raise ValueError(f"{prefix!r} does not match {text!r}")
    return _parse(location + text[n:], f"location {location!r}", (source,))


def _parse(text: str, what: str, sources: tuple[str, ...] | list[str]) -> Reference:
    """A fully qualified reference made from a configuration value."""
    where = ", ".join(s for s in sources if s) or "registries.conf"
    if short_name(text) is not None:
        raise RegistriesConfError(f"{where}: {what} gives {shown(text)}, which names no registry host")
    try:
        return Reference.parse(text)
    except ReferenceError_ as e:
        raise RegistriesConfError(f"{where}: {what} gives an invalid reference: {e}") from None


# --- parsing ------------------------------------------------------------------------------------
@dataclass
class _Layer:
    """What one file sets (None: not set)."""

    rules: list[RegistryRule] = field(default_factory=list)
    search: tuple[str, ...] | None = None
    short_name_mode: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)


def parse_registries_conf(text: str, source: str = "registries.conf") -> _Layer:
    """One registries.conf file's settings. Raises RegistriesConfError (one line naming ``source``)."""
    import tomllib  # here: a host without a registries.conf never loads it (startup time of pull)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistriesConfError(f"{source}: not valid TOML: {' '.join(str(e).split())}") from None
    layer = _Layer()
    v1 = data.get("registries")
    if v1 is not None:
        if _V2_KEYS & data.keys():
            raise RegistriesConfError(f"{source}: mixes the version 1 [registries.*] tables with version 2 keys")
        return _parse_v1(_table(v1, "registries", source), source)
    if "unqualified-search-registries" in data:
        layer.search = tuple(_hosts(data["unqualified-search-registries"], "unqualified-search-registries", source))
    if "short-name-mode" in data:
        mode = data["short-name-mode"]
        if mode not in (*SHORT_NAME_MODES, ""):
            raise RegistriesConfError(f"{source}: short-name-mode must be one of {', '.join(SHORT_NAME_MODES)}, "
                                      f"not {shown(mode)}")
        layer.short_name_mode = mode or "permissive"
    for name, value in _table(data.get("aliases", {}), "aliases", source).items():
        layer.aliases[name] = _alias(name, value, source)
    tables = data.get("registry", [])
    if not isinstance(tables, list):
        raise RegistriesConfError(f"{source}: registry must be an array of tables ([[registry]])")
    for i, t in enumerate(tables):
        layer.rules.append(_rule(_table(t, f"[[registry]] #{i + 1}", source), f"[[registry]] #{i + 1}", source))
    return layer


def _parse_v1(v1: dict[str, Any], source: str) -> _Layer:
    layer = _Layer()
    rules: dict[str, RegistryRule] = {}
    for kind in ("search", "insecure", "block"):
        table = _table(v1.get(kind, {}), f"registries.{kind}", source)
        hosts = _hosts(table.get("registries", []), f"registries.{kind}.registries", source)
        if kind == "search":
            layer.search = tuple(hosts) if "registries" in table else None
            continue
        for host in hosts:
            rule = rules.get(host, RegistryRule(host, host, source=source))
            rules[host] = replace(rule, insecure=True) if kind == "insecure" else replace(rule, blocked=True)
    layer.rules = list(rules.values())
    return layer


def _rule(t: dict[str, Any], what: str, source: str) -> RegistryRule:
    location = _place(t.get("location", ""), f"{what} location", source)
    prefix = _place(t.get("prefix", ""), f"{what} prefix", source) or location
    if not prefix:
        raise RegistriesConfError(f"{source}: {what} has neither a prefix nor a location")
    if not location and not prefix.startswith("*."):
        raise RegistriesConfError(f"{source}: {what} ({prefix}) has no location (only a *.domain prefix may "
                                  f"go without)")
    if "pull-from-mirror" in t:
        raise RegistriesConfError(f"{source}: {what}: pull-from-mirror belongs in a [[registry.mirror]] table")
    by_digest = _bool(t.get("mirror-by-digest-only", False), f"{what} mirror-by-digest-only", source)
    mirrors = []
    raw_mirrors = t.get("mirror", [])
    if not isinstance(raw_mirrors, list):
        raise RegistriesConfError(f"{source}: {what} mirror must be an array of tables ([[registry.mirror]])")
    for j, m in enumerate(raw_mirrors):
        mwhat = f"{what} mirror #{j + 1}"
        m = _table(m, mwhat, source)
        mloc = _place(m.get("location", ""), f"{mwhat} location", source)
        if not mloc:
            raise RegistriesConfError(f"{source}: {mwhat} has no location")
        pull_from = _string(m.get("pull-from-mirror", ""), f"{mwhat} pull-from-mirror", source)
        if pull_from and pull_from not in PULL_FROM_MIRROR:
            raise RegistriesConfError(f"{source}: {mwhat} pull-from-mirror must be one of "
                                      f"{', '.join(PULL_FROM_MIRROR)}, not {shown(pull_from)}")
        if pull_from and by_digest:
            raise RegistriesConfError(f"{source}: {mwhat} sets pull-from-mirror, which {what} forbids by setting "
                                      f"mirror-by-digest-only")
        mirrors.append(Mirror(mloc, _bool(m.get("insecure", False), f"{mwhat} insecure", source), pull_from or "all"))
    return RegistryRule(prefix, location, _bool(t.get("insecure", False), f"{what} insecure", source),
                        _bool(t.get("blocked", False), f"{what} blocked", source), by_digest, tuple(mirrors), source)


def _place(value: object, what: str, source: str) -> str:
    """A prefix or location: ``host[:port][/path...]`` (or ``*.domain``), trailing slashes dropped; no scheme,
    no spaces."""
    text = _string(value, what, source).rstrip("/")
    if "://" in text or any(c.isspace() for c in text):
        raise RegistriesConfError(f"{source}: {what} {shown(text)} is not host[:port][/namespace...] (no scheme)")
    return text


def _alias(name: str, value: object, source: str) -> str:
    if short_name(name) is None or short_name(name) != (name, "") or not name:
        raise RegistriesConfError(f"{source}: alias {shown(name)} must be a short name without tag or digest")
    value = _string(value, f"alias {name!r}", source)
    if value:
        if short_name(value) is not None:
            raise RegistriesConfError(f"{source}: alias {name!r} must name a registry: {shown(value)}")
        try:
            ref = Reference.parse(value, default_tag=None)
        except ReferenceError_ as e:
            raise RegistriesConfError(f"{source}: alias {name!r}: {e}") from None
        if ref.tag or ref.digest:
            raise RegistriesConfError(f"{source}: alias {name!r} must not have a tag or digest: {shown(value)}")
    return value


def _table(value: object, what: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RegistriesConfError(f"{source}: {what} must be a table")
    return value


def _string(value: object, what: str, source: str) -> str:
    if not isinstance(value, str):
        raise RegistriesConfError(f"{source}: {what} must be a string, not {shown(value)}")
    return value


def _bool(value: object, what: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise RegistriesConfError(f"{source}: {what} must be true or false, not {shown(value)}")
    return value


def _hosts(value: object, what: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RegistriesConfError(f"{source}: {what} must be an array of host[:port] strings")
    for v in value:
        if "/" in v or any(c.isspace() for c in v):
            raise RegistriesConfError(f"{source}: {what}: {shown(v)} is not a host[:port]")
    return list(value)


def parse_daemon_json(text: str, source: str = "daemon.json") -> tuple[Mirror, ...]:
    """docker's ``registry-mirrors`` as mirrors of docker.io (an ``http://`` one is insecure). Raises
    RegistriesConfError for a file that is not a JSON object or a mirror that is not ``http(s)://host[:port]``."""
    try:
        data = json.loads(text or "{}")
    except (ValueError, RecursionError) as e:
        raise RegistriesConfError(f"{source}: not valid JSON: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise RegistriesConfError(f"{source}: not a JSON object")
    urls = data.get("registry-mirrors", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise RegistriesConfError(f"{source}: registry-mirrors must be an array of URLs")
    out = []
    for url in urls:
        scheme, sep, rest = url.partition("://")
        host = rest.rstrip("/")
        if not sep or scheme not in ("http", "https") or not host or any(c in host for c in "/?#@ "):
            raise RegistriesConfError(f"{source}: registry mirror {shown(url)} is not http(s)://host[:port] "
                                      f"(unionfs takes no path, credentials, query or fragment)")
        out.append(Mirror(host, scheme == "http"))
    return tuple(out)


def merge(layers: list[tuple[str, _Layer]], docker_mirrors: tuple[Mirror, ...] = (),
          extra_sources: tuple[str, ...] = ()) -> RegistriesConf:
    """The configuration the files make in the order given (later ones win, see the module docstring)."""
    rules: dict[str, RegistryRule] = {}
    search: tuple[str, ...] | None = None
    mode = "permissive"
    aliases: dict[str, str] = {}
    for _, layer in layers:
        for rule in layer.rules:
            rules.pop(rule.prefix, None)
            rules[rule.prefix] = rule
        if layer.search is not None:
            search = layer.search
        if layer.short_name_mode is not None:
            mode = layer.short_name_mode
        for name, value in layer.aliases.items():
            if value:
                aliases[name] = value
            else:
                aliases.pop(name, None)
    return RegistriesConf(tuple(rules.values()), search, mode, aliases, docker_mirrors,
                          tuple(s for s, _ in layers) + extra_sources)


# --- the files ----------------------------------------------------------------------------------
def config_files(env: Mapping[str, str] | None = None, system: Path = SYSTEM_CONF) -> list[Path]:
    """The registries.conf files to read, in order (module docstring); only those that exist."""
    env = os.environ if env is None else env
    override = env.get("CONTAINERS_REGISTRIES_CONF")
    if override is not None:
        return [Path(override)] if override else []
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME") or os.path.expanduser("~")) / ".config")
    user = config_home / "containers" / "registries.conf"
    user_dropins = _dropins(user.with_name("registries.conf.d"))
    if user.is_file():
        return [user, *user_dropins]
    return [p for p in (system,) if p.is_file()] + _dropins(system.with_name("registries.conf.d")) + user_dropins


def _dropins(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".conf" and p.is_file())
    except OSError:
        return []


def daemon_json_path(env: Mapping[str, str] | None = None) -> Path | None:
    """``$UNIONFS_DAEMON_JSON`` (empty: none), else ``/etc/docker/daemon.json``."""
    env = os.environ if env is None else env
    override = env.get("UNIONFS_DAEMON_JSON")
    if override is not None:
        return Path(override) if override else None
    return DAEMON_JSON


def load(env: Mapping[str, str] | None = None, system: Path = SYSTEM_CONF) -> RegistriesConf:
    """Read every file that applies (a missing file is no error; one that cannot be read or parsed is)."""
    layers = [(str(p), parse_registries_conf(_read(p), str(p))) for p in config_files(env, system)]
    daemon = daemon_json_path(env)
    text = ""
    if daemon is not None:
        try:
            text = _read(daemon, missing_ok=True)
        except RegistriesConfError as e:  # the daemon's file, not ours: unreadable for most users is normal
            log.debug("%s", e)
    mirrors = parse_daemon_json(text, str(daemon)) if text else ()
    return merge(layers, mirrors, (str(daemon),) if mirrors else ())


def _read(path: Path, missing_ok: bool = False) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise RegistriesConfError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistriesConfError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
