"""The OCI distribution protocol: the HTTP client and its auth, stored credentials, and pull/push between a
registry and the store (the only module here that knows the store).
"""
