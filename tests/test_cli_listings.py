"""The listing verbs as docker's users script them (issue 16): ``images`` with -a, --filter, --digests,
--no-trunc and --format (``table`` with a header, ``json``, templates), ``inspect -f`` with nested fields and
functions, ``ps`` with -a, --filter and --format and its CREATED as an age. Every command runs through the CLI
(:func:`support.cli.run_cli`) against the test's own store."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import pytest
from support.mount import require, skip_reason_fuse, skip_reason_root, unmounted_on_exit

from unionfs.store.store import Store

Cli = Callable[..., "subprocess.CompletedProcess[str]"]  # noqa: F821 (the conftest's fixture)
DOCKER_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC")
AGE = re.compile(r"\d+ seconds? ago")


def one_line_error(p: "subprocess.CompletedProcess[str]", status: int = 2) -> str:  # noqa: F821
    """The one line a failed command printed (its exit status checked)."""
    assert p.returncode == status, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def columns(line: str) -> list[str]:
    """A table line's cells (two blanks or more apart)."""
    return re.split(r" {2,}", line.strip())


@pytest.fixture
def images(cli: Cli, tmp_path: Path) -> dict[str, str]:
    """busybox:latest (oldest: CMD, a label, a port; also tagged localhost:5000/x:2), other/app:1, and an
    untagged image (newest); their image ids by name."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("x\n")
    tarball = tmp_path / "rootfs.tgz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(rootfs, arcname=".")
    ids = {"busybox": cli("import", tarball, "busybox:latest", "-c", 'CMD ["/bin/sh"]', "-c", "LABEL a=b",
                          "-c", "EXPOSE 80").stdout.strip(),
           "app": cli("import", tarball, "other/app:1", "-c", "LABEL a=c").stdout.strip(),
           "none": cli("import", tarball, "-m", "untagged").stdout.strip()}
    cli("tag", "busybox:latest", "localhost:5000/x:2")
    return ids


# --- images ------------------------------------------------------------------------------------------------------
def test_images_default_table_newest_first(cli: Cli, images: dict[str, str]) -> None:
    lines = cli("images").stdout.splitlines()
    assert columns(lines[0]) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    rows = [columns(line) for line in lines[1:]]
    assert [r[:3] for r in rows] == [["<none>", "<none>", images["none"][7:19]],
                                     ["other/app", "1", images["app"][7:19]],
                                     ["busybox", "latest", images["busybox"][7:19]],
                                     ["localhost:5000/x", "2", images["busybox"][7:19]]]
    assert all(AGE.fullmatch(r[3]) for r in rows), rows
    assert cli("images", "--format", "table").stdout.splitlines() == lines


def test_images_table_format_prints_a_header_not_the_word_table(cli: Cli, images: dict[str, str]) -> None:
    """docker's tabwriter: each column as wide as its widest cell plus 3, at least 10."""
    out = cli("images", "--format", "table {{.Repository}}\\t{{.Tag}}").stdout
    assert out.splitlines() == ["REPOSITORY".ljust(19) + "TAG", "<none>".ljust(19) + "<none>",
                                "other/app".ljust(19) + "1", "busybox".ljust(19) + "latest",
                                "localhost:5000/x".ljust(19) + "2"]
    out = cli("images", "--format", "table {{.ID}}\t{{.CreatedAt}}\t{{.Containers}}", "busybox").stdout.splitlines()
    assert columns(out[0]) == ["IMAGE ID", "CREATED AT", "CONTAINERS"]
    assert DOCKER_TIME.fullmatch(columns(out[1])[1]) and columns(out[1])[2] == "0"


def test_images_templates_and_json(cli: Cli, images: dict[str, str]) -> None:
    out = cli("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--no-trunc").stdout
    assert out.splitlines()[2] == f"busybox:latest {images['busybox']}"
    rows = [json.loads(line) for line in cli("images", "--format", "json").stdout.splitlines()]
    assert len(rows) == 4
    assert {"Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository", "SharedSize", "Size", "Tag",
            "UniqueSize", "VirtualSize"} <= set(rows[0])
    assert rows[2]["FullID"] == images["busybox"] and rows[2]["ID"] == images["busybox"][7:19]
    assert list(rows[0]) == sorted(rows[0])  # as docker's json: keys in order
    assert [json.loads(line)["Tag"] for line in
            cli("images", "--format", "{{json .}}").stdout.splitlines()] == ["<none>", "1", "latest", "2"]


