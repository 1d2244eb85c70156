"""The image of a lazy mount is recorded at once, *partial* (issue 18, point 5): against a real registry behind
the ``FaultProxy`` and real FUSE mounts, with ``tests/test_lazy.py``'s image and helpers.

What is checked: ``mount --lazy`` writes the index entries a pull of the same reference writes (a tag, a
manifest digest, an index by tag or by digest); ``images`` marks the image ``(partial)`` in its SIZE column and
gives ``{{.Partial}}``, ``inspect`` gives ``Partial`` and each layer's ``Present``; what needs the layers or
blobs (a plain mount, ``cat``, ``save``, ``push``, ``Store.ensure_layers``) refuses it with one line and changes
nothing; ``pull`` and a plain ``run`` complete it; ``prune`` keeps its lazy layers and downloaded blobs until it
is removed or whole. Root only (the marks are trusted.* xattrs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import run_cli
from support.mount import unmounted_on_exit
from test_lazy import BIG, MEDIUM, blob_requests, lazy_mount, push_busybox_esgz
from test_lazy import setup as lazy_setup  # noqa: F401 (the fixture ``setup``)

from unionfs import errors
from unionfs.lazy import layout
from unionfs.lazy.complete import download
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_INDEX, Platform, canonical_json
from unionfs.oci.reference import Reference
from unionfs.registry.client import RegistryClient
from unionfs.registry.mirrors import client_for
from unionfs.store.store import Store

PARTIAL = "only partly in the store (a lazy mount's image not yet pulled whole)"


def lazy_then_unmount(store: Path, ref: str, mnt: Path) -> str:
    """``mount --lazy --no-prefetch REF MNT`` (nothing pulled in the background), ``data/medium`` read, then
    unmounted; the container's name."""
    with unmounted_on_exit(mnt):
        name = lazy_mount(store, ref, mnt)
        assert (mnt / "data/medium").read_bytes() == MEDIUM
        run_cli("umount", mnt, root=store)
    return name


def store_state(store: Path) -> dict[str, object]:
    """What a refused command must leave as it was: the index, the blobs, the extracted layers, the
    containers, the lazy layers and the store's tmp/."""
    return {"index": (store / "index.json").read_bytes(),
            **{d: sorted(os.listdir(store / d)) for d in ("blobs/sha256", "layers", "containers", "lazy", "tmp")}}


def partial_column(store: Path) -> list[str]:
    return sorted(run_cli("images", "--format", "{{.Tag}} {{.Partial}}", root=store).stdout.splitlines())


def test_a_lazy_mount_lists_its_image_as_partial(setup: dict) -> None:  # type: ignore[type-arg]
    """Listed at once (and after the unmount and the container's removal), partial; a pulled image beside it
    is listed as before."""
    tmp = setup["tmp"]
    store = tmp / "lazy"
    name = lazy_then_unmount(store, setup["esgz"], tmp / "mnt")
    run_cli("pull", "-q", setup["plain"], root=store)
    run_cli("rm", name, root=store)
    image = Store(store).resolve(setup["esgz"])
    assert Store(store).missing_layers(image) == list(image.manifest.layers)
    assert partial_column(store) == ["esgz true", "plain false"]
    for flags in ((), ("--digests",)):
        header, *rows = run_cli("images", *flags, root=store).stdout.splitlines()
        assert header.split()[-1] == "SIZE" and "partial" not in header
        (esgz,) = [r for r in rows if " esgz " in r]
        (plain,) = [r for r in rows if " plain " in r]
        assert esgz.endswith("B (partial)") and plain.endswith("B")
    table = run_cli("images", "--format", "table {{.Tag}}\t{{.Size}}\t{{.Partial}}", root=store).stdout.splitlines()
    assert table[0].split() == ["TAG", "SIZE", "PARTIAL"] and "(partial)" not in "".join(table)  # docker's .Size
    rows = [json.loads(line) for line in run_cli("images", "--format", "json", root=store).stdout.splitlines()]
    assert sorted((r["Tag"], r["Partial"]) for r in rows) == [("esgz", True), ("plain", False)]
    data = json.loads(run_cli("inspect", setup["esgz"], setup["plain"], root=store).stdout)
    assert [d["Partial"] for d in data] == [True, False]
    assert [[layer["Present"] for layer in d["Layers"]] for d in data] == [[False, False], [True, True]]
    template = "{{.Partial}}{{range .Layers}} {{.Present}}{{end}}"
    assert run_cli("inspect", "-f", template, setup["esgz"], setup["plain"], root=store).stdout == \
        "true false false\nfalse true true\n"


