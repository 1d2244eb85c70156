"""Archives through standard input and output, as docker moves them (issue 16, "Streams"): ``save`` and
``export`` write to standard output when it is not a terminal, ``load`` and ``import -`` read standard input
when it is not one; a terminal is refused with one line. A stream that is truncated or hostile changes nothing
in the store, and a multi-hundred-MB stream is loaded with bounded memory (spooled, never held).

Images are made in code (tests/support/tar.py): no root, no umoci."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.busybox import store_state
from support.cli import cli_argv, run_cli
from support.tar import build, directory, docker_archive, file, gz, symlink

from unionfs.store.store import Store

LAYER = build([directory("etc"), file("etc/motd", b"hello from a stream\n"), symlink("etc/link", "motd")])
OTHER = build([file("other", b"other content\n")])


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A docker-save archive of one image, ``stream:1``, with one layer."""
    return docker_archive(tmp_path / "image.tar", [(LAYER, LAYER)], repo_tags=("stream:1",))


@pytest.fixture
def loaded(archive: Path, store_root: Path) -> Path:
    """The test's store holding ``stream:1`` (loaded from the file)."""
    run_cli("load", "-i", archive, root=store_root)
    return store_root


def on_a_terminal(*args: str, root: Path, stream: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with its ``stream`` ("stdin" or "stdout") on a pseudo-terminal."""
    leader, follower = pty.openpty()
    try:
        kw = {stream: follower, "stderr": subprocess.PIPE}
        if stream == "stdin":
            kw["stdout"] = subprocess.PIPE
        return subprocess.run(cli_argv(*args, root=root), timeout=60, **kw)  # type: ignore[call-overload]
    finally:
        os.close(follower)
        os.close(leader)


def image_id(root: Path, ref: str) -> str:
    return str(Store(root).resolve(ref).id)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_to_stdout_and_load_from_stdin_keep_the_image_id(fmt: str, loaded: Path, tmp_path: Path) -> None:
    """``save IMAGE | load`` into another store gives the same image id and tag, through two pipes."""
    other = tmp_path / "other"
    saver = subprocess.Popen(cli_argv("save", "stream:1", "--format", fmt, root=loaded), stdout=subprocess.PIPE)
    out = subprocess.run(cli_argv("load", root=other), stdin=saver.stdout, capture_output=True, text=True,
                         timeout=120)
    saver.stdout.close()  # type: ignore[union-attr]
    assert saver.wait(60) == 0 and out.returncode == 0, out.stderr
    assert out.stdout == "Loaded image: stream:1\n"
    assert image_id(other, "stream:1") == image_id(loaded, "stream:1")
    assert list((other / "tmp").iterdir()) == []  # the spool has no name: nothing is left behind


def test_load_of_a_gzip_stream(loaded: Path, tmp_path: Path) -> None:
    """``save | gzip | load``, as docker load takes it."""
    saved = run_cli("save", "stream:1", root=loaded, text=False).stdout
    other = tmp_path / "other"
    assert run_cli("load", root=other, input=gz(saved), text=False).stdout == b"Loaded image: stream:1\n"
    assert image_id(other, "stream:1") == image_id(loaded, "stream:1")


def test_save_to_stdout_is_the_archive_save_o_writes(loaded: Path, tmp_path: Path) -> None:
    run_cli("save", "stream:1", "-o", tmp_path / "o.tar", root=loaded)
    piped = run_cli("save", "stream:1", root=loaded, text=False).stdout
    assert piped == (tmp_path / "o.tar").read_bytes()


@pytest.mark.parametrize("args, stream", [
    (("save", "stream:1"), "stdout"),
    (("export", "stream:1"), "stdout"),
    (("image", "save", "stream:1"), "stdout"),
    (("load",), "stdin"),
    (("import", "-", "x:1"), "stdin"),
])
def test_a_terminal_is_refused_in_one_line(args: tuple[str, ...], stream: str, loaded: Path) -> None:
    before = store_state(loaded)
    p = on_a_terminal(*args, root=loaded, stream=stream)
    err = p.stderr.decode().strip().splitlines()
    assert p.returncode == 2 and len(err) == 1
    if stream == "stdout":
        assert err == ["unionfs: cowardly refusing to save to a terminal. Use the -o flag or redirect"]
    else:
        assert "standard input, which is a terminal" in err[0]
    assert store_state(loaded) == before


def _truncated(archive: Path) -> bytes:
    """The archive cut in the middle of its layer's data."""
    data = archive.read_bytes()
    return data[:data.index(b"hello from a stream") + 5]


def _hostile(tmp_path: Path) -> bytes:
    evil = build([file("../escaped", b"x")])
    return docker_archive(tmp_path / "evil.tar", [(evil, evil)], repo_tags=("evil:1",)).read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "hostile", "not a tar", "empty", "wrong digest"])
def test_a_bad_stream_changes_nothing(kind: str, loaded: Path, archive: Path, tmp_path: Path) -> None:
    """``load`` from standard input is all or nothing, as from a file: one line, exit 1, the store as it was
    (blobs, layers, containers, cache, tmp, index)."""
    data = {
        "truncated": lambda: _truncated(archive),
        "hostile": lambda: _hostile(tmp_path),
        "not a tar": lambda: b"this is not an archive\n" * 100,
        "empty": lambda: b"",
        "wrong digest": lambda: docker_archive(tmp_path / "w.tar", [(OTHER, OTHER.replace(b"other", b"OTHER"))],
                                              repo_tags=("bad:1",)).read_bytes(),
    }[kind]()
    before = store_state(loaded)
    p = run_cli("load", root=loaded, input=data, text=False, check=False)
    assert p.returncode == 1 and len(p.stderr.decode().strip().splitlines()) == 1, p.stderr
    assert store_state(loaded) == before
    assert not (tmp_path / "escaped").exists()
    if kind in ("empty", "not a tar"):
        assert p.stderr.decode().strip() == {
            "empty": "unionfs: standard input is empty: no archive to load",
            "not a tar": "unionfs: standard input is not a tar archive (plain, gzip, bzip2 or xz)"}[kind]