def test_images_digests_quiet_no_trunc(cli: Cli, images: dict[str, str]) -> None:
    lines = cli("images", "--digests").stdout.splitlines()
    assert columns(lines[0]) == ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    digest = json.loads(cli("inspect", "busybox").stdout)[0]["ManifestDigest"]
    assert columns(lines[3])[:4] == ["busybox", "latest", digest, images["busybox"][7:19]]
    assert cli("images", "-q").stdout.split() == [images[k][7:19] for k in ("none", "app", "busybox")]
    assert cli("images", "-q", "--no-trunc").stdout.split() == [images[k] for k in ("none", "app", "busybox")]


@pytest.mark.parametrize("filters,shown", [
    (["dangling=true"], ["<none>:<none>"]),
    (["dangling=false"], ["other/app:1", "busybox:latest", "localhost:5000/x:2"]),
    (["reference=busy*"], ["busybox:latest"]),
    (["reference=*/*"], ["other/app:1", "localhost:5000/x:2"]),
    (["reference=busybox", "reference=other/app:1"], ["other/app:1", "busybox:latest"]),
    (["reference=docker.io/library/busybox:latest"], ["busybox:latest"]),
    (["label=a"], ["other/app:1", "busybox:latest", "localhost:5000/x:2"]),
    (["label=a=c"], ["other/app:1"]),
    (["label=a=b", "label=nope"], []),
    (["before=other/app:1"], ["busybox:latest", "localhost:5000/x:2"]),
    (["since=busybox"], ["<none>:<none>", "other/app:1"]),
    (["since=busybox", "dangling=false"], ["other/app:1"]),
])
def test_images_filters(cli: Cli, images: dict[str, str], filters: list[str], shown: list[str]) -> None:
    args = [a for f in filters for a in ("--filter", f)]
    assert cli("images", *args, "--format", "{{.Repository}}:{{.Tag}}").stdout.split() == shown


def test_images_reference_argument_and_filter_errors(cli: Cli, images: dict[str, str]) -> None:
    assert cli("images", "busybox", "-q").stdout.split() == [images["busybox"][7:19]]
    assert cli("images", "localhost:5000/*", "--format", "{{.Repository}}").stdout.split() == ["localhost:5000/x"]
    assert "invalid filter 'foo'" in one_line_error(cli("images", "-f", "foo=1", check=False))
    assert "invalid filter 'dangling=maybe'" in one_line_error(cli("images", "-f", "dangling=maybe", check=False))
    assert "expected name=value" in one_line_error(cli("images", "-f", "dangling", check=False))
    assert "no such image: nope:latest" in one_line_error(cli("images", "-f", "since=nope", check=False), 1)


def test_images_all_lists_intermediate_images(cli: Cli, images: dict[str, str], store_root: Path) -> None:
    """An image only the build cache names (a build's step) is listed by -a only, as <none>."""
    from unionfs.oci.reference import Reference

    store = Store(store_root)
    with store.lock():
        step = store.resolve("other/app:1")
        store.put_cached("build", "ab" * 32, step.manifest_desc)
        store.untag(Reference.parse("other/app:1"))
    assert images["app"][7:19] not in cli("images").stdout
    rows = [columns(line) for line in cli("images", "-a").stdout.splitlines()[1:]]
    assert ["<none>", "<none>", images["app"][7:19]] in [r[:3] for r in rows]


def test_images_template_errors_are_one_line(cli: Cli, images: dict[str, str]) -> None:
    msg = one_line_error(cli("images", "--format", "{{.Nope}}", check=False))
    assert msg == ('unionfs: template: :1:2: executing "" at <.Nope>: can\'t evaluate field Nope in type image row')
    msg = one_line_error(cli("images", "--format", "table {{.ID", check=False))
    assert msg == "unionfs: template parsing error: template: :1: unclosed action"


