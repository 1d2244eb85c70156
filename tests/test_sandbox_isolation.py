"""What a command of ``unionfs run`` (and a build's ``RUN``) can reach of the host: docker's default isolation.

Every test runs busybox commands in a container of an image made in the test and checks, from inside and from
the host, that PID 1 is pivoted into the rootfs (no host path through ``/proc/1/root``, ``/proc/1/cwd`` or an
inherited fd), that the capabilities are docker's default set, that /proc is masked and read-only where
docker's is, that a block device the container makes cannot be opened, that the network is a new namespace
with only a live loopback, and that ``--privileged``, ``--network host`` and ``--security-opt
no-new-privileges`` are explicit opt-ins. A hostile base image whose ``/bin/sh`` writes through
``/proc/1/root`` is used by a two-line Dockerfile: the build succeeds and the host is untouched.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.busybox import leftovers
from support.cli import run_cli

#: docker's default capability set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
#: NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
DOCKER_DEFAULT_CAPS = "00000000a80425fb"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A host file a container must neither read nor change."""
    p = tmp_path / "host-marker"
    p.write_text("host secret\n")
    return p


def sh(store: Path, script: str, *flags: str, image: str = "busybox:latest",
       check: bool = True) -> subprocess.CompletedProcess[str]:
    """``unionfs run --rm FLAGS IMAGE busybox sh -c SCRIPT``."""
    return run_cli("run", "--rm", *flags, image, "/bin/busybox", "sh", "-c", script, root=store, check=check)


def status_fields(text: str) -> dict[str, str]:
    """``Key: value`` lines of a /proc/PID/status dump."""
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def host_interfaces() -> set[str]:
    with open("/proc/net/dev") as f:
        return {line.split(":")[0].strip() for line in f.readlines()[2:]}


def test_pid1_is_pivoted_into_the_rootfs(store: Path, marker: Path) -> None:
    """Through /proc/1/root and /proc/1/cwd the command reaches nothing of the host (before: it read and wrote
    the host's files, PID 1 was never chrooted)."""
    created = marker.parent / "created-by-container"
    script = (f"cat /proc/1/root{marker} && echo READ-ROOT; "
              f"echo pwned >> /proc/1/root{marker} && echo WROTE-ROOT; "
              f"echo pwned > /proc/1/root{created} && echo CREATED; "
              f"cat /proc/1/cwd{marker} && echo READ-CWD; "
              f"echo pwned >> /proc/1/cwd{marker} && echo WROTE-CWD; "
              "echo done")
    for flags in ((), ("--privileged",)):
        p = sh(store, script, *flags)
        assert p.stdout.splitlines() == ["done"], (flags, p.stdout, p.stderr)
    assert marker.read_text() == "host secret\n"
    assert not created.exists()
    # the init is not the image's: its /proc entries are closed to the command (not dumpable, no
    # CAP_SYS_PTRACE), so its executable and maps (host files) are out of reach too
    p = sh(store, "readlink /proc/1/root || echo DENIED; readlink /proc/1/exe || echo DENIED; "
                  "readlink /proc/self/root")
    assert p.stdout.splitlines() == ["DENIED", "DENIED", "/"]
    assert leftovers(store) == []


def test_every_process_sees_only_the_rootfs(store: Path) -> None:
    """With CAP_SYS_PTRACE (--privileged) every process's root and cwd are the container's and PID 1 holds
    only fds 0-2 (before: PID 1's root was the host's and it held the caller's error pipe)."""
    script = ('for p in /proc/[0-9]*; do echo "${p#/proc/} $(readlink $p/root) $(readlink $p/cwd) '
              '$(ls $p/fd | busybox sort -n | busybox tr \'\\n\' \' \')"; done')
    p = sh(store, script, "--privileged", "-w", "/tmp")
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()}
    assert rows["1"] == ["/", "/", "0", "1", "2"], p.stdout
    assert rows["2"][:2] == ["/", "/tmp"], p.stdout
    for pid, (root, cwd, *_fds) in rows.items():
        assert root == "/" and cwd.startswith("/"), (pid, p.stdout)
    # the command inherits 0-2 only (3 is ls's own listing of the directory)
    p = run_cli("run", "--rm", "busybox:latest", "/bin/busybox", "ls", "/proc/self/fd", root=store)
    assert p.stdout.split() == ["0", "1", "2", "3"]


