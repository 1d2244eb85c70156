"""``unionfs run``: a command in a container of an image, isolated as RUN is; exit codes, signals, options."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.busybox import leftovers
from support.cli import cli_argv, run_cli


def test_exit_code_is_forwarded_and_nothing_is_left(store: Path) -> None:
    p = run_cli("run", "--rm", "busybox:latest", "/bin/sh", "-c", "exit 3", root=store, check=False)
    assert p.returncode == 3, p.stderr
    assert leftovers(store) == []
    assert os.listdir(store / "containers") == []


def test_isolation(store: Path) -> None:
    script = ("echo pid=$$; ps -o pid | wc -l; hostname; readlink /proc/self/exe >/dev/null && echo proc; "
              "ls /dev | head -20; cat /etc/hosts | grep -c localhost; test -e /work && echo host-visible; "
              "echo ok")
    p = run_cli("run", "--rm", "busybox:latest", "sh", "-c", script, root=store)
    lines = p.stdout.splitlines()
    assert lines[0] == "pid=2"  # PID 1 is the namespace's init; the command is its only child
    assert "proc" in lines and "null" in lines and "urandom" in lines and "tty" in lines
    assert "host-visible" not in lines and lines[-1] == "ok"


def test_user_env_workdir_and_volumes(store: Path, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in").write_text("from host\n")
    p = run_cli("run", "--rm", "-u", "user", "-e", "GREETING=hi there", "-w", "/tmp/work",
                "-v", f"{host}:/mnt/shared", "-v", f"{host}:/mnt/ro:ro", "busybox:latest", "sh", "-c",
                "id -u; id -g; echo $GREETING; pwd; echo $HOME; cat /mnt/shared/in; "
                "echo out > /mnt/ro/x 2>/dev/null || echo read-only", root=store)
    assert p.stdout.splitlines() == ["1000", "1000", "hi there", "/tmp/work", "/home/user", "from host",
                                     "read-only"]
    p = run_cli("run", "--rm", "-u", "0", "-v", f"{host}:/mnt/shared", "busybox:latest", "sh", "-c",
                "echo written > /mnt/shared/out", root=store)
    assert (host / "out").read_text() == "written\n"


def test_named_container_keeps_its_upper(store: Path) -> None:
    run_cli("run", "--name", "keep", "busybox:latest", "sh", "-c", "echo kept > /tmp/f", root=store)
    p = run_cli("run", "--name", "keep", "busybox:latest", "cat", "/tmp/f", root=store)
    assert p.stdout == "kept\n"
    assert "keep" in run_cli("ps", "-aq", root=store).stdout  # not mounted: ps lists it with -a (as docker)
    run_cli("run", "--rm", "--name", "keep", "busybox:latest", "true", root=store)
    assert "keep" not in run_cli("ps", "-aq", root=store).stdout
    assert leftovers(store) == []


def test_not_found_and_no_command(store: Path) -> None:
    p = run_cli("run", "--rm", "busybox:latest", "/no/such", root=store, check=False)
    assert p.returncode == 127 and "no such file" in p.stderr
    p = run_cli("run", "--rm", "busybox:latest", root=store, check=False)
    assert p.returncode == 125 and "no command" in p.stderr  # an error of run itself: 125, as docker
    p = run_cli("run", "--rm", "-u", "nobody", "busybox:latest", "true", root=store, check=False)
    assert p.returncode == 126 and "nobody" in p.stderr  # cannot be invoked: 126, as podman
    assert leftovers(store) == [] and os.listdir(store / "containers") == []


@pytest.mark.parametrize("sig,expected", [(signal.SIGTERM, 7), (signal.SIGINT, 8)])
def test_signals_reach_the_command(store: Path, sig: signal.Signals, expected: int) -> None:
    script = "trap 'exit 7' TERM; trap 'exit 8' INT; echo ready; while true; do sleep 0.05; done"
    proc = subprocess.Popen(cli_argv("run", "--rm", "busybox:latest", "sh", "-c", script, root=store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == expected
    assert leftovers(store) == []


def test_background_processes_die_with_the_command(store: Path) -> None:
    start = time.monotonic()
    run_cli("run", "--rm", "busybox:latest", "sh", "-c", "sleep 3021 & echo started", root=store)
    assert time.monotonic() - start < 30
    assert leftovers(store) == []
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sleep 3021" not in out  # an odd number: "sleep 300" of another program on the machine is no failure


def test_default_command_is_entrypoint_plus_cmd(store: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text('FROM busybox:latest\nENTRYPOINT ["echo", "entry"]\nCMD ["default"]\n')
    run_cli("build", "-q", "-t", "test:ep", ctx, root=store)
    assert run_cli("run", "--rm", "test:ep", root=store).stdout == "entry default\n"
    assert run_cli("run", "--rm", "test:ep", "given", root=store).stdout == "entry given\n"
    assert run_cli("run", "--rm", "--entrypoint", "echo", "test:ep", "x", root=store).stdout == "x\n"
