"""unionfs: a union-filesystem layer mounter and OCI/Docker image store."""

__version__ = "0.1.0"
