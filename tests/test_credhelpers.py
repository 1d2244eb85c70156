"""Credential helpers (unionfs/registry/credhelper.py, credentials.py) and ``login``/``logout`` through them.

A real helper program speaking the docker-credential-helpers protocol (``store``, ``get``, ``erase``, ``list`` on
stdin/stdout) is written for each test: a small Python script keeping its secrets in a JSON file of the test's
own, recording which operations it ran, and failing on demand (echoing its whole input, secret included, as a
careless helper would). The CLI runs against a real ``docker-registry`` with htpasswd auth on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
from support.cli import run_cli
from support.regimage import push_tiny_image
from support.registry import USERS, Registry, have_registry, running_registry

from unionfs.errors import CredentialsError
from unionfs.registry.client import RegistryClient
from unionfs.registry.credentials import DOCKER_HUB_KEY, DockerConfig
from unionfs.registry.credhelper import CredentialHelper
from unionfs.registry.transport import Credentials, RetryPolicy

SECRET = "Hunter2-never-shown"
FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)

HELPER = """#!{python}
import json, os, sys
store = {store!r}
action = sys.argv[1]
data = sys.stdin.read()
with open(store + ".calls", "a") as f:
    f.write(action + "\\n")
if os.environ.get("TEST_HELPER_FAIL") == action:
    print("cannot " + action + ": " + data)          # a careless helper echoes its input
    print("stderr too: " + data, file=sys.stderr)
    sys.exit(1)
try:
    with open(store) as f:
        db = json.load(f)
except FileNotFoundError:
    db = {{}}
if action == "store":
    req = json.loads(data)
    db[req["ServerURL"]] = {{"Username": req["Username"], "Secret": req["Secret"]}}
elif action == "get":
    if data.strip() not in db:
        print("credentials not found in native keychain")
        sys.exit(1)
    entry = db[data.strip()]
    print(json.dumps({{"ServerURL": data.strip(), **entry}}))