def test_load_of_a_big_stream_holds_little_memory(tmp_path: Path, store_root: Path) -> None:
    """A 256 MiB archive on standard input is spooled to disk, not read into memory: the command's peak
    resident size stays far below the stream's size (measured in a process whose only child is the command)."""
    size = 256 << 20
    layer = tmp_path / "big-layer.tar"
    with open(layer, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("big")
        info.size = size
        t.addfile(info, _Zeros(size))
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{h.hexdigest()}"]}}).encode()
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as t:
        t.add(layer, "l/layer.tar")
        for name, data in (("c.json", config), ("manifest.json", json.dumps(
                [{"Config": "c.json", "RepoTags": ["big:1"], "Layers": ["l/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    layer.unlink()
    measure = ("import resource, subprocess, sys\n"
               "with open(sys.argv[1], 'rb') as f:\n"
               "    rc = subprocess.run(sys.argv[2:], stdin=f, stdout=subprocess.DEVNULL).returncode\n"
               "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", measure, str(archive), *cli_argv("load", root=store_root)],
                         capture_output=True, text=True, timeout=600, check=True).stdout.split()
    rc, peak_kib = int(out[0]), int(out[1])
    assert rc == 0
    assert (store_root / "layers" / h.hexdigest() / "big").stat().st_size == size
    assert peak_kib * 1024 < size // 4, f"load from a pipe peaked at {peak_kib} KiB for a {size >> 20} MiB stream"


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, read in pieces (a big layer's content that is never held whole)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def test_import_from_stdin(store_root: Path) -> None:
    """``import - REF`` reads a (gzip) rootfs tarball from standard input, as docker import does."""
    image = run_cli("import", "-", "piped:1", "-m", "from a pipe", root=store_root, input=gz(LAYER),
                    text=False).stdout.decode().strip()
    data = json.loads(run_cli("inspect", "piped:1", root=store_root).stdout)[0]
    assert data["Id"] == image
    assert data["History"][0]["created_by"] == "unionfs import -"
    assert run_cli("cat", "piped:1", "/etc/link", root=store_root).stdout == "hello from a stream\n"


def test_import_refuses_a_url_in_one_line(store_root: Path) -> None:
    p = run_cli("import", "https://example.com/rootfs.tar", "x:1", root=store_root, check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "URL" in p.stderr


def _names(tar_bytes: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        return {m.name: (t.extractfile(m).read() if m.isreg() else None) for m in t}  # type: ignore[union-attr]


def test_export_an_image_and_a_container_to_stdout(loaded: Path) -> None:
    """``export IMAGE`` and ``export CONTAINER`` (docker's meaning: the image's layers and the container's
    upper) write the merged tree to standard output; ``container export`` takes containers only."""
    assert _names(run_cli("export", "stream:1", root=loaded, text=False).stdout)["etc/motd"] == \
        b"hello from a stream\n"
    store = Store(loaded)
    store.prepare_container("stream:1", "c1")
    upper = Path(store.container("c1").upper)
    (upper / "etc").mkdir()
    (upper / "etc/motd").write_bytes(b"changed in the container\n")
    (upper / "added").write_bytes(b"new\n")
    for args in (("export", "c1"), ("container", "export", "c1")):
        names = _names(run_cli(*args, root=loaded, text=False).stdout)
        assert names["etc/motd"] == b"changed in the container\n" and names["added"] == b"new\n"
    p = run_cli("container", "export", "stream:1", root=loaded, check=False)
    assert p.returncode == 1 and p.stderr.strip() == "unionfs: no such container: stream:1"


def test_export_o_and_head_of_a_pipe(loaded: Path, tmp_path: Path) -> None:
    run_cli("export", "stream:1", "-o", tmp_path / "rootfs.tar", root=loaded)
    assert "etc/motd" in _names((tmp_path / "rootfs.tar").read_bytes())
    # a reader that goes away early is no error
    p = subprocess.run(f"{' '.join(cli_argv('save', 'stream:1', root=loaded))} | head -c 10 >/dev/null; "
                       "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True, text=True,
                       timeout=60)
    assert p.stdout.strip() == "0" and p.stderr == ""


def test_save_of_a_missing_image_writes_nothing(loaded: Path) -> None:
    p = run_cli("save", "stream:1", "missing:1", root=loaded, check=False, text=False)
    assert p.returncode == 1 and p.stdout == b"" and p.stderr.decode().strip() == "unionfs: no such image: missing:1"


@pytest.mark.parametrize("command, words", [
    ("save", "standard output"), ("load", "standard input"), ("import", "standard input"),
    ("export", "standard output"),
])
def test_help_says_where_the_archive_goes(command: str, words: str, store_root: Path) -> None:
    assert words in " ".join(run_cli(command, "--help", root=store_root).stdout.split())


@pytest.mark.parametrize("data", [LAYER[:LAYER.index(b"hello") + 5], gz(LAYER)[:60], b"junk\n"],
                         ids=["truncated", "truncated gzip", "junk"])
def test_import_of_a_bad_stream_changes_nothing(data: bytes, loaded: Path) -> None:
    before = store_state(loaded)
    p = run_cli("import", "-", "bad:1", root=loaded, input=data, text=False, check=False)
    assert p.returncode == 1 and len(p.stderr.decode().strip().splitlines()) == 1, p.stderr
    assert store_state(loaded) == before
