"""TLS for the registry client: the verifying context, with its trust store loaded when first needed, and a
probe that tells whether a host speaks TLS at all.

Contracts:

* ``LazyTrustContext`` verifies exactly as httpx's default context (``ssl.create_default_context``) does on
  this interpreter (the same verify flags, options and protocol bounds): certificates and host names checked
  against ``$SSL_CERT_FILE``, else ``$SSL_CERT_DIR``, else certifi's bundle (``httpx`` reads the
  same variables). Only the moment differs: the trust store is loaded (once, under a lock) when the first TLS
  connection starts, not when the context is made. Parsing certifi's bundle costs ~16 ms, which a command
  that speaks only plain HTTP (a registry on the loopback) never pays.
* ``speaks_tls`` answers whether a TLS handshake with ``host:port`` completes, checking no certificate (it
  only learns whether TLS is spoken; nothing is sent after the handshake and the connection is closed):
  True when it completes, False when the server answered something that is not TLS (or a TLS the client
  cannot speak), None when nothing could be learned (refused, reset, timed out). A verifying handshake with
  a host for which it gives False would fail too.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading


class LazyTrustContext(ssl.SSLContext):
    """A client context (``PROTOCOL_TLS_CLIENT``: certificates required, host names checked) whose trust
    store is loaded on the first ``wrap_socket``/``wrap_bio`` (see the module docstring)."""

    _loaded: bool
    _load_lock: threading.Lock

    @classmethod
    def create(cls) -> "LazyTrustContext":
        """A new context, nothing loaded yet."""
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        if sys.version_info >= (3, 13):  # what ssl.create_default_context adds from 3.13 on
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        ctx._loaded = False
        ctx._load_lock = threading.Lock()
        keylog = os.environ.get("SSLKEYLOGFILE")  # as ssl.create_default_context does
        if keylog and hasattr(ctx, "keylog_filename"):
            ctx.keylog_filename = keylog
        return ctx

    def load_trust(self) -> None:
        """Load the trust store now, if it is not loaded yet."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    def wrap_socket(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        self.load_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        self.load_trust()
        return super().wrap_bio(*args, **kwargs)


def speaks_tls(host: str, port: int, timeout: float) -> bool | None:
    """Whether ``host:port`` completes a TLS handshake within ``timeout`` seconds (see the module docstring)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with probe.wrap_socket(sock, server_hostname=None):
                return True
    except ssl.SSLError:
        return False
    except OSError:
        return None
