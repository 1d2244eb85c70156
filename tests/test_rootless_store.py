"""A rootless store keeps owners, modes and devices it cannot give its files in ``user.containers.override_stat``
(issue 15, point 4): the value format, the unpacker without privilege, the union's view of such a store, and a
user other than root loading, listing, exporting, mounting, committing and saving an image whose layers hold
other owners, set-id bits and device nodes, against the same image in a store root owns."""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from support.cli import AsUser, fuse_open_to_all, run_cli
from support.mount import unmounted_on_exit
from support.tar import blockdev, build, chardev, directory, docker_archive, fifo, file, symlink, whiteout

from unionfs.layer import ownership
from unionfs.layer.ownership import Override, Owners
from unionfs.layer.unpack import unpack_layer
from unionfs.union.overlay import Overlay
from unionfs.union.view import Union

#: an override a layer's tar tries to bring in (a user-owned file shown as a set-uid root file): always dropped
FORGED = {ownership.XATTR: b"0:0:0104755"}


def base_layer() -> bytes:
    return build([
        directory("bin"), file("bin/sh", b"#!sh\n", 0o755), file("bin/su", b"su", 0o4755),
        directory("etc"), file("etc/shadow", b"s", 0o640, gid=42),
        directory("home"), directory("home/www", 0o700, uid=33, gid=33),
        file("home/www/index", b"hi", 0o600, uid=33, gid=33),
        directory("dev"), chardev("dev/null", 1, 3), blockdev("dev/sda", 8, 0, gid=6), fifo("dev/fifo", 0o600),
        symlink("link", "bin/sh"), file("forged", b"f", 0o644, uid=1000, gid=1000, xattrs=FORGED),
        directory("gone"), file("gone/x", b"x"),
    ])


def top_layer() -> bytes:
    return build([file("etc/shadow", b"s2", 0o600, uid=7, gid=42), whiteout("gone"),
                  directory("srv", 0o2775, uid=1000, gid=50), chardev("srv/tty0", 4, 0, 0o620, gid=5)])


def shown(union: Union) -> list[tuple[str, int, int, int, int]]:
    """(path, mode, uid, gid, rdev) of every entry of the union."""
    return [(n.path, n.st.st_mode, n.st.st_uid, n.st.st_gid, n.st.st_rdev) for n in union.walk()]


# ---------------------------------------------------------------------------- the value


