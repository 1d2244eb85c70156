"""Reading an image through mirrors: ``MirroredClient`` tries a ``PullPlan``'s endpoints (registries_conf.py)
in order, mirrors first and the origin last, for every manifest, blob and tag list that a pull reads.

It answers what ``transfer.pull`` asks of a ``RegistryClient`` (``get_manifest``, ``fetch_blob``,
``open_blob``, ``tags``) with the logical repository, which it maps to each endpoint's own. Contracts:

* **One client per endpoint**, made when first needed, with the credentials stored for *that endpoint's* host
  (a mirror never gets the origin's, nor the origin a mirror's) and the endpoint's ``insecure``. A mirror is
  pinged once, without retries: one that cannot be reached is skipped for the rest of the pull with one
  warning; the origin keeps the full retry policy.
* **Fallback.** A mirror that lacks what is asked (404) is passed over for that item (logged at info); one
  that fails otherwise (an error answer after the retries, a refused login, a broken connection) is skipped
  for the rest of the pull, with one warning line. The origin's errors are the pull's errors.
* **Verification, whoever serves.** A manifest by digest must hash to its digest, one by tag must match the
  ``Docker-Content-Digest`` the endpoint sends (client.py); a mirror that fails that is *lying*: it is warned
  about and not asked again in this pull, and the next endpoint is asked. Blobs from a mirror are hashed as they
  stream even when the caller hashes too; a wrong blob from a mirror fails the pull with an error that names the
  mirror (its bytes were already handed on, so it cannot fall back mid-stream; the store keeps nothing of it).
* What a mirror says a *tag* names is believed, as docker and containers/image do with mirrors that serve tags:
  ``pull-from-mirror = "digest-only"`` (or ``mirror-by-digest-only``) keeps tags to the origin.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, TypeVar

from unionfs.errors import (
    CredentialsError,
    DigestError,
    RegistryBlockedError,
    RegistryError,
    RegistryNotFoundError,
)
from unionfs.oci.digest import Digest
from unionfs.oci.reference import Reference
from unionfs.registry.client import FetchedManifest, RegistryClient
from unionfs.registry.registries_conf import Endpoint, PullPlan, RegistriesConf, load
from unionfs.registry.transport import Credentials, Deadlines, RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
CredentialsLookup = Callable[[str], "Credentials | None"]


def _no_credentials(registry: str) -> Credentials | None:
    return None


class MirroredClient:
    """Reads of one pull through ``plan``'s endpoints (see the module docstring). Thread-safe; close it (or use
    ``with``). ``credentials(host)`` gives the credentials stored for a host; ``retry``, ``deadlines`` and
    ``transport`` are handed to every endpoint's ``RegistryClient``."""

    def __init__(self, plan: PullPlan, *, credentials: CredentialsLookup = _no_credentials,
                 retry: RetryPolicy | None = None, deadlines: Deadlines | None = None, transport: Any = None) -> None:
        if plan.blocked:
            raise ValueError("a blocked plan has no endpoints to read from")
        self.plan = plan
        self.registry = plan.reference.registry
        self._credentials = credentials
        self._options: dict[str, Any] = {"retry": retry, "deadlines": deadlines, "transport": transport}
        self._clients: dict[Endpoint, RegistryClient] = {}
        self._skipped: set[Endpoint] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every endpoint's connections."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def __enter__(self) -> "MirroredClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints -----------------------------------------------------------------------------------
    def _client(self, ep: Endpoint) -> RegistryClient | None:
        """The endpoint's client (pinged), or None for a mirror that is skipped from now on."""
        with self._lock:
            if ep in self._skipped:
                return None
            if ep in self._clients:
                return self._clients[ep]
            try:
                client = RegistryClient(ep.host, credentials=self._credentials(ep.host), insecure=ep.insecure,
                                        **self._options)
            except CredentialsError as e:
                if not ep.mirror:
                    raise
                self._skip(ep, f"its credentials cannot be read: {e}")
                return None
            if ep.mirror:
                try:
                    client.ping(attempts=1)
                except RegistryError as e:
                    client.close()
                    self._skip(ep, str(e))
                    return None
            self._clients[ep] = client
            return client

    def _skip(self, ep: Endpoint, why: str) -> None:
        """Pass over a mirror for the rest of the pull, saying so once (the caller holds the lock)."""
        if ep in self._skipped:
            return
        self._skipped.add(ep)
        log.warning("mirror %s for %s skipped: %s", ep.host, self.plan.reference.name, why)

    def _repository(self, ep: Endpoint, repository: str) -> str:
        logical = self.plan.reference.repository
        if repository != logical:
            raise ValueError(f"this client reads {logical}, not {repository}")
        return ep.reference.repository

    def _each(self, repository: str, what: str, op: Callable[[RegistryClient, str, Endpoint], T]) -> T:
        """``op(client, repository, endpoint)`` on each endpoint in turn, with the endpoint's own repository,
        until one answers; the origin's error when it comes to that."""
        for ep in self.plan.endpoints:
            client = self._client(ep)
            if not ep.mirror:
                assert client is not None
                return op(client, self._repository(ep, repository), ep)
            if client is None:
                continue
            try:
                return op(client, self._repository(ep, repository), ep)
            except RegistryNotFoundError as e:
                log.info("mirror %s has no %s (%s); trying the next source", ep.host, what, e)
            except DigestError as e:
                with self._lock:
                    self._skip(ep, f"it sent wrong content for {what} ({e})")
            except RegistryError as e:
                with self._lock:
                    self._skip(ep, f"{what}: {e}")
        raise AssertionError("a plan ends with its origin")

    # -- what a pull reads ---------------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """A manifest or index by tag or digest, verified (``RegistryClient.get_manifest``), from the first
        endpoint that has it."""
        return self._each(repository, f"manifest {reference}", lambda c, repo, _: c.get_manifest(repo, reference))

    def fetch_blob(self, repository: str, digest: Digest, size: int | None = None, limit: int = 64 << 20) -> bytes:
        """A small blob in memory, verified, from the first endpoint that has it right."""
        return self._each(repository, f"blob {digest}", lambda c, repo, _: c.fetch_blob(repo, digest, size, limit))

    def open_blob(self, repository: str, digest: Digest, size: int | None = None, *, verify: bool = True,
                  start: int = 0, **options: Any) -> Any:
        """A reader of a blob from the first endpoint that answers for it (``RegistryClient.open_blob``, whose
        other options pass through as they are); a mirror's is hashed as it streams whatever ``verify`` says
        (but from a ``start`` past byte 0: then only the caller, holding the first bytes, can hash it), and
        its DigestError names the mirror."""
        def op(client: RegistryClient, repo: str, ep: Endpoint) -> Any:
            reader = client.open_blob(repo, digest, size, verify=(verify or ep.mirror) and start == 0, start=start,
                                      **options)
            return _MirrorBlob(reader, ep.host) if ep.mirror else reader
        return self._each(repository, f"blob {digest}", op)

    def fetch_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of a blob (``RegistryClient.fetch_range``) from the first endpoint that
        answers for it; unverified: the caller checks them."""
        return self._each(repository, f"blob {digest}", lambda c, repo, _: c.fetch_range(repo, digest, start, end))

    def tags(self, repository: str, page: int | None = None) -> list[str]:
        """The repository's tags from the first endpoint that lists them."""
        return self._each(repository, "the tag list", lambda c, repo, _: c.tags(repo, page))


