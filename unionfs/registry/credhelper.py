"""The docker-credential-helpers protocol: ``docker-credential-NAME`` programs that keep registry secrets.

A helper is run once per operation with the operation as its only argument (``get``, ``store``, ``erase``,
``list``); its standard input carries the request, its standard output the answer:

* ``get``: the server URL in, ``{"ServerURL", "Username", "Secret"}`` out (``Username`` ``<token>`` means the
  secret is an identity token);
* ``store``: ``{"ServerURL", "Username", "Secret"}`` in, nothing out;
* ``erase``: the server URL in, nothing out;
* ``list``: nothing in, ``{server URL: username}`` out.

A helper that fails exits non-zero with a message on standard output (``credentials not found in native
keychain`` when it has nothing for the server). Contracts:

* ``get`` and ``erase`` of a server the helper does not know give None / False, not an error.
* Every other failure (not installed, not executable, no answer within ``HELPER_TIMEOUT`` seconds, a non-zero
  exit, an answer that is not the protocol's JSON) raises ``CredentialsError`` with one line; the helper's own
  message is quoted with the secret being stored cut out of it (a helper that echoes its input cannot put the
  password into an error message), and nothing of a request or an answer is ever logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from unionfs.errors import CredentialsError
from unionfs.registry.transport import Credentials

log = logging.getLogger(__name__)

#: seconds a helper may take for one operation (a keychain may ask the user to unlock it)
HELPER_TIMEOUT = 60.0
#: the fixed user name docker-credential-helpers use for an identity token
TOKEN_USER = "<token>"
_MAX_MESSAGE = 200


class CredentialHelper:
    """One ``docker-credential-NAME`` program (found on ``PATH``)."""

    def __init__(self, name: str) -> None:
        """``name`` is what a docker config's ``credsStore``/``credHelpers`` says: ``pass``, ``secretservice``...

        Raises CredentialsError for a name that is not a bare program suffix (empty, or holding ``/`` or NUL).
        """
        if not name or "/" in name or "\0" in name or name != name.strip():
            raise CredentialsError(f"credential helper name {name!r} in the docker config is not valid")
        self.name = name
        self.program = f"docker-credential-{name}"

    def __repr__(self) -> str:
        return f"CredentialHelper({self.name!r})"

    def get(self, server: str) -> Credentials | None:
        """The credentials the helper keeps for ``server`` (a docker config key), or None when it has none."""
        out = self._run("get", server.encode(), (), allow_missing=True)
        if out is None:
            return None
        answer = _json_object(out, self.program, "get")
        user, secret = str(answer.get("Username") or ""), str(answer.get("Secret") or "")
        if user == TOKEN_USER:
            return Credentials(user, "", secret) if secret else None
        return Credentials(user, secret) if user else None

    def store(self, server: str, credentials: Credentials) -> None:
        """Keep ``credentials`` for ``server`` (an identity token is stored as docker does, user ``<token>``)."""
        if credentials.identity_token:
            user, secret = TOKEN_USER, credentials.identity_token
        else:
            user, secret = credentials.username, credentials.password
        payload = json.dumps({"ServerURL": server, "Username": user, "Secret": secret}).encode()
        self._run("store", payload, (secret, credentials.password, credentials.identity_token or ""))

    def erase(self, server: str) -> bool:
        """Forget ``server``'s credentials; False when the helper had none."""
        return self._run("erase", server.encode(), (), allow_missing=True) is not None

    def list(self) -> dict[str, str]:
        """Every server the helper keeps credentials for, with its user name."""
        out = self._run("list", b"", ())
        answer = _json_object(out or b"{}", self.program, "list")
        return {str(k): str(v) for k, v in answer.items()}

    def _run(self, action: str, data: bytes, secrets: tuple[str, ...], allow_missing: bool = False) -> bytes | None:
        """Run ``PROGRAM ACTION`` with ``data`` on its stdin; its stdout. None when ``allow_missing`` and the
        helper says it has no credentials for the server."""
        import subprocess  # here: a pull or push without a helper does not load it (startup time)

        log.debug("credential helper %s %s", self.program, action)
        try:
            p = subprocess.run([self.program, action], input=data, capture_output=True, timeout=HELPER_TIMEOUT)
        except FileNotFoundError:
            raise CredentialsError(f"credential helper {self.program} is configured but not installed") from None
        except PermissionError:
            raise CredentialsError(f"credential helper {self.program} cannot be run (permission denied)") from None
        except subprocess.TimeoutExpired:
            raise CredentialsError(f"credential helper {self.program} did not answer {action} within "
                                   f"{HELPER_TIMEOUT:g} s") from None
        except OSError as e:
            raise CredentialsError(f"credential helper {self.program} cannot be run: {e.strerror or e}") from None
        if p.returncode == 0:
            return p.stdout
        message = (p.stdout.strip() or p.stderr.strip()).decode(errors="replace")
        if allow_missing and "not found" in message.lower():
            return None
        raise CredentialsError(f"credential helper {self.program} failed to {action}: "
                               f"{_redact(message, secrets) or f'exit status {p.returncode}'}")


def _redact(message: str, secrets: tuple[str, ...]) -> str:
    """``message`` on one bounded line, without any of ``secrets`` (raw or as JSON would escape them)."""
    text = message
    for secret in secrets:
        if secret:
            for form in {secret, json.dumps(secret)[1:-1]}:
                text = text.replace(form, "***")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _json_object(out: bytes, program: str, action: str) -> dict[str, Any]:
    try:
        answer = json.loads(out)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict):
        raise CredentialsError(f"credential helper {program} answered {action} with something that is not a "
                               f"JSON object")
    return answer
