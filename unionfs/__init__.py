"""unionfs: a union-filesystem layer mounter and OCI/Docker image store."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: ``import unionfs`` stays cheap (the FUSE daemon and sandbox import it)
    if name == "mounted":
        from unionfs.api import mounted

        return mounted
    raise AttributeError(f"module 'unionfs' has no attribute {name!r}")