def test_capabilities_are_dockers_default(store: Path) -> None:
    """Root in the container has docker's default set in bounding, permitted and effective; none inheritable
    or ambient; PID 1 too; a user has none effective."""
    p = sh(store, "cat /proc/self/status; echo ---; cat /proc/1/status")
    mine, init = (status_fields(t) for t in p.stdout.split("---\n"))
    for fields in (mine, init):
        assert fields["CapBnd"] == DOCKER_DEFAULT_CAPS, p.stdout
        assert fields["CapPrm"] == DOCKER_DEFAULT_CAPS and fields["CapEff"] == DOCKER_DEFAULT_CAPS
        assert fields["CapInh"] == "0000000000000000" and fields["CapAmb"] == "0000000000000000"
        assert fields["NoNewPrivs"] == "0"  # docker does not set it by default
    p = sh(store, "cat /proc/self/status", "-u", "user")
    fields = status_fields(p.stdout)
    assert fields["CapBnd"] == DOCKER_DEFAULT_CAPS and fields["CapEff"] == "0000000000000000"


def test_privileged_and_no_new_privileges_are_opt_ins(store: Path) -> None:
    with open("/proc/self/status") as f:
        host = status_fields(f.read())
    fields = status_fields(sh(store, "cat /proc/self/status", "--privileged").stdout)
    assert fields["CapBnd"] == host["CapBnd"] and fields["CapEff"] == host["CapBnd"]
    fields = status_fields(sh(store, "cat /proc/self/status", "--security-opt", "no-new-privileges").stdout)
    assert fields["NoNewPrivs"] == "1" and fields["CapBnd"] == DOCKER_DEFAULT_CAPS
    p = sh(store, "true", "--security-opt", "seccomp=unconfined", check=False)
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1 and "seccomp" in p.stderr
    assert os.listdir(store / "containers") == []


def test_proc_is_masked_and_read_only(store: Path) -> None:
    """/proc/sys is read-only (the host's core_pattern cannot be changed), /proc/kcore reads empty (before:
    the command set the host's core_pattern)."""
    with open("/proc/sys/kernel/core_pattern") as f:
        host_value = f.read()
    try:
        p = sh(store, "echo unionfs-test-core > /proc/sys/kernel/core_pattern && echo WROTE; "
                      "busybox head -c 64 /proc/kcore | wc -c; cat /proc/keys | wc -c; "
                      "ls -A /proc/acpi /proc/scsi 2>/dev/null | grep -v : | grep -c . ; "
                      "grep -E ' /proc/(sys|sysrq-trigger|irq|bus|fs) ' /proc/self/mountinfo | "
                      "busybox cut -d' ' -f5,6")
    finally:
        with open("/proc/sys/kernel/core_pattern") as f:
            changed = f.read() != host_value
        if changed:
            with open("/proc/sys/kernel/core_pattern", "w") as f:
                f.write(host_value)
    assert not changed
    lines = p.stdout.splitlines()
    assert "WROTE" not in lines and lines[:3] == ["0", "0", "0"], p.stdout  # masked: empty
    ro = dict(line.split() for line in lines[3:])
    present = {f"/proc/{x}" for x in ("sys", "sysrq-trigger", "irq", "bus", "fs") if os.path.exists(f"/proc/{x}")}
    assert "/proc/sys" in present and set(ro) == present, p.stdout
    assert all(opts.split(",")[0] == "ro" for opts in ro.values()), p.stdout


def _block_device() -> tuple[int, int]:
    """A block device of the host (major, minor)."""
    try:
        entries = sorted(os.listdir("/sys/dev/block"))
    except OSError:
        entries = []
    if not entries:
        pytest.skip("no block device on this host")
    major, minor = entries[0].split(":")
    return int(major), int(minor)


def test_a_block_device_made_in_the_container_cannot_be_opened(store: Path, tmp_path: Path) -> None:
    """mknod is allowed (CAP_MKNOD as in docker) but every place the container can write is nodev, volumes
    too (before: the node in /dev, /tmp or a volume opened the host's disk); the rootfs mount is nodev and
    not nosuid; the bound device nodes still work."""
    major, minor = _block_device()
    vol = tmp_path / "vol"
    vol.mkdir()
    script = "; ".join(
        f"busybox mknod {d}/blk b {major} {minor} && echo made-{d} && "
        f"{{ busybox head -c 1 {d}/blk >/dev/null && echo OPENED-{d} || echo denied-{d}; }}"
        for d in ("/dev", "/dev/shm", "/tmp", "", "/mnt/vol"))
    p = sh(store, script + "; grep -E '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / ' /proc/self/mountinfo | "
                           "busybox cut -d' ' -f6; cat /dev/null && echo null-works", "-v", f"{vol}:/mnt/vol")
    lines = p.stdout.splitlines()
    assert not [x for x in lines if x.startswith("OPENED")], p.stdout
    assert {"made-/dev", "denied-/dev", "denied-/tmp", "denied-/mnt/vol"} <= set(lines), (p.stdout, p.stderr)
    assert "Permission denied" in p.stderr
    root_opts = lines[-2].split(",")
    assert "nodev" in root_opts and "nosuid" not in root_opts, p.stdout
    assert lines[-1] == "null-works"


