"""How a mount's daemon starts and is found again: ``unionfs mount`` (and the mount(8) helper) fork the daemon
from their own process, no second interpreter; the daemon keeps none of the command's descriptors; it records
itself (``unionfs.mount.pidfile``), and only a record that matches a live process and a live mount is
trusted; a command imports only its own CLI module. No timing is asserted here (see docs/performance.md,
"Mount time"). Every mount is unmounted at the end (tests/support/mount.py)."""

from __future__ import annotations

import gc
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
from support.cli import cli_argv, run_cli
from support.layers import union_dirs
from support.mount import (
    is_mounted,
    private_tmpdir,
    skip_reason_fuse,
    skip_reason_root,
    skip_reason_unionfs,
    unmounted_on_exit,
    wait_pids_gone,
)
from support.tar import build, docker_archive, file

from unionfs.cli import main as cli_main
from unionfs.mount import daemon, pidfile
from unionfs.store.store import Store
from unionfs.union.plan import MountPlan

SKIP = skip_reason_root() or skip_reason_fuse() or skip_reason_unionfs()


@pytest.fixture
def dirs() -> Iterator[tuple[list[str], str, str, str]]:
    """A two-layer union's lowers, upper, work and mountpoint in a private directory."""
    with private_tmpdir("startup") as d:
        yield union_dirs(d)


def cmdline(pid: int) -> list[bytes]:
    """The command line of process ``pid``."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().rstrip(b"\0").split(b"\0")


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
@pytest.mark.parametrize("form", ["cli", "helper"])
def test_daemon_is_a_fork_of_the_mount_command(dirs: tuple[list[str], str, str, str], form: str) -> None:
    """The daemon that serves the mount is the mount command's own process forked (its command line is the
    command's), found by ``daemon_pid`` from its record; it holds none of the command's descriptors; it
    removes its record and has ended when ``unionfs umount`` returns."""
    lowers, u, w, mnt = dirs
    if form == "cli":
        argv = cli_argv("mount", "--lower", lowers[0], "--lower", lowers[1], "--upper", u, "--work", w, mnt)
    else:
        argv = [sys.executable, "-m", "unionfs.mount.helper", "unionfs", mnt,
                "-o", f"lowerdir={lowers[1]}:{lowers[0]},upperdir={u},workdir={w}"]
    r, extra = os.pipe()
    with unmounted_on_exit(mnt):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, pass_fds=(extra,), timeout=60,
                                 stdin=subprocess.DEVNULL)  # returns only once nobody holds stdout and stderr
        finally:
            os.close(extra)
        assert res.returncode == 0, res.stderr
        pid = daemon.daemon_pid(mnt)
        assert pid is not None
        assert cmdline(pid) == [os.fsencode(a) for a in argv]  # no `python -m unionfs.mount.daemon`
        assert select.select([r], [], [], 30)[0] and os.read(r, 1) == b"", "the daemon kept a descriptor"
        os.close(r)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        records = [x for x in pidfile.live() if x.pid == pid]
        assert [x.mountpoint for x in records] == [os.path.realpath(mnt)]
        run_cli("umount", mnt)
        assert pidfile.start_time(pid) is None  # ended (or a zombie) before umount returned
        assert not os.path.exists(os.path.join(pidfile.run_dir(), records[0].name))


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_a_killed_daemon_is_not_found(dirs: tuple[list[str], str, str, str]) -> None:
    """After kill -9 the record stays behind; it is not trusted (its process is gone) and readers remove it;
    ``ps`` says the mount is dead and ``umount`` detaches it."""
    lowers, u, w, mnt = dirs
    with unmounted_on_exit(mnt):
        run_cli("mount", "--lower", lowers[0], mnt)
        pid = daemon.daemon_pid(mnt)
        assert pid is not None
        name = next(x.name for x in pidfile.live() if x.pid == pid)
        os.kill(pid, signal.SIGKILL)
        assert wait_pids_gone([pid], 30) == []
        assert daemon.daemon_pid(mnt) is None
        assert not os.path.exists(os.path.join(pidfile.run_dir(), name))
        assert "dead" in next(line for line in run_cli("ps").stdout.splitlines() if mnt in line)
        run_cli("umount", mnt)


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_a_daemon_that_cannot_start_says_why_in_one_line(dirs: tuple[list[str], str, str, str]) -> None:
    """An error met in the forked daemon (a bad option is read there) reaches the command as one line; nothing
    stays mounted and no daemon is left."""
    lowers, u, w, mnt = dirs
    before = {x.pid for x in pidfile.live()}
    with unmounted_on_exit(mnt):
        res = run_cli("mount", "--lower", lowers[0], "-o", "spin_us=soon", mnt, check=False)
        assert res.returncode == 1
        assert res.stderr.strip().splitlines() == ["unionfs: spin_us takes a number of microseconds, not 'soon'"]
        assert not os.path.ismount(mnt)
    assert {x.pid for x in pidfile.live()} <= before


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_image_mount_records_its_mountpoint_only_when_it_is_made(dirs: tuple[list[str], str, str, str]) -> None:
    """``mount IMAGE``: the container's state names the mountpoint once the mount is live (the store writes it
    while the daemon mounts); a mount that the daemon fails to make leaves no mountpoint in the state."""
    lowers, u, w, mnt = dirs
    root = os.path.join(os.path.dirname(mnt), "store")
    layer = build([file("hello", b"hi\n")])
    archive = docker_archive(Path(os.path.dirname(mnt)) / "img.tar", [(layer, layer)], repo_tags=("one:1",))
    run_cli("load", "-i", archive, root=root)
    with unmounted_on_exit(mnt):
        res = run_cli("mount", "one:1", mnt, "--name", "c", "-o", "spin_us=soon", root=root, check=False)
        assert res.returncode == 1 and "spin_us" in res.stderr and not is_mounted(mnt)
        assert Store(root).container("c").mountpoint is None
        assert run_cli("mount", "one:1", mnt, "--name", "c", root=root).stdout == "c\n"
        assert Store(root).container("c").mountpoint == mnt
        assert open(os.path.join(mnt, "hello")).read() == "hi\n"
        run_cli("umount", mnt, root=root)
        assert Store(root).container("c").mountpoint is None


def processes_running(argv: list[str]) -> list[int]:
    """Pids of the live processes whose command line is ``argv``."""
    want = [os.fsencode(a) for a in argv]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pidfile.start_time(int(entry)) is not None:
            try:
                if cmdline(int(entry)) == want:
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_a_refused_mount_leaves_no_daemon(dirs: tuple[list[str], str, str, str]) -> None:
    """The daemon is forked before the command has checked the mount (it loads its code meanwhile); when the
    mount is refused, it ends without mounting anything."""
    lowers, u, w, mnt = dirs
    argv = cli_argv("mount", "--lower", lowers[0], os.path.join(mnt, "missing"))
    with unmounted_on_exit(mnt):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 1 and "does not exist" in res.stderr
        left = processes_running(argv)
        assert wait_pids_gone(left, 30) == [], "the daemon forked ahead outlived the refused mount"


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_a_threaded_caller_spawns_the_daemon(dirs: tuple[list[str], str, str, str]) -> None:
    """A process that runs other threads is not forked: the daemon is ``python -m unionfs.mount.process``,
    found and ended the same way."""
    lowers, u, w, mnt = dirs
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        with unmounted_on_exit(mnt):
            daemon.mount(MountPlan((lowers[0],)), mnt)
            pid = daemon.daemon_pid(mnt)
            assert pid is not None and b"unionfs.mount.process" in cmdline(pid)
            daemon.umount(mnt)
            assert pidfile.start_time(pid) is None
    finally:
        stop.set()


# ------------------------------------------------------------------------------------------- the records


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The daemons' records go to a directory of the test's own."""
    d = tmp_path / "run" / "daemons"
    monkeypatch.setattr(pidfile, "run_dir", lambda: str(d))
    return d