def test_help_lists_every_flag(cli: Cli) -> None:
    for verb, flags in (("images", ("-a, --all", "--filter", "--digests", "--no-trunc", "--format", "-q")),
                        ("ps", ("-a, --all", "--filter", "--format", "-q")),
                        ("inspect", ("-f FORMAT, --format FORMAT",))):
        out = cli(verb, "--help").stdout
        assert all(f in out for f in flags), (verb, out)


# --- inspect -f ----------------------------------------------------------------------------------------------------
def test_inspect_format_nested_fields_and_functions(cli: Cli, images: dict[str, str]) -> None:
    data = json.loads(cli("inspect", "busybox").stdout)[0]

    def f(template: str, *refs: str) -> str:
        return cli("inspect", "-f", template, *(refs or ("busybox",))).stdout

    assert f("{{.Config.Cmd}}") == "[/bin/sh]\n"
    config = json.loads(f("{{json .Config}}"))
    assert config["Cmd"] == ["/bin/sh"] and config["Labels"] == {"a": "b"} and config["ExposedPorts"] == {"80/tcp": {}}
    assert config["Env"] is None and config["Entrypoint"] is None and config["User"] == ""  # docker's zero values
    assert f("{{index .RepoTags 0}}") == "busybox:latest\n"
    assert f("{{.RootFS.Layers}}") == "[" + " ".join(data["RootFS"]["Layers"]) + "]\n"
    # every tag of the image, whichever name it was asked by (as docker)
    assert f("{{range $i, $t := .RepoTags}}{{$i}}<{{$t}}>{{end}}") == "0<busybox:latest>1<localhost:5000/x:2>\n"
    assert f('{{join .RepoTags ","}}|{{join .RootFS.Layers ","}}') == \
        f"busybox:latest,localhost:5000/x:2|{data['RootFS']['Layers'][0]}\n"
    assert f("{{.Config.Labels.a}} {{.Config.Labels.missing}} {{.Config.ExposedPorts}}") == "b <no value> map[80/tcp:{}]\n"
    assert f('{{printf "%.12s" .Id}} {{upper .Os}} {{len .RootFS.Layers}}') == f"{images['busybox'][:12]} LINUX 1\n"
    assert f("{{if .Config.Entrypoint}}e{{else}}no entrypoint{{end}}") == "no entrypoint\n"
    assert f("{{.Id}}", "busybox", "other/app:1") == f"{images['busybox']}\n{images['app']}\n"
    assert f("{{.Config | json}}") == f("{{json .Config}}")
    assert json.loads(f("json")) == [data]  # docker's -f json: the JSON itself


def test_inspect_format_errors(cli: Cli, images: dict[str, str]) -> None:
    msg = one_line_error(cli("inspect", "-f", "{{.Nope}}", "busybox", check=False))
    assert msg == ('unionfs: template parsing error: template: :1:2: executing "" at <.Nope>: '
                   "can't evaluate field Nope in type image.InspectResponse")
    # a template that does not parse is refused before any image is looked up
    msg = one_line_error(cli("inspect", "-f", "{{.Id", "missing:1", check=False))
    assert msg == "unionfs: template parsing error: template: :1: unclosed action"


# --- ps ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def containers(images: dict[str, str], store_root: Path) -> list[str]:
    """Containers web (of busybox) and db (of other/app:1), made in that order, neither mounted."""
    store = Store(store_root)
    store.prepare_container("busybox", "web")
    store.prepare_container("other/app:1", "db")
    return ["db", "web"]


def ps_names(cli: Cli, store_root: Path, *args: str) -> list[str]:
    """The names ``ps ARGS`` lists of this store's containers (``ps`` also shows every live unionfs mount of
    the machine: other tests' mounts may be there)."""
    out = cli("ps", *args, "--format", "{{.Names}} {{.Upper}}").stdout.split("\n")
    return [line.split(" ")[0] for line in out if line.partition(" ")[2].startswith(f"{store_root}/")]