class _MirrorBlob:
    """A mirror's blob reader whose DigestError says which mirror sent the wrong bytes."""

    def __init__(self, reader: Any, host: str) -> None:
        self._reader = reader
        self._host = host

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._reader.read(n)
        except DigestError as e:
            log.warning("mirror %s sent a wrong blob %s", self._host, self._reader.digest)
            raise DigestError(f"{e} (sent by mirror {self._host})") from None
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "_MirrorBlob":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def client_for(ref: Reference, conf: RegistriesConf | None = None, *, insecure: bool = False,
               retry: RetryPolicy | None = None, deadlines: Deadlines | None = None) -> MirroredClient:
    """A client that reads ``ref`` as registries.conf and daemon.json say (``conf``, default: ``load()``), with
    the credentials the docker config keeps for each endpoint's host; ``insecure`` (``--insecure``) for its
    location; ``retry`` and ``deadlines`` for every endpoint (default: the client's). Raises
    RegistryBlockedError when a ``blocked`` table matches ``ref``, RegistriesConfError."""
    from unionfs.registry.credentials import DockerConfig

    plan = (conf if conf is not None else load()).plan(ref, insecure=insecure)
    if plan.blocked:
        assert plan.rule is not None
        raise RegistryBlockedError(f"pulling {ref} is blocked by {plan.rule.source} "
                                   f"([[registry]] prefix {plan.rule.prefix!r})")
    log.debug("pull %s from %s", ref, describe_plan(plan))
    return MirroredClient(plan, credentials=DockerConfig().get, retry=retry, deadlines=deadlines)


def describe_plan(plan: PullPlan) -> str:
    """The endpoints of a plan on one line, for debug logs: ``a (mirror), b (mirror, insecure), c``."""
    parts = []
    for ep in plan.endpoints:
        notes = [n for n, on in (("mirror", ep.mirror), ("insecure", ep.insecure)) if on]
        parts.append(f"{ep.reference.name}" + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(parts)

