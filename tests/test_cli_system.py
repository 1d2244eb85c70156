"""The verbs docker users reach for (issue 16, "Missing verbs"): ``version``, ``info``, ``system df``,
``system prune`` and the ``image``/``container`` groups, whose verbs are the existing ones under docker's
names (the same parsers: their options cannot drift apart).

Images are made in code (tests/support/tar.py); containers are made with ``Store.prepare_container`` (no
mount: these verbs need no FUSE)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.busybox import store_state
from support.cli import run_cli
from support.mount import private_tmpdir, skip_reason_fuse, skip_reason_root, unmounted_on_exit
from support.tar import build, directory, docker_archive, file

from unionfs.cli import main as cli_main
from unionfs.store.store import Store

BASE = build([directory("etc"), file("etc/os", b"base\n" * 1000)])
TOP = build([file("top", b"top\n" * 3000)])


@pytest.fixture
def two_images(tmp_path: Path, store_root: Path) -> Path:
    """A store with ``base:1`` (one layer), ``app:1`` (base's layer and one more), a dangling (untagged) image
    with a layer of its own, and one stray blob nothing references."""
    run_cli("load", "-i", docker_archive(tmp_path / "b.tar", [(BASE, BASE)], repo_tags=("base:1",)), root=store_root)
    run_cli("load", "-i", docker_archive(tmp_path / "a.tar", [(BASE, BASE), (TOP, TOP)], repo_tags=("app:1",)),
            root=store_root)
    dangling = build([file("dangling", b"x" * 5000)])
    run_cli("load", "-i", docker_archive(tmp_path / "d.tar", [(dangling, dangling)], repo_tags=()), root=store_root)
    Store(store_root).put_blob_bytes(b"stray" * 1000)
    return store_root


def cli(root: Path, *args: str, **kw):  # type: ignore[no-untyped-def]
    return run_cli(*args, root=root, **kw)


def test_version_has_docker_layout(store_root: Path) -> None:
    out = cli(store_root, "version").stdout
    assert out.startswith("Client:\n Version:")
    assert "\n\nFUSE:\n" in out
    for key in ("Python version:", "OS/Arch:", "Kernel version:", "Device:", "Protocol:", "Passthrough:"):
        assert re.search(rf"^ {re.escape(key)}\s+\S", out, re.M), key
    assert re.search(r"^ Protocol:\s+7\.\d+", out, re.M)
    assert not store_root.exists()  # version does not touch the store


def _info(root: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(cli(root, "info", "--format", "json").stdout)


def test_info_counts_the_store(two_images: Path) -> None:
    store = Store(two_images)
    store.prepare_container("app:1", "c1")
    d = _info(two_images)
    assert d["RootDir"] == str(two_images)
    assert (d["Images"], d["Layers"], d["Blobs"], d["Containers"], d["ContainersMounted"],
            d["ContainersNotMounted"]) == (3, 3, 10, 1, 0, 1)
    assert d["Blobs"] == len(list((two_images / "blobs/sha256").iterdir()))
    assert d["DiskUsed"] > 5000 + 12000 + 5000 and d["Passthrough"] and d["KernelVersion"]
    text = cli(two_images, "info").stdout
    assert f" Root Dir: {two_images}\n" in text and " Containers: 1\n  Mounted: 0\n" in text
    assert " Passthrough: " in text and " Kernel Version: " in text and " Disk Used: " in text
    assert json.loads(cli(two_images, "system", "info", "--format", "json").stdout)["Images"] == 3


def _df(root: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["Type"]: r for r in map(json.loads, cli(root, "system", "df", "--format", "json").stdout.splitlines())}


def test_system_df(two_images: Path) -> None:
    """Each blob and layer once; reclaimable is what prune -a frees; the sizes add up to the store's."""
    store = Store(two_images)
    df = _df(two_images)
    assert [df["Images"][k] for k in ("TotalCount", "Active")] == [3, 0]
    assert df["Images"]["Reclaimable"] == df["Images"]["Size"] > 0
    assert (df["Unreferenced"]["TotalCount"], df["Unreferenced"]["Size"]) == (1, 5000)  # the stray blob
    assert sum(r["Size"] for r in df.values()) == json.loads(cli(two_images, "info", "--format", "json").stdout)[
        "DiskUsed"]
    store.prepare_container("app:1", "c1")
    (Path(store.container("c1").upper) / "data").write_bytes(b"d" * 7000)
    df = _df(two_images)
    assert df["Images"]["Active"] == 1 and df["Containers"]["TotalCount"] == 1
    assert df["Containers"]["Size"] >= 7000 and df["Containers"]["Reclaimable"] == df["Containers"]["Size"]
    # no longer reclaimable: app:1's blobs and layers, base:1's layer among them (base:1's config and
    # manifest, and the dangling image, still are)
    app = Store(two_images).resolve("app:1")
    layers = sum(f.stat().st_size for d in app.config.diff_ids for f in store.layer_path(d).rglob("*") if f.is_file())
    assert df["Images"]["Reclaimable"] == df["Images"]["Size"] - app.manifest_desc.size - app.size - layers
    table = cli(two_images, "system", "df").stdout.splitlines()
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [line.split()[0] for line in table[1:]] == ["Images", "Containers", "Build", "Unreferenced"]
    assert re.search(r"\(\d+%\)$", table[1])


def test_system_prune_asks_then_removes(two_images: Path) -> None:
    store = Store(two_images)
    store.prepare_container("app:1", "c1")
    before = store_state(two_images)
    p = cli(two_images, "system", "prune", input="n\n")
    assert p.stdout.startswith("WARNING! This will remove:\n") and "[y/N]" in p.stdout
    assert store_state(two_images) == before  # no: nothing happens
    assert cli(two_images, "system", "prune", input="").stdout.count("WARNING") == 1  # end of input is no
    assert store_state(two_images) == before
    out = cli(two_images, "system", "prune", input="y\n").stdout
    assert "Deleted Containers:\nc1\n" in out and "Total reclaimed space: " in out
    assert store.containers() == []
    assert sorted(t.familiar for i in store.images() for t in i.tags) == ["app:1", "base:1"]  # tagged stay
    assert len(store.images()) == 2  # the dangling image went
    assert not _df(two_images)["Unreferenced"]["TotalCount"]
    out = cli(two_images, "system", "prune", "-a", "-f").stdout
    assert "WARNING" not in out and "Untagged: app:1" in out and "Untagged: base:1" in out
    assert store.images() == [] and list((two_images / "layers").iterdir()) == []


def test_image_prune_asks_unless_f(two_images: Path) -> None:
    before = store_state(two_images)
    p = cli(two_images, "image", "prune", input="no\n")
    assert "all dangling images" in p.stdout and store_state(two_images) == before
    out = cli(two_images, "image", "prune", "-a", "-f").stdout
    assert "Untagged: app:1" in out and Store(two_images).images() == []


@pytest.mark.parametrize("alias, verb", [
    (("image", "ls"), ("images",)), (("image", "list"), ("images",)), (("image", "ls", "-q"), ("images", "-q")),
    (("image", "inspect", "app:1"), ("inspect", "app:1")), (("image", "history", "app:1"), ("history", "app:1")),
    (("container", "ls", "-q"), ("ps", "-q")), (("container", "ps", "-q"), ("ps", "-q")),
])
def test_aliases_answer_as_the_verb(alias: tuple[str, ...], verb: tuple[str, ...], two_images: Path) -> None:
    """(``ps`` without ``-q`` also lists the host's live mounts, which other tests may be making: only its
    store's part is compared.)"""
    Store(two_images).prepare_container("app:1", "c1")
    assert cli(two_images, *alias).stdout == cli(two_images, *verb).stdout
    if alias[0] == "container":  # docker's -a: every container, mounted or not
        assert cli(two_images, "container", "list", "-a", "-q").stdout.split() == ["c1"]
        rows = [line.split()[:2] for line in cli(two_images, "container", "ls", "-a").stdout.splitlines()]
        assert rows[0] == ["NAME", "IMAGE"] and ["c1", "app:1"] in rows


def test_aliases_that_change_the_store(two_images: Path, tmp_path: Path) -> None:
    store = Store(two_images)
    cli(two_images, "image", "tag", "app:1", "copy:2")
    assert store.resolve("copy:2").id == store.resolve("app:1").id
    assert cli(two_images, "image", "rm", "copy:2").stdout.startswith("Untagged: copy:2")
    cli(two_images, "image", "save", "app:1", "-o", tmp_path / "app.tar")
    other = tmp_path / "other"
    assert cli(other, "image", "load", "-i", tmp_path / "app.tar").stdout == "Loaded image: app:1\n"
    store.prepare_container("app:1", "c1")
    cli(two_images, "container", "rm", "c1")
    assert store.containers() == []


GROUP_VERBS = {
    "image": {"ls", "list", "rm", "remove", "inspect", "prune", "pull", "push", "tag", "save", "load", "history",
              "import", "build"},
    "container": {"ls", "list", "ps", "rm", "remove", "run", "commit", "diff", "export"},
    "system": {"df", "prune", "info"},
}


@pytest.mark.parametrize("group", sorted(GROUP_VERBS))
def test_groups_list_their_verbs_and_each_has_help(group: str, store_root: Path) -> None:
    parser = cli_main.build_parser(("system",))
    sub = next(a for a in parser._actions if a.dest == "command").choices[group]  # type: ignore[union-attr]
    verbs = next(a for a in sub._actions if a.dest == "verb").choices  # type: ignore[union-attr]
    assert set(verbs) == GROUP_VERBS[group]
    shown = cli(store_root, group, "--help").stdout
    for verb in verbs:
        assert re.search(rf"^\s+{verb}\b|\({verb}\)|, {verb}\b", shown, re.M), verb
    for verb in ("ls", "rm", "df", "prune"):
        if verb in verbs:
            assert f"usage: unionfs {group} {verb}" in cli(store_root, group, verb, "--help").stdout


@pytest.mark.parametrize("alias, verb", [(("image", "ls"), "images"), (("image", "rm"), "rmi"),
                                         (("container", "run"), "run"), (("image", "save"), "save"),
                                         (("container", "commit"), "commit"), (("image", "pull"), "pull")])
def test_an_alias_takes_the_verbs_options(alias: tuple[str, ...], verb: str, store_root: Path) -> None:
    """One definition: the alias's options are the verb's (its help, after the usage line, is the same)."""
    def options(*args: str) -> str:
        text = cli(store_root, *args, "--help").stdout
        return text[text.index("options:"):]
    assert options(*alias) == options(verb)


def test_top_level_help_lists_the_new_verbs(store_root: Path) -> None:
    out = cli(store_root, "--help").stdout
    for verb in ("version", "info", "system", "image", "container"):
        assert re.search(rf"^\s+{verb}\s", out, re.M), verb


@pytest.mark.parametrize("group", ["image", "container", "system"])
def test_a_group_without_a_verb_shows_its_usage(group: str, store_root: Path) -> None:
    p = cli(store_root, group, check=False)
    assert p.returncode == 2 and p.stderr.startswith(f"usage: unionfs {group}")


FUSE_SKIP = skip_reason_root("mounting a container") or skip_reason_fuse()


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(FUSE_SKIP is not None, reason=FUSE_SKIP or "")
def test_a_mounted_container_is_active_and_kept_by_prune(tmp_path: Path) -> None:
    """``system df`` counts a mounted container as active (its upper not reclaimable), ``info`` as mounted,
    and ``system prune -a -f`` keeps it, its image and its layers, and removes the container that is not
    mounted."""
    with private_tmpdir("system") as d:
        root, mnt = d / "store", d / "mnt"
        mnt.mkdir()
        run_cli("load", "-i", docker_archive(tmp_path / "a.tar", [(BASE, BASE), (TOP, TOP)], repo_tags=("app:1",)),
                root=root)
        Store(root).prepare_container("app:1", "idle")
        with unmounted_on_exit(mnt):
            run_cli("mount", "app:1", mnt, "--name", "web", root=root)
            (mnt / "written").write_bytes(b"w" * 9000)
            df = _df(root)
            assert (df["Containers"]["TotalCount"], df["Containers"]["Active"]) == (2, 1)
            assert df["Containers"]["Size"] - df["Containers"]["Reclaimable"] >= 9000
            info = _info(root)
            assert (info["ContainersMounted"], info["ContainersNotMounted"]) == (1, 1) and info["LiveMounts"] >= 1
            out = run_cli("system", "prune", "-a", "-f", root=root).stdout
            assert "Deleted Containers:\nidle\n" in out and "web" not in out
            assert [c.name for c in Store(root).containers()] == ["web"]
            assert Store(root).resolve("app:1") and (mnt / "etc/os").read_bytes() == b"base\n" * 1000
            run_cli("umount", mnt, root=root)
