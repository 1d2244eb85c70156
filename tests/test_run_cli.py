"""``unionfs run``'s docker flags (issue 16): ``-i``, ``-t`` (a real pty, driven through a pty here), ``--env-file``,
``--hostname``, ``--read-only``, ``--tmpfs``, ``--cap-add``/``--cap-drop``, ``-d`` refused, and docker's exit
codes: 125 for unionfs's own errors (an unknown flag too), 126 for a command or user that cannot be invoked,
127 for a command not found, the command's status otherwise."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from support.busybox import leftovers
from support.cli import cli_argv, run_cli

#: docker's default capability set, as /proc/PID/status shows it
DEFAULT_CAPS = 0xA80425FB


def status_caps(text: str, field: str) -> int:
    """The capability mask ``field`` (CapEff, CapBnd...) of a /proc/PID/status dump."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in {text!r}")


def one_line_error(p: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """``p`` exited ``code`` with one ``unionfs:`` line naming ``words`` (docker's ``See ...`` hint aside)."""
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("See 'unionfs run --help'")]
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("unionfs: "), p.stderr
    for w in words:
        assert w in lines[0], (w, p.stderr)


# ---------------------------------------------------------------------------------------------------------------
# the parser: every flag listed, docker's message and 125 for an unknown one
# ---------------------------------------------------------------------------------------------------------------

def test_help_lists_every_flag() -> None:
    out = run_cli("run", "--help").stdout
    for flag in ("-i, --interactive", "-t, --tty", "-d, --detach", "--env-file", "-h NAME, --hostname", "--read-only",
                 "--tmpfs", "--cap-add", "--cap-drop", "--network", "--privileged", "--security-opt", "-e K=V",
                 "-u USER", "-v HOST", "--rm", "--name", "--entrypoint", "-w DIR"):
        assert flag in out, (flag, out)


@pytest.mark.parametrize("argv,words", [
    (("--bogus", "busybox:latest", "true"), ("unknown flag: --bogus",)),
    (("-x", "busybox:latest", "true"), ("unknown flag: -x",)),
    (("-u",), ("-u/--user", "expected one argument")),
    ((), ("required", "IMAGE")),
])
def test_usage_errors_exit_125_as_docker(argv: tuple[str, ...], words: tuple[str, ...], tmp_path: Path) -> None:
    """An unknown flag of run exits 125 with docker's message, not 2 under the top-level usage line (before:
    "unionfs: error: unrecognized arguments", exit 2)."""
    p = run_cli("run", *argv, root=tmp_path / "store", check=False)
    one_line_error(p, 125, *words)
    assert "See 'unionfs run --help'." in p.stderr and "usage:" not in p.stderr


def test_flags_after_the_image_are_the_commands(store: Path) -> None:
    p = run_cli("run", "--rm", "busybox:latest", "echo", "-u", "--bogus", "-it", root=store)
    assert p.stdout == "-u --bogus -it\n"


def test_helper_runs_this_checkout() -> None:
    """The sandbox helper imports the unionfs the caller runs (before: its PYTHONPATH was the package directory
    itself, so it ran whatever unionfs was installed, e.g. another checkout's)."""
    import unionfs
    from unionfs.run.sandbox import helper_env

    p = subprocess.run([sys.executable, "-c", "import unionfs; print(unionfs.__file__)"], env=helper_env(),
                       capture_output=True, text=True, cwd="/", check=True)
    assert p.stdout.strip() == unionfs.__file__


# ---------------------------------------------------------------------------------------------------------------
# exit codes
# ---------------------------------------------------------------------------------------------------------------

