"""Unpacking layer tars: every attribute kept, the overlay whiteout format, and hostile input refused.

Every tar is built in code (tests/support/tar.py). Hostile cases check the error class, that the message is
one line, and that a sentinel directory beside the destination is unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile

import pytest
from support.tar import (
    END,
    blockdev,
    build,
    chardev,
    directory,
    fifo,
    file,
    gz,
    hardlink,
    header_block,
    opaque,
    pax_block,
    pax_record,
    symlink,
    whiteout,
    zst,
)
from support.tree import assert_same_tree, tree_snapshot

from unionfs.errors import DigestError, LayerError, LayerTooLargeError, UnsafeLayerError
from unionfs.layer import unpack as layer
from unionfs.layer.unpack import UnpackResult, unpack_layer
from unionfs.oci.digest import Digest

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (ownership, devices, trusted./security. xattrs)")
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZ = OCI_TAR + "+gzip"
OCI_ZST = OCI_TAR + "+zstd"
# cap_net_bind_service=ep in the VFS_CAP_REVISION_2 format (20 bytes)
CAP = b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + b"\0" * 12
OPAQUE_X = ("trusted." if ROOT else "user.") + "overlay.opaque"


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "dest"
    d.mkdir()
    return d


def unpack(data: bytes, dest, media_type: str | None = OCI_TAR, **kw) -> UnpackResult:
    return unpack_layer(io.BytesIO(data), str(dest), media_type=media_type, **kw)


def lst(dest, name: str) -> os.stat_result:
    return os.lstat(os.path.join(dest, name))


def is_whiteout(dest, name: str) -> bool:
    from unionfs.layer import whiteout as wh

    return wh.is_whiteout(os.path.join(dest, name))


def opaque_of(dest, name: str = "") -> bytes | None:
    try:
        return os.getxattr(os.path.join(dest, name), OPAQUE_X, follow_symlinks=False)
    except OSError:
        return None


# ---------------------------------------------------------------------------
# positive cases
# ---------------------------------------------------------------------------

def test_result_hashes_the_whole_stream(dest):
    data = build([directory("a"), file("a/f", b"hello")]) + b"\0" * 4096  # extra padding is hashed too
    res = unpack(data, dest)
    assert res.diff_id == Digest("sha256", hashlib.sha256(data).hexdigest())
    assert res.size == len(data)
    assert res.entries == 2
    again = dest.parent / "again"
    again.mkdir()
    assert unpack(data, again, diff_id=res.diff_id) == res


def test_regular_files_modes_and_times(dest):
    data = build([
        directory("bin", mode=0o755, mtime=1_500_000_000),
        file("bin/suid", b"x" * 70000, mode=0o4755, mtime=1_400_000_000),
        file("bin/sgid", b"y", mode=0o2711),
        directory("tmp", mode=0o1777, mtime=1_300_000_000),
        file("tmp/ro", b"", mode=0o400, pax={"mtime": "1234567890.123456789"}),
        file("bin/late", b"z"),  # created after bin's entry: bin's mtime must still be kept
    ])
    unpack(data, dest)
    assert stat.S_IMODE(lst(dest, "bin/suid").st_mode) == 0o4755
    assert (dest / "bin/suid").read_bytes() == b"x" * 70000
    assert stat.S_IMODE(lst(dest, "bin/sgid").st_mode) == 0o2711
    assert stat.S_IMODE(lst(dest, "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(lst(dest, "tmp/ro").st_mode) == 0o400
    assert lst(dest, "bin/suid").st_mtime == 1_400_000_000
    assert lst(dest, "bin").st_mtime == 1_500_000_000
    assert lst(dest, "tmp").st_mtime == 1_300_000_000
    assert lst(dest, "tmp/ro").st_mtime_ns == 1234567890123456789


@needs_root
def test_ownership_as_root(dest):
    data = build([
        directory("d", uid=1000, gid=1001),
        file("d/f", b"1", uid=123, gid=456, mode=0o6755),
        symlink("d/l", "f", uid=7, gid=8),
        fifo("d/p", uid=9, gid=10),
    ])
    unpack(data, dest)
    for name, ids in {"d": (1000, 1001), "d/f": (123, 456), "d/l": (7, 8), "d/p": (9, 10)}.items():
        st = lst(dest, name)
        assert (st.st_uid, st.st_gid) == ids, name
    assert stat.S_IMODE(lst(dest, "d/f").st_mode) == 0o6755  # chmod after chown keeps setuid/setgid


def test_xattrs_binary_values(dest):
    data = build([
        file("f", b"1", xattrs={"user.bin": b"\xff\xfe\x80\0ok", "user.text": "héllo".encode()}),
        directory("d", xattrs={"user.d": b"dir"}),
    ])
    unpack(data, dest)
    assert os.getxattr(dest / "f", "user.bin") == b"\xff\xfe\x80\0ok"
    assert os.getxattr(dest / "f", "user.text") == "héllo".encode()
    assert os.getxattr(dest / "d", "user.d") == b"dir"


@needs_root
def test_security_capability_kept(dest):
    data = build([file("ping", b"\x7fELF", mode=0o755, uid=0, gid=0,
                       xattrs={"security.capability": CAP})])
    unpack(data, dest)
    assert os.getxattr(dest / "ping", "security.capability") == CAP


def test_overlay_xattrs_dropped(dest, caplog):
    data = build([directory("d", xattrs={"trusted.overlay.opaque": b"y", "user.overlay.opaque": b"y",
                                         "user.keep": b"1"})])
    unpack(data, dest)
    assert "user.overlay.opaque" not in os.listxattr(dest / "d")
    assert opaque_of(dest, "d") is None
    assert os.getxattr(dest / "d", "user.keep") == b"1"
    assert "private to the overlay" in caplog.text


def test_hardlinks_symlinks_fifos(dest):
    data = build([
        directory("d"),
        file("d/a", b"data", mode=0o751),
        hardlink("d/b", "d/a"),
        hardlink("c", "./d/a"),
        symlink("abs", "/etc/passwd"),
        symlink("up", "../../../../outside"),
        symlink("d/rel", "a"),
        hardlink("d/lnk-to-symlink", "d/rel"),
        fifo("p", mode=0o640),
    ])
    unpack(data, dest)
    ino = lst(dest, "d/a").st_ino
    assert lst(dest, "d/b").st_ino == ino and lst(dest, "c").st_ino == ino
    assert lst(dest, "d/a").st_nlink == 3
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.readlink(dest / "up") == "../../../../outside"
    assert stat.S_ISLNK(lst(dest, "d/lnk-to-symlink").st_mode)
    assert stat.S_ISFIFO(lst(dest, "p").st_mode)
    assert stat.S_IMODE(lst(dest, "p").st_mode) == 0o640


@needs_root
def test_device_nodes_as_root(dest):
    unpack(build([chardev("null", 1, 3), blockdev("loop0", 7, 0)]), dest)
    st = lst(dest, "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    st = lst(dest, "loop0")
    assert stat.S_ISBLK(st.st_mode) and os.major(st.st_rdev) == 7 and os.minor(st.st_rdev) == 0


def test_device_nodes_kept_in_overrides_as_non_root(dest, monkeypatch):
    """Without privilege a device node is an empty file whose override shows it (tests/test_rootless_store.py)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    unpack(build([chardev("null", 1, 3), file("f", b"x")]), dest)
    assert stat.S_ISREG(os.lstat(dest / "null").st_mode) and os.path.getsize(dest / "null") == 0
    assert os.getxattr(dest / "null", "user.containers.override_stat") == b"0:0:020666:char-1-3"
    assert (dest / "f").read_bytes() == b"x"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_and_non_utf8_names(dest, fmt):
    long_dir = "d" * 200
    long_name = f"{long_dir}/{'n' * 250}"
    latin = b"caf\xe9".decode("utf-8", "surrogateescape")
    data = build([directory(long_dir), file(long_name, b"long"), file(latin, b"latin"),
                  symlink("l" * 180, "t" * 300), hardlink(f"{latin}-link", latin)], format=fmt)
    unpack(data, dest)
    assert (dest / long_name).read_bytes() == b"long"
    assert os.path.exists(os.path.join(bytes(dest), b"caf\xe9"))
    assert os.readlink(dest / ("l" * 180)) == "t" * 300
    assert lst(dest, f"{latin}-link").st_ino == lst(dest, latin).st_ino


