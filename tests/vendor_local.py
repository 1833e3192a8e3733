"""The embedded diffusers provider's conformance case: the tiny pipeline, no network."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from conformance import Setup, case

from imagegate.providers.local import DiffusersConfig, DiffusersProvider


@case("local")
def local_case(request: pytest.FixtureRequest, stack: ExitStack) -> Setup:
    """The tiny saved pipeline, loaded through from_pretrained like a user's model."""
    folder = request.getfixturevalue("tiny_model")
    provider = DiffusersProvider("local", DiffusersConfig(model=str(folder)))

    def arm(name: str) -> None:
        raise AssertionError(f"the local provider has no fake to arm ({name})")

    return Setup(provider=provider, arm=arm, errors={}, at_url=None)
