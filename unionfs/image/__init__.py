"""Looking inside images and containers and committing them: packing layer tars from trees, commit and diff, the
tree view behind ls/cat/find/export.
"""
