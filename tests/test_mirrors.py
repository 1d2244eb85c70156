"""registries.conf and docker's registry-mirrors (unionfs/registry/registries_conf.py, mirrors.py, ``pull``).

The parsing and the plan are pure and tested as such (the examples of containers-registries.conf(5) among
them). The pulls run the CLI against real ``docker-registry`` processes on 127.0.0.1: an origin, an empty one (a
search registry that has nothing), and a pull-through cache of the origin (distribution's ``proxy: remoteurl:``);
mirrors that misbehave are forwarding servers in front of the origin (``FaultProxy``, or a ``FakeServer`` that
lies about one manifest), or a port where nothing listens. Every test names its own registries.conf
(``CONTAINERS_REGISTRIES_CONF``) and daemon.json (``UNIONFS_DAEMON_JSON``): the machine's are never read.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
from support.cli import run_cli
from support.regimage import push_tiny_image, tiny_manifest
from support.registry import (
    USERS,
    FakeServer,
    FaultProxy,
    Registry,
    free_port,
    have_registry,
    local_address,
    running_registry,
)

from unionfs.errors import RegistriesConfError
from unionfs.oci.reference import Reference
from unionfs.registry.client import RegistryClient
from unionfs.registry.credentials import DockerConfig
from unionfs.registry.registries_conf import (
    Endpoint,
    RegistriesConf,
    config_files,
    load,
    merge,
    parse_daemon_json,
    parse_registries_conf,
    prefix_match,
)
from unionfs.registry.transport import Credentials, RetryPolicy
from unionfs.store.store import Store

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


def conf(*texts: str, daemon: str = "") -> RegistriesConf:
    """The configuration of these files (in order) and this daemon.json."""
    return merge([(f"f{i}.conf", parse_registries_conf(t, f"f{i}.conf")) for i, t in enumerate(texts)],
                 parse_daemon_json(daemon) if daemon else ())


def names(c: RegistriesConf, ref: str) -> list[str]:
    """The plan's endpoints as ``reference [m][i]`` strings (m: mirror, i: insecure)."""
    plan = c.plan(Reference.parse(ref))
    assert not plan.blocked
    return [str(e.reference) + (" m" if e.mirror else "") + (" i" if e.insecure else "") for e in plan.endpoints]


# --- pure: matching and plans -------------------------------------------------------------------------------
def test_prefix_match() -> None:
    ref = "example.com/foo/image:latest"
    assert prefix_match(ref, "example.com") == len("example.com")
    assert prefix_match(ref, "example.com/foo") == len("example.com/foo")
    assert prefix_match(ref, "example.com/foo/image:latest") == len(ref)
    assert prefix_match(ref, "example.com/fo") == -1  # must continue with / : @
    assert prefix_match(ref, "example.co") == -1
    assert prefix_match("a.b.example.com/x:1", "*.example.com") == len("a.b.example.com")
    assert prefix_match("example.com/x:1", "*.example.com") == -1
    assert prefix_match("other.org/a.example.com/x:1", "*.example.com") == -1  # only in the host


def test_man_page_example() -> None:
    """containers-registries.conf(5)'s EXAMPLE, and its note that a mirror belongs to its own table only."""
    c = conf('''
unqualified-search-registries = ["example.com"]
[[registry]]
prefix = "example.com/foo"
insecure = false
blocked = false
location = "internal-registry-for-example.com/bar"
[[registry.mirror]]
location = "example-mirror-0.local/mirror-for-foo"
[[registry.mirror]]
location = "example-mirror-1.local/mirrors/foo"
insecure = true
[[registry]]
location = "registry.com"
[[registry.mirror]]
location = "mirror.registry.com"
''')
    assert names(c, "example.com/foo/image:latest") == [
        "example-mirror-0.local/mirror-for-foo/image:latest m",
        "example-mirror-1.local/mirrors/foo/image:latest m i",
        "internal-registry-for-example.com/bar/image:latest"]
    assert names(c, "registry.com/image:latest") == ["mirror.registry.com/image:latest m", "registry.com/image:latest"]
    assert names(c, "elsewhere.org/image:1") == ["elsewhere.org/image:1"]
    assert [str(r) for r in c.candidates("image")] == ["example.com/image:latest"]


