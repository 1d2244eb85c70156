"""``unionfs build``: a multi-stage Dockerfile over a busybox image made in the test, really mounted (unionfs
FUSE) and really run (namespaces, chroot); the cache; errors that leave nothing behind; interop with skopeo
and a registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Callable

import pytest
from support.busybox import leftovers, store_state
from support.cli import cli_argv, run_cli

from unionfs.store.store import Store
from unionfs.union.view import Union

DOCKERFILE = """\
# a two-stage build
ARG BASE=busybox:latest
FROM ${BASE} AS build
ARG GREETING=hello
ENV APP=/app \\
    MODE="fast mode"
WORKDIR $APP
RUN echo "$GREETING" > greeting.txt && echo before >> /counter/runs
COPY --chown=user:user src/*.txt ./data/
RUN cat data/*.txt > all.txt && echo "after $MODE" >> /counter/runs

FROM busybox:latest
ENV GREETING_FILE=/opt/app/greeting.txt
COPY --from=build /app /opt/app
USER user
WORKDIR /home/user
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat $GREETING_FILE"]
"""


@pytest.fixture
def unionfs_store_root(store: Path) -> str:
    """The unionfs_rootfs fixture (our pytest plugin) mounts images of this test's store."""
    return str(store)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "src/a.txt").write_text("alpha\n")
    (ctx / "src/b.txt").write_text("beta\n")
    (ctx / "src/c.log").write_text("not copied\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    d = tmp_path / "counter"
    d.mkdir()
    (d / "runs").write_text("")
    return d


def build(store: Path, context: Path, counter: Path | None = None, *args: str,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    vol = ["-v", f"{counter}:/counter"] if counter is not None else []
    return run_cli("build", *vol, *args, context, root=store, check=check)


def built_id(out: str) -> str:
    m = re.search(r"^Successfully built ([0-9a-f]{12})$", out, re.M)
    assert m, out
    return m.group(1)


def step_lines(out: str) -> list[tuple[str, list[str]]]:
    """(step line, following ' ---> ' lines) per step."""
    steps: list[tuple[str, list[str]]] = []
    for line in out.splitlines():
        if line.startswith("Step "):
            steps.append((line, []))
        elif line.startswith(" ---> ") and steps:
            steps[-1][1].append(line)
    return steps


def config_of(store: Path, ref: str) -> dict:
    return Store(store).resolve(ref).config.data


def test_multi_stage_build_files_config_and_run(store: Path, context: Path, counter: Path,
                                                unionfs_rootfs: Callable[..., Path]) -> None:
    p = build(store, context, counter, "-t", "test:built", "--build-arg", "GREETING=hi")
    assert "Step 1/14 : FROM ${BASE} AS build" in p.stdout
    assert "Successfully tagged test:built" in p.stdout
    assert counter.joinpath("runs").read_text() == "before\nafter fast mode\n"

    root = unionfs_rootfs("test:built")
    assert (root / "opt/app/greeting.txt").read_text() == "hi\n"
    assert (root / "opt/app/all.txt").read_text() == "alpha\nbeta\n"
    assert sorted(os.listdir(root / "opt/app/data")) == ["a.txt", "b.txt"]  # the glob took no c.log
    st = os.stat(root / "opt/app/data/a.txt")
    assert (st.st_uid, st.st_gid) == (1000, 1000)  # --chown=user:user, kept by COPY --from
    assert not (root / "app").exists() and not (root / "counter").exists()
    image = Store(store).resolve("test:built")
    layers = Union([str(p) for p in Store(store).ensure_layers(image)])
    for placeholder in ("/proc", "/dev", "/etc/hosts", "/counter"):  # RUN's mount targets reach no layer
        assert layers.try_lookup(placeholder) is None

    cfg = config_of(store, "test:built")
    c = cfg["config"]
    assert "GREETING_FILE=/opt/app/greeting.txt" in c["Env"] and not any(e.startswith("APP=") for e in c["Env"])
    assert c["User"] == "user" and c["WorkingDir"] == "/home/user"
    assert c["Entrypoint"] == ["/bin/sh", "-c"] and c["Cmd"] == ["cat $GREETING_FILE"]
    assert len(cfg["rootfs"]["diff_ids"]) == 2  # busybox + the COPY --from (WORKDIR existed: no layer)
    build_cfg = config_of(store, built_id(p.stdout))
    assert build_cfg == cfg

    r = run_cli("run", "--rm", "test:built", root=store)
    assert r.stdout == "hi\n"
    assert [x for x in leftovers(store, wait=0) if str(root) not in x] == []  # only the fixture's mount


def test_second_build_is_all_cache_and_runs_nothing(store: Path, context: Path, counter: Path) -> None:
    first = build(store, context, counter, "-t", "test:built")
    runs = counter.joinpath("runs").read_text()
    second = build(store, context, counter, "-t", "test:built")
    assert counter.joinpath("runs").read_text() == runs  # no RUN executed
    assert "Running in" not in second.stdout
    assert built_id(first.stdout) == built_id(second.stdout)
    for step, arrows in step_lines(second.stdout):
        if " FROM " in step or " ARG " in step:
            continue
        assert arrows[0] == " ---> Using cache", (step, arrows)


def test_changed_copy_source_rebuilds_from_that_step(store: Path, context: Path, counter: Path) -> None:
    build(store, context, counter, "-t", "test:built")
    counter.joinpath("runs").write_text("")
    (context / "src/b.txt").write_text("BETA\n")
    p = build(store, context, counter, "-t", "test:built")
    assert counter.joinpath("runs").read_text() == "after fast mode\n"  # only the RUN after the COPY ran
    steps = step_lines(p.stdout)
    by_text = {s.split(" : ", 1)[1]: arrows for s, arrows in steps}
    assert by_text["ENV APP=/app     MODE=\"fast mode\""][0] == " ---> Using cache"
    assert by_text["WORKDIR $APP"][0] == " ---> Using cache"
    assert by_text["RUN echo \"$GREETING\" > greeting.txt && echo before >> /counter/runs"][0] == " ---> Using cache"
    assert by_text["COPY --chown=user:user src/*.txt ./data/"][0] != " ---> Using cache"
    assert by_text["COPY --from=build /app /opt/app"][0] != " ---> Using cache"
    # touching (mtime only) is a change too: COPY keeps mtimes, so the layer would differ
    counter.joinpath("runs").write_text("")
    os.utime(context / "src/a.txt", (1, 1))
    build(store, context, counter, "-t", "test:built")
    assert counter.joinpath("runs").read_text() == "after fast mode\n"


def test_no_cache_runs_again_and_prune_cache_empties_it(store: Path, context: Path, counter: Path) -> None:
    build(store, context, counter, "-t", "test:built")
    counter.joinpath("runs").write_text("")
    p = build(store, context, counter, "--no-cache", "-t", "test:built")
    assert "Using cache" not in p.stdout
    assert counter.joinpath("runs").read_text() == "before\nafter fast mode\n"
    assert any(line.startswith("Deleted build cache: ") for line in Store(store).prune())
    counter.joinpath("runs").write_text("")
    p = build(store, context, counter, "-t", "test:built")
    assert "Using cache" not in p.stdout and counter.joinpath("runs").read_text() != ""


def test_gc_keeps_the_cache_and_unionfs_prune_clears_it(store: Path, context: Path, counter: Path) -> None:
    build(store, context, counter, "-t", "test:built")
    run_cli("rmi", "test:built", root=store)  # a gc: the cached step images must survive it
    counter.joinpath("runs").write_text("")
    p = build(store, context, counter, "-t", "test:built")
    assert "Using cache" in p.stdout and counter.joinpath("runs").read_text() == ""
    out = run_cli("prune", root=store).stdout
    assert "Deleted build cache: " in out
    counter.joinpath("runs").write_text("")
    p = build(store, context, counter, "-t", "test:built")
    assert "Using cache" not in p.stdout and counter.joinpath("runs").read_text() != ""


def test_quiet_prints_only_the_id(store: Path, context: Path, counter: Path) -> None:
    p = build(store, context, counter, "-q", "-t", "test:q")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", p.stdout), p.stdout
    assert str(Store(store).resolve("test:q").id) == p.stdout.strip()


def test_target_builds_only_what_the_stage_needs(store: Path, context: Path, counter: Path) -> None:
    p = build(store, context, counter, "--target", "build", "-t", "test:stage1")
    assert "Step 7/7" in p.stdout
    cfg = config_of(store, "test:stage1")["config"]
    assert cfg["WorkingDir"] == "/app" and "MODE=fast mode" in cfg["Env"]


@pytest.mark.parametrize("dockerfile,line,words", [
    ("FROM busybox:latest\nRUN true\nFROBNICATE now\n", 3, ["unknown instruction", "FROBNICATE"]),
    ("FROM busybox:latest\nENV A=1\nRUN echo some output; exit 7\nRUN true\n", 3,
     ["echo some output; exit 7", "non-zero code: 7"]),
    ("FROM busybox:latest\nRUN echo x > /x\nCOPY missing.txt /\n", 3, ["missing.txt", "not found"]),
    ("FROM busybox:latest\nRUN --mount=type=cache,target=/x true\n", 2, ["--mount", "not supported"]),
])
def test_errors_name_the_line_and_leave_nothing(store: Path, context: Path, dockerfile: str, line: int,
                                                words: list[str]) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    before = store_state(store)
    p = build(store, context, None, "-t", "test:broken", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"unionfs: Dockerfile:{line}: "), err
    for w in words:
        assert w in err
    assert store_state(store) == before
    assert leftovers(store) == []


def test_failed_run_after_good_steps_rolls_back_their_cache_and_blobs(store: Path, context: Path) -> None:
    (context / "Dockerfile").write_text("FROM busybox:latest\nRUN echo ok > /ok\nCOPY src /src\nRUN exit 1\n")
    before = store_state(store)
    p = build(store, context, None, check=False)
    assert p.returncode == 1 and "Dockerfile:4:" in p.stderr
    assert store_state(store) == before
    assert leftovers(store) == []


def test_copy_add_details(store: Path, tmp_path: Path, unionfs_rootfs: Callable[..., Path]) -> None:
    ctx = tmp_path / "ctx2"
    (ctx / "dir/sub").mkdir(parents=True)
    (ctx / "dir/sub/f").write_text("f\n")
    (ctx / "dir/skip.me").write_text("ignored\n")
    (ctx / "secret").write_text("s\n")
    os.symlink("sub/f", ctx / "dir/link")
    (ctx / ".dockerignore").write_text("# comment\nsecret\n**/*.me\n")
    payload = tmp_path / "payload"
    (payload / "pkg").mkdir(parents=True)
    (payload / "pkg/data").write_text("from tar\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tf:
        tf.add(payload / "pkg", arcname="pkg")
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        "COPY dir /d/\n"
        "COPY --chmod=0600 dir/sub/f /single\n"
        "ADD bundle.tar.gz /unpacked/\n"
        "COPY bundle.tar.gz /kept/\n"
        "COPY --chown=1234:55 [\"dir/sub\", \"/owned/\"]\n"
    )
    run_cli("build", "-t", "test:copy", ctx, root=store)
    root = unionfs_rootfs("test:copy")
    assert (root / "d/sub/f").read_text() == "f\n"
    assert os.readlink(root / "d/link") == "sub/f"
    assert not (root / "d/skip.me").exists()
    assert oct(os.stat(root / "single").st_mode & 0o7777) == "0o600"
    assert os.stat(root / "single").st_mtime == os.stat(ctx / "dir/sub/f").st_mtime
    assert (root / "unpacked/pkg/data").read_text() == "from tar\n"
    assert (root / "kept/bundle.tar.gz").is_file()
    st = os.stat(root / "owned/f")
    assert (st.st_uid, st.st_gid) == (1234, 55)
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY secret /\n")
    p = run_cli("build", ctx, root=store, check=False)
    assert p.returncode == 1 and "excluded by .dockerignore" in p.stderr