elif action == "erase":
    if db.pop(data.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
elif action == "list":
    print(json.dumps({{k: v["Username"] for k, v in db.items()}}))
else:
    print("unknown action")
    sys.exit(1)
with open(store, "w") as f:
    json.dump(db, f)
"""


class Helper:
    """The test helper ``docker-credential-NAME`` in ``bin``, keeping its secrets in ``store``."""

    def __init__(self, base: Path, name: str = "testhelper") -> None:
        self.name = name
        self.bin = base / "bin"
        self.bin.mkdir(exist_ok=True)
        self.store = base / f"{name}-store.json"
        program = self.bin / f"docker-credential-{name}"
        program.write_text(HELPER.format(python=sys.executable, store=str(self.store)))
        program.chmod(0o755)

    def secrets(self) -> dict[str, dict[str, str]]:
        return json.loads(self.store.read_text()) if self.store.exists() else {}

    def calls(self) -> list[str]:
        path = Path(f"{self.store}.calls")
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Helper:
    """A helper on PATH; a docker config of the test's own (DOCKER_CONFIG) that names nothing yet."""
    h = Helper(tmp_path)
    monkeypatch.setenv("PATH", f"{h.bin}:{os.environ['PATH']}")
    monkeypatch.delenv("TEST_HELPER_FAIL", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    (tmp_path / "docker-config").mkdir()
    return h


def _config(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "docker-config" / "config.json"
    path.write_text(json.dumps(data))
    return path


# --- the protocol ------------------------------------------------------------------------------------------
def test_helper_round_trip(helper: Helper) -> None:
    h = CredentialHelper(helper.name)
    assert h.get("reg.example") is None
    h.store("reg.example", Credentials("alice", SECRET))
    h.store(DOCKER_HUB_KEY, Credentials("hub", "", "an-identity-token"))
    assert h.get("reg.example") == Credentials("alice", SECRET)
    assert h.get(DOCKER_HUB_KEY) == Credentials("<token>", "", "an-identity-token")
    assert helper.secrets()[DOCKER_HUB_KEY] == {"Username": "<token>", "Secret": "an-identity-token"}
    assert h.list() == {"reg.example": "alice", DOCKER_HUB_KEY: "<token>"}
    assert h.erase("reg.example") is True and h.erase("reg.example") is False
    assert h.get("reg.example") is None


def test_helper_errors_are_one_line_without_the_secret(helper: Helper, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HELPER_FAIL", "store")
    with pytest.raises(CredentialsError) as err:
        CredentialHelper(helper.name).store("reg.example", Credentials("alice", 'a"quoted\\' + SECRET))
    text = str(err.value)
    assert "failed to store" in text and "\n" not in text and "alice" in text  # the helper's message, redacted
    assert SECRET not in text and "quoted" not in text
    with pytest.raises(CredentialsError, match="not installed"):
        CredentialHelper("no-such-helper").get("reg.example")
    for bad in ("", "../evil", "a/b"):
        with pytest.raises(CredentialsError, match="not valid"):
            CredentialHelper(bad)


# --- DockerConfig: where save and erase go ------------------------------------------------------------
def test_save_through_creds_store_keeps_the_secret_out_of_the_file(helper: Helper, tmp_path: Path) -> None:
    path = _config(tmp_path, {"credsStore": helper.name, "psFormat": "table",
                              "auths": {"reg.example": {"auth": "b2xkOm9sZA=="}}})  # old:old, in the file
    cfg = DockerConfig(path)
    assert cfg.helper_for("reg.example") is not None
    cfg.save("reg.example", Credentials("alice", SECRET))
    data = json.loads(path.read_text())
    assert data["auths"] == {"reg.example": {}} and data["psFormat"] == "table"  # docker's empty entry
    assert SECRET not in path.read_text() and "b2xkOm9sZA" not in path.read_text()
    assert helper.secrets() == {"reg.example": {"Username": "alice", "Secret": SECRET}}
    assert cfg.get("reg.example") == Credentials("alice", SECRET)
    assert cfg.erase("reg.example") is True
    assert helper.secrets() == {} and json.loads(path.read_text())["auths"] == {}
    assert cfg.erase("reg.example") is False


def test_cred_helpers_entry_wins_over_creds_store(helper: Helper, tmp_path: Path) -> None:
    other = Helper(tmp_path, "other")
    path = _config(tmp_path, {"credsStore": "other", "credHelpers": {"docker.io": helper.name}})
    cfg = DockerConfig(path)
    cfg.save("index.docker.io", Credentials("hubuser", SECRET))
    cfg.save("reg.example", Credentials("bob", SECRET + "2"))
    assert helper.secrets() == {DOCKER_HUB_KEY: {"Username": "hubuser", "Secret": SECRET}}
    assert list(other.secrets()) == ["reg.example"]
    assert json.loads(path.read_text())["auths"] == {DOCKER_HUB_KEY: {}, "reg.example": {}}
    assert cfg.get("docker.io") == Credentials("hubuser", SECRET)


def test_failing_helper_changes_nothing(helper: Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path, {"credsStore": helper.name, "auths": {"reg.example": {}}})
    CredentialHelper(helper.name).store("reg.example", Credentials("alice", "before"))
    before = path.read_bytes()
    cfg = DockerConfig(path)
    monkeypatch.setenv("TEST_HELPER_FAIL", "store")
    with pytest.raises(CredentialsError):
        cfg.save("reg.example", Credentials("alice", SECRET))
    monkeypatch.setenv("TEST_HELPER_FAIL", "erase")
    with pytest.raises(CredentialsError):
        cfg.erase("reg.example")
    assert path.read_bytes() == before
    assert helper.secrets() == {"reg.example": {"Username": "alice", "Secret": "before"}}


def test_without_helper_the_file_keeps_it(tmp_path: Path, helper: Helper) -> None:
    cfg = DockerConfig(_config(tmp_path, {}))
    assert cfg.helper_for("reg.example") is None
    cfg.save("reg.example", Credentials("alice", SECRET))
    assert json.loads(cfg.path.read_text())["auths"]["reg.example"]["auth"]
    assert helper.calls() == []


# --- the CLI against a real registry -------------------------------------------------------------------
@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("reg-basic"), "htpasswd") as reg:
        with RegistryClient(reg.host, credentials=Credentials("alice", USERS["alice"]), retry=FAST) as c:
            push_tiny_image(c, "private/app", "v1", "private")
        yield reg


def _no_secret(p: object, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in p.stdout and secret not in p.stderr, p  # type: ignore[attr-defined]


def test_login_pull_logout_through_the_helper(basic: Registry, helper: Helper, tmp_path: Path) -> None:
    path = _config(tmp_path, {"credsStore": helper.name})
    root = tmp_path / "store"
    password = USERS["alice"]
    p = run_cli("--debug", "login", basic.host, "-u", "alice", "--password-stdin", input=password + "\n")
    assert "Login Succeeded" in p.stdout and "unencrypted" not in p.stderr
    _no_secret(p, password)
    assert helper.secrets() == {basic.host: {"Username": "alice", "Secret": password}}
    assert json.loads(path.read_text())["auths"] == {basic.host: {}} and password not in path.read_text()
    assert run_cli("pull", "-q", f"{basic.host}/private/app:v1", root=root).stdout.strip().endswith("app:v1")
    assert "get" in helper.calls()
    p = run_cli("logout", basic.host)
    assert p.stdout.strip() == f"Removing login credentials for {basic.host}"
    assert helper.secrets() == {} and json.loads(path.read_text())["auths"] == {}
    assert helper.calls()[-1] == "erase"
    assert run_cli("logout", basic.host).stdout.strip() == f"Not logged in to {basic.host}"
    p = run_cli("pull", "-q", f"{basic.host}/private/app:v1", root=tmp_path / "store2", check=False)
    assert p.returncode == 1 and f"unionfs login {basic.host}" in p.stderr


def test_wrong_password_and_failing_helper_show_no_secret(basic: Registry, helper: Helper, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path, {"credsStore": helper.name})
    before = path.read_bytes()
    p = run_cli("--debug", "login", basic.host, "-u", "alice", "--password-stdin", input=SECRET + "\n", check=False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(f"unionfs: login to {basic.host} failed: wrong username")
    _no_secret(p, SECRET)
    assert helper.calls() == [] and path.read_bytes() == before  # nothing stored anywhere
    monkeypatch.setenv("TEST_HELPER_FAIL", "store")
    password = USERS["alice"]
    p = run_cli("--debug", "login", basic.host, "-u", "alice", "-p", password, check=False)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("unionfs: credential helper docker-credential-testhelper failed to store: "), p.stderr
    _no_secret(p, password)
    assert helper.calls() == ["store"] and path.read_bytes() == before and helper.secrets() == {}


def test_login_without_helper_warns_of_the_plain_file(basic: Registry, helper: Helper, tmp_path: Path) -> None:
    p = run_cli("login", basic.host, "-u", "bob", "--password-stdin", input=USERS["bob"] + "\n")
    assert "Login Succeeded" in p.stdout
    assert f"stored unencrypted in {tmp_path / 'docker-config' / 'config.json'}" in p.stderr
    assert helper.calls() == []
