"""A probe that tells whether a host speaks TLS at all.

Contract: ``speaks_tls`` answers whether a TLS handshake with ``host:port`` completes, checking no certificate
(it only learns whether TLS is spoken; nothing is sent after the handshake and the connection is closed): True
when it completes, False when the server answered something that is not TLS (or a TLS the client cannot speak),
None when nothing could be learned (refused, reset, timed out). A verifying handshake with a host for which it
gives False would fail too.

The registry client uses it on the loopback, where a handshake costs nothing: a plain-HTTP registry is then
spoken to without an HTTPS try, which would load the trust store (certifi's bundle) only to fail.
"""

from __future__ import annotations

import socket
import ssl


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
