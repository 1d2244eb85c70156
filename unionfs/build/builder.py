"""Build an image from a Dockerfile, with a layer cache kept in the store.

``Builder(store, out=..., stream=..., runner=...).build(BuildOptions(...))`` parses the Dockerfile
(``dockerfile``), works out which stages the target needs (its ``FROM`` and ``COPY --from`` dependencies),
and runs their instructions in order, each step turning the current image into the next one:

* ``FROM``: an earlier stage's result, ``scratch``, or an image of the store (pulled when missing and the
  registry code is there). The base's ``ONBUILD`` triggers run right after it and are not inherited.
* ``RUN``: the current image is mounted (unionfs FUSE) with a fresh upper and an init layer of mount-point
  placeholders on top (``sandbox.make_init_layer``); the command runs in the sandbox (``runner``: by default
  ``sandbox.run`` — docker's default isolation: new namespaces, pivot_root, docker's default capabilities,
  masked /proc, /dev, hosts, resolv.conf, no network but loopback unless the build's ``network`` is
  ``host``; the config's Env, User and WorkingDir, the ARGs in effect, the build's ``volumes``); after the
  unmount the upper becomes the step's layer (``pack.write_diff_tar`` + ``commit.new_config``).
* ``COPY``/``ADD``: sources from the context (``.dockerignore`` applies, globs, ``..`` and symlinks stay
  inside it) or from ``--from`` (a stage or an image, mounted read-only) are copied into the mounted image
  (``copier``), owned by root or ``--chown``, ``--chmod`` applied; ADD unpacks local tar archives.
* ``WORKDIR`` also makes a layer when the directory does not exist yet; every other instruction only changes
  the config (a history entry with ``empty_layer``, no layer).

The cache (``buildcache``): a step's key is the parent image id + the instruction with its resolved
arguments (+ the ARGs in effect for RUN, + the sources' digest for COPY/ADD, + the ``--from`` image id). A
hit takes the recorded image without running or mounting anything; ``no_cache`` ignores the cache (the
steps are still recorded). Changing a COPY source changes that step's key, hence every later parent id.

Failure: the whole build holds the store lock; everything it added to the store (blobs, extracted layers,
cache entries) is removed again when it fails, every mount it made is unmounted and every process it
started has ended, and the error (``BuildError``) names the Dockerfile line. Intermediate images are
blobs named only by the cache; the final image is stored and tagged last.

Output: ``out(line)`` gets docker's lines (``Step N/M : ...``, `` ---> Using cache``, `` ---> <id>``,
``Successfully built <id>``, ``Successfully tagged <ref>``); ``stream(bytes)`` gets what RUN commands print.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from unionfs.build import cache as buildcache

from unionfs.mount import daemon
from unionfs.build.context import IgnoreRules, digest_sources, match_sources, has_glob
from unionfs.image.commit import new_config
from unionfs.layer.compression import GZIP
from unionfs.build.copier import copy_entry, is_archive, makedirs, unpack_archive
from unionfs.oci.digest import Digest
from unionfs.build.dockerfile import Stage, parse
from unionfs.oci.instruction import Instruction, expand, is_valid_arg_name, parse_instruction, split_words
from unionfs.errors import (BuildError, CommandFailedError, DockerfileError, MountError,
                     UnionfsError, UnsafeLayerError, UsageError)
from unionfs.oci.manifest import OCI_CONFIG, Descriptor, ImageConfig, Manifest, Platform
from unionfs.union.plan import MountPlan
from unionfs.oci.mutate import Mutation, expansion_env, resolve, shell_of
from unionfs.image.pack import pack_layer, write_diff_tar
from unionfs.oci.reference import Reference
from unionfs.rootpath import clean, resolve_in_root
from unionfs.run.sandbox import Bind, Completed, Process, make_init_layer, resolve_user
from unionfs.store import mounting
from unionfs.store.store import Image, Store, now_rfc3339
from unionfs.fsops import remove_tree

log = logging.getLogger(__name__)

Runner = Callable[[str, Process, Callable[[bytes], None]], Completed]


def sandbox_runner(rootfs: str, process: Process, output: Callable[[bytes], None]) -> Completed:
    """The default runner: ``sandbox.run`` with the output streamed, raising on a non-zero status."""
    from unionfs.run import sandbox

    return sandbox.run(rootfs, process, output=output, check=True)


@dataclass(frozen=True)
class BuildOptions:
    """What to build: the context directory, the Dockerfile (default ``CONTEXT/Dockerfile``; its text as
    ``dockerfile_text`` when it came from stdin), tags, build arguments, ``labels`` set on the final image
    (docker's ``--label``: a last config step, cached like a LABEL), ``no_cache``, ``pull`` (pull FROM and
    ``COPY --from`` images from their registry even when stored), the target stage (default: the last), the
    platform of FROM images, host directories bind-mounted into every RUN (``volumes``; not part of the image
    nor of the cache key), and the RUN steps' ``network`` (``sandbox.NETWORK_MODES``; not part of the cache
    key). The Dockerfile is read wherever it is, whatever ``.dockerignore`` says (as docker)."""

    context: str
    dockerfile: str | None = None
    dockerfile_text: str | None = None
    tags: Sequence[Reference] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    target: str | None = None
    platform: Platform | None = None
    volumes: Sequence[Bind] = ()
    network: str = "none"


@dataclass(frozen=True)
class BuildResult:
    """The built image, and how many steps came from the cache and how many ran."""

    image: Image
    cached: int
    executed: int


@dataclass
class _State:
    stage: Stage
    image: Image
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False


def short_id(image: Image) -> str:
    """The 12-digit image id docker shows."""
    return image.id.hex[:12]


class Builder:
    """Builds images into ``store``; see the module docstring."""

    def __init__(self, store: Store, *, out: Callable[[str], None] | None = None,
                 stream: Callable[[bytes], None] | None = None, runner: Runner | None = None) -> None:
        self.store = store
        self._out = out or (lambda _line: None)
        self._stream = stream or (lambda _data: None)
        self.runner = runner or sandbox_runner
        self._recorded: list[Path] = []
        self._results: dict[int, Image] = {}
        self.cached = 0
        self.executed = 0

    # ------------------------------------------------------------------ the whole build
    def build(self, opts: BuildOptions) -> BuildResult:
        """Build ``opts``; returns the stored (and tagged) image. Raises BuildError and UsageError."""
        context = os.path.abspath(opts.context)
        if not os.path.isdir(context):
            raise UsageError(f"build context {opts.context} is not a directory")
        dfpath = opts.dockerfile or os.path.join(context, "Dockerfile")
        if opts.dockerfile_text is not None:
            text = opts.dockerfile_text
        else:
            try:
                with open(dfpath, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise UsageError(f"cannot read {dfpath}: {e.strerror}") from None
        for k in opts.build_args:
            if not is_valid_arg_name(k):
                raise UsageError(f"invalid build argument name {k!r}")
        self.opts = opts
        self.context = context
        self.df = parse(text, os.path.basename(dfpath))
        self.excluded = IgnoreRules.load(context).excludes(context)
        self.consumed: set[str] = set()
        self.platform = opts.platform or Platform.host()
        self.global_args = self._global_args()
        target = self.df.stages[-1]
        if opts.target:
            found = self.df.stage(opts.target)
            if found is None:
                raise UsageError(f"target stage {opts.target!r} could not be found")
            target = found
        needed = self._needed(target.index)
        self.total = sum(1 + len(s.instructions) for s in self.df.stages if s.index in needed)
        self.step_no = 0
        self._recorded = []
        with self.store.lock():
            try:
                for stage in self.df.stages:
                    if stage.index in needed:
                        self._results[stage.index] = self._build_stage(stage)
                final = self._labelled(self._results[target.index])
                image = self.store.store_image(final.manifest, final.config.raw, list(opts.tags))
            except BaseException:
                for p in self._recorded:
                    with contextlib.suppress(OSError):
                        os.unlink(p)
                raise
        unused = sorted(set(opts.build_args) - self.consumed)
        if unused:
            self._out(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed")
        self._out(f"Successfully built {short_id(image)}")
        for t in opts.tags:
            self._out(f"Successfully tagged {t.familiar}")
        return BuildResult(image, self.cached, self.executed)

    def _where(self, ins: Instruction) -> str:
        return f"{self.df.name}:{ins.line}: "

    def _global_args(self) -> dict[str, str]:
        p = self.platform
        auto = {"TARGETPLATFORM": str(p), "TARGETOS": p.os, "TARGETARCH": p.architecture,
                "TARGETVARIANT": p.variant or "", "BUILDPLATFORM": str(Platform.host()),
                "BUILDOS": Platform.host().os, "BUILDARCH": Platform.host().architecture}
        env: dict[str, str] = dict(auto)
        for ins in self.df.global_args:
            self._declare_args(ins, env, defaults={})
        return env

    def _declare_args(self, ins: Instruction, scope: dict[str, str], defaults: Mapping[str, str]) -> None:
        """Apply an ARG instruction to ``scope`` (build arguments win over defaults)."""
        for word in split_words(ins.args, self.df.escape):
            name, eq, default = word.partition("=")
            if not is_valid_arg_name(name):
                raise DockerfileError(f"{self._where(ins)}invalid ARG name {name!r}", ins.line)
            if name in self.opts.build_args:
                scope[name] = self.opts.build_args[name]
                self.consumed.add(name)
            elif eq:
                scope[name] = expand(default, scope, self.df.escape, where=self._where(ins))
            elif name in defaults:
                scope[name] = defaults[name]
            else:
                scope.pop(name, None)

    def _needed(self, target: int) -> set[int]:
        needed: set[int] = set()
        todo = [target]
        while todo:
            i = todo.pop()
            if i in needed:
                continue
            needed.add(i)
            stage = self.df.stages[i]
            refs = [stage.base] + [ins.flag("from") or "" for ins in stage.instructions if ins.keyword == "COPY"]
            for ref in refs:
                if not ref:
                    continue
                with contextlib.suppress(DockerfileError):
                    ref = expand(ref, self.global_args, self.df.escape)
                dep = self.df.stage(ref)
                if dep is not None and dep.index < i:
                    todo.append(dep.index)
        return needed

    # ------------------------------------------------------------------ stages and steps
    def _step_header(self, ins: Instruction) -> None:
        self.step_no += 1
        self._out(f"Step {self.step_no}/{self.total} : {ins.text}")

    def _build_stage(self, stage: Stage) -> Image:
        self._step_header(stage.from_instruction)
        where = self._where(stage.from_instruction)
        try:
            base = expand(stage.base, self.global_args, self.df.escape, where=where)
            platform = self.platform
            if stage.platform:
                platform = Platform.parse(expand(stage.platform, self.global_args, self.df.escape, where=where))
            dep = self.df.stage(base)
            if base.lower() == "scratch":
                image = self._scratch(platform)
            elif dep is not None and dep.index < stage.index:
                image = self._results[dep.index]
            else:
                image = self._obtain(base, platform)
        except BuildError:
            raise
        except UnionfsError as e:
            raise BuildError(f"{where}{e}", stage.from_instruction.line) from None
        self._out(f" ---> {short_id(image)}")
        state = _State(stage, image)
        triggers = (image.config.data.get("config") or {}).get("OnBuild") or []
        if triggers:
            self._out(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}")
            for t in triggers:
                ins = parse_instruction(t, stage.from_instruction.line, self.df.name)
                self._run_step(state, ins)

            def clear(cfg: dict[str, Any], _data: dict[str, Any]) -> None:
                cfg.pop("OnBuild", None)
            self._cached(state, "ONBUILD (clear inherited triggers)", {}, lambda: self._config_image(
                state.image, clear, "/bin/sh -c #(nop) ONBUILD cleared"), quiet=True)
        for ins in stage.instructions:
            self._step_header(ins)
            self._run_step(state, ins)
        return state.image

    def _run_step(self, state: _State, ins: Instruction) -> None:
        try:
            self._instruction(state, ins)
        except BuildError:
            raise
        except CommandFailedError as e:
            raise BuildError(f"{self._where(ins)}{e}", ins.line, e.output) from None
        except UnionfsError as e:
            raise BuildError(f"{self._where(ins)}{e}", ins.line) from None
        except OSError as e:
            raise BuildError(f"{self._where(ins)}{ins.keyword} failed: {e.strerror or e}"
                             + (f": {e.filename}" if e.filename else ""), ins.line) from None

    def _env(self, state: _State) -> dict[str, str]:
        """Variables for expansion: the ARGs in effect, overridden by the config's Env."""
        return expansion_env(state.image.config.data.get("config") or {}, state.args)

    def _expand(self, state: _State, ins: Instruction, word: str, quotes: bool = True) -> str:
        return expand(word, self._env(state), self.df.escape, quotes=quotes, where=self._where(ins))

    def _instruction(self, state: _State, ins: Instruction) -> None:
        kw = ins.keyword
        if kw == "ARG":
            self._declare_args(ins, state.args, self.global_args)
            self._out(f" ---> {short_id(state.image)}")
            return
        if kw == "RUN":
            return self._run(state, ins)
        if kw in ("COPY", "ADD"):
            return self._copy(state, ins)
        if kw == "WORKDIR":
            return self._workdir(state, ins)
        m = self._mutation(state, ins)
        self._cached(state, m.desc, {},
                     lambda: self._config_image(state.image, m.apply, f"/bin/sh -c #(nop) {m.desc}"))
        if kw == "CMD":
            state.cmd_set = True

    # ------------------------------------------------------------------ the cache
    def _cached(self, state: _State, desc: str, extra: dict[str, Any], make: Callable[[], Image], *,
                quiet: bool = False) -> None:
        key = buildcache.step_key(state.image.id, desc, **extra)
        if not self.opts.no_cache:
            hit = buildcache.lookup(self.store, key)
            if hit is not None:
                if not quiet:
                    self._out(" ---> Using cache")
                    self._out(f" ---> {short_id(hit)}")
                state.image = hit
                self.cached += 1
                return
        image = make()
        self._recorded.append(buildcache.record(self.store, key, image, desc))
        if not quiet:
            self._out(f" ---> {short_id(image)}")
        self.executed += 1
        state.image = image

    # ------------------------------------------------------------------ images as blobs
    def _created(self) -> str:
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if epoch.isdigit():
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
        return now_rfc3339()

    def _store_blobs(self, layers: Sequence[Descriptor], config: ImageConfig) -> Image:
        self.store.put_blob_bytes(config.raw, config.digest)
        manifest = Manifest.build(Descriptor(OCI_CONFIG, config.digest, len(config.raw)), list(layers))
        desc = manifest.descriptor()
        self.store.put_blob_bytes(manifest.raw, desc.digest)
        return Image(desc, manifest, config, ())

    def _scratch(self, platform: Platform) -> Image:
        data: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os, "config": {},
                                "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        if platform.variant:
            data["variant"] = platform.variant
        return self._store_blobs([], ImageConfig.build(data))

    def _obtain(self, ref: str, platform: Platform) -> Image:
        """An image of the store by reference or id, pulled when missing; with ``pull``, a reference is pulled
        even when stored (an image id is taken from the store)."""
        from unionfs.registry.transfer import obtain

        announce = (lambda r: self._out(f"Pulling {r.familiar}"))
        if self.opts.pull and not self._is_image_id(ref):
            from unionfs.registry.client import RegistryClient
            from unionfs.registry.credentials import DockerConfig
            from unionfs.registry.transfer import pull

            r = Reference.parse(ref)
            announce(r)
            with RegistryClient(r.registry, credentials=DockerConfig().get(r.registry)) as client:
                return pull(self.store, r, client, platform=platform).image
        return obtain(self.store, ref, platform, announce=announce)

    def _is_image_id(self, ref: str) -> bool:
        """True when ``ref`` names a stored image by id or id prefix rather than by reference."""
        hexpart = ref.removeprefix("sha256:")
        if not (4 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart)):
            return False
        return any(img.id.hex.startswith(hexpart) for img in self.store.images())

    def _labelled(self, image: Image) -> Image:
        """``image`` with the build's ``labels`` added to its config (a cached config step, no layer)."""
        if not self.opts.labels:
            return image
        labels = dict(sorted(self.opts.labels.items()))
        desc = "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in labels.items())

        def add(cfg: dict[str, Any], _data: dict[str, Any]) -> None:
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}

        state = _State(self.df.stages[-1], image)
        self._cached(state, desc, {}, lambda: self._config_image(image, add, f"/bin/sh -c #(nop) {desc}"),
                     quiet=True)
        return state.image

    def _config_image(self, parent: Image, mutate: Callable[[dict[str, Any], dict[str, Any]], None],
                      created_by: str) -> Image:
        data = copy.deepcopy(parent.config.data)
        cfg = data.setdefault("config", {})
        if cfg is None:
            cfg = data["config"] = {}
        mutate(cfg, data)
        created = self._created()
        data["created"] = created
        data["history"] = [*(data.get("history") or []),
                           {"created": created, "created_by": created_by, "empty_layer": True}]
        return self._store_blobs(parent.manifest.layers, ImageConfig.build(data))

    # ------------------------------------------------------------------ mounts and layers
    @contextlib.contextmanager
    def _workspace(self) -> Iterator[Path]:
        ws = Path(self.store.staging_dir("build-"))
        try:
            yield ws
        finally:
            remove_tree(ws)

    @contextlib.contextmanager
    def _mounted(self, plan: MountPlan, mnt: Path, options: Sequence[str] = ()) -> Iterator[str]:
        mnt.mkdir(exist_ok=True)
        daemon.mount(plan, str(mnt), options=[*mounting.mount_options(str(self.store.root)), *options])
        try:
            yield str(mnt)
        finally:
            daemon.umount_busy(str(mnt))

    def _layer_image(self, parent: Image, created_by: str, work: Callable[[str, Path], None], *,
                     init_targets: Sequence[tuple[str, bool]] = (),
                     mutate: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> Image:
        """Mount ``parent`` with a fresh upper, ``work(mountpoint, workspace)``, unmount, and make the upper
        the new image's top layer."""
        lowers = [str(p) for p in self.store.ensure_layers(parent)]
        with self._workspace() as ws:
            upper, work_dir = ws / "upper", ws / "work"
            upper.mkdir(mode=0o755)
            work_dir.mkdir(mode=0o700)
            mount_lowers = list(lowers)
            if init_targets:
                init = ws / "init"
                init.mkdir(mode=0o755)
                make_init_layer(str(init), lowers, init_targets)
                mount_lowers.append(str(init))
            plan = MountPlan(tuple(mount_lowers), str(upper), str(work_dir), f"build-{ws.name[-8:]}")
            # a RUN step (it has mount targets) runs as the image's USER, whoever that is: allow_other (with
            # default_permissions, always on); the mount stays nosuid,nodev (process.fuse_options)
            with self._mounted(plan, ws / "mnt", ["allow_other"] if init_targets else ()) as mnt:
                work(mnt, ws)
            index_dir = work_dir / "unionfs" / "index"
            blob = ws / "layer"
            with open(blob, "wb") as f:
                layer = pack_layer(lambda out: write_diff_tar(str(upper), out, lowers=lowers,
                                                              index_dir=str(index_dir) if index_dir.is_dir()
                                                              else None, owners=self.store.owners),
                                   f, compression=GZIP, tmp_dir=str(ws))
                f.flush()
                os.fsync(f.fileno())
            with open(blob, "rb") as f:
                self.store.put_blob(f, layer.digest, layer.size)
        config = new_config(parent.config, layer.diff_id, created=self._created(), created_by=created_by)
        if mutate is not None:
            data = copy.deepcopy(config.data)
            mutate(data.setdefault("config", {}), data)
            config = ImageConfig.build(data)
        return self._store_blobs([*parent.manifest.layers, Descriptor(layer.media_type, layer.digest, layer.size)],
                                 config)

    # ------------------------------------------------------------------ RUN
    def _shell(self, state: _State) -> list[str]:
        return shell_of(state.image.config.data.get("config") or {})

    def _run(self, state: _State, ins: Instruction) -> None:
        cfg = state.image.config.data.get("config") or {}
        if ins.json is not None:
            argv = list(ins.json)
            desc = "RUN " + json.dumps(argv)
        else:
            argv = self._shell(state) + [ins.args]
            desc = "RUN " + ins.args
        if not argv:
            raise DockerfileError(f"{self._where(ins)}RUN needs a command", ins.line)
        env = list(cfg.get("Env") or [])
        keys = {e.split("=", 1)[0] for e in env}
        env += [f"{k}={v}" for k, v in sorted(state.args.items()) if k not in keys]
        process = Process(tuple(argv), tuple(env), cfg.get("User") or "", cfg.get("WorkingDir") or "/",
                          "unionfs-build", tuple(self.opts.volumes), network=self.opts.network)

        def work(mnt: str, ws: Path) -> None:
            self._out(f" ---> Running in {secrets.token_hex(6)}")
            self.runner(mnt, process, self._stream)

        self._cached(state, desc, {"args": sorted(state.args.items())},
                     lambda: self._layer_image(state.image, " ".join(argv), work,
                                               init_targets=process.mount_targets()))

    # ------------------------------------------------------------------ WORKDIR
    def _workdir(self, state: _State, ins: Instruction) -> None:
        m = self._mutation(state, ins)
        path = m.value
        assert path is not None  # a WORKDIR mutation carries its path

        def make() -> Image:
            if self._exists(state.image, path):
                return self._config_image(state.image, m.apply, f"/bin/sh -c #(nop) {m.desc}")

            def work(mnt: str, _ws: Path) -> None:
                _dest_dir(mnt, path, None)
            return self._layer_image(state.image, f"/bin/sh -c #(nop) {m.desc}", work, mutate=m.apply)

        self._cached(state, m.desc, {}, make)

    def _exists(self, image: Image, path: str) -> bool:
        from unionfs.union.view import Union

        lowers = [str(p) for p in self.store.ensure_layers(image)]
        if not lowers:
            return path == "/"
        node = Union(lowers).try_lookup(path)
        return node is not None and stat.S_ISDIR(node.st.st_mode)

    # ------------------------------------------------------------------ config-only instructions
    def _mutation(self, state: _State, ins: Instruction) -> Mutation:
        """The config instruction ``ins`` resolved against the current image (``mutate.resolve``)."""
        return resolve(ins, state.image.config.data.get("config") or {}, args=state.args, escape=self.df.escape,
                       where=self._where(ins), cmd_set=state.cmd_set)

    # ------------------------------------------------------------------ COPY and ADD
    def _copy(self, state: _State, ins: Instruction) -> None:
        kw = ins.keyword
        where = self._where(ins)
        cfg = state.image.config.data.get("config") or {}
        if ins.json is not None:
            words = [self._expand(state, ins, w, quotes=False) for w in ins.json]
        else:
            words = [self._expand(state, ins, w) for w in split_words(ins.args, self.df.escape)]
        if len(words) < 2:
            raise DockerfileError(f"{where}{kw} requires at least two arguments", ins.line)
        srcs, dest = words[:-1], words[-1]
        for s in srcs:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s):
                raise DockerfileError(f"{where}{kw} from a URL is not supported ({s})", ins.line)
        chown = self._expand(state, ins, ins.flag("chown") or "") or None
        chmod_text = self._expand(state, ins, ins.flag("chmod") or "") or None
        chmod = None
        if chmod_text is not None:
            if not re.fullmatch(r"[0-7]{3,4}", chmod_text):
                raise DockerfileError(f"{where}invalid --chmod {chmod_text!r}: use octal digits", ins.line)
            chmod = int(chmod_text, 8)
        frm = self._expand(state, ins, ins.flag("from") or "") or None
        if len(srcs) > 1 and not dest.endswith("/"):
            raise DockerfileError(f"{where}When using {kw} with more than one source file, the destination "
                                  "must be a directory and end with a /", ins.line)
        workdir = clean(cfg.get("WorkingDir") or "/")  # an image's WorkingDir is input like any other
        dest_path = clean(os.path.join(workdir, dest))
        dest_is_dir = dest.endswith("/") or dest.endswith("/.") or dest in (".", "")
        flags = "".join(f"--{k}={v} " for k, v in (("from", frm), ("chown", chown), ("chmod", chmod_text)) if v)
        desc = f"{kw} {flags}{' '.join(srcs)} {dest}"
        extra: dict[str, Any] = {"workdir": workdir}
        src_image: Image | None = None
        if frm is not None:
            dep = self.df.stage(frm)
            if dep is not None and dep.index < state.stage.index:
                src_image = self._results[dep.index]
            elif dep is not None:
                raise DockerfileError(f"{where}{kw} --from={frm} names a stage that is not built before this "
                                      "one", ins.line)
            else:
                src_image = self._obtain(frm, self.platform)
            extra["from"] = str(src_image.id)
            matches: list[str] = []
        else:
            matches = []
            for s in srcs:
                found = match_sources(self.context, s, self.excluded)
                if not found:
                    what = "no source files were specified" if has_glob(s) else (
                        f"file not found in build context or excluded by .dockerignore: {s}")
                    raise BuildError(f"{where}{kw} failed: {what}", ins.line)
                matches += [m for m in found if m not in matches]
            if len(matches) > 1 and not dest.endswith("/"):
                raise DockerfileError(f"{where}When using {kw} with more than one source file, the destination "
                                      "must be a directory and end with a /", ins.line)
            extra["sources"] = digest_sources(self.context, matches, self.excluded)

        def work(mnt: str, ws: Path) -> None:
            owner: tuple[int, int] | None = None
            if chown:
                uid, gid, _, _ = resolve_user(mnt, chown)
                owner = (uid, uid if ":" not in chown else gid)
            if src_image is None:
                self._copy_sources(mnt, ws, self.context, matches, dest_path, dest_is_dir, owner or (0, 0),
                                   chmod, self.excluded, add=kw == "ADD")
                return
            lowers = [str(p) for p in self.store.ensure_layers(src_image)]
            src_root = ws / "from"
            src_root.mkdir()
            ctx = (self._mounted(MountPlan(tuple(lowers), None, None, f"from-{ws.name[-8:]}"), src_root)
                   if lowers else contextlib.nullcontext(str(src_root)))
            with ctx as root:
                found_all: list[str] = []
                for s in srcs:
                    found = match_sources(root, s)
                    if not found:
                        raise BuildError(f"{where}{kw} failed: {s} not found in {frm}", ins.line)
                    found_all += [m for m in found if m not in found_all]
                if len(found_all) > 1 and not dest.endswith("/"):
                    raise DockerfileError(f"{where}When using {kw} with more than one source file, the "
                                          "destination must be a directory and end with a /", ins.line)
                self._copy_sources(mnt, ws, root, found_all, dest_path, dest_is_dir, owner, chmod, None,
                                   add=False)

        self._cached(state, desc, extra, lambda: self._layer_image(state.image, f"/bin/sh -c #(nop) {desc}",
                                                                     work))

    def _copy_sources(self, mnt: str, ws: Path, root: str, matches: list[str], dest: str, dest_is_dir: bool,
                      owner: tuple[int, int] | None, chmod: int | None, ignored: Callable[[str], bool] | None,
                      *, add: bool) -> None:
        dir_owner = owner
        many = len(matches) > 1
        for rel in matches:
            host = resolve_in_root(root, rel)
            st = os.stat(host)
            if add and is_archive(host):
                target = _dest_dir(mnt, dest, dir_owner)
                unpacked = Path(ws) / f"add-{secrets.token_hex(4)}"
                unpacked.mkdir()
                unpack_archive(host, str(unpacked))
                for name in sorted(os.listdir(unpacked)):
                    copy_entry(str(unpacked / name), os.path.join(target, name), owner=None, chmod=None,
                               follow=False)
                continue
            if stat.S_ISDIR(st.st_mode):
                target = _dest_dir(mnt, dest, dir_owner)
                for name in sorted(os.listdir(host)):
                    crel = f"{rel}/{name}" if rel else name
                    if ignored and ignored(crel):
                        continue
                    copy_entry(os.path.join(host, name), os.path.join(target, name), owner=owner, chmod=chmod,
                               skip=ignored, rel=crel, follow=False)
                continue
            base = os.path.basename(rel)
            resolved = resolve_in_root(mnt, dest)
            if dest_is_dir or many or os.path.isdir(resolved):
                target = os.path.join(_dest_dir(mnt, dest, dir_owner), base)
            else:
                parent = _dest_dir(mnt, os.path.dirname(dest.rstrip("/")) or "/", dir_owner)
                target = os.path.join(parent, os.path.basename(dest.rstrip("/")))
            copy_entry(host, target, owner=owner, chmod=chmod)


def _dest_dir(mnt: str, path: str, owner: tuple[int, int] | None) -> str:
    """The host path of directory ``path`` of the rootfs mounted at ``mnt``, resolved inside it
    (``rootpath``) and created (``mkdir -p``, new directories owned by ``owner``).

    Re-checks after creating that no component is a symlink, i.e. that the host's view of the path is the
    resolved one: UnsafeLayerError when something swapped one in meanwhile (only a process writing into the
    build's own mount could). The files written below it are opened with O_NOFOLLOW (``copier``).
    """
    target = resolve_in_root(mnt, path)
    makedirs(target, owner)
    real_root = os.path.realpath(mnt)
    expected = os.path.normpath(os.path.join(real_root, os.path.relpath(target, os.path.abspath(mnt))))
    if os.path.realpath(target) != expected:
        raise UnsafeLayerError(f"the destination {path} changed to a symlink while it was written to")
    return target


__all__ = ["Builder", "BuildOptions", "BuildResult", "sandbox_runner", "short_id", "Digest"]
