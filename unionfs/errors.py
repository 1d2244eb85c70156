"""Every error a user of unionfs can meet, in one place.

Each error carries a one-line message meant for a person; the CLI prints
``unionfs: <message>`` and exits with the error's ``exit_code``.

The tree::

    UnionfsError                      base; exit status 1
    ├── UsageError                    bad arguments or options (exit 2)
    │   └── TemplateError             a --format / -f Go template does not parse or fails on the data
    ├── StoreError                    the image store
    │   ├── StoreLockedError          another command holds the store lock
    │   ├── ImageNotFoundError        no image answers to a reference
    │   ├── BlobNotFoundError         a blob is missing from the store
    │   │   └── PartialImageError     an image is only partly in the store (a lazy mount's, not pulled whole)
    │   ├── ImageInUseError           rmi of an image a container uses
    │   ├── ContainerError            container state (missing, exists, busy)
    │   └── MountedTreeError          a delete refused: something is mounted inside the tree
    ├── ReferenceError_               a malformed image reference
    ├── ManifestError                 unparseable or unsupported manifest/index/config
    │   └── PlatformError             an index has no manifest for the platform
    ├── ArchiveError                  a docker-save / OCI archive or layout is malformed
    ├── DigestError                   content does not match its digest or size
    ├── LayerError                    a layer cannot be unpacked or packed
    │   ├── UnsafeLayerError          a hostile entry (escape, symlink traversal...)
    │   ├── LayerTooLargeError        decompressed size over the bound (gzip bomb)
    │   ├── EstargzError              a blob breaks the eStargz spec (footer, TOC, chunk digests, offsets)
    │   └── LazyLayerError            a lazy layer's file cannot be filled (a chunk that does not verify, ...)
    ├── SymlinkLoopError              a path inside a rootfs meets a symlink loop (also an OSError ELOOP)
    ├── MountError                    a mount cannot be made or ended
    ├── CommitError                   an upper cannot be committed (a live mount that cannot be paused)
    ├── TreePathError                 a path is not in an image's merged tree (ls, cat, which...)
    ├── BuildError                    a build step failed (names the Dockerfile line)
    │   └── DockerfileError           a Dockerfile does not parse or uses something unsupported
    ├── SandboxError                  a command cannot be run in a rootfs (namespaces, mounts; exit 125)
    │   ├── RunError                  unionfs's own error in ``run`` (a flag, the image, a volume; exit 125)
    │   ├── UnknownUserError          a user or group is not in the image's passwd/group (exit 126)
    │   ├── ExecError                 the command cannot be executed (exit 127 not found, 126 otherwise)
    │   └── CommandFailedError        the command exited non-zero (command, status, output)
    └── RegistryError                 a registry answered with an error or broke the protocol
        ├── RegistryConnectionError   the registry (or token server) cannot be reached, TLS failed
        ├── RegistryAuthError         UNAUTHORIZED: no or wrong credentials, token refused
        ├── RegistryDeniedError       DENIED: authenticated but not allowed
        ├── RegistryNotFoundError     MANIFEST_UNKNOWN, NAME_UNKNOWN, BLOB_UNKNOWN, any 404
        ├── RegistryRateLimitError    TOOMANYREQUESTS (HTTP 429) after the retries
        ├── RegistryBlockedError      registries.conf blocks pulls of the reference
        ├── RegistriesConfError       registries.conf or docker's daemon.json is malformed
        └── CredentialsError          the docker config (credentials file or helper) is unusable

Outside the tree, never shown to a user: ``FillPending`` (an OSError EAGAIN), a lazy mount's daemon telling its
request loop that the file a request needs is being fetched by a worker thread.

Code below the CLI raises these and never prints.
"""

from __future__ import annotations

import errno
import re


class UnionfsError(Exception):
    """Base class: ``str(err)`` is a one-line message for the user."""

    exit_code = 1


class UsageError(UnionfsError):
    """Bad command-line usage."""

    exit_code = 2


class TemplateError(UsageError):
    """A Go template given to ``--format`` or ``inspect -f`` does not parse, or fails on the data (the message
    in Go's shape: ``template parsing error: template: :1: ...`` or ``template: :1:2: executing ...``)."""


class StoreError(UnionfsError):
    """The image store cannot do what was asked."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock and we may not wait."""


class ImageNotFoundError(StoreError):
    """No image in the store answers to the reference."""


class BlobNotFoundError(StoreError):
    """A blob the image needs is not in the store."""


class PartialImageError(BlobNotFoundError):
    """An image is recorded in the store with layers that are neither extracted nor stored as blobs (a lazy
    mount's image not yet pulled whole): what needs its layers or blobs (a plain mount, ``run``, ``save``,
    ``push``...) refuses it, before changing anything; a pull completes it."""


class ImageInUseError(StoreError):
    """The image is used by a container (rmi without -f)."""


class ContainerError(StoreError):
    """A container is missing, exists already, or is busy."""


class MountedTreeError(StoreError):
    """A recursive delete was refused because a mount (or another filesystem) lies inside the tree."""


class ReferenceError_(UnionfsError):  # noqa: N801 - avoid shadowing the builtin ReferenceError
    """An image reference does not parse."""


class ManifestError(UnionfsError):
    """A manifest, index or config is malformed or unsupported."""


class PlatformError(ManifestError):
    """An image index has no entry for the wanted platform."""


class ArchiveError(UnionfsError):
    """An image archive or OCI layout is malformed."""


class DigestError(UnionfsError):
    """Content does not match the expected digest or size."""


class LayerError(UnionfsError):
    """A layer cannot be unpacked or packed."""


class UnsafeLayerError(LayerError):
    """A layer holds an entry that would escape or corrupt its directory."""