def test_root_entry_sets_root_metadata(dest):
    unpack(build([directory(".", mode=0o711, mtime=1_000_000_000), file("./f", b"1")]), dest)
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o711
    assert os.lstat(dest).st_mtime == 1_000_000_000


def test_later_entry_replaces_earlier(dest):
    data = build([
        file("f", b"old"), file("f", b"new", mode=0o600),
        directory("d", mode=0o700), file("d/x", b"1"), directory("d", mode=0o755),  # dir over dir: metadata
        directory("gone"), file("gone/y", b"2"), file("gone", b"now a file"),          # file over dir
        file("was-file", b"3"), directory("was-file"),                                  # dir over file
        symlink("s", "a"), symlink("s", "b"),
    ])
    unpack(data, dest)
    assert (dest / "f").read_bytes() == b"new"
    assert (dest / "d/x").read_bytes() == b"1"
    assert stat.S_IMODE(lst(dest, "d").st_mode) == 0o755
    assert (dest / "gone").read_bytes() == b"now a file"
    assert stat.S_ISDIR(lst(dest, "was-file").st_mode)
    assert os.readlink(dest / "s") == "b"


def test_implicit_parents_are_created(dest):
    unpack(build([file("a/b/c", b"deep")]), dest)
    assert (dest / "a/b/c").read_bytes() == b"deep"
    assert stat.S_IMODE(lst(dest, "a/b").st_mode) == 0o755