def test_a_record_is_trusted_only_with_its_process_and_mount(run_dir: Path) -> None:
    """A record of this very process is live, but names no unionfs mount: ``daemon_pids`` ignores it."""
    path = pidfile.write("/nowhere", "0:4095")
    assert oct(os.stat(run_dir).st_mode & 0o777) == "0o700"
    assert [(x.pid, x.mountpoint, x.dev) for x in pidfile.live()] == [(os.getpid(), "/nowhere", "0:4095")]
    assert daemon.daemon_pids() == {}
    pidfile.remove(path)
    assert pidfile.live() == []


def test_records_that_cannot_be_trusted(run_dir: Path) -> None:
    """A record whose process started at another time (its pid was reused), one of another boot, a torn one
    and a temporary file of a dead writer are not trusted; those of ended processes are removed."""
    me, start = os.getpid(), pidfile.start_time(os.getpid())
    assert start is not None
    run_dir.mkdir(parents=True, mode=0o700)
    boot = pidfile.boot_id().encode()

    def put(name: str, *fields: bytes) -> Path:
        (run_dir / name).write_bytes(b"\0".join(fields))
        return run_dir / name

    reused = put(f"{me}-{start - 1}", str(me).encode(), str(start - 1).encode(), boot, b"0:1", b"/a")
    other_boot = put(f"{me}-{start}", str(me).encode(), str(start).encode(), b"another-boot", b"0:1", b"/b")
    dead_tmp = put(f".{me}-{start - 1}.1234abcd", b"half")
    assert pidfile.live() == []
    assert not reused.exists() and not dead_tmp.exists()
    assert other_boot.exists()  # its name is a live process': left alone, not trusted
    other_boot.write_bytes(b"torn")
    assert pidfile.live() == []


