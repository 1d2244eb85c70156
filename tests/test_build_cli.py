"""``unionfs build``'s docker flags (issue 16): ``--label``, ``--progress``, ``--pull``, a Dockerfile (``-f -``) or
a context (``CONTEXT -``: a tar archive or a Dockerfile) from stdin, and ``.dockerignore`` as docker reads it
(patterns, ``!`` exceptions also inside excluded directories, ``**``, the Dockerfile and ``.dockerignore``
themselves excluded yet the build still reads its Dockerfile)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable

import pytest
from support.busybox import leftovers, store_state
from support.cli import run_cli

from unionfs.build.context import IgnoreRules


@pytest.fixture
def unionfs_store_root(store: Path) -> str:
    """The unionfs_rootfs fixture (our pytest plugin) mounts images of this test's store."""
    return str(store)


def config_of(store: Path, ref: str) -> dict[str, object]:
    """The ``config`` object of the image ``ref``."""
    return json.loads(run_cli("inspect", ref, root=store).stdout)[0]["Config"]


def tar_bytes(files: dict[str, str], compress: str = "") -> bytes:
    """A tar archive (``compress``: "", "gz", "xz") of regular files ``name -> text``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_help_lists_the_flags() -> None:
    out = run_cli("build", "--help").stdout
    for flag in ("--pull", "--progress", "--label", "--platform", "--no-cache", "--target", "--build-arg", "-f",
                 "stdin"):
        assert flag in out, (flag, out)


def test_labels(store: Path, tmp_path: Path) -> None:
    """--label sets labels on the final image, over the Dockerfile's (before: an unknown argument)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text('FROM busybox:latest\nLABEL a=from-file b=kept\n')
    flags = ("--label", "a=from-flag", "--label", "empty", "--label", "c=x=y")
    first = run_cli("build", "-q", "-t", "test:l", *flags, ctx, root=store).stdout
    assert config_of(store, "test:l")["Labels"] == {"a": "from-flag", "b": "kept", "empty": "", "c": "x=y"}
    assert run_cli("build", "-q", *flags, ctx, root=store).stdout == first  # the label step is cached
    assert run_cli("build", "-q", ctx, root=store).stdout != first
    p = run_cli("build", "--label", "=v", ctx, root=store, check=False)
    assert p.returncode == 2 and "--label" in p.stderr


@pytest.mark.parametrize("mode", ["plain", "tty", "auto"])
def test_progress_modes_print_the_steps(store: Path, tmp_path: Path, mode: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo from-run\n")
    p = run_cli("build", "--progress", mode, "--no-cache", ctx, root=store)
    assert "Step 2/2 : RUN echo from-run" in p.stdout and "from-run\n" in p.stdout
    assert "Successfully built" in p.stdout


def test_progress_refuses_other_modes(store: Path, tmp_path: Path) -> None:
    p = run_cli("build", "--progress", "rawjson", tmp_path, root=store, check=False)
    assert p.returncode == 2 and "--progress" in p.stderr


def test_dockerfile_from_stdin(store: Path, tmp_path: Path, unionfs_rootfs: Callable[..., Path]) -> None:
    """-f - reads the Dockerfile from stdin, the context is the directory (before: "cannot read -")."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "file").write_text("from the context\n")
    run_cli("build", "-q", "-t", "test:f", "-f", "-", ctx, root=store, input="FROM busybox:latest\nCOPY file /\n")
    assert (unionfs_rootfs("test:f") / "file").read_text() == "from the context\n"
    p = run_cli("build", "-f", "-", ctx, root=store, input="", check=False)
    assert p.returncode == 2 and "empty" in p.stderr


@pytest.mark.parametrize("compress", ["", "gz", "xz"])
def test_context_tar_from_stdin(store: Path, compress: str, unionfs_rootfs: Callable[..., Path]) -> None:
    """build - takes a tar archive (plain or compressed) as the context; -f names a file inside it; the staging
    directory is removed (before: "build context - is not a directory")."""
    data = tar_bytes({"Dockerfile": "FROM busybox:latest\nCOPY a.txt /\n", "a.txt": "a\n",
                      "other/Build.df": "FROM busybox:latest\nCOPY sub/b.txt /\n", "sub/b.txt": "b\n"}, compress)
    run_cli("build", "-q", "-t", "test:tar", "-", root=store, input=data, text=False)
    assert (unionfs_rootfs("test:tar") / "a.txt").read_text() == "a\n"
    run_cli("build", "-q", "-t", "test:tar2", "-f", "other/Build.df", "-", root=store, input=data, text=False)
    assert (unionfs_rootfs("test:tar2") / "b.txt").read_text() == "b\n"
    assert os.listdir(store / "tmp") == []


def test_add_unpacks_a_plain_tar(store: Path, tmp_path: Path, unionfs_rootfs: Callable[..., Path]) -> None:
    """ADD unpacks an uncompressed tar (before: only compressed ones; a plain tar was copied as a file,
    is_archive read the first 6 bytes only)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "plain.tar").write_bytes(tar_bytes({"pkg/data": "plain\n"}))
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nADD plain.tar /unpacked/\n")
    run_cli("build", "-q", "-t", "test:add", ctx, root=store)
    assert (unionfs_rootfs("test:add") / "unpacked/pkg/data").read_text() == "plain\n"


