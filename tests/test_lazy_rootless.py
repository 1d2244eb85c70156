"""Lazy mounts without root (issue 18, point 5): a user other than root (``nobody``, no subordinate ids) mounts
and runs an eStargz image lazily from its own store, against the same real registry and FaultProxy as
tests/test_lazy.py.

What is checked: the user's lazy layers carry ``user.`` marks (never ``trusted.``, which a user may not set);
before any read only footers and TOCs are fetched; the merged tree (modes, sizes, contents; owners but for one
file, see the test) equals the one a plain pull into the same user's store mounts; a read-only file of the image
is filled (its placeholder stays writable on disk, its mode 0444 kept in its override) and shows its mode;
``run --lazy`` runs the image, which ``images`` lists as partial until the background completion makes it whole
in the user's store; and root refuses the user's lazy layers (root never trusts ``user.`` marks) rather than
showing their placeholders as zeros.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from support.cli import AsUser, fuse_open_to_all, run_cli
from support.mount import unmounted_on_exit
from test_lazy import READONLY, blob_requests, push_busybox_esgz, wait_for
from test_lazy import setup as lazy_setup  # noqa: F401 (the fixture ``setup``)

from unionfs.layer import ownership, placeholder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as another user")

#: what ``listing`` prints per entry: path, mode, owner, group, size, symlink target
FIND = "find . -printf '%p %M %U %G %s %l\\n' | sort; find . -type f ! -path ./data/pipe -exec sha256sum {} + | sort"


@pytest.fixture
def user_base() -> Iterator[Path]:
    """A directory every user may walk (not pytest's 0700 tmp), with a store and a mountpoint ``nobody`` owns."""
    base = Path(tempfile.mkdtemp(prefix="unionfs-lazy-user", dir="/tmp"))
    os.chmod(base, 0o755)
    for d in ("store", "mnt", "plain", "plain-mnt"):
        (base / d).mkdir()
        os.chown(base / d, 65534, 65534)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def shown_mode(path: Path) -> int:
    """The permission bits a mount shows for the file ``path`` of a user's store (its override's)."""
    return ownership.decode(os.getxattr(path, ownership.XATTR)).mode & 0o7777


def listing(user: AsUser, mnt: Path) -> list[str]:
    """:data:`FIND` in the mount ``mnt`` as ``user``: its lines, then its errors (only what the user may not
    read, as in any mount of the image: ``data/`` is 0750 and another user's)."""
    r = user.run("sh", "-c", f"cd {mnt} && {FIND}")
    assert "error" not in r.stderr, r.stderr
    return r.stdout.splitlines() + r.stderr.splitlines()


def test_a_user_mounts_an_image_lazily_from_its_own_store(setup: dict, user_base: Path) -> None:  # type: ignore[type-arg]
    proxy = setup["proxy"]
    nobody = AsUser(user_base)
    store, mnt = user_base / "store", user_base / "mnt"
    with fuse_open_to_all(), unmounted_on_exit(mnt, user_base / "plain-mnt"):
        nobody.cli("mount", "--lazy", "--no-prefetch", setup["esgz"], mnt, root=store)
        for desc in setup["layers"]:  # the footer and the TOC only
            assert len(blob_requests(proxy, desc.digest)) == 2
        trees = [p / "tree" for p in (store / "lazy").iterdir() if (p / "tree").is_dir()]
        assert len(trees) == 2
        for tree in trees:
            assert placeholder.TRUSTED_MARK not in os.listxattr(tree)
            assert placeholder.lazy_layer_of(str(tree), placeholder.USER_MARK) == tree.parent.name
            assert os.stat(tree).st_uid == 65534
        (base,) = [t for t in trees if (t / READONLY).exists()]
        assert placeholder.placeholder_of(str(base / READONLY), placeholder.USER_MARK) is not None
        assert shown_mode(base / READONLY) == 0o444  # kept in its override; writable on disk for its fill

        lazy = listing(nobody, mnt)  # reads every file: each is filled
        assert len(blob_requests(proxy, setup["layers"][0].digest)) > 2
        assert placeholder.placeholder_of(str(base / READONLY), placeholder.USER_MARK) is None
        assert shown_mode(base / READONLY) == 0o444
        nobody.cli("umount", mnt)

        plain = user_base / "plain-mnt"
        nobody.cli("pull", "-q", setup["esgz"], root=user_base / "plain")
        nobody.cli("mount", setup["esgz"], plain, root=user_base / "plain")
        # the same tree, but for the owner of the read-only file: root's (0:0) as its override keeps it, where
        # the pulled layer's file shows its real owner, the user (a user's mount shows its own files as its
        # own, and overrides as they are: devices show 0:0 alike); a user namespace's mount shows both as 0:0
        readonly = f"./{READONLY} -r--r--r-- "
        pulled = listing(nobody, plain)
        assert [line for line in pulled if not line.startswith(readonly)] == \
            [line for line in lazy if not line.startswith(readonly)]
        assert [line for line in pulled if line.startswith(readonly)] == [readonly + "65534 65534 10 "]
        assert [line for line in lazy if line.startswith(readonly)] == [readonly + "0 0 10 "]
        nobody.cli("umount", plain)

        # root trusts no user. mark: it refuses the user's lazy layers instead of showing zeros
        r = run_cli("mount", "--lazy", "--no-prefetch", setup["esgz"], mnt, root=store, check=False)
        assert r.returncode != 0 and "was made by a user other than root" in r.stderr
        assert not os.path.ismount(mnt)


def test_a_user_runs_an_image_lazily_and_it_is_completed_in_the_background(setup: dict, store: Path,  # type: ignore[type-arg]
                                                                          user_base: Path) -> None:
    """``run --lazy`` as the user (in a user namespace of its own: no subordinate ids), then a lazy mount with
    the background completion: the image ends up whole in the user's store, its layers the user's."""
    ref, _ = push_busybox_esgz(setup, store)
    nobody = AsUser(user_base)
    ustore, mnt = user_base / "store", user_base / "mnt"
    with fuse_open_to_all():
        out = nobody.cli("run", "--lazy", "--no-prefetch", "--rm", ref, "sh", "-c", "id -u; cat /etc/passwd",
                         root=ustore).stdout
        assert out.startswith("0\nroot:x:0:0:")
        assert not (ustore / "layers").exists() or not any((ustore / "layers").iterdir())
        partial = ["images", "--format", "{{.Repository}}:{{.Tag}} {{.Partial}}"]
        assert nobody.cli(*partial, root=ustore).stdout == f"{ref} true\n"
        with unmounted_on_exit(mnt):
            nobody.cli("mount", "--lazy", ref, mnt, root=ustore)  # with the completion
            log = ustore / "lazy/complete.log"
            wait_for("the completion", lambda: log.exists() and "is complete in the store" in log.read_text())
            assert "failed" not in log.read_text()
            assert nobody.run("cat", f"{mnt}/etc/passwd").stdout.startswith("root:x:0:0:")
            nobody.cli("umount", mnt)
        assert nobody.cli(*partial, root=ustore).stdout == f"{ref} false\n"
    (layer,) = (ustore / "layers").iterdir()
    assert os.stat(layer).st_uid == 65534