def test_ps_lists_mounted_containers_unless_all(cli: Cli, containers: list[str], store_root: Path) -> None:
    lines = cli("ps").stdout.splitlines()
    assert columns(lines[0]) == ["NAME", "IMAGE", "CREATED", "MOUNTPOINT", "STATUS"]
    assert ps_names(cli, store_root) == [] and cli("ps", "-q").stdout == ""
    lines = cli("ps", "-a").stdout.splitlines()
    assert columns(lines[0]) == ["NAME", "IMAGE", "CREATED", "MOUNTPOINT", "STATUS"]
    rows = [columns(line) for line in lines[1:] if columns(line)[0] in containers]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [("db", "other/app:1", "-", "unmounted"),
                                                        ("web", "busybox", "-", "unmounted")]
    assert all(AGE.fullmatch(r[2]) for r in rows), rows  # docker's "5 minutes ago", not a timestamp
    assert cli("ps", "-aq").stdout.split() == containers


def test_ps_format(cli: Cli, containers: list[str], images: dict[str, str]) -> None:
    out = cli("ps", "-a", "--format", "{{.Names}} {{.Image}} {{.ImageID}} {{.State}} [{{.Mountpoint}}]").stdout
    assert [line for line in out.splitlines() if line.split()[0] in containers] == [f"db other/app:1 {images['app']} created []",
                                f"web busybox {images['busybox']} created []"]
    rows = [r for r in map(json.loads, cli("ps", "-a", "--format", "json").stdout.splitlines())
            if r["Names"] in containers]
    assert [r["Names"] for r in rows] == containers and DOCKER_TIME.fullmatch(rows[0]["CreatedAt"])
    assert AGE.fullmatch(rows[0]["RunningFor"]) and rows[0]["Upper"].endswith("/containers/db/upper")
    out = cli("ps", "-a", "-f", "name=^(db|web)$", "--format", "table {{.Names}}\t{{.State}}").stdout
    assert out == "NAME      STATE\ndb        created\nweb       created\n"
    assert "can't evaluate field Nope" in one_line_error(cli("ps", "-a", "--format", "{{.Nope}}", check=False))


@pytest.mark.parametrize("filters,shown", [
    (["name=^w"], ["web"]),
    (["name=b"], ["db", "web"]),
    (["id=d"], ["db"]),
    (["ancestor=busybox"], ["web"]),
    (["ancestor=other/app:1", "ancestor=busybox"], ["db", "web"]),
    (["status=running"], []),
    (["status=created"], ["db", "web"]),
    (["before=db"], ["web"]),
    (["since=web"], ["db"]),
])
def test_ps_filters(cli: Cli, containers: list[str], store_root: Path, filters: list[str], shown: list[str]) -> None:
    args = [a for f in filters for a in ("--filter", f)]
    assert ps_names(cli, store_root, "-a", *args) == shown


def test_ps_status_filter_implies_all_and_others_are_refused(cli: Cli, containers: list[str],
                                                             store_root: Path) -> None:
    assert ps_names(cli, store_root, "-f", "status=exited") == containers  # as docker: no -a needed
    assert "does not apply" in one_line_error(cli("ps", "-f", "label=a", check=False))
    assert "invalid filter 'status=up'" in one_line_error(cli("ps", "-f", "status=up", check=False))
    assert "invalid filter 'bogus'" in one_line_error(cli("ps", "-f", "bogus=1", check=False))
    assert "no such container: nope" in one_line_error(cli("ps", "-f", "since=nope", check=False), 1)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mnt"
    path.mkdir()
    with unmounted_on_exit(path):
        yield path


def test_ps_shows_a_mounted_container_without_all(cli: Cli, containers: list[str], mnt: Path,
                                                  store_root: Path) -> None:
    require(skip_reason_root("FUSE mounts of images"), skip_reason_fuse())
    cli("mount", "--name", "web", "busybox", mnt)
    try:
        rows = [columns(line) for line in cli("ps").stdout.splitlines()[1:]]
        assert [(r[0], r[3], r[4]) for r in rows if r[0] in containers] == [("web", str(mnt), "mounted")]
        out = cli("ps", "-f", "status=running", "-f", "name=^web$", "--format", "{{.Names}} {{.State}} {{.Mountpoint}}")
        assert out.stdout == f"web running {mnt}\n"
        assert ps_names(cli, store_root) == ["web"]
    finally:
        cli("umount", mnt)
    assert ps_names(cli, store_root) == []