def test_many_directories_beyond_the_fd_cache(dest):
    entries = [file(f"d{i}/sub/f", str(i).encode()) for i in range(200)]
    entries += [file(f"d{i}/sub/g", b"again") for i in range(200)]
    unpack(build(entries), dest)
    assert (dest / "d150/sub/f").read_bytes() == b"150"
    assert (dest / "d3/sub/g").read_bytes() == b"again"


# -- whiteouts and opaque directories ---------------------------------------------------------------

def test_whiteout_becomes_overlay_whiteout(dest):
    unpack(build([directory("etc"), whiteout("etc/passwd"), whiteout("gone-dir")]), dest)
    assert is_whiteout(dest, "etc/passwd")
    assert is_whiteout(dest, "gone-dir")
    assert not any(n.startswith(".wh.") for n in os.listdir(dest / "etc"))


@needs_root
def test_whiteout_is_char_device_0_0_as_root(dest):
    unpack(build([whiteout("x")]), dest)
    st = lst(dest, "x")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_whiteout_creates_its_directory(dest):
    unpack(build([whiteout("a/b/c")]), dest)
    assert stat.S_ISDIR(lst(dest, "a/b").st_mode)
    assert is_whiteout(dest, "a/b/c")


@pytest.mark.parametrize("order", ["marker-first", "marker-last", "no-dir-entry", "marker-between-children"])
def test_opaque_marker_in_every_position(dest, order):
    d = directory("d", mode=0o750, mtime=1_111_111_111)
    kids = [file("d/a", b"a"), file("d/b", b"b")]
    entries = {
        "marker-first": [opaque("d"), d, *kids],
        "marker-last": [d, *kids, opaque("d")],
        "no-dir-entry": [*kids, opaque("d")],
        "marker-between-children": [d, kids[0], opaque("d"), kids[1]],
    }[order]
    unpack(build(entries), dest)
    assert opaque_of(dest, "d") == b"y"
    assert sorted(os.listdir(dest / "d")) == ["a", "b"]
    if order != "no-dir-entry":
        assert stat.S_IMODE(lst(dest, "d").st_mode) == 0o750
        assert lst(dest, "d").st_mtime == 1_111_111_111


def test_opaque_root(dest):
    unpack(build([opaque(""), file("f", b"1")]), dest)
    assert opaque_of(dest) == b"y"


def test_same_layer_file_survives_its_whiteout(dest):
    unpack(build([file("keep", b"mine"), whiteout("keep")]), dest)
    assert (dest / "keep").read_bytes() == b"mine"


def test_whiteout_then_file_replaces_the_whiteout(dest):
    unpack(build([whiteout("f"), file("f", b"new")]), dest)
    assert (dest / "f").read_bytes() == b"new"
    assert not is_whiteout(dest, "f")


