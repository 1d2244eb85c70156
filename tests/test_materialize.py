"""The tree of a lazy layer made from a TOC alone (:func:`unionfs.lazy.materialize.materialize`): placeholders
with the TOC's metadata and their marks, the unpacker's rules for hostile TOCs. TOCs are written by hand here
(``write_estargz`` never writes a name twice); root only (the marks are ``trusted.`` xattrs).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from unionfs.errors import LayerError, UnsafeLayerError
from unionfs.layer import placeholder
from unionfs.lazy.fetch import checked_toc
from unionfs.lazy.materialize import materialize

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the marks are trusted.* xattrs)")

LAYER = "ab" * 32
DIGEST = "sha256:" + "0" * 64
CAP = b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + b"\0" * 12
TOC_OFFSET = 1 << 20


def toc_of(*entries: dict[str, Any]) -> dict[str, Any]:
    """A TOC of ``entries``, each regular file with data given an offset and a chunk digest, and a landmark."""
    out, offset = [], 0
    for ent in (*entries, {"name": ".no.prefetch.landmark", "type": "reg", "size": 1}):
        ent = {"mode": 0o644, **ent}
        if ent["type"] == "reg" and ent.get("size"):
            offset += 100
            ent.update(offset=offset, chunkDigest=DIGEST)
        out.append(ent)
    return {"version": 1, "entries": out}


def make(tmp_path: Path, toc: dict[str, Any]) -> tuple[Path, int]:
    dest = tmp_path / "tree"
    dest.mkdir()
    return dest, materialize(checked_toc(json.dumps(toc).encode(), TOC_OFFSET), str(dest), LAYER)


def test_placeholders_carry_the_tocs_metadata_and_their_marks(tmp_path: Path) -> None:
    toc = toc_of({"name": "bin/", "type": "dir", "mode": 0o755, "modtime": "2020-01-02T03:04:05Z"},
                 {"name": "bin/tool", "type": "reg", "size": 70000, "mode": 0o4755, "uid": 7, "gid": 8,
                  "modtime": "2021-01-01T00:00:00Z",
                  "xattrs": {"security.capability": base64.b64encode(CAP).decode()}},
                 {"name": "bin/empty", "type": "reg", "mode": 0o600})
    dest, count = make(tmp_path, toc)
    assert count == 2  # bin/tool and the landmark
    st = os.lstat(dest / "bin/tool")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o4755, 7, 8, 70000)
    assert st.st_mtime == 1609459200
    assert os.getxattr(dest / "bin/tool", "security.capability") == CAP
    assert placeholder.placeholder_of(str(dest / "bin/tool")) == (LAYER, 1)
    assert placeholder.placeholder_of(str(dest / "bin/empty")) is None  # no data: whole as it is
    assert os.lstat(dest / "bin").st_mtime == 1577934245
    assert placeholder.lazy_layer_of(str(dest)) == LAYER
    assert json.loads((dest / "stargz.index.json").read_bytes()) == toc


def test_a_hardlink_keeps_the_placeholder_of_the_file_it_links_to(tmp_path: Path) -> None:
    """A later entry of the same name replaces the file, not the inode the hardlink holds: that one stays the
    placeholder of the first entry (its data is that entry's)."""
    dest, _ = make(tmp_path, toc_of({"name": "a", "type": "reg", "size": 10},
                                    {"name": "b", "type": "hardlink", "linkName": "a"},
                                    {"name": "a", "type": "reg", "size": 20}))
    assert placeholder.placeholder_of(str(dest / "b")) == (LAYER, 0) and os.lstat(dest / "b").st_size == 10
    assert placeholder.placeholder_of(str(dest / "a")) == (LAYER, 2) and os.lstat(dest / "a").st_size == 20


@pytest.mark.parametrize("name", placeholder.NAMES)
def test_a_toc_cannot_forge_a_mark(tmp_path: Path, name: str) -> None:
    forged = base64.b64encode(b"file " + LAYER.encode() + b" 0").decode()
    dest, _ = make(tmp_path, toc_of({"name": "f", "type": "reg", "mode": 0o644, "xattrs": {name: forged}},
                                    {"name": "g", "type": "reg", "size": 5, "xattrs": {name: forged}}))
    for mark in placeholder.NAMES:
        assert placeholder.placeholder_of(str(dest / "f"), mark) is None
    assert placeholder.placeholder_of(str(dest / "g")) == (LAYER, 1)


@pytest.mark.parametrize("entries, error", [
    ([{"name": "../escape", "type": "reg", "size": 5}], UnsafeLayerError),
    ([{"name": "/etc/passwd", "type": "reg"}], UnsafeLayerError),
    ([{"name": "l", "type": "symlink", "linkName": "/etc"}, {"name": "l/passwd", "type": "reg", "size": 5}],
     UnsafeLayerError),
    ([{"name": "h", "type": "hardlink", "linkName": "../../etc/shadow"}], UnsafeLayerError),
    ([{"name": "h", "type": "hardlink", "linkName": "nothing"}], LayerError),
])
def test_a_hostile_toc_is_refused_and_nothing_leaves_the_tree(tmp_path: Path, entries: list[dict[str, Any]],
                                                              error: type[Exception]) -> None:
    (tmp_path / "sentinel").mkdir()
    with pytest.raises(error):
        make(tmp_path, toc_of(*entries))
    assert os.listdir(tmp_path / "sentinel") == [] and sorted(os.listdir(tmp_path)) == ["sentinel", "tree"]


@pytest.mark.skipif(os.geteuid() != 0, reason="root's daemon is the one that must not trust user. marks")
def test_root_trusts_no_user_mark(tmp_path: Path) -> None:
    """Anyone may set ``user.`` xattrs on their own files: a root process (a root mount's daemon) never takes a
    ``user.unionfs.lazy`` mark for a placeholder or a lazy layer, so a user's directory mounted by root cannot
    make it fetch and write where the file says."""
    assert placeholder.mark_name() == placeholder.TRUSTED_MARK
    f = tmp_path / "f"
    f.write_bytes(b"")
    os.setxattr(f, placeholder.USER_MARK, b"file " + LAYER.encode() + b" 0")
    os.setxattr(tmp_path, placeholder.USER_MARK, b"layer " + LAYER.encode())
    assert placeholder.placeholder_of(str(f)) is None and placeholder.lazy_layer_of(str(tmp_path)) is None
    assert placeholder.placeholder_of(str(f), placeholder.USER_MARK) == (LAYER, 0)
