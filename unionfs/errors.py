"""Every error a user of unionfs can meet, in one place.

Each error carries a one-line message meant for a person; the CLI prints
``unionfs: <message>`` and exits with the error's ``exit_code``.

The tree::

    UnionfsError                      base; exit status 1
    ├── UsageError                    bad arguments or options (exit 2)
    ├── StoreError                    the image store
    │   ├── StoreLockedError          another command holds the store lock
    │   ├── ImageNotFoundError        no image answers to a reference
    │   ├── BlobNotFoundError         a blob is missing from the store
    │   ├── ImageInUseError           rmi of an image a container uses
    │   └── ContainerError            container state (missing, exists, busy)
    ├── ReferenceError_               a malformed image reference
    ├── ManifestError                 unparseable or unsupported manifest/index/config
    │   └── PlatformError             an index has no manifest for the platform
    ├── ArchiveError                  a docker-save / OCI archive or layout is malformed
    ├── DigestError                   content does not match its digest or size
    ├── LayerError                    a layer cannot be unpacked or packed
    │   ├── UnsafeLayerError          a hostile entry (escape, symlink traversal...)
    │   └── LayerTooLargeError        decompressed size over the bound (gzip bomb)
    └── MountError                    a mount cannot be made or ended

Code below the CLI raises these and never prints.
"""

from __future__ import annotations


class UnionfsError(Exception):
    """Base class: ``str(err)`` is a one-line message for the user."""

    exit_code = 1


class UsageError(UnionfsError):
    """Bad command-line usage."""

    exit_code = 2


class StoreError(UnionfsError):
    """The image store cannot do what was asked."""


class StoreLockedError(StoreError):
    """Another process holds the store's lock and we may not wait."""


class ImageNotFoundError(StoreError):
    """No image in the store answers to the reference."""


class BlobNotFoundError(StoreError):
    """A blob the image needs is not in the store."""


class ImageInUseError(StoreError):
    """The image is used by a container (rmi without -f)."""


class ContainerError(StoreError):
    """A container is missing, exists already, or is busy."""


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


class MountError(UnionfsError):
    """A mount cannot be made, found or ended."""