@pytest.mark.parametrize("order", ["dir-first", "whiteout-first", "whiteout-then-child"])
def test_directory_and_its_whiteout_make_it_opaque(dest, order):
    entries = {
        "dir-first": [directory("d"), file("d/x", b"1"), whiteout("d")],
        "whiteout-first": [whiteout("d"), directory("d"), file("d/x", b"1")],
        "whiteout-then-child": [whiteout("d"), file("d/x", b"1")],
    }[order]
    unpack(build(entries), dest)
    assert stat.S_ISDIR(lst(dest, "d").st_mode)
    assert (dest / "d/x").read_bytes() == b"1"
    assert opaque_of(dest, "d") == b"y"


def test_repeated_whiteout_and_aufs_metadata(dest):
    unpack(build([whiteout("x"), whiteout("x"), file(".wh..wh.plnk/123.456", b""),
                  file(".wh..wh.aufs", b"")]), dest)
    assert is_whiteout(dest, "x")
    assert sorted(os.listdir(dest)) == ["x"]


# -- compression ---------------------------------------------------------------------------------

@pytest.mark.parametrize("media_type,wrap", [
    (OCI_TAR, lambda b: b), (OCI_GZ, gz), (OCI_ZST, zst), (None, gz), (None, zst), ("", lambda b: b),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", gz),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", gz),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", zst),
])
def test_each_compression(dest, media_type, wrap):
    tar = build([directory("d"), file("d/f", b"content" * 1000)])
    res = unpack(wrap(tar), dest, media_type=media_type,
                 diff_id=Digest("sha256", hashlib.sha256(tar).hexdigest()))
    assert res.size == len(tar)
    assert (dest / "d/f").read_bytes() == b"content" * 1000


def test_max_size_env_override(dest, monkeypatch):
    monkeypatch.setenv(layer.MAX_LAYER_SIZE_ENV, "2048")
    assert layer.max_layer_size() == 2048
    with pytest.raises(LayerTooLargeError):
        unpack(build([file("f", b"x" * 5000)]), dest)
    monkeypatch.setenv(layer.MAX_LAYER_SIZE_ENV, "lots")
    with pytest.raises(LayerError):
        layer.max_layer_size()


# ---------------------------------------------------------------------------
# hostile input
# ---------------------------------------------------------------------------

@pytest.fixture
def guarded(tmp_path):
    """dest plus a sentinel directory beside it; yields a checker that asserts nothing outside changed."""
    dest = tmp_path / "dest"
    dest.mkdir()
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_bytes(b"precious")
    os.utime(sentinel / "file", (1, 1))
    before = tree_snapshot(sentinel, times=True)
    outer = sorted(os.listdir(tmp_path))

    def check(data: bytes, exc: type, *, media_type: str | None = OCI_TAR, contains: str | None = None,
              **kw) -> str:
        with pytest.raises(exc) as info:
            unpack(data, dest, media_type=media_type, **kw)
        assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
        msg = str(info.value)
        assert msg and "\n" not in msg, repr(msg)
        if contains is not None:
            assert contains in msg, msg
        assert_same_tree(before, tree_snapshot(sentinel, times=True))
        assert sorted(os.listdir(tmp_path)) == outer
        for top in ("/evil", "/tmp/evil"):
            assert not os.path.lexists(top)
        return msg

    return check