def _push_index(setup: dict) -> str:  # type: ignore[type-arg]
    """An index ``lz/img:multi`` whose one entry (this host's platform) is the eStargz image's manifest; its
    digest."""
    manifest = Store(setup["tmp"] / "src").resolve("trust:esgz").manifest
    host = Platform.host()
    platform = {"os": host.os, "architecture": host.architecture, **({"variant": host.variant} if host.variant else {})}
    raw = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": manifest.media_type, "digest": str(manifest.digest), "size": len(manifest.raw),
         "platform": platform}]})
    with RegistryClient(setup["proxy"].host) as client:
        return str(client.put_manifest("lz/img", "multi", raw, OCI_INDEX))


@pytest.mark.parametrize("how", ["tag", "manifest-digest", "index-tag", "index-digest"])
def test_the_entries_are_those_a_pull_writes(setup: dict, how: str) -> None:  # type: ignore[type-arg]
    """The tag; an untagged entry for a manifest digest; a kept index's digest reference (on the tag's entry, or
    alone): ``index.json`` holds what a pull of the same reference writes, byte for byte."""
    tmp, proxy = setup["tmp"], setup["proxy"]
    repo = f"{proxy.host}/lz/img"
    manifest = Store(tmp / "src").resolve("trust:esgz").manifest
    ref = {"tag": setup["esgz"], "manifest-digest": f"{repo}@{manifest.digest}", "index-tag": f"{repo}:multi",
           "index-digest": ""}[how]
    if how.startswith("index"):
        index = _push_index(setup)
        ref = ref or f"{repo}@{index}"
    lazy_then_unmount(tmp / "lazy", ref, tmp / "mnt")
    run_cli("pull", "-q", ref, root=tmp / "pulled")
    entries = [json.loads((tmp / s / "index.json").read_bytes())["manifests"] for s in ("lazy", "pulled")]
    assert entries[0] == entries[1] and len(entries[0]) == 1
    assert str(Store(tmp / "lazy").resolve(ref).manifest_desc.digest) == str(manifest.digest)
    shown = "<none>" if how == "manifest-digest" else repo  # an untagged entry (a pull's too)
    assert run_cli("images", "--format", "{{.Repository}} {{.Partial}}", root=tmp / "lazy").stdout == f"{shown} true\n"


def test_what_needs_the_layers_refuses_a_partial_image_and_changes_nothing(setup: dict) -> None:  # type: ignore[type-arg]
    """A plain mount, ``cat``, ``save``, ``push`` and ``convert`` (and ``Store.ensure_layers``, the one way to an image's
    layer directories: never a lazy tree) fail with one line naming the pull that completes the image,
    before they change anything: in the store, at the registry, in the output file."""
    tmp, proxy = setup["tmp"], setup["proxy"]
    store, mnt, out = tmp / "lazy", tmp / "plain-mnt", tmp / "saved.tar"
    lazy_then_unmount(store, setup["esgz"], tmp / "mnt")
    before = store_state(store)
    proxy.log.clear()
    mnt.mkdir()
    with unmounted_on_exit(mnt):
        for argv in (("mount", setup["esgz"], mnt), ("cat", setup["esgz"], "/etc/motd"),
                     ("save", setup["esgz"], "-o", out), ("push", setup["esgz"], f"{proxy.host}/lz/other:1"),
                     ("convert", "--estargz", setup["esgz"], "lz/converted:1")):
            r = run_cli(*argv, root=store, check=False)
            assert r.returncode == 1, argv
            assert r.stderr == (f"unionfs: image {setup['esgz']} is {PARTIAL}: 'unionfs pull {setup['esgz']}' "
                                "completes it, --lazy mounts it as it is\n"), argv
        assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    assert not out.exists() and proxy.log == []
    s = Store(store)
    with pytest.raises(errors.PartialImageError, match="only partly in the store"):
        s.ensure_layers(s.resolve(setup["esgz"]))
    assert store_state(store) == before


