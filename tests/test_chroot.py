"""A busybox image, built in code as two lower layers, mounted with unionfs and used through ``chroot``.

The base layer holds the static busybox of the ``busybox-static`` Debian package with its applet symlinks and
a small /etc and /data; the second layer updates a file, deletes an applet and a log, and replaces /opt with an
opaque directory. A shell script run with ``chroot MNT /bin/sh -c`` creates, edits (``>>`` and ``sed -i``),
deletes and renames files and directories, most of them from the lower layers. Then:

* the script's output shows the expected union (and equals what it prints on the kernel's overlayfs);
* the merged tree equals the kernel overlayfs' tree after the same script;
* the upper directory holds the changes in the kernel's format: whiteouts (char 0/0) for what was deleted,
  an opaque directory where a deleted directory was made again, nothing for what was only read or run;
* the lower layers are unchanged, and after a remount the chroot sees the same files.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.layers import Dir, Entry, File, Symlink, Whiteout, build_layers
from support.mount import (
    Mount,
    implementation_under_test,
    kernel_overlay,
    leftover_mounts,
    private_tmpdir,
    require,
    require_implementation,
    skip_reason_kernel_overlay,
    skip_reason_root,
    skip_reason_tool,
)
from support.tree import LAYER, Snapshot, tree_snapshot

BUSYBOX = Path("/bin/busybox")
PATH_ENV = "/bin:/sbin:/usr/bin:/usr/sbin"
BIG = bytes(range(256)) * 400  # 100 KiB that a copy must keep byte for byte


def busybox_layers() -> list[list[Entry]]:
    """The two layers of the image, base first, built from the host's static busybox."""
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    base: list[Entry] = [Dir(d) for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "home", "var",
                                         "var/log", "data", "data/keep", "data/old", "data/old/sub", "opt")]
    base += [Dir("tmp", mode=0o1777), Dir("root", mode=0o700)]
    base.append(File("bin/busybox", BUSYBOX.read_bytes(), mode=0o755))
    base += [Symlink(a, "/bin/busybox") for a in sorted(applets) if a != "bin/busybox"]
    base += [
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
        File("etc/group", b"root:x:0:\nuser:x:1000:\n"),
        File("etc/hostname", b"base\n"),
        File("etc/motd", b"base motd\n"),
        File("etc/issue", b"Busybox base\n"),
        File("etc/profile", b"export PS1='# '\n"),
        File("data/keep/k1", b"k1\n"),
        File("data/keep/k2", b"k2\n", mode=0o600),
        File("data/old/o1", b"o1\n"),
        File("data/old/sub/o2", b"o2\n"),
        File("data/big", BIG),
        File("var/log/messages", b"old log\n"),
        File("opt/legacy", b"replaced by the opaque /opt above\n"),
    ]
    update: list[Entry] = [
        Dir("etc"),
        File("etc/motd", b"updated motd\n"),
        File("etc/os-release", b"NAME=test\n"),
        Dir("usr"), Dir("usr/bin"),
        Whiteout("usr/bin/wget"),
        Dir("var"), Dir("var/log"),
        Whiteout("var/log/messages"),
        Dir("data"), Dir("data/keep"),
        File("data/keep/k3", b"k3 from the update\n"),
        Dir("opt", opaque=True),
        File("opt/new", b"new opt\n"),
    ]
    assert any(a == "usr/bin/wget" for a in applets) and any(a == "usr/bin/yes" for a in applets), \
        "this busybox lacks the wget/yes applets the layers use"
    return [base, update]


