"""The image store: an OCI layout of blobs and an index, extracted layers, containers, GC roots, and the
docker/OCI archive formats (load, save, import).
"""
