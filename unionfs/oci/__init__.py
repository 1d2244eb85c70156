"""OCI and docker formats, pure values: digests, references, manifests and configs, and the one way to change an
image config.
"""
