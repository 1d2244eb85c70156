"""The FUSE daemon: the kernel's /dev/fuse wire protocol, the request server over a union, the daemon process,
and the mount(8) helper.
"""
