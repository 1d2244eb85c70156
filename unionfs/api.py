"""The Python API for programs and tests that need an image's rootfs.

``with unionfs.mounted("busybox:latest") as rootfs: ...`` makes a new container of the image in the store
(``root``: the store directory, default as for the CLI), mounts it (unionfs FUSE) and yields the merged,
writable rootfs as a ``Path``. On leaving the block, normally or by an exception, the mount is ended and the
container with its upper is deleted (unless ``keep=True``). The image's layers stay extracted in the store,
so the next ``mounted`` of the same image costs only the mount.

``run(rootfs, argv, ...)`` runs a command in such a rootfs with the isolation of ``unionfs run`` (see
``sandbox``); the rootfs carries placeholders for /proc, /dev, /etc/hosts and /etc/resolv.conf in an init
layer (never in the upper), so that works for every image.

``container(...)`` is the context manager both build on (``unionfs run`` uses it too).

``record_opens(store, image, command)`` runs an image's command once and lists the files it opens
(``convert --optimize``: :mod:`unionfs.image.optimize`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from unionfs.errors import ContainerError, RunError, UnionfsError
from unionfs.fsops import remove_tree
from unionfs.mount import daemon
from unionfs.oci.manifest import Platform
from unionfs.run.sandbox import Bind, Completed, Process, make_init_layer
from unionfs.store import mounting
from unionfs.store.store import Image, Store
from unionfs.union.plan import MountPlan

log = logging.getLogger(__name__)

#: mount targets every container gets a placeholder for
BASE_TARGETS = Process(()).mount_targets()


@dataclass(frozen=True)
class Mounted:
    """A live container mount: the store, the image, the container name and the merged rootfs."""

    store: Store
    image: Image
    name: str
    rootfs: Path


def obtain(store: Store, ref: str, platform: Platform | None = None) -> Image:
    """The image ``ref`` from the store, pulled from its registry when it is missing there."""
    from unionfs.registry.transfer import obtain as obtain_image

    return obtain_image(store, ref, platform)


@contextlib.contextmanager
def container(store: Store, image: str, *, name: str | None = None, keep: bool = True,
              binds: Sequence[Bind] = (), options: Sequence[str] = (), lazy: bool = False,
              prefetch: bool = True) -> Iterator[Mounted]:
    """Mount container ``name`` of ``image`` (a new one when ``name`` is None or unknown) at
    ``ROOT/containers/NAME/merged``; unmount on exit and delete the container unless ``keep``.

    An existing container must belong to the same image and must not be mounted already (ContainerError).
    ``lazy``: ``image`` is a reference read at its registry, its eStargz layers mounted lazily
    (:mod:`unionfs.lazy.prepare`), the rest of the image pulled in the background unless not
    ``prefetch`` (:mod:`unionfs.lazy.complete`).
    """
    img = None if lazy else obtain(store, image)
    existed = False
    if name is not None:
        try:
            mp = store.container(name).mountpoint
            existed = True
        except ContainerError:
            mp = None
        if mp and daemon.is_mounted(mp):
            raise ContainerError(f"container {name} is mounted at {mp}")
    lazy_plan = None
    if lazy:
        from unionfs.lazy.prepare import prepare_lazy_ref

        lazy_plan = prepare_lazy_ref(store, image, name, early=prefetch)  # the first files while the tree is made
        img, plan = lazy_plan.image, lazy_plan.plan
    else:
        plan = store.prepare_container(image, name)
    assert plan.name is not None and plan.upper is not None and img is not None
    cdir = Path(plan.upper).parent
    mnt, init = cdir / "merged", cdir / "init"
    mounted = False
    try:
        with contextlib.suppress(OSError, UnionfsError):
            remove_tree(init)
        init.mkdir(mode=0o755)
        targets = BASE_TARGETS + [(b.target, os.path.isdir(b.source)) for b in binds]
        make_init_layer(str(init), plan.lowers, targets)
        mnt.mkdir(exist_ok=True)
        # the container's processes run as its USER, whoever that is: allow_other (default_permissions is
        # always on); nosuid,nodev unless ``options`` say otherwise (process.fuse_options)
        daemon.mount(MountPlan((*plan.lowers, str(init)), plan.upper, plan.work, plan.name), str(mnt),
                     options=["allow_other", *mounting.mount_options(str(store.root)), *options])
        mounted = True
        store.set_container_mount(plan.name, str(mnt))
        if lazy_plan is not None and prefetch:
            from unionfs.lazy.complete import start

            start(str(store.root), lazy_plan.ref, lazy_plan.manifest, str(mnt))
        yield Mounted(store, img, plan.name, mnt)
    finally:
        try:
            if mounted:
                daemon.umount_busy(str(mnt))
                with contextlib.suppress(ContainerError):
                    store.set_container_mount(plan.name, None)
        finally:
            if not daemon.is_mounted(str(mnt)):
                for d in (mnt, init):
                    with contextlib.suppress(OSError, UnionfsError):
                        remove_tree(d)
                if not keep or (not existed and not mounted):
                    with contextlib.suppress(ContainerError):
                        store.remove_container(plan.name)


@contextlib.contextmanager
def mounted(image: str, root: str | os.PathLike[str] | None = None, *, name: str | None = None,
            keep: bool = False) -> Iterator[Path]:
    """A writable merged rootfs of ``image`` for the time of the block; see the module docstring."""
    with container(Store(root), image, name=name, keep=keep) as m:
        yield m.rootfs


def run(rootfs: str | os.PathLike[str], argv: Sequence[str], *, env: Sequence[str] = (), user: str = "",
        workdir: str = "/", check: bool = True, capture: bool = True, network: str = "none",
        privileged: bool = False) -> Completed:
    """Run ``argv`` in a rootfs from ``mounted`` (see ``sandbox.run``: docker's default isolation, no network
    but loopback unless ``network="host"``, all capabilities only with ``privileged``); with ``capture`` the
    output is in the result (stdout and stderr together), else it goes to this process's stdout/stderr."""
    from unionfs.run import sandbox

    process = Process(tuple(argv), tuple(env), user, workdir, network=network, privileged=privileged)
    if capture:
        return sandbox.run(os.fspath(rootfs), process, output=lambda _b: None, check=check)
    return sandbox.run(os.fspath(rootfs), process, check=check)