def test_override_values_round_trip_and_garbage_is_refused() -> None:
    for uid, gid, mode, rdev in [(0, 0, stat.S_IFREG | 0o4755, 0), (33, 33, stat.S_IFDIR | 0o700, 0),
                                 (0, 6, stat.S_IFBLK | 0o660, os.makedev(8, 1)),
                                 (2**32 - 2, 0, stat.S_IFCHR | 0o666, os.makedev(1, 3))]:
        assert ownership.decode(ownership.encode(uid, gid, mode, rdev)) == Override(uid, gid, mode, rdev)
    assert ownership.encode(0, 5, stat.S_IFCHR | 0o620, os.makedev(4, 0)) == b"0:5:020620:char-4-0"
    # the forms others write: permissions alone; the type in the mode; the extended type field
    assert ownership.decode(b"1000:1000:0755") == Override(1000, 1000, 0o755)
    assert ownership.decode(b"0:0:040755") == Override(0, 0, stat.S_IFDIR | 0o755)
    assert ownership.decode(b"0:0:0666:char-1-3") == Override(0, 0, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for bad in (b"", b"0:0", b"a:0:0644", b"0:0:0999", b"-1:0:0644", b"4294967295:0:0644", b"0:0:0644:frob",
                b"0:0:020666:block-1-3", b"0:0:0644:x:y", b"\xff"):
        with pytest.raises(ValueError):
            ownership.decode(bad)


def test_an_override_never_turns_a_directory_or_a_symlink_into_something_else(tmp_path: Path) -> None:
    d, f = tmp_path / "d", tmp_path / "f"
    d.mkdir()
    f.write_bytes(b"")
    for p in (d, f):
        os.setxattr(p, ownership.XATTR, b"7:8:020640:char-1-3")
    owners = Owners()
    sd, sf = owners.shown(os.lstat(d), str(d)), owners.shown(os.lstat(f), str(f))
    assert stat.S_ISDIR(sd.st_mode) and (sd.st_uid, sd.st_gid, stat.S_IMODE(sd.st_mode)) == (7, 8, 0o640)
    assert stat.S_ISCHR(sf.st_mode) and sf.st_rdev == os.makedev(1, 3)
    os.setxattr(f, ownership.XATTR, b"garbage")  # ignored: the file shows as it is
    assert owners.shown(os.lstat(f), str(f)) == os.lstat(f)


# ---------------------------------------------------------------------------- the unpacker


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The two layers unpacked with privilege (``priv/l0``, ``priv/l1``) and without (``user/...``, then handed
    to uid/gid 4321, as a user's unpack would leave them)."""
    for kind, privileged in (("priv", True), ("user", False)):
        for i, layer in enumerate((base_layer(), top_layer())):
            dest = tmp_path / kind / f"l{i}"
            dest.mkdir(parents=True)
            unpack_layer(io.BytesIO(layer), str(dest), media_type=None, privileged=privileged)
    for dirpath, dirnames, filenames in os.walk(tmp_path / "user"):
        for name in [*dirnames, *filenames, "."]:
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            os.chown(p, 4321, 4321, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(p, stat.S_IMODE(mode))  # chown dropped the set-id bits a user's unpack keeps
    yield tmp_path / "priv", tmp_path / "user"


@pytest.mark.skipif(os.geteuid() != 0, reason="the privileged unpack (the reference) needs root")
def test_an_unprivileged_unpack_keeps_owners_and_devices_in_overrides(both: tuple[Path, Path]) -> None:
    priv, user = both
    l0 = user / "l0"
    assert stat.S_ISREG(os.lstat(l0 / "dev/null").st_mode)  # no device made
    assert os.getxattr(l0 / "dev/null", ownership.XATTR) == b"0:0:020666:char-1-3"
    assert os.getxattr(l0 / "home/www", ownership.XATTR) == b"33:33:040700"
    assert os.getxattr(l0 / "forged", ownership.XATTR) == b"1000:1000:0100644"  # the tar's own was dropped
    with pytest.raises(OSError):
        os.getxattr(l0 / "bin/sh", ownership.XATTR)  # root's: the store owner shows as root
    assert stat.S_IMODE(os.lstat(l0 / "bin/su").st_mode) == 0o4755
    layers = ["l0", "l1"]
    expected = shown(Union([str(priv / x) for x in layers]))
    assert shown(Union([str(user / x) for x in layers], owners=Owners(4321, 4321))) == expected
    # without the store's owners the user's tree shows what it is: the user's files
    assert shown(Union([str(user / x) for x in layers])) != expected


# ---------------------------------------------------------------------------- a user's own store


def _tar_headers(data: bytes) -> list[tuple[str, bytes, int, int, int, int, int, str]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(t.name, t.type, t.mode, t.uid, t.gid, t.devmajor, t.devminor, t.linkname) for t in tf]


def _diff_ids(store: Path, ref: str, user: AsUser | None = None) -> list[str]:
    args = ("inspect", ref)
    out = (user.cli(*args, root=store) if user is not None else run_cli(*args, root=store)).stdout
    data = json.loads(out)
    return (data[0] if isinstance(data, list) else data)["RootFS"]["Layers"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as another user")
def test_a_user_store_shows_exports_commits_and_saves_the_owners_of_a_root_store() -> None:
    base = Path(tempfile.mkdtemp(prefix="unionfs-rootless", dir="/tmp"))  # a path the user may walk
    os.chmod(base, 0o755)
    mnt = base / "m"
    try:
        nobody = AsUser(base)
        archive = docker_archive(base / "img.tar", [(t, t) for t in (base_layer(), top_layer())],
                                 repo_tags=("owners:1",))
        archive.chmod(0o644)
        rstore, ustore, saved = base / "rstore", base / "ustore", base / "out"
        for d in (ustore, saved):
            d.mkdir()
            os.chown(d, 65534, 65534)
        run_cli("load", "-i", archive, root=rstore)
        nobody.cli("load", "-i", archive, root=ustore)

        # ls and export see what a root store sees
        listing = ["ls", "-l", "-R", "owners:1", "/"]
        assert nobody.cli(*listing, root=ustore).stdout == run_cli(*listing, root=rstore).stdout
        devices = [p for p in (ustore / "layers").glob("*/dev/null")]
        assert len(devices) == 1 and stat.S_ISREG(os.lstat(devices[0]).st_mode)
        assert os.lstat(devices[0]).st_uid == 65534
        exported = nobody.cli("export", "owners:1", root=ustore, text=False).stdout
        assert _tar_headers(exported) == _tar_headers(run_cli("export", "owners:1", root=rstore, text=False).stdout)
        assert ("srv/tty0", tarfile.CHRTYPE, 0o620, 0, 5, 4, 0, "") in _tar_headers(exported)

        # a mount of the user's store shows the overrides (the user's own files as the user's)
        mnt.mkdir()
        os.chown(mnt, 65534, 65534)
        with fuse_open_to_all(), unmounted_on_exit(mnt):
            nobody.cli("mount", "--name", "c1", "owners:1", mnt, root=ustore)
            out = nobody.run("stat", "-c", "%n %u %g %a %F %t:%T", *(f"{mnt}/{p}" for p in
                             ("dev/null", "dev/sda", "srv", "srv/tty0", "home/www", "etc/shadow", "bin/su",
                              "forged"))).stdout
            assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
                "0 0 666 character special file 1:3", "0 6 660 block special file 8:0", "1000 50 2775 directory 0:0",
                "0 5 620 character special file 4:0", "33 33 700 directory 0:0", "7 42 600 regular file 0:0",
                "65534 65534 4755 regular file 0:0", "1000 1000 644 regular file 0:0"]
            # nothing in the mount sees or sets the store's overrides
            r = nobody.run("sh", "-c", f"cd {mnt} && echo new > new && getfattr -d -m - forged; "
                                       f"setfattr -n {ownership.XATTR} -v 0:0:0104755 new", check=False)
            assert ownership.XATTR not in r.stdout and r.returncode != 0
            nobody.cli("umount", mnt)

        # a commit records the user's new file as root's, as a root store records root's
        nobody.cli("commit", "c1", "owners:2", root=ustore)
        nobody.cli("save", "-o", saved / "u2.tar", "owners:2", root=ustore)
        layer = _last_layer(saved / "u2.tar")
        assert ("new", tarfile.REGTYPE, 0o644, 0, 0, 0, 0, "") in _tar_headers(layer)

        # loaded and saved again: the same layers
        nobody.cli("save", "-o", saved / "u1.tar", "owners:1", root=ustore)
        run_cli("load", "-i", saved / "u1.tar", root=base / "rstore2")
        assert _diff_ids(base / "rstore2", "owners:1") == _diff_ids(rstore, "owners:1") == \
            _diff_ids(ustore, "owners:1", nobody)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _last_layer(archive: Path) -> bytes:
    """The uncompressed tar of the top layer of the only image of a docker-save or OCI archive."""
    import gzip

    with tarfile.open(archive) as tf:
        names = tf.getnames()
        if "manifest.json" in names:
            layer = json.load(tf.extractfile("manifest.json"))[0]["Layers"][-1]  # type: ignore[arg-type]
        else:
            index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
            digest = index["manifests"][0]["digest"].split(":")[1]
            manifest = json.load(tf.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
            layer = "blobs/sha256/" + manifest["layers"][-1]["digest"].split(":")[1]
        data = tf.extractfile(layer).read()  # type: ignore[union-attr]
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


# ---------------------------------------------------------------------------- the writer keeps owners too


def test_an_overlay_that_keeps_owners_in_overrides_never_gives_files_away(tmp_path: Path) -> None:
    """``xattr_permissions=2`` (a rootless store's mounts): new entries, chown, chmod and copy-ups keep owners
    other than the daemon's own in overrides; the real files stay the daemon's (its user's, in a user namespace
    its root), so the user who runs it can always read and remove them."""
    me = (os.geteuid(), os.getegid())
    lowers = []
    for i, layer in enumerate((base_layer(), top_layer())):
        lowers.append(str(tmp_path / f"l{i}"))
        os.mkdir(lowers[-1])
        unpack_layer(io.BytesIO(layer), lowers[-1], media_type=None, privileged=False)
    upper, work = tmp_path / "u", tmp_path / "w"
    upper.mkdir()
    work.mkdir()
    ov = Overlay(lowers, str(upper), str(work), owners=Owners())

    def seen(path: str) -> tuple[int, int, int, int]:
        st = ov.view.lookup(path).st
        return st.st_uid, st.st_gid, st.st_mode, st.st_rdev

    os.close(ov.create("/www-file", 0o640, os.O_WRONLY, uid=33, gid=33))
    ov.mkdir("/www-dir", 0o750, uid=33, gid=33)
    ov.mknod("/tty", stat.S_IFCHR | 0o620, os.makedev(4, 1), uid=0, gid=5)
    ov.symlink("www-file", "/www-link", uid=33, gid=33)
    os.close(ov.create("/mine", 0o644, os.O_WRONLY, uid=me[0], gid=me[1]))
    assert seen("/www-file") == (33, 33, stat.S_IFREG | 0o640, 0)
    assert seen("/www-dir") == (33, 33, stat.S_IFDIR | 0o750, 0)
    assert seen("/tty") == (0, 5, stat.S_IFCHR | 0o620, os.makedev(4, 1))
    assert seen("/www-link")[:2] == me  # a symlink holds no override: the daemon's
    assert ownership.XATTR not in os.listxattr(upper / "mine")
    # a lower file with an override: copied up as it is (its override with it), then changed there
    ov.chmod("/etc/shadow", 0o640)
    assert seen("/etc/shadow") == (7, 42, stat.S_IFREG | 0o640, 0)
    ov.chown("/bin/su", 33, -1)  # drops set-user-ID, as chown(2) does
    assert seen("/bin/su") == (33, me[1], stat.S_IFREG | 0o755, 0)
    ov.chown("/www-dir", *me)  # the daemon's own ids: the override goes, the real owner shows
    assert seen("/www-dir") == (*me, stat.S_IFDIR | 0o750, 0)
    assert ownership.XATTR not in os.listxattr(upper / "www-dir")
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            assert (st.st_uid, st.st_gid) == me and not stat.S_ISCHR(st.st_mode), name


# ---------------------------------------------------------------------------- run and build without root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a throw-away user")
def test_a_user_runs_and_builds_in_a_user_namespace_of_its_own() -> None:
    """(Issue 15, point 3.) ``run`` and build ``RUN`` as a user with subordinate ranges: root of a user namespace
    of its own (0 the user, 1..65536 its range), the image's users switched to, owners kept in overrides; a
    commit and a build record them; nothing stays mounted, and the user can remove every file of its store."""
    from support.busybox import busybox_tarball
    from support.mount import leftover_mounts
    from support.podman import throwaway_user

    base = Path(tempfile.mkdtemp(prefix="unionfs-userns", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        tarball = busybox_tarball(base / "busybox.tar.gz")
        tarball.chmod(0o644)
        with throwaway_user() as name:
            pw = pwd.getpwnam(name)
            user = AsUser(base, pw.pw_uid, pw.pw_gid)
            store = base / "store"
            store.mkdir()
            os.chown(store, pw.pw_uid, pw.pw_gid)
            user.cli("import", tarball, "busybox:latest", root=store)
            out = user.cli("run", "--rm", "busybox", "sh", "-c", "id -u; cat /proc/self/uid_map; "
                           "stat -c '%u %g' /home/user; echo hi > /tmp/x && cat /tmp/x", root=store).stdout.split()
            start = ownership_range(name)
            assert out == ["0", "0", str(pw.pw_uid), "1", "1", str(start), "65536", "1000", "1000", "hi"]
            out = user.cli("run", "--rm", "-u", "1000", "busybox", "sh", "-c",
                           "id -u; touch /home/user/f && stat -c '%u %g' /home/user/f", root=store).stdout
            assert out.split() == ["1000", "1000", "1000"]
            user.cli("run", "--name", "c", "busybox", "sh", "-c", "echo a > /f && chown 33:44 /f && chmod 4755 /f",
                     root=store)
            user.cli("commit", "c", "c:1", root=store)
            headers = _tar_headers(user.cli("export", "c:1", root=store, text=False).stdout)
            assert ("f", tarfile.REGTYPE, 0o4755, 33, 44, 0, 0, "") in headers
            ctx = base / "ctx"
            ctx.mkdir()
            (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo b > /b && chown 1000:1000 /b\nUSER 1000\n"
                                            "RUN touch /home/user/made\n")
            os.chmod(ctx / "Dockerfile", 0o644)
            user.cli("build", "-t", "built:1", ctx, root=store)
            # convert --optimize runs the image's command as run does
            out = user.cli("convert", "--estargz", "--optimize", "busybox:latest", "bb:opt", "cat", "/etc/group",
                           root=store).stdout
            assert out.startswith("optimize: 3 files opened by the command go first\n")
            headers = _tar_headers(user.cli("export", "built:1", root=store, text=False).stdout)
            assert ("b", tarfile.REGTYPE, 0o644, 1000, 1000, 0, 0, "") in headers
            assert ("home/user/made", tarfile.REGTYPE, 0o644, 1000, 1000, 0, 0, "") in headers
            assert not leftover_mounts(base)
            foreign = [str(p) for p in store.rglob("*") if os.lstat(p).st_uid != pw.pw_uid]
            assert not foreign
            user.run("find", store, "-mindepth", "1", "-delete")
            assert not list(store.iterdir())
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as another user")
def test_a_user_without_subordinate_ids_runs_as_root_of_its_namespace_alone() -> None:
    from support.busybox import busybox_tarball

    base = Path(tempfile.mkdtemp(prefix="unionfs-userns", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        tarball = busybox_tarball(base / "busybox.tar.gz")
        tarball.chmod(0o644)
        nobody = AsUser(base)
        store = base / "store"
        store.mkdir()
        os.chown(store, 65534, 65534)
        nobody.cli("import", tarball, "busybox:latest", root=store)
        with fuse_open_to_all():
            out = nobody.cli("run", "--rm", "busybox", "sh", "-c", "id -u; cat /proc/self/uid_map", root=store)
            assert out.stdout.split() == ["0", "0", "65534", "1"]
            r = nobody.cli("run", "--rm", "-u", "1000", "busybox", "id", root=store, check=False)
        assert r.returncode != 0 and "is not mapped in this user namespace" in r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ownership_range(name: str) -> int:
    """The start of the first range /etc/subuid gives the user ``name``."""
    from unionfs.run.userns import subordinate_range

    found = subordinate_range("/etc/subuid", pwd.getpwnam(name).pw_uid)
    assert found is not None
    return found[0]


def test_a_device_kept_as_a_file_keeps_its_number_through_chown_and_chmod(tmp_path: Path) -> None:
    """A device an overlay keeps as a file (``xattr_permissions=2``): chown and chmod change its override and
    keep its device number, also when it is the daemon's own (before: chown wrote rdev 0, and chmod of one
    owned by the daemon's ids left the shown mode as it was)."""
    me = (os.geteuid(), os.getegid())
    lower, upper, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for d in (lower, upper, work):
        d.mkdir()
    ov = Overlay([str(lower)], str(upper), str(work), owners=Owners())

    def seen(path: str) -> tuple[int, int, int, int]:
        st = ov.view.lookup(path).st
        return st.st_uid, st.st_gid, st.st_mode, st.st_rdev

    ov.mknod("/tty", stat.S_IFCHR | 0o620, os.makedev(4, 1), uid=me[0], gid=me[1])
    ov.chmod("/tty", 0o600)
    assert seen("/tty") == (*me, stat.S_IFCHR | 0o600, os.makedev(4, 1))
    ov.chown("/tty", -1, 5)
    assert seen("/tty") == (me[0], 5, stat.S_IFCHR | 0o600, os.makedev(4, 1))
