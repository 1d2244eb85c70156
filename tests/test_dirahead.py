"""The read-ahead across a directory's files (unionfs.mount.dirahead; docs/design.md): its policy as a unit, and
through real mounts, that files opened in the order of their names get the next ones asked of the disk before
they are opened (the lower files' pages are in memory, as fincore(1) shows), read-only and writable."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support.mount import require, skip_reason_fuse, skip_reason_tool, skip_reason_unionfs, unionfs_mount

from unionfs.mount import dirahead
from unionfs.mount import protocol as fp
from unionfs.mount.dirahead import STREAK, WINDOW, DirAhead

NAMES = [f"f{i:02d}" for i in range(80)]


def test_nothing_is_warmed_before_a_streak_and_the_listing() -> None:
    ahead = DirAhead()
    assert ahead.opened(1, "f00") == (False, [])
    assert ahead.opened(1, "f01") == (False, [])
    assert ahead.opened(1, "f02") == (True, [])  # the third in a row: the names are wanted, once
    assert ahead.opened(1, "f03") == (False, [])
    assert ahead.listed(1, list(reversed(NAMES))) == NAMES[4:4 + WINDOW]  # any order: sorted here


def test_the_window_is_refilled_at_its_half_and_each_name_warmed_once() -> None:
    ahead = DirAhead()
    for n in NAMES[:STREAK]:
        ahead.opened(1, n)
    warmed = ahead.listed(1, NAMES)
    assert warmed == NAMES[STREAK:STREAK + WINDOW]
    for i in range(STREAK, 60):
        warmed += ahead.opened(1, NAMES[i])[1]
    assert warmed == NAMES[STREAK:]  # every name after the streak, none twice, in order


def test_an_open_out_of_order_stops_it_until_a_new_streak() -> None:
    ahead = DirAhead()
    for n in NAMES[:STREAK]:
        ahead.opened(1, n)
    ahead.listed(1, NAMES)
    assert ahead.opened(1, "f50") == (False, [])  # a jump
    assert ahead.opened(1, "f51") == (False, [])
    assert ahead.opened(1, "f52")[1] == NAMES[53:53 + WINDOW]  # a streak again, from there
    assert ahead.opened(1, "f10") == (False, [])  # backwards


def test_names_not_opened_may_lie_between() -> None:
    ahead = DirAhead(window=4)
    for n in NAMES[:3]:
        ahead.opened(1, n)
    assert ahead.listed(1, NAMES) == NAMES[3:7]
    assert ahead.opened(1, "f05") == (False, NAMES[7:10])  # two skipped (subdirectories, say): still in order
    assert ahead.opened(1, "f15") == (False, [])  # too far: a new start
    assert ahead.opened(1, "f16") == (False, [])


def test_a_changed_directory_and_the_bound_on_directories() -> None:
    ahead = DirAhead(dirs=2)
    for n in NAMES[:STREAK]:
        ahead.opened(1, n)
    ahead.forget(1)
    assert ahead.listed(1, NAMES) == []  # forgotten: its names are not taken
    ahead.opened(2, "a")
    ahead.opened(3, "a")
    ahead.opened(4, "a")  # three directories: the least recently opened (2) is dropped
    assert ahead.opened(2, "b") == (False, [])  # a new start
    assert ahead.listed(9, NAMES) == []  # never opened


def test_files_in_memory_are_not_read_ahead_and_a_directory_read_to_its_end_starts_afresh() -> None:
    ahead = DirAhead(window=8)
    names = NAMES[:12]
    for n in names[:STREAK]:
        ahead.opened(1, n, cold=False)
    assert ahead.listed(1, names) == []  # in memory: nothing to warm
    assert ahead.opened(1, names[STREAK], cold=False) == (False, [])
    assert ahead.opened(1, names[STREAK + 1], cold=True) == (False, names[STREAK + 2:12])  # cold: to the end
    # warmed to its end, the directory is forgotten: the next pass lists it again and warms what is cold
    for n in names[:STREAK]:
        assert ahead.opened(1, n)[1] == []
    assert ahead.listed(1, names) == names[STREAK:STREAK + 8]


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dirahead, "MAX_NAMES", 50)
    monkeypatch.setattr(dirahead, "NAMES", 100)
    ahead = DirAhead()
    for key in (1, 2, 3):
        for n in NAMES[:STREAK]:
            ahead.opened(key, n)
    assert ahead.listed(1, NAMES) == []  # 80 names: more than MAX_NAMES, not read ahead
    assert ahead._kept == 0
    assert ahead.listed(2, NAMES[:50]) == NAMES[STREAK:STREAK + WINDOW]
    assert ahead.listed(3, NAMES[:50]) == NAMES[STREAK:STREAK + WINDOW]
    assert ahead._kept == 100
    ahead.opened(4, "a")
    assert ahead.listed(4, NAMES[:50]) == []  # over NAMES in all: the least recently opened lets its go
    assert ahead._kept == 100 and ahead.opened(2, "f03") == (False, [])  # 2 starts over
    warmed = []
    for n in NAMES[STREAK:50]:
        warmed += ahead.opened(3, n)[1]
    assert warmed == NAMES[STREAK + WINDOW:50]
    assert ahead._kept == 50  # 3 was warmed to its end: its names went


def _resident(paths: list[Path]) -> list[int]:
    """Bytes of each file in memory (fincore(1), which reads without touching the files)."""
    out = subprocess.run(["fincore", "-n", "-b", "-o", "RES", *map(str, paths)], check=True,
                         capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def _cold_files(files: list[Path]) -> list[Path]:
    """``files`` written with 8 KiB each and out of memory (synced, dropped): what a cold disk holds. Skips the
    test where the page cache cannot be dropped per file (tmpfs)."""
    for f in files:
        f.write_bytes(os.urandom(8192))
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if any(_resident(files)):
        pytest.skip(f"the page cache of {files[0].parent} cannot be dropped per file (tmpfs?)")
    return files


@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "writable"])
def test_files_opened_in_name_order_get_the_next_ones_read_ahead(tmp_path: Path, writable: bool) -> None:
    require(skip_reason_fuse(), skip_reason_unionfs(), skip_reason_tool("fincore", "util-linux"))
    lower, mnt = tmp_path / "lower", tmp_path / "mnt"
    (lower / "d").mkdir(parents=True)
    mnt.mkdir()
    files = _cold_files([lower / "d" / n for n in NAMES[:40]])
    upper = work = None
    if writable:
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
    with unionfs_mount([lower], upper, work, mnt):
        for n in NAMES[:STREAK]:
            assert (mnt / "d" / n).read_bytes() == (lower / "d" / n).read_bytes()
        later = files[STREAK + 1:STREAK + WINDOW]
        deadline = time.monotonic() + 10
        while not all(_resident(later)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_resident(later)), "the next files were not read ahead"
        assert not any(_resident(files[STREAK + WINDOW:])), "read ahead past the window"


def test_a_writable_mount_counts_cold_files_cold_though_their_store_read_starts_the_disk(tmp_path: Path) -> None:
    """On a writable mount a small file's OPEN reads it without waiting (the kernel-cache store), which starts
    the disk on a cold file: by the time the reply is out its data may be in memory. The read-ahead must
    still count that open as cold (here the data surely arrived before the after-reply step) and warm the next
    files. The daemon's handlers called directly, no mount."""
    require(skip_reason_tool("fincore", "util-linux"))
    from unionfs.mount.server import LowLevelFS
    from unionfs.union.overlay import Overlay

    for n in ("lower/d", "upper", "work"):
        (tmp_path / n).mkdir(parents=True)
    files = _cold_files([tmp_path / "lower" / "d" / n for n in NAMES[:12]])
    fs = LowLevelFS(Overlay([str(tmp_path / "lower")], str(tmp_path / "upper"), str(tmp_path / "work")),
                    passthrough=False)
    fs.ahead = DirAhead()
    d = fp.ENTRY_OUT_HEAD.unpack_from(fs.lookup(fp.ROOT_ID, memoryview(b"d\0")))[0]
    for f in files[:STREAK]:
        nid = fp.ENTRY_OUT_HEAD.unpack_from(fs.lookup(d, memoryview(f.name.encode() + b"\0")))[0]
        fh = fp.OPEN_OUT.unpack(fs.open(nid, memoryview(fp.OPEN_IN.pack(os.O_RDONLY, 0))))[0]
        deadline = time.monotonic() + 5
        while not all(_resident([f])) and time.monotonic() < deadline:  # the store's read landed
            time.sleep(0.01)
        fs._after_open()
        fs.release(nid, memoryview(fp.RELEASE_IN.pack(fh, 0, 0, 0)))
    while fs._idle:  # the loop's idle time
        fs._idle_step()
    later = files[STREAK + 1:]
    deadline = time.monotonic() + 10
    while not all(_resident(later)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_resident(later)), "the next files were not read ahead"


