"""Which certificates a provider trusts: one SSL context per trust setting, for every path.

The transport's HTTP requests, the doctor's certificate check and the ComfyUI progress
WebSocket all verify a server with :func:`trust_context`, so a ``ca_file`` (or the standard
``SSL_CERT_FILE`` / ``SSL_CERT_DIR``) that makes one of them trust a server makes all of them
trust it; without either, the certifi bundle httpx uses.
"""

from __future__ import annotations

import functools
import os
import ssl

import httpx

__all__ = ["trust_context"]


def trust_context(ca_file: str | None = None, *, trust_env: bool = True) -> ssl.SSLContext:
    """The context that verifies servers for a provider whose ``ca_file`` is ``ca_file``:
    that file when set, else ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` (with ``trust_env``), else
    certifi's bundle."""
    if trust_env:
        return _cached(ca_file, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return _cached(ca_file, None, None)


@functools.lru_cache(maxsize=16)
def _cached(ca_file: str | None, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """One context per trust setting: loading a CA bundle takes ~20 ms of the event loop,
    which would otherwise be charged to the stages of the requests running meanwhile."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    if cert_file or cert_dir:
        return ssl.create_default_context(cafile=cert_file, capath=cert_dir)
    return httpx.create_ssl_context(verify=True, trust_env=False)
