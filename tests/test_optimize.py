"""``convert --estargz --optimize`` (issue 18, point 1): the files the image's command opens in one run, recorded by
the mount's daemon (``-o record=FILE``), go first in their layer, before the prefetch landmark; the layer still
passes the spec's checks and the image still runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.cli import run_cli

from unionfs.image.optimize import by_layer, read_record
from unionfs.layer.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    read_toc,
    verify_estargz,
)
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import container_command
from unionfs.store.store import Store


def prefetched(store: Path, ref: str) -> tuple[list[str], list[str]]:
    """The names of the converted image's one layer before and after its landmark, after checking the layer
    against the spec (TOC digest, chunk digests, offsets) and its DiffID."""
    s = Store(store)
    image = s.resolve(ref)
    (desc,) = image.manifest.layers
    with s.open_blob(desc.digest) as f:
        verify_estargz(f, toc_digest=Digest.parse(desc.annotations[TOC_DIGEST_ANNOTATION]),
                       diff_id=image.config.diff_ids[0])
        toc, _, _ = read_toc(f)
    names = [e["name"].removeprefix("./") for e in toc["entries"] if e["type"] != "chunk"]
    assert NO_PREFETCH_LANDMARK not in names
    i = names.index(PREFETCH_LANDMARK)
    return names[:i], names[i + 1:]


def test_the_files_the_command_opens_go_first_in_the_order_it_opens_them(store: Path) -> None:
    r = run_cli("convert", "--estargz", "--optimize", "busybox:latest", "busybox:opt",
                "sh", "-c", "cat /etc/group >/dev/null", root=store)
    assert r.stdout.splitlines()[0].startswith("optimize: ")
    first, rest = prefetched(store, "busybox:opt")
    # /etc/passwd and /etc/group: read when the container's user is set up; bin/busybox: sh and cat
    assert [n for n in first if n and not n.endswith("/")] == ["etc/passwd", "etc/group", "bin/busybox"]
    assert "etc/passwd" not in rest and "bin/busybox" not in rest and "bin/sh" in rest
    assert run_cli("run", "--rm", "busybox:opt", "cat", "/etc/passwd", root=store).stdout.startswith("root:x:0:0:")


def test_the_daemon_records_each_file_at_its_first_open(tmp_path: Path) -> None:
    lower, mnt, rec = tmp_path / "l", tmp_path / "m", tmp_path / "opens"
    (lower / "d").mkdir(parents=True)
    mnt.mkdir()
    for name in ("a", "b", "d/c"):
        (lower / name).write_text(name)
    run_cli("mount", "--lower", lower, mnt, "-o", f"record={rec}")
    try:
        for name in ("b", "d/c", "b", "a"):
            assert (mnt / name).read_text() == name
        os.listdir(mnt / "d")  # directories are not recorded
    finally:
        run_cli("umount", mnt)
    assert rec.read_text().splitlines() == ['"/b"', '"/d/c"', '"/a"']
    assert rec.stat().st_mode & 0o777 == 0o600


def test_a_command_that_does_not_end_is_stopped_after_the_timeout(store: Path) -> None:
    run_cli("convert", "--estargz", "--optimize", "--optimize-timeout", "2", "busybox:latest", "busybox:opt",
            "sh", "-c", "cat /etc/passwd >/dev/null; exec sleep 600", root=store, timeout=120)
    first, _ = prefetched(store, "busybox:opt")
    assert "etc/passwd" in first


def test_optimize_usage_errors_change_nothing(store: Path) -> None:
    r = run_cli("convert", "--estargz", "busybox:latest", "busybox:x", "sh", root=store, check=False)
    assert r.returncode == 2 and "--optimize" in r.stderr
    r = run_cli("convert", "--estargz", "--optimize-timeout", "0", "busybox:latest", "busybox:x", root=store,
                check=False)
    assert r.returncode == 2 and "invalid time" in r.stderr
    r = run_cli("images", "-q", "busybox:x", root=store)
    assert r.stdout.strip() == ""


def test_the_record_option_needs_an_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "l").mkdir()
    (tmp_path / "m").mkdir()
    r = run_cli("mount", "--lower", tmp_path / "l", tmp_path / "m", "-o", "record=opens", check=False)
    assert r.returncode != 0 and "absolute path" in r.stderr
    assert not os.path.ismount(tmp_path / "m")


def test_paths_go_to_the_layer_they_are_read_from(tmp_path: Path) -> None:
    base, top = tmp_path / "base", tmp_path / "top"
    for d in (base / "d", top):
        d.mkdir(parents=True)
    for f in (base / "a", base / "d/x", base / "gone", top / "a", top / "b"):
        f.write_text(f.name)
    os.mknod(top / "gone", 0o600 | 0o020000, 0)  # a whiteout (0:0 character device) hides the base's file
    got = by_layer([base, top], ["/b", "a", "/d/x", "/gone", "/d", "/nosuch", "/d/x/y"])
    assert got == [["/d/x"], ["/b", "/a"]]


def test_the_record_is_read_once_per_path_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    rec = tmp_path / "opens"
    rec.write_bytes(b'"/bin/sh"\n"/etc/passwd"\n"/bin/sh"\n42\n"/etc/gro')
    assert read_record(rec) == ["/bin/sh", "/etc/passwd"]
    assert read_record(tmp_path / "none") == []


@pytest.mark.parametrize("config, command, entrypoint, argv", [
    ({"Entrypoint": ["/e"], "Cmd": ["c"]}, [], None, ["/e", "c"]),
    ({"Entrypoint": ["/e"], "Cmd": ["c"]}, ["x"], None, ["/e", "x"]),
    ({"Entrypoint": ["/e"], "Cmd": ["c"]}, ["x"], "", ["x"]),
    ({"Cmd": ["c"]}, [], "/f", ["/f"]),
    ({}, [], None, []),
])
def test_the_command_is_made_as_docker_makes_it(config: dict, command: list[str], entrypoint: str | None,
                                                 argv: list[str]) -> None:
    assert container_command(config, command, entrypoint) == argv
