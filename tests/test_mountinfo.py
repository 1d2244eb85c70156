"""Parsing the mount table."""

import os

from unionfs.mountinfo import mount_at, parse

SAMPLE = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "98 22 0:51 / /tmp/a\\040b rw,nosuid,nodev shared:40 - fuse.unionfs unionfs:c1 rw,user_id=0,group_id=0\n"
    "99 22 0:52 / /tmp/a\\040b ro,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u\n"
    "garbage line\n"
)


def test_parse_unescapes_and_splits_options():
    mounts = parse(SAMPLE)
    assert [m.mountpoint for m in mounts] == ["/", "/tmp/a b", "/tmp/a b"]
    fuse = mounts[1]
    assert (fuse.fstype, fuse.source) == ("fuse.unionfs", "unionfs:c1")
    assert fuse.options == ("rw", "nosuid", "nodev", "rw", "user_id=0", "group_id=0")


def test_mount_at_finds_the_root_and_nothing_for_a_plain_dir(tmp_path):
    assert mount_at("/") is not None
    assert mount_at(os.fspath(tmp_path)) is None