def test_config_only_instructions_are_recorded_without_layers(store: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx3"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox:latest\n"
        "SHELL [\"/bin/sh\", \"-e\", \"-c\"]\n"
        "LABEL a=1 \"b c\"=\"two words\"\n"
        "EXPOSE 80 53/udp\n"
        "VOLUME /data\n"
        "STOPSIGNAL SIGINT\n"
        "HEALTHCHECK --interval=30s --retries=3 CMD [\"true\"]\n"
        "ONBUILD RUN echo triggered > /tmp/trig\n"
        "ENTRYPOINT echo\n"
        "USER 1000:1000\n"
    )
    run_cli("build", "-t", "test:cfg", ctx, root=store)
    cfg = config_of(store, "test:cfg")
    c = cfg["config"]
    assert c["Shell"] == ["/bin/sh", "-e", "-c"]
    assert c["Labels"] == {"a": "1", "b c": "two words"}
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert c["Volumes"] == {"/data": {}} and c["StopSignal"] == "SIGINT" and c["User"] == "1000:1000"
    assert c["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 30_000_000_000, "Retries": 3}
    assert c["OnBuild"] == ["RUN echo triggered > /tmp/trig"]
    assert c["Entrypoint"] == ["/bin/sh", "-e", "-c", "echo"] and not c.get("Cmd")
    assert len(cfg["rootfs"]["diff_ids"]) == 1
    assert all(h.get("empty_layer") for h in cfg["history"][1:])
    # a child runs the trigger, and does not inherit it
    (ctx / "Dockerfile").write_text("FROM test:cfg\nUSER root\n")
    p = run_cli("build", "-t", "test:child", ctx, root=store)
    assert "# Executing 1 build trigger" in p.stdout
    child = config_of(store, "test:child")
    assert not child["config"].get("OnBuild") and len(child["rootfs"]["diff_ids"]) == 2


def test_scratch_and_copy_from_an_image(store: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx4"
    ctx.mkdir()
    (ctx / "hello").write_text("hello\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello /\nCOPY --from=busybox:latest /bin/busybox /bin/\n"
                                    "CMD [\"/bin/busybox\", \"cat\", \"/hello\"]\n")
    run_cli("build", "-t", "test:scratch", ctx, root=store)
    cfg = config_of(store, "test:scratch")
    assert len(cfg["rootfs"]["diff_ids"]) == 2
    r = run_cli("run", "--rm", "test:scratch", root=store)
    assert r.stdout == "hello\n"


def test_built_image_saves_for_skopeo(store: Path, context: Path, counter: Path, tmp_path: Path) -> None:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    build(store, context, counter, "-t", "test:built")
    archive = tmp_path / "built.tar"
    run_cli("save", "-o", archive, "test:built", root=store)
    out = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True,
                         check=True).stdout
    info = json.loads(out)
    assert len(info["Layers"]) == 2
    dest = tmp_path / "oci"
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{dest}:built"], check=True)
    assert (dest / "index.json").is_file()


def test_built_image_pushes_to_a_registry(store: Path, context: Path, counter: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from support.registry import have_registry, running_registry

    if have_registry() or not shutil.which("skopeo"):
        pytest.skip(have_registry() or "skopeo is not installed")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    build(store, context, counter, "-t", "test:built")
    with running_registry(tmp_path / "registry") as reg:
        ref = f"{reg.host}/built:1"
        run_cli("push", "test:built", ref, root=store)
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True,
                             text=True, check=True).stdout
        assert json.loads(out)["Digest"] == str(Store(store).resolve("test:built").manifest_desc.digest)


def test_sigterm_during_run_step_unwinds(store: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx5"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo started; sleep 60\n")
    before = store_state(store)
    proc = subprocess.Popen(cli_argv("build", ctx, root=store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "started":
            break
    time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "non-zero code: 143" in err
    assert store_state(store) == before
    assert leftovers(store) == []
