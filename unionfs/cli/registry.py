"""Registry subcommands: pull, push, search, tags, login, logout (docker's flags where docker has them).

Progress goes to standard error: per-layer bars (tqdm) on a terminal, plain lines otherwise, none with ``-q``.
Results go to standard output.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, cast

from unionfs.cli.common import human_size, platform_of, store_of, table
from unionfs.errors import RegistriesConfError, RegistryAuthError, RegistryError, UsageError
from unionfs.oci.reference import DEFAULT_REGISTRY, Reference

if TYPE_CHECKING:  # the HTTP side is imported by the commands that use it, so other commands start fast
    from unionfs.registry.client import RegistryClient
    from unionfs.registry.registries_conf import RegistriesConf
    from unionfs.registry.search import SearchResult
    from unionfs.registry.transfer import Progress

log = logging.getLogger(__name__)


# --- progress reporters -------------------------------------------------------------------------
class LineProgress:
    """Plain lines, one when a blob starts and one when it ends (for logs and pipes)."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)

    def line(self, text: str) -> None:
        self._say(text)

    def begin(self, key: str, total: int | None, action: str) -> None:
        self._say(f"{key}: {action}" + (f" ({human_size(total)})" if total is not None and total >= 0 else ""))

    def advance(self, key: str, n: int) -> None:
        pass

    def end(self, key: str, status: str) -> None:
        self._say(f"{key}: {status}")


