"""pytest plugin (registered through the ``pytest11`` entry point): rootfs fixtures backed by unionfs.

Fixtures:

* ``unionfs_rootfs`` — a factory: ``unionfs_rootfs("busybox:latest")`` returns the ``Path`` of a fresh,
  writable merged rootfs of that image (a new container per call: tests never see each other's writes).
  Everything the test mounted is unmounted and its containers deleted when the test ends, passed or failed.
  The image's layers are extracted once into the store and shared by every later mount.
* ``unionfs_store_root`` (session) — the store the factory uses: ``--unionfs-root``, else the ini option
  ``unionfs_root``, else ``$UNIONFS_ROOT``, else unionfs' default store. Override this fixture to point the
  factory at a store your session prepares.

Mounting needs root and /dev/fuse (as ``unionfs mount`` does).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--unionfs-root`` and the ``unionfs_root`` ini option."""
    parser.addoption("--unionfs-root", default=None, help="unionfs store used by the unionfs_rootfs fixture")
    parser.addini("unionfs_root", "unionfs store used by the unionfs_rootfs fixture", default="")


@pytest.fixture(scope="session")
def unionfs_store_root(request: pytest.FixtureRequest) -> str | None:
    """The store directory for ``unionfs_rootfs`` (None: unionfs' default store)."""
    return (request.config.getoption("--unionfs-root") or request.config.getini("unionfs_root")
            or os.environ.get("UNIONFS_ROOT") or None)


@pytest.fixture
def unionfs_rootfs(unionfs_store_root: str | None) -> Iterator[Callable[..., Path]]:
    """A factory of fresh writable rootfs mounts of an image; see the module docstring."""
    from unionfs.api import mounted

    with contextlib.ExitStack() as stack:
        def make(image: str, *, name: str | None = None) -> Path:
            return stack.enter_context(mounted(image, unionfs_store_root, name=name))

        yield make
