"""Test images made at test time by third-party tools (umoci, skopeo) from Debian's busybox-static.

Nothing here is committed as a binary fixture: ``build_images(workdir)`` makes

* an OCI layout with a four-layer busybox image ``test:v3`` (made with umoci):
  layer 1 a busybox rootfs with setuid/sticky modes, owners, an xattr, a hardlink pair, a fifo, a long and a
  non-UTF-8 name; layer 2 deletes files, deletes a directory, replaces a directory by a file (umoci repack
  writes the whiteouts); layer 3 an opaque ``/etc`` (``umoci insert --opaque``) and a ``--whiteout``;
* skopeo conversions of it: docker-archive, oci-archive, zstd layers, uncompressed layers;
* the reference rootfs from ``umoci unpack``.

``flatten_layers`` applies extracted overlay-format layer directories in order onto a plain directory, so
that the result can be compared with umoci's rootfs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = "/bin/busybox"
TAG = "v3"
NON_UTF8 = b"caf\xe9-latin1"


def run(*cmd: str | os.PathLike[str], cwd: str | None = None) -> str:
    """Run a command; raise with its output when it fails."""
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def have_tools() -> str | None:
    """None when umoci, skopeo and busybox-static are present, else the reason to skip."""
    for tool in ("umoci", "skopeo"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed (scripts/setup.sh installs it)"
    if os.geteuid() != 0:
        return "building the umoci test image keeps owners and devices only as root"
    return None


def _populate_base(rootfs: Path) -> None:
    for d in ("bin", "etc", "tmp", "usr/share/doc", "var/lib/data", "opt/app", "home/user"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo", "mkdir", "rm", "mv", "touch", "chmod", "true"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
    (rootfs / "etc/hostname").write_text("base\n")
    (rootfs / "usr/share/doc/README").write_text("docs\n" * 100)
    (rootfs / "usr/share/doc/old.txt").write_text("old\n")
    (rootfs / "var/lib/data/keep").write_text("keep\n")
    (rootfs / "var/lib/data/gone").write_text("gone\n")
    (rootfs / "opt/app/config").write_text("config v1\n")
    (rootfs / "opt/app/sub").mkdir()
    (rootfs / "opt/app/sub/x").write_text("x\n")
    os.chmod(rootfs / "tmp", 0o1777)
    su = rootfs / "bin/suid-tool"
    su.write_bytes(b"#!/bin/sh\necho suid\n")
    os.chmod(su, 0o4755)
    sg = rootfs / "bin/sgid-tool"
    sg.write_bytes(b"#!/bin/sh\necho sgid\n")
    os.chmod(sg, 0o2755)
    home = rootfs / "home/user"
    os.chown(home, 1000, 1000)
    (home / ".profile").write_text("export A=1\n")
    os.chown(home / ".profile", 1000, 1000)
    os.setxattr(rootfs / "etc/hostname", "user.origin", b"base-layer")
    (rootfs / "usr/share/doc/hard-a").write_text("linked\n")
    os.link(rootfs / "usr/share/doc/hard-a", rootfs / "usr/share/doc/hard-b")
    os.mkfifo(rootfs / "tmp/fifo")
    os.mknod(rootfs / "tmp/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (rootfs / ("d" * 200)).mkdir()
    (rootfs / ("d" * 200) / ("f" * 150)).write_text("long name\n")
    with open(os.fsencode(rootfs) + b"/var/lib/data/" + NON_UTF8, "wb") as f:
        f.write(b"latin1 name\n")
    os.symlink("/etc/hostname", rootfs / "etc/abs-link")
    os.symlink("../../../../outside", rootfs / "etc/escaping-link")


def _modify(rootfs: Path) -> None:
    """Layer 2: deletions, a directory replaced by a file, changes, additions."""
    os.unlink(rootfs / "usr/share/doc/old.txt")
    os.unlink(rootfs / "var/lib/data/gone")
    shutil.rmtree(rootfs / "opt/app/sub")
    shutil.rmtree(rootfs / "home/user")
    (rootfs / "home/user").write_text("now a file\n")
    (rootfs / "opt/app/config").write_text("config v2\n")
    (rootfs / "etc/hostname").write_text("layer2\n")
    os.unlink(rootfs / "bin/true")
    (rootfs / "bin/true").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(rootfs / "bin/true", 0o755)


@dataclass
class ImageSet:
    """Paths of the images one ``build_images`` call made."""

    layout: Path          # OCI layout with test:v3 (gzip)
    docker_archive: Path  # skopeo docker-archive (legacy layout, uncompressed layer tars)
    oci_archive: Path
    zstd_layout: Path     # OCI layout with zstd layers
    plain_layout: Path    # OCI layout with uncompressed layers
    rootfs: Path          # umoci unpack's rootfs of test:v3
    ref: str = "test:v3"
    __test__ = False  # not a pytest test class


TestImages = ImageSet  # the name some test modules import


def build_images(work: Path) -> ImageSet:
    """Make every test image under ``work`` (see the module docstring)."""
    layout = work / "layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:base")
    bundle = work / "b1"
    run("umoci", "unpack", "--image", f"{layout}:base", bundle)
    _populate_base(bundle / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:v1", bundle)
    shutil.rmtree(bundle)
    bundle = work / "b2"
    run("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    _modify(bundle / "rootfs")
    run("umoci", "repack", "--image", f"{layout}:v2", bundle)
    shutil.rmtree(bundle)
    opaque = work / "etc-new"
    opaque.mkdir()
    (opaque / "hostname").write_text("opaque\n")
    (opaque / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    run("umoci", "insert", "--image", f"{layout}:v2", "--tag", "v3a", "--opaque", opaque, "/etc")
    run("umoci", "insert", "--image", f"{layout}:v3a", "--tag", TAG, "--whiteout", "/usr/share/doc/hard-b")
    rootfs_bundle = work / "unpacked"
    run("umoci", "unpack", "--image", f"{layout}:{TAG}", rootfs_bundle)

    docker_archive = work / "docker.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:{TAG}", f"docker-archive:{docker_archive}:test:{TAG}")
    oci_archive = work / "oci.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:{TAG}", f"oci-archive:{oci_archive}:test:{TAG}")
    zstd_layout = work / "zstd"
    run("skopeo", "copy", "-q", "--dest-compress-format", "zstd", f"oci:{layout}:{TAG}", f"oci:{zstd_layout}:test:{TAG}")
    plain_layout = work / "plain"
    run("skopeo", "copy", "-q", "--dest-oci-accept-uncompressed-layers", f"docker-archive:{docker_archive}",
        f"oci:{plain_layout}:test:{TAG}")
    return ImageSet(layout, docker_archive, oci_archive, zstd_layout, plain_layout, rootfs_bundle / "rootfs")


def flatten_layers(layers: list[Path], dest: Path) -> None:
    """Apply overlay-format layer directories (base first) onto ``dest`` as the kernel would merge them."""
    dest.mkdir(exist_ok=True)
    for layer in layers:
        _apply_dir(layer, dest, {})


def _apply_dir(src: Path, dst: Path, links: dict[int, Path]) -> None:
    """Apply one layer directory; ``links`` maps the layer's inode numbers to paths made (hardlinks)."""
    from unionfs.layer import whiteout

    for entry in os.scandir(src):
        s, d = Path(entry.path), dst / entry.name
        st = entry.stat(follow_symlinks=False)
        if whiteout.is_whiteout(s, st):
            _remove(d)
            continue
        if stat.S_ISDIR(st.st_mode):
            if whiteout.is_opaque_dir(s) or (os.path.lexists(d) and not d.is_dir() or d.is_symlink()):
                _remove(d)
            if not os.path.lexists(d):
                d.mkdir()
            _apply_dir(s, d, links)
            shutil.copystat(s, d, follow_symlinks=False)  # copies every xattr, the overlay's private ones too
            os.chown(d, st.st_uid, st.st_gid)
            _drop_private_xattrs(d)  # the opaque marker was applied above; a merged tree shows none
            for x in os.listxattr(s, follow_symlinks=False):
                if not whiteout.is_private_xattr(x):
                    os.setxattr(d, x, os.getxattr(s, x, follow_symlinks=False), follow_symlinks=False)
            continue
        _remove(d)
        if st.st_nlink > 1 and st.st_ino in links:
            os.link(links[st.st_ino], d)
            continue
        links[st.st_ino] = d
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(s, d)
        else:
            os.mknod(d, st.st_mode, st.st_rdev)
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(d, stat.S_IMODE(st.st_mode))
            _drop_private_xattrs(d)  # copy2 copied them all
            for x in os.listxattr(s, follow_symlinks=False):
                if not whiteout.is_private_xattr(x):
                    os.setxattr(d, x, os.getxattr(s, x, follow_symlinks=False), follow_symlinks=False)
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _drop_private_xattrs(p: Path) -> None:
    """Remove the overlay's private xattrs (``shutil.copystat`` and ``copy2`` copy every xattr)."""
    from unionfs.layer import whiteout

    for x in os.listxattr(p, follow_symlinks=False):
        if whiteout.is_private_xattr(x):
            os.removexattr(p, x, follow_symlinks=False)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)

