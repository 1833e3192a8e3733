"""ImageRequest: limits checked at the edge, errors that name the field and the limit."""

from __future__ import annotations

from typing import Any

import pytest

from imagegate.errors import InvalidRequest
from imagegate.request import MAX_SEED, GeneratedImage, ImageRequest


@pytest.mark.parametrize(
    ("fields", "field", "limit"),
    [
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "   "}, "prompt", "must not be blank"),
        ({"prompt": "x", "width": 65}, "width", "must be a multiple of 8"),
        ({"prompt": "x", "width": 4096}, "width", "must be between 64 and 2048"),
        ({"prompt": "x", "steps": 0}, "steps", "must be between 1 and 150"),
        ({"prompt": "x", "n": 9}, "n", "must be between 1 and 8"),
        ({"prompt": "x", "seed": -1}, "seed", "must be between 0 and 4294967295"),
        ({"prompt": "x", "colour": "red"}, "colour", "is not a known field"),
    ],
)
def test_bad_field_is_refused_naming_field_and_limit(
    fields: dict[str, Any], field: str, limit: str
) -> None:
    """Each limit violation names the field and the limit."""
    with pytest.raises(InvalidRequest) as info:
        ImageRequest.parse(fields)
    assert info.value.field == field
    assert info.value.limit == limit
    assert str(info.value).startswith(f"{field}: {limit}")


def test_nothing_is_silently_corrected() -> None:
    """A valid request keeps exactly the values given."""
    req = ImageRequest.parse({"prompt": "a fox", "width": 520, "height": 64, "seed": 7})
    assert (req.width, req.height, req.seed) == (520, 64, 7)


def test_safety_filters_default_on() -> None:
    """Providers' own filters stay on unless the caller says otherwise."""
    assert ImageRequest(prompt="x").safety is True


def test_generated_image_hashes_its_bytes() -> None:
    """sha256 is filled from the PNG bytes when not given."""
    img = GeneratedImage(png=b"abc", width=1, height=1, seed=0)
    assert img.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_seeds_of_a_batch_count_up_from_the_requests_seed_and_wrap_in_range() -> None:
    """seed 7, n 3 gives 7, 8, 9; the series wraps within the provider's range."""
    assert ImageRequest(prompt="x", seed=7, n=3).seeds() == [7, 8, 9]
    assert ImageRequest(prompt="x", seed=MAX_SEED, n=2).seeds() == [MAX_SEED, 0]
    assert ImageRequest(prompt="x", seed=10, n=2).seeds(low=1, high=10) == [10, 1]


def test_a_drawn_seed_lies_in_the_providers_range_and_a_named_one_is_kept() -> None:
    """No seed: drawn within [low, high]; a named seed outside it is passed on unchanged."""
    drawn = ImageRequest(prompt="x", n=2).seeds(low=1, high=5)
    assert all(1 <= seed <= 5 for seed in drawn)
    assert ImageRequest(prompt="x", seed=99).seeds(high=5) == [99]