def test_unionfs_errors_exit_125(store: Path, tmp_path: Path) -> None:
    """A missing image that cannot be pulled, a missing volume source, a bad flag value: 125 and one line
    (before: 1 and 2)."""
    p = run_cli("run", "--rm", "localhost:1/no/such:1", "true", root=store, check=False)
    one_line_error(p, 125, "localhost:1/no/such:1", "cannot be pulled")
    p = run_cli("run", "--rm", "-v", f"{tmp_path}/missing:/x", "busybox:latest", "true", root=store, check=False)
    one_line_error(p, 125, "missing")
    for flags, word in ((("--network", "bridge"), "bridge"), (("--cap-add", "NOPE"), "NOPE"),
                        (("--tmpfs", "/run:bogus"), "bogus"), (("--tmpfs", "relative"), "absolute"),
                        (("-d",), "daemon"), (("--env-file", str(tmp_path / "none")), "env file"),
                        (("-h", "a b"), "hostname"), (("--tmpfs", "/run:dev"), "privileged")):
        p = run_cli("run", "--rm", *flags, "busybox:latest", "true", root=store, check=False)
        one_line_error(p, 125, word)
    assert leftovers(store) == [] and os.listdir(store / "containers") == []


def test_command_errors_exit_126_and_127(store: Path) -> None:
    """Not found: 127; not executable or an unknown user or group: 126 (before: an unknown user gave 125)."""
    for argv, code in ((("/no/such",), 127), (("/etc/passwd",), 126), (("-u", "nobody", "true"), 126),
                       (("-u", "user:nogroup", "true"), 126)):
        flags, cmd = (argv[:2], argv[2:]) if argv[0] == "-u" else ((), argv)
        p = run_cli("run", "--rm", *flags, "busybox:latest", *cmd, root=store, check=False)
        assert p.returncode == code, (argv, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run_cli("run", "--rm", "busybox:latest", "sh", "-c", "exit 42", root=store, check=False)
    assert p.returncode == 42
    assert leftovers(store) == []


# ---------------------------------------------------------------------------------------------------------------
# stdin, environment, hostname
# ---------------------------------------------------------------------------------------------------------------

def test_stdin_only_with_i(store: Path) -> None:
    """Without -i the command's stdin is /dev/null, as docker's (before: the caller's stdin); -i passes it."""
    script = "readlink /proc/self/fd/0; cat"
    p = run_cli("run", "--rm", "busybox:latest", "sh", "-c", script, root=store, input="secret\n")
    assert p.stdout == "/dev/null\n"
    p = run_cli("run", "--rm", "-i", "busybox:latest", "sh", "-c", "cat; echo done", root=store, input="in\n")
    assert p.stdout == "in\ndone\n"


def test_env_file(store: Path, tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("# a comment\n\n  A=1\nB=with spaces  \nFROM_HOST\nUNSET_ON_HOST\nC=from-file\n")
    p = run_cli("run", "--rm", "--env-file", str(env), "-e", "C=from-flag", "busybox:latest", "sh", "-c",
                'echo "$A|$B|$FROM_HOST|${UNSET_ON_HOST-unset}|$C"', root=store,
                env={**os.environ, "FROM_HOST": "host"})
    assert p.stdout == "1|with spaces  |host|unset|from-flag\n"
    env.write_text("BAD NAME=1\n")
    p = run_cli("run", "--rm", "--env-file", str(env), "busybox:latest", "true", root=store, check=False)
    one_line_error(p, 125, "BAD NAME")


def test_hostname(store: Path) -> None:
    for flag in ("-h", "--hostname"):
        p = run_cli("run", "--rm", flag, "box.example", "busybox:latest", "sh", "-c",
                    "hostname; echo $HOSTNAME; grep -c box.example /etc/hosts", root=store)
        assert p.stdout.splitlines() == ["box.example", "box.example", "1"]


# ---------------------------------------------------------------------------------------------------------------
# mounts: --read-only, --tmpfs
# ---------------------------------------------------------------------------------------------------------------

def test_read_only_rootfs(store: Path, tmp_path: Path) -> None:
    """The rootfs is read-only; /dev/shm, a --tmpfs and a volume stay writable; the upper gets nothing."""
    vol = tmp_path / "vol"
    vol.mkdir()
    script = ("touch /etc/x 2>/dev/null && echo wrote-rootfs; touch /dev/shm/x && echo shm; "
              "touch /scratch/x && echo tmpfs; touch /vol/x && echo volume; "
              "grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1")
    p = run_cli("run", "--name", "ro", "--read-only", "--tmpfs", "/scratch", "-v", f"{vol}:/vol",
                "busybox:latest", "sh", "-c", script, root=store)
    assert p.stdout.splitlines() == ["shm", "tmpfs", "volume", "ro"]
    assert (vol / "x").exists()
    diff = run_cli("diff", "ro", root=store).stdout
    assert "/etc/x" not in diff
    run_cli("rm", "ro", root=store)
    assert leftovers(store) == []


def test_tmpfs_options(store: Path) -> None:
    """docker's defaults noexec,nosuid,nodev; options as given; a missing mount point is created."""
    p = run_cli("run", "--rm", "--tmpfs", "/run", "--tmpfs", "/new/dir:exec,size=1m,mode=0700,uid=1000",
                "busybox:latest", "sh", "-c",
                "grep -E ' /run | /new/dir ' /proc/mounts; stat -c '%a %u' /new/dir", root=store)
    lines = p.stdout.splitlines()
    run = lines[0].split()[3].split(",")
    assert {"rw", "nosuid", "nodev", "noexec"} <= set(run), lines
    new = lines[1].split()[3].split(",")
    assert {"nosuid", "nodev", "size=1024k", "mode=700", "uid=1000"} <= set(new) and "noexec" not in new, lines
    assert lines[2] == "700 1000"
    p = run_cli("run", "--rm", "--privileged", "--tmpfs", "/run:dev", "busybox:latest", "sh", "-c",
                "grep ' /run ' /proc/mounts", root=store)
    assert "nodev" not in p.stdout.split()[3].split(",")


# ---------------------------------------------------------------------------------------------------------------
# capabilities
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,expected", [
    (("--cap-drop", "ALL", "--cap-add", "chown"), 1 << 0),
    (("--cap-drop", "NET_RAW", "--cap-drop", "cap_mknod"), DEFAULT_CAPS & ~(1 << 13) & ~(1 << 27)),
    (("--cap-add", "SYS_ADMIN"), DEFAULT_CAPS | 1 << 21),
])
def test_cap_add_and_drop(store: Path, flags: tuple[str, ...], expected: int) -> None:
    """docker's rules from its default set; root switches user first, so --cap-drop ALL still runs (and
    PID 1 keeps no capability the command lacks in its bounding set)."""
    p = run_cli("run", "--rm", *flags, "busybox:latest", "sh", "-c",
                "cat /proc/self/status; echo ---; cat /proc/1/status", root=store)
    mine, init = p.stdout.split("---\n")
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert status_caps(mine, field) == expected, (field, p.stdout)
    assert status_caps(init, "CapBnd") == expected
    p = run_cli("run", "--rm", *flags, "-u", "user", "busybox:latest", "sh", "-c", "id -u; cat /proc/self/status",
                root=store)
    assert p.stdout.startswith("1000\n") and status_caps(p.stdout, "CapEff") == 0


