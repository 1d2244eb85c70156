"""What the tests share (also used by scripts/bench*): one of each.

* ``mount``: the mount manager (unionfs, kernel overlayfs, fuse-overlayfs, bind, tmpfs; skip reasons);
* ``layers``: the directory-layer builder (``tar`` builds layer *archives*);
* ``tree``: the tree snapshot and its comparison;
* ``cli``: the CLI runner (``python -m unionfs``);
* ``cases`` and ``impls``: the union case table and the implementations it runs against;
* ``images``, ``busybox``, ``registry``: the test images, the busybox base image, the registry under test.
"""
