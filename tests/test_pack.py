"""pack.py: upper directories built in code packed into OCI layer tars, read back with tarfile and unpacked
again with unionfs.layer.unpack (whiteouts and opaque markers are made here, never committed)."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from unionfs.errors import LayerError
from unionfs.image.pack import pack_layer, write_diff_tar, write_merged_tar
from unionfs.layer import whiteout
from unionfs.layer.compression import open_decompressed
from unionfs.layer.unpack import unpack_layer
from unionfs.oci.digest import Digest
from unionfs.union.view import Union

ROOT = os.geteuid() == 0
T = 1_500_000_000


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        return t.getmembers()


def _diff(upper: Path, lowers: list[Path] = [], **kw) -> bytes:  # noqa: B006
    buf = io.BytesIO()
    write_diff_tar(str(upper), buf, lowers=[str(p) for p in lowers], **kw)
    return buf.getvalue()


def _whiteout(dirpath: Path, name: str) -> None:
    fd = os.open(dirpath, os.O_DIRECTORY)
    try:
        whiteout.make_whiteout_at(fd, name)
    finally:
        os.close(fd)


def _lower(tmp: Path) -> Path:
    low = tmp / "lower"
    for d in ("etc", "var/cache/x", "opt/app/sub", "data"):
        (low / d).mkdir(parents=True)
    (low / "etc/passwd").write_text("root\n")
    (low / "etc/hosts").write_text("hosts\n")
    (low / "var/cache/x/blob").write_bytes(b"0" * 100)
    (low / "opt/app/conf").write_text("conf\n")
    (low / "opt/app/sub/deep").write_text("deep\n")
    (low / "data/a").write_text("a\n")
    return low


def _upper(tmp: Path) -> Path:
    up = tmp / "upper"
    (up / "etc").mkdir(parents=True)
    (up / "etc/passwd").write_text("root\nuser\n")
    os.chmod(up / "etc/passwd", 0o600)
    os.setxattr(up / "etc/passwd", "user.comment", b"\xffbinary\x00value")
    os.setxattr(up / "etc/passwd", whiteout.USER + "overlay.origin", b"private")
    _whiteout(up / "etc", "hosts")
    (up / "var").mkdir()
    (up / "var/cache").mkdir()
    whiteout.set_opaque(up / "var/cache")
    (up / "var/cache/fresh").write_text("fresh\n")
    (up / "zz").mkdir()
    (up / "zz/one").write_text("linked\n")
    os.link(up / "zz/one", up / "zz/two")
    os.link(up / "zz/one", up / "aa-link")
    os.symlink("../etc/passwd", up / "zz/sym")
    os.mkfifo(up / "zz/fifo")
    with open(os.fsencode(up) + b"/zz/caf\xe9", "wb") as f:
        f.write(b"latin-1 name\n")
    return up


def test_diff_entries_order_and_formats(tmp_path: Path) -> None:
    low, up = _lower(tmp_path), _upper(tmp_path)
    members = _members(_diff(up, [low]))
    names = [m.name for m in members]
    assert names == ["aa-link", "etc", "etc/.wh.hosts", "etc/passwd", "var", "var/cache",
                     "var/cache/.wh..wh..opq", "var/cache/fresh", "zz", "zz/caf\udce9", "zz/fifo", "zz/one",
                     "zz/sym", "zz/two"]
    by = {m.name: m for m in members}
    # hardlinks: the first name in sorted order holds the data, the others link to it
    assert by["aa-link"].isreg() and by["aa-link"].size == 7
    assert by["zz/one"].islnk() and by["zz/one"].linkname == "aa-link"
    assert by["zz/two"].islnk() and by["zz/two"].linkname == "aa-link"
    assert by["zz/sym"].issym() and by["zz/sym"].linkname == "../etc/passwd"
    assert by["zz/fifo"].isfifo()
    assert by["etc/.wh.hosts"].isreg() and by["etc/.wh.hosts"].size == 0
    # modes, numeric owners, no names, xattrs in PAX without the overlay's private ones
    p = by["etc/passwd"]
    assert stat.S_IMODE(p.mode) == 0o600 and p.uname == "" and p.gname == "" and p.uid == os.geteuid()
    assert p.pax_headers["SCHILY.xattr.user.comment"].encode("utf-8", "surrogateescape") == b"\xffbinary\x00value"
    assert not any("overlay" in k for m in members for k in m.pax_headers)
    assert not any(k in ("atime", "ctime") for m in members for k in m.pax_headers)


def test_opaque_marker_written_right_after_its_directory(tmp_path: Path) -> None:
    up = tmp_path / "up"
    (up / "d/a-first").mkdir(parents=True)
    (up / "d/!bang").write_text("sorts before the marker's name\n")
    whiteout.set_opaque(up / "d")
    names = [m.name for m in _members(_diff(up))]
    assert names == ["d", "d/.wh..wh..opq", "d/!bang", "d/a-first"]


@pytest.mark.skipif(not ROOT, reason="needs root: kernel-format whiteouts are character devices (mknod)")
def test_device_whiteout_and_real_devices(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    os.mknod(up / "gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(up / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    by = {m.name: m for m in _members(_diff(up))}
    assert set(by) == {".wh.gone", "null"}
    assert by["null"].ischr() and (by["null"].devmajor, by["null"].devminor) == (1, 3)


def test_xattr_whiteout_and_socket(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    (up / "gone").write_bytes(b"")
    os.setxattr(up / "gone", whiteout.USER + "overlay.whiteout", b"y")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(up / "sock"))
        names = [m.name for m in _members(_diff(up))]
    finally:
        s.close()
    assert names == [".wh.gone"]  # sockets cannot be stored


@pytest.mark.skipif(not ROOT, reason="needs root: the kernel's redirect xattr lives in trusted.")
def test_redirected_directory_becomes_opaque_with_merged_content(tmp_path: Path) -> None:
    low = _lower(tmp_path)
    low2 = tmp_path / "lower2"
    (low2 / "opt/app").mkdir(parents=True)
    (low2 / "opt/app/from-l2").write_text("l2\n")
    up = tmp_path / "up"
    # what the kernel writes for `mv /opt/app /srv/renamed; mv /srv/renamed/sub /srv/renamed/sub2;
    # echo > /srv/renamed/new; rm /srv/renamed/conf`
    (up / "opt").mkdir(parents=True)
    _whiteout(up / "opt", "app")
    (up / "srv/renamed/sub2").mkdir(parents=True)
    os.setxattr(up / "srv/renamed", "trusted.overlay.redirect", b"/opt/app")
    os.setxattr(up / "srv/renamed/sub2", "trusted.overlay.redirect", b"sub")
    (up / "srv/renamed/new").write_text("new\n")
    _whiteout(up / "srv/renamed", "sub")
    _whiteout(up / "srv/renamed", "conf")
    data = _diff(up, [low, low2])
    names = [m.name for m in _members(data)]
    assert names == ["opt", "opt/.wh.app", "srv", "srv/renamed", "srv/renamed/.wh..wh..opq",
                     "srv/renamed/from-l2", "srv/renamed/new", "srv/renamed/sub2", "srv/renamed/sub2/deep"]
    # unpacked over the lowers, the layer gives the tree the kernel showed
    layer = tmp_path / "layer"
    layer.mkdir()
    unpack_layer(io.BytesIO(data), str(layer), media_type=None)
    u = Union([str(low), str(low2), str(layer)])
    assert u.try_lookup("/opt/app") is None
    assert sorted(n.path for n in u.walk(u.lookup("/srv"))) == [
        "/srv", "/srv/renamed", "/srv/renamed/from-l2", "/srv/renamed/new", "/srv/renamed/sub2",
        "/srv/renamed/sub2/deep"]


def test_reproducible_layers_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a = _upper(tmp_path / "a")
    os.utime(a / "etc/passwd", ns=(T * 10**9 + 123, T * 10**9 + 123456789))
    b = _upper(tmp_path / "b")  # made later: other mtimes, other inode numbers
    assert _diff(a) != _diff(b)
    assert _diff(a, reproducible=True) == _diff(b, reproducible=True)
    assert all(m.mtime == 0 for m in _members(_diff(a, reproducible=True)))
    # without --reproducible, nanosecond mtimes are kept in PAX
    by = {m.name: m for m in _members(_diff(a))}
    assert by["etc/passwd"].pax_headers["mtime"] == f"{T}.123456789"
    # SOURCE_DATE_EPOCH alone clamps (newer mtimes down to the epoch, older ones kept)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(T + 10))
    by = {m.name: m for m in _members(_diff(a))}
    assert by["etc/passwd"].mtime == T and "mtime" not in by["etc/passwd"].pax_headers
    assert by["zz/fifo"].mtime == T + 10
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(LayerError):
        _diff(a)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_pack_layer_digests(tmp_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    up = _upper(tmp_path)
    out = io.BytesIO()
    packed = pack_layer(lambda f: write_diff_tar(str(up), f, reproducible=True), out, compression=compression,
                        tmp_dir=str(tmp_path))
    blob = out.getvalue()
    assert packed.digest == Digest.of_bytes(blob) and packed.size == len(blob)
    raw = open_decompressed(io.BytesIO(blob), packed.media_type).read()
    assert packed.diff_id == Digest.of_bytes(raw) and raw == _diff(up, reproducible=True)
    again = io.BytesIO()
    pack_layer(lambda f: write_diff_tar(str(up), f, reproducible=True), again, compression=compression)
    assert again.getvalue() == blob
    with pytest.raises(LayerError):
        pack_layer(lambda f: 0, io.BytesIO(), compression="bzip2")


def test_merged_tar_is_the_flattened_tree(tmp_path: Path) -> None:
    low, up = _lower(tmp_path), _upper(tmp_path)
    buf = io.BytesIO()
    write_merged_tar([str(low)], buf, upper=str(up))
    names = [m.name for m in _members(buf.getvalue())]
    assert not any(".wh." in n for n in names)
    assert "etc/hosts" not in names and "var/cache/x" not in names  # whited out, hidden by the opaque dir
    assert {"data/a", "opt/app/sub/deep", "etc/passwd", "var/cache/fresh", "zz/two"} <= set(names)
    assert names == sorted(names, key=lambda n: [os.fsencode(c) for c in n.split("/")])