def record_opens(store: Store, image: str, command: Sequence[str] = (), *,
                 timeout: float | None = None) -> list[str]:
    """The union paths ("/usr/bin/python3") of the files the command of ``image`` (a reference or id in
    ``store``; ``command`` replaces its CMD, as in ``run IMAGE CMD``) opens, in the order of their first open,
    in one run in a throw-away container (as ``run --rm``: no network, the image's Env, User and WorkingDir)
    of at most ``timeout`` seconds (None: :data:`unionfs.image.optimize.DEFAULT_TIMEOUT`), after which the
    command is killed. Its status does not matter. Raises what ``run`` raises (RunError, SandboxError...)."""
    import subprocess
    import tempfile

    from unionfs.image.optimize import DEFAULT_TIMEOUT, read_record
    from unionfs.oci.manifest import container_command
    from unionfs.run import sandbox

    with tempfile.TemporaryDirectory(prefix="unionfs-optimize-") as tmp:
        record = os.path.join(tmp, "opens")
        with container(store, image, keep=False, options=[f"record={record}"]) as m:
            cfg = m.image.config.data.get("config") or {}
            argv = container_command(cfg, command)
            if not argv:
                raise RunError(f"no command given and {image} has no ENTRYPOINT or CMD")
            process = Process(tuple(argv), tuple(cfg.get("Env") or []), cfg.get("User") or "",
                              cfg.get("WorkingDir") or "/", "optimize")
            try:
                done = sandbox.run(str(m.rootfs), process, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, check=False, timeout=timeout or DEFAULT_TIMEOUT)
                log.info("%s ran to its end (status %d)", " ".join(argv), done.status)
            except subprocess.TimeoutExpired:
                log.info("%s stopped after %g s", " ".join(argv), timeout or DEFAULT_TIMEOUT)
            return read_record(Path(record))


__all__ = ["mounted", "run", "container", "obtain", "record_opens", "Mounted"]
