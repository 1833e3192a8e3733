"""Edits on the remote providers, against their loopback vendor fakes: what goes on the wire.

The conformance suite checks that each capable provider edits at all; these check the vendor
specifics: field names, the mask's polarity after conversion, defaults, sizes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import fakekit
import pytest
from editkit import INIT, INIT_COLOUR, edit_request, pixel
from faults import serve_app
from PIL import Image
from vendor_a1111 import A1111Fake, a1111_provider

from imagegate.errors import InvalidRequest


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# --------------------------------------------------------------------------- a1111


@pytest.fixture
def a1111() -> Iterator[tuple[A1111Fake, str]]:
    """The A1111 fake without auth, and its base URL."""
    state = A1111Fake()
    with serve_app(state.app()) as base:
        yield state, base


def test_a1111_img2img_sends_the_init_image_at_its_own_size(a1111: tuple[A1111Fake, str]) -> None:
    """img2img posts to /sdapi/v1/img2img with the init image, strength, and its size."""
    state, base = a1111
    provider = a1111_provider(base, auth_env=None)
    images = fakekit.generate(provider, edit_request())
    body = state.edits[0]
    assert base64.b64decode(body["init_images"][0]) == INIT.data
    assert body["denoising_strength"] == 0.5
    assert (body["width"], body["height"]) == (64, 64)
    assert "mask" not in body
    assert (images[0].width, images[0].height, images[0].seed) == (64, 64, 7)


def test_a1111_strength_defaults_to_a1111s_075(a1111: tuple[A1111Fake, str]) -> None:
    """Without a strength the body carries A1111's own default, 0.75."""
    state, base = a1111
    fakekit.generate(a1111_provider(base, auth_env=None), edit_request(strength=None))
    assert state.edits[0]["denoising_strength"] == 0.75


def test_a1111_inpaint_sends_the_mask_white_as_repaint(a1111: tuple[A1111Fake, str]) -> None:
    """The mask goes as an L image, white = repaint: only the middle is repainted."""
    state, base = a1111
    req = edit_request(mask=True, inpaint_fill="latent noise", mask_blur=6)
    images = fakekit.generate(a1111_provider(base, auth_env=None), req)
    body = state.edits[0]
    assert _image(body["mask"]).mode == "L"
    assert (body["inpainting_fill"], body["mask_blur"], body["inpaint_full_res"]) == (2, 6, False)
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR


def test_a1111_missing_init_image_is_invalid_request(a1111: tuple[A1111Fake, str]) -> None:
    """A1111's 404 "Init image not found" is an InvalidRequest naming images."""
    state, base = a1111
    state.arm("init_image_not_found")
    error = fakekit.failure(a1111_provider(base, auth_env=None), edit_request())
    assert isinstance(error, InvalidRequest)
    assert error.field == "images"