def test_a_failing_piece_of_idle_work_is_logged_and_the_loop_goes_on(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The read-ahead's work runs in the daemon loop between requests: an error there (a bug) is logged, never
    raised into the loop, which would end the mount."""
    from unionfs.mount.server import LowLevelFS
    from unionfs.union.overlay import Overlay

    (tmp_path / "lower").mkdir()
    fs = LowLevelFS(Overlay([str(tmp_path / "lower")], None, None))
    done: list[int] = []
    fs._idle.extend([lambda: 1 // 0, lambda: done.append(1)])
    fs._idle_step()
    fs._idle_step()
    assert done == [1] and "read-ahead" in caplog.text and "ZeroDivisionError" in caplog.text


@pytest.mark.parametrize("lazy", [False, True], ids=["plain", "lazy"])
def test_no_read_ahead_on_lazy_layers(tmp_path: Path, lazy: bool) -> None:
    """The daemon's filler of lazy layers is given after the daemon is made (unionfs.mount.server.serve): the
    read-ahead is decided when serving starts, and is off when there is a filler (a warm-up would open lazy
    placeholders). Served here on a /dev/fuse descriptor of no mount, whose first read ends the loop."""
    require(skip_reason_fuse())
    from unionfs.mount.server import LowLevelFS
    from unionfs.union.overlay import Overlay

    (tmp_path / "lower").mkdir()
    fs = LowLevelFS(Overlay([str(tmp_path / "lower")], None, None))
    if lazy:
        fs.ov.filler = lambda path: None
    dev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(PermissionError):  # reading the device of no mount: EPERM
            fs.serve(dev)
    finally:
        os.close(dev)
    assert (fs.ahead is None) == lazy