SCRIPT = r"""
set -e
echo hello > /tmp/new.txt
mkdir -p /home/user/docs
echo doc > /home/user/docs/a.txt
echo appended >> /etc/motd
sed -i 's/^user:/person:/' /etc/passwd
rm /etc/hostname
rm -rf /data/old
mkdir /data/old
echo fresh > /data/old/fresh
mv /data/keep /data/renamed
echo k4 > /data/renamed/k4
mv /etc/issue /etc/issue.bak
ln /tmp/new.txt /tmp/new.link
ln -s /etc/motd /tmp/motd.sym
chmod 600 /etc/profile
chown 1000:1000 /home/user/docs/a.txt
rm /usr/bin/yes
cp /data/big /tmp/big.copy
mkdir /tmp/d1 && touch /tmp/d1/f && mv /tmp/d1 /tmp/d2 && rmdir /tmp/d2 || echo "rmdir refused"
echo "== ls"; ls /data /data/renamed /data/old /opt /var/log
echo "== motd"; cat /etc/motd /tmp/motd.sym
echo "== passwd"; cat /etc/passwd
echo "== gone"
for f in /etc/hostname /usr/bin/wget /usr/bin/yes /etc/issue /data/keep /data/old/o1 /opt/legacy; do
  if [ -e "$f" ]; then echo "$f present"; else echo "$f absent"; fi
done
echo "== sizes"; wc -c < /tmp/big.copy; cmp /data/big /tmp/big.copy && echo same
echo "== links"; stat -c '%h' /tmp/new.txt; readlink /tmp/motd.sym
echo "== perms"; stat -c '%a %u:%g' /etc/profile /home/user/docs/a.txt
echo "== uname"; uname -s
"""

EXPECTED_OUTPUT_PARTS = [
    "rmdir refused",
    "/data:\nbig\nold\nrenamed\n",
    "/data/renamed:\nk1\nk2\nk3\nk4\n",
    "/data/old:\nfresh\n",
    "/opt:\nnew\n",
    "== motd\nupdated motd\nappended\nupdated motd\nappended\n",
    "== passwd\nroot:x:0:0:root:/root:/bin/sh\nperson:x:1000:1000::/home/user:/bin/sh\n",
    "/etc/hostname absent\n/usr/bin/wget absent\n/usr/bin/yes absent\n/etc/issue absent\n/data/keep absent\n"
    "/data/old/o1 absent\n/opt/legacy absent\n",
    f"== sizes\n{len(BIG)}\nsame\n",
    "== links\n2\n/etc/motd\n",
    "== perms\n600 0:0\n644 1000:1000\n",
    "== uname\nLinux\n",
]