def test_cap_add_all(store: Path) -> None:
    with open("/proc/self/status") as f:
        held = status_caps(f.read(), "CapBnd")
    p = run_cli("run", "--rm", "--cap-add", "ALL", "--cap-drop", "MKNOD", "busybox:latest", "cat",
                "/proc/self/status", root=store)
    assert status_caps(p.stdout, "CapEff") == held & ~(1 << 27)


# ---------------------------------------------------------------------------------------------------------------
# -t: a real terminal
# ---------------------------------------------------------------------------------------------------------------

def sleeping(arg: str) -> bool:
    """Whether a ``sleep ARG`` runs on the machine (the container's processes show on the host too)."""
    import psutil

    return any(p.info["cmdline"] == ["sleep", arg] for p in psutil.process_iter(["cmdline"]))


def wait_until(done: Callable[[], bool], timeout: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


class Terminal:
    """``unionfs run ARGS`` with a new pty as its controlling terminal and 0-1-2 (as a shell in a terminal
    window starts it); the test types into the master and reads what it shows."""

    def __init__(self, *args: str, root: Path, rows: int = 33, cols: int = 101) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.settings = termios.tcgetattr(self.slave)
        self.shown = b""

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(cli_argv(*args, root=root), stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, preexec_fn=controlling_terminal)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def shows(self, text: str, timeout: float) -> bool:
        """Read until ``text`` is shown or ``timeout`` s have passed; whether it is."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.shown:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    self.shown += os.read(self.master, 65536)
                except OSError:
                    return False
        return True

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Read until ``text`` is shown (AssertionError after ``timeout`` s)."""
        assert self.shows(text, timeout), f"{text!r} not shown; shown: {self.shown!r}"

    def finish(self, timeout: float = 60) -> int:
        """Wait for the command to exit (reading what it shows meanwhile); its status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running; shown: {self.shown!r}"
            if select.select([self.master], [], [], 0.2)[0]:
                self.shown += os.read(self.master, 65536)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the CLI unwinds: unmount, remove the container
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal(store: Path) -> Iterator[type[Terminal]]:
    """Open ``Terminal`` objects; each is ended (SIGTERM, then SIGKILL) and closed after the test."""
    opened: list[Terminal] = []

    def make(*args: str, **kw: int) -> Terminal:
        t = Terminal(*args, root=store, **kw)
        opened.append(t)
        return t

    yield make  # type: ignore[misc]
    for t in opened:
        t.close()
    assert leftovers(store) == []


def test_it_gives_a_terminal(terminal: type[Terminal]) -> None:
    """`tty`, the window size, job control; Ctrl-C reaches a sleep in the container; the exit status; the
    caller's terminal restored (before: -i and -t were unknown flags, and `tty` said "not a tty")."""
    t = terminal("run", "--rm", "-it", "busybox:latest", "sh")
    t.wait_for("# ")
    t.type("busybox tty; busybox stty size; sleep 1017\r")
    t.wait_for("33 101")
    wait_until(lambda: sleeping("1017"))
    t.type("\x03")  # raw mode on the caller's side: the byte reaches the container's pty, which signals
    t.type("echo interrupted $?\r")
    t.wait_for("interrupted 130")
    assert not sleeping("1017")
    t.resize(40, 120)  # SIGWINCH to the CLI, which resizes the container's pty
    for _ in range(30):  # the CLI resizes on SIGWINCH: a moment after
        t.type("busybox stty size\r")
        if t.shows("40 120", 1):
            break
    t.type("exit 3\r")
    status = t.finish()
    shown = t.shown.decode(errors="replace")
    assert status == 3, shown
    assert "/dev/pts/0" in shown and "40 120" in shown
    assert "job control turned off" not in shown and "can't access tty" not in shown
    assert termios.tcgetattr(t.slave) == t.settings  # the terminal is as it was


def test_t_without_i_reads_nothing_and_fds_are_the_pty(terminal: type[Terminal]) -> None:
    """With -t alone the command has the pty as 0-1-2 and gets no input; no process of the container holds the
    pty's master or the caller's terminal (with --privileged, CAP_SYS_PTRACE, it could open them)."""
    script = ("read -t 3 x; echo got:$x; for f in 0 1 2; do readlink /proc/$$/fd/$f; done | grep -c pts/0; "
              "for p in /proc/[0-9]*; do ls -l $p/fd/ 2>/dev/null; done | grep -c -e ptmx -e 'pts/[1-9]'; echo end")
    t = terminal("run", "--rm", "-t", "--privileged", "busybox:latest", "sh", "-c", script)
    t.type("typed\r")
    assert t.finish() == 0
    lines = t.shown.decode(errors="replace").replace("\r", "").splitlines()
    assert lines[-4:] == ["got:", "3", "0", "end"], lines


def test_it_user_and_errors(store: Path, terminal: type[Terminal]) -> None:
    """Under -t the pty belongs to the user; an unknown user is 126, a command not found 127."""
    t = terminal("run", "--rm", "-t", "-u", "user", "busybox:latest", "sh", "-c", "stat -c %u $(busybox tty)")
    assert t.finish() == 0
    assert t.shown.decode().split()[-1] == "1000"
    for args, code in ((("-u", "nobody", "busybox:latest", "true"), 126), (("busybox:latest", "/no/such"), 127)):
        t = terminal("run", "--rm", "-it", *args)
        assert t.finish() == code