class LayerTooLargeError(LayerError):
    """A layer decompresses to more than the allowed bound."""


class EstargzError(LayerError):
    """A blob is not a valid eStargz layer (footer, TOC, TOC digest, a chunk's digest or offset, a gzip member
    boundary), or a layer cannot be written as one (a name the TOC cannot hold)."""


class LazyLayerError(LayerError):
    """A file of a lazy (eStargz) layer cannot be filled: a chunk whose digest does not match the TOC, a
    truncated or wrong range answer, a registry that cannot be reached; or a lazy layer's own records are
    unusable. The mount answers EIO to that open and tries again at the next one."""


class SymlinkLoopError(UnionfsError, OSError):
    """Resolving a path inside a root met more symlinks than the kernel follows (a loop); an OSError ELOOP."""

    def __init__(self, path: str, limit: int) -> None:
        import errno

        OSError.__init__(self, errno.ELOOP, f"too many levels of symbolic links (more than {limit}) resolving "
                         f"{path} (a symlink loop?)")

    def __str__(self) -> str:
        return str(self.strerror)


class MountError(UnionfsError):
    """A mount cannot be made, found or ended."""


class RegistryError(UnionfsError):
    """A registry answered with an error, or not as the distribution API says it should.

    ``code`` is the registry's error code (``MANIFEST_UNKNOWN``...) when it sent one, else None;
    ``status`` the HTTP status of the answer, when there was one.
    """

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class RegistryConnectionError(RegistryError):
    """The registry or its token server cannot be reached (refused, DNS, TLS, timeouts after retries)."""


class RegistryAuthError(RegistryError):
    """Authentication failed: no credentials where they are needed, wrong ones, or a token refused."""


class RegistryDeniedError(RegistryError):
    """The registry knows who we are and does not allow the operation."""


class RegistryNotFoundError(RegistryError):
    """A repository, manifest, tag or blob is not in the registry."""


class RegistryRateLimitError(RegistryError):
    """The registry kept answering TOOMANYREQUESTS (HTTP 429)."""


class RegistryBlockedError(RegistryError):
    """A ``[[registry]]`` table of registries.conf with ``blocked = true`` matches the reference pulled."""


class RegistriesConfError(RegistryError):
    """registries.conf (or a drop-in) or docker's daemon.json cannot be read or does not parse."""


class CredentialsError(RegistryError):
    """The docker config file or a credential helper cannot be read or written."""


class CommitError(UnionfsError):
    """A container or upper directory cannot be committed (e.g. its live mount cannot be paused)."""


class TreePathError(UnionfsError):
    """A path asked for is not in an image's merged tree, or is not of the kind the command needs."""


class BuildError(UnionfsError):
    """A build failed; the message names the Dockerfile and line (``Dockerfile:7: ...``).

    ``line`` is the 1-based line of the instruction (None when no line is to blame); ``output`` the tail of
    a failed command's output, when there is one.
    """

    def __init__(self, message: str, line: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.output = output


class DockerfileError(BuildError):
    """A Dockerfile does not parse, or uses an instruction, flag or form that unionfs does not support."""


class SandboxError(UnionfsError):
    """A command cannot be run in a rootfs: namespaces, mounts, user lookup or working directory failed."""

    exit_code = 125


class RunError(SandboxError):
    """``run`` cannot start the command for a reason of its own (a bad flag or value, a missing image that
    cannot be pulled, a volume source that does not exist): exit status 125, as docker's and podman's."""


class UnknownUserError(SandboxError):
    """The user or group a command is to run as is not in the image's ``/etc/passwd`` or ``/etc/group``: the
    command cannot be invoked, exit status 126 (as podman)."""

    exit_code = 126


class ExecError(SandboxError):
    """The command cannot be executed in the rootfs: not found (exit status 127) or not executable (126)."""

    def __init__(self, message: str, exit_code: int = 127) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CommandFailedError(SandboxError):
    """The command ran and exited non-zero. ``argv`` is the command, ``status`` its exit status (128+N
    for a signal N), ``output`` the tail of what it printed (when it was captured)."""

    def __init__(self, message: str, argv: list[str], status: int, output: str = "") -> None:
        super().__init__(message)
        self.argv = argv
        self.status = status
        self.output = output
        self.exit_code = status


# --- echoing input in messages ------------------------------------------------------------------
#: Longest rendering of one input value in a message, and how many items of a list a message names.
SHOWN_CHARS = 120
SHOWN_ITEMS = 5
#: a control character (compiled on first use, by :mod:`re`'s cache: not at every start of the CLI)
_CONTROL = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as a message may echo it: ``repr()`` (quotes; newlines and control characters escaped),
    cut to ``limit`` characters with a note of how many were left out. Always one bounded line."""
    text = repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


def listed(items: list[str], limit: int = SHOWN_ITEMS) -> str:
    """``a, b, c`` for a message: the first ``limit`` items, then ``and N more``."""
    head = ", ".join(items[:limit])
    return f"{head} and {len(items) - limit} more" if len(items) > limit else head


def printable(text: str) -> str:
    """``text`` with its control characters (newline, tab, ESC, DEL, C1) escaped, for one table cell or line."""
    return re.sub(_CONTROL, lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class FillPending(OSError):
    """Not an error: a lazy mount's daemon fills the file the request needs in a worker thread
    (:class:`unionfs.lazy.fill.Filler`); ``job`` is the :class:`~unionfs.lazy.fill.FillJob` the request waits
    for, to run again once the file is whole. An OSError (EAGAIN), so that whatever the request had begun (a
    copy-up's staging file) is undone as for any failure before it is set aside."""

    def __init__(self, job: object) -> None:
        super().__init__(errno.EAGAIN, "a lazy file is being fetched")
        self.job = job