def test_dockerfile_alone_from_stdin_has_an_empty_context(store: Path) -> None:
    run_cli("build", "-q", "-t", "test:nc", "-", root=store, input="FROM busybox:latest\nRUN echo hi > /hi\n")
    p = run_cli("build", "-", root=store, input="FROM busybox:latest\nCOPY anything /\n", check=False)
    assert p.returncode == 1 and "anything" in p.stderr
    assert os.listdir(store / "tmp") == []


def test_stdin_for_both_and_hostile_context(store: Path, tmp_path: Path) -> None:
    """Both from stdin is refused; a context archive whose entries leave it fails, and nothing is written
    outside the staging directory, which is removed."""
    p = run_cli("build", "-f", "-", "-", root=store, input="FROM busybox:latest\n", check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "stdin" in p.stderr
    before = store_state(store)
    data = tar_bytes({"Dockerfile": "FROM busybox:latest\n", f"../../../../../../../..{tmp_path}/escaped": "x"})
    p = run_cli("build", "-", root=store, input=data, text=False, check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "escaped").exists()
    assert store_state(store) == before
    assert leftovers(store) == []


def test_pull_takes_the_registry_image(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--pull pulls a FROM reference even when the store has it (before: an unknown argument)."""
    from support.registry import have_registry, running_registry

    if have_registry():
        pytest.skip(have_registry() or "")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nRUN echo registry > /marker\n")
    run_cli("build", "-q", "-t", "test:marked", ctx, root=store)
    with running_registry(tmp_path / "registry") as reg:
        ref = f"{reg.host}/base:1"
        run_cli("push", "test:marked", ref, root=store)
        run_cli("tag", "busybox:latest", ref, root=store)  # the stored ref: busybox, without the marker
        (ctx / "Dockerfile").write_text(f"FROM {ref}\nRUN cat /marker 2>/dev/null || echo no-marker\n")
        p = run_cli("build", "--no-cache", ctx, root=store)
        assert "no-marker" in p.stdout and "Pulling" not in p.stdout
        p = run_cli("build", "--no-cache", "--pull", ctx, root=store)
        assert "Pulling" in p.stdout and "registry\n" in p.stdout
    (ctx / "Dockerfile").write_text("FROM localhost:1/none:1\n")
    p = run_cli("build", "--pull", ctx, root=store, check=False)
    assert p.returncode == 1 and "localhost:1" in p.stderr and len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------------------------

def test_dockerignore_rules_as_moby() -> None:
    """An inner ** matches whole directories only (moby's "(.*/)?"; before: any characters); exceptions."""
    rules = IgnoreRules.parse("a**b\n**/*.tmp\ndocs\n!docs/README.md\n/root.txt\n")
    assert rules.ignored("ab") and rules.ignored("a/x/b") and not rules.ignored("axb")
    assert rules.ignored("x.tmp") and rules.ignored("deep/er/x.tmp")
    assert rules.ignored("docs") and rules.ignored("docs/other") and not rules.ignored("docs/README.md")
    assert rules.ignored("root.txt") and not rules.ignored("sub/root.txt")


def test_dockerignore_in_a_build(store: Path, tmp_path: Path, unionfs_rootfs: Callable[..., Path]) -> None:
    """Patterns, ! exceptions inside an excluded directory (before: the directory was skipped whole, the
    exception lost), **, and the Dockerfile and .dockerignore excluded: the build still reads its Dockerfile,
    COPY does not see them."""
    ctx = tmp_path / "ctx"
    for d in ("docs/api", "src/gen", "logs"):
        (ctx / d).mkdir(parents=True)
    files = {"docs/README.md": "readme", "docs/other.md": "other", "docs/api/keep.txt": "keep",
             "docs/api/drop.txt": "drop", "src/main.c": "main", "src/gen/x.o": "obj", "logs/a.log": "log",
             "top.o": "obj", "notes.txt": "notes"}
    for name, text in files.items():
        (ctx / name).write_text(text)
    (ctx / ".dockerignore").write_text("Dockerfile\n.dockerignore\ndocs\n!docs/README.md\n!docs/api/keep.txt\n"
                                       "**/*.o\nlogs/\n")
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY . /ctx/\nCOPY docs /docs-only/\n")
    run_cli("build", "-q", "-t", "test:ign", ctx, root=store)
    root = unionfs_rootfs("test:ign")
    found = sorted(str(p.relative_to(root / "ctx")) for p in (root / "ctx").rglob("*"))
    assert found == ["docs", "docs/README.md", "docs/api", "docs/api/keep.txt", "notes.txt", "src",
                     "src/gen", "src/main.c"], found
    found = sorted(str(p.relative_to(root / "docs-only")) for p in (root / "docs-only").rglob("*"))
    assert found == ["README.md", "api", "api/keep.txt"], found
    # a change to an excluded file does not change the COPY's cache key; a re-included one does
    (ctx / "docs/other.md").write_text("changed")
    p = run_cli("build", "-t", "test:ign", ctx, root=store)
    assert p.stdout.count("Using cache") == 2
    (ctx / "docs/README.md").write_text("changed")
    p = run_cli("build", "-t", "test:ign", ctx, root=store)
    assert p.stdout.count("Using cache") == 0