def test_longest_prefix_wins_and_wildcards() -> None:
    c = conf('''
[[registry]]
location = "example.com"
[[registry.mirror]]
location = "short.mirror"
[[registry]]
prefix = "example.com/team/app"
location = "inner.example/app"
[[registry]]
prefix = "*.corp.example"
insecure = true
[[registry.mirror]]
location = "corp-mirror.example/cache/"
[[registry]]
prefix = "*.moved.example"
location = "new.example/moved"
''')
    assert names(c, "example.com/team/app:1") == ["inner.example/app:1"]
    assert names(c, "example.com/team/other:1") == ["short.mirror/team/other:1 m", "example.com/team/other:1"]
    assert names(c, "a.b.corp.example/x/y:2") == ["corp-mirror.example/cache/x/y:2 m", "a.b.corp.example/x/y:2 i"]
    assert names(c, "a.moved.example/x:3") == ["new.example/moved/x:3"]


def test_mirrors_for_tags_and_digests() -> None:
    digest = "sha256:" + "a" * 64
    c = conf('''
[[registry]]
location = "example.com"
[[registry.mirror]]
location = "all.mirror"
[[registry.mirror]]
location = "digests.mirror"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tags.mirror"
pull-from-mirror = "tag-only"
[[registry]]
location = "strict.example"
mirror-by-digest-only = true
[[registry.mirror]]
location = "strict.mirror"
''')
    assert [n.split("/")[0] for n in names(c, "example.com/a:1")] == ["all.mirror", "tags.mirror", "example.com"]
    assert [n.split("/")[0] for n in names(c, f"example.com/a@{digest}")] == ["all.mirror", "digests.mirror",
                                                                              "example.com"]
    assert names(c, "strict.example/a:1") == ["strict.example/a:1"]
    assert names(c, f"strict.example/a@{digest}") == [f"strict.mirror/a@{digest} m", f"strict.example/a@{digest}"]


def test_blocked_insecure_and_the_callers_insecure() -> None:
    c = conf('[[registry]]\nprefix = "evil.example"\nlocation = "evil.example"\nblocked = true\n'
             '[[registry]]\nlocation = "plain.example"\ninsecure = true\n')
    plan = c.plan(Reference.parse("evil.example/x:1"))
    assert plan.blocked and plan.rule is not None and plan.rule.source == "f0.conf"
    assert not c.plan(Reference.parse("evilexample.org/x")).blocked
    assert c.plan(Reference.parse("plain.example/x")).origin == Endpoint(Reference.parse("plain.example/x"), True)
    assert c.plan(Reference.parse("other.example/x"), insecure=True).origin.insecure
    assert not c.plan(Reference.parse("other.example/x")).origin.insecure


def test_docker_registry_mirrors_serve_docker_io_only() -> None:
    daemon = '{"registry-mirrors": ["https://mirror.gcr.io", "http://127.0.0.1:5001/"], "debug": true}'
    c = conf('[[registry]]\nprefix = "docker.io/library"\nlocation = "docker.io/library"\n'
             '[[registry.mirror]]\nlocation = "conf.mirror/lib"\n', daemon=daemon)
    assert names(c, "busybox") == ["conf.mirror/lib/busybox:latest m", "mirror.gcr.io/library/busybox:latest m",
                                   "127.0.0.1:5001/library/busybox:latest m i", "docker.io/library/busybox:latest"]
    assert names(c, "user/app:2") == ["mirror.gcr.io/user/app:2 m", "127.0.0.1:5001/user/app:2 m i",
                                      "docker.io/user/app:2"]
    assert names(c, "quay.io/user/app:2") == ["quay.io/user/app:2"]


