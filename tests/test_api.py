"""The Python API (``unionfs.mounted``, ``unionfs.api.run``) and the pytest plugin's ``unionfs_rootfs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from support.busybox import busybox_tarball, import_busybox, leftovers, require

import unionfs
from unionfs import api


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store with busybox:latest for the module: layers are extracted once and shared."""
    require()
    work = tmp_path_factory.mktemp("api")
    root = work / "store"
    import_busybox(root, busybox_tarball(work / "rootfs.tgz"))
    return root


@pytest.fixture
def unionfs_store_root(module_store: Path) -> str:
    """Point the plugin's factory at the module's store."""
    return str(module_store)


def test_mounted_gives_a_writable_rootfs_and_cleans_up(module_store: Path) -> None:
    with unionfs.mounted("busybox:latest", root=module_store) as rootfs:
        assert (rootfs / "bin/busybox").is_file()
        (rootfs / "tmp/new").write_text("x")
        (rootfs / "etc/passwd").unlink()
        assert not (rootfs / "etc/passwd").exists()
        assert os.path.ismount(rootfs)
    assert not os.path.exists(rootfs)
    assert os.listdir(module_store / "containers") == []
    assert leftovers(module_store) == []


def test_mounted_cleans_up_on_exceptions(module_store: Path) -> None:
    with pytest.raises(RuntimeError):
        with unionfs.mounted("busybox:latest", root=module_store) as rootfs:
            (rootfs / "tmp/f").write_text("y")
            raise RuntimeError("boom")
    assert os.listdir(module_store / "containers") == []
    assert leftovers(module_store) == []


def test_run_in_a_mounted_rootfs(module_store: Path) -> None:
    with unionfs.mounted("busybox:latest", root=module_store) as rootfs:
        done = api.run(rootfs, ["sh", "-c", "echo $X > /tmp/out; id -u"], env=["X=42"], user="user")
        assert done.output == "1000\n"
        assert (rootfs / "tmp/out").read_text() == "42\n"


def test_fixture_isolates_tests_and_shares_layers(unionfs_rootfs: Callable[..., Path], module_store: Path) -> None:
    layers = sorted(os.listdir(module_store / "layers"))
    a = unionfs_rootfs("busybox:latest")
    b = unionfs_rootfs("busybox:latest")
    (a / "tmp/only-in-a").write_text("a")
    assert not (b / "tmp/only-in-a").exists()
    assert sorted(os.listdir(module_store / "layers")) == layers  # no layer extracted again


def test_fixture_from_another_project(module_store: Path, tmp_path: Path) -> None:
    """The README's example, run as a separate pytest session that only has the installed plugin."""
    doc = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = doc.split("A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "test_example.py").write_text(example)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--unionfs-root={module_store}", str(tmp_path / "test_example.py")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 passed" in p.stdout
    assert leftovers(module_store) == []
