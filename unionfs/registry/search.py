"""Docker Hub's search API (``hub_search``): no registry protocol, no credentials; the HTTP level (deadlines,
retries, capped bodies, error mapping) is transport.py's."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from unionfs.errors import RegistryConnectionError, RegistryError
from unionfs.registry.curl import URL, Client, Request, Response, TransportError
from unionfs.registry.transport import (
    MAX_ERROR_BODY,
    MAX_LIST_BYTES,
    RETRY_STATUSES,
    USER_AGENT,
    Deadline,
    Deadlines,
    RetryPolicy,
    describe,
    error_from_response,
    read_body,
)

DOCKER_HUB_SEARCH_URL = "https://index.docker.io/v1/search"


@dataclass(frozen=True)
class SearchResult:
    """One repository found by a search."""

    name: str
    description: str = ""
    stars: int = 0
    official: bool = False


def hub_search(term: str, limit: int = 25, *, url: str = DOCKER_HUB_SEARCH_URL,
               transport: Callable[[Request], Response] | None = None, retry: RetryPolicy | None = None,
               deadlines: Deadlines | None = None) -> list[SearchResult]:
    """Docker Hub's search API (``/v1/search?q=TERM&n=LIMIT``); ``url`` and ``transport`` are for tests.

    No credentials are involved (redirects are followed); the answer comes within the request deadline and is
    read up to ``MAX_LIST_BYTES``.
    """
    policy = retry or RetryPolicy()
    limits = deadlines or Deadlines.from_env()
    deadline = Deadline.start(limits.request)
    what = f"search {term!r}"
    target = URL.parse(url).with_params({"q": term, "n": str(limit)})
    with Client(transport=transport, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                follow_redirects=True) as http:
        for attempt in range(policy.attempts):
            try:
                r = http.send("GET", target, timeout=limits.timeout(deadline))
            except TransportError as e:
                if deadline.left() <= 0:
                    raise deadline.error(what, target.host, False) from None
                if attempt + 1 < policy.attempts and deadline.allows(delay := policy.delay(attempt)):
                    time.sleep(delay)
                    continue
                raise RegistryConnectionError(f"{what}: cannot reach {target.host}: {describe(e)}") from None
            if r.status_code != 200:
                body = read_body(r, MAX_ERROR_BODY, what, deadline=deadline, truncate=True)
                delay = policy.delay(attempt, r.headers.get("retry-after"))
                if r.status_code in RETRY_STATUSES and attempt + 1 < policy.attempts and deadline.allows(delay):
                    time.sleep(delay)
                    continue
                raise error_from_response(r, what, body)
            body = read_body(r, MAX_LIST_BYTES, what, deadline=deadline, host=target.host)
            break
    try:
        results = json.loads(body).get("results") or []
    except (ValueError, AttributeError, RecursionError):
        raise RegistryError(f"{what}: the answer is not JSON") from None
    out = []
    for item in results[:limit] if isinstance(results, list) else []:
        if isinstance(item, dict) and item.get("name"):
            out.append(SearchResult(str(item["name"]), " ".join(str(item.get("description") or "").split()),
                                    _count(item.get("star_count")), bool(item.get("is_official"))))
    return out


def _count(value: object) -> int:
    """A star count from a search answer: a non-negative int, else 0 (advice shown, never stored)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
