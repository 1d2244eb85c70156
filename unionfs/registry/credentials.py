"""Registry credentials in docker's config format, so that docker's own logins work here and ours there.

The file is ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``). Contracts:

* ``auths`` maps a server key to ``{"auth": base64("user:password")}`` (an ``identitytoken`` is honoured);
  Docker Hub's key is ``https://index.docker.io/v1/``; other registries are keyed by ``host[:port]`` (keys
  written as URLs, ``https://host/v2/``, are found too).
* ``credHelpers[host]`` / ``credsStore`` name a ``docker-credential-NAME`` program (credhelper.py). Lookups ask
  ``credHelpers[host]``'s helper, then the file's ``auths``, then the ``credsStore`` helper.
* ``save``/``erase`` go where docker's would: through ``credHelpers[host]``'s helper, else through the
  ``credsStore`` helper, else into ``auths``. With a helper the secret never touches the file: ``auths`` keeps
  an empty entry ``{}`` for the registry (what docker writes, and how ``docker logout`` knows the login), and
  any ``auth`` that was there before is dropped. A helper that fails leaves the file as it was.
* Writes keep every other key of the file, go through a temporary file and a rename, and leave the file
  mode 0600 (its directory 0700 when we create it).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from unionfs.errors import CredentialsError
from unionfs.registry.credhelper import CredentialHelper
from unionfs.registry.transport import DOCKER_HUB, Credentials

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


def config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def normalize_server(server: str) -> str:
    """The registry a server key or login argument names: ``https://index.docker.io/v1/`` -> ``docker.io``,
    ``https://host:5000/v2/`` -> ``host:5000``."""
    text = server.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.split("/", 1)[0]
    return DOCKER_HUB if text.lower() in _HUB_ALIASES else text


def server_key(registry: str) -> str:
    """The ``auths`` key docker uses for a registry."""
    reg = normalize_server(registry)
    return DOCKER_HUB_KEY if reg == DOCKER_HUB else reg


class DockerConfig:
    """Credentials in one docker config file (``path`` defaults to ``config_path()``)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else config_path()

    def load(self) -> dict[str, Any]:
        """The whole file as JSON (``{}`` when it does not exist). Raises CredentialsError when malformed."""
        try:
            data = json.loads(self.path.read_bytes() or b"{}")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise CredentialsError(f"cannot read {self.path}: {e}") from None
        if not isinstance(data, dict):
            raise CredentialsError(f"{self.path} is not a JSON object")
        return data

    def get(self, registry: str) -> Credentials | None:
        """The credentials for a registry, or None when none are configured."""
        reg = normalize_server(registry)
        data = self.load()
        helper = _section(data, "credHelpers").get(reg)
        if isinstance(helper, str) and helper:
            return CredentialHelper(helper).get(server_key(reg))
        auths = _section(data, "auths")
        for key, entry in auths.items():
            if normalize_server(key) == reg and isinstance(entry, dict):
                creds = _decode_entry(entry, key, self.path)
                if creds is not None:
                    return creds
        store = data.get("credsStore")
        if isinstance(store, str) and store:
            return CredentialHelper(store).get(server_key(reg))
        return None

    def helper_for(self, registry: str) -> CredentialHelper | None:
        """The helper that ``save``/``erase`` use for a registry (``credHelpers[host]``, else ``credsStore``), or
        None when credentials go into the file."""
        return _helper_for(self.load(), normalize_server(registry))

    def save(self, registry: str, credentials: Credentials) -> None:
        """Record credentials for a registry: through its helper when one is configured, else under ``auths``
        (see the module docstring; any other key naming the registry is replaced)."""
        reg = normalize_server(registry)
        data = self.load()
        helper = _helper_for(data, reg)
        entry: dict[str, str] = {}
        if helper is not None:
            helper.store(server_key(reg), credentials)
        else:
            raw = f"{credentials.username}:{credentials.password}".encode()
            entry["auth"] = base64.b64encode(raw).decode()
            if credentials.identity_token:
                entry["identitytoken"] = credentials.identity_token
        auths = {k: v for k, v in _section(data, "auths").items() if normalize_server(k) != reg}
        auths[server_key(reg)] = entry
        data["auths"] = auths
        self._write(data)

    def erase(self, registry: str) -> bool:
        """Forget a registry's credentials, in its helper (when one is configured: first) and in the file;
        True when there were some in either."""
        reg = normalize_server(registry)
        data = self.load()
        helper = _helper_for(data, reg)
        erased = helper.erase(server_key(reg)) if helper is not None else False
        auths = _section(data, "auths")
        keep = {k: v for k, v in auths.items() if normalize_server(k) != reg}
        if len(keep) == len(auths):
            return erased
        data["auths"] = keep
        self._write(data)
        return True

    def _write(self, data: dict[str, Any]) -> None:
        import tempfile  # here: only login and logout write (tempfile loads shutil and its compressors: startup time)

        directory = self.path.parent
        try:
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True)
            fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=directory)
            try:
                with os.fdopen(fd, "w") as f:
                    os.fchmod(f.fileno(), 0o600)
                    json.dump(data, f, indent="\t")
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            raise CredentialsError(f"cannot write {self.path}: {e.strerror or e}") from None


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _decode_entry(entry: dict[str, Any], key: str, path: Path) -> Credentials | None:
    token = entry.get("identitytoken") or None
    auth = entry.get("auth")
    if auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"{path}: the auth entry for {key} is not base64 of user:password") from None
        if not sep:
            raise CredentialsError(f"{path}: the auth entry for {key} has no ':'")
        return Credentials(user, password, token)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), token)
    if token:
        return Credentials("<token>", "", token)
    return None


def _helper_for(data: dict[str, Any], reg: str) -> CredentialHelper | None:
    helper = _section(data, "credHelpers").get(reg)
    if not (isinstance(helper, str) and helper):
        helper = data.get("credsStore")
    return CredentialHelper(helper) if isinstance(helper, str) and helper else None
