"""The conformance kit every provider passes: its cases, and how a provider module adds one.

A provider's test module (``tests/vendor_<name>.py``) starts its loopback fake and registers
a case with ``@case("<name>")``: a function that receives the pytest request and an
ExitStack (for the fake's teardown) and returns a ``Setup``. ``tests/test_conformance.py``
runs every registered case through the same checks: success, seed reported, n > 1, cancel,
each documented error mapped to its class, a TLS stall -> Timeout(tls) within its budget,
and no secret in any error, record or log. Edits: for each task the provider declares in
``capabilities`` (img2img, inpaint, variations) a request succeeds with its seed, each
documented edit error (``edit_errors``) maps to its class, and a task it does not declare is
refused before anything is sent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imagegate.errors import ProviderError
from imagegate.providers.base import Provider

CANARY_ENV = "IMAGEGATE_TEST_CANARY_KEY"
"""Every case's provider reads its key or token from this variable (``api_key_env``...)."""

CANARY = "sk-canary-3f9a1c2e7b5d4e6f8a0b"
"""The secret the conformance tests put in CANARY_ENV and look for everywhere afterwards."""


@dataclass
class Setup:
    """A provider wired to its running fake, and what the fake can be told to do."""

    provider: Provider
    arm: Callable[[str], None]
    """Make the fake answer the next request with the documented error named so."""
    errors: Mapping[str, type[ProviderError]]
    """Each documented error the fake can produce, and the class it must map to."""
    at_url: Callable[[str], Provider] | None = None
    """The same provider configured for another base URL (the TLS stall); None when local."""
    tls_timeout_s: float = 0.5
    slow: Callable[[], None] | None = None
    """Make the fake's next answers take seconds (for the cancel check), where 40 steps don't."""
    editor: Provider | None = None
    """The same provider configured for edits, where edits need configuration (gradio)."""
    edit_errors: Mapping[str, type[ProviderError]] = field(default_factory=dict)
    """Each documented error of the edit endpoints (armed with ``arm`` like the others)."""
    cancellable: bool = True
    supports_n: bool = True
    extra: dict[str, object] = field(default_factory=dict)


Builder = Callable[[pytest.FixtureRequest, ExitStack], Setup]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    """Register a provider's conformance case under ``name``."""

    def register(builder: Builder) -> Builder:
        CASES[name] = builder
        return builder

    return register


def load_cases() -> dict[str, Builder]:
    """Import every ``tests/vendor_*.py`` module so their cases register themselves."""
    for path in sorted(Path(__file__).parent.glob("vendor_*.py")):
        importlib.import_module(path.stem)
    return CASES
