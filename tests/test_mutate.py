"""One config-mutation path: ``build``, ``commit --change`` and ``import -c`` give the same config.

Each instruction below is applied three ways through the real CLI: as a line of a Dockerfile built over
busybox, as ``commit --change`` of a fresh busybox container, and as ``import -c`` of the busybox rootfs
tarball. The config fields the instructions set must be equal in all three (and what docker makes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli

from unionfs.store.store import Store

#: instructions docker accepts in both a Dockerfile and ``commit --change``, and what each must set
CASES: list[tuple[str, str, Any]] = [
    ("EXPOSE 8000-8002/udp 80", "ExposedPorts",
     {"8000/udp": {}, "8001/udp": {}, "8002/udp": {}, "80/tcp": {}}),
    ("EXPOSE 9000-9001/TCP", "ExposedPorts", {"9000/tcp": {}, "9001/tcp": {}}),
    ("WORKDIR /srv/../app//x/", "WorkingDir", "/app/x"),
    ('ENV GREETING="hello world" WHERE=${HOME:-/root}/x', "Env", ["GREETING=hello world", "WHERE=/root/x"]),
    ('LABEL "a b"=c', "Labels", {"a b": "c"}),
    ('VOLUME ["/data", "/logs"]', "Volumes", {"/data": {}, "/logs": {}}),
    ("ONBUILD RUN  echo hi", "OnBuild", ["RUN  echo hi"]),
    ("HEALTHCHECK --interval=5s CMD true", "Healthcheck", {"Test": ["CMD-SHELL", "true"], "Interval": 5 * 10**9}),
    ("ENTRYPOINT /init", "Entrypoint", ["/bin/sh", "-c", "/init"]),
]


def _three_ways(store: Path, base_tarball: Path, tmp_path: Path, instruction: str) -> list[dict[str, Any]]:
    """The config (``config`` object) after ``instruction`` in a build, a commit --change and an import -c."""
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM busybox:latest\n{instruction}\n")
    run_cli("build", "-q", "-t", "via:build", ctx, root=store)
    Store(store).prepare_container("busybox:latest", "c1")
    run_cli("commit", "-c", instruction, "c1", "via:commit", root=store)
    run_cli("import", "-c", instruction, base_tarball, "via:import", root=store)
    return [Store(store).resolve(f"via:{how}").config.data["config"] for how in ("build", "commit", "import")]


@pytest.mark.parametrize("instruction,field,want", CASES, ids=[c[0] for c in CASES])
def test_build_commit_and_import_agree(store: Path, base_tarball: Path, tmp_path: Path, instruction: str,
                                       field: str, want: Any) -> None:
    built, committed, imported = _three_ways(store, base_tarball, tmp_path, instruction)
    got = [c.get(field) for c in (built, committed, imported)]
    if field == "Env":  # busybox's own Env comes first in a build and a commit; an import starts empty
        got = [[e for e in v if not e.startswith("PATH=")] for v in got]
    assert got == [want, want, want], f"build, commit --change, import -c of {instruction!r}"


def test_commit_change_refuses_what_docker_refuses(store: Path) -> None:
    Store(store).prepare_container("busybox:latest", "c1")
    for bad in ("RUN echo", "FROM x", "SHELL [\"/bin/bash\"]", "COPY a /", "EXPOSE 80-x",
                "CMD", "NOSUCH x"):
        p = run_cli("commit", "-c", bad, "c1", "x:y", root=store, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (bad, p.stderr)
        assert p.stderr.startswith("unionfs: --change"), (bad, p.stderr)


def test_entrypoint_change_drops_the_inherited_cmd_like_a_build(store: Path) -> None:
    """docker runs --change as a one-stage build: ENTRYPOINT clears Cmd unless a CMD came first."""
    Store(store).prepare_container("busybox:latest", "c1")
    run_cli("commit", "-c", "CMD [\"sh\"]", "c1", "base:cmd", root=store)
    Store(store).prepare_container("base:cmd", "c2")
    run_cli("commit", "-c", "ENTRYPOINT [\"/x\"]", "c2", "e:1", root=store)
    run_cli("commit", "-c", "CMD [\"y\"]", "-c", "ENTRYPOINT [\"/x\"]", "c2", "e:2", root=store)
    assert Store(store).resolve("base:cmd").config.data["config"]["Cmd"] == ["sh"]
    assert not Store(store).resolve("e:1").config.data["config"].get("Cmd")
    assert Store(store).resolve("e:2").config.data["config"]["Cmd"] == ["y"]