def test_pull_completes_a_partial_image(setup: dict) -> None:  # type: ignore[type-arg]
    """``pull`` of the partial image's tag downloads the blobs it lacks and makes it whole (the same entry); a
    plain mount then works."""
    tmp, proxy = setup["tmp"], setup["proxy"]
    store, mnt = tmp / "lazy", tmp / "plain-mnt"
    lazy_then_unmount(store, setup["esgz"], tmp / "mnt")
    index = (store / "index.json").read_bytes()
    assert partial_column(store) == ["esgz true"]
    run_cli("pull", "-q", setup["esgz"], root=store)
    assert partial_column(store) == ["esgz false"]
    assert (store / "index.json").read_bytes() == index
    assert all(None in blob_requests(proxy, d.digest) for d in setup["layers"])  # each blob whole, once
    assert [layer["Present"] for layer in json.loads(run_cli("inspect", setup["esgz"], root=store).stdout)[0]
            ["Layers"]] == [True, True]
    mnt.mkdir()
    with unmounted_on_exit(mnt):
        run_cli("mount", setup["esgz"], mnt, root=store)
        assert (mnt / "bin/tool").read_bytes() == BIG and (mnt / "data/medium").read_bytes() == MEDIUM
        run_cli("umount", mnt, root=store)


@pytest.mark.parametrize("by", ["reference", "id"])
def test_run_pulls_a_partial_image(setup: dict, store: Path, by: str) -> None:  # type: ignore[type-arg]
    """``run IMAGE`` after ``run --lazy --no-prefetch --rm IMAGE`` (the image listed, partial): pulled as a
    missing image is (by its manifest digest when named by id), then run from its extracted layers."""
    proxy, tmp = setup["proxy"], setup["tmp"]
    ref, desc = push_busybox_esgz(setup, store)
    fresh = tmp / "fresh"
    run_cli("run", "--lazy", "--no-prefetch", "--rm", ref, "cat", "/etc/passwd", root=fresh)
    assert None not in blob_requests(proxy, desc.digest)
    assert partial_column(fresh) == ["esgz true"]
    image = ref if by == "reference" else Store(fresh).resolve(ref).id.short
    r = run_cli("run", "--rm", image, "cat", "/etc/passwd", root=fresh)
    assert r.stdout.startswith("root:x:0:0:")
    assert None in blob_requests(proxy, desc.digest)  # pulled whole
    assert partial_column(fresh) == ["esgz false"]
    assert [p.name for p in (fresh / "layers").iterdir()] == [Store(fresh).resolve(ref).config.diff_ids[0].hex]