def test_a_run_dir_others_may_write_is_not_used(run_dir: Path) -> None:
    """Records in a directory that others may write are neither read nor written."""
    run_dir.mkdir(parents=True, mode=0o700)
    pidfile.write("/x", "0:4095")
    os.chmod(run_dir, 0o777)
    assert pidfile.live() == []
    with pytest.raises(OSError):
        pidfile.write("/x", "0:4095")


# ------------------------------------------------------------------------------------------- the CLI


def test_every_command_is_in_the_table_of_its_module() -> None:
    """``COMMANDS`` (which module a command imports) matches what each module registers, aliases included."""
    registered: dict[str, str] = {}
    for module in cli_main.COMMAND_MODULES:
        sub = next(a for a in cli_main.build_parser((module,))._actions if a.dest == "command")
        registered.update(dict.fromkeys(sub.choices, module))  # type: ignore[arg-type]
    assert registered == cli_main.COMMANDS


@pytest.mark.parametrize("argv, command", [
    (["mount", "x"], "mount"), (["--root", "mount", "ps"], "ps"), (["--ro=x", "umount", "m"], "umount"),
    (["--debug", "--r", "s", "images"], "images"), (["--help"], None), ([], None), (["--", "ls"], "ls"),
])
def test_the_command_word(argv: list[str], command: str | None) -> None:
    assert cli_main.command_of(argv) == command


@pytest.mark.parametrize("argv, debug", [
    (["--debug", "mount"], True), (["--deb", "mount"], True), (["--root", "--debug", "mount"], False),
    (["--root", "r", "--debug", "ps"], True), (["mount", "--debug"], False), ([], False),
])
def test_debug_is_seen_before_parsing(argv: list[str], debug: bool) -> None:
    """Logging is set up before the parser (a daemon forked then logs as asked): ``--debug`` before the
    command word, abbreviated or not; a ``--root`` value is no option."""
    assert cli_main._asks_debug(argv) == debug