def test_short_names() -> None:
    c = conf('unqualified-search-registries = ["quay.io", "docker.io"]\n'
             '[aliases]\n"app" = "registry.example/team/app"\n"tools/x" = "docker.io/tools/x"\n')
    assert [str(r) for r in c.candidates("app:7")] == ["registry.example/team/app:7"]
    digest = "sha256:" + "b" * 64
    assert [str(r) for r in c.candidates(f"tools/x@{digest}")] == [f"docker.io/tools/x@{digest}"]
    assert [str(r) for r in c.candidates("busybox:1")] == ["quay.io/busybox:1", "docker.io/library/busybox:1"]
    assert [str(r) for r in c.candidates("localhost/app")] == ["localhost/app:latest"]  # qualified
    assert [str(r) for r in c.candidates("example.com/app")] == ["example.com/app:latest"]
    assert [str(r) for r in conf().candidates("busybox")] == ["docker.io/library/busybox:latest"]  # docker's default
    enforcing = conf('short-name-mode = "enforcing"\nunqualified-search-registries = ["a.example", "b.example"]\n')
    with pytest.raises(RegistriesConfError, match="ambiguous"):
        enforcing.candidates("busybox")
    assert [str(r) for r in enforcing.candidates("b.example/busybox")] == ["b.example/busybox:latest"]


def test_drop_ins_merge_and_version_1() -> None:
    c = conf('unqualified-search-registries = ["a.example"]\n[aliases]\n"x" = "a.example/x"\n"y" = "a.example/y"\n'
             '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "old.mirror"\n',
             '[aliases]\n"x" = ""\n"z" = "b.example/z"\n[[registry]]\nlocation = "a.example"\nblocked = true\n',
             'unqualified-search-registries = ["b.example"]\n')
    assert dict(c.aliases) == {"y": "a.example/y", "z": "b.example/z"}
    assert c.search == ("b.example",)
    assert c.plan(Reference.parse("a.example/q")).blocked  # the later table with the same prefix replaced it
    v1 = conf("[registries.search]\nregistries = ['s.example']\n[registries.insecure]\nregistries = ['i.example']\n"
              "[registries.block]\nregistries = ['b.example']\n")
    assert v1.search == ("s.example",)
    assert v1.plan(Reference.parse("i.example/x")).origin.insecure
    assert v1.plan(Reference.parse("b.example/x")).blocked


@pytest.mark.parametrize("text, message", [
    ("[[registry]\nlocation='x'", "not valid TOML"),
    ("registry = 3", "array of tables"),
    ("[[registry]]\nprefix = 'example.com'", "has no location"),
    ("[[registry]]\nlocation = 'https://example.com'", "no scheme"),
    ("[[registry]]\nlocation = 'example.com'\npull-from-mirror = 'all'", "belongs in a [[registry.mirror]]"),
    ("[[registry]]\nlocation = 'example.com'\ninsecure = 'yes'", "true or false"),
    ("[[registry]]\nlocation = 'a.example'\n[[registry.mirror]]\nlocation = 'm.example'\npull-from-mirror = 'some'",
     "pull-from-mirror must be one of"),
    ("[[registry]]\nlocation = 'a.example'\nmirror-by-digest-only = true\n[[registry.mirror]]\n"
     "location = 'm.example'\npull-from-mirror = 'all'", "forbids"),
    ("unqualified-search-registries = 'docker.io'", "array of host"),
    ("short-name-mode = 'strict'", "short-name-mode must be"),
    ("[aliases]\n'app:1' = 'a.example/app'", "without tag or digest"),
    ("[aliases]\n'app' = 'team/app'", "must name a registry"),
    ("[aliases]\n'app' = 'a.example/app:1'", "must not have a tag"),
    ("[registries.search]\nregistries = ['a.example']\n[[registry]]\nlocation = 'b.example'", "mixes"),
])
def test_bad_registries_conf_is_one_line(text: str, message: str) -> None:
    with pytest.raises(RegistriesConfError) as err:
        parse_registries_conf(text, "/etc/containers/registries.conf")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("/etc/containers/registries.conf: ")


def test_a_location_that_makes_no_reference_is_one_line() -> None:
    c = conf('[[registry]]\nprefix = "example.com"\nlocation = "nodomain"\n')
    with pytest.raises(RegistriesConfError, match="names no registry host"):
        c.plan(Reference.parse("example.com/app"))