class BarProgress:
    """One tqdm bar per running transfer on a terminal; finished ones leave a plain line."""

    def __init__(self, stream: Any = None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._stream = stream or sys.stderr
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self._tqdm.write(text, file=self._stream)

    def begin(self, key: str, total: int | None, action: str) -> None:
        with self._lock:
            self._bars[key] = self._tqdm(total=total if total and total > 0 else None, desc=f"{key}: {action}",
                                         unit="B", unit_scale=True, unit_divisor=1000, file=self._stream,
                                         leave=False, dynamic_ncols=True)

    def advance(self, key: str, n: int) -> None:
        bar = self._bars.get(key)
        if bar is not None:
            bar.update(n)

    def end(self, key: str, status: str) -> None:
        with self._lock:
            bar = self._bars.pop(key, None)
            if bar is not None:  # finished bars vanish; a line for them goes above the running ones
                bar.close()
            self._tqdm.write(f"{key}: {status}", file=self._stream)


def _progress(args: argparse.Namespace) -> Progress:
    from unionfs.registry.transfer import NoProgress

    if getattr(args, "quiet", False):
        return NoProgress()
    if sys.stderr.isatty():
        return BarProgress()
    return LineProgress()


def _client(args: argparse.Namespace, registry: str) -> RegistryClient:
    from unionfs.registry.client import RegistryClient
    from unionfs.registry.credentials import DockerConfig

    return RegistryClient(registry, credentials=DockerConfig().get(registry), insecure=args.insecure)


# --- commands ---------------------------------------------------------------------------------
def cmd_pull(args: argparse.Namespace) -> int:
    """Pull through registries.conf and docker's registry-mirrors (registries_conf.py): a short name's
    candidates in turn (the first that pulls wins), each from its mirrors, then its location."""
    from unionfs.registry.registries_conf import load

    if args.all_tags and ("@" in args.reference or ":" in args.reference.rsplit("/", 1)[-1]):
        raise UsageError("pull --all-tags takes a repository name without a tag or digest")
    conf = load()
    candidates = conf.candidates(args.reference)
    store = store_of(args)
    progress = _progress(args)
    failures: list[str] = []
    for ref in candidates:
        try:
            _pull_candidate(args, conf, ref, store, progress)
            return 0
        except RegistryError as e:
            if len(candidates) == 1 or isinstance(e, RegistriesConfError):
                raise
            log.info("%s: %s", ref, e)
            failures.append(str(e))
    raise RegistryError(f"{args.reference}: no search registry has it ({'; '.join(failures)})")


def _pull_candidate(args: argparse.Namespace, conf: RegistriesConf, ref: Reference, store: Any,
                    progress: Progress) -> None:
    """Pull one fully qualified reference (every tag of it with ``--all-tags``) through its plan."""
    from unionfs.registry.mirrors import client_for
    from unionfs.registry.transfer import DEFAULT_JOBS, pull

    refs = [ref]
    if args.all_tags:
        with client_for(ref, conf, insecure=args.insecure) as client:
            refs = [ref.with_tag(t) for t in client.tags(ref.repository)]
    for r in refs:
        with client_for(r, conf, insecure=args.insecure) as client:
            result = pull(store, r, cast("RegistryClient", client), platform=platform_of(args),
                          jobs=args.jobs or DEFAULT_JOBS, progress=progress,
                          follow_foreign_urls=args.follow_foreign_urls, unpack=not args.no_unpack)
        if not args.quiet:
            progress.line(f"Digest: {result.digest}")
            status = "Downloaded newer image" if result.fetched else "Image is up to date"
            progress.line(f"Status: {status} for {r.familiar}")
        print(str(r))


def cmd_push(args: argparse.Namespace) -> int:
    from unionfs.registry.transfer import DEFAULT_JOBS, images_of_repository, push

    store = store_of(args)
    if args.destination:
        dest = Reference.parse(args.destination)
        sources = [(args.image, dest)]
    else:
        try:
            dest = Reference.parse(args.image)
        except Exception:
            raise UsageError(f"push {args.image}: give a destination reference (push IMAGE DEST)") from None
        if args.all_tags:
            tags = images_of_repository(store, dest)
            if not tags:
                raise UsageError(f"no tags of {dest.familiar_name} in the store")
            sources = [(str(t), t) for t in tags]
        else:
            sources = [(args.image, dest)]
    progress = _progress(args)
    with _client(args, dest.registry) as client:
        for source, target in sources:
            result = push(store, source, target, client, jobs=args.jobs or DEFAULT_JOBS, progress=progress)
            label = target.tag or str(result.digest)
            print(f"{label}: digest: {result.digest} size: {result.size}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from unionfs.registry.credentials import normalize_server
    from unionfs.registry.search import hub_search

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    registry = normalize_server(args.registry) if args.registry else DEFAULT_REGISTRY
    filters = _parse_filters(args.filter)
    if registry == DEFAULT_REGISTRY:
        results = hub_search(args.term, args.limit)
        results = [r for r in results if r.stars >= filters.get("stars", 0)
                   and ("is-official" not in filters or r.official == filters["is-official"])]
        _print_hub(results, args.no_trunc)
        return 0
    term = args.term.lower()
    found: list[str] = []
    with _client(args, registry) as client:
        for name in client.catalog():
            if term in name.lower():
                found.append(name)
                if len(found) >= args.limit:
                    break
    print("NAME")
    for name in found:
        print(f"{registry}/{name}")
    return 0


def _parse_filters(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"bad filter {item!r}: expected key=value")
        if key == "stars":
            if not value.isdigit():
                raise UsageError(f"bad filter {item!r}: stars needs a number")
            out[key] = int(value)
        elif key == "is-official":
            if value.lower() not in ("true", "false"):
                raise UsageError(f"bad filter {item!r}: is-official needs true or false")
            out[key] = value.lower() == "true"
        else:
            raise UsageError(f"unknown filter {key!r} (stars, is-official)")
    return out


def _print_hub(results: list[SearchResult], no_trunc: bool) -> None:
    rows = [["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]]
    for r in results:
        desc = r.description if no_trunc or len(r.description) <= 45 else r.description[:44] + "…"
        rows.append([r.name, desc, str(r.stars), "[OK]" if r.official else ""])
    print("\n".join(table(rows)))


def cmd_tags(args: argparse.Namespace) -> int:
    ref = Reference.parse(args.reference)
    with _client(args, ref.registry) as client:
        for tag in client.tags(ref.repository):
            print(tag)
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from unionfs.registry.client import RegistryClient
    from unionfs.registry.credentials import DockerConfig, normalize_server
    from unionfs.registry.transport import Credentials

    registry = normalize_server(args.server) if args.server else DEFAULT_REGISTRY
    config = DockerConfig()
    username, password = args.username, args.password
    if args.password_stdin:
        if password:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    elif password:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
    if not username and not password:
        stored = config.get(registry)
        if stored is not None and not sys.stdin.isatty():
            username, password = stored.username, stored.password
    interactive = sys.stdin.isatty()
    if not username:
        if not interactive:
            raise UsageError("login needs --username when standard input is not a terminal")
        username = input("Username: ").strip()
    if not password:
        if not interactive:
            raise UsageError("login needs --password-stdin (or --password) when standard input is not a terminal")
        import getpass  # here: only an interactive login asks (startup time of the other commands)

        password = getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("login needs a username and a password")
    creds = Credentials(username, password)
    with RegistryClient(registry, credentials=creds, insecure=args.insecure) as client:
        try:
            client.login()
        except RegistryAuthError as e:
            if e.code != "UNAUTHORIZED":  # not a refusal of the credentials (e.g. a token realm we refuse)
                raise
            detail = str(e).rsplit(": ", 1)[-1]
            detail = "" if detail == "wrong username or password" else f" ({detail})"
            raise RegistryAuthError(f"login to {registry} failed: wrong username or password{detail}",
                                    e.code) from None
    if config.helper_for(registry) is None:  # docker's warning, on standard error
        print(f"WARNING! Your password will be stored unencrypted in {config.path} (configure a credential "
              f"helper, credsStore or credHelpers, to keep it elsewhere).", file=sys.stderr)
    config.save(registry, creds)
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from unionfs.registry.credentials import DockerConfig, normalize_server

    registry = normalize_server(args.server) if args.server else DEFAULT_REGISTRY
    config = DockerConfig()
    if config.erase(registry):  # through the registry's credential helper too, when it has one
        print(f"Removing login credentials for {registry}")
    else:
        print(f"Not logged in to {registry}")
    return 0


# --- registration -----------------------------------------------------------------------------
def _net(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="allow plain HTTP and skip TLS verification (a registry on localhost may use HTTP anyway)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add pull, push, search, tags, login and logout."""
    p = sub.add_parser("pull", help="pull an image from a registry",
                       description="Pull an image (NAME[:TAG|@DIGEST], docker's reference rules) into the store, "
                                   "through the mirrors, locations, aliases and search registries of "
                                   "registries.conf and docker's registry-mirrors (docs/cli.md).")
    p.add_argument("reference", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("-a", "--all-tags", action="store_true", help="pull every tag of the repository")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform to pick from an index (default: host)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress; print only the reference")
    p.add_argument("-j", "--jobs", type=int, help="parallel downloads (default 3)")
    p.add_argument("--follow-foreign-urls", action="store_true",
                   help="fetch foreign (non-distributable) layers from the URLs their manifest lists")
    p.add_argument("--no-unpack", action="store_true",
                   help="store and verify the blobs only; the layers are extracted when first used")
    _net(p)
    p.set_defaults(func=cmd_pull, fast_exit=True)

    p = sub.add_parser("push", help="push an image to a registry",
                       description="Push a stored image (reference or id) to a registry: to DEST when given, "
                                   "else to the image's own reference.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("destination", nargs="?", metavar="DEST", help="destination reference (default: IMAGE)")
    p.add_argument("-a", "--all-tags", action="store_true", help="push every stored tag of the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    p.add_argument("-j", "--jobs", type=int, help="parallel uploads (default 3)")
    _net(p)
    p.set_defaults(func=cmd_push, fast_exit=True)

    p = sub.add_parser("search", help="search a registry for repositories",
                       description="Search Docker Hub (its search API), or another registry's catalog "
                                   "(/v2/_catalog filtered by TERM).")
    p.add_argument("term", metavar="TERM")
    p.add_argument("--registry", metavar="HOST", help="search this registry's catalog (default: Docker Hub)")
    p.add_argument("--limit", type=int, default=25, help="at most this many results (default 25)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="Docker Hub only: stars=N, is-official=true|false")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate descriptions")
    _net(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("tags", help="list a repository's tags in its registry",
                       description="List the tags of a repository (NAME, docker's reference rules).")
    p.add_argument("reference", metavar="NAME")
    _net(p)
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("login", help="log in to a registry",
                       description="Check credentials with the registry and keep them as docker does: through the "
                                   "credential helper the docker config names (credHelpers, credsStore), else in "
                                   "the file itself ($DOCKER_CONFIG/config.json, default ~/.docker/config.json, "
                                   "mode 0600).")
    p.add_argument("server", nargs="?", metavar="SERVER", help="registry host (default: Docker Hub)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="password (insecure: prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _net(p)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="forget a registry's credentials",
                       description="Remove a registry's credentials from the docker config and from its "
                                   "credential helper.")
    p.add_argument("server", nargs="?", metavar="SERVER", help="registry host (default: Docker Hub)")
    p.set_defaults(func=cmd_logout)
