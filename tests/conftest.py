"""Shared fixtures: the CLI against the test's own store, a fresh store, and the third-party test images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from support.cli import run_cli  # noqa: E402
from support.images import ImageSet, build_images, have_tools  # noqa: E402


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    """A path for a fresh, empty store."""
    return tmp_path / "store"


@pytest.fixture
def cli(store_root: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args, check=True)`` runs unionfs against the test's own store."""
    def _run(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, root=store_root, check=check)
    return _run


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """The umoci/skopeo-made images (built once per session)."""
    reason = have_tools()
    if reason:
        pytest.skip(reason)
    return build_images(tmp_path_factory.mktemp("images"))


@pytest.fixture
def store(store_root: Path, base_tarball: Path) -> Path:
    """A fresh store holding busybox:latest (see tests/support/busybox.py)."""
    from support.busybox import import_busybox

    import_busybox(store_root, base_tarball)
    return store_root


@pytest.fixture(scope="session")
def base_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs tarball (Debian's busybox-static), made once per session."""
    from support.busybox import busybox_tarball, require

    require()
    return busybox_tarball(tmp_path_factory.mktemp("busybox") / "rootfs.tgz")
