"""The layer format on disk: whiteouts and opaque markers, compression, and unpacking a layer tar safely.
"""
