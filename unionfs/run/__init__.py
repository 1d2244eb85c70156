"""Running a command in a rootfs isolated as docker does by default (namespaces, pivot_root, capabilities, masked
/proc).
"""