def test_a_killed_completion_download_is_resumed(setup: dict) -> None:  # type: ignore[type-arg]
    """The background completion's download of a blob, killed midway, leaves its partial file; the next one
    asks only for the rest (a Range request from the partial's length), hashes the kept bytes again with it,
    and the blob is whole and verified. A partial file whose bytes are wrong is found out by that hash: the
    blob is downloaded again from the start."""
    tmp, proxy = setup["tmp"], setup["proxy"]
    store = tmp / "lazy"
    ref = Reference.parse(setup["esgz"])
    top = max(setup["layers"], key=lambda d: d.size)
    dest = layout.blob_file(str(store), top.digest)
    code = ("import json, sys\nfrom unionfs.lazy.complete import download\n"
            "from unionfs.oci.manifest import Descriptor\nfrom unionfs.oci.reference import Reference\n"
            "from unionfs.registry.mirrors import client_for\nref = Reference.parse(sys.argv[1])\n"
            "with client_for(ref) as client:\n"
            "    download(client, ref, Descriptor.from_json(json.loads(sys.argv[2])), sys.argv[3])\n")
    proxy.stall_blob[str(top.digest)] = top.size // 2
    proc = subprocess.Popen([sys.executable, "-c", code, str(ref), json.dumps(top.to_json()), dest])
    try:
        assert proxy.stalled.wait(60), "the download never reached the middle of the blob"
        partial, seen, deadline = Path(dest + ".partial"), -1, time.monotonic() + 30
        while time.monotonic() < deadline:  # until what arrived is on disk (the size holds still)
            size = partial.stat().st_size if partial.exists() else 0
            if size and size == seen:
                break
            seen = size
            time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
        proxy.release.set()
    kept = os.path.getsize(dest + ".partial")
    assert 0 < kept <= top.size // 2
    proxy.log.clear()
    with client_for(ref) as client:
        download(client, ref, top, dest)
    assert blob_requests(proxy, top.digest) == [f"bytes={kept}-"]
    assert Digest.of_bytes(Path(dest).read_bytes()) == top.digest and not os.path.exists(dest + ".partial")

    os.unlink(dest)
    Path(dest + ".partial").write_bytes(b"\0" * kept)  # the right length, the wrong bytes
    proxy.log.clear()
    with client_for(ref) as client:
        download(client, ref, top, dest)
    assert blob_requests(proxy, top.digest) == [f"bytes={kept}-", None]
    assert Digest.of_bytes(Path(dest).read_bytes()) == top.digest and not os.path.exists(dest + ".partial")


@pytest.mark.parametrize("then", ["rmi", "pull"])
def test_prune_keeps_what_a_partial_image_lists_until_it_is_removed_or_whole(setup: dict,  # type: ignore[type-arg]
                                                                           then: str) -> None:
    """With no container left, ``prune`` keeps the lazy layers and the downloaded blobs of a partial image (a
    later lazy mount reuses what was filled); once the image is removed (``rmi``, which works on a partial
    image) or whole (``pull``), it drops them."""
    tmp = setup["tmp"]
    store = tmp / "lazy"
    name = lazy_then_unmount(store, setup["esgz"], tmp / "mnt")
    run_cli("rm", name, root=store)
    top = setup["layers"][1]
    ref = Reference.parse(setup["esgz"])
    with client_for(ref) as client:  # as the background completion downloads it (interrupted before storing)
        download(client, ref, top, layout.blob_file(str(store), top.digest))
    lazy_dirs = sorted(p.name for p in (store / "lazy").iterdir() if p.name != layout.BLOBS)
    assert len(lazy_dirs) == 2
    out = run_cli("prune", root=store).stdout
    assert "lazy" not in out
    assert sorted(p.name for p in (store / "lazy").iterdir() if p.name != layout.BLOBS) == lazy_dirs
    assert os.path.exists(layout.blob_file(str(store), top.digest))
    assert partial_column(store) == ["esgz true"]
    if then == "rmi":
        out = run_cli("rmi", setup["esgz"], root=store).stdout
        assert out.startswith(f"Untagged: {setup['esgz']}\n") and "Deleted: " in out
        assert run_cli("images", "-q", root=store).stdout == ""
    else:
        run_cli("pull", "-q", setup["esgz"], root=store)
    out = run_cli("prune", root=store).stdout
    assert out.count("Deleted: lazy layer ") == 2 and out.count("Deleted: lazy blob ") == 1
    assert [p.name for p in (store / "lazy").iterdir()] == [layout.BLOBS]
    assert os.listdir(store / "lazy" / layout.BLOBS) == []