def test_network_is_a_new_namespace_with_loopback_up(store: Path) -> None:
    p = sh(store, "busybox cut -d: -f1 /proc/net/dev | busybox tail -n +3; busybox ifconfig lo; "
                  "busybox ping -c 1 -W 5 127.0.0.1 >/dev/null && echo ping-ok")
    lines = p.stdout.splitlines()
    assert lines[0].strip() == "lo" and lines[1].startswith("lo"), p.stdout  # only lo
    assert " UP " in p.stdout and lines[-1] == "ping-ok", p.stdout
    p = sh(store, "busybox cut -d: -f1 /proc/net/dev | busybox tail -n +3", "--network", "host")
    assert {x.strip() for x in p.stdout.splitlines()} == host_interfaces()
    p = sh(store, "busybox cut -d: -f1 /proc/net/dev | busybox tail -n +3", "--network", "none")
    assert [x.strip() for x in p.stdout.splitlines()] == ["lo"]
    p = sh(store, "true", "--network", "bridge", check=False)
    assert p.returncode == 125 and len(p.stderr.strip().splitlines()) == 1 and "bridge" in p.stderr
    assert os.listdir(store / "containers") == [] and leftovers(store) == []


def hostile_tarball(base: Path, dest: Path, marker: Path) -> Path:
    """The busybox rootfs with a /bin/sh that tries to write to the host through /proc/1/root and
    /proc/1/cwd, then behaves as sh."""
    script = (f"#!/bin/busybox sh\n"
              f"echo pwned-root >> /proc/1/root{marker}\n"
              f"echo pwned-cwd >> /proc/1/cwd{marker}\n"
              f"echo pwned > /proc/1/root{marker.parent}/created-by-build\n"
              f"exec /bin/busybox sh \"$@\"\n").encode()
    with tarfile.open(base) as src, tarfile.open(dest, "w:gz") as out:
        for m in src.getmembers():
            if m.name.lstrip("./") == "bin/sh":
                continue
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
        info = tarfile.TarInfo("./bin/sh")
        info.mode, info.size = 0o755, len(script)
        out.addfile(info, io.BytesIO(script))
    return dest


def test_a_hostile_base_image_cannot_write_to_the_host_during_a_build(store_root: Path, base_tarball: Path,
                                                                       tmp_path: Path, marker: Path) -> None:
    """``FROM hostile`` + ``RUN echo hello``: RUN runs the image's /bin/sh, isolated as ``run`` is (before: the
    build succeeded and the host file was changed)."""
    run_cli("import", hostile_tarball(base_tarball, tmp_path / "hostile.tgz", marker), "hostile:latest",
            root=store_root)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM hostile\nRUN echo hello\n")
    p = run_cli("build", "-t", "built:latest", ctx, root=store_root)
    assert "hello" in p.stdout
    assert marker.read_text() == "host secret\n"
    assert not (marker.parent / "created-by-build").exists()
    assert leftovers(store_root) == []


def test_build_run_steps_have_no_network_unless_asked(store: Path, tmp_path: Path) -> None:
    """RUN gets a network namespace of its own (only lo) by default; ``build --network host`` opts in."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:latest\n"
                                    "RUN busybox cut -d: -f1 /proc/net/dev | busybox tail -n +3 | "
                                    "busybox sed 's/^ */iface=/'\n")
    p = run_cli("build", "-t", "net:latest", ctx, root=store)
    assert [x for x in p.stdout.splitlines() if x.startswith("iface=")] == ["iface=lo"], p.stdout
    p = run_cli("build", "--no-cache", "--network", "host", "-t", "net:latest", ctx, root=store)
    assert {x[6:] for x in p.stdout.splitlines() if x.startswith("iface=")} == host_interfaces(), p.stdout
    p = run_cli("build", "--network", "bridge", ctx, root=store, check=False)
    assert p.returncode == 125 and "bridge" in p.stderr


def test_set_uid_works_in_the_rootfs_even_when_the_host_mount_is_nosuid(store: Path) -> None:
    """The container sees its rootfs through a bind of its own: nodev, not nosuid, whatever the host-side
    mount's flags (here made nosuid,nodev by a remount)."""
    from unionfs import api
    from unionfs.store.store import Store

    with api.container(Store(store), "busybox:latest", keep=False) as m:
        subprocess.run(["mount", "-o", "remount,bind,nosuid,nodev", str(m.rootfs)], check=True)
        done = api.run(m.rootfs, ["/bin/busybox", "sh", "-c",
                                  "grep -E '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / ' /proc/self/mountinfo | "
                                  "busybox cut -d' ' -f6"])
    opts = done.output.strip().split(",")
    assert "nodev" in opts and "nosuid" not in opts, done.output
    assert leftovers(store) == []
