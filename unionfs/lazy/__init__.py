"""Lazy mounts of eStargz images (``unionfs mount --lazy``): layers whose files are fetched by HTTP range when
first read.

* :mod:`unionfs.lazy.layout`: a lazy layer on disk (``ROOT/lazy/<diffid-hex>/``: its source, its TOC, its tree);
* :mod:`unionfs.lazy.fetch`: the range reads (footer and TOC, a file's chunks), each checked against a digest;
* :mod:`unionfs.lazy.materialize`: the tree of a layer made from its TOC, regular files as placeholders;
* :mod:`unionfs.lazy.fill`: the mount daemon's side: a placeholder made whole before its data is opened;
* :mod:`unionfs.lazy.prepare`: the mounting command's side: an image's layers made lazy (or pulled whole), the
  image recorded in the store as *partial* (``Store.missing_layers``) and a container of them;
* :mod:`unionfs.lazy.complete`: the background completion: the image pulled whole and stored, without the
  store's lock while it downloads;
* :mod:`unionfs.lazy.prune`: what no container and no partial image needs any more removed (``prune``).

Only ``fill`` runs in the mount daemon; it never reads the store. Root's lazy layers carry ``trusted.`` marks,
everyone else's ``user.`` marks (:mod:`unionfs.layer.placeholder`).
"""
