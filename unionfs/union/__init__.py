"""The pure union core: the merged view of layers (overlayfs semantics), the writable overlay with copy-up, the
work directory, and the mount plan. Imports no FUSE, HTTP, store or CLI code.
"""