@pytest.mark.parametrize("text", ["[1]", "{", '{"registry-mirrors": "http://m.example"}',
                                  '{"registry-mirrors": ["ftp://m.example"]}',
                                  '{"registry-mirrors": ["https://u:p@m.example"]}',
                                  '{"registry-mirrors": ["https://m.example/path"]}'])
def test_bad_daemon_json_is_one_line(text: str) -> None:
    with pytest.raises(RegistriesConfError) as err:
        parse_daemon_json(text, "/etc/docker/daemon.json")
    assert str(err.value).startswith("/etc/docker/daemon.json: ") and "\n" not in str(err.value)


def test_which_files_are_read(tmp_path: Path) -> None:
    system = tmp_path / "etc" / "registries.conf"
    (tmp_path / "etc" / "registries.conf.d").mkdir(parents=True)
    system.write_text('unqualified-search-registries = ["system.example"]\n')
    (tmp_path / "etc" / "registries.conf.d" / "20-b.conf").write_text('[aliases]\n"b" = "system.example/b"\n')
    (tmp_path / "etc" / "registries.conf.d" / "10-a.conf").write_text("")
    (tmp_path / "etc" / "registries.conf.d" / "ignored.txt").write_text("junk [")
    home = tmp_path / "home"
    env = {"HOME": str(home), "UNIONFS_DAEMON_JSON": ""}
    assert config_files(env, system) == [system, system.with_name("registries.conf.d") / "10-a.conf",
                                         system.with_name("registries.conf.d") / "20-b.conf"]
    user_dropin = home / ".config/containers/registries.conf.d/x.conf"
    user_dropin.parent.mkdir(parents=True)
    user_dropin.write_text('unqualified-search-registries = ["dropin.example"]\n')
    assert config_files(env, system)[-1] == user_dropin
    assert load(env, system).search == ("dropin.example",)
    user = home / ".config/containers/registries.conf"
    user.write_text('unqualified-search-registries = ["user.example"]\n')
    assert config_files(env, system) == [user, user_dropin]  # the user's file replaces the system's and its drop-ins
    xdg = tmp_path / "xdg" / "containers" / "registries.conf"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert config_files({**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, system) == [xdg]
    only = tmp_path / "only.conf"
    only.write_text('unqualified-search-registries = ["only.example"]\n')
    assert config_files({**env, "CONTAINERS_REGISTRIES_CONF": str(only)}, system) == [only]
    assert load({**env, "CONTAINERS_REGISTRIES_CONF": str(only)}, system).search == ("only.example",)
    assert config_files({**env, "CONTAINERS_REGISTRIES_CONF": ""}, system) == []
    with pytest.raises(RegistriesConfError, match="no such file"):
        load({**env, "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "missing.conf")}, system)
    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"registry-mirrors": ["https://m.example"]}')
    assert load({**env, "UNIONFS_DAEMON_JSON": str(daemon)}, system).docker_mirrors[0].location == "m.example"


# --- pulls against real registries ----------------------------------------------------------------------------
class Images:
    """The origin's images: ``mirrortest/app:v1`` and ``team/app:v1`` (the same), ``other/app:v1`` (another)."""

    def __init__(self, origin: Registry) -> None:
        self.origin = origin
        with RegistryClient(origin.host, retry=FAST) as c:
            self.digest = push_tiny_image(c, "mirrortest/app", "v1", "from the origin")
            assert push_tiny_image(c, "team/app", "v1", "from the origin") == self.digest
            self.other_digest = push_tiny_image(c, "other/app", "v1", "another image")
        raw, blobs = tiny_manifest("from the origin")
        self.blobs = list(blobs)
        self.other_raw, other = tiny_manifest("another image")
        self.other_blobs = list(other)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("origin")) as reg:
        yield Images(reg)


@pytest.fixture(scope="module")
def cache(origin: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A pull-through cache of the origin."""
    with running_registry(tmp_path_factory.mktemp("cache"), proxy_remote=f"http://{origin.origin.host}") as reg:
        yield reg


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if have_registry():
        pytest.skip(have_registry() or "")
    with running_registry(tmp_path_factory.mktemp("empty")) as reg:
        yield reg


@pytest.fixture
def servers() -> Iterator[list[FakeServer | FaultProxy]]:
    started: list[FakeServer | FaultProxy] = []
    yield started
    for s in started:
        s.close()


class Env:
    """The test's registries.conf, daemon.json, docker config and store; ``pull`` runs the CLI with them."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.conf = tmp_path / "registries.conf"
        self.daemon = tmp_path / "daemon.json"
        self.root = tmp_path / "store"
        self.conf.write_text("")
        monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(self.conf))
        monkeypatch.setenv("UNIONFS_DAEMON_JSON", str(self.daemon))
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
        for name in ("UNIONFS_HTTP_TIMEOUT", "UNIONFS_SPEED_LIMIT", "UNIONFS_SPEED_TIME"):
            monkeypatch.delenv(name, raising=False)

    def pull(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli("pull", *args, root=self.root, check=check, timeout=180)

    def digest_of(self, ref: str) -> str:
        return str(Store(self.root).resolve(ref).manifest.digest)

    def blobs(self) -> set[str]:
        d = self.root / "blobs" / "sha256"
        return {f"sha256:{p.name}" for p in d.iterdir()} if d.exists() else set()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path, monkeypatch)


def forwarding(upstream: str, lie: Callable[[str, str], bytes | None] = lambda m, p: None
               ) -> Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]:
    """A FakeServer handler that forwards GET/HEAD to ``upstream`` (``host:port``), except where ``lie(method,
    path)`` gives a body: that is answered instead, with the headers the upstream sent for the path."""
    def handler(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(upstream, timeout=30)
        try:
            conn.request(method, path, headers={k: v for k, v in headers.items() if k in ("accept", "range")})
            resp = conn.getresponse()
            body = resp.read()
            out = {k: v for k, v in resp.getheaders()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection", "date")}
        finally:
            conn.close()
        fake = lie(method, path)
        return resp.status, out, fake if fake is not None else body
    return handler


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("unionfs: WARNING")]


def test_pull_through_cache_mirror(env: Env, origin: Images, cache: Registry) -> None:
    env.conf.write_text(f'[[registry]]\nprefix = "docker.io/mirrortest"\nlocation = "{origin.origin.host}/mirrortest"\n'
                        f'[[registry.mirror]]\nlocation = "{cache.host}/mirrortest"\n')
    p = env.pull("mirrortest/app:v1")
    assert p.stdout.strip() == "docker.io/mirrortest/app:v1" and not warnings(p.stderr), p.stderr
    assert env.digest_of("mirrortest/app:v1") == origin.digest
    assert all(cache.blob_data_path(b).exists() for b in origin.blobs)  # the cache served (and kept) every blob


def test_mirror_down_falls_back_to_the_origin(env: Env, origin: Images) -> None:
    down = f"127.0.0.1:{free_port()}"
    env.conf.write_text(f'[[registry]]\nprefix = "docker.io/mirrortest"\nlocation = "{origin.origin.host}/mirrortest"\n'
                        f'[[registry.mirror]]\nlocation = "{down}/mirrortest"\n')
    p = env.pull("-q", "mirrortest/app:v1")
    assert p.stdout.strip() == "docker.io/mirrortest/app:v1"
    (line,) = warnings(p.stderr)
    assert f"mirror {down} for docker.io/mirrortest/app skipped: cannot reach registry {down}" in line
    assert env.digest_of("mirrortest/app:v1") == origin.digest


@pytest.mark.parametrize("by", ["digest", "tag"])
def test_lying_mirror_manifest_is_refused(by: str, env: Env, origin: Images,
                                          servers: list[FakeServer | FaultProxy]) -> None:
    """The mirror answers the manifest with another image's (and the right digest header): never stored."""
    def lie(method: str, path: str) -> bytes | None:
        return origin.other_raw if "/manifests/" in path and method == "GET" else None
    liar = FakeServer(forwarding(origin.origin.host, lie))
    servers.append(liar)
    env.conf.write_text(f'[[registry]]\nlocation = "{origin.origin.host}"\n'
                        f'[[registry.mirror]]\nlocation = "127.0.0.1:{liar.port}"\n')
    ref = f"{origin.origin.host}/team/app" + (f"@{origin.digest}" if by == "digest" else ":v1")
    p = env.pull("-q", ref)
    assert any("/manifests/" in s.path for s in liar.seen)  # the mirror was asked first
    (line,) = warnings(p.stderr)
    assert f"mirror 127.0.0.1:{liar.port}" in line and "wrong content" in line and "digest mismatch" in line
    assert env.digest_of(ref) == origin.digest
    assert not env.blobs() & set(origin.other_blobs)


@pytest.mark.parametrize("which", ["config", "layer"])
def test_lying_mirror_blob(which: str, env: Env, origin: Images, servers: list[FakeServer | FaultProxy]) -> None:
    """A wrong config (read whole) is refused and fetched from the origin; a wrong layer (streamed into the
    store) fails the pull with an error naming the mirror, and the store is unchanged."""
    liar = FaultProxy(origin.origin.host)
    servers.append(liar)
    config, layer = origin.blobs
    liar.corrupt_blob.add(config if which == "config" else layer)
    env.conf.write_text(f'[[registry]]\nlocation = "{origin.origin.host}"\n'
                        f'[[registry.mirror]]\nlocation = "{liar.host}"\n')
    ref = f"{origin.origin.host}/team/app:v1"
    p = env.pull("-q", ref, check=which == "config")
    if which == "config":
        (line,) = warnings(p.stderr)
        assert f"mirror {liar.host}" in line and "wrong content for blob" in line
        assert env.digest_of(ref) == origin.digest
        return
    assert p.returncode == 1 and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("unionfs: blob ") and f"(sent by mirror {liar.host})" in last, p.stderr
    assert env.blobs() == set()


def test_blocked_registry(env: Env, origin: Images) -> None:
    env.conf.write_text(f'[[registry]]\nlocation = "{origin.origin.host}/team"\nblocked = true\n')
    p = env.pull(f"{origin.origin.host}/team/app:v1", check=False)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == (f"unionfs: pulling {origin.origin.host}/team/app:v1 is blocked by {env.conf} "
                        f"([[registry]] prefix '{origin.origin.host}/team')\n")
    assert env.blobs() == set()
    env.pull("-q", f"{origin.origin.host}/other/app:v1")  # outside the prefix


def test_location_rewrite(env: Env, origin: Images) -> None:
    env.conf.write_text(f'[[registry]]\nprefix = "registry.example.com/team"\nlocation = "{origin.origin.host}/team"\n')
    p = env.pull("-q", "registry.example.com/team/app:v1")
    assert p.stdout.strip() == "registry.example.com/team/app:v1"
    assert env.digest_of("registry.example.com/team/app:v1") == origin.digest


def test_search_registries_and_aliases(env: Env, origin: Images, empty: Registry) -> None:
    env.conf.write_text(f'unqualified-search-registries = ["{empty.host}", "{origin.origin.host}"]\n'
                        f'[aliases]\n"myapp" = "{origin.origin.host}/team/app"\n')
    assert env.pull("-q", "team/app:v1").stdout.strip() == f"{origin.origin.host}/team/app:v1"
    assert env.pull("-q", "myapp:v1").stdout.strip() == f"{origin.origin.host}/team/app:v1"
    p = env.pull("-q", "team/nothing:v1", check=False)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
    assert "team/nothing:v1: no search registry has it" in p.stderr and empty.host in p.stderr
    env.conf.write_text(f'short-name-mode = "enforcing"\n'
                        f'unqualified-search-registries = ["{empty.host}", "{origin.origin.host}"]\n')
    p = env.pull("-q", "team/app:v1", check=False)
    assert p.returncode == 1 and "ambiguous" in p.stderr


def test_docker_registry_mirrors(env: Env, origin: Images, servers: list[FakeServer | FaultProxy]) -> None:
    mirror = FaultProxy(origin.origin.host)  # a transparent mirror that records what it was asked
    servers.append(mirror)
    env.daemon.write_text(json.dumps({"registry-mirrors": [f"http://{mirror.host}"]}))
    env.conf.write_text(f'[[registry]]\nprefix = "docker.io/mirrortest"\nlocation = "{origin.origin.host}/mirrortest"\n')
    env.pull("-q", "mirrortest/app:v1")
    assert ("GET", "/v2/mirrortest/app/manifests/v1", None) in mirror.log
    assert env.digest_of("docker.io/mirrortest/app:v1") == origin.digest
    mirror.log.clear()
    env.pull("-q", f"{origin.origin.host}/team/app:v1")  # not docker.io: no mirror
    assert mirror.log == []
    env.daemon.write_text('{"registry-mirrors": ["mirror.example"]}')
    p = env.pull("-q", "mirrortest/app:v1", check=False)
    assert p.returncode == 1 and p.stderr.startswith(f"unionfs: {env.daemon}: registry mirror 'mirror.example'")


def test_insecure_mirror(env: Env, origin: Images, servers: list[FakeServer | FaultProxy]) -> None:
    """A plain-HTTP mirror on a non-loopback address is used only when its table says ``insecure = true``."""
    addr = local_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    mirror = FakeServer(forwarding(origin.origin.host), bind=addr)
    servers.append(mirror)
    table = (f'[[registry]]\nprefix = "registry.example.com/team"\nlocation = "{origin.origin.host}/team"\n'
             f'[[registry.mirror]]\nlocation = "{addr}:{mirror.port}/team"\n')
    env.conf.write_text(table)
    p = env.pull("-q", "registry.example.com/team/app:v1")
    (line,) = warnings(p.stderr)
    assert f"mirror {addr}:{mirror.port}" in line and "--insecure" in line
    assert not any(s.path.startswith("/v2/team") for s in mirror.seen)
    env.conf.write_text(table + "insecure = true\n")
    p = env.pull("-q", "registry.example.com/team/app:v1")
    assert not warnings(p.stderr)
    assert any(s.path == "/v2/team/app/manifests/v1" for s in mirror.seen)


def test_bad_registries_conf_fails_the_pull_in_one_line(env: Env) -> None:
    env.conf.write_text("[[registry]]\nlocation = 'x.example'\nblocked = 'yes'\n")
    p = env.pull("busybox", check=False)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == f"unionfs: {env.conf}: [[registry]] #1 blocked must be true or false, not 'yes'\n"
    assert not env.root.exists() or env.blobs() == set()


def test_no_config_at_all_changes_nothing(env: Env, origin: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", "")
    monkeypatch.setenv("UNIONFS_DAEMON_JSON", "")
    p = env.pull(f"{origin.origin.host}/team/app:v1")
    assert "Pull complete" in p.stderr and not warnings(p.stderr)


def test_a_mirror_never_gets_the_origins_credentials(env: Env, tmp_path: Path,
                                                     servers: list[FakeServer | FaultProxy]) -> None:
    """Logged in to an htpasswd origin, pulling through a mirror that forwards the origin's 401 challenge: the
    mirror (another host) is sent nothing, is skipped with one warning, and the origin serves the pull."""
    with running_registry(tmp_path / "basic", "htpasswd") as reg:
        alice = Credentials("alice", USERS["alice"])
        with RegistryClient(reg.host, credentials=alice, retry=FAST) as c:
            digest = push_tiny_image(c, "private/app", "v1", "private")
        DockerConfig().save(reg.host, alice)
        mirror = FakeServer(forwarding(reg.host))
        servers.append(mirror)
        env.conf.write_text(f'[[registry]]\nlocation = "{reg.host}"\n'
                            f'[[registry.mirror]]\nlocation = "127.0.0.1:{mirror.port}"\n')
        p = env.pull("-q", f"{reg.host}/private/app:v1")
        assert mirror.seen and not any("authorization" in s.headers for s in mirror.seen)
        (line,) = warnings(p.stderr)
        assert f"mirror 127.0.0.1:{mirror.port}" in line and "authentication required" in line and USERS["alice"] not in p.stderr
        assert env.digest_of(f"{reg.host}/private/app:v1") == digest
