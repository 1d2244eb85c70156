"""Build and run subcommands: ``build`` (a Dockerfile, with the layer cache) and ``run`` (a command in an
image's container, isolated as a RUN step is)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from unionfs.cli.common import store_of
from unionfs.errors import BuildError, UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add build and run."""
    p = sub.add_parser("build", help="build an image from a Dockerfile",
                       description="Build an image from a Dockerfile in CONTEXT, reusing cached steps.")
    p.add_argument("context", metavar="CONTEXT", help="the build context directory")
    p.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="REF",
                   help="name the image (repeatable)")
    p.add_argument("-f", "--file", dest="dockerfile", metavar="DOCKERFILE",
                   help="the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("--build-arg", dest="build_args", action="append", default=[], metavar="K=V",
                   help="set a build argument (K alone takes it from the environment)")
    p.add_argument("--no-cache", action="store_true", help="run every step, ignoring the cache")
    p.add_argument("--target", metavar="STAGE", help="build this stage (default: the last)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform of the FROM images")
    p.add_argument("-v", "--volume", dest="volumes", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
                   help="bind-mount a host path into every RUN (not part of the image)")
    p.add_argument("--network", default="none", metavar="none|host",
                   help="network of the RUN steps: none (default; only loopback) or host")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="run a command in a container of an image",
                       description="Mount a container of IMAGE, run CMD (default: the image's ENTRYPOINT and "
                                   "CMD) isolated in it as docker does by default (new namespaces, pivot_root, "
                                   "docker's default capabilities, masked /proc, no network but loopback), "
                                   "unmount; exits with its status.")
    p.add_argument("--rm", action="store_true", help="delete the container (its upper) afterwards")
    p.add_argument("--name", help="container name (an existing container of the image is reused)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (K alone takes it from the environment)")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory inside the container")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="user (name or uid) to run as")
    p.add_argument("-v", "--volume", dest="volumes", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
                   help="bind-mount a host path into the container")
    p.add_argument("--entrypoint", help="override the image's ENTRYPOINT (and drop its CMD)")
    p.add_argument("--network", default="none", metavar="none|host",
                   help="none (default): a network namespace of its own with only loopback; host: the host's "
                        "network (there is no bridge)")
    p.add_argument("--privileged", action="store_true",
                   help="keep every capability, no masked or read-only /proc paths, device nodes usable")
    p.add_argument("--security-opt", dest="security_opts", action="append", default=[], metavar="OPT",
                   help="no-new-privileges: the command cannot gain privileges (set-uid, file capabilities)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=cmd_run)


def _pairs(items: list[str], what: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in items:
        k, eq, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid {what} {item!r}: expected KEY=VALUE")
        out.append((k, v if eq else os.environ.get(k)))
    return out


def _own_user_namespace() -> None:
    """For a user other than root: go on in a user namespace of one's own (:mod:`unionfs.run.userns`)."""
    from unionfs.run import userns

    if userns.needed():
        userns.enter()


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_build(args: argparse.Namespace) -> int:
    from unionfs.build.builder import Builder, BuildOptions
    from unionfs.oci.manifest import Platform
    from unionfs.oci.reference import Reference
    from unionfs.run.sandbox import Bind, check_network

    check_network(args.network)
    _own_user_namespace()
    build_args = {k: v for k, v in _pairs(args.build_args, "--build-arg") if v is not None}
    opts = BuildOptions(context=args.context, dockerfile=args.dockerfile,
                        tags=[Reference.parse(t) for t in args.tags], build_args=build_args,
                        no_cache=args.no_cache, target=args.target,
                        platform=Platform.parse(args.platform) if args.platform else None,
                        volumes=[Bind.parse(v) for v in args.volumes], network=args.network)
    out = sys.stdout

    def line(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def stream(data: bytes) -> None:
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()

    signal.signal(signal.SIGTERM, _interrupt)  # unwind (unmount, roll back) instead of dying
    builder = Builder(store_of(args), out=None if args.quiet else line, stream=None if args.quiet else stream)
    try:
        result = builder.build(opts)
    except BuildError as e:
        if args.quiet and e.output:
            sys.stderr.write(e.output if e.output.endswith("\n") else e.output + "\n")
        raise
    if args.quiet:
        print(result.image.id)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from unionfs.api import container
    from unionfs.run.sandbox import Bind, Process, check_network, no_new_privileges, run

    check_network(args.network)
    _own_user_namespace()
    nnp = no_new_privileges(args.security_opts)
    store = store_of(args)
    binds = [Bind.parse(v) for v in args.volumes]
    signal.signal(signal.SIGTERM, _interrupt)
    with container(store, args.image, name=args.name, keep=not args.rm, binds=binds) as m:
        cfg = m.image.config.data.get("config") or {}
        if args.entrypoint is not None:
            entry = [args.entrypoint] if args.entrypoint else []
            cmd = list(args.command)
        else:
            entry = list(cfg.get("Entrypoint") or [])
            cmd = list(args.command) or list(cfg.get("Cmd") or [])
        argv = entry + cmd
        if not argv:
            raise UsageError(f"no command given and {args.image} has no ENTRYPOINT or CMD")
        env = list(cfg.get("Env") or [])
        for k, v in _pairs(args.env, "--env"):
            env = [e for e in env if e.split("=", 1)[0] != k]
            if v is not None:
                env.append(f"{k}={v}")
        process = Process(tuple(argv), tuple(env), args.user if args.user is not None else cfg.get("User") or "",
                          args.workdir or cfg.get("WorkingDir") or "/", m.name[:63], tuple(binds),
                          network=args.network, privileged=args.privileged, no_new_privileges=nnp)
        completed = run(str(m.rootfs), process, stdin=None, check=False)
    return completed.status
