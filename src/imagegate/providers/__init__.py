"""Providers: one module per backend, all behind the protocol in ``base``."""
