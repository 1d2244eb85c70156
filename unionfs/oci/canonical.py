"""The bytes of the JSON unionfs writes (manifests, configs, container states, cache entries): here, apart from
the manifest types, so that writing a container's state loads nothing but :mod:`json`."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    """The bytes we write for JSON we produce: compact, keys sorted, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