def test_mount_imports_no_other_command_module() -> None:
    """``unionfs mount --help`` loads the mount commands' module only (not the registry's, the build's...)."""
    code = ("import sys\nfrom unionfs.cli.main import main\ntry:\n    main(['mount', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('unionfs.cli.') or m in ('shutil', 'psutil')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['unionfs.cli.common', 'unionfs.cli.main', 'unionfs.cli.mount', 'unionfs.cli.parser']"


def test_records_directory_needs_a_private_parent(tmp_path: Path) -> None:
    """A records directory whose parent another user may write is not trusted: that user could swap the
    directory for one of theirs between the check and a write (the parent was not checked before)."""
    from unionfs.mount import pidfile

    base = tmp_path / "unionfs"
    (base / "daemons").mkdir(parents=True, mode=0o700)
    base.chmod(0o700)
    assert pidfile._private(str(base / "daemons"))
    base.chmod(0o777)
    assert not pidfile._private(str(base / "daemons"))


# ------------------------------------------------------------------------------------------- start-up cost


def test_python_starts_without_an_import_hook() -> None:
    """The checkout is installed with a plain ``.pth`` line (``package-dir`` in pyproject.toml): setuptools'
    editable import hook, its default otherwise, imports pathlib and importlib.util at every start of Python in
    the venv (~25 ms of every ``unionfs`` command). Failing here: run scripts/setup.sh again (it reinstalls
    when pyproject.toml changed), or look for another ``.pth`` file that imports them."""
    code = "import sys; print(sorted(m for m in ('pathlib', 'importlib.util') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_registry_transfers_create_no_dataclass() -> None:
    """The value types on the path of ``push`` and ``pull`` (digests, references, descriptors, manifests, URLs,
    the store's images...) are NamedTuples, not dataclasses: on Python 3.11 a frozen dataclass takes ~0.4 ms to
    create against ~0.05 ms, and these ~22 classes were ~10 ms of every registry command's start."""
    code = ("import dataclasses\nmade = []\nreal = dataclasses.dataclass\n"
            "def spy(cls=None, /, **kw):\n"
            "    def wrap(c):\n        made.append(f'{c.__module__}.{c.__qualname__}')\n        return real(**kw)(c)\n"
            "    return wrap if cls is None else wrap(cls)\n"
            "dataclasses.dataclass = spy\n"
            "import unionfs.cli.main, unionfs.cli.registry, unionfs.registry.transfer, unionfs.registry.credentials\n"
            "print([m for m in made if m.startswith('unionfs.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_push_ends_without_loading_the_mount_code(tmp_path: Path) -> None:
    """``unionfs push`` (a quick command) ends by ``exit_now`` without the interpreter's shutdown, and loads
    nothing of the mount's process code for it (``unionfs.mount.process``: ~1 ms of its start)."""
    code = ("import os, sys\nreal = os._exit\n"
            "def _exit(rc):\n"
            "    print(rc, sorted(m for m in sys.modules if m.startswith('unionfs.mount.')), flush=True)\n"
            "    real(rc)\n"
            "os._exit = _exit\nsys.argv = ['unionfs'] + sys.argv[1:]\n"
            "from unionfs.cli.main import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code, "--root", str(tmp_path / "store"), "push", "nosuch:v1",
                        "127.0.0.1:9/x:v1"], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "1 ['unionfs.mount.gcpace']"
    assert "no such image" in p.stderr


def test_mount_and_umount_collect_garbage_rarely() -> None:
    """``unionfs mount`` and ``umount`` run as the program make the garbage collector's passes rare
    (``unionfs.mount.gcpace``: their start-up is imports, no garbage); other commands keep Python's pace."""
    from unionfs.mount import gcpace

    code = ("import gc, sys\nfrom unionfs.mount import daemon\n"
            "daemon.live_mounts = lambda: []\n"
            "daemon.umount = lambda mp, lazy=False: print(gc.get_threshold()[0]) or False\n"
            "sys.argv = ['unionfs'] + sys.argv[1:]\n"
            "from unionfs.cli.main import main\nsys.exit(main())\n")
    out = subprocess.run([sys.executable, "-c", code, "umount", "/nowhere"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(gcpace.START_THRESHOLD)
    code = ("import gc, sys\nsys.argv = ['unionfs', 'ps', '--quiet']\nfrom unionfs.cli.main import main\nmain()\n"
            "print(gc.get_threshold()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "UNIONFS_ROOT": "/nonexistent/unionfs-test"}).stdout
    assert out.strip().splitlines()[-1] == str(gc.get_threshold()[0])


def test_a_daemon_collects_garbage_as_usual_once_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon forked from a command started with rare garbage collection (it inherits the command's pace)
    restores the pace the process had before once its mount is live, right after telling its command (the
    first pass then would delay the answer), with its start-up objects frozen (no pass scans them again)."""
    from unionfs.mount import gcpace, process

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(process, "_run", lambda spec, opts, volatile, ready: ready())  # "live" at once
    monkeypatch.setattr(process, "_record", lambda mountpoint: [])
    try:
        gcpace.collect_rarely()
        assert gc.get_threshold()[0] == gcpace.START_THRESHOLD
        process.serve({"lowers": ["/"], "upper": None, "work": None, "mountpoint": "/nowhere"},
                      lambda: seen.append(gc.get_threshold()))
        assert seen[0][0] == gcpace.START_THRESHOLD  # the answer went out before the restore
        assert gc.get_threshold() == before and gc.get_freeze_count() > 0
    finally:
        gcpace.collect_as_usual()
        gc.set_threshold(*before)
        gc.unfreeze()


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_mount_and_umount_of_a_known_image_load_no_image_formats(dirs: tuple[list[str], str, str, str]) -> None:
    """``mount IMAGE`` of an image the store resolved before answers from the store's record of resolutions
    (``unionfs.store.mounting``): the command loads neither the Store nor the image formats (manifests,
    digests, references, hashlib), nor dataclasses (the MountPlan is a plain class; the daemon, forked, loads
    its own); ``umount`` of a container neither. The mount is made and recorded as always."""
    lowers, u, w, mnt = dirs
    root = os.path.join(os.path.dirname(mnt), "store")
    layer = build([file("hello", b"hi\n")])
    archive = docker_archive(Path(os.path.dirname(mnt)) / "img.tar", [(layer, layer)], repo_tags=("one:1",))
    run_cli("load", "-i", archive, root=root)
    heavy = ("unionfs.store.store", "unionfs.oci.manifest", "unionfs.oci.digest", "unionfs.oci.reference", "hashlib",
             "dataclasses")
    code = ("import sys\nfrom unionfs.cli.main import main\nrc = main(sys.argv[1:])\n"
            f"print(rc, sorted(m for m in {heavy!r} if m in sys.modules))")
    with unmounted_on_exit(mnt):
        run_cli("mount", "one:1", mnt, "--name", "first", root=root)  # the full way, which records
        run_cli("umount", mnt, root=root)
        res = subprocess.run([sys.executable, "-c", code, "--root", root, "mount", "one:1", mnt, "--name", "c"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["c", "0 []"]
        assert open(os.path.join(mnt, "hello")).read() == "hi\n"
        assert Store(root).container("c").mountpoint == mnt
        assert Store(root).container("c").layers == Store(root).container("first").layers
        res = subprocess.run([sys.executable, "-c", code, "--root", root, "umount", mnt],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["0 []"]
        assert not is_mounted(mnt) and Store(root).container("c").mountpoint is None