HOSTILE = {
    "dotdot": ([file("../evil", b"x")], UnsafeLayerError, "'../evil'"),
    "dotdot-inside": ([directory("a"), file("a/../../evil", b"x")], UnsafeLayerError, "'a/../../evil'"),
    "absolute": ([file("/tmp/evil", b"x")], UnsafeLayerError, "'/tmp/evil'"),
    "absolute-dir": ([directory("/")], UnsafeLayerError, None),
    "slash-as-file": ([file("/", b"x")], UnsafeLayerError, None),
    "dot-as-file": ([file(".", b"x")], UnsafeLayerError, "'.'"),
    "dot-slash-as-symlink": ([symlink("./", "/")], UnsafeLayerError, None),
    "below-escaping-symlink": ([symlink("link", "../sentinel"), file("link/evil", b"x")], UnsafeLayerError,
                               "'link/evil'"),
    "below-absolute-symlink": ([symlink("link", "/tmp"), file("link/evil", b"x")], UnsafeLayerError, "symlink"),
    "below-inside-symlink": ([directory("sub"), symlink("link", "sub"), file("link/f", b"x")], UnsafeLayerError,
                             "symlink"),
    "dir-replaced-by-symlink": ([directory("d"), symlink("d", "../sentinel"), file("d/evil", b"x")],
                                UnsafeLayerError, "'d/evil'"),
    "whiteout-below-symlink": ([symlink("link", "../sentinel"), whiteout("link/file")], UnsafeLayerError, None),
    "opaque-below-symlink": ([symlink("link", "../sentinel"), opaque("link")], UnsafeLayerError, None),
    "hardlink-outside": ([hardlink("hl", "../sentinel/file")], UnsafeLayerError, "'hl'"),
    "hardlink-absolute": ([hardlink("hl", "/etc/passwd")], UnsafeLayerError, "'hl'"),
    "hardlink-through-symlink": ([symlink("link", "../sentinel"), hardlink("hl", "link/file")], UnsafeLayerError,
                                 "'hl'"),
    "hardlink-through-inside-symlink": ([directory("d"), file("d/f", b"1"), symlink("link", "d"),
                                         hardlink("hl", "link/f")], UnsafeLayerError, "'hl'"),
    "hardlink-missing": ([hardlink("hl", "nothing")], LayerError, "'hl'"),
    "hardlink-to-whiteout": ([whiteout("w"), hardlink("hl", "w")], LayerError, "'hl'"),
    "hardlink-to-directory": ([directory("d"), hardlink("hl", "d")], LayerError, "'hl'"),
    "whiteout-dotdot": ([file(".wh...", b"")], UnsafeLayerError, "'.wh...'"),
    "whiteout-dot": ([file(".wh..", b"")], UnsafeLayerError, None),
    "bare-whiteout": ([file(".wh.", b"")], UnsafeLayerError, "'.wh.'"),
    "below-whiteout-name": ([file(".wh.x/y", b"")], UnsafeLayerError, None),
    "file-below-file": ([file("f", b"1"), file("f/g", b"2")], LayerError, "'f/g'"),
    "pax-too-large": ([file("f", b"x", pax={"comment": "c" * (layer.MAX_HEADER_SIZE + 10)})], UnsafeLayerError,
                      "PAX header"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_entries(guarded, case):
    entries, exc, contains = HOSTILE[case]
    guarded(build(entries), exc, contains=contains)


def test_whiteout_naming_dotdot(guarded):
    guarded(build([file("d/.wh...", b"")]), UnsafeLayerError, contains="invalid whiteout")


def test_gnu_longname_too_large(guarded):
    name = "n" * (layer.MAX_HEADER_SIZE + 10)
    data = header_block("././@LongLink", size=len(name) + 1, type_=tarfile.GNUTYPE_LONGNAME) + \
        (name.encode() + b"\0").ljust(-(-(len(name) + 1) // 512) * 512, b"\0") + header_block("x") + END
    guarded(data, UnsafeLayerError, contains="GNU long name")


def test_malformed_pax_record(guarded):
    data = pax_block(b"99999 path=x\n") + header_block("f") + END
    guarded(data, UnsafeLayerError, contains="malformed PAX")


def test_pax_digit_run(guarded):
    # A record with a long digit run: tarfile before 3.11.10 backtracks quadratically on it.
    data = pax_block(pax_record("comment", b"1" * 200_000)) + header_block("f") + END
    if not layer._PAX_REDOS:
        pytest.skip("this Python's tarfile parses PAX headers in linear time")
    guarded(data, UnsafeLayerError, contains="digits")


def test_member_larger_than_bound(guarded):
    data = header_block("huge", size=7 << 30)  # no data follows: refused from the header alone
    guarded(data, LayerTooLargeError, contains="'huge'", max_size=1 << 20)


def test_gzip_bomb(guarded):
    data = gz(build([file("zeros", b"\0" * (20 << 20))]))
    assert len(data) < 100_000
    guarded(data, LayerTooLargeError, media_type=OCI_GZ, max_size=1 << 20)


def test_zstd_bomb(guarded):
    data = zst(build([file("zeros", b"\0" * (20 << 20))]))
    guarded(data, LayerTooLargeError, media_type=OCI_ZST, max_size=1 << 20)


def test_zero_padding_bomb_after_end(guarded):
    data = gz(build([file("f", b"1")]) + b"\0" * (5 << 20))
    guarded(data, LayerTooLargeError, media_type=OCI_GZ, max_size=1 << 20)


def test_diff_id_mismatch(guarded):
    msg = guarded(build([file("f", b"1")]), DigestError, diff_id=Digest.of_bytes(b"other"))
    assert "DiffID" in msg


@pytest.mark.parametrize("cut", [100, 600, 1300, 1600, 2050])
def test_truncated_tar(guarded, cut):
    # a: header at 0, data 512..1512; b: header at 1536, data 2048..2058; end marker at 2560
    tar = build([file("a", b"x" * 1000), file("b", b"y" * 10)])
    guarded(tar[:cut], LayerError, contains="truncated")


@pytest.mark.parametrize("cut", [2058, 2100, 2560, 3072])
def test_missing_end_marker_is_accepted(dest, cut):
    # umoci insert writes layers that stop right after the last entry's data (no padding, no marker);
    # a cut at exactly such a point is caught by the DiffID, which covers every byte.
    tar = build([file("a", b"x" * 1000), file("b", b"y" * 10)])
    res = unpack(tar[:cut], dest, diff_id=Digest.of_bytes(tar[:cut]))
    assert (dest / "b").read_bytes() == b"y" * 10
    assert res.size == cut


def test_empty_stream(guarded):
    guarded(b"", LayerError)


def test_truncated_gzip(guarded):
    data = gz(build([file("a", os.urandom(5000))]))
    guarded(data[:-20], LayerError, media_type=OCI_GZ, contains="gzip")


def test_gzip_crc_mismatch(guarded):
    data = bytearray(gz(build([file("a", b"x" * 5000)])))
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    guarded(bytes(data), LayerError, media_type=OCI_GZ, contains="gzip")


def test_truncated_zstd(guarded):
    data = zst(build([file("a", os.urandom(5000))]))
    guarded(data[:-10], LayerError, media_type=OCI_ZST, contains="zstd")


def test_corrupt_header_mid_stream(guarded):
    tar = bytearray(build([file("a", b"1"), file("b", b"2")]))
    tar[1024 + 148] ^= 0x01  # checksum field of the second header
    guarded(bytes(tar), LayerError, contains="corrupt")


def test_garbage_after_single_zero_block(guarded):
    tar = build([file("a", b"1")])
    body = tar[:1024]
    guarded(body + b"\0" * 512 + b"junk".ljust(512, b"\0"), LayerError, contains="corrupt")


def test_unsupported_media_types(guarded):
    guarded(build([file("a")]), LayerError, media_type="application/vnd.oci.image.layer.v1.tar+bzip2")
    guarded(build([file("a")]), LayerError, media_type="application/vnd.oci.image.layer.v1.tar+gzip+encrypted")


def test_unsupported_entry_type(guarded):
    data = header_block("v", type_=b"V") + END
    guarded(data, LayerError, contains="'v'")


def test_whiteout_below_a_same_layer_file_is_moot(dest):
    # umoci writes whiteouts for the old children of a directory it replaced by a file in the same layer.
    unpack(build([file("d", b"file now"), whiteout("d/old-child")]), dest)
    assert (dest / "d").read_bytes() == b"file now"


def test_unprivileged_mode_uses_user_namespace_and_keeps_our_ids(dest, monkeypatch):
    # Simulates a non-root run (real non-root runs use the same code path keyed on geteuid).
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    me = (os.getuid(), os.getgid())
    unpack(build([opaque("d"), file("d/f", b"1", uid=4242, gid=4343, mode=0o4755), whiteout("w")]), dest)
    assert os.getxattr(dest / "d", "user.overlay.opaque") == b"y"
    st = lst(dest, "d/f")
    assert (st.st_uid, st.st_gid) == me
    assert is_whiteout(dest, "w")