def chroot_sh(mnt: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the image's /bin/sh inside ``chroot mnt``."""
    return subprocess.run(["chroot", str(mnt), "/bin/sh", "-c", script], capture_output=True, text=True,
                           env={"PATH": PATH_ENV, "HOME": "/root", "LC_ALL": "C"}, timeout=120,
                           stdin=subprocess.DEVNULL)


def lower_snapshot(p: Path) -> Snapshot:
    """Everything about a lower layer, ctimes, inode numbers and private xattrs included."""
    return tree_snapshot(p, **LAYER)


def is_whiteout(p: Path) -> bool:
    """True when ``p`` is the kernel's whiteout, a character device 0/0."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def check_upper(upper: Path, kind: str) -> None:
    """The upper directory holds the script's changes in the kernel's format, and nothing it only read."""
    for gone in ("etc/hostname", "usr/bin/yes", "etc/issue", "data/keep"):
        assert is_whiteout(upper / gone), f"{kind}: no whiteout for deleted/renamed /{gone} in the upper"
    old = upper / "data" / "old"
    assert old.is_dir() and not old.is_symlink(), f"{kind}: /data/old is not a directory in the upper"
    assert os.getxattr(old, "trusted.overlay.opaque") == b"y", f"{kind}: remade /data/old is not opaque"
    assert sorted(os.listdir(old)) == ["fresh"], f"{kind}: upper /data/old holds {os.listdir(old)}"
    assert (upper / "etc" / "motd").read_bytes() == b"updated motd\nappended\n"
    assert (upper / "etc" / "issue.bak").read_bytes() == b"Busybox base\n"
    assert stat.S_IMODE(os.lstat(upper / "etc" / "profile").st_mode) == 0o600
    assert (upper / "tmp" / "new.txt").read_bytes() == b"hello\n"
    assert os.lstat(upper / "tmp" / "new.txt").st_ino == os.lstat(upper / "tmp" / "new.link").st_ino
    # only what changed was copied up: busybox ran hundreds of times but was only read
    for untouched in ("bin/busybox", "sbin", "usr/sbin", "var/log/messages", "opt", "root"):
        assert not os.path.lexists(upper / untouched), f"{kind}: /{untouched} was copied up but never changed"
    wh_names = [p for p in tree_snapshot(upper, check_dino=False).nodes if os.path.basename(p).startswith(".wh.")]
    assert not wh_names, f"{kind}: .wh. names in the upper: {wh_names}"


def run_image(mount_fn, base: Path, remount: bool) -> tuple[str, Snapshot]:  # type: ignore[no-untyped-def]
    """Build the image under ``base``, mount it with ``mount_fn``, run the script; return output and tree."""
    lowers = build_layers(base, busybox_layers())
    before = [lower_snapshot(p) for p in lowers]
    upper, work, mnt = base / "upper", base / "work", base / "mnt"
    with mount_fn(lowers, upper, work, mnt) as m:
        m: Mount
        r = chroot_sh(m.path, SCRIPT)
        assert r.returncode == 0, f"{m.kind}: the script failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        out = r.stdout
        tree = tree_snapshot(m.path, inodes=False)
    check_upper(upper, m.kind)
    if remount:
        with mount_fn(lowers, upper, work, mnt) as m:
            again = tree_snapshot(m.path)
            d = tree.diff(again, ("before remount", "after remount"))
            assert not d, f"{m.kind}: the tree changed across a remount:\n  " + "\n  ".join(d)
            r = chroot_sh(m.path, "cat /tmp/new.txt /data/old/fresh /data/renamed/k4; ls /data; "
                                   "[ -e /etc/hostname ] || echo no-hostname")
            assert r.returncode == 0 and r.stdout == "hello\nfresh\nk4\nbig\nold\nrenamed\nno-hostname\n", \
                f"{m.kind}: after a remount the chroot sees:\n{r.stdout}\n{r.stderr}"
    for i, (p, b) in enumerate(zip(lowers, before)):
        d = b.diff(lower_snapshot(p), ("before", "after"))
        assert not d, f"lower layer {i} changed:\n  " + "\n  ".join(d)
    assert not leftover_mounts(base)
    return out, tree


def test_chroot_busybox() -> None:
    """chroot into the mounted busybox image: create, edit, delete, rename; check mount, upper and lowers."""
    require(skip_reason_root(), skip_reason_tool("chroot", "coreutils"))
    if not BUSYBOX.is_file():
        pytest.skip("needs /bin/busybox (Debian package busybox-static)")
    mount_fn = require_implementation()
    with private_tmpdir("chroot") as tmp_path:
        chroot_busybox(mount_fn, tmp_path)


def chroot_busybox(mount_fn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The body of :func:`test_chroot_busybox`, below ``tmp_path``."""
    out, tree = run_image(mount_fn, tmp_path / implementation_under_test(), remount=True)
    missing = [part for part in EXPECTED_OUTPUT_PARTS if part not in out]
    assert not missing, "the script's output lacks:\n" + "\n---\n".join(missing) + "\n=== output:\n" + out
    # the same script on the kernel's overlayfs gives the same output and the same merged tree
    require(skip_reason_kernel_overlay())
    k_out, k_tree = run_image(kernel_overlay, tmp_path / "kernel-oracle", remount=False)
    assert out == k_out, f"output differs from the kernel's:\n--- kernel\n{k_out}\n--- {implementation_under_test()}\n{out}"
    d = k_tree.diff(tree, ("kernel", implementation_under_test()))
    assert not d, "the merged tree differs from the kernel's:\n  " + "\n  ".join(d)
