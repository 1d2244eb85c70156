"""Build and run subcommands: ``build`` (a Dockerfile, with the layer cache) and ``run`` (a command in an
image's container, isolated as a RUN step is)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any, Iterator, NoReturn

from unionfs.cli.common import own_user_namespace, store_of
from unionfs.errors import BuildError, RunError, SandboxError, UnionfsError, UsageError, printable


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add build and run."""
    p = sub.add_parser("build", help="build an image from a Dockerfile",
                       description="Build an image from a Dockerfile in CONTEXT, reusing cached steps.")
    p.add_argument("context", metavar="CONTEXT",
                   help="the build context directory, or - to read a tar archive (plain or compressed) or a "
                        "Dockerfile (then with an empty context) from stdin")
    p.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="REF",
                   help="name the image (repeatable)")
    p.add_argument("-f", "--file", dest="dockerfile", metavar="DOCKERFILE",
                   help="the Dockerfile (default: CONTEXT/Dockerfile; inside the archive for a context from "
                        "stdin); - reads it from stdin")
    p.add_argument("--build-arg", dest="build_args", action="append", default=[], metavar="K=V",
                   help="set a build argument (K alone takes it from the environment)")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="K=V",
                   help="set a label on the image (repeatable; K alone sets an empty value)")
    p.add_argument("--no-cache", action="store_true", help="run every step, ignoring the cache")
    p.add_argument("--pull", action="store_true",
                   help="always pull the FROM (and COPY --from) images from their registry, even when stored")
    p.add_argument("--target", metavar="STAGE", help="build this stage (default: the last)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="platform of the FROM images")
    p.add_argument("-v", "--volume", dest="volumes", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
                   help="bind-mount a host path into every RUN (not part of the image)")
    p.add_argument("--network", default="none", metavar="none|host",
                   help="network of the RUN steps: none (default; only loopback) or host")
    p.add_argument("--progress", default="auto", choices=PROGRESS_MODES, metavar="auto|plain|tty",
                   help="progress output: one line per step and the RUN steps' output in every mode (there is "
                        "no animated display)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="run a command in a container of an image", add_help=False,
                       description="Mount a container of IMAGE, run CMD (default: the image's ENTRYPOINT and "
                                   "CMD) isolated in it as docker does by default (new namespaces, pivot_root, "
                                   "docker's default capabilities, masked /proc, no network but loopback), "
                                   "unmount; exits with its status. Errors of unionfs itself exit 125, a "
                                   "command that cannot be invoked 126, one not found 127.")
    p.__class__ = _RunParser  # argparse makes subparsers of one class; run's exits 125 on a usage error
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("--rm", action="store_true", help="delete the container (its upper) afterwards")
    p.add_argument("--lazy", action="store_true",
                   help="IMAGE is a registry reference: run it without pulling it first, its eStargz layers' files "
                   "fetched when read, the rest pulled in the background (mount --lazy)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="with --lazy: fetch only what is read (no prefetch, no pull in the background)")
    p.add_argument("--name", help="container name (an existing container of the image is reused)")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="pass stdin to the command (without it stdin is /dev/null)")
    p.add_argument("-t", "--tty", action="store_true",
                   help="give the command a terminal: a pty of the container (raw mode, window size, job control)")
    p.add_argument("-d", "--detach", action="store_true", help="refused: unionfs has no container daemon")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (K alone takes it from the environment)")
    p.add_argument("--env-file", dest="env_files", action="append", default=[], metavar="FILE",
                   help="read environment variables from FILE (K=V lines, # comments; before -e)")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory inside the container")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="user (name or uid) to run as")
    p.add_argument("-h", "--hostname", metavar="NAME", help="the container's hostname (default: its name)")
    p.add_argument("-v", "--volume", dest="volumes", action="append", default=[], metavar="HOST:CONTAINER[:ro]",
                   help="bind-mount a host path into the container")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]",
                   help="mount a tmpfs at PATH (default noexec,nosuid,nodev; OPTS: rw, ro, exec, suid, size=, "
                        "mode=, uid=, gid=...)")
    p.add_argument("--read-only", action="store_true",
                   help="mount the rootfs read-only (/dev, tmpfs mounts and volumes stay writable)")
    p.add_argument("--entrypoint", help="override the image's ENTRYPOINT (and drop its CMD)")
    p.add_argument("--network", "--net", default="none", metavar="none|host",
                   help="none (default): a network namespace of its own with only loopback; host: the host's "
                        "network (there is no bridge)")
    p.add_argument("--privileged", action="store_true",
                   help="keep every capability, no masked or read-only /proc paths, device nodes usable")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP",
                   help="add a capability to docker's default set (ALL: every one)")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP",
                   help="drop a capability from docker's default set (ALL: every one)")
    p.add_argument("--security-opt", dest="security_opts", action="append", default=[], metavar="OPT",
                   help="no-new-privileges: the command cannot gain privileges (set-uid, file capabilities)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=cmd_run)


#: ``build --progress`` values: unionfs prints the same plain lines in each
PROGRESS_MODES = ("auto", "plain", "tty")
#: what ``run`` exits with for an error of its own (a flag, the image, the sandbox), as docker and podman
RUN_ERROR = 125


class _RunParser(argparse.ArgumentParser):
    """``run``'s parser: an unknown flag is an error of ``run`` (not "unrecognized arguments" of the top-level
    parser), and a usage error exits 125 with docker's message (``unknown flag: --foo``, ``See 'unionfs run
    --help'.``)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unknown flag: {extra[0]}")
        return ns, extra

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        sys.stderr.write(f"unionfs: {printable(message)}\nSee 'unionfs run --help'.\n")
        sys.exit(RUN_ERROR)


def _pairs(items: list[str], what: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in items:
        k, eq, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid {what} {item!r}: expected KEY=VALUE")
        out.append((k, v if eq else os.environ.get(k)))
    return out


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_build(args: argparse.Namespace) -> int:
    from unionfs.build.builder import Builder, BuildOptions
    from unionfs.oci.manifest import Platform
    from unionfs.oci.reference import Reference
    from unionfs.run.sandbox import Bind, check_network

    check_network(args.network)
    own_user_namespace()
    build_args = {k: v for k, v in _pairs(args.build_args, "--build-arg") if v is not None}
    labels = _labels(args.labels)
    store = store_of(args)
    out = sys.stdout

    def line(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    def stream(data: bytes) -> None:
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()

    signal.signal(signal.SIGTERM, _interrupt)  # unwind (unmount, roll back) instead of dying
    with _build_input(store, args) as (context, dockerfile, dockerfile_text):
        opts = BuildOptions(context=context, dockerfile=dockerfile, dockerfile_text=dockerfile_text,
                            tags=[Reference.parse(t) for t in args.tags], build_args=build_args,
                            labels=labels, no_cache=args.no_cache, pull=args.pull, target=args.target,
                            platform=Platform.parse(args.platform) if args.platform else None,
                            volumes=[Bind.parse(v) for v in args.volumes], network=args.network)
        builder = Builder(store, out=None if args.quiet else line, stream=None if args.quiet else stream)
        try:
            result = builder.build(opts)
        except BuildError as e:
            if args.quiet and e.output:
                sys.stderr.write(e.output if e.output.endswith("\n") else e.output + "\n")
            raise
    if args.quiet:
        print(result.image.id)
    return 0


def _labels(items: list[str]) -> dict[str, str]:
    """``--label`` values: ``K=V``, or ``K`` for an empty value (as docker)."""
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid --label {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


@contextlib.contextmanager
def _build_input(store: Any, args: argparse.Namespace) -> Iterator[tuple[str, str | None, str | None]]:
    """``(context directory, Dockerfile path or None, Dockerfile text or None)`` for the build, as docker takes
    them: ``CONTEXT -`` reads the context from stdin (``stdin.read_context``: a tar archive unpacked into a
    staging directory of the store, removed afterwards; or a Dockerfile with an empty context), ``-f -`` reads
    the Dockerfile from stdin; with a context from stdin, ``-f`` names a file inside it."""
    from unionfs.build.stdin import read_context, read_dockerfile
    from unionfs.fsops import remove_tree
    from unionfs.rootpath import resolve_in_root

    if args.context != "-":
        if args.dockerfile == "-":
            yield args.context, None, read_dockerfile(sys.stdin.buffer)
        else:
            yield args.context, args.dockerfile, None
        return
    if args.dockerfile == "-":
        raise UsageError("cannot read both the build context and the Dockerfile from stdin (CONTEXT - and -f -)")
    staging = store.staging_dir("context-")
    try:
        context = os.path.join(staging, "context")
        text = read_context(sys.stdin.buffer, context, spool=os.path.join(staging, "stdin"))
        if text is not None:
            yield context, None, text
        else:
            yield context, resolve_in_root(context, args.dockerfile or "Dockerfile"), None
    finally:
        remove_tree(staging)


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: every error of unionfs's own exits 125 (``RunError``); a user or command that cannot be
    invoked 126, a command not found 127; otherwise the command's status."""
    try:
        return _run(args)
    except SandboxError:  # 125, or 126/127 for UnknownUserError and ExecError
        raise
    except UnionfsError as e:
        raise RunError(str(e)) from e


def _run(args: argparse.Namespace) -> int:
    import subprocess

    from unionfs.api import container
    from unionfs.oci.manifest import container_command
    from unionfs.registry.transfer import obtain
    from unionfs.run.sandbox import Bind, Process, Tmpfs, capability_mask, check_process, no_new_privileges, run

    if args.detach:
        raise RunError("-d/--detach is not offered: unionfs has no container daemon to keep a detached "
                       "container running")
    nnp = no_new_privileges(args.security_opts)
    binds = tuple(Bind.parse(v) for v in args.volumes)
    settings = {"network": args.network, "privileged": args.privileged, "no_new_privileges": nnp,
                "capabilities": capability_mask(args.cap_add, args.cap_drop), "read_only": args.read_only,
                "tmpfs": tuple(Tmpfs.parse(t) for t in args.tmpfs), "tty": args.tty}
    given_env = _env_file_pairs(args.env_files) + _pairs(args.env, "--env")
    check_process(Process(("-",), hostname=args.hostname or "unionfs", **settings))  # before any mount
    own_user_namespace()
    store = store_of(args)
    if args.no_prefetch and not args.lazy:
        raise RunError("--no-prefetch goes with --lazy")
    if not args.lazy:
        try:
            obtain(store, args.image)  # pulled when missing; then container() finds it stored
        except UnionfsError as e:
            raise RunError(f"image {args.image} is not in the store and cannot be pulled: {e}") from e
    signal.signal(signal.SIGTERM, _interrupt)
    with container(store, args.image, name=args.name, keep=not args.rm, binds=binds, lazy=args.lazy,
                   prefetch=not args.no_prefetch) as m:
        cfg = m.image.config.data.get("config") or {}
        argv = container_command(cfg, args.command, args.entrypoint)
        if not argv:
            raise RunError(f"no command given and {args.image} has no ENTRYPOINT or CMD")
        env = list(cfg.get("Env") or [])
        for k, v in given_env:
            env = [e for e in env if e.split("=", 1)[0] != k]
            if v is not None:
                env.append(f"{k}={v}")
        process = Process(tuple(argv), tuple(env), args.user if args.user is not None else cfg.get("User") or "",
                          args.workdir or cfg.get("WorkingDir") or "/", args.hostname or m.name[:63], binds,
                          **settings)
        completed = run(str(m.rootfs), process, stdin=None if args.interactive else subprocess.DEVNULL,
                        check=False)
    return completed.status


def _env_file_pairs(paths: list[str]) -> list[tuple[str, str | None]]:
    """The variables of ``--env-file`` files as docker reads them: ``K=V`` lines (the value as written),
    ``K`` alone takes the value from the environment and is left out when unset there, blank lines and ``#``
    comments skipped, leading blanks ignored; a name with blanks is an error."""
    out: list[tuple[str, str | None]] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read env file {path}: {e.strerror}") from None
        for n, raw in enumerate(lines, 1):
            line = raw.lstrip()
            if not line or line.startswith("#"):
                continue
            k, eq, v = line.partition("=")
            if not k or any(c.isspace() for c in k):
                raise UsageError(f"{path}:{n}: invalid variable name {k!r} (empty or with blanks)")
            if eq:
                out.append((k, v))
            elif k in os.environ:
                out.append((k, os.environ[k]))
    return out
